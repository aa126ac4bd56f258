//! The assistant itself: on a recording, or live on the devices (and what listening costs).

use super::*;
use crate::control::Daemon;

pub(super) fn run_file(env: &Env, input: &Path, output: &Path, latency_log: Option<PathBuf>, realtime: bool) -> Result<()> {
    let clip = audio::read_wav(input, audio::ASR_RATE_HZ)?;
    let engines = env.engines(false)?;
    let options = env.run_options(realtime, latency_log)?;
    let log = options.latency_log.clone();
    let report = pipeline::run(engines, options, pipeline::Io::File(clip.samples.clone()))?;
    let recording = report.recording.expect("a file run records its output");
    let (mut played, rate_hz) = (recording.samples, recording.rate_hz);
    // The output covers at least the input, so the two line up in an editor.
    let input_len = (clip.duration_s() * rate_hz as f64) as usize;
    if played.len() < input_len {
        played.resize(input_len, 0.0);
    }
    audio::write_wav(output, &played, rate_hz)?;
    print_turns(&report.turns);
    eprintln!(
        "{} turn{} answered; output {}{}",
        report.turns.len(),
        if report.turns.len() == 1 { "" } else { "s" },
        output.display(),
        log.map_or(String::new(), |l| format!(", latency log {}", l.display()))
    );
    Ok(())
}

pub(super) fn print_turns(turns: &[pipeline::telemetry::TurnRecord]) {
    for t in turns {
        let rt = t.round_trip_ms.map_or("-".into(), |ms| format!("{ms:.0} ms"));
        let state = if t.cancelled { format!(" (cancelled: {})", t.cancel_reason.as_deref().unwrap_or("")) } else { String::new() };
        eprintln!("turn {} at {:.2} s: heard {:?} → said {:?}; round trip {rt}{state}", t.turn, t.speech_end_s, t.transcript, t.spoken);
    }
}

/// What a live run cost while it listened.
pub(super) struct Listened {
    seconds: f64,
    turns: usize,
    /// Process CPU time (user + system) over wall time: 0.01 = 1 % of one core.
    pub(super) cpu_share: f64,
    capture_ms: f64,
    output_ms: f64,
    xruns: u64,
    reopens: u64,
}

/// `voxd run` on the microphone and speaker until SIGINT/SIGTERM, or for `listen_for`.
pub(super) fn run_live(env: &Env, latency_log: Option<PathBuf>, listen_for: Option<std::time::Duration>) -> Result<Listened> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    // The side doors first: a socket that cannot be opened is reported before the
    // models spend seconds loading.
    let sv = &env.config.service;
    let control = match listen_for {
        Some(_) => None, // a benchmark, not a service
        None => crate::control::open(Daemon::Run, &sv.control_socket)?,
    };
    let metrics = (!sv.metrics_listen.is_empty() && listen_for.is_none()).then(|| crate::metrics::bind("[service] metrics_listen", &sv.metrics_listen)).transpose()?;
    let engines = if env.config.wyoming.serve_in_run && listen_for.is_none() {
        // The Wyoming server on this process's engines (cli/wyoming.rs).
        serve_beside_run(env, env.load_engines(true)?)?
    } else {
        env.engines(true)?
    };
    let a = &env.config.audio;
    let mic = crate::device::Endpoint::resolve(&a.backend, &a.input_device, true)?;
    let speaker = crate::device::Endpoint::resolve(&a.backend, &a.output_device, false)?;
    // A microphone that is not there yet is waited for: restarting would only reload
    // every model, and it may be plugged in (or its source created) any time.
    let input = crate::device::Input::open_or_wait(mic, a.period_ms, a.capture_ring_ms).context("opening the microphone ([audio] input_device; `voxd devices` lists them)")?;
    let output = crate::device::Output::open(speaker, engines.tts_rate_hz, a.period_ms, a.output_ring_ms).context("opening the speaker ([audio] output_device)")?;
    let options = env.run_options(true, latency_log)?;
    let log = options.latency_log.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let listening_since: Arc<Mutex<Option<(std::time::Instant, std::time::Duration)>>> = Arc::default();
    let on_listening: pipeline::OnListening = {
        let (since, stop) = (listening_since.clone(), stop.clone());
        let (opened_in, opened_out, half_duplex) = (input.opened.clone(), output.opened.clone(), a.half_duplex);
        let mut doors = String::new();
        if let Some(socket) = &control {
            doors += &format!("\ncontrol socket {} (voxd ctl)", socket.path.display());
        }
        if let Some(addr) = metrics.as_ref().and_then(|m| m.local_addr().ok()) {
            doors += &format!("\nmetrics at http://{addr}/metrics");
        }
        Box::new(move |counters, health| {
            *since.lock().expect("not poisoned") = Some((std::time::Instant::now(), cpu_time()));
            let mode = if half_duplex { "half-duplex: not listening while speaking" } else { "barge-in: speak to interrupt" };
            eprintln!("listening on {opened_in}, speaking on {opened_out}; {mode}. Ctrl-C to stop.{doors}");
            // Under systemd: READY only now, with the engines warm and the mic open.
            if let Some(notifier) = crate::service::Notifier::from_env() {
                crate::service::ready(notifier, crate::service::watchdog_interval(), counters, health, stop.clone(), &format!("listening on {opened_in}"));
            }
            if let Some(d) = listen_for {
                std::thread::spawn(move || {
                    std::thread::sleep(d);
                    stop.store(true, Ordering::Release);
                });
            }
        })
    };
    let service = pipeline::Service { stop, drain_limit: std::time::Duration::from_secs_f32(sv.stop_drain_s), on_listening: Some(on_listening), control, metrics };
    let report = pipeline::run(engines, options, pipeline::Io::Devices { input, output, service })?;
    let (since, cpu_then) = listening_since.lock().expect("not poisoned").unwrap_or((std::time::Instant::now(), cpu_time()));
    let seconds = since.elapsed().as_secs_f64();
    let c = &report.counters;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let listened = Listened {
        seconds,
        turns: report.turns_total,
        cpu_share: (cpu_time() - cpu_then).as_secs_f64() / seconds.max(1e-3),
        capture_ms: load(&c.capture_latency_us) as f64 / 1000.0,
        output_ms: load(&c.output_latency_us) as f64 / 1000.0,
        xruns: load(&c.capture_xruns) + load(&c.playback_xruns),
        reopens: load(&c.input_reopens) + load(&c.output_reopens),
    };
    print_turns(&report.turns);
    eprintln!(
        "stopped after {} turn{} in {seconds:.0} s ({:.1} % of one core; devices reopened {} times, {} xruns){}",
        report.turns_total,
        if report.turns_total == 1 { "" } else { "s" },
        listened.cpu_share * 100.0,
        listened.reopens,
        listened.xruns,
        log.map_or(String::new(), |l| format!("; latency log {}", l.display()))
    );
    Ok(listened)
}

/// CPU time this process has used (user + system, every thread).
pub(super) fn cpu_time() -> std::time::Duration {
    // SAFETY: getrusage fills the struct it is given and nothing else.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| std::time::Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// `voxd bench-live`: listens on the live devices for `seconds` and reports what that
/// costs — CPU while idle (goal: at most 3 % of one core) and the latency the
/// devices' buffers add.
pub(super) fn bench_live(env: &Env, seconds: f64) -> Result<()> {
    const GOAL: f64 = 0.03;
    let l = run_live(env, None, Some(std::time::Duration::from_secs_f64(seconds)))?;
    println!("listened {:.1} s on the live devices; {} turns (for the idle figure, say nothing)", l.seconds, l.turns);
    println!("  CPU while listening   {:>6.2} % of one core   (goal <= {:.0} %: {:.2}x the goal)", l.cpu_share * 100.0, GOAL * 100.0, l.cpu_share / GOAL);
    println!("  capture latency       {:>6.1} ms  (device buffer, as the device reports it; + up to 10 ms until the pacer's next round)", l.capture_ms);
    println!("  output latency        {:>6.1} ms  (device buffer, as the device reports it)", l.output_ms);
    println!("  xruns {}, devices reopened {}", l.xruns, l.reopens);
    Ok(())
}
