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
//!
//! Even the owner's clients are bounded (a stuck or buggy one must not hold voxd's
//! memory or tasks): a request line over 8 KiB is refused and its connection
//! closed, a connection that neither sends nor reads for 30 s is closed, and a
//! 17th connection at once is refused. Push-to-talk is held by the connection that
//! pressed it: it is let go when that client lets go or leaves, and after `[vad]
//! max_utterance_s` at the latest.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::metrics::Metrics;
use crate::pipeline::agent::Command;
use crate::pipeline::asr::Transcript;
use crate::pipeline::playback::Status;
use crate::pipeline::telemetry::Models;
use crate::pipeline::vad::Voice;
use crate::pipeline::{Clock, Counters, Switches, TurnIds};

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

/// Which voxd a control socket belongs to: `voxd run` (steered: mute, ask, …) or
/// `voxd wyoming` (its status only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    Run,
    Wyoming,
}

impl Daemon {
    fn file(self) -> &'static str {
        match self {
            Daemon::Run => "control.sock",
            Daemon::Wyoming => "wyoming.sock",
        }
    }

    /// The setting that places its socket, for errors.
    pub fn key(self) -> &'static str {
        match self {
            Daemon::Run => "[service] control_socket",
            Daemon::Wyoming => "[wyoming] control_socket",
        }
    }

    /// Its system service's RuntimeDirectory (systemd/voxd.service, voxd-wyoming.service).
    fn system_dir(self) -> &'static str {
        match self {
            Daemon::Run => "/run/voxd",
            Daemon::Wyoming => "/run/voxd-wyoming",
        }
    }
}

/// The default socket: `$RUNTIME_DIRECTORY/control.sock` under systemd (its
/// RuntimeDirectory=voxd), else `$XDG_RUNTIME_DIR/voxd/control.sock`, else
/// `/tmp/voxd-UID/control.sock` — `wyoming.sock` for `voxd wyoming`.
pub fn default_socket(daemon: Daemon) -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("RUNTIME_DIRECTORY") {
        // systemd may list several directories, separated by ':'.
        let first = dir.to_string_lossy().split(':').next().unwrap_or_default().to_string();
        return PathBuf::from(first).join(daemon.file());
    }
    match var("XDG_RUNTIME_DIR") {
        Some(dir) => dir.join("voxd").join(daemon.file()),
        // SAFETY: getuid cannot fail.
        None => PathBuf::from(format!("/tmp/voxd-{}", unsafe { libc::getuid() })).join(daemon.file()),
    }
}

/// The socket `voxd ctl` talks to: the one given, else the configured one, else the
/// default; when that does not exist, the system service's (/run/voxd,
/// /run/voxd-wyoming).
pub fn client_socket(daemon: Daemon, explicit: Option<&Path>, configured: &str) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if !configured.is_empty() && configured != "off" {
        return PathBuf::from(configured);
    }
    let mine = default_socket(daemon);
    let system = Path::new(daemon.system_dir()).join(daemon.file());
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

/// The daemon's socket as configured (`setting`: empty → the default place, "off" →
/// none), bound.
pub fn open(daemon: Daemon, setting: &str) -> Result<Option<Socket>> {
    match setting {
        "off" => Ok(None),
        "" => bind(daemon, &default_socket(daemon)).map(Some),
        path => bind(daemon, Path::new(path)).map(Some),
    }
}

/// Creates the socket at `path`, owner-only. A socket left by a voxd that died is
/// replaced; one that answers belongs to a voxd still running, and is an error.
pub fn bind(daemon: Daemon, path: &Path) -> Result<Socket> {
    let key = daemon.key();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).with_context(|| format!("{key}: cannot create {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(|| format!("making {} private", dir.display()))?;
        }
        // A directory another user made (say /tmp/voxd-UID, created first by someone
        // else) could let them swap the socket for their own.
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(dir).with_context(|| format!("{key}: cannot read {}", dir.display()))?.uid();
        // SAFETY: getuid cannot fail.
        let me = unsafe { libc::getuid() };
        if owner != me && owner != 0 {
            bail!("{key}: {} belongs to uid {owner}, not to voxd's user (uid {me}); put the socket in a directory of voxd's own", dir.display());
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("{key}: another voxd is listening on {} (stop it, or give this one another socket)", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path).with_context(|| format!("{key}: cannot listen on {}", path.display()))?;
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
    /// Push-to-talk is let go after this at the latest (`[vad] max_utterance_s`: vad
    /// would cut the utterance there anyway).
    pub push_to_talk_limit: Duration,
}

/// How much the socket gives any one client.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// The longest request line; a longer one is refused and its connection closed.
    line_bytes: usize,
    /// A connection that neither sends a request nor takes its reply for this long
    /// is closed.
    idle: Duration,
    /// Connections open at once; one more is refused and closed at once.
    connections: usize,
}

impl Limits {
    /// A request is a few dozen bytes (an `ask`, a sentence); `voxd ctl` is done in
    /// milliseconds, and while it holds push-to-talk it asks for the status several
    /// times a second.
    const SERVED: Limits = Limits { line_bytes: 8 * 1024, idle: Duration::from_secs(30), connections: 16 };
}

/// Who holds push-to-talk. Each press gets a number, and a release because a
/// client left or a press's time ran out lets go only while that press is the
/// newest: a newer one (another client's, or the same client's again) stays held.
#[derive(Debug, Default)]
struct Presses {
    state: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    newest: u64,
    holding: bool,
    /// The newest press's timer (an older one has nothing left to let go).
    timer: Option<tokio::task::AbortHandle>,
}

impl Presses {
    /// Holds push-to-talk for a new press, for `limit` at the most; returns the press.
    fn press(self: &Arc<Self>, switches: &Arc<Switches>, limit: Duration) -> u64 {
        let mut held = self.state.lock().unwrap_or_else(|e| e.into_inner());
        held.newest += 1;
        held.holding = true;
        switches.push_to_talk.store(true, Ordering::Relaxed);
        let (press, presses, switches) = (held.newest, self.clone(), switches.clone());
        let timer = tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            if presses.release(&switches, press) {
                tracing::info!("control: push-to-talk let go after {:.1} s ([vad] max_utterance_s)", limit.as_secs_f32());
            }
        });
        if let Some(older) = held.timer.replace(timer.abort_handle()) {
            older.abort();
        }
        press
    }

    /// Lets go if `press` is still the one holding; says whether it was.
    fn release(&self, switches: &Switches, press: u64) -> bool {
        let mut held = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !(held.holding && held.newest == press) {
            return false;
        }
        held.holding = false;
        switches.push_to_talk.store(false, Ordering::Relaxed);
        true
    }

    /// Lets go, whoever pressed (`ptt up`).
    fn let_go(&self, switches: &Switches) {
        let mut held = self.state.lock().unwrap_or_else(|e| e.into_inner());
        held.holding = false;
        if let Some(timer) = held.timer.take() {
            timer.abort();
        }
        switches.push_to_talk.store(false, Ordering::Relaxed);
    }
}

/// A request line as read.
#[derive(Debug, PartialEq)]
enum Line {
    Request(Vec<u8>),
    /// Longer than allowed: not read further.
    TooLong,
    /// The client stopped sending.
    End,
}

/// Reads one line (without its newline), never more than `max` bytes of it.
async fn read_line(reader: &mut (impl AsyncBufRead + Unpin), max: usize) -> std::io::Result<Line> {
    let mut line = Vec::new();
    if (&mut *reader).take(max as u64 + 1).read_until(b'\n', &mut line).await? == 0 {
        return Ok(Line::End);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > max {
        return Ok(Line::TooLong);
    }
    Ok(Line::Request(line))
}

/// Answers connections on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::UnixListener, handle: Handle) {
    serve_with(listener, Steered::Pipeline(handle), Limits::SERVED).await;
}

/// Answers `status` on `listener` with what `report` says (`voxd wyoming`: it has
/// nothing to steer) until the task is dropped; every other request is refused.
pub async fn serve_status(listener: tokio::net::UnixListener, report: Report) {
    serve_with(listener, Steered::Reporter(report), Limits::SERVED).await;
}

/// A status, made when asked.
pub type Report = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// What a socket reaches.
enum Steered {
    /// `voxd run`'s pipeline: every request.
    Pipeline(Handle),
    /// `voxd wyoming`: its status only.
    Reporter(Report),
}

/// The socket's server: what it steers, and who holds push-to-talk.
struct Server {
    steered: Steered,
    presses: Arc<Presses>,
    limits: Limits,
    /// voxd's own uid, the only one (root aside) let in.
    owner: u32,
}

async fn serve_with(listener: tokio::net::UnixListener, steered: Steered, limits: Limits) {
    // SAFETY: getuid cannot fail.
    let owner = unsafe { libc::getuid() };
    let server = Arc::new(Server { steered, presses: Arc::default(), limits, owner });
    let slots = Arc::new(Semaphore::new(limits.connections));
    // Said once each time the socket fills up, not once per refused connection.
    let mut warned = false;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: wait rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if !std::mem::replace(&mut warned, true) {
                tracing::warn!("control socket: refusing connections: {} are open, the most it takes", limits.connections);
            }
            // Answered without waiting (the socket's buffer is empty) and closed at
            // once: a refused connection must cost nothing.
            let why = refusal(&format!("refused: {} connections are open, the most voxd's control socket takes; close one and try again", limits.connections));
            let _ = stream.try_write(format!("{why}\n").as_bytes());
            continue;
        };
        warned = false;
        let server = server.clone();
        tokio::spawn(async move {
            server.connection(stream).await;
            drop(slot);
        });
    }
}

impl Server {
    async fn connection(&self, stream: tokio::net::UnixStream) {
        let owner = self.owner;
        let (read, mut write) = stream.into_split();
        let peer = read.as_ref().peer_cred().map(|c| c.uid());
        if !matches!(peer, Ok(uid) if uid == owner || uid == 0) {
            let who = peer.map_or("an unknown user".to_string(), |uid| format!("uid {uid}"));
            tracing::warn!("control socket: refused {who} (only uid {owner}, voxd's owner, may steer it)");
            let _ = write.write_all(format!("{}\n", refusal(&format!("refused: {who} is not voxd's owner (uid {owner})"))).as_bytes()).await;
            // Take (and ignore) what the client sends before hanging up: closing at
            // once could break its write before it reads why it was refused.
            let mut ignored = BufReader::new(read);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), read_line(&mut ignored, self.limits.line_bytes)).await;
            return;
        }
        let (mut reader, limits) = (BufReader::new(read), self.limits);
        // The push-to-talk press this client made, let go when it leaves.
        let mut press = None;
        loop {
            let line = match tokio::time::timeout(limits.idle, read_line(&mut reader, limits.line_bytes)).await {
                Ok(Ok(Line::Request(line))) => line,
                Ok(Ok(Line::TooLong)) => {
                    tracing::warn!("control socket: refused a request line over {} bytes and closed its connection", limits.line_bytes);
                    let why = refusal(&format!("refused: a request line over {} bytes; send one JSON request per line, e.g. {{\"cmd\":\"status\"}}", limits.line_bytes));
                    let _ = tokio::time::timeout(limits.idle, write.write_all(format!("{why}\n").as_bytes())).await;
                    break;
                }
                Ok(Ok(Line::End) | Err(_)) => break,
                Err(_) => {
                    tracing::debug!("control socket: closed a connection idle for {} s", limits.idle.as_secs());
                    break;
                }
            };
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            let reply = match std::str::from_utf8(line).map_err(|_| "not a request: the line is not UTF-8 text; expected one JSON object per line, e.g. {\"cmd\":\"status\"}".to_string()).and_then(Request::parse) {
                Ok(request) => self.answer(request, &mut press).await,
                Err(e) => refusal(&e),
            };
            // A client that stops reading its replies is idle too.
            if !matches!(tokio::time::timeout(limits.idle, write.write_all(format!("{reply}\n").as_bytes())).await, Ok(Ok(()))) {
                break;
            }
        }
        if let (Some(p), Steered::Pipeline(handle)) = (press, &self.steered) {
            if self.presses.release(&handle.switches, p) {
                tracing::info!("control: push-to-talk let go: the client that pressed it left");
            }
        }
    }

    /// Answers `request` from a client whose push-to-talk press, if any, is `press`.
    async fn answer(&self, request: Request, press: &mut Option<u64>) -> serde_json::Value {
        let handle = match (&self.steered, &request) {
            (Steered::Pipeline(handle), _) => handle,
            (Steered::Reporter(report), Request::Status) => return report(),
            (Steered::Reporter(_), _) => return refusal("voxd wyoming only reports its status here; mute, ptt, ask and cancel steer `voxd run` (its own socket, [service] control_socket)"),
        };
        match request {
            Request::Status => handle.status(),
            Request::Mute => handle.mute(true),
            Request::Unmute => handle.mute(false),
            Request::Ask { text } => handle.ask(text).await,
            Request::Cancel => handle.cancel().await,
            Request::PushToTalk { down: true } => {
                *press = Some(self.presses.press(&handle.switches, handle.push_to_talk_limit));
                serde_json::json!({ "ok": true, "push_to_talk": true, "held_at_most_s": handle.push_to_talk_limit.as_secs_f64() })
            }
            Request::PushToTalk { down: false } => {
                *press = None;
                self.presses.let_go(&handle.switches);
                serde_json::json!({ "ok": true, "push_to_talk": false })
            }
        }
    }
}

fn refusal(error: &str) -> serde_json::Value {
    serde_json::json!({ "ok": false, "error": error })
}

impl Handle {
    fn mute(&self, muted: bool) -> serde_json::Value {
        self.switches.muted.store(muted, Ordering::Relaxed);
        tracing::info!("control: microphone {}", if muted { "muted" } else { "unmuted" });
        serde_json::json!({ "ok": true, "muted": muted })
    }

    async fn cancel(&self) -> serde_json::Value {
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

    /// A typed turn: a transcript with no audio behind it, whose "end of speech" is
    /// now (its round trip runs from here).
    async fn ask(&self, text: String) -> serde_json::Value {
        let text = text.trim().to_string();
        if text.is_empty() {
            return refusal("ask: the text is empty; give the words to answer, e.g. voxd ctl ask \"what time is it\"");
        }
        let turn = self.turn_ids.next();
        let transcript = Transcript::typed(turn, text, &self.clock);
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
    Client::connect(socket)?.send(request)
}

/// `voxd ctl ptt down`: presses push-to-talk and holds it while this runs; voxd lets
/// go when this process ends (Ctrl-C: its connection closes), at `voxd ctl ptt up`,
/// or after `[vad] max_utterance_s`. Calls `pressed` with voxd's reply to the press,
/// and returns once voxd has let go.
pub fn hold_push_to_talk(socket: &Path, pressed: impl FnOnce(&serde_json::Value)) -> Result<()> {
    let mut client = Client::connect(socket)?;
    pressed(&client.send(&Request::PushToTalk { down: true })?);
    // Asking keeps the connection from going idle, and tells when voxd let go.
    while client.send(&Request::Status)?["push_to_talk"] == true {
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// One connection to the control socket.
struct Client {
    socket: PathBuf,
    stream: std::os::unix::net::UnixStream,
    replies: std::io::BufReader<std::os::unix::net::UnixStream>,
}

impl Client {
    fn connect(socket: &Path) -> Result<Client> {
        let stream = std::os::unix::net::UnixStream::connect(socket).with_context(|| {
            format!("cannot reach voxd's control socket {} (is `voxd run` running? its socket is [service] control_socket; --socket names another)", socket.display())
        })?;
        // Generous: a daemon on a starved CPU still answers; a wedged one is given up on.
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let replies = std::io::BufReader::new(stream.try_clone().with_context(|| format!("opening {}", socket.display()))?);
        Ok(Client { socket: socket.to_path_buf(), stream, replies })
    }

    /// Sends `request` and returns the reply (an error when voxd refused).
    fn send(&mut self, request: &Request) -> Result<serde_json::Value> {
        use std::io::{BufRead, Write};
        let socket = self.socket.display();
        let mut line = serde_json::to_string(request)?;
        line.push('\n');
        // A refusal may come before the request is even taken: read the reply regardless.
        let written = self.stream.write_all(line.as_bytes());
        let mut reply = String::new();
        let read = self.replies.read_line(&mut reply);
        if reply.trim().is_empty() {
            written.with_context(|| format!("writing to {socket}"))?;
            read.with_context(|| format!("reading voxd's reply on {socket}"))?;
            bail!("voxd closed {socket} without a reply");
        }
        let value: serde_json::Value = serde_json::from_str(&reply).with_context(|| format!("voxd's reply is not JSON: {reply:?}"))?;
        if value["ok"] != serde_json::Value::Bool(true) {
            bail!("{}", value["error"].as_str().unwrap_or("voxd refused the request"));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Read, Write};
    use std::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn an_older_press_running_out_does_not_let_go_of_a_newer_one() {
        let (switches, presses) = (Arc::new(Switches::default()), Arc::new(Presses::default()));
        let limit = Duration::from_secs(2);
        let first = presses.press(&switches, limit);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let second = presses.press(&switches, limit);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(switches.push_to_talk(), "the first press's 2 s are up, the second's are not");
        assert!(!presses.release(&switches, first), "the first press's client leaving");
        assert!(switches.push_to_talk());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!switches.push_to_talk(), "the second press's 2 s are up");
        assert!(!presses.release(&switches, second), "already let go");
        // A press let go by `ptt up` stays let go when its time runs out later.
        presses.press(&switches, limit);
        presses.let_go(&switches);
        let third = presses.press(&switches, limit);
        assert!(presses.release(&switches, third) && !switches.push_to_talk());
    }

    #[tokio::test]
    async fn a_line_is_read_up_to_the_limit_and_no_further() {
        let mut input: &[u8] = b"{\"cmd\":\"status\"}\nabcdefghij\nlast";
        assert_eq!(read_line(&mut input, 20).await.unwrap(), Line::Request(b"{\"cmd\":\"status\"}".to_vec()));
        assert_eq!(read_line(&mut input, 10).await.unwrap(), Line::Request(b"abcdefghij".to_vec()));
        assert_eq!(read_line(&mut input, 10).await.unwrap(), Line::Request(b"last".to_vec()));
        assert_eq!(read_line(&mut input, 10).await.unwrap(), Line::End);
        let mut long: &[u8] = &[b'x'; 100];
        assert_eq!(read_line(&mut long, 10).await.unwrap(), Line::TooLong);
        assert_eq!(long.len(), 89, "read 11 bytes: the limit and one more");
    }

    /// A control socket served with `limits`, in a directory of its own, on a
    /// runtime of its own (as the pipeline's); nothing behind it but the switches.
    struct Served {
        _dir: tempfile::TempDir,
        path: PathBuf,
        switches: Arc<Switches>,
        _runtime: std::thread::JoinHandle<()>,
    }

    fn served(limits: Limits, push_to_talk_limit: Duration) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let mut socket = bind(Daemon::Run, &path).unwrap();
        let listener = socket.take_listener().unwrap();
        std::mem::forget(socket); // the directory goes with the test
        let switches = Arc::new(Switches::default());
        let (transcripts, _) = mpsc::channel(1);
        let (commands, _) = mpsc::channel(1);
        let handle = Handle {
            switches: switches.clone(),
            turn_ids: TurnIds::starting_at(1),
            transcripts: transcripts.downgrade(),
            commands,
            voice: watch::channel(Voice { speaking: false, turn: 0, since: Instant::now() }).1,
            playback: watch::channel(Status::default()).1,
            metrics: Arc::default(),
            counters: Arc::default(),
            models: Models { asr: "a".into(), llm: "l".into(), tts: "t".into() },
            clock: Clock::live(),
            health: crate::pipeline::health::Health::new(Duration::from_secs(60)),
            push_to_talk_limit,
        };
        let runtime = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move { serve_with(tokio::net::UnixListener::from_std(listener).unwrap(), Steered::Pipeline(handle), limits).await });
        });
        Served { _dir: dir, path, switches, _runtime: runtime }
    }

    const TEST: Limits = Limits { line_bytes: 64, idle: Duration::from_millis(500), connections: 2 };

    fn connect(path: &Path) -> (std::os::unix::net::UnixStream, std::io::BufReader<std::os::unix::net::UnixStream>) {
        let stream = std::os::unix::net::UnixStream::connect(path).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let reader = std::io::BufReader::new(stream.try_clone().unwrap());
        (stream, reader)
    }

    fn reply(reader: &mut impl BufRead) -> String {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        line
    }

    /// Waits (10 s at most, for a loaded machine) until the server closes `stream`.
    fn closed(stream: &mut std::os::unix::net::UnixStream) -> bool {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        matches!(stream.read(&mut [0u8; 64]), Ok(0))
    }

    #[test]
    fn a_line_over_the_limit_is_refused_and_its_connection_closed() {
        let served = served(TEST, Duration::from_secs(30));
        let (mut stream, mut reader) = connect(&served.path);
        let _ = stream.write_all(&[b'x'; 1000]);
        let refused = reply(&mut reader);
        assert!(refused.contains("\"ok\":false") && refused.contains("a request line over 64 bytes"), "{refused}");
        assert!(closed(&mut stream));
    }

    #[test]
    fn a_silent_connection_is_closed_when_idle() {
        let served = served(TEST, Duration::from_secs(30));
        let (mut stream, mut reader) = connect(&served.path);
        stream.write_all(b"{\"cmd\":\"mute\"}\n").unwrap();
        assert!(reply(&mut reader).contains("\"muted\":true"));
        let started = Instant::now();
        assert!(closed(&mut stream), "still open");
        assert!(started.elapsed() >= Duration::from_millis(400), "closed before it was idle for 500 ms");
    }

    #[test]
    fn a_connection_over_the_cap_is_refused_at_once() {
        let served = served(TEST, Duration::from_secs(30));
        let open: Vec<_> = (0..2)
            .map(|_| {
                let (mut stream, mut reader) = connect(&served.path);
                stream.write_all(b"{\"cmd\":\"unmute\"}\n").unwrap();
                assert!(reply(&mut reader).contains("\"ok\":true"));
                (stream, reader)
            })
            .collect();
        let (mut third, mut reader) = connect(&served.path);
        let refused = reply(&mut reader);
        assert!(refused.contains("refused: 2 connections are open"), "{refused}");
        assert!(closed(&mut third));
        drop(open);
        // The slots are free again once the server has seen them go.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (mut stream, mut reader) = connect(&served.path);
            let _ = stream.write_all(b"{\"cmd\":\"unmute\"}\n");
            if reply(&mut reader).contains("\"ok\":true") {
                break;
            }
            assert!(Instant::now() < deadline, "the closed connections' slots never came back");
        }
    }

    #[test]
    fn push_to_talk_is_let_go_when_its_client_leaves_or_its_time_is_up() {
        let served = served(Limits::SERVED, Duration::from_secs(1));
        let press = |stream: &mut std::os::unix::net::UnixStream, reader: &mut std::io::BufReader<_>| {
            stream.write_all(b"{\"cmd\":\"push_to_talk\",\"down\":true}\n").unwrap();
            let r = reply(reader);
            assert!(r.contains("\"push_to_talk\":true"), "{r}");
        };
        let held = || served.switches.push_to_talk();
        let wait_for = |what: &str, done: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !done() {
                assert!(Instant::now() < deadline, "{what}");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        // Pressed, and the client gone.
        let (mut stream, mut reader) = connect(&served.path);
        press(&mut stream, &mut reader);
        assert!(held());
        drop((stream, reader));
        wait_for("the press of a client that left is let go", &|| !held());
        // Pressed, and the client still there: let go when its 1 s is up.
        let (mut stream, mut reader) = connect(&served.path);
        let pressed = Instant::now();
        press(&mut stream, &mut reader);
        wait_for("a press is let go when its time is up", &|| !held());
        assert!(pressed.elapsed() >= Duration::from_millis(900), "let go after {:?}, before its 1 s", pressed.elapsed());
        // Another client's newer press outlives an older client leaving.
        press(&mut stream, &mut reader);
        let (mut other, mut other_reader) = connect(&served.path);
        press(&mut other, &mut other_reader);
        drop((stream, reader));
        std::thread::sleep(Duration::from_millis(100));
        assert!(held(), "the older press's client leaving let go of the newer press");
        other.write_all(b"{\"cmd\":\"push_to_talk\",\"down\":false}\n").unwrap();
        assert!(reply(&mut other_reader).contains("\"push_to_talk\":false") && !held());
    }

    #[test]
    fn requests_read_as_documented() {
        let r: Request = serde_json::from_str(r#"{"cmd":"push_to_talk","down":true}"#).unwrap();
        assert_eq!(r, Request::PushToTalk { down: true });
        assert_eq!(serde_json::to_string(&Request::Ask { text: "hi".into() }).unwrap(), r#"{"cmd":"ask","text":"hi"}"#);
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).is_err());
    }
}
