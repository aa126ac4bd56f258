//! Speech synthesis stage.
//!
//! Input: `Sentence` (from llm) · Output: `Speech` (to playback) · Thread: dedicated
//! (`voxd-tts`, owns the Piper voice)
//!
//! One sentence in, its audio out. Sentences of a cancelled turn are dropped unheard.
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
}

impl Voice for Tts {
    fn speak(&mut self, text: &str) -> anyhow::Result<(Vec<f32>, u32)> {
        let s = self.synthesize(text)?;
        Ok((s.samples, s.rate_hz))
    }
}

/// The Piper voice of the Wyoming server in the same process (`[wyoming]
/// serve_in_run`): each piece synthesised at its desk, in line with Wyoming's requests.
pub struct SharedVoice(pub crate::wyoming::desk::Desk<Tts>);

impl Voice for SharedVoice {
    fn speak(&mut self, text: &str) -> anyhow::Result<(Vec<f32>, u32)> {
        let text = text.to_string();
        let s = self.0.blocking_ask(move |tts| tts.synthesize(&text))?;
        Ok((s.samples, s.rate_hz))
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
        let silent = s.text.is_empty() || failed_turn == Some(s.turn);
        let mut text = s.text;
        let (mut samples, rate_hz) = if silent {
            (Vec::new(), 22_050)
        } else {
            // A comma, not the voice's full stop: the phrase sounds unfinished, as it is.
            let spoken = if s.runs_on { voice.speak(&format!("{text},")) } else { voice.speak(&text) };
            match spoken {
                Ok(audio) => audio,
                Err(e) => {
                    tracing::error!(turn = s.turn, "tts: {e:#} (saying {text:?})");
                    notes.send(Note::Failed { turn: s.turn, stage: "tts", message: format!("{e:#}"), ends_turn: false });
                    failed_turn = Some(s.turn);
                    // The apology is other words: the voice may well manage those.
                    text = super::APOLOGY.to_string();
                    voice.speak(&text).unwrap_or((Vec::new(), 22_050))
                }
            }
        };
        // A phrase cut and the piece after it meet without the voice's pauses.
        if running_on.take() == Some(s.turn) {
            crate::audio::trim_silent_start(&mut samples, rate_hz, JOIN_LEAD_MS);
        }
        if s.runs_on {
            crate::audio::trim_silent_end(&mut samples, rate_hz, JOIN_PAUSE_MS);
            running_on = Some(s.turn);
        }
        pulse.idle();
        counters.tts_ready_piece.fetch_max(super::piece_key(s.turn, s.index), std::sync::atomic::Ordering::Release);
        if s.index == 0 && !samples.is_empty() {
            notes.send(Note::TtsFirstAudio { turn: s.turn, at: Instant::now() });
        }
        let speech = Speech { turn: s.turn, index: s.index, text, samples, rate_hz, anchor: s.anchor, cancel: s.cancel, last: s.last };
        if tx.blocking_send(speech).is_err() {
            break;
        }
        Counters::depth(&counters.tts_to_playback_depth, &tx);
    }
    Ok(())
}
