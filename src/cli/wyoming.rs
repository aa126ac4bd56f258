//! `voxd wyoming`: the Wyoming server (src/wyoming).

use std::sync::Arc;

use super::*;
use crate::control::Daemon;
use crate::wyoming::desk::Desk;
use crate::wyoming::satellite::{self, Hearing};
use crate::wyoming::{bind, serve, tcp_address, AgentService, Services, WakeService, MAX_DETECTORS};

/// Wyoming's usual port for speech to text.
const DEFAULT_LISTEN: &str = "tcp://0.0.0.0:10300";

pub(super) fn wyoming_serve(env: &Env, listen: Option<&str>) -> Result<()> {
    let config = &env.config.wyoming;
    let uri = listen.unwrap_or(configured_listen(config)).to_string();
    tcp_address(&uri).map_err(|why| anyhow::anyhow!("--listen: {why}"))?;
    check_agent_settings(env)?;
    // The status socket first: another voxd wyoming on it is an error now, before the
    // models spend seconds loading.
    let mut control = crate::control::open(Daemon::Wyoming, &config.control_socket)?;
    env.say_gpu();
    let asr = env.asr(None)?;
    let tts = env.tts(None)?;
    let llm = if config.handle { Some(Arc::new(env.llm(None)?)) } else { None };
    let (services, board) = serving(env, asr, tts, llm)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = bind(&uri).await?;
        announce(&services, &listener, &env.config.satellite, control.as_mut(), board)?;
        eprintln!("wyoming: Ctrl-C stops");
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = serve(listener, services) => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        eprintln!("wyoming: stopped");
        Ok::<(), anyhow::Error>(())
    })
}

/// `voxd run` serving Wyoming too (`[wyoming] serve_in_run`): Whisper and Piper go
/// behind the server's desks, and the pipeline's stages are served at the same desks
/// (one engine and one copy of each model, local turns and Wyoming's requests in
/// line); Home Assistant's conversations and the satellites are answered by a text
/// run on the same LLM weights (a context of its own). The server runs on a thread of
/// its own until the process ends. Returns the pipeline's engines.
pub(super) fn serve_beside_run(env: &Env, loaded: Loaded) -> Result<pipeline::Engines> {
    let config = &env.config.wyoming;
    let uri = configured_listen(config).to_string();
    check_agent_settings(env)?;
    let mut control = crate::control::open(Daemon::Wyoming, &config.control_socket)?;
    // Bound now, so a port in use is an error at start, not a line in the log.
    let listener = std::net::TcpListener::bind(tcp_address(&uri).map_err(anyhow::Error::msg)?).with_context(|| format!("[wyoming] listen: cannot listen on {uri} (in use? a voxd wyoming running too?)"))?;
    listener.set_nonblocking(true)?;
    let Loaded { asr, llm, tts, wake, toolbox, models } = loaded;
    let llm = Arc::new(llm);
    let tts_rate_hz = tts.rate_hz;
    let (services, board) = serving(env, asr, tts, config.handle.then(|| llm.clone()))?;
    let engines = pipeline::Engines {
        asr: Some(pipeline::asr::Whisper::Shared(services.asr.clone())),
        llm,
        tts: Box::new(pipeline::tts::SharedVoice(services.tts.clone())),
        tts_rate_hz,
        models,
        toolbox,
        wake,
    };
    let satellites = env.config.satellite.clone();
    std::thread::Builder::new()
        .name("voxd-wyoming".into())
        .spawn(move || {
            let served = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(anyhow::Error::from).and_then(|runtime| {
                runtime.block_on(async {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    announce(&services, &listener, &satellites, control.as_mut(), board)?;
                    serve(listener, services).await;
                    Ok::<(), anyhow::Error>(())
                })
            });
            if let Err(e) = served {
                tracing::error!("wyoming: the server stopped: {e:#}; voxd run goes on without it");
            }
        })
        .context("starting the Wyoming server's thread")?;
    Ok(engines)
}

/// `[wyoming] listen`, or Wyoming's usual port.
fn configured_listen(config: &crate::config::WyomingConfig) -> &str {
    if config.listen.is_empty() { DEFAULT_LISTEN } else { config.listen.as_str() }
}

/// The services (`services`) and the satellites dialled with them.
fn serving(env: &Env, asr: crate::engine::asr::Asr, tts: crate::engine::tts::Tts, llm: Option<Arc<crate::engine::llm::Llm>>) -> Result<(Arc<Services>, Arc<crate::wyoming::board::Board>)> {
    let services = Arc::new(services(env, asr, tts, llm)?);
    let hearing = Hearing { vad: env.config.vad.clone(), echo_tail_ms: env.config.audio.echo_tail_ms };
    let board = satellite::start(&env.config.satellite, &hearing, &services)?;
    Ok((services, board))
}

/// Satellites and the agent's metrics are the agent's: both need `handle`.
fn check_agent_settings(env: &Env) -> Result<()> {
    let config = &env.config.wyoming;
    if !env.config.satellite.is_empty() && !config.handle {
        bail!("[[satellite]]s are answered by voxd's agent, but [wyoming] handle = false: set it to true, or remove the satellites");
    }
    if !config.metrics_listen.is_empty() && !config.handle {
        bail!("[wyoming] metrics_listen counts the agent's turns, but [wyoming] handle = false: set handle = true, or leave metrics_listen empty");
    }
    Ok(())
}

/// What the server offers: Whisper and Piper at their desks, the wake words when
/// installed, and the agent on `llm` (None: `handle = false`).
fn services(env: &Env, asr: crate::engine::asr::Asr, tts: crate::engine::tts::Tts, llm: Option<Arc<crate::engine::llm::Llm>>) -> Result<Services> {
    let queue = env.config.wyoming.queue as usize;
    // Wake words are offered when their models are installed; one that is there but
    // does not load is an error now, not at a client's first detect.
    let wake = match env.wake_models() {
        Ok(models) => {
            crate::engine::wake::Detector::load(&models)?;
            Some(WakeService { models, config: env.config.wake.clone(), detectors: Arc::new(tokio::sync::Semaphore::new(MAX_DETECTORS)) })
        }
        Err(e) => {
            eprintln!("wyoming: no wake words offered: {e:#}");
            None
        }
    };
    let agent = match llm {
        Some(llm) => Some(start_agent(env, queue, llm)?),
        None => None,
    };
    Ok(Services {
        asr_model: asr.model_id.clone(),
        asr_languages: asr.languages(),
        voice: tts.voice_id.clone(),
        voice_language: voice_language(&tts.voice_id),
        first_phrase_words: env.config.llm.first_phrase_words as usize,
        wake,
        agent,
        asr: Desk::open("asr", asr, queue)?,
        tts: Desk::open("tts", tts, queue)?,
    })
}

/// Opens the status socket's door (if any) and says what is served where.
fn announce(services: &Arc<Services>, listener: &tokio::net::TcpListener, satellites: &[crate::config::SatelliteConfig], control: Option<&mut crate::control::Socket>, board: Arc<crate::wyoming::board::Board>) -> Result<()> {
    let address = listener.local_addr()?;
    if let Some(socket) = control.and_then(crate::control::Socket::take_listener) {
        let report = status_report(services, board, format!("tcp://{address}"));
        tokio::spawn(crate::control::serve_status(tokio::net::UnixListener::from_std(socket)?, report));
    }
    let satellites = satellites.iter().map(|s| if s.room.is_empty() { s.uri.clone() } else { format!("{} ({})", s.room, s.uri) }).collect::<Vec<_>>();
    eprintln!(
        "wyoming: listening on tcp://{address}: speech to text with {} ({}), text to speech with {}, wake words: {}, conversations with {}; satellites: {}",
        services.asr_model,
        services.asr_languages.join(", "),
        services.voice,
        services.wake.as_ref().map_or("none".to_string(), |w| w.models.words.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>().join(", ")),
        services.agent.as_ref().map_or("nobody ([wyoming] handle = false)".to_string(), |a| format!("{} and {} tools", a.model, a.tools)),
        if satellites.is_empty() { "none".to_string() } else { satellites.join(", ") }
    );
    Ok(())
}

/// What `voxd ctl status` is told: what is served where, since when, and how each
/// satellite is doing.
fn status_report(services: &Arc<Services>, board: Arc<crate::wyoming::board::Board>, listening: String) -> crate::control::Report {
    let started = std::time::Instant::now();
    let serves = serde_json::json!({
        "asr": services.asr_model,
        "tts": services.voice,
        "wake": services.wake.as_ref().map(|w| w.models.words.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>()),
        "handle": services.agent.as_ref().map(|a| a.model.clone()),
    });
    Arc::new(move || {
        serde_json::json!({
            "ok": true, "daemon": "wyoming", "listening": listening, "uptime_s": started.elapsed().as_secs(),
            "serves": serves, "satellites": board.report(),
        })
    })
}

/// voxd's agent for Home Assistant's conversations: a text run of the pipeline (the
/// LLM with the tools, as `voxd run` answers) on a thread of its own, taking up to
/// `queue` asks waiting. Its turns go to the latency log like any others.
fn start_agent(env: &Env, queue: usize, llm: Arc<crate::engine::llm::Llm>) -> Result<AgentService> {
    let engines = env.text_engines(llm)?;
    let model = engines.models.llm.clone();
    let options = env.run_options(true, None)?;
    let tools = options.tool.len();
    let (asks, rx) = tokio::sync::mpsc::channel(queue);
    let listen = &env.config.wyoming.metrics_listen;
    let metrics = (!listen.is_empty()).then(|| crate::metrics::bind("[wyoming] metrics_listen", listen)).transpose()?;
    if let Some(l) = &metrics {
        eprintln!("wyoming: the agent's metrics at http://{}/metrics", l.local_addr()?);
    }
    std::thread::Builder::new()
        .name("voxd-wy-agent".into())
        .spawn(move || {
            if let Err(e) = pipeline::run(engines, options, pipeline::Io::Text { asks: rx, metrics }) {
                tracing::error!("wyoming: voxd's agent stopped: {e:#}; conversations are refused until voxd is restarted");
            }
        })
        .context("starting the agent's thread")?;
    Ok(AgentService { model, tools, queue, asks })
}

/// A Piper voice's language from its name ("en_US-joe-medium" → "en_US"); "en" when
/// the name does not start with one.
fn voice_language(voice: &str) -> String {
    let first = voice.split('-').next().unwrap_or_default();
    let is_code = first.len() == 5 && first.as_bytes()[2] == b'_' && first.get(..2).is_some_and(|l| l.chars().all(|c| c.is_ascii_lowercase()));
    if is_code { first.to_string() } else { "en".into() }
}
