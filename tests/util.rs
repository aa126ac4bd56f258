//! Shared helpers: run the built `voxd`, find the installed models and test audio,
//! compare transcripts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn voxd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_voxd"));
    // A user's own config and model selection must not change what the tests see.
    c.env_remove("VOXD_CONFIG").env("XDG_CONFIG_HOME", "/nonexistent-voxd-test-config").env("XDG_STATE_HOME", "/nonexistent-voxd-test-state");
    c
}

pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(args: &[&str]) -> Run {
    run_cmd(voxd().args(args))
}

pub fn run_cmd(cmd: &mut Command) -> Run {
    let Output { status, stdout, stderr } = cmd.output().expect("voxd runs");
    Run { ok: status.success(), stdout: String::from_utf8_lossy(&stdout).into(), stderr: String::from_utf8_lossy(&stderr).into() }
}

/// Runs and requires success, showing stderr otherwise.
pub fn run_ok(args: &[&str]) -> Run {
    let r = run(args);
    assert!(r.ok, "voxd {args:?} failed:\n{}", r.stderr);
    r
}

/// Runs and requires a failure whose stderr contains every `needle`.
pub fn run_fails_with(args: &[&str], needles: &[&str]) -> Run {
    let r = run(args);
    assert!(!r.ok, "voxd {args:?} should have failed; stdout: {}", r.stdout);
    for n in needles {
        assert!(r.stderr.contains(n), "voxd {args:?}: stderr lacks {n:?}:\n{}", r.stderr);
    }
    r
}

/// For tests that load an engine in-process: route llama.cpp's and whisper.cpp's
/// chatter through tracing (quiet) as the binary does.
pub fn quiet_engine_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| voxd::logging::init(0, true));
}

pub fn models_dir() -> PathBuf {
    voxd::paths::default_models_dir()
}

/// An installed model file, or a panic that says how to install it.
pub fn model(file: &str) -> PathBuf {
    let p = models_dir().join(file);
    assert!(p.exists(), "{} is missing: run ./scripts/setup first", p.display());
    p
}

pub fn testdata(name: &str) -> PathBuf {
    let p = voxd::paths::cache_dir().join("testdata").join(name);
    assert!(p.exists(), "{} is missing: run ./scripts/setup first", p.display());
    p
}

pub fn repo_data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

pub const POCKETSPHINX: &str = "/usr/share/pocketsphinx/test/data";

/// Transcripts are compared as voxd's benchmarks compare them.
pub use voxd::bench::{cer, wer};

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// A config file in `dir` holding `extra` and a deterministic voice (Piper's
/// sampling noise off): the same text is the same audio in every run, so tests that
/// synthesise questions and transcribe answers are repeatable.
pub fn deterministic_config(dir: &tempfile::TempDir, extra: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let path = dir.path().join(format!("voxd-{}.toml", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    // Every utterance is a turn, as before wake words, unless the test is about them
    // (live, voxd's default is to wait for one).
    let listening = if extra.contains("[wake]") { "" } else { "[wake]\nmode = \"always\"\n" };
    std::fs::write(&path, format!("{extra}\n{listening}[tts]\nvariability = 0.0\n")).unwrap();
    path
}

/// A conversation as a 16 kHz WAV: for each (silence before, words), that much
/// silence then the words spoken by the Piper voice (deterministically). Returns the
/// path and where each utterance ends (seconds).
pub fn conversation(dir: &tempfile::TempDir, name: &str, parts: &[(f64, &str)], trailing_silence_s: f64) -> (PathBuf, Vec<f64>) {
    let config = deterministic_config(dir, "");
    let rate = 16_000usize;
    let mut samples: Vec<f32> = Vec::new();
    let mut ends = Vec::new();
    for (i, (silence, text)) in parts.iter().enumerate() {
        samples.extend(std::iter::repeat(0.0).take((silence * rate as f64) as usize));
        let said = dir.path().join(format!("{name}-{i}.wav"));
        run_ok(&["--config", config.to_str().unwrap(), "say", text, "-o", said.to_str().unwrap()]);
        let clip = voxd::audio::read_wav(&said, rate as u32).unwrap();
        samples.extend(clip.samples);
        ends.push(samples.len() as f64 / rate as f64);
    }
    samples.extend(std::iter::repeat(0.0).take((trailing_silence_s * rate as f64) as usize));
    let path = dir.path().join(format!("{name}.wav"));
    voxd::audio::write_wav(&path, &samples, rate as u32).unwrap();
    (path, ends)
}

/// The latency log's records.
pub fn turns(log: &Path) -> Vec<voxd::pipeline::telemetry::TurnRecord> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad log line {l}: {e}"))).collect()
}

/// The part of a recording between two times (seconds), as a WAV file to transcribe.
pub fn excerpt(wav: &Path, from_s: f64, to_s: f64, out: &Path) {
    let reader = hound::WavReader::open(wav).unwrap();
    let rate = reader.spec().sample_rate as f64;
    let samples: Vec<i16> = reader.into_samples::<i16>().map(Result::unwrap).collect();
    let (a, b) = ((from_s * rate) as usize, ((to_s * rate) as usize).min(samples.len()));
    let f: Vec<f32> = samples[a.min(b)..b].iter().map(|s| *s as f32 / 32768.0).collect();
    voxd::audio::write_wav(out, &f, rate as u32).unwrap();
}

/// Polls `done` until it holds, failing the test after `limit`: for anything that
/// happens "soon", whose time depends on the machine's speed.
pub fn wait_until(what: &str, limit: std::time::Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A free TCP port on loopback (bound and released: good enough for a test's server).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until something accepts connections on `port`.
pub fn wait_for_port(port: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A real MQTT broker (Debian's mosquitto) on a loopback port, stopped when dropped.
pub struct Broker {
    pub port: u16,
    config: PathBuf,
    log: PathBuf,
    child: std::process::Child,
}

impl Broker {
    pub fn start(dir: &tempfile::TempDir) -> Broker {
        Broker::start_on(dir, free_port())
    }

    pub fn start_on(dir: &tempfile::TempDir, port: u16) -> Broker {
        let (config, log) = (dir.path().join(format!("mosquitto-{port}.conf")), dir.path().join(format!("mosquitto-{port}.log")));
        // Started as root, mosquitto would become user "mosquitto", who cannot write
        // the log in the test's directory; started as anyone else it ignores `user`.
        std::fs::write(&config, format!("user root\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest file {}\nlog_type all\n", log.display())).unwrap();
        let child = Command::new("mosquitto").arg("-c").arg(&config).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().expect("mosquitto runs (apt package mosquitto; ./scripts/setup installs it)");
        wait_for_port(port);
        Broker { port, config, log, child }
    }

    /// How many times a client with `client_id` has connected, by the broker's log.
    pub fn connections(&self, client_id: &str) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines().filter(|l| l.contains("New client connected") && l.contains(&format!(" as {client_id} "))).count()
    }

    /// Stops the broker, waits `down`, and starts it again on the same port.
    pub fn restart(&mut self, down: std::time::Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        self.child = Command::new("mosquitto").arg("-c").arg(&self.config).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
        wait_for_port(self.port);
    }

    /// Everything published under `filter` until the subscriber is dropped, seen by
    /// an independent client (mosquitto_sub), as "topic payload" lines. Returns once
    /// the subscription is in place (a probe published to it has come back), however
    /// long the broker and the client take on a loaded machine.
    pub fn watch(&self, filter: &str) -> Subscriber {
        const PROBE: &str = "voxd-test/subscribed";
        let port = self.port.to_string();
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port, "-t", filter, "-t", PROBE, "-v"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("mosquitto_sub runs (apt package mosquitto-clients)");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let reader = {
            let (stdout, lines) = (child.stdout.take().unwrap(), lines.clone());
            std::thread::spawn(move || {
                for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            })
        };
        let probe_seen = || lines.lock().unwrap().iter().any(|l| l.starts_with(PROBE));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !probe_seen() {
            assert!(std::time::Instant::now() < deadline, "mosquitto_sub never subscribed to {filter}");
            let _ = Command::new("mosquitto_pub").args(["-h", "127.0.0.1", "-p", &port, "-t", PROBE, "-m", "probe"]).status();
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Subscriber { child, lines, reader: Some(reader), probe: PROBE, port }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Subscriber {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    probe: &'static str,
    port: String,
}

impl Subscriber {
    /// Stops the subscriber and returns the "topic payload" lines it received (the
    /// subscription's probes left out) — all that reached the broker before this is
    /// called: a last probe, sent now, is waited for (the broker forwards in order,
    /// and on a busy machine the subscriber may not have printed them yet).
    pub fn received(mut self) -> Vec<String> {
        let end = format!("{} end", self.probe);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let _ = Command::new("mosquitto_pub").args(["-h", "127.0.0.1", "-p", &self.port, "-t", self.probe, "-m", "end", "-q", "1"]).status();
        while !self.lines.lock().unwrap().iter().any(|l| *l == end) {
            assert!(std::time::Instant::now() < deadline, "the subscriber never saw its last probe");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let lines = self.lines.lock().unwrap();
        lines.iter().filter(|l| !l.starts_with(self.probe)).cloned().collect()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The audio a turn put on the output timeline, transcribed.
pub fn heard_reply(dir: &tempfile::TempDir, output: &Path, t: &voxd::pipeline::telemetry::TurnRecord) -> String {
    // From a moment before the reply (silence on the output: Whisper mishears words
    // that start at a clip's first sample) to its end.
    let start = t.speech_end_s + t.marks.first_audio.expect("the turn was heard") / 1000.0 - 0.3;
    let end = t.speech_end_s + t.marks.turn_done.expect("the turn ended") / 1000.0;
    let clip = dir.path().join(format!("reply-{}.wav", t.turn));
    excerpt(output, start, end, &clip);
    run_ok(&["transcribe", clip.to_str().unwrap(), "--model", "whisper-tiny.en"]).stdout
}
