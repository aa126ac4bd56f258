//! Running under systemd (`Type=notify`): READY once the engines are warm and the
//! microphone is being listened to, WATCHDOG pings only while the pipeline is alive
//! — its heartbeat (the capture pacer's rounds) advances and no stage is hung or
//! dead (`pipeline::health`) — and STOPPING when a stop was asked for. Outside
//! systemd (no `NOTIFY_SOCKET`) all of this is silent.
//!
//! The protocol is a datagram per message on the socket systemd names; nothing here
//! needs libsystemd.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::pipeline::health::Health;
use crate::pipeline::Counters;

/// Where systemd listens for this service's state, if it does.
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket).
    pub fn from_env() -> Option<Notifier> {
        let name = std::env::var_os("NOTIFY_SOCKET")?;
        let name = name.to_string_lossy();
        let addr = match name.strip_prefix('@') {
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(abstract_name.as_bytes()).ok()?
            }
            None => SocketAddr::from_pathname(name.as_ref()).ok()?,
        };
        let socket = UnixDatagram::unbound().ok()?;
        Some(Notifier { socket, addr })
    }

    /// A notifier for the socket at `path` (what `from_env` does with `$NOTIFY_SOCKET`).
    pub fn to_path(path: &std::path::Path) -> std::io::Result<Notifier> {
        Ok(Notifier { socket: UnixDatagram::unbound()?, addr: SocketAddr::from_pathname(path)? })
    }

    /// Sends one state change ("READY=1", "WATCHDOG=1", "STATUS=…"); a service manager
    /// that is not listening is no reason to stop answering people.
    pub fn send(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            tracing::debug!("systemd notification {state:?} not sent: {e}");
        }
    }
}

/// The watchdog interval systemd asked for (`WatchdogSec=`), when it is meant for
/// this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok().and_then(|p| p.parse::<u32>().ok()) {
        if pid != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Decides each watchdog round whether the pipeline is alive: only if its heartbeat
/// moved since the last round. A pipeline that hangs (capture stuck, a stage
/// deadlocked behind it) stops the pings, and systemd restarts voxd.
pub struct Watchdog {
    last: Option<u64>,
}

impl Watchdog {
    pub fn new() -> Watchdog {
        Watchdog { last: None }
    }

    pub fn alive(&mut self, heartbeat: u64) -> bool {
        let moved = self.last != Some(heartbeat);
        self.last = Some(heartbeat);
        moved
    }
}

impl Default for Watchdog {
    fn default() -> Self {
        Watchdog::new()
    }
}

/// Tells systemd READY now, then, on a thread of its own until the run ends: pings
/// the watchdog at half its interval while the capture heartbeat advances and every
/// stage is healthy, and says STOPPING once `stop` is set.
/// `interval` is systemd's watchdog interval (`watchdog_interval`; None: no pings).
pub fn ready(notifier: Notifier, interval: Option<Duration>, counters: Arc<Counters>, health: Arc<Health>, stop: Arc<AtomicBool>, status: &str) {
    notifier.send(&format!("READY=1\nSTATUS={status}"));
    let _ = std::thread::Builder::new().name("voxd-watchdog".into()).spawn(move || {
        let round = interval.map_or(Duration::from_millis(200), |i| (i / 2).min(Duration::from_secs(5)).max(Duration::from_millis(50)));
        let mut watchdog = Watchdog::new();
        loop {
            std::thread::sleep(round);
            if stop.load(Ordering::Acquire) {
                notifier.send("STOPPING=1\nSTATUS=finishing the turn in flight");
                return;
            }
            // (The heartbeat is read every round, so a hang's end does not look like a move.)
            let moved = watchdog.alive(counters.capture_heartbeat.load(Ordering::Relaxed));
            if interval.is_some() && moved && health.alive() {
                notifier.send("WATCHDOG=1");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_fed_only_while_the_heartbeat_moves() {
        let mut w = Watchdog::new();
        assert!(w.alive(0), "the first round after start counts");
        assert!(w.alive(5));
        assert!(!w.alive(5), "a heartbeat that stood still is a hang");
        assert!(w.alive(6));
    }

    #[test]
    fn the_watchdog_goes_unfed_once_a_stage_hangs_though_capture_runs_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let manager = UnixDatagram::bind(&path).unwrap();
        manager.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let (counters, health, stop) = (Arc::new(Counters::default()), Health::new(Duration::from_millis(400)), Arc::new(AtomicBool::new(false)));
        let tts = health.pulse("tts");
        // Capture keeps beating throughout: the old watchdog fed systemd on that alone.
        let beating = counters.clone();
        std::thread::spawn(move || loop {
            beating.capture_heartbeat.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(10));
        });
        ready(Notifier::to_path(&path).unwrap(), Some(Duration::from_millis(100)), counters, health.clone(), stop.clone(), "test");
        let mut buf = [0u8; 256];
        let mut pings_in = |window: Duration| {
            let until = std::time::Instant::now() + window;
            let mut n = 0;
            while std::time::Instant::now() < until {
                if let Ok(len) = manager.recv(&mut buf) {
                    n += usize::from(&buf[..len] == b"WATCHDOG=1");
                }
            }
            n
        };
        assert!(pings_in(Duration::from_millis(600)) >= 2, "fed while every stage is well");
        tts.busy(1); // and never a step again
        std::thread::sleep(Duration::from_millis(600));
        pings_in(Duration::from_millis(50)); // what was sent before the deadline passed
        assert_eq!(pings_in(Duration::from_millis(600)), 0, "not fed once tts has held its work past the deadline");
        stop.store(true, Ordering::Release);
    }
}
