//! Running as a service: the unit files, systemd's notify protocol (played by the
//! test), and the latency report.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::live::{question, Daemon, Pulse};
use crate::util::*;

/// The unit files with the binary where this build put it (their own paths are the
/// installed ones).
fn unit(dir: &tempfile::TempDir, name: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd").join(name)).unwrap();
    let bin = env!("CARGO_BIN_EXE_voxd");
    let path = dir.path().join(name);
    std::fs::write(&path, text.replace("/usr/local/bin/voxd", bin).replace("%h/.local/bin/voxd", bin)).unwrap();
    path
}

#[test]
fn the_unit_files_pass_systemd_analyze_verify() {
    let dir = tempdir();
    let system = std::process::Command::new("systemd-analyze").arg("verify").arg(unit(&dir, "voxd.service")).output().expect("systemd-analyze runs (apt package systemd)");
    assert!(system.status.success() && system.stderr.is_empty(), "voxd.service: {}", String::from_utf8_lossy(&system.stderr));
    let wyoming = std::process::Command::new("systemd-analyze").arg("verify").arg(unit(&dir, "voxd-wyoming.service")).output().unwrap();
    assert!(wyoming.status.success() && wyoming.stderr.is_empty(), "voxd-wyoming.service: {}", String::from_utf8_lossy(&wyoming.stderr));
    let runtime = dir.path().join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    let user = std::process::Command::new("systemd-analyze").args(["verify", "--user"]).arg(unit(&dir, "voxd-user.service")).env("XDG_RUNTIME_DIR", &runtime).output().unwrap();
    assert!(user.status.success() && user.stderr.is_empty(), "voxd-user.service: {}", String::from_utf8_lossy(&user.stderr));
}

/// A unit file's value for `key` (the last one set, as systemd reads it).
fn setting(text: &str, key: &str) -> Option<String> {
    text.lines().filter_map(|l| l.strip_prefix(key)?.strip_prefix('=')).last().map(str::to_string)
}

#[test]
fn the_units_stop_restarting_a_broken_install_fail_calls_with_eperm_and_take_the_token_as_a_credential() {
    let read = |name: &str| std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd").join(name)).unwrap();
    let (system, user) = (read("voxd.service"), read("voxd-user.service"));
    for (name, text) in [("voxd.service", &system), ("voxd-user.service", &user)] {
        // Restart=on-failure with no limit reloads the models every RestartSec, forever.
        assert_eq!(setting(text, "Restart").as_deref(), Some("on-failure"), "{name}");
        let burst: u32 = setting(text, "StartLimitBurst").unwrap_or_else(|| panic!("{name}: no StartLimitBurst=")).parse().unwrap();
        let interval: u32 = setting(text, "StartLimitIntervalSec").unwrap_or_else(|| panic!("{name}: no StartLimitIntervalSec=")).parse().unwrap();
        let restart: u32 = setting(text, "RestartSec").unwrap().parse().unwrap();
        assert!(burst >= 2 && interval > burst * restart, "{name}: {burst} starts in {interval} s never trips with RestartSec={restart}");
        assert_eq!(setting(text, "SystemCallErrorNumber").as_deref(), Some("EPERM"), "{name}");
        assert!(setting(text, "SystemCallFilter").is_some(), "{name}: SystemCallErrorNumber= needs a filter");
    }
    assert_eq!(setting(&system, "LoadCredential").as_deref(), Some("hass_token"), "the token from the credential store, missing or not");
    // A fresh account may not have the state and cache directories yet: optional.
    let paths = setting(&user, "ReadWritePaths").unwrap();
    for p in paths.split_whitespace() {
        assert!(p.starts_with('-') || p == "%t", "voxd-user.service: {p} must exist or the unit fails to start; prefix it with '-'");
    }
}

/// What systemd would receive on its notify socket, with when.
struct ServiceManager {
    messages: Arc<Mutex<Vec<(Instant, String)>>>,
    path: std::path::PathBuf,
}

impl ServiceManager {
    fn listen(dir: &tempfile::TempDir) -> ServiceManager {
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let seen = messages.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                seen.lock().unwrap().push((Instant::now(), String::from_utf8_lossy(&buf[..n]).into_owned()));
            }
        });
        ServiceManager { messages, path }
    }

    fn received(&self, prefix: &str) -> Vec<Instant> {
        self.messages.lock().unwrap().iter().filter(|(_, m)| m.lines().any(|l| l.starts_with(prefix))).map(|(t, _)| *t).collect()
    }
}

#[test]
fn systemd_hears_ready_after_loading_watchdog_pings_while_listening_and_stopping_on_sigterm() {
    let dir = tempdir();
    let pulse = Pulse::start(&dir);
    let asked = question(&dir, "q", "What is the capital of France?");
    let manager = ServiceManager::listen(&dir);
    let started = Instant::now();
    let mut voxd = Daemon::start_with(&pulse, &dir, "", &[("NOTIFY_SOCKET", manager.path.to_str().unwrap()), ("WATCHDOG_USEC", "1000000")]);
    let listening = Instant::now();

    // READY once, after the models were loaded (it took a while) and not before.
    wait_until("READY", Duration::from_secs(20), || !manager.received("READY=1").is_empty());
    std::thread::sleep(Duration::from_millis(200)); // a second READY would come at once
    let ready = manager.received("READY=1");
    assert_eq!(ready.len(), 1, "{:?}", manager.messages.lock().unwrap());
    assert!(voxd.stderr().contains("engines warmed up"), "{}", voxd.stderr());
    assert!(manager.messages.lock().unwrap()[0].1.starts_with("READY=1"), "READY is the first word: {:?}", manager.messages.lock().unwrap());
    assert!(ready[0] > started + Duration::from_millis(100), "READY came before the engines could have loaded");

    // WATCHDOG at half the interval while audio flows: 6 pings in 3 s. Waited for
    // rather than counted in a fixed window, so a loaded machine that oversleeps a
    // round does not fail the test; a watchdog that is not fed never gets there.
    let pings = || manager.received("WATCHDOG=1").into_iter().filter(|t| *t > listening).count();
    wait_until("4 watchdog pings", Duration::from_secs(20), || pings() >= 4);

    // SIGTERM with a turn in flight: STOPPING, exit 0, and the turn in the log.
    pulse.say(&asked);
    voxd.wait_for_stderr("heard:", Duration::from_secs(30));
    let log = voxd.log.clone();
    voxd.stop();
    assert_eq!(manager.received("STOPPING=1").len(), 1, "{:?}", manager.messages.lock().unwrap());
    let turns = turns(&log);
    assert_eq!(turns.len(), 1, "the turn in flight at SIGTERM is logged");
    assert!(turns[0].transcript.to_lowercase().contains("capital of france"), "{:?}", turns[0]);
}

/// A microphone missing at start: voxd does not exit (under systemd that would be a
/// restart reloading every model, again and again) but waits for it — READY, the
/// watchdog fed while it waits, said once and then at growing intervals — and once
/// its source appears, a question played into it is answered. `voxd doctor` says it
/// is missing and that `voxd run` waits for it.
#[test]
fn a_microphone_missing_at_start_is_waited_for_with_the_watchdog_fed_and_then_heard() {
    let dir = tempdir();
    let pulse = Pulse::start(&dir);
    let asked = question(&dir, "q", "What is the capital of France?");
    let config = "[audio]\ninput_device = \"pulseaudio:late.monitor\"\n";

    let checked = deterministic_config(&dir, config);
    let mut doctor = voxd();
    pulse.isolate_command(&mut doctor);
    let r = run_cmd(doctor.args(["--config", checked.to_str().unwrap(), "doctor"]));
    assert!(r.stdout.contains("warn  microphone") && r.stdout.contains("\"pulseaudio:late.monitor\"") && r.stdout.contains("`voxd run` waits for it"), "{}", r.stdout);
    assert!(r.stdout.contains("ok    speaker"), "{}", r.stdout);

    let manager = ServiceManager::listen(&dir);
    let mut voxd = Daemon::start_with(&pulse, &dir, config, &[("NOTIFY_SOCKET", manager.path.to_str().unwrap()), ("WATCHDOG_USEC", "1000000")]);
    let waiting = Instant::now();
    assert!(voxd.stderr().contains("microphone: pulseaudio:late.monitor cannot be opened"), "{}", voxd.stderr());
    assert!(voxd.stderr().contains("listening on pulseaudio:late.monitor (not there yet: waiting for it)"), "{}", voxd.stderr());
    wait_until("READY", Duration::from_secs(20), || !manager.received("READY=1").is_empty());
    // Still missing 10 s on: said again, once, though it was tried several times.
    voxd.wait_for_stderr("microphone: cannot be opened (for ", Duration::from_secs(40));
    assert_eq!(voxd.stderr().matches("cannot be opened").count(), 2, "said once, then after 10 s: {}", voxd.stderr());
    let pings = manager.received("WATCHDOG=1").into_iter().filter(|t| *t > waiting).count();
    assert!(pings >= 4, "the watchdog is fed while voxd waits for its microphone ({pings} pings)");

    pulse.pactl(&["load-module", "module-null-sink", "sink_name=late"]);
    voxd.wait_for_stderr("microphone: opened pulseaudio:late.monitor", Duration::from_secs(30));
    pulse.say_into("late", &asked);
    let turns = voxd.wait_for_turns(1, Duration::from_secs(60));
    voxd.stop();
    assert!(turns[0].transcript.to_lowercase().contains("capital of france"), "{:?}", turns[0]);
    assert!(!turns[0].reply.is_empty(), "{:?}", turns[0]);
    assert_eq!(turns[0].counters.device_reopens, 0, "opening late is not a reopen: {:?}", turns[0].counters);
}

/// A turn record with the marks of a turn whose round trip is `rt` ms, its stages
/// in fixed proportions, and `config` as its configuration id.
fn record(turn: u64, rt: f64, config: &str) -> String {
    let (endpoint, asr, first_token, sentence, tts) = (300.0, 0.4 * rt, 0.5 * rt, 0.6 * rt, rt - 5.0);
    serde_json::json!({
        "turn": turn, "ts_unix_ms": 1_700_000_000_000u64 + turn, "clock": "realtime", "config": config,
        "speech_end_s": turn as f64 * 5.0, "audio_s": 1.5,
        "marks": { "endpoint": endpoint, "asr_done": asr, "llm_first_token": first_token, "first_sentence": sentence, "tts_first_audio": tts, "first_audio": rt, "llm_done": rt, "turn_done": rt + 1000.0 },
        "round_trip_ms": rt, "transcript": "hello", "speculative": true, "reply": "hi", "spoken": "hi", "cancelled": false,
        "asr": { "ms": 100.0, "audio_ctx": 512, "speculative_hit": true, "capped": false },
        "llm": { "prompt_tokens": 10, "cached_tokens": 5, "evaluated_tokens": 5, "generated_tokens": 3, "prompt_tok_s": 100.0, "generate_tok_s": 50.0, "history_turns": 0 },
        "models": { "asr": "whisper-tiny.en", "llm": "smollm2-135m-instruct", "tts": "en_US-joe-medium" },
        "tool_calls": [], "counters": {
            "capture_overflows": 0, "vad_drops": 0, "utterances_dropped": 0, "playback_underruns": 0, "telemetry_drops": 0,
            "speculations_abandoned": 0, "xruns": 0, "device_reopens": 0
        },
        "queues": { "llm_to_tts": 0, "tts_to_playback": 0 }
    })
    .to_string()
}

fn write_log(dir: &tempfile::TempDir, name: &str, lines: &[String]) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// The report's row `name` as its three numbers.
fn row(report: &str, name: &str) -> Vec<String> {
    let line = report.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no row {name:?} in\n{report}"));
    line[name.len()..].split_whitespace().map(String::from).collect()
}

#[test]
fn the_latency_report_has_the_hand_computed_percentiles_groups_and_compares() {
    let dir = tempdir();
    // Round trips 400, 410, … 590 ms (20 turns): by nearest rank p50 = 490 (10th),
    // p90 = 570 (18th), p99 = 590 (20th). Hangover: always 300.
    let before: Vec<String> = (0..20).map(|i| record(i + 1, 400.0 + 10.0 * i as f64, "aaaa1111")).collect();
    let log = write_log(&dir, "before.jsonl", &before);
    let r = run_ok(&["latency", "report", log.to_str().unwrap()]);
    assert!(r.stdout.contains("20 turns: 20 answered, 0 cancelled"), "{}", r.stdout);
    assert_eq!(row(&r.stdout, "round trip (speech end → first audio)"), ["490", "570", "590"]);
    assert_eq!(row(&r.stdout, "hangover (speech end → endpoint): own"), ["300", "300", "300"]);
    // tts's own time: first audio ready − first sentence = (rt − 5) − 0.6 rt = 0.4 rt − 5.
    assert_eq!(row(&r.stdout, "tts (→ first audio ready): own"), ["191", "223", "231"]);
    assert!(r.stdout.contains("round trip distribution"), "{}", r.stdout);

    // Two configurations in one log: two groups.
    let mut mixed = before.clone();
    mixed.push(record(21, 900.0, "bbbb2222"));
    let both = write_log(&dir, "both.jsonl", &mixed);
    let r = run_ok(&["latency", "report", both.to_str().unwrap()]);
    assert!(r.stdout.contains("config aaaa1111") && r.stdout.contains("config bbbb2222"), "{}", r.stdout);

    // After tuning: every round trip 100 ms shorter.
    let after: Vec<String> = (0..20).map(|i| record(i + 1, 300.0 + 10.0 * i as f64, "cccc3333")).collect();
    let after = write_log(&dir, "after.jsonl", &after);
    let plot = dir.path().join("plot.svg");
    let r = run_ok(&["latency", "report", "--compare", log.to_str().unwrap(), after.to_str().unwrap(), "--plot", plot.to_str().unwrap()]);
    assert_eq!(row(&r.stdout, "round trip (speech end → first audio)"), ["490→390", "-100", "570→470", "-100", "590→490", "-100"]);
    assert!(r.stdout.contains("round trip p50: 490 → 390 ms (-100 ms, 1.26x faster)"), "{}", r.stdout);

    // The plot is well-formed SVG with a bar segment per stage per turn.
    let svg = std::fs::read_to_string(&plot).unwrap();
    let parsed = std::process::Command::new("python3").args(["-c", "import sys, xml.etree.ElementTree as E; r = E.parse(sys.argv[1]).getroot(); print(r.tag)"]).arg(&plot).output().unwrap();
    assert!(parsed.status.success() && String::from_utf8_lossy(&parsed.stdout).trim() == "{http://www.w3.org/2000/svg}svg", "{}", String::from_utf8_lossy(&parsed.stderr));
    assert_eq!(svg.matches("<title>turn ").count(), 40 * 6, "40 turns × 6 stages");

    // Lines that are not records — garbage in the middle, a last line torn by a
    // crash — are skipped and counted, the first named with its place; the rest
    // of the log is reported.
    let bad = dir.path().join("bad.jsonl");
    let torn = &before[2][..before[2].len() / 2];
    std::fs::write(&bad, format!("{}\nnot json\n{}\n{{\"turn\": \"x\"}}\n{torn}", before[0], before[1])).unwrap();
    let r = run_ok(&["latency", "report", bad.to_str().unwrap()]);
    assert!(r.stdout.contains("2 turns: 2 answered"), "{}", r.stdout);
    assert!(r.stderr.contains("bad.jsonl: skipped 3 lines that are not a voxd turn record; the first at ") && r.stderr.contains("bad.jsonl:2 ("), "{}", r.stderr);
    // A format that is not drawn is said so.
    run_fails_with(&["latency", "report", log.to_str().unwrap(), "--plot", dir.path().join("p.bmp").to_str().unwrap()], &[".bmp", ".svg or .png"]);

    // PNG: a real image of the SVG's size (900 px wide), not an empty one.
    let png = dir.path().join("plot.png");
    run_ok(&["latency", "report", "--compare", log.to_str().unwrap(), after.to_str().unwrap(), "--plot", png.to_str().unwrap()]);
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR");
    assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), 900, "the plot's width");
    assert!(bytes.len() > 10_000, "{} bytes: the bars and labels are drawn", bytes.len());
}

/// The soak harness, short: turn after turn (typed, and some spoken) with the
/// history on, each logged once, each answered in full. `scripts/soak --turns 1000`
/// is the long run whose figures are in the README.
#[test]
fn a_short_soak_logs_every_turn_once_and_answers_each_in_full() {
    let dir = tempdir();
    let figures = dir.path().join("soak.json");
    let out = std::process::Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/soak"))
        .args(["--turns", "24", "--spoken-every", "6", "--voxd", env!("CARGO_BIN_EXE_voxd"), "--json", figures.to_str().unwrap()])
        .output()
        .expect("python3 runs scripts/soak");
    assert!(out.status.success(), "soak failed:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let f: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&figures).unwrap()).unwrap();
    assert_eq!((f["turns"].as_u64(), f["records"].as_u64()), (Some(24), Some(24)), "{f}");
    assert_eq!(f["spoken"], 4, "every sixth turn spoken into the microphone: {f}");
    assert!(f["history_turns_max"].as_u64().unwrap() >= 2, "the history was on: {f}");
    assert_eq!(f["not_answered_in_full"], serde_json::json!([]), "{f}");
}
