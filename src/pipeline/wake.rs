//! The wake word, and which speech voxd answers.
//!
//! Input: `Frame` (a copy of each, from vad) · Output: `Detection`s and how far it
//! has listened (`Heard`, read by vad) · Thread: dedicated (`voxd-wake`)
//!
//! The stage runs openWakeWord's models (`engine::wake`) on every 80 ms of audio and
//! reports a wake word when its score holds at or above its threshold for its
//! trigger level, then ignores that word for the refractory period. It never holds
//! capture up: vad hands it frames through a bounded edge (`VAD_TO_WAKE`) and drops
//! them, counted, when it is behind.
//!
//! vad decides with the `Gate` whether an utterance is addressed to voxd. Speech is
//! always endpointed (so the words said in one breath with the wake word are kept from
//! their first syllable), but a turn is only let through when the utterance holds a
//! wake word, begins while voxd listens after one said on its own (`listen_s`) or
//! within `follow_up_s` of an answer, or push-to-talk is held. The wake phrase is
//! then taken off the transcript (`strip_phrase`).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::capture::Frame;
use super::health::Pulse;
use super::vad::{Cut, Event};
use super::{Counters, TurnId};
use crate::config::WakeConfig;
use crate::engine::wake::Detector;

/// The loaded detector and the names of its wake words (in its order).
pub struct WakeWords {
    pub detector: Detector,
    pub words: Vec<String>,
}

/// Which speech is answered (`[wake] mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Always,
    WakeWord,
    PushToTalk,
}

impl Mode {
    /// The configured mode; unset, a wake word on a live microphone and every
    /// utterance of a recording.
    pub fn of(config: &WakeConfig, live: bool) -> Mode {
        match config.mode.as_str() {
            "always" => Mode::Always,
            "push_to_talk" => Mode::PushToTalk,
            "wake_word" => Mode::WakeWord,
            _ if live => Mode::WakeWord,
            _ => Mode::Always,
        }
    }
}

/// How a turn began, as the latency log's `wake` field records it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Started {
    /// `mode = "always"`: every utterance is a turn.
    #[default]
    Always,
    /// A wake word (its id) with the score that woke voxd.
    Wake { word: String, score: f32 },
    /// Within `follow_up_s` of an answer.
    FollowUp,
    PushToTalk,
    /// Through the control socket.
    Typed,
}

impl Started {
    /// The log's name for it: the wake word's id, or how else the turn began.
    pub fn name(&self) -> &str {
        match self {
            Started::Always => "always",
            Started::Wake { word, .. } => word,
            Started::FollowUp => "follow_up",
            Started::PushToTalk => "push_to_talk",
            Started::Typed => "typed",
        }
    }

    pub fn score(&self) -> Option<f32> {
        match self {
            Started::Wake { score, .. } => Some(*score),
            _ => None,
        }
    }
}

/// A wake word heard.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub word: String,
    pub score: f32,
    /// Where on the input's timeline the step that woke ended.
    pub at_sample: u64,
}

/// One wake word's rule: `steps` scores in a row at or above `threshold`, then quiet
/// for `refractory` samples.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub threshold: f32,
    pub steps: u32,
    pub refractory: u64,
    run: u32,
    quiet_until: u64,
}

impl Trigger {
    pub fn new(threshold: f32, steps: u32, refractory_ms: u32) -> Trigger {
        Trigger { threshold, steps: steps.max(1), refractory: refractory_ms as u64 * 16, run: 0, quiet_until: 0 }
    }

    /// The rule for `word` under `config` (its own threshold and trigger level where given).
    pub fn for_word(config: &WakeConfig, word: &str) -> Trigger {
        let threshold = config.word_threshold.get(word).copied().unwrap_or(config.threshold);
        let steps = config.word_trigger_steps.get(word).copied().unwrap_or(config.trigger_steps);
        Trigger::new(threshold, steps, config.refractory_ms)
    }

    /// Takes one step's score (the step ending at `at_sample`): true when it wakes.
    pub fn step(&mut self, score: f32, at_sample: u64) -> bool {
        if at_sample < self.quiet_until {
            self.run = 0;
            return false;
        }
        self.run = if score >= self.threshold { self.run + 1 } else { 0 };
        if self.run < self.steps {
            return false;
        }
        self.run = 0;
        self.quiet_until = at_sample + self.refractory;
        true
    }
}

/// wake → vad: the detections not yet taken, and how far the detector has listened.
/// (Not a queue vad could block on: vad must keep draining capture.)
#[derive(Clone, Default)]
pub struct Heard(Arc<(Mutex<Inbox>, Condvar)>);

#[derive(Default)]
struct Inbox {
    through_sample: u64,
    detections: VecDeque<Detection>,
    closed: bool,
}

/// Detections kept for vad at most; wake words come seconds apart (refractory).
const INBOX: usize = 16;

impl Heard {
    fn with<R>(&self, f: impl FnOnce(&mut Inbox) -> R) -> R {
        let r = f(&mut self.0 .0.lock().unwrap_or_else(|e| e.into_inner()));
        self.0 .1.notify_all();
        r
    }

    fn detected(&self, d: Detection) {
        self.with(|inbox| {
            if inbox.detections.len() == INBOX {
                inbox.detections.pop_front();
            }
            inbox.detections.push_back(d);
        });
    }

    fn listened_through(&self, sample: u64) {
        self.with(|inbox| inbox.through_sample = sample);
    }

    fn close(&self) {
        self.with(|inbox| inbox.closed = true);
    }

    /// The detections so far. With `until`, first waits until the detector has
    /// listened up to that sample or stopped (a recording played as fast as
    /// possible: vad would otherwise run ahead of it and decide without it).
    pub fn take(&self, until: Option<u64>) -> Vec<Detection> {
        let (lock, changed) = &*self.0;
        let mut inbox = lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(until) = until {
            while inbox.through_sample < until && !inbox.closed {
                inbox = changed.wait(inbox).unwrap_or_else(|e| e.into_inner());
            }
        }
        inbox.detections.drain(..).collect()
    }
}

/// Closes `Heard` however the stage ends, so vad never waits on a stage that is gone.
struct CloseOnDrop(Heard);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Runs the detector over the frames vad hands on until they end.
pub fn run(mut detector: Detector, mut words: Vec<(String, Trigger)>, mut frames: mpsc::Receiver<Frame>, heard: Heard, counters: Arc<Counters>, pulse: Pulse) -> anyhow::Result<()> {
    let heard = CloseOnDrop(heard);
    let mut fed = 0u64;
    while let Some(frame) = frames.blocking_recv() {
        pulse.busy(0);
        let audio = frame.audio();
        for step in detector.push(audio)? {
            // The step ended inside this frame: place it on the input's timeline
            // (frames vad dropped for us shift the detector's own count).
            let at_sample = frame.start_sample + (step.end_sample - fed);
            for ((word, trigger), score) in words.iter_mut().zip(&step.scores) {
                if trigger.step(*score, at_sample) {
                    Counters::bump(&counters.wakes);
                    tracing::info!(score = format!("{score:.2}"), at_s = format!("{:.2}", at_sample as f64 / 16_000.0), "wake word: {word}");
                    heard.0.detected(Detection { word: word.clone(), score: *score, at_sample });
                }
            }
        }
        fed += audio.len() as u64;
        heard.0.listened_through(frame.start_sample + audio.len() as u64);
        pulse.idle();
    }
    Ok(())
}

/// Audio kept before a wake word's detection: the phrase itself (openWakeWord's
/// classifiers see the last 1.28 s) and a little more. Speech before that (the
/// television, another conversation) is not the request.
const LEAD: u64 = 16_000 * 8 / 5;

/// The utterance under way, as the gate sees it.
#[derive(Debug, Clone, PartialEq)]
enum Current {
    /// No speech confirmed.
    Idle,
    /// Speech not addressed to voxd (yet): its `Started` is held back.
    Held { turn: TurnId },
    /// A turn: how it began, and where the wake word was heard in it.
    Addressed { by: Started, wake_at: Option<u64> },
}

/// vad's gate: which of the endpointer's events become turns (pure: events,
/// detections and answers in; events out).
#[derive(Debug)]
pub struct Gate {
    mode: Mode,
    listen: u64,
    follow_up: u64,
    min_speech: u64,
    /// Speech that is confirmed before this sample is addressed: (until, how, where
    /// the wake word was).
    window: Option<(u64, Started, Option<u64>)>,
    current: Current,
}

/// What the gate saw happen to a wake, for the counters.
#[derive(Debug, Clone, PartialEq)]
pub enum Lapse {
    /// A wake word, and then no request before `listen_s` ran out.
    Unanswered { word: String },
}

impl Gate {
    pub fn new(mode: Mode, config: &WakeConfig, min_speech_ms: u32) -> Gate {
        let samples = |s: f32| (s * 16_000.0) as u64;
        Gate { mode, listen: samples(config.listen_s), follow_up: samples(config.follow_up_s), min_speech: min_speech_ms as u64 * 16, window: None, current: Current::Idle }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Passes an endpointer event on, holds it back, or turns it into another.
    /// `push_to_talk`: the button is held (what is heard is addressed).
    pub fn pass(&mut self, event: Event, push_to_talk: bool) -> Vec<Event> {
        // Push-to-talk pressed while speech not addressed to voxd goes on: it is now.
        if let (true, Current::Held { turn }) = (push_to_talk, &self.current) {
            let turn = *turn;
            self.current = Current::Addressed { by: Started::PushToTalk, wake_at: None };
            let mut events = vec![Event::Started { turn }];
            events.extend(self.pass(event, true));
            return events;
        }
        match event {
            // (A window that ran out was closed by `tick` before this frame.)
            Event::Started { turn } => self.begin(turn, push_to_talk),
            Event::Resumed { turn } => match &mut self.current {
                Current::Held { turn: held } => {
                    *held = turn;
                    Vec::new()
                }
                _ => vec![Event::Resumed { turn }],
            },
            Event::Speculate(cut) => self.addressed(&cut).map(|cut| vec![Event::Speculate(cut)]).unwrap_or_default(),
            Event::Partial(cut) => self.addressed(&cut).map(|cut| vec![Event::Partial(cut)]).unwrap_or_default(),
            Event::Final(cut) => {
                let current = std::mem::replace(&mut self.current, Current::Idle);
                match current {
                    Current::Addressed { by: by @ Started::Wake { .. }, wake_at: Some(at) } if !self.request_after(&cut, at) => {
                        // The wake word on its own: listen for the request.
                        self.window = Some((cut.decided_sample + self.listen, by, Some(at)));
                        vec![Event::Discarded]
                    }
                    Current::Addressed { by, wake_at } => vec![Event::Final(stamp(cut, by, wake_at))],
                    Current::Held { .. } | Current::Idle => {
                        tracing::debug!(turn = cut.turn, "speech not addressed to voxd: ignored");
                        Vec::new()
                    }
                }
            }
            Event::Discarded => {
                self.current = Current::Idle;
                vec![Event::Discarded]
            }
        }
    }

    fn begin(&mut self, turn: TurnId, push_to_talk: bool) -> Vec<Event> {
        let by = match self.mode {
            _ if push_to_talk => Some((Started::PushToTalk, None)),
            Mode::Always => Some((Started::Always, None)),
            Mode::PushToTalk => None,
            Mode::WakeWord => self.window.take().map(|(_, by, at)| (by, at)),
        };
        match by {
            Some((by, wake_at)) => {
                self.current = Current::Addressed { by, wake_at };
                vec![Event::Started { turn }]
            }
            None => {
                self.current = Current::Held { turn };
                Vec::new()
            }
        }
    }

    /// A wake word was heard: the speech under way is addressed (its `Started`, held
    /// back until now, goes out), or the next that begins within `listen_s` is.
    pub fn woke(&mut self, d: &Detection) -> Vec<Event> {
        if self.mode != Mode::WakeWord {
            return Vec::new();
        }
        let by = Started::Wake { word: d.word.clone(), score: d.score };
        match &self.current {
            Current::Held { turn } => {
                let turn = *turn;
                self.current = Current::Addressed { by, wake_at: Some(d.at_sample) };
                vec![Event::Started { turn }]
            }
            Current::Addressed { .. } => Vec::new(),
            Current::Idle => {
                self.window = Some((d.at_sample + self.listen, by, Some(d.at_sample)));
                Vec::new()
            }
        }
    }

    /// An answer finished playing at `sample`: the user may follow up without the
    /// wake word.
    pub fn answered(&mut self, sample: u64) {
        if self.mode == Mode::WakeWord && self.follow_up > 0 && self.window.is_none() {
            self.window = Some((sample + self.follow_up, Started::FollowUp, None));
        }
    }

    /// The input reached `sample`: a window that ran out closes.
    pub fn tick(&mut self, sample: u64) -> Option<Lapse> {
        let (until, by, _) = self.window.as_ref()?;
        if sample <= *until {
            return None;
        }
        let lapse = match by {
            Started::Wake { word, .. } => Some(Lapse::Unanswered { word: word.clone() }),
            _ => None,
        };
        self.window = None;
        lapse
    }

    /// The cut as a turn gets it; None while it is not a turn or holds nothing but
    /// the wake word so far.
    fn addressed(&self, cut: &Cut) -> Option<Cut> {
        match &self.current {
            Current::Addressed { wake_at: Some(at), .. } if !self.request_after(cut, *at) => None,
            Current::Addressed { by, wake_at } => Some(stamp(cut.clone(), by.clone(), *wake_at)),
            _ => None,
        }
    }

    /// Speech went on after the wake word for long enough to be a request.
    fn request_after(&self, cut: &Cut, wake_at: u64) -> bool {
        cut.speech_end_sample >= wake_at + self.min_speech
    }
}

/// The utterance as a turn: how it began, without the speech well before its wake word.
fn stamp(mut cut: Cut, by: Started, wake_at: Option<u64>) -> Cut {
    cut.started = by;
    if let Some(from) = wake_at.and_then(|at| at.checked_sub(LEAD)).filter(|from| *from > cut.start_sample) {
        let n = ((from - cut.start_sample) as usize).min(cut.samples.len());
        cut.samples.drain(..n);
        cut.start_sample += n as u64;
    }
    cut
}

/// The words of a wake word's id: "hey_jarvis_v0.1" → ["hey", "jarvis"].
pub fn phrase_words(word: &str) -> Vec<String> {
    let name = std::path::Path::new(word).file_stem().and_then(|s| s.to_str()).unwrap_or(word);
    let name = name.split("_v").next().unwrap_or(name);
    name.split(['_', '-', ' ']).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

/// `text` without the wake phrase Whisper heard at its start ("Hey Jarvis, turn off
/// the light." → "Turn off the light."). Whisper spells names its own way ("Hey,
/// Jervis"), so a word counts as the phrase's when it is close to one of its words.
pub fn strip_phrase(text: &str, word: &str) -> String {
    let phrase = phrase_words(word);
    if phrase.is_empty() {
        return text.to_string();
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    let bare = |w: &str| w.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase();
    // The phrase's words may be heard in order, some missed; at most one more word.
    let mut taken = 0;
    for w in words.iter().take(phrase.len() + 1) {
        let w = bare(w);
        if w.is_empty() || phrase.iter().any(|p| close(&w, p)) {
            taken += 1;
        } else {
            break;
        }
    }
    // Nothing of the last phrase word heard: not the phrase (a request that starts "Hey…").
    if taken == 0 || !words[..taken].iter().any(|w| close(&bare(w), phrase.last().expect("not empty"))) {
        return text.to_string();
    }
    let rest = words[taken..].join(" ");
    let mut chars = rest.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Within a third of the longer word's letters of each other (edit distance).
fn close(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (prev + usize::from(ca != cb)).min(row[j] + 1).min(row[j + 1] + 1);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()] * 3 <= a.len().max(b.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 16_000;

    fn config() -> WakeConfig {
        WakeConfig { listen_s: 4.0, follow_up_s: 5.0, ..WakeConfig::default() }
    }

    fn cut(turn: TurnId, start_s: f64, speech_end_s: f64) -> Cut {
        let (start, end) = ((start_s * S as f64) as u64, (speech_end_s * S as f64) as u64);
        Cut { turn, samples: vec![0.1; (end - start) as usize], start_sample: start, speech_end_sample: end, decided_sample: end + S * 3 / 10, capped: false, started: Started::Always }
    }

    fn jarvis(at_s: f64) -> Detection {
        Detection { word: "hey_jarvis_v0.1".into(), score: 0.9, at_sample: (at_s * S as f64) as u64 }
    }

    fn finals(events: &[Event]) -> Vec<&Cut> {
        events.iter().filter_map(|e| if let Event::Final(c) = e { Some(c) } else { None }).collect()
    }

    #[test]
    fn without_a_wake_word_speech_is_no_turn_and_with_one_it_is_from_its_first_syllable() {
        let mut gate = Gate::new(Mode::WakeWord, &config(), 200);
        assert!(gate.pass(Event::Started { turn: 1 }, false).is_empty(), "held back");
        assert!(gate.pass(Event::Speculate(cut(1, 1.0, 3.0)), false).is_empty());
        assert!(gate.pass(Event::Final(cut(1, 1.0, 3.0)), false).is_empty(), "not addressed: nothing");
        assert_eq!(gate.tick(10 * S), None);

        // "Hey Jarvis, turn off the light" in one breath: heard 0.8 s in.
        assert!(gate.pass(Event::Started { turn: 2 }, false).is_empty());
        assert_eq!(gate.woke(&jarvis(5.8)), vec![Event::Started { turn: 2 }], "the held start goes out at the wake");
        let events = gate.pass(Event::Final(cut(2, 5.0, 7.4)), false);
        let f = finals(&events)[0];
        assert_eq!(f.start_sample, 5 * S, "the audio from the utterance's start (the wake phrase is stripped from the words)");
        assert_eq!(f.started, Started::Wake { word: "hey_jarvis_v0.1".into(), score: 0.9 });
        // The next utterance needs the wake word again (no answer has been played).
        assert!(gate.pass(Event::Started { turn: 3 }, false).is_empty());
    }

    #[test]
    fn speech_long_before_the_wake_word_is_left_out() {
        let mut gate = Gate::new(Mode::WakeWord, &config(), 200);
        gate.pass(Event::Started { turn: 1 }, false);
        gate.woke(&jarvis(10.0));
        let events = gate.pass(Event::Final(cut(1, 2.0, 12.0)), false);
        assert_eq!(finals(&events)[0].start_sample, 10 * S - LEAD, "the television before it is not the request");
        assert_eq!(finals(&events)[0].samples.len() as u64, 12 * S - (10 * S - LEAD));
    }

    #[test]
    fn a_wake_word_on_its_own_listens_for_the_request_until_listen_s_runs_out() {
        let mut gate = Gate::new(Mode::WakeWord, &config(), 200);
        gate.pass(Event::Started { turn: 1 }, false);
        assert_eq!(gate.woke(&jarvis(1.9)), vec![Event::Started { turn: 1 }]);
        assert!(gate.pass(Event::Speculate(cut(1, 1.0, 2.0)), false).is_empty(), "only the wake word so far: no guess");
        assert_eq!(gate.pass(Event::Final(cut(1, 1.0, 2.0)), false), vec![Event::Discarded], "the wake word alone is no turn");
        // The request, after a pause, without the wake word.
        assert_eq!(gate.tick(4 * S), None);
        assert_eq!(gate.pass(Event::Started { turn: 2 }, false), vec![Event::Started { turn: 2 }]);
        let events = gate.pass(Event::Final(cut(2, 4.0, 5.5)), false);
        assert!(matches!(finals(&events)[0].started, Started::Wake { .. }), "begun by the wake word");
        // Woken, then nothing: the window closes and says so.
        gate.woke(&jarvis(20.0));
        assert_eq!(gate.tick(23 * S), None);
        assert_eq!(gate.tick(24 * S + 1), Some(Lapse::Unanswered { word: "hey_jarvis_v0.1".into() }));
        assert!(gate.pass(Event::Started { turn: 3 }, false).is_empty());
    }

    #[test]
    fn after_an_answer_the_user_may_follow_up_without_the_wake_word() {
        let mut gate = Gate::new(Mode::WakeWord, &config(), 200);
        gate.answered(10 * S);
        assert_eq!(gate.tick(14 * S), None);
        assert_eq!(gate.pass(Event::Started { turn: 1 }, false), vec![Event::Started { turn: 1 }]);
        assert_eq!(finals(&gate.pass(Event::Final(cut(1, 14.0, 16.0)), false))[0].started, Started::FollowUp);
        // The window is used up by one turn; another answer opens the next.
        gate.answered(20 * S);
        assert_eq!(gate.tick(25 * S + 1), None, "an unused follow-up is no false wake");
        assert!(gate.pass(Event::Started { turn: 2 }, false).is_empty());
        // follow_up_s = 0: always the wake word.
        let mut strict = Gate::new(Mode::WakeWord, &WakeConfig { follow_up_s: 0.0, ..config() }, 200);
        strict.answered(0);
        assert!(strict.pass(Event::Started { turn: 1 }, false).is_empty());
    }

    #[test]
    fn the_other_modes() {
        let mut always = Gate::new(Mode::Always, &config(), 200);
        assert_eq!(always.pass(Event::Started { turn: 1 }, false), vec![Event::Started { turn: 1 }]);
        assert!(always.woke(&jarvis(1.0)).is_empty());
        assert_eq!(finals(&always.pass(Event::Final(cut(1, 0.0, 2.0)), false))[0].started, Started::Always);
        let mut ptt = Gate::new(Mode::PushToTalk, &config(), 200);
        assert!(ptt.pass(Event::Started { turn: 1 }, false).is_empty(), "speech without the button is no turn");
        ptt.pass(Event::Final(cut(1, 0.0, 2.0)), false);
        assert_eq!(ptt.pass(Event::Started { turn: 2 }, true), vec![Event::Started { turn: 2 }]);
        assert_eq!(finals(&ptt.pass(Event::Final(cut(2, 3.0, 5.0)), true))[0].started, Started::PushToTalk);
        // Pressed while unaddressed speech goes on (wake-word mode): from then on it is a turn.
        let mut wake = Gate::new(Mode::WakeWord, &config(), 200);
        assert!(wake.pass(Event::Started { turn: 3 }, false).is_empty());
        let events = wake.pass(Event::Final(cut(3, 0.0, 2.0)), true);
        assert_eq!(events[0], Event::Started { turn: 3 });
        assert_eq!(finals(&events)[0].started, Started::PushToTalk);
        assert_eq!(Mode::of(&WakeConfig::default(), true), Mode::WakeWord, "the default on a microphone");
        assert_eq!(Mode::of(&WakeConfig::default(), false), Mode::Always, "and for a recording");
    }

    #[test]
    fn a_trigger_needs_its_steps_in_a_row_and_then_rests() {
        let mut t = Trigger::new(0.5, 2, 1000);
        let step = 1280;
        let wakes: Vec<u64> = [0.6, 0.2, 0.6, 0.7, 0.9, 0.9, 0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.8, 0.8, 0.8, 0.8]
            .iter()
            .enumerate()
            .filter_map(|(i, score)| t.step(*score, (i as u64 + 1) * step).then_some(i as u64))
            .collect();
        // Steps 2-3 wake; 1 s of rest (12.5 steps) keeps 4-15 quiet (the scores in
        // it count for nothing); 16-17 wake again.
        assert_eq!(wakes, vec![3, 17]);
    }

    #[test]
    fn the_wake_phrase_is_taken_off_the_words_as_whisper_spells_it() {
        let w = "hey_jarvis_v0.1";
        assert_eq!(phrase_words(w), ["hey", "jarvis"]);
        assert_eq!(phrase_words("/home/me/ok_computer.onnx"), ["ok", "computer"]);
        assert_eq!(strip_phrase("Hey Jarvis, turn off the kitchen light.", w), "Turn off the kitchen light.");
        assert_eq!(strip_phrase("Hey, Jervis. What time is it?", w), "What time is it?");
        assert_eq!(strip_phrase("Jarvis, what time is it?", w), "What time is it?");
        assert_eq!(strip_phrase("Hey Jarvis.", w), "");
        assert_eq!(strip_phrase("Hey, what is this song?", w), "Hey, what is this song?", "not the phrase");
        assert_eq!(strip_phrase("Turn off the light.", w), "Turn off the light.");
    }
}
