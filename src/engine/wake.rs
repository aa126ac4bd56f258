//! Wake-word detection with openWakeWord's ONNX models, on the ONNX Runtime that
//! Piper already uses: 16 kHz mono f32 in, a score per wake word every 80 ms out.
//!
//! openWakeWord's feature pipeline, as its `utils.AudioFeatures` streams it: every
//! 1280 samples (80 ms) the melspectrogram model turns the newest 1760 samples (the
//! chunk and 480 before it, as 16-bit values) into 8 frames of 32 mel bands (scaled
//! `x / 10 + 2`); Google's speech-embedding model turns the newest 76 frames into
//! one 96-value feature; each wake word's classifier scores the newest 16 features
//! (1.28 s of speech) from 0 to 1.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::Tensor;

/// Samples per step: 80 ms at 16 kHz.
pub const CHUNK: usize = 1280;
/// Samples before the chunk that the melspectrogram also sees (its window and hop).
const CONTEXT: usize = 480;
const MEL_BANDS: usize = 32;
/// Mel frames per embedding.
const MEL_WINDOW: usize = 76;
const FEATURE: usize = 96;
/// A chunk this quiet (RMS, −60 dBFS, in the 16-bit scale the models take) holds no
/// wake word: speech at a microphone is 30-40 dB louder, and even the breath of an
/// /h/ that begins "hey" is above it.
const QUIET_RMS: f32 = 0.001 * 32767.0;
/// Steps whose mel frames fill the embedding's window (76 frames of 8 per step).
const MEL_STEPS: usize = MEL_WINDOW.div_ceil(8);

#[derive(Debug, thiserror::Error)]
pub enum WakeError {
    #[error("cannot read wake model {path}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("ONNX Runtime could not load wake model {path}: {reason} (is it an .onnx file? openWakeWord's .tflite models do not load)")]
    Load { path: PathBuf, reason: String },
    #[error("wake model {path}: {what} is {found}, not {expected}")]
    Shape { path: PathBuf, what: &'static str, found: String, expected: &'static str },
    #[error("wake model {path} failed: {reason}")]
    Run { path: PathBuf, reason: String },
}

/// The files: openWakeWord's two feature models and one classifier per wake word.
#[derive(Debug, Clone)]
pub struct WakeModels {
    pub melspectrogram: PathBuf,
    pub embedding: PathBuf,
    /// (name, classifier .onnx)
    pub words: Vec<(String, PathBuf)>,
}

/// One model and the file it came from (for errors).
struct Model {
    path: PathBuf,
    session: Session,
}

impl Model {
    fn load(path: &Path) -> Result<Model, WakeError> {
        std::fs::metadata(path).map_err(|source| WakeError::Open { path: path.into(), source })?;
        let load_err = |e: ort::Error| WakeError::Load { path: path.into(), reason: e.to_string() };
        // One thread: a step is ~1 ms of work, and the other engines need the cores.
        let session = Session::builder().map_err(load_err)?.with_intra_threads(1).map_err(|e| load_err(e.into()))?.commit_from_file(path).map_err(load_err)?;
        Ok(Model { path: path.into(), session })
    }

    /// The input's shape, -1 for a dimension the model leaves open.
    fn input_shape(&self) -> Vec<i64> {
        self.session.inputs().first().and_then(|i| i.dtype().tensor_shape()).map(|s| s.to_vec()).unwrap_or_default()
    }

    /// Checks the input's shape against `expected` (-1: any).
    fn expect_input(&self, what: &'static str, expected: &[i64], described: &'static str) -> Result<(), WakeError> {
        let found = self.input_shape();
        let fits = found.len() == expected.len() && found.iter().zip(expected).all(|(f, e)| *e == -1 || *f == -1 || f == e);
        if fits {
            Ok(())
        } else {
            Err(WakeError::Shape { path: self.path.clone(), what, found: format!("{found:?}"), expected: described })
        }
    }

    /// The error for an output of the wrong size.
    fn gave(&self, values: usize, expected: &'static str) -> WakeError {
        WakeError::Shape { path: self.path.clone(), what: "its output", found: format!("{values} values"), expected }
    }

    fn run(&mut self, shape: &[usize], data: Vec<f32>) -> Result<Vec<f32>, WakeError> {
        let err = |e: ort::Error| WakeError::Run { path: self.path.clone(), reason: e.to_string() };
        let input = Tensor::<f32>::from_array((shape.to_vec(), data.into_boxed_slice())).map_err(err)?;
        let outputs = self.session.run(ort::inputs![input]).map_err(err)?;
        let (_, values) = outputs[0].try_extract_tensor::<f32>().map_err(err)?;
        Ok(values.to_vec())
    }
}

struct Word {
    model: Model,
    /// Features the classifier scores at once (16 for openWakeWord's).
    frames: usize,
}

/// Every wake word's score for one 80 ms step.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Where the step ends, in samples since the detector started.
    pub end_sample: u64,
    /// One score (0 to 1) per wake word, in the order of `WakeModels::words`.
    pub scores: Vec<f32>,
}

pub struct Detector {
    melspectrogram: Model,
    embedding: Model,
    words: Vec<Word>,
    /// The newest `CONTEXT + CHUNK` samples at most, as 16-bit values.
    audio: Vec<f32>,
    /// Samples of the chunk under way.
    filled: usize,
    mels: VecDeque<[f32; MEL_BANDS]>,
    features: VecDeque<Vec<f32>>,
    samples_seen: u64,
    /// Quiet steps in a row, and what the models made of a quiet room: once the
    /// embedding's window (and then every classifier's) holds nothing but quiet, its
    /// output is the same as last time and the model is not run again — the idle cost
    /// of listening is the melspectrogram's alone.
    quiet_steps: usize,
    quiet_feature: Option<Vec<f32>>,
    quiet_scores: Option<Vec<f32>>,
}

impl Detector {
    pub fn load(models: &WakeModels) -> Result<Detector, WakeError> {
        let melspectrogram = Model::load(&models.melspectrogram)?;
        melspectrogram.expect_input("its input", &[-1, -1], "[batch, samples] (openWakeWord's melspectrogram.onnx)")?;
        let embedding = Model::load(&models.embedding)?;
        embedding.expect_input("its input", &[-1, MEL_WINDOW as i64, MEL_BANDS as i64, 1], "[batch, 76, 32, 1] (openWakeWord's embedding_model.onnx)")?;
        let mut words = Vec::new();
        for (_, path) in &models.words {
            let model = Model::load(path)?;
            model.expect_input("its input", &[1, -1, FEATURE as i64], "[1, frames, 96] (an openWakeWord wake-word classifier)")?;
            let shape = model.input_shape();
            let frames = shape[1];
            if frames < 1 {
                return Err(WakeError::Shape { path: path.clone(), what: "its input", found: format!("{shape:?}"), expected: "a fixed number of frames" });
            }
            words.push(Word { model, frames: frames as usize });
        }
        Ok(Detector {
            melspectrogram,
            embedding,
            words,
            // Silence before the first chunk, so every step sees the same span.
            audio: vec![0.0; CONTEXT],
            filled: 0,
            // openWakeWord starts its mel buffer at ones.
            mels: std::iter::repeat([1.0; MEL_BANDS]).take(MEL_WINDOW).collect(),
            features: VecDeque::new(),
            samples_seen: 0,
            quiet_steps: 0,
            quiet_feature: None,
            quiet_scores: None,
        })
    }

    /// Feeds 16 kHz mono samples (-1 to 1), in pieces of any size; returns a step
    /// for each 80 ms completed. Until a classifier has its first full set of
    /// features (1.28 s for openWakeWord's), its score is 0.
    pub fn push(&mut self, samples: &[f32]) -> Result<Vec<Step>, WakeError> {
        let mut steps = Vec::new();
        for &s in samples {
            self.audio.push(s.clamp(-1.0, 1.0) * 32767.0);
            self.filled += 1;
            self.samples_seen += 1;
            if self.filled == CHUNK {
                // The chunk is used up whatever the step's outcome: a failed step
                // leaves the detector ready for the next one.
                let step = self.step();
                self.filled = 0;
                self.audio.drain(..self.audio.len() - CONTEXT);
                steps.push(step?);
            }
        }
        Ok(steps)
    }

    fn step(&mut self) -> Result<Step, WakeError> {
        let mel = self.melspectrogram.run(&[1, self.audio.len()], self.audio.clone())?;
        if mel.is_empty() || mel.len() % MEL_BANDS != 0 {
            return Err(self.melspectrogram.gave(mel.len(), "frames of 32 mel bands"));
        }
        for frame in mel.chunks_exact(MEL_BANDS) {
            let mut bands = [0.0; MEL_BANDS];
            for (b, v) in bands.iter_mut().zip(frame) {
                *b = v / 10.0 + 2.0;
            }
            self.mels.push_back(bands);
        }
        while self.mels.len() > MEL_WINDOW {
            self.mels.pop_front();
        }
        let chunk = &self.audio[self.audio.len() - CHUNK..];
        let quiet = (chunk.iter().map(|x| x * x).sum::<f32>() / CHUNK as f32).sqrt() < QUIET_RMS;
        self.quiet_steps = if quiet { self.quiet_steps + 1 } else { 0 };
        if !quiet {
            (self.quiet_feature, self.quiet_scores) = (None, None);
        }
        let feature = match &self.quiet_feature {
            Some(f) if self.quiet_steps > MEL_STEPS => f.clone(),
            _ => {
                let window: Vec<f32> = self.mels.iter().flatten().copied().collect();
                let feature = self.embedding.run(&[1, MEL_WINDOW, MEL_BANDS, 1], window)?;
                if feature.len() != FEATURE {
                    return Err(self.embedding.gave(feature.len(), "96 values"));
                }
                if self.quiet_steps > MEL_STEPS {
                    self.quiet_feature = Some(feature.clone());
                }
                feature
            }
        };
        self.features.push_back(feature);
        let longest = self.words.iter().map(|w| w.frames).max().unwrap_or(0);
        while self.features.len() > longest {
            self.features.pop_front();
        }
        let all_quiet = self.quiet_steps > MEL_STEPS + longest;
        if let Some(scores) = self.quiet_scores.as_ref().filter(|_| all_quiet) {
            return Ok(Step { end_sample: self.samples_seen, scores: scores.clone() });
        }
        let mut scores = Vec::with_capacity(self.words.len());
        for word in &mut self.words {
            if self.features.len() < word.frames {
                scores.push(0.0);
                continue;
            }
            let newest: Vec<f32> = self.features.iter().skip(self.features.len() - word.frames).flatten().copied().collect();
            let score = word.model.run(&[1, word.frames, FEATURE], newest)?;
            scores.push(score.first().copied().unwrap_or(0.0));
        }
        if all_quiet {
            self.quiet_scores = Some(scores.clone());
        }
        Ok(Step { end_sample: self.samples_seen, scores })
    }
}
