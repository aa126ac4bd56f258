//! `voxd select`: candidates measured in their own processes, gated, the fastest
//! passing one chosen — and `voxd run` using it.

use crate::util::*;

/// models.toml with every gate open (the test LLMs fail the real gates).
fn lenient_table(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let mut table = String::new();
    for line in voxd::catalog::BUILTIN.lines() {
        match line.split_once(" = ") {
            Some((key, _)) if ["tool_call_accuracy", "valid_output", "no_tool_precision", "spoken_discipline", "multi_turn_stability"].contains(&key) => table += &format!("{key} = 0.0\n"),
            Some((key, _)) if ["invented_states", "leaks"].contains(&key) => table += &format!("{key} = 1000\n"),
            _ => table += &format!("{line}\n"),
        }
    }
    let models_toml = dir.path().join("models.toml");
    std::fs::write(&models_toml, table).unwrap();
    let config = dir.path().join("voxd.toml");
    std::fs::write(&config, format!("[paths]\nmodels_toml = \"{}\"\n", models_toml.display())).unwrap();
    config
}

#[test]
fn select_measures_each_candidate_chooses_one_and_voxd_run_uses_it() {
    let dir = tempdir();
    let state = dir.path().join("state");
    let report = dir.path().join("report");
    let lenient = lenient_table(&dir);
    let select = |config: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["--config", config.to_str().unwrap(), "select", "--quick", "--report", report.to_str().unwrap()];
        args.extend(extra);
        run_cmd(voxd().env("XDG_STATE_HOME", &state).args(&args))
    };
    let r = select(&lenient, &["--model", "smollm2-135m-instruct", "--model", "qwen2.5-coder-0.5b-instruct"]);
    assert!(r.ok, "{}", r.stderr);
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(report.with_extension("json")).unwrap()).unwrap();
    let verdicts = json["verdicts"].as_array().unwrap();
    assert_eq!(verdicts.len(), 2, "{}", r.stderr);
    for v in verdicts {
        let s = &v["measured"]["speed"];
        for k in ["load_ms", "prompt_tok_s", "generate_tok_s", "first_token_uncached_ms", "first_token_cached_ms", "first_sentence_ms", "answer_50_tokens_ms"] {
            assert!(s[k].as_f64().is_some_and(|x| x > 0.0), "{} {k}: {s}", v["id"]);
        }
        assert!(s["first_token_cached_ms"].as_f64() < s["first_token_uncached_ms"].as_f64(), "the cached preamble is what makes the first token quick: {s}");
        assert!(v["measured"]["peak_rss_mib"].as_f64().is_some_and(|m| m > 50.0), "{v}");
        assert!(v["measured"]["quality"]["tool_call_accuracy"].is_number());
    }
    // Both pass gates at zero: the faster to its first sentence is chosen.
    let fastest = verdicts.iter().min_by(|a, b| a["measured"]["speed"]["first_sentence_ms"].as_f64().partial_cmp(&b["measured"]["speed"]["first_sentence_ms"].as_f64()).unwrap()).unwrap()["id"].as_str().unwrap().to_string();
    assert_eq!(json["selected"], fastest.as_str());
    let markdown = std::fs::read_to_string(report.with_extension("md")).unwrap();
    for needle in ["## Speed", "## Quality gates", "smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", &format!("**Selected: `{fastest}`**")] {
        assert!(markdown.contains(needle), "report lacks {needle}:\n{markdown}");
    }
    let selection = std::fs::read_to_string(state.join("voxd/selection.toml")).unwrap();
    assert!(selection.contains(&format!("llm = \"{fastest}\"")), "{selection}");

    // With the real gates the 135M model fails, and --dry-run leaves the choice alone.
    let strict = dir.path().join("strict.toml");
    std::fs::write(&strict, "").unwrap();
    let r = select(&strict, &["--dry-run", "--model", "smollm2-135m-instruct"]);
    assert!(r.ok, "{}", r.stderr);
    assert!(std::fs::read_to_string(report.with_extension("md")).unwrap().contains("No candidate passes every gate"));
    assert!(r.stdout.contains("tool-call accuracy") && r.stdout.contains("✗"), "{}", r.stdout);
    assert_eq!(std::fs::read_to_string(state.join("voxd/selection.toml")).unwrap(), selection, "--dry-run changes nothing");

    // voxd run, with no llm.model configured, answers with the selected model.
    let (input, _) = conversation(&dir, "q", &[(0.5, "What is the capital of France?")], 3.0);
    let (out, log) = (dir.path().join("out.wav"), dir.path().join("turns.jsonl"));
    let r = run_cmd(voxd().env("XDG_STATE_HOME", &state).args(["run", "--input", input.to_str().unwrap(), "--output", out.to_str().unwrap(), "--latency-log", log.to_str().unwrap()]));
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stderr.contains("chosen by `voxd select`"), "{}", r.stderr);
    assert_eq!(turns(&log)[0].models.llm, fastest);
}
