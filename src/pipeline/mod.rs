//! The voice pipeline: each stage an actor, joined by bounded channels.
//!
//! ```text
//! capture ─Frame─▶ vad ─Utterance─▶ asr ─Transcript─▶ agent ─Request─▶ llm ─Sentence─▶ tts ─Speech─▶ playback
//!            wake ◀─Frame─┤ (wake words heard: `Heard`, back to vad's gate)       answers ended ─▶ vad │
//!                   └─ user voice (watch) ──────────▶ agent ◀── playback status (watch) ──────────────┘
//!                                                     └──── confirmed turn (watch) ────────────────────▶ playback
//!                                                     agent ─Job─▶ tools ─Outcome─▶ agent (per job)
//! control socket ─typed Transcript─▶ agent, ─Command─▶ agent, mute/push-to-talk (switches) ─▶ vad
//! every stage ─Note─▶ telemetry ─▶ latency log (one JSON line per turn)
//! ```
//!
//! A text run (`Io::Text`, Wyoming's `handle`) is the same pipeline without ears or
//! voice: no capture, vad or asr — each `Ask` enters as a typed transcript — and a
//! silent voice and speaker, so the reply's pieces are "heard" as they come and the
//! turn's record (telemetry's, as written) is the answer.
//!
//! Data flows left to right only; feedback (the user is speaking, what has been
//! played) goes back through `watch` channels and per-turn cancel flags, so there is
//! no cycle of bounded channels to deadlock on. Every edge, its capacity and what
//! happens when it is full is declared once, below, in data-flow order.
//!
//! Speculation: at a short pause (`vad.speculate_after_ms`) vad hands asr a copy of
//! the utterance so far, and the agent starts a *tentative* turn from its transcript:
//! the reply is generated and synthesised while the hangover runs. Playback holds
//! that audio until the end of the turn is confirmed; if the user speaks on, vad
//! gives the utterance a new turn id and the tentative turn is abandoned unheard.
//!
//! Listening (`wake`): vad endpoints all speech, and its gate lets a turn through
//! only when the utterance holds a wake word (heard by the wake stage on a copy of
//! every frame), begins soon after one said on its own or after an answer, or
//! push-to-talk is held — as `[wake] mode` says.
//!
//! Read-ahead: while the user is still speaking, every `vad.partial_every_ms` of
//! speech, asr drafts the words so far (dropped the moment a guess or an end is
//! queued: vad's `Backlog`) and the agent has the llm stage read them into its KV
//! cache (`Job::ReadAhead`), so the answer's prompt finds them there.

pub mod agent;
pub mod asr;
pub mod capture;
pub mod health;
pub mod llm;
pub mod playback;
pub mod splitter;
pub mod telemetry;
pub mod tools;
pub mod tts;
pub mod vad;
pub mod wake;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// What the user hears when a stage fails on their turn (the turn is logged as
/// failed, with the stage and the error).
pub const APOLOGY: &str = "Sorry, something went wrong there. Please try again.";

/// A turn: one utterance of the user and the assistant's answer to it. Ids increase
/// monotonically; results carrying an older id than the current turn are dropped.
pub type TurnId = u64;

/// What a full edge does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// The sender waits: for edges whose producer may be slowed down.
    Block,
    /// The new item is dropped and counted: for producers that must keep draining
    /// (vad must never stall capture; telemetry must never stall anything).
    DropNewest,
}

pub struct Edge {
    pub name: &'static str,
    pub capacity: usize,
    pub when_full: WhenFull,
}

/// The topology, in data-flow order. (The audio-device rings of the live-audio
/// stage sit before `capture` and after `playback`.)
pub const CAPTURE_TO_VAD: Edge = Edge { name: "capture → vad", capacity: 16, when_full: WhenFull::Block };
/// A copy of every frame for the wake-word detector (~1 s of audio); vad never waits
/// for it live (Block for a recording played as fast as possible).
pub const VAD_TO_WAKE: Edge = Edge { name: "vad → wake", capacity: 50, when_full: WhenFull::DropNewest };
/// (Block instead when the input is a file played as fast as possible: nothing live to
/// protect. Drafts of speech still going on are never waited for: dropped, uncounted.)
pub const VAD_TO_ASR: Edge = Edge { name: "vad → asr", capacity: 4, when_full: WhenFull::DropNewest };
pub const ASR_TO_AGENT: Edge = Edge { name: "asr → agent", capacity: 8, when_full: WhenFull::Block };
/// (A read-ahead is never waited for: skipped when the queue is full.)
pub const AGENT_TO_LLM: Edge = Edge { name: "agent → llm", capacity: 2, when_full: WhenFull::Block };
/// One call at a time per turn; the agent waits for each outcome.
pub const AGENT_TO_TOOLS: Edge = Edge { name: "agent → tools", capacity: 4, when_full: WhenFull::Block };
pub const LLM_TO_TTS: Edge = Edge { name: "llm → tts", capacity: 4, when_full: WhenFull::Block };
pub const TTS_TO_PLAYBACK: Edge = Edge { name: "tts → playback", capacity: 8, when_full: WhenFull::Block };
pub const TELEMETRY: Edge = Edge { name: "→ telemetry", capacity: 1024, when_full: WhenFull::DropNewest };
/// Commands from outside (the control socket, the stop deadline); typed turns from
/// the control socket join `ASR_TO_AGENT`.
pub const CONTROL_TO_AGENT: Edge = Edge { name: "control → agent", capacity: 4, when_full: WhenFull::Block };
pub const EDGES: [&Edge; 10] = [&CAPTURE_TO_VAD, &VAD_TO_WAKE, &VAD_TO_ASR, &ASR_TO_AGENT, &AGENT_TO_LLM, &AGENT_TO_TOOLS, &LLM_TO_TTS, &TTS_TO_PLAYBACK, &TELEMETRY, &CONTROL_TO_AGENT];

fn channel<T>(edge: &Edge) -> (mpsc::Sender<T>, mpsc::Receiver<T>) {
    mpsc::channel(edge.capacity)
}

/// Hands out turn ids, in increasing order: vad for speech, the control socket for
/// typed turns. Shared, so a typed turn is newer than any speech before it.
#[derive(Debug, Clone)]
pub struct TurnIds(Arc<AtomicU64>);

impl TurnIds {
    pub fn starting_at(first: TurnId) -> TurnIds {
        TurnIds(Arc::new(AtomicU64::new(first)))
    }
    pub fn next(&self) -> TurnId {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

/// What the control socket switches while voxd runs (read by vad every frame).
#[derive(Debug, Default)]
pub struct Switches {
    /// The microphone is not listened to (push-to-talk still works).
    pub muted: AtomicBool,
    /// Push-to-talk is held: everything heard is speech, and letting go ends the
    /// turn at once (no hangover to wait for).
    pub push_to_talk: AtomicBool,
}

impl Switches {
    pub fn muted(&self) -> bool {
        self.muted.load(Ordering::Relaxed)
    }
    pub fn push_to_talk(&self) -> bool {
        self.push_to_talk.load(Ordering::Relaxed)
    }
}

/// Per-turn cancellation, checked between tokens, between sentences and while playing.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Counters that stages bump and the turn log reports.
#[derive(Debug, Default)]
pub struct Counters {
    /// Samples the capture ring dropped because nobody drained it.
    pub capture_overflows: AtomicU64,
    /// Utterances vad dropped because asr was behind.
    pub vad_drops: AtomicU64,
    /// Frames the wake stage had no room for (it was behind).
    pub wake_drops: AtomicU64,
    /// Wake words heard, and of those the ones no request followed (most are
    /// false wakes: the television, a word that sounded like it).
    pub wakes: AtomicU64,
    pub wakes_unanswered: AtomicU64,
    /// Utterances that held no speech once transcribed (noise, coughs).
    pub utterances_dropped: AtomicU64,
    /// Times the output ran dry in the middle of a reply (a device: callbacks that
    /// came up short while more of the reply was on its way).
    pub playback_underruns: AtomicU64,
    /// Notes telemetry never saw because its queue was full.
    pub telemetry_drops: AtomicU64,
    /// Turns the latency log could not take (a full disk, say).
    pub log_write_errors: AtomicU64,
    /// Replies started at a pause the user then spoke through.
    pub speculations_abandoned: AtomicU64,
    /// Turns ended because the speaker had not played their audio long after it was
    /// due (a stalled device): the turn is not left open waiting for it.
    pub playback_stalls: AtomicU64,
    /// Live devices: overruns/underruns they reported, times they were reopened, and
    /// the latency their buffers add (µs), as their callbacks last saw it.
    pub capture_xruns: AtomicU64,
    pub playback_xruns: AtomicU64,
    pub input_reopens: AtomicU64,
    pub output_reopens: AtomicU64,
    /// Errors the devices reported other than xruns (most are survived).
    pub capture_errors: AtomicU64,
    pub playback_errors: AtomicU64,
    pub capture_latency_us: AtomicU64,
    pub output_latency_us: AtomicU64,
    /// Rounds of the live capture pacer that passed audio on to vad: it advancing is
    /// the pipeline's heartbeat.
    pub capture_heartbeat: AtomicU64,
    /// High-water marks of the reply-side queues during the current turn.
    pub llm_to_tts_depth: AtomicUsize,
    pub tts_to_playback_depth: AtomicUsize,
    /// Feedback, not a count: the newest piece whose audio tts has ready, as
    /// `piece_key(turn, index)`. The llm stage waits for the first piece's (and for
    /// the piece a phrase cut runs on into) so Piper has the cores to itself (the rest
    /// of the reply is not needed until those have been played).
    pub tts_ready_piece: AtomicU64,
    /// Feedback, not a count: Whisper is in a pass. The llm stage's decodes wait
    /// until it ends (`AsrPassing`) — on a small board two ggml thread pools that spin at
    /// their barriers on the same cores slow each other far more than 2x, and the
    /// pass (a draft of the words so far, or the end of a turn) is on the path to an
    /// answer while the tokens under way (a guess the user spoke through, a reply
    /// already playing) seldom are.
    pub asr_passing: AtomicBool,
    /// Feedback, not a count: the llm stage is in a llama.cpp decode (a prompt, words
    /// read ahead, a token). A pass of Whisper waits for it to end before it starts.
    pub llm_decoding: AtomicBool,
}

/// (turn, index of a piece of its reply) as one number that grows with both, for
/// `Counters::tts_ready_piece`.
pub fn piece_key(turn: TurnId, index: usize) -> u64 {
    (turn << 16) | index.min(0xFFFF) as u64
}

/// Whisper and the llm stage never compute at once: each spins at its barriers on the
/// same cores, and together they slow each other far more than 2x — a pass that
/// takes 150 ms alone took 700-1300 ms beside a decode of a few tokens. Whisper comes
/// first: a pass starts once a decode under way has ended (it is short: a token, a
/// few words read ahead), and no decode starts during a pass. Either wait is bounded
/// (`GIVE_WAY_MAX`), so neither engine can stall the other.
const GIVE_WAY_MAX: Duration = Duration::from_millis(1500);

/// `Counters::asr_passing` set for as long as it lives (a pass that panics clears it too).
pub struct AsrPassing<'a>(&'a AtomicBool);

impl<'a> AsrPassing<'a> {
    /// Claims the cores for a pass of Whisper, once the llm stage's decode under way
    /// (if any) has ended.
    pub fn start(counters: &'a Counters) -> AsrPassing<'a> {
        // SeqCst on both flags, on both sides: each side sets its own flag, then reads
        // the other's, so at most one of them goes ahead.
        counters.asr_passing.store(true, Ordering::SeqCst);
        let waited = wait_while(GIVE_WAY_MAX, || counters.llm_decoding.load(Ordering::SeqCst));
        if !waited.is_zero() {
            tracing::debug!("asr: waited {} ms for the llm's decode to end", waited.as_millis());
        }
        AsrPassing(&counters.asr_passing)
    }
}

impl Drop for AsrPassing<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// The llm stage's side of the turn-taking above.
impl crate::engine::llm::GiveWay for Counters {
    fn before_decode(&self) -> Duration {
        let mut waited = Duration::ZERO;
        loop {
            self.llm_decoding.store(true, Ordering::SeqCst);
            if waited >= GIVE_WAY_MAX || !self.asr_passing.load(Ordering::SeqCst) {
                return waited;
            }
            self.llm_decoding.store(false, Ordering::SeqCst);
            waited += wait_while(GIVE_WAY_MAX - waited, || self.asr_passing.load(Ordering::SeqCst)).max(Duration::from_millis(1));
        }
    }
    fn after_decode(&self) {
        self.llm_decoding.store(false, Ordering::SeqCst);
    }
}

/// Sleeps while `busy` says so, `limit` at most; how long it slept (zero: not at all).
fn wait_while(limit: Duration, busy: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    let mut slept = Duration::ZERO;
    while slept < limit && busy() {
        std::thread::sleep(Duration::from_millis(1));
        slept = started.elapsed();
    }
    slept
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    /// Records a queue depth (items waiting behind `tx`) into a high-water mark.
    pub fn depth<T>(mark: &AtomicUsize, tx: &mpsc::Sender<T>) {
        mark.fetch_max(tx.max_capacity() - tx.capacity(), Ordering::Relaxed);
    }
}

/// Time on the input's timeline. With a live source or real-time pacing this is the
/// wall clock; with a file played as fast as possible, the stages still measure
/// their own work on the wall clock, and the time the user stopped speaking is
/// placed one hangover before the end of turn was detected, as it would be live.
#[derive(Debug, Clone)]
pub struct Clock {
    pub start: Instant,
    pub realtime: bool,
    /// The input is a live device (its samples arrive as they are spoken).
    pub live: bool,
}

impl Clock {
    pub fn new(realtime: bool) -> Clock {
        Clock { start: Instant::now(), realtime, live: false }
    }

    pub fn live() -> Clock {
        Clock { start: Instant::now(), realtime: true, live: true }
    }

    /// When the sample at `stream_s` reached (or would have reached) us, given that
    /// it was recognised as such at `now`, `late_s` of audio after it arrived.
    pub fn arrival(&self, stream_s: f64, late_s: f64, now: Instant) -> Instant {
        if self.realtime && !self.live {
            // A paced recording: its timeline is the wall clock since the start.
            self.start + Duration::from_secs_f64(stream_s)
        } else {
            // Live, the frame that decided just arrived; a fast run imitates that.
            now.checked_sub(Duration::from_secs_f64(late_s)).unwrap_or(now)
        }
    }
}

/// Anchors a turn on both timelines: where the user stopped speaking in the input
/// (seconds) and when that was (instant). Reply audio is placed relative to it.
#[derive(Debug, Clone, Copy)]
pub struct Anchor {
    pub speech_end_s: f64,
    pub speech_end_at: Instant,
}

impl Anchor {
    /// Milliseconds from the end of the user's speech to `at` (the latency marks).
    pub fn ms(&self, at: Instant) -> f64 {
        signed_ms(self.speech_end_at, at)
    }
    /// Position on the input's timeline of `at`.
    pub fn stream_s(&self, at: Instant) -> f64 {
        self.speech_end_s + signed_ms(self.speech_end_at, at) / 1000.0
    }
}

/// Sleeps until `at`, or forever: for an optional deadline in `select!`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn signed_ms(from: Instant, to: Instant) -> f64 {
    if to >= from {
        (to - from).as_secs_f64() * 1000.0
    } else {
        -((from - to).as_secs_f64() * 1000.0)
    }
}

pub use runner::{run, Ask, Engines, Io, OnListening, RunOptions, RunReport, Service};

mod runner;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::llm::GiveWay;

    /// Whisper's passes and the llm stage's decodes, on two threads as in the
    /// pipeline, each wanting the cores again soon after it let go: never both at once.
    #[test]
    fn whisper_and_the_llm_never_compute_at_once() {
        let counters = Arc::new(Counters::default());
        let (in_pass, in_decode, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (overlaps, decodes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let llm = {
            let (counters, in_pass, in_decode, stop, overlaps, decodes) = (counters.clone(), in_pass.clone(), in_decode.clone(), stop.clone(), overlaps.clone(), decodes.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    counters.before_decode();
                    in_decode.store(true, Ordering::SeqCst);
                    if in_pass.load(Ordering::SeqCst) {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    std::thread::sleep(Duration::from_micros(100));
                    in_decode.store(false, Ordering::SeqCst);
                    counters.after_decode();
                    decodes.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        // Passes go on until the decodes have had their turns between them many
        // times, however slowly this machine schedules the two threads (a count of
        // passes alone let a slow machine see too few decodes to prove anything).
        // The deadline only catches decodes that never get a turn at all.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut pass = 0;
        while pass < 200 || decodes.load(Ordering::SeqCst) < 50 {
            assert!(Instant::now() < deadline, "only {} decodes ran beside {pass} passes in a minute", decodes.load(Ordering::SeqCst));
            let passing = AsrPassing::start(&counters);
            in_pass.store(true, Ordering::SeqCst);
            if in_decode.load(Ordering::SeqCst) {
                overlaps.fetch_add(1, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_micros(200));
            in_pass.store(false, Ordering::SeqCst);
            drop(passing);
            // Passes come a few at a time (drafts, a guess, the end), with decodes between.
            if pass % 4 == 3 {
                std::thread::sleep(Duration::from_millis(1));
            }
            pass += 1;
        }
        stop.store(true, Ordering::SeqCst);
        llm.join().unwrap();
        assert_eq!(overlaps.load(Ordering::SeqCst), 0, "a pass and a decode ran at once");
        assert!(!counters.asr_passing.load(Ordering::SeqCst) && !counters.llm_decoding.load(Ordering::SeqCst), "both let go");
    }
}
