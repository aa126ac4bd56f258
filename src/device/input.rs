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

/// An open capture device. Samples arrive mono at `rate_hz`; the stream is kept
/// alive (reopened when it fails) until this is dropped.
pub struct Input {
    ring: HeapCons<f32>,
    /// A reopened stream comes with a ring of its own (the old one may still belong to
    /// an abandoned stream): its reading end arrives here.
    replacements: std::sync::mpsc::Receiver<HeapCons<f32>>,
    pub rate_hz: u32,
    /// What was opened, for messages: "alsa:pulse (f32, 1 channel, 16000 Hz, 320-frame periods)".
    pub opened: String,
    pub health: Arc<Health>,
    stop: Arc<AtomicBool>,
    supervisor: Option<JoinHandle<()>>,
}

impl Input {
    /// Opens the device asking for 16 kHz mono in periods of
    /// `period_ms`, with a ring of `ring_ms`. Fails now if the device cannot be opened
    /// at all; later failures are reopened in the background.
    pub fn open(endpoint: super::Endpoint, period_ms: u32, ring_ms: u32) -> anyhow::Result<Input> {
        let device = endpoint.device()?;
        let config = super::choose_config(&device, true, crate::audio::ASR_RATE_HZ).with_context(|| format!("asking input device {device} what it supports"))?;
        let rate_hz = config.sample_rate();
        let capacity = (rate_hz as usize * ring_ms as usize / 1000).max(4096);
        let (prod, cons) = HeapRb::<f32>::new(capacity).split();
        let health = Arc::new(Health::new());
        let period = rate_hz * period_ms / 1000;
        let stream = build(&device, &config, period, prod, health.clone()).with_context(|| format!("opening input device {device}"))?;
        let period_read = stream.buffer_size().unwrap_or(period);
        let opened = super::describe(&device, &config, period_read);
        let stop = Arc::new(AtomicBool::new(false));
        let (replace, replacements) = std::sync::mpsc::channel();
        let supervisor = {
            let (stop, health) = (stop.clone(), health.clone());
            let reopen = {
                let health = health.clone();
                move || {
                    let (prod, cons) = HeapRb::<f32>::new(capacity).split();
                    Ok((build(&endpoint.device()?, &config, period, prod, health.clone())?, cons))
                }
            };
            std::thread::Builder::new().name("voxd-mic".into()).spawn(move || super::supervise("microphone", "no audio", stream, &health, &stop, replace, reopen))?
        };
        Ok(Input { ring: cons, replacements, rate_hz, opened, health, stop, supervisor: Some(supervisor) })
    }

    /// Takes what the device has captured so far (mono, `rate_hz`).
    pub fn read(&mut self, out: &mut Vec<f32>) {
        while let Ok(fresh) = self.replacements.try_recv() {
            self.drain(out);
            self.ring = fresh;
        }
        self.drain(out);
    }

    fn drain(&mut self, out: &mut Vec<f32>) {
        let n = self.ring.occupied_len();
        let start = out.len();
        out.resize(start + n, 0.0);
        let got = self.ring.pop_slice(&mut out[start..]);
        out.truncate(start + got);
    }
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
                health.latency_us.store(ts.callback.duration_since(ts.capture).as_micros() as u64, Ordering::Relaxed);
                callbacks::capture(data, channels, &mut prod, &health);
            }, on_error, Some(Duration::from_millis(250)))?
        }};
    }
    let stream = by_sample_format!(config.sample_format(), stream);
    stream.play()?;
    Ok(stream)
}
