//! The control socket: a Unix socket through which the owner steers a running voxd
//! (`voxd ctl`): status, mute/unmute, push-to-talk, a typed turn, cancelling the
//! turn being answered.
//!
//! One JSON request per line, one JSON reply per line (`{"ok":true,…}` or
//! `{"ok":false,"error":"…"}`); a connection may send several. Only the owner gets
//! in: the socket is created 0600 in a directory of voxd's own, and every
//! connection's peer credentials (SO_PEERCRED) are checked — a socket whose mode
//! was loosened still refuses other users (root aside, who can read voxd's memory
//! anyway).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot, watch};

use crate::metrics::Metrics;
use crate::pipeline::agent::Command;
use crate::pipeline::asr::Transcript;
use crate::pipeline::playback::Status;
use crate::pipeline::telemetry::{AsrStats, Models};
use crate::pipeline::vad::Voice;
use crate::pipeline::{Anchor, Clock, Counters, Switches, TurnIds};

/// What a client asks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    Mute,
    Unmute,
    /// Push-to-talk pressed (`down: true`) or let go.
    PushToTalk { down: bool },
    /// A turn from text, answered as if spoken.
    Ask { text: String },
    Cancel,
}

impl Request {
    /// One line from a client, or what is wrong with it, in words the client can act
    /// on (sent back as `{"ok":false,"error":…}`; the connection stays open).
    pub fn parse(line: &str) -> Result<Request, String> {
        serde_json::from_str(line).map_err(|e| format!("not a request ({e}); expected one JSON object per line, e.g. {{\"cmd\":\"status\"}} or {{\"cmd\":\"ask\",\"text\":\"…\"}}"))
    }
}

/// The default socket: `$RUNTIME_DIRECTORY/control.sock` under systemd (its
/// RuntimeDirectory=voxd), else `$XDG_RUNTIME_DIR/voxd/control.sock`, else
/// `/tmp/voxd-UID/control.sock`.
pub fn default_socket() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("RUNTIME_DIRECTORY") {
        // systemd may list several directories, separated by ':'.
        let first = dir.to_string_lossy().split(':').next().unwrap_or_default().to_string();
        return PathBuf::from(first).join("control.sock");
    }
    match var("XDG_RUNTIME_DIR") {
        Some(dir) => dir.join("voxd/control.sock"),
        // SAFETY: getuid cannot fail.
        None => PathBuf::from(format!("/tmp/voxd-{}", unsafe { libc::getuid() })).join("control.sock"),
    }
}

/// The socket `voxd ctl` talks to: the one given, else the configured one, else the
/// default; when that does not exist, the system service's (/run/voxd).
pub fn client_socket(explicit: Option<&Path>, configured: &str) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if !configured.is_empty() && configured != "off" {
        return PathBuf::from(configured);
    }
    let mine = default_socket();
    let system = PathBuf::from("/run/voxd/control.sock");
    if !mine.exists() && system.exists() {
        system
    } else {
        mine
    }
}

/// A bound control socket; the file is removed when this is dropped.
pub struct Socket {
    listener: Option<std::os::unix::net::UnixListener>,
    pub path: PathBuf,
}

impl Socket {
    /// The listener, for the server task (once).
    pub fn take_listener(&mut self) -> Option<std::os::unix::net::UnixListener> {
        self.listener.take()
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Creates the socket at `path`, owner-only. A socket left by a voxd that died is
/// replaced; one that answers belongs to a voxd still running, and is an error.
pub fn bind(path: &Path) -> Result<Socket> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).with_context(|| format!("[service] control_socket: cannot create {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(|| format!("making {} private", dir.display()))?;
        }
        // A directory another user made (say /tmp/voxd-UID, created first by someone
        // else) could let them swap the socket for their own.
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(dir).with_context(|| format!("[service] control_socket: cannot read {}", dir.display()))?.uid();
        // SAFETY: getuid cannot fail.
        let me = unsafe { libc::getuid() };
        if owner != me && owner != 0 {
            bail!("[service] control_socket: {} belongs to uid {owner}, not to voxd's user (uid {me}); put the socket in a directory of voxd's own", dir.display());
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("[service] control_socket: another voxd is listening on {} (stop it, or give this one another socket)", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path).with_context(|| format!("[service] control_socket: cannot listen on {}", path.display()))?;
    let socket = Socket { listener: Some(listener), path: path.to_path_buf() };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).with_context(|| format!("making {} owner-only", path.display()))?;
    socket.listener.as_ref().expect("just bound").set_nonblocking(true)?;
    Ok(socket)
}

/// What the socket reaches inside the running pipeline.
pub struct Handle {
    pub switches: Arc<Switches>,
    pub turn_ids: TurnIds,
    /// Typed turns go where asr's transcripts go (weak: the edge closes when asr ends).
    pub transcripts: mpsc::WeakSender<Transcript>,
    pub commands: mpsc::Sender<Command>,
    pub voice: watch::Receiver<Voice>,
    pub playback: watch::Receiver<Status>,
    pub metrics: Arc<Metrics>,
    pub counters: Arc<Counters>,
    pub models: Models,
    pub clock: Clock,
    /// Each stage's state, for `status`.
    pub health: Arc<crate::pipeline::health::Health>,
}

/// Answers connections on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::UnixListener, handle: Handle) {
    let handle = Arc::new(handle);
    // SAFETY: getuid cannot fail.
    let owner = unsafe { libc::getuid() };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: wait rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let peer = read.as_ref().peer_cred().map(|c| c.uid());
            if !matches!(peer, Ok(uid) if uid == owner || uid == 0) {
                let who = peer.map_or("an unknown user".to_string(), |uid| format!("uid {uid}"));
                tracing::warn!("control socket: refused {who} (only uid {owner}, voxd's owner, may steer it)");
                let _ = write.write_all(format!("{}\n", refusal(&format!("refused: {who} is not voxd's owner (uid {owner})"))).as_bytes()).await;
                // Take (and ignore) what the client sends before hanging up: closing at
                // once could break its write before it reads why it was refused.
                let mut ignored = BufReader::new(read).lines();
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), ignored.next_line()).await;
                return;
            }
            let mut reader = BufReader::new(read);
            let mut line = Vec::new();
            loop {
                let reply = match next_line(&mut reader, &mut line).await {
                    Ok(Line::End) | Err(_) => break,
                    Ok(Line::TooLong) => {
                        // The rest of it cannot be told from the next request: hang up.
                        let _ = write.write_all(format!("{}\n", refusal(&format!("a request longer than {MAX_LINE} bytes; requests are one short JSON object per line"))).as_bytes()).await;
                        break;
                    }
                    Ok(Line::Text(text)) => match Request::parse(&text) {
                        Ok(request) => handle.answer(request).await,
                        Err(e) => refusal(&e),
                    },
                    Ok(Line::NotText) => refusal("not a request: the line is not UTF-8 text; expected one JSON object per line, e.g. {\"cmd\":\"status\"}"),
                };
                if write.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// The longest request line read: an `ask` with a paragraph fits many times over;
/// a client that sends megabytes without a newline is not allowed to make voxd
/// hold them.
const MAX_LINE: usize = 64 * 1024;

/// One line from a client, as far as voxd will read it.
enum Line {
    Text(String),
    NotText,
    TooLong,
    End,
}

async fn next_line<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R, buf: &mut Vec<u8>) -> std::io::Result<Line> {
    use tokio::io::AsyncReadExt;
    buf.clear();
    let n = (&mut *reader).take(MAX_LINE as u64 + 1).read_until(b'\n', buf).await?;
    if n == 0 {
        return Ok(Line::End);
    }
    if buf.last() != Some(&b'\n') && buf.len() > MAX_LINE {
        return Ok(Line::TooLong);
    }
    let text = buf.strip_suffix(b"\n").unwrap_or(buf);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    Ok(match std::str::from_utf8(text) {
        Ok(t) => Line::Text(t.to_string()),
        Err(_) => Line::NotText,
    })
}

fn refusal(error: &str) -> serde_json::Value {
    serde_json::json!({ "ok": false, "error": error })
}

impl Handle {
    async fn answer(&self, request: Request) -> serde_json::Value {
        match request {
            Request::Status => self.status(),
            Request::Mute | Request::Unmute => {
                let muted = request == Request::Mute;
                self.switches.muted.store(muted, Ordering::Relaxed);
                tracing::info!("control: microphone {}", if muted { "muted" } else { "unmuted" });
                serde_json::json!({ "ok": true, "muted": muted })
            }
            Request::PushToTalk { down } => {
                self.switches.push_to_talk.store(down, Ordering::Relaxed);
                serde_json::json!({ "ok": true, "push_to_talk": down })
            }
            Request::Ask { text } => self.ask(text).await,
            Request::Cancel => {
                let (done, rx) = oneshot::channel();
                if self.commands.send(Command::Cancel { reason: "cancelled from the control socket".into(), done: Some(done) }).await.is_err() {
                    return refusal("voxd is shutting down");
                }
                match rx.await {
                    Ok(Some(turn)) => serde_json::json!({ "ok": true, "cancelled": turn }),
                    Ok(None) => serde_json::json!({ "ok": true, "cancelled": null, "note": "no turn was being answered" }),
                    Err(_) => refusal("voxd is shutting down"),
                }
            }
        }
    }

    /// A typed turn: a transcript with no audio behind it, whose "end of speech" is
    /// now (its round trip runs from here).
    async fn ask(&self, text: String) -> serde_json::Value {
        let text = text.trim().to_string();
        if text.is_empty() {
            return refusal("ask: the text is empty; give the words to answer, e.g. voxd ctl ask \"what time is it\"");
        }
        let now = Instant::now();
        let turn = self.turn_ids.next();
        let anchor = Anchor { speech_end_s: now.duration_since(self.clock.start).as_secs_f64(), speech_end_at: now };
        let transcript = Transcript {
            turn,
            text,
            speculative: false,
            anchor,
            endpoint_at: Some(now),
            done_at: now,
            audio_s: 0.0,
            stats: AsrStats { ms: 0.0, audio_ctx: 0, speculative_hit: false, capped: false },
            typed: true,
            failed: None,
        };
        let Some(transcripts) = self.transcripts.upgrade() else {
            return refusal("voxd is shutting down");
        };
        match transcripts.send(transcript).await {
            Ok(()) => serde_json::json!({ "ok": true, "turn": turn }),
            Err(_) => refusal("voxd is shutting down"),
        }
    }

    fn status(&self) -> serde_json::Value {
        let (voice, playback) = (*self.voice.borrow(), self.playback.borrow().clone());
        let (muted, push_to_talk) = (self.switches.muted(), self.switches.push_to_talk());
        let state = if playback.speaking {
            "speaking"
        } else if voice.speaking {
            "hearing"
        } else if muted && !push_to_talk {
            "muted"
        } else {
            "listening"
        };
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let c = &self.counters;
        serde_json::json!({
            "ok": true,
            "state": state,
            "muted": muted,
            "push_to_talk": push_to_talk,
            "user_speaking": voice.speaking,
            "assistant_speaking": playback.speaking,
            "last_turn_heard": playback.done_turn,
            "stages": self.health.states(),
            "summary": self.metrics.summary(),
            "models": self.models,
            "devices": {
                "xruns": load(&c.capture_xruns) + load(&c.playback_xruns),
                "reopens": load(&c.input_reopens) + load(&c.output_reopens),
                "capture_ms": load(&c.capture_latency_us) as f64 / 1000.0,
                "output_ms": load(&c.output_latency_us) as f64 / 1000.0,
            },
        })
    }
}

/// `voxd ctl`: sends one request and returns the reply (an error when voxd refused).
pub fn request(socket: &Path, request: &Request) -> Result<serde_json::Value> {
    use std::io::{BufRead, Write};
    let stream = std::os::unix::net::UnixStream::connect(socket).with_context(|| {
        format!("cannot reach voxd's control socket {} (is `voxd run` running? its socket is [service] control_socket; --socket names another)", socket.display())
    })?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    // A refusal may come before the request is even taken: read the reply regardless.
    let written = (&stream).write_all(line.as_bytes());
    let mut reply = String::new();
    let read = std::io::BufReader::new(&stream).read_line(&mut reply);
    if reply.trim().is_empty() {
        written.with_context(|| format!("writing to {}", socket.display()))?;
        read.with_context(|| format!("reading voxd's reply on {}", socket.display()))?;
        bail!("voxd closed {} without a reply", socket.display());
    }
    let value: serde_json::Value = serde_json::from_str(&reply).with_context(|| format!("voxd's reply is not JSON: {reply:?}"))?;
    if value["ok"] != serde_json::Value::Bool(true) {
        bail!("{}", value["error"].as_str().unwrap_or("voxd refused the request"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_documented() {
        let r: Request = serde_json::from_str(r#"{"cmd":"push_to_talk","down":true}"#).unwrap();
        assert_eq!(r, Request::PushToTalk { down: true });
        assert_eq!(serde_json::to_string(&Request::Ask { text: "hi".into() }).unwrap(), r#"{"cmd":"ask","text":"hi"}"#);
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).is_err());
    }
}
