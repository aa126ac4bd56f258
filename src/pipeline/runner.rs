//! Builds the pipeline from the edges declared in `mod.rs`, starts each stage on its
//! thread or task, and supervises them: a stage that fails or panics is reported by
//! name and the others are wound down.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, Context, Result};
use tokio::sync::{oneshot, watch};

use super::agent::Agent;
use super::llm::LlmStage;
use super::playback::{Recording, Status};
use super::telemetry::{Models, Notes, TurnRecord};
use super::tts::Voice as TtsVoice;
use super::vad::Voice;
use super::*;
use crate::config::{AgentConfig, IntentConfig, LlmConfig, ToolConfig, ToolsConfig, VadConfig};
use crate::tools::intents::Intents;
use crate::tools::Toolbox;
use crate::engine::asr::Asr;
use crate::engine::llm::Llm;

/// The loaded engines (and the connected tool executors), moved into their stages.
pub struct Engines {
    pub asr: Asr,
    pub llm: Llm,
    pub tts: Box<dyn TtsVoice>,
    pub tts_rate_hz: u32,
    pub models: Models,
    pub toolbox: Toolbox,
}

pub struct RunOptions {
    /// Pace the input as a microphone would (else as fast as possible).
    pub realtime: bool,
    pub vad: VadConfig,
    pub agent: AgentConfig,
    /// The persona and how replies are streamed (the engine itself is in `Engines`).
    pub llm: LlmConfig,
    /// Keep the conversation so far in the prompt (`agent.multi_turn`, resolved).
    pub multi_turn: bool,
    /// `[tools]`, the `[[tool]]`s and the `[[intent]]`s.
    pub tools: ToolsConfig,
    pub tool: Vec<ToolConfig>,
    pub intent: Vec<IntentConfig>,
    pub latency_log: Option<PathBuf>,
}

pub struct RunReport {
    pub turns: Vec<TurnRecord>,
    /// How long after the input's end capture delivered its last frame (real time
    /// only): a stalled pipeline would hold capture back.
    pub capture_lag_s: f64,
    /// What the speaker played, aligned with the input.
    pub recording: Recording,
    pub counters: Arc<Counters>,
}

/// Plays `input` (16 kHz mono) through the whole pipeline.
pub fn run(engines: Engines, options: RunOptions, input: Vec<f32>) -> Result<RunReport> {
    // A log that cannot be written is an error now, not after the whole run.
    let log = options.latency_log.as_deref().map(telemetry::open_log).transpose()?;
    let counters = Arc::new(Counters::default());
    let (note_tx, note_rx) = channel(&TELEMETRY);
    let notes = Notes::new(note_tx, counters.clone());

    // Edges, in data-flow order (see mod.rs for capacities and policies).
    let (frame_tx, frame_rx) = channel(&CAPTURE_TO_VAD);
    let (utt_tx, utt_rx) = channel(&VAD_TO_ASR);
    let (text_tx, text_rx) = channel(&ASR_TO_AGENT);
    let (req_tx, req_rx) = channel(&AGENT_TO_LLM);
    let (job_tx, job_rx) = channel(&AGENT_TO_TOOLS);
    let (sentence_tx, sentence_rx) = channel(&LLM_TO_TTS);
    let (speech_tx, speech_rx) = channel(&TTS_TO_PLAYBACK);
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
    let llm_stage = LlmStage {
        preamble: crate::tools::preamble(&options.llm.system_prompt, &options.tool, options.tools.examples),
        history_tokens: options.agent.history_tokens as usize,
        stream_sentences: options.llm.stream_sentences,
        tools_grammar: if constrained { crate::tools::grammar(&options.tool)? } else { None },
        answer_grammar: constrained.then(crate::tools::answer_grammar),
    };
    {
        let (notes, counters, llm) = (notes.clone(), counters.clone(), engines.llm);
        stages.push(("llm", spawn("llm", move || llm_stage.run(llm, req_rx, sentence_tx, notes, counters, ready_tx))?));
    }
    if ready_rx.blocking_recv().is_err() {
        return Err(supervise(stages).err().unwrap_or_else(|| anyhow!("the llm stage stopped during warm-up")));
    }

    let clock = Clock::new(options.realtime);
    {
        let (config, clock, counters, notes) = (options.vad.clone(), clock.clone(), counters.clone(), notes.clone());
        stages.push(("vad", spawn("vad", move || vad::run(config, clock, frame_rx, utt_tx, voice_tx, counters, notes))?));
    }
    {
        let (asr, notes) = (engines.asr, notes.clone());
        stages.push(("asr", spawn("asr", move || asr::run(asr, utt_rx, text_tx, notes))?));
    }
    {
        let (voice, notes, counters) = (engines.tts, notes.clone(), counters.clone());
        stages.push(("tts", spawn("tts", move || tts::run(voice, sentence_rx, speech_tx, notes, counters))?));
    }
    {
        let (toolbox, notes) = (engines.toolbox, notes.clone());
        stages.push(("tools", spawn("tools", move || tools::run(toolbox, job_rx, notes))?));
    }

    let agent = Agent {
        barge_in: options.agent.barge_in,
        barge_in_min: std::time::Duration::from_millis(options.agent.barge_in_min_ms as u64),
        sequential: !options.realtime,
        multi_turn: options.multi_turn,
        models: engines.models,
        intents: Intents::new(&options.intent)?,
        tools: options.tool,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().context("starting the async runtime")?;
    let frame_len = (options.vad.frame_ms * 16) as usize;
    let (tasks, recording, turns, capture_lag_s) = runtime.block_on(async {
        let input_s = input.len() as f64 / crate::audio::ASR_RATE_HZ as f64;
        let capture_clock = clock.clone();
        let capture = tokio::spawn(async move {
            capture::pace_file(input, frame_len, capture_clock.clone(), frame_tx).await?;
            Ok::<f64, anyhow::Error>(capture_clock.start.elapsed().as_secs_f64() - input_s)
        });
        let links = super::agent::Links { llm: req_tx, tools: job_tx, confirmed: confirmed_tx, notes: notes.clone() };
        let agent = tokio::spawn(agent.run(text_rx, voice_rx, status_rx, links));
        let playback = tokio::spawn(playback::run(engines.tts_rate_hz, clock.clone(), speech_rx, confirmed_rx, status_tx, notes.clone(), counters.clone()));
        let telemetry = tokio::spawn(telemetry::run(note_rx, log, options.realtime, counters.clone()));
        drop(notes);
        let (capture, capture_lag_s) = match capture.await {
            Ok(Ok(lag)) => (Ok(()), lag),
            other => (flatten("capture", other.map(|r| r.map(|_| ()))), 0.0),
        };
        let agent = flatten("agent", agent.await);
        let playback = playback.await.map_err(|e| anyhow!("stage playback panicked: {e}")).and_then(|r| r.context("stage playback failed"));
        let telemetry = telemetry.await.map_err(|e| anyhow!("stage telemetry panicked: {e}")).and_then(|r| r.context("stage telemetry failed"));
        (vec![capture, agent], playback, telemetry, capture_lag_s)
    });
    // A thread that failed is usually the cause, and the tasks' errors its echo
    // ("the playback stage stopped"): report it first.
    supervise(stages)?;
    for r in tasks {
        r?;
    }
    let capture_lag_s = if options.realtime { capture_lag_s } else { 0.0 };
    Ok(RunReport { turns: turns?, capture_lag_s, recording: recording?, counters })
}

fn spawn(name: &'static str, f: impl FnOnce() -> Result<()> + Send + 'static) -> Result<JoinHandle<Result<()>>> {
    std::thread::Builder::new().name(format!("voxd-{name}")).spawn(f).with_context(|| format!("starting the {name} thread"))
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
            Err(panic) => {
                let msg = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default();
                anyhow!("stage {name} panicked: {msg}")
            }
        };
        tracing::error!("{outcome:#}");
        first.get_or_insert(outcome);
    }
    first.map_or(Ok(()), Err)
}
