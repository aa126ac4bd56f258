//! The agent: owns the conversation.
//!
//! Input: `Transcript` (from asr, or typed: the control socket), `Voice` (watch, from
//! vad), `Status` (watch, from playback), `Reply` (from llm, per request), `Outcome`
//! (from tools, per job), `Command` (the control socket; the stop deadline) ·
//! Output: `Request` (to llm), `Job` (to tools), the confirmed turn (watch, to
//! playback) · Thread: tokio task
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
//! nothing of it is heard, logged or kept in the history. Nothing is *done* on a
//! guess either: a tool call decided during the hangover waits for the confirmation.
//!
//! A turn that calls a tool: the model's call (or a fast-path intent's) is validated
//! and checked against the allow-list, confirmed with the user when the tool asks
//! for it, run by the tools stage, and its outcome spoken — by a template, by the
//! model in one sentence, or as an honest error.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::asr::{Thread, Transcript};
use super::llm::{Exchange, Job, Reply, Request};
use super::playback::Status;
use super::telemetry::{Models, Note, Notes, ToolCallRecord, TurnStart};
use super::vad::Voice;
use super::{sleep_until, tools, Anchor, Cancel, TurnId};
use crate::engine::llm::{Message, Role};
use crate::tools::intents::{yes_or_no, Intents};
use crate::tools::{parse_call, say, CallFormat, Outcome, Rejected, ToolCall, ToolConfig};

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
    /// `agent.history_tokens`: what the llm stage may use of the history. The agent
    /// keeps a little more than that can hold, and nothing older.
    pub history_tokens: usize,
    pub models: Models,
    /// What the model may call, and the commands that skip the model.
    pub tools: Vec<ToolConfig>,
    pub intents: Intents,
    /// The home's devices: for the hint naming the devices a request names, and to
    /// generate the intents again when they change.
    pub home: Option<watch::Receiver<crate::tools::Home>>,
    /// `[tools] generated_intents`.
    pub generated_intents: bool,
    /// `[tools] device_hints`: the user's words reach the model with the devices they
    /// name (see `tools::grounding`).
    pub device_hints: bool,
    /// `[audio] room`: where the device's own microphone is (a satellite's turns
    /// carry their own).
    pub room: Option<String>,
    /// How calls and their results are written in the conversation (the preamble's
    /// format, `[tools] call_format`).
    pub call_format: CallFormat,
    /// The longest a turn may take from its start to the end of its reply (`[agent]
    /// max_reply_s`): then it is cancelled, whatever holds it up.
    pub max_reply: Duration,
    /// How long a yes/no question before a tool runs stays open once it has been
    /// heard (`[tools] confirm_within_s`).
    pub confirm_within: Duration,
}

/// The other stages, as the agent reaches them.
pub struct Links {
    pub llm: mpsc::Sender<Request>,
    pub tools: mpsc::Sender<tools::Job>,
    pub confirmed: watch::Sender<TurnId>,
    pub notes: Notes,
}

/// What the agent is told from outside the conversation.
#[derive(Debug)]
pub enum Command {
    /// Cancel the turn being answered, if any (`voxd ctl cancel`, or a stop whose
    /// drain ran out of time); `done` hears which turn that was.
    Cancel { reason: String, done: Option<oneshot::Sender<Option<TurnId>>> },
}

/// Characters kept in the history per token of `agent.history_tokens` (tokens
/// average about four characters of English; eight leaves the llm stage the choice).
const HISTORY_CHARS_PER_TOKEN: usize = 8;

/// A reply started at a pause waits this long for the end of the turn to be
/// confirmed (it comes one hangover later, unless vad had to drop the utterance).
const TENTATIVE_WITHIN: Duration = Duration::from_secs(10);

impl Agent {
    pub async fn run(mut self, mut transcripts: mpsc::Receiver<Transcript>, mut commands: mpsc::Receiver<Command>, mut voice: watch::Receiver<Voice>, mut playback: watch::Receiver<Status>, links: Links) -> anyhow::Result<()> {
        let (intents, home) = (std::mem::take(&mut self.intents), self.home.take());
        let mut c = Conversation { agent: &self, links, intents, home, history: VecDeque::new(), history_chars: 0, exchanges: 0, current: None, newest: 0, barge_at: None, pending: None, thread: Thread::Device, elsewhere: VecDeque::new() };
        let (mut transcripts_open, mut voice_open, mut commands_open) = (true, true, true);
        loop {
            let busy = c.current.is_some();
            if !transcripts_open && !busy {
                break;
            }
            let waiting = c.current.as_ref().is_some_and(|t| !matches!(t.waiting, Waiting::Nothing));
            let barge_deadline = c.barge_at.map(|(_, at)| at);
            let turn_deadline = c.current.as_ref().map(|t| t.deadline);
            tokio::select! {
                t = transcripts.recv(), if transcripts_open && !(self.sequential && busy) => match t {
                    Some(t) => c.on_transcript(t, &playback).await?,
                    None => transcripts_open = false,
                },
                p = progress(c.current.as_mut()), if waiting => c.on_progress(p).await?,
                changed = playback.changed(), if busy => {
                    if changed.is_err() {
                        anyhow::bail!("the playback stage stopped");
                    }
                }
                changed = voice.changed(), if busy && voice_open && !self.sequential => match changed {
                    Ok(()) => c.on_voice(*voice.borrow()),
                    // vad has stopped (capture ended): nobody will interrupt any more.
                    Err(_) => voice_open = false,
                },
                _ = sleep_until(barge_deadline), if barge_deadline.is_some() => c.on_barge_deadline(&voice, &playback),
                _ = sleep_until(turn_deadline), if turn_deadline.is_some() => c.on_turn_deadline(&playback),
                command = commands.recv(), if commands_open => match command {
                    Some(Command::Cancel { reason, done }) => {
                        let turn = c.cancel_current(&reason, &playback);
                        if let Some(done) = done {
                            let _ = done.send(turn);
                        }
                    }
                    None => commands_open = false,
                },
            }
            c.finish_if_heard(&playback);
        }
        Ok(())
    }
}

/// The turn being answered.
struct Current {
    turn: TurnId,
    user: String,
    anchor: Anchor,
    cancel: Cancel,
    /// Started from a speculative transcript and not confirmed yet: unheard.
    tentative: bool,
    waiting: Waiting,
    /// What was said, once the last job of the turn is done.
    reply: Option<String>,
    /// This turn's messages for the model: the user's words, then any call and result.
    messages: Vec<Message>,
    /// A call decided while tentative: made once the turn is confirmed.
    held: Option<Decision>,
    /// The model already had its one chance to repair an invalid call.
    repaired: bool,
    /// A stage failed on this turn (it said so): the exchange is not kept.
    failed: bool,
    /// Tentative: when the guess lapses unconfirmed; else when the reply is cut
    /// short, however far it got (`[agent] max_reply_s`).
    deadline: Instant,
}

/// What a turn waits for.
enum Waiting {
    Nothing,
    Llm(oneshot::Receiver<Result<Reply, String>>),
    Tool { rx: oneshot::Receiver<Outcome>, call: ToolCall, tool: ToolConfig },
}

enum Progress {
    Reply(Result<Result<Reply, String>, oneshot::error::RecvError>),
    Outcome(Result<Outcome, oneshot::error::RecvError>, ToolCall, ToolConfig),
}

/// What the current turn was waiting for, when it comes. (select! builds every
/// branch's future even when the branch is off: this one must not assume a turn.)
async fn progress(current: Option<&mut Current>) -> Progress {
    match current.map(|c| &mut c.waiting) {
        Some(Waiting::Llm(rx)) => Progress::Reply(rx.await),
        Some(Waiting::Tool { rx, call, tool }) => Progress::Outcome(rx.await, call.clone(), tool.clone()),
        Some(Waiting::Nothing) | None => std::future::pending().await,
    }
}

/// A tool call a turn is to make.
enum Decision {
    /// The model's output, still to be validated.
    Model(String),
    /// A fast-path intent's call (valid by construction).
    Intent(ToolCall),
}

/// A call waiting for the user's yes. It belongs to the turn that asked: if that
/// turn is cancelled (the question was not heard out), it is gone.
struct Pending {
    call: ToolCall,
    tool: ToolConfig,
    via: &'static str,
    /// The turn that asks the question.
    turn: TurnId,
    /// When the question had been heard in full (the window runs from there).
    asked: Option<Instant>,
}

/// The agent's state while it runs.
struct Conversation<'a> {
    agent: &'a Agent,
    links: Links,
    /// The agent's, made again from `home` when its devices change.
    intents: Intents,
    home: Option<watch::Receiver<crate::tools::Home>>,
    /// Finished exchanges, oldest first, and their characters in all.
    history: VecDeque<Arc<Exchange>>,
    history_chars: usize,
    /// Exchanges ever kept (their ids).
    exchanges: u64,
    current: Option<Current>,
    /// The newest turn whose end was certain: older transcripts are late.
    newest: TurnId,
    barge_at: Option<(TurnId, Instant)>,
    pending: Option<Pending>,
    /// Whose conversation `history` and `pending` are.
    thread: Thread,
    /// The other conversations' (Home Assistant's, the satellites'), the most
    /// recently left last.
    elsewhere: VecDeque<Elsewhere>,
}

/// A conversation set aside while another one is answered.
struct Elsewhere {
    thread: Thread,
    history: VecDeque<Arc<Exchange>>,
    history_chars: usize,
    pending: Option<Pending>,
}

/// Conversations set aside and kept; the one left longest ago is forgotten first.
const CONVERSATIONS_KEPT: usize = 16;

impl Conversation<'_> {
    async fn on_transcript(&mut self, t: Transcript, playback: &watch::Receiver<Status>) -> anyhow::Result<()> {
        if t.turn <= self.newest {
            tracing::debug!(turn = t.turn, newest = self.newest, "late transcript dropped");
            return Ok(());
        }
        if t.partial {
            self.read_ahead(&t);
            return Ok(());
        }
        if t.speculative {
            // No guessing in a file played as fast as possible, nor while a yes/no
            // question waits for its answer.
            if self.agent.sequential || self.pending.is_some() {
                return Ok(());
            }
            match self.current.take() {
                // Still answering an earlier turn: guessing now would compete with it;
                // the final transcript will supersede it instead.
                Some(c) if !c.tentative => self.current = Some(c),
                older_guess => {
                    if let Some(c) = older_guess {
                        self.abandon(c);
                    }
                    let c = self.start(t, true).await?;
                    self.current = Some(c);
                }
            }
            return Ok(());
        }
        self.newest = t.turn;
        self.switch_to(&t.thread);
        match self.current.take() {
            Some(mut c) if c.tentative && c.turn == t.turn && t.stats.speculative_hit => {
                // The pause was the end: the reply under way is the answer.
                c.tentative = false;
                c.deadline = Instant::now() + self.agent.max_reply;
                let endpoint_at = t.endpoint_at.expect("final transcripts carry their endpoint");
                self.links.notes.send(Note::Confirmed { turn: c.turn, endpoint_at });
                self.links.confirmed.send_replace(c.turn);
                if let Some(decision) = c.held.take() {
                    self.decided(&mut c, decision).await?;
                }
                self.current = Some(c);
            }
            other => {
                match other {
                    Some(c) if c.tentative => self.abandon(c),
                    // The user spoke again before the answer was over.
                    Some(c) => self.cancel(c, "superseded by new speech", playback),
                    None => {}
                }
                self.barge_at = None;
                let c = self.start(t, false).await?;
                self.links.confirmed.send_replace(c.turn);
                self.current = Some(c);
            }
        }
        Ok(())
    }

    /// Answers in `thread` from now on: the conversation so far is set aside with
    /// its history and open question, and the new one's are taken up (none, if it
    /// is new) — a "yes" answers only the question asked in its own conversation.
    fn switch_to(&mut self, thread: &Thread) {
        if *thread == self.thread && *thread != Thread::Alone {
            return;
        }
        let left = Elsewhere {
            thread: std::mem::replace(&mut self.thread, thread.clone()),
            history: std::mem::take(&mut self.history),
            history_chars: std::mem::take(&mut self.history_chars),
            pending: self.pending.take(),
        };
        if left.thread != Thread::Alone && (!left.history.is_empty() || left.pending.is_some()) {
            self.elsewhere.push_back(left);
            if self.elsewhere.len() > CONVERSATIONS_KEPT {
                self.elsewhere.pop_front();
            }
        }
        if let Some(i) = self.elsewhere.iter().position(|e| e.thread == *thread) {
            let back = self.elsewhere.remove(i).expect("found");
            (self.history, self.history_chars, self.pending) = (back.history, back.history_chars, back.pending);
        }
    }

    /// The user's words so far, while they go on speaking: the llm stage reads them
    /// into its KV cache, so the answer's prompt finds them there and only the last
    /// words remain to evaluate at the end. Only when the model has nothing else to
    /// do, and never waited for (a full queue skips it).
    fn read_ahead(&mut self, t: &Transcript) {
        if self.agent.sequential || self.pending.is_some() || self.current.is_some() {
            return;
        }
        // The last word may still change ("capit…" → "capital"); the device hints
        // follow the words, so the words alone are the answer's prompt's start.
        let Some((words, _)) = t.text.trim_end().rsplit_once(' ') else { return };
        let (respond_to, _) = oneshot::channel();
        let messages = vec![Message { role: Role::User, content: words.to_string() }];
        let request = Request { turn: t.turn, history: self.history.iter().cloned().collect(), messages, job: Job::ReadAhead, anchor: t.anchor, cancel: Cancel::default(), respond_to };
        let _ = self.links.llm.try_send(request);
    }

    /// Where the turn was said: its satellite's room, or the microphone's.
    fn room_of(&self, t: &Transcript) -> Option<String> {
        t.room.clone().or_else(|| if t.thread == Thread::Device { self.agent.room.clone() } else { None })
    }

    /// The user's words as the model gets them: with the devices they name, if the
    /// hints are on.
    fn asked(&self, said: &str, room: Option<&str>) -> String {
        use crate::tools::grounding;
        match (&self.home, room) {
            (Some(home), Some(room)) => grounding::asked_in(said, room, &self.agent.tools, &home.borrow(), self.agent.device_hints),
            (Some(home), None) => grounding::asked(said, &self.agent.tools, &home.borrow(), self.agent.device_hints),
            (None, Some(room)) => format!("{said}\n(Said in the {room}.)"),
            (None, None) => said.to_string(),
        }
    }

    /// Opens a turn for a transcript: the answer to a pending question, a fast-path
    /// command, or a question for the model.
    async fn start(&mut self, t: Transcript, tentative: bool) -> anyhow::Result<Current> {
        let room = self.room_of(&t);
        self.links.notes.send(Note::TurnStart(Box::new(TurnStart {
            turn: t.turn,
            anchor: t.anchor,
            endpoint_at: t.endpoint_at,
            speculative: tentative,
            asr_done_at: t.done_at,
            audio_s: t.audio_s,
            transcript: t.text.clone(),
            asr: t.stats.clone(),
            models: self.agent.models.clone(),
            typed: t.typed,
            started: t.started.clone(),
            room: room.clone(),
        })));
        let mut c = Current {
            turn: t.turn,
            user: t.text.clone(),
            anchor: t.anchor,
            cancel: Cancel::default(),
            tentative,
            waiting: Waiting::Nothing,
            reply: None,
            messages: vec![Message { role: Role::User, content: self.asked(&t.text, room.as_deref()) }],
            held: None,
            repaired: false,
            failed: false,
            deadline: Instant::now() + if tentative { TENTATIVE_WITHIN } else { self.agent.max_reply },
        };
        if let Some(error) = t.failed {
            // Whisper failed on what was said: an apology, and the turn logged so.
            self.links.notes.send(Note::Failed { turn: t.turn, stage: "asr", message: error, ends_turn: false });
            c.failed = true;
            self.say(&mut c, super::APOLOGY.into()).await?;
            return Ok(c);
        }
        let window = self.agent.confirm_within;
        if let Some(p) = self.pending.take().filter(|p| !tentative && p.asked.is_some_and(|at| at.elapsed() < window)) {
            match yes_or_no(&t.text) {
                Some(true) => {
                    self.execute(&mut c, p.call, p.tool, p.via).await?;
                    return Ok(c);
                }
                Some(false) => {
                    self.say(&mut c, say::declined()).await?;
                    return Ok(c);
                }
                None => {} // Something else: the question lapses; this is a new request.
            }
        }
        if let Some(home) = self.home.as_mut().filter(|h| self.agent.generated_intents && h.has_changed().unwrap_or(false)) {
            self.intents.regenerate(&self.agent.tools, &home.borrow_and_update());
        }
        if let Some(call) = self.intents.call(&t.text, &self.agent.tools) {
            if tentative {
                c.held = Some(Decision::Intent(call));
            } else {
                self.decided(&mut c, Decision::Intent(call)).await?;
            }
            return Ok(c);
        }
        self.ask_model(&mut c, !self.agent.tools.is_empty()).await?;
        Ok(c)
    }

    async fn on_progress(&mut self, p: Progress) -> anyhow::Result<()> {
        let mut c = self.current.take().expect("progress belongs to the current turn");
        c.waiting = Waiting::Nothing;
        match p {
            Progress::Reply(Err(_)) => anyhow::bail!("the llm stage stopped"),
            Progress::Reply(Ok(Err(e))) => {
                // The llm stage said sorry and logged why; the exchange is not kept.
                tracing::warn!(turn = c.turn, "no answer: {e}");
                c.failed = true;
                c.reply = Some(String::new());
            }
            Progress::Reply(Ok(Ok(reply))) => match reply.call {
                Some(text) if c.tentative => c.held = Some(Decision::Model(text)),
                Some(text) => self.decided(&mut c, Decision::Model(text)).await?,
                None => c.reply = Some(reply.text),
            },
            Progress::Outcome(Err(_), ..) => anyhow::bail!("the tools stage stopped"),
            Progress::Outcome(Ok(outcome), call, tool) => self.spoken_outcome(&mut c, outcome, call, tool).await?,
        }
        self.current = Some(c);
        Ok(())
    }

    /// A call is to be made: validate it, check it is allowed, ask first if the tool
    /// wants a yes, else run it.
    async fn decided(&mut self, c: &mut Current, decision: Decision) -> anyhow::Result<()> {
        let (parsed, via) = match decision {
            Decision::Intent(call) => {
                // Through the same schema as the model's calls: a pattern can capture a
                // number out of range as easily as a model can say one.
                let tool = self.agent.tools.iter().find(|t| t.name == call.name).expect("intents name configured tools");
                let checked = tool.validate(&call).and_then(|()| tool.permits(&call));
                if let Err(Rejected::Invalid(problem)) = checked {
                    tracing::info!(turn = c.turn, "intent call not valid: {problem}");
                    self.record(c.turn, ToolCallRecord { name: call.name.clone(), arguments: call.arguments.clone(), ok: false, ms: 0.0, via: "intent".into(), error: Some(problem) });
                    return self.say(c, say::could_not_call()).await;
                }
                (checked.map(|()| (call, tool)), "intent")
            }
            Decision::Model(text) => {
                let parsed = parse_call(&text, &self.agent.tools).and_then(|(call, tool)| tool.permits(&call).map(|()| (call, tool)));
                if let Err(Rejected::Invalid(problem)) = &parsed {
                    if !c.repaired {
                        // One repair: show the model its output and what is wrong with it.
                        c.repaired = true;
                        tracing::info!(turn = c.turn, "invalid call ({problem}): asking the model to repair {text}");
                        c.messages.push(Message { role: Role::Assistant, content: self.agent.call_format.framed(&text) });
                        c.messages.push(Message { role: Role::User, content: format!("That call is not valid: {problem}. Reply with a corrected call, or answer in words.") });
                        return self.ask_model(c, true).await;
                    }
                    self.record(c.turn, ToolCallRecord { name: call_name(&text), arguments: serde_json::Value::Null, ok: false, ms: 0.0, via: "model".into(), error: Some(problem.clone()) });
                    return self.say(c, say::could_not_call()).await;
                }
                (parsed, "model")
            }
        };
        let (call, tool) = match parsed {
            Ok((call, tool)) if via == "model" && tool.contradicts(&c.user) => {
                tracing::warn!(turn = c.turn, "refused: {} does the opposite of {:?}", tool.name, c.user);
                self.record(c.turn, ToolCallRecord { name: call.name.clone(), arguments: call.arguments.clone(), ok: false, ms: 0.0, via: via.into(), error: Some("the opposite of what was asked".into()) });
                remember_call(self.agent.call_format, &mut *c, &call, "refused: the opposite of what was asked");
                return self.say(c, say::opposite(tool)).await;
            }
            Ok((call, tool)) => (call, tool.clone()),
            Err(Rejected::NotAllowed { tool, target, call }) => {
                tracing::warn!(turn = c.turn, "refused: {tool} may not touch {target}");
                let t = self.agent.tools.iter().find(|t| t.name == tool).expect("a refused call names its tool").clone();
                self.record(c.turn, ToolCallRecord { name: tool, arguments: call.arguments.clone(), ok: false, ms: 0.0, via: via.into(), error: Some(format!("not allowed: {target}")) });
                remember_call(self.agent.call_format, c, &call, &format!("refused, not allowed to touch {target}"));
                return self.say(c, say::not_allowed(&t, &target)).await;
            }
            Err(Rejected::OutOfRange { tool, parameter, allowed, call }) => {
                // What the user asked for, and not possible: say what is, do nothing.
                tracing::info!(turn = c.turn, "{tool}: {parameter} must be {allowed}: {}", call.arguments);
                self.record(c.turn, ToolCallRecord { name: tool, arguments: call.arguments.clone(), ok: false, ms: 0.0, via: via.into(), error: Some(format!("out of range: {parameter} must be {allowed}")) });
                remember_call(self.agent.call_format, c, &call, &format!("not done: {parameter} must be {allowed}"));
                return self.say(c, say::out_of_range(&parameter, &allowed)).await;
            }
            // (Invalid calls, the model's and the intents', were dealt with above.)
            Err(Rejected::Invalid(_)) => return self.say(c, say::could_not_call()).await,
        };
        if tool.confirm {
            let question = tool.confirm_question(&call);
            self.pending = Some(Pending { call, tool, via, turn: c.turn, asked: None });
            return self.say(c, question).await;
        }
        self.execute(c, call, tool, via).await
    }

    async fn execute(&mut self, c: &mut Current, call: ToolCall, tool: ToolConfig, via: &'static str) -> anyhow::Result<()> {
        let (respond_to, rx) = oneshot::channel();
        let job = tools::Job { turn: c.turn, call: call.clone(), tool: tool.clone(), via, respond_to };
        self.links.tools.send(job).await.map_err(|_| anyhow::anyhow!("the tools stage stopped"))?;
        c.waiting = Waiting::Tool { rx, call, tool };
        Ok(())
    }

    /// Says how a call went: the tool's template, else the model in one sentence; a
    /// failure always plainly (the model might dress it up as a success).
    async fn spoken_outcome(&mut self, c: &mut Current, outcome: Outcome, call: ToolCall, tool: ToolConfig) -> anyhow::Result<()> {
        if let Some(error) = &outcome.error {
            remember_call(self.agent.call_format, c, &call, &format!("failed: {error}"));
            return self.say(c, say::failed(error)).await;
        }
        remember_call(self.agent.call_format, c, &call, if outcome.result.is_empty() { "done" } else { &outcome.result });
        if !tool.reply.is_empty() {
            let state = tool.executor.ends_with("_state").then_some(outcome.result.as_str());
            return self.say(c, crate::tools::render(&tool.reply, &call.arguments, state)).await;
        }
        self.ask_model(c, false).await
    }

    async fn ask_model(&mut self, c: &mut Current, tools: bool) -> anyhow::Result<()> {
        self.request(c, Job::Answer { tools }).await
    }

    async fn say(&mut self, c: &mut Current, text: String) -> anyhow::Result<()> {
        self.request(c, Job::Say(text)).await
    }

    async fn request(&mut self, c: &mut Current, job: Job) -> anyhow::Result<()> {
        let (respond_to, rx) = oneshot::channel();
        let request = Request { turn: c.turn, history: self.history.iter().cloned().collect(), messages: c.messages.clone(), job, anchor: c.anchor, cancel: c.cancel.clone(), respond_to };
        self.links.llm.send(request).await.map_err(|_| anyhow::anyhow!("the llm stage stopped"))?;
        c.waiting = Waiting::Llm(rx);
        Ok(())
    }

    fn record(&self, turn: TurnId, record: ToolCallRecord) {
        self.links.notes.send(Note::ToolCall { turn, record });
    }

    fn on_voice(&mut self, v: Voice) {
        let answering = self.current.as_ref().map(|c| (c.turn, c.tentative));
        self.barge_at = match answering {
            // Speech on after the guessed pause: the guess was wrong.
            Some((turn, true)) if v.speaking && v.turn > turn => {
                let c = self.current.take().expect("checked");
                self.abandon(c);
                None
            }
            Some((turn, false)) if self.agent.barge_in && v.speaking && v.turn > turn => Some((v.turn, v.since + self.agent.barge_in_min)),
            _ => None,
        };
    }

    fn on_barge_deadline(&mut self, voice: &watch::Receiver<Voice>, playback: &watch::Receiver<Status>) {
        let (speech_turn, _) = self.barge_at.take().expect("guarded");
        let still = {
            let v = voice.borrow();
            v.speaking && v.turn >= speech_turn
        };
        if let (true, Some(c)) = (still, self.current.take()) {
            tracing::info!(turn = c.turn, "barge-in: the user interrupted");
            self.cancel(c, "barge-in", playback);
        }
    }

    /// A turn ran out of time: a guess nobody confirmed is dropped; a reply that is
    /// still going after `max_reply_s` is cut, so nothing holds the speaker (and, in
    /// half-duplex, the microphone) for ever.
    fn on_turn_deadline(&mut self, playback: &watch::Receiver<Status>) {
        let Some(c) = self.current.take() else { return };
        if c.tentative {
            tracing::warn!(turn = c.turn, "the reply started at a pause was never confirmed: dropped");
            self.abandon(c);
        } else {
            let reason = format!("the turn took longer than [agent] max_reply_s = {}", self.agent.max_reply.as_secs_f64());
            tracing::warn!(turn = c.turn, "{reason}: cut short");
            self.cancel(c, &reason, playback);
        }
    }

    /// Cancels whatever is being answered (and forgets a yes/no question waiting for
    /// its answer); returns the turn.
    fn cancel_current(&mut self, reason: &str, playback: &watch::Receiver<Status>) -> Option<TurnId> {
        self.pending = None;
        self.barge_at = None;
        let c = self.current.take()?;
        let turn = c.turn;
        tracing::info!(turn, "cancelled: {reason}");
        if c.tentative {
            self.abandon(c);
        } else {
            self.cancel(c, reason, playback);
        }
        Some(turn)
    }

    /// A turn is over when its reply is known and its audio has played.
    fn finish_if_heard(&mut self, playback: &watch::Receiver<Status>) {
        let finished = self.current.as_ref().is_some_and(|c| !c.tentative && c.reply.is_some() && playback.borrow().done_turn >= c.turn);
        if finished {
            let mut c = self.current.take().expect("checked");
            if let Some(p) = self.pending.as_mut().filter(|p| p.turn == c.turn) {
                p.asked = Some(Instant::now());
            }
            let reply = c.reply.take().unwrap_or_default();
            if !c.failed {
                self.remember(c.messages, reply);
            }
        }
    }

    /// Cancels a turn everywhere and keeps in the history only what was heard.
    fn cancel(&mut self, c: Current, reason: &str, playback: &watch::Receiver<Status>) {
        c.cancel.cancel();
        // A question cut short was never put: nothing may be said yes to.
        if self.pending.as_ref().is_some_and(|p| p.turn == c.turn) {
            self.pending = None;
        }
        let spoken = {
            let s = playback.borrow();
            if s.turn == c.turn { s.spoken.join(" ") } else { String::new() }
        };
        self.links.notes.send(Note::TurnEnd { turn: c.turn, at: Instant::now(), spoken: spoken.clone(), cancelled: true, reason: Some(reason.to_string()) });
        if !spoken.is_empty() {
            self.remember(vec![Message { role: Role::User, content: c.user }], spoken);
        }
    }

    /// Drops a tentative turn: its work stops, and as nothing of it was heard (or
    /// done), nothing of it is kept.
    fn abandon(&mut self, c: Current) {
        debug_assert!(c.tentative);
        tracing::debug!(turn = c.turn, "the user spoke on: reply started at the pause abandoned");
        c.cancel.cancel();
        self.links.notes.send(Note::Abandoned { turn: c.turn });
    }

    /// Keeps a finished exchange for the next prompts: what was said and, for a tool
    /// turn, the call and its result too — a history of spoken confirmations alone
    /// would teach the model to answer commands in words instead of calling.
    fn remember(&mut self, mut exchange: Vec<Message>, reply: String) {
        if !self.agent.multi_turn {
            return;
        }
        exchange.push(Message { role: Role::Assistant, content: reply });
        self.exchanges += 1;
        let exchange = Arc::new(Exchange { id: self.exchanges, messages: exchange });
        self.history_chars += exchange.chars();
        self.history.push_back(exchange);
        // Memory stays bounded however long voxd runs: a token is at most a few
        // characters, so what is beyond this many could never fit the budget.
        let keep_chars = self.agent.history_tokens.max(1) * HISTORY_CHARS_PER_TOKEN;
        while self.history_chars > keep_chars && self.history.len() > 1 {
            let oldest = self.history.pop_front().expect("more than one");
            self.history_chars -= oldest.chars();
        }
    }
}

/// Adds a call and its result to the turn's exchange, as the model will see them in
/// the follow-up prompt and in later turns' history.
fn remember_call(format: CallFormat, c: &mut Current, call: &ToolCall, result: &str) {
    c.messages.push(Message { role: Role::Assistant, content: format.call_text(&call.name, &call.arguments) });
    c.messages.push(Message { role: Role::User, content: format.result_text(&call.name, result) });
}

/// The tool an invalid call meant, for the log ("?" when even that is unreadable).
fn call_name(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(crate::tools::format::call_json(text)).ok().and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_string)).unwrap_or_else(|| "?".into())
}
