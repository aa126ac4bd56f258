//! MQTT: publish commands and remember the last message on state topics.
//!
//! rumqttc's connection runs on its own thread (`voxd-mqtt`), which keeps it alive:
//! it redials with backoff when the broker goes away, subscribes again after every
//! reconnect, and records which publishes the broker acknowledged. A publish is
//! reported done only once the broker has it (QoS 1/2: its ack; QoS 0: sent), and
//! refused at once while disconnected — a command must not sit in a queue and fire
//! minutes later, after the user was told it failed.
//!
//! The broker is bounded like every peer: packets of [`MAX_PACKET`] at most, the
//! last message of [`MAX_STATE_TOPICS`] state topics at most (and only of topics
//! under the state filters), and a redial backoff that starts over only after a
//! connection that lasted.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Outgoing, Packet, QoS};

use super::Failure;
use crate::config::MqttConfig;
use crate::control::Daemon;

pub struct Mqtt {
    client: Client,
    shared: Arc<Shared>,
}

/// The longest packet taken from or sent to the broker. A state is a few bytes to a
/// few KiB of JSON, and rumqttc's default (10 KiB) is near enough to cut a big one
/// off. A longer packet is refused before it is read; MQTT 3.1.1 cannot refuse one
/// message, so that drops the connection, which is redialled.
pub const MAX_PACKET: usize = 64 * 1024;

/// The most state topics whose last message is kept (a home has far fewer; with
/// `MAX_PACKET` this bounds their memory to 32 MiB).
pub const MAX_STATE_TOPICS: usize = 512;

/// A connection that lasted this long was a success: the next failure redials
/// quickly again. A ConnAck followed at once by a drop is none (another client with
/// voxd's id, say, each throwing the other off): starting over then would redial
/// four times a second for ever.
const STABLE_AFTER: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

struct Shared {
    connected: AtomicBool,
    progress: Mutex<Progress>,
    progress_changed: Condvar,
    states: Mutex<States>,
    states_changed: Condvar,
}

/// The last message on each state topic: only topics under the state filters, and
/// `limit` of them at most.
#[derive(Debug)]
struct States {
    filters: Vec<String>,
    limit: usize,
    last: HashMap<String, String>,
    /// A new topic has been turned away (said once: the map never shrinks).
    turned_away: bool,
}

#[derive(Debug, PartialEq)]
enum Kept {
    Yes,
    /// Under no state filter.
    NotAState,
    /// A new topic, and the map is full.
    Full,
}

impl States {
    fn new(filters: Vec<String>, limit: usize) -> States {
        States { filters, limit, last: HashMap::new(), turned_away: false }
    }

    fn remember(&mut self, topic: &str, payload: String) -> Kept {
        if !self.filters.iter().any(|f| rumqttc::matches(topic, f)) {
            return Kept::NotAState;
        }
        if let Some(last) = self.last.get_mut(topic) {
            *last = payload;
        } else if self.last.len() >= self.limit {
            return Kept::Full;
        } else {
            self.last.insert(topic.to_string(), payload);
        }
        Kept::Yes
    }
}

#[derive(Default)]
struct Progress {
    /// Publishes the connection has written, and the last one's packet id.
    sent: u64,
    last_pkid: u16,
    /// Packet ids the broker acknowledged lately.
    acked: VecDeque<u16>,
}

fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

impl Mqtt {
    /// Connects (in the background) and subscribes to `state_filters`. None when
    /// `[mqtt] host` is empty.
    pub fn start(c: &MqttConfig, state_filters: Vec<String>, daemon: Daemon) -> anyhow::Result<Option<Mqtt>> {
        if c.host.is_empty() {
            return Ok(None);
        }
        let client_id = client_id(c, daemon);
        let mut options = MqttOptions::new(&client_id, &c.host, c.port);
        options.set_keep_alive(Duration::from_secs(c.keep_alive_s as u64));
        options.set_max_packet_size(MAX_PACKET, MAX_PACKET);
        if !c.username.is_empty() {
            let password = if c.password_env.is_empty() { String::new() } else { std::env::var(&c.password_env).unwrap_or_default() };
            options.set_credentials(&c.username, password);
        }
        let (client, mut connection) = Client::new(options, 16);
        let shared = Arc::new(Shared {
            connected: AtomicBool::new(false),
            progress: Mutex::default(),
            progress_changed: Condvar::new(),
            states: Mutex::new(States::new(state_filters.clone(), MAX_STATE_TOPICS)),
            states_changed: Condvar::new(),
        });
        let (thread_shared, resubscribe, broker) = (shared.clone(), client.clone(), format!("{}:{} (as {client_id})", c.host, c.port));
        std::thread::Builder::new().name("voxd-mqtt".into()).spawn(move || {
            let shared = thread_shared;
            let mut backoff = FIRST_BACKOFF;
            let mut up_since: Option<Instant> = None;
            // `recv` ends when every client handle is gone: voxd is shutting down.
            while let Ok(event) = connection.recv() {
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        tracing::info!("mqtt: connected to {broker}");
                        up_since = Some(Instant::now());
                        for f in &state_filters {
                            let _ = resubscribe.try_subscribe(f.as_str(), QoS::AtLeastOnce);
                        }
                        shared.connected.store(true, Ordering::Release);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let payload = String::from_utf8_lossy(&p.payload).into_owned();
                        let mut states = shared.states.lock().expect("states lock");
                        match states.remember(&p.topic, payload) {
                            Kept::Yes => shared.states_changed.notify_all(),
                            Kept::NotAState => tracing::debug!("mqtt: ignored a message on {}: under no state topic", p.topic),
                            Kept::Full if !std::mem::replace(&mut states.turned_away, true) => {
                                tracing::warn!("mqtt: keeping the last message of {MAX_STATE_TOPICS} state topics already, the most voxd keeps; {} and any other new topic are not kept", p.topic);
                            }
                            Kept::Full => {}
                        }
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        let mut progress = shared.progress.lock().expect("progress lock");
                        progress.sent += 1;
                        progress.last_pkid = pkid;
                        shared.progress_changed.notify_all();
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => acked(&shared, ack.pkid),
                    Ok(Event::Incoming(Packet::PubComp(ack))) => acked(&shared, ack.pkid),
                    Ok(_) => {}
                    Err(e) => {
                        if up_since.take().is_some_and(|since| since.elapsed() >= STABLE_AFTER) {
                            backoff = FIRST_BACKOFF;
                        }
                        let oversized = matches!(e, rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(rumqttc::Error::PayloadSizeLimitExceeded(_))));
                        if oversized {
                            tracing::warn!("mqtt: {broker} sent a message over {} KiB, the most voxd takes ({e}); MQTT 3.1.1 cannot refuse one message, so the connection is dropped and redialled", MAX_PACKET / 1024);
                        }
                        if shared.connected.swap(false, Ordering::AcqRel) {
                            tracing::warn!("mqtt: lost {broker}: {e}; reconnecting in {backoff:?}");
                        } else {
                            tracing::debug!("mqtt: {broker}: {e}; retrying in {backoff:?}");
                        }
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        })?;
        let mqtt = Mqtt { client, shared };
        // A local broker answers in milliseconds: wait briefly so the first command
        // after start-up is not refused; a broker that is down is not fatal.
        let deadline = Instant::now() + Duration::from_secs(3);
        while !mqtt.connected() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !mqtt.connected() {
            tracing::warn!("mqtt: the broker at {}:{} is not reachable yet; MQTT commands fail until it is", c.host, c.port);
        }
        Ok(Some(mqtt))
    }

    pub fn connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// Publishes and waits until the broker has it (see the module header).
    pub fn publish(&self, topic: &str, payload: &str, level: u8, retain: bool, timeout: Duration) -> Result<(), Failure> {
        if !self.connected() {
            return Err(Failure("the MQTT broker is not connected".into()));
        }
        // rumqttc would drop the connection over a packet this big: refuse it here.
        // (The packet's own header is a few bytes and the topic's length.)
        if topic.len() + payload.len() + 16 > MAX_PACKET {
            return Err(Failure(format!("the MQTT message is over {} kilobytes, the most voxd sends", MAX_PACKET / 1024)));
        }
        let deadline = Instant::now() + timeout;
        let before = self.shared.progress.lock().expect("progress lock").sent;
        self.client.try_publish(topic, qos(level), retain, payload.as_bytes().to_vec()).map_err(|_| Failure("the MQTT connection is busy".into()))?;
        let late = || Failure("the MQTT broker did not confirm in time".into());
        let mut progress = self.shared.progress.lock().expect("progress lock");
        while progress.sent == before {
            progress = self.wait(progress, deadline).ok_or_else(late)?;
        }
        let pkid = progress.last_pkid;
        if level == 0 {
            return Ok(());
        }
        while !progress.acked.contains(&pkid) {
            progress = self.wait(progress, deadline).ok_or_else(late)?;
        }
        Ok(())
    }

    /// The last message on `topic`, waiting up to `timeout` for a first one (a
    /// retained state arrives just after subscribing).
    pub fn state(&self, topic: &str, timeout: Duration) -> Result<String, Failure> {
        let deadline = Instant::now() + timeout;
        let mut states = self.shared.states.lock().expect("states lock");
        loop {
            if let Some(s) = states.last.get(topic) {
                return Ok(s.clone());
            }
            if states.last.len() >= states.limit {
                return Err(Failure(format!("I keep the last message of {} MQTT topics at most, and {topic} is not one of them", states.limit)));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Failure(if self.connected() { format!("nothing has been heard on {topic} yet") } else { "the MQTT broker is not connected".into() }));
            }
            states = self.shared.states_changed.wait_timeout(states, left).expect("states lock").0;
        }
    }

    fn wait<'a>(&self, guard: std::sync::MutexGuard<'a, Progress>, deadline: Instant) -> Option<std::sync::MutexGuard<'a, Progress>> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        Some(self.shared.progress_changed.wait_timeout(guard, left).expect("progress lock").0)
    }
}

fn acked(shared: &Shared, pkid: u16) {
    let mut progress = shared.progress.lock().expect("progress lock");
    progress.acked.push_back(pkid);
    if progress.acked.len() > 64 {
        progress.acked.pop_front();
    }
    shared.progress_changed.notify_all();
}

/// The id `daemon` connects with: `[mqtt] client_id`, by default `voxd-<hostname>`
/// (unique on a broker that voxd on several machines share: two clients with one id
/// throw each other off, over and over), and for `voxd wyoming` that id with
/// `-wyoming` after it — the two daemons run side by side on one machine, each with
/// its own connection.
pub fn client_id(c: &MqttConfig, daemon: Daemon) -> String {
    let id = if c.client_id.is_empty() { default_client_id() } else { c.client_id.clone() };
    match daemon {
        Daemon::Run => id,
        Daemon::Wyoming => format!("{id}-wyoming"),
    }
}

fn default_client_id() -> String {
    let mut name = [0u8; 256];
    // SAFETY: `name` is writable for its whole length; gethostname writes no more.
    let ok = unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) } == 0;
    let host = ok.then(|| std::ffi::CStr::from_bytes_until_nul(&name).ok()).flatten().and_then(|h| h.to_str().ok()).filter(|h| !h.is_empty());
    format!("voxd-{}", host.unwrap_or("unknown-host"))
}

/// The subscription filter for a state topic template: placeholders become `+`.
pub fn filter(topic_template: &str) -> String {
    topic_template.split('/').map(|level| if level.contains('{') { "+" } else { level }).collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_state_topics_are_kept_and_only_so_many() {
        let mut states = States::new(vec!["home/+/temperature".into(), "garden/#".into()], 2);
        assert_eq!(states.remember("home/kitchen/light", "on".into()), Kept::NotAState);
        assert_eq!(states.remember("$SYS/broker/uptime", "1".into()), Kept::NotAState);
        assert_eq!(states.remember("home/kitchen/temperature", "21".into()), Kept::Yes);
        assert_eq!(states.remember("garden/pond/level", "low".into()), Kept::Yes);
        assert_eq!(states.remember("home/hall/temperature", "19".into()), Kept::Full);
        assert_eq!(states.remember("home/kitchen/temperature", "22".into()), Kept::Yes, "a kept topic is updated when full");
        assert_eq!(states.last.len(), 2);
        assert_eq!(states.last["home/kitchen/temperature"], "22");
    }

    #[test]
    fn the_default_client_id_names_the_host() {
        let id = default_client_id();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(id, format!("voxd-{}", host.trim()));
    }
}
