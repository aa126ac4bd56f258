//! Speech recognition with whisper.cpp (whisper-rs): 16 kHz mono f32 in, text out.

use std::path::{Path, PathBuf};
use std::time::Instant;

use whisper_rs::{FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters, WhisperState};

use super::{ms_since, sniff, FileKind};

#[derive(Debug, thiserror::Error)]
pub enum AsrError {
    #[error("cannot read ASR model {path}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("ASR model {path} is {found}; expected a whisper.cpp ggml model (e.g. ggml-tiny.en.bin, or convert one with `voxd models import-ct2`)")]
    WrongKind { path: PathBuf, found: &'static str },
    #[error("whisper.cpp could not load {path} ({size} bytes): truncated or corrupt? (its log above says why)")]
    Load { path: PathBuf, size: u64 },
    #[error("whisper.cpp failed to transcribe: {0}")]
    Transcribe(whisper_rs::WhisperError),
    #[error("ASR language {0:?} is not one whisper knows")]
    Language(String),
}

/// Settings the engine needs from the config.
#[derive(Debug, Clone)]
pub struct AsrOptions {
    pub threads: u32,
    /// ISO 639-1 code, or "auto".
    pub language: String,
    pub no_speech_threshold: f32,
}

pub struct Asr {
    state: WhisperState,
    options: AsrOptions,
    multilingual: bool,
    pub model_id: String,
    pub load_ms: f64,
}

/// A transcript and what it cost.
#[derive(Debug, Clone)]
pub struct Transcript {
    pub text: String,
    pub audio_s: f64,
    pub elapsed_ms: f64,
    /// Segments dropped as probable non-speech.
    pub dropped_segments: usize,
}

impl Transcript {
    /// Real-time factor: processing time over audio time (lower is faster).
    pub fn rtf(&self) -> f64 {
        self.elapsed_ms / 1000.0 / self.audio_s.max(1e-9)
    }
}

impl Asr {
    pub fn load(path: &Path, model_id: &str, options: AsrOptions) -> Result<Asr, AsrError> {
        let (kind, size) = sniff(path).map_err(|source| AsrError::Open { path: path.into(), source })?;
        if kind != FileKind::WhisperGgml {
            return Err(AsrError::WrongKind { path: path.into(), found: kind.describe() });
        }
        if options.language != "auto" && whisper_rs::get_lang_id(&options.language).is_none() {
            return Err(AsrError::Language(options.language.clone()));
        }
        let started = Instant::now();
        let path_str = path.to_str().ok_or_else(|| AsrError::Load { path: path.into(), size })?;
        let ctx = WhisperContext::new_with_params(path_str, WhisperContextParameters::default())
            .map_err(|_| AsrError::Load { path: path.into(), size })?;
        let state = ctx.create_state().map_err(|_| AsrError::Load { path: path.into(), size })?;
        let multilingual = ctx.is_multilingual();
        Ok(Asr { state, options, multilingual, model_id: model_id.to_string(), load_ms: ms_since(started) })
    }

    /// Transcribes one utterance (16 kHz mono f32).
    pub fn transcribe(&mut self, samples: &[f32]) -> Result<Transcript, AsrError> {
        let started = Instant::now();
        let mut params = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        params.set_n_threads(self.options.threads as i32);
        // English-only models must not be asked for another language.
        let language = if self.multilingual { self.options.language.as_str() } else { "en" };
        params.set_language(Some(language));
        params.set_detect_language(false);
        params.set_no_context(true);
        params.set_print_special(false);
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_timestamps(false);
        params.set_suppress_blank(true);
        params.set_no_speech_thold(self.options.no_speech_threshold);
        self.state.full(params, samples).map_err(AsrError::Transcribe)?;

        let mut text = String::new();
        let mut dropped = 0;
        for segment in self.state.as_iter() {
            if segment.no_speech_probability() > self.options.no_speech_threshold {
                dropped += 1;
                continue;
            }
            let piece = segment.to_str_lossy().map_err(AsrError::Transcribe)?;
            text.push_str(&piece);
        }
        Ok(Transcript {
            text: text.trim().to_string(),
            audio_s: samples.len() as f64 / crate::audio::ASR_RATE_HZ as f64,
            elapsed_ms: ms_since(started),
            dropped_segments: dropped,
        })
    }
}
