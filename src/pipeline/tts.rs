//! Speech synthesis stage.
//!
//! Input: `Sentence` (from llm) · Output: `Speech` (to playback) · Thread: dedicated
//! (`voxd-tts`, owns the Piper voice)
//!
//! One sentence in, its audio out, a slice at a time as the voice makes it (Piper's
//! first ~190 ms of a piece goes to the speaker while the rest is made; only the
//! piece's last slice carries its words). Sentences of a cancelled turn are dropped
//! unheard.
//! A piece cut mid-sentence (`Sentence::runs_on`) and the one after it are joined
//! without the silence the voice puts at either end of what it says.
//! A sentence the voice fails on is replaced by an apology and the rest of that
//! reply by silence (the turn still ends, logged as failed); the next turn is
//! spoken again.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::llm::Sentence;
use super::telemetry::{Note, Notes};
use super::health::Pulse;
use super::{Anchor, Cancel, Counters, TurnId};
use crate::engine::tts::Tts;

/// Audio of one sentence, at the voice's rate.
#[derive(Debug, Clone)]
pub struct Speech {
    pub turn: TurnId,
    pub index: usize,
    pub text: String,
    pub samples: Vec<f32>,
    pub rate_hz: u32,
    pub anchor: Anchor,
    pub cancel: Cancel,
    pub last: bool,
}

/// Something that turns text into audio (the real voice, or a stand-in that lets
/// tests make synthesis slow on purpose).
pub trait Voice: Send {
    fn speak(&mut self, text: &str) -> anyhow::Result<(Vec<f32>, u32)>;

    /// The same audio handed to `audio` a slice at a time as it is made: (samples,
    /// rate, whether it is the last slice). By default the whole at once.
    fn speak_streamed(&mut self, text: &str, audio: &mut dyn FnMut(Vec<f32>, u32, bool)) -> anyhow::Result<()> {
        let (samples, rate_hz) = self.speak(text)?;
        audio(samples, rate_hz, true);
        Ok(())
    }
}

impl Voice for Tts {
    fn speak(&mut self, text: &str) -> anyhow::Result<(Vec<f32>, u32)> {
        let s = self.synthesize(text)?;
        Ok((s.samples, s.rate_hz))
    }

    fn speak_streamed(&mut self, text: &str, audio: &mut dyn FnMut(Vec<f32>, u32, bool)) -> anyhow::Result<()> {
        let rate_hz = self.rate_hz;
        self.synthesize_streamed(text, &mut |samples, last| audio(samples.to_vec(), rate_hz, last))?;
        Ok(())
    }
}

/// The Piper voice of the Wyoming server in the same process (`[wyoming]
/// serve_in_run`): each piece synthesised at its desk, in line with Wyoming's requests,
/// its slices handed to the stage as the desk's thread makes them.
pub struct SharedVoice(pub crate::wyoming::desk::Desk<Tts>);

impl Voice for SharedVoice {
    fn speak(&mut self, text: &str) -> anyhow::Result<(Vec<f32>, u32)> {
        let text = text.to_string();
        let s = self.0.blocking_ask(move |tts| tts.synthesize(&text))?;
        Ok((s.samples, s.rate_hz))
    }

    fn speak_streamed(&mut self, text: &str, audio: &mut dyn FnMut(Vec<f32>, u32, bool)) -> anyhow::Result<()> {
        let text = text.to_string();
        // The desk's own voice, as a stage with a voice of its own would speak.
        let voice = move |tts: &mut Tts, hand_over: &mut dyn FnMut((Vec<f32>, u32, bool))| tts.speak_streamed(&text, &mut |samples, rate_hz, last| hand_over((samples, rate_hz, last)));
        self.0.blocking_ask_streamed(voice, &mut |(samples, rate_hz, last)| audio(samples, rate_hz, last))
    }
}

/// No voice at all, for a text run (Wyoming's `handle`): each piece passes on as
/// words only, which the silent speaker takes as heard.
pub struct Unvoiced;

impl Voice for Unvoiced {
    fn speak(&mut self, _text: &str) -> anyhow::Result<(Vec<f32>, u32)> {
        Ok((Vec::new(), 22_050))
    }
}

/// Where a phrase cut joins two pieces: the silence kept after the first (Piper ends
/// every utterance with ~110 ms of it, and starts with ~45 ms) and before the second.
/// ~60 ms in all: a breath of a phrase break, not a full stop.
pub const JOIN_PAUSE_MS: u32 = 50;
pub const JOIN_LEAD_MS: u32 = 10;

pub fn run(mut voice: Box<dyn Voice>, mut rx: mpsc::Receiver<Sentence>, tx: mpsc::Sender<Speech>, notes: Notes, counters: Arc<Counters>, pulse: Pulse) -> anyhow::Result<()> {
    // The turn whose reply the voice failed on: the rest of it is not attempted.
    let mut failed_turn: Option<TurnId> = None;
    // The turn whose last piece ran on into the next (a phrase cut).
    let mut running_on: Option<TurnId> = None;
    while let Some(s) = rx.blocking_recv() {
        if s.cancel.is_cancelled() {
            continue;
        }
        pulse.busy(s.turn);
        let joins_previous = running_on.take() == Some(s.turn);
        if s.runs_on {
            running_on = Some(s.turn);
        }
        let silent = s.text.is_empty() || failed_turn == Some(s.turn);
        let mut out = Slices { sentence: &s, text: s.text.clone(), joins_previous, begun: false, closed: false, tx: &tx, notes: &notes, counters: &counters };
        if silent {
            out.send(Vec::new(), 22_050, true);
        } else {
            // A comma, not the voice's full stop: the phrase sounds unfinished, as it is.
            let text = if s.runs_on { format!("{},", s.text) } else { s.text.clone() };
            if let Err(e) = voice.speak_streamed(&text, &mut |samples, rate_hz, last| out.send(samples, rate_hz, last)) {
                tracing::error!(turn = s.turn, "tts: {e:#} (saying {:?})", s.text);
                notes.send(Note::Failed { turn: s.turn, stage: "tts", message: format!("{e:#}"), ends_turn: false });
                failed_turn = Some(s.turn);
                // The apology is other words: the voice may well manage those.
                out.text = super::APOLOGY.to_string();
                if voice.speak_streamed(super::APOLOGY, &mut |samples, rate_hz, last| out.send(samples, rate_hz, last)).is_err() {
                    out.send(Vec::new(), 22_050, true);
                }
            }
        }
        pulse.idle();
        // The whole piece is made: the llm stage may have the cores again.
        counters.tts_ready_piece.fetch_max(super::piece_key(s.turn, s.index), std::sync::atomic::Ordering::Release);
        if out.closed {
            break;
        }
    }
    Ok(())
}

/// Passes one sentence's audio on to playback a slice at a time.
struct Slices<'a> {
    sentence: &'a Sentence,
    /// The words the piece's last slice carries (an apology's, if the voice failed).
    text: String,
    /// The piece follows a phrase cut: its first slice starts without the voice's lead-in.
    joins_previous: bool,
    /// A slice has gone to playback.
    begun: bool,
    /// Playback has hung up.
    closed: bool,
    tx: &'a mpsc::Sender<Speech>,
    notes: &'a Notes,
    counters: &'a Counters,
}

impl Slices<'_> {
    fn send(&mut self, mut samples: Vec<f32>, rate_hz: u32, last: bool) {
        let s = self.sentence;
        if self.closed || s.cancel.is_cancelled() {
            return;
        }
        // A phrase cut and the piece after it meet without the voice's pauses.
        if !self.begun && self.joins_previous {
            crate::audio::trim_silent_start(&mut samples, rate_hz, JOIN_LEAD_MS);
        }
        if last && s.runs_on {
            crate::audio::trim_silent_end(&mut samples, rate_hz, JOIN_PAUSE_MS);
        }
        if s.index == 0 && !self.begun && !samples.is_empty() {
            self.notes.send(Note::TtsFirstAudio { turn: s.turn, at: Instant::now() });
        }
        self.begun = true;
        let text = if last { std::mem::take(&mut self.text) } else { String::new() };
        let speech = Speech { turn: s.turn, index: s.index, text, samples, rate_hz, anchor: s.anchor, cancel: s.cancel.clone(), last: s.last && last };
        if self.tx.blocking_send(speech).is_err() {
            self.closed = true;
            return;
        }
        Counters::depth(&self.counters.tts_to_playback_depth, self.tx);
    }
}
