//! MQTT: publish commands and remember the last message on state topics.
//!
//! rumqttc's connection runs on its own thread (`voxd-mqtt`), which keeps it alive:
//! it redials with backoff when the broker goes away, subscribes again after every
//! reconnect, and records which publishes the broker acknowledged. A publish is
//! reported done only once the broker has it (QoS 1/2: its ack; QoS 0: sent), and
//! refused at once while disconnected — a command must not sit in a queue and fire
//! minutes later, after the user was told it failed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Outgoing, Packet, QoS};

use super::Failure;
use crate::config::MqttConfig;

pub struct Mqtt {
    client: Client,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    connected: AtomicBool,
    progress: Mutex<Progress>,
    progress_changed: Condvar,
    /// Last payload seen per topic (state topics).
    states: Mutex<HashMap<String, String>>,
    states_changed: Condvar,
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
    pub fn start(c: &MqttConfig, state_filters: Vec<String>) -> anyhow::Result<Option<Mqtt>> {
        if c.host.is_empty() {
            return Ok(None);
        }
        let mut options = MqttOptions::new(&c.client_id, &c.host, c.port);
        options.set_keep_alive(Duration::from_secs(c.keep_alive_s as u64));
        if !c.username.is_empty() {
            let password = if c.password_env.is_empty() { String::new() } else { std::env::var(&c.password_env).unwrap_or_default() };
            options.set_credentials(&c.username, password);
        }
        let (client, mut connection) = Client::new(options, 16);
        let shared = Arc::new(Shared::default());
        let (thread_shared, resubscribe, broker) = (shared.clone(), client.clone(), format!("{}:{}", c.host, c.port));
        std::thread::Builder::new().name("voxd-mqtt".into()).spawn(move || {
            let shared = thread_shared;
            let mut backoff = Duration::from_millis(250);
            // `recv` ends when every client handle is gone: voxd is shutting down.
            while let Ok(event) = connection.recv() {
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        tracing::info!("mqtt: connected to {broker}");
                        backoff = Duration::from_millis(250);
                        for f in &state_filters {
                            let _ = resubscribe.try_subscribe(f.as_str(), QoS::AtLeastOnce);
                        }
                        shared.connected.store(true, Ordering::Release);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let payload = String::from_utf8_lossy(&p.payload).into_owned();
                        shared.states.lock().expect("states lock").insert(p.topic.clone(), payload);
                        shared.states_changed.notify_all();
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
                        if shared.connected.swap(false, Ordering::AcqRel) {
                            tracing::warn!("mqtt: lost {broker}: {e}; reconnecting");
                        } else {
                            tracing::debug!("mqtt: {broker}: {e}; retrying in {backoff:?}");
                        }
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(10));
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
            if let Some(s) = states.get(topic) {
                return Ok(s.clone());
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

/// The subscription filter for a state topic template: placeholders become `+`.
pub fn filter(topic_template: &str) -> String {
    topic_template.split('/').map(|level| if level.contains('{') { "+" } else { level }).collect::<Vec<_>>().join("/")
}
