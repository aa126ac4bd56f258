//! The voice-relevant speed of one LLM: how long until it starts talking, and how fast
//! it goes on — measured on the prompt the pipeline really uses (persona, tools and
//! examples), the way the pipeline uses it (the preamble cached).

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::engine::llm::{Llm, LlmOptions, Message, Role};
use crate::pipeline::splitter::Splitter;

/// Medians over the repetitions.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Speed {
    pub load_ms: f64,
    /// Prompt processing of the whole (uncached) prompt, tokens per second.
    pub prompt_tok_s: f64,
    pub generate_tok_s: f64,
    /// From the question to the first token with nothing cached (the whole preamble
    /// evaluated), and with the preamble cached (as the pipeline runs).
    pub first_token_uncached_ms: f64,
    pub first_token_cached_ms: f64,
    /// From the question to the first speakable sentence or clause: what the user
    /// waits for (plus the voice). The selection ranks by this.
    pub first_sentence_ms: f64,
    /// From the question to the 50th token of a long answer.
    pub answer_50_tokens_ms: f64,
    /// Tokens in the preamble (persona, tools, examples).
    pub preamble_tokens: usize,
    pub repetitions: usize,
}

const QUESTION: &str = "What is the capital of France?";
const LONG_QUESTION: &str = "Tell me about the history of the city of Rome.";

/// Measures `path` `repetitions` times (a fresh load each time) and keeps medians.
pub fn speed(path: &Path, id: &str, options: &LlmOptions, preamble: &[Message], repetitions: usize) -> anyhow::Result<Speed> {
    let mut runs: Vec<Speed> = Vec::new();
    for _ in 0..repetitions.max(1) {
        let llm = Llm::load(path, id, options.clone())?;
        runs.push(once(&llm, preamble)?);
    }
    let median = |f: fn(&Speed) -> f64| crate::bench::percentile(&runs.iter().map(f).collect::<Vec<_>>(), 50.0).unwrap_or(f64::NAN);
    Ok(Speed {
        load_ms: median(|s| s.load_ms),
        prompt_tok_s: median(|s| s.prompt_tok_s),
        generate_tok_s: median(|s| s.generate_tok_s),
        first_token_uncached_ms: median(|s| s.first_token_uncached_ms),
        first_token_cached_ms: median(|s| s.first_token_cached_ms),
        first_sentence_ms: median(|s| s.first_sentence_ms),
        answer_50_tokens_ms: median(|s| s.answer_50_tokens_ms),
        preamble_tokens: runs[0].preamble_tokens,
        repetitions: runs.len(),
    })
}

fn with(preamble: &[Message], question: &str) -> Vec<Message> {
    let mut m = preamble.to_vec();
    m.push(Message { role: Role::User, content: question.into() });
    m
}

fn once(llm: &Llm, preamble: &[Message]) -> anyhow::Result<Speed> {
    // Nothing cached: the whole prompt is evaluated before the first token.
    let mut cold = llm.session()?;
    let mut stop_after_first = |_: &str| false;
    let g = cold.generate(&with(preamble, QUESTION), None, &mut stop_after_first)?;
    let (prompt_tok_s, first_token_uncached_ms) = (g.prompt_tok_s(), g.first_token_ms);
    drop(cold);

    // As the pipeline runs: the preamble sits in the cache, the question is new.
    let mut warm = llm.session()?;
    let preamble_tokens = warm.prefill(&with(preamble, ""))?;
    let started = Instant::now();
    let mut splitter = Splitter::default();
    let mut first_sentence_ms = None;
    let g = warm.generate(&with(preamble, QUESTION), None, |piece| {
        if first_sentence_ms.is_none() && !splitter.push(piece).is_empty() {
            first_sentence_ms = Some(crate::engine::ms_since(started));
        }
        true
    })?;
    let first_token_cached_ms = g.first_token_ms;
    // A reply that is one short sentence ends without a boundary: it is whole at the end.
    let first_sentence_ms = first_sentence_ms.unwrap_or(g.first_token_ms + g.generate_ms);

    // A long answer, cut at 50 tokens: generation speed and the time to say something long.
    let started = Instant::now();
    let mut tokens = 0;
    let g = warm.generate(&with(preamble, LONG_QUESTION), None, |_| {
        tokens += 1;
        tokens < 50
    })?;
    let answer_50_tokens_ms = crate::engine::ms_since(started);
    Ok(Speed {
        load_ms: llm.load_ms,
        prompt_tok_s,
        generate_tok_s: g.generate_tok_s(),
        first_token_uncached_ms,
        first_token_cached_ms,
        first_sentence_ms,
        answer_50_tokens_ms,
        preamble_tokens,
        repetitions: 1,
    })
}

/// The process's peak resident memory (VmHWM), in MiB: a candidate measured in its own
/// process reports what it needed, model and context together.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kb / 1024.0)
}
