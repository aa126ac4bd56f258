//! Speech recognition stage.
//!
//! Input: `Utterance` (from vad) · Output: `Transcript` (to agent) · Thread: dedicated
//! (`voxd-asr`, owns the Whisper state)
//!
//! Speculative utterances (sent at a pause) are transcribed and remembered; when the
//! final utterance of that turn is the same audio, its transcript is ready at once.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::telemetry::{AsrStats, Notes};
use super::vad::Utterance;
use super::{Anchor, TurnId};
use crate::engine::asr::Asr;

/// What the user said.
#[derive(Debug, Clone)]
pub struct Transcript {
    pub turn: TurnId,
    pub text: String,
    pub anchor: Anchor,
    pub endpoint_at: Instant,
    pub done_at: Instant,
    pub audio_s: f64,
    pub stats: AsrStats,
}

/// The last speculative result: the audio it was made from and what it said.
struct Speculation {
    turn: TurnId,
    samples: Arc<Vec<f32>>,
    text: String,
    audio_ctx: u32,
}

pub fn run(mut asr: Asr, mut rx: mpsc::Receiver<Utterance>, tx: mpsc::Sender<Transcript>, notes: Notes) -> anyhow::Result<()> {
    let mut speculation: Option<Speculation> = None;
    while let Some(u) = rx.blocking_recv() {
        if u.speculative && !rx.is_empty() {
            // Something newer is already queued (the user went on speaking, or the turn
            // ended): this guess is stale, and transcribing it would delay that.
            continue;
        }
        if u.speculative {
            let t = asr.transcribe(&u.samples)?;
            tracing::debug!(turn = u.turn, ms = t.elapsed_ms as u64, text = %t.text, "speculative transcript");
            speculation = Some(Speculation { turn: u.turn, samples: u.samples, text: t.text, audio_ctx: t.audio_ctx });
            continue;
        }
        let anchor = u.anchor.expect("final utterances carry their anchor");
        let reuse = speculation.take().filter(|s| s.turn == u.turn && s.samples == u.samples);
        let (text, ms, audio_ctx, hit) = match reuse {
            Some(s) => (s.text, 0.0, s.audio_ctx, true),
            None => {
                let t = asr.transcribe(&u.samples)?;
                (t.text, t.elapsed_ms, t.audio_ctx, false)
            }
        };
        let text = strip_annotations(&text);
        tracing::info!(turn = u.turn, speculative_hit = hit, asr_ms = ms as u64, "heard: {text}");
        if text.is_empty() {
            notes.dropped(u.turn);
            continue;
        }
        let transcript = Transcript {
            turn: u.turn,
            text,
            anchor,
            endpoint_at: u.endpoint_at,
            done_at: Instant::now(),
            audio_s: u.samples.len() as f64 / crate::audio::ASR_RATE_HZ as f64,
            stats: AsrStats { ms, audio_ctx, speculative_hit: hit, capped: u.capped },
        };
        if tx.blocking_send(transcript).is_err() {
            break; // the agent has stopped: shutting down
        }
    }
    Ok(())
}

/// Whisper writes what it hears that is not speech in brackets or asterisks
/// ("[BLANK_AUDIO]", "(wind blowing)", "*music*"); on noise that is all it writes.
/// None of it is something the user said.
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
