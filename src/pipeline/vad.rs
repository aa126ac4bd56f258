//! Voice activity and end-of-turn detection.
//!
//! Input: `Frame` (from capture), `Status` (watch, from playback: half-duplex) ·
//! Output: `Utterance` (to asr), `Voice` (watch, to agent) · Thread: dedicated
//! (`voxd-vad`; webrtc-vad's detector is not `Send`)
//!
//! Half-duplex (live devices, the default): while the assistant speaks, and for a
//! short tail after (the room's echo, the devices' buffers), the microphone is not
//! listened to, so the assistant never answers itself.
//!
//! webrtc-vad says whether each frame is voiced; the `Endpointer` turns that into
//! utterances: it keeps a pre-roll so first syllables survive, ignores sounds shorter
//! than `min_speech_ms`, ends a turn after `hangover_ms` of silence, cuts utterances at
//! `max_utterance_s`, and at a shorter pause hands asr a speculative copy so the
//! transcript — and the reply — are under way by the time the pause turns out to be
//! the end. When the user speaks on after such a guess, the utterance continues under
//! a new turn id: whatever was started from the guess belongs to a turn that never
//! happened, and nothing downstream can confuse the two. Earlier still, while the user
//! speaks, it hands asr a partial copy every `partial_every_ms` of speech: the LLM
//! reads the words so far ahead of the end (asr drops such a pass the moment a guess
//! or the end is queued behind it: `Backlog`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use webrtc_vad::{SampleRate, Vad, VadMode};

use super::capture::Frame;
use super::health::Pulse;
use super::telemetry::Notes;
use super::wake::{Gate, Heard, Lapse, Mode};
use super::{Anchor, Clock, Counters, Switches, TurnId, TurnIds};
use crate::config::VadConfig;

/// Speech to transcribe.
#[derive(Debug, Clone)]
pub struct Utterance {
    pub turn: TurnId,
    pub samples: Arc<Vec<f32>>,
    /// On the input's timeline, seconds: first sample kept (pre-roll included), and
    /// the end of the last voiced frame.
    pub start_s: f64,
    pub speech_end_s: f64,
    /// Sent at a pause, before the end of turn is certain; asr transcribes it and
    /// keeps the result for the final utterance if that turns out identical.
    pub speculative: bool,
    /// Taken while the user is still speaking (speculative too): only for reading
    /// the words so far ahead, never answered.
    pub partial: bool,
    /// Cut at `max_utterance_s` while the user was still speaking.
    pub capped: bool,
    /// Where and when the user stopped speaking (the same for a speculative cut and
    /// the final one when the pause holds).
    pub anchor: Anchor,
    /// When vad declared the end of the turn; None while speculative.
    pub endpoint_at: Option<Instant>,
    /// How the turn began: a wake word (its phrase is taken off the transcript),
    /// a follow-up, push-to-talk, or every utterance is a turn.
    pub started: super::wake::Started,
}

/// Whether the user is speaking now (for barge-in).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Voice {
    pub speaking: bool,
    pub turn: TurnId,
    pub since: Instant,
}

/// Guesses and ends of turns sent to asr and not yet taken up by it: while there are
/// any, a partial pass in progress is dropped (it would delay them).
#[derive(Debug, Clone, Default)]
pub struct Backlog(Arc<std::sync::atomic::AtomicUsize>);

impl Backlog {
    pub fn queued(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    pub fn taken(&self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// The counter itself, for an engine that polls it while it works.
    pub fn waiting(&self) -> &std::sync::atomic::AtomicUsize {
        &self.0
    }
}

/// What the endpointer saw in a frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Speech confirmed (`min_speech_ms` voiced): a turn begins.
    Started { turn: TurnId },
    /// Speech again after a pause that was speculated on: the utterance goes on
    /// under a new id, and the guess (the old id) is void.
    Resumed { turn: TurnId },
    Speculate(Cut),
    /// The speech so far, while it goes on.
    Partial(Cut),
    /// End of turn.
    Final(Cut),
    /// Speech that ended before it was confirmed (a click, a knock).
    Discarded,
}

/// An utterance as the endpointer cuts it (sample indices on the input timeline).
#[derive(Debug, Clone, PartialEq)]
pub struct Cut {
    pub turn: TurnId,
    pub samples: Vec<f32>,
    pub start_sample: u64,
    pub speech_end_sample: u64,
    /// Where the decision was taken (end of the current frame).
    pub decided_sample: u64,
    pub capped: bool,
    /// How the turn began (the gate stamps it; `Always` from the endpointer).
    pub started: super::wake::Started,
}

#[derive(Debug, Clone, Copy)]
pub struct EndpointParams {
    pub frame_len: usize,
    pub preroll: usize,
    pub min_speech: usize,
    pub hangover: usize,
    pub max_utterance: usize,
    /// 0: no speculation.
    pub speculate_after: usize,
    /// Speech between partial cuts (0: none).
    pub partial_every: usize,
    /// Silence kept after the last voiced frame (Whisper likes a little).
    pub tail: usize,
}

impl EndpointParams {
    pub fn from_config(c: &VadConfig) -> EndpointParams {
        let samples = |ms: u32| (ms as usize) * 16;
        let speculate_after = samples(c.speculate_after_ms);
        let tail = if speculate_after > 0 { samples(100).min(speculate_after) } else { samples(100) };
        EndpointParams {
            frame_len: samples(c.frame_ms),
            preroll: samples(c.preroll_ms),
            min_speech: samples(c.min_speech_ms),
            hangover: samples(c.hangover_ms),
            max_utterance: (c.max_utterance_s * 16_000.0) as usize,
            speculate_after,
            partial_every: samples(c.partial_every_ms),
            tail: tail.min(samples(c.hangover_ms)),
        }
    }
}

/// The end-of-turn state machine (pure: frames and voiced flags in, events out).
pub struct Endpointer {
    p: EndpointParams,
    /// Recent audio before speech (pre-roll), or the utterance being collected.
    buf: VecDeque<f32>,
    /// Sample index of `buf[0]`.
    buf_start: u64,
    in_speech: bool,
    voiced: usize,
    silence: usize,
    last_voiced_end: u64,
    confirmed: Option<TurnId>,
    speculated: bool,
    /// Length of `buf` at which the next partial cut is due.
    next_partial: usize,
    turn_ids: TurnIds,
}

impl Endpointer {
    pub fn new(p: EndpointParams, turn_ids: TurnIds) -> Endpointer {
        Endpointer {
            p,
            buf: VecDeque::new(),
            buf_start: 0,
            in_speech: false,
            voiced: 0,
            silence: 0,
            last_voiced_end: 0,
            confirmed: None,
            speculated: false,
            next_partial: 0,
            turn_ids,
        }
    }

    pub fn push(&mut self, frame: &[f32], start_sample: u64, voiced: bool) -> Vec<Event> {
        let mut events = Vec::new();
        let end = start_sample + frame.len() as u64;
        if self.buf.is_empty() {
            self.buf_start = start_sample;
        }
        self.buf.extend(frame);
        if !self.in_speech {
            if voiced {
                self.in_speech = true;
                self.voiced = 0;
                self.silence = 0;
                self.speculated = false;
                self.next_partial = self.buf.len() + self.p.partial_every;
            } else {
                // Idle: keep only the pre-roll.
                while self.buf.len() > self.p.preroll {
                    self.buf.pop_front();
                    self.buf_start += 1;
                }
                return events;
            }
        }
        if voiced {
            self.voiced += frame.len();
            self.silence = 0;
            self.last_voiced_end = end;
            if self.speculated {
                let turn = self.turn_ids.next();
                self.confirmed = Some(turn);
                events.push(Event::Resumed { turn });
            }
            self.speculated = false;
            if self.confirmed.is_none() && self.voiced >= self.p.min_speech {
                let turn = self.turn_ids.next();
                self.confirmed = Some(turn);
                events.push(Event::Started { turn });
            }
        } else {
            self.silence += frame.len();
        }
        let length = (end - self.buf_start) as usize;
        if self.silence >= self.p.hangover {
            events.push(self.close(end, false));
        } else if length >= self.p.max_utterance {
            events.push(self.close(end, true));
        } else if let Some(turn) = self.confirmed {
            if self.p.speculate_after > 0 && !self.speculated && self.silence >= self.p.speculate_after {
                self.speculated = true;
                events.push(Event::Speculate(self.cut(turn, end, false)));
            } else if self.p.partial_every > 0 && voiced && length >= self.next_partial {
                self.next_partial = length + self.p.partial_every;
                events.push(Event::Partial(self.cut(turn, end, false)));
            }
        }
        events
    }

    /// End of input (or push-to-talk let go): whatever speech is open ends here.
    pub fn finish(&mut self, end_sample: u64) -> Option<Event> {
        self.in_speech.then(|| self.close(end_sample, false))
    }

    fn cut(&self, turn: TurnId, decided: u64, capped: bool) -> Cut {
        let speech_end = if capped { decided } else { self.last_voiced_end };
        let keep_until = (speech_end + self.p.tail as u64).min(decided);
        let n = (keep_until - self.buf_start) as usize;
        Cut {
            turn,
            samples: self.buf.iter().take(n).copied().collect(),
            start_sample: self.buf_start,
            speech_end_sample: speech_end,
            decided_sample: decided,
            capped,
            started: super::wake::Started::Always,
        }
    }

    fn close(&mut self, decided: u64, capped: bool) -> Event {
        let event = match self.confirmed.take() {
            Some(turn) => Event::Final(self.cut(turn, decided, capped)),
            None => Event::Discarded,
        };
        self.in_speech = false;
        self.buf.clear();
        self.buf_start = decided;
        event
    }
}

/// Half-duplex: what the speaker is doing, and how long to stay deaf after it stops.
pub struct Deafen {
    pub speaker: watch::Receiver<super::playback::Status>,
    pub tail: std::time::Duration,
}

/// Which speech is a turn: the gate, the wake stage (wake-word mode), and the
/// speaker's status (an answer that ends opens the follow-up window).
pub struct Listening {
    pub gate: Gate,
    /// vad → wake: a copy of each frame (`VAD_TO_WAKE`), and what it heard.
    pub wake: Option<(mpsc::Sender<Frame>, Heard)>,
    pub answers: watch::Receiver<super::playback::Status>,
    /// To playback (the earcon): where the newest wake word was heard.
    pub woke: watch::Sender<u64>,
}

/// webrtc-vad at 16 kHz with `[vad] aggressiveness` (0-3).
pub fn detector(config: &VadConfig) -> Vad {
    let mode = match config.aggressiveness {
        0 => VadMode::Quality,
        1 => VadMode::LowBitrate,
        2 => VadMode::Aggressive,
        _ => VadMode::VeryAggressive,
    };
    Vad::new_with_rate_and_mode(SampleRate::Rate16kHz, mode)
}

/// Runs webrtc-vad and the endpointer over frames until capture ends.
#[allow(clippy::too_many_arguments)]
pub fn run(
    config: VadConfig,
    clock: Clock,
    deafen: Option<Deafen>,
    mut listening: Listening,
    switches: Arc<Switches>,
    turn_ids: TurnIds,
    mut frames: mpsc::Receiver<Frame>,
    utterances: mpsc::Sender<Utterance>,
    backlog: Backlog,
    voice: watch::Sender<Voice>,
    counters: Arc<Counters>,
    notes: Notes,
    pulse: Pulse,
) -> anyhow::Result<()> {
    let mut vad = detector(&config);
    let mut params = EndpointParams::from_config(&config);
    if !clock.realtime {
        // A recording played as fast as possible: nothing is early there to read ahead.
        params.partial_every = 0;
    }
    let mut endpointer = Endpointer::new(params, turn_ids);
    let mut pcm = [0i16; super::capture::MAX_FRAME];
    let mut end_sample = 0;
    let emit = |event: Event, now: Instant| -> anyhow::Result<()> {
        match event {
            Event::Started { turn } => {
                voice.send_replace(Voice { speaking: true, turn, since: now });
            }
            // The same speech goes on: `since` stays when it began (barge-in timing).
            Event::Resumed { turn } => voice.send_modify(|v| {
                v.speaking = true;
                v.turn = turn;
            }),
            // (Speech let through for its wake word, which was all it held.)
            Event::Discarded => {
                voice.send_if_modified(|v| std::mem::replace(&mut v.speaking, false));
            }
            Event::Speculate(cut) | Event::Final(cut) if cut.samples.is_empty() => {
                tracing::debug!(turn = cut.turn, "empty utterance ignored");
            }
            // Only a head start: never waited for, dropped when asr is busy.
            Event::Partial(cut) => {
                let mut u = to_utterance(cut, None, &clock, now);
                u.partial = true;
                let _ = utterances.try_send(u);
            }
            Event::Speculate(cut) => send(&utterances, to_utterance(cut, None, &clock, now), &clock, &counters, &notes, &backlog),
            Event::Final(cut) => {
                voice.send_modify(|v| v.speaking = false);
                send(&utterances, to_utterance(cut, Some(now), &clock, now), &clock, &counters, &notes, &backlog);
            }
        }
        Ok(())
    };
    let mut deaf_until: Option<Instant> = None;
    let mut held = false;
    let mut answered = listening.answers.borrow().done_turn;
    while let Some(frame) = frames.blocking_recv() {
        pulse.busy(0);
        if let Some((wake, _)) = &listening.wake {
            // Live, the wake stage must not hold capture up: a frame it has no room
            // for is dropped and counted. A recording played as fast as possible waits.
            let handed = if clock.realtime { wake.try_send(frame).is_ok() } else { wake.blocking_send(frame).is_ok() };
            if !handed {
                Counters::bump(&counters.wake_drops);
            }
        }
        let audio = frame.audio();
        for (dst, src) in pcm.iter_mut().zip(audio) {
            *dst = (src.clamp(-1.0, 1.0) * i16::MAX as f32) as i16;
        }
        let voiced = vad.is_voice_segment(&pcm[..audio.len()]).map_err(|()| anyhow::anyhow!("webrtc-vad rejected a {}-sample frame", audio.len()))?;
        end_sample = frame.start_sample + audio.len() as u64;
        let now = Instant::now();
        let deaf = match &deafen {
            Some(d) => {
                if d.speaker.borrow().speaking {
                    deaf_until = Some(now + d.tail);
                }
                deaf_until.is_some_and(|until| now < until)
            }
            None => false,
        };
        let voiced = voiced && !deaf;
        // Push-to-talk overrides muting, deafness and the detector: the user says
        // when they speak. Letting go ends the turn now.
        let (was_held, muted) = (held, switches.muted());
        held = switches.push_to_talk();
        let gate = &mut listening.gate;
        if was_held && !held {
            for event in endpointer.finish(frame.start_sample).map(|e| gate.pass(e, true)).unwrap_or_default() {
                emit(event, now)?;
            }
        }
        // An answer that ended opens the follow-up window.
        let done = listening.answers.borrow().done_turn;
        if done > answered {
            answered = done;
            gate.answered(end_sample);
        }
        // Wake words heard (not the assistant's own voice, not while muted).
        if let Some((_, heard)) = &listening.wake {
            for detection in heard.take((!clock.realtime).then_some(end_sample)) {
                if deaf || muted {
                    tracing::debug!(word = detection.word, "wake word while not listening: ignored");
                    continue;
                }
                listening.woke.send_replace(detection.at_sample.max(1));
                for event in gate.woke(&detection) {
                    emit(event, now)?;
                }
            }
        }
        if let Some(Lapse::Unanswered { word }) = gate.tick(end_sample) {
            Counters::bump(&counters.wakes_unanswered);
            tracing::info!("woke by {word}, but no request followed");
        }
        let voiced = match gate.mode() {
            Mode::PushToTalk => held,
            _ => held || (voiced && !muted),
        };
        for event in endpointer.push(audio, frame.start_sample, voiced) {
            for event in gate.pass(event, held) {
                emit(event, now)?;
            }
        }
        pulse.idle();
    }
    for event in endpointer.finish(end_sample).map(|e| listening.gate.pass(e, held)).unwrap_or_default() {
        emit(event, Instant::now())?;
    }
    Ok(())
}

/// A cut as asr gets it; `endpoint_at` is None for a speculative cut.
fn to_utterance(cut: Cut, endpoint_at: Option<Instant>, clock: &Clock, now: Instant) -> Utterance {
    let rate = crate::audio::ASR_RATE_HZ as f64;
    let speech_end_s = cut.speech_end_sample as f64 / rate;
    let late_s = (cut.decided_sample - cut.speech_end_sample) as f64 / rate;
    Utterance {
        turn: cut.turn,
        samples: Arc::new(cut.samples),
        start_s: cut.start_sample as f64 / rate,
        speech_end_s,
        speculative: endpoint_at.is_none(),
        partial: false,
        capped: cut.capped,
        anchor: Anchor { speech_end_s, speech_end_at: clock.arrival(speech_end_s, late_s, now) },
        endpoint_at,
        started: cut.started,
    }
}

/// Live, vad must keep draining capture: when asr is behind, the utterance is dropped
/// and counted rather than waited for. A file played as fast as possible has nothing
/// live to protect, so there vad waits. Until asr takes it, the utterance is in the
/// backlog that stops a draft.
fn send(tx: &mpsc::Sender<Utterance>, u: Utterance, clock: &Clock, counters: &Counters, notes: &Notes, backlog: &Backlog) {
    let turn = u.turn;
    backlog.queued();
    let sent = if clock.realtime { tx.try_send(u).is_ok() } else { tx.blocking_send(u).is_ok() };
    if !sent {
        backlog.taken();
        Counters::bump(&counters.vad_drops);
        tracing::warn!(turn, "asr is behind: utterance dropped");
        notes.dropped(turn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: usize = 320; // 20 ms

    fn params() -> EndpointParams {
        EndpointParams { frame_len: F, preroll: 300 * 16, min_speech: 200 * 16, hangover: 300 * 16, max_utterance: 16_000 * 5, speculate_after: 120 * 16, partial_every: 0, tail: 100 * 16 }
    }

    /// Feeds a voiced/unvoiced pattern (one char per 20 ms frame: 'x' voiced, '.' silent).
    fn feed(e: &mut Endpointer, pattern: &str, from_frame: usize) -> Vec<(usize, Event)> {
        let frame = [0.1f32; F];
        pattern
            .chars()
            .enumerate()
            .flat_map(|(i, c)| {
                let n = from_frame + i;
                e.push(&frame, (n * F) as u64, c == 'x').into_iter().map(move |ev| (n, ev))
            })
            .collect()
    }

    #[test]
    fn a_turn_ends_one_hangover_after_the_last_voiced_frame() {
        let mut e = Endpointer::new(params(), TurnIds::starting_at(7));
        // 1 s silence, 1 s speech, 0.5 s silence.
        let pattern = format!("{}{}{}", ".".repeat(50), "x".repeat(50), ".".repeat(25));
        let events = feed(&mut e, &pattern, 0);
        let kinds: Vec<_> = events.iter().map(|(n, ev)| (*n, std::mem::discriminant(ev))).collect();
        assert_eq!(kinds.len(), 3, "{events:?}");
        assert!(matches!(events[0], (59, Event::Started { turn: 7 })), "confirmed after 200 ms of speech");
        let (n, Event::Speculate(spec)) = &events[1] else { panic!("{events:?}") };
        assert_eq!(*n, 105, "speculation after a 120 ms pause");
        let (n, Event::Final(fin)) = &events[2] else { panic!("{events:?}") };
        assert_eq!(*n, 114, "final after 300 ms of silence");
        assert_eq!(fin.speech_end_sample, 100 * F as u64, "speech ends with the last voiced frame");
        assert_eq!(fin.start_sample, (50 * F - 300 * 16) as u64, "300 ms of pre-roll kept");
        assert_eq!(fin.samples.len(), 300 * 16 + 50 * F + 100 * 16, "pre-roll + speech + 100 ms tail");
        assert_eq!(spec.samples, fin.samples, "the speculative cut is the final one when the pause holds");
        assert_eq!(fin.turn, 7);
    }

    #[test]
    fn while_speech_goes_on_a_partial_cut_comes_every_partial_every_of_it() {
        let mut e = Endpointer::new(EndpointParams { partial_every: 700 * 16, ..params() }, TurnIds::starting_at(7));
        // 1 s silence, 2 s speech, 0.5 s silence.
        let events = feed(&mut e, &format!("{}{}{}", ".".repeat(50), "x".repeat(100), ".".repeat(25)), 0);
        let partials: Vec<_> = events.iter().filter_map(|(n, ev)| if let Event::Partial(c) = ev { Some((*n, c)) } else { None }).collect();
        let at: Vec<usize> = partials.iter().map(|(n, _)| *n).collect();
        assert_eq!(at, vec![85, 120], "700 ms of speech apart, the first 700 ms after it began (pre-roll aside), none in the pause");
        let Some((_, Event::Final(fin))) = events.last() else { panic!("{events:?}") };
        for (_, p) in &partials {
            assert_eq!(p.turn, 7);
            assert!(fin.samples.starts_with(&p.samples), "a partial cut is the start of the utterance");
        }
        let mut quiet = Endpointer::new(params(), TurnIds::starting_at(1));
        let events = feed(&mut quiet, &format!("{}{}", "x".repeat(100), ".".repeat(25)), 0);
        assert!(!events.iter().any(|(_, ev)| matches!(ev, Event::Partial(_))), "0: none");
    }

    #[test]
    fn speech_resuming_after_a_short_pause_continues_the_utterance_under_a_new_id() {
        let mut e = Endpointer::new(params(), TurnIds::starting_at(1));
        let events = feed(&mut e, &format!("{}{}{}{}", "x".repeat(20), ".".repeat(10), "x".repeat(20), ".".repeat(20)), 0);
        let finals: Vec<_> = events.iter().filter_map(|(_, ev)| if let Event::Final(c) = ev { Some(c) } else { None }).collect();
        assert_eq!(finals.len(), 1);
        assert_eq!(finals[0].speech_end_sample, 50 * F as u64);
        assert_eq!(finals[0].start_sample, 0, "one utterance: the pause did not split it");
        let speculations: Vec<_> = events.iter().filter_map(|(_, ev)| if let Event::Speculate(c) = ev { Some(c.turn) } else { None }).collect();
        assert_eq!(speculations, vec![1, 2], "one per pause");
        assert!(events.iter().any(|(n, ev)| *n == 30 && *ev == Event::Resumed { turn: 2 }), "the first guess is void once speech resumes: {events:?}");
        assert_eq!(finals[0].turn, 2, "the final carries the id of the guess it confirms");
    }

    #[test]
    fn a_pause_shorter_than_the_speculation_keeps_the_id() {
        let mut e = Endpointer::new(params(), TurnIds::starting_at(1));
        let events = feed(&mut e, &format!("{}{}{}{}", "x".repeat(20), ".".repeat(4), "x".repeat(20), ".".repeat(20)), 0);
        assert!(!events.iter().any(|(_, ev)| matches!(ev, Event::Resumed { .. })), "{events:?}");
        let finals: Vec<_> = events.iter().filter_map(|(_, ev)| if let Event::Final(c) = ev { Some(c.turn) } else { None }).collect();
        assert_eq!(finals, vec![1]);
    }

    #[test]
    fn clicks_and_silence_make_no_turn() {
        let mut e = Endpointer::new(params(), TurnIds::starting_at(1));
        let events = feed(&mut e, &format!("{}{}{}", ".".repeat(100), "xxx", ".".repeat(30)), 0);
        assert_eq!(events.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(), vec![Event::Discarded]);
        assert!(e.finish(133 * F as u64).is_none());
    }

    #[test]
    fn long_speech_is_cut_at_the_maximum() {
        let mut e = Endpointer::new(params(), TurnIds::starting_at(1));
        let events = feed(&mut e, &"x".repeat(300), 0);
        let finals: Vec<_> = events.iter().filter_map(|(_, ev)| if let Event::Final(c) = ev { Some(c) } else { None }).collect();
        assert_eq!(finals.len(), 1, "6 s of speech with a 5 s cap: cut once, the rest is a new turn");
        assert!(finals[0].capped);
        assert_eq!(finals[0].samples.len(), 16_000 * 5);
        assert_eq!(e.finish(300 * F as u64).map(|ev| matches!(ev, Event::Final(_))), Some(true), "input ending mid-speech ends the turn");
    }
}
