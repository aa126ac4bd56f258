//! Tool calls from spoken audio, end to end: a real MQTT broker (mosquitto), a Home
//! Assistant REST endpoint on loopback, the tool-calling test model
//! (Qwen2.5-Coder-0.5B) and the real ASR and voice.

use std::path::{Path, PathBuf};

use voxd::pipeline::telemetry::TurnRecord;
use voxd::tools::local_ha::{Behaviour, LocalHomeAssistant};

use crate::util::*;

pub(crate) const TOKEN: &str = "voxd-test-token-3f9a";
pub(crate) const TOKEN_ENV: &str = "VOXD_TEST_HASS_TOKEN";

/// The kitchen lights on MQTT, with a fixed confirmation.
const KITCHEN_MQTT: &str = r#"
[[tool]]
name = "kitchen_lights"
description = "Switch the kitchen lights on or off"
executor = "mqtt"
topic = "home/kitchen/lights/set"
payload = "{state}"
parameters = { type = "object", properties = { state = { type = "string", enum = ["on", "off"] } }, required = ["state"] }
reply = "The kitchen lights are {state}."
examples = [{ say = "kitchen lights off", arguments = { state = "off" } }]
"#;

/// Lights in Home Assistant; the model phrases the confirmation.
pub(crate) const LIGHTS_HA: &str = r#"
[[tool]]
name = "light_turn_on"
description = "Turn a light on"
executor = "home_assistant"
service = "light.turn_on"
parameters = { type = "object", properties = { entity_id = { type = "string" } }, required = ["entity_id"] }
allow = ["light.kitchen", "light.bedroom", "light.hallway"]
timeout_ms = 1000
examples = [{ say = "switch on the bedroom light", arguments = { entity_id = "light.bedroom" } }]
"#;

/// The same lights behind a fast-path intent (deterministic: for fault tests).
const LIGHTS_INTENT: &str = r#"
[[intent]]
pattern = "turn on the (?P<room>kitchen|bedroom|hallway) light"
tool = "light_turn_on"
arguments = { entity_id = "light.{room}" }
"#;

/// A lock that asks first, reached by an intent that can name any door.
pub(crate) const LOCK: &str = r#"
[[tool]]
name = "lock_unlock"
description = "Unlock a door"
executor = "home_assistant"
service = "lock.unlock"
parameters = { type = "object", properties = { entity_id = { type = "string" } }, required = ["entity_id"] }
allow = ["lock.front_door"]
confirm = true
reply = "The door is unlocked."

[[intent]]
pattern = "(?:please )?unlock the (?P<door>\\w+) door"
tool = "lock_unlock"
arguments = { entity_id = "lock.{door}_door" }
"#;

/// A config using the tool-calling test model, with `ha_url` and/or an MQTT broker.
fn config(dir: &tempfile::TempDir, ha_url: Option<&str>, mqtt_port: Option<u16>, tools: &[&str]) -> PathBuf {
    let mut text = String::from("[llm]\nmodel = \"qwen2.5-coder-0.5b-instruct\"\n");
    if let Some(url) = ha_url {
        text += &format!("[home_assistant]\nurl = \"{url}\"\ntoken_env = \"{TOKEN_ENV}\"\n");
    }
    if let Some(port) = mqtt_port {
        text += &format!("[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nclient_id = \"voxd-test-{port}\"\n");
    }
    for t in tools {
        text += t;
    }
    deterministic_config(dir, &text)
}

struct Done {
    run: Run,
    turns: Vec<TurnRecord>,
    output: PathBuf,
    log: PathBuf,
}

/// `voxd run` over `input` with `config`, the Home Assistant token in the environment.
fn run_voxd(dir: &tempfile::TempDir, config: &Path, input: &Path, token: &str) -> Done {
    let (output, log) = (dir.path().join("out.wav"), dir.path().join("turns.jsonl"));
    let _ = std::fs::remove_file(&log);
    let run = run_cmd(
        voxd()
            .env(TOKEN_ENV, token)
            .args(["--config", config.to_str().unwrap(), "run", "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap(), "--latency-log", log.to_str().unwrap()]),
    );
    assert!(run.ok, "voxd run failed:\n{}", run.stderr);
    Done { turns: turns(&log), run, output, log }
}

#[test]
fn a_spoken_command_switches_the_kitchen_lights_over_mqtt_and_the_reply_confirms_it() {
    let dir = tempdir();
    let broker = Broker::start(&dir);
    let config = config(&dir, None, Some(broker.port), &[KITCHEN_MQTT]);
    let (input, _) = conversation(&dir, "mqtt", &[(0.5, "Turn on the kitchen lights.")], 4.0);
    let watch = broker.watch("home/#");
    let done = run_voxd(&dir, &config, &input, "");
    assert_eq!(watch.received(), vec!["home/kitchen/lights/set on"], "the broker got the command\n{}", done.run.stderr);
    assert_eq!(done.turns.len(), 1, "{}", done.run.stderr);
    let t = &done.turns[0];
    let call = &t.tool_calls[..];
    assert!(call.len() == 1 && call[0].ok && call[0].name == "kitchen_lights" && call[0].via == "model", "{call:?}");
    assert_eq!(t.reply, "The kitchen lights are on.");
    let heard = voxd::bench::words(&heard_reply(&dir, &done.output, t)).join(" ");
    assert!(heard.contains("kitchen lights are on"), "the confirmation was spoken: {heard:?}");
}

#[test]
fn a_spoken_command_reaches_home_assistant_with_the_right_path_body_and_token() {
    let dir = tempdir();
    let ha = LocalHomeAssistant::start(TOKEN).unwrap();
    let config = config(&dir, Some(&ha.url()), None, &[LIGHTS_HA]);
    let (input, _) = conversation(&dir, "ha", &[(0.5, "Turn on the kitchen light.")], 5.0);
    let done = run_voxd(&dir, &config, &input, TOKEN);
    let requests = ha.requests();
    assert_eq!(requests.len(), 1, "{requests:?}\n{}", done.run.stderr);
    let r = &requests[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/api/services/light/turn_on"));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&r.body).unwrap(), serde_json::json!({ "entity_id": "light.kitchen" }));
    assert_eq!(r.authorization.as_deref(), Some(format!("Bearer {TOKEN}").as_str()));
    let t = &done.turns[0];
    assert!(t.tool_calls.len() == 1 && t.tool_calls[0].ok, "{:?}", t.tool_calls);
    // The model phrased the confirmation from the result: words, not JSON, and heard.
    assert!(!t.reply.is_empty() && !t.reply.contains('{'), "{:?}", t.reply);
    assert_eq!(t.spoken, t.reply);
    // The token stays out of the logs.
    let log = std::fs::read_to_string(&done.log).unwrap();
    assert!(!done.run.stderr.contains(TOKEN) && !log.contains(TOKEN), "the token leaked into a log");
}

/// The microphone's room (`[audio] room`): "the light" said there is that room's
/// light, though the words name none, and the turn is logged with the room.
#[test]
fn a_light_said_without_its_room_is_the_microphones_rooms() {
    let dir = tempdir();
    let ha = LocalHomeAssistant::start(TOKEN).unwrap();
    let config = config(&dir, Some(&ha.url()), None, &["[audio]\nroom = \"hallway\"\n", LIGHTS_HA]);
    let (input, _) = conversation(&dir, "room", &[(0.5, "Turn on the light.")], 5.0);
    let done = run_voxd(&dir, &config, &input, TOKEN);
    let calls: Vec<String> = ha.requests().iter().map(|r| format!("{} {}", r.path, r.body.replace(' ', ""))).collect();
    assert_eq!(calls, vec![r#"/api/services/light/turn_on {"entity_id":"light.hallway"}"#], "{}", done.run.stderr);
    assert_eq!(done.turns[0].room.as_deref(), Some("hallway"));
}

#[test]
fn home_assistant_errors_and_timeouts_are_spoken_honestly_and_the_next_command_works() {
    let dir = tempdir();
    let ha = LocalHomeAssistant::start(TOKEN).unwrap();
    ha.set_fault("light.kitchen", Behaviour::Status(500));
    ha.set_fault("light.bedroom", Behaviour::Slow(std::time::Duration::from_secs(10))); // the tool's timeout is 1 s
    let config = config(&dir, Some(&ha.url()), None, &[LIGHTS_HA, LIGHTS_INTENT]);
    let parts = [(0.5, "Turn on the kitchen light."), (5.0, "Turn on the bedroom light."), (5.0, "Turn on the hallway light.")];
    let (input, _) = conversation(&dir, "faults", &parts, 5.0);
    let done = run_voxd(&dir, &config, &input, TOKEN);
    assert_eq!(done.turns.len(), 3, "{}", done.run.stderr);
    let errors: Vec<Option<String>> = done.turns.iter().map(|t| t.tool_calls.first().and_then(|c| c.error.clone())).collect();
    assert_eq!(
        errors,
        vec![Some("Home Assistant reported an error, code 500".to_string()), Some("Home Assistant did not answer in time".to_string()), None],
        "{:?}",
        done.turns.iter().map(|t| &t.tool_calls).collect::<Vec<_>>()
    );
    assert_eq!(done.turns[0].reply, "Sorry, that didn't work: Home Assistant reported an error, code 500.");
    assert_eq!(done.turns[1].reply, "Sorry, that didn't work: Home Assistant did not answer in time.");
    // Gave up at the 1 s timeout, not when the server answered 10 s later (the margin
    // is for a loaded machine, not for voxd).
    assert!(done.turns[1].tool_calls[0].ms < 6000.0, "gave up at the timeout: {:?}", done.turns[1].tool_calls);
    assert!(done.turns[2].tool_calls[0].ok && done.turns[2].tool_calls[0].via == "intent");
}

#[test]
fn home_assistant_down_or_refusing_the_token_is_said_plainly() {
    let dir = tempdir();
    let (input, _) = conversation(&dir, "down", &[(0.5, "Turn on the kitchen light.")], 4.0);
    // Nothing listens on the port.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let done = run_voxd(&dir, &config(&dir, Some(&closed), None, &[LIGHTS_HA, LIGHTS_INTENT]), &input, TOKEN);
    assert_eq!(done.turns[0].reply, "Sorry, that didn't work: I could not reach Home Assistant.", "{}", done.run.stderr);
    // A wrong token: Home Assistant answers 401.
    let ha = LocalHomeAssistant::start(TOKEN).unwrap();
    let done = run_voxd(&dir, &config(&dir, Some(&ha.url()), None, &[LIGHTS_HA, LIGHTS_INTENT]), &input, "not-the-token");
    assert_eq!(done.turns[0].reply, "Sorry, that didn't work: Home Assistant refused my access token.", "{}", done.run.stderr);
}

#[test]
fn home_assistant_tools_without_a_token_are_a_clear_error_at_start() {
    let dir = tempdir();
    let (input, _) = conversation(&dir, "notoken", &[(0.5, "Hello.")], 1.0);
    let config = config(&dir, Some("http://127.0.0.1:9"), None, &[LIGHTS_HA]);
    let out = dir.path().join("out.wav");
    let r = run_cmd(voxd().env_remove(TOKEN_ENV).args(["--config", config.to_str().unwrap(), "run", "--input", input.to_str().unwrap(), "--output", out.to_str().unwrap()]));
    assert!(!r.ok);
    assert!(r.stderr.contains(&format!("set the environment variable {TOKEN_ENV}")), "{}", r.stderr);
}

/// Under systemd the token comes as a credential (`LoadCredential=hass_token`):
/// with neither the environment variable nor a token file, voxd reads
/// `$CREDENTIALS_DIRECTORY/hass_token`, and Home Assistant gets it.
#[test]
fn the_token_from_a_systemd_credential_reaches_home_assistant() {
    let dir = tempdir();
    let ha = LocalHomeAssistant::start(TOKEN).unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::write(credentials.join("hass_token"), format!("{TOKEN}\n")).unwrap();
    let config = config(&dir, Some(&ha.url()), None, &[LIGHTS_HA, LIGHTS_INTENT]);
    let (input, _) = conversation(&dir, "cred", &[(0.5, "Turn on the kitchen light.")], 4.0);
    let out = dir.path().join("out.wav");
    let r = run_cmd(voxd().env_remove(TOKEN_ENV).env("CREDENTIALS_DIRECTORY", &credentials).args(["--config", config.to_str().unwrap(), "run", "--input", input.to_str().unwrap(), "--output", out.to_str().unwrap()]));
    assert!(r.ok, "{}", r.stderr);
    let requests = ha.requests();
    assert_eq!(requests.len(), 1, "{requests:?}\n{}", r.stderr);
    assert_eq!(requests[0].authorization.as_deref(), Some(format!("Bearer {TOKEN}").as_str()));
}

#[test]
fn the_mqtt_broker_restarting_mid_session_is_survived() {
    let dir = tempdir();
    let mut broker = Broker::start(&dir);
    let intent = r#"
[[intent]]
pattern = "turn (?P<state>on|off) the kitchen lights"
tool = "kitchen_lights"
arguments = { state = "{state}" }
"#;
    let config = config(&dir, None, Some(broker.port), &[KITCHEN_MQTT, intent]);
    let parts = [(0.5, "Turn on the kitchen lights."), (7.0, "Turn off the kitchen lights."), (7.0, "Turn on the kitchen lights.")];
    let (input, _) = conversation(&dir, "restart", &parts, 4.0);
    let (output, log) = (dir.path().join("out.wav"), dir.path().join("turns.jsonl"));
    let mut child = voxd()
        .args(["--config", config.to_str().unwrap(), "run", "--realtime", "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap(), "--latency-log", log.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // After the first command has gone through, the broker goes away for a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while turns(&log).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the first turn never came");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    broker.restart(std::time::Duration::from_secs(1));
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "voxd kept running through the restart:\n{stderr}");
    let turns = turns(&log);
    assert_eq!(turns.len(), 3, "{stderr}");
    assert!(turns[0].tool_calls[0].ok && turns[2].tool_calls[0].ok, "before and well after the restart: {:?}", turns.iter().map(|t| &t.tool_calls).collect::<Vec<_>>());
    for t in &turns {
        if !t.tool_calls[0].ok {
            assert_eq!(t.reply, "Sorry, that didn't work: the MQTT broker is not connected.", "a failure is said as it is");
        }
    }
    assert!(stderr.contains("mqtt: lost") && stderr.matches("mqtt: connected").count() >= 2, "the client noticed and reconnected:\n{stderr}");
}

/// An MQTT config for `Mqtt::start` against `broker`, as `client_id` ("" for the default).
fn mqtt_config(broker: &Broker, client_id: &str) -> voxd::config::MqttConfig {
    let text = format!("[mqtt]\nhost = \"127.0.0.1\"\nport = {}\nclient_id = \"{client_id}\"\n", broker.port);
    voxd::config::Config::parse(&text, Path::new("mqtt.toml")).unwrap_or_else(|e| panic!("{e}")).mqtt
}

/// Two clients with one id throw each other off the broker: each ConnAck is followed
/// at once by a drop. The backoff must not start over at such a ConnAck, or the two
/// would redial each other off four times a second for ever.
#[test]
fn an_mqtt_connection_dropped_right_after_its_connack_is_redialled_ever_more_slowly() {
    let dir = tempdir();
    let broker = Broker::start(&dir);
    let config = mqtt_config(&broker, "voxd-twin");
    let first = voxd::tools::mqtt::Mqtt::start(&config, vec![], voxd::control::Daemon::Run).unwrap().unwrap();
    let second = voxd::tools::mqtt::Mqtt::start(&config, vec![], voxd::control::Daemon::Run).unwrap().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(8));
    let connections = broker.connections("voxd-twin");
    drop((first, second));
    // Starting over at 250 ms at each ConnAck, the two connect about 30 times in 8 s;
    // doubling (0.25, 0.5, 1, 2, 4 s each), about 10.
    assert!(connections >= 3, "the clients never fought: {connections} connections");
    assert!(connections <= 16, "{connections} connections in 8 s: the backoff started over at each ConnAck");
}

/// The default id is `voxd-<hostname>`, and `voxd wyoming` beside `voxd run` on the
/// same machine connects as that id with `-wyoming` (a configured id likewise): the
/// two stay connected side by side instead of throwing each other off.
#[test]
fn the_default_mqtt_client_id_is_unique_per_host_and_daemon() {
    use voxd::control::Daemon;
    let dir = tempdir();
    let broker = Broker::start(&dir);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host = host.trim();
    let _run = voxd::tools::mqtt::Mqtt::start(&mqtt_config(&broker, ""), vec![], Daemon::Run).unwrap().unwrap();
    let _wyoming = voxd::tools::mqtt::Mqtt::start(&mqtt_config(&broker, ""), vec![], Daemon::Wyoming).unwrap().unwrap();
    let _kitchen = voxd::tools::mqtt::Mqtt::start(&mqtt_config(&broker, "voxd-kitchen"), vec![], Daemon::Run).unwrap().unwrap();
    let _kitchen_wyoming = voxd::tools::mqtt::Mqtt::start(&mqtt_config(&broker, "voxd-kitchen"), vec![], Daemon::Wyoming).unwrap().unwrap();
    let ids = [format!("voxd-{host}"), format!("voxd-{host}-wyoming"), "voxd-kitchen".into(), "voxd-kitchen-wyoming".into()];
    wait_until("all four clients to connect", std::time::Duration::from_secs(20), || ids.iter().all(|id| broker.connections(id) >= 1));
    // Two clients with one id would be thrown off and redialled within a second or two.
    std::thread::sleep(std::time::Duration::from_secs(3));
    for id in &ids {
        assert_eq!(broker.connections(id), 1, "{id} connected once and stayed");
    }
}

/// Publishes as a client of its own, each message acknowledged by the broker before
/// `publish` returns.
struct Publisher {
    client: rumqttc::Client,
    acks: std::sync::mpsc::Receiver<()>,
}

impl Publisher {
    fn connect(broker: &Broker) -> Publisher {
        let mut options = rumqttc::MqttOptions::new("voxd-test-publisher", "127.0.0.1", broker.port);
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut connection) = rumqttc::Client::new(options, 16);
        let (tx, acks) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                        if tx.send(()).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
                }
            }
        });
        Publisher { client, acks }
    }

    fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        self.client.publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload).unwrap();
        self.acks.recv_timeout(std::time::Duration::from_secs(20)).expect("the broker acknowledged the publish");
    }
}

/// The states kept are bounded: 512 topics at most (a new one is then refused with
/// a reason), a state over rumqttc's 10 KiB default is read, and one over 64 KiB is
/// refused before it is read, the client redialling and reading on.
#[test]
fn mqtt_states_are_bounded_in_number_and_size() {
    use std::time::Duration;
    let dir = tempdir();
    let broker = Broker::start(&dir);
    let publisher = Publisher::connect(&broker);
    for i in 0..voxd::tools::mqtt::MAX_STATE_TOPICS {
        publisher.publish(&format!("home/t{i}/temperature"), format!("{i}"), true);
    }
    let mqtt = voxd::tools::mqtt::Mqtt::start(&mqtt_config(&broker, "voxd-states"), vec!["home/+/temperature".into()], voxd::control::Daemon::Run).unwrap().unwrap();
    let last = voxd::tools::mqtt::MAX_STATE_TOPICS - 1;
    // All the retained states arrive (their order is the broker's).
    wait_until("every retained state", Duration::from_secs(30), || (0..=last).all(|i| mqtt.state(&format!("home/t{i}/temperature"), Duration::ZERO).is_ok()));

    // A new topic is not kept; a kept one still changes.
    publisher.publish("home/new/temperature", "5", false);
    publisher.publish("home/t0/temperature", "after", false);
    wait_until("the kept topic to change", Duration::from_secs(20), || mqtt.state("home/t0/temperature", Duration::ZERO).is_ok_and(|s| s == "after"));
    let refused = mqtt.state("home/new/temperature", Duration::from_millis(100)).unwrap_err().to_string();
    assert_eq!(refused, "I keep the last message of 512 MQTT topics at most, and home/new/temperature is not one of them");

    // 32 KiB: over rumqttc's default, under voxd's.
    let big = "x".repeat(32 << 10);
    publisher.publish("home/t1/temperature", big.clone(), false);
    wait_until("the 32 KiB state", Duration::from_secs(20), || mqtt.state("home/t1/temperature", Duration::ZERO).is_ok_and(|s| s == big));
    // 100 KiB: refused unread; the connection drops and is redialled.
    publisher.publish("home/t2/temperature", "y".repeat(100 << 10), false);
    wait_until("the client to redial", Duration::from_secs(30), || broker.connections("voxd-states") == 2);
    wait_until("the client to be connected again", Duration::from_secs(30), || mqtt.connected());
    publisher.publish("home/t2/temperature", "later", false);
    wait_until("a state after the redial", Duration::from_secs(20), || mqtt.state("home/t2/temperature", Duration::ZERO).is_ok_and(|s| s == "later"));
}

#[test]
fn a_device_outside_the_allow_list_is_refused_and_never_touched() {
    let dir = tempdir();
    let ha = LocalHomeAssistant::start(TOKEN).unwrap();
    let (input, _) = conversation(&dir, "refuse", &[(0.5, "Please unlock the garage door.")], 4.0);
    let done = run_voxd(&dir, &config(&dir, Some(&ha.url()), None, &[LOCK]), &input, TOKEN);
    assert_eq!(ha.requests(), vec![], "nothing reached Home Assistant");
    let t = &done.turns[0];
    assert_eq!(t.tool_calls.len(), 1);
    assert!(!t.tool_calls[0].ok && t.tool_calls[0].error.as_deref() == Some("not allowed: lock.garage_door"), "{:?}", t.tool_calls);
    assert_eq!(t.reply, "Sorry, I'm not allowed to control the garage door.");
}

#[test]
fn a_tool_that_asks_first_runs_only_after_a_yes() {
    let dir = tempdir();
    let ha = LocalHomeAssistant::start(TOKEN).unwrap();
    // ("Please": tiny.en hears Piper's bare "Unlock…" as "Lock…".)
    let parts = [(0.5, "Please unlock the front door."), (5.0, "No."), (5.0, "Please unlock the front door."), (5.0, "Yes.")];
    let (input, _) = conversation(&dir, "confirm", &parts, 4.0);
    let done = run_voxd(&dir, &config(&dir, Some(&ha.url()), None, &[LOCK]), &input, TOKEN);
    let replies: Vec<&str> = done.turns.iter().map(|t| t.reply.as_str()).collect();
    assert_eq!(
        replies,
        vec!["Should I unlock a door: front door? Please say yes or no.", "Okay, I won't.", "Should I unlock a door: front door? Please say yes or no.", "The door is unlocked."],
        "transcripts: {:?}",
        done.turns.iter().map(|t| &t.transcript).collect::<Vec<_>>()
    );
    let requests = ha.requests();
    assert_eq!(requests.len(), 1, "one unlock, after the yes: {requests:?}");
    assert_eq!(requests[0].path, "/api/services/lock/unlock");
    assert!(done.turns[..3].iter().all(|t| t.tool_calls.is_empty()) && done.turns[3].tool_calls[0].ok);
}

#[test]
fn eval_tools_scores_the_test_model_in_every_home() {
    let dir = tempdir();
    let json = dir.path().join("eval.json");
    // The quick pass (a fifth of each home's requests) in CI; docs/tools-homes.md has
    // the whole evaluation's figures.
    let r = run_ok(&["eval-tools", "--quick", "--model", "qwen2.5-coder-0.5b-instruct", "--json", json.to_str().unwrap()]);
    for category in ["lights", "climate", "covers", "locks", "scenes", "state", "chitchat", "ambiguous", "unsafe", "overall"] {
        assert!(r.stdout.contains(category), "no {category} row:\n{}", r.stdout);
    }
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let homes = report["homes"].as_array().unwrap();
    let names: Vec<&str> = homes.iter().map(|h| h[0].as_str().unwrap()).collect();
    assert_eq!(names, ["tuned", "no-examples", "renamed", "mqtt-only", "62-entities"]);
    for home in homes {
        let (name, r) = (home[0].as_str().unwrap(), &home[1]);
        assert!(r["cases"].as_u64().unwrap() >= 3, "{name}");
        assert_eq!(r["grammar"], true);
        // The grammar makes every call well-formed JSON of a known tool with typed,
        // enumerated arguments; numbers out of range are the validator's (answered).
        assert!(r["valid_rate"].as_f64().unwrap() >= 0.95, "{name}: {r}");
    }
    // The gates take the worst home; over every request measured at 72 % (the
    // 62-entity home) with this 0.5B model, 84-100 % in the others; 86-100 % in the
    // quick pass.
    let worst = report["worst_call_accuracy"].as_f64().unwrap();
    assert!(worst >= 0.5 && homes.iter().all(|h| h[1]["call_accuracy"].as_f64().unwrap() >= worst), "{}", r.stdout);
    assert_eq!((report["invented_states"].as_u64(), report["leaks"].as_u64()), (Some(0), Some(0)), "{}", r.stdout);
    let free = run_ok(&["eval-tools", "--model", "qwen2.5-coder-0.5b-instruct", "--home", "mqtt-only", "--quick", "--no-grammar", "--json", json.to_str().unwrap()]);
    assert!(free.stdout.contains("grammar off") && free.stdout.contains("mqtt-only"), "{}", free.stdout);
    // The model's own call format: Qwen's template has `<tool_call>`; SmolLM2's none.
    let native = run_ok(&["eval-tools", "--model", "qwen2.5-coder-0.5b-instruct", "--home", "mqtt-only", "--call-format", "native", "--json", json.to_str().unwrap()]);
    assert!(native.stdout.contains("calls as hermes"), "{}", native.stdout);
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let home = &report["homes"][0][1];
    assert_eq!(home["call_format"], "hermes");
    // Framed calls parse as calls (the grammar holds the tags too), and are right:
    // measured at 100 % in this home (docs/tools-homes.md).
    assert!(home["valid_rate"].as_f64().unwrap() >= 0.95 && home["call_accuracy"].as_f64().unwrap() >= 0.8, "{}", native.stdout);
    assert_eq!((report["invented_states"].as_u64(), report["leaks"].as_u64()), (Some(0), Some(0)), "{}", native.stdout);
    let without = run_ok(&["eval-tools", "--model", "smollm2-135m-instruct", "--home", "mqtt-only", "--quick", "--call-format", "native"]);
    assert!(without.stdout.contains("calls as json"), "no format of its own: voxd's\n{}", without.stdout);
    run_fails_with(&["eval-tools", "--home", "castle"], &["--home \"castle\": no such home", "62-entities"]);
}

#[test]
fn a_bad_tool_config_reports_every_problem_with_its_place() {
    let dir = tempdir();
    let path = dir.path().join("voxd.toml");
    std::fs::write(
        &path,
        r#"[home_assistant]
url = "http://ha.local:8123"
token = "abc"

[[tool]]
name = "light_on"
description = "Turn a light on"
executor = "home_assistant"
parameters = { type = "object", properties = { brightness = { type = "integer", pattern = "x" } } }
reply = "Done with {colour}."

[[intent]]
pattern = "turn on (?P<x>.*"
tool = "no_such_tool"
"#,
    )
    .unwrap();
    let r = run_fails_with(&["check-config", path.to_str().unwrap()], &[]);
    for needle in [
        "home_assistant.token: secrets never go in the config file",
        "tool[0].service: is required for home_assistant tools",
        "tool[0].parameters: Home Assistant tools act on entities: declare an entity_id parameter",
        "tool[0].parameters: parameters.properties.brightness.pattern: unsupported schema keyword",
        "tool[0].allow: list the entities this tool may touch",
        "tool[0].reply: {colour} is not a parameter of this tool",
        "intent[0].pattern: not a regular expression",
        "intent[0].tool: \"no_such_tool\" is not a [[tool]]",
    ] {
        assert!(r.stderr.contains(needle), "missing {needle:?} in:\n{}", r.stderr);
    }
}

#[test]
fn state_questions_read_home_assistant_and_mqtt_and_webhooks_are_called() {
    let dir = tempdir();
    let ha = LocalHomeAssistant::start(TOKEN).unwrap();
    ha.set_state("light.kitchen", "off");
    let broker = Broker::start(&dir);
    // A retained temperature reading, there before voxd subscribes.
    let published = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-t", "home/garden/temperature", "-m", "14.5", "-r"])
        .status()
        .unwrap();
    assert!(published.success());
    let tools = format!(
        r#"
[[tool]]
name = "get_state"
description = "Read the state of a device"
executor = "home_assistant_state"
parameters = {{ type = "object", properties = {{ entity_id = {{ type = "string" }} }}, required = ["entity_id"] }}
allow = ["light.*"]
reply = "The kitchen light is {{state}}."

[[tool]]
name = "garden_temperature"
description = "Read the garden temperature"
executor = "mqtt_state"
topic = "home/garden/temperature"
reply = "It is {{state}} degrees in the garden."

[[tool]]
name = "doorbell"
description = "Ring a doorbell"
executor = "webhook"
url = "{url}/hook/{{bell}}"
parameters = {{ type = "object", properties = {{ bell = {{ type = "string" }} }}, required = ["bell"] }}
allow = ["{url}/hook/*"]
reply = "Ringing."

[[intent]]
pattern = "is the kitchen light on"
tool = "get_state"
arguments = {{ entity_id = "light.kitchen" }}

[[intent]]
pattern = "how warm is it in the garden"
tool = "garden_temperature"

[[intent]]
pattern = "ring the (?P<bell>front|back) bell"
tool = "doorbell"
arguments = {{ bell = "{{bell}}" }}
"#,
        url = ha.url()
    );
    let config = config(&dir, Some(&ha.url()), Some(broker.port), &[&tools]);
    let parts = [(0.5, "Is the kitchen light on?"), (4.0, "How warm is it in the garden?"), (4.0, "Ring the front bell.")];
    let (input, _) = conversation(&dir, "state", &parts, 4.0);
    let done = run_voxd(&dir, &config, &input, TOKEN);
    let replies: Vec<&str> = done.turns.iter().map(|t| t.reply.as_str()).collect();
    assert_eq!(replies, vec!["The kitchen light is off.", "It is 14.5 degrees in the garden.", "Ringing."], "{}", done.run.stderr);
    let requests = ha.requests();
    assert!(requests.iter().any(|r| r.method == "GET" && r.path == "/api/states/light.kitchen"), "{requests:?}");
    let hook = requests.iter().find(|r| r.path == "/hook/front").expect("the webhook was called");
    assert_eq!((hook.method.as_str(), serde_json::from_str::<serde_json::Value>(&hook.body).unwrap()), ("POST", serde_json::json!({ "bell": "front" })));
}

/// What a call would do as the agent makes it: refused by the allow-list (never run),
/// or run by the real executor.
fn attempt(toolbox: &voxd::tools::Toolbox, tool: &voxd::tools::ToolConfig, arguments: serde_json::Value) -> Result<voxd::tools::Outcome, String> {
    let call = voxd::tools::ToolCall { name: tool.name.clone(), arguments };
    tool.permits(&call).map_err(|e| e.to_string())?;
    Ok(toolbox.run(tool, &call))
}

/// The bypasses found from outside, each tried on the real executors against Home
/// Assistant (loopback) and mosquitto; what the servers received is what counts.
#[test]
fn allow_lists_and_templates_cannot_be_talked_around() {
    let dir = tempdir();
    let ha = LocalHomeAssistant::start(TOKEN).unwrap();
    ha.set_state("lock.front_door", "unlocked");
    ha.set_state("sensor.hall", "21");
    let broker = Broker::start(&dir);
    let text = format!(
        r#"
[home_assistant]
url = "{url}"
token_env = "{TOKEN_ENV}"
[mqtt]
host = "127.0.0.1"
port = {port}
client_id = "voxd-bypass-{port}"

[[tool]]
name = "read_sensor"
description = "Read a sensor"
executor = "home_assistant_state"
parameters = {{ type = "object", properties = {{ entity_id = {{ type = "string" }} }}, required = ["entity_id"] }}
allow = ["sensor.*"]

[[tool]]
name = "garden_switch_on"
description = "Switch on a garden switch"
executor = "home_assistant"
service = "switch.turn_on"
parameters = {{ type = "object", properties = {{ entity_id = {{ type = "string" }} }}, required = ["entity_id"] }}
allow = ["switch.garden_*"]

[[tool]]
name = "plug"
description = "Switch a plug"
executor = "mqtt"
topic = "home/{{room}}/plug/set"
payload = '{{"state": "{{state}}"}}'
parameters = {{ type = "object", properties = {{ room = {{ type = "string" }}, state = {{ type = "string" }} }}, required = ["room", "state"] }}
allow = ["home/+/plug/set"]

[[tool]]
name = "hook"
description = "Call a hook"
executor = "webhook"
url = "{url}/hook/{{name}}"
parameters = {{ type = "object", properties = {{ name = {{ type = "string" }} }}, required = ["name"] }}
allow = ["{url}/hook/*"]
"#,
        url = ha.url(),
        port = broker.port
    );
    let config = voxd::config::Config::parse(&text, Path::new("bypass.toml")).unwrap_or_else(|e| panic!("{e}"));
    std::env::set_var(TOKEN_ENV, TOKEN);
    let toolbox = voxd::tools::Toolbox::start(&config, voxd::control::Daemon::Run).unwrap();
    let tool = |name: &str| config.tool.iter().find(|t| t.name == name).unwrap().clone();
    let watch = broker.watch("home/#");
    // The MQTT client connects in the background.
    wait_until("the MQTT connection", std::time::Duration::from_secs(20), || attempt(&toolbox, &tool("plug"), serde_json::json!({ "room": "probe", "state": "x" })).is_ok_and(|o| o.ok));

    // A sensor pattern does not reach the lock through the URL's path.
    let climb = attempt(&toolbox, &tool("read_sensor"), serde_json::json!({ "entity_id": "sensor.x/../lock.front_door" }));
    assert!(climb.as_ref().is_err_and(|e| e.contains("may not touch sensor.x/../lock.front_door")), "{climb:?}");
    // Nor does a list smuggle a second entity past the garden pattern.
    let list = attempt(&toolbox, &tool("garden_switch_on"), serde_json::json!({ "entity_id": "switch.garden_x, switch.alarm_siren" }));
    assert!(list.is_err(), "{list:?}");
    let list = attempt(&toolbox, &tool("garden_switch_on"), serde_json::json!({ "entity_id": ["switch.garden_x", "switch.alarm_siren"] }));
    assert!(list.is_err(), "{list:?}");
    // What is allowed still works, and is all Home Assistant ever saw.
    assert!(attempt(&toolbox, &tool("read_sensor"), serde_json::json!({ "entity_id": "sensor.hall" })).unwrap().ok);
    let paths: Vec<String> = ha.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, vec!["/api/states/sensor.hall".to_string()], "nothing else reached Home Assistant");

    // A value cannot add JSON fields to a payload, nor levels or wildcards to a topic.
    let injected = attempt(&toolbox, &tool("plug"), serde_json::json!({ "room": "kitchen", "state": "ON\",\"child_lock\":\"UNLOCK" })).unwrap();
    assert!(injected.ok, "{injected:?}");
    for room in ["kitchen/../garage", "+", "#"] {
        assert!(attempt(&toolbox, &tool("plug"), serde_json::json!({ "room": room, "state": "ON" })).is_err(), "topic value {room:?}");
    }
    let received = watch.received();
    let kitchen: Vec<&String> = received.iter().filter(|l| l.starts_with("home/kitchen/")).collect();
    assert_eq!(kitchen.len(), 1, "{received:?}");
    let payload: serde_json::Value = serde_json::from_str(kitchen[0].strip_prefix("home/kitchen/plug/set ").unwrap()).unwrap();
    assert_eq!(payload, serde_json::json!({ "state": "ON\",\"child_lock\":\"UNLOCK" }), "one field, holding the whole value");
    assert!(received.iter().all(|l| l.starts_with("home/probe/") || l.starts_with("home/kitchen/")), "no other topic was published: {received:?}");

    // A URL value stays one path segment under the allowed hook.
    assert!(attempt(&toolbox, &tool("hook"), serde_json::json!({ "name": "../api/services/lock/unlock" })).unwrap().ok, "called, as one hook's name");
    let hooks: Vec<String> = ha.requests().iter().map(|r| r.path.clone()).filter(|p| !p.starts_with("/api/states/")).collect();
    assert_eq!(hooks, vec!["/hook/..%2Fapi%2Fservices%2Flock%2Funlock".to_string()], "the server saw one encoded segment, not a path to the lock");
    std::env::remove_var(TOKEN_ENV);
}

/// Home Assistant and a webhook that answer without end: 64 KiB is read and no more,
/// and the call fails saying why, before its timeout.
#[test]
fn home_assistant_and_webhook_answers_without_end_are_refused_after_64_kib() {
    let dir = tempdir();
    let ha = LocalHomeAssistant::start(TOKEN).unwrap();
    ha.set_fault("sensor.endless", Behaviour::Endless);
    ha.set_fault("light.endless", Behaviour::Endless);
    ha.set_fault("/hook/endless", Behaviour::Endless);
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let text = format!(
        r#"
[home_assistant]
url = "{url}"
token_file = {token:?}

[[tool]]
name = "read_sensor"
description = "Read a sensor"
executor = "home_assistant_state"
parameters = {{ type = "object", properties = {{ entity_id = {{ type = "string" }} }}, required = ["entity_id"] }}
allow = ["sensor.*"]

[[tool]]
name = "light_on"
description = "Turn a light on"
executor = "home_assistant"
service = "light.turn_on"
parameters = {{ type = "object", properties = {{ entity_id = {{ type = "string" }} }}, required = ["entity_id"] }}
allow = ["light.*"]

[[tool]]
name = "hook"
description = "Call a hook"
executor = "webhook"
url = "{url}/hook/{{name}}"
method = "GET"
parameters = {{ type = "object", properties = {{ name = {{ type = "string" }} }}, required = ["name"] }}
allow = ["{url}/hook/*"]
"#,
        // By name: the lookup runs on its helper thread (ureq's own would not time out).
        url = ha.url().replace("127.0.0.1", "localhost"),
        token = token.to_str().unwrap()
    );
    let config = voxd::config::Config::parse(&text, Path::new("endless.toml")).unwrap_or_else(|e| panic!("{e}"));
    let toolbox = voxd::tools::Toolbox::start(&config, voxd::control::Daemon::Run).unwrap();
    let tool = |name: &str| config.tool.iter().find(|t| t.name == name).unwrap().clone();
    for (name, arguments, who) in [
        ("read_sensor", serde_json::json!({ "entity_id": "sensor.endless" }), "Home Assistant"),
        ("light_on", serde_json::json!({ "entity_id": "light.endless" }), "Home Assistant"),
        ("hook", serde_json::json!({ "name": "endless" }), "the webhook"),
    ] {
        let outcome = attempt(&toolbox, &tool(name), arguments).unwrap();
        assert_eq!(outcome.error.as_deref(), Some(format!("{who} sent an answer over 64 kilobytes, too long to read").as_str()), "{name}: {outcome:?}");
        // Not at the 3 s timeout: at 64 KiB (the margin is for a loaded machine).
        assert!(outcome.ms < 2500.0, "{name} took {} ms", outcome.ms);
    }
    // What the server got out: 64 KiB read, and what loopback's socket buffers hold
    // (a few MiB), for each of the three; without the cap it is 256 MiB each.
    let sent = ha.endless_bytes_sent();
    assert!(sent < 3 * (16 << 20), "{} MiB sent", sent >> 20);
    // Well-behaved answers are still read.
    ha.set_state("sensor.hall", "21");
    assert_eq!(attempt(&toolbox, &tool("read_sensor"), serde_json::json!({ "entity_id": "sensor.hall" })).unwrap().result, "21");
}

/// Confirmation is a short yes on its own, within the window after the question was
/// heard, for a question that was heard: typed turns against a running voxd.
#[test]
fn a_confirmation_cannot_be_talked_around() {
    use crate::control::ctl_ok;
    use crate::live::{Daemon, Pulse};
    use std::time::Duration;
    let dir = tempdir();
    let pulse = Pulse::start(&dir);
    let ha = LocalHomeAssistant::start(TOKEN).unwrap();
    let socket = dir.path().join("control.sock");
    let extra = format!(
        "[llm]\nmodel = \"qwen2.5-coder-0.5b-instruct\"\n[home_assistant]\nurl = \"{}\"\ntoken_env = \"{TOKEN_ENV}\"\n[service]\ncontrol_socket = {:?}\n[tools]\nconfirm_within_s = 2.0\n{LOCK}",
        ha.url(),
        socket.to_str().unwrap()
    );
    let daemon = Daemon::start_with(&pulse, &dir, &extra, &[(TOKEN_ENV, TOKEN)]);
    let mut asked = 0;
    let mut ask = |text: &str| {
        ctl_ok(&socket, &["ask", text]);
        asked += 1;
        daemon.wait_for_turns(asked, Duration::from_secs(90)).pop().unwrap()
    };
    let question = "Should I unlock a door: front door? Please say yes or no.";
    assert_eq!(ask("Please unlock the front door.").reply, question);
    // A question that starts with a yes-word is a question.
    ask("Sure, what time is it?");
    assert_eq!(ha.requests(), vec![], "\"sure, what time is it\" unlocked the door");
    // A yes after the window is no answer.
    assert_eq!(ask("Please unlock the front door.").reply, question);
    std::thread::sleep(Duration::from_secs(3));
    ask("Yes.");
    assert_eq!(ha.requests(), vec![], "a yes 3 s after a 2 s window unlocked the door");
    // A question that was cut off was never put.
    ctl_ok(&socket, &["ask", "Please unlock the front door."]);
    asked += 1;
    wait_until("the question to be spoken", Duration::from_secs(60), || ctl_ok(&socket, &["status"]).starts_with("speaking"));
    ctl_ok(&socket, &["cancel"]);
    daemon.wait_for_turns(asked, Duration::from_secs(30));
    let mut ask = |text: &str| {
        ctl_ok(&socket, &["ask", text]);
        asked += 1;
        daemon.wait_for_turns(asked, Duration::from_secs(90)).pop().unwrap()
    };
    ask("Yes.");
    assert_eq!(ha.requests(), vec![], "a yes to a cancelled question unlocked the door");
    // And the honest way still works.
    assert_eq!(ask("Please unlock the front door.").reply, question);
    assert_eq!(ask("Yes.").reply, "The door is unlocked.");
    let requests = ha.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].path, "/api/services/lock/unlock");
    daemon.stop();
}

/// A home written from the README's `[[tool]]` reference, with no hand-written
/// `examples` anywhere: the four spoken commands that used to be read aloud as JSON or
/// answered with invented states now do the right thing, against Home Assistant.
#[test]
fn a_home_written_from_the_readme_without_examples_does_what_is_said() {
    let dir = tempdir();
    let ha = LocalHomeAssistant::start(TOKEN).unwrap();
    ha.set_state("lock.front_door", "unlocked");
    let home = std::fs::read_to_string(repo_data("readme-home.toml")).unwrap();
    let config = config(&dir, Some(&ha.url()), None, &[&home]);
    let parts = [(0.5, "Turn off the living room lights."), (4.0, "Set the thermostat to twenty one degrees."), (4.0, "Is the front door locked?"), (4.0, "Open the garage door.")];
    let (input, _) = conversation(&dir, "readme", &parts, 4.0);
    let done = run_voxd(&dir, &config, &input, TOKEN);
    let (turns, requests) = (&done.turns, ha.requests());
    assert_eq!(turns.len(), 4, "{}", done.run.stderr);
    let replies: Vec<&str> = turns.iter().map(|t| t.reply.as_str()).collect();
    let heard: Vec<&str> = turns.iter().map(|t| t.transcript.as_str()).collect();
    let bodies: Vec<(String, serde_json::Value)> = requests.iter().map(|r| (format!("{} {}", r.method, r.path), serde_json::from_str(&r.body).unwrap_or_default())).collect();
    let sent = |what: &str| bodies.iter().find(|(w, _)| w == what).map(|(_, b)| b.clone());
    // Nothing read aloud is JSON or a tool's name.
    for t in turns {
        assert!(!t.spoken.contains('{') && !t.spoken.contains("light_turn") && !t.spoken.contains("get_state"), "{t:?}");
    }
    // 1. The living room lights go off.
    assert_eq!(sent("POST /api/services/light/turn_off"), Some(serde_json::json!({ "entity_id": "light.living_room" })), "heard {heard:?}, said {replies:?}, HA got {bodies:?}");
    // 2. The thermostat is set to what was said.
    let climate = sent("POST /api/services/climate/set_temperature").unwrap_or_else(|| panic!("heard {heard:?}, said {replies:?}, HA got {bodies:?}"));
    assert_eq!((climate["entity_id"].as_str(), climate["temperature"].as_f64()), (Some("climate.living_room"), Some(21.0)), "{climate}");
    // 3. The lock's state is read, and the reply says what was read.
    assert!(requests.iter().any(|r| r.method == "GET" && r.path == "/api/states/lock.front_door"), "no read: heard {heard:?}, said {replies:?}, HA got {bodies:?}");
    assert_eq!(turns[2].reply, "It is unlocked.");
    // 4. The garage asks first: nothing is opened.
    assert!(sent("POST /api/services/cover/open_cover").is_none(), "the garage opened without a yes");
    assert!(turns[3].reply.starts_with("Should I open the garage door") && turns[3].reply.ends_with("Please say yes or no."), "{:?}", turns[3].reply);
}

/// `[home_assistant] expose`: the devices come from Home Assistant with their friendly
/// names, are kept for a start while it is down, and are followed while voxd runs.
#[test]
fn home_assistant_devices_are_known_by_name_kept_and_followed() {
    use crate::control::ctl_ok;
    use crate::live::{Daemon, Pulse};
    use std::time::Duration;
    use voxd::tools::home_assistant;
    let dir = tempdir();
    let ha = LocalHomeAssistant::start(TOKEN).unwrap();
    ha.add_entity("light.lr_lamp_1", "off", "Reading Lamp");
    ha.add_entity("light.kitchen", "on", "Kitchen");
    ha.add_entity("lock.front_door", "locked", "Front Door");
    ha.add_entity("person.anna", "home", "Anna");

    // Read at start, only what `expose` names; kept for a start while HA is down.
    let cache = dir.path().join("cache/home-assistant-states.json");
    let mut config = voxd::config::HomeAssistantConfig { url: ha.url(), token_env: TOKEN_ENV.into(), expose: vec!["light.*".into(), "lock.front_door".into()], ..Default::default() };
    std::env::set_var(TOKEN_ENV, TOKEN);
    let home = home_assistant::discover(&config, &cache);
    assert_eq!(home.entities, ["light.kitchen", "light.lr_lamp_1", "lock.front_door"]);
    assert_eq!(home.names.get("light.lr_lamp_1").map(String::as_str), Some("Reading Lamp"));
    config.url = format!("http://127.0.0.1:{}", free_port());
    assert_eq!(home_assistant::discover(&config, &cache), home, "the list kept from before");

    // Running: "the reading lamp" is light.lr_lamp_1 (no tool names it), and a lamp
    // added while voxd runs is known once the list is read again.
    let pulse = Pulse::start(&dir);
    let socket = dir.path().join("control.sock");
    let extra = format!(
        "[llm]\nmodel = \"qwen2.5-coder-0.5b-instruct\"\n[home_assistant]\nurl = \"{}\"\ntoken_env = \"{TOKEN_ENV}\"\nexpose = [\"light.*\"]\nrefresh_s = 10.0\n[service]\ncontrol_socket = {:?}\n{}",
        ha.url(),
        socket.to_str().unwrap(),
        r#"
[[tool]]
name = "light_turn_on"
description = "Turn a light on"
executor = "home_assistant"
service = "light.turn_on"
parameters = { type = "object", properties = { entity_id = { type = "string" } }, required = ["entity_id"] }
allow = ["light.*"]
reply = "Done."
"#
    );
    let cache_dir = dir.path().join("daemon-cache");
    let mut daemon = Daemon::start_with(&pulse, &dir, &extra, &[(TOKEN_ENV, TOKEN), ("VOXD_CACHE_DIR", cache_dir.to_str().unwrap())]);
    let turned_on = || ha.requests().into_iter().filter(|r| r.path == "/api/services/light/turn_on").map(|r| serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["entity_id"].clone()).collect::<Vec<_>>();
    ctl_ok(&socket, &["ask", "Turn on the reading lamp."]);
    let first = daemon.wait_for_turns(1, Duration::from_secs(90)).pop().unwrap();
    assert_eq!(turned_on(), ["light.lr_lamp_1"], "{first:?}");
    assert!(cache_dir.join("home-assistant-states.json").exists());
    ha.add_entity("light.porch_2", "off", "Porch Light");
    daemon.wait_for_stderr("the devices changed (3 exposed, 2 before)", Duration::from_secs(60));
    ctl_ok(&socket, &["ask", "Turn on the porch light."]);
    let second = daemon.wait_for_turns(2, Duration::from_secs(90)).pop().unwrap();
    assert_eq!(turned_on(), ["light.lr_lamp_1", "light.porch_2"], "{second:?}");
    daemon.stop();
}
