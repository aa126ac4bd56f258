//! Prometheus metrics: what the turn log says, summed up since start, served as
//! text on a local HTTP endpoint (`[service] metrics_listen`).
//!
//! Telemetry records every finished turn here; the endpoint renders the totals and
//! the pipeline's counters on each scrape. Nothing here is on the audio path: a
//! mutex guards the totals, taken once per turn and once per scrape, and the
//! endpoint runs on a thread of its own, bounded in connections, time and bytes per
//! peer (it may listen on the network).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bench::{stage_times, STAGES};
use crate::pipeline::telemetry::{Models, TurnRecord};
use crate::pipeline::Counters;

/// Bucket bounds in seconds, for the round trip and each stage: fine around the
/// 0.5-1.5 s a voice turn should take, coarse beyond.
const BUCKETS: [f64; 14] = [0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 5.0];

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Count per bound in `BUCKETS` (not cumulative; summed when rendered).
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, n) in BUCKETS.iter().zip(self.counts) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// Totals over the turns logged since start.
#[derive(Debug, Default)]
struct Totals {
    /// By how the turn came in ("speech", "typed") and how it ended ("answered",
    /// "cancelled", "error").
    turns: BTreeMap<(&'static str, &'static str), u64>,
    cancel_reasons: BTreeMap<String, u64>,
    /// By how the turn began ("wake", "follow_up", "push_to_talk", "typed", "always").
    started: BTreeMap<&'static str, u64>,
    /// Turns a wake word began that the user cancelled (a false wake, mostly).
    wake_turns_cancelled: u64,
    round_trip: Histogram,
    /// Each stage's own time, by the short names of `bench::STAGES`.
    stages: BTreeMap<String, Histogram>,
    /// By tool and result ("ok", "error").
    tool_calls: BTreeMap<(String, &'static str), u64>,
    /// Turns said in a room (a satellite's, or `[audio] room`), by room and outcome.
    rooms: BTreeMap<(String, &'static str), u64>,
    last_round_trip_ms: Option<f64>,
}

/// The metrics of one running pipeline.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    totals: Mutex<Totals>,
}

/// What the status command and the endpoint say about the turns so far.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    pub turns: u64,
    pub cancelled: u64,
    pub failed: u64,
    pub last_round_trip_ms: Option<f64>,
    pub uptime_s: f64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics { started: Instant::now(), totals: Mutex::default() }
    }
}

/// "first_clause" from "first clause (→ first sentence)".
fn short(stage: &str) -> String {
    stage.split(" (").next().unwrap_or(stage).replace(' ', "_")
}

impl Metrics {
    /// Adds a finished turn (telemetry calls this as it writes the turn's line).
    pub fn record(&self, t: &TurnRecord) {
        let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        let source = if t.typed { "typed" } else { "speech" };
        let outcome = match t.outcome.as_str() {
            "error" => "error",
            _ if t.cancelled => "cancelled",
            _ => "answered",
        };
        *totals.turns.entry((source, outcome)).or_default() += 1;
        if let Some(room) = &t.room {
            *totals.rooms.entry((room.clone(), outcome)).or_default() += 1;
        }
        let started = match t.wake.as_str() {
            "follow_up" => "follow_up",
            "push_to_talk" => "push_to_talk",
            "typed" => "typed",
            "always" | "" => "always",
            _ => "wake",
        };
        *totals.started.entry(started).or_default() += 1;
        if started == "wake" && outcome == "cancelled" {
            totals.wake_turns_cancelled += 1;
        }
        if let Some(reason) = t.cancel_reason.as_ref().filter(|_| t.cancelled) {
            *totals.cancel_reasons.entry(reason.clone()).or_default() += 1;
        }
        for call in &t.tool_calls {
            *totals.tool_calls.entry((call.name.clone(), if call.ok { "ok" } else { "error" })).or_default() += 1;
        }
        // Latency figures are the spoken, answered turns' (as in `voxd latency report`).
        let Some(round_trip) = t.round_trip_ms.filter(|_| outcome == "answered" && !t.typed) else {
            return;
        };
        totals.round_trip.observe(round_trip / 1000.0);
        totals.last_round_trip_ms = Some(round_trip);
        for ((name, _), (own, _)) in STAGES.iter().zip(stage_times(&t.marks, t.asr.ms)) {
            totals.stages.entry(short(name)).or_default().observe(own.max(0.0) / 1000.0);
        }
    }

    pub fn summary(&self) -> Summary {
        let totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        Summary {
            turns: totals.turns.values().sum(),
            cancelled: totals.turns.iter().filter(|((_, o), _)| *o == "cancelled").map(|(_, n)| n).sum(),
            failed: totals.turns.iter().filter(|((_, o), _)| *o == "error").map(|(_, n)| n).sum(),
            last_round_trip_ms: totals.last_round_trip_ms,
            uptime_s: self.started.elapsed().as_secs_f64(),
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, counters: &Counters, models: &Models) -> String {
        let totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(&mut out, "voxd_info", "gauge", "The models voxd runs (value 1).");
        let _ = writeln!(out, "voxd_info{{version=\"{}\",asr=\"{}\",llm=\"{}\",tts=\"{}\"}} 1", env!("CARGO_PKG_VERSION"), label(&models.asr), label(&models.llm), label(&models.tts));
        family(&mut out, "voxd_uptime_seconds", "gauge", "Seconds since the pipeline started.");
        let _ = writeln!(out, "voxd_uptime_seconds {:.3}", self.started.elapsed().as_secs_f64());
        family(&mut out, "voxd_turns_total", "counter", "Turns logged, by how they came in (speech, typed) and how they ended (answered, cancelled, error).");
        for source in ["speech", "typed"] {
            for outcome in ["answered", "cancelled", "error"] {
                let n = totals.turns.get(&(source, outcome)).copied().unwrap_or(0);
                let _ = writeln!(out, "voxd_turns_total{{source=\"{source}\",outcome=\"{outcome}\"}} {n}");
            }
        }
        family(&mut out, "voxd_room_turns_total", "counter", "Turns said in a room (a satellite's, or the microphone's [audio] room), by room and how they ended.");
        for ((room, outcome), n) in &totals.rooms {
            let _ = writeln!(out, "voxd_room_turns_total{{room=\"{}\",outcome=\"{outcome}\"}} {n}", label(room));
        }
        family(&mut out, "voxd_turns_cancelled_total", "counter", "Cancelled turns by reason (barge-in, new speech, control, stopping).");
        for (reason, n) in &totals.cancel_reasons {
            let _ = writeln!(out, "voxd_turns_cancelled_total{{reason=\"{}\"}} {n}", label(reason));
        }
        family(&mut out, "voxd_turns_started_total", "counter", "Turns by how they began: a wake word, a follow-up after an answer, push-to-talk, typed, or every utterance ([wake] mode = \"always\").");
        for by in ["wake", "follow_up", "push_to_talk", "typed", "always"] {
            let _ = writeln!(out, "voxd_turns_started_total{{by=\"{by}\"}} {}", totals.started.get(by).copied().unwrap_or(0));
        }
        family(&mut out, "voxd_wake_turns_cancelled_total", "counter", "Turns a wake word began that the user cancelled (most are false wakes).");
        let _ = writeln!(out, "voxd_wake_turns_cancelled_total {}", totals.wake_turns_cancelled);
        family(&mut out, "voxd_round_trip_seconds", "histogram", "End of the user's speech to the first sample of the answer at the output (spoken, answered turns).");
        totals.round_trip.render(&mut out, "voxd_round_trip_seconds", "");
        family(&mut out, "voxd_stage_seconds", "histogram", "Each stage's own time in a turn (as in `voxd latency report`).");
        for (name, _) in STAGES {
            let h = totals.stages.get(&short(name)).cloned().unwrap_or_default();
            h.render(&mut out, "voxd_stage_seconds", &format!("stage=\"{}\"", short(name)));
        }
        family(&mut out, "voxd_tool_calls_total", "counter", "Tool calls by tool and result (ok, error: failed, refused or invalid).");
        for ((tool, result), n) in &totals.tool_calls {
            let _ = writeln!(out, "voxd_tool_calls_total{{tool=\"{}\",result=\"{result}\"}} {n}", label(tool));
        }
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let counts: [(&str, &str, &str, u64); 15] = [
            ("voxd_wakes_total", "", "Wake words heard (while listening for them).", load(&counters.wakes)),
            ("voxd_wakes_unanswered_total", "", "Wake words no request followed within [wake] listen_s (most are false wakes).", load(&counters.wakes_unanswered)),
            ("voxd_wake_frames_dropped_total", "", "Audio frames the wake-word detector was too far behind to take.", load(&counters.wake_drops)),
            ("voxd_xruns_total", "device=\"microphone\"", "Overruns and underruns the audio devices reported.", load(&counters.capture_xruns)),
            ("voxd_xruns_total", "device=\"speaker\"", "", load(&counters.playback_xruns)),
            ("voxd_device_reopens_total", "device=\"microphone\"", "Times an audio device was reopened after it failed or went silent.", load(&counters.input_reopens)),
            ("voxd_device_reopens_total", "device=\"speaker\"", "", load(&counters.output_reopens)),
            ("voxd_device_errors_total", "device=\"microphone\"", "Errors the audio devices reported, xruns aside.", load(&counters.capture_errors)),
            ("voxd_device_errors_total", "device=\"speaker\"", "", load(&counters.playback_errors)),
            ("voxd_capture_overflow_samples_total", "", "Microphone samples lost because the pipeline did not drain the ring in time.", load(&counters.capture_overflows)),
            ("voxd_playback_underruns_total", "", "Times the speaker ran dry in the middle of a reply.", load(&counters.playback_underruns)),
            ("voxd_utterances_dropped_total", "reason=\"asr_behind\"", "Utterances that never became turns.", load(&counters.vad_drops)),
            ("voxd_utterances_dropped_total", "reason=\"no_speech\"", "", load(&counters.utterances_dropped)),
            ("voxd_speculations_abandoned_total", "", "Replies started at a pause the user then spoke through.", load(&counters.speculations_abandoned)),
            ("voxd_playback_stalls_total", "", "Turns ended without their audio because the speaker had not played it long after it was due.", load(&counters.playback_stalls)),
        ];
        for (name, labels, help, value) in counts {
            if !help.is_empty() {
                family(&mut out, name, "counter", help);
            }
            let labels = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
            let _ = writeln!(out, "{name}{labels} {value}");
        }
        family(&mut out, "voxd_telemetry_dropped_total", "counter", "Telemetry notes lost because its queue was full.");
        let _ = writeln!(out, "voxd_telemetry_dropped_total {}", load(&counters.telemetry_drops));
        family(&mut out, "voxd_latency_log_write_errors_total", "counter", "Turns the latency log could not take (a full disk, say).");
        let _ = writeln!(out, "voxd_latency_log_write_errors_total {}", load(&counters.log_write_errors));
        family(&mut out, "voxd_device_latency_seconds", "gauge", "Latency the audio devices' buffers add, as they last reported it.");
        let _ = writeln!(out, "voxd_device_latency_seconds{{device=\"microphone\"}} {}", load(&counters.capture_latency_us) as f64 / 1e6);
        let _ = writeln!(out, "voxd_device_latency_seconds{{device=\"speaker\"}} {}", load(&counters.output_latency_us) as f64 / 1e6);
        out
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// How much the endpoint gives any one peer.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Connections open at once; at the cap the oldest is closed (see `serve`).
    connections: usize,
    /// A connection's whole life, reading the request and writing the answer.
    deadline: Duration,
}

impl Limits {
    /// A scrape is one request answered in milliseconds, and Prometheus gives up on
    /// one after 10 s (its default scrape_timeout): a connection still open then is
    /// no scrape. 32 leaves room for a few scrapers and people with curl.
    const SERVED: Limits = Limits { connections: 32, deadline: Duration::from_secs(10) };
}

/// The endpoint, on a thread of its own (`voxd-metrics`) with its own runtime: the
/// pipeline's runtime is a single thread that also feeds the speaker, and a flood of
/// clients must never take turns with playback. Stops when dropped.
pub struct Server {
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Server {
    /// Serves `GET /metrics` on `listener`, answering with what `render` says.
    pub fn start(listener: std::net::TcpListener, render: impl Fn() -> String + Send + Sync + 'static) -> anyhow::Result<Server> {
        Server::start_with(listener, Limits::SERVED, render)
    }

    fn start_with(listener: std::net::TcpListener, limits: Limits, render: impl Fn() -> String + Send + Sync + 'static) -> anyhow::Result<Server> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the metrics endpoint's runtime")?;
        let listener = {
            let _in_runtime = runtime.enter();
            tokio::net::TcpListener::from_std(listener).context("handing the metrics endpoint's socket to its runtime")?
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("voxd-metrics".into())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        () = serve(listener, limits, render) => {}
                        _ = stopped => {}
                    }
                });
            })
            .context("starting the metrics endpoint's thread")?;
        Ok(Server { _stop: stop })
    }
}

/// Answers connections on `listener` until the task is dropped. One short request
/// per connection (what Prometheus sends); anything else gets 404 or 405.
async fn serve(listener: tokio::net::TcpListener, limits: Limits, render: impl Fn() -> String + Send + Sync + 'static) {
    let render = std::sync::Arc::new(render);
    // Oldest first.
    let mut open: VecDeque<tokio::task::AbortHandle> = VecDeque::with_capacity(limits.connections);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: wait rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        open.retain(|c| !c.is_finished());
        if open.len() >= limits.connections {
            // Make room by closing the oldest, not by turning the newcomer away: an
            // honest request is answered in milliseconds, so the oldest is the
            // slowest, and refusing newcomers would let a handful of slow clients
            // lock every scraper out.
            if let Some(oldest) = open.pop_front() {
                oldest.abort();
            }
        }
        let render = render.clone();
        open.push_back(tokio::spawn(answer(stream, limits.deadline, move || render())).abort_handle());
    }
}

/// Reads one request and answers it, all within `deadline` (a client too slow to
/// send its request, or to take the answer, is cut off).
async fn answer(mut stream: tokio::net::TcpStream, deadline: Duration, render: impl FnOnce() -> String) {
    let _ = tokio::time::timeout(deadline, async {
        let reply = match read_head(&mut stream).await {
            Ok(Head::Complete(head)) => respond(&head, render),
            Ok(Head::TooLarge) => plain("431 Request Header Fields Too Large", &format!("the request's head is over {MAX_HEAD} bytes\n")),
            Err(_) => return,
        };
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Opens the endpoint's socket: an error now (port taken, bad address) is one voxd
/// reports at start, naming the setting (`key`).
pub fn bind(key: &str, listen: &str) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(listen).with_context(|| format!("{key} = {listen:?}: cannot listen there (is the port taken? expected a free address such as \"127.0.0.1:9464\")"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The longest request head read.
const MAX_HEAD: usize = 8192;

enum Head {
    /// Up to its blank line, or all the client sent before it stopped sending.
    Complete(String),
    TooLarge,
}

/// Reads a request's head, up to the blank line.
async fn read_head(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> std::io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Head::Complete(String::from_utf8_lossy(&buf).into_owned()));
        }
        let scanned = buf.len();
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf, scanned) {
            buf.truncate(end);
            return Ok(Head::Complete(String::from_utf8_lossy(&buf).into_owned()));
        }
        if buf.len() > MAX_HEAD {
            return Ok(Head::TooLarge);
        }
    }
}

/// Where the head in `buf` ends (after its "\r\n\r\n"), looking only at what came
/// after the first `scanned` bytes and the 3 before them, where the blank line may
/// have begun: a head dripped a byte at a time costs its length, not its square.
fn head_end(buf: &[u8], scanned: usize) -> Option<usize> {
    let from = scanned.saturating_sub(3);
    buf[from..].windows(4).position(|w| w == b"\r\n\r\n").map(|i| from + i + 4)
}

fn respond(head: &str, render: impl FnOnce() -> String) -> String {
    let mut request_line = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (request_line.next().unwrap_or(""), request_line.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, kind, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", render()),
        ("GET", "/") => ("200 OK", "text/plain; charset=utf-8", "voxd: metrics at /metrics\n".to_string()),
        ("GET", _) => ("404 Not Found", "text/plain; charset=utf-8", "not found: voxd serves /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", "text/plain; charset=utf-8", "only GET\n".to_string()),
    };
    http(status, kind, &body)
}

fn plain(status: &str, body: &str) -> String {
    http(status, "text/plain; charset=utf-8", body)
}

fn http(status: &str, kind: &str, body: &str) -> String {
    format!("HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_in_the_count() {
        let mut h = Histogram::default();
        for s in [0.01, 0.3, 0.45, 0.45, 7.0] {
            h.observe(s);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "stage=\"asr\"");
        assert!(out.contains("x_bucket{stage=\"asr\",le=\"0.025\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{stage=\"asr\",le=\"0.3\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{stage=\"asr\",le=\"0.5\"} 4\n"), "{out}");
        assert!(out.contains("x_bucket{stage=\"asr\",le=\"5\"} 4\n"), "{out}");
        assert!(out.contains("x_bucket{stage=\"asr\",le=\"+Inf\"} 5\n"), "{out}");
        assert!(out.contains("x_count{stage=\"asr\"} 5\n"), "{out}");
        assert!(out.contains("x_sum{stage=\"asr\"} 8.21"), "{out}");
    }

    #[test]
    fn the_end_of_a_head_is_found_however_it_arrives() {
        let head = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        // One byte at a time, as a client dripping it would send it.
        let mut scanned = 0;
        let mut found = None;
        for len in 1..=head.len() {
            found = head_end(&head[..len], scanned);
            if found.is_some() {
                break;
            }
            scanned = len;
        }
        assert_eq!(found, Some(head.len()));
        // Split in two at every place, the blank line included.
        for split in 0..head.len() {
            assert_eq!(head_end(&head[..split], 0).or_else(|| head_end(head, split)), Some(head.len()), "split at {split}");
        }
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n", 0), None);
    }

    /// A server on loopback with `limits`, its answer `body`.
    fn server(limits: Limits, body: String) -> (Server, std::net::SocketAddr) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        (Server::start_with(listener, limits, move || body.clone()).unwrap(), addr)
    }

    #[test]
    fn at_the_cap_the_oldest_connection_is_closed_and_the_newcomer_answered() {
        use std::io::{Read, Write};
        let (_server, addr) = server(Limits { connections: 2, deadline: Duration::from_secs(20) }, "m 1\n".into());
        let mut silent: Vec<std::net::TcpStream> = (0..3).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
        let mut scraper = std::net::TcpStream::connect(addr).unwrap();
        scraper.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut reply = String::new();
        scraper.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200 OK") && reply.ends_with("m 1\n"), "{reply}");
        // Connections are accepted in the order they were made: the two oldest made
        // room, long before their deadline (20 s; the wait is for a loaded machine).
        let started = Instant::now();
        for (i, s) in silent.iter_mut().enumerate().take(2) {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            assert!(matches!(s.read(&mut [0u8; 1]), Ok(0) | Err(_)), "connection {i} is still open");
        }
        assert!(started.elapsed() < Duration::from_secs(10), "closed only at the deadline");
        silent[2].set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let newest = silent[2].read(&mut [0u8; 1]);
        assert!(newest.as_ref().is_err_and(|e| matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)), "the newest silent connection was kept: {newest:?}");
    }

    #[test]
    fn a_client_that_does_not_take_its_answer_is_cut_off_at_the_deadline() {
        use std::io::{Read, Write};
        // Far more than loopback's socket buffers hold (10 MiB at most), so the write must wait
        // for the client.
        let body = "x".repeat(32 << 20);
        let (_server, addr) = server(Limits { connections: 4, deadline: Duration::from_millis(300) }, body);
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        client.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_secs(2));
        let mut got = Vec::new();
        let _ = client.read_to_end(&mut got);
        assert!(got.starts_with(b"HTTP/1.1 200 OK"), "{:?}", String::from_utf8_lossy(&got[..got.len().min(100)]));
        assert!(got.len() < 32 << 20, "the whole answer was written to a client that did not read for 2 s past a 300 ms deadline");
    }

    #[tokio::test]
    async fn a_request_head_over_the_limit_is_refused() {
        let long = format!("GET /metrics HTTP/1.1\r\nX-Long: {}\r\n\r\n", "a".repeat(2 * MAX_HEAD));
        assert!(matches!(read_head(&mut long.as_bytes()).await, Ok(Head::TooLarge)));
        let fits = format!("GET /metrics HTTP/1.1\r\nX-Long: {}\r\n\r\nafter", "a".repeat(MAX_HEAD - 100));
        assert!(matches!(read_head(&mut fits.as_bytes()).await, Ok(Head::Complete(h)) if h.ends_with("\r\n\r\n")));
    }

    #[test]
    fn requests_other_than_get_metrics_are_refused() {
        assert!(respond("GET /metrics HTTP/1.1\r\n\r\n", || "m 1\n".into()).starts_with("HTTP/1.1 200 OK"));
        assert!(respond("GET /metrics?x=1 HTTP/1.1\r\n\r\n", || "m 1\n".into()).ends_with("\r\n\r\nm 1\n"));
        assert!(respond("GET /nope HTTP/1.1\r\n\r\n", String::new).starts_with("HTTP/1.1 404"));
        assert!(respond("POST /metrics HTTP/1.1\r\n\r\n", String::new).starts_with("HTTP/1.1 405"));
    }
}
