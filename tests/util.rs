//! Shared helpers: run the built `voxd`, find the installed models and test audio,
//! compare transcripts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn voxd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_voxd"));
    // A user's own config must not change what the tests see.
    c.env_remove("VOXD_CONFIG").env("XDG_CONFIG_HOME", "/nonexistent-voxd-test-config");
    c
}

pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(args: &[&str]) -> Run {
    run_cmd(voxd().args(args))
}

pub fn run_cmd(cmd: &mut Command) -> Run {
    let Output { status, stdout, stderr } = cmd.output().expect("voxd runs");
    Run { ok: status.success(), stdout: String::from_utf8_lossy(&stdout).into(), stderr: String::from_utf8_lossy(&stderr).into() }
}

/// Runs and requires success, showing stderr otherwise.
pub fn run_ok(args: &[&str]) -> Run {
    let r = run(args);
    assert!(r.ok, "voxd {args:?} failed:\n{}", r.stderr);
    r
}

/// Runs and requires a failure whose stderr contains every `needle`.
pub fn run_fails_with(args: &[&str], needles: &[&str]) -> Run {
    let r = run(args);
    assert!(!r.ok, "voxd {args:?} should have failed; stdout: {}", r.stdout);
    for n in needles {
        assert!(r.stderr.contains(n), "voxd {args:?}: stderr lacks {n:?}:\n{}", r.stderr);
    }
    r
}

/// For tests that load an engine in-process: route llama.cpp's and whisper.cpp's
/// chatter through tracing (quiet) as the binary does.
pub fn quiet_engine_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| voxd::logging::init(0, true));
}

pub fn models_dir() -> PathBuf {
    voxd::paths::default_models_dir()
}

/// An installed model file, or a panic that says how to install it.
pub fn model(file: &str) -> PathBuf {
    let p = models_dir().join(file);
    assert!(p.exists(), "{} is missing: run ./scripts/setup first", p.display());
    p
}

pub fn testdata(name: &str) -> PathBuf {
    let p = voxd::paths::cache_dir().join("testdata").join(name);
    assert!(p.exists(), "{} is missing: run ./scripts/setup first", p.display());
    p
}

pub fn repo_data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

pub const POCKETSPHINX: &str = "/usr/share/pocketsphinx/test/data";

/// Transcripts are compared as voxd's benchmarks compare them.
pub use voxd::bench::{cer, wer};

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// A config file in `dir` holding `extra` and a deterministic voice (Piper's
/// sampling noise off): the same text is the same audio in every run, so tests that
/// synthesise questions and transcribe answers are repeatable.
pub fn deterministic_config(dir: &tempfile::TempDir, extra: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let path = dir.path().join(format!("voxd-{}.toml", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    std::fs::write(&path, format!("{extra}\n[tts]\nvariability = 0.0\n")).unwrap();
    path
}

/// A conversation as a 16 kHz WAV: for each (silence before, words), that much
/// silence then the words spoken by the Piper voice (deterministically). Returns the
/// path and where each utterance ends (seconds).
pub fn conversation(dir: &tempfile::TempDir, name: &str, parts: &[(f64, &str)], trailing_silence_s: f64) -> (PathBuf, Vec<f64>) {
    let config = deterministic_config(dir, "");
    let rate = 16_000usize;
    let mut samples: Vec<f32> = Vec::new();
    let mut ends = Vec::new();
    for (i, (silence, text)) in parts.iter().enumerate() {
        samples.extend(std::iter::repeat(0.0).take((silence * rate as f64) as usize));
        let said = dir.path().join(format!("{name}-{i}.wav"));
        run_ok(&["--config", config.to_str().unwrap(), "say", text, "-o", said.to_str().unwrap()]);
        let clip = voxd::audio::read_wav(&said, rate as u32).unwrap();
        samples.extend(clip.samples);
        ends.push(samples.len() as f64 / rate as f64);
    }
    samples.extend(std::iter::repeat(0.0).take((trailing_silence_s * rate as f64) as usize));
    let path = dir.path().join(format!("{name}.wav"));
    voxd::audio::write_wav(&path, &samples, rate as u32).unwrap();
    (path, ends)
}

/// The latency log's records.
pub fn turns(log: &Path) -> Vec<voxd::pipeline::telemetry::TurnRecord> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad log line {l}: {e}"))).collect()
}

/// The part of a recording between two times (seconds), as a WAV file to transcribe.
pub fn excerpt(wav: &Path, from_s: f64, to_s: f64, out: &Path) {
    let reader = hound::WavReader::open(wav).unwrap();
    let rate = reader.spec().sample_rate as f64;
    let samples: Vec<i16> = reader.into_samples::<i16>().map(Result::unwrap).collect();
    let (a, b) = ((from_s * rate) as usize, ((to_s * rate) as usize).min(samples.len()));
    let f: Vec<f32> = samples[a.min(b)..b].iter().map(|s| *s as f32 / 32768.0).collect();
    voxd::audio::write_wav(out, &f, rate as u32).unwrap();
}
