//! Speech recognition with whisper.cpp (whisper-rs): 16 kHz mono f32 in, text out.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
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
    #[error("transcription dropped: newer audio is waiting")]
    Dropped,
}

/// Settings the engine needs from the config.
#[derive(Debug, Clone)]
pub struct AsrOptions {
    pub threads: u32,
    /// ISO 639-1 code, or "auto".
    pub language: String,
    pub no_speech_threshold: f32,
    /// Encode only as much of Whisper's 30 s window as the utterance needs (at least
    /// `min_encoder_s`), instead of always the full window. See `encoder_frames`.
    pub scale_encoder: bool,
    pub min_encoder_s: f32,
    /// Decode again at higher temperatures when a greedy decode looks unsure.
    pub temperature_fallback: bool,
    /// Fused attention kernels (whisper.cpp's flash attention).
    pub flash_attention: bool,
    /// On the GPU when the ggml has one.
    pub gpu: bool,
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
    /// Encoder positions used (1500 = the full 30 s window).
    pub audio_ctx: u32,
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
        let mut params = WhisperContextParameters::default();
        params.flash_attn(options.flash_attention);
        // whisper-rs only turns the GPU on by itself when it builds its own CUDA
        // ggml; voxd's shared ggml brings it instead.
        params.use_gpu(options.gpu);
        let ctx = WhisperContext::new_with_params(path_str, params)
            .map_err(|_| AsrError::Load { path: path.into(), size })?;
        let state = ctx.create_state().map_err(|_| AsrError::Load { path: path.into(), size })?;
        let multilingual = ctx.is_multilingual();
        Ok(Asr { state, options, multilingual, model_id: model_id.to_string(), load_ms: ms_since(started) })
    }

    /// Switches encoder-window scaling and the temperature fallback (for benchmarks
    /// comparing them).
    pub fn set_scale_encoder(&mut self, on: bool) {
        self.options.scale_encoder = on;
    }
    pub fn set_temperature_fallback(&mut self, on: bool) {
        self.options.temperature_fallback = on;
    }

    /// The languages this model, as set up, hears (ISO 639-1): an English-only
    /// model "en"; a multilingual one the configured language, or all of Whisper's
    /// with "auto".
    pub fn languages(&self) -> Vec<String> {
        match (self.multilingual, self.options.language.as_str()) {
            (false, _) => vec!["en".into()],
            (true, "auto") => (0..=whisper_rs::get_lang_max_id()).filter_map(whisper_rs::get_lang_str).map(str::to_string).collect(),
            (true, language) => vec![language.to_string()],
        }
    }

    /// Transcribes one utterance (16 kHz mono f32).
    pub fn transcribe(&mut self, samples: &[f32]) -> Result<Transcript, AsrError> {
        self.run(samples, None, self.options.min_encoder_s)
    }

    /// A quick draft of speech still going on: the encoder window's floor is
    /// `DRAFT_FLOOR_S`, not `min_encoder_s` — several times faster, and the words
    /// are mostly right (a draft's last words are not trusted anyway). Returns
    /// `Dropped` as soon as `waiting` is nonzero between the encoder and each decoder
    /// step; whisper.cpp cannot stop inside the encoder, which is why it is kept short:
    /// a draft under way when the user stops delays the pass that matters.
    pub fn transcribe_draft(&mut self, samples: &[f32], waiting: &AtomicUsize) -> Result<Transcript, AsrError> {
        self.run(samples, Some(waiting), DRAFT_FLOOR_S)
    }

    fn run(&mut self, samples: &[f32], waiting: Option<&AtomicUsize>, min_encoder_s: f32) -> Result<Transcript, AsrError> {
        let started = Instant::now();
        let audio_s = samples.len() as f64 / crate::audio::ASR_RATE_HZ as f64;
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
        if !self.options.temperature_fallback {
            // One greedy pass. whisper.cpp otherwise re-decodes up to five times at
            // rising temperatures when a pass looks unsure (`voxd bench-asr` measures
            // what that costs). Without those retries, a pass that loops on its own
            // output ("5. 5. 5. …") is cut off here — nobody says more than ~6 tokens
            // a second — instead of holding the turn up. (With the fallback on, the
            // cap would hide the loop from whisper.cpp's repetition check.)
            params.set_temperature_inc(0.0);
            params.set_max_tokens((16.0 + 8.0 * audio_s) as i32);
        }
        params.set_no_speech_thold(self.options.no_speech_threshold);
        let audio_ctx = encoder_frames(audio_s, self.options.scale_encoder, min_encoder_s);
        params.set_audio_ctx(audio_ctx as i32);
        if audio_ctx < 1500 {
            // A shortened window ends in padding, where Whisper likes to invent a
            // second segment (often a repeat of the first). One utterance, one segment.
            params.set_single_segment(true);
        }
        if let Some(waiting) = waiting {
            // SAFETY: the callback only reads the counter, which outlives `full`.
            unsafe {
                params.set_abort_callback(Some(while_none_waiting));
                params.set_abort_callback_user_data(waiting as *const AtomicUsize as *mut std::ffi::c_void);
            }
        }
        let done = match waiting {
            Some(_) => crate::logging::whisper_errors_expected(|| self.state.full(params, samples)),
            None => self.state.full(params, samples),
        };
        if waiting.is_some_and(|w| w.load(Ordering::Acquire) > 0) {
            return Err(AsrError::Dropped);
        }
        done.map_err(AsrError::Transcribe)?;

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
            audio_s,
            elapsed_ms: ms_since(started),
            dropped_segments: dropped,
            audio_ctx,
        })
    }
}

/// The encoder window's floor for drafts (`Asr::transcribe_draft`), seconds.
pub const DRAFT_FLOOR_S: f32 = 3.0;

/// whisper.cpp's abort hook (true: stop): something is waiting.
unsafe extern "C" fn while_none_waiting(waiting: *mut std::ffi::c_void) -> bool {
    // SAFETY: `run` passes a `&AtomicUsize` that lives until `full` returns.
    unsafe { (*(waiting as *const AtomicUsize)).load(Ordering::Acquire) > 0 }
}

/// Whisper's encoder always runs over a 30 s window (1500 positions, 50 per second)
/// however short the speech; its cost grows with the window, so a 2 s command pays
/// for 30 s. Scaling the window to the audio (plus a margin, never below a floor)
/// cuts that. The floor matters: measured with `voxd bench-asr` on the pocketsphinx
/// clips and jfk.wav (tiny.en), a 10 s floor keeps the full window's word error rate
/// (0.073) at 2.6x the speed, while a 3 s floor is 4x faster but triples the errors
/// (Whisper invents repeats in a short window's padding).
pub fn encoder_frames(audio_s: f64, scale: bool, min_encoder_s: f32) -> u32 {
    const PER_SECOND: f64 = 50.0;
    const FULL: u32 = 1500;
    if !scale {
        return FULL;
    }
    const MARGIN_S: f64 = 1.0;
    let wanted = ((audio_s + MARGIN_S).max(min_encoder_s as f64) * PER_SECOND).ceil() as u32;
    // Multiples of 64 keep ggml's matrix kernels on their fast paths.
    (wanted.div_ceil(64) * 64).min(FULL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encoder_window_follows_the_utterance() {
        assert_eq!(encoder_frames(1.0, true, 3.0), 192, "floor of 3 s, rounded up to 64");
        assert_eq!(encoder_frames(8.0, true, 3.0), 512, "9 s needs 450 positions");
        assert_eq!(encoder_frames(40.0, true, 3.0), 1500, "never past the model's window");
        assert_eq!(encoder_frames(1.0, false, 3.0), 1500);
    }
}
