//! Steering a running voxd: the control socket through `voxd ctl` (status, typed
//! turns, mute, push-to-talk, cancel; other users refused), the Prometheus endpoint,
//! and `voxd doctor`.

use std::io::{BufRead, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::live::{question, transcribe, Daemon, Pulse};
use crate::util::*;

/// Waits for `child` to end by itself, failing the test after `limit`.
fn finished_within(mut child: Child, limit: Duration) -> Run {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{child:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    Run { ok: out.status.success(), stdout: String::from_utf8_lossy(&out.stdout).into(), stderr: String::from_utf8_lossy(&out.stderr).into() }
}

fn ctl(socket: &Path, args: &[&str]) -> Run {
    let mut all = vec!["ctl", "--socket", socket.to_str().unwrap()];
    all.extend_from_slice(args);
    run(&all)
}

pub fn ctl_ok(socket: &Path, args: &[&str]) -> String {
    let r = ctl(socket, args);
    assert!(r.ok, "voxd ctl {args:?}: {}", r.stderr);
    r.stdout
}

pub fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200 OK") && reply.contains("text/plain; version=0.0.4"), "{reply}");
    reply
}

/// The value of the sample `series` (name and labels, exactly) in a scrape.
pub fn sample(scrape: &str, series: &str) -> f64 {
    let line = scrape.lines().find(|l| l.strip_prefix(series).is_some_and(|rest| rest.starts_with(' '))).unwrap_or_else(|| panic!("no {series} in:\n{scrape}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn the_control_socket_steers_a_running_voxd_and_the_metrics_count_its_turns() {
    let dir = tempdir();
    let pulse = Pulse::start(&dir);
    let (socket, port) = (dir.path().join("ctl/control.sock"), free_port());
    let mut daemon = Daemon::start_with(&pulse, &dir, &format!("[service]\ncontrol_socket = {:?}\nmetrics_listen = \"127.0.0.1:{port}\"", socket.to_str().unwrap()), &[]);
    assert!(daemon.stderr().contains(&format!("metrics at http://127.0.0.1:{port}/metrics")), "{}", daemon.stderr());
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600, "the socket is the owner's only");
    assert!(ctl_ok(&socket, &["status"]).starts_with("listening (microphone on)"));

    // A typed turn is answered aloud and logged as typed; it counts as a turn, not as
    // a spoken round trip.
    let started = ctl_ok(&socket, &["ask", "What is the capital of France?"]);
    assert!(started.starts_with("turn "), "{started}");
    let t = daemon.wait_for_turns(1, Duration::from_secs(60));
    assert!(t[0].typed && !t[0].cancelled && t[0].transcript == "What is the capital of France?", "{:?}", t[0]);
    assert!(!t[0].spoken.is_empty(), "the typed turn's answer was played: {:?}", t[0]);
    let m = scrape(port);
    assert_eq!(sample(&m, "voxd_turns_total{source=\"typed\",outcome=\"answered\"}"), 1.0);
    assert_eq!(sample(&m, "voxd_round_trip_seconds_count"), 0.0);

    // Muted, a question goes unheard; push-to-talk still gets through, and letting go
    // ends the turn.
    assert_eq!(ctl_ok(&socket, &["mute"]).trim(), "microphone muted");
    assert!(ctl_ok(&socket, &["status"]).starts_with("muted (microphone muted)"));
    let q = question(&dir, "q", "What is the capital of Italy?");
    pulse.say(&q);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(turns(&daemon.log).len(), 1, "a muted microphone made a turn; stderr:\n{}", daemon.stderr());
    // `voxd ctl ptt down` holds it while it runs, until `ptt up`.
    let holding = voxd().args(["ctl", "--socket", socket.to_str().unwrap(), "ptt", "down"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    wait_until("push-to-talk to be held", Duration::from_secs(20), || ctl_ok(&socket, &["status"]).contains("push-to-talk held"));
    pulse.say(&q);
    ctl_ok(&socket, &["ptt", "up"]);
    let held = finished_within(holding, Duration::from_secs(20));
    assert!(held.ok && held.stdout.contains("push-to-talk held (for 15 s at most)") && held.stdout.contains("push-to-talk released"), "{}{}", held.stdout, held.stderr);
    let t = daemon.wait_for_turns(2, Duration::from_secs(60));
    assert!(!t[1].typed && wer("What is the capital of Italy?", &t[1].transcript) < 0.5, "{:?}", t[1]);
    ctl_ok(&socket, &["unmute"]);

    // The spoken turn's latency is in the metrics.
    let m = scrape(port);
    assert_eq!(sample(&m, "voxd_turns_total{source=\"speech\",outcome=\"answered\"}"), 1.0);
    assert_eq!(sample(&m, "voxd_round_trip_seconds_count"), 1.0);
    assert_eq!(sample(&m, "voxd_stage_seconds_count{stage=\"asr\"}"), 1.0);
    let rt = sample(&m, "voxd_round_trip_seconds_sum") * 1000.0;
    assert!((rt - t[1].round_trip_ms.unwrap()).abs() < 1.0, "the histogram holds the logged round trip: {rt} vs {:?}", t[1].round_trip_ms);
    assert_eq!(sample(&m, "voxd_device_reopens_total{device=\"microphone\"}"), 0.0);

    // Cancel while it speaks: the reply stops and the turn is logged cancelled.
    ctl_ok(&socket, &["ask", "Tell me a long story about a dragon who lived in a castle by the sea."]);
    wait_until("the assistant to speak", Duration::from_secs(60), || ctl_ok(&socket, &["status"]).starts_with("speaking"));
    let cancelled = ctl_ok(&socket, &["cancel"]);
    assert!(cancelled.starts_with("turn ") && cancelled.trim().ends_with("cancelled"), "{cancelled}");
    let t = daemon.wait_for_turns(3, Duration::from_secs(30));
    assert!(t[2].cancelled && t[2].cancel_reason.as_deref() == Some("cancelled from the control socket"), "{:?}", t[2]);
    wait_until("the speaker to fall silent", Duration::from_secs(30), || ctl_ok(&socket, &["status"]).starts_with("listening"));
    assert_eq!(ctl_ok(&socket, &["cancel"]).trim(), "nothing to cancel: no turn was being answered");

    // Another user is refused even when the socket's mode lets them connect. (The
    // system's python: a user's pyenv is not nobody's.)
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(socket.parent().unwrap(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let probe = format!(
        "import socket; s = socket.socket(socket.AF_UNIX); s.connect({:?}); s.sendall(b'{{\"cmd\":\"mute\"}}\\n'); print(s.makefile().readline())",
        socket.to_str().unwrap()
    );
    let out = Command::new("setpriv").args(["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", &probe]).output().expect("setpriv runs (util-linux)");
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "nobody could not even connect: {}", String::from_utf8_lossy(&out.stderr));
    assert!(reply.contains("\"ok\":false") && reply.contains("refused: uid 65534"), "{reply}");
    assert!(ctl_ok(&socket, &["status"]).starts_with("listening (microphone on)"), "the refused request changed nothing");
    daemon.wait_for_stderr("control socket: refused uid 65534", Duration::from_secs(30));

    daemon.stop();
    assert!(!socket.exists(), "the socket is removed on exit");
}

/// `voxd ctl status --json`'s push_to_talk.
fn push_to_talk_held(socket: &Path) -> bool {
    serde_json::from_str::<serde_json::Value>(&ctl_ok(socket, &["status", "--json"])).unwrap()["push_to_talk"] == true
}

/// Found from outside: a client that pressed push-to-talk and went away left it
/// held — the microphone open for good. Nor may a client make voxd read an endless
/// line. (The idle timeout and the connection cap are tested in src/control.rs, on
/// short limits.)
#[test]
fn the_control_socket_holds_on_to_nothing_a_client_leaves_behind() {
    let dir = tempdir();
    let pulse = Pulse::start(&dir);
    let socket = dir.path().join("control.sock");
    let mut daemon = Daemon::start_with(&pulse, &dir, &format!("[service]\ncontrol_socket = {:?}", socket.to_str().unwrap()), &[]);

    let mut client = UnixStream::connect(&socket).unwrap();
    client.write_all(b"{\"cmd\":\"push_to_talk\",\"down\":true}\n").unwrap();
    let mut reply = String::new();
    std::io::BufReader::new(&client).read_line(&mut reply).unwrap();
    assert!(reply.contains("\"push_to_talk\":true"), "{reply}");
    assert!(push_to_talk_held(&socket));
    drop(client);
    wait_until("voxd to let go of the press of a client that left", Duration::from_secs(20), || !push_to_talk_held(&socket));
    daemon.wait_for_stderr("push-to-talk let go: the client that pressed it left", Duration::from_secs(10));

    // A line that never ends: refused, and the connection closed, long before the
    // client runs out of things to send.
    let client = UnixStream::connect(&socket).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (sent_tx, sent) = std::sync::mpsc::channel();
    let mut writer = client.try_clone().unwrap();
    std::thread::spawn(move || {
        let (chunk, mut total) = ([b'x'; 65536], 0usize);
        // Until voxd closes the socket (or 1 GiB, which no socket buffer holds).
        while total < 1 << 30 {
            match writer.write(&chunk) {
                Ok(n) => total += n,
                Err(_) => break,
            }
        }
        let _ = sent_tx.send(total);
    });
    let mut reply = String::new();
    std::io::BufReader::new(&client).read_line(&mut reply).unwrap();
    assert!(reply.contains("\"ok\":false") && reply.contains("a request line over 8192 bytes"), "{reply}");
    let total = sent.recv_timeout(Duration::from_secs(30)).expect("voxd kept the endless line's connection open");
    assert!(total < 64 << 20, "{total} bytes went in before voxd closed the connection");
    daemon.wait_for_stderr("control socket: refused a request line over 8192 bytes", Duration::from_secs(10));
    assert!(ctl_ok(&socket, &["status"]).starts_with("listening"), "voxd runs on");
    daemon.stop();
}

/// Slowloris clients of the metrics endpoint: each sends a request's head a byte
/// every 100 ms and never finishes it, on one connection; one the endpoint held and
/// then closed (at its deadline) is replaced, so the flood lasts until stopped.
struct Flood {
    stop: Arc<AtomicBool>,
    /// How long each connection the endpoint closed had been open.
    lives: Arc<Mutex<Vec<Duration>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A connection the endpoint closed sooner than this was closed "at once".
const AT_ONCE: Duration = Duration::from_secs(2);

impl Flood {
    fn start(port: u16, clients: usize) -> Flood {
        let connect = move || {
            let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_nonblocking(true).unwrap();
            (s, Instant::now(), 0usize)
        };
        let mut open: Vec<_> = (0..clients).map(|_| connect()).collect();
        let (stop, lives) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let (thread_stop, thread_lives) = (stop.clone(), lives.clone());
        let thread = std::thread::spawn(move || {
            let head = b"GET /metrics HTTP/1.1\r\nX-Slow: ";
            while !thread_stop.load(Ordering::Relaxed) {
                let mut kept = Vec::with_capacity(open.len());
                for (mut s, since, sent) in open.drain(..) {
                    let byte = head.get(sent).copied().unwrap_or(b'a');
                    let _ = s.write(&[byte]);
                    match s.read(&mut [0u8; 512]) {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => kept.push((s, since, sent + 1)),
                        _ => {
                            let life = since.elapsed();
                            thread_lives.lock().unwrap().push(life);
                            if life >= AT_ONCE {
                                kept.push(connect());
                            }
                        }
                    }
                }
                open = kept;
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Flood { stop, lives, thread: Some(thread) }
    }

    fn closed_at_once(&self) -> usize {
        self.lives.lock().unwrap().iter().filter(|l| **l < AT_ONCE).count()
    }

    /// The longest a closed connection that was not closed at once had been open.
    fn held_longest(&self) -> Option<Duration> {
        self.lives.lock().unwrap().iter().filter(|l| **l >= AT_ONCE).max().copied()
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The metrics endpoint may face a network: 200 slow clients are cut down to its
/// cap (32) at once, a real scrape is answered in the middle of them, none is held
/// past its deadline, and the pipeline — on a runtime the endpoint does not share —
/// answers a typed turn aloud meanwhile, without one underrun.
#[test]
fn a_flood_of_slow_metrics_clients_locks_out_no_scrape_and_no_reply() {
    let dir = tempdir();
    let pulse = Pulse::start(&dir);
    let (socket, port) = (dir.path().join("control.sock"), free_port());
    let daemon = Daemon::start_with(&pulse, &dir, &format!("[service]\ncontrol_socket = {:?}\nmetrics_listen = \"127.0.0.1:{port}\"", socket.to_str().unwrap()), &[]);
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", daemon.pid())).unwrap().filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok()).map(|n| n.trim().to_string()).collect();
    assert!(threads.iter().any(|t| t == "voxd-metrics"), "the endpoint has a thread of its own: {threads:?}");

    let flood = Flood::start(port, 200);
    // At once: long before any deadline (the 2 s are for a loaded machine; a
    // connection is closed within milliseconds of the one that displaced it).
    wait_until("all but 32 of the 200 to be closed at once", Duration::from_secs(20), || flood.closed_at_once() >= 200 - 32);
    let m = scrape(port);
    assert!(m.contains("voxd_uptime_seconds"), "{m}");

    let recorder = pulse.record_speaker(&dir.path().join("speaker.wav"));
    ctl_ok(&socket, &["ask", "What is the capital of France?"]);
    let t = daemon.wait_for_turns(1, Duration::from_secs(60));
    // The tail of the answer, still in the devices' and the recorder's buffers.
    std::thread::sleep(Duration::from_millis(1500));
    let heard = recorder.stop();
    assert!(scrape(port).contains("voxd_turns_total{source=\"typed\",outcome=\"answered\"} 1"), "a scrape after the turn, the flood still on");
    let t = &t[0];
    assert!(t.typed && !t.cancelled && !t.reply.is_empty() && t.spoken == t.reply, "{t:?}");
    assert_eq!(t.counters.playback_underruns, 0, "the speaker ran dry during the flood: {t:?}");
    let spoken = transcribe(&heard);
    assert!(cer(&t.reply, &spoken) < 0.35, "speaker said {spoken:?}, log says {:?}", t.reply);

    // The held ones are cut at the 10 s deadline (a loaded machine may notice late).
    wait_until("a held slow client to reach its deadline", Duration::from_secs(60), || flood.held_longest().is_some());
    let longest = flood.held_longest().unwrap();
    assert!(longest < Duration::from_secs(25), "a slow client was held for {longest:?}");
    drop(flood);
    daemon.stop();
}

#[test]
fn a_stop_cuts_a_long_reply_short_after_the_drain_limit() {
    let dir = tempdir();
    let pulse = Pulse::start(&dir);
    let socket = dir.path().join("control.sock");
    let daemon = Daemon::start_with(&pulse, &dir, &format!("[service]\ncontrol_socket = {:?}\nstop_drain_s = 1.0\n[llm]\nmax_reply_tokens = 400", socket.to_str().unwrap()), &[]);
    ctl_ok(&socket, &["ask", "Tell me a long story about a dragon who lived in a castle by the sea."]);
    wait_until("the assistant to speak", Duration::from_secs(60), || ctl_ok(&socket, &["status"]).starts_with("speaking"));
    let stopping = Instant::now();
    let log = daemon.log.clone();
    daemon.stop();
    let took = stopping.elapsed();
    let t = turns(&log);
    assert_eq!(t.len(), 1);
    assert!(t[0].cancelled && t[0].cancel_reason.as_deref().is_some_and(|r| r.contains("stop_drain_s")), "{:?}", t[0]);
    // Without the cap the whole 400-token story would be played first: over a
    // minute. 20 s leaves a loaded machine room to wind the pipeline down.
    assert!(took < Duration::from_secs(20), "stopped {took:?} after SIGTERM with a 1 s drain limit");
}

/// The turn that never ended: about one reply in eight was played in full but never
/// counted as played, so it never ended, and in half-duplex the microphone stayed
/// deaf. Typed turns one after another, each sent as soon as the previous one is
/// logged, as a client would: every reply is heard in full and its turn ends on its
/// own (not cut by the next question, nor by the stalled-speaker deadline).
#[test]
fn typed_turns_one_after_another_are_each_heard_in_full_and_end() {
    let dir = tempdir();
    let pulse = Pulse::start(&dir);
    let socket = dir.path().join("control.sock");
    let daemon = Daemon::start_with(&pulse, &dir, &format!("[service]\ncontrol_socket = {:?}\n[llm]\nmax_reply_tokens = 24", socket.to_str().unwrap()), &[]);
    let questions = [
        "What is two plus two?", "Name a color.", "What is the capital of France?", "Say hello.", "What day comes after Monday?",
        "Is the sky blue?", "Name a fruit.", "What is ten minus three?", "Who wrote Romeo and Juliet?", "Name an animal.",
        "What is the opposite of hot?", "Say goodbye.", "How many legs does a cat have?", "Name a planet.", "What is water made of?",
        "Name a month.", "What is three times three?", "Tell me a short joke.", "What color is grass?", "Thank you.",
    ];
    for (i, q) in questions.iter().enumerate() {
        ctl_ok(&socket, &["ask", q]);
        let logged = daemon.wait_for_turns(i + 1, Duration::from_secs(60));
        let t = &logged[i];
        assert!(t.transcript == *q && !t.cancelled, "turn {} for {q:?} did not end on its own: {t:?}", i + 1);
        // (Sentences heard are joined with spaces; the reply keeps the model's line breaks.)
        let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(!t.spoken.is_empty() && words(&t.spoken) == words(&t.reply), "the whole reply was heard: {t:?}");
        assert_eq!(t.counters.playback_stalls, 0, "the speaker's own timeline ended the turn, not the stall deadline: {t:?}");
    }
    wait_until("the speaker to fall silent", Duration::from_secs(30), || ctl_ok(&socket, &["status"]).starts_with("listening"));
    daemon.stop();
}

#[test]
fn voxd_doctor_passes_a_ready_machine() {
    let dir = tempdir();
    let pulse = Pulse::start(&dir);
    let config = deterministic_config(&dir, "[asr]\nmodel = \"whisper-tiny.en\"\n[llm]\nmodel = \"smollm2-135m-instruct\"");
    let mut cmd = voxd();
    pulse.isolate_command(&mut cmd);
    let r = run_cmd(cmd.args(["--config", config.to_str().unwrap(), "doctor"]));
    assert!(r.ok, "doctor failed on a ready machine:\n{}{}", r.stdout, r.stderr);
    for needle in ["ok    asr model      whisper-tiny.en", "ok    llm model      smollm2-135m-instruct", "sha256 verified", "ok    espeak-ng", "ok    onnxruntime", "ok    ggml", "CUDA: not built in", "ok    gpu            none in this ggml build", "ok    microphone", "ok    speaker", "ready: `voxd run` has what it needs"] {
        assert!(r.stdout.contains(needle), "no {needle:?} in:\n{}", r.stdout);
    }
}

#[test]
fn voxd_doctor_names_each_problem_with_its_fix_and_fails() {
    let dir = tempdir();
    // A models directory holding a damaged copy of the ASR model, and nothing else.
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    let mut bytes = std::fs::read(model("ggml-tiny.en.bin")).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(models.join("ggml-tiny.en.bin"), bytes).unwrap();
    let config = deterministic_config(&dir, &format!("[paths]\nmodels_dir = {:?}\n[asr]\nmodel = \"whisper-tiny.en\"\n[llm]\nmodel = \"smollm2-135m-instruct\"\n[audio]\nbackend = \"pulseaudio\"", models.to_str().unwrap()));
    let mut cmd = voxd();
    // No sound server there.
    cmd.env("PULSE_SERVER", format!("unix:{}", dir.path().join("no-server").display())).env("XDG_RUNTIME_DIR", dir.path());
    let r = run_cmd(cmd.args(["--config", config.to_str().unwrap(), "doctor"]));
    assert!(!r.ok, "doctor passed a broken machine:\n{}", r.stdout);
    for needle in [
        "FAIL  asr model      whisper-tiny.en",
        "matches no pinned digest",
        "fix: fetch it again: `voxd models fetch whisper-tiny.en`",
        "FAIL  llm model",
        "smollm2-135m-instruct",
        // A microphone is waited for (voxd run starts and hears once it can): a warning.
        "warn  microphone",
        "`voxd run` waits for it",
        "fix: start the sound server",
        "not ready: ",
    ] {
        assert!(r.stdout.contains(needle), "no {needle:?} in:\n{}", r.stdout);
    }
    assert!(r.stderr.contains("would stop `voxd run`"), "{}", r.stderr);
}
