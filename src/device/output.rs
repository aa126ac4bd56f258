//! The speaker: a playback stream draining a ring that the playback stage fills.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use cpal::traits::{DeviceTrait, StreamTrait};
use ringbuf::traits::{Observer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};

use super::callbacks::{self, Control};
use super::Health;

/// An open playback device taking mono samples at `rate_hz`; kept alive (reopened
/// when it fails) until this is dropped.
pub struct Output {
    ring: HeapProd<f32>,
    /// A reopened stream comes with a ring of its own: its writing end arrives here.
    replacements: std::sync::mpsc::Receiver<HeapProd<f32>>,
    /// Frames queued for streams that failed before playing them.
    skipped: u64,
    pub rate_hz: u32,
    pub opened: String,
    pub health: Arc<Health>,
    control: Arc<Control>,
    stop: Arc<AtomicBool>,
    supervisor: Option<JoinHandle<()>>,
}

impl Output {
    /// Opens the device asking for mono at `rate_hz` (the voice's own rate: no resampling)
    /// in periods of `period_ms`, with a ring of `ring_ms`.
    pub fn open(endpoint: super::Endpoint, rate_hz: u32, period_ms: u32, ring_ms: u32) -> anyhow::Result<Output> {
        let device = endpoint.device()?;
        let config = super::choose_config(&device, false, rate_hz).with_context(|| format!("asking output device {device} what it supports"))?;
        let rate_hz = config.sample_rate();
        let capacity = (rate_hz as usize * ring_ms as usize / 1000).max(4096);
        let (prod, cons) = HeapRb::<f32>::new(capacity).split();
        let health = Arc::new(Health::new());
        let control = Arc::new(Control::default());
        let period = rate_hz * period_ms / 1000;
        let stream = build(&device, &config, period, cons, control.clone(), health.clone()).with_context(|| format!("opening output device {device}"))?;
        let period_read = stream.buffer_size().unwrap_or(period);
        let opened = super::describe(&device, &config, period_read);
        let stop = Arc::new(AtomicBool::new(false));
        let (replace, replacements) = std::sync::mpsc::channel();
        let supervisor = {
            let (stop, health) = (stop.clone(), health.clone());
            let reopen = {
                let (health, control) = (health.clone(), control.clone());
                let what = opened.clone();
                move || {
                    let (prod, cons) = HeapRb::<f32>::new(capacity).split();
                    Ok((build(&endpoint.device()?, &config, period, cons, control.clone(), health.clone())?, prod, what.clone()))
                }
            };
            std::thread::Builder::new().name("voxd-speaker".into()).spawn(move || super::supervise("speaker", "no callbacks", Some(stream), &health, &stop, replace, reopen))?
        };
        Ok(Output { ring: prod, replacements, skipped: 0, rate_hz, opened, health, control, stop, supervisor: Some(supervisor) })
    }

    /// Queues as much of `samples` as there is room for; returns how many.
    pub fn write(&mut self, samples: &[f32]) -> usize {
        self.take_replacement();
        self.ring.push_slice(samples)
    }

    /// Frames queued and not yet taken by the device.
    pub fn queued(&mut self) -> usize {
        self.take_replacement();
        self.ring.occupied_len()
    }

    /// After a reopen, writes go to the new stream's ring. What was queued for the old
    /// stream is gone with it, and counts as gone past: the speaker's timeline
    /// (`consumed`) moves on as if it had played, so the reply it belonged to still ends.
    fn take_replacement(&mut self) {
        while let Ok(fresh) = self.replacements.try_recv() {
            self.skipped += self.ring.occupied_len() as u64;
            self.ring = fresh;
        }
    }

    /// Frames that have left the ring, ever — played, flushed, or lost with a failed
    /// stream — : where the speaker is on its timeline.
    pub fn consumed(&self) -> u64 {
        self.control.consumed.load(Ordering::Relaxed) + self.skipped
    }

    /// Drops everything queued (at the device's next callback).
    pub fn flush(&self) {
        self.control.flush.store(true, Ordering::Release);
    }

    /// A flush was asked for and the device has not done it yet.
    pub fn flush_pending(&self) -> bool {
        self.control.flush.load(Ordering::Acquire)
    }

    /// More of the current reply is still to come (running dry is then an underrun).
    pub fn set_active(&self, active: bool) {
        self.control.active.store(active, Ordering::Relaxed);
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.supervisor.take() {
            let _ = t.join();
        }
    }
}

fn build(device: &cpal::Device, config: &cpal::SupportedStreamConfig, period: u32, cons: HeapCons<f32>, control: Arc<Control>, health: Arc<Health>) -> anyhow::Result<cpal::Stream> {
    let mut stream_config = config.config();
    stream_config.buffer_size = cpal::BufferSize::Fixed(period);
    let channels = stream_config.channels as usize;
    let errors = health.clone();
    let on_error = move |e: cpal::Error| errors.on_error(e.kind());
    macro_rules! stream {
        ($t:ty) => {{
            let (mut cons, control, health) = (cons, control, health);
            device.build_output_stream::<$t, _, _>(stream_config, move |out: &mut [$t], info: &cpal::OutputCallbackInfo| {
                let ts = info.timestamp();
                health.observe_latency(ts.playback.duration_since(ts.callback).as_micros() as u64);
                callbacks::playback(out, channels, &mut cons, &control, &health);
            }, on_error, Some(Duration::from_millis(250)))?
        }};
    }
    let stream = by_sample_format!(config.sample_format(), stream);
    stream.play()?;
    Ok(stream)
}
