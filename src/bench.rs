//! Benchmarks anyone can run: `voxd bench` (the pipeline's latency on a spoken
//! corpus) and `voxd bench-asr` (Whisper's encoder window: time and accuracy).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Lowercase words, punctuation dropped, digits and "Mr" spelled out: how
/// transcripts are compared.
pub fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .replace(['-', '—'], " ")
        .split_whitespace()
        .map(|w| w.chars().filter(|c| c.is_alphanumeric() || *c == '\'').collect::<String>())
        .filter(|w| !w.is_empty())
        .map(|w| {
            match w.as_str() {
                "1" => "one", "2" => "two", "3" => "three", "4" => "four", "5" => "five",
                "6" => "six", "7" => "seven", "8" => "eight", "9" => "nine", "10" => "ten",
                "mr" => "mister",
                other => other,
            }
            .to_string()
        })
        .collect()
}

/// Levenshtein distance between two sequences.
fn edit_distance<T: PartialEq>(r: &[T], h: &[T]) -> usize {
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut cur = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(rw != hw)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[h.len()]
}

/// Word error rate (word-level edit distance over the reference length).
pub fn wer(reference: &str, hypothesis: &str) -> f64 {
    let r = words(reference);
    edit_distance(&r, &words(hypothesis)) as f64 / r.len().max(1) as f64
}

/// Character error rate over the letters and digits alone (spaces ignored): fairer
/// than WER for judging synthesised speech, where "France is" heard as "Francis" is
/// one letter, not two words, wrong.
pub fn cer(reference: &str, hypothesis: &str) -> f64 {
    let letters = |t: &str| words(t).concat().chars().collect::<Vec<char>>();
    let r = letters(reference);
    edit_distance(&r, &letters(hypothesis)) as f64 / r.len().max(1) as f64
}

/// Speech with known words: the pocketsphinx test clips and jfk.wav (installed by
/// set-up).
pub fn known_speech() -> Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    let ps = Path::new("/usr/share/pocketsphinx/test/data");
    for (dir, list) in [("librivox", "transcription"), ("cards", "cards.transcription")] {
        let refs = std::fs::read_to_string(ps.join(dir).join(list)).with_context(|| format!("reading {}/{dir}/{list} (Debian pocketsphinx-testdata)", ps.display()))?;
        for line in refs.lines() {
            let Some((text, id)) = line.rsplit_once(" (") else { continue };
            let text = text.replace("<s>", "").replace("</s>", "").trim().to_string();
            out.push((ps.join(dir).join(format!("{}.wav", id.trim_end_matches(')'))), text));
        }
    }
    let jfk = crate::paths::cache_dir().join("testdata/jfk.wav");
    if jfk.exists() {
        out.push((jfk, "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.".into()));
    }
    Ok(out)
}

/// Percentile (nearest rank) of unsorted values.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llm_speed_weighs_each_turn_by_its_tokens() {
        // 10 tokens at 10 tok/s (1 s) and 30 at 30 tok/s (1 s): 40 tokens in 2 s.
        let s = LlmSpeed::over([(10, 10.0, 4, 8.0), (30, 30.0, 12, 8.0), (0, 0.0, 0, 0.0)]);
        assert_eq!(s, LlmSpeed { prompt_tok_s: 20.0, generate_tok_s: 8.0 });
        assert_eq!(LlmSpeed::over([]), LlmSpeed::default());
        let line = llm_speed_line("m", 2, LlmSpeed { prompt_tok_s: 18.0, generate_tok_s: 9.0 }, LlmSpeed { prompt_tok_s: 36.0, generate_tok_s: 10.0 });
        assert!(line.contains("generation 9.0 tok/s in the pipeline, 10.0 alone (90 %)") && line.contains("(50 %)"), "{line}");
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(percentile(&v, 50.0), Some(3.0));
        assert_eq!(percentile(&v, 95.0), Some(5.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn work_done_during_the_hangover_is_no_share_of_the_round_trip() {
        use crate::pipeline::telemetry::Marks;
        // A reply started at a pause: transcript and first token before the endpoint.
        let m = Marks { endpoint: Some(300.0), asr_done: Some(150.0), llm_first_token: Some(250.0), first_sentence: Some(330.0), tts_first_audio: Some(410.0), first_audio: Some(412.0), ..Marks::default() };
        let t = stage_times(&m, 70.0);
        let own: Vec<f64> = t.iter().map(|x| x.0).collect();
        let share: Vec<f64> = t.iter().map(|x| x.1).collect();
        assert_eq!(own, vec![300.0, 70.0, 100.0, 80.0, 80.0, 2.0]);
        assert_eq!(share, vec![300.0, 0.0, 0.0, 30.0, 80.0, 2.0]);
        assert_eq!(share.iter().sum::<f64>(), 412.0, "the shares add up to the round trip");
        // Without speculation, every stage comes after the endpoint.
        let m = Marks { endpoint: Some(300.0), asr_done: Some(420.0), llm_first_token: Some(500.0), first_sentence: Some(580.0), tts_first_audio: Some(660.0), first_audio: Some(661.0), ..Marks::default() };
        let share: Vec<f64> = stage_times(&m, 118.0).iter().map(|x| x.1).collect();
        assert_eq!(share, vec![300.0, 120.0, 80.0, 80.0, 80.0, 1.0]);
    }

    #[test]
    fn wer_counts_word_edits() {
        assert_eq!(wer("turn on the lights", "Turn on the lights."), 0.0);
        assert_eq!(wer("turn on the lights", "turn off the lights"), 0.25);
        assert_eq!(wer("ten of clubs", "10 of clubs"), 0.0);
    }
}

/// A spoken corpus: `NN.wav` files, each with the words said in `NN.txt`.
pub fn load_corpus(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let mut items: Vec<(PathBuf, String)> = std::fs::read_dir(dir)
        .with_context(|| format!("reading corpus {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "wav"))
        .map(|wav| {
            let txt = wav.with_extension("txt");
            let text = std::fs::read_to_string(&txt).with_context(|| format!("{} has no transcript {}", wav.display(), txt.display()))?;
            Ok((wav, text.trim().to_string()))
        })
        .collect::<Result<_>>()?;
    items.sort();
    if items.is_empty() {
        anyhow::bail!("corpus {} holds no .wav files", dir.display());
    }
    Ok(items)
}

/// The corpus as one conversation: each question after `lead_s` of silence, then
/// `gap_s` of silence for the answer. Returns 16 kHz samples.
pub fn conversation(corpus: &[(PathBuf, String)], lead_s: f64, gap_s: f64) -> Result<Vec<f32>> {
    let rate = crate::audio::ASR_RATE_HZ;
    let silence = |s: f64| std::iter::repeat(0.0f32).take((s * rate as f64) as usize);
    let mut out = Vec::new();
    for (wav, _) in corpus {
        out.extend(silence(lead_s));
        out.extend(crate::audio::read_wav(wav, rate)?.samples);
        out.extend(silence(gap_s));
    }
    Ok(out)
}

/// p50/p95 of each latency mark, and where the round trip goes stage by stage.
pub fn report(turns: &[crate::pipeline::telemetry::TurnRecord]) -> String {
    use std::fmt::Write;
    let answered: Vec<_> = turns.iter().filter(|t| !t.cancelled && t.marks.first_audio.is_some()).collect();
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.0}"));
    let mut out = String::new();
    let _ = writeln!(out, "{:<34} {:>8} {:>8}", "mark (ms after speech end)", "p50", "p95");
    for (name, f) in MARKS {
        let v: Vec<f64> = answered.iter().filter_map(|t| f(&t.marks)).collect();
        let _ = writeln!(out, "{:<34} {:>8} {:>8}", name, fmt(percentile(&v, 50.0)), fmt(percentile(&v, 95.0)));
    }
    let speculative = answered.iter().filter(|t| t.speculative).count();
    let abandoned = turns.iter().map(|t| t.counters.speculations_abandoned).max().unwrap_or(0);
    let _ = writeln!(
        out,
        "\nreplies started during the hangover (speculation): {speculative} of {}; guesses the user spoke through: {abandoned}",
        answered.len()
    );
    // A stage's own time runs from the mark before it; its share of the round trip is
    // the part that came after everything before it, the endpoint included — work
    // done during the hangover costs the user nothing. The shares add up to the
    // round trip turn by turn.
    let _ = writeln!(out, "\nwhere the round trip goes (p50)                  own time  critical path");
    let stages: Vec<(&str, Vec<(f64, f64)>)> = STAGES.iter().map(|(name, _)| (*name, Vec::new())).collect();
    let mut stages = stages;
    for t in &answered {
        for (i, (own, share)) in stage_times(&t.marks, t.asr.ms).into_iter().enumerate() {
            stages[i].1.push((own, share));
        }
    }
    let total: f64 = stages.iter().filter_map(|(_, v)| percentile(&v.iter().map(|x| x.1).collect::<Vec<_>>(), 50.0)).sum();
    for (name, v) in &stages {
        let own = percentile(&v.iter().map(|x| x.0).collect::<Vec<_>>(), 50.0).unwrap_or(0.0);
        let share = percentile(&v.iter().map(|x| x.1).collect::<Vec<_>>(), 50.0).unwrap_or(0.0);
        let _ = writeln!(out, "{:<46} {:>8.0} {:>8.0} {:>4.0}%", name, own, share, 100.0 * share / total.max(1e-9));
    }
    out
}

pub type MarkFn = fn(&crate::pipeline::telemetry::Marks) -> Option<f64>;

const MARKS: [(&str, MarkFn); 7] = [
    ("endpoint", |m| m.endpoint),
    ("asr_done", |m| m.asr_done),
    ("llm_first_token", |m| m.llm_first_token),
    ("first_sentence", |m| m.first_sentence),
    ("tts_first_audio", |m| m.tts_first_audio),
    ("first_audio = round trip", |m| m.first_audio),
    ("turn_done", |m| m.turn_done),
];

/// The stages on the way to the first sound, each ending at a mark.
pub const STAGES: [(&str, MarkFn); 6] = [
    ("hangover (speech end → endpoint)", |m| m.endpoint),
    ("asr (→ transcript)", |m| m.asr_done),
    ("llm (→ first token)", |m| m.llm_first_token),
    ("first clause (→ first sentence)", |m| m.first_sentence),
    ("tts (→ first audio ready)", |m| m.tts_first_audio),
    ("output (→ first sample heard)", |m| m.first_audio),
];

/// (own time, share of the round trip) of each stage in `STAGES` for one turn. ASR's
/// own time is Whisper's (`asr_ms`): its start is not a mark.
pub fn stage_times(m: &crate::pipeline::telemetry::Marks, asr_ms: f64) -> Vec<(f64, f64)> {
    let mut previous = 0.0f64; // the mark before, in pipeline order
    let mut reached = 0.0f64; // the latest of all marks so far
    STAGES
        .iter()
        .enumerate()
        .map(|(i, (_, f))| {
            let at = f(m).unwrap_or(previous);
            let own = if i == 1 { asr_ms } else { at - previous };
            let share = (at - reached).max(0.0);
            previous = at;
            reached = reached.max(at);
            (own, share)
        })
        .collect()
}

/// The configurations `voxd bench --ablate` compares: as configured, then with each
/// latency measure switched off in turn.
pub fn ablations(config: &crate::config::Config) -> Vec<(&'static str, crate::config::Config)> {
    let off = |name, change: fn(&mut crate::config::Config)| {
        let mut c = config.clone();
        change(&mut c);
        (name, c)
    };
    vec![
        ("voxd (all measures on)", config.clone()),
        off("without speculation (reply starts at the endpoint)", |c| c.vad.speculate_after_ms = 0),
        off("without reading ahead while the user speaks", |c| c.vad.partial_every_ms = 0),
        off("without the KV prefix cache", |c| c.llm.reuse_prefix = false),
        off("without encoder scaling (full 30 s window)", |c| c.asr.scale_encoder = false),
        off("without a phrase as the first piece (a sentence/clause)", |c| c.llm.first_phrase_words = 0),
        off("without clause streaming (whole reply, then tts)", |c| c.llm.stream_sentences = false),
    ]
}

/// The round trip of each configuration (and the reference stack), with the
/// difference to the first and the first's speed-up over the reference.
pub fn summary(rows: &[(String, Option<f64>, Option<f64>)]) -> String {
    use std::fmt::Write;
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.0}"));
    let mut out = String::new();
    let _ = writeln!(out, "{:<58} {:>8} {:>8} {:>14}", "round trip (ms), same audio, one run", "p50", "p95", "p50 vs first");
    let first = rows.first().and_then(|r| r.1);
    for (i, (name, p50, p95)) in rows.iter().enumerate() {
        let delta = match (i, p50, first) {
            (0, _, _) => "-".to_string(),
            (_, Some(p), Some(f)) => format!("{:+.0} ({:.2}x)", p - f, p / f),
            _ => "-".to_string(),
        };
        let _ = writeln!(out, "{:<58} {:>8} {:>8} {:>14}", name, fmt(*p50), fmt(*p95), delta);
    }
    out
}

/// How the replies of a run were heard (`voxd bench`, transcribed back).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HeardBack {
    pub replies: usize,
    /// Mean word error rate of what Whisper heard against the words spoken.
    pub wer: f64,
    /// The voice's time per word, first voiced sample to last, over all replies.
    pub ms_per_word: f64,
}

impl HeardBack {
    /// From (word error rate, voiced seconds, words) per reply.
    pub fn over(replies: &[(f64, f64, usize)]) -> HeardBack {
        let n = replies.len();
        let words: usize = replies.iter().map(|r| r.2).sum();
        let voiced_s: f64 = replies.iter().map(|r| r.1).sum();
        HeardBack {
            replies: n,
            wer: replies.iter().map(|r| r.0).sum::<f64>() / n.max(1) as f64,
            ms_per_word: voiced_s * 1000.0 / words.max(1) as f64,
        }
    }
}

/// The heard-back figures of each configuration, beside each other.
pub fn heard_back_table(rows: &[(String, HeardBack)]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "{:<58} {:>8} {:>8} {:>12}", "replies heard back (Whisper on what was played)", "replies", "WER", "ms per word");
    for (name, h) in rows {
        let _ = writeln!(out, "{:<58} {:>8} {:>8.3} {:>12.0}", name, h.replies, h.wer, h.ms_per_word);
    }
    out
}

/// An LLM's speed over a set of turns: tokens over the time they took, all turns
/// together (a turn's rate weighs as much as its tokens).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LlmSpeed {
    pub prompt_tok_s: f64,
    pub generate_tok_s: f64,
}

impl LlmSpeed {
    /// From (evaluated tokens, their tok/s, generated tokens, their tok/s) per turn.
    pub fn over(turns: impl IntoIterator<Item = (usize, f64, usize, f64)>) -> LlmSpeed {
        let (mut prompt, mut prompt_s, mut generated, mut generate_s) = (0.0, 0.0, 0.0, 0.0);
        for (evaluated, prompt_rate, made, generate_rate) in turns {
            if evaluated > 0 && prompt_rate > 0.0 {
                prompt += evaluated as f64;
                prompt_s += evaluated as f64 / prompt_rate;
            }
            if made > 0 && generate_rate > 0.0 {
                generated += made as f64;
                generate_s += made as f64 / generate_rate;
            }
        }
        let rate = |tokens: f64, s: f64| if s > 0.0 { tokens / s } else { 0.0 };
        LlmSpeed { prompt_tok_s: rate(prompt, prompt_s), generate_tok_s: rate(generated, generate_s) }
    }

    /// The pipeline's turns, as the latency log records them.
    pub fn of(turns: &[crate::pipeline::telemetry::TurnRecord]) -> LlmSpeed {
        LlmSpeed::over(turns.iter().map(|t| (t.llm.evaluated_tokens, t.llm.prompt_tok_s, t.llm.generated_tokens, t.llm.generate_tok_s)))
    }
}

/// The line comparing the LLM's speed inside the pipeline with the same model alone.
pub fn llm_speed_line(model: &str, threads: u32, pipeline: LlmSpeed, alone: LlmSpeed) -> String {
    let share = |a: f64, b: f64| if b > 0.0 { format!("{:.0} %", 100.0 * a / b) } else { "-".into() };
    format!(
        "LLM {model}, {threads} threads, the same prompts: generation {:.1} tok/s in the pipeline, {:.1} alone ({}); prompt {:.1} tok/s in the pipeline, {:.1} alone ({})",
        pipeline.generate_tok_s,
        alone.generate_tok_s,
        share(pipeline.generate_tok_s, alone.generate_tok_s),
        pipeline.prompt_tok_s,
        alone.prompt_tok_s,
        share(pipeline.prompt_tok_s, alone.prompt_tok_s)
    )
}

/// The reference stack's figures on the same audio.
pub struct Reference {
    pub describe: String,
    pub p50: f64,
    pub p95: f64,
    /// p50 of each of its stages after the endpoint: Whisper, the whole reply, the
    /// first sentence's audio.
    pub asr_p50: f64,
    pub llm_p50: f64,
    pub tts_p50: f64,
}

/// Runs `scripts/reference_stack.py` (webrtcvad + faster-whisper + llama-cpp-python +
/// piper-tts) on `input` with the models voxd is configured with, if
/// `scripts/setup-reference` has installed it. None when it is not installed.
pub fn reference(input: &Path, models: &ReferenceModels) -> Result<Option<Reference>> {
    let venv = crate::paths::cache_dir().join("reference-venv/bin/python");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/reference_stack.py");
    if !venv.exists() || !models.whisper_ct2.exists() {
        return Ok(None);
    }
    let out = std::process::Command::new(&venv)
        .arg(&script)
        .arg("--input")
        .arg(input)
        .arg("--whisper")
        .arg(&models.whisper_ct2)
        .arg("--llm")
        .arg(&models.llm)
        .arg("--voice")
        .arg(&models.voice)
        .args(["--hangover-ms", &models.hangover_ms.to_string(), "--threads", &models.threads.to_string()])
        .arg("--system-prompt")
        .arg(&models.system_prompt)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        anyhow::bail!("the reference stack failed: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
    }
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).with_context(|| format!("reference output {line:?}")))
        .collect::<Result<_>>()?;
    let p50 = |key: &str| percentile(&lines.iter().map(|v| v[key].as_f64().unwrap_or(f64::NAN)).collect::<Vec<_>>(), 50.0).unwrap_or(f64::NAN);
    let rt: Vec<f64> = lines.iter().map(|v| v["round_trip_ms"].as_f64().unwrap_or(f64::NAN)).collect();
    Ok(Some(Reference {
        describe: "webrtcvad + faster-whisper + llama-cpp-python + piper-tts".into(),
        p50: percentile(&rt, 50.0).unwrap_or(f64::NAN),
        p95: percentile(&rt, 95.0).unwrap_or(f64::NAN),
        asr_p50: p50("asr_ms"),
        llm_p50: p50("llm_ms"),
        tts_p50: p50("tts_ms"),
    }))
}

/// What the reference stack runs: the same models, in the forms its engines read.
pub struct ReferenceModels {
    /// The CTranslate2 directory voxd's ggml was converted from.
    pub whisper_ct2: PathBuf,
    pub llm: PathBuf,
    pub voice: PathBuf,
    pub hangover_ms: u32,
    pub threads: u32,
    pub system_prompt: String,
}
