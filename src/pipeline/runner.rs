//! Builds the pipeline from the edges declared in `mod.rs`, starts each stage on its
//! thread or task, and supervises them: a stage that fails, panics or hangs is
//! reported by name (see `health`) and the run ends with that error — at once, not
//! after the other stages have wound down (a hung one never would).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tokio::sync::{oneshot, watch};

use super::agent::{Agent, Command};
use super::health::{self, Health};
use super::llm::LlmStage;
use super::playback::{Recording, Speaker, Status};
use super::telemetry::{Models, Note, Notes, TurnRecord};
use super::tts::Voice as TtsVoice;
use super::vad::Voice;
use super::*;
use crate::config::{AgentConfig, AudioConfig, IntentConfig, LlmConfig, ToolConfig, ToolsConfig, VadConfig, WakeConfig};
use crate::metrics::Metrics;
use crate::{control, device};
use crate::tools::intents::Intents;
use crate::tools::Toolbox;
use crate::engine::llm::Llm;

/// The loaded engines (and the connected tool executors), moved into their stages.
pub struct Engines {
    /// Whisper; None for a text run, which hears nothing.
    pub asr: Option<asr::Whisper>,
    /// Shared with a text run beside this one in the same process (`voxd run` serving
    /// Wyoming's conversations): one copy of the weights, a context each.
    pub llm: Arc<Llm>,
    pub tts: Box<dyn TtsVoice>,
    pub tts_rate_hz: u32,
    pub models: Models,
    pub toolbox: Toolbox,
    /// The wake-word detector, for `[wake] mode = "wake_word"`.
    pub wake: Option<wake::WakeWords>,
}

pub struct RunOptions {
    /// Pace the input as a microphone would (else as fast as possible).
    pub realtime: bool,
    pub vad: VadConfig,
    pub wake: WakeConfig,
    pub agent: AgentConfig,
    /// The persona and how replies are streamed (the engine itself is in `Engines`).
    pub llm: LlmConfig,
    /// Keep the conversation so far in the prompt (`agent.multi_turn`, resolved).
    pub multi_turn: bool,
    /// `[tools]`, the `[[tool]]`s and the `[[intent]]`s.
    pub tools: ToolsConfig,
    pub tool: Vec<ToolConfig>,
    pub intent: Vec<IntentConfig>,
    /// The home's devices as Home Assistant lists them (names for the prompt and the
    /// generated intents), as they change.
    pub home: watch::Receiver<crate::tools::Home>,
    /// Live devices: half-duplex and its echo tail.
    pub audio: AudioConfig,
    pub latency_log: Option<PathBuf>,
    /// A stage holding work without progress this long is hung (`[service]
    /// stage_deadline_s`).
    pub stage_deadline: Duration,
    /// A short fingerprint of the settings, logged with every turn so reports can
    /// group turns by configuration ("" when nobody cares).
    pub config_id: String,
}

/// What the pipeline listens to and speaks into.
pub enum Io {
    /// A recording (16 kHz mono), played in; the answers are recorded on its timeline.
    File(Vec<f32>),
    /// The microphone and the speaker, until `service.stop` is set.
    Devices { input: device::Input, output: device::Output, service: Service },
    /// Typed turns only, answered in words (Wyoming's `handle`): no microphone, no
    /// Whisper, no sound (give the engines `tts::Unvoiced`). Each `Ask` is a turn; the
    /// run ends when every sender of asks is gone. Metrics of its turns are served on
    /// `metrics`, if given.
    Text { asks: mpsc::Receiver<Ask>, metrics: Option<std::net::TcpListener> },
}

/// A turn asked for in words, and where its record goes once written (dropped
/// unanswered only when the pipeline stops first).
pub struct Ask {
    pub text: String,
    /// Whose conversation it continues (each keeps its own history and open
    /// question); None: a conversation of its own, with nothing said before it.
    pub conversation: Option<String>,
    /// Where it was said (a satellite's room), for the log and the agent.
    pub room: Option<String>,
    /// How it began (a satellite's wake word), for the log; typed otherwise.
    pub started: super::wake::Started,
    /// When it was asked: a wait behind other turns is logged.
    pub asked: std::time::Instant,
    /// Each piece of the reply as soon as it is said, for an asker that speaks it
    /// as it comes (a satellite, a streaming client); None: the record only. Pieces
    /// that find this full are not sent: the record's text has all of them.
    pub pieces: Option<mpsc::Sender<String>>,
    pub answer: oneshot::Sender<Arc<TurnRecord>>,
}

/// How a live run is steered and stopped.
pub struct Service {
    /// Set to stop (SIGINT and SIGTERM set it too): capture stops, the turn in flight
    /// is finished — cut short after `drain_limit` — and the run returns.
    pub stop: Arc<AtomicBool>,
    pub drain_limit: Duration,
    pub on_listening: Option<OnListening>,
    /// The control socket (`voxd ctl`), bound; removed when the run ends.
    pub control: Option<control::Socket>,
    /// The Prometheus endpoint's listener.
    pub metrics: Option<std::net::TcpListener>,
}

/// Called once the engines are warm and the microphone is being listened to (a
/// service says READY here), with what shows the pipeline is alive: the counters'
/// `capture_heartbeat` moving, and every stage healthy.
pub type OnListening = Box<dyn FnOnce(Arc<Counters>, Arc<Health>) + Send>;

pub struct RunReport {
    /// The turns, in order: all of them for a recording; for a live run the newest
    /// few (the log has them all; `turns_total` counts them).
    pub turns: Vec<TurnRecord>,
    pub turns_total: usize,
    /// How long after the input's end capture delivered its last frame (a recording
    /// paced in real time): a stalled pipeline would hold capture back.
    pub capture_lag_s: f64,
    /// A recording's run: what the speaker played, aligned with the input.
    pub recording: Option<Recording>,
    pub counters: Arc<Counters>,
}

/// Runs the whole pipeline on `io`.
pub fn run(engines: Engines, options: RunOptions, io: Io) -> Result<RunReport> {
    let live = matches!(io, Io::Devices { .. });
    let text = matches!(io, Io::Text { .. });
    // A log that cannot be written is an error now, not after the whole run.
    let log = options.latency_log.as_deref().map(telemetry::LatencyLog::open).transpose()?;
    let counters = Arc::new(Counters::default());
    let metrics = Arc::new(Metrics::default());
    // Tools may legitimately wait for their executor's timeout: that is not a hang.
    let longest_tool = options.tool.iter().map(|t| Duration::from_millis(t.timeout_ms as u64) + Duration::from_secs(5)).max().unwrap_or_default();
    let health = Health::new(options.stage_deadline.max(longest_tool));
    let (switches, turn_ids) = (Arc::new(Switches::default()), TurnIds::starting_at(1));
    let (note_tx, note_rx) = channel(&TELEMETRY);
    let notes = Notes::new(note_tx, counters.clone());

    // Edges, in data-flow order (see mod.rs for capacities and policies).
    let (frame_tx, frame_rx) = channel(&CAPTURE_TO_VAD);
    let (utt_tx, utt_rx) = channel(&VAD_TO_ASR);
    let (text_tx, text_rx) = channel(&ASR_TO_AGENT);
    // Typed turns (the control socket) join here, without keeping the edge open
    // once asr has hung up.
    let text_tx_for_control = text_tx.downgrade();
    let (req_tx, req_rx) = channel(&AGENT_TO_LLM);
    let (job_tx, job_rx) = channel(&AGENT_TO_TOOLS);
    let (sentence_tx, sentence_rx) = channel(&LLM_TO_TTS);
    let (speech_tx, speech_rx) = channel(&TTS_TO_PLAYBACK);
    let (command_tx, command_rx) = channel(&CONTROL_TO_AGENT);
    // Feedback, never bounded queues: what the user and the speaker are doing.
    let (voice_tx, voice_rx) = watch::channel(Voice { speaking: false, turn: 0, since: std::time::Instant::now() });
    let (status_tx, status_rx) = watch::channel(Status::default());
    // Forward, but a watch too: the newest turn whose reply may be heard.
    let (confirmed_tx, confirmed_rx) = watch::channel(0);

    let mut stages: Vec<(&'static str, JoinHandle<Result<()>>)> = Vec::new();

    // The llm stage warms its KV cache with the system prompt before audio starts.
    let (ready_tx, ready_rx) = oneshot::channel();
    // The tools sit in the system prompt (the cached prefix) and shape the grammar.
    let constrained = options.tools.grammar && !options.tool.is_empty();
    // Calls as the model was trained to write them, where `[tools] call_format` says so.
    let format = crate::tools::CallFormat::of(&options.tools, &engines.llm);
    let llm_stage = LlmStage {
        preamble: crate::tools::preamble(&options.llm.system_prompt, &options.tool, &options.home.borrow(), &options.tools, format),
        format,
        persona: options.llm.system_prompt.clone(),
        style: options.tools.clone(),
        home: options.home.clone(),
        history_tokens: options.agent.history_tokens as usize,
        stream_sentences: options.llm.stream_sentences,
        first_phrase_words: options.llm.first_phrase_words as usize,
        tools_grammar: if constrained { crate::tools::grammar(&options.tool, format)? } else { None },
        answer_grammar: constrained.then(crate::tools::answer_grammar),
        tools: options.tool.clone(),
    };
    {
        let (notes, counters, llm, pulse) = (notes.clone(), counters.clone(), engines.llm, health.pulse("llm"));
        stages.push(("llm", spawn("llm", &health, move || llm_stage.run(llm, req_rx, sentence_tx, notes, counters, pulse, ready_tx))?));
    }
    if ready_rx.blocking_recv().is_err() {
        return Err(supervise(stages).err().unwrap_or_else(|| anyhow!("the llm stage stopped during warm-up")));
    }
    // From here on a stage that hangs is reported, its turn logged as failed, and
    // the run ended (a live run's capture stopped first).
    let monitor_done = Arc::new(AtomicBool::new(false));
    {
        let (notes, stop) = (notes.downgrade(), match &io {
            Io::Devices { service, .. } => Some(service.stop.clone()),
            Io::File(_) | Io::Text { .. } => None,
        });
        health::monitor(health.clone(), monitor_done.clone(), move |problem| {
            if let Some(turn) = problem.turn {
                notes.send(Note::Failed { turn, stage: problem.stage, message: problem.what.clone(), ends_turn: true });
            }
            if let Some(stop) = stop {
                stop.store(true, std::sync::atomic::Ordering::Release);
            }
        })
        .context("starting the health monitor")?;
    }

    // A text run's turns come when they come, as a microphone's do.
    let clock = if live || text { Clock::live() } else { Clock::new(options.realtime) };
    // vad counts the guesses and ends it sends; asr drops a partial pass for them.
    let backlog = vad::Backlog::default();
    // Which speech is a turn: in wake-word mode the wake stage listens beside vad.
    let mode = if text { wake::Mode::Always } else { wake::Mode::of(&options.wake, live) };
    // vad → playback: a wake word heard, for the earcon.
    let (woke_tx, woke_rx) = watch::channel(0u64);
    let earcon = match options.wake.earcon.as_str() {
        _ if text => None,
        "" => None,
        path => {
            let clip = crate::audio::read_wav(std::path::Path::new(path), engines.tts_rate_hz).context("[wake] earcon")?;
            Some(playback::Earcon { clip: clip.samples, rate_hz: engines.tts_rate_hz, wakes: woke_rx })
        }
    };
    let wake_words = engines.wake.as_ref().map(|w| w.words.join(", ")).unwrap_or_default();
    let wake_link = match (mode, engines.wake) {
        (wake::Mode::WakeWord, Some(w)) => {
            let (tx, rx) = channel(&VAD_TO_WAKE);
            let heard = wake::Heard::default();
            let words = w.words.iter().map(|word| (word.clone(), wake::Trigger::for_word(&options.wake, word))).collect();
            let (heard_for_wake, counters, pulse) = (heard.clone(), counters.clone(), health.pulse("wake"));
            stages.push(("wake", spawn("wake", &health, move || wake::run(w.detector, words, rx, heard_for_wake, counters, pulse))?));
            Some((tx, heard))
        }
        (wake::Mode::WakeWord, None) => return Err(anyhow!("[wake] mode is \"wake_word\" but no wake-word model is loaded")),
        _ => None,
    };
    // Listening: vad, and Whisper after it. A text run hears nothing: its asks take
    // Whisper's place at the agent's door.
    let typed_tx = if text {
        Some(text_tx)
    } else {
        {
            let backlog = backlog.clone();
            let (config, clock, counters, notes, switches, turn_ids) = (options.vad.clone(), clock.clone(), counters.clone(), notes.clone(), switches.clone(), turn_ids.clone());
            // Live devices hear the speaker: half-duplex keeps the assistant from answering itself.
            let deafen = (live && options.audio.half_duplex).then(|| vad::Deafen { speaker: status_rx.clone(), tail: std::time::Duration::from_millis(options.audio.echo_tail_ms as u64) });
            // A recording played as fast as possible has no time for its answers on its
            // timeline: there an answer opens no follow-up window.
            let wake_config = crate::config::WakeConfig { follow_up_s: if clock.realtime { options.wake.follow_up_s } else { 0.0 }, ..options.wake.clone() };
            let listening = vad::Listening { gate: wake::Gate::new(mode, &wake_config, options.vad.min_speech_ms), wake: wake_link, answers: status_rx.clone(), woke: woke_tx };
            tracing::info!("listening: {}", match mode {
                wake::Mode::Always => "every utterance is answered".to_string(),
                wake::Mode::PushToTalk => "push-to-talk only (`voxd ctl ptt`)".to_string(),
                wake::Mode::WakeWord => format!("for {wake_words} (threshold {}), and for {} s after each answer", wake_config.threshold, wake_config.follow_up_s),
            });
            let pulse = health.pulse("vad");
            stages.push(("vad", spawn("vad", &health, move || vad::run(config, clock, deafen, listening, switches, turn_ids, frame_rx, utt_tx, backlog, voice_tx, counters, notes, pulse))?));
        }
        let asr = engines.asr.ok_or_else(|| anyhow!("the pipeline listens with Whisper, and none was loaded"))?;
        let (notes, counters, pulse) = (notes.clone(), counters.clone(), health.pulse("asr"));
        stages.push(("asr", spawn("asr", &health, move || asr::run(asr, utt_rx, backlog, text_tx, notes, counters, pulse))?));
        None
    };
    {
        let (voice, notes, counters, pulse) = (engines.tts, notes.clone(), counters.clone(), health.pulse("tts"));
        stages.push(("tts", spawn("tts", &health, move || tts::run(voice, sentence_rx, speech_tx, notes, counters, pulse))?));
    }
    {
        let (toolbox, notes, pulse) = (engines.toolbox, notes.clone(), health.pulse("tools"));
        stages.push(("tools", spawn("tools", &health, move || tools::run(toolbox, job_rx, notes, pulse))?));
    }

    let frame_len = (options.vad.frame_ms * 16) as usize;
    // A recording is paced by a task below; the microphone by a thread of its own.
    let mut frame_tx = Some(frame_tx);
    // (A text run's metrics listener: a live run's is in its service.)
    let (file, speaker, mut service, asks, text_metrics) = match io {
        Io::File(samples) => (Some(samples), Speaker::recording(engines.tts_rate_hz, clock.clone()), None, None, None),
        Io::Text { asks, metrics } => (None, Speaker::Silent, None, Some(asks), metrics),
        Io::Devices { input, output, mut service } => {
            let (tx, capture_counters, stop_capture, pulse) = (frame_tx.take().expect("unused"), counters.clone(), service.stop.clone(), health.pulse("capture"));
            stages.push(("capture", spawn("capture", &health, move || capture::pace_device(input, frame_len, stop_capture, tx, capture_counters, pulse))?));
            if let Some(listening) = service.on_listening.take() {
                listening(counters.clone(), health.clone());
            }
            (None, Speaker::device(output, counters.clone()), Some(service), None, None)
        }
    };
    let models = engines.models.clone();
    let agent = Agent {
        barge_in: options.agent.barge_in && !(live && options.audio.half_duplex),
        barge_in_min: std::time::Duration::from_millis(options.agent.barge_in_min_ms as u64),
        sequential: !clock.realtime,
        multi_turn: options.multi_turn,
        history_tokens: options.agent.history_tokens as usize,
        models: engines.models,
        intents: {
            let configured = Intents::new(&options.intent)?;
            if options.tools.generated_intents { configured.with_generated(&options.tool, &options.home.borrow()) } else { configured }
        },
        home: Some(options.home.clone()),
        generated_intents: options.tools.generated_intents,
        call_format: format,
        device_hints: options.tools.device_hints,
        tools: options.tool,
        room: Some(options.audio.room.clone()).filter(|r| !r.is_empty()),
        max_reply: Duration::from_secs_f32(options.agent.max_reply_s),
        confirm_within: Duration::from_secs_f32(options.tools.confirm_within_s),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    let timing = telemetry::Timing { realtime: clock.realtime, live };
    // A text run answers each ask with its turn's record, as telemetry writes it.
    let announce = text.then(|| tokio::sync::broadcast::channel(16).0);
    let outcome = runtime.block_on(async {
        // The tasks share this thread: one beat for all of them, stepped by a ticker
        // that only runs while the thread is free (a task that blocks it hangs it).
        let pulse = health.pulse("runtime");
        pulse.busy(0);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                pulse.step();
            }
        });
        let finished = async {
        // Convert here: tokio's sockets need the runtime.
        fn listener_from_std<L>(l: std::io::Result<L>) -> Result<L> {
            l.context("handing a listening socket to the async runtime")
        }
        let capture = match file {
            Some(input) => {
                let input_s = input.len() as f64 / crate::audio::ASR_RATE_HZ as f64;
                let (capture_clock, frame_tx) = (clock.clone(), frame_tx.take().expect("a recording feeds vad from here"));
                tokio::spawn(task("capture", health.clone(), async move {
                    capture::pace_file(input, frame_len, capture_clock.clone(), frame_tx).await?;
                    Ok::<f64, anyhow::Error>(capture_clock.start.elapsed().as_secs_f64() - input_s)
                }))
            }
            None => tokio::spawn(async { Ok(0.0) }), // the capture thread, supervised below
        };
        // The metrics endpoint's own thread stops when this is dropped, with the run.
        let listener = service.as_mut().and_then(|s| s.metrics.take()).or(text_metrics);
        let _metrics_server = match listener {
            Some(listener) => {
                let (metrics, counters, models) = (metrics.clone(), counters.clone(), models.clone());
                Some(crate::metrics::Server::start(listener, move || metrics.render(&counters, &models))?)
            }
            None => None,
        };
        if let Some(service) = service.as_mut() {
            tokio::spawn(stop_on_signal(service.stop.clone()));
            tokio::spawn(cap_drain(service.stop.clone(), service.drain_limit, command_tx.clone()));
            if let Some(listener) = service.control.as_mut().and_then(control::Socket::take_listener) {
                let handle = control::Handle {
                    switches: switches.clone(),
                    turn_ids: turn_ids.clone(),
                    transcripts: text_tx_for_control.clone(),
                    commands: command_tx.clone(),
                    voice: voice_rx.clone(),
                    playback: status_rx.clone(),
                    metrics: metrics.clone(),
                    counters: counters.clone(),
                    models: models.clone(),
                    clock: clock.clone(),
                    health: health.clone(),
                    push_to_talk_limit: Duration::from_secs_f32(options.vad.max_utterance_s),
                };
                tokio::spawn(control::serve(listener_from_std(tokio::net::UnixListener::from_std(listener))?, handle));
            }
        }
        if let (Some(asks), Some(transcripts), Some(announce)) = (asks, typed_tx, announce.as_ref()) {
            let answering = Answering {
                transcripts,
                turn_ids: turn_ids.clone(),
                clock: clock.clone(),
                written: announce.subscribe(),
                said: status_rx.clone(),
                patience: Duration::from_secs_f32(options.agent.max_reply_s) + ANSWER_GRACE,
            };
            tokio::spawn(task("asks", health.clone(), answering.run(asks)));
        }
        drop(command_tx);
        let links = super::agent::Links { llm: req_tx, tools: job_tx, confirmed: confirmed_tx, notes: notes.clone() };
        let agent = tokio::spawn(task("agent", health.clone(), agent.run(text_rx, command_rx, voice_rx, status_rx, links)));
        let playback = tokio::spawn(task("playback", health.clone(), playback::run(speaker, speech_rx, confirmed_rx, earcon, status_tx, notes.clone(), counters.clone())));
        let telemetry = tokio::spawn(task("telemetry", health.clone(), telemetry::run(note_rx, log, timing, options.config_id.clone(), counters.clone(), metrics.clone(), announce)));
        drop(notes);
        let (capture, capture_lag_s) = match capture.await {
            Ok(Ok(lag)) => (Ok(()), lag),
            other => (flatten("capture", other.map(|r| r.map(|_| ()))), 0.0),
        };
        let agent = flatten("agent", agent.await);
        let playback = playback.await.map_err(|e| anyhow!("stage playback panicked: {e}")).and_then(|r| r.context("stage playback failed"));
        let telemetry = telemetry.await.map_err(|e| anyhow!("stage telemetry panicked: {e}")).and_then(|r| r.context("stage telemetry failed"));
        Ok::<_, anyhow::Error>((vec![capture, agent], playback, telemetry, capture_lag_s))
        };
        tokio::select! {
            done = finished => Some(done),
            () = health.failed() => {
                // Telemetry writes the failed turn (the monitor's note) before we go.
                tokio::time::sleep(Duration::from_millis(300)).await;
                None
            }
        }
    });
    monitor_done.store(true, std::sync::atomic::Ordering::Release);
    drop(service); // removes the control socket
    let Some(finished) = outcome else {
        // A stage failed or hung: report it now. A hung thread is never joined; the
        // process exits around it.
        return Err(anyhow!(health.fatal().expect("the run ended on a fatal problem").to_string()));
    };
    let (tasks, recording, turns, capture_lag_s) = finished?;
    // A thread that failed is usually the cause, and the tasks' errors its echo
    // ("the playback stage stopped"): report it first.
    supervise(stages)?;
    for r in tasks {
        r?;
    }
    let capture_lag_s = if options.realtime { capture_lag_s } else { 0.0 };
    let finished = turns?;
    Ok(RunReport { turns: finished.records.into(), turns_total: finished.total, capture_lag_s, recording: recording?, counters })
}

/// How long past `[agent] max_reply_s` an ask waits for its turn's record (the turn
/// itself is cut at max_reply_s; this covers its last notes).
const ANSWER_GRACE: Duration = Duration::from_secs(10);

/// An ask that waits longer than this for the turns before it says so in the log.
const QUEUED_LONG: Duration = Duration::from_secs(1);

/// A text run's way in: each ask becomes a typed turn, answered with its record.
struct Answering {
    transcripts: mpsc::Sender<asr::Transcript>,
    turn_ids: TurnIds,
    clock: Clock,
    written: tokio::sync::broadcast::Receiver<Arc<TurnRecord>>,
    /// What the silent speaker has "heard" of the turn so far: the pieces to pass on.
    said: watch::Receiver<Status>,
    patience: Duration,
}

impl Answering {
    /// One ask at a time, in order: the next turn starts once the last is written, so
    /// a conversation's turns never overlap and each record is its own ask's.
    async fn run(mut self, mut asks: mpsc::Receiver<Ask>) -> Result<()> {
        while let Some(ask) = asks.recv().await {
            let turn = self.turn_ids.next();
            let started = tokio::time::Instant::now();
            let waited = ask.asked.elapsed();
            if waited > QUEUED_LONG {
                let from = ask.room.as_deref().map_or(String::new(), |room| format!(" from the {room}"));
                tracing::info!(turn, "an ask{from} waited {:.1} s for the turns before it (or for voxd to start)", waited.as_secs_f64());
            }
            let thread = ask.conversation.map_or(asr::Thread::Alone, asr::Thread::Named);
            let transcript = asr::Transcript { thread, room: ask.room, started: ask.started, ..asr::Transcript::typed(turn, ask.text, &self.clock) };
            if self.transcripts.send(transcript).await.is_err() {
                return Ok(()); // the agent has stopped: shutting down
            }
            let (mut pieces, mut passed) = (ask.pieces, 0);
            let deadline = started + self.patience;
            loop {
                tokio::select! {
                    written = tokio::time::timeout_at(deadline, self.written.recv()) => match written {
                        Ok(Ok(record)) if record.turn == turn => {
                            // Pieces not passed on yet are in the record; the asker
                            // learns the end from the pieces' sender going away.
                            let _ = ask.answer.send(record);
                            break;
                        }
                        Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
                        Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return Ok(()),
                        Err(_) => {
                            tracing::warn!(turn, "no record of the asked turn after {} s; its asker is let go", self.patience.as_secs());
                            break;
                        }
                    },
                    Ok(()) = self.said.changed(), if pieces.is_some() => {
                        let new: Vec<String> = {
                            let status = self.said.borrow_and_update();
                            if status.turn == turn { status.spoken.get(passed..).unwrap_or_default().to_vec() } else { Vec::new() }
                        };
                        passed += new.len();
                        // Never waits on the asker: a slow one gets the rest with the
                        // record rather than holding up the records of other turns.
                        if new.into_iter().any(|piece| pieces.as_ref().is_some_and(|p| p.try_send(piece).is_err())) {
                            pieces = None;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Once a stop is asked for, the turn in flight has `limit` to finish; then it is
/// cancelled (and logged so), so a long reply cannot hold the stop past systemd's
/// patience.
async fn cap_drain(stop: Arc<AtomicBool>, limit: Duration, commands: tokio::sync::mpsc::Sender<Command>) {
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(limit).await;
    let reason = format!("stopping: still speaking after [service] stop_drain_s = {}", limit.as_secs_f64());
    let _ = commands.send(Command::Cancel { reason, done: None }).await;
}

/// SIGINT (Ctrl-C) or SIGTERM (systemd stopping the service) ends a live run: capture
/// stops and the pipeline drains — the turn in flight is finished and logged.
async fn stop_on_signal(stop: Arc<AtomicBool>) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let terminated = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminated => {}
    }
    tracing::info!("stopping: finishing the turn in flight");
    stop.store(true, std::sync::atomic::Ordering::Release);
}

thread_local! {
    /// The stage this thread runs, for the panic hook.
    static STAGE: std::cell::RefCell<Option<(&'static str, Arc<Health>)>> = const { std::cell::RefCell::new(None) };
}

/// Records a stage's panic the moment it happens — before unwinding drops its
/// channels, so the stages that see them close are not taken for the cause.
fn record_stage_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = STAGE.try_with(|s| {
                if let Some((stage, health)) = s.borrow().as_ref() {
                    health.fail(health::Problem { stage, turn: None, what: format!("panicked: {}", panic_message(info.payload())), hung: false });
                }
            });
            previous(info);
        }));
    });
}

/// Starts a stage on a thread of its own. A stage that ends in an error or a panic
/// is fatal: recorded in `health`, which ends the run.
fn spawn(name: &'static str, health: &Arc<Health>, f: impl FnOnce() -> Result<()> + Send + 'static) -> Result<JoinHandle<Result<()>>> {
    record_stage_panics();
    let health = health.clone();
    let stage = move || {
        STAGE.with(|s| *s.borrow_mut() = Some((name, health.clone())));
        let outcome = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(outcome) => outcome,
            Err(panic) => Err(anyhow!("panicked: {}", panic_message(&*panic))),
        };
        if let Err(e) = &outcome {
            let what = format!("{e:#}");
            let what = if what.starts_with("panicked: ") { what } else { format!("failed: {what}") };
            health.fail(health::Problem { stage: name, turn: None, what, hung: false });
        }
        outcome
    };
    std::thread::Builder::new().name(format!("voxd-{name}")).spawn(stage).with_context(|| format!("starting the {name} thread"))
}

/// A task of the runtime whose end in an error or a panic is fatal, as a stage
/// thread's is.
async fn task<T>(name: &'static str, health: Arc<Health>, work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    /// Unwinding through here means the task panicked (tokio catches the panic
    /// after the task's locals are dropped).
    struct OnPanic(&'static str, Arc<Health>);
    impl Drop for OnPanic {
        fn drop(&mut self) {
            if std::thread::panicking() {
                self.1.fail(health::Problem { stage: self.0, turn: None, what: "panicked (the message is above)".into(), hung: false });
            }
        }
    }
    let _on_panic = OnPanic(name, health.clone());
    let outcome = work.await;
    if let Err(e) = &outcome {
        // A task fails mostly because a stage it talks to has ("the llm stage
        // stopped"): that stage's own report, if it comes, names the cause.
        tokio::time::sleep(Duration::from_millis(300)).await;
        health.fail(health::Problem { stage: name, turn: None, what: format!("failed: {e:#}"), hung: false });
    }
    outcome
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default()
}

fn flatten(name: &str, r: Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.context(format!("stage {name} failed"))),
        Err(e) => Err(anyhow!("stage {name} panicked: {e}")),
    }
}

/// Joins the stage threads, naming the first that failed or panicked.
fn supervise(stages: Vec<(&'static str, JoinHandle<Result<()>>)>) -> Result<()> {
    let mut first: Option<anyhow::Error> = None;
    for (name, handle) in stages {
        let outcome = match handle.join() {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e.context(format!("stage {name} failed")),
            Err(panic) => anyhow!("stage {name} panicked: {}", panic_message(&*panic)),
        };
        tracing::error!("{outcome:#}");
        first.get_or_insert(outcome);
    }
    first.map_or(Ok(()), Err)
}
