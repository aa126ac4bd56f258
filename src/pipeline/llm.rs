//! Language model stage.
//!
//! Input: `Request` (from agent) · Output: `Sentence` (to tts), `Reply` (to agent,
//! per request) · Thread: dedicated (`voxd-llm`, owns model, context and KV cache)
//!
//! The KV cache persists across turns: the system prompt and the earlier turns are
//! evaluated once, and each new prompt only evaluates what is new. Tokens go through
//! the sentence splitter, and each finished clause goes to tts at once.

use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::splitter::Splitter;
use super::telemetry::{LlmStats, Note, Notes};
use super::{Anchor, Cancel, Counters, TurnId};
use crate::engine::llm::{Llm, LlmError, Message, Role};

/// Answer the user's latest words in the light of the conversation so far.
pub struct Request {
    pub turn: TurnId,
    pub history: Vec<Message>,
    pub user: String,
    pub anchor: Anchor,
    pub cancel: Cancel,
    pub respond_to: oneshot::Sender<Result<Reply, String>>,
}

/// The whole reply, for the agent's history.
#[derive(Debug)]
pub struct Reply {
    pub text: String,
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
    pub system_prompt: String,
    pub history_tokens: usize,
    /// Hand tts each clause as soon as it is complete (else the whole reply at the end).
    pub stream_sentences: bool,
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
        let mut session = llm.session()?;
        let system = Message { role: Role::System, content: self.system_prompt.clone() };
        // Warm-up: the system prompt sits in the KV cache before anyone speaks.
        session.prefill(&[system.clone(), Message { role: Role::User, content: String::new() }])?;
        let _ = ready.send(());
        while let Some(req) = rx.blocking_recv() {
            let Request { turn, history, user, anchor, cancel, respond_to } = req;
            if cancel.is_cancelled() {
                let _ = respond_to.send(Ok(Reply { text: String::new(), cancelled: true }));
                continue;
            }
            let history = self.trim_history(&llm, history)?;
            let history_turns = history.len() / 2;
            let mut messages = Vec::with_capacity(history.len() + 2);
            messages.push(system.clone());
            messages.extend(history);
            messages.push(Message { role: Role::User, content: user });

            let mut splitter = Splitter::default();
            let mut index = 0;
            let mut first_token = true;
            let closed = std::cell::Cell::new(false); // tts gone: shutting down
            let send = |text: String, last: bool, index: &mut usize| {
                if *index == 0 && !text.is_empty() {
                    notes.send(Note::FirstSentence { turn, at: Instant::now() });
                }
                let s = Sentence { turn, index: *index, text, anchor, cancel: cancel.clone(), last };
                *index += 1;
                if tx.blocking_send(s).is_err() {
                    closed.set(true);
                }
                Counters::depth(&counters.llm_to_tts_depth, &tx);
            };
            let result = session.generate(&messages, |piece| {
                if first_token {
                    first_token = false;
                    notes.send(Note::LlmFirstToken { turn, at: Instant::now() });
                }
                if !self.stream_sentences {
                    splitter.hold(piece);
                    return !cancel.is_cancelled() && !closed.get();
                }
                for sentence in splitter.push(piece) {
                    send(sentence, false, &mut index);
                    if index == 1 {
                        wait_for_first_audio(&counters, turn, &cancel);
                    }
                }
                !cancel.is_cancelled() && !closed.get()
            });
            let g = match result {
                Ok(g) => g,
                Err(e @ LlmError::PromptTooLong { .. }) => {
                    // Not fatal: this turn cannot be answered; say so and go on.
                    tracing::error!(turn, "{e}");
                    send("Sorry, that was too long for me to take in.".into(), true, &mut index);
                    let _ = respond_to.send(Err(e.to_string()));
                    continue;
                }
                Err(e) => {
                    let _ = respond_to.send(Err(e.to_string()));
                    return Err(e.into());
                }
            };
            if !cancel.is_cancelled() {
                let rest = splitter.finish().unwrap_or_default();
                send(rest, true, &mut index);
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
            notes.send(Note::LlmDone { turn, at: Instant::now(), reply: g.text.trim().to_string(), llm: stats });
            let _ = respond_to.send(Ok(Reply { text: g.text.trim().to_string(), cancelled: g.stopped }));
            if closed.get() {
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

/// After the first sentence, generation pauses until tts has its audio (or 500 ms
/// have passed): on a small board both engines compete for the same cores, and only
/// the first sentence's synthesis is on the path to the first sound.
fn wait_for_first_audio(counters: &Counters, turn: TurnId, cancel: &Cancel) {
    let deadline = Instant::now() + std::time::Duration::from_millis(500);
    while counters.tts_ready_turn.load(std::sync::atomic::Ordering::Acquire) < turn && Instant::now() < deadline && !cancel.is_cancelled() {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}
