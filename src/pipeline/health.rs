//! Is every stage alive? The watchdog's question.
//!
//! Each stage keeps a [`Beat`]: it says when it takes work (`busy`), steps as it
//! makes progress on it (`step`: a token, a sentence, a frame) and when it is done
//! (`idle`). A stage that holds work without progress for longer than
//! `[service] stage_deadline_s` is hung; a stage whose thread ended with an error or
//! a panic is dead. Either is fatal: the monitor reports it by name, the turn it held
//! is logged as failed, systemd's watchdog is no longer fed, and the run ends with an
//! error (voxd exits non-zero; systemd restarts it). Waiting for input is not work:
//! an idle stage is healthy however long it waits.
//!
//! Errors on one turn (an engine that fails on some input) are not here: the stages
//! survive those, log the turn as failed and go on (see each stage).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::TurnId;

/// One stage's pulse. Times are ms since the health monitor's start (0: never).
#[derive(Debug, Default)]
pub struct Beat {
    /// Holding work since (0: idle).
    busy_since_ms: AtomicU64,
    last_step_ms: AtomicU64,
    /// The turn the work belongs to.
    turn: AtomicU64,
}

/// The stages' pulses and the verdict on them.
#[derive(Debug)]
pub struct Health {
    start: Instant,
    deadline: Duration,
    stages: Mutex<Vec<(&'static str, Arc<Beat>)>>,
    /// The first fatal problem; once set, voxd is going down.
    fatal: Mutex<Option<Problem>>,
    fatal_set: AtomicBool,
    wake: tokio::sync::Notify,
}

/// What is wrong with a stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub stage: &'static str,
    /// The turn it held, if any.
    pub turn: Option<TurnId>,
    pub what: String,
    /// It held work without progress (else its thread ended: an error or a panic).
    pub hung: bool,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stage {} {}", self.stage, self.what)
    }
}

/// A stage as `voxd ctl status` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StageState {
    pub stage: &'static str,
    /// "idle", "busy", "hung" or "dead".
    pub state: &'static str,
    /// How long it has held its current work, and since its last step (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub busy_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_step_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn: Option<TurnId>,
}

impl Beat {
    fn now_ms(health: &Health) -> u64 {
        // +1: 0 means "never".
        health.start.elapsed().as_millis() as u64 + 1
    }
}

/// A stage's handle on its beat.
#[derive(Debug, Clone)]
pub struct Pulse {
    beat: Arc<Beat>,
    health: Arc<Health>,
}

impl Pulse {
    /// Takes work (for `turn`; 0 when it belongs to none).
    pub fn busy(&self, turn: TurnId) {
        let now = Beat::now_ms(&self.health);
        self.beat.turn.store(turn, Ordering::Relaxed);
        self.beat.last_step_ms.store(now, Ordering::Relaxed);
        self.beat.busy_since_ms.store(now, Ordering::Release);
    }

    /// Progress on the work held.
    pub fn step(&self) {
        self.beat.last_step_ms.store(Beat::now_ms(&self.health), Ordering::Release);
    }

    /// Done with the work: waiting for more is not a hang.
    pub fn idle(&self) {
        self.beat.busy_since_ms.store(0, Ordering::Release);
    }
}

impl Health {
    pub fn new(deadline: Duration) -> Arc<Health> {
        Arc::new(Health { start: Instant::now(), deadline, stages: Mutex::default(), fatal: Mutex::default(), fatal_set: AtomicBool::new(false), wake: tokio::sync::Notify::new() })
    }

    /// Registers a stage and hands it its pulse.
    pub fn pulse(self: &Arc<Health>, stage: &'static str) -> Pulse {
        let beat = Arc::new(Beat::default());
        self.stages.lock().expect("not poisoned").push((stage, beat.clone()));
        Pulse { beat, health: self.clone() }
    }

    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The stages now.
    pub fn states(&self) -> Vec<StageState> {
        let now = Beat::now_ms(self);
        let dead = self.fatal.lock().expect("not poisoned").clone();
        self.stages
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(stage, beat)| {
                let busy_since = beat.busy_since_ms.load(Ordering::Acquire);
                let last_step = beat.last_step_ms.load(Ordering::Acquire);
                let busy = busy_since != 0;
                let since_step = now.saturating_sub(last_step);
                let state = match &dead {
                    Some(p) if p.stage == *stage && !p.hung => "dead",
                    _ if busy && since_step > self.deadline.as_millis() as u64 => "hung",
                    _ if busy => "busy",
                    _ => "idle",
                };
                StageState {
                    stage,
                    state,
                    busy_ms: busy.then(|| now.saturating_sub(busy_since)),
                    since_step_ms: busy.then_some(since_step),
                    turn: busy.then(|| beat.turn.load(Ordering::Relaxed)).filter(|t| *t != 0),
                }
            })
            .collect()
    }

    /// The first stage that holds work without progress for longer than the deadline.
    pub fn hung(&self) -> Option<Problem> {
        self.states().into_iter().find(|s| s.state == "hung").map(|s| Problem {
            stage: s.stage,
            turn: s.turn,
            what: format!("made no progress for {:.0} s on the work it holds ([service] stage_deadline_s = {})", s.since_step_ms.unwrap_or(0) as f64 / 1000.0, self.deadline.as_secs_f64()),
            hung: true,
        })
    }

    /// Records a fatal problem (the first one counts) and wakes whoever waits on it.
    pub fn fail(&self, problem: Problem) {
        let mut fatal = self.fatal.lock().expect("not poisoned");
        if fatal.is_none() {
            tracing::error!("{problem}: voxd stops (under systemd the watchdog is no longer fed, and it restarts voxd)");
            *fatal = Some(problem);
            self.fatal_set.store(true, Ordering::Release);
            self.wake.notify_one();
        }
    }

    /// The fatal problem, if there was one.
    pub fn fatal(&self) -> Option<Problem> {
        self.fatal.lock().expect("not poisoned").clone()
    }

    /// Every stage alive: what feeds systemd's watchdog (with the capture heartbeat).
    pub fn alive(&self) -> bool {
        !self.fatal_set.load(Ordering::Acquire) && self.hung().is_none()
    }

    /// Resolves once a fatal problem is recorded.
    pub async fn failed(&self) {
        while !self.fatal_set.load(Ordering::Acquire) {
            self.wake.notified().await;
        }
    }
}

/// Watches the stages until `done`: a hung one is fatal, reported through `on_fatal`
/// once (so the turn it held can be logged) and recorded in `health`.
pub fn monitor(health: Arc<Health>, done: Arc<AtomicBool>, on_fatal: impl FnOnce(&Problem) + Send + 'static) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("voxd-health".into()).spawn(move || {
        let round = (health.deadline / 20).clamp(Duration::from_millis(50), Duration::from_millis(500));
        while !done.load(Ordering::Acquire) && health.fatal().is_none() {
            std::thread::sleep(round);
            if let Some(problem) = health.hung() {
                on_fatal(&problem);
                health.fail(problem);
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_is_hung_only_while_it_holds_work_without_progress() {
        let health = Health::new(Duration::from_millis(50));
        let llm = health.pulse("llm");
        let tts = health.pulse("tts");
        std::thread::sleep(Duration::from_millis(80));
        assert!(health.alive(), "waiting for input is not a hang");
        llm.busy(7);
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(30));
            llm.step();
        }
        assert!(health.alive(), "working and stepping: alive, however long");
        assert_eq!(health.states()[0].state, "busy");
        assert_eq!(health.states()[0].turn, Some(7));
        std::thread::sleep(Duration::from_millis(80));
        let problem = health.hung().expect("no step for longer than the deadline");
        assert_eq!((problem.stage, problem.turn), ("llm", Some(7)));
        assert!(problem.to_string().starts_with("stage llm made no progress"), "{problem}");
        assert!(!health.alive());
        llm.idle();
        assert!(health.alive(), "done with the work: idle again");
        tts.busy(8);
        health.fail(Problem { stage: "tts", turn: Some(8), what: "panicked: boom".into(), hung: false });
        health.fail(Problem { stage: "asr", turn: None, what: "second".into(), hung: false });
        assert_eq!(health.fatal().map(|p| p.stage), Some("tts"), "the first problem is the one reported");
        assert!(!health.alive());
        assert_eq!(health.states()[1].state, "dead");
    }

    #[test]
    fn the_monitor_reports_a_hang_once_and_wakes_the_waiter() {
        let health = Health::new(Duration::from_millis(40));
        let tts = health.pulse("tts");
        tts.busy(3);
        let reported = Arc::new(Mutex::new(Vec::new()));
        let seen = reported.clone();
        let t = monitor(health.clone(), Arc::new(AtomicBool::new(false)), move |p| seen.lock().unwrap().push(p.clone())).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), health.failed()).await }).expect("the waiter was woken");
        t.join().unwrap();
        assert_eq!(reported.lock().unwrap().len(), 1);
        assert_eq!(health.fatal().unwrap().stage, "tts");
    }
}
