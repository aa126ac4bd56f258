//! Playback stage.
//!
//! Input: `Speech` (from tts) · Output: the output device — here a recording of
//! what would be heard, on the input's timeline — and `Status` (watch, to agent) ·
//! Thread: tokio task
//!
//! Plays each sentence as soon as the previous one ends. With a real-time clock it
//! plays at the speed of sound: sentences wait for the "device", a cancelled turn is
//! cut at the current sample, and what has been heard is published for the agent's
//! history. With a fast clock it places audio where it would have played.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::telemetry::{Note, Notes};
use super::tts::Speech;
use super::{Cancel, Clock, Counters, TurnId};

/// What the output is doing, for the agent (barge-in and history).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    /// The turn whose audio is playing or was played last.
    pub turn: TurnId,
    pub speaking: bool,
    /// Sentences of `turn` heard in full so far.
    pub spoken: Vec<String>,
    /// The newest turn whose audio has finished (or was cut).
    pub done_turn: TurnId,
}

/// The output recording: what the speaker would have played, sample-aligned with
/// the input.
pub struct Recording {
    pub rate_hz: u32,
    pub samples: Vec<f32>,
}

impl Recording {
    fn index(&self, s: f64) -> usize {
        (s.max(0.0) * self.rate_hz as f64).round() as usize
    }

    fn write(&mut self, at_s: f64, audio: &[f32]) {
        let start = self.index(at_s);
        if self.samples.len() < start + audio.len() {
            self.samples.resize(start + audio.len(), 0.0);
        }
        for (dst, src) in self.samples[start..].iter_mut().zip(audio) {
            *dst += src;
        }
    }

    /// Silences everything from `from_s` on (audio queued but never played).
    fn cut(&mut self, from_s: f64) {
        let from = self.index(from_s).min(self.samples.len());
        self.samples.truncate(from);
    }
}

/// The turn whose audio is going out.
struct Playing {
    turn: TurnId,
    cancel: Cancel,
    /// (end on the input timeline, text) of sentences not yet heard in full.
    pending: VecDeque<(f64, String)>,
    spoken: Vec<String>,
    started: bool,
    /// Set once the last sentence is queued: when the output reaches it, the turn ends.
    ends_s: Option<f64>,
    /// Maps the input timeline to instants for this turn.
    anchor: super::Anchor,
}

pub async fn run(rate_hz: u32, clock: Clock, mut rx: mpsc::Receiver<Speech>, status: watch::Sender<Status>, notes: Notes, counters: Arc<Counters>) -> anyhow::Result<Recording> {
    let mut rec = Recording { rate_hz, samples: Vec::new() };
    // Where the output is busy until, on the input timeline.
    let mut cursor_s = 0.0f64;
    let mut playing: Option<Playing> = None;
    let mut input_open = true;
    loop {
        let now = Instant::now();
        if let Some(p) = playing.as_mut() {
            let now_s = if clock.realtime { p.anchor.stream_s(now) } else { f64::INFINITY };
            if p.cancel.is_cancelled() {
                // Cut what has not been heard; the agent records the turn as cancelled.
                let cut_s = p.anchor.stream_s(now).min(cursor_s);
                rec.cut(cut_s);
                cursor_s = cut_s;
                let done = playing.take().expect("checked");
                status.send_modify(|s| {
                    s.speaking = false;
                    s.done_turn = s.done_turn.max(done.turn);
                });
                continue;
            }
            while p.pending.front().is_some_and(|(end, _)| *end <= now_s) {
                let (_, text) = p.pending.pop_front().expect("checked");
                p.spoken.push(text);
                let spoken = p.spoken.clone();
                status.send_modify(|s| s.spoken = spoken);
            }
            if let Some(ends) = p.ends_s.filter(|e| *e <= now_s && p.pending.is_empty()) {
                let at = if clock.realtime { now } else { p.anchor.speech_end_at + secs(ends - p.anchor.speech_end_s) };
                notes.send(Note::TurnEnd { turn: p.turn, at, spoken: p.spoken.join(" "), cancelled: false, reason: None });
                let done = playing.take().expect("checked");
                status.send_modify(|s| {
                    s.speaking = false;
                    s.done_turn = s.done_turn.max(done.turn);
                });
                continue;
            }
        }
        if !input_open && playing.is_none() {
            break;
        }
        // Wake for the next sentence end (or every 10 ms to notice a cancellation).
        let wake = playing.as_ref().filter(|_| clock.realtime).map(|p| {
            let tick = now + Duration::from_millis(10);
            match p.pending.front().map(|(e, _)| *e).or(p.ends_s) {
                Some(next_s) => tick.min(p.anchor.speech_end_at + secs(next_s - p.anchor.speech_end_s)),
                None => tick,
            }
        });
        let speech = if !input_open {
            // Input closed: let what is queued play out.
            match wake {
                Some(w) => {
                    tokio::time::sleep_until(w.into()).await;
                    continue;
                }
                None => None,
            }
        } else {
            match wake {
                Some(w) => tokio::select! {
                    s = rx.recv() => s,
                    _ = tokio::time::sleep_until(w.into()) => continue,
                },
                None => rx.recv().await,
            }
        };
        let Some(speech) = speech else {
            input_open = false;
            continue;
        };
        if speech.cancel.is_cancelled() || playing.as_ref().is_some_and(|p| speech.turn < p.turn) {
            continue;
        }
        let now = Instant::now();
        if playing.as_ref().map_or(true, |p| p.turn != speech.turn) {
            playing = Some(Playing {
                turn: speech.turn,
                cancel: speech.cancel.clone(),
                pending: VecDeque::new(),
                spoken: Vec::new(),
                started: false,
                ends_s: None,
                anchor: speech.anchor,
            });
            status.send_modify(|s| {
                s.turn = speech.turn;
                s.spoken.clear();
            });
        }
        let p = playing.as_mut().expect("set above");
        let now_s = p.anchor.stream_s(now);
        if !speech.samples.is_empty() {
            if p.started && now_s > cursor_s {
                // The output ran dry between two sentences of one reply.
                Counters::bump(&counters.playback_underruns);
            }
            let start_s = now_s.max(cursor_s);
            if !p.started {
                p.started = true;
                let at = p.anchor.speech_end_at + secs(start_s - p.anchor.speech_end_s);
                notes.send(Note::FirstAudio { turn: p.turn, at });
            }
            rec.write(start_s, &speech.samples);
            cursor_s = start_s + speech.samples.len() as f64 / rate_hz as f64;
            p.pending.push_back((cursor_s, speech.text));
            status.send_modify(|s| s.speaking = true);
        }
        if speech.last {
            p.ends_s = Some(cursor_s.max(if p.started { 0.0 } else { now_s }));
        }
    }
    Ok(rec)
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}
