//! The microphone: a capture stream feeding a ring that the pacer drains.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use cpal::traits::{DeviceTrait, StreamTrait};
use ringbuf::traits::{Consumer, Observer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};

use super::{callbacks, Health};
use crate::audio::{StreamResampler, ASR_RATE_HZ};

/// A capture device. Samples arrive mono at `rate_hz`; the stream is kept alive
/// (reopened when it fails, opened when a device that was missing appears) until
/// this is dropped.
pub struct Input {
    ring: HeapCons<f32>,
    /// From the ring's rate to `rate_hz`, when a stream opened later (a device that
    /// was missing, or came back another way) delivers at a rate of its own.
    convert: Option<StreamResampler>,
    scratch: Vec<f32>,
    /// A reopened stream comes with a ring of its own (the old one may still belong to
    /// an abandoned stream): its reading end and rate arrive here.
    replacements: std::sync::mpsc::Receiver<Ring>,
    pub rate_hz: u32,
    /// What was opened, for messages: "alsa:pulse (f32, 1 channel, 16000 Hz, 320-frame
    /// periods)"; or what is waited for.
    pub opened: String,
    pub health: Arc<Health>,
    stop: Arc<AtomicBool>,
    supervisor: Option<JoinHandle<()>>,
}

/// The reading end of a stream's ring, and the rate its samples come at.
struct Ring {
    cons: HeapCons<f32>,
    rate_hz: u32,
}

/// A capture stream just opened, with its ring.
struct Opened {
    stream: cpal::Stream,
    ring: Ring,
    what: String,
}

impl Input {
    /// Opens the device asking for 16 kHz mono in periods of `period_ms`, with a ring
    /// of `ring_ms`. Fails now if the device cannot be opened at all; later failures
    /// are reopened in the background.
    pub fn open(endpoint: super::Endpoint, period_ms: u32, ring_ms: u32) -> anyhow::Result<Input> {
        Input::start(endpoint, period_ms, ring_ms, false)
    }

    /// As `open`, except that a device that cannot be opened yet — a USB microphone
    /// not plugged in, a sound server still starting, a source another program will
    /// create — is waited for: said once, then at growing intervals, while the
    /// supervisor keeps trying; samples flow once it appears. Restarting voxd would
    /// not make a microphone appear, only reload every model.
    pub fn open_or_wait(endpoint: super::Endpoint, period_ms: u32, ring_ms: u32) -> anyhow::Result<Input> {
        Input::start(endpoint, period_ms, ring_ms, true)
    }

    fn start(endpoint: super::Endpoint, period_ms: u32, ring_ms: u32, wait: bool) -> anyhow::Result<Input> {
        let health = Arc::new(Health::new());
        let (stream, ring, opened) = match open_stream(&endpoint, period_ms, ring_ms, &health) {
            Ok(o) => (Some(o.stream), o.ring, o.what),
            Err(e) if wait => {
                let what = endpoint.describe();
                tracing::warn!("microphone: {what} cannot be opened: {e:#}; voxd runs on, and listens once it can be opened");
                // Nothing arrives on this ring: the first stream brings its own.
                let (_, cons) = HeapRb::<f32>::new(1).split();
                (None, Ring { cons, rate_hz: ASR_RATE_HZ }, format!("{what} (not there yet: waiting for it)"))
            }
            Err(e) => return Err(e),
        };
        // What the first stream delivers, or, with none yet, what voxd asks for.
        let rate_hz = ring.rate_hz;
        let stop = Arc::new(AtomicBool::new(false));
        let (replace, replacements) = std::sync::mpsc::channel();
        let supervisor = {
            let (stop, health) = (stop.clone(), health.clone());
            let reopen = {
                let health = health.clone();
                move || open_stream(&endpoint, period_ms, ring_ms, &health).map(|o| (o.stream, o.ring, o.what))
            };
            std::thread::Builder::new().name("voxd-mic".into()).spawn(move || super::supervise("microphone", "no audio", stream, &health, &stop, replace, reopen))?
        };
        Ok(Input { ring: ring.cons, convert: None, scratch: Vec::new(), replacements, rate_hz, opened, health, stop, supervisor: Some(supervisor) })
    }

    /// Takes what the device has captured so far (mono, `rate_hz`).
    pub fn read(&mut self, out: &mut Vec<f32>) {
        while let Ok(fresh) = self.replacements.try_recv() {
            self.drain(out);
            self.ring = fresh.cons;
            self.convert = (fresh.rate_hz != self.rate_hz).then(|| StreamResampler::new(fresh.rate_hz, self.rate_hz)).and_then(|r| {
                r.map_err(|e| tracing::error!("microphone: {e}; its audio is taken as it comes")).ok()
            });
        }
        self.drain(out);
    }

    fn drain(&mut self, out: &mut Vec<f32>) {
        let into = if self.convert.is_some() { &mut self.scratch } else { &mut *out };
        let n = self.ring.occupied_len();
        let start = into.len();
        into.resize(start + n, 0.0);
        let got = self.ring.pop_slice(&mut into[start..]);
        into.truncate(start + got);
        if let Some(convert) = &mut self.convert {
            convert.push(&self.scratch, out);
            self.scratch.clear();
        }
    }
}

/// Opens `endpoint`'s device as it is now (a reopen looks it up again: it may be
/// another device, or the same one in another format), with a fresh ring.
fn open_stream(endpoint: &super::Endpoint, period_ms: u32, ring_ms: u32, health: &Arc<Health>) -> anyhow::Result<Opened> {
    let device = endpoint.device()?;
    let config = super::choose_config(&device, true, ASR_RATE_HZ).with_context(|| format!("asking input device {device} what it supports"))?;
    let rate_hz = config.sample_rate();
    let capacity = (rate_hz as usize * ring_ms as usize / 1000).max(4096);
    let (prod, cons) = HeapRb::<f32>::new(capacity).split();
    let period = rate_hz * period_ms / 1000;
    let stream = build(&device, &config, period, prod, health.clone()).with_context(|| format!("opening input device {device}"))?;
    let what = super::describe(&device, &config, stream.buffer_size().unwrap_or(period));
    Ok(Opened { stream, ring: Ring { cons, rate_hz }, what })
}

impl Drop for Input {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.supervisor.take() {
            let _ = t.join();
        }
    }
}

fn build(device: &cpal::Device, config: &cpal::SupportedStreamConfig, period: u32, prod: HeapProd<f32>, health: Arc<Health>) -> anyhow::Result<cpal::Stream> {
    let mut stream_config = config.config();
    stream_config.buffer_size = cpal::BufferSize::Fixed(period);
    let channels = stream_config.channels as usize;
    let errors = health.clone();
    let on_error = move |e: cpal::Error| errors.on_error(e.kind());
    macro_rules! stream {
        ($t:ty) => {{
            let (mut prod, health) = (prod, health);
            device.build_input_stream::<$t, _, _>(stream_config, move |data: &[$t], info: &cpal::InputCallbackInfo| {
                let ts = info.timestamp();
                health.observe_latency(ts.callback.duration_since(ts.capture).as_micros() as u64);
                callbacks::capture(data, channels, &mut prod, &health);
            }, on_error, Some(Duration::from_millis(250)))?
        }};
    }
    let stream = by_sample_format!(config.sample_format(), stream);
    stream.play()?;
    Ok(stream)
}
