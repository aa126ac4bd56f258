//! Audio files in and out: read any common WAV as 16 kHz mono f32 (what VAD and
//! Whisper want), resample, and write 16-bit WAV.

use std::path::{Path, PathBuf};

use rubato::{FftFixedIn, Resampler};

/// The rate VAD and Whisper work at.
pub const ASR_RATE_HZ: u32 = 16_000;

#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("cannot read {path}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a WAV file ({reason}); expected RIFF/WAVE audio: 8-48 kHz, mono or stereo, PCM 8/16/24/32-bit or 32-bit float")]
    NotWav { path: PathBuf, reason: String },
    #[error("{path}: unsupported WAV format: {what}; expected 8-48 kHz, mono or stereo, PCM 8/16/24/32-bit or 32-bit float")]
    Unsupported { path: PathBuf, what: String },
    #[error("{path} holds no audio samples (empty or truncated WAV)")]
    Empty { path: PathBuf },
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: hound::Error },
    #[error("resampling {from} Hz to {to} Hz failed: {reason}")]
    Resample { from: u32, to: u32, reason: String },
}

/// Mono audio at a known rate.
#[derive(Debug, Clone)]
pub struct Clip {
    pub samples: Vec<f32>,
    pub rate_hz: u32,
}

impl Clip {
    pub fn duration_s(&self) -> f64 {
        self.samples.len() as f64 / self.rate_hz as f64
    }
}

/// Reads a WAV file, mixes it to mono and resamples it to `rate_hz`.
pub fn read_wav(path: &Path, rate_hz: u32) -> Result<Clip, AudioError> {
    let file = std::fs::File::open(path).map_err(|source| AudioError::Open { path: path.into(), source })?;
    let reader = hound::WavReader::new(std::io::BufReader::new(file)).map_err(|e| match e {
        hound::Error::IoError(source) if ended_early(&source) => AudioError::NotWav { path: path.into(), reason: "it ends inside its header (truncated)".into() },
        hound::Error::IoError(source) => AudioError::Open { path: path.into(), source },
        hound::Error::Unsupported => AudioError::Unsupported { path: path.into(), what: "encoding hound cannot read (compressed?)".into() },
        other => AudioError::NotWav { path: path.into(), reason: other.to_string() },
    })?;
    let spec = reader.spec();
    if !(8_000..=48_000).contains(&spec.sample_rate) {
        return Err(AudioError::Unsupported { path: path.into(), what: format!("sample rate {} Hz", spec.sample_rate) });
    }
    if !(1..=2).contains(&spec.channels) {
        return Err(AudioError::Unsupported { path: path.into(), what: format!("{} channels", spec.channels) });
    }
    let interleaved: Result<Vec<f32>, hound::Error> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Float, 32) => reader.into_samples::<f32>().collect(),
        (hound::SampleFormat::Int, bits @ (8 | 16 | 24 | 32)) => {
            let scale = 1.0 / (1u64 << (bits - 1)) as f32;
            reader.into_samples::<i32>().map(|s| s.map(|v| v as f32 * scale)).collect()
        }
        (format, bits) => {
            return Err(AudioError::Unsupported { path: path.into(), what: format!("{bits}-bit {format:?} samples") });
        }
    };
    // A WAV cut short mid-sample still yields the whole samples before the cut.
    let interleaved = match interleaved {
        Ok(v) => v,
        Err(hound::Error::IoError(e)) if ended_early(&e) => {
            return Err(AudioError::NotWav { path: path.into(), reason: "data chunk ends early (truncated file)".into() })
        }
        Err(e) => return Err(AudioError::NotWav { path: path.into(), reason: e.to_string() }),
    };
    let mono: Vec<f32> = if spec.channels == 2 {
        interleaved.chunks_exact(2).map(|lr| 0.5 * (lr[0] + lr[1])).collect()
    } else {
        interleaved
    };
    if mono.is_empty() {
        return Err(AudioError::Empty { path: path.into() });
    }
    let samples = resample(&mono, spec.sample_rate, rate_hz)?;
    Ok(Clip { samples, rate_hz })
}

/// Did reading stop because the file ended? hound 3.5 says so as an
/// `ErrorKind::Other` error with this message, not as `UnexpectedEof`: without
/// this a truncated WAV read as "cannot read" (an I/O problem) instead of as cut short.
fn ended_early(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::UnexpectedEof || e.to_string() == "Failed to read enough bytes."
}

/// Resamples a whole mono signal (band-limited FFT resampler), keeping its length
/// proportional and its timing aligned (the resampler's delay is removed).
pub fn resample(input: &[f32], from: u32, to: u32) -> Result<Vec<f32>, AudioError> {
    if from == to {
        return Ok(input.to_vec());
    }
    let fail = |e: &dyn std::fmt::Display| AudioError::Resample { from, to, reason: e.to_string() };
    let chunk = 1024;
    let mut r = FftFixedIn::<f32>::new(from as usize, to as usize, chunk, 2, 1).map_err(|e| fail(&e))?;
    let delay = r.output_delay();
    let expected = (input.len() as u64 * to as u64 / from as u64) as usize;
    let mut out = Vec::with_capacity(expected + delay + chunk);
    let mut pos = 0;
    while pos + r.input_frames_next() <= input.len() {
        let n = r.input_frames_next();
        let o = r.process(&[&input[pos..pos + n]], None).map_err(|e| fail(&e))?;
        out.extend_from_slice(&o[0]);
        pos += n;
    }
    if pos < input.len() {
        let o = r.process_partial(Some(&[&input[pos..]]), None).map_err(|e| fail(&e))?;
        out.extend_from_slice(&o[0]);
    }
    // Flush with silence until the delayed tail is out. A flush may give nothing: the
    // resampler fills a whole FFT block first, which at a rate like 47999 Hz (no
    // common factor with 16 kHz) is 47999 frames, dozens of chunks. So an empty
    // flush is no sign of the end (stopping there lost whole clips); the number of
    // flushes is bounded by what that block and the delay can need.
    let most = ((expected + 3 * delay) as u64 * from as u64 / to as u64) as usize / chunk + 8;
    for _ in 0..most {
        if out.len() >= expected + delay {
            break;
        }
        let o = r.process_partial::<&[f32]>(None, None).map_err(|e| fail(&e))?;
        out.extend_from_slice(&o[0]);
    }
    out.drain(..delay.min(out.len()));
    out.truncate(expected);
    Ok(out)
}

/// Resamples a stream arriving in pieces of any size (live capture at a device rate
/// that is not 16 kHz). Pieces are gathered into the resampler's fixed chunks, so
/// output lags input by up to one chunk (1024 frames) plus the filter's delay.
pub struct StreamResampler {
    inner: Option<FftFixedIn<f32>>,
    pending: Vec<f32>,
    out: Vec<Vec<f32>>,
}

impl StreamResampler {
    pub fn new(from: u32, to: u32) -> Result<StreamResampler, AudioError> {
        let inner = if from == to {
            None
        } else {
            Some(FftFixedIn::<f32>::new(from as usize, to as usize, 1024, 2, 1).map_err(|e| AudioError::Resample { from, to, reason: e.to_string() })?)
        };
        let out = inner.as_ref().map_or_else(Vec::new, |r| r.output_buffer_allocate(true));
        Ok(StreamResampler { inner, pending: Vec::new(), out })
    }

    /// Feeds `input`; appends what is ready to `output`.
    pub fn push(&mut self, input: &[f32], output: &mut Vec<f32>) {
        let Some(r) = self.inner.as_mut() else {
            output.extend_from_slice(input);
            return;
        };
        self.pending.extend_from_slice(input);
        let mut used = 0;
        while self.pending.len() - used >= r.input_frames_next() {
            let n = r.input_frames_next();
            // A fixed-size chunk into a buffer sized for it cannot fail.
            if let Ok((_, produced)) = r.process_into_buffer(&[&self.pending[used..used + n]], &mut self.out, None) {
                output.extend_from_slice(&self.out[0][..produced]);
            }
            used += n;
        }
        self.pending.drain(..used);
    }
}

/// Writes mono f32 samples as 16-bit PCM WAV.
pub fn write_wav(path: &Path, samples: &[f32], rate_hz: u32) -> Result<(), AudioError> {
    let err = |source| AudioError::Write { path: path.into(), source };
    let spec = hound::WavSpec { channels: 1, sample_rate: rate_hz, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut w = hound::WavWriter::create(path, spec).map_err(err)?;
    for &s in samples {
        w.write_sample((s.clamp(-1.0, 1.0) * i16::MAX as f32) as i16).map_err(err)?;
    }
    w.finalize().map_err(err)
}

/// Below this amplitude a synthesised voice is silent (-40 dBFS; Piper's pauses are
/// near -60).
const SILENT: f32 = 0.01;

/// Samples from the first to the last that is not silent (0 if all are).
pub fn voiced_span(samples: &[f32]) -> usize {
    match (samples.iter().position(|s| s.abs() > SILENT), samples.iter().rposition(|s| s.abs() > SILENT)) {
        (Some(first), Some(last)) => last + 1 - first,
        _ => 0,
    }
}

/// Silence at the end of `samples` shortened to `keep_ms` (none is added).
pub fn trim_silent_end(samples: &mut Vec<f32>, rate_hz: u32, keep_ms: u32) {
    let voiced_end = samples.iter().rposition(|s| s.abs() > SILENT).map_or(0, |i| i + 1);
    let keep = (rate_hz as u64 * keep_ms as u64 / 1000) as usize;
    samples.truncate((voiced_end + keep).min(samples.len()));
}

/// Silence at the start of `samples` shortened to `keep_ms`.
pub fn trim_silent_start(samples: &mut Vec<f32>, rate_hz: u32, keep_ms: u32) {
    let voiced_start = samples.iter().position(|s| s.abs() > SILENT).unwrap_or(samples.len());
    let keep = (rate_hz as u64 * keep_ms as u64 / 1000) as usize;
    samples.drain(..voiced_start.saturating_sub(keep));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_trimmed_at_either_end_down_to_what_is_kept() {
        let rate = 1000;
        let voiced = |v: &[f32]| v.iter().filter(|s| s.abs() > SILENT).count();
        let mut v: Vec<f32> = [vec![0.0; 100], vec![0.5; 50], vec![0.001; 200]].concat();
        trim_silent_end(&mut v, rate, 30);
        assert_eq!(v.len(), 100 + 50 + 30);
        trim_silent_start(&mut v, rate, 10);
        assert_eq!((v.len(), voiced(&v)), (10 + 50 + 30, 50));
        let mut short: Vec<f32> = vec![0.5; 5];
        trim_silent_end(&mut short, rate, 30);
        trim_silent_start(&mut short, rate, 30);
        assert_eq!(short.len(), 5, "nothing to trim, nothing added");
        assert_eq!(voiced_span(&[0.0, 0.5, 0.0, 0.5, 0.0]), 3);
        let mut quiet = vec![0.0; 100];
        trim_silent_end(&mut quiet, rate, 30);
        assert_eq!(quiet.len(), 30);
    }

    fn tone(rate: u32, hz: f32, secs: f32) -> Vec<f32> {
        (0..(rate as f32 * secs) as usize).map(|i| (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin() * 0.5).collect()
    }

    /// Zero crossings per second ≈ 2 × frequency: a resampled tone keeps its pitch.
    fn pitch(samples: &[f32], rate: u32) -> f32 {
        let crossings = samples.windows(2).filter(|w| (w[0] < 0.0) != (w[1] < 0.0)).count();
        crossings as f32 / (samples.len() as f32 / rate as f32) / 2.0
    }

    #[test]
    fn resampling_keeps_length_and_pitch() {
        for from in [8_000, 22_050, 44_100, 48_000] {
            // One second is an exact number of the resampler's chunks at some rates:
            // the tail is empty there, which once failed.
            let input = tone(from, 440.0, 1.0);
            let out = resample(&input, from, 16_000).unwrap();
            assert_eq!(out.len(), 16_000, "from {from}");
            let p = pitch(&out[1000..15000], 16_000);
            assert!((p - 440.0).abs() < 5.0, "from {from}: pitch {p}");
        }
    }

    /// Found by the WAV property test: at rates with no common factor with 16 kHz
    /// the resampler's first output comes only after tens of thousands of frames,
    /// and short clips came out empty.
    #[test]
    fn odd_rates_keep_every_sample() {
        for (from, n) in [(8_001, 1500), (8_006, 100), (47_999, 2000), (44_100, 3), (11_025, 1)] {
            let out = resample(&vec![0.25; n], from, 16_000).unwrap();
            assert_eq!(out.len() as u64, n as u64 * 16_000 / from as u64, "from {from}, {n} frames");
        }
    }

    #[test]
    fn a_stream_in_odd_pieces_resamples_like_the_whole() {
        let input = tone(48_000, 440.0, 1.0);
        let mut r = StreamResampler::new(48_000, 16_000).unwrap();
        let mut out = Vec::new();
        for piece in input.chunks(333) {
            r.push(piece, &mut out);
        }
        // All but the last partial chunk has come out, at the new rate and pitch.
        assert!((15_000..=16_000).contains(&out.len()), "{}", out.len());
        let p = pitch(&out[2000..14000], 16_000);
        assert!((p - 440.0).abs() < 5.0, "pitch {p}");
        let mut same = StreamResampler::new(16_000, 16_000).unwrap();
        let mut copy = Vec::new();
        same.push(&[0.5, 0.25], &mut copy);
        assert_eq!(copy, vec![0.5, 0.25], "no conversion when the rates match");
    }

    #[test]
    fn stereo_float_and_int_wavs_read_alike() {
        let dir = tempfile::tempdir().unwrap();
        let mono = tone(44_100, 300.0, 0.5);
        let f = dir.path().join("f32.wav");
        let spec = hound::WavSpec { channels: 2, sample_rate: 44_100, bits_per_sample: 32, sample_format: hound::SampleFormat::Float };
        let mut w = hound::WavWriter::create(&f, spec).unwrap();
        for s in &mono {
            w.write_sample(*s).unwrap();
            w.write_sample(*s).unwrap();
        }
        w.finalize().unwrap();
        let i = dir.path().join("i16.wav");
        write_wav(&i, &mono, 44_100).unwrap();
        let a = read_wav(&f, 16_000).unwrap();
        let b = read_wav(&i, 16_000).unwrap();
        assert_eq!(a.samples.len(), 8_000);
        assert_eq!(a.samples.len(), b.samples.len());
        let diff = a.samples.iter().zip(&b.samples).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        assert!(diff < 1e-3, "max difference {diff}");
    }

    #[test]
    fn bad_files_get_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("notes.wav");
        std::fs::write(&text, "hello, not audio").unwrap();
        let e = read_wav(&text, 16_000).unwrap_err().to_string();
        assert!(e.contains("notes.wav is not a WAV file"), "{e}");

        let empty = dir.path().join("empty.wav");
        write_wav(&empty, &[], 16_000).unwrap();
        let e = read_wav(&empty, 16_000).unwrap_err().to_string();
        assert!(e.contains("empty.wav holds no audio samples"), "{e}");

        let missing = read_wav(&dir.path().join("nope.wav"), 16_000).unwrap_err().to_string();
        assert!(missing.contains("cannot read") && missing.contains("nope.wav"), "{missing}");

        let odd = dir.path().join("96k.wav");
        write_wav(&odd, &[0.0; 100], 96_000).unwrap();
        let e = read_wav(&odd, 16_000).unwrap_err().to_string();
        assert!(e.contains("sample rate 96000 Hz"), "{e}");
    }
}
