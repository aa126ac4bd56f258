//! Convert a CTranslate2 Whisper model (`model.bin` + `vocabulary.txt`) to the
//! whisper.cpp ggml format that whisper-rs loads.
//!
//! Why: the package registries reachable here ship Whisper only in CTranslate2 form
//! (faster-whisper), and whisper.cpp reads only its own ggml files. The layouts are
//! documented in MODELS.md; this is the Rust twin of whisper.cpp's
//! `convert-pt-to-ggml.py`, reading CTranslate2 names instead of PyTorch ones.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use half::f16;

/// whisper.cpp's file magic ("ggml" as a little-endian u32).
pub const GGML_MAGIC: u32 = 0x6767_6d6c;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a CTranslate2 Whisper model: {reason}")]
    Format { path: PathBuf, reason: String },
}

/// One CTranslate2 variable: shape and raw little-endian data.
struct Variable {
    dims: Vec<usize>,
    dtype: u8,
    data: Vec<u8>,
}

/// CTranslate2 dtypes (see MODELS.md).
const CT2_F32: u8 = 0;
const CT2_I8: u8 = 1;
const CT2_I16: u8 = 2;
const CT2_I32: u8 = 3;
const CT2_F16: u8 = 4;

impl Variable {
    fn to_f32(&self) -> Vec<f32> {
        match self.dtype {
            CT2_F32 => self.data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
            CT2_F16 => self
                .data
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => unreachable!("to_f32 on dtype {other}; callers check float dtypes"),
        }
    }

    fn scalar_int(&self) -> Option<i64> {
        match self.dtype {
            CT2_I8 => Some(self.data[0] as i8 as i64),
            CT2_I16 => Some(i16::from_le_bytes([self.data[0], self.data[1]]) as i64),
            CT2_I32 => Some(i32::from_le_bytes(self.data[..4].try_into().unwrap()) as i64),
            _ => None,
        }
    }
}

/// Reads the variables of a CTranslate2 `model.bin` (binary version 6).
struct Ct2Reader<R> {
    inner: R,
    path: PathBuf,
}

impl<R: Read> Ct2Reader<R> {
    fn err(&self, reason: impl Into<String>) -> ConvertError {
        ConvertError::Format { path: self.path.clone(), reason: reason.into() }
    }

    fn bytes(&mut self, n: usize) -> Result<Vec<u8>, ConvertError> {
        let mut buf = vec![0u8; n];
        self.inner.read_exact(&mut buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.err("file ends early (truncated?)")
            } else {
                ConvertError::Read { path: self.path.clone(), source: e }
            }
        })?;
        Ok(buf)
    }

    fn u8(&mut self) -> Result<u8, ConvertError> {
        Ok(self.bytes(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, ConvertError> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().unwrap()))
    }

    /// A u16 length that counts a trailing NUL, the bytes, then the NUL.
    fn string(&mut self) -> Result<String, ConvertError> {
        let len = u16::from_le_bytes(self.bytes(2)?.try_into().unwrap()) as usize;
        let mut raw = self.bytes(len)?;
        if raw.pop() != Some(0) {
            return Err(self.err("string without its trailing NUL"));
        }
        String::from_utf8(raw).map_err(|_| self.err("string is not UTF-8"))
    }

    fn read_model(&mut self) -> Result<BTreeMap<String, Variable>, ConvertError> {
        let version = self.u32()?;
        if version != 6 {
            return Err(self.err(format!("binary version {version}, expected 6")));
        }
        let spec = self.string()?;
        if spec != "WhisperSpec" {
            return Err(self.err(format!("model spec {spec:?}, expected \"WhisperSpec\"")));
        }
        let _revision = self.u32()?;
        let n_vars = self.u32()?;
        let mut vars = BTreeMap::new();
        for _ in 0..n_vars {
            let name = self.string()?;
            let rank = self.u8()? as usize;
            let dims = (0..rank).map(|_| self.u32().map(|d| d as usize)).collect::<Result<Vec<_>, _>>()?;
            let dtype = self.u8()?;
            let nbytes = self.u32()? as usize;
            if nbytes > 4 << 30 {
                return Err(self.err(format!("variable {name} claims {nbytes} bytes")));
            }
            let data = self.bytes(nbytes)?;
            vars.insert(name, Variable { dims, dtype, data });
        }
        Ok(vars)
    }
}

/// Whisper hyperparameters, in the order whisper.cpp's header stores them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hparams {
    pub n_vocab: usize,
    pub n_audio_ctx: usize,
    pub n_audio_state: usize,
    pub n_audio_head: usize,
    pub n_audio_layer: usize,
    pub n_text_ctx: usize,
    pub n_text_state: usize,
    pub n_text_head: usize,
    pub n_text_layer: usize,
    pub n_mels: usize,
}

/// What a conversion produced, for the caller to report.
#[derive(Debug)]
pub struct Converted {
    pub hparams: Hparams,
    pub tensors: usize,
    pub vocab: usize,
    pub bytes: u64,
}

/// How the weight matrices are stored in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Weights {
    /// As CTranslate2 ships them (float16).
    #[default]
    F16,
    /// 8-bit blocks (ggml Q8_0): half the size, faster matrix products on CPU.
    Q8_0,
}

/// ggml storage types used here (ids from ggml.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DType {
    F32 = 0,
    F16 = 1,
    Q8_0 = 8,
}

/// A tensor ready to write: ggml name, row-major dims (outermost first), f32 values.
struct Tensor {
    name: String,
    dims: Vec<usize>,
    values: Vec<f32>,
    dtype: DType,
}

/// Converts `dir/model.bin` + `dir/vocabulary.txt` into a whisper.cpp ggml file at `out`.
/// `progress` is called with (done, total) variables as the work advances.
pub fn convert(dir: &Path, out: &Path, weights: Weights, mut progress: impl FnMut(usize, usize)) -> Result<Converted, ConvertError> {
    let model_path = dir.join("model.bin");
    let file = File::open(&model_path).map_err(|source| ConvertError::Read { path: model_path.clone(), source })?;
    let mut reader = Ct2Reader { inner: BufReader::new(file), path: model_path.clone() };
    let vars = reader.read_model()?;
    let b = Builder { vars: &vars, path: &model_path, tensors: Vec::new(), weights };
    let hparams = b.hparams()?;
    let vocab = read_vocabulary(&dir.join("vocabulary.txt"))?;
    if vocab.len() > hparams.n_vocab {
        return Err(b.err(format!("vocabulary has {} tokens but the embeddings only {}", vocab.len(), hparams.n_vocab)));
    }
    let tensors = b.whisper_cpp_tensors(&hparams)?;
    let filters = mel_filters(16_000, 400, hparams.n_mels);
    let bytes = write_ggml(out, &hparams, weights, &filters, &vocab, &tensors, &mut progress)?;
    Ok(Converted { hparams, tensors: tensors.len(), vocab: vocab.len(), bytes })
}

/// Maps CTranslate2 variables to whisper.cpp tensors (the table in MODELS.md).
struct Builder<'a> {
    vars: &'a BTreeMap<String, Variable>,
    path: &'a Path,
    tensors: Vec<Tensor>,
    weights: Weights,
}

impl Builder<'_> {
    fn err(&self, reason: String) -> ConvertError {
        ConvertError::Format { path: self.path.to_path_buf(), reason }
    }

    fn get(&self, name: &str) -> Result<&Variable, ConvertError> {
        self.vars.get(name).ok_or_else(|| self.err(format!("missing variable {name}")))
    }

    fn float(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), ConvertError> {
        let v = self.get(name)?;
        if v.dtype != CT2_F32 && v.dtype != CT2_F16 {
            return Err(self.err(format!("variable {name} has dtype {} (only float16/float32 models are supported)", v.dtype)));
        }
        let expected: usize = v.dims.iter().product::<usize>() * if v.dtype == CT2_F32 { 4 } else { 2 };
        if v.data.len() != expected {
            return Err(self.err(format!("variable {name} has {} bytes, its shape {:?} needs {expected}", v.data.len(), v.dims)));
        }
        Ok((v.dims.clone(), v.to_f32()))
    }

    fn dims(&self, name: &str, rank: usize) -> Result<&[usize], ConvertError> {
        let v = self.get(name)?;
        if v.dims.len() != rank {
            return Err(self.err(format!("variable {name} has shape {:?}, expected rank {rank}", v.dims)));
        }
        Ok(&v.dims)
    }

    fn hparams(&self) -> Result<Hparams, ConvertError> {
        let heads = |name: &str| self.get(name)?.scalar_int().map(|h| h as usize).ok_or_else(|| self.err(format!("{name} is not an integer")));
        let layers = |side: &str| (0..).take_while(|i| self.vars.contains_key(&format!("{side}/layer_{i}/ffn/linear_0/weight"))).count();
        let emb = self.dims("decoder/embeddings/weight", 2)?;
        let enc_pos = self.dims("encoder/position_encodings/encodings", 2)?;
        let dec_pos = self.dims("decoder/position_encodings/encodings", 2)?;
        let conv1 = self.dims("encoder/conv1/weight", 3)?;
        let hp = Hparams {
            n_vocab: emb[0],
            n_audio_ctx: enc_pos[0],
            n_audio_state: enc_pos[1],
            n_audio_head: heads("encoder/num_heads")?,
            n_audio_layer: layers("encoder"),
            n_text_ctx: dec_pos[0],
            n_text_state: emb[1],
            n_text_head: heads("decoder/num_heads")?,
            n_text_layer: layers("decoder"),
            n_mels: conv1[1],
        };
        if hp.n_audio_layer == 0 || hp.n_text_layer == 0 {
            return Err(self.err("no encoder or decoder layers found".into()));
        }
        Ok(hp)
    }

    fn push(&mut self, name: String, dims: Vec<usize>, values: Vec<f32>) {
        // whisper.cpp keeps 1-D tensors, conv biases and positional embeddings in f32,
        // the conv kernels in f16, and the matrices in the model's weight type.
        let dtype = if dims.len() < 2 || name.ends_with("positional_embedding") || name.ends_with("conv1.bias") || name.ends_with("conv2.bias") {
            DType::F32
        } else if dims.len() == 3 || self.weights == Weights::F16 || dims[dims.len() - 1] % 32 != 0 {
            DType::F16
        } else {
            DType::Q8_0
        };
        self.tensors.push(Tensor { name, dims, values, dtype });
    }

    fn plain(&mut self, from: &str, to: &str) -> Result<(), ConvertError> {
        let (dims, values) = self.float(from)?;
        self.push(to.to_string(), dims, values);
        Ok(())
    }

    /// `gamma`/`beta` become `weight`/`bias`.
    fn norm(&mut self, from: &str, to: &str) -> Result<(), ConvertError> {
        self.plain(&format!("{from}/gamma"), &format!("{to}.weight"))?;
        self.plain(&format!("{from}/beta"), &format!("{to}.bias"))
    }

    fn linear(&mut self, from: &str, to: &str) -> Result<(), ConvertError> {
        self.plain(&format!("{from}/weight"), &format!("{to}.weight"))?;
        self.plain(&format!("{from}/bias"), &format!("{to}.bias"))
    }

    /// A fused projection `[k*d, d]` split into k row blocks. Whisper has no key bias
    /// (CTranslate2 stores zeros there), so `parts` says which blocks keep theirs.
    fn split(&mut self, from: &str, parts: &[(String, bool)]) -> Result<(), ConvertError> {
        let (wdims, w) = self.float(&format!("{from}/weight"))?;
        let (_, bias) = self.float(&format!("{from}/bias"))?;
        let (rows, cols) = (wdims[0] / parts.len(), wdims[1]);
        for (i, (to, has_bias)) in parts.iter().enumerate() {
            self.push(format!("{to}.weight"), vec![rows, cols], w[i * rows * cols..(i + 1) * rows * cols].to_vec());
            if *has_bias {
                self.push(format!("{to}.bias"), vec![rows], bias[i * rows..(i + 1) * rows].to_vec());
            }
        }
        Ok(())
    }

    /// Self-attention and MLP: what encoder and decoder blocks share.
    fn block(&mut self, src: &str, dst: &str) -> Result<(), ConvertError> {
        let qkv = [(format!("{dst}.attn.query"), true), (format!("{dst}.attn.key"), false), (format!("{dst}.attn.value"), true)];
        self.split(&format!("{src}/self_attention/linear_0"), &qkv)?;
        self.linear(&format!("{src}/self_attention/linear_1"), &format!("{dst}.attn.out"))?;
        self.norm(&format!("{src}/self_attention/layer_norm"), &format!("{dst}.attn_ln"))?;
        self.linear(&format!("{src}/ffn/linear_0"), &format!("{dst}.mlp.0"))?;
        self.linear(&format!("{src}/ffn/linear_1"), &format!("{dst}.mlp.2"))?;
        self.norm(&format!("{src}/ffn/layer_norm"), &format!("{dst}.mlp_ln"))
    }

    fn whisper_cpp_tensors(mut self, hp: &Hparams) -> Result<Vec<Tensor>, ConvertError> {
        self.plain("encoder/position_encodings/encodings", "encoder.positional_embedding")?;
        for conv in ["conv1", "conv2"] {
            self.plain(&format!("encoder/{conv}/weight"), &format!("encoder.{conv}.weight"))?;
            let (dims, values) = self.float(&format!("encoder/{conv}/bias"))?;
            self.push(format!("encoder.{conv}.bias"), vec![dims[0], 1], values);
        }
        self.norm("encoder/layer_norm", "encoder.ln_post")?;
        for i in 0..hp.n_audio_layer {
            self.block(&format!("encoder/layer_{i}"), &format!("encoder.blocks.{i}"))?;
        }

        self.plain("decoder/position_encodings/encodings", "decoder.positional_embedding")?;
        // decoder/projection/weight is an alias of the embeddings: whisper.cpp ties them
        // itself and rejects unknown tensors, so it is not written.
        self.plain("decoder/embeddings/weight", "decoder.token_embedding.weight")?;
        self.norm("decoder/layer_norm", "decoder.ln")?;
        for i in 0..hp.n_text_layer {
            let (src, dst) = (format!("decoder/layer_{i}"), format!("decoder.blocks.{i}"));
            self.block(&src, &dst)?;
            self.linear(&format!("{src}/attention/linear_0"), &format!("{dst}.cross_attn.query"))?;
            let kv = [(format!("{dst}.cross_attn.key"), false), (format!("{dst}.cross_attn.value"), true)];
            self.split(&format!("{src}/attention/linear_1"), &kv)?;
            self.linear(&format!("{src}/attention/linear_2"), &format!("{dst}.cross_attn.out"))?;
            self.norm(&format!("{src}/attention/layer_norm"), &format!("{dst}.cross_attn_ln"))?;
        }
        Ok(self.tensors)
    }
}

/// The vocabulary entries before `<|endoftext|>`, mapped back to bytes with the GPT-2
/// byte decoder (whisper.cpp adds the special and timestamp tokens itself).
fn read_vocabulary(path: &Path) -> Result<Vec<Vec<u8>>, ConvertError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConvertError::Read { path: path.to_path_buf(), source })?;
    let decoder = gpt2_byte_decoder();
    let mut out = Vec::new();
    for line in text.lines() {
        if line == "<|endoftext|>" {
            return Ok(out);
        }
        let bytes = line
            .chars()
            .map(|c| decoder.get(&c).copied().ok_or(c))
            .collect::<Result<Vec<u8>, char>>()
            .map_err(|c| ConvertError::Format { path: path.to_path_buf(), reason: format!("token {line:?} has {c:?}, not a GPT-2 byte character") })?;
        out.push(bytes);
    }
    Err(ConvertError::Format { path: path.to_path_buf(), reason: "no <|endoftext|> entry".into() })
}

/// GPT-2's reversible byte↔unicode map, inverted.
fn gpt2_byte_decoder() -> std::collections::HashMap<char, u8> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    printable.iter().zip(chars).map(|(&b, c)| (char::from_u32(c).unwrap(), b as u8)).collect()
}

/// librosa's Slaney-style mel filterbank (`librosa.filters.mel(sr, n_fft, n_mels)`),
/// which is what OpenAI's `mel_filters.npz` holds. Returns n_mels × (n_fft/2+1), row-major.
pub fn mel_filters(sample_rate: u32, n_fft: usize, n_mels: usize) -> Vec<f32> {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    let min_log_mel = MIN_LOG_HZ / F_SP;
    let logstep = 6.4f64.ln() / 27.0;
    let hz_to_mel = |f: f64| if f >= MIN_LOG_HZ { min_log_mel + (f / MIN_LOG_HZ).ln() / logstep } else { f / F_SP };
    let mel_to_hz = |m: f64| if m >= min_log_mel { MIN_LOG_HZ * (logstep * (m - min_log_mel)).exp() } else { F_SP * m };

    let n_bins = n_fft / 2 + 1;
    let fmax = sample_rate as f64 / 2.0;
    let fft_freqs: Vec<f64> = (0..n_bins).map(|i| i as f64 * fmax / (n_bins - 1) as f64).collect();
    let mel_max = hz_to_mel(fmax);
    let mel_f: Vec<f64> = (0..n_mels + 2).map(|i| mel_to_hz(mel_max * i as f64 / (n_mels + 1) as f64)).collect();

    let mut weights = vec![0f32; n_mels * n_bins];
    for m in 0..n_mels {
        let enorm = 2.0 / (mel_f[m + 2] - mel_f[m]);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let lower = (f - mel_f[m]) / (mel_f[m + 1] - mel_f[m]);
            let upper = (mel_f[m + 2] - f) / (mel_f[m + 2] - mel_f[m + 1]);
            weights[m * n_bins + k] = (lower.min(upper).max(0.0) * enorm) as f32;
        }
    }
    weights
}

fn write_ggml(
    out: &Path,
    hp: &Hparams,
    weights: Weights,
    filters: &[f32],
    vocab: &[Vec<u8>],
    tensors: &[Tensor],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<u64, ConvertError> {
    let write_err = |source| ConvertError::Write { path: out.to_path_buf(), source };
    // Write beside the target and rename, so a failed conversion never leaves a
    // half-written model that looks installed.
    let tmp = out.with_extension("partial");
    let file = File::create(&tmp).map_err(write_err)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let put_i32 = |w: &mut BufWriter<File>, v: usize| w.write_all(&(v as i32).to_le_bytes());
    (|| -> std::io::Result<()> {
        w.write_all(&GGML_MAGIC.to_le_bytes())?;
        for v in [hp.n_vocab, hp.n_audio_ctx, hp.n_audio_state, hp.n_audio_head, hp.n_audio_layer, hp.n_text_ctx, hp.n_text_state, hp.n_text_head, hp.n_text_layer, hp.n_mels, ftype(weights)] {
            put_i32(&mut w, v)?;
        }
        let n_bins = filters.len() / hp.n_mels;
        put_i32(&mut w, hp.n_mels)?;
        put_i32(&mut w, n_bins)?;
        for f in filters {
            w.write_all(&f.to_le_bytes())?;
        }
        put_i32(&mut w, vocab.len())?;
        for token in vocab {
            put_i32(&mut w, token.len())?;
            w.write_all(token)?;
        }
        for (i, t) in tensors.iter().enumerate() {
            put_i32(&mut w, t.dims.len())?;
            put_i32(&mut w, t.name.len())?;
            put_i32(&mut w, t.dtype as usize)?;
            // ggml lists dimensions innermost first.
            for d in t.dims.iter().rev() {
                put_i32(&mut w, *d)?;
            }
            w.write_all(t.name.as_bytes())?;
            match t.dtype {
                DType::F32 => t.values.iter().try_for_each(|v| w.write_all(&v.to_le_bytes()))?,
                DType::F16 => t.values.iter().try_for_each(|v| w.write_all(&f16::from_f32(*v).to_le_bytes()))?,
                DType::Q8_0 => w.write_all(&quantize_q8_0(&t.values))?,
            }
            progress(i + 1, tensors.len());
        }
        w.flush()
    })()
    .map_err(write_err)?;
    drop(w);
    std::fs::rename(&tmp, out).map_err(write_err)?;
    Ok(std::fs::metadata(out).map_err(write_err)?.len())
}

/// whisper.cpp's file-level type: GGML_FTYPE_MOSTLY_F16 or _Q8_0.
fn ftype(weights: Weights) -> usize {
    match weights {
        Weights::F16 => 1,
        Weights::Q8_0 => 7,
    }
}

/// ggml's Q8_0 (`quantize_row_q8_0_ref`): blocks of 32 values stored as an f16 scale
/// (max |x| / 127) and 32 signed bytes. Rows are a whole number of blocks.
fn quantize_q8_0(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / 32 * 34);
    for block in values.chunks_exact(32) {
        let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|x| (x * id).round() as i8 as u8));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_blocks_hold_a_scale_and_32_bytes() {
        let values: Vec<f32> = (0..64).map(|i| (i as f32 - 32.0) / 10.0).collect();
        let q = quantize_q8_0(&values);
        assert_eq!(q.len(), 2 * 34);
        let d = f16::from_le_bytes([q[0], q[1]]).to_f32();
        assert!((d - 3.2 / 127.0).abs() < 1e-4, "scale {d}");
        assert_eq!(q[2] as i8, -127, "the largest magnitude maps to ±127");
        let back: Vec<f32> = q[2..34].iter().map(|b| *b as i8 as f32 * d).collect();
        assert!(back.iter().zip(&values).all(|(a, b)| (a - b).abs() <= d), "within one step");
    }

    #[test]
    fn gpt2_byte_decoder_is_a_bijection_over_bytes() {
        let d = gpt2_byte_decoder();
        assert_eq!(d.len(), 256);
        let mut seen: Vec<u8> = d.values().copied().collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 256);
        assert_eq!(d[&'Ġ'], b' ');
        assert_eq!(d[&'a'], b'a');
    }

    #[test]
    fn mel_filters_follow_the_slaney_formula() {
        let f = mel_filters(16_000, 400, 80);
        assert_eq!(f.len(), 80 * 201);
        // Worked by hand: filter 0 spans 0..74.47 Hz peaking at 37.24 Hz; bin 1 is 40 Hz,
        // on the falling edge: (74.47-40)/37.24 * 2/74.47 = 0.02486.
        assert!((f[1] - 0.024_862).abs() < 2e-5, "f[0][1] = {}", f[1]);
        assert_eq!(f[0], 0.0);
        // Every filter is non-negative and has some weight.
        for m in 0..80 {
            let row = &f[m * 201..(m + 1) * 201];
            assert!(row.iter().all(|&x| x >= 0.0));
            assert!(row.iter().any(|&x| x > 0.0), "mel filter {m} is empty");
        }
    }
}
