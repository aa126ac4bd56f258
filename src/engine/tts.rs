//! Speech synthesis with Piper (piper-rs on ONNX Runtime): text in, mono f32 PCM out.

use std::path::{Path, PathBuf};
use std::time::Instant;

use piper_rs::{ModelConfig, Piper};

use super::ms_since;

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
    piper: Piper,
    length_scale: f32,
    noise_scale: f32,
    noise_w: f32,
    pub rate_hz: u32,
    pub voice_id: String,
    pub load_ms: f64,
}

/// Synthesised audio and what it cost.
#[derive(Debug, Clone)]
pub struct Speech {
    pub samples: Vec<f32>,
    pub rate_hz: u32,
    pub elapsed_ms: f64,
}

impl Speech {
    pub fn audio_s(&self) -> f64 {
        self.samples.len() as f64 / self.rate_hz as f64
    }
    /// Real-time factor: processing time over audio time.
    pub fn rtf(&self) -> f64 {
        self.elapsed_ms / 1000.0 / self.audio_s().max(1e-9)
    }
}

impl Tts {
    /// Loads `voice.onnx` with its `voice.onnx.json` beside it.
    pub fn load(onnx: &Path, voice_id: &str, options: &TtsOptions) -> Result<Tts, TtsError> {
        locate_espeak_data(&options.espeak_data_dir)?;
        let json = PathBuf::from(format!("{}.json", onnx.display()));
        std::fs::metadata(onnx).map_err(|source| TtsError::Open { path: onnx.into(), source })?;
        let text = std::fs::read_to_string(&json).map_err(|source| TtsError::Open { path: json.clone(), source })?;
        let config: ModelConfig = serde_json::from_str(&text).map_err(|e| TtsError::Config { path: json.clone(), reason: e.to_string() })?;
        let rate_hz = config.audio.sample_rate;
        let length_scale = config.inference.length_scale / options.rate;
        let noise_scale = config.inference.noise_scale * options.variability;
        let noise_w = config.inference.noise_w * options.variability;

        let started = Instant::now();
        let load_err = |e: ort::Error| TtsError::Load { path: onnx.into(), reason: e.to_string() };
        let session = ort::session::Session::builder()
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
            .commit_from_file(onnx)
            .map_err(load_err)?;
        let piper = Piper::from_session(session, config);
        Ok(Tts { piper, length_scale, noise_scale, noise_w, rate_hz, voice_id: voice_id.to_string(), load_ms: ms_since(started) })
    }

    pub fn synthesize(&mut self, text: &str) -> Result<Speech, TtsError> {
        let started = Instant::now();
        let (samples, rate_hz) = self
            .piper
            .create(text, false, None, Some(self.length_scale), Some(self.noise_scale), Some(self.noise_w))
            .map_err(|e| TtsError::Synthesize(e.to_string()))?;
        Ok(Speech { samples, rate_hz, elapsed_ms: ms_since(started) })
    }
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
