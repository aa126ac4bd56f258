//! Playback stage.
//!
//! Input: `Speech` (from tts), the confirmed turn (watch, from agent) · Output: the
//! speaker — the output device, or for a file run a recording of what would be heard
//! on the input's timeline — and `Status` (watch, to agent and vad) · Thread: tokio
//! task
//!
//! Plays each sentence as soon as the previous one ends. In real time it follows the
//! speaker: a sentence counts as heard when the speaker has played it, a cancelled
//! turn is cut at once (the device's queue flushed), and what has been heard is
//! published for the agent's history. A file run as fast as possible places audio
//! where it would have played.
//!
//! Audio of a tentative turn (a reply started during the hangover) is held until
//! the agent confirms the turn: nothing is heard before the end of the turn is
//! certain.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::telemetry::{Note, Notes};
use super::tts::Speech;
use super::{sleep_until, Anchor, Cancel, Clock, Counters, TurnId};
use crate::device;

/// What the output is doing, for the agent (barge-in and history) and vad (not
/// hearing the assistant itself).
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

/// Where the assistant's voice goes.
pub enum Speaker {
    /// A file run: what would be heard, on the input's timeline (seconds).
    Recording { rec: Recording, clock: Clock, cursor_s: f64 },
    /// The output device; its timeline is the frames it has played (seconds).
    Device(DeviceSpeaker),
    /// A text run (Wyoming's `handle`): nothing is played, every piece is "heard" the
    /// moment it is ready, and its words are the answer. Its timeline is the wall clock.
    Silent,
}

pub struct DeviceSpeaker {
    out: device::Output,
    /// Resampled audio waiting for room in the device's ring.
    waiting: VecDeque<f32>,
    /// Frames written to the ring, ever. With the frames that have left it
    /// (`out.consumed()`: played, flushed or lost with a failed stream) this is the
    /// speaker's timeline in whole frames; nothing ever re-bases it.
    written: u64,
    /// The reply's last sentence is queued: once it is all in the ring, the device
    /// running dry is the reply's end, not an underrun.
    complete: bool,
    counters: Arc<Counters>,
}

impl Speaker {
    pub fn recording(rate_hz: u32, clock: Clock) -> Speaker {
        Speaker::Recording { rec: Recording { rate_hz, samples: Vec::new() }, clock, cursor_s: 0.0 }
    }

    pub fn device(out: device::Output, counters: Arc<Counters>) -> Speaker {
        Speaker::Device(DeviceSpeaker { out, waiting: VecDeque::new(), written: 0, complete: false, counters })
    }

    fn realtime(&self) -> bool {
        match self {
            Speaker::Recording { clock, .. } => clock.realtime,
            Speaker::Device(_) | Speaker::Silent => true,
        }
    }

    /// Where the speaker is now on its timeline: everything before has been played.
    fn now_s(&self, now: Instant, anchor: &Anchor) -> f64 {
        match self {
            Speaker::Recording { clock, .. } if clock.realtime => anchor.stream_s(now),
            Speaker::Silent => anchor.stream_s(now),
            Speaker::Recording { .. } => f64::INFINITY,
            Speaker::Device(d) => frames_to_s(d.out.consumed(), d.out.rate_hz),
        }
    }

    /// The instant at which the speaker is (or was) at `pos_s`.
    fn instant_of(&self, pos_s: f64, now: Instant, anchor: &Anchor) -> Instant {
        match self {
            Speaker::Recording { .. } | Speaker::Silent => anchor.speech_end_at + secs(pos_s - anchor.speech_end_s),
            Speaker::Device(_) => {
                let now_s = self.now_s(now, anchor);
                if pos_s <= now_s {
                    now.checked_sub(secs(now_s - pos_s)).unwrap_or(now)
                } else {
                    now + secs(pos_s - now_s)
                }
            }
        }
    }

    /// Queues audio right after what is queued (not before `now_s`); returns where it
    /// starts and ends on the speaker's timeline.
    fn queue(&mut self, audio: &[f32], rate_hz: u32, now_s: f64) -> (f64, f64) {
        match self {
            Speaker::Recording { rec, cursor_s, .. } => {
                let start = now_s.max(*cursor_s);
                rec.write(start, audio);
                *cursor_s = start + audio.len() as f64 / rec.rate_hz as f64;
                (start, *cursor_s)
            }
            Speaker::Silent => (now_s, now_s),
            Speaker::Device(d) => {
                let rate = d.out.rate_hz;
                let resampled;
                let audio = if rate_hz == rate {
                    audio
                } else {
                    resampled = crate::audio::resample(audio, rate_hz, rate).unwrap_or_default();
                    &resampled
                };
                let (start, end) = d.place(audio.len());
                d.waiting.extend(audio);
                d.complete = false;
                // Audio in the ring first: a callback in between would find it dry.
                d.feed();
                d.out.set_active(true);
                (start, end)
            }
        }
    }

    /// Cuts what has not been heard yet; returns where the speaker stopped.
    fn cut(&mut self, now_s: f64) -> f64 {
        match self {
            Speaker::Recording { rec, cursor_s, .. } => {
                let at = now_s.min(*cursor_s);
                rec.cut(at);
                *cursor_s = at;
                at
            }
            Speaker::Silent => now_s,
            Speaker::Device(d) => {
                // What waits here was never written; what is in the ring the device
                // drops and counts as past, so the timeline stays whole.
                d.waiting.clear();
                d.out.flush();
                d.out.set_active(false);
                now_s
            }
        }
    }

    /// Moves waiting audio into the device as room frees up.
    fn tick(&mut self) {
        if let Speaker::Device(d) = self {
            d.feed();
            d.report();
        }
    }

    /// Audio still to go into the device.
    fn has_waiting(&self) -> bool {
        matches!(self, Speaker::Device(d) if !d.waiting.is_empty())
    }

    /// The last sentence of a reply is queued: running dry after it is no underrun.
    fn reply_complete(&mut self) {
        if let Speaker::Device(d) = self {
            d.complete = true;
            d.feed();
        }
    }
}

impl DeviceSpeaker {
    /// Where `frames` queued now will start and end on the speaker's timeline
    /// (seconds): right after everything written or waiting to be.
    fn place(&self, frames: usize) -> (f64, f64) {
        place(self.written + self.waiting.len() as u64, frames, self.out.rate_hz)
    }

    fn feed(&mut self) {
        // Nothing goes into the ring until the device has dropped what a cut left
        // there: it would be dropped too.
        if self.out.flush_pending() {
            return;
        }
        let (a, b) = self.waiting.as_slices();
        let mut n = self.out.write(a);
        if n == a.len() {
            n += self.out.write(b);
        }
        self.waiting.drain(..n);
        self.written += n as u64;
        if self.complete && self.waiting.is_empty() {
            self.out.set_active(false);
        }
    }

    /// The devices' figures, for the turn log.
    fn report(&self) {
        let h = &self.out.health;
        self.counters.playback_underruns.store(h.lost.load(Ordering::Relaxed), Ordering::Relaxed);
        self.counters.playback_xruns.store(h.xruns.load(Ordering::Relaxed), Ordering::Relaxed);
        self.counters.output_reopens.store(h.reopens.load(Ordering::Relaxed), Ordering::Relaxed);
        self.counters.playback_errors.store(h.errors.load(Ordering::Relaxed), Ordering::Relaxed);
        self.counters.output_latency_us.store(h.latency_us.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// The turn whose audio is going out.
struct Playing {
    turn: TurnId,
    cancel: Cancel,
    /// (end on the speaker's timeline, text) of sentences not yet heard in full.
    pending: VecDeque<(f64, String)>,
    spoken: Vec<String>,
    started: bool,
    /// Where this turn's queued audio ends on the speaker's timeline.
    queued_until: f64,
    /// Set once the last sentence is queued: when the speaker reaches it, the turn ends.
    ends_s: Option<f64>,
    /// Maps the input timeline to instants for this turn.
    anchor: Anchor,
    /// In real time: when the speaker should have played everything queued, plus
    /// `STALL_GRACE`. A speaker that has not got there by then is not trusted to:
    /// the turn ends anyway, so nothing waits on it forever.
    deadline: Option<Instant>,
}

/// How late a real-time speaker may be with the end of a turn's audio before the
/// turn is ended without it (a device reopen, with its backoff, fits inside).
const STALL_GRACE: Duration = Duration::from_secs(5);

/// The stage's state: the speaker and the turn on it.
struct Output {
    speaker: Speaker,
    playing: Option<Playing>,
    status: watch::Sender<Status>,
    notes: Notes,
    counters: Arc<Counters>,
}

/// A short sound played when voxd wakes (`[wake] earcon`).
pub struct Earcon {
    pub clip: Vec<f32>,
    pub rate_hz: u32,
    /// From vad: where on the input the newest wake word was heard (0: none yet).
    pub wakes: watch::Receiver<u64>,
}

pub async fn run(speaker: Speaker, mut rx: mpsc::Receiver<Speech>, mut confirmed: watch::Receiver<TurnId>, mut earcon: Option<Earcon>, status: watch::Sender<Status>, notes: Notes, counters: Arc<Counters>) -> anyhow::Result<Option<Recording>> {
    let mut out = Output { speaker, playing: None, status, notes, counters };
    // Audio of a tentative turn (started before the end of the turn was certain),
    // waiting for the agent to confirm the turn — or to cancel it, unheard.
    let mut held: VecDeque<Speech> = VecDeque::new();
    let mut input_open = true;
    let mut agent_open = true;
    loop {
        out.speaker.tick();
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
            woke = async { earcon.as_mut().expect("guarded").wakes.changed().await }, if earcon.is_some() => match woke {
                Ok(()) => out.chime(earcon.as_mut().expect("guarded")),
                Err(_) => earcon = None, // vad is done
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
    Ok(match out.speaker {
        Speaker::Recording { rec, .. } => Some(rec),
        Speaker::Device(_) | Speaker::Silent => None,
    })
}

impl Output {
    /// Follows the speaker up to `now`: sentences heard, the turn's end, a cut.
    /// Returns true when the playing turn ended (look again).
    fn advance(&mut self, now: Instant) -> bool {
        let Some(p) = self.playing.as_mut() else { return false };
        let now_s = self.speaker.now_s(now, &p.anchor);
        if p.cancel.is_cancelled() {
            // Cut what has not been heard; the agent records the turn as cancelled.
            let live_now = if self.speaker.realtime() { now_s } else { p.anchor.stream_s(now) };
            self.speaker.cut(live_now);
            self.end();
            return true;
        }
        if p.deadline.is_some_and(|d| now >= d) {
            tracing::warn!(turn = p.turn, "playback: the speaker has not played this turn's audio {} s after it was due; the turn ends without it", STALL_GRACE.as_secs());
            Counters::bump(&self.counters.playback_stalls);
            let unplayed: Vec<String> = p.pending.drain(..).map(|(_, text)| text).collect();
            p.spoken.extend(unplayed);
            self.notes.send(Note::TurnEnd { turn: p.turn, at: now, spoken: p.spoken.join(" "), cancelled: false, reason: None });
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
            let at = if self.speaker.realtime() { now } else { self.speaker.instant_of(ends, now, &p.anchor) };
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

    /// The earcon, unless an answer is playing (a wake word then interrupts it, or
    /// is ignored: no chime over the voice).
    fn chime(&mut self, earcon: &mut Earcon) {
        let at_sample = *earcon.wakes.borrow_and_update();
        if self.playing.is_some() || at_sample == 0 {
            return;
        }
        // A recording has it where the wake word was heard; a device plays it now.
        self.speaker.queue(&earcon.clip, earcon.rate_hz, at_sample as f64 / crate::audio::ASR_RATE_HZ as f64);
        self.speaker.reply_complete();
    }

    /// When to look at the speaker next: in real time while a turn plays or audio
    /// waits for room.
    fn wake(&self, now: Instant) -> Option<Instant> {
        if !self.speaker.realtime() || (self.playing.is_none() && !self.speaker.has_waiting()) {
            return None;
        }
        let tick = now + Duration::from_millis(10);
        let Some(p) = self.playing.as_ref() else { return Some(tick) };
        Some(match p.pending.front().map(|(e, _)| *e).or(p.ends_s) {
            Some(next_s) => tick.min(self.speaker.instant_of(next_s, now, &p.anchor)),
            None => tick,
        })
    }

    /// tts has hung up: what is queued is all the playing turn will get.
    fn no_more_audio(&mut self) {
        if let Some(p) = self.playing.as_mut() {
            p.ends_s.get_or_insert(p.queued_until);
        }
    }

    /// Puts a sentence's audio on the speaker, right after what is already there.
    fn queue(&mut self, speech: Speech) {
        if speech.cancel.is_cancelled() || self.playing.as_ref().is_some_and(|p| speech.turn < p.turn) {
            return;
        }
        let now = Instant::now();
        if self.playing.as_ref().is_some_and(|p| p.turn != speech.turn) {
            // The agent cancels a turn before it starts the next: a cancel not seen yet
            // is honoured now, so the old turn's audio is cut rather than played first.
            self.advance(now);
        }
        if self.playing.as_ref().map_or(true, |p| p.turn != speech.turn) {
            self.playing = Some(Playing {
                turn: speech.turn,
                cancel: speech.cancel.clone(),
                pending: VecDeque::new(),
                spoken: Vec::new(),
                started: false,
                queued_until: 0.0,
                ends_s: None,
                anchor: speech.anchor,
                deadline: None,
            });
            self.status.send_modify(|s| {
                s.turn = speech.turn;
                s.spoken.clear();
            });
        }
        let p = self.playing.as_mut().expect("set above");
        let now_s = match &self.speaker {
            // A fast file run places audio where it would have played.
            Speaker::Recording { clock, .. } if !clock.realtime => p.anchor.stream_s(now),
            speaker => speaker.now_s(now, &p.anchor),
        };
        // A silent speaker takes every piece's words, though they have no sound.
        if !speech.samples.is_empty() || (matches!(self.speaker, Speaker::Silent) && !speech.text.is_empty()) {
            let (start_s, end_s) = self.speaker.queue(&speech.samples, speech.rate_hz, now_s);
            // The speaker ran dry between two sentences of one reply (a device counts
            // this in its callback).
            if p.started && start_s > p.queued_until + 0.001 && matches!(self.speaker, Speaker::Recording { .. }) {
                Counters::bump(&self.counters.playback_underruns);
            }
            if !p.started {
                p.started = true;
                let at = self.speaker.instant_of(start_s, now, &p.anchor);
                self.notes.send(Note::FirstAudio { turn: p.turn, at });
            }
            p.queued_until = end_s;
            if self.speaker.realtime() {
                p.deadline = Some(now + secs(end_s - now_s) + STALL_GRACE);
            }
            // A piece comes in slices; only its last carries the words, heard when it ends.
            if !speech.text.is_empty() {
                p.pending.push_back((end_s, speech.text));
            }
            self.status.send_modify(|s| s.speaking = true);
        }
        if speech.last {
            // A reply with no audio at all ends now.
            p.ends_s = Some(if p.started { p.queued_until } else { now_s });
            self.speaker.reply_complete();
        }
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// A position on a device's timeline, frames → seconds. Every position — where
/// audio starts and ends, where the device is — goes through this one conversion
/// of a whole frame count, so "the device has reached the end of a sentence" is an
/// exact comparison. (Adding the seconds of a sentence to the seconds of its start
/// can round a hair past the seconds of the frame the device stops at; the device's
/// timeline stops moving once the reply has played, so such a turn never ended.)
fn frames_to_s(frames: u64, rate_hz: u32) -> f64 {
    frames as f64 / rate_hz as f64
}

/// `frames` of audio queued behind `queued` frames: their start and end (seconds).
fn place(queued: u64, frames: usize, rate_hz: u32) -> (f64, f64) {
    (frames_to_s(queued, rate_hz), frames_to_s(queued + frames as u64, rate_hz))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The turn that never ended: at 22050 Hz about one sentence in eight queued
    /// behind earlier audio ended, in seconds, a hair after the frame the device
    /// stops at once it has played it.
    #[test]
    fn a_sentence_queued_anywhere_ends_exactly_where_the_device_stops_after_it() {
        let rate = 22_050;
        let mut rounded_past = 0;
        let mut x: u64 = 88_172_645_463_325_252;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (queued, frames) = (x % 100_000_000, (x >> 40) as usize % 200_000 + 1);
            let (start, end) = place(queued, frames, rate);
            let played_all = frames_to_s(queued + frames as u64, rate);
            assert!(end <= played_all, "a sentence of {frames} frames after {queued} ends at {end}, past the device's {played_all}");
            assert!(start <= end);
            // The sum the old code took, to show the test can tell.
            if start + frames as f64 / rate as f64 > played_all {
                rounded_past += 1;
            }
        }
        assert!(rounded_past > 100, "the cases the old sum got wrong are among those tried ({rounded_past})");
    }
}
