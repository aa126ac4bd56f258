//! The digests of model files already hashed, remembered by (path, size,
//! modification time) in one small file under the cache directory.
//!
//! Every start verifies its models before loading them, and hashing a large model
//! takes seconds: a file whose size and modification time are what they were when
//! it was hashed keeps its digest. The file lives under the cache directory, not
//! beside the models, whose directory voxd may only read (a system service's
//! models, a shared install). Losing it costs one hashing; it is best effort.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

/// What was true of a file when it was hashed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Seen {
    bytes: u64,
    mtime_ns: u128,
    sha256: String,
}

/// `$VOXD_CACHE_DIR/model-digests.json`.
pub fn file() -> PathBuf {
    crate::paths::cache_dir().join("model-digests.json")
}

/// The digest remembered for `path`, if the file is still as it was then.
pub fn known(path: &Path, meta: &std::fs::Metadata) -> Option<String> {
    let seen = load(&file()).remove(&key(path))?;
    (seen.bytes == meta.len() && Some(seen.mtime_ns) == mtime_ns(meta)).then_some(seen.sha256)
}

/// Remembers `sha256` as the digest of `path` as it is now.
pub fn remember(path: &Path, sha256: &str) {
    let Ok(meta) = std::fs::metadata(path) else { return };
    let Some(mtime_ns) = mtime_ns(&meta) else { return };
    let at = file();
    let mut all = load(&at);
    // Files that are gone need not be remembered.
    all.retain(|p, _| Path::new(p).exists());
    all.insert(key(path), Seen { bytes: meta.len(), mtime_ns, sha256: sha256.to_string() });
    if let Err(e) = store(&at, &all) {
        tracing::debug!("could not remember the digest of {} in {}: {e}", path.display(), at.display());
    }
}

/// The same file under every name it is reached by (a relative models dir, a link).
fn key(path: &Path) -> String {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()).to_string_lossy().into_owned()
}

fn mtime_ns(meta: &std::fs::Metadata) -> Option<u128> {
    Some(meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?.as_nanos())
}

/// The remembered digests; an unreadable or damaged file is as good as none.
fn load(at: &Path) -> BTreeMap<String, Seen> {
    std::fs::read_to_string(at).ok().and_then(|text| serde_json::from_str(&text).ok()).unwrap_or_default()
}

/// Written beside and renamed into place, so a reader never sees half a file (two
/// voxd writing at once: the last one wins, the other's entry is hashed again later).
fn store(at: &Path, all: &BTreeMap<String, Seen>) -> std::io::Result<()> {
    if let Some(dir) = at.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = at.with_extension(format!("json.{}.tmp", std::process::id()));
    std::fs::write(&tmp, serde_json::to_string_pretty(all).map_err(std::io::Error::other)?)?;
    std::fs::rename(&tmp, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_holds_while_size_and_time_do() {
        let dir = tempfile::tempdir().unwrap();
        let (model, at) = (dir.path().join("m.bin"), dir.path().join("digests.json"));
        std::fs::write(&model, b"weights").unwrap();
        let meta = std::fs::metadata(&model).unwrap();
        let seen = Seen { bytes: meta.len(), mtime_ns: mtime_ns(&meta).unwrap(), sha256: "ab".repeat(32) };
        store(&at, &BTreeMap::from([(key(&model), seen.clone())])).unwrap();
        assert_eq!(load(&at).get(&key(&model)), Some(&seen));
        // Damaged: forgotten, not an error.
        std::fs::write(&at, "{not json").unwrap();
        assert!(load(&at).is_empty());
    }
}
