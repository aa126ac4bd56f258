//! Text generation with llama.cpp (llama-cpp-2): chat messages in, a token stream out.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::session::LlamaStateSeqFlags;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;

use super::{ms_since, sniff, FileKind};

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("cannot read LLM model {path}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("LLM model {path} is {found}; expected a GGUF file (e.g. SmolLM2-135M-Instruct.Q4_1.gguf)")]
    WrongKind { path: PathBuf, found: &'static str },
    #[error("llama.cpp could not load {path} ({size} bytes): truncated, corrupt, or an architecture this llama.cpp does not know (its log above says why)")]
    Load { path: PathBuf, size: u64 },
    #[error("llama.cpp backend: {0}")]
    Backend(String),
    #[error("prompt of {prompt} tokens does not fit the {ctx}-token context (llm.context_tokens)")]
    PromptTooLong { prompt: usize, ctx: u32 },
    #[error("llama.cpp failed while {doing}: {reason}")]
    Inference { doing: &'static str, reason: String },
    #[error("llama.cpp rejected the output grammar ({0}); its parse error is on stderr")]
    Grammar(String),
}

#[derive(Debug, Clone)]
pub struct LlmOptions {
    pub threads: u32,
    pub context_tokens: u32,
    pub max_reply_tokens: u32,
    pub temperature: f32,
    pub seed: u32,
    /// Keep what the KV cache holds across calls of a session (see [`Session`]).
    pub reuse_prefix: bool,
    /// Layers on the GPU when the ggml has one (-1: all).
    pub gpu_layers: i32,
}

/// llama.cpp's backend may be initialised once per process.
fn backend() -> Result<&'static LlamaBackend, LlmError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| LlamaBackend::init().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| LlmError::Backend(e.clone()))
}

pub struct Llm {
    model: LlamaModel,
    template: LlamaChatTemplate,
    options: LlmOptions,
    /// Spans of the KV cache may be dropped and what follows moved up (see
    /// [`can_shift`]).
    shiftable: bool,
    pub model_id: String,
    pub load_ms: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

/// A finished reply and what it cost.
#[derive(Debug, Clone)]
pub struct Generation {
    pub text: String,
    /// Tokens in the rendered prompt, of which `cached_tokens` were already in the KV
    /// cache and the rest were evaluated.
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub generated_tokens: usize,
    /// Evaluating the prompt, less any wait for the engine it gives way to.
    pub prompt_ms: f64,
    /// From the end of prompt processing to the last token, less any wait for the
    /// engine it gives way to.
    pub generate_ms: f64,
    /// From the call to the first generated token.
    pub first_token_ms: f64,
    /// Time its decodes waited for the engine they give way to (`Session::give_way_to`).
    pub gave_way_ms: f64,
    /// Stopped by the caller (cancelled) rather than by the model or the token limit.
    pub stopped: bool,
}

impl Generation {
    pub fn evaluated_tokens(&self) -> usize {
        self.prompt_tokens - self.cached_tokens
    }
    /// Prompt-processing speed over the tokens actually evaluated.
    pub fn prompt_tok_s(&self) -> f64 {
        self.evaluated_tokens() as f64 / (self.prompt_ms / 1000.0).max(1e-9)
    }
    pub fn generate_tok_s(&self) -> f64 {
        self.generated_tokens as f64 / (self.generate_ms / 1000.0).max(1e-9)
    }
}

impl Llm {
    pub fn load(path: &Path, model_id: &str, options: LlmOptions) -> Result<Llm, LlmError> {
        let (kind, size) = sniff(path).map_err(|source| LlmError::Open { path: path.into(), source })?;
        if kind != FileKind::Gguf {
            return Err(LlmError::WrongKind { path: path.into(), found: kind.describe() });
        }
        let started = Instant::now();
        let layers = u32::try_from(options.gpu_layers).unwrap_or(u32::MAX); // -1: all of them
        let model = LlamaModel::load_from_file(backend()?, path, &LlamaModelParams::default().with_n_gpu_layers(layers))
            .map_err(|_| LlmError::Load { path: path.into(), size })?;
        // Models without an embedded template get ChatML, the most common format.
        let template = model
            .chat_template(None)
            .or_else(|_| LlamaChatTemplate::new("chatml"))
            .map_err(|e| LlmError::Backend(e.to_string()))?;
        let shiftable = can_shift(&model);
        Ok(Llm { model, template, options, shiftable, model_id: model_id.to_string(), load_ms: ms_since(started) })
    }

    /// The model's vocabulary and chat template only (no weights): enough to count
    /// a prompt's tokens, in a fraction of the time and memory of a full load.
    pub fn load_vocab(path: &Path, model_id: &str, options: LlmOptions) -> Result<Llm, LlmError> {
        let (kind, size) = sniff(path).map_err(|source| LlmError::Open { path: path.into(), source })?;
        if kind != FileKind::Gguf {
            return Err(LlmError::WrongKind { path: path.into(), found: kind.describe() });
        }
        let started = Instant::now();
        let model = LlamaModel::load_from_file(backend()?, path, &LlamaModelParams::default().with_vocab_only(true)).map_err(|_| LlmError::Load { path: path.into(), size })?;
        let template = model.chat_template(None).or_else(|_| LlamaChatTemplate::new("chatml")).map_err(|e| LlmError::Backend(e.to_string()))?;
        Ok(Llm { model, template, options, shiftable: false, model_id: model_id.to_string(), load_ms: ms_since(started) })
    }

    /// Renders the conversation with the model's chat template, ending with the
    /// assistant's turn opened.
    pub fn render(&self, messages: &[Message]) -> Result<String, LlmError> {
        let chat = messages
            .iter()
            .map(|m| {
                let role = match m.role {
                    Role::System => "system",
                    Role::User => "user",
                    Role::Assistant => "assistant",
                };
                LlamaChatMessage::new(role.into(), m.content.clone())
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| LlmError::Inference { doing: "building the chat", reason: e.to_string() })?;
        self.model
            .apply_chat_template(&self.template, &chat, true)
            .map_err(|e| LlmError::Inference { doing: "applying the chat template", reason: e.to_string() })
    }

    /// Counts the tokens of `messages` as the chat template renders them.
    pub fn count_tokens(&self, messages: &[Message]) -> Result<usize, LlmError> {
        Ok(self.model.vocab().tokenize(self.render(messages)?.as_bytes(), false, true).len())
    }

    /// The tokens `messages` add to a prompt: their words, and a few for each
    /// message's framing (role markers; chat templates spend 3 to 5). Cheaper than
    /// rendering, and what a rolling history needs: each message counted alone.
    pub fn count_message_tokens(&self, messages: &[Message]) -> usize {
        const FRAMING: usize = 5;
        messages.iter().map(|m| self.model.vocab().tokenize(m.content.as_bytes(), false, false).len() + FRAMING).sum()
    }

    /// A context that keeps its KV cache between calls: a prompt that starts like the
    /// previous one (system prompt, earlier turns) only evaluates what is new.
    pub fn session(&self) -> Result<Session<'_>, LlmError> {
        let n_ctx = self.options.context_tokens;
        let threads = self.options.threads as i32;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(n_ctx.min(512))
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let ctx = self
            .model
            .new_context(backend()?, params)
            .map_err(|e| LlmError::Inference { doing: "creating a context", reason: e.to_string() })?;
        Ok(Session { llm: self, ctx, cached: Vec::new(), give_way: None, gave_way: Duration::ZERO })
    }

    /// One-shot generation in a fresh context (see [`Session::generate`]).
    pub fn generate(&self, messages: &[Message], on_text: impl FnMut(&str) -> bool) -> Result<Generation, LlmError> {
        self.session()?.generate(messages, None, on_text)
    }

    /// A grammar (GBNF, root rule `root`) that constrains what this model may
    /// generate; pass it to [`Session::generate`].
    pub fn grammar(&self, gbnf: &str) -> Result<Grammar, LlmError> {
        LlamaSampler::grammar(&self.model, gbnf, "root").map(Grammar).map_err(|e| LlmError::Grammar(e.to_string()))
    }

    /// The chat template's own text (Jinja, as the model file holds it; "chatml" for
    /// a model without one).
    pub fn chat_template_text(&self) -> Option<&str> {
        self.template.to_str().ok()
    }

    pub fn options(&self) -> &LlmOptions {
        &self.options
    }
}

/// Another engine on the same cores whose work comes first (Whisper, in the
/// pipeline), asked around every decode: llama.cpp's threads and the other engine's
/// spin at their barriers, and on a small board two such pools at once slow each
/// other far more than 2x (README: "Whisper first").
pub trait GiveWay: Send + Sync {
    /// Returns when this session may decode — at once, or once the other engine's
    /// work (bounded) is done — and how long it waited.
    fn before_decode(&self) -> Duration;
    /// The decode has ended.
    fn after_decode(&self);
}

/// A compiled output grammar. Each generation starts from a fresh copy of it.
pub struct Grammar(LlamaSampler);

/// A llama context and the tokens its KV cache holds.
pub struct Session<'m> {
    llm: &'m Llm,
    ctx: llama_cpp_2::context::LlamaContext<'m>,
    cached: Vec<llama_cpp_2::token::LlamaToken>,
    give_way: Option<Arc<dyn GiveWay>>,
    /// Time the decodes waited for `give_way`, all told.
    gave_way: Duration,
}

impl Session<'_> {
    /// Every decode from now on gives way to `other` first.
    pub fn give_way_to(&mut self, other: Arc<dyn GiveWay>) {
        self.give_way = Some(other);
    }

    /// One llama.cpp decode, after giving way (the wait adds to `gave_way`).
    fn decode(&mut self, batch: &mut LlamaBatch, doing: &'static str) -> Result<(), LlmError> {
        self.gave_way += self.give_way.as_ref().map_or(Duration::ZERO, |g| g.before_decode());
        let done = self.ctx.decode(batch);
        if let Some(g) = &self.give_way {
            g.after_decode();
        }
        done.map_err(|e| LlmError::Inference { doing, reason: e.to_string() })
    }

    /// Milliseconds since `started`, less the time decodes gave way since `gave_way_then`.
    fn busy_ms_since(&self, started: Instant, gave_way_then: Duration) -> f64 {
        ms_since(started) - (self.gave_way - gave_way_then).as_secs_f64() * 1000.0
    }

    /// Evaluates `messages` as a prompt without generating: warms the KV cache with a
    /// prefix (system prompt) that later prompts will share.
    pub fn prefill(&mut self, messages: &[Message]) -> Result<usize, LlmError> {
        let prompt = self.llm.render(messages)?;
        self.evaluate_text(&prompt, 0, usize::MAX)
    }

    /// Evaluates the prompt of `messages` up to the end of the last message's words,
    /// leaving out what closes it (the words go on): the user's words so far, read
    /// ahead while they speak. A later prompt that starts the same way finds them in
    /// the KV cache; one that does not rolls back to the last common token. Returns
    /// the tokens the cache now holds.
    ///
    /// In a session that gives way, the words go in `AHEAD_PER_DECODE` tokens at a
    /// time: a Whisper pass waits for a decode under way, and the first read-ahead of
    /// a turn also holds the exchange before it (tens of tokens, half a second in one
    /// decode on 2 slow cores) — the guess at the pause waited that long behind it.
    pub fn read_ahead(&mut self, messages: &[Message]) -> Result<usize, LlmError> {
        let prompt = self.llm.render(messages)?;
        let words = messages.last().map_or("", |m| m.content.as_str());
        let end = match prompt.rfind(words) {
            Some(at) if !words.is_empty() => at + words.len(),
            _ => return Ok(self.cached.len()),
        };
        let per_decode = if self.give_way.is_some() { AHEAD_PER_DECODE } else { usize::MAX };
        self.evaluate_text(&prompt[..end], self.llm.options.max_reply_tokens as usize, per_decode)
    }

    /// Tokenizes rendered prompt text and brings the KV cache to it, if it fits the
    /// context with `room` tokens to spare, at most `per_decode` tokens a decode.
    /// Returns its length in tokens.
    fn evaluate_text(&mut self, text: &str, room: usize, per_decode: usize) -> Result<usize, LlmError> {
        let tokens = self.llm.model.vocab().tokenize(text.as_bytes(), false, true);
        if tokens.is_empty() || tokens.len() + room > self.ctx.n_ctx() as usize {
            return Err(LlmError::PromptTooLong { prompt: tokens.len(), ctx: self.ctx.n_ctx() });
        }
        self.evaluate(&tokens, per_decode)?;
        Ok(tokens.len())
    }

    /// Brings the KV cache to `tokens`: keeps the longest prefix it already holds —
    /// and, where the prompt dropped a span the cache holds (the oldest exchanges of
    /// a rolling history), what follows that span too, moved up over it — and
    /// evaluates the rest (at least one token, so there are logits to sample from),
    /// at most `per_decode` tokens a decode (and at most the context's batch).
    /// Returns (tokens reused, ms spent, batch index of the last token's logits).
    fn evaluate(&mut self, tokens: &[llama_cpp_2::token::LlamaToken], per_decode: usize) -> Result<(usize, f64, i32), LlmError> {
        let infer = |doing: &'static str| move |e: &dyn std::fmt::Display| LlmError::Inference { doing, reason: e.to_string() };
        let common = |cached: &[LlamaToken]| cached.iter().zip(tokens).take_while(|(a, b)| a == b).count();
        let mut reuse = if self.llm.options.reuse_prefix { common(&self.cached) } else { 0 };
        let mut moved = false;
        if self.llm.options.reuse_prefix && self.llm.shiftable {
            if let Some(gap) = dropped_span(&self.cached, tokens, reuse) {
                // The kept entries were computed while the dropped ones were there to
                // attend to — what llama.cpp's own context shift accepts, and far
                // closer than nothing; the alternative is evaluating the whole
                // history again (seconds on a small board).
                let shift = |e: &dyn std::fmt::Display| infer("moving the KV cache")(e);
                self.ctx.kv_cache_seq_rm(0, Some(reuse as u32), Some((reuse + gap) as u32)).map_err(|e| shift(&e))?;
                self.ctx.kv_cache_seq_add(0, Some((reuse + gap) as u32), None, -(gap as i32)).map_err(|e| shift(&e))?;
                self.cached.drain(reuse..reuse + gap);
                reuse = common(&self.cached);
                moved = true;
            }
        }
        reuse = reuse.min(tokens.len() - 1);
        self.ctx
            .clear_kv_cache_seq(Some(0), Some(reuse as u32), None)
            .map_err(|e| infer("trimming the KV cache")(&e))?;
        self.cached.truncate(reuse);
        let started = Instant::now();
        let n_batch = (self.ctx.n_batch() as usize).min(per_decode);
        let mut batch = LlamaBatch::new(n_batch, 1);
        let mut logits_at = 0;
        let gave_way_then = self.gave_way;
        for (chunk_index, chunk) in tokens[reuse..].chunks(n_batch).enumerate() {
            batch.clear();
            let base = reuse + chunk_index * n_batch;
            for (i, t) in chunk.iter().enumerate() {
                let pos = base + i;
                let last = pos == tokens.len() - 1;
                batch.add(*t, pos as i32, &[0], last).map_err(|e| infer("batching the prompt")(&e))?;
                if last {
                    logits_at = i as i32;
                }
            }
            self.decode(&mut batch, "processing the prompt")?;
            self.cached.extend_from_slice(chunk);
        }
        if moved {
            // The moved entries keep the cells they had, and what came after them
            // went into the holes the dropped ones left: attention then spans every
            // cell up to the highest one in use, more with each move (a 300-turn soak
            // lost a third of its prompt speed). Read out and written back, the
            // sequence lies in order from the first cell again (the decode above has
            // applied the move). Tens of MiB copied, once in several turns.
            let state = self.ctx.state_seq_get(0, LlamaStateSeqFlags::empty()).map_err(|e| infer("compacting the KV cache")(&e))?;
            self.ctx.state_seq_set(&state, 0).map_err(|e| infer("compacting the KV cache")(&e))?;
        }
        Ok((reuse, self.busy_ms_since(started, gave_way_then), logits_at))
    }

    /// Generates a reply, calling `on_text` with each piece of text as soon as it is
    /// complete UTF-8. Returning `false` from `on_text` stops generation (cancellation).
    /// With a `grammar`, only text the grammar accepts is generated.
    pub fn generate(&mut self, messages: &[Message], grammar: Option<&Grammar>, mut on_text: impl FnMut(&str) -> bool) -> Result<Generation, LlmError> {
        let started = Instant::now();
        let gave_way_before = self.gave_way;
        let llm = self.llm;
        let options = &llm.options;
        let prompt = llm.render(messages)?;
        let infer = |doing: &'static str| move |e: &dyn std::fmt::Display| LlmError::Inference { doing, reason: e.to_string() };

        // The template already holds any BOS the model wants; parse its special tokens.
        let tokens = llm.model.vocab().tokenize(prompt.as_bytes(), false, true);
        let n_ctx = self.ctx.n_ctx();
        if tokens.is_empty() || tokens.len() + options.max_reply_tokens as usize > n_ctx as usize {
            return Err(LlmError::PromptTooLong { prompt: tokens.len(), ctx: n_ctx });
        }

        let (reuse, prompt_ms, logits_at) = self.evaluate(&tokens, usize::MAX)?;
        let mut batch = LlamaBatch::new(1, 1);

        // The grammar keeps its parse state: every generation starts from a copy.
        let mut grammar = grammar.map(|g| g.0.clone());
        let mut sampler = if options.temperature <= 0.0 {
            LlamaSampler::greedy()
        } else {
            LlamaSampler::chain_simple([LlamaSampler::top_p(0.95, 1), LlamaSampler::temp(options.temperature), LlamaSampler::dist(options.seed)])
        };
        let vocab = llm.model.vocab();
        let mut utf8 = Utf8Stream::default();
        let mut text = String::new();
        let mut generated = 0usize;
        let mut first_token_ms = 0.0;
        let gen_started = Instant::now();
        let mut logits_at = logits_at;
        let mut stopped = false;
        let gave_way_generating = self.gave_way;
        while generated < options.max_reply_tokens as usize {
            // `sample` also accepts the token into the sampler's state (a second accept
            // would advance it twice: fatal with a grammar in the chain).
            let token = match grammar.as_mut() {
                None => sampler.sample(&self.ctx, logits_at),
                Some(g) => self.sample_constrained(&mut sampler, g, logits_at)?,
            };
            if generated == 0 {
                first_token_ms = ms_since(started);
            }
            if vocab.is_eog(token) {
                break;
            }
            generated += 1;
            let piece = vocab.token_to_piece(token, false, None);
            if let Some(s) = utf8.push(&piece) {
                text.push_str(&s);
                if !on_text(&s) {
                    stopped = true;
                    break;
                }
            }
            batch.clear();
            batch.add(token, self.cached.len() as i32, &[0], true).map_err(|e| infer("batching a token")(&e))?;
            self.decode(&mut batch, "generating")?;
            self.cached.push(token);
            logits_at = 0;
        }
        Ok(Generation {
            text,
            prompt_tokens: tokens.len(),
            cached_tokens: reuse,
            generated_tokens: generated,
            prompt_ms,
            generate_ms: self.busy_ms_since(gen_started, gave_way_generating),
            first_token_ms,
            gave_way_ms: (self.gave_way - gave_way_before).as_secs_f64() * 1000.0,
            stopped,
        })
    }
}

impl Session<'_> {
    /// Samples a token the grammar accepts, and advances the grammar by it. The
    /// sampler picks freely first and the grammar judges that one token; only when it
    /// is rejected is the grammar applied to the whole vocabulary (as llama.cpp's own
    /// sampler does): the same tokens, at a fraction of the cost (~0.1 ms instead of
    /// 3-5 ms a token on a 49k vocabulary).
    fn sample_constrained(&self, sampler: &mut LlamaSampler, grammar: &mut LlamaSampler, logits_at: i32) -> Result<LlamaToken, LlmError> {
        let mut all = self.ctx.token_data_array_ith(logits_at);
        all.apply_sampler(sampler);
        let mut token = all.selected_token().ok_or_else(|| LlmError::Inference { doing: "sampling", reason: "no token selected".into() })?;
        let mut one = LlamaTokenDataArray::new(vec![LlamaTokenData::new(token, 1.0, 0.0)], false);
        one.apply_sampler(grammar);
        if one.data[0].logit() == f32::NEG_INFINITY {
            let mut all = self.ctx.token_data_array_ith(logits_at);
            all.apply_sampler(grammar);
            all.apply_sampler(sampler);
            token = all.selected_token().ok_or_else(|| LlmError::Inference { doing: "sampling", reason: "the grammar allows no token here".into() })?;
        }
        grammar.try_accept(token).map_err(|e| LlmError::Inference { doing: "advancing the grammar", reason: e.to_string() })?;
        Ok(token)
    }
}

/// Tokens a decode takes when words are read ahead beside Whisper: a pass that
/// comes meanwhile waits for at most one such decode (~150 ms on a slow 2-core
/// EPYC, where a batch of 8 goes at ~50 tok/s) instead of the whole read-ahead;
/// smaller batches lose more throughput than they save in wait.
const AHEAD_PER_DECODE: usize = 8;

/// The fewest tokens a span of the cache must keep after a dropped one to be moved
/// rather than evaluated again: moving touches the whole cache, evaluating a few
/// tokens is as cheap.
const SHIFT_WORTH: usize = 16;

/// Where `tokens` leaves out a span of `cached` right after their common prefix of
/// `common` tokens and then goes on as `cached` does: the span's length, if what
/// follows it matches at least `SHIFT_WORTH` tokens of the prompt (the longest such
/// match wins).
fn dropped_span(cached: &[LlamaToken], tokens: &[LlamaToken], common: usize) -> Option<usize> {
    let (cached_rest, wanted) = (cached.get(common..)?, tokens.get(common..)?);
    let first = *wanted.first()?;
    let matching = |gap: usize| cached_rest[gap..].iter().zip(wanted).take_while(|(a, b)| a == b).count();
    (1..cached_rest.len())
        .filter(|&gap| cached_rest[gap] == first)
        .map(|gap| (matching(gap), gap))
        .filter(|&(run, _)| run >= SHIFT_WORTH)
        .max_by_key(|&(run, gap)| (run, std::cmp::Reverse(gap)))
        .map(|(_, gap)| gap)
}

/// Whether llama.cpp can drop a span of this model's KV cache and move what follows
/// (its K-shift; asking one that cannot aborts the process): one-dimensional RoPE,
/// a plain attention cache — not a recurrent or hybrid model's, and not a
/// sliding-window one, whose two caches may differ in size.
fn can_shift(model: &LlamaModel) -> bool {
    use llama_cpp_2::model::RopeType;
    let arch = model.meta_val_str("general.architecture").unwrap_or_default();
    let sliding = model.meta_val_str(&format!("{arch}.attention.sliding_window")).is_ok();
    let rope = matches!(model.rope_type(), Some(RopeType::Norm | RopeType::NeoX));
    rope && !sliding && !model.is_recurrent() && !model.is_hybrid() && arch != "step35"
}

/// Joins token pieces into valid UTF-8: a character split across tokens is held
/// back until its last byte arrives.
#[derive(Default)]
struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    fn push(&mut self, bytes: &[u8]) -> Option<String> {
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            // An invalid sequence (not just an unfinished one) is replaced, not held forever.
            Err(e) if e.error_len().is_some() => {
                let s = String::from_utf8_lossy(&self.pending).into_owned();
                self.pending.clear();
                return Some(s);
            }
            Err(e) => e.valid_up_to(),
        };
        if valid == 0 {
            return None;
        }
        let rest = self.pending.split_off(valid);
        let done = std::mem::replace(&mut self.pending, rest);
        Some(String::from_utf8(done).expect("checked above"))
    }
}

#[cfg(test)]
mod tests {
    use super::{dropped_span, LlamaToken, Utf8Stream};

    #[test]
    fn a_dropped_span_is_found_after_the_common_prefix() {
        let t = |v: &[i32]| v.iter().map(|&i| LlamaToken(i)).collect::<Vec<_>>();
        let kept: Vec<i32> = (100..120).collect();
        // cache: preamble [1,2,3], old exchange [7,8,9], kept exchanges, a reply.
        let cached = t(&[&[1, 2, 3, 7, 8, 9][..], &kept, &[50, 51]].concat());
        let prompt = t(&[&[1, 2, 3][..], &kept, &[60]].concat());
        assert_eq!(dropped_span(&cached, &prompt, 3), Some(3));
        // Too little after the gap to be worth moving.
        let short = t(&[1, 2, 3, 7, 8, 9, 100, 101, 50]);
        assert_eq!(dropped_span(&short, &t(&[1, 2, 3, 100, 101, 60]), 3), None);
        // Nothing dropped, or a prompt that goes on differently: nothing to move.
        assert_eq!(dropped_span(&cached, &cached, cached.len()), None);
        assert_eq!(dropped_span(&cached, &t(&[1, 2, 3, 200, 201]), 3), None);
    }

    #[test]
    fn utf8_split_across_tokens_is_joined() {
        let mut s = Utf8Stream::default();
        let euro = "€".as_bytes();
        assert_eq!(s.push(b"5 "), Some("5 ".into()));
        assert_eq!(s.push(&euro[..1]), None);
        assert_eq!(s.push(&euro[1..]), Some("€".into()));
        assert_eq!(s.push(&[0xff]), Some("\u{fffd}".into()));
    }
}
