//! The latency log: one JSON object per turn.
//!
//! Input: `Note` (from every stage, `try_send`) · Output: JSON lines (file), the
//! running totals (`metrics`), and the records for the caller (bench) and, as each
//! is written, for a text run's asks · Thread: tokio task
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
use tokio::sync::{broadcast, mpsc};

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
    /// The first piece of the reply went to the voice: `text` (a sentence, a clause
    /// or a phrase: `llm.first_phrase_words`).
    FirstSentence { turn: TurnId, at: Instant, text: String },
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
    /// A stage could not do its part of the turn (an engine error; a hang). The turn
    /// is logged as failed; with `ends_turn` (the stage hung: nothing more will come)
    /// it is written at once.
    Failed { turn: TurnId, stage: &'static str, message: String, ends_turn: bool },
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
    pub started: super::wake::Started,
    /// Where it was said (a satellite's room, or `[audio] room` for the device's
    /// own microphone).
    pub room: Option<String>,
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
    /// Over the time the model was generating: not counting `paused_ms`.
    pub generate_tok_s: f64,
    pub history_turns: usize,
    /// Time generation stood still for the voice: the pause until the first
    /// sentence's audio is ready, and a full queue to tts.
    #[serde(default)]
    pub paused_ms: f64,
    /// Time the model's decodes (prompt and tokens) waited for a pass of Whisper
    /// (`AsrPassing`); its tok/s figures leave it out.
    #[serde(default)]
    pub gave_way_ms: f64,
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
    /// Turns ended without their audio because the speaker had stalled.
    #[serde(default)]
    pub playback_stalls: u64,
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

/// What went wrong in a failed turn.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TurnError {
    pub stage: String,
    pub message: String,
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
    /// How the turn began: the wake word's id ("hey_jarvis_v0.1"), "follow_up"
    /// (within `[wake] follow_up_s` of an answer), "push_to_talk", "typed", or
    /// "always" (`[wake] mode = "always"`).
    #[serde(default)]
    pub wake: String,
    /// The room it was said in: a satellite's `room` (`voxd wyoming`), or `[audio]
    /// room` for the device's own microphone; absent when neither names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// The wake word's score when it woke voxd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_score: Option<f32>,
    /// The reply was started at a pause, before the end of the turn was certain, and
    /// kept when the pause became the end: its marks before `endpoint` are work done
    /// during the hangover.
    pub speculative: bool,
    pub reply: String,
    /// The words of `marks.first_sentence`: the reply's first piece for the voice —
    /// a sentence, a clause, or a phrase cut before the sentence ended.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub first_piece: String,
    /// What was actually played (less than `reply` when cancelled).
    pub spoken: String,
    pub cancelled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    /// "answered", "cancelled", or "error": a stage failed on this turn (`error`
    /// says which and why; the user heard an apology).
    #[serde(default = "answered")]
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TurnError>,
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

fn answered() -> String {
    "answered".into()
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

    /// A handle that does not keep telemetry running: for watchers that outlive the
    /// stages (telemetry ends once every stage has hung up).
    pub fn downgrade(&self) -> WeakNotes {
        WeakNotes { tx: self.tx.downgrade(), counters: self.counters.clone() }
    }
}

/// See [`Notes::downgrade`]; a note sent after telemetry has ended is dropped.
#[derive(Clone)]
pub struct WeakNotes {
    tx: mpsc::WeakSender<Note>,
    counters: Arc<Counters>,
}

impl WeakNotes {
    pub fn send(&self, note: Note) {
        if let Some(tx) = self.tx.upgrade() {
            Notes { tx, counters: self.counters.clone() }.send(note);
        }
    }
}

/// A turn being assembled.
struct Open {
    start: Box<TurnStart>,
    marks: Marks,
    reply: String,
    first_piece: String,
    llm: Option<LlmStats>,
    llm_done: bool,
    tool_calls: Vec<ToolCallRecord>,
    error: Option<TurnError>,
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

/// Turns a live run keeps in memory after writing them (for the summary at exit);
/// the log holds them all. A file run keeps every turn: its caller reports on them.
const LIVE_RECORDS_KEPT: usize = 32;

/// Turns open at once beyond which the oldest is written as it is: every turn ends
/// (each has a deadline), so this only bounds memory against a bug.
const OPEN_TURNS_MAX: usize = 64;

/// The finished turns: the newest of them (all, for a file run) and how many.
pub struct Finished {
    pub records: std::collections::VecDeque<TurnRecord>,
    pub total: usize,
    keep: usize,
    /// Each record as it is written, for whoever waits on a turn (a text run's asks).
    announce: Option<broadcast::Sender<Arc<TurnRecord>>>,
}

impl Finished {
    fn push(&mut self, record: TurnRecord) {
        if let Some(announce) = &self.announce {
            let _ = announce.send(Arc::new(record.clone()));
        }
        if self.records.len() == self.keep {
            self.records.pop_front();
        }
        self.records.push_back(record);
        self.total += 1;
    }
}

/// Collects notes into records until every stage has hung up; writes each finished
/// turn to `log` (append, one line, flushed) and returns them (a run that goes on —
/// live, or answering asks — the newest few).
pub async fn run(
    mut rx: mpsc::Receiver<Note>,
    mut file: Option<LatencyLog>,
    timing: Timing,
    config_id: String,
    counters: Arc<Counters>,
    metrics: Arc<crate::metrics::Metrics>,
    announce: Option<broadcast::Sender<Arc<TurnRecord>>>,
) -> anyhow::Result<Finished> {
    let mut open: BTreeMap<TurnId, Open> = BTreeMap::new();
    let mut done = Finished { records: Default::default(), total: 0, keep: if timing.live || announce.is_some() { LIVE_RECORDS_KEPT } else { usize::MAX }, announce };
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
            | Note::Failed { turn, .. }
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
            open.insert(turn, Open { start, marks, reply: String::new(), first_piece: String::new(), llm: None, llm_done: false, tool_calls: Vec::new(), error: None, ended: None });
            while open.len() > OPEN_TURNS_MAX {
                let (_, oldest) = open.pop_first().expect("not empty");
                tracing::warn!(turn = oldest.start.turn, "a turn never ended: logged as it is");
                write(oldest, timing, &config_id, &counters, &metrics, &mut file, &mut done)?;
            }
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
            Note::FirstSentence { at, text, .. } => {
                if t.marks.first_sentence.is_none() {
                    t.marks.first_sentence = Some(anchor.ms(at));
                    t.first_piece = text;
                }
            }
            Note::ToolCall { record, .. } => t.tool_calls.push(record),
            Note::Failed { stage, message, ends_turn, .. } => {
                t.error.get_or_insert(TurnError { stage: stage.to_string(), message });
                if ends_turn {
                    let t = open.remove(&turn).expect("looked up above");
                    write(t, timing, &config_id, &counters, &metrics, &mut file, &mut done)?;
                }
            }
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

/// A log past this size is rotated to `LOG.1` (one generation kept), when opened
/// and while it is written.
const ROTATE_BYTES: u64 = 64 << 20;

/// The latency log, open for appending.
pub struct LatencyLog {
    path: std::path::PathBuf,
    file: std::fs::File,
    /// Its size, as written (for rotating without asking the file system each turn).
    bytes: u64,
    rotate_at: u64,
}

impl LatencyLog {
    /// Opens (creating, or rotating when large) the latency log for appending.
    pub fn open(path: &std::path::Path) -> anyhow::Result<LatencyLog> {
        LatencyLog::open_rotating_at(path, ROTATE_BYTES)
    }

    pub fn open_rotating_at(path: &std::path::Path, rotate_at: u64) -> anyhow::Result<LatencyLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        }
        let mut log = LatencyLog { path: path.to_path_buf(), file: Self::append(path)?, bytes: std::fs::metadata(path).map_or(0, |m| m.len()), rotate_at };
        if log.bytes > rotate_at {
            log.rotate()?;
        }
        Ok(log)
    }

    fn append(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
        std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| anyhow::anyhow!("cannot open latency log {}: {e}", path.display()))
    }

    /// Moves the log to `LOG.1` (replacing an older one) and starts a new one.
    fn rotate(&mut self) -> anyhow::Result<()> {
        let mut old = self.path.as_os_str().to_owned();
        old.push(".1");
        std::fs::rename(&self.path, &old).map_err(|e| anyhow::anyhow!("cannot rotate latency log {}: {e}", self.path.display()))?;
        self.file = Self::append(&self.path)?;
        self.bytes = 0;
        Ok(())
    }

    /// Appends one line, flushed. A failure (a full disk) costs that line, not the
    /// pipeline: it is counted, and said the first time and every hundredth.
    fn write_line(&mut self, line: &str, counters: &Counters) {
        let written = self.file.write_all(line.as_bytes()).and_then(|()| self.file.flush());
        if let Err(e) = written {
            let n = counters.log_write_errors.fetch_add(1, Ordering::Relaxed);
            if n % 100 == 0 {
                tracing::warn!("latency log {}: a turn could not be written ({e}); {} lost so far", self.path.display(), n + 1);
            }
            return;
        }
        self.bytes += line.len() as u64;
        if self.bytes > self.rotate_at {
            if let Err(e) = self.rotate() {
                tracing::warn!("{e:#}");
            }
        }
    }
}

/// Writes a finished turn as one line, straight to the file: nothing is held back
/// in a buffer to be lost if voxd dies.
fn write(t: Open, timing: Timing, config_id: &str, counters: &Counters, metrics: &crate::metrics::Metrics, file: &mut Option<LatencyLog>, done: &mut Finished) -> anyhow::Result<()> {
    let record = finish(t, timing, config_id, counters);
    metrics.record(&record);
    if let Some(log) = file.as_mut() {
        log.write_line(&(serde_json::to_string(&record)? + "\n"), counters);
    }
    done.push(record);
    Ok(())
}

fn finish(t: Open, timing: Timing, config_id: &str, counters: &Counters) -> TurnRecord {
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let start = t.start;
    let Ended { spoken, reason } = match (t.ended, &t.error) {
        (Some(ended), _) => ended,
        // A stage hung on it: the turn ends here, failed.
        (None, Some(_)) => Ended { spoken: String::new(), reason: None },
        (None, None) => Ended { spoken: String::new(), reason: Some("unfinished at shutdown".into()) },
    };
    let cancelled = reason.is_some();
    let outcome = if t.error.is_some() {
        "error"
    } else if cancelled {
        "cancelled"
    } else {
        "answered"
    };
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
        wake: start.started.name().to_string(),
        room: start.room,
        wake_score: start.started.score(),
        speculative: start.speculative,
        reply: if t.reply.is_empty() { spoken.clone() } else { t.reply },
        first_piece: t.first_piece,
        spoken,
        cancelled,
        cancel_reason: reason,
        outcome: outcome.into(),
        error: t.error,
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
            playback_stalls: load(&counters.playback_stalls),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_rotates_while_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("turns.jsonl");
        let counters = Counters::default();
        let mut log = LatencyLog::open_rotating_at(&path, 100).unwrap();
        for i in 0..20 {
            log.write_line(&format!("{{\"n\":{i:02}}}\n"), &counters); // 9 bytes a line
        }
        let lines = |p: &std::path::Path| std::fs::read_to_string(p).unwrap().lines().count();
        let old = dir.path().join("turns.jsonl.1");
        assert_eq!(lines(&old), 12, "rotated once past 100 bytes");
        assert_eq!(lines(&path), 8, "the rest in a fresh log");
        assert_eq!(counters.log_write_errors.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_log_that_cannot_be_written_costs_lines_not_the_pipeline() {
        // /dev/full: every write fails with "no space left on device".
        let mut log = LatencyLog::open_rotating_at(std::path::Path::new("/dev/full"), 100).unwrap();
        let counters = Counters::default();
        for _ in 0..3 {
            log.write_line("{}\n", &counters);
        }
        assert_eq!(counters.log_write_errors.load(Ordering::Relaxed), 3);
    }
}
