//! Downloading a model from its hub URL: resumable, with progress, verified by sha256.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{progress::Progress, sha256_file};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// DNS, connection or TLS failure: the host cannot be reached from here.
    #[error("{url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} answered HTTP {status}")]
    Http { url: String, status: u16 },
    #[error("download of {url} broke off after {bytes} bytes ({reason}); run again to resume")]
    Interrupted { url: String, bytes: u64, reason: String },
    #[error("{path}: sha256 {actual} does not match the pinned {expected} (kept as {kept} for inspection)")]
    Mismatch { path: PathBuf, expected: String, actual: String, kept: PathBuf },
    #[error("{doing} {path}")]
    Io { doing: &'static str, path: PathBuf, source: std::io::Error },
}

/// Downloads `url` to `dest`. A `dest.partial` left by an interrupted run is resumed
/// with an HTTP range request. Returns the file's sha256, checked against `expected`
/// when pinned.
pub fn download(url: &str, dest: &Path, expected: Option<&str>) -> Result<String, FetchError> {
    let io = |doing: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| FetchError::Io { doing, path, source }
    };
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    let partial = dest.with_extension(format!("{}partial", dest.extension().map_or(String::new(), |e| format!("{}.", e.to_string_lossy()))));
    let have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);

    let agent = ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(10)).timeout_read(Duration::from_secs(60)).build();
    let mut request = agent.get(url);
    if have > 0 {
        request = request.set("Range", &format!("bytes={have}-"));
    }
    let response = match request.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(416, _)) if have > 0 => {
            // Range past the end: the partial file is already whole.
            return finish(&partial, dest, expected);
        }
        Err(ureq::Error::Status(status, _)) => return Err(FetchError::Http { url: url.into(), status }),
        Err(ureq::Error::Transport(t)) => {
            let reason = match t.message() {
                Some(m) => format!("{}: {m}", t.kind()),
                None => t.kind().to_string(),
            };
            return Err(FetchError::Unreachable { url: url.into(), reason });
        }
    };
    let resumed = response.status() == 206;
    let start = if resumed { have } else { 0 };
    let total = response.header("Content-Length").and_then(|l| l.parse::<u64>().ok()).map(|l| l + start);
    let mut file = if resumed {
        std::fs::OpenOptions::new().append(true).open(&partial).map_err(io("appending to", &partial))?
    } else {
        std::fs::File::create(&partial).map_err(io("creating", &partial))?
    };
    let name = dest.file_name().map_or_else(|| url.to_string(), |n| n.to_string_lossy().into_owned());
    let bar = Progress::bytes(&name, total.unwrap_or(0));
    bar.set(start);
    let mut body = response.into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = start;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(FetchError::Interrupted { url: url.into(), bytes: got, reason: e.to_string() }),
        };
        file.write_all(&buf[..n]).map_err(io("writing", &partial))?;
        got += n as u64;
        bar.advance(n as u64);
    }
    bar.finish();
    file.sync_all().map_err(io("syncing", &partial))?;
    if let Some(total) = total {
        if got < total {
            return Err(FetchError::Interrupted { url: url.into(), bytes: got, reason: format!("expected {total} bytes") });
        }
    }
    finish(&partial, dest, expected)
}

fn finish(partial: &Path, dest: &Path, expected: Option<&str>) -> Result<String, FetchError> {
    let io = |doing: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| FetchError::Io { doing, path, source }
    };
    let name = dest.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let actual = sha256_file(partial, &name).map_err(io("hashing", partial))?;
    if let Some(expected) = expected {
        if actual != expected {
            let kept = dest.with_extension("bad");
            std::fs::rename(partial, &kept).map_err(io("moving", partial))?;
            return Err(FetchError::Mismatch { path: dest.into(), expected: expected.into(), actual, kept });
        }
    }
    std::fs::rename(partial, dest).map_err(io("installing", dest))?;
    super::remember_sha256(dest, &actual);
    Ok(actual)
}
