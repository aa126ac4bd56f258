//! Bad input gets one clear error naming the file or field and what was expected,
//! and a non-zero exit.

use std::io::Write;

use crate::util::*;

/// The first `n` bytes of `src`, as a new file in `dir`.
fn truncated(dir: &tempfile::TempDir, src: &std::path::Path, name: &str, n: usize) -> String {
    let bytes = std::fs::read(src).unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, &bytes[..n.min(bytes.len())]).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn a_missing_model_file_is_named() {
    run_fails_with(&["transcribe", repo_data("capital-of-france.wav").to_str().unwrap(), "--model", "/nonexistent/ggml-tiny.bin"], &["/nonexistent/ggml-tiny.bin does not exist"]);
    run_fails_with(&["chat", "hi", "--model", "llama-3.2-3b-instruct"], &["llama-3.2-3b-instruct (llm) is not installed", "voxd models"]);
    run_fails_with(&["chat", "hi", "--model", "gpt-5"], &["no model \"gpt-5\"", "smollm2-135m-instruct"]);
}

#[test]
fn a_truncated_model_is_rejected_not_crashed_on() {
    let dir = tempdir();
    let gguf = truncated(&dir, &model("SmolLM2-135M-Instruct.Q4_1.gguf"), "half.gguf", 40 << 20);
    run_fails_with(&["chat", "hi", "--model", &gguf], &["half.gguf", "could not load", "truncated"]);
    let ggml = truncated(&dir, &model("ggml-tiny.en.bin"), "half.bin", 20 << 20);
    let wav = repo_data("capital-of-france.wav");
    run_fails_with(&["transcribe", wav.to_str().unwrap(), "--model", &ggml], &["half.bin", "could not load", "truncated"]);
    let onnx = dir.path().join("half.onnx");
    std::fs::write(&onnx, &std::fs::read(model("en_US-joe-medium.onnx")).unwrap()[..1 << 20]).unwrap();
    std::fs::copy(model("en_US-joe-medium.onnx.json"), dir.path().join("half.onnx.json")).unwrap();
    run_fails_with(&["say", "hello", "-o", "/dev/null", "--voice", onnx.to_str().unwrap()], &["could not load voice", "half.onnx"]);
}

#[test]
fn a_model_of_the_wrong_kind_is_named_with_what_was_expected() {
    let gguf = model("SmolLM2-135M-Instruct.Q4_1.gguf");
    let wav = repo_data("capital-of-france.wav");
    run_fails_with(&["transcribe", wav.to_str().unwrap(), "--model", gguf.to_str().unwrap()], &["is a GGUF model", "expected a whisper.cpp ggml model"]);
    let ggml = model("ggml-tiny.en.bin");
    run_fails_with(&["chat", "hi", "--model", ggml.to_str().unwrap()], &["is a whisper.cpp ggml model", "expected a GGUF file"]);
    // A voice without its .onnx.json.
    let dir = tempdir();
    let onnx = dir.path().join("lonely.onnx");
    std::fs::copy(model("en_US-joe-medium.onnx"), &onnx).unwrap();
    run_fails_with(&["say", "hello", "-o", "/dev/null", "--voice", onnx.to_str().unwrap()], &["lonely.onnx.json"]);
}

#[test]
fn non_wav_empty_and_truncated_audio_are_named() {
    let dir = tempdir();
    let text = dir.path().join("notes.wav");
    std::fs::write(&text, "not audio at all").unwrap();
    run_fails_with(&["transcribe", text.to_str().unwrap()], &["notes.wav is not a WAV file", "expected RIFF/WAVE"]);
    let empty = dir.path().join("empty.wav");
    voxd::audio::write_wav(&empty, &[], 16_000).unwrap();
    run_fails_with(&["transcribe", empty.to_str().unwrap()], &["empty.wav holds no audio samples"]);
    let cut = truncated(&dir, &repo_data("capital-of-france.wav"), "cut.wav", 30);
    run_fails_with(&["transcribe", &cut], &["cut.wav"]);
    run_fails_with(&["transcribe", "/nonexistent.wav"], &["cannot read /nonexistent.wav"]);
}

#[test]
fn config_problems_are_all_reported_at_once() {
    let dir = tempdir();
    let path = dir.path().join("voxd.toml");
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(f, "[asr]\nthreads = 100\nlanguge = \"en\"\n[llm]\ntemperature = \"hot\"\n[tts]\nrate = 9.0").unwrap();
    let r = run_fails_with(
        &["check-config", path.to_str().unwrap()],
        &["has 4 problems", "voxd.toml:2:11: asr.threads: 100 is out of range: expected 1 to 64", "voxd.toml:3:1: asr.languge: unknown key", "llm.temperature", "voxd.toml:7:8: tts.rate"],
    );
    assert_eq!(r.stderr.lines().filter(|l| l.contains("voxd.toml:")).count(), 4, "{}", r.stderr);
    // The same file stops any other command before it loads a model.
    run_fails_with(&["--config", path.to_str().unwrap(), "chat", "hi"], &["has 4 problems"]);
}
