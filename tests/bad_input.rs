//! Bad input of every kind, as tables: config files, WAV files, model files,
//! models.toml, control-socket messages, the home's replies to tool calls, a device
//! lost mid-run. Each gets one clear error naming the thing and what would be right.
//! A command meeting it exits 1 — never killed by a signal (an abort inside an
//! engine's C code) and never a panic — and a running voxd keeps running.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use voxd::tools::local_ha::{Behaviour, LocalHomeAssistant};

use crate::live::{question, Daemon, Pulse};
use crate::util::*;

/// A command meeting one bad input, and what its error must say.
struct Case {
    what: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    says: Vec<String>,
    /// Checked after the command: what it must not have touched.
    after: Option<Box<dyn Fn() -> Result<(), String>>>,
}

fn case<S: AsRef<str>>(what: &'static str, args: &[S], says: &[&str]) -> Case {
    Case { what, args: args.iter().map(|a| a.as_ref().to_string()).collect(), env: Vec::new(), says: says.iter().map(|s| s.to_string()).collect(), after: None }
}

impl Case {
    fn env(mut self, key: &'static str, value: impl Into<String>) -> Case {
        self.env.push((key, value.into()));
        self
    }

    fn after(mut self, check: impl Fn() -> Result<(), String> + 'static) -> Case {
        self.after = Some(Box::new(check));
        self
    }

    /// What is wrong with how voxd met this input, if anything.
    fn check(&self) -> Option<String> {
        let out = voxd().args(&self.args).envs(self.env.iter().map(|(k, v)| (*k, v.as_str()))).output().expect("voxd runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut wrong = Vec::new();
        match out.status.code() {
            Some(1) => {}
            Some(0) => wrong.push("succeeded".to_string()),
            Some(code) => wrong.push(format!("exited {code} (a panic is 101)")),
            None => wrong.push(format!("was killed by a signal ({:?}): an abort inside native code", std::os::unix::process::ExitStatusExt::signal(&out.status))),
        }
        if stderr.contains("panicked") {
            wrong.push("panicked".into());
        }
        for needle in &self.says {
            if !stderr.contains(needle.as_str()) {
                wrong.push(format!("does not say {needle:?}"));
            }
        }
        if let Some(Err(e)) = self.after.as_ref().map(|check| check()) {
            wrong.push(e);
        }
        (!wrong.is_empty()).then(|| format!("{} (voxd {}): {}\n    stderr: {}", self.what, self.args.join(" "), wrong.join("; "), stderr.trim().replace('\n', "\n            ")))
    }
}

/// Runs every case, reporting every one that went wrong (not just the first).
fn run_table(cases: Vec<Case>) {
    let wrong: Vec<String> = cases.iter().filter_map(Case::check).collect();
    assert!(wrong.is_empty(), "{} of {} bad inputs were not met with a clear error:\n{}", wrong.len(), cases.len(), wrong.join("\n"));
}

fn write(dir: &tempfile::TempDir, name: &str, bytes: impl AsRef<[u8]>) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_string()
}

/// The first `n` bytes of `src`, as a new file in `dir`.
fn truncated(dir: &tempfile::TempDir, src: &Path, name: &str, n: usize) -> String {
    let bytes = std::fs::read(src).unwrap();
    write(dir, name, &bytes[..n.min(bytes.len())])
}

/// A WAV of `channels` × `rate_hz` with a tenth of a second of a tone.
fn wav(dir: &tempfile::TempDir, name: &str, channels: u16, rate_hz: u32) -> String {
    let path = dir.path().join(name);
    let spec = hound::WavSpec { channels, sample_rate: rate_hz, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut w = hound::WavWriter::create(&path, spec).unwrap();
    for i in 0..(rate_hz / 10 * channels as u32) {
        w.write_sample(((i as f32 * 0.05).sin() * 8000.0) as i16).unwrap();
    }
    w.finalize().unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn bad_config_files_are_refused_with_every_problem_and_its_place() {
    let dir = tempdir();
    let all_four = write(&dir, "voxd.toml", "[asr]\nthreads = 100\nlanguge = \"en\"\n[llm]\ntemperature = \"hot\"\n[tts]\nrate = 9.0\n");
    let cases = vec![
        case(
            "a config with four problems, all reported at once",
            &["check-config", &all_four],
            &["has 4 problems", "voxd.toml:2:11: asr.threads: 100 is out of range: expected 1 to 64", "voxd.toml:3:1: asr.languge: unknown key; expected one of: model", "voxd.toml:5:15: llm.temperature", "voxd.toml:7:8: tts.rate"],
        ),
        case("the same file stops any other command before a model loads", &["--config", &all_four, "chat", "hi"], &["has 4 problems"]),
        case("a syntax error", &["check-config", &write(&dir, "syntax.toml", "[asr]\nthreads = = 2\n")], &["syntax.toml:2:", "(syntax)"]),
        case("a section that is not a table", &["check-config", &write(&dir, "flat.toml", "asr = 3\n")], &["flat.toml:1:", "expected a table [asr]"]),
        case("an unknown section", &["check-config", &write(&dir, "wake.toml", "[wakeword]\nx = 1\n")], &["wake.toml:1:2: wakeword: unknown section; expected one of: [paths]"]),
        case(
            "a secret written into the config",
            &["check-config", &write(&dir, "secret.toml", "[home_assistant]\nurl = \"http://ha\"\ntoken = \"abc\"\n")],
            &["secret.toml:3:1: home_assistant.token: secrets never go in the config file", "token_env"],
        ),
        case(
            "a credential name that is a path",
            &["check-config", &write(&dir, "cred.toml", "[home_assistant]\ntoken_credential = \"../hass_token\"\n")],
            &["cred.toml:2:20: home_assistant.token_credential: \"../hass_token\" is out of range: expected a credential name (no '/')"],
        ),
        case(
            "a tool with an unknown executor",
            &["check-config", &write(&dir, "tool.toml", "[[tool]]\nname = \"t\"\nexecutor = \"ftp\"\n")],
            &["tool.toml:3:12: tool[0].executor: \"ftp\" is out of range: expected \"home_assistant\""],
        ),
        case(
            "GPU settings out of range",
            &["check-config", &write(&dir, "gpu.toml", "[asr]\ngpu = \"yes\"\n[llm]\ngpu_layers = -2\n")],
            &["has 2 problems", "gpu.toml:2:7: asr.gpu", "gpu.toml:4:14: llm.gpu_layers: -2 is out of range: expected -1 (all) to 1000"],
        ),
        case("a config that is not there", &["--config", "/nonexistent/voxd.toml", "chat", "hi"], &["cannot read config /nonexistent/voxd.toml"]),
        case("a config that is not text", &["check-config", &write(&dir, "binary.toml", b"\xff\xfe\x00[asr]")], &["cannot read config", "binary.toml", "UTF-8"]),
        case("a config that is a directory", &["check-config", dir.path().to_str().unwrap()], &["cannot read config", dir.path().to_str().unwrap()]),
    ];
    run_table(cases);
}

#[test]
fn bad_audio_files_are_named_with_what_would_be_read() {
    let dir = tempdir();
    let empty = dir.path().join("empty.wav");
    voxd::audio::write_wav(&empty, &[], 16_000).unwrap();
    let speech = repo_data("capital-of-france.wav");
    let out = dir.path().join("out.wav");
    std::fs::create_dir(dir.path().join("folder.wav")).unwrap();
    let cases = vec![
        case("text named .wav", &["transcribe", &write(&dir, "notes.wav", "not audio at all")], &["notes.wav is not a WAV file", "expected RIFF/WAVE"]),
        case("a WAV with no samples", &["transcribe", empty.to_str().unwrap()], &["empty.wav holds no audio samples"]),
        case("a WAV cut inside its header", &["transcribe", &truncated(&dir, &speech, "cut.wav", 30)], &["cut.wav is not a WAV file (it ends inside its header (truncated))"]),
        case("a WAV cut mid-sample", &["transcribe", &truncated(&dir, &speech, "half-sample.wav", 44 + 1001)], &["half-sample.wav is not a WAV file (data chunk ends early (truncated file))"]),
        case("a WAV at 96 kHz", &["transcribe", &wav(&dir, "fast.wav", 1, 96_000)], &["fast.wav: unsupported WAV format: sample rate 96000 Hz", "expected 8-48 kHz"]),
        case("a WAV with 3 channels", &["transcribe", &wav(&dir, "three.wav", 3, 16_000)], &["three.wav: unsupported WAV format: 3 channels", "mono or stereo"]),
        case("a WAV that is not there", &["transcribe", "/nonexistent.wav"], &["cannot read /nonexistent.wav"]),
        case("a directory named .wav", &["transcribe", dir.path().join("folder.wav").to_str().unwrap()], &["folder.wav"]),
        case(
            "a bad recording for voxd run, refused before any model loads",
            &["run", "--input", &write(&dir, "run.wav", "RIFF"), "--output", out.to_str().unwrap()],
            &["run.wav is not a WAV file"],
        ),
    ];
    run_table(cases);
    assert!(!out.exists(), "no output for a recording that was never read");
}

#[test]
fn bad_model_files_are_refused_naming_the_file_never_crashed_on() {
    let dir = tempdir();
    let wav = repo_data("capital-of-france.wav");
    let wav = wav.to_str().unwrap();
    let gguf = model("SmolLM2-135M-Instruct.Q4_1.gguf");
    let ggml = model("ggml-tiny.en.bin");
    let voice = model("en_US-joe-medium.onnx");
    // Voices: cut short; without their .onnx.json; with a .onnx.json that is not JSON.
    let half_voice = truncated(&dir, &voice, "half.onnx", 1 << 20);
    std::fs::copy(model("en_US-joe-medium.onnx.json"), dir.path().join("half.onnx.json")).unwrap();
    let lonely = dir.path().join("lonely.onnx");
    std::fs::copy(&voice, &lonely).unwrap();
    let broken = dir.path().join("broken.onnx");
    std::fs::hard_link(&lonely, &broken).unwrap();
    write(&dir, "broken.onnx.json", "{ not json");
    let cases = vec![
        case("a model path that does not exist", &["transcribe", wav, "--model", "/nonexistent/ggml-tiny.bin"], &["/nonexistent/ggml-tiny.bin does not exist"]),
        case("a model id that is not installed", &["chat", "hi", "--model", "llama-3.2-3b-instruct"], &["llama-3.2-3b-instruct (llm) is not installed", "voxd models"]),
        case("a model id that is not in the table", &["chat", "hi", "--model", "gpt-5"], &["no model \"gpt-5\"", "smollm2-135m-instruct"]),
        case("a GGUF cut short", &["chat", "hi", "--model", &truncated(&dir, &gguf, "half.gguf", 40 << 20)], &["half.gguf", "could not load", "truncated"]),
        case("a whisper model cut short", &["transcribe", wav, "--model", &truncated(&dir, &ggml, "half.bin", 20 << 20)], &["half.bin", "could not load", "truncated"]),
        case("a voice cut short", &["say", "hello", "-o", "/dev/null", "--voice", &half_voice], &["could not load voice", "half.onnx"]),
        case("a GGUF where a whisper model belongs", &["transcribe", wav, "--model", gguf.to_str().unwrap()], &["is a GGUF model", "expected a whisper.cpp ggml model"]),
        case("a whisper model where a GGUF belongs", &["chat", "hi", "--model", ggml.to_str().unwrap()], &["is a whisper.cpp ggml model", "expected a GGUF file"]),
        case("a voice without its .onnx.json", &["say", "hello", "-o", "/dev/null", "--voice", lonely.to_str().unwrap()], &["lonely.onnx.json"]),
        case("a voice whose .onnx.json is not JSON", &["say", "hello", "-o", "/dev/null", "--voice", broken.to_str().unwrap()], &["broken.onnx.json"]),
        case("an empty file as a model", &["chat", "hi", "--model", &write(&dir, "empty.gguf", "")], &["empty.gguf"]),
    ];
    run_table(cases);
}

/// A models directory with the test set linked in (the engines load them from
/// there), and `damage` applied to a copy of one of them.
fn models_dir_with(dir: &tempfile::TempDir, name: &str, damaged: &str, damage: impl Fn(&mut Vec<u8>)) -> PathBuf {
    let models = dir.path().join(name);
    std::fs::create_dir(&models).unwrap();
    for file in ["ggml-tiny.en.bin", "SmolLM2-135M-Instruct.Q4_1.gguf", "en_US-joe-medium.onnx", "en_US-joe-medium.onnx.json"] {
        if file != damaged {
            std::os::unix::fs::symlink(model(file), models.join(file)).unwrap();
        }
    }
    let mut bytes = std::fs::read(model(damaged)).unwrap();
    damage(&mut bytes);
    std::fs::write(models.join(damaged), bytes).unwrap();
    models
}

#[test]
fn installed_models_and_the_model_table_are_checked_before_anything_loads_or_is_written() {
    let dir = tempdir();
    let input = repo_data("capital-of-france.wav");
    let out = dir.path().join("out.wav");
    let run_with = |models: &Path| -> Vec<String> {
        let config = deterministic_config(&dir, &format!("[paths]\nmodels_dir = {:?}\n[asr]\nmodel = \"whisper-tiny.en\"\n[llm]\nmodel = \"smollm2-135m-instruct\"\n", models.to_str().unwrap()));
        ["--config", config.to_str().unwrap(), "run", "--input", input.to_str().unwrap(), "--output", out.to_str().unwrap()].map(String::from).to_vec()
    };
    // One byte flipped in the middle: the size is right, the digest is not.
    let flipped = models_dir_with(&dir, "flipped", "SmolLM2-135M-Instruct.Q4_1.gguf", |b| {
        let middle = b.len() / 2;
        b[middle] ^= 0xff;
    });
    let flipped_file = flipped.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    // Cut short, as a copy interrupted by a full disk.
    let cut = models_dir_with(&dir, "cut", "ggml-tiny.en.bin", |b| b.truncate(40_000_000));
    let cut_file = cut.join("ggml-tiny.en.bin");

    // A table whose names would lead out of voxd's directories.
    let ha = LocalHomeAssistant::start("t").unwrap(); // serves any /hook/ path: a model "download"
    let cache = dir.path().join("cache");
    let victim = dir.path().join("x");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("keep"), "someone else's").unwrap();
    let sha = "ab".repeat(32);
    let entry = |id: &str, fields: &str| format!("\n[[model]]\nid = {id:?}\nrole = \"llm\"\nfamily = \"t\"\nparams = \"0\"\nquant = \"q\"\nlicense = \"MIT\"\n{fields}\n");
    let table = |name: &str, extra: &str| -> String {
        let models_toml = write(&dir, &format!("{name}.models.toml"), voxd::catalog::BUILTIN.to_string() + extra);
        let config = dir.path().join(format!("{name}.voxd.toml"));
        std::fs::write(&config, format!("[paths]\nmodels_dir = {:?}\nmodels_toml = {models_toml:?}\n", dir.path().join("models").to_str().unwrap())).unwrap();
        config.to_str().unwrap().to_string()
    };
    let climbing_file = table("file", &entry("served", &format!("file = \"../x.gguf\"\nurl = \"{}/hook/model\"", ha.url())));
    let climbing_id = table("id", &entry("../../x", &format!("file = \"x.gguf\"\n[model.registry]\npackages = [{{ pypi = \"nothing==1\", sha256 = \"{sha}\" }}]\ntake = \"x.gguf\"\nsha256 = \"{sha}\"")));
    let climbing_take = table("take", &entry("taker", &format!("file = \"t.gguf\"\n[model.registry]\npackages = [{{ pypi = \"nothing==1\", sha256 = \"{sha}\" }}]\ntake = \"../../../x/keep\"\nsha256 = \"{sha}\"")));
    let syntax = table("syntax", "\n[[model]]\nid = = 3\n");
    let outside = dir.path().join("x.gguf");

    let cases = vec![
        case("a pinned model with a byte flipped", &run_with(&flipped), &[flipped_file.to_str().unwrap(), "matches no pinned digest", "`voxd models fetch smollm2-135m-instruct --registry`"]),
        case("a pinned model cut short", &run_with(&cut), &[cut_file.to_str().unwrap(), "is 40000000 bytes where models.toml pins 77704698 bytes", "`voxd models fetch whisper-tiny.en`"]),
        case("a model id that is a path", &["models", "fetch", "../../x"], &["\"../../x\" is not a model id", "`voxd models list`"]),
        case("a table whose file climbs out of the models directory", &["--config", &climbing_file, "models", "fetch", "served"], &["model served: file \"../x.gguf\" holds a path separator", "inside the models directory"]).after({
            let (outside, ha) = (outside.clone(), std::sync::Arc::new(ha));
            move || match (outside.exists(), ha.requests().len()) {
                (false, 0) => Ok(()),
                (exists, hits) => Err(format!("{} written: {exists}, downloads: {hits}", outside.display())),
            }
        }),
        case("a table whose id climbs out of the cache", &["--config", &climbing_id, "models", "fetch", "../../x", "--offline"], &["id \"../../x\" holds '/'"]).env("VOXD_CACHE_DIR", cache.to_str().unwrap()).after({
            let keep = victim.join("keep");
            move || if keep.exists() { Ok(()) } else { Err(format!("{} was deleted", keep.display())) }
        }),
        case("the same table for any command", &["--config", &climbing_id, "models", "list"], &["[[model]] number", "id \"../../x\" holds '/'"]),
        case("a table whose registry file climbs out of the packages", &["--config", &climbing_take, "models", "list"], &["model taker: registry.take \"../../../x/keep\" climbs out with '..'"]),
        case("a table with a syntax error", &["--config", &syntax, "models", "list"], &["model table", "syntax.models.toml", "line"]),
        case("a table that is not there", &["--config", &write(&dir, "gone.toml", "[paths]\nmodels_toml = \"/nonexistent/models.toml\"\n"), "models", "list"], &["cannot read model table /nonexistent/models.toml"]),
    ];
    run_table(cases);
    assert!(!out.exists(), "nothing was answered with a damaged model");
}

/// Talks to a control socket line by line, as a client program would.
struct Client {
    stream: UnixStream,
    replies: BufReader<UnixStream>,
}

impl Client {
    fn connect(socket: &Path) -> Client {
        let stream = UnixStream::connect(socket).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Client { replies: BufReader::new(stream.try_clone().unwrap()), stream }
    }

    /// Sends `bytes` as they are, returns the reply line (empty: the connection closed).
    fn send(&mut self, bytes: &[u8]) -> String {
        // voxd may hang up before taking it all (a line too long): its reply counts.
        let _ = self.stream.write_all(bytes);
        let mut reply = String::new();
        let _ = self.replies.read_line(&mut reply);
        reply
    }
}

#[test]
fn a_running_voxd_answers_bad_requests_and_a_lost_device_and_keeps_running() {
    let dir = tempdir();
    let mut pulse = Pulse::start(&dir);
    let socket = dir.path().join("control.sock");
    let mut daemon = Daemon::start_with(&pulse, &dir, &format!("[service]\ncontrol_socket = {:?}", socket.to_str().unwrap()), &[]);

    // Every bad line is answered on the same connection, which stays usable.
    let mut client = Client::connect(&socket);
    let table: &[(&str, &[u8], &str)] = &[
        ("not JSON", b"hello\n", "not a request (expected value"),
        ("JSON that is not an object", b"[1, 2]\n", "not a request"),
        ("an unknown command", b"{\"cmd\":\"reboot\"}\n", "unknown variant `reboot`"),
        ("no command", b"{\"text\":\"hi\"}\n", "missing field `cmd`"),
        ("a field of the wrong type", b"{\"cmd\":\"push_to_talk\",\"down\":\"yes\"}\n", "invalid type: string \"yes\", expected a boolean"),
        ("a missing field", b"{\"cmd\":\"ask\"}\n", "missing field `text`"),
        ("an empty question", b"{\"cmd\":\"ask\",\"text\":\"  \"}\n", "ask: the text is empty"),
        ("bytes that are not text", b"\xff\xfe{\"cmd\":\"status\"}\n", "not UTF-8 text"),
        ("an empty line", b"\n", "not a request"),
    ];
    let mut wrong = Vec::new();
    for (what, line, says) in table {
        let reply = client.send(line);
        let refused = serde_json::from_str::<serde_json::Value>(&reply).ok().filter(|r| r["ok"] == false).and_then(|r| r["error"].as_str().map(String::from));
        if !refused.as_ref().is_some_and(|error| error.contains(says)) {
            wrong.push(format!("{what}: {reply:?} does not say {says:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(client.send(b"{\"cmd\":\"status\"}\r\n").contains("\"ok\":true"), "the connection is still good after the bad lines");
    // A line without end: answered, and that connection closed; others are served.
    let mut flood = Client::connect(&socket);
    let reply = flood.send(&vec![b'a'; 100_000]);
    assert!(reply.contains("a request line over 8192 bytes"), "{reply:?}");
    // A client that hangs up mid-request.
    UnixStream::connect(&socket).unwrap().write_all(b"{\"cmd\":\"sta").unwrap();
    assert!(Client::connect(&socket).send(b"{\"cmd\":\"status\"}\n").contains("\"ok\":true"));

    // The sound server dies under it: reported, reopened, and voxd still answers.
    pulse.crash_and_restart(Duration::from_secs(1));
    daemon.wait_for_stderr("microphone: reopened", Duration::from_secs(30));
    assert!(crate::control::ctl_ok(&socket, &["status"]).starts_with("listening"), "status after the device came back");
    // And it still hears: a question after all of that is answered.
    pulse.say(&question(&dir, "q", "What is the capital of France?"));
    let turns = daemon.wait_for_turns(1, Duration::from_secs(60));
    assert!(turns[0].transcript.to_lowercase().contains("capital of france"), "{:?}", turns[0]);
    let stderr = daemon.stop();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// What a call came to, run as the tools stage runs it (the allow-list, then the
/// real executor).
fn attempt(toolbox: &voxd::tools::Toolbox, tool: &voxd::tools::ToolConfig, arguments: serde_json::Value) -> Result<String, String> {
    let call = voxd::tools::ToolCall { name: tool.name.clone(), arguments };
    tool.permits(&call).map_err(|e| e.to_string())?;
    let outcome = toolbox.run(tool, &call);
    if outcome.ok {
        Ok(outcome.result)
    } else {
        Err(outcome.error.unwrap_or_default())
    }
}

#[test]
fn bad_replies_from_the_home_are_said_plainly_and_the_next_call_works() {
    let dir = tempdir();
    let ha = LocalHomeAssistant::start("right").unwrap();
    let wrong_token = LocalHomeAssistant::start("other").unwrap();
    ha.set_fault("light.broken", Behaviour::Status(500));
    ha.set_fault("light.gone", Behaviour::Status(404));
    ha.set_fault("light.slow", Behaviour::Slow(Duration::from_secs(5)));
    ha.set_fault("sensor.garbage", Behaviour::Body("<html>proxy error</html>"));
    ha.set_fault("sensor.stateless", Behaviour::Body("{\"entity_id\": \"sensor.stateless\"}"));
    ha.set_fault("light.hangup", Behaviour::Hangup);
    ha.set_fault("/hook/broken", Behaviour::Status(500));
    let token = write(&dir, "token", "right");
    let closed = free_port(); // nothing listens: an MQTT broker that is down, a dead webhook
    let tools = |url: &str| {
        format!(
            r#"
[home_assistant]
url = "{url}"
token_file = "{token}"
[mqtt]
host = "127.0.0.1"
port = {closed}
client_id = "voxd-bad-input"
[[tool]]
name = "light_on"
description = "Turn a light on"
executor = "home_assistant"
service = "light.turn_on"
parameters = {{ type = "object", properties = {{ entity_id = {{ type = "string" }} }}, required = ["entity_id"] }}
allow = ["light.*"]
timeout_ms = 500
[[tool]]
name = "read"
description = "Read a state"
executor = "home_assistant_state"
parameters = {{ type = "object", properties = {{ entity_id = {{ type = "string" }} }}, required = ["entity_id"] }}
allow = ["sensor.*", "light.*"]
timeout_ms = 500
[[tool]]
name = "hook"
description = "Ring a bell"
executor = "webhook"
url = "{hook}/hook/{{which}}"
parameters = {{ type = "object", properties = {{ which = {{ type = "string" }} }}, required = ["which"] }}
allow = ["{hook}/hook/*"]
timeout_ms = 500
[[tool]]
name = "publish"
description = "Switch the kitchen"
executor = "mqtt"
topic = "home/kitchen/set"
timeout_ms = 500
[[tool]]
name = "mqtt_read"
description = "Read the kitchen"
executor = "mqtt_state"
topic = "home/kitchen/state"
timeout_ms = 500
"#,
            hook = url,
        )
    };
    let toolbox_for = |url: &str| {
        let config = voxd::config::Config::parse(&tools(url), Path::new("tools.toml")).unwrap_or_else(|e| panic!("{e}"));
        let toolbox = voxd::tools::Toolbox::start(&config, voxd::control::Daemon::Run).unwrap();
        (config, toolbox)
    };
    let (config, toolbox) = toolbox_for(&ha.url());
    let tool = |name: &str| config.tool.iter().find(|t| t.name == name).unwrap().clone();
    let (_, refused) = toolbox_for(&wrong_token.url());
    let (closed_config, unreachable) = toolbox_for(&format!("http://127.0.0.1:{closed}"));
    let closed_hook = closed_config.tool.iter().find(|t| t.name == "hook").unwrap().clone();
    use serde_json::json;
    let table: Vec<(&str, Result<String, String>, &str)> = vec![
        ("Home Assistant answering 500", attempt(&toolbox, &tool("light_on"), json!({"entity_id": "light.broken"})), "Home Assistant reported an error, code 500"),
        ("Home Assistant not knowing the entity", attempt(&toolbox, &tool("light_on"), json!({"entity_id": "light.gone"})), "Home Assistant does not know that"),
        ("Home Assistant too slow", attempt(&toolbox, &tool("light_on"), json!({"entity_id": "light.slow"})), "Home Assistant did not answer in time"),
        ("Home Assistant hanging up", attempt(&toolbox, &tool("light_on"), json!({"entity_id": "light.hangup"})), "I could not reach Home Assistant"),
        ("Home Assistant refusing the token", attempt(&refused, &tool("light_on"), json!({"entity_id": "light.kitchen"})), "Home Assistant refused my access token"),
        ("Home Assistant not there", attempt(&unreachable, &tool("light_on"), json!({"entity_id": "light.kitchen"})), "I could not reach Home Assistant"),
        ("a state that is not JSON", attempt(&toolbox, &tool("read"), json!({"entity_id": "sensor.garbage"})), "Home Assistant sent an answer I could not read"),
        ("a state without a state", attempt(&toolbox, &tool("read"), json!({"entity_id": "sensor.stateless"})), "Home Assistant sent no state for sensor.stateless"),
        ("a webhook answering 500", attempt(&toolbox, &tool("hook"), json!({"which": "broken"})), "the webhook reported an error, code 500"),
        ("a webhook not there", attempt(&unreachable, &closed_hook, json!({"which": "front"})), "I could not reach the webhook"),
        ("an MQTT broker that is down: publish", attempt(&toolbox, &tool("publish"), json!({})), "the MQTT broker is not connected"),
        ("an MQTT broker that is down: read", attempt(&toolbox, &tool("mqtt_read"), json!({})), "the MQTT broker is not connected"),
        ("a call naming no entity", attempt(&toolbox, &tool("light_on"), json!({"entity_id": "light.x/../lock.door"})), "light_on may not touch light.x/../lock.door"),
    ];
    let wrong: Vec<String> = table.iter().filter(|(_, got, says)| got.as_ref().err().map(String::as_str) != Some(*says)).map(|(what, got, says)| format!("{what}: {got:?}, expected the error {says:?}")).collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // After all of that the tools still work.
    assert_eq!(attempt(&toolbox, &tool("light_on"), json!({"entity_id": "light.kitchen"})), Ok(String::new()));
    assert_eq!(attempt(&toolbox, &tool("read"), json!({"entity_id": "light.kitchen"})), Ok("on".to_string()));
}
