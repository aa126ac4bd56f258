//! HTTP for Home Assistant and webhooks (ureq 2), bounded as every network peer is:
//! the whole call — the host name's lookup included — within the tool's timeout,
//! and never more than [`MAX_BODY`] of an answer read.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::Failure;

/// The most of an answer voxd reads. What it uses is a state or the start of a
/// confirmation; a peer that sends more is broken, and is never read whole.
pub const MAX_BODY: usize = 64 * 1024;

/// Host names being looked up right now, on helper threads (see [`DeadlineResolver`]).
static PENDING_LOOKUPS: AtomicUsize = AtomicUsize::new(0);

/// An agent for one call that must be over within `timeout`, host name lookup and all.
pub fn agent(timeout: Duration) -> ureq::Agent {
    let resolver = DeadlineResolver { deadline: Instant::now() + timeout, lookup: system_lookup, pending: &PENDING_LOOKUPS };
    ureq::AgentBuilder::new().timeout(timeout).resolver(resolver).build()
}

/// Reads the body of `response` from `service`, refusing one over [`MAX_BODY`].
pub fn read_body(service: &str, response: ureq::Response) -> Result<String, Failure> {
    read_body_up_to(service, response, MAX_BODY)
}

/// Reads the body of `response`, refusing one over `max` bytes (a list of a whole
/// home's devices is larger than any one answer).
pub fn read_body_up_to(service: &str, response: ureq::Response, max: usize) -> Result<String, Failure> {
    let mut body = Vec::new();
    match response.into_reader().take(max as u64 + 1).read_to_end(&mut body) {
        Ok(_) if body.len() > max => Err(Failure(format!("{service} sent an answer over {} kilobytes, too long to read", max / 1024))),
        Ok(_) => Ok(String::from_utf8_lossy(&body).into_owned()),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) => Err(Failure(format!("{service} did not answer in time"))),
        Err(_) => Err(Failure(format!("{service}'s answer broke off"))),
    }
}

fn system_lookup(netloc: &str) -> std::io::Result<Vec<SocketAddr>> {
    std::net::ToSocketAddrs::to_socket_addrs(netloc).map(Iterator::collect)
}

/// Looks host names up on a helper thread and gives up at the call's deadline.
/// ureq 2's timeout does not cover the lookup, and the system's resolver can hang
/// far longer than a tool's timeout (30 s and more with a DNS server that does not
/// answer). A lookup cannot be cancelled: one that outlives its call finishes on its
/// thread, and while a few are still hanging no more are started.
struct DeadlineResolver {
    deadline: Instant,
    lookup: fn(&str) -> std::io::Result<Vec<SocketAddr>>,
    pending: &'static AtomicUsize,
}

impl DeadlineResolver {
    /// Helper threads at once (each one a lookup stuck past its call's deadline).
    const MAX_PENDING: usize = 4;
}

impl ureq::Resolver for DeadlineResolver {
    fn resolve(&self, netloc: &str) -> std::io::Result<Vec<SocketAddr>> {
        // An address needs no lookup (nor a thread).
        if let Ok(addr) = netloc.parse::<SocketAddr>() {
            return Ok(vec![addr]);
        }
        let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, format!("looking up {netloc} took longer than the call's timeout"));
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        if self.pending.fetch_add(1, Ordering::AcqRel) >= Self::MAX_PENDING {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(std::io::Error::other(format!("cannot look up {netloc}: {} earlier lookups are still hanging (is the DNS server answering?)", Self::MAX_PENDING)));
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (lookup, pending, name) = (self.lookup, self.pending, netloc.to_string());
        let spawned = std::thread::Builder::new().name("voxd-dns".into()).spawn(move || {
            let _ = tx.send(lookup(&name));
            pending.fetch_sub(1, Ordering::AcqRel);
        });
        if let Err(e) = spawned {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(e);
        }
        rx.recv_timeout(left).unwrap_or_else(|_| Err(timed_out()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ureq::Resolver;

    fn slow(_: &str) -> std::io::Result<Vec<SocketAddr>> {
        std::thread::sleep(Duration::from_secs(3));
        Ok(vec!["10.0.0.1:80".parse().unwrap()])
    }

    fn quick(_: &str) -> std::io::Result<Vec<SocketAddr>> {
        Ok(vec!["10.0.0.2:80".parse().unwrap()])
    }

    fn resolver(timeout: Duration, lookup: fn(&str) -> std::io::Result<Vec<SocketAddr>>, pending: &'static AtomicUsize) -> DeadlineResolver {
        DeadlineResolver { deadline: Instant::now() + timeout, lookup, pending }
    }

    #[test]
    fn a_lookup_that_hangs_gives_up_at_the_deadline() {
        static PENDING: AtomicUsize = AtomicUsize::new(0);
        let started = Instant::now();
        let e = resolver(Duration::from_millis(200), slow, &PENDING).resolve("ha.example:8123").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        assert!(e.to_string().contains("looking up ha.example:8123"), "{e}");
        // Well before the 3 s lookup ends (the margin is for a loaded machine).
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert_eq!(resolver(Duration::from_secs(5), quick, &PENDING).resolve("ha.example:8123").unwrap(), vec!["10.0.0.2:80".parse::<SocketAddr>().unwrap()]);
        assert_eq!(resolver(Duration::ZERO, slow, &PENDING).resolve("127.0.0.1:8123").unwrap(), vec!["127.0.0.1:8123".parse::<SocketAddr>().unwrap()], "an address is not looked up");
    }

    #[test]
    fn lookups_still_hanging_are_bounded() {
        static PENDING: AtomicUsize = AtomicUsize::new(0);
        for _ in 0..DeadlineResolver::MAX_PENDING {
            assert!(resolver(Duration::from_millis(50), slow, &PENDING).resolve("ha.example:8123").is_err());
        }
        let e = resolver(Duration::from_secs(5), quick, &PENDING).resolve("ha.example:8123").unwrap_err();
        assert!(e.to_string().contains("4 earlier lookups are still hanging"), "{e}");
        // Once they end, lookups run again.
        let deadline = Instant::now() + Duration::from_secs(20);
        while resolver(Duration::from_secs(5), quick, &PENDING).resolve("ha.example:8123").is_err() {
            assert!(Instant::now() < deadline, "the hanging lookups never ended");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
