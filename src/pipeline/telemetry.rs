//! The latency log: one JSON object per turn.
//!
//! Input: `Note` (from every stage, `try_send`) · Output: JSON lines (file), the
//! running totals (`metrics`), and the records for the caller (bench) · Thread:
//! tokio task
//!
//! Stages report what happened when, as it happens; telemetry assembles the turn's
//! record and writes it — flushed — when the turn ends, so a crash loses at most the
//! turn in flight. A full queue drops the note and counts it: telemetry never stalls
//! the pipeline.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{Anchor, Counters, TurnId};

/// Something a stage saw, stamped with when.
#[derive(Debug)]
pub enum Note {
    /// The agent starts answering a transcript (a speculative one: tentatively).
    TurnStart(Box<TurnStart>),
    /// The pause a tentative turn was started at is the end of the turn: it stands.
    Confirmed { turn: TurnId, endpoint_at: Instant },
    /// The user spoke on after the pause a tentative turn was started at: it never
    /// happened, and is not logged (only counted).
    Abandoned { turn: TurnId },
    LlmFirstToken { turn: TurnId, at: Instant },
    FirstSentence { turn: TurnId, at: Instant },
    /// A job of the llm stage ended: `reply` is what it said (empty for a tool call);
    /// `llm` its generation figures (None for fixed words).
    LlmDone { turn: TurnId, at: Instant, reply: String, llm: Option<LlmStats> },
    /// A tool call was run, refused or could not be made.
    ToolCall { turn: TurnId, record: ToolCallRecord },
    TtsFirstAudio { turn: TurnId, at: Instant },
    FirstAudio { turn: TurnId, at: Instant },
    /// The last sample played, or the turn was cancelled.
    TurnEnd { turn: TurnId, at: Instant, spoken: String, cancelled: bool, reason: Option<String> },
    /// An utterance that never became a turn (asr behind, or no speech in it).
    Dropped { turn: TurnId },
}

#[derive(Debug)]
pub struct TurnStart {
    pub turn: TurnId,
    pub anchor: Anchor,
    /// None for a tentative turn, until it is confirmed.
    pub endpoint_at: Option<Instant>,
    /// Started from a speculative transcript, before the end of the turn was certain.
    pub speculative: bool,
    pub asr_done_at: Instant,
    pub audio_s: f64,
    pub transcript: String,
    pub asr: AsrStats,
    pub models: Models,
    /// Typed through the control socket, not spoken.
    pub typed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AsrStats {
    /// Time Whisper worked on the transcript (during the hangover when
    /// `speculative_hit`: the transcript of the pause was the final one).
    pub ms: f64,
    pub audio_ctx: u32,
    pub speculative_hit: bool,
    pub capped: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LlmStats {
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub evaluated_tokens: usize,
    pub generated_tokens: usize,
    pub prompt_tok_s: f64,
    pub generate_tok_s: f64,
    pub history_turns: usize,
}

/// One tool call of a turn, as the latency log shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToolCallRecord {
    pub name: String,
    pub arguments: serde_json::Value,
    /// Ran and succeeded.
    pub ok: bool,
    /// Time the executor took (0 when it never ran).
    pub ms: f64,
    /// "model" (the LLM's call) or "intent" (the fast path).
    pub via: String,
    /// Why it did not run or failed ("not allowed", "Home Assistant did not answer in time").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Models {
    pub asr: String,
    pub llm: String,
    pub tts: String,
}

/// The marks of DESIGN.md, in ms from the end of the user's speech. A mark a turn
/// never reached (e.g. `first_audio` of a cancelled turn) is absent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Marks {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asr_done: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub llm_first_token: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_sentence: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tts_first_audio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_audio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub llm_done: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn_done: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TurnCounters {
    pub capture_overflows: u64,
    pub vad_drops: u64,
    pub utterances_dropped: u64,
    pub playback_underruns: u64,
    pub telemetry_drops: u64,
    /// Replies started at a pause that the user then spoke through (wasted work, not
    /// heard: a measure of how eagerly `vad.speculate_after_ms` guesses).
    pub speculations_abandoned: u64,
    /// Live devices: overruns and underruns the devices reported (capture + playback),
    /// and times a device failed and was reopened.
    pub xruns: u64,
    pub device_reopens: u64,
}

/// Live devices: the latency their buffers add, as last measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AudioLatency {
    /// Sound at the microphone → its samples in voxd.
    pub capture_ms: f64,
    /// Samples handed to the device → sound from the speaker.
    pub output_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Queues {
    /// Most sentences waiting for tts during the turn.
    pub llm_to_tts: usize,
    /// Most audio chunks waiting for playback during the turn.
    pub tts_to_playback: usize,
}

/// One line of the latency log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TurnRecord {
    pub turn: TurnId,
    /// Wall-clock time the turn was written (ms since the Unix epoch).
    pub ts_unix_ms: u64,
    /// "realtime" (live or paced input: marks are what a user hears) or "fast" (a file
    /// as fast as possible: the hangover is simulated, the rest measured).
    pub clock: String,
    /// A fingerprint of the settings the turn ran with (`voxd latency report` groups by
    /// it): the same settings, the same id.
    #[serde(default)]
    pub config: String,
    /// Where the user stopped speaking, seconds into the input.
    pub speech_end_s: f64,
    pub audio_s: f64,
    pub marks: Marks,
    /// = marks.first_audio: speech end to the first sample of the answer at the output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub round_trip_ms: Option<f64>,
    pub transcript: String,
    /// Typed through the control socket (`voxd ctl ask`): there was no speech, and the
    /// round trip runs from the moment the text arrived.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub typed: bool,
    /// The reply was started at a pause, before the end of the turn was certain, and
    /// kept when the pause became the end: its marks before `endpoint` are work done
    /// during the hangover.
    pub speculative: bool,
    pub reply: String,
    /// What was actually played (less than `reply` when cancelled).
    pub spoken: String,
    pub cancelled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    pub asr: AsrStats,
    pub llm: LlmStats,
    pub models: Models,
    pub tool_calls: Vec<ToolCallRecord>,
    pub counters: TurnCounters,
    pub queues: Queues,
    /// Live devices only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<AudioLatency>,
}

/// The stages' handle on telemetry: never blocks, counts what it drops.
#[derive(Clone)]
pub struct Notes {
    tx: mpsc::Sender<Note>,
    counters: Arc<Counters>,
}

impl Notes {
    pub fn new(tx: mpsc::Sender<Note>, counters: Arc<Counters>) -> Notes {
        Notes { tx, counters }
    }

    pub fn send(&self, note: Note) {
        if self.tx.try_send(note).is_err() {
            Counters::bump(&self.counters.telemetry_drops);
        }
    }

    pub fn dropped(&self, turn: TurnId) {
        self.send(Note::Dropped { turn });
    }
}

/// A turn being assembled.
struct Open {
    start: Box<TurnStart>,
    marks: Marks,
    reply: String,
    llm: Option<LlmStats>,
    llm_done: bool,
    tool_calls: Vec<ToolCallRecord>,
    /// Set when the turn was cancelled before the llm reported: the record waits for
    /// the llm's report (it stops at the next token) or the next turn, whichever first.
    ended: Option<Ended>,
}

struct Ended {
    spoken: String,
    reason: Option<String>,
}

/// How the input is being played: decides the `clock` field and whether the devices'
/// latencies are logged.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub realtime: bool,
    pub live: bool,
}

/// Collects notes into records until every stage has hung up; writes each finished
/// turn to `log` (append, one line, flushed) and returns them all.
pub async fn run(
    mut rx: mpsc::Receiver<Note>,
    mut file: Option<std::fs::File>,
    timing: Timing,
    config_id: String,
    counters: Arc<Counters>,
    metrics: Arc<crate::metrics::Metrics>,
) -> anyhow::Result<Vec<TurnRecord>> {
    let mut open: BTreeMap<TurnId, Open> = BTreeMap::new();
    let mut done = Vec::new();
    while let Some(note) = rx.recv().await {
        let turn = match &note {
            Note::TurnStart(s) => s.turn,
            Note::Confirmed { turn, .. }
            | Note::Abandoned { turn }
            | Note::LlmFirstToken { turn, .. }
            | Note::FirstSentence { turn, .. }
            | Note::LlmDone { turn, .. }
            | Note::TtsFirstAudio { turn, .. }
            | Note::FirstAudio { turn, .. }
            | Note::TurnEnd { turn, .. }
            | Note::ToolCall { turn, .. }
            | Note::Dropped { turn } => *turn,
        };
        if let Note::TurnStart(start) = note {
            let anchor = start.anchor;
            let marks = Marks { endpoint: start.endpoint_at.map(|at| anchor.ms(at)), asr_done: Some(anchor.ms(start.asr_done_at)), ..Marks::default() };
            counters.llm_to_tts_depth.store(0, Ordering::Relaxed);
            counters.tts_to_playback_depth.store(0, Ordering::Relaxed);
            // A cancelled turn still waiting for its llm report is written now.
            let waiting: Vec<TurnId> = open.iter().filter(|(_, t)| t.ended.is_some()).map(|(id, _)| *id).collect();
            for id in waiting {
                let t = open.remove(&id).expect("listed above");
                write(t, timing, &config_id, &counters, &metrics, &mut file, &mut done)?;
            }
            open.insert(turn, Open { start, marks, reply: String::new(), llm: None, llm_done: false, tool_calls: Vec::new(), ended: None });
            continue;
        }
        if let Note::Dropped { .. } = note {
            Counters::bump(&counters.utterances_dropped);
            continue;
        }
        if let Note::Abandoned { .. } = note {
            open.remove(&turn);
            Counters::bump(&counters.speculations_abandoned);
            continue;
        }
        let Some(t) = open.get_mut(&turn) else {
            // A note for a turn already written (e.g. audio of a cancelled turn).
            tracing::trace!(turn, "late note dropped");
            continue;
        };
        let anchor = t.start.anchor;
        match note {
            Note::Confirmed { endpoint_at, .. } => {
                t.marks.endpoint = Some(anchor.ms(endpoint_at));
                t.start.asr.speculative_hit = true;
            }
            // A tool turn runs several jobs (the call, then its confirmation): the
            // marks keep the first of each, the figures the first generation's (the
            // one that decided), the reply what was said last.
            Note::LlmFirstToken { at, .. } => {
                t.marks.llm_first_token.get_or_insert(anchor.ms(at));
            }
            Note::FirstSentence { at, .. } => {
                t.marks.first_sentence.get_or_insert(anchor.ms(at));
            }
            Note::ToolCall { record, .. } => t.tool_calls.push(record),
            Note::LlmDone { at, reply, llm, .. } => {
                t.marks.llm_done = Some(anchor.ms(at));
                if !reply.is_empty() {
                    t.reply = reply;
                }
                if t.llm.is_none() {
                    t.llm = llm;
                }
                t.llm_done = true;
                if t.ended.is_some() {
                    let t = open.remove(&turn).expect("looked up above");
                    write(t, timing, &config_id, &counters, &metrics, &mut file, &mut done)?;
                }
            }
            Note::TtsFirstAudio { at, .. } => {
                t.marks.tts_first_audio.get_or_insert(anchor.ms(at));
            }
            Note::FirstAudio { at, .. } => {
                t.marks.first_audio.get_or_insert(anchor.ms(at));
            }
            Note::TurnEnd { at, spoken, cancelled, reason, .. } => {
                t.marks.turn_done = Some(anchor.ms(at));
                t.ended = Some(Ended { spoken, reason: cancelled.then_some(reason).flatten().or(cancelled.then(|| "cancelled".to_string())) });
                if !cancelled || t.llm_done {
                    let t = open.remove(&turn).expect("looked up above");
                    write(t, timing, &config_id, &counters, &metrics, &mut file, &mut done)?;
                }
            }
            Note::TurnStart(_) | Note::Dropped { .. } | Note::Abandoned { .. } => unreachable!("handled above"),
        }
    }
    // Shutting down: nothing more will come for turns still open; they are written
    // as they are (a turn never finished is marked so), not lost.
    for (_, t) in std::mem::take(&mut open) {
        write(t, timing, &config_id, &counters, &metrics, &mut file, &mut done)?;
    }
    Ok(done)
}

/// A log past this size is rotated to `LOG.1` (one generation kept) when opened.
const ROTATE_BYTES: u64 = 64 << 20;

/// Opens (creating, or rotating when large) the latency log for appending.
pub fn open_log(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    if std::fs::metadata(path).is_ok_and(|m| m.len() > ROTATE_BYTES) {
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        std::fs::rename(path, &old).map_err(|e| anyhow::anyhow!("cannot rotate latency log {}: {e}", path.display()))?;
    }
    std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| anyhow::anyhow!("cannot open latency log {}: {e}", path.display()))
}

/// Writes a finished turn as one line, straight to the file: nothing is held back
/// in a buffer to be lost if voxd dies.
fn write(t: Open, timing: Timing, config_id: &str, counters: &Counters, metrics: &crate::metrics::Metrics, file: &mut Option<std::fs::File>, done: &mut Vec<TurnRecord>) -> anyhow::Result<()> {
    let record = finish(t, timing, config_id, counters);
    metrics.record(&record);
    if let Some(f) = file.as_mut() {
        let line = serde_json::to_string(&record)? + "\n";
        f.write_all(line.as_bytes())?;
        f.flush()?;
    }
    done.push(record);
    Ok(())
}

fn finish(t: Open, timing: Timing, config_id: &str, counters: &Counters) -> TurnRecord {
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let start = t.start;
    let Ended { spoken, reason } = t.ended.unwrap_or(Ended { spoken: String::new(), reason: Some("unfinished at shutdown".into()) });
    let cancelled = reason.is_some();
    TurnRecord {
        turn: start.turn,
        ts_unix_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        clock: if timing.realtime { "realtime" } else { "fast" }.into(),
        config: config_id.to_string(),
        speech_end_s: start.anchor.speech_end_s,
        audio_s: start.audio_s,
        round_trip_ms: t.marks.first_audio,
        marks: t.marks,
        transcript: start.transcript,
        typed: start.typed,
        speculative: start.speculative,
        reply: if t.reply.is_empty() { spoken.clone() } else { t.reply },
        spoken,
        cancelled,
        cancel_reason: reason,
        asr: start.asr,
        llm: t.llm.unwrap_or_default(),
        models: start.models,
        tool_calls: t.tool_calls,
        counters: TurnCounters {
            capture_overflows: load(&counters.capture_overflows),
            vad_drops: load(&counters.vad_drops),
            utterances_dropped: load(&counters.utterances_dropped),
            playback_underruns: load(&counters.playback_underruns),
            telemetry_drops: load(&counters.telemetry_drops),
            speculations_abandoned: load(&counters.speculations_abandoned),
            xruns: load(&counters.capture_xruns) + load(&counters.playback_xruns),
            device_reopens: load(&counters.input_reopens) + load(&counters.output_reopens),
        },
        queues: Queues {
            llm_to_tts: counters.llm_to_tts_depth.load(Ordering::Relaxed),
            tts_to_playback: counters.tts_to_playback_depth.load(Ordering::Relaxed),
        },
        audio: timing.live.then(|| AudioLatency {
            capture_ms: load(&counters.capture_latency_us) as f64 / 1000.0,
            output_ms: load(&counters.output_latency_us) as f64 / 1000.0,
        }),
    }
}
