//! The agent: owns the conversation.
//!
//! Input: `Transcript` (from asr), `Voice` (watch, from vad), `Status` (watch, from
//! playback) · Output: `Request` (to llm), the confirmed turn (watch, to playback) ·
//! Thread: tokio task
//!
//! Starts a turn for each transcript, keeps the rolling history, and decides when
//! the user has interrupted the assistant (barge-in): then the turn is cancelled —
//! llm stops at the next token, tts drops what is queued, playback cuts the sound —
//! and the history keeps only what the user actually heard.
//!
//! A speculative transcript (made at a pause, before the hangover has run out)
//! starts a *tentative* turn: the reply is generated and synthesised during the
//! hangover, and playback holds its audio until the final transcript confirms the
//! pause was the end. If the user speaks on instead, the tentative turn is abandoned:
//! nothing of it is heard, logged or kept in the history.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::asr::Transcript;
use super::llm::{Reply, Request};
use super::playback::Status;
use super::telemetry::{Models, Note, Notes, TurnStart};
use super::vad::Voice;
use super::{sleep_until, Cancel, TurnId};
use crate::engine::llm::{Message, Role};

pub struct Agent {
    /// Let speech during a reply interrupt it.
    pub barge_in: bool,
    /// How long the user must speak before that counts as an interruption.
    pub barge_in_min: Duration,
    /// Answer turns strictly one after another, never cancelling and never starting
    /// early (a file played as fast as possible has no "during" and no hangover).
    pub sequential: bool,
    /// Keep the conversation so far for the next prompt (else each question stands
    /// alone: for models that lose the thread with history).
    pub multi_turn: bool,
    pub models: Models,
}

/// The turn being answered.
struct Current {
    turn: TurnId,
    user: String,
    cancel: Cancel,
    reply_rx: Option<oneshot::Receiver<Result<Reply, String>>>,
    reply: Option<String>,
    /// Started from a speculative transcript and not confirmed yet: unheard.
    tentative: bool,
}

impl Agent {
    pub async fn run(
        self,
        mut transcripts: mpsc::Receiver<Transcript>,
        mut voice: watch::Receiver<Voice>,
        mut playback: watch::Receiver<Status>,
        llm: mpsc::Sender<Request>,
        confirmed: watch::Sender<TurnId>,
        notes: Notes,
    ) -> anyhow::Result<()> {
        let mut history: Vec<Message> = Vec::new();
        let mut current: Option<Current> = None;
        // The newest turn whose end was certain: older transcripts are late.
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
                    if t.speculative {
                        if self.sequential {
                            continue;
                        }
                        match current.take() {
                            // Still answering an earlier turn: guessing now would compete
                            // with it; the final transcript will supersede it instead.
                            Some(c) if !c.tentative => current = Some(c),
                            older_guess => {
                                if let Some(c) = older_guess {
                                    abandon(c, &notes);
                                }
                                current = Some(self.start(t, true, &history, &llm, &notes).await?);
                            }
                        }
                        continue;
                    }
                    newest = t.turn;
                    match current.take() {
                        Some(mut c) if c.tentative && c.turn == t.turn && t.stats.speculative_hit => {
                            // The pause was the end: the reply under way is the answer.
                            c.tentative = false;
                            let endpoint_at = t.endpoint_at.expect("final transcripts carry their endpoint");
                            notes.send(Note::Confirmed { turn: c.turn, endpoint_at });
                            confirmed.send_replace(c.turn);
                            current = Some(c);
                        }
                        other => {
                            match other {
                                Some(c) if c.tentative => abandon(c, &notes),
                                // The user spoke again before the answer was over.
                                Some(c) => self.cancel(c, "superseded by new speech", &playback, &notes, &mut history),
                                None => {}
                            }
                            barge_at = None;
                            let c = self.start(t, false, &history, &llm, &notes).await?;
                            confirmed.send_replace(c.turn);
                            current = Some(c);
                        }
                    }
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
                changed = voice.changed(), if busy && !self.sequential => {
                    if changed.is_err() {
                        continue; // vad ended: no more speech
                    }
                    let v = *voice.borrow();
                    let answering = current.as_ref().map(|c| (c.turn, c.tentative));
                    barge_at = match answering {
                        // Speech on after the guessed pause: the guess was wrong.
                        Some((turn, true)) if v.speaking && v.turn > turn => {
                            abandon(current.take().expect("checked"), &notes);
                            None
                        }
                        Some((turn, false)) if self.barge_in && v.speaking && v.turn > turn => Some((v.turn, v.since + self.barge_in_min)),
                        _ => None,
                    };
                }
                _ = sleep_until(barge_deadline), if barge_deadline.is_some() => {
                    let (speech_turn, _) = barge_at.take().expect("guarded");
                    let still = { let v = voice.borrow(); v.speaking && v.turn >= speech_turn };
                    if let (true, Some(c)) = (still, current.take()) {
                        tracing::info!(turn = c.turn, "barge-in: the user interrupted");
                        self.cancel(c, "barge-in", &playback, &notes, &mut history);
                    }
                }
            }
            // A turn is over when its reply is known and its audio has played.
            let finished = current.as_ref().is_some_and(|c| !c.tentative && c.reply.is_some() && playback.borrow().done_turn >= c.turn);
            if finished {
                let c = current.take().expect("checked");
                let reply = c.reply.unwrap_or_default();
                self.remember(&mut history, c.user, reply);
            }
        }
        Ok(())
    }

    async fn start(&self, t: Transcript, tentative: bool, history: &[Message], llm: &mpsc::Sender<Request>, notes: &Notes) -> anyhow::Result<Current> {
        let cancel = Cancel::default();
        notes.send(Note::TurnStart(Box::new(TurnStart {
            turn: t.turn,
            anchor: t.anchor,
            endpoint_at: t.endpoint_at,
            speculative: tentative,
            asr_done_at: t.done_at,
            audio_s: t.audio_s,
            transcript: t.text.clone(),
            asr: t.stats.clone(),
            models: self.models.clone(),
        })));
        let (respond_to, reply_rx) = oneshot::channel();
        let request = Request { turn: t.turn, history: history.to_vec(), user: t.text.clone(), anchor: t.anchor, cancel: cancel.clone(), respond_to };
        llm.send(request).await.map_err(|_| anyhow::anyhow!("the llm stage stopped"))?;
        Ok(Current { turn: t.turn, user: t.text, cancel, reply_rx: Some(reply_rx), reply: None, tentative })
    }

    /// Cancels a turn everywhere and keeps in the history only what was heard.
    fn cancel(&self, c: Current, reason: &str, playback: &watch::Receiver<Status>, notes: &Notes, history: &mut Vec<Message>) {
        c.cancel.cancel();
        let spoken = {
            let s = playback.borrow();
            if s.turn == c.turn { s.spoken.join(" ") } else { String::new() }
        };
        notes.send(Note::TurnEnd { turn: c.turn, at: Instant::now(), spoken: spoken.clone(), cancelled: true, reason: Some(reason.to_string()) });
        if !spoken.is_empty() {
            self.remember(history, c.user, spoken);
        }
    }

    fn remember(&self, history: &mut Vec<Message>, user: String, assistant: String) {
        if self.multi_turn {
            history.push(Message { role: Role::User, content: user });
            history.push(Message { role: Role::Assistant, content: assistant });
        }
    }
}

/// Drops a tentative turn: its work stops, and as nothing of it was heard, nothing
/// of it is kept.
fn abandon(c: Current, notes: &Notes) {
    debug_assert!(c.tentative);
    tracing::debug!(turn = c.turn, "the user spoke on: reply started at the pause abandoned");
    c.cancel.cancel();
    notes.send(Note::Abandoned { turn: c.turn });
}
