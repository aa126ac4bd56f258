//! Speech recognition stage.
//!
//! Input: `Utterance` (from vad) · Output: `Transcript` (to agent) · Thread: dedicated
//! (`voxd-asr`, owns the Whisper state)
//!
//! Speculative utterances (sent at a pause) are transcribed, remembered and passed
//! on, so the agent can start the reply during the hangover; when the final
//! utterance of that turn is the same audio, its transcript is ready at once and
//! confirms the guess.
//!
//! Partial utterances (the speech so far, while it goes on) are transcribed for the
//! LLM to read ahead, only when nothing else waits, and the pass is dropped as soon
//! as vad queues a guess or an end behind it.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::health::Pulse;
use super::telemetry::{AsrStats, Notes};
use super::vad::{Backlog, Utterance};
use super::{Anchor, AsrPassing, Clock, Counters, TurnId};
use crate::engine::asr::{self, Asr};
use crate::wyoming::desk::Desk;

/// The stage's Whisper: its own, or one it shares with the Wyoming server in the
/// same process (`[wyoming] serve_in_run`), whose desk does both's passes in line.
pub enum Whisper {
    Own(Asr),
    Shared(Desk<Asr>),
}

impl From<Asr> for Whisper {
    fn from(asr: Asr) -> Whisper {
        Whisper::Own(asr)
    }
}

impl Whisper {
    fn transcribe(&mut self, samples: &Arc<Vec<f32>>) -> anyhow::Result<asr::Transcript> {
        let samples = samples.clone();
        Ok(self.pass(move |asr| asr.transcribe(&samples))?)
    }

    fn transcribe_draft(&mut self, samples: &Arc<Vec<f32>>, backlog: &Backlog) -> anyhow::Result<asr::Transcript> {
        let (samples, backlog) = (samples.clone(), backlog.clone());
        Ok(self.pass(move |asr| asr.transcribe_draft(&samples, backlog.waiting()))?)
    }

    /// Runs `job` on Whisper: here, or at the shared desk when its turn comes.
    fn pass<R: Send + 'static>(&mut self, job: impl FnOnce(&mut Asr) -> R + Send + 'static) -> R {
        match self {
            Whisper::Own(asr) => job(asr),
            Whisper::Shared(desk) => desk.blocking_ask(job),
        }
    }
}

/// What the user said.
#[derive(Debug, Clone)]
pub struct Transcript {
    pub turn: TurnId,
    pub text: String,
    /// Made at a pause, before the end of the turn is certain: a final transcript of
    /// the same turn follows if the pause turns out to be the end.
    pub speculative: bool,
    /// The words so far, while the user goes on speaking (speculative too): for the
    /// LLM to read ahead, never answered.
    pub partial: bool,
    pub anchor: Anchor,
    /// When vad declared the end of the turn; None while speculative.
    pub endpoint_at: Option<Instant>,
    /// When the text was ready (for a confirmed guess: when the guess was).
    pub done_at: Instant,
    pub audio_s: f64,
    pub stats: AsrStats,
    /// Typed through the control socket rather than spoken.
    pub typed: bool,
    /// How the turn began (a wake word, a follow-up, push-to-talk, typed…).
    pub started: super::wake::Started,
    /// Whisper failed on this utterance (why): the turn is answered with an apology
    /// and logged as failed.
    pub failed: Option<String>,
    /// Whose conversation it continues: each has its own history and open question.
    pub thread: Thread,
    /// Where it was said (a satellite's `room`), for the log and the agent.
    pub room: Option<String>,
}

/// Whose conversation a turn belongs to.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Thread {
    /// The device's own: its microphone and the control socket.
    #[default]
    Device,
    /// One named by whoever asks (a Home Assistant conversation's id, a satellite).
    Named(String),
    /// A conversation of its own, with nothing said before it and nothing kept.
    Alone,
}

impl Transcript {
    /// A typed turn: words with no audio behind them, whose "end of speech" is now
    /// (its round trip runs from here).
    pub fn typed(turn: TurnId, text: String, clock: &Clock) -> Transcript {
        let now = Instant::now();
        let anchor = Anchor { speech_end_s: now.duration_since(clock.start).as_secs_f64(), speech_end_at: now };
        Transcript {
            turn,
            text,
            speculative: false,
            partial: false,
            anchor,
            endpoint_at: Some(now),
            done_at: now,
            audio_s: 0.0,
            stats: AsrStats { ms: 0.0, audio_ctx: 0, speculative_hit: false, capped: false },
            typed: true,
            started: super::wake::Started::Typed,
            failed: None,
            thread: Thread::Device,
            room: None,
        }
    }
}

/// The last speculative result: the audio it was made from and what it said.
struct Speculation {
    turn: TurnId,
    samples: Arc<Vec<f32>>,
    text: String,
    ms: f64,
    audio_ctx: u32,
    done_at: Instant,
}

pub fn run(mut asr: Whisper, mut rx: mpsc::Receiver<Utterance>, backlog: Backlog, tx: mpsc::Sender<Transcript>, notes: Notes, counters: Arc<Counters>, pulse: Pulse) -> anyhow::Result<()> {
    let mut speculation: Option<Speculation> = None;
    while let Some(u) = rx.blocking_recv() {
        if u.partial {
            if rx.is_empty() {
                pulse.busy(u.turn);
                let passing = AsrPassing::start(&counters);
                let partial = partial(&mut asr, &u, &backlog);
                drop(passing);
                pulse.idle();
                if partial.is_some_and(|t| tx.blocking_send(t).is_err()) {
                    break;
                }
            }
            continue;
        }
        backlog.taken();
        if u.speculative && !rx.is_empty() {
            // Something newer is already queued (the user went on speaking, or the turn
            // ended): this guess is stale, and transcribing it would delay that.
            continue;
        }
        pulse.busy(u.turn);
        // A final utterance that is the audio of the last guess needs no second pass.
        let confirmed = speculation.take().filter(|s| !u.speculative && s.turn == u.turn && s.samples == u.samples);
        let hit = confirmed.is_some();
        let mut failed = None;
        let s = match confirmed {
            Some(s) => s,
            None => {
                let _passing = AsrPassing::start(&counters);
                let (text, ms, audio_ctx) = match asr.transcribe(&u.samples) {
                    Ok(t) => (words_of(&t.text, &u), t.elapsed_ms, t.audio_ctx),
                    // Survived: this utterance gets an apology, the next one Whisper again.
                    Err(e) => {
                        tracing::error!(turn = u.turn, "asr: {e:#}");
                        failed = Some(format!("{e:#}"));
                        (String::new(), 0.0, 0)
                    }
                };
                Speculation { turn: u.turn, samples: u.samples.clone(), text, ms, audio_ctx, done_at: Instant::now() }
            }
        };
        pulse.idle();
        if failed.is_some() {
            // A guess that failed is simply not made; a final utterance is answered.
            if !u.speculative {
                let transcript = Transcript { turn: u.turn, text: String::new(), speculative: false, partial: false, anchor: u.anchor, endpoint_at: u.endpoint_at, done_at: s.done_at, audio_s: u.samples.len() as f64 / crate::audio::ASR_RATE_HZ as f64, stats: AsrStats { ms: 0.0, audio_ctx: 0, speculative_hit: false, capped: u.capped }, typed: false, started: u.started.clone(), failed, thread: Thread::Device, room: None };
                if tx.blocking_send(transcript).is_err() {
                    break;
                }
            }
            continue;
        }
        tracing::debug!(turn = u.turn, speculative = u.speculative, speculative_hit = hit, asr_ms = s.ms as u64, text = %s.text, "transcript");
        let transcript = Transcript {
            turn: u.turn,
            text: s.text.clone(),
            speculative: u.speculative,
            partial: false,
            anchor: u.anchor,
            endpoint_at: u.endpoint_at,
            done_at: s.done_at,
            audio_s: u.samples.len() as f64 / crate::audio::ASR_RATE_HZ as f64,
            stats: AsrStats { ms: s.ms, audio_ctx: s.audio_ctx, speculative_hit: hit, capped: u.capped },
            typed: false,
            started: u.started.clone(),
            failed: None,
            thread: Thread::Device,
            room: None,
        };
        if u.speculative {
            speculation = Some(s);
        }
        if transcript.text.is_empty() {
            // Noise or a cough: a guess says nothing, a final utterance is no turn.
            if !u.speculative {
                notes.dropped(u.turn);
            }
            continue;
        }
        if !u.speculative {
            tracing::info!(turn = u.turn, speculative_hit = hit, "heard: {}", transcript.text);
        }
        if tx.blocking_send(transcript).is_err() {
            break; // the agent has stopped: shutting down
        }
    }
    Ok(())
}

/// The words so far of an utterance still being spoken; None when there are none or
/// the pass was dropped (a guess or an end came) or failed (the final pass will say).
fn partial(asr: &mut Whisper, u: &Utterance, backlog: &Backlog) -> Option<Transcript> {
    let t = match asr.transcribe_draft(&u.samples, backlog) {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!(turn = u.turn, "partial transcript: {e}");
            return None;
        }
    };
    let text = words_of(&t.text, u);
    tracing::debug!(turn = u.turn, asr_ms = t.elapsed_ms as u64, %text, "partial transcript");
    (!text.is_empty()).then(|| Transcript {
        turn: u.turn,
        text,
        speculative: true,
        partial: true,
        anchor: u.anchor,
        endpoint_at: None,
        done_at: Instant::now(),
        audio_s: t.audio_s,
        stats: AsrStats { ms: t.elapsed_ms, audio_ctx: t.audio_ctx, speculative_hit: false, capped: false },
        typed: false,
        started: u.started.clone(),
        failed: None,
        thread: Thread::Device,
        room: None,
    })
}

/// Whisper writes what it hears that is not speech in brackets or asterisks
/// ("[BLANK_AUDIO]", "(wind blowing)", "*music*"); on noise that is all it writes.
/// None of it is something the user said.
/// What the user asked: Whisper's text without its annotations and, in a turn a
/// wake word began, without the wake phrase.
fn words_of(text: &str, u: &Utterance) -> String {
    let text = strip_annotations(text);
    match &u.started {
        super::wake::Started::Wake { word, .. } => super::wake::strip_phrase(&text, word),
        _ => text,
    }
}

pub fn strip_annotations(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut depth = 0i32;
    let mut star = false;
    for c in text.chars() {
        match c {
            '[' | '(' => depth += 1,
            ']' | ')' => depth = (depth - 1).max(0),
            '*' => star = !star,
            c if depth == 0 && !star => out.push(c),
            _ => {}
        }
    }
    let out = out.split_whitespace().collect::<Vec<_>>().join(" ");
    if out.chars().any(char::is_alphanumeric) {
        out
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::strip_annotations;

    #[test]
    fn non_speech_annotations_are_not_transcripts() {
        assert_eq!(strip_annotations("[BLANK_AUDIO]"), "");
        assert_eq!(strip_annotations(" (wind blowing) "), "");
        assert_eq!(strip_annotations("*music* ..."), "");
        assert_eq!(strip_annotations("Turn on (uh) the lights."), "Turn on the lights.");
    }
}
