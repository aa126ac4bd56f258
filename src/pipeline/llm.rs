//! Language model stage.
//!
//! Input: `Request` (from agent) · Output: `Sentence` (to tts), `Reply` (to agent,
//! per request) · Thread: dedicated (`voxd-llm`, owns model, context and KV cache)
//!
//! The KV cache persists across turns: the system prompt (with the tools) and the
//! earlier turns are evaluated once, and each new prompt only evaluates what is new.
//! Tokens go through the sentence splitter, and each finished clause goes to tts at
//! once — unless the reply is a tool call (it starts with '{'): a call is collected
//! whole, never spoken, and handed to the agent.

use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::splitter::Splitter;
use super::telemetry::{LlmStats, Note, Notes};
use super::{Anchor, Cancel, Counters, TurnId};
use crate::engine::llm::{Llm, LlmError, Message, Role};

/// Work on a turn's reply.
pub struct Request {
    pub turn: TurnId,
    /// Earlier exchanges (the oldest are dropped to fit `agent.history_tokens`).
    pub history: Vec<Message>,
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
}

pub struct LlmStage {
    /// The fixed start of every prompt: the persona with the tools, and example turns
    /// (see `tools::preamble`). It stays in the KV cache.
    pub preamble: Vec<Message>,
    pub history_tokens: usize,
    /// Hand tts each clause as soon as it is complete (else the whole reply at the end).
    pub stream_sentences: bool,
    /// GBNF: a call of a configured tool or a spoken answer (None: unconstrained).
    pub tools_grammar: Option<String>,
    /// GBNF: a spoken answer only, for phrasing a tool's result.
    pub answer_grammar: Option<String>,
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
}

impl Output<'_> {
    fn send(&mut self, text: String, last: bool) {
        if self.index == 0 && !text.is_empty() {
            self.notes.send(Note::FirstSentence { turn: self.turn, at: Instant::now() });
        }
        let s = Sentence { turn: self.turn, index: self.index, text, anchor: self.anchor, cancel: self.cancel.clone(), last };
        self.index += 1;
        if self.tx.blocking_send(s).is_err() {
            self.closed = true;
        }
        Counters::depth(&self.counters.llm_to_tts_depth, self.tx);
    }
}

impl LlmStage {
    pub fn run(
        self,
        llm: Llm,
        mut rx: mpsc::Receiver<Request>,
        tx: mpsc::Sender<Sentence>,
        notes: Notes,
        counters: std::sync::Arc<Counters>,
        ready: oneshot::Sender<()>,
    ) -> anyhow::Result<()> {
        let tools_grammar = self.tools_grammar.as_deref().map(|g| llm.grammar(g)).transpose()?;
        let answer_grammar = self.answer_grammar.as_deref().map(|g| llm.grammar(g)).transpose()?;
        let mut session = llm.session()?;
        // Warm-up: the preamble sits in the KV cache before anyone speaks.
        let mut warm = self.preamble.clone();
        warm.push(Message { role: Role::User, content: String::new() });
        session.prefill(&warm)?;
        let _ = ready.send(());
        while let Some(req) = rx.blocking_recv() {
            let Request { turn, history, messages, job, anchor, cancel, respond_to } = req;
            if cancel.is_cancelled() {
                let _ = respond_to.send(Ok(Reply { text: String::new(), call: None, cancelled: true }));
                continue;
            }
            let mut out = Output { turn, anchor, cancel: &cancel, tx: &tx, notes: &notes, counters: &counters, index: 0, closed: false };
            let tools = match job {
                Job::Say(text) => {
                    speak(&text, &mut out);
                    notes.send(Note::LlmDone { turn, at: Instant::now(), reply: text.clone(), llm: None });
                    let _ = respond_to.send(Ok(Reply { text, call: None, cancelled: false }));
                    if out.closed {
                        break;
                    }
                    continue;
                }
                Job::Answer { tools } => tools,
            };
            let history = self.trim_history(&llm, history)?;
            let history_turns = history.len() / 2;
            let mut prompt = self.preamble.clone();
            prompt.extend(history);
            prompt.extend(messages);
            let grammar = if tools { tools_grammar.as_ref() } else { answer_grammar.as_ref() };

            let mut splitter = Splitter::default();
            let mut first_token = true;
            // None until the first visible text says whether this is a call.
            let mut is_call: Option<bool> = None;
            let result = session.generate(&prompt, grammar, |piece| {
                if first_token {
                    first_token = false;
                    notes.send(Note::LlmFirstToken { turn, at: Instant::now() });
                }
                if is_call.is_none() && !piece.trim().is_empty() {
                    is_call = Some(tools && crate::tools::looks_like_call(piece));
                }
                if is_call == Some(true) || !self.stream_sentences {
                    splitter.hold(piece);
                } else {
                    for sentence in splitter.push(piece) {
                        out.send(sentence, false);
                        if out.index == 1 {
                            wait_for_first_audio(&counters, turn, &cancel);
                        }
                    }
                }
                !cancel.is_cancelled() && !out.closed
            });
            let g = match result {
                Ok(g) => g,
                Err(e @ LlmError::PromptTooLong { .. }) => {
                    // Not fatal: this turn cannot be answered; say so and go on.
                    tracing::error!(turn, "{e}");
                    out.send("Sorry, that was too long for me to take in.".into(), true);
                    let _ = respond_to.send(Err(e.to_string()));
                    continue;
                }
                Err(e) => {
                    let _ = respond_to.send(Err(e.to_string()));
                    return Err(e.into());
                }
            };
            let call = (is_call == Some(true)).then(|| g.text.trim().to_string());
            if call.is_none() && !cancel.is_cancelled() {
                out.send(splitter.finish().unwrap_or_default(), true);
            }
            let stats = LlmStats {
                prompt_tokens: g.prompt_tokens,
                cached_tokens: g.cached_tokens,
                evaluated_tokens: g.evaluated_tokens(),
                generated_tokens: g.generated_tokens,
                prompt_tok_s: g.prompt_tok_s(),
                generate_tok_s: g.generate_tok_s(),
                history_turns,
            };
            let text = if call.is_some() { String::new() } else { g.text.trim().to_string() };
            notes.send(Note::LlmDone { turn, at: Instant::now(), reply: text.clone(), llm: Some(stats) });
            let _ = respond_to.send(Ok(Reply { text, call, cancelled: g.stopped }));
            if out.closed {
                break;
            }
        }
        Ok(())
    }

    /// Rolling history: drops the oldest exchanges until the rest fits the budget.
    fn trim_history(&self, llm: &Llm, mut history: Vec<Message>) -> anyhow::Result<Vec<Message>> {
        while !history.is_empty() && llm.count_tokens(&history)? > self.history_tokens {
            // Drop a user/assistant pair, oldest first.
            history.drain(..2.min(history.len()));
        }
        Ok(history)
    }
}

/// Fixed words as the turn's reply, sentence by sentence.
fn speak(text: &str, out: &mut Output<'_>) {
    let mut splitter = Splitter::default();
    for sentence in splitter.push(text) {
        out.send(sentence, false);
    }
    out.send(splitter.finish().unwrap_or_default(), true);
}

/// After the first sentence, generation pauses until tts has its audio (or 500 ms
/// have passed): on a small board both engines compete for the same cores, and only
/// the first sentence's synthesis is on the path to the first sound.
fn wait_for_first_audio(counters: &Counters, turn: TurnId, cancel: &Cancel) {
    let deadline = Instant::now() + std::time::Duration::from_millis(500);
    while counters.tts_ready_turn.load(std::sync::atomic::Ordering::Acquire) < turn && Instant::now() < deadline && !cancel.is_cancelled() {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}
