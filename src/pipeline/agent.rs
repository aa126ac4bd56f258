//! The agent: owns the conversation.
//!
//! Input: `Transcript` (from asr), `Voice` (watch, from vad), `Status` (watch, from
//! playback) · Output: `Request` (to llm) · Thread: tokio task
//!
//! Starts a turn for each transcript, keeps the rolling history, and decides when
//! the user has interrupted the assistant (barge-in): then the turn is cancelled —
//! llm stops at the next token, tts drops what is queued, playback cuts the sound —
//! and the history keeps only what the user actually heard.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::asr::Transcript;
use super::llm::{Reply, Request};
use super::playback::Status;
use super::telemetry::{Models, Note, Notes, TurnStart};
use super::vad::Voice;
use super::{Cancel, TurnId};
use crate::engine::llm::{Message, Role};

pub struct Agent {
    /// Let speech during a reply interrupt it.
    pub barge_in: bool,
    /// How long the user must speak before that counts as an interruption.
    pub barge_in_min: Duration,
    /// Answer turns strictly one after another, never cancelling (a file played as
    /// fast as possible has no "during").
    pub sequential: bool,
    pub models: Models,
}

/// The turn being answered.
struct Current {
    turn: TurnId,
    user: String,
    cancel: Cancel,
    reply_rx: Option<oneshot::Receiver<Result<Reply, String>>>,
    reply: Option<String>,
}

impl Agent {
    pub async fn run(
        self,
        mut transcripts: mpsc::Receiver<Transcript>,
        mut voice: watch::Receiver<Voice>,
        mut playback: watch::Receiver<Status>,
        llm: mpsc::Sender<Request>,
        notes: Notes,
    ) -> anyhow::Result<()> {
        let mut history: Vec<Message> = Vec::new();
        let mut current: Option<Current> = None;
        let mut newest: TurnId = 0;
        let mut barge_at: Option<(TurnId, Instant)> = None;
        let mut transcripts_open = true;
        loop {
            let busy = current.is_some();
            if !transcripts_open && !busy {
                break;
            }
            let reply_pending = current.as_ref().is_some_and(|c| c.reply_rx.is_some());
            let barge_deadline = barge_at.map(|(_, at)| at);
            tokio::select! {
                t = transcripts.recv(), if transcripts_open && !(self.sequential && busy) => {
                    let Some(t) = t else {
                        transcripts_open = false;
                        continue;
                    };
                    if t.turn <= newest {
                        tracing::debug!(turn = t.turn, newest, "late transcript dropped");
                        continue;
                    }
                    newest = t.turn;
                    if let Some(c) = current.take() {
                        // The user spoke again before the answer was over.
                        cancel(c, "superseded by new speech", &playback, &notes, &mut history);
                    }
                    barge_at = None;
                    current = Some(self.start(t, &history, &llm, &notes).await?);
                }
                r = async { current.as_mut().and_then(|c| c.reply_rx.as_mut()).expect("guarded").await }, if reply_pending => {
                    let c = current.as_mut().expect("guarded");
                    c.reply_rx = None;
                    match r {
                        Ok(Ok(reply)) => c.reply = Some(reply.text),
                        Ok(Err(e)) => {
                            tracing::warn!(turn = c.turn, "no answer: {e}");
                            c.reply = Some(String::new());
                        }
                        Err(_) => anyhow::bail!("the llm stage stopped"),
                    }
                }
                changed = playback.changed(), if busy => {
                    if changed.is_err() {
                        anyhow::bail!("the playback stage stopped");
                    }
                }
                changed = voice.changed(), if busy && self.barge_in && !self.sequential => {
                    if changed.is_err() {
                        continue; // vad ended: no more speech
                    }
                    let v = *voice.borrow();
                    let answering = current.as_ref().map(|c| c.turn);
                    barge_at = match answering {
                        Some(turn) if v.speaking && v.turn > turn => Some((v.turn, v.since + self.barge_in_min)),
                        _ => None,
                    };
                }
                _ = sleep_until(barge_deadline), if barge_deadline.is_some() => {
                    let (speech_turn, _) = barge_at.take().expect("guarded");
                    let still = { let v = voice.borrow(); v.speaking && v.turn == speech_turn };
                    if let (true, Some(c)) = (still, current.take()) {
                        tracing::info!(turn = c.turn, "barge-in: the user interrupted");
                        cancel(c, "barge-in", &playback, &notes, &mut history);
                    }
                }
            }
            // A turn is over when its reply is known and its audio has played.
            let finished = current.as_ref().is_some_and(|c| c.reply.is_some() && playback.borrow().done_turn >= c.turn);
            if finished {
                let c = current.take().expect("checked");
                history.push(Message { role: Role::User, content: c.user });
                history.push(Message { role: Role::Assistant, content: c.reply.unwrap_or_default() });
            }
        }
        Ok(())
    }

    async fn start(&self, t: Transcript, history: &[Message], llm: &mpsc::Sender<Request>, notes: &Notes) -> anyhow::Result<Current> {
        let cancel = Cancel::default();
        notes.send(Note::TurnStart(Box::new(TurnStart {
            turn: t.turn,
            anchor: t.anchor,
            endpoint_at: t.endpoint_at,
            asr_done_at: t.done_at,
            audio_s: t.audio_s,
            transcript: t.text.clone(),
            asr: t.stats.clone(),
            models: self.models.clone(),
        })));
        let (respond_to, reply_rx) = oneshot::channel();
        let request = Request { turn: t.turn, history: history.to_vec(), user: t.text.clone(), anchor: t.anchor, cancel: cancel.clone(), respond_to };
        llm.send(request).await.map_err(|_| anyhow::anyhow!("the llm stage stopped"))?;
        Ok(Current { turn: t.turn, user: t.text, cancel, reply_rx: Some(reply_rx), reply: None })
    }
}

/// Cancels a turn everywhere and keeps in the history only what was heard.
fn cancel(c: Current, reason: &str, playback: &watch::Receiver<Status>, notes: &Notes, history: &mut Vec<Message>) {
    c.cancel.cancel();
    let spoken = {
        let s = playback.borrow();
        if s.turn == c.turn { s.spoken.join(" ") } else { String::new() }
    };
    notes.send(Note::TurnEnd { turn: c.turn, at: Instant::now(), spoken: spoken.clone(), cancelled: true, reason: Some(reason.to_string()) });
    if !spoken.is_empty() {
        history.push(Message { role: Role::User, content: c.user });
        history.push(Message { role: Role::Assistant, content: spoken });
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
