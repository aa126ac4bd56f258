//! Live audio through a real sound server: a private PulseAudio started by each test,
//! with two null sinks — "room", whose monitor is the default source (the
//! microphone: a question played into it is what voxd hears), and "spk", the default
//! sink (the speaker: its monitor is recorded and the answer transcribed back). voxd
//! reaches the server through cpal's PulseAudio host, and in one test through ALSA's
//! pulse plugin.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// A PulseAudio server of the test's own, stopped when dropped.
pub struct Pulse {
    dir: PathBuf,
    daemon: Child,
}

impl Pulse {
    pub fn start(dir: &tempfile::TempDir) -> Pulse {
        let dir = dir.path().join("pulse");
        std::fs::create_dir_all(dir.join("home")).unwrap();
        let daemon = Pulse::spawn_daemon(&dir);
        let pulse = Pulse { dir, daemon };
        pulse.wait_until_up();
        pulse
    }

    fn spawn_daemon(dir: &Path) -> Child {
        let socket = dir.join("native");
        let mut c = Command::new("pulseaudio");
        // -n: none of the system's default.pa (no hardware here); only what the test needs.
        c.args(["-n", "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no", "--disable-shm=yes", "--log-target=stderr"])
            .arg("-L")
            .arg(format!("module-native-protocol-unix auth-anonymous=1 socket={}", socket.display()))
            .args(["-L", "module-null-sink sink_name=room", "-L", "module-null-sink sink_name=spk"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("pulseaudio.log")).unwrap());
        Pulse::isolate(dir, &mut c);
        c.env("HOME", dir.join("home"));
        c.spawn().expect("pulseaudio runs (apt package pulseaudio; ./scripts/setup installs it)")
    }

    /// Clients and the daemon find each other here, and nowhere else on the machine.
    fn isolate(dir: &Path, c: &mut Command) {
        c.env("PULSE_SERVER", format!("unix:{}", dir.join("native").display()))
            .env("XDG_RUNTIME_DIR", dir)
            .env_remove("PULSE_SINK")
            .env_remove("PULSE_SOURCE");
    }

    /// Points a command at this server (and no other).
    pub fn isolate_command(&self, c: &mut Command) {
        Pulse::isolate(&self.dir, c);
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        Pulse::isolate(&self.dir, &mut c);
        c
    }

    pub fn pactl(&self, args: &[&str]) -> String {
        let out = self.command("pactl").args(args).output().expect("pactl runs (apt package pulseaudio-utils)");
        assert!(out.status.success(), "pactl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into()
    }

    fn wait_until_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.command("pactl").arg("info").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success()) {
            assert!(Instant::now() < deadline, "pulseaudio did not start: {}", std::fs::read_to_string(self.dir.join("pulseaudio.log")).unwrap_or_default());
            std::thread::sleep(Duration::from_millis(100));
        }
        self.pactl(&["set-default-source", "room.monitor"]);
        self.pactl(&["set-default-sink", "spk"]);
    }

    /// The server dies under voxd (SIGKILL: no goodbye to its clients), stays away for
    /// `down`, and comes back with the same devices.
    pub fn crash_and_restart(&mut self, down: Duration) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        std::thread::sleep(down);
        self.daemon = Pulse::spawn_daemon(&self.dir);
        self.wait_until_up();
    }

    /// Says `wav` into the microphone (plays it into "room"), returning when it is over.
    pub fn say(&self, wav: &Path) {
        self.say_into("room", wav);
    }

    /// Plays `wav` into `sink`, whose monitor is a microphone.
    pub fn say_into(&self, sink: &str, wav: &Path) {
        let status = self.command("paplay").args(["-d", sink]).arg(wav).status().expect("paplay runs");
        assert!(status.success(), "paplay -d {sink} {}", wav.display());
    }

    /// Records what the speaker plays, 16 kHz mono, until the recorder is stopped.
    pub fn record_speaker(&self, out: &Path) -> Recorder {
        let child = self.command("parecord").args(["-d", "spk.monitor", "--rate=16000", "--channels=1", "--format=s16le", "--file-format=wav"]).arg(out).spawn().expect("parecord runs");
        Recorder { child, out: out.to_path_buf() }
    }

    /// The speaker also leaks into the microphone, as in a room without echo
    /// cancellation.
    fn loop_speaker_into_microphone(&self) {
        self.pactl(&["load-module", "module-loopback", "source=spk.monitor", "sink=room", "latency_msec=20"]);
    }
}

impl Drop for Pulse {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

pub struct Recorder {
    child: Child,
    out: PathBuf,
}

impl Recorder {
    pub fn stop(mut self) -> PathBuf {
        // SIGINT lets parecord finish the WAV header.
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        self.out.clone()
    }
}

/// `voxd run` on the live devices, as a user starts it, with its stderr kept.
pub struct Daemon {
    child: Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(pulse: &Pulse, dir: &tempfile::TempDir, config_extra: &str) -> Daemon {
        Daemon::start_with(pulse, dir, config_extra, &[])
    }

    /// As `start`, with more environment (a service manager's, say).
    pub fn start_with(pulse: &Pulse, dir: &tempfile::TempDir, config_extra: &str, env: &[(&str, &str)]) -> Daemon {
        let config = deterministic_config(dir, config_extra);
        let log = dir.path().join(format!("live-{}.jsonl", config.file_stem().unwrap().to_string_lossy()));
        let mut cmd = voxd();
        Pulse::isolate(&pulse.dir, &mut cmd);
        cmd.envs(env.iter().copied());
        let mut child = cmd
            .args(["--config", config.to_str().unwrap(), "run", "--latency-log", log.to_str().unwrap()])
                        .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        {
            let (mut pipe, stderr) = (child.stderr.take().unwrap(), stderr.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    stderr.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let mut d = Daemon { child, stderr, log };
        d.wait_for_stderr("listening on", Duration::from_secs(120));
        d
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn wait_for_stderr(&mut self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        // A whole line: stderr is unbuffered, so a line can be read half written.
        while !said_in_a_whole_line(&self.stderr(), needle) {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(200));
                panic!("voxd exited ({status}) before saying {needle:?}; stderr:\n{}", self.stderr());
            }
            assert!(Instant::now() < deadline, "voxd never said {needle:?}; stderr:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the latency log holds `n` finished turns.
    pub fn wait_for_turns(&self, n: usize, limit: Duration) -> Vec<voxd::pipeline::telemetry::TurnRecord> {
        let deadline = Instant::now() + limit;
        loop {
            let t = turns(&self.log);
            if t.len() >= n {
                return t;
            }
            assert!(Instant::now() < deadline, "{} of {n} turns logged; stderr:\n{}", t.len(), self.stderr());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, as systemd stops it: voxd must drain and exit 0.
    pub fn stop(mut self) -> String {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("voxd did not stop within 30 s of SIGTERM; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        std::thread::sleep(Duration::from_millis(200)); // the stderr reader's last lines
        assert!(status.success(), "voxd exited with {status} after SIGTERM; stderr:\n{}", self.stderr());
        self.stderr()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn question(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    conversation(dir, name, &[(0.3, text)], 0.3).0
}

/// The recording without the silence before and after it (a little kept).
fn voiced_part(wav: &Path) -> PathBuf {
    let out = wav.with_extension("voiced.wav");
    let trim = ["silence", "1", "0.05", "0.5%", "reverse", "silence", "1", "0.05", "0.5%", "reverse", "pad", "0.3", "0.3"];
    let status = Command::new("sox").arg(wav).arg(&out).args(trim).status().expect("sox runs (apt package sox)");
    assert!(status.success(), "sox could not trim {}", wav.display());
    out
}

/// What a recording of the speaker says. Only its voiced part is transcribed: given
/// the seconds of silence around a reply, tiny.en now and then hears it twice.
pub fn transcribe(wav: &Path) -> String {
    let voiced = voiced_part(wav);
    run_ok(&["transcribe", voiced.to_str().unwrap()]).stdout.trim().to_string()
}

#[test]
fn voxd_devices_lists_the_sound_server() {
    let dir = tempdir();
    let pulse = Pulse::start(&dir);
    let mut cmd = voxd();
    Pulse::isolate(&pulse.dir, &mut cmd);
    let r = run_cmd(cmd.arg("devices"));
    assert!(r.ok, "{}", r.stderr);
    // The server's own devices, by the names the test gave them; voxd uses the server.
    assert!(r.stdout.contains("PulseAudio (voxd uses this one"), "{}", r.stdout);
    assert!(r.stdout.contains("inputs (default: pulseaudio:room.monitor)") && r.stdout.contains("outputs (default: pulseaudio:spk)"), "{}", r.stdout);
    assert!(r.stdout.contains("pulseaudio:spk.monitor"), "{}", r.stdout);
    // ALSA too, its pulse plugin asked what it supports.
    let pulse_plugin = r.stdout.lines().skip_while(|l| !l.trim_start().starts_with("alsa:pulse")).nth(1).unwrap_or_default();
    assert!(pulse_plugin.contains("Hz") && pulse_plugin.contains("f32"), "{}", r.stdout);
}

#[test]
fn a_question_spoken_into_the_microphone_is_answered_from_the_speaker() {
    answered_live("");
}

/// The same through ALSA (its pulse plugin), as on a system where voxd talks to the
/// sound cards.
#[test]
fn the_alsa_backend_answers_too() {
    answered_live("[audio]\nbackend = \"alsa\"\n");
}

fn answered_live(config: &str) {
    let dir = tempdir();
    let pulse = Pulse::start(&dir);
    let asked = question(&dir, "q", "What is the capital of France?");
    let voxd = Daemon::start(&pulse, &dir, config);
    let system = if config.contains("alsa") { "alsa:default" } else { "pulseaudio:room.monitor" };
    assert!(voxd.stderr().contains(&format!("listening on {system}")), "{}", voxd.stderr());
    let recorder = pulse.record_speaker(&dir.path().join("speaker.wav"));
    pulse.say(&asked);
    let turns = voxd.wait_for_turns(1, Duration::from_secs(60));
    // The tail of the answer, still in the devices' and the recorder's buffers
    // (generous: a loaded machine drains them late; only silence follows).
    std::thread::sleep(Duration::from_millis(1500));
    let heard = recorder.stop();
    let stderr = voxd.stop();

    let t = &turns[0];
    assert!(t.transcript.to_lowercase().contains("capital of france"), "heard {:?}", t.transcript);
    assert!(!t.reply.is_empty() && !t.cancelled, "{t:?}");
    let rt = t.round_trip_ms.expect("the answer was heard");
    assert!(rt > 0.0, "round trip {rt}");
    let audio = t.audio.as_ref().expect("live turns log the devices' latency");
    assert!(audio.capture_ms >= 0.0 && audio.capture_ms < 500.0 && audio.output_ms > 0.0 && audio.output_ms < 500.0, "{audio:?}");
    // What came out of the speaker is the reply the log says was given.
    let spoken = transcribe(&heard);
    let error = cer(&t.reply, &spoken);
    assert!(error < 0.35, "speaker said {spoken:?}, log says {:?} (CER {error:.2}); voxd's log:\n{stderr}", t.reply);
    assert!(stderr.contains("stopping: finishing the turn in flight"), "{stderr}");
}

/// With the speaker leaking into the microphone, half-duplex keeps the assistant
/// from answering itself; the same room with half-duplex off shows the echo is there.
#[test]
fn half_duplex_keeps_the_assistant_from_hearing_itself() {
    let dir = tempdir();
    let pulse = Pulse::start(&dir);
    pulse.loop_speaker_into_microphone();
    let asked = question(&dir, "q", "What is the capital of France?");

    let deaf = Daemon::start(&pulse, &dir, "");
    pulse.say(&asked);
    deaf.wait_for_turns(1, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(4)); // the echo's chance to become a turn
    let deaf_log = deaf.log.clone();
    deaf.stop();
    let half_duplex = turns(&deaf_log);
    assert_eq!(half_duplex.len(), 1, "half-duplex: the assistant answered its own voice: {:?}", half_duplex.iter().map(|t| &t.transcript).collect::<Vec<_>>());

    let hearing = Daemon::start(&pulse, &dir, "[audio]\nhalf_duplex = false\n[agent]\nbarge_in = false\n");
    pulse.say(&asked);
    hearing.wait_for_turns(2, Duration::from_secs(60));
    let full_duplex = turns(&hearing.log);
    // Killed, not stopped: talking to itself, it may be in the middle of a long reply
    // that a graceful stop would play to the end.
    drop(hearing);
    assert!(full_duplex.len() >= 2, "control: without half-duplex the echo should be heard");
}

/// The server dies while the assistant is answering (and listening): the devices are
/// reported and reopened, the interrupted turn still ends in the log, and the next
/// question is answered.
#[test]
fn a_sound_server_that_dies_mid_answer_is_reopened_and_the_next_question_answered() {
    let dir = tempdir();
    let mut pulse = Pulse::start(&dir);
    let asked = question(&dir, "q", "What is the capital of France?");
    let mut voxd = Daemon::start(&pulse, &dir, "");

    pulse.say(&asked);
    voxd.wait_for_stderr("heard:", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(800)); // the answer has begun
    pulse.crash_and_restart(Duration::from_secs(1));
    voxd.wait_for_stderr("microphone: reopened", Duration::from_secs(30));
    voxd.wait_for_stderr("speaker: reopened", Duration::from_secs(30));
    voxd.wait_for_turns(1, Duration::from_secs(30));

    let recorder = pulse.record_speaker(&dir.path().join("speaker.wav"));
    pulse.say(&asked);
    let turns = voxd.wait_for_turns(2, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(1500)); // the answer's tail, as above
    let heard = recorder.stop();
    let stderr = voxd.stop();

    assert!(stderr.contains("microphone: ") && stderr.contains("reopening"), "the failure is reported: {stderr}");
    let t = &turns[1];
    assert!(t.transcript.to_lowercase().contains("capital of france"), "heard {:?}", t.transcript);
    assert!(t.counters.device_reopens >= 2, "the turn log says the devices were reopened: {:?}", t.counters);
    let spoken = transcribe(&heard);
    assert!(cer(&t.reply, &spoken) < 0.35, "speaker said {spoken:?}, log says {:?}", t.reply);
}

/// Whether `needle` is in a line of `stderr` that has been written to its end.
fn said_in_a_whole_line(stderr: &str, needle: &str) -> bool {
    let whole = stderr.rfind('\n').map_or("", |end| &stderr[..end]);
    whole.contains(needle)
}
