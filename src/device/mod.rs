//! Live audio devices: cpal on a PulseAudio server (PulseAudio or PipeWire-pulse,
//! through cpal's native host) or on ALSA, a capture stream feeding a ring and a
//! playback stream draining one.
//!
//! The callbacks (`callbacks.rs`) only copy samples between the device and a
//! pre-allocated SPSC ring and bump atomic counters: no allocation, lock, I/O or
//! channel send (a test counts allocations around them). Each stream is owned by a
//! supervisor thread that rebuilds it, with backoff, when it fails or goes silent —
//! a device that vanishes is reported and reopened while voxd keeps running.

/// `$stream!(T)` for the sample type of `$format`: the formats the callbacks convert
/// (a build must name the type at compile time). Defined before the modules that use it.
macro_rules! by_sample_format {
    ($format:expr, $stream:ident) => {
        match $format {
            cpal::SampleFormat::F32 => $stream!(f32),
            cpal::SampleFormat::I16 => $stream!(i16),
            cpal::SampleFormat::I32 => $stream!(i32),
            cpal::SampleFormat::U16 => $stream!(u16),
            cpal::SampleFormat::U8 => $stream!(u8),
            other => anyhow::bail!("sample format {other} is not supported"),
        }
    };
}

mod callbacks;
pub mod input;
pub mod output;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cpal::traits::{DeviceTrait, HostTrait};

pub use input::Input;
pub use output::Output;

/// What a stream's callbacks report, read by its supervisor and the turn log.
#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    /// When the last callback ran (ms since `epoch`): a stream that stops calling
    /// back is dead even if it reported nothing.
    last_callback_ms: AtomicU64,
    /// Latency the device and its buffers add (µs): capture → callback, or callback →
    /// playback, as the device reports it, smoothed (see `observe_latency`).
    pub latency_us: AtomicU64,
    /// Overruns and underruns the device reported (cpal recovers from them itself).
    pub xruns: AtomicU64,
    /// Capture: samples the ring had no room for. Playback: callbacks that came up
    /// short (silence played) while more of a reply was on its way.
    pub lost: AtomicU64,
    /// Set by the error callback: the stream must be rebuilt.
    pub failed: AtomicBool,
    /// Errors other than xruns, in all; when the first of those since the last
    /// callback came (ms since `epoch`, plus one: zero is none); and the latest one's
    /// kind (an index into `ERROR_KINDS`: stored without allocating).
    pub errors: AtomicU64,
    erring_since_ms: AtomicU64,
    last_error: AtomicU8,
    /// Times the stream was reopened after a failure.
    pub reopens: AtomicU64,
    /// No stream is open: the device is gone or not there yet, and its supervisor
    /// keeps trying to open it. Nothing flows, and nothing is wrong with voxd.
    pub absent: AtomicBool,
}

impl Health {
    fn new() -> Health {
        Health {
            epoch: Instant::now(),
            last_callback_ms: AtomicU64::new(0),
            latency_us: AtomicU64::new(0),
            xruns: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            erring_since_ms: AtomicU64::new(0),
            last_error: AtomicU8::new(u8::MAX),
            reopens: AtomicU64::new(0),
            absent: AtomicBool::new(false),
        }
    }

    fn beat(&self) {
        self.last_callback_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.erring_since_ms.store(0, Ordering::Relaxed);
    }

    /// One callback's reading of the device's latency (on the audio thread: atomics
    /// only). Kept as a moving average of the readings that say something: PulseAudio's
    /// backend interpolates between polls of the server and reads zero whenever a poll
    /// is late (a busy machine), and no device plays with no buffer at all.
    fn observe_latency(&self, us: u64) {
        if us == 0 {
            return;
        }
        let before = self.latency_us.load(Ordering::Relaxed);
        let now = if before == 0 { us } else { before - before / 8 + us / 8 };
        self.latency_us.store(now, Ordering::Relaxed);
    }

    /// A stream's error callback (on its audio thread: atomics only). cpal recovers
    /// from xruns itself, and carries on after most other errors; a device or server
    /// that is gone — or errors that have kept coming for `ERRORS_FATAL_AFTER` with no
    /// audio between them — leave a stream that must be rebuilt.
    fn on_error(&self, kind: cpal::ErrorKind) {
        self.on_error_at(kind, self.epoch.elapsed());
    }

    fn on_error_at(&self, kind: cpal::ErrorKind, now: Duration) {
        use cpal::ErrorKind as K;
        if kind == K::Xrun {
            self.xruns.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let code = ERROR_KINDS.iter().position(|k| *k == kind).map_or(u8::MAX, |i| i as u8);
        self.last_error.store(code, Ordering::Relaxed);
        self.errors.fetch_add(1, Ordering::Relaxed);
        let now_ms = now.as_millis() as u64 + 1;
        let since_ms = match self.erring_since_ms.compare_exchange(0, now_ms, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => now_ms, // the first since the last callback
            Err(first) => first,
        };
        let erring_for = Duration::from_millis(now_ms - since_ms.min(now_ms));
        if matches!(kind, K::DeviceNotAvailable | K::HostUnavailable | K::StreamInvalidated) || erring_for >= ERRORS_FATAL_AFTER {
            self.failed.store(true, Ordering::Relaxed);
        }
    }

    /// The kind of the latest error, for messages.
    pub fn last_error(&self) -> Option<cpal::ErrorKind> {
        ERROR_KINDS.get(self.last_error.load(Ordering::Relaxed) as usize).copied()
    }

    /// Time since the last callback.
    pub fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_callback_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    pub fn latency_ms(&self) -> f64 {
        self.latency_us.load(Ordering::Relaxed) as f64 / 1000.0
    }
}

/// Error kinds by position, so an audio thread can record one in an `AtomicU8`.
const ERROR_KINDS: [cpal::ErrorKind; 14] = {
    use cpal::ErrorKind as K;
    [
        K::DeviceBusy,
        K::DeviceChanged,
        K::DeviceNotAvailable,
        K::HostUnavailable,
        K::InvalidInput,
        K::PermissionDenied,
        K::RealtimeDenied,
        K::ResourceExhausted,
        K::StreamInvalidated,
        K::UnsupportedConfig,
        K::UnsupportedOperation,
        K::Xrun,
        K::BackendError,
        K::Other,
    ]
};

/// How long errors may keep coming with no audio between them before a stream counts
/// as failed. A time, not a count: a stream just prepared (opened, or recovering from
/// an xrun) can err hundreds of times in a few milliseconds and then play on — ALSA's
/// PulseAudio plugin answers `snd_pcm_avail_delay` with EIO until its stream is ready,
/// and cpal polls again at once (measured: bursts of up to 1340 errors within 1-10 ms).
/// Counting 20 of them reopened such streams, and a reopen mid-reply lost what was
/// queued (an official CI run heard "It's his Paris." for "The capital of France is Paris.").
const ERRORS_FATAL_AFTER: Duration = Duration::from_millis(500);

/// A supervisor's view of the errors a stream survived: warns about new ones, at most
/// once every 10 s.
struct ErrorLog {
    device: &'static str,
    seen: u64,
    said_at: Option<Instant>,
}

impl ErrorLog {
    fn new(device: &'static str) -> ErrorLog {
        ErrorLog { device, seen: 0, said_at: None }
    }

    fn check(&mut self, health: &Health) {
        let now = health.errors.load(Ordering::Relaxed);
        if now == self.seen || self.said_at.is_some_and(|t| t.elapsed() < Duration::from_secs(10)) {
            return;
        }
        let kind = health.last_error().map_or("unknown".to_string(), |k| format!("{k:?}"));
        tracing::warn!("{}: {} device error{} ({kind}); the stream carries on", self.device, now - self.seen, if now - self.seen == 1 { "" } else { "s" });
        self.seen = now;
        self.said_at = Some(Instant::now());
    }
}

/// "the device failed (DeviceNotAvailable)" for a supervisor's warning.
fn failure(health: &Health) -> String {
    match health.last_error() {
        Some(kind) => format!("the device failed ({kind:?})"),
        None => "the device failed".into(),
    }
}

/// A device as voxd reaches it: through which audio system (a cpal host) and by what
/// name there. Decided once, when the device is first opened; a reopen looks for the
/// same device the same way (never falling back to another system half-way).
#[derive(Debug, Clone)]
pub struct Endpoint {
    host: cpal::HostId,
    spec: String,
    input: bool,
}

impl Endpoint {
    /// `backend`: "pulseaudio" (a PulseAudio server, or PipeWire's pulse server),
    /// "alsa", or "auto" — the sound server when one answers, else ALSA. `spec`: ""
    /// for the default device, a device id from `voxd devices` (which names its
    /// system), or a part of a device's name.
    pub fn resolve(backend: &str, spec: &str, input: bool) -> anyhow::Result<Endpoint> {
        let host = match spec.parse::<cpal::DeviceId>() {
            Ok(id) if !spec.is_empty() => id.host(),
            _ => match backend {
                "pulseaudio" => cpal::HostId::PulseAudio,
                "alsa" => cpal::HostId::Alsa,
                _ if cpal::host_from_id(cpal::HostId::PulseAudio).is_ok() => cpal::HostId::PulseAudio,
                _ => cpal::HostId::Alsa,
            },
        };
        Ok(Endpoint { host, spec: spec.to_string(), input })
    }

    /// The device as the config names it, for messages: "pulseaudio:late.monitor",
    /// or "PulseAudio's default input".
    pub fn describe(&self) -> String {
        match self.spec.as_str() {
            "" => format!("{}'s default {}", self.host.name(), if self.input { "input" } else { "output" }),
            spec => spec.to_string(),
        }
    }

    fn device(&self) -> anyhow::Result<cpal::Device> {
        let host = cpal::host_from_id(self.host).with_context(|| format!("reaching the audio system {}", self.host.name()))?;
        find(&host, &self.spec, self.input)
    }
}

/// The device `spec` names: "" for the default, a cpal id ("pulseaudio:spk",
/// "alsa:hw:CARD=USB,DEV=0"), or a part of its name ("USB").
fn find(host: &cpal::Host, spec: &str, input: bool) -> anyhow::Result<cpal::Device> {
    let kind = if input { "input" } else { "output" };
    if spec.is_empty() {
        let d = if input { host.default_input_device() } else { host.default_output_device() };
        return d.with_context(|| format!("no default {kind} device"));
    }
    if let Ok(id) = spec.parse::<cpal::DeviceId>() {
        if let Some(d) = host.device_by_id(&id) {
            return Ok(d);
        }
    }
    let devices: Vec<cpal::Device> = host.devices().context("listing audio devices")?.collect();
    let wanted = spec.to_lowercase();
    let matches: Vec<&cpal::Device> = devices.iter().filter(|d| d.to_string().to_lowercase().contains(&wanted) || d.id().is_ok_and(|id| id.to_string().to_lowercase().contains(&wanted))).collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!("no {kind} device matches {spec:?}; `voxd devices` lists them"),
        many => bail!("{spec:?} matches {} devices ({}); name one by its id (`voxd devices`)", many.len(), many.iter().filter_map(|d| d.id().ok()).map(|id| id.to_string()).collect::<Vec<_>>().join(", ")),
    }
}

/// The config to open: mono (or the fewest channels) at `rate` if the device can,
/// else its own default (and voxd converts); f32 preferred, then i16, i32.
pub(crate) fn choose_config(device: &cpal::Device, input: bool, rate: u32) -> anyhow::Result<cpal::SupportedStreamConfig> {
    let ranges: Vec<cpal::SupportedStreamConfigRange> = if input { device.supported_input_configs()?.collect() } else { device.supported_output_configs()?.collect() };
    let rank = |f: cpal::SampleFormat| match f {
        cpal::SampleFormat::F32 => 0,
        cpal::SampleFormat::I16 => 1,
        cpal::SampleFormat::I32 => 2,
        _ => 3,
    };
    let usable = |f: cpal::SampleFormat| matches!(f, cpal::SampleFormat::F32 | cpal::SampleFormat::I16 | cpal::SampleFormat::I32 | cpal::SampleFormat::U16 | cpal::SampleFormat::U8);
    let mut fitting: Vec<&cpal::SupportedStreamConfigRange> = ranges.iter().filter(|r| r.contains_rate(rate) && usable(r.sample_format())).collect();
    fitting.sort_by_key(|r| (r.channels(), rank(r.sample_format())));
    if let Some(r) = fitting.first() {
        return Ok(r.with_sample_rate(rate));
    }
    let fallback = if input { device.default_input_config()? } else { device.default_output_config()? };
    Ok(fallback)
}

/// Devices worth opening to ask what they support: a sound server's, and ALSA's cards.
/// The rest are ALSA conversion plugins (rate, upmix, jack, oss …): listed, not opened
/// (opening some of them only prints errors).
fn worth_probing(id: &str) -> bool {
    let Some(pcm) = id.strip_prefix("alsa:") else {
        return true; // a sound server's devices
    };
    ["default", "pulse", "pipewire"].contains(&pcm) || ["sysdefault", "hw:", "plughw:"].iter().any(|p| pcm.starts_with(p))
}

/// `voxd devices`: every input and output of each audio system that answers, with
/// what it supports.
pub fn list(backend: &str) -> anyhow::Result<String> {
    use std::fmt::Write;
    // alsa-lib reports what it cannot open on stderr; keep that in a buffer instead.
    let _quiet = alsa::Output::local_error_handler();
    let mut out = String::new();
    let used = Endpoint::resolve(backend, "", true)?.host;
    for system in [cpal::HostId::PulseAudio, cpal::HostId::Alsa] {
        let Ok(host) = cpal::host_from_id(system) else {
            let _ = writeln!(out, "{}: not reachable{}\n", system.name(), if system == cpal::HostId::PulseAudio { " (no PulseAudio or PipeWire-pulse server)" } else { "" });
            continue;
        };
        let _ = writeln!(out, "{}{}:", system.name(), if system == used { " (voxd uses this one: [audio] backend)" } else { "" });
        for (kind, input) in [("inputs", true), ("outputs", false)] {
            let default = if input { host.default_input_device() } else { host.default_output_device() };
            let _ = writeln!(out, "  {kind} (default: {}):", default.as_ref().and_then(|d| d.id().ok()).map_or("none".into(), |id| id.to_string()));
            let devices = if input { host.input_devices().map(|d| d.collect::<Vec<_>>()) } else { host.output_devices().map(|d| d.collect::<Vec<_>>()) };
            for d in devices.unwrap_or_default() {
                let id = d.id().map_or("?".into(), |id| id.to_string());
                if !worth_probing(&id) {
                    let _ = writeln!(out, "    {id:<36} {d} (a plugin: not probed)");
                    continue;
                }
                let _ = writeln!(out, "    {id:<36} {d}");
                let native = if input { d.default_input_config() } else { d.default_output_config() };
                let ranges: Vec<cpal::SupportedStreamConfigRange> = if input {
                    d.supported_input_configs().map(|r| r.collect()).unwrap_or_default()
                } else {
                    d.supported_output_configs().map(|r| r.collect()).unwrap_or_default()
                };
                match native {
                    Ok(c) if system == cpal::HostId::PulseAudio => {
                        let _ = writeln!(out, "        {} {} ch {} Hz natively; the server converts any rate, channel count and format", c.sample_format(), c.channels(), c.sample_rate());
                    }
                    Ok(_) if !ranges.is_empty() => {
                        let _ = writeln!(out, "        {}", summarize(&ranges));
                    }
                    _ => {
                        let _ = writeln!(out, "        (could not be opened to ask what it supports)");
                    }
                }
            }
        }
        out.push('\n');
    }
    Ok(out)
}

/// "1-8 channels, 8000-192000 Hz, f32 i16" for a device's config ranges.
fn summarize(ranges: &[cpal::SupportedStreamConfigRange]) -> String {
    let channels = (ranges.iter().map(|r| r.channels()).min().unwrap_or(0), ranges.iter().map(|r| r.channels()).max().unwrap_or(0));
    let rates = (ranges.iter().map(|r| r.min_sample_rate()).min().unwrap_or(0), ranges.iter().map(|r| r.max_sample_rate()).max().unwrap_or(0));
    let mut formats: Vec<String> = ranges.iter().map(|r| r.sample_format().to_string()).collect();
    formats.sort();
    formats.dedup();
    format!("{}-{} channels, {}-{} Hz, {}", channels.0, channels.1, rates.0, rates.1, formats.join(" "))
}

/// What was opened, for messages: "pulseaudio:spk (f32, 1 channel, 22050 Hz,
/// 441-frame periods)".
fn describe(device: &cpal::Device, config: &cpal::SupportedStreamConfig, period: u32) -> String {
    let channels = config.channels();
    let id = device.id().map_or(device.to_string(), |id| id.to_string());
    format!("{id} ({}, {channels} channel{}, {} Hz, {period}-frame periods)", config.sample_format(), if channels == 1 { "" } else { "s" }, config.sample_rate())
}

/// Keeps a stream alive until `stop`: rebuilds it when its error callback says it
/// failed, or when it has gone silent (a server that hangs reports nothing); with no
/// stream to begin with (a device not there yet), opens it once it can. Each
/// rebuild (`reopen`) comes with a fresh ring — the old one may still belong to an
/// abandoned stream — whose other end goes to the stage's side through `replace`,
/// and with a description of what was opened, for the log. `device` names it in
/// warnings ("microphone"), `quiet` says what silence means for it ("no audio").
pub(crate) fn supervise<End>(
    device: &'static str,
    quiet: &str,
    stream: Option<cpal::Stream>,
    health: &Health,
    stop: &AtomicBool,
    replace: std::sync::mpsc::Sender<End>,
    mut reopen: impl FnMut() -> anyhow::Result<(cpal::Stream, End, String)>,
) {
    // alsa-lib's own complaints (a server that is down) stay off stderr: the
    // warnings below say what happened.
    let _quiet = alsa::Output::local_error_handler();
    let mut opened_before = stream.is_some();
    // A device missing from the start was reported by whoever started us.
    let mut missing = if stream.is_some() { Reminder::new() } else { Reminder::said_now() };
    health.absent.store(stream.is_none(), Ordering::Relaxed);
    let mut stream = stream;
    let mut attempt = 0;
    let mut errors = ErrorLog::new(device);
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(100));
        errors.check(health);
        let failed = health.failed.load(Ordering::Relaxed);
        if stream.is_some() && !failed && health.silent_for() < SILENT_LIMIT {
            attempt = 0;
            continue;
        }
        if let Some(s) = stream.take() {
            let why = if failed { failure(health) } else { format!("{quiet} for {:.1} s", health.silent_for().as_secs_f64()) };
            tracing::warn!("{device}: {why}; reopening");
            release(s, failed);
            health.absent.store(true, Ordering::Relaxed);
        }
        std::thread::sleep(backoff(attempt));
        attempt += 1;
        health.failed.store(false, Ordering::Relaxed);
        match reopen() {
            Ok((s, end, what)) => {
                let _ = replace.send(end);
                if opened_before {
                    health.reopens.fetch_add(1, Ordering::Relaxed);
                }
                health.beat();
                health.absent.store(false, Ordering::Relaxed);
                tracing::info!("{device}: {} {what}", if opened_before { "reopened" } else { "opened" });
                opened_before = true;
                missing = Reminder::new();
                stream = Some(s);
            }
            Err(e) => {
                if let Some(for_how_long) = missing.due(Instant::now()) {
                    let still = if for_how_long.is_zero() { String::new() } else { format!(" (for {})", human(for_how_long)) };
                    tracing::warn!("{device}: cannot be opened{still}: {e:#}; voxd runs on and keeps trying (every {:.0} s at most)", BACKOFF_MAX.as_secs_f64());
                }
            }
        }
    }
    if let Some(s) = stream {
        release(s, health.silent_for() < SILENT_LIMIT);
    }
}

/// When to say again that a device is still missing: at once, then 10 s later, 20 s
/// after that, 40 s … at most every 10 minutes — a journal that shows the problem
/// without filling up with it.
struct Reminder {
    since: Option<Instant>,
    /// How long missing before it is said next, and the wait after that.
    next: Duration,
    interval: Duration,
}

const FIRST_REMINDER: Duration = Duration::from_secs(10);
const LAST_REMINDER: Duration = Duration::from_secs(600);

impl Reminder {
    fn new() -> Reminder {
        Reminder { since: None, next: Duration::ZERO, interval: Duration::ZERO }
    }

    /// Missing from now, and said so already.
    fn said_now() -> Reminder {
        Reminder { since: Some(Instant::now()), next: FIRST_REMINDER, interval: FIRST_REMINDER }
    }

    /// Another failed attempt at `now`: how long the device has been missing, when
    /// that is worth saying.
    fn due(&mut self, now: Instant) -> Option<Duration> {
        let since = *self.since.get_or_insert(now);
        let missing = now.saturating_duration_since(since);
        if missing < self.next {
            return None;
        }
        self.interval = (self.interval * 2).clamp(FIRST_REMINDER, LAST_REMINDER);
        self.next = missing + self.interval;
        Some(missing)
    }
}

/// "40 s", "3 min" for a duration in a message.
fn human(d: Duration) -> String {
    match d.as_secs() {
        s if s < 120 => format!("{s} s"),
        s => format!("{} min", s / 60),
    }
}

/// A stream with no callback for this long is dead even if it reported nothing (a
/// server that hangs). Generous: on a small board busy engines can delay callbacks,
/// and a device that really fails says so through its error callback at once.
const SILENT_LIMIT: Duration = Duration::from_secs(5);

/// Lets go of a stream. A stream that reported its failure is dropped (its worker
/// thread ends). One that went silent may be stuck inside the sound server's client
/// library — a PulseAudio server killed under a capture stream leaves its reader
/// waiting forever — and dropping it would join that thread and hang voxd with it:
/// it is leaked instead (a thread per such incident).
fn release(stream: cpal::Stream, responsive: bool) {
    if responsive {
        drop(stream);
    } else {
        tracing::warn!("the old stream does not answer; abandoning it rather than waiting for it");
        std::mem::forget(stream);
    }
}

/// Waits before reopening a failed device: 0.5 s, doubling to `BACKOFF_MAX`.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64 << attempt.min(4)).min(BACKOFF_MAX)
}

const BACKOFF_MAX: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_device_is_reported_at_once_then_at_growing_intervals() {
        let start = Instant::now();
        let mut r = Reminder::new();
        // An attempt every 5 s for an hour: when is it said?
        let said: Vec<u64> = (0..720).filter_map(|i| r.due(start + Duration::from_secs(i * 5)).map(|d| d.as_secs())).collect();
        assert_eq!(said, [0, 10, 30, 70, 150, 310, 630, 1230, 1830, 2430, 3030]);
        // Reported by its opener: the supervisor's first word is 10 s later.
        let mut r = Reminder::said_now();
        assert_eq!(r.due(Instant::now()), None);
    }

    #[test]
    fn a_burst_of_errors_is_survived_and_errors_that_go_on_fail_the_stream() {
        use cpal::ErrorKind as K;
        let h = Health::new();
        let ms = Duration::from_millis;
        // A stream just prepared: hundreds of errors within a few milliseconds, then audio.
        for i in 0..400 {
            h.on_error_at(K::BackendError, ms(1000) + Duration::from_micros(i * 20));
        }
        assert!(!h.failed.load(Ordering::Relaxed), "a burst of 8 ms is not a failure");
        h.beat();
        // Errors again later, with no audio between them, for half a second: failed.
        h.on_error_at(K::BackendError, ms(5000));
        h.on_error_at(K::BackendError, ms(5499));
        assert!(!h.failed.load(Ordering::Relaxed));
        h.on_error_at(K::BackendError, ms(5500));
        assert!(h.failed.load(Ordering::Relaxed), "errors for 500 ms with no audio between them");
        assert_eq!(h.errors.load(Ordering::Relaxed), 403);
        assert_eq!(h.last_error(), Some(K::BackendError));
        // Xruns are cpal's to recover from; a device that is gone fails at once.
        let h = Health::new();
        h.on_error_at(K::Xrun, ms(0));
        h.on_error_at(K::Xrun, ms(9000));
        assert!(!h.failed.load(Ordering::Relaxed) && h.xruns.load(Ordering::Relaxed) == 2 && h.errors.load(Ordering::Relaxed) == 0);
        h.on_error_at(K::DeviceNotAvailable, ms(9001));
        assert!(h.failed.load(Ordering::Relaxed));
    }

    #[test]
    fn reopening_backs_off_to_five_seconds() {
        let waits: Vec<u128> = (0..7).map(|a| backoff(a).as_millis()).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 5000, 5000, 5000]);
    }

    #[test]
    fn the_latency_is_smoothed_and_a_late_poll_s_zero_is_not_believed() {
        let h = Health::new();
        h.observe_latency(0);
        assert_eq!(h.latency_us.load(Ordering::Relaxed), 0, "nothing known yet");
        h.observe_latency(40_000);
        assert_eq!(h.latency_us.load(Ordering::Relaxed), 40_000, "the first reading is taken as it is");
        h.observe_latency(0);
        assert_eq!(h.latency_us.load(Ordering::Relaxed), 40_000, "a zero reading says nothing");
        for _ in 0..64 {
            h.observe_latency(20_000);
        }
        let settled = h.latency_us.load(Ordering::Relaxed);
        assert!((20_000..20_200).contains(&settled), "follows a lasting change: {settled}");
    }
}
