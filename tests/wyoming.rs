//! The Wyoming server driven by the protocol's reference client (PyPI `wyoming`
//! 1.10.2, installed by `./scripts/setup` for the tests), as Home Assistant drives it:
//! describe, transcription of audio in several formats, synthesis whole and streamed
//! (heard back by Whisper), wake words in a satellite's stream, conversations with
//! voxd's agent calling tools on a loopback Home Assistant, a full queue, and events
//! that break the protocol.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::util::*;

/// `voxd wyoming` on a loopback port, stopped when dropped.
struct Server {
    uri: String,
    port: u16,
    child: Child,
}

impl Server {
    fn start(dir: &tempfile::TempDir, extra: &str) -> Server {
        Server::start_with(dir, extra, &[])
    }

    fn start_with(dir: &tempfile::TempDir, extra: &str, env: &[(&str, &str)]) -> Server {
        let config = deterministic_config(dir, extra);
        let port = free_port();
        let uri = format!("tcp://127.0.0.1:{port}");
        let child = voxd()
            .envs(env.iter().copied())
            .env("XDG_RUNTIME_DIR", dir.path())
            .args(["-c", config.to_str().unwrap(), "wyoming", "--listen", &uri])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        wait_for_port_a_while(port);
        Server { uri, port, child }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM, as systemd stops it; then make sure.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Loading the models takes a few seconds before the port opens.
fn wait_for_port_a_while(port: u16) {
    wait_until("voxd wyoming to listen", Duration::from_secs(60), || TcpStream::connect(("127.0.0.1", port)).is_ok());
}

/// The reference client: one request, its JSON result.
fn client(args: &[&str]) -> Value {
    let wyoming = voxd::paths::cache_dir().join("testdata/python-wyoming-1.10.2");
    assert!(wyoming.join("wyoming").is_dir(), "{} is missing: run VOXD_BUILD_TESTS=1 ./scripts/setup", wyoming.display());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/wyoming_client.py");
    let out = Command::new("python3").arg(script).args(args).env("PYTHONPATH", wyoming).output().expect("python3 runs");
    assert!(out.status.success(), "wyoming client {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("client {args:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn heard(wav: &Path) -> String {
    run_ok(&["transcribe", wav.to_str().unwrap()]).stdout.trim().to_lowercase()
}

fn sox(args: &[&str]) {
    let status = Command::new("sox").args(args).status().expect("sox runs (apt package sox)");
    assert!(status.success(), "sox {args:?} failed");
}

#[test]
fn home_assistants_client_transcribes_and_synthesises_through_voxd() {
    let dir = tempdir();
    let server = Server::start(&dir, "");
    let uri = server.uri.as_str();

    // describe: the reference's dataclasses parse voxd's info; it names the models.
    let info = client(&["describe", uri]);
    let asr = &info["asr"][0];
    assert_eq!(asr["models"][0]["languages"], serde_json::json!(["en"]), "{info}");
    assert!(asr["models"][0]["name"].as_str().unwrap().contains("tiny"), "{info}");
    let tts = &info["tts"][0];
    assert_eq!(tts["supports_synthesize_streaming"], true, "{info}");
    // The agent is offered by default; with no tools it does not control the home.
    assert_eq!((info["handle"][0]["name"].as_str(), info["handle"][0]["supports_home_control"].as_bool()), (Some("voxd-agent"), Some(false)), "{info}");
    assert_eq!(tts["voices"][0]["languages"], serde_json::json!(["en_US"]), "{info}");

    // transcribe: jfk.wav as it is (16 kHz mono), and as 44.1 kHz stereo and 8-bit.
    let jfk = testdata("jfk.wav");
    let stereo = dir.path().join("jfk-44k-stereo.wav");
    sox(&[jfk.to_str().unwrap(), "-r", "44100", "-c", "2", stereo.to_str().unwrap()]);
    let byte = dir.path().join("jfk-8bit.wav");
    sox(&[jfk.to_str().unwrap(), "-b", "8", "-e", "unsigned-integer", byte.to_str().unwrap()]);
    for wav in [&jfk, &stereo, &byte] {
        let t = client(&["transcribe", uri, wav.to_str().unwrap(), "en"]);
        let text = t["text"].as_str().unwrap_or_else(|| panic!("no transcript for {}: {t}", wav.display())).to_lowercase();
        assert!(wer("and so my fellow americans ask not what your country can do for you ask what you can do for your country", &text) < 0.2, "{}: {text}", wav.display());
    }
    // A request voxd cannot answer gets an error and the connection closed (Home
    // Assistant skips errors and waits for the answer or the end).
    let german = client(&["transcribe", uri, jfk.to_str().unwrap(), "de"]);
    assert_eq!((german["code"].as_str(), german["closed"].as_bool()), (Some("language"), Some(true)), "{german}");
    let nobody = client(&["synthesize", uri, "Hello.", dir.path().join("x.wav").to_str().unwrap(), "en_GB-alan-low"]);
    assert_eq!((nobody["code"].as_str(), nobody["closed"].as_bool()), (Some("voice"), Some(true)), "{nobody}");

    // synthesize: the audio, transcribed back, says the text.
    let out = dir.path().join("said.wav");
    let said = client(&["synthesize", uri, "Turn on the kitchen light. Then lock the front door, please.", out.to_str().unwrap()]);
    assert_eq!((said["audio_starts"].as_u64(), said["audio_stops"].as_u64()), (Some(1), Some(1)), "{said}");
    let words = heard(&out);
    assert!(words.contains("kitchen light") && words.contains("front door"), "heard {words:?} ({said})");

    // A stream: text in pieces that split words; each spoken piece is its own audio,
    // the duplicate `synthesize` is not spoken again, and the stream ends with
    // synthesize-stopped.
    let out = dir.path().join("streamed.wav");
    let streamed = client(&["stream", uri, out.to_str().unwrap(), "The weather today is sun", "ny and warm. Tomorrow it will ", "rain in the afternoon."]);
    let starts = streamed["audio_starts"].as_u64().unwrap();
    assert!(starts >= 2 && streamed["audio_stops"].as_u64() == Some(starts), "{streamed}");
    let words = heard(&out);
    assert!(words.contains("sunny and warm") && words.contains("rain in the afternoon"), "heard {words:?} ({streamed})");
    assert_eq!(words.matches("sunny").count(), 1, "heard {words:?}: spoken twice?");
}

#[test]
fn the_wake_word_is_heard_over_wyoming_as_a_satellite_streams_it() {
    let dir = tempdir();
    let server = Server::start(&dir, "[wyoming]\nhandle = false\n");
    let uri = server.uri.as_str();
    let config = deterministic_config(&dir, "");
    // A satellite streams all the time: the phrase comes after 1.5 s of room.
    let say = |name: &str, text: &str| {
        let said = dir.path().join(format!("said-{name}"));
        run_ok(&["-c", config.to_str().unwrap(), "say", text, "-o", said.to_str().unwrap()]);
        let wav = dir.path().join(name);
        sox(&[said.to_str().unwrap(), wav.to_str().unwrap(), "pad", "1.5", "0"]);
        wav.to_str().unwrap().to_string()
    };
    // Piper's 22.05 kHz, converted on the way in.
    let addressed = say("addressed.wav", "Hey Jarvis, turn off the kitchen light.");
    let unaddressed = say("unaddressed.wav", "Turn off the kitchen light, and tell me the weather.");

    let info = client(&["describe", uri]);
    let models = &info["wake"][0]["models"];
    assert!(models.as_array().unwrap().iter().any(|m| m["name"] == "hey_jarvis_v0.1" && m["phrase"] == "hey jarvis"), "{info}");

    let heard = client(&["detect", uri, &addressed]);
    let detections = heard["detections"].as_array().unwrap();
    assert_eq!(detections.len(), 1, "{heard}");
    assert_eq!(detections[0]["name"], "hey_jarvis_v0.1", "{heard}");
    // Heard as the phrase ends (about 2.3 s in), not at the end of the clip.
    let at = detections[0]["timestamp"].as_u64().unwrap();
    assert!((1800..3200).contains(&at), "{heard}");
    // Each stream's detector is given back: more streams one after another than
    // there are detectors are all heard.
    for n in 0..=voxd::wyoming::MAX_DETECTORS {
        let named = client(&["detect", uri, &addressed, "hey_jarvis_v0.1"]);
        assert_eq!(named["detections"].as_array().map(Vec::len), Some(1), "stream {n}: {named}");
    }

    let quiet = client(&["detect", uri, &unaddressed]);
    assert_eq!((quiet["detections"].as_array().unwrap().len(), quiet["not_detected"].as_bool()), (0, Some(true)), "{quiet}");
    let unknown = client(&["detect", uri, &addressed, "ok_nabu"]);
    assert_eq!((unknown["code"].as_str(), unknown["closed"].as_bool()), (Some("wake"), Some(true)), "{unknown}");
    assert!(unknown["error"].as_str().unwrap().contains("no wake word \"ok_nabu\" here; voxd listens for hey_jarvis_v0.1"), "{unknown}");
}

#[test]
fn a_full_queue_is_told_at_once_and_bad_events_close_only_their_connection() {
    let dir = tempdir();
    let server = Server::start(&dir, "[wyoming]\nqueue = 1\nhandle = false\n");
    let uri = server.uri.as_str();
    let jfk = testdata("jfk.wav");

    // Five clients at once with one waiting place: one is transcribed, one waits, the
    // rest are refused with code "busy" — and every one gets an answer.
    let results = client(&["transcribe-many", uri, jfk.to_str().unwrap(), "5"]);
    let results = results.as_array().unwrap();
    let done = results.iter().filter(|r| r["text"].as_str().is_some_and(|t| t.to_lowercase().contains("ask not"))).count();
    let busy: Vec<_> = results.iter().filter(|r| r["code"] == "busy" && r["closed"] == true).collect();
    assert!(done >= 2 && !busy.is_empty() && done + busy.len() == 5, "{results:?}");
    assert!(busy[0]["error"].as_str().unwrap().contains("1 requests already wait"), "{busy:?}");

    // Events that break the protocol: each connection gets an error and is closed.
    let bad: &[(&str, &[u8])] = &[
        ("not JSON", b"hello\n"),
        ("no type", b"{\"data\":{}}\n"),
        ("a payload over 4 MiB", b"{\"type\":\"audio-chunk\",\"payload_length\":100000000}\n"),
        ("a header over 64 KiB", &[b'x'; 70_000]),
        ("audio without its format", b"{\"type\":\"audio-start\",\"data\":{\"rate\":16000}}\n"),
        ("audio before audio-start", b"{\"type\":\"audio-chunk\",\"data\":{\"rate\":16000,\"width\":2,\"channels\":1},\"payload_length\":2}\nab"),
    ];
    // A well-behaved connection stays open through all of them.
    let mut good = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    good.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    for (what, bytes) in bad {
        let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(bytes);
        let mut reader = BufReader::new(&s);
        let mut reply = String::new();
        let _ = reader.read_line(&mut reply);
        let header: Value = serde_json::from_str(&reply).unwrap_or_else(|_| panic!("{what}: no error event, got {reply:?}"));
        assert_eq!(header["type"], "error", "{what}: {reply}");
        // The error's data follows; then the server hangs up (end of stream, not a
        // read timing out).
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap_or_else(|e| panic!("{what}: the connection was not closed: {e}"));
        let text = String::from_utf8_lossy(&rest);
        assert!(text.contains("\"text\""), "{what}: the error says nothing: {text}");
        eprintln!("{what}: {text}");
    }
    good.write_all(b"{\"type\":\"describe\"}\n").unwrap();
    let mut reply = String::new();
    BufReader::new(&good).read_line(&mut reply).unwrap();
    assert!(reply.contains("\"info\""), "{reply}");
    drop(server);
}

/// Home Assistant's Wyoming conversation agent sends each sentence as a
/// `transcript` with its conversation's id and waits for `handled`: voxd answers with
/// its whole agent — the model's calls and the fast-path intents reach Home Assistant,
/// a confirmation is asked and answered within its conversation only.
#[test]
fn home_assistant_converses_with_voxds_agent_which_calls_the_homes_tools() {
    use crate::tools::{LIGHTS_HA, LOCK, TOKEN, TOKEN_ENV};
    use voxd::tools::local_ha::LocalHomeAssistant;
    let dir = tempdir();
    let ha = LocalHomeAssistant::start(TOKEN).unwrap();
    let setup = format!("[llm]\nmodel = \"qwen2.5-coder-0.5b-instruct\"\n[home_assistant]\nurl = \"{}\"\ntoken_env = \"{TOKEN_ENV}\"\n[wyoming]\nqueue = 1\n{LIGHTS_HA}{LOCK}", ha.url());
    let server = Server::start_with(&dir, &setup, &[(TOKEN_ENV, TOKEN)]);
    let uri = server.uri.as_str();
    let calls = || ha.requests().into_iter().map(|r| format!("{} {}", r.path, r.body.replace(' ', ""))).collect::<Vec<_>>();

    let info = client(&["describe", uri]);
    let agent = &info["handle"][0];
    assert_eq!((agent["models"][0]["name"].as_str(), agent["supports_home_control"].as_bool()), (Some("qwen2.5-coder-0.5b-instruct"), Some(true)), "{info}");
    assert_eq!(agent["models"][0]["languages"], serde_json::json!(["en"]), "{info}");
    assert_eq!(agent["supports_handled_streaming"], true, "{info}");

    // The model's call, made and confirmed in words.
    let lit = client(&["handle", uri, "one", "Turn on the kitchen light."]);
    assert_eq!((lit["type"].as_str(), lit["context"]["conversation_id"].as_str()), (Some("handled"), Some("one")), "{lit}");
    let said = lit["text"].as_str().unwrap();
    assert!(!said.is_empty() && !said.contains('{'), "{lit}");
    assert_eq!(calls(), vec![r#"/api/services/light/turn_on {"entity_id":"light.kitchen"}"#], "{lit}");

    // A tool that asks first: the question, then the yes in the same conversation.
    let asked = client(&["handle", uri, "two", "Unlock the front door."]);
    assert!(asked["type"] == "handled" && asked["text"].as_str().unwrap().contains("yes or no"), "{asked}");
    assert_eq!(calls().len(), 1, "nothing is unlocked before the yes: {asked}");
    let yes = client(&["handle", uri, "two", "Yes."]);
    assert_eq!((yes["type"].as_str(), yes["text"].as_str()), (Some("handled"), Some("The door is unlocked.")), "{yes}");
    assert_eq!(calls()[1], r#"/api/services/lock/unlock {"entity_id":"lock.front_door"}"#, "{yes}");

    // A yes from another conversation does not answer the question.
    let asked = client(&["handle", uri, "three", "Unlock the front door."]);
    assert!(asked["text"].as_str().unwrap().contains("yes or no"), "{asked}");
    let stranger = client(&["handle", uri, "four", "Yes."]);
    assert!(stranger["type"].as_str().is_some() && stranger["text"] != "The door is unlocked.", "{stranger}");
    // (What the 0.5 B model makes of a bare "Yes." is its own; the door stays shut.)
    let unlocks = calls().iter().filter(|c| c.contains("lock/unlock")).count();
    assert_eq!(unlocks, 1, "another conversation's yes unlocked the door: {stranger} {:?}", calls());

    // One being answered and one waiting at most: the rest are told at once, and
    // every asker gets an answer.
    // Streamed as it is said: the chunks, in order, are the whole answer, between a
    // handled-start with the conversation and a handled-stop; then `handled` whole.
    let capital = client(&["handle", uri, "six", "What is the capital of France? Answer in two sentences."]);
    let chunks = capital["chunks"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect::<Vec<_>>();
    assert_eq!((capital["type"].as_str(), capital["start"]["conversation_id"].as_str(), capital["stopped"].as_bool()), (Some("handled"), Some("six"), Some(true)), "{capital}");
    assert!(!chunks.is_empty() && chunks.concat() == capital["text"].as_str().unwrap(), "the chunks {chunks:?} are not the answer: {capital}");
    eprintln!("streamed in {} chunks, the first after {:.0} ms, the whole after {:.0} ms", chunks.len(), capital["first_chunk_ms"].as_f64().unwrap(), capital["ms"].as_f64().unwrap());
    for answer in [&lit, &yes] {
        assert_eq!(answer["chunks"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect::<String>(), answer["text"].as_str().unwrap(), "{answer}");
    }

    let many = client(&["handle-many", uri, "4", "What is the capital of France?"]);
    let many = many.as_array().unwrap();
    let answered = many.iter().filter(|r| r["type"] == "handled" && !r["text"].as_str().unwrap_or_default().is_empty()).count();
    let busy = many.iter().filter(|r| r["code"] == "busy" && r["closed"] == true).count();
    assert!(answered >= 1 && busy >= 2 && answered + busy == 4, "{many:?}");

    // A transcript with nothing to answer is refused, and its connection closed.
    let empty = client(&["handle", uri, "five", " "]);
    assert_eq!((empty["code"].as_str(), empty["closed"].as_bool()), (Some("bad-request"), Some(true)), "{empty}");
}

/// Bad settings are named before anything loads.
#[test]
fn a_bad_listen_address_is_named() {
    run_fails_with(&["wyoming", "--listen", "0.0.0.0:10300"], &["--listen", "not a tcp:// address", "tcp://0.0.0.0:10300"]);
    let dir = tempdir();
    let config = deterministic_config(&dir, "[wyoming]\nlisten = \"udp://x\"\nqueue = 0\n");
    run_fails_with(&["-c", config.to_str().unwrap(), "wyoming"], &["wyoming.listen", "wyoming.queue", "1 to 64"]);
    // Satellites: every mistake at once, each named.
    let satellites = "[[satellite]]\nroom = \"kitchen\"\n[[satellite]]\nuri = \"kitchen.local:10700\"\n\
                      [[satellite]]\nuri = \"tcp://a:10700\"\n[[satellite]]\nuri = \"tcp://a:10700\"\nrooom = \"b\"\n";
    let config = deterministic_config(&dir, satellites);
    run_fails_with(
        &["check-config", config.to_str().unwrap()],
        &["satellite[0].uri: is required", "satellite[1].uri", "\"tcp://HOST:PORT\"", "satellite[3].uri: \"tcp://a:10700\": another [[satellite]] has this address", "rooom"],
    );
    let config = deterministic_config(&dir, "[wyoming]\nhandle = false\n[[satellite]]\nuri = \"tcp://127.0.0.1:1\"\n");
    run_fails_with(&["-c", config.to_str().unwrap(), "wyoming"], &["[[satellite]]", "handle = false"]);
}

/// A `wyoming-satellite` (PyPI 1.0.0, installed by the test set-up) on a loopback
/// port: its microphone the words in `wav` once `go` exists, its speaker and event
/// commands files in `dir`; stopped when dropped.
struct Satellite {
    room: String,
    port: u16,
    go: std::path::PathBuf,
    played: std::path::PathBuf,
    log: std::path::PathBuf,
    dir: std::path::PathBuf,
    child: Child,
}

impl Satellite {
    fn start(dir: &tempfile::TempDir, room: &str, wav: &Path, extra: &[&str]) -> Satellite {
        let satellite = voxd::paths::cache_dir().join("testdata/python-wyoming-satellite-1.0.0");
        assert!(satellite.join("wyoming_satellite").is_dir(), "{} is missing: run VOXD_BUILD_TESTS=1 ./scripts/setup", satellite.display());
        let port = free_port();
        let file = |name: &str| dir.path().join(format!("{room}-{name}"));
        let (go, played, log) = (file("go"), file("played.raw"), file("satellite.log"));
        let mic = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/satellite_mic.py");
        let append = |to: &Path| format!("sh -c 'cat >> {}; echo >> {}'", to.display(), to.display());
        let child = Command::new("python3")
            .args(["-m", "wyoming_satellite", "--uri", &format!("tcp://127.0.0.1:{port}"), "--no-zeroconf", "--name", room, "--area", room])
            .args(["--mic-command", &format!("python3 {} {} {}", mic.display(), wav.display(), go.display())])
            .args(["--snd-command", &format!("sh -c 'cat >> {}'", played.display())])
            .args(["--transcript-command", &append(&file("transcripts.txt"))])
            .args(["--synthesize-command", &append(&file("replies.txt"))])
            .args(extra)
            .env("PYTHONPATH", satellite)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("python3 runs");
        wait_until(&format!("the {room} satellite to listen"), Duration::from_secs(30), || TcpStream::connect(("127.0.0.1", port)).is_ok());
        Satellite { room: room.into(), port, go, played, log, dir: dir.path().into(), child }
    }

    fn uri(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}-{name}", self.room))).unwrap_or_default()
    }

    fn played_s(&self) -> f64 {
        std::fs::metadata(&self.played).map_or(0.0, |m| m.len() as f64 / (22050.0 * 2.0))
    }
}

impl Drop for Satellite {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("--- the {} satellite's log:\n{}", self.room, std::fs::read_to_string(&self.log).unwrap_or_default());
    }
}

/// Two real satellites talk to voxd at the same time, each heard its own way: the
/// hallway streams all the time and voxd's wake stage hears "Hey Jarvis" said in one
/// breath with the request; the bedroom wakes on its own (through voxd's wake service,
/// as `--wake-uri`) and streams only the request that follows a pause. Each request
/// — the same words, "turn on the light" — turns on that room's light (said with no
/// room, the model picks the kitchen's), and each reply is played in its own room.
/// Before, `voxd doctor` finds both satellites, and names a third that is not there.
#[test]
fn two_satellites_are_answered_at_once_each_in_its_own_room() {
    use crate::tools::{LIGHTS_HA, TOKEN, TOKEN_ENV};
    use voxd::tools::local_ha::LocalHomeAssistant;
    let dir = tempdir();
    let ha = LocalHomeAssistant::start(TOKEN).unwrap();
    let (hallway_words, _) = conversation(&dir, "hallway-words", &[(0.5, "Hey Jarvis, turn on the light.")], 0.5);
    let (bedroom_words, _) = conversation(&dir, "bedroom-words", &[(0.5, "Hey Jarvis."), (1.5, "Turn on the light.")], 0.5);
    // The satellites listen first: voxd dials them (and would again, were they late).
    let hallway = Satellite::start(&dir, "hallway", &hallway_words, &[]);
    let wake_port = free_port();
    let wake_uri = format!("tcp://127.0.0.1:{wake_port}");
    let bedroom = Satellite::start(&dir, "bedroom", &bedroom_words, &["--wake-uri", &wake_uri, "--wake-word-name", "hey_jarvis_v0.1", "--debug"]);
    let log = dir.path().join("turns.jsonl");
    let metrics_port = free_port();
    let setup = format!(
        "[llm]\nmodel = \"qwen2.5-coder-0.5b-instruct\"\n[home_assistant]\nurl = \"{}\"\ntoken_env = \"{TOKEN_ENV}\"\n[log]\nlatency_log = \"{}\"\n\
         [wyoming]\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n{LIGHTS_HA}\n\
         [[satellite]]\nuri = \"{}\"\nroom = \"hallway\"\n[[satellite]]\nuri = \"{}\"\nroom = \"bedroom\"\n",
        ha.url(),
        log.display(),
        hallway.uri(),
        bedroom.uri()
    );
    // `voxd doctor` asks each satellite what it is (describe only: the satellites are
    // still free for the voxd started below), and names one that does not answer.
    let attic = format!("tcp://127.0.0.1:{}", free_port());
    let checked = deterministic_config(&dir, &format!("{setup}[[satellite]]\nuri = \"{attic}\"\nroom = \"attic\"\n"));
    let doctor = run_cmd(voxd().env(TOKEN_ENV, TOKEN).args(["-c", checked.to_str().unwrap(), "doctor"]));
    for line in [format!("ok    satellite      hallway: {} answers (wyoming-satellite \"hallway\")", hallway.uri()), format!("ok    satellite      bedroom: {} answers", bedroom.uri()), format!("warn  satellite      attic: {attic}: nothing answers")] {
        assert!(doctor.stdout.contains(&line), "no {line:?} in:\n{}", doctor.stdout);
    }
    // The attic's satellite is not there: voxd keeps dialling it, and says so.
    let child = voxd()
        .env(TOKEN_ENV, TOKEN)
        .env("XDG_RUNTIME_DIR", dir.path())
        .args(["-c", checked.to_str().unwrap(), "wyoming", "--listen", &wake_uri])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _server = Server { uri: wake_uri.clone(), port: wake_port, child };
    wait_for_port_a_while(wake_port);
    let streaming = |s: &Satellite, line: &str| std::fs::read_to_string(&s.log).unwrap_or_default().contains(line);
    // (The bedroom's audio reaches voxd's wake service only once it is connected:
    // what its microphone hears before is dropped.)
    let ready = || streaming(&hallway, "Streaming audio") && streaming(&bedroom, "Waiting for wake word") && streaming(&bedroom, "Connected to wake service");
    wait_until("voxd to run both satellites", Duration::from_secs(60), ready);

    // Both rooms speak at once.
    for s in [&hallway, &bedroom] {
        std::fs::write(&s.go, "").unwrap();
    }
    let calls = || ha.requests().into_iter().map(|r| format!("{} {}", r.path, r.body.replace(' ', ""))).collect::<Vec<_>>();
    let answered = || [&hallway, &bedroom].iter().all(|s| s.played_s() > 0.5);
    wait_until("both rooms to be answered aloud", Duration::from_secs(180), answered);
    let calls = calls();
    for room in ["hallway", "bedroom"] {
        let call = format!(r#"/api/services/light/turn_on {{"entity_id":"light.{room}"}}"#);
        assert!(calls.contains(&call), "no {call} in {calls:?}");
    }
    for s in [&hallway, &bedroom] {
        // The wake phrase is voxd's business: the request alone is transcribed
        // (tiny.en hears "light" as "white" now and then, as the stream's cut varies).
        let request = s.read("transcripts.txt").to_lowercase();
        assert!(request.contains("turn on the") && !request.contains("jarvis"), "{}: {request:?}", s.room);
        let reply = s.read("replies.txt");
        assert!(!reply.trim().is_empty(), "{}: no reply text", s.room);
        // Spoken piece by piece as the agent said it: all of it, nothing twice.
        let wav = dir.path().join(format!("{}-played.wav", s.room));
        sox(&["-t", "raw", "-r", "22050", "-e", "signed", "-b", "16", "-c", "1", s.played.to_str().unwrap(), wav.to_str().unwrap()]);
        let played = heard(&wav);
        let wer = voxd::bench::wer(&reply.to_lowercase(), &played);
        assert!(wer <= 0.5, "{}: the reply {reply:?} was played as {played:?} (WER {wer:.2})", s.room);
    }
    // Each turn is logged with its room and how it began.
    let turns = turns(&log);
    let mut rooms: Vec<(Option<&str>, &str)> = turns.iter().map(|t| (t.room.as_deref(), t.wake.as_str())).collect();
    rooms.sort();
    assert_eq!(rooms, vec![(Some("bedroom"), "always"), (Some("hallway"), "hey_jarvis_v0.1")], "{turns:?}");
    // `voxd ctl status` finds voxd wyoming's socket (no voxd run here) and reports
    // each satellite: two listening after their turn, the attic still being dialled.
    let ctl = |args: &[&str]| run_cmd(voxd().env("XDG_RUNTIME_DIR", dir.path()).args(["-c", checked.to_str().unwrap(), "ctl"]).args(args)).stdout;
    let states = || -> Vec<(String, String, u64)> {
        let json: Value = serde_json::from_str(&ctl(&["status", "--json"])).unwrap_or_default();
        json["satellites"].as_array().into_iter().flatten().map(|s| (s["room"].as_str().unwrap_or_default().into(), s["state"].as_str().unwrap_or_default().into(), s["turns"].as_u64().unwrap_or(0))).collect()
    };
    let expected = |room: &str, state: &str, turns| (room.to_string(), state.to_string(), turns);
    let settled = vec![expected("hallway", "listening", 1), expected("bedroom", "listening", 1), expected("attic", "unreachable", 0)];
    // (A reply may still be sent while the first of it plays.)
    wait_until("both rooms to be listening again", Duration::from_secs(60), || states() == settled);
    let status = ctl(&["status"]);
    eprintln!("voxd ctl status:\n{status}");
    assert!(status.contains(&format!("wyoming: listening on {wake_uri}")), "{status}");
    for line in ["hallway listening for", "bedroom listening for", "(1 turn)", "attic unreachable for", "failed dials; last: cannot reach it"] {
        assert!(status.contains(line), "no {line:?} in:\n{status}");
    }
    // It only reports: steering is voxd run's.
    let refused = run_cmd(voxd().args(["ctl", "--socket", dir.path().join("voxd/wyoming.sock").to_str().unwrap(), "mute"]));
    assert!(!refused.ok && refused.stderr.contains("only reports its status"), "{}", refused.stderr);
    // And counted by room in the agent's metrics.
    let scrape = crate::control::scrape(metrics_port);
    for room in ["hallway", "bedroom"] {
        assert_eq!(crate::control::sample(&scrape, &format!("voxd_room_turns_total{{room=\"{room}\",outcome=\"answered\"}}")), 1.0, "{scrape}");
    }
}

/// `voxd run` with `[wyoming] serve_in_run` serves Home Assistant's client from its own
/// engines while it answers the microphone: transcription, synthesis heard back and a
/// conversation with the agent over Wyoming, and a question spoken into the
/// microphone meanwhile — with the LLM's weights mapped once in the process (the
/// agent for Wyoming has a context of its own on them) and Whisper and Piper each on
/// one thread that both sides are served from.
#[test]
fn voxd_run_serves_wyoming_from_its_own_engines_while_it_answers_the_microphone() {
    use crate::live::{question, Daemon, Pulse};
    let dir = tempdir();
    let pulse = Pulse::start(&dir);
    let port = free_port();
    let uri = format!("tcp://127.0.0.1:{port}");
    let mut voxd = Daemon::start(&pulse, &dir, &format!("[wyoming]\nlisten = \"{uri}\"\nserve_in_run = true\n"));
    voxd.wait_for_stderr("speaking on", Duration::from_secs(120));
    voxd.wait_for_stderr("wyoming: listening on", Duration::from_secs(60));
    let uri = uri.as_str();

    // One copy of the LLM's weights: every GGUF the process maps, it maps once.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", voxd.pid())).unwrap();
    let ggufs: Vec<&str> = maps.lines().filter_map(|l| l.split_whitespace().nth(5)).filter(|p| p.ends_with(".gguf")).collect();
    assert!(!ggufs.is_empty(), "no GGUF mapped:\n{maps}");
    for g in &ggufs {
        assert_eq!(ggufs.iter().filter(|o| *o == g).count(), 1, "{g} is mapped more than once: two copies of the LLM");
    }
    // Whisper and Piper each sit at one desk, which the pipeline's stages use too (the
    // agent's text run has a tts stage of its own, which voices nothing).
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", voxd.pid())).unwrap().filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok()).map(|c| c.trim().to_string()).collect();
    for name in ["voxd-wy-asr", "voxd-wy-tts", "voxd-asr"] {
        assert_eq!(threads.iter().filter(|t| *t == name).count(), 1, "threads: {threads:?}");
    }

    let info = client(&["describe", uri]);
    assert!(info["asr"][0]["models"][0]["name"].as_str().unwrap().contains("tiny"), "{info}");
    // `voxd ctl status` reports the assistant and the server it holds.
    let mut ctl = crate::util::voxd();
    pulse.isolate_command(&mut ctl);
    let status = run_cmd(ctl.args(["ctl", "status"])).stdout;
    assert!(status.contains(&format!("wyoming: listening on {uri}")) && status.contains("listening"), "{status}");
    let jfk = testdata("jfk.wav");
    let t = client(&["transcribe", uri, jfk.to_str().unwrap(), "en"]);
    let text = t["text"].as_str().unwrap_or_else(|| panic!("no transcript: {t}")).to_lowercase();
    assert!(wer("and so my fellow americans ask not what your country can do for you ask what you can do for your country", &text) < 0.2, "{text}");

    // A question into the microphone while Home Assistant asks for speech: both answered.
    let asked = question(&dir, "q", "What is the capital of France?");
    let out = dir.path().join("said.wav");
    std::thread::scope(|s| {
        s.spawn(|| pulse.say(&asked));
        let said = client(&["synthesize", uri, "Turn on the kitchen light. Then lock the front door, please.", out.to_str().unwrap()]);
        assert_eq!((said["audio_starts"].as_u64(), said["audio_stops"].as_u64()), (Some(1), Some(1)), "{said}");
    });
    let words = heard(&out);
    assert!(words.contains("kitchen light") && words.contains("front door"), "heard {words:?}");
    let heard_live = voxd.wait_for_turns(1, Duration::from_secs(60));
    assert!(heard_live[0].transcript.to_lowercase().contains("capital of france"), "the microphone's turn: {:?}", heard_live[0]);
    assert!(!heard_live[0].reply.is_empty() && !heard_live[0].cancelled, "{:?}", heard_live[0]);

    let answer = client(&["handle", uri, "one", "What is the capital of France?"]);
    assert_eq!(answer["type"].as_str(), Some("handled"), "{answer}");
    let said = answer["text"].as_str().unwrap();
    assert!(!said.trim().is_empty() && !said.contains('{'), "{answer}");
    // Wyoming's conversation is not spoken on the board's speaker, nor logged as the
    // microphone's turn.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(turns(&voxd.log).len(), 1, "the microphone's log holds its own turn only");
    let stderr = voxd.stop();
    assert!(stderr.contains("stopping: finishing the turn in flight"), "{stderr}");
}
