//! Measuring: the pipeline's latency, Whisper's window, tool calls, and choosing the LLM.

use super::*;

pub(super) fn bench_pipeline(env: &Env, corpus: Option<PathBuf>, latency_log: Option<PathBuf>, gap_s: f64, no_reference: bool, ablate: bool, llm: Option<String>) -> Result<()> {
    use crate::bench;
    let chosen;
    let env = match llm {
        Some(id) => {
            let mut config = env.config.clone();
            config.llm.model = id;
            chosen = env.with_config(config);
            &chosen
        }
        None => env,
    };
    let dir = corpus.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/corpus"));
    let items = bench::load_corpus(&dir)?;
    let audio = bench::conversation(&items, 1.0, gap_s)?;
    let input = std::env::temp_dir().join(format!("voxd-bench-{}.wav", std::process::id()));
    audio::write_wav(&input, &audio, audio::ASR_RATE_HZ)?;
    let variants = if ablate { bench::ablations(&env.config) } else { vec![("voxd", env.config.clone())] };
    let mut summary: Vec<(String, Option<f64>, Option<f64>)> = Vec::new();
    let mut heard: Vec<(String, bench::HeardBack)> = Vec::new();
    for (i, (name, config)) in variants.into_iter().enumerate() {
        let variant = env.with_config(config);
        let engines = variant.engines(false)?;
        let models = engines.models.clone();
        if i == 0 {
            println!(
                "voxd bench: {} questions from {}, {:.0} s of audio in real time; {} + {} + {}; hangover {} ms",
                items.len(),
                dir.display(),
                audio.len() as f64 / audio::ASR_RATE_HZ as f64,
                models.asr,
                models.llm,
                models.tts,
                env.config.vad.hangover_ms
            );
        } else {
            eprintln!("bench: {name} …");
        }
        let log = if i == 0 { latency_log.clone() } else { None };
        let report = pipeline::run(engines, variant.run_options(true, log)?, pipeline::Io::File(audio.clone()))?;
        let turns = &report.turns;
        if i == 0 {
            let heard = turns.iter().zip(&items).map(|(t, (_, text))| bench::wer(text, &t.transcript)).sum::<f64>() / turns.len().max(1) as f64;
            println!("{} of {} questions answered, mean transcript WER {:.3}\n", turns.iter().filter(|t| !t.cancelled).count(), items.len(), heard);
            print!("{}", bench::report(turns));
            // The engines are gone with the run: the model now runs alone.
            let alone = llm_alone(env, turns)?;
            println!("\n{}", bench::llm_speed_line(&models.llm, env.config.llm.threads, bench::LlmSpeed::of(turns), alone));
        }
        let rt: Vec<f64> = turns.iter().filter(|t| !t.cancelled).filter_map(|t| t.round_trip_ms).collect();
        summary.push((name.to_string(), bench::percentile(&rt, 50.0), bench::percentile(&rt, 95.0)));
        heard.push((name.to_string(), heard_back(env, &report)?));
    }
    if !no_reference {
        let reference_models = bench::ReferenceModels {
            // scripts/setup-reference unpacks the CTranslate2 original of the ASR model here.
            whisper_ct2: crate::paths::cache_dir().join("reference").join(env.resolve(Role::Asr, None)?.id),
            llm: env.resolve(Role::Llm, None)?.path,
            voice: env.resolve(Role::Tts, None)?.path,
            hangover_ms: env.config.vad.hangover_ms,
            threads: env.config.llm.threads,
            system_prompt: env.config.llm.system_prompt.clone(),
        };
        match bench::reference(&input, &reference_models)? {
            Some(r) => {
                println!(
                    "\nreference stack ({}), same audio, models and hangover: p50 after the endpoint: Whisper {:.0} ms (30 s window), whole reply {:.0} ms, first sentence's audio {:.0} ms",
                    r.describe, r.asr_p50, r.llm_p50, r.tts_p50
                );
                summary.push(("reference stack".to_string(), Some(r.p50), Some(r.p95)));
            }
            None => println!("\nreference stack not installed (scripts/setup-reference): no comparison"),
        }
    }
    let _ = std::fs::remove_file(&input);
    print!("\n{}", bench::summary(&summary));
    print!("\n{}", bench::heard_back_table(&heard));
    Ok(())
}

/// The replies as the user heard them: each turn's played audio, from its first
/// sample to the end of the turn, transcribed back by Whisper (the configured model,
/// loaded after the run) and compared with the words sent to the voice — what a cut
/// between two pieces costs in clarity — and how long the voice took per word (a
/// pause at a cut lengthens it).
fn heard_back(env: &Env, report: &pipeline::RunReport) -> Result<crate::bench::HeardBack> {
    let Some(played) = &report.recording else { return Ok(crate::bench::HeardBack::default()) };
    let mut asr = env.asr(None)?;
    let mut replies = Vec::new();
    for t in report.turns.iter().filter(|t| !t.cancelled && !t.spoken.is_empty()) {
        let (Some(first), Some(done)) = (t.marks.first_audio, t.marks.turn_done) else { continue };
        let at = |ms: f64| (((t.speech_end_s + ms / 1000.0).max(0.0) * played.rate_hz as f64) as usize).min(played.samples.len());
        // From a moment before the reply (Whisper mishears a word that starts at the
        // clip's first sample), and 29 s at most (it hears 30).
        let start = at(first - 300.0);
        let end = at(done).min(start + 29 * played.rate_hz as usize);
        if end <= start {
            continue;
        }
        // One reply that cannot be heard back is logged, not the end of the bench.
        let heard = audio::resample(&played.samples[start..end], played.rate_hz, audio::ASR_RATE_HZ).map_err(anyhow::Error::from).and_then(|reply| Ok((asr.transcribe(&reply)?.text, reply)));
        let (text, reply) = match heard {
            Ok(heard) => heard,
            Err(e) => {
                tracing::warn!("turn {}: its reply could not be heard back: {e:#}", t.turn);
                continue;
            }
        };
        let voiced_s = audio::voiced_span(&reply) as f64 / audio::ASR_RATE_HZ as f64;
        tracing::info!("turn {} heard back: {text:?} (spoken: {:?})", t.turn, t.spoken);
        replies.push((crate::bench::wer(&t.spoken, &text), voiced_s, crate::bench::words(&t.spoken).len()));
    }
    Ok(crate::bench::HeardBack::over(&replies))
}

/// The LLM alone on what the pipeline's LLM just answered: the same model, threads,
/// preamble (in the KV cache first, as in the pipeline), questions and, if the turns
/// had it, history — nothing else running. Its speed is what the pipeline's should
/// come close to.
fn llm_alone(env: &Env, turns: &[pipeline::telemetry::TurnRecord]) -> Result<crate::bench::LlmSpeed> {
    let llm = env.llm(None)?;
    let format = crate::tools::CallFormat::of(&env.config.tools, &llm);
    let preamble = crate::tools::preamble(&env.config.llm.system_prompt, &env.config.tool, &crate::tools::Home::default(), &env.config.tools, format);
    let mut session = llm.session()?;
    let mut warm = preamble.clone();
    warm.push(Message { role: ChatRole::User, content: String::new() });
    session.prefill(&warm)?;
    let with_history = turns.iter().any(|t| t.llm.history_turns > 0);
    let mut history: Vec<Message> = Vec::new();
    let mut speeds = Vec::new();
    for t in turns.iter().filter(|t| !t.cancelled && !t.transcript.is_empty()) {
        let question = Message { role: ChatRole::User, content: t.transcript.clone() };
        let prompt: Vec<Message> = preamble.iter().chain(&history).chain([&question]).cloned().collect();
        let g = session.generate(&prompt, None, |_| true)?;
        speeds.push((g.evaluated_tokens(), g.prompt_tok_s(), g.generated_tokens, g.generate_tok_s()));
        if with_history {
            history.extend([question, Message { role: ChatRole::Assistant, content: g.text.trim().to_string() }]);
        }
    }
    Ok(crate::bench::LlmSpeed::over(speeds))
}

pub(super) fn bench_asr(env: &Env, model: Option<&str>) -> Result<()> {
    use crate::bench::{known_speech, wer};
    let clips = known_speech()?;
    let mut asr = env.asr(model)?;
    asr.transcribe(&vec![0.0; audio::ASR_RATE_HZ as usize])?; // warm-up
    let audio: Vec<(audio::Clip, String)> = clips.iter().map(|(p, t)| Ok((audio::read_wav(p, audio::ASR_RATE_HZ)?, t.clone()))).collect::<Result<_>>()?;
    let total_audio: f64 = audio.iter().map(|(c, _)| c.duration_s()).sum();
    println!("{} clips, {:.1} s of speech, model {}, {} thread(s)", audio.len(), total_audio, asr.model_id, env.config.asr.threads);
    println!("{:<34} {:>10} {:>9} {:>9}", "encoder window", "time (ms)", "RTF", "mean WER");
    let fallback = env.config.asr.temperature_fallback;
    let toggled = if fallback { "without" } else { "with" };
    let rows = [
        ("full 30 s".to_string(), false, fallback),
        (format!("scaled (floor {:.1} s)", env.config.asr.min_encoder_s), true, fallback),
        (format!("scaled, {toggled} temp. fallback"), true, !fallback),
    ];
    let mut results = Vec::new();
    for (label, scaled, fallback) in rows {
        asr.set_scale_encoder(scaled);
        asr.set_temperature_fallback(fallback);
        let (mut ms, mut werr) = (0.0, 0.0);
        for ((clip, reference), (path, _)) in audio.iter().zip(&clips) {
            let t = asr.transcribe(&clip.samples)?;
            ms += t.elapsed_ms;
            werr += wer(reference, &t.text);
            tracing::info!("{} ({:.1} s): {:.0} ms, ctx {}, WER {:.2}: {}", path.file_name().unwrap_or_default().to_string_lossy(), clip.duration_s(), t.elapsed_ms, t.audio_ctx, wer(reference, &t.text), t.text);
        }
        println!("{:<34} {:>10.0} {:>9.3} {:>9.3}", label, ms, ms / 1000.0 / total_audio, werr / audio.len() as f64);
        results.push(ms);
    }
    println!("speed-up of the scaled window: {:.2}x; the temperature fallback {} costs {:.2}x the time", results[0] / results[1], if fallback { "(on)" } else { "(off here)" }, if fallback { results[1] / results[2] } else { results[2] / results[1] });
    Ok(())
}

pub(super) fn eval_tools(env: &Env, set: Option<&Path>, home: Option<&str>, quick: bool, model: Option<&str>, style: &crate::tools::ToolsConfig, json: Option<&Path>) -> Result<()> {
    use crate::tools::eval::{self, EvalSet};
    let homes: Vec<(String, EvalSet)> = match set {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            vec![(p.display().to_string(), EvalSet::parse(&text, p)?)]
        }
        None => {
            let all = if quick { eval::quick(eval::homes()?) } else { eval::homes()? };
            let names: Vec<String> = all.iter().map(|(n, _)| n.clone()).collect();
            let chosen: Vec<(String, EvalSet)> = all.into_iter().filter(|(n, _)| home.is_none_or(|h| h == n)).collect();
            if chosen.is_empty() {
                bail!("--home {:?}: no such home; the homes are: {}", home.unwrap_or_default(), names.join(", "));
            }
            chosen
        }
    };
    let llm = env.llm(model)?;
    let cases: usize = homes.iter().map(|(_, s)| s.cases.len()).sum();
    let on = |b: bool| if b { "on" } else { "off" };
    let format = crate::tools::CallFormat::of(style, &llm);
    println!(
        "voxd eval-tools: {cases} requests in {} home{}, model {}, grammar {}, device hints {}, calls as {}",
        homes.len(),
        if homes.len() == 1 { "" } else { "s" },
        llm.model_id,
        on(style.grammar),
        on(style.device_hints),
        format.name()
    );
    let bar = models::progress::Progress::items("evaluating", cases as u64);
    let mut reports = Vec::new();
    for (name, set) in &homes {
        let report = eval::run_home(&llm, &env.config.llm.system_prompt, set, style, |_, r| {
            bar.advance(1);
            tracing::info!("{name}: {} {:?} → {} ({:.0} ms)", if r.correct { "ok " } else { "BAD" }, r.say, r.output, r.ms);
        })?;
        reports.push((name.clone(), report));
    }
    bar.finish();
    for (name, report) in &reports {
        print!("\nhome {name} ({} requests)\n{}", report.cases, report.table());
    }
    let all = eval::Homes::new(reports);
    print!("\n{}", all.table());
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&all)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

pub(super) fn bench_tools(env: &Env, model: Option<String>, gap_s: f64) -> Result<()> {
    use crate::tools::eval::{Expect, EvalSet};
    let set = EvalSet::parse(crate::tools::eval::BUILTIN, Path::new("tests/data/tools-eval.toml"))?;
    // Commands that act at once (a tool that asks "yes or no?" first is another flow).
    let commands: Vec<(String, String, serde_json::Value)> = set
        .cases
        .iter()
        .filter(|c| ["lights", "covers", "scenes"].contains(&c.category.as_str()))
        .filter_map(|c| match &c.expect {
            Expect::Call { name, arguments } if !set.tools.iter().any(|t| &t.name == name && t.confirm) => Some((c.say.clone(), name.clone(), serde_json::Value::Object(arguments.clone()))),
            _ => None,
        })
        .collect();
    let dir = tempfile_dir("voxd-bench-tools")?;
    // The commands, spoken by the configured voice (the same audio every run).
    let mut voice_config = env.config.clone();
    voice_config.tts.variability = 0.0;
    let mut tts = env.with_config(voice_config).tts(None)?;
    let mut corpus = Vec::new();
    for (i, (say, _, _)) in commands.iter().enumerate() {
        let speech = tts.synthesize(say)?;
        let path = dir.join(format!("{i:02}.wav"));
        audio::write_wav(&path, &speech.samples, speech.rate_hz)?;
        corpus.push((path, say.clone()));
    }
    let audio = crate::bench::conversation(&corpus, 1.0, gap_s)?;
    let token = format!("bench-{}", std::process::id());
    let ha = crate::tools::local_ha::LocalHomeAssistant::start(&token)?;
    let token_file = dir.join("token");
    std::fs::write(&token_file, &token)?;
    #[cfg(unix)]
    std::fs::set_permissions(&token_file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    println!(
        "voxd bench-tools: {} commands ({:.0} s of audio in real time) against a Home Assistant endpoint on {}",
        commands.len(),
        audio.len() as f64 / audio::ASR_RATE_HZ as f64,
        ha.url()
    );
    // The same audio three ways: the model decides each call and phrases the
    // confirmation; intents decide the commonest commands; intents plus a fixed
    // confirmation ("Done.") instead of the model's.
    let variants: [(&str, bool, bool); 3] = [("the model decides and confirms", false, false), ("intents decide, the model confirms", true, false), ("intents decide, a template confirms", true, true)];
    let mut results = Vec::new();
    for (label, intents, template) in variants {
        let mut config = env.config.clone();
        if let Some(m) = &model {
            config.llm.model = m.clone();
        }
        config.tool = set.tools.clone();
        if template {
            config.tool.iter_mut().for_each(|t| t.reply = "Done.".into());
        }
        config.intent = if intents { set.intents.clone() } else { Vec::new() };
        config.tools.generated_intents = intents;
        // The endpoint's devices are not the user's: nothing read from it, nothing kept.
        config.home_assistant.expose = Vec::new();
        config.home_assistant.url = ha.url();
        config.home_assistant.token_file = token_file.display().to_string();
        let variant = env.with_config(config);
        eprintln!("bench-tools: {label} …");
        let engines = variant.engines(false)?;
        let llm_id = engines.models.llm.clone();
        let report = pipeline::run(engines, variant.run_options(true, None)?, pipeline::Io::File(audio.clone()))?;
        // Per command (turns follow the commands in order): done right? by an intent? round trip.
        let per_command: Vec<(bool, bool, Option<f64>)> = report
            .turns
            .iter()
            .zip(&commands)
            .map(|(t, (_, name, arguments))| match t.tool_calls.first() {
                Some(call) => (call.ok && &call.name == name && &call.arguments == arguments, call.via == "intent", t.round_trip_ms.filter(|_| !t.cancelled)),
                None => (false, false, None),
            })
            .collect();
        let right = per_command.iter().filter(|c| c.0).count();
        let by_intent = per_command.iter().filter(|c| c.1).count();
        println!("{label} ({llm_id}): {right} of {} commands done right, {by_intent} decided by an intent", commands.len());
        results.push((label, per_command));
    }
    // Apples to apples: the commands an intent decided, on every path.
    let matched: Vec<usize> = results[1].1.iter().enumerate().filter(|(_, c)| c.1).map(|(i, _)| i).collect();
    let mut rows = Vec::new();
    for (label, per_command) in &results {
        let rt: Vec<f64> = matched.iter().filter_map(|&i| per_command.get(i).and_then(|c| c.2)).collect();
        rows.push((label.to_string(), crate::bench::percentile(&rt, 50.0), crate::bench::percentile(&rt, 95.0)));
    }
    let all: Vec<f64> = results[0].1.iter().filter_map(|c| c.2).collect();
    println!(
        "\ntool turns, speech end → first audio of the confirmation, on the {} commands an intent matches (all {} with the model deciding: p50 {:.0} ms)",
        matched.len(),
        commands.len(),
        crate::bench::percentile(&all, 50.0).unwrap_or(f64::NAN)
    );
    print!("{}", crate::bench::summary(&rows));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A fresh directory under the system's temp dir.
pub(super) fn tempfile_dir(prefix: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

pub(super) fn select(env: &Env, ids: &[String], quick: bool, dry_run: bool, report: Option<PathBuf>, repetitions: usize) -> Result<()> {
    use crate::select::{self, Machine, Measured, Report, Verdict};
    let candidates: Vec<&crate::catalog::ModelEntry> = if ids.is_empty() {
        env.catalog.by_role(Role::Llm).collect()
    } else {
        ids.iter()
            .map(|id| env.catalog.get(id).filter(|m| m.role == Role::Llm).with_context(|| format!("{id:?} is not an LLM in models.toml (see `voxd models list`)")))
            .collect::<Result<_>>()?
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let date = crate::paths::utc_date(now);
    let work = tempfile_dir("voxd-select")?;
    let (mut verdicts, mut skipped) = (Vec::new(), Vec::new());
    for (i, entry) in candidates.iter().enumerate() {
        let n = format!("[{}/{}] {}", i + 1, candidates.len(), entry.id);
        if let Some(why) = select::unmeasurable(entry, &env.models_dir)? {
            eprintln!("{n}: skipped, {why}");
            skipped.push((entry.id.clone(), why));
            continue;
        }
        eprintln!("{n}: measuring ({repetitions} repetition{}) …", if repetitions == 1 { "" } else { "s" });
        let started = std::time::Instant::now();
        let out = work.join(format!("{}.json", entry.id));
        let mut child = std::process::Command::new(std::env::current_exe()?);
        if let Some(config) = &env.config.source {
            child.arg("--config").arg(config);
        }
        child.args(["-q", "select-measure", &entry.id, "--repetitions", &repetitions.to_string(), "--out"]).arg(&out);
        if quick {
            child.arg("--quick");
        }
        let result = child.stdout(std::process::Stdio::null()).output().with_context(|| format!("starting the measurement of {}", entry.id))?;
        if !result.status.success() {
            let why = String::from_utf8_lossy(&result.stderr).lines().filter(|l| !l.trim().is_empty()).last().unwrap_or("it crashed").to_string();
            eprintln!("{n}: measuring failed: {why}");
            skipped.push((entry.id.clone(), format!("measuring failed: {why}")));
            continue;
        }
        let measured: Measured = serde_json::from_str(&std::fs::read_to_string(&out)?).with_context(|| format!("reading {}", out.display()))?;
        let failed = env.catalog.gates.failures(&measured.quality);
        let file = match crate::models::status(entry, &env.models_dir)? {
            crate::models::Status::Verified { .. } => "verified",
            _ => "unpinned",
        };
        eprintln!(
            "{n}: first sentence {:.0} ms, tool calls {:.0} %; {} ({:.0} s)",
            measured.speed.first_sentence_ms,
            100.0 * measured.quality.tool_call_accuracy,
            if failed.is_empty() { "passes every gate".to_string() } else { format!("fails: {}", failed.join("; ")) },
            started.elapsed().as_secs_f64()
        );
        verdicts.push(Verdict { id: entry.id.clone(), params: entry.params.clone(), quant: entry.quant.clone(), file: file.into(), measured, failed });
    }
    let _ = std::fs::remove_dir_all(&work);
    let selected = select::choose(&verdicts).map(|v| v.id.clone());
    let report_data = Report { date: date.clone(), machine: Machine::describe(), gates: env.catalog.gates.clone(), quick, threads: env.config.llm.threads, verdicts, skipped, selected: selected.clone() };
    let base = report.unwrap_or_else(|| crate::paths::state_dir().join("select-report"));
    if let Some(dir) = base.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let (md, json) = (base.with_extension("md"), base.with_extension("json"));
    let markdown = report_data.markdown();
    std::fs::write(&md, &markdown).with_context(|| format!("writing {}", md.display()))?;
    std::fs::write(&json, serde_json::to_string_pretty(&report_data)?).with_context(|| format!("writing {}", json.display()))?;
    print!("{markdown}");
    eprintln!("\nreport: {} and {}", md.display(), json.display());
    match (selected, dry_run) {
        (Some(id), false) => eprintln!("selected {id}: `voxd run` uses it from now on ({})", select::write_selection(&id, &date, &md)?.display()),
        (Some(id), true) => eprintln!("would select {id} (--dry-run: the selection is unchanged)"),
        (None, _) => eprintln!("no candidate passes every gate: the selection is unchanged"),
    }
    Ok(())
}

/// One candidate, in a process of its own (see `select`).
pub(super) fn select_measure(env: &Env, id: &str, out: &Path, quick: bool, repetitions: usize) -> Result<()> {
    use crate::select::{gates, measure, Measured};
    let r = env.resolve_verified(Role::Llm, Some(id))?;
    let set = crate::tools::eval::EvalSet::parse(crate::tools::eval::BUILTIN, Path::new("tests/data/tools-eval.toml"))?;
    let persona = &env.config.llm.system_prompt;
    // The call format is the template's: the vocabulary alone says it.
    let style = crate::tools::ToolsConfig::default();
    let format = crate::tools::CallFormat::of(&style, &Llm::load_vocab(&r.path, &r.id, env.llm_options())?);
    let preamble = crate::tools::preamble(persona, &set.tools, &crate::tools::Home::default(), &style, format);
    let speed = measure::speed(&r.path, &r.id, &env.llm_options(), &preamble, repetitions)?;
    let llm = Llm::load(&r.path, &r.id, env.llm_options())?;
    let quality = gates::measure(&llm, persona, quick)?;
    let measured = Measured { id: r.id, speed, quality, peak_rss_mib: measure::peak_rss_mib() };
    std::fs::write(out, serde_json::to_string(&measured)?).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}
