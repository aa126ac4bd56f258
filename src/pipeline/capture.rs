//! Capture and pacing.
//!
//! Input: a recording (16 kHz mono), or the microphone's ring · Output: `Frame` (to
//! vad) · Thread: tokio task (a recording), dedicated `voxd-capture` (the microphone)
//!
//! The pacer hands vad one frame at a time: from a recording either as a microphone
//! would (each frame when its last sample would have arrived) or as fast as vad takes
//! them; from the microphone as the device delivers, converted to 16 kHz mono when
//! the device could not do that itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::health::Pulse;
use super::{Clock, Counters};
use crate::device;

/// Longest frame webrtc-vad accepts: 30 ms at 16 kHz.
pub const MAX_FRAME: usize = 480;

/// One analysis frame. Fixed-size so passing frames allocates nothing.
#[derive(Clone, Copy)]
pub struct Frame {
    pub samples: [f32; MAX_FRAME],
    pub len: usize,
    /// Index of the first sample on the input's timeline.
    pub start_sample: u64,
}

impl Frame {
    pub fn audio(&self) -> &[f32] {
        &self.samples[..self.len]
    }
}

/// Plays `audio` (16 kHz mono) into vad in frames of `frame_len` samples.
pub async fn pace_file(audio: Vec<f32>, frame_len: usize, clock: Clock, tx: mpsc::Sender<Frame>) -> anyhow::Result<()> {
    assert!(frame_len <= MAX_FRAME);
    let rate = crate::audio::ASR_RATE_HZ as f64;
    for (i, chunk) in audio.chunks(frame_len).enumerate() {
        let start_sample = (i * frame_len) as u64;
        if clock.realtime {
            let due = clock.start + Duration::from_secs_f64((start_sample as usize + chunk.len()) as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let mut frame = Frame { samples: [0.0; MAX_FRAME], len: frame_len, start_sample };
        // A short last chunk is padded with silence to a whole frame.
        frame.samples[..chunk.len()].copy_from_slice(chunk);
        // Block when vad is behind: in file mode nothing is lost by waiting.
        if tx.send(frame).await.is_err() {
            anyhow::bail!("vad stopped taking audio");
        }
    }
    Ok(())
}

/// Drains the microphone every 10 ms into frames of `frame_len` samples until `stop`
/// is set (SIGTERM, SIGINT), copying the device's figures into `counters`.
pub fn pace_device(mut input: device::Input, frame_len: usize, stop: Arc<AtomicBool>, tx: mpsc::Sender<Frame>, counters: Arc<Counters>, pulse: Pulse) -> anyhow::Result<()> {
    assert!(frame_len <= MAX_FRAME);
    let mut to_16k = crate::audio::StreamResampler::new(input.rate_hz, crate::audio::ASR_RATE_HZ)?;
    let (mut raw, mut pcm) = (Vec::with_capacity(8192), Vec::with_capacity(8192));
    let mut next_sample = 0u64;
    // Always at work: each round is a step (a round stuck behind a stalled vad is not).
    pulse.busy(0);
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(10));
        pulse.step();
        raw.clear();
        input.read(&mut raw);
        to_16k.push(&raw, &mut pcm);
        let whole = pcm.len() / frame_len * frame_len;
        for chunk in pcm[..whole].chunks_exact(frame_len) {
            let mut frame = Frame { samples: [0.0; MAX_FRAME], len: frame_len, start_sample: next_sample };
            frame.samples[..frame_len].copy_from_slice(chunk);
            next_sample += frame_len as u64;
            // vad keeps up (it only runs webrtc-vad); while it does not, the device's
            // ring takes the slack and then drops, counted.
            if tx.blocking_send(frame).is_err() {
                anyhow::bail!("vad stopped taking audio");
            }
        }
        pcm.drain(..whole);
        // The heartbeat (systemd's watchdog) moves only while audio flows through: a
        // hung device or a stalled vad stops it. A device that is absent is waited for
        // (restarting would not bring it back): the pacer is alive, so it beats.
        let h = &input.health;
        counters.capture_overflows.store(h.lost.load(Ordering::Relaxed), Ordering::Relaxed);
        counters.capture_xruns.store(h.xruns.load(Ordering::Relaxed), Ordering::Relaxed);
        counters.input_reopens.store(h.reopens.load(Ordering::Relaxed), Ordering::Relaxed);
        counters.capture_errors.store(h.errors.load(Ordering::Relaxed), Ordering::Relaxed);
        counters.capture_latency_us.store(h.latency_us.load(Ordering::Relaxed), Ordering::Relaxed);
        if whole > 0 || h.absent.load(Ordering::Relaxed) {
            counters.capture_heartbeat.fetch_add(1, Ordering::Relaxed);
        }
    }
    pulse.idle();
    Ok(())
}
