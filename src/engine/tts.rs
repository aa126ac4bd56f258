//! Speech synthesis with Piper (piper-rs on ONNX Runtime): text in, mono f32 PCM out,
//! whole or a chunk at a time as the vocoder makes it (`synthesize_streamed`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use ort::session::Session;
use ort::value::Tensor;
use piper_rs::{ModelConfig, Piper};

use super::ms_since;
use super::piper_halves::{self, LATENT};

#[derive(Debug, thiserror::Error)]
pub enum TtsError {
    #[error("cannot read voice {path}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("voice config {path} is not a Piper .onnx.json: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("ONNX Runtime could not load voice {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("no espeak-ng-data found (looked in: {looked}); install Debian's espeak-ng-data or set tts.espeak_data_dir")]
    EspeakData { looked: String },
    #[error("synthesis failed: {0}")]
    Synthesize(String),
}

#[derive(Debug, Clone)]
pub struct TtsOptions {
    /// 1.0 = the voice's own speed.
    pub rate: f32,
    /// Scales the voice's sampling noise (prosody and timing variation): 1.0 = the
    /// voice's own, 0.0 = the same audio for the same text every time.
    pub variability: f32,
    pub threads: u32,
    /// Directory containing `espeak-ng-data`; empty = search.
    pub espeak_data_dir: String,
}

pub struct Tts {
    model: Model,
    length_scale: f32,
    noise_scale: f32,
    noise_w: f32,
    pub rate_hz: u32,
    pub voice_id: String,
    pub load_ms: f64,
}

/// The voice's graph: whole, or cut at the vocoder's input so that audio can be made
/// a slice at a time (`piper_halves`).
enum Model {
    Whole(Piper),
    /// `front` is a Piper whose "audio" is the latent z, `[1, channels, frames]`
    /// flattened, which the `vocoder` turns into audio (256 samples a frame).
    Halves { front: Piper, vocoder: Session, channels: usize },
}

/// Frames of z the vocoder turns into audio first (16: ~190 ms at 22.05 kHz); each
/// later run takes `GROWTH` times the last, so that the context every run repeats
/// costs ~20 % more vocoder work for a sentence, not double.
const FIRST_FRAMES: usize = 16;
const GROWTH: usize = 4;
/// Frames either side of a slice that the vocoder also sees: with 12 its samples equal
/// those of the whole to ~1e-7 (10: ~1e-6; 6: audible clicks at 1e-3).
const CONTEXT_FRAMES: usize = 12;
/// A last slice shorter than this is joined to the one before it, so a piece always
/// ends in a slice longer than the ~110 ms of silence a voice ends with (trimmed where
/// a phrase runs on).
const LAST_FRAMES_AT_LEAST: usize = 32;

/// What a streamed synthesis cost, its audio having gone to the caller.
#[derive(Debug, Clone, Copy)]
pub struct Streamed {
    pub samples: usize,
    pub rate_hz: u32,
    pub elapsed_ms: f64,
    /// From the call to the first audio handed over.
    pub first_audio_ms: f64,
}

/// Synthesised audio and what it cost.
#[derive(Debug, Clone)]
pub struct Speech {
    pub samples: Vec<f32>,
    pub rate_hz: u32,
    pub elapsed_ms: f64,
}

impl Streamed {
    pub fn audio_s(&self) -> f64 {
        self.samples as f64 / self.rate_hz as f64
    }
    pub fn rtf(&self) -> f64 {
        real_time_factor(self.elapsed_ms, self.audio_s())
    }
}

impl Speech {
    pub fn audio_s(&self) -> f64 {
        self.samples.len() as f64 / self.rate_hz as f64
    }
    pub fn rtf(&self) -> f64 {
        real_time_factor(self.elapsed_ms, self.audio_s())
    }
}

/// Processing time over audio time.
fn real_time_factor(elapsed_ms: f64, audio_s: f64) -> f64 {
    elapsed_ms / 1000.0 / audio_s.max(1e-9)
}

impl Tts {
    /// Loads `voice.onnx` with its `voice.onnx.json` beside it.
    pub fn load(onnx: &Path, voice_id: &str, options: &TtsOptions) -> Result<Tts, TtsError> {
        locate_espeak_data(&options.espeak_data_dir)?;
        let json = PathBuf::from(format!("{}.json", onnx.display()));
        let started = Instant::now();
        let bytes = std::fs::read(onnx).map_err(|source| TtsError::Open { path: onnx.into(), source })?;
        let text = std::fs::read_to_string(&json).map_err(|source| TtsError::Open { path: json.clone(), source })?;
        // piper-rs's config is not Clone, and the halves need one each.
        let read_config = || -> Result<ModelConfig, TtsError> { serde_json::from_str(&text).map_err(|e| TtsError::Config { path: json.clone(), reason: e.to_string() }) };
        let config = read_config()?;
        let rate_hz = config.audio.sample_rate;
        let length_scale = config.inference.length_scale / options.rate;
        let noise_scale = config.inference.noise_scale * options.variability;
        let noise_w = config.inference.noise_w * options.variability;

        let load_err = |e: ort::Error| TtsError::Load { path: onnx.into(), reason: e.to_string() };
        let session = |model: &[u8]| -> Result<Session, TtsError> {
            ort::session::Session::builder()
                .map_err(load_err)?
                .with_intra_threads(options.threads as usize)
                .map_err(|e| load_err(e.into()))?
                // ONNX Runtime's workers spin between operators by default, on cores the
                // LLM is generating on while Piper speaks the later pieces: without the
                // spinning, llama.cpp in the pipeline generated at 88-106 % of its speed
                // alone (median 97) instead of 72-90 % (median 86), for ~10 ms more on
                // Piper's first piece and the same round trip (`voxd bench`, alternating
                // runs; README "Engines that do not fight", docs/ort-spinning.md).
                .with_intra_op_spinning(false)
                .map_err(|e| load_err(e.into()))?
                .commit_from_memory(model)
                .map_err(load_err)
        };
        // The halves, where the graph can be cut and ONNX Runtime takes both; else the
        // voice whole, as it always loaded (an error then is the voice's own).
        let halves = piper_halves::cut(&bytes).and_then(|halves| {
            let sessions = session(&halves.front).and_then(|front| Ok((front, session(&halves.vocoder)?)));
            let (front, vocoder) = sessions.map_err(|e| format!("ONNX Runtime refused a half: {e}"))?;
            Ok(Model::Halves { front: Piper::from_session(front, read_config().map_err(|e| e.to_string())?), vocoder, channels: halves.latent_channels })
        });
        let model = match halves {
            Ok(model) => model,
            Err(why) => {
                tracing::info!("tts: {} is synthesised a piece at a time, not streamed: {why}", onnx.display());
                Model::Whole(Piper::from_session(session(&bytes)?, config))
            }
        };
        Ok(Tts { model, length_scale, noise_scale, noise_w, rate_hz, voice_id: voice_id.to_string(), load_ms: ms_since(started) })
    }

    /// Whether the voice's audio comes a slice at a time (`synthesize_streamed`).
    pub fn streams(&self) -> bool {
        matches!(self.model, Model::Halves { .. })
    }

    /// All of `text`'s audio at once.
    pub fn synthesize(&mut self, text: &str) -> Result<Speech, TtsError> {
        let started = Instant::now();
        let mut samples = Vec::new();
        self.run(text, usize::MAX, &mut |audio, _| samples.extend_from_slice(audio))?;
        Ok(Speech { samples, rate_hz: self.rate_hz, elapsed_ms: ms_since(started) })
    }

    /// `text`'s audio handed to `audio` a slice at a time as the vocoder makes it: the
    /// first ~190 ms once the front half has run (a third to a half of the whole
    /// piece's time), then slices four times longer each. The slices join into the
    /// same audio as `synthesize` gives; `audio`'s second argument says which is the
    /// last. A voice that cannot be cut gives one slice.
    pub fn synthesize_streamed(&mut self, text: &str, audio: &mut dyn FnMut(&[f32], bool)) -> Result<Streamed, TtsError> {
        let started = Instant::now();
        let (mut samples, mut first_audio_ms) = (0, None);
        self.run(text, FIRST_FRAMES, &mut |slice, last| {
            first_audio_ms.get_or_insert_with(|| ms_since(started));
            samples += slice.len();
            audio(slice, last);
        })?;
        Ok(Streamed { samples, rate_hz: self.rate_hz, elapsed_ms: ms_since(started), first_audio_ms: first_audio_ms.unwrap_or_else(|| ms_since(started)) })
    }

    fn run(&mut self, text: &str, first_frames: usize, audio: &mut dyn FnMut(&[f32], bool)) -> Result<(), TtsError> {
        let failed = |e: &dyn std::fmt::Display| TtsError::Synthesize(e.to_string());
        let (length, noise, noise_w) = (Some(self.length_scale), Some(self.noise_scale), Some(self.noise_w));
        match &mut self.model {
            Model::Whole(piper) => {
                let (samples, _) = piper.create(text, false, None, length, noise, noise_w).map_err(|e| failed(&e))?;
                audio(&samples, true);
            }
            Model::Halves { front, vocoder, channels } => {
                let (z, _) = front.create(text, false, None, length, noise, noise_w).map_err(|e| failed(&e))?;
                let frames = z.len() / *channels;
                let slices = slices(frames, first_frames);
                if slices.is_empty() {
                    audio(&[], true);
                }
                for (from, to) in slices {
                    // The slice with its context, channel by channel ([1, channels, frames]).
                    let (start, end) = (from.saturating_sub(CONTEXT_FRAMES), (to + CONTEXT_FRAMES).min(frames));
                    let latent: Vec<f32> = z.chunks_exact(frames).flat_map(|channel| &channel[start..end]).copied().collect();
                    let input = Tensor::<f32>::from_array(([1, *channels, end - start], latent.into_boxed_slice())).map_err(|e| failed(&e))?;
                    let outputs = vocoder.run(ort::inputs![LATENT => input]).map_err(|e| failed(&e))?;
                    let (_, samples) = outputs[0].try_extract_tensor::<f32>().map_err(|e| failed(&e))?;
                    // Samples a frame: 256 in Piper's voices (the vocoder's 8·8·2·2), read
                    // from what it gave so that a voice trained otherwise still joins up.
                    let hop = samples.len() / (end - start);
                    let keep = (from - start) * hop..((to - start) * hop).min(samples.len());
                    audio(&samples[keep], to == frames);
                }
            }
        }
        Ok(())
    }
}

/// The frame ranges the vocoder makes in turn: `first` frames, then `GROWTH` times
/// the last, a short remainder joined to the slice before it.
fn slices(frames: usize, first: usize) -> Vec<(usize, usize)> {
    let (mut out, mut from, mut size) = (Vec::new(), 0, first.max(1));
    while from < frames {
        let mut to = from.saturating_add(size).min(frames);
        if frames - to < LAST_FRAMES_AT_LEAST {
            to = frames;
        }
        out.push((from, to));
        from = to;
        size = size.saturating_mul(GROWTH);
    }
    out
}

/// Points espeak-ng (inside piper-rs) at its data before first use. piper-rs reads
/// `PIPER_ESPEAKNG_DATA_DIRECTORY`; we set it from the config or the first place that
/// has the data, so a missing install is an error here rather than a crash later.
pub fn locate_espeak_data(configured: &str) -> Result<PathBuf, TtsError> {
    const VAR: &str = "PIPER_ESPEAKNG_DATA_DIRECTORY";
    let mut candidates: Vec<PathBuf> = Vec::new();
    if !configured.is_empty() {
        candidates.push(configured.into());
    } else {
        if let Some(v) = std::env::var_os(VAR) {
            candidates.push(v.into());
        }
        if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
            candidates.push(dir.clone());
            if let Some(up) = dir.parent() {
                candidates.push(up.to_path_buf()); // target/release/deps → target/release
            }
        }
        candidates.push(crate::paths::cache_dir());
        candidates.extend(["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/share", "/usr/local/share"].map(PathBuf::from));
    }
    match candidates.iter().find(|d| d.join("espeak-ng-data/phontab").exists()) {
        Some(dir) => {
            // Set once, before any espeak call and before synthesis threads exist.
            std::env::set_var(VAR, dir);
            Ok(dir.clone())
        }
        None => Err(TtsError::EspeakData { looked: candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ") }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_grow_cover_every_frame_once_and_end_long() {
        assert_eq!(slices(300, FIRST_FRAMES), vec![(0, 16), (16, 80), (80, 300)], "16, then 64, then the rest (256 would leave 4)");
        assert_eq!(slices(20, FIRST_FRAMES), vec![(0, 20)], "a piece under 16 + 32 frames is one slice");
        assert_eq!(slices(47, FIRST_FRAMES), vec![(0, 47)]);
        assert_eq!(slices(48, FIRST_FRAMES), vec![(0, 16), (16, 48)]);
        assert_eq!(slices(500, usize::MAX), vec![(0, 500)], "whole");
        assert!(slices(0, FIRST_FRAMES).is_empty());
        for frames in 1..2000 {
            let s = slices(frames, FIRST_FRAMES);
            assert_eq!((s[0].0, s.last().unwrap().1), (0, frames));
            assert!(s.windows(2).all(|w| w[0].1 == w[1].0), "contiguous");
            assert!(s.len() == 1 || s.last().map_or(0, |(a, b)| b - a) >= LAST_FRAMES_AT_LEAST, "{frames}: {s:?}");
        }
    }
}
