//! The inference engines, each usable on its own (`voxd transcribe`, `say`, `chat`)
//! and later owned by one pipeline stage on its own thread (the wake-word detector's
//! stage is still to come). They are plain, synchronous structs: threading belongs
//! to the stages, not to the engines.

pub mod asr;
pub mod gpu;
pub mod llm;
pub mod piper_halves;
pub mod tts;
pub mod wake;

use std::io::Read;
use std::path::Path;

/// What the first bytes of a model file say it is, for early, clear errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// whisper.cpp's legacy ggml container.
    WhisperGgml,
    /// GGUF (llama.cpp models).
    Gguf,
    /// ONNX protobufs have no magic; anything else that is not one of the above.
    Other,
}

impl FileKind {
    pub fn describe(self) -> &'static str {
        match self {
            FileKind::WhisperGgml => "a whisper.cpp ggml model",
            FileKind::Gguf => "a GGUF model (llama.cpp)",
            FileKind::Other => "neither ggml nor GGUF",
        }
    }
}

/// Reads the magic of a model file. `Err` only when the file cannot be read at all.
pub fn sniff(path: &Path) -> std::io::Result<(FileKind, u64)> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut magic = [0u8; 4];
    let kind = match f.read_exact(&mut magic) {
        Ok(()) if u32::from_le_bytes(magic) == crate::models::ct2::GGML_MAGIC => FileKind::WhisperGgml,
        Ok(()) if &magic == b"GGUF" => FileKind::Gguf,
        _ => FileKind::Other,
    };
    Ok((kind, len))
}

/// Milliseconds since `t`, for timing reports.
pub fn ms_since(t: std::time::Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}
