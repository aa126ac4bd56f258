//! The whole pipeline on real models, through `voxd run` and the library.

use crate::util::*;

#[test]
fn a_two_question_recording_gets_two_spoken_answers() {
    let dir = tempdir();
    let questions = ["What is the capital of France?", "What color is the sky on a clear day?"];
    let (input, ends) = conversation(&dir, "two", &[(1.0, questions[0]), (4.0, questions[1])], 2.0);
    let (output, log) = (dir.path().join("out.wav"), dir.path().join("turns.jsonl"));
    // History on, whatever the test model's entry says: this checks the mechanism.
    let config = deterministic_config(&dir, "[agent]\nmulti_turn = \"on\"");
    let r = run_ok(&["--config", config.to_str().unwrap(), "run", "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap(), "--latency-log", log.to_str().unwrap()]);
    let turns = turns(&log);
    assert_eq!(turns.len(), 2, "{}", r.stderr);
    for (t, (q, end)) in turns.iter().zip(questions.iter().zip(&ends)) {
        assert!(wer(q, &t.transcript) <= 0.25, "heard {:?} for {q:?}", t.transcript);
        assert!((t.speech_end_s - end).abs() < 0.3, "speech end {} vs {end}", t.speech_end_s);
        assert!(!t.cancelled && !t.reply.is_empty(), "{t:?}");
        assert_eq!(t.spoken, t.reply, "everything said was played");
        let heard = heard_reply(&dir, &output, t);
        // tiny.en is small: a word may come back misspelled ("Francis" for "France
        // is"); a wrong or garbled reply would not come back.
        let c = cer(&t.reply, &heard);
        assert!(c <= 0.2, "turn {}: CER {c:.2}: logged {:?}, heard {:?}", t.turn, t.reply, heard);
    }
    assert!(turns[0].reply.to_lowercase().contains("paris"), "{:?}", turns[0].reply);
    // The second turn's prompt reused the first turn's KV cache (system prompt at least).
    assert!(turns[1].llm.cached_tokens > 0 && turns[1].llm.history_turns == 1, "{:?}", turns[1].llm);
}

#[test]
fn a_model_that_loses_the_thread_answers_each_question_on_its_own() {
    let dir = tempdir();
    let (input, _) = conversation(&dir, "alone", &[(0.5, "What is the capital of France?"), (2.0, "What color is the sky?")], 1.0);
    let (output, log) = (dir.path().join("out.wav"), dir.path().join("turns.jsonl"));
    // Default config: multi_turn = "auto", and models.toml marks the test LLM
    // multi_turn = false.
    let r = run_ok(&["run", "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap(), "--latency-log", log.to_str().unwrap()]);
    assert!(r.stderr.contains("loses the thread with conversation history"), "{}", r.stderr);
    let turns = turns(&log);
    assert_eq!(turns.len(), 2, "{}", r.stderr);
    assert_eq!(turns[1].llm.history_turns, 0, "{:?}", turns[1].llm);
    assert!(turns[1].llm.cached_tokens > 0, "the system prompt is still reused: {:?}", turns[1].llm);
}

#[test]
fn the_first_sentence_goes_to_the_voice_while_the_model_is_still_generating() {
    let dir = tempdir();
    let (input, _) = conversation(&dir, "story", &[(0.5, "Tell me three facts about the moon.")], 1.0);
    let (output, log) = (dir.path().join("out.wav"), dir.path().join("turns.jsonl"));
    run_ok(&["run", "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap(), "--latency-log", log.to_str().unwrap(), "--realtime"]);
    let t = &turns(&log)[0];
    let sentences = t.reply.matches(['.', '!', '?']).count();
    assert!(sentences >= 2, "a multi-sentence reply: {:?}", t.reply);
    let m = &t.marks;
    // Streaming, whatever the machine's speed: the first sentence is handed to the
    // voice while the rest of the reply is still being generated, early in the
    // generation rather than at its end (without streaming it is handed over with
    // the last token: a share of ~1.0). As a share of the generation time, not as an
    // absolute time, so a slow machine is judged like a fast one; whether the first
    // *sound* beats the last token is a race between Piper and llama that
    // `voxd bench` measures.
    let (first_token, first_sentence, llm_done) = (m.llm_first_token.unwrap(), m.first_sentence.unwrap(), m.llm_done.unwrap());
    let share = (first_sentence - first_token) / (llm_done - first_token);
    assert!(share < 0.9, "the first sentence went to the voice {share:.2} of the way through the generation: {m:?}");
    let first_audio = m.first_audio.unwrap();
    // The reply's marks follow each other; the transcript and the first token may come
    // before the endpoint (a reply started during the hangover), but nothing is heard
    // before it.
    let order = [m.asr_done, m.llm_first_token, m.first_sentence, m.tts_first_audio, m.first_audio, m.turn_done].map(Option::unwrap);
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "marks in timeline order: {order:?}");
    assert!(m.endpoint.unwrap() <= first_audio, "heard before the end of the turn was certain: {m:?}");
    assert_eq!(t.round_trip_ms, m.first_audio);
    assert_eq!(t.clock, "realtime");
}

#[test]
fn the_first_words_go_to_the_voice_as_a_phrase_and_are_heard_joined_to_the_rest() {
    let dir = tempdir();
    let (input, _) = conversation(&dir, "capital", &[(0.5, "What is the capital of France?")], 1.0);
    let mut runs = Vec::new();
    for words in [3, 0] {
        let config = deterministic_config(&dir, &format!("[llm]\nfirst_phrase_words = {words}"));
        let (output, log) = (dir.path().join(format!("out-{words}.wav")), dir.path().join(format!("turns-{words}.jsonl")));
        run_ok(&["--config", config.to_str().unwrap(), "run", "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap(), "--latency-log", log.to_str().unwrap()]);
        let t = turns(&log).remove(0);
        // The join is heard as one sentence: no word lost or blurred at the cut.
        let heard = heard_reply(&dir, &output, &t);
        let c = cer(&t.reply, &heard);
        assert!(c <= 0.2, "first_phrase_words = {words}: CER {c:.2}: said {:?} (first piece {:?}), heard {heard:?}", t.reply, t.first_piece);
        runs.push(t);
    }
    let (phrase, sentence) = (&runs[0], &runs[1]);
    assert_eq!(phrase.reply, sentence.reply, "the cut changes when the words are spoken, not which");
    let first = &phrase.first_piece;
    assert!(
        first.split_whitespace().count() >= 3 && first.ends_with(char::is_alphanumeric) && phrase.reply.starts_with(first.as_str()),
        "the first piece is a phrase of the reply, cut before its sentence ended: {first:?} of {:?}",
        phrase.reply
    );
    assert!(sentence.first_piece.len() > first.len() && sentence.first_piece.ends_with(['.', '!', '?', ',']), "without: a sentence or clause: {:?}", sentence.first_piece);
}

/// Peak sample (16-bit) of `wav` between two times.
fn peak(dir: &tempfile::TempDir, wav: &std::path::Path, from_s: f64, to_s: f64) -> u16 {
    let part = dir.path().join("part.wav");
    excerpt(wav, from_s, to_s, &part);
    let reader = hound::WavReader::open(&part).unwrap();
    reader.into_samples::<i16>().map(|s| s.unwrap().unsigned_abs()).max().unwrap_or(0)
}

#[test]
fn a_reply_is_prepared_during_the_hangover_and_heard_only_after_it() {
    let dir = tempdir();
    let (input, _) = conversation(&dir, "eager", &[(0.5, "What is the capital of France?")], 3.0);
    let (output, log) = (dir.path().join("out.wav"), dir.path().join("turns.jsonl"));
    let config = deterministic_config(&dir, "");
    run_ok(&["--config", config.to_str().unwrap(), "run", "--realtime", "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap(), "--latency-log", log.to_str().unwrap()]);
    let turns = turns(&log);
    assert_eq!(turns.len(), 1, "{turns:?}");
    let t = &turns[0];
    let m = &t.marks;
    // What the design guarantees on any machine (how much of the reply is ready by
    // the endpoint is the machine's speed: `voxd bench` reports it):
    // - the reply was started at the pause, from the speculative transcript, and the
    //   guess held (the final transcript confirmed it);
    assert!(t.speculative && t.asr.speculative_hit, "the reply was started at the pause: {t:?}");
    // - nothing was heard before the end of the turn was certain;
    let endpoint = m.endpoint.unwrap();
    assert!(m.first_audio.unwrap() >= endpoint, "{m:?}");
    let quiet = peak(&dir, &output, 0.0, t.speech_end_s + endpoint / 1000.0);
    assert!(quiet < 300, "audio before the endpoint (peak {quiet})");
    // - the audio held until then was released once the turn was confirmed: the whole
    //   reply was heard, and it is the answer.
    assert!(!t.cancelled && t.spoken == t.reply, "{t:?}");
    assert!(t.reply.to_lowercase().contains("paris"), "{:?}", t.reply);
    let heard = heard_reply(&dir, &output, t);
    assert!(cer(&t.reply, &heard) <= 0.2, "logged {:?}, heard {heard:?}", t.reply);
}

/// While the user is still speaking, Whisper transcribes what was said so far and
/// the LLM reads those words into its KV cache: at the end of the question only the
/// rest is evaluated. Measured against the same question with it switched off.
#[test]
fn the_words_so_far_are_read_ahead_while_the_user_speaks() {
    let dir = tempdir();
    // Long enough that a partial pass (after 700 ms of speech) is done well before
    // the end, on a slow machine too.
    let (input, _) = conversation(&dir, "long", &[(0.5, "Please tell me what the capital city of France is called and what river runs through it")], 3.0);
    let evaluated = |extra: &str| {
        let (output, log) = (dir.path().join("out.wav"), dir.path().join(format!("turns-{}.jsonl", extra.len())));
        let config = deterministic_config(&dir, extra);
        let r = run_ok(&["--config", config.to_str().unwrap(), "-v", "run", "--realtime", "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap(), "--latency-log", log.to_str().unwrap()]);
        let turns = turns(&log);
        assert_eq!(turns.len(), 1, "{turns:?}\n{}", r.stderr);
        (turns[0].llm.evaluated_tokens, turns[0].transcript.clone(), r.stderr)
    };
    let (ahead, heard, stderr) = evaluated("");
    let (plain, heard_plain, _) = evaluated("[vad]\npartial_every_ms = 0");
    assert_eq!(heard, heard_plain, "the same question");
    assert!(stderr.contains("partial transcript") && stderr.contains("read ahead"), "{stderr}");
    assert!(ahead + 5 <= plain, "with the words read ahead {ahead} tokens were evaluated at the end, without {plain}");
}

#[test]
fn speaking_on_after_a_pause_abandons_the_reply_started_there() {
    let dir = tempdir();
    // A pause in mid-question: longer than the speculation's 60 ms, shorter than the
    // (here) 900 ms hangover.
    let (input, ends) = conversation(&dir, "pause", &[(0.5, "What is the capital"), (0.15, "of Germany?")], 3.0);
    let (output, log) = (dir.path().join("out.wav"), dir.path().join("turns.jsonl"));
    let config = deterministic_config(&dir, "[vad]\nhangover_ms = 900");
    let r = run_ok(&["--config", config.to_str().unwrap(), "run", "--realtime", "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap(), "--latency-log", log.to_str().unwrap()]);
    let turns = turns(&log);
    assert_eq!(turns.len(), 1, "one question, one turn: {turns:?}\n{}", r.stderr);
    let t = &turns[0];
    assert!(t.counters.speculations_abandoned >= 1, "the reply started at the pause was dropped: {t:?}");
    let heard = voxd::bench::words(&t.transcript);
    assert!(heard.contains(&"capital".to_string()) && heard.contains(&"germany".to_string()), "the whole question: {:?}", t.transcript);
    assert!((t.speech_end_s - ends[1]).abs() < 0.3, "the turn ends with the second part");
    // Nothing of the abandoned reply was played.
    let quiet = peak(&dir, &output, 0.0, t.speech_end_s + t.marks.endpoint.unwrap() / 1000.0);
    assert!(quiet < 300, "audio before the endpoint (peak {quiet})");
}

#[test]
fn the_latency_log_has_the_designed_fields() {
    let dir = tempdir();
    let (input, _) = conversation(&dir, "one", &[(0.5, "Hello there.")], 1.0);
    let (output, log) = (dir.path().join("out.wav"), dir.path().join("turns.jsonl"));
    run_ok(&["run", "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap(), "--latency-log", log.to_str().unwrap()]);
    let line = std::fs::read_to_string(&log).unwrap();
    let v: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    for k in ["turn", "ts_unix_ms", "clock", "speech_end_s", "audio_s", "marks", "round_trip_ms", "transcript", "speculative", "reply", "first_piece", "spoken", "cancelled", "asr", "llm", "models", "tool_calls", "counters", "queues"] {
        assert!(keys.contains(&k), "no {k} in {keys:?}");
    }
    let marks: Vec<&str> = v["marks"].as_object().unwrap().keys().map(String::as_str).collect();
    for k in ["endpoint", "asr_done", "llm_first_token", "first_sentence", "tts_first_audio", "first_audio", "turn_done"] {
        assert!(marks.contains(&k), "no mark {k} in {marks:?}");
    }
    for k in ["prompt_tokens", "cached_tokens", "evaluated_tokens", "generated_tokens", "prompt_tok_s", "generate_tok_s", "paused_ms"] {
        assert!(v["llm"][k].is_number(), "llm.{k}");
    }
    for k in ["asr", "llm", "tts"] {
        assert!(v["models"][k].is_string(), "models.{k}");
    }
    // In fast mode the hangover is simulated: the endpoint mark is the hangover.
    assert!((v["marks"]["endpoint"].as_f64().unwrap() - 300.0).abs() < 25.0, "{}", v["marks"]);
}

#[test]
fn silence_and_noise_make_no_turn() {
    let dir = tempdir();
    let rate = 16_000;
    let silence = dir.path().join("silence.wav");
    voxd::audio::write_wav(&silence, &vec![0.0; rate * 5], rate as u32).unwrap();
    // Deterministic white noise (xorshift), loud enough to trip webrtc-vad.
    let mut x: u32 = 2463534242;
    let noise: Vec<f32> = (0..rate * 5)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32 - 0.5) * 0.6
        })
        .collect();
    let noisy = dir.path().join("noise.wav");
    voxd::audio::write_wav(&noisy, &noise, rate as u32).unwrap();
    for input in [silence, noisy] {
        let (output, log) = (dir.path().join("out.wav"), dir.path().join("turns.jsonl"));
        let _ = std::fs::remove_file(&log);
        let r = run_ok(&["run", "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap(), "--latency-log", log.to_str().unwrap()]);
        assert!(turns(&log).is_empty(), "{}: no turn expected: {}", input.display(), r.stderr);
        assert!(r.stderr.contains("0 turns answered"), "{}", r.stderr);
    }
}

#[test]
fn speech_longer_than_the_maximum_is_cut_and_answered() {
    let dir = tempdir();
    let config = dir.path().join("voxd.toml");
    std::fs::write(&config, "[vad]\nmax_utterance_s = 4.0\n").unwrap();
    let (output, log) = (dir.path().join("out.wav"), dir.path().join("turns.jsonl"));
    let jfk = testdata("jfk.wav");
    let r = run_ok(&["--config", config.to_str().unwrap(), "run", "--input", jfk.to_str().unwrap(), "--output", output.to_str().unwrap(), "--latency-log", log.to_str().unwrap()]);
    let turns = turns(&log);
    assert!(!turns.is_empty(), "{}", r.stderr);
    assert!(turns[0].asr.capped, "the first utterance hit the 4 s cap: {:?}", turns[0]);
    assert!(turns[0].audio_s <= 4.01, "{}", turns[0].audio_s);
}

#[test]
fn a_truncated_or_missing_input_is_a_clear_error() {
    let dir = tempdir();
    let cut = dir.path().join("cut.wav");
    let bytes = std::fs::read(repo_data("capital-of-france.wav")).unwrap();
    std::fs::write(&cut, &bytes[..40]).unwrap();
    let out = dir.path().join("out.wav");
    run_fails_with(&["run", "--input", cut.to_str().unwrap(), "--output", out.to_str().unwrap()], &["cut.wav"]);
    // --output records a file run: without --input (the microphone) it means nothing.
    run_fails_with(&["run", "--output", out.to_str().unwrap()], &["--input"]);
}

/// Engines for in-process runs: the real ASR and LLM, and the given voice.
fn engines(voice: Box<dyn voxd::pipeline::tts::Voice>, rate_hz: u32) -> voxd::pipeline::Engines {
    use voxd::engine::{asr, llm};
    quiet_engine_logs();
    let asr_options = asr::AsrOptions { threads: 1, language: "en".into(), no_speech_threshold: 0.6, scale_encoder: true, min_encoder_s: 10.0, temperature_fallback: false, flash_attention: true, gpu: true };
    let llm_options = llm::LlmOptions { threads: 1, context_tokens: 2048, max_reply_tokens: 120, temperature: 0.0, seed: 1, reuse_prefix: true, gpu_layers: -1 };
    voxd::pipeline::Engines {
        asr: Some(asr::Asr::load(&model("ggml-tiny.en.bin"), "whisper-tiny.en", asr_options).unwrap().into()),
        llm: std::sync::Arc::new(llm::Llm::load(&model("SmolLM2-135M-Instruct.Q4_1.gguf"), "smollm2-135m-instruct", llm_options).unwrap()),
        tts: voice,
        tts_rate_hz: rate_hz,
        models: voxd::pipeline::telemetry::Models { asr: "tiny".into(), llm: "smollm2".into(), tts: "test".into() },
        toolbox: voxd::tools::Toolbox::default(),
        wake: None,
    }
}

fn run_options(realtime: bool) -> voxd::pipeline::RunOptions {
    let config = voxd::config::Config::default();
    voxd::pipeline::RunOptions {
        realtime,
        vad: config.vad,
        wake: config.wake,
        agent: config.agent,
        llm: config.llm,
        multi_turn: true,
        tools: config.tools,
        tool: config.tool,
        intent: config.intent,
        home: tokio::sync::watch::channel(voxd::tools::Home::default()).1,
        audio: config.audio,
        latency_log: None,
        stage_deadline: std::time::Duration::from_secs_f32(config.service.stage_deadline_s),
        config_id: String::new(),
    }
}

/// A voice that takes its time: every sentence costs `delay` and comes out as a tone.
struct SlowVoice {
    delay: std::time::Duration,
}

impl voxd::pipeline::tts::Voice for SlowVoice {
    fn speak(&mut self, text: &str) -> anyhow::Result<(Vec<f32>, u32)> {
        std::thread::sleep(self.delay);
        let n = 16_000 * text.split_whitespace().count().clamp(1, 10) / 4;
        Ok(((0..n).map(|i| (i as f32 * 0.05).sin() * 0.3).collect(), 16_000))
    }
}

#[test]
fn a_slow_voice_does_not_stall_capture_and_nothing_deadlocks() {
    let dir = tempdir();
    let parts = [(0.5, "Tell me a story about a cat."), (1.5, "What is two plus two?"), (1.5, "Name three colors."), (1.5, "What day comes after Monday?")];
    let (input, _) = conversation(&dir, "busy", &parts, 1.0);
    let clip = voxd::audio::read_wav(&input, 16_000).unwrap();
    let input_s = clip.duration_s();
    let voice = Box::new(SlowVoice { delay: std::time::Duration::from_millis(2500) });
    let started = std::time::Instant::now();
    let report = voxd::pipeline::run(engines(voice, 16_000), run_options(true), voxd::pipeline::Io::File(clip.samples)).expect("the pipeline finishes");
    let elapsed = started.elapsed().as_secs_f64();
    // Capture ran at the pace of the input: it was never held up by the slow voice.
    assert!(report.capture_lag_s < 0.5, "capture finished {:.2} s late", report.capture_lag_s);
    assert!(elapsed < input_s + 120.0, "finished in {elapsed:.0} s (no deadlock)");
    let overflow = report.counters.vad_drops.load(std::sync::atomic::Ordering::Relaxed);
    let cancelled = report.turns.iter().filter(|t| t.cancelled).count();
    // Utterances arriving while earlier answers are still being spoken either
    // interrupt them (barge-in) or, when asr is behind, are dropped and counted.
    assert!(!report.turns.is_empty());
    assert!(cancelled + overflow as usize >= 1, "some turns were superseded or dropped: {:?}", report.turns.iter().map(|t| (t.turn, t.cancelled)).collect::<Vec<_>>());
    let queued = report.turns.iter().map(|t| t.queues.llm_to_tts).max().unwrap_or(0);
    assert!(queued >= 1, "sentences queued up behind the slow voice");
}

#[test]
fn speaking_during_a_reply_cancels_it_and_history_keeps_only_what_was_heard() {
    let dir = tempdir();
    // The second question starts 5 s after the first ends: the long first answer is
    // being spoken (however slow the machine is to begin it: a question before the
    // first audio would supersede the answer, not interrupt it).
    let parts = [(0.5, "Please tell me a long story about a brave little dragon."), (5.0, "Stop. What is two plus two?")];
    let (input, ends) = conversation(&dir, "barge", &parts, 8.0);
    let (output, log) = (dir.path().join("out.wav"), dir.path().join("turns.jsonl"));
    let config = deterministic_config(&dir, "[agent]\nmulti_turn = \"on\"");
    let r = run_ok(&["--config", config.to_str().unwrap(), "run", "--realtime", "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap(), "--latency-log", log.to_str().unwrap()]);
    let turns = turns(&log);
    assert_eq!(turns.len(), 2, "{}", r.stderr);
    let (first, second) = (&turns[0], &turns[1]);
    assert!(first.cancelled, "{first:?}");
    assert_eq!(first.cancel_reason.as_deref(), Some("barge-in"));
    assert!(first.spoken.len() < first.reply.len(), "only part of the answer was played: {first:?}");
    assert!(!second.cancelled && !second.reply.is_empty(), "{second:?}");
    // Nothing of the first answer plays after the interruption (plus the time barge-in
    // needs to be sure): the output is silent from there until the second answer.
    let cut_s = ends[1] - 0.0; // the second question ends here; its speech began well before
    let second_start = second.speech_end_s + second.marks.first_audio.unwrap() / 1000.0;
    let peak = peak(&dir, &output, cut_s, second_start - 0.05);
    assert!(peak < 500, "the cancelled answer kept playing (peak {peak})");
    assert_eq!(second.llm.history_turns, usize::from(!first.spoken.is_empty()), "history holds the heard part only");
}

/// Listening for the wake word with barge-in on: talk in the room during a reply
/// leaves it playing; the wake word interrupts it, and what follows it is the next turn.
#[test]
fn only_the_wake_word_interrupts_a_reply_when_listening_for_it() {
    let dir = tempdir();
    let parts = [(0.5, "Hey Jarvis, please tell me a long story about a brave little dragon."), (5.0, "I wonder what is on television tonight."), (1.0, "Hey Jarvis, stop. What is two plus two?")];
    let (input, ends) = conversation(&dir, "wake-barge", &parts, 8.0);
    let (output, log) = (dir.path().join("out.wav"), dir.path().join("turns.jsonl"));
    let config = deterministic_config(&dir, "[wake]\nmode = \"wake_word\"\n[agent]\nmulti_turn = \"on\"");
    let r = run_ok(&["--config", config.to_str().unwrap(), "run", "--realtime", "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap(), "--latency-log", log.to_str().unwrap()]);
    let turns = turns(&log);
    assert_eq!(turns.len(), 2, "the talk in the room is no turn: {:?}\n{}", turns.iter().map(|t| &t.transcript).collect::<Vec<_>>(), r.stderr);
    let (first, second) = (&turns[0], &turns[1]);
    assert!(first.cancelled && first.cancel_reason.as_deref() == Some("barge-in"), "{first:?}");
    // The answer was playing through the talk (it began 5 s after the question).
    let talk_start = ends[0] + 5.0;
    let peak = peak(&dir, &output, talk_start + 0.3, ends[1]);
    assert!(peak > 500, "the talk in the room cut the answer (peak {peak} while it was said)");
    let asked = second.transcript.to_lowercase().replace(' ', "");
    assert!(["twoplustwo", "2plus2", "2+2"].iter().any(|w| asked.contains(w)) && !asked.contains("jarvis"), "{:?}", second.transcript);
    assert_eq!(second.wake, "hey_jarvis_v0.1");
}

/// A voice that fails on the first sentence it is given, and speaks (a tone) after.
struct FlakyVoice {
    calls: usize,
}

impl voxd::pipeline::tts::Voice for FlakyVoice {
    fn speak(&mut self, text: &str) -> anyhow::Result<(Vec<f32>, u32)> {
        self.calls += 1;
        anyhow::ensure!(self.calls > 1, "the voice choked on {text:?}");
        let n = 16_000 * text.split_whitespace().count().clamp(1, 10) / 4;
        Ok(((0..n).map(|i| (i as f32 * 0.05).sin() * 0.3).collect(), 16_000))
    }
}

#[test]
fn an_engine_error_fails_one_turn_with_an_apology_and_the_next_turn_is_answered() {
    let dir = tempdir();
    let (input, _) = conversation(&dir, "flaky", &[(0.5, "What is the capital of France?"), (2.0, "What color is the sky?")], 1.0);
    let clip = voxd::audio::read_wav(&input, 16_000).unwrap();
    let log = dir.path().join("turns.jsonl");
    let options = voxd::pipeline::RunOptions { latency_log: Some(log.clone()), ..run_options(false) };
    let report = voxd::pipeline::run(engines(Box::new(FlakyVoice { calls: 0 }), 16_000), options, voxd::pipeline::Io::File(clip.samples)).expect("the pipeline survives a failing engine");
    let turns = turns(&log);
    assert_eq!(turns.len(), 2, "{:?}", report.turns);
    let (failed, next) = (&turns[0], &turns[1]);
    assert_eq!(failed.outcome, "error", "{failed:?}");
    let error = failed.error.as_ref().expect("the log says what failed");
    assert!(error.stage == "tts" && error.message.contains("the voice choked"), "{error:?}");
    assert_eq!(failed.spoken, voxd::pipeline::APOLOGY, "the user heard an apology, and only that");
    assert!(!failed.cancelled);
    assert_eq!(next.outcome, "answered", "{next:?}");
    assert!(!next.spoken.is_empty() && next.spoken == next.reply, "the next turn was answered in full: {next:?}");
}

/// A voice that stops responding (for longer than the test's stage deadline).
struct HungVoice;

impl voxd::pipeline::tts::Voice for HungVoice {
    fn speak(&mut self, _: &str) -> anyhow::Result<(Vec<f32>, u32)> {
        // Long enough to be a hang for a 2 s deadline; short enough that the thread
        // (which nobody waits for) is gone before the test binary ends.
        std::thread::sleep(std::time::Duration::from_secs(20));
        Ok((vec![0.0; 160], 16_000))
    }
}

#[test]
fn a_stage_that_hangs_ends_the_run_within_its_deadline_and_its_turn_is_logged_as_failed() {
    let dir = tempdir();
    let (input, _) = conversation(&dir, "hung", &[(0.5, "What is the capital of France?")], 1.0);
    let clip = voxd::audio::read_wav(&input, 16_000).unwrap();
    let log = dir.path().join("turns.jsonl");
    let deadline = std::time::Duration::from_secs(2);
    let options = voxd::pipeline::RunOptions { latency_log: Some(log.clone()), stage_deadline: deadline, ..run_options(false) };
    let started = std::time::Instant::now();
    let err = match voxd::pipeline::run(engines(Box::new(HungVoice), 16_000), options, voxd::pipeline::Io::File(clip.samples)) {
        Ok(_) => panic!("a pipeline with a hung stage cannot succeed"),
        Err(e) => format!("{e:#}"),
    };
    let took = started.elapsed();
    assert!(err.contains("stage tts made no progress for 2 s"), "{err}");
    // The deadline runs from the sentence tts took; transcribing and generating come
    // first (a slow machine takes a while for those: the bound is generous).
    assert!(took < std::time::Duration::from_secs(15), "the run ended {took:?} after it started (deadline 2 s), not when the voice came back (20 s)");
    let turns = turns(&log);
    assert_eq!(turns.len(), 1, "the turn the stage hung on is in the log");
    assert_eq!(turns[0].outcome, "error");
    assert_eq!(turns[0].error.as_ref().map(|e| e.stage.as_str()), Some("tts"), "{:?}", turns[0]);
}

/// A voice that breaks on its first sentence.
struct BrokenVoice;

impl voxd::pipeline::tts::Voice for BrokenVoice {
    fn speak(&mut self, _: &str) -> anyhow::Result<(Vec<f32>, u32)> {
        panic!("the voice broke");
    }
}

#[test]
fn a_stage_that_dies_is_named_and_the_rest_wind_down() {
    let dir = tempdir();
    let (input, _) = conversation(&dir, "broken", &[(0.5, "What is the capital of France?"), (2.0, "And of Spain?")], 1.0);
    let clip = voxd::audio::read_wav(&input, 16_000).unwrap();
    let started = std::time::Instant::now();
    let err = match voxd::pipeline::run(engines(Box::new(BrokenVoice), 16_000), run_options(false), voxd::pipeline::Io::File(clip.samples)) {
        Ok(_) => panic!("a pipeline whose voice panics cannot succeed"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("stage tts panicked: the voice broke"), "{err}");
    assert!(started.elapsed().as_secs() < 60, "the other stages shut down instead of hanging");
}
