//! Listening for the wake word: only speech addressed to voxd becomes a turn, the
//! words said in the same breath are kept and the wake phrase is not.

use std::time::Duration;

use crate::live::{Daemon, Pulse};
use crate::util::*;

/// A recording in wake-word mode: a question without the wake word is not answered;
/// one said in one breath after it is, without the wake phrase in its words; the wake
/// word said on its own and the question after a pause make one turn too. The earcon
/// sounds where the wake word was heard.
#[test]
fn a_recording_in_wake_word_mode_answers_only_what_is_addressed_to_it() {
    let dir = tempdir();
    let parts = [
        (0.5, "What is the capital of France?"),
        (1.5, "Hey Jarvis, what is the capital of Italy?"),
        (2.0, "Hey Jarvis."),
        (1.2, "What is the capital of Spain?"),
        (2.0, "Tell me a joke."),
    ];
    let (input, _) = conversation(&dir, "wake", &parts, 2.0);
    let chime = dir.path().join("chime.wav");
    let tone: Vec<f32> = (0..2400).map(|i| 0.3 * (i as f32 * 2.0 * std::f32::consts::PI * 1000.0 / 16_000.0).sin()).collect();
    voxd::audio::write_wav(&chime, &tone, 16_000).unwrap();
    let config = deterministic_config(&dir, &format!("[wake]\nmode = \"wake_word\"\nearcon = {:?}\n", chime.to_str().unwrap()));
    let (out, log) = (dir.path().join("out.wav"), dir.path().join("turns.jsonl"));
    let r = run_cmd(voxd().args(["--config", config.to_str().unwrap(), "run", "--input", input.to_str().unwrap(), "--output", out.to_str().unwrap(), "--latency-log", log.to_str().unwrap()]));
    assert!(r.ok, "{}", r.stderr);
    let turns = turns(&log);
    let heard: Vec<String> = turns.iter().map(|t| t.transcript.to_lowercase()).collect();
    assert_eq!(turns.len(), 2, "two questions were addressed to voxd; heard {heard:?}\n{}", r.stderr);
    assert!(heard[0].contains("capital of italy") && heard[1].contains("capital of spain"), "{heard:?}");
    for t in &turns {
        assert!(!t.transcript.to_lowercase().contains("jarvis"), "the wake phrase stays out of the words: {:?}", t.transcript);
        assert!(t.transcript.starts_with("What"), "from the request's first word: {:?}", t.transcript);
        assert_eq!(t.wake, "hey_jarvis_v0.1", "{t:?}");
        assert!(t.wake_score.is_some_and(|s| s >= 0.5), "{t:?}");
        assert!(!t.reply.is_empty(), "{t:?}");
    }
    // The first wake (nothing was playing then): the earcon is in the output there.
    let line = r.stderr.lines().find(|l| l.contains("wake word: hey_jarvis_v0.1")).unwrap_or_else(|| panic!("no wake logged:\n{}", r.stderr));
    let at_s: f64 = line.split("at_s=").nth(1).and_then(|v| v.trim_matches('"').split('"').next()).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{line}"));
    let played = voxd::audio::read_wav(&out, 16_000).unwrap();
    let rms = |from_s: f64, len_s: f64| {
        let w = &played.samples[(from_s * 16_000.0) as usize..((from_s + len_s) * 16_000.0) as usize];
        (w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32).sqrt()
    };
    assert!(rms(at_s, 0.15) > 0.1, "no earcon at {at_s} s (rms {})", rms(at_s, 0.15));
    assert!(rms(at_s - 0.5, 0.5) < 0.01, "nothing played before the wake");
}

/// A wake model that cannot be used stops voxd at start with its name, before the
/// other engines load.
#[test]
fn a_bad_wake_model_is_an_error_at_start_naming_it() {
    let dir = tempdir();
    let bad = dir.path().join("my_word.onnx");
    std::fs::write(&bad, b"not a model").unwrap();
    let (input, _) = conversation(&dir, "q", &[(0.3, "Hello.")], 0.5);
    let config = deterministic_config(&dir, &format!("[wake]\nmode = \"wake_word\"\nwords = [{:?}]\n", bad.to_str().unwrap()));
    let out = dir.path().join("out.wav");
    let r = run_cmd(voxd().args(["--config", config.to_str().unwrap(), "run", "--input", input.to_str().unwrap(), "--output", out.to_str().unwrap()]));
    assert!(!r.ok);
    assert!(r.stderr.contains("my_word.onnx") && r.stderr.contains("is it an .onnx file"), "{}", r.stderr);
    let missing = dir.path().join("gone.onnx");
    let config = deterministic_config(&dir, &format!("[wake]\nmode = \"wake_word\"\nwords = [{:?}]\n", missing.to_str().unwrap()));
    let r = run_cmd(voxd().args(["--config", config.to_str().unwrap(), "run", "--input", input.to_str().unwrap(), "--output", out.to_str().unwrap()]));
    assert!(!r.ok && r.stderr.contains("gone.onnx"), "{}", r.stderr);
    let config = deterministic_config(&dir, "[wake]\nmode = \"wake_words\"\nthreshold = 1.5\n");
    let r = run_cmd(voxd().args(["--config", config.to_str().unwrap(), "run", "--input", input.to_str().unwrap(), "--output", out.to_str().unwrap()]));
    assert!(!r.ok && r.stderr.contains("wake.mode") && r.stderr.contains("wake.threshold"), "both problems at once: {}", r.stderr);
}

/// Live, with voxd's default listening (the wake word): questions without it make no
/// turn; the same questions after "Hey Jarvis" in one breath are answered without
/// the wake phrase in the log; a follow-up right after an answer needs none.
#[test]
fn live_only_questions_after_the_wake_word_are_answered_and_a_follow_up_needs_none() {
    let dir = tempdir();
    let pulse = Pulse::start(&dir);
    let (unaddressed, _) = conversation(&dir, "plain", &[(0.3, "What is the capital of France?"), (1.5, "Turn off the kitchen light.")], 0.5);
    let (first, _) = conversation(&dir, "woken", &[(0.3, "Hey Jarvis, what is the capital of France?")], 0.3);
    let (follow_up, _) = conversation(&dir, "follow", &[(0.3, "And what is the capital of Italy?")], 0.3);
    // An empty [wake] section: the default mode.
    let voxd = Daemon::start(&pulse, &dir, "[wake]\nfollow_up_s = 8.0\n");
    assert!(voxd.stderr().contains("listening: for hey_jarvis_v0.1"), "{}", voxd.stderr());
    pulse.say(&unaddressed);
    std::thread::sleep(Duration::from_secs(4));
    assert!(turns(&voxd.log).is_empty(), "speech without the wake word made a turn: {:?}", turns(&voxd.log));
    pulse.say(&first);
    let answered = voxd.wait_for_turns(1, Duration::from_secs(60));
    // The answer has been played (the turn is logged at its last sample): follow up.
    std::thread::sleep(Duration::from_millis(800));
    pulse.say(&follow_up);
    let turns = voxd.wait_for_turns(2, Duration::from_secs(60));
    let stderr = voxd.stop();
    let (woken, followed) = (&turns[0], &turns[1]);
    assert_eq!(answered[0].turn, woken.turn);
    assert!(woken.transcript.to_lowercase().contains("capital of france") && !woken.transcript.to_lowercase().contains("jarvis"), "{:?}", woken.transcript);
    assert_eq!(woken.wake, "hey_jarvis_v0.1");
    assert!(woken.round_trip_ms.is_some() && !woken.reply.is_empty(), "{woken:?}");
    assert!(followed.transcript.to_lowercase().contains("capital of italy"), "{:?}", followed.transcript);
    assert_eq!(followed.wake, "follow_up", "{followed:?}");
    assert_eq!(turns.len(), 2, "{stderr}");
}

/// `voxd bench-wake`'s short pass: every threshold judged on positives and negatives
/// made here, the test voice woken at the configured one, the figures in JSON.
#[test]
fn bench_wake_measures_false_rejects_false_accepts_and_what_listening_costs() {
    let dir = tempdir();
    let json = dir.path().join("wake.json");
    let r = run_ok(&["bench-wake", "--quick", "--hours", "0.02", "--idle-s", "0", "--json", json.to_str().unwrap()]);
    for needle in ["false rejects", "false accepts per hour", "wake to listening", "◀ configured", "the detector's work", "idle daemon             not measured"] {
        assert!(r.stdout.contains(needle), "no {needle:?} in:\n{}", r.stdout);
    }
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // Two voices, two commands, at once and after a pause, clean and in noise.
    assert_eq!(report["positives"], 16, "{report}");
    assert!(report["negative_hours"].as_f64().unwrap() >= 0.02 && report["negative_utterances"].as_u64().unwrap() > 10, "{report}");
    assert!(report["step_ms"].as_f64().unwrap() > 0.0);
    let thresholds = report["thresholds"].as_array().unwrap();
    assert_eq!(thresholds.len(), 8, "0.2 to 0.9, the configured 0.5 among them");
    let configured = thresholds.iter().find(|t| t["threshold"] == 0.5).unwrap();
    // The voice the classifier was trained on (Piper) wakes it every time (measured
    // 0 misses in 30 clips at every threshold up to 0.9).
    assert_eq!(configured["frr_piper"], 0.0, "{configured}");
    assert!(configured["detection_ms"][0].as_f64().unwrap().abs() < 1000.0, "{configured}");
}

/// Each step's score, by file: `voxd wake-score --steps` and tests/openwakeword_scores.py
/// print the same columns (file, wake word, end of the step in s, score).
fn step_scores(tsv: &str) -> std::collections::BTreeMap<String, Vec<(f64, f32)>> {
    let mut by_file = std::collections::BTreeMap::<String, Vec<(f64, f32)>>::new();
    for line in tsv.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 4, "not a step: {line:?}");
        by_file.entry(cols[0].to_string()).or_default().push((cols[2].parse().unwrap(), cols[3].parse().unwrap()));
    }
    by_file
}

/// voxd's wake-word detector scores what openWakeWord's own package scores, step for
/// step, on the same recordings — the wake phrase in voices both catch, in the one
/// voice both miss (espeak-ng's en-gb at 210 words a minute: the pre-trained model's
/// limit, not voxd's, README "Wake word"), and speech without it — and `voxd
/// wake-score` says which would wake.
#[test]
fn the_wake_detector_scores_as_openwakeword_itself_does() {
    let dir = tempdir();
    let said = [
        ("en-us", 175, "Hey Jarvis, turn off the kitchen light.", true),
        ("en-us+f3", 140, "Hey Jarvis, what time is it?", true),
        ("en-gb", 210, "Hey Jarvis, turn off the kitchen light.", false),
        ("en-us", 175, "Harvey, are you coming to the party on Saturday?", false),
    ];
    let mut clips = Vec::new();
    for (i, (voice, wpm, text, _)) in said.iter().enumerate() {
        let raw = dir.path().join(format!("raw{i}.wav"));
        let out = std::process::Command::new("espeak-ng").args(["-v", voice, "-s", &wpm.to_string(), "-w"]).arg(&raw).arg(text).output().expect("espeak-ng runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // 1.5 s of quiet first: both detectors have filled their windows from the
        // audio by the time the phrase begins (openWakeWord starts from random noise).
        let mut samples = vec![0.0; 24_000];
        samples.extend(voxd::audio::read_wav(&raw, 16_000).unwrap().samples);
        let clip = dir.path().join(format!("{voice}-{wpm}-{i}.wav"));
        voxd::audio::write_wav(&clip, &samples, 16_000).unwrap();
        clips.push(clip);
    }
    let clip_args: Vec<&str> = clips.iter().map(|c| c.to_str().unwrap()).collect();
    let ours = run_ok(&[&["wake-score", "--steps"][..], &clip_args].concat());
    let oww = voxd::paths::cache_dir().join("testdata/python-openwakeword-0.5.1");
    assert!(oww.exists(), "{} is missing: run ./scripts/setup with VOXD_BUILD_TESTS=1", oww.display());
    let reference = std::process::Command::new("python3")
        .arg(repo_data("../openwakeword_scores.py"))
        .args([model("openwakeword-melspectrogram.onnx"), model("openwakeword-embedding.onnx"), model("hey_jarvis_v0.1.onnx")])
        .args(&clips)
        .env("PYTHONPATH", &oww)
        .output()
        .expect("python3 runs");
    assert!(reference.status.success(), "{}", String::from_utf8_lossy(&reference.stderr));
    let (ours_by_file, theirs_by_file) = (step_scores(&ours.stdout), step_scores(&String::from_utf8_lossy(&reference.stdout)));
    for ((clip, (voice, wpm, text, wakes)), arg) in clips.iter().zip(said).zip(&clip_args) {
        let (ours, theirs) = (&ours_by_file[*arg], &theirs_by_file[*arg]);
        // From 1.1 s on both windows hold nothing but the file (openWakeWord's features
        // begin as noise, its first melspectrogram is shorter): the same score each step.
        let theirs_at: std::collections::HashMap<String, f32> = theirs.iter().map(|(t, s)| (format!("{t:.2}"), *s)).collect();
        let (mut worst, mut compared) = (0.0f32, 0);
        for (t, score) in ours.iter().filter(|(t, _)| *t >= 1.1) {
            let Some(reference) = theirs_at.get(&format!("{t:.2}")) else { continue };
            worst = worst.max((score - reference).abs());
            compared += 1;
        }
        let expected = theirs.iter().filter(|(t, _)| *t >= 1.1).count();
        assert!(compared + 1 >= expected && expected > 20, "{clip:?}: {compared} steps side by side of openWakeWord's {expected}");
        let best = |s: &[(f64, f32)]| s.iter().map(|x| x.1).fold(0.0, f32::max);
        eprintln!("{voice} {wpm} wpm {text:?}: best {:.3} (openWakeWord {:.3}), largest difference in a step {worst:.4}", best(ours), best(theirs));
        assert!(worst <= 0.005, "{clip:?}: a step's score differs by {worst} from openWakeWord's");
        assert_eq!(best(ours) >= 0.5, wakes, "{voice} {wpm} wpm {text:?}: best score {}", best(ours));
        assert_eq!(best(theirs) >= 0.5, wakes, "openWakeWord, {voice} {wpm} wpm {text:?}: best score {}", best(theirs));
    }
    // The summary a user reads: a verdict at [wake]'s threshold per file.
    let summary = run_ok(&[&["wake-score"][..], &clip_args].concat());
    let lines: Vec<&str> = summary.stdout.lines().collect();
    assert_eq!(lines.len(), clips.len(), "{}", summary.stdout);
    for (line, (_, _, _, wakes)) in lines.iter().zip(said) {
        assert!(line.contains("hey_jarvis_v0.1: best "), "{line}");
        assert_eq!(line.contains("; wakes at "), wakes, "{line}");
        assert_eq!(line.contains("; does not wake (threshold 0.5, 1 step)"), !wakes, "{line}");
    }
}
