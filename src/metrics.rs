//! Prometheus metrics: what the turn log says, summed up since start, served as
//! text on a local HTTP endpoint (`[service] metrics_listen`).
//!
//! Telemetry records every finished turn here; the endpoint renders the totals and
//! the pipeline's counters on each scrape. Nothing here is on the audio path: a
//! mutex guards the totals, taken once per turn and once per scrape.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

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
    round_trip: Histogram,
    /// Each stage's own time, by the short names of `bench::STAGES`.
    stages: BTreeMap<String, Histogram>,
    /// By tool and result ("ok", "error").
    tool_calls: BTreeMap<(String, &'static str), u64>,
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
        family(&mut out, "voxd_turns_cancelled_total", "counter", "Cancelled turns by reason (barge-in, new speech, control, stopping).");
        for (reason, n) in &totals.cancel_reasons {
            let _ = writeln!(out, "voxd_turns_cancelled_total{{reason=\"{}\"}} {n}", label(reason));
        }
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
        let counts: [(&str, &str, &str, u64); 12] = [
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

/// Serves `GET /metrics` on `listener` until the task is dropped. One short request
/// per connection (what Prometheus sends); anything else gets 404 or 405.
pub async fn serve(listener: tokio::net::TcpListener, render: impl Fn() -> String + Send + Sync + 'static) {
    let render = std::sync::Arc::new(render);
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: wait rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let reply = match tokio::time::timeout(std::time::Duration::from_secs(5), read_head(&mut stream)).await {
                Ok(Ok(head)) => respond(&head, || render()),
                _ => return,
            };
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Opens the endpoint's socket: an error now (port taken, bad address) is one voxd
/// reports at start, naming the setting.
pub fn bind(listen: &str) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(listen).with_context(|| format!("[service] metrics_listen = {listen:?}: cannot listen there (is the port taken? expected a free address such as \"127.0.0.1:9464\")"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Reads a request's head (up to the blank line), at most 8 KiB.
async fn read_head(stream: &mut tokio::net::TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
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
    fn requests_other_than_get_metrics_are_refused() {
        assert!(respond("GET /metrics HTTP/1.1\r\n\r\n", || "m 1\n".into()).starts_with("HTTP/1.1 200 OK"));
        assert!(respond("GET /metrics?x=1 HTTP/1.1\r\n\r\n", || "m 1\n".into()).ends_with("\r\n\r\nm 1\n"));
        assert!(respond("GET /nope HTTP/1.1\r\n\r\n", String::new).starts_with("HTTP/1.1 404"));
        assert!(respond("POST /metrics HTTP/1.1\r\n\r\n", String::new).starts_with("HTTP/1.1 405"));
    }
}
