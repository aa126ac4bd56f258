//! Capture and pacing.
//!
//! Input: a recording (16 kHz mono; live devices come with the live-audio stage) ·
//! Output: `Frame` (to vad) · Thread: tokio task
//!
//! The pacer hands vad one frame at a time, either as a microphone would (each frame
//! when its last sample would have arrived) or as fast as vad takes them.

use std::time::Duration;

use tokio::sync::mpsc;

use super::Clock;

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
