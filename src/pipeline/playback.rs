//! Playback stage.
//!
//! Input: `Speech` (from tts), the confirmed turn (watch, from agent) · Output: the output device — here a recording of
//! what would be heard, on the input's timeline — and `Status` (watch, to agent) ·
//! Thread: tokio task
//!
//! Plays each sentence as soon as the previous one ends. With a real-time clock it
//! plays at the speed of sound: sentences wait for the "device", a cancelled turn is
//! cut at the current sample, and what has been heard is published for the agent's
//! history. With a fast clock it places audio where it would have played.
//!
//! Audio of a tentative turn (a reply started during the hangover) is held until
//! the agent confirms the turn: nothing is heard before the end of the turn is
//! certain.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::telemetry::{Note, Notes};
use super::tts::Speech;
use super::{sleep_until, Cancel, Clock, Counters, TurnId};

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

/// The output device, for now a recording on the input's timeline.
struct Output {
    rec: Recording,
    clock: Clock,
    /// Where the output is busy until, on the input timeline.
    cursor_s: f64,
    playing: Option<Playing>,
    status: watch::Sender<Status>,
    notes: Notes,
    counters: Arc<Counters>,
}

pub async fn run(
    rate_hz: u32,
    clock: Clock,
    mut rx: mpsc::Receiver<Speech>,
    mut confirmed: watch::Receiver<TurnId>,
    status: watch::Sender<Status>,
    notes: Notes,
    counters: Arc<Counters>,
) -> anyhow::Result<Recording> {
    let mut out = Output { rec: Recording { rate_hz, samples: Vec::new() }, clock, cursor_s: 0.0, playing: None, status, notes, counters };
    // Audio of a tentative turn (started before the end of the turn was certain),
    // waiting for the agent to confirm the turn — or to cancel it, unheard.
    let mut held: VecDeque<Speech> = VecDeque::new();
    let mut input_open = true;
    let mut agent_open = true;
    loop {
        if out.advance(Instant::now()) {
            continue;
        }
        held.retain(|s| !s.cancel.is_cancelled());
        if held.front().is_some_and(|s| s.turn <= *confirmed.borrow()) {
            let speech = held.pop_front().expect("checked");
            out.queue(speech);
            continue;
        }
        if !input_open && out.playing.is_none() && held.is_empty() {
            break;
        }
        tokio::select! {
            speech = rx.recv(), if input_open => match speech {
                // Behind what is held, or ahead of the agent's confirmation: hold it.
                Some(s) if !held.is_empty() || s.turn > *confirmed.borrow() => held.push_back(s),
                Some(s) => out.queue(s),
                None => {
                    input_open = false;
                    out.no_more_audio();
                }
            },
            changed = confirmed.changed(), if agent_open && !held.is_empty() => {
                if changed.is_err() {
                    // The agent is gone: what it never confirmed is never heard.
                    agent_open = false;
                    held.clear();
                }
            }
            // The next sentence end (or every 10 ms, to notice a cancellation).
            _ = sleep_until(out.wake(Instant::now())) => {}
        }
    }
    Ok(out.rec)
}

impl Output {
    /// Follows the output up to `now`: sentences heard, the turn's end, a cut.
    /// Returns true when the playing turn ended (look again).
    fn advance(&mut self, now: Instant) -> bool {
        let Some(p) = self.playing.as_mut() else { return false };
        let now_s = if self.clock.realtime { p.anchor.stream_s(now) } else { f64::INFINITY };
        if p.cancel.is_cancelled() {
            // Cut what has not been heard; the agent records the turn as cancelled.
            let cut_s = p.anchor.stream_s(now).min(self.cursor_s);
            self.rec.cut(cut_s);
            self.cursor_s = cut_s;
            self.end();
            return true;
        }
        while p.pending.front().is_some_and(|(end, _)| *end <= now_s) {
            let (_, text) = p.pending.pop_front().expect("checked");
            p.spoken.push(text);
            let spoken = p.spoken.clone();
            self.status.send_modify(|s| s.spoken = spoken);
        }
        if let Some(ends) = p.ends_s.filter(|e| *e <= now_s && p.pending.is_empty()) {
            let at = if self.clock.realtime { now } else { p.anchor.speech_end_at + secs(ends - p.anchor.speech_end_s) };
            self.notes.send(Note::TurnEnd { turn: p.turn, at, spoken: p.spoken.join(" "), cancelled: false, reason: None });
            self.end();
            return true;
        }
        false
    }

    fn end(&mut self) {
        let done = self.playing.take().expect("a turn was playing");
        self.status.send_modify(|s| {
            s.speaking = false;
            s.done_turn = s.done_turn.max(done.turn);
        });
    }

    /// When to look at the output next: real time only, while a turn plays.
    fn wake(&self, now: Instant) -> Option<Instant> {
        let p = self.playing.as_ref().filter(|_| self.clock.realtime)?;
        let tick = now + Duration::from_millis(10);
        Some(match p.pending.front().map(|(e, _)| *e).or(p.ends_s) {
            Some(next_s) => tick.min(p.anchor.speech_end_at + secs(next_s - p.anchor.speech_end_s)),
            None => tick,
        })
    }

    /// tts has hung up: what is queued is all the playing turn will get.
    fn no_more_audio(&mut self) {
        if let Some(p) = self.playing.as_mut() {
            p.ends_s.get_or_insert(self.cursor_s);
        }
    }

    /// Puts a sentence's audio on the output, right after what is already there.
    fn queue(&mut self, speech: Speech) {
        if speech.cancel.is_cancelled() || self.playing.as_ref().is_some_and(|p| speech.turn < p.turn) {
            return;
        }
        let now = Instant::now();
        if self.playing.as_ref().map_or(true, |p| p.turn != speech.turn) {
            self.playing = Some(Playing {
                turn: speech.turn,
                cancel: speech.cancel.clone(),
                pending: VecDeque::new(),
                spoken: Vec::new(),
                started: false,
                ends_s: None,
                anchor: speech.anchor,
            });
            self.status.send_modify(|s| {
                s.turn = speech.turn;
                s.spoken.clear();
            });
        }
        let p = self.playing.as_mut().expect("set above");
        let now_s = p.anchor.stream_s(now);
        if !speech.samples.is_empty() {
            if p.started && now_s > self.cursor_s {
                // The output ran dry between two sentences of one reply.
                Counters::bump(&self.counters.playback_underruns);
            }
            let start_s = now_s.max(self.cursor_s);
            if !p.started {
                p.started = true;
                let at = p.anchor.speech_end_at + secs(start_s - p.anchor.speech_end_s);
                self.notes.send(Note::FirstAudio { turn: p.turn, at });
            }
            self.rec.write(start_s, &speech.samples);
            self.cursor_s = start_s + speech.samples.len() as f64 / self.rec.rate_hz as f64;
            p.pending.push_back((self.cursor_s, speech.text));
            self.status.send_modify(|s| s.speaking = true);
        }
        if speech.last {
            p.ends_s = Some(self.cursor_s.max(if p.started { 0.0 } else { now_s }));
        }
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}
