//! Each engine on its own, on real speech and real models, and all three in one
//! process on one ggml.

use crate::util::*;

const JFK: &str = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.";

#[test]
fn converted_tiny_en_transcribes_jfk() {
    let r = run_ok(&["transcribe", testdata("jfk.wav").to_str().unwrap(), "--model", "whisper-tiny.en"]);
    let w = wer(JFK, &r.stdout);
    assert!(w <= 0.05, "WER {w:.2}: {}", r.stdout);
    assert!(r.stderr.contains("RTF"), "timings on stderr: {}", r.stderr);
}

#[test]
fn converted_base_transcribes_jfk() {
    let r = run_ok(&["transcribe", testdata("jfk.wav").to_str().unwrap(), "--model", "whisper-base"]);
    let w = wer(JFK, &r.stdout);
    assert!(w <= 0.05, "WER {w:.2}: {}", r.stdout);
}

#[test]
fn converted_tiny_en_transcribes_the_librivox_clips() {
    let dir = format!("{POCKETSPHINX}/librivox");
    let refs = std::fs::read_to_string(format!("{dir}/transcription")).unwrap();
    let mut total = 0.0;
    let mut n = 0.0;
    for line in refs.lines() {
        let (text, id) = line.rsplit_once(" (").unwrap();
        let text = text.replace("<s>", "").replace("</s>", "");
        let id = id.trim_end_matches(')');
        let r = run_ok(&["transcribe", &format!("{dir}/{id}.wav"), "--model", "whisper-tiny.en"]);
        let w = wer(&text, &r.stdout);
        eprintln!("{id}: WER {w:.2}: {}", r.stdout.trim());
        // Each clip is mostly right; the reference has a disfluency ("a more a amiable").
        assert!(w <= 0.25, "{id}: WER {w:.2}\n ref: {text}\n hyp: {}", r.stdout);
        total += w;
        n += 1.0;
    }
    assert!(total / n <= 0.12, "mean WER {:.3}", total / n);
}

#[test]
fn converted_tiny_en_transcribes_the_cards_clips() {
    let dir = format!("{POCKETSPHINX}/cards");
    let refs = std::fs::read_to_string(format!("{dir}/cards.transcription")).unwrap();
    let mut errors = 0.0;
    for line in refs.lines() {
        let (text, id) = line.rsplit_once(" (").unwrap();
        let text = text.replace("<s>", "").replace("</s>", "");
        let r = run_ok(&["transcribe", &format!("{dir}/{}.wav", id.trim_end_matches(')')), "--model", "whisper-tiny.en"]);
        errors += wer(&text, &r.stdout);
        eprintln!("{id}: {}", r.stdout.trim());
    }
    assert!(errors / 5.0 <= 0.2, "mean WER {:.3}", errors / 5.0);
}

#[test]
fn any_common_wav_format_is_resampled_to_the_same_words() {
    let dir = tempdir();
    let jfk = testdata("jfk.wav");
    for (name, args) in [
        ("8k-mono-s16.wav", vec!["-r", "8000", "-c", "1", "-b", "16"]),
        ("44k1-stereo-f32.wav", vec!["-r", "44100", "-c", "2", "-e", "floating-point", "-b", "32"]),
        ("48k-stereo-s16.wav", vec!["-r", "48000", "-c", "2", "-b", "16"]),
    ] {
        let out = dir.path().join(name);
        let status = std::process::Command::new("sox").arg(&jfk).args(&args).arg(&out).status().expect("sox runs");
        assert!(status.success());
        let r = run_ok(&["transcribe", out.to_str().unwrap(), "--model", "whisper-tiny.en"]);
        let w = wer(JFK, &r.stdout);
        assert!(w <= 0.1, "{name}: WER {w:.2}: {}", r.stdout);
    }
}

#[test]
fn say_writes_speech_that_transcribes_back_to_its_text() {
    let dir = tempdir();
    let out = dir.path().join("said.wav");
    let text = "Turn on the kitchen lights, please.";
    // The same audio every run (Piper's sampling noise off): with its default
    // variation tiny.en now and then hears "Turn" as "Card".
    let config = deterministic_config(&dir, "");
    let r = run_ok(&["--config", config.to_str().unwrap(), "say", text, "-o", out.to_str().unwrap()]);
    assert!(r.stderr.contains("RTF"), "timings on stderr: {}", r.stderr);
    let spec = hound::WavReader::open(&out).unwrap().spec();
    assert_eq!(spec.sample_rate, 22_050, "the voice's own rate");
    // Piper's audio starts at its first sample, and Whisper tends to mishear a word that
    // starts right at the beginning of a clip ("Turn" → "Earn"), whoever spoke it: give
    // the listener the moment of silence a room would.
    let padded = dir.path().join("padded.wav");
    let clip = voxd::audio::read_wav(&out, 16_000).unwrap();
    voxd::audio::write_wav(&padded, &[vec![0.0; 4_800], clip.samples].concat(), 16_000).unwrap();
    let back = run_ok(&["transcribe", padded.to_str().unwrap(), "--model", "whisper-tiny.en"]);
    let c = cer(text, &back.stdout);
    assert!(c <= 0.1, "CER {c:.2}: said {text:?}, heard {:?}", back.stdout);
}

#[test]
fn the_voice_varies_by_default_and_repeats_itself_at_zero_variability() {
    let dir = tempdir();
    let said = |config: Option<&std::path::Path>, name: &str| -> Vec<i16> {
        let out = dir.path().join(name);
        let mut args = Vec::new();
        if let Some(c) = config {
            args.extend(["--config", c.to_str().unwrap()]);
        }
        args.extend(["say", "Good morning.", "-o", out.to_str().unwrap()]);
        run_ok(&args);
        hound::WavReader::open(&out).unwrap().into_samples::<i16>().map(Result::unwrap).collect()
    };
    let config = deterministic_config(&dir, "");
    assert_eq!(said(Some(&config), "a.wav"), said(Some(&config), "b.wav"), "variability 0: the same audio");
    assert_ne!(said(None, "c.wav"), said(None, "d.wav"), "default: the voice's own variation");
}

#[test]
fn chat_streams_a_reply_and_reports_token_rates() {
    let r = run_ok(&["chat", "What is the capital of France?", "--model", "smollm2-135m-instruct"]);
    assert!(r.stdout.to_lowercase().contains("paris"), "reply: {}", r.stdout);
    for needle in ["prompt", "tok/s", "generated", "first token"] {
        assert!(r.stderr.contains(needle), "stderr lacks {needle}: {}", r.stderr);
    }
}

#[test]
fn llm_hands_out_text_while_it_is_still_generating() {
    use voxd::engine::llm::{Llm, LlmOptions, Message, Role};
    quiet_engine_logs();
    let options = LlmOptions { threads: 2, context_tokens: 1024, max_reply_tokens: 40, temperature: 0.0, seed: 1, reuse_prefix: true, gpu_layers: -1 };
    let llm = Llm::load(&model("SmolLM2-135M-Instruct.Q4_1.gguf"), "smollm2", options).unwrap();
    let messages = [Message { role: Role::User, content: "Count from one to ten in words.".into() }];
    let mut pieces = Vec::new();
    let g = llm.generate(&messages, |p| {
        pieces.push(p.to_string());
        true
    })
    .unwrap();
    assert!(pieces.len() >= 5, "text arrives piece by piece, got {pieces:?}");
    assert_eq!(pieces.concat(), g.text);
    // Returning false cancels: generation stops at once.
    let mut n = 0;
    let g = llm.generate(&messages, |_| {
        n += 1;
        n < 3
    })
    .unwrap();
    assert_eq!(n, 3);
    assert!(g.generated_tokens <= 4, "stopped early, generated {}", g.generated_tokens);
}

/// A rolling history drops its oldest exchanges: the cache drops them too and keeps
/// the rest, moved up, instead of evaluating the whole history again; what follows is
/// answered from a consistent cache (llama.cpp refuses a batch whose positions do not
/// follow the cache's).
#[test]
fn dropping_the_oldest_exchanges_keeps_the_rest_of_the_cache() {
    // Two families: llama (SmolLM2) and qwen2.
    for file in ["SmolLM2-135M-Instruct.Q4_1.gguf", "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"] {
        the_cache_keeps_what_the_history_keeps(file);
    }
}

fn the_cache_keeps_what_the_history_keeps(file: &str) {
    use voxd::engine::llm::{Llm, LlmOptions, Message, Role};
    quiet_engine_logs();
    let options = LlmOptions { threads: 2, context_tokens: 1024, max_reply_tokens: 24, temperature: 0.0, seed: 1, reuse_prefix: true, gpu_layers: -1 };
    let llm = Llm::load(&model(file), file, options).unwrap();
    let say = |role, content: &str| Message { role, content: content.into() };
    let exchange = |q: &str, a: &str| [say(Role::User, q), say(Role::Assistant, a)];
    let history: Vec<[Message; 2]> = vec![
        exchange("What is two plus two?", "Two plus two is four."),
        exchange("Name a color.", "Blue is a color."),
        exchange("Name a fruit.", "An apple is a fruit."),
        exchange("Name an animal.", "A cat is an animal."),
        exchange("Name a month.", "March is a month."),
    ];
    let prompt = |from: usize, question: &str| {
        let mut p = vec![say(Role::System, "You are a helpful assistant. Answer in one short sentence.")];
        p.extend(history[from..].iter().flatten().cloned());
        p.push(say(Role::User, question));
        p
    };
    let mut session = llm.session().unwrap();
    session.generate(&prompt(0, "Name a planet."), None, |_| true).unwrap();
    // The two oldest exchanges leave the history.
    let question = prompt(2, "What is the capital of France?");
    let kept_and_new = llm.count_message_tokens(&question[1..]);
    let g = session.generate(&question, None, |_| true).unwrap();
    assert!(g.evaluated_tokens() <= 24, "{file}: only the question is evaluated: {} of {} tokens ({kept_and_new} after the system prompt)", g.evaluated_tokens(), g.prompt_tokens);
    assert!(g.text.to_lowercase().contains("paris"), "{file}: {:?}", g.text);
    // And the cache goes on from there.
    let mut next = question.clone();
    next.push(say(Role::Assistant, &g.text));
    next.push(say(Role::User, "What is the capital of Italy?"));
    let g = session.generate(&next, None, |_| true).unwrap();
    assert!(g.text.to_lowercase().contains("rome"), "{file}: {:?}", g.text);
    assert!(g.evaluated_tokens() <= 24, "{file}: {} evaluated", g.evaluated_tokens());
}

/// While the user speaks, their words so far are read into the KV cache: the answer's
/// prompt then evaluates only what came after them, and a read-ahead the words did
/// not bear out (the last word was still changing) is rolled back to the last common
/// token — the answer is the same as without it.
#[test]
fn words_read_ahead_are_not_evaluated_again_and_change_nothing() {
    use voxd::engine::llm::{Llm, LlmOptions, Message, Role};
    quiet_engine_logs();
    for file in ["SmolLM2-135M-Instruct.Q4_1.gguf", "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"] {
        let options = LlmOptions { threads: 2, context_tokens: 1024, max_reply_tokens: 16, temperature: 0.0, seed: 1, reuse_prefix: true, gpu_layers: -1 };
        let llm = Llm::load(&model(file), file, options).unwrap();
        let say = |role, content: &str| Message { role, content: content.into() };
        let system = say(Role::System, "You are a helpful assistant. Answer in one short sentence.");
        let asked = |words: &str| vec![system.clone(), say(Role::User, words)];
        let answer = |read_ahead: Option<&str>| {
            let mut session = llm.session().unwrap();
            session.prefill(&asked("")).unwrap();
            if let Some(words) = read_ahead {
                session.read_ahead(&asked(words)).unwrap();
            }
            session.generate(&asked("What is the capital of France?"), None, |_| true).unwrap()
        };
        let plain = answer(None);
        let ahead = answer(Some("What is the capital of"));
        let wrong = answer(Some("What is the cap"));
        assert!(plain.text.to_lowercase().contains("paris"), "{file}: {:?}", plain.text);
        assert!(ahead.evaluated_tokens() + 4 <= plain.evaluated_tokens(), "{file}: the words read ahead were not evaluated again: {} of {} (without: {})", ahead.evaluated_tokens(), ahead.prompt_tokens, plain.evaluated_tokens());
        for g in [&ahead, &wrong] {
            assert_eq!(g.prompt_tokens, plain.prompt_tokens);
            assert!(g.text.to_lowercase().contains("paris"), "{file}: the same answer: {:?} (without: {:?})", g.text, plain.text);
        }
        assert!(wrong.evaluated_tokens() > ahead.evaluated_tokens(), "{file}: \"cap\" was not kept as the start of \"capital\"");
    }
}

/// Beside Whisper (a session that gives way), words are read ahead a few tokens a
/// decode, so a Whisper pass that comes meanwhile waits for one short decode, not
/// for the whole read-ahead; the answer is the same.
#[test]
fn words_read_ahead_beside_whisper_go_in_short_decodes() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use voxd::engine::llm::{GiveWay, Llm, LlmOptions, Message, Role};
    #[derive(Default)]
    struct Decodes(AtomicUsize);
    impl GiveWay for Decodes {
        fn before_decode(&self) -> std::time::Duration {
            self.0.fetch_add(1, Ordering::SeqCst);
            std::time::Duration::ZERO
        }
        fn after_decode(&self) {}
    }
    quiet_engine_logs();
    let file = "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf";
    let options = LlmOptions { threads: 2, context_tokens: 1024, max_reply_tokens: 16, temperature: 0.0, seed: 1, reuse_prefix: true, gpu_layers: -1 };
    let llm = Llm::load(&model(file), file, options).unwrap();
    let say = |role, content: &str| Message { role, content: content.into() };
    let system = say(Role::System, "You are a helpful assistant. Answer in one short sentence.");
    let question = "I have been wondering about this for quite a while now, ever since my long trip through Europe with my family last summer, and I would like to know: what is the capital of France?";
    let asked = |words: &str| vec![system.clone(), say(Role::User, words)];
    let mut session = llm.session().unwrap();
    let decodes = Arc::new(Decodes::default());
    session.give_way_to(decodes.clone());
    let before = session.prefill(&asked("")).unwrap();
    let prefill_decodes = decodes.0.swap(0, Ordering::SeqCst);
    assert_eq!(prefill_decodes, 1, "the preamble goes in one decode (nobody speaks yet)");
    let words = question.rsplit_once(' ').unwrap().0;
    let after = session.read_ahead(&asked(words)).unwrap();
    let read = after.saturating_sub(before);
    let n = decodes.0.swap(0, Ordering::SeqCst);
    assert!(read >= 24, "the words are long enough to need several decodes: {read} tokens");
    assert!(n >= read.div_ceil(8), "{read} tokens read ahead in {n} decodes: more than 8 a decode");
    let g = session.generate(&asked(question), None, |_| true).unwrap();
    assert!(g.text.to_lowercase().contains("paris"), "{:?}", g.text);
    assert!(g.evaluated_tokens() <= 12, "the words read ahead were kept: {} of {} evaluated", g.evaluated_tokens(), g.prompt_tokens);
}

#[test]
fn the_binary_holds_exactly_one_ggml() {
    let out = std::process::Command::new("nm").arg(env!("CARGO_BIN_EXE_voxd")).output().expect("nm (binutils) runs");
    let symbols = String::from_utf8_lossy(&out.stdout);
    let defined = |name: &str| symbols.lines().filter(|l| l.split_whitespace().collect::<Vec<_>>()[1..] == ["T", name]).count();
    assert_eq!(defined("ggml_init"), 1, "one ggml_init defined");
    assert_eq!(defined("ggml_graph_compute"), 1, "one ggml CPU backend");
    // Both engines are in the binary and resolve to that one copy.
    assert_eq!(defined("whisper_full_with_state"), 1);
    assert_eq!(defined("llama_decode"), 1);
}

#[test]
fn one_process_hears_answers_and_speaks_on_the_shared_ggml() {
    let dir = tempdir();
    let out = dir.path().join("answer.wav");
    let question = repo_data("capital-of-france.wav");
    let r = run_ok(&["answer", question.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    let heard = r.stderr.lines().find_map(|l| l.strip_prefix("heard: ")).expect("voxd says what it heard");
    assert!(wer("What is the capital of France?", heard) <= 0.2, "heard {heard:?}");
    let reply = r.stdout.trim();
    assert!(reply.to_lowercase().contains("paris"), "reply {reply:?}");
    // The spoken reply says what was printed.
    let back = run_ok(&["transcribe", out.to_str().unwrap(), "--model", "whisper-tiny.en"]);
    let c = cer(reply, &back.stdout);
    assert!(c <= 0.1, "CER {c:.2}: replied {reply:?}, spoke {:?}", back.stdout);
}

/// openWakeWord's installed feature models and the "Hey Jarvis" classifier, or
/// `word` (a path) in its place.
fn wake_models(word: Option<std::path::PathBuf>) -> voxd::engine::wake::WakeModels {
    let catalog = voxd::catalog::Catalog::load(None).unwrap();
    let path = |id: &str| catalog.resolve(voxd::catalog::Role::Wake, id, &models_dir()).unwrap_or_else(|e| panic!("{e}: run ./scripts/setup first")).path;
    voxd::engine::wake::WakeModels {
        melspectrogram: path("openwakeword-melspectrogram"),
        embedding: path("openwakeword-embedding"),
        words: vec![("hey_jarvis".into(), word.unwrap_or_else(|| path("hey_jarvis_v0.1")))],
    }
}

#[test]
fn hey_jarvis_wakes_the_detector_while_it_is_said_and_other_speech_does_not() {
    quiet_engine_logs();
    let dir = tempdir();
    let parts = [(1.5, "Hey Jarvis, turn off the kitchen light."), (1.5, "Turn off the kitchen light."), (1.0, "What is the capital of France? Tell me about Paris.")];
    let (wav, ends) = conversation(&dir, "wake", &parts, 1.0);
    let clip = voxd::audio::read_wav(&wav, voxd::audio::ASR_RATE_HZ).unwrap();
    let mut detector = voxd::engine::wake::Detector::load(&wake_models(None)).unwrap();
    // In 20 ms pieces, as capture delivers them: steps come every 80 ms all the same.
    let steps: Vec<_> = clip.samples.chunks(320).flat_map(|piece| detector.push(piece).unwrap()).collect();
    assert_eq!(steps.len(), clip.samples.len() / voxd::engine::wake::CHUNK, "one step per 80 ms");
    let at = |s: &voxd::engine::wake::Step| s.end_sample as f64 / voxd::audio::ASR_RATE_HZ as f64;
    let scores = |from: f64, to: f64| steps.iter().filter(|s| at(s) > from && at(s) <= to).map(|s| (at(s), s.scores[0])).collect::<Vec<_>>();
    let peak = |from: f64, to: f64| scores(from, to).iter().map(|s| s.1).fold(0.0, f32::max);
    let woken = scores(0.0, ends[0]).into_iter().find(|s| s.1 > 0.5);
    eprintln!("wake: first over 0.5 at {woken:?} (the command ends at {:.2} s); peak after it {:.3}", ends[0], peak(ends[0] + 0.3, f64::MAX));
    // Before the command that follows the wake phrase is over: the wake word itself
    // was heard, not the whole utterance.
    assert!(woken.is_some(), "no score over 0.5 while \"Hey Jarvis, turn off the kitchen light.\" was said (peak {:.3})", peak(0.0, ends[0]));
    let rest = peak(ends[0] + 0.3, f64::MAX);
    assert!(rest < 0.5, "the same command without the wake word, and a question, scored {rest:.3}");
}

#[test]
fn a_bad_wake_model_is_refused_at_load_naming_the_file() {
    quiet_engine_logs();
    let dir = tempdir();
    let not_onnx = dir.path().join("jarvis.onnx");
    std::fs::write(&not_onnx, "not a model").unwrap();
    let err = voxd::engine::wake::Detector::load(&wake_models(Some(not_onnx.clone()))).err().expect("text is no model").to_string();
    assert!(err.contains(not_onnx.to_str().unwrap()) && err.contains("could not load"), "{err}");
    let missing = dir.path().join("missing.onnx");
    let err = voxd::engine::wake::Detector::load(&wake_models(Some(missing.clone()))).err().expect("no file").to_string();
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
    // A real ONNX model of another shape: the embedding model as a wake word.
    let embedding = wake_models(None).embedding;
    let err = voxd::engine::wake::Detector::load(&wake_models(Some(embedding.clone()))).err().expect("wrong shape").to_string();
    assert!(err.contains(embedding.to_str().unwrap()) && err.contains("[1, frames, 96]"), "{err}");
}

/// Piper cut in two at its vocoder: the audio comes in slices, the first ~190 ms of it
/// before the rest is made, and the slices join into the very samples the voice's
/// graph makes whole (as piper-rs ran it before the cut).
#[test]
fn piper_s_audio_comes_in_slices_that_join_into_what_the_whole_graph_makes() {
    use voxd::engine::tts::{Tts, TtsOptions};
    quiet_engine_logs();
    let onnx = model("en_US-joe-medium.onnx");
    // No sampling noise, so that two syntheses can be compared sample by sample.
    let options = TtsOptions { rate: 1.0, variability: 0.0, threads: 2, espeak_data_dir: String::new() };
    let mut tts = Tts::load(&onnx, "en_US-joe-medium", &options).unwrap();
    assert!(tts.streams(), "Piper's own export is cut at /dec/conv_pre");
    let text = "The kitchen light is off now, and the front door is locked for the night.";
    let mut slices: Vec<Vec<f32>> = Vec::new();
    let mut lasts = Vec::new();
    let streamed = tts.synthesize_streamed(text, &mut |s, last| {
        slices.push(s.to_vec());
        lasts.push(last);
    })
    .unwrap();
    assert!(lasts.iter().rev().skip(1).all(|last| !last) && lasts.last() == Some(&true), "only the last is the last: {lasts:?}");
    let lengths: Vec<usize> = slices.iter().map(Vec::len).collect();
    assert!(slices.len() >= 3 && lengths[0] == 16 * 256, "~190 ms first, then longer slices: {lengths:?}");
    assert_eq!(streamed.samples, lengths.iter().sum::<usize>());
    assert!(streamed.first_audio_ms < streamed.elapsed_ms, "{streamed:?}");
    let joined = slices.concat();

    let config: piper_rs::ModelConfig = serde_json::from_str(&std::fs::read_to_string(format!("{}.json", onnx.display())).unwrap()).unwrap();
    let session = ort::session::Session::builder().unwrap().commit_from_file(&onnx).unwrap();
    let (whole, _) = piper_rs::Piper::from_session(session, config).create(text, false, None, None, Some(0.0), Some(0.0)).unwrap();
    assert_eq!(joined.len(), whole.len(), "as many samples as the whole graph makes");
    let worst = joined.iter().zip(&whole).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let loudest = whole.iter().fold(0.0f32, |m, s| m.max(s.abs()));
    assert!(loudest > 0.1 && worst < 1e-4, "largest difference {worst} (loudest sample {loudest})");
    let at_once = tts.synthesize(text).unwrap().samples;
    let worst = at_once.iter().zip(&whole).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(at_once.len() == whole.len() && worst < 1e-4, "synthesize: the same audio at once ({} samples, largest difference {worst})", at_once.len());
}

/// With `[wyoming] serve_in_run` the pipeline's voice is Wyoming's desk: its slices
/// still reach the stage one by one while the desk's thread makes the rest (handed
/// over all at the end, the first would come with the last), and join into what the
/// voice makes on its own.
#[test]
fn the_voice_at_wyomings_desk_hands_its_slices_over_as_it_makes_them() {
    use voxd::engine::tts::{Tts, TtsOptions};
    use voxd::pipeline::tts::{SharedVoice, Voice};
    quiet_engine_logs();
    let onnx = model("en_US-joe-medium.onnx");
    let options = TtsOptions { rate: 1.0, variability: 0.0, threads: 2, espeak_data_dir: String::new() };
    let text = "The kitchen light is off now, the front door is locked, and the heating is set to eighteen degrees for the night.";
    let mut voice = SharedVoice(voxd::wyoming::desk::Desk::open("tts", Tts::load(&onnx, "en_US-joe-medium", &options).unwrap(), 1).unwrap());
    let mut slices: Vec<(Vec<f32>, bool)> = Vec::new();
    let mut first_came = None;
    let asked = std::time::Instant::now();
    voice.speak_streamed(text, &mut |samples, rate_hz, last| {
        assert_eq!(rate_hz, 22_050);
        first_came.get_or_insert_with(|| asked.elapsed());
        slices.push((samples, last));
    })
    .unwrap();
    let (first, all) = (first_came.unwrap(), asked.elapsed());
    let lasts: Vec<bool> = slices.iter().map(|(_, last)| *last).collect();
    assert!(slices.len() >= 3 && lasts.iter().rev().skip(1).all(|last| !last) && lasts.last() == Some(&true), "{lasts:?}");
    // The later, longer slices are most of the vocoder's work.
    assert!(first.as_secs_f64() < 0.8 * all.as_secs_f64(), "the first slice came after {first:?} of {all:?}: not before the rest was made");
    let joined: Vec<f32> = slices.into_iter().flat_map(|(s, _)| s).collect();
    let alone = Tts::load(&onnx, "en_US-joe-medium", &options).unwrap().synthesize(text).unwrap().samples;
    let worst = joined.iter().zip(&alone).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(joined.len() == alone.len() && worst < 1e-4, "{} samples against {}, largest difference {worst}", joined.len(), alone.len());
}

/// A voice whose graph cannot be cut (here Piper's own with its vocoder's first node
/// renamed, byte for byte) still loads and speaks, whole, as before the cut.
#[test]
fn a_voice_that_cannot_be_cut_is_spoken_whole() {
    use voxd::engine::tts::{Tts, TtsOptions};
    quiet_engine_logs();
    let dir = tempdir();
    let onnx = model("en_US-joe-medium.onnx");
    let bytes = std::fs::read(&onnx).unwrap();
    let (from, to) = (b"/dec/conv_pre/", b"/dec/conv_prf/");
    let mut renamed = bytes.clone();
    let mut at = 0;
    while let Some(i) = renamed[at..].windows(from.len()).position(|w| w == from) {
        renamed[at + i..at + i + to.len()].copy_from_slice(to);
        at += i + to.len();
    }
    assert_ne!(renamed, bytes, "the node is there to rename");
    let copy = dir.path().join("renamed.onnx");
    std::fs::write(&copy, &renamed).unwrap();
    std::fs::copy(format!("{}.json", onnx.display()), dir.path().join("renamed.onnx.json")).unwrap();
    let options = TtsOptions { rate: 1.0, variability: 0.0, threads: 2, espeak_data_dir: String::new() };
    let mut tts = Tts::load(&copy, "renamed", &options).unwrap();
    assert!(!tts.streams());
    let mut slices = 0;
    let streamed = tts.synthesize_streamed("The kitchen light is off now.", &mut |_, last| {
        slices += 1;
        assert!(last);
    })
    .unwrap();
    assert!(slices == 1 && streamed.samples > 22_050 / 2, "one slice, the whole piece: {streamed:?}");
}
