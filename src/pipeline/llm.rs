//! Language model stage.
//!
//! Input: `Request` (from agent) · Output: `Sentence` (to tts), `Reply` (to agent,
//! per request) · Thread: dedicated (`voxd-llm`, owns model, context and KV cache)
//!
//! The KV cache persists across turns: the system prompt (with the tools) and the
//! earlier turns are evaluated once, and each new prompt only evaluates what is new.
//! Tokens go through the sentence splitter, and each finished clause goes to tts at
//! once — unless the reply is a tool call (it starts with '{'): a call is collected
//! whole, never spoken, and handed to the agent. Nothing from a '{' on is ever
//! spoken: a model without the grammar may put a call (or code) inside a sentence;
//! a call found there is made, anything else dropped. Markup the voice would spell
//! out (`*`, `#`, backticks, ...) is taken out of what is spoken.

use std::time::Instant;

use tokio::sync::{mpsc, oneshot, watch};

use super::health::Pulse;
use super::splitter::Splitter;
use super::telemetry::{LlmStats, Note, Notes};
use super::{Anchor, Cancel, Counters, TurnId};
use crate::engine::llm::{Llm, LlmError, Message, Role};

/// One finished exchange of the conversation: the user's words, any call and its
/// result, and what was said — kept or dropped whole.
#[derive(Debug)]
pub struct Exchange {
    /// Tells exchanges apart (the llm stage remembers their lengths by it).
    pub id: u64,
    pub messages: Vec<Message>,
}

impl Exchange {
    /// Characters in it: an upper bound on its tokens, for bounding memory cheaply.
    pub fn chars(&self) -> usize {
        self.messages.iter().map(|m| m.content.len()).sum()
    }
}

/// Work on a turn's reply.
pub struct Request {
    pub turn: TurnId,
    /// Earlier exchanges, oldest first (shared, not copied); the llm stage keeps the
    /// newest that fit `agent.history_tokens` and the context.
    pub history: Vec<std::sync::Arc<Exchange>>,
    /// This turn so far: the user's words; after a tool call, the call and its result.
    pub messages: Vec<Message>,
    pub job: Job,
    pub anchor: Anchor,
    pub cancel: Cancel,
    pub respond_to: oneshot::Sender<Result<Reply, String>>,
}

pub enum Job {
    /// Generate the reply: spoken as it comes, or (with `tools`) a tool call instead.
    Answer { tools: bool },
    /// Read the user's words so far into the KV cache, while they go on speaking:
    /// the answer's prompt, when it comes, finds them there. Nothing is generated,
    /// said or replied.
    ReadAhead,
    /// Speak these words as the reply (a confirmation template, a question, an error).
    Say(String),
}

/// What the job produced, for the agent.
#[derive(Debug)]
pub struct Reply {
    /// What was said (empty for a call).
    pub text: String,
    /// The model's tool call, as generated (the agent validates it).
    pub call: Option<String>,
    pub cancelled: bool,
}

/// A piece of the reply ready to speak. `last` closes the turn (its text may be empty).
#[derive(Debug, Clone)]
pub struct Sentence {
    pub turn: TurnId,
    pub index: usize,
    pub text: String,
    pub anchor: Anchor,
    pub cancel: Cancel,
    pub last: bool,
    /// Ends mid-sentence (a phrase cut): the next piece continues it, without the
    /// pause of a full stop in between.
    pub runs_on: bool,
}

pub struct LlmStage {
    /// The fixed start of every prompt: the persona with the tools, and example turns
    /// (see `tools::preamble`). It stays in the KV cache.
    pub preamble: Vec<Message>,
    pub history_tokens: usize,
    /// Hand tts each clause as soon as it is complete (else the whole reply at the end).
    pub stream_sentences: bool,
    /// The first piece may be a phrase of this many words or more (0: a sentence or
    /// a long clause): `Splitter::new`.
    pub first_phrase_words: usize,
    /// GBNF: a call of a configured tool or a spoken answer (None: unconstrained).
    pub tools_grammar: Option<String>,
    /// GBNF: a spoken answer only, for phrasing a tool's result.
    pub answer_grammar: Option<String>,
    /// The tools, to recognise a call a reply carries inside its words.
    pub tools: Vec<crate::tools::ToolConfig>,
    /// What the preamble is made of besides the tools, to make it again when the
    /// home's devices change (`[home_assistant] refresh_s`).
    pub persona: String,
    /// How the tools are put to the model (`[tools]`: examples, device hints).
    pub style: crate::tools::ToolsConfig,
    /// The call format of the preamble and the grammar (`[tools] call_format`).
    pub format: crate::tools::CallFormat,
    pub home: watch::Receiver<crate::tools::Home>,
}

/// Where a reply is going.
struct Output<'a> {
    turn: TurnId,
    anchor: Anchor,
    cancel: &'a Cancel,
    tx: &'a mpsc::Sender<Sentence>,
    notes: &'a Notes,
    counters: &'a Counters,
    index: usize,
    /// tts is gone: shutting down.
    closed: bool,
    /// Time spent waiting on tts (a full queue, the first sentence's audio).
    paused: std::time::Duration,
}

impl Output<'_> {
    /// Hands tts the next piece; `runs_on`: it stops mid-sentence (a phrase cut).
    fn send(&mut self, text: String, last: bool, runs_on: bool) {
        let text = crate::tools::say::voice_text(&text);
        if self.index == 0 && !text.is_empty() {
            self.notes.send(Note::FirstSentence { turn: self.turn, at: Instant::now(), text: text.clone() });
        }
        let s = Sentence { turn: self.turn, index: self.index, text, anchor: self.anchor, cancel: self.cancel.clone(), last, runs_on };
        self.index += 1;
        let started = Instant::now();
        if self.tx.blocking_send(s).is_err() {
            self.closed = true;
        }
        self.paused += started.elapsed();
        Counters::depth(&self.counters.llm_to_tts_depth, self.tx);
    }
}

impl LlmStage {
    pub fn run(
        mut self,
        llm: std::sync::Arc<Llm>,
        mut rx: mpsc::Receiver<Request>,
        tx: mpsc::Sender<Sentence>,
        notes: Notes,
        counters: std::sync::Arc<Counters>,
        pulse: Pulse,
        ready: oneshot::Sender<()>,
    ) -> anyhow::Result<()> {
        let tools_grammar = self.tools_grammar.as_deref().map(|g| llm.grammar(g)).transpose()?;
        let answer_grammar = self.answer_grammar.as_deref().map(|g| llm.grammar(g)).transpose()?;
        let mut session = llm.session()?;
        // Whisper's passes come first (`AsrPassing`): every decode waits for one under way.
        session.give_way_to(counters.clone());
        // Warm-up: the preamble sits in the KV cache before anyone speaks.
        let mut preamble_tokens = warm(&mut session, &self.preamble)?;
        let (context_tokens, max_reply_tokens) = (llm.options().context_tokens as usize, llm.options().max_reply_tokens as usize);
        // The room every turn needs besides the history: checked once, here, so a
        // configuration that cannot answer is an error at start, not "too long"
        // for every turn.
        anyhow::ensure!(
            preamble_tokens <= preamble_room(&llm),
            "the system prompt and tools take {preamble_tokens} tokens; with [llm] max_reply_tokens = {max_reply_tokens} and {QUESTION_ROOM} for the question that is more than [llm] context_tokens = {context_tokens}: raise context_tokens, or shorten the system prompt or the tools"
        );
        let mut lengths = ExchangeLengths::default();
        let _ = ready.send(());
        while let Some(req) = rx.blocking_recv() {
            let Request { turn, history, messages, job, anchor, cancel, respond_to } = req;
            if cancel.is_cancelled() {
                let _ = respond_to.send(Ok(Reply { text: String::new(), call: None, cancelled: true }));
                continue;
            }
            pulse.busy(turn);
            let mut out = Output { turn, anchor, cancel: &cancel, tx: &tx, notes: &notes, counters: &counters, index: 0, closed: false, paused: Default::default() };
            let tools = match job {
                Job::Say(text) => {
                    notes.send(Note::LlmDone { turn, at: Instant::now(), reply: text.clone(), llm: None });
                    speak(&text, &mut out);
                    let _ = respond_to.send(Ok(Reply { text, call: None, cancelled: false }));
                    pulse.idle();
                    if out.closed {
                        break;
                    }
                    continue;
                }
                Job::ReadAhead => None,
                Job::Answer { tools } => Some(tools),
            };
            if self.home.has_changed().unwrap_or(false) {
                preamble_tokens = self.new_home(&llm, &mut session, preamble_tokens);
            }
            let room = context_tokens.saturating_sub(preamble_tokens + max_reply_tokens + llm.count_message_tokens(&messages));
            let history = lengths.newest_that_fit(&history, self.history_tokens.min(room), |e| llm.count_message_tokens(&e.messages));
            let history_turns = history.len();
            let mut prompt = self.preamble.clone();
            prompt.extend(history.iter().flat_map(|e| e.messages.iter().cloned()));
            prompt.extend(messages);
            let Some(tools) = tools else {
                match session.read_ahead(&prompt) {
                    Ok(tokens) => tracing::debug!(turn, tokens, "read ahead"),
                    Err(e) => tracing::debug!(turn, "read ahead: {e}"),
                }
                pulse.idle();
                continue;
            };
            let grammar = if tools { tools_grammar.as_ref() } else { answer_grammar.as_ref() };

            let mut splitter = Splitter::new(self.first_phrase_words);
            let mut first_token = true;
            // None until the first visible text says whether this is a call.
            let mut is_call: Option<bool> = None;
            // A '{' after the reply began in words: from there on nothing is spoken.
            let mut braced = false;
            let result = session.generate(&prompt, grammar, |piece| {
                pulse.step();
                if first_token {
                    first_token = false;
                    notes.send(Note::LlmFirstToken { turn, at: Instant::now() });
                }
                if is_call.is_none() && !piece.trim().is_empty() {
                    is_call = Some(tools && crate::tools::looks_like_call(piece));
                }
                let (words, held) = match piece.find('{') {
                    _ if is_call == Some(true) || !self.stream_sentences || braced => ("", piece),
                    Some(at) => {
                        braced = true;
                        piece.split_at(at)
                    }
                    None => (piece, ""),
                };
                for sentence in splitter.push(words) {
                    // The first piece, or the one a phrase cut runs on into.
                    let wait = out.index == 0 || (out.index == 1 && splitter.first_runs_on());
                    let (index, runs_on) = (out.index, out.index == 0 && splitter.first_runs_on());
                    out.send(sentence, false, runs_on);
                    if wait {
                        let started = Instant::now();
                        wait_for_audio(&counters, turn, index, &cancel);
                        out.paused += started.elapsed();
                    }
                }
                splitter.hold(held);
                !cancel.is_cancelled() && !out.closed
            });
            let g = match result {
                Ok(g) => g,
                Err(e @ LlmError::PromptTooLong { .. }) => {
                    // Not fatal: this turn cannot be answered; say so and go on.
                    tracing::error!(turn, "{e}");
                    let sorry = "Sorry, that was too long for me to take in.";
                    notes.send(Note::LlmDone { turn, at: Instant::now(), reply: sorry.into(), llm: None });
                    out.send(sorry.into(), true, false);
                    let _ = respond_to.send(Err(e.to_string()));
                    pulse.idle();
                    continue;
                }
                // Survived too: this turn failed (an apology is said and it is logged
                // so), the next one gets the model again.
                Err(e) => {
                    self.failed(turn, &e.to_string(), &mut out, respond_to, &notes);
                    pulse.idle();
                    continue;
                }
            };
            // Taken now: what is sent from here on is not in the generation's time.
            let paused_ms = (out.paused.as_secs_f64() * 1000.0).min(g.generate_ms);
            // (Not streaming, everything was held: a brace anywhere counts.)
            let braced = braced || (is_call != Some(true) && g.text.contains('{'));
            let call = match is_call {
                Some(true) => Some(g.text.trim().to_string()),
                _ if braced && tools => crate::tools::call_in(&g.text, &self.tools),
                _ => None,
            };
            let stats = LlmStats {
                prompt_tokens: g.prompt_tokens,
                cached_tokens: g.cached_tokens,
                evaluated_tokens: g.evaluated_tokens(),
                generated_tokens: g.generated_tokens,
                prompt_tok_s: g.prompt_tok_s(),
                generate_tok_s: g.generated_tokens as f64 / ((g.generate_ms - paused_ms) / 1000.0).max(1e-9),
                history_turns,
                paused_ms,
                gave_way_ms: g.gave_way_ms,
            };
            let text = if call.is_some() { String::new() } else { g.text.trim().to_string() };
            // Told before the last piece goes to the voice: the turn ends when that
            // piece has played, and its record must have the model's figures by then
            // (notes arrive in the order sent). Sent after it, a generation thread
            // preempted between the two let the end come first on a loaded machine,
            // and the turn was logged without them.
            notes.send(Note::LlmDone { turn, at: Instant::now(), reply: text.clone(), llm: Some(stats) });
            if call.is_none() && !cancel.is_cancelled() {
                // Words held back after a '{' that was no call: the part before it.
                let rest = splitter.finish().unwrap_or_default();
                let rest = if braced { rest.split('{').next().unwrap_or("").trim().to_string() } else { rest };
                out.send(rest, true, false);
            }
            let _ = respond_to.send(Ok(Reply { text, call, cancelled: g.stopped }));
            pulse.idle();
            if out.closed {
                break;
            }
        }
        Ok(())
    }

    /// The model failed on this turn: what was said stops, an apology ends the turn,
    /// and the agent and the log hear why.
    fn failed(&self, turn: TurnId, error: &str, out: &mut Output<'_>, respond_to: oneshot::Sender<Result<Reply, String>>, notes: &Notes) {
        tracing::error!(turn, "llm: {error}");
        notes.send(Note::Failed { turn, stage: "llm", message: error.to_string(), ends_turn: false });
        notes.send(Note::LlmDone { turn, at: Instant::now(), reply: super::APOLOGY.into(), llm: None });
        out.send(super::APOLOGY.into(), true, false);
        let _ = respond_to.send(Err(error.to_string()));
    }

}

/// Tokens kept free for the question itself when checking the configuration at
/// start (the question's real length is counted per turn).
pub const QUESTION_ROOM: usize = 64;

/// The token length of each exchange in the history, counted once when it first
/// comes (its messages never change) and forgotten when it leaves the history; and
/// where the history in the prompt starts.
#[derive(Default)]
struct ExchangeLengths {
    tokens: std::collections::HashMap<u64, usize>,
    /// The oldest exchange the prompts include (its id).
    start: u64,
}

impl ExchangeLengths {
    /// The newest exchanges whose lengths add up to at most `budget`: a rolling
    /// history dropped whole exchanges at a time, oldest first, each exchange
    /// tokenised once in its life. The start stays where it was while everything
    /// from it fits — the prompt then begins as the last one did, and the KV cache
    /// holds it — and when it must move it moves far enough (to three quarters of
    /// the budget) that the next few turns fit again. The session then drops the
    /// left-out exchanges from its cache and moves the rest up (see
    /// `Session::evaluate`): a pass over the whole cache, so done seldom, not every
    /// turn; a model whose cache cannot move evaluates the kept history again.
    fn newest_that_fit<'h>(&mut self, history: &'h [std::sync::Arc<Exchange>], budget: usize, count: impl Fn(&Exchange) -> usize) -> &'h [std::sync::Arc<Exchange>] {
        let mut length = |e: &Exchange| *self.tokens.entry(e.id).or_insert_with(|| count(e));
        let from_start = history.iter().position(|e| e.id >= self.start).unwrap_or(history.len());
        let first = if history[from_start..].iter().map(|e| length(e)).sum::<usize>() <= budget {
            from_start
        } else {
            let target = budget * 3 / 4;
            let (mut used, mut first) = (0, history.len());
            for (i, e) in history.iter().enumerate().rev() {
                let n = length(e);
                if used + n > target {
                    break;
                }
                used += n;
                first = i;
            }
            first
        };
        self.start = match history.get(first) {
            Some(e) => e.id,
            // Nothing fits: start after the newest, so the exchanges to come are used.
            None => history.last().map_or(self.start, |e| e.id + 1),
        };
        // Only what the agent still holds is remembered (it drops exchanges oldest
        // first; so do we).
        let oldest = history.first().map_or(u64::MAX, |e| e.id);
        self.tokens.retain(|id, _| *id >= oldest);
        &history[first..]
    }
}

/// Fixed words as the turn's reply, sentence by sentence.
impl LlmStage {
    /// The home's devices changed: the preamble is made again with them and warmed
    /// (only what changed is evaluated), unless it no longer leaves room to answer —
    /// then the old one stays, said so. Returns the preamble's length in tokens.
    fn new_home(&mut self, llm: &Llm, session: &mut crate::engine::llm::Session<'_>, tokens_before: usize) -> usize {
        let home = self.home.borrow_and_update().clone();
        let preamble = crate::tools::preamble(&self.persona, &self.tools, &home, &self.style, self.format);
        let room = preamble_room(llm);
        match warm(session, &preamble) {
            Ok(tokens) if tokens <= room => {
                tracing::info!("llm: the prompt now names {} devices ({tokens} tokens)", home.entities.len());
                self.preamble = preamble;
                tokens
            }
            Ok(tokens) => {
                tracing::warn!("llm: Home Assistant's devices changed, but with them the prompt takes {tokens} tokens, more than [llm] context_tokens leaves ({room}): the devices from before stay (raise context_tokens, or expose fewer)");
                tokens_before
            }
            Err(e) => {
                tracing::warn!("llm: Home Assistant's devices changed, but the prompt with them failed ({e}): the devices from before stay");
                tokens_before
            }
        }
    }
}

/// Evaluates `preamble` into the KV cache as the start of a conversation; its length
/// in tokens.
fn warm(session: &mut crate::engine::llm::Session<'_>, preamble: &[Message]) -> Result<usize, LlmError> {
    let mut messages = preamble.to_vec();
    messages.push(Message { role: Role::User, content: String::new() });
    session.prefill(&messages)
}

/// The most tokens the preamble may take: the context, less the longest reply and
/// room for the question.
fn preamble_room(llm: &Llm) -> usize {
    (llm.options().context_tokens as usize).saturating_sub(llm.options().max_reply_tokens as usize + QUESTION_ROOM)
}

fn speak(text: &str, out: &mut Output<'_>) {
    let mut splitter = Splitter::default();
    for sentence in splitter.push(text) {
        out.send(sentence, false, false);
    }
    out.send(splitter.finish().unwrap_or_default(), true, false);
}

/// After the first piece, generation pauses until tts has its audio (or 500 ms have
/// passed): on a small board both engines compete for the same cores, and only the
/// first piece's synthesis is on the path to the first sound. Likewise after the
/// piece a phrase cut runs on into: it must be ready as the phrase ends, the rest of
/// the reply is not needed yet, and Piper and llama.cpp at once slow each other (with
/// phrase cuts and no second wait, generation ran at 72-77 % of its speed alone in
/// `voxd bench`; with it, 79-87 %, as without phrase cuts: the machine is noisy).
fn wait_for_audio(counters: &Counters, turn: TurnId, index: usize, cancel: &Cancel) {
    let key = super::piece_key(turn, index);
    let waiting = || !cancel.is_cancelled() && counters.tts_ready_piece.load(std::sync::atomic::Ordering::Acquire) < key;
    super::wait_while(std::time::Duration::from_millis(500), waiting);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn exchange(id: u64, tokens: usize) -> Arc<Exchange> {
        Arc::new(Exchange { id, messages: vec![Message { role: Role::User, content: "x".repeat(tokens) }] })
    }

    fn ids(kept: &[Arc<Exchange>]) -> Vec<u64> {
        kept.iter().map(|e| e.id).collect()
    }

    #[test]
    fn the_history_keeps_whole_newest_exchanges_and_its_start_moves_seldom() {
        let count = |e: &Exchange| e.messages[0].content.len();
        let mut lengths = ExchangeLengths::default();
        let mut history: Vec<Arc<Exchange>> = (1..=4).map(|id| exchange(id, 10)).collect();
        assert_eq!(ids(lengths.newest_that_fit(&history, 100, count)), [1, 2, 3, 4], "everything fits");
        for id in 5..=10 {
            history.push(exchange(id, 10));
        }
        // 100 tokens of 10-token exchanges: all ten still fit.
        assert_eq!(ids(lengths.newest_that_fit(&history, 100, count)), (1..=10).collect::<Vec<_>>());
        // One more: over. The start moves to three quarters of the budget (7 exchanges)...
        history.push(exchange(11, 10));
        assert_eq!(ids(lengths.newest_that_fit(&history, 100, count)), (5..=11).collect::<Vec<_>>());
        // ...and stays there while the rest fits: the prompt begins the same way.
        for id in 12..=14 {
            history.push(exchange(id, 10));
            assert_eq!(lengths.newest_that_fit(&history, 100, count)[0].id, 5, "after exchange {id}");
        }
        // An exchange that can never fit is skipped whole; later ones are used.
        history.push(exchange(15, 500));
        assert!(lengths.newest_that_fit(&history, 100, count).is_empty());
        history.push(exchange(16, 10));
        assert_eq!(ids(lengths.newest_that_fit(&history, 100, count)), [16]);
        // Lengths are remembered only for exchanges the agent still holds.
        let held = history.split_off(10);
        lengths.newest_that_fit(&held, 100, count);
        assert!(lengths.tokens.keys().all(|id| *id >= 11), "{:?}", lengths.tokens.keys());
    }
}
