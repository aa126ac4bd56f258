//! voxd as a Wyoming server: Home Assistant's Assist pipelines (and anything else
//! that speaks Wyoming) use voxd's Whisper, Piper, wake words and agent — `voxd
//! wyoming`.
//!
//! ```text
//! client ─describe──────────────────────────────▶ info (the models installed)
//!        ─transcribe, audio-start, audio-chunk*, audio-stop ─▶ asr desk ─▶ transcript
//!        ─synthesize ─▶ splitter ─▶ tts desk, piece by piece ─▶ audio-start, audio-chunk*, audio-stop
//!        ─synthesize-start, synthesize-chunk*, synthesize-stop ─▶ per piece: audio-start…audio-stop,
//!                                                                   then synthesize-stopped
//!        ─detect, audio-start, audio-chunk*, audio-stop ─▶ the connection's own detector
//!                                      ─▶ detection (each time), not-detected (at the end, if none)
//!        ─transcript (text, context.conversation_id) ─▶ voxd's agent ─▶ handled-start,
//!                        handled-chunk* (each piece as it is said), handled-stop; handled / not-handled
//! ```
//!
//! The agent is the pipeline itself run on text (`pipeline::Io::Text`: the LLM, the
//! intents, the tools with their allow-lists and confirmations), one turn at a time;
//! each conversation id keeps its own history and open question, so a confirmation
//! asked in one conversation is answered only in it. Its replies come piece by piece
//! as they are said (`reply`).
//!
//! voxd also dials the home's `wyoming-satellite`s and answers what is said in each
//! room (`satellite`), with the same engines and agent.
//!
//! Wake-word detection streams (a satellite may send audio for hours), so each
//! listening connection has a detector of its own, loaded at its audio-start; at most
//! `MAX_DETECTORS` at once.
//!
//! Each of Whisper and Piper sits behind a `Desk`: one thread, its clients' jobs in
//! order, at most `[wyoming] queue` waiting; a new request beyond that is answered at
//! once with an `error` (code `busy`). Audio arrives at 8-48 kHz, 1, 2 or 4 bytes a
//! sample and any channel count, and is converted to Whisper's 16 kHz mono. An
//! `error` always ends its connection — a malformed or oversized event, bad audio, a
//! request that cannot be answered — and no other: Home Assistant's clients skip
//! `error` events and wait for an answer's last event or the connection's end.
//! Heavy work (Whisper, Piper, the detectors, resampling) runs off the one thread
//! that serves every connection.
//!
//! Speech is sent as soon as each piece is synthesised: the first piece may be a
//! phrase of `[llm] first_phrase_words` words, the rest are sentences — a long text
//! starts sounding after its first words, not after its first sentence.

pub mod board;
pub mod desk;
pub mod event;
pub mod reply;
pub mod satellite;

use std::sync::Arc;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use self::desk::Desk;
use self::event::{read_event, write_event, Event, Limits};
use crate::engine::asr::Asr;
use crate::config::WakeConfig;
use crate::engine::tts::Tts;
use crate::engine::wake::{Detector, WakeModels};
use crate::pipeline::wake::{phrase_words, Detection, Started, Trigger};
use crate::pipeline::Ask;
use crate::audio::{resample, trim_silent_end, trim_silent_start, StreamResampler, ASR_RATE_HZ};
use crate::pipeline::splitter::{clean, Splitter};
use crate::pipeline::tts::{JOIN_LEAD_MS, JOIN_PAUSE_MS};

/// The longest audio one `transcribe` takes (Whisper hears 30 s at a time; a voice
/// command is a few seconds).
pub const MAX_AUDIO_S: f64 = 30.0;
/// Connections served at once; the next is closed at once.
pub const MAX_CONNECTIONS: usize = 32;
/// Connections listening for a wake word at once (each has its own detector).
pub const MAX_DETECTORS: usize = 4;
/// A connection that sends nothing for this long is closed…
const IDLE: std::time::Duration = std::time::Duration::from_secs(300);
/// …and one listening for a wake word (its audio comes every 80 ms or so) sooner, so
/// a satellite that vanished gives its detector back.
const LISTENING_IDLE: std::time::Duration = std::time::Duration::from_secs(30);
/// Samples per audio-chunk sent (wyoming-piper's default).
const SAMPLES_PER_CHUNK: usize = 1024;

/// What the server offers, and the engines behind it.
pub struct Services {
    pub asr: Desk<Asr>,
    pub asr_model: String,
    /// The languages the Whisper model is set up to hear.
    pub asr_languages: Vec<String>,
    pub tts: Desk<Tts>,
    pub voice: String,
    pub voice_language: String,
    /// The first piece of a text may be a phrase of this many words (0: a sentence).
    pub first_phrase_words: usize,
    /// Wake-word detection, when the wake models are installed.
    pub wake: Option<WakeService>,
    /// voxd's agent, unless `[wyoming] handle = false`.
    pub agent: Option<AgentService>,
}

/// voxd's agent, answering Home Assistant's conversations (Wyoming's `handle`).
pub struct AgentService {
    /// The LLM's id.
    pub model: String,
    /// `[[tool]]`s it may call: with any, it controls the home.
    pub tools: usize,
    pub queue: usize,
    pub asks: tokio::sync::mpsc::Sender<Ask>,
}

pub struct WakeService {
    pub models: WakeModels,
    /// Thresholds, trigger levels and the refractory period, as for the microphone.
    pub config: WakeConfig,
    pub detectors: Arc<Semaphore>,
}

/// "tcp://HOST:PORT" → "HOST:PORT" (the only scheme served).
pub fn tcp_address(uri: &str) -> Result<&str, String> {
    let address = uri.strip_prefix("tcp://").ok_or_else(|| format!("{uri:?} is not a tcp:// address; expected e.g. \"tcp://0.0.0.0:10300\""))?;
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(address),
        _ => Err(format!("{uri:?} has no HOST:PORT after tcp://; expected e.g. \"tcp://0.0.0.0:10300\"")),
    }
}

/// Answers connections on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, services: Arc<Services>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            // Out of file descriptors, say: wait rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!("wyoming: refused {peer}: {MAX_CONNECTIONS} connections are open");
            continue;
        };
        let services = services.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let (read, mut write) = stream.into_split();
            let mut session = Session::default();
            let mut reader = BufReader::new(read);
            loop {
                // A client that goes quiet is let go: a satellite streams every 80 ms
                // while it listens, and anything else sends its request at once.
                let patience = if session.listening.is_some() { LISTENING_IDLE } else { IDLE };
                let event = match tokio::time::timeout(patience, read_event(&mut reader, Limits::SERVED)).await {
                    Ok(Ok(Some(event))) => event,
                    Ok(Ok(None)) => break,
                    Ok(Err(e)) => {
                        tracing::warn!("wyoming: closed the connection from {peer}: {e}");
                        hang_up(&mut reader, &mut write, Event::error(e.to_string(), "bad-event")).await;
                        break;
                    }
                    Err(_) => {
                        tracing::info!("wyoming: closed the connection from {peer}: nothing from it for {} s", patience.as_secs());
                        break;
                    }
                };
                tracing::debug!("wyoming: {peer}: {}", event.kind);
                match session.handle(event, &services, &mut write).await {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Close(error)) => {
                        tracing::warn!("wyoming: closed the connection from {peer}: {}", error.text("text").unwrap_or_default());
                        hang_up(&mut reader, &mut write, error).await;
                        break;
                    }
                    // The client went away while being answered.
                    Err(_) => break,
                }
            }
            drop(slot);
        });
    }
}

/// Sends `last` and hangs up without losing it: the write side is shut, then what
/// the client still sends is read and dropped for a moment — a socket closed with
/// unread input is reset, and the client would lose the error before reading it.
async fn hang_up(reader: &mut (impl AsyncRead + Unpin), write: &mut (impl AsyncWrite + Unpin), last: Event) {
    let _ = write_event(write, &last).await;
    let _ = write.shutdown().await;
    let mut sink = vec![0u8; 64 * 1024];
    let drain = async {
        let mut total = 0;
        while let Ok(n @ 1..) = reader.read(&mut sink).await {
            total += n;
            if total > 64 * 1024 * 1024 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
}

enum Flow {
    Continue,
    /// Send this `error` and close the connection. A request that cannot be answered
    /// ends its connection, as in the reference servers: Home Assistant's clients
    /// skip `error` events and wait for the answer's last event or the end of the
    /// connection.
    Close(Event),
}

fn close(text: impl Into<String>, code: &str) -> std::io::Result<Flow> {
    Ok(Flow::Close(Event::error(text, code)))
}

/// One connection's state: audio being received, a text being streamed in.
#[derive(Default)]
struct Session {
    audio: Option<Incoming>,
    /// Set by `transcribe`: the language asked for.
    language: Option<String>,
    /// Set by `detect`: the next audio is listened to for these wake words (all: None).
    detect: Option<Option<Vec<String>>>,
    listening: Option<Listening>,
    /// The text being streamed in (synthesize-start … synthesize-stop).
    stream: Option<Splitter>,
    /// The pieces of the text (or stream) spoken so far.
    spoken: Spoken,
}

/// How far a text's speech has gone: a first piece cut at a phrase runs on into the
/// second without the voice's pauses between them, as in the pipeline.
#[derive(Default)]
struct Spoken {
    pieces: usize,
    first_runs_on: bool,
    /// The audio-start of a reply spoken as one is sent.
    started: bool,
    /// Seconds of audio sent.
    seconds: f64,
}

/// A wake-word detector on one connection's audio stream.
struct Listening {
    detector: Detector,
    /// (word, its index in the detector's scores, its rule).
    words: Vec<(String, usize, Trigger)>,
    resampler: StreamResampler,
    samples: Vec<f32>,
    detected: bool,
    _slot: OwnedSemaphorePermit,
}

/// Audio between audio-start and audio-stop, as mono samples at the client's rate.
struct Incoming {
    rate: u32,
    width: u32,
    channels: u32,
    samples: Vec<f32>,
}

impl Session {
    async fn handle(&mut self, event: Event, services: &Services, out: &mut (impl AsyncWrite + Unpin)) -> std::io::Result<Flow> {
        match event.kind.as_str() {
            "describe" => write_event(out, &info(services)).await?,
            "transcribe" => {
                self.language = event.text("language").map(str::to_string);
                (self.detect, self.listening) = (None, None);
            }
            "detect" => {
                let names = event.data.get("names").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect());
                (self.detect, self.language) = (Some(names), None);
            }
            "audio-start" => {
                if let Some(refused) = self.begin_audio(&event, services).await {
                    return Ok(Flow::Close(refused));
                }
            }
            "audio-chunk" => {
                // wyoming-satellite streams to its wake service without an
                // audio-start: after a detect, the first chunk's format begins it.
                if self.audio.is_none() && self.detect.is_some() {
                    if let Some(refused) = self.begin_audio(&event, services).await {
                        return Ok(Flow::Close(refused));
                    }
                }
                let Some(audio) = self.audio.as_mut() else {
                    return close("audio-chunk before audio-start", "bad-audio");
                };
                if let Some(mut listening) = self.listening.take() {
                    // A detector listens to a stream of any length: what it has heard
                    // is not kept. Its models run off the connections' thread.
                    audio.samples.clear();
                    if let Err(why) = audio.push_unbounded(&event) {
                        return close(why, "bad-audio");
                    }
                    let heard = std::mem::take(&mut audio.samples);
                    let (listening, detections) = tokio::task::spawn_blocking(move || {
                        let detections = listening.hear(&heard);
                        (listening, detections)
                    })
                    .await
                    .expect("a wake-word step does not panic");
                    self.listening = Some(listening);
                    for detection in &detections {
                        write_event(out, &detection_event(detection)).await?;
                    }
                } else if let Err(why) = audio.push(&event) {
                    return close(why, "bad-audio");
                }
            }
            "audio-stop" => {
                if let Some(listening) = self.listening.take() {
                    self.audio = None;
                    if !listening.detected {
                        write_event(out, &Event::new("not-detected")).await?;
                    }
                } else if let Some(audio) = self.audio.take() {
                    let language = self.language.take();
                    match transcribe(audio, language, services).await {
                        Ok(transcript) => write_event(out, &transcript).await?,
                        Err(error) => return Ok(Flow::Close(error)),
                    }
                }
            }
            "synthesize" if self.stream.is_none() => {
                let Some(text) = event.text("text").map(str::to_string) else {
                    return close("synthesize without a \"text\"", "bad-request");
                };
                if let Some(refused) = wrong_voice(&event, services) {
                    return Ok(Flow::Close(refused));
                }
                if let Err(error) = say_whole(&text, services, out).await? {
                    return Ok(Flow::Close(error));
                }
            }
            // Sent after the chunks of a stream for clients that do not stream:
            // the stream already says it.
            "synthesize" => {}
            "synthesize-start" => {
                if let Some(refused) = wrong_voice(&event, services) {
                    return Ok(Flow::Close(refused));
                }
                self.stream = Some(Splitter::new(services.first_phrase_words));
                self.spoken = Spoken::default();
            }
            "synthesize-chunk" => {
                if let (Some(splitter), Some(text)) = (self.stream.as_mut(), event.text("text")) {
                    let pieces = splitter.push(text);
                    self.spoken.first_runs_on = splitter.first_runs_on();
                    if let Some(error) = speak(pieces, &mut self.spoken, services, out, false).await? {
                        return Ok(Flow::Close(error));
                    }
                }
            }
            "synthesize-stop" => {
                if let Some(mut splitter) = self.stream.take() {
                    if let Some(error) = speak(splitter.finish().into_iter().collect(), &mut self.spoken, services, out, false).await? {
                        return Ok(Flow::Close(error));
                    }
                    write_event(out, &Event::new("synthesize-stopped")).await?;
                }
            }
            "transcript" => {
                if let Some(error) = converse(&event, services, out).await? {
                    return Ok(Flow::Close(error));
                }
            }
            // Events for services voxd does not offer are dropped, as the protocol
            // asks (a client may probe with them).
            other => tracing::debug!("wyoming: ignored a {other} event"),
        }
        Ok(Flow::Continue)
    }
}

impl Session {
    /// Audio begins in `event`'s format (an audio-start's, or a chunk's); the error
    /// that ends the connection when it cannot.
    async fn begin_audio(&mut self, event: &Event, services: &Services) -> Option<Event> {
        // A stream that was never stopped ends here (its detector freed first).
        self.listening = None;
        let (rate, width, channels) = match format(event) {
            Ok(f) => f,
            Err(why) => return Some(Event::error(why, "bad-audio")),
        };
        self.audio = Some(Incoming { rate, width, channels, samples: Vec::new() });
        if let Some(names) = self.detect.clone() {
            match listen(names, rate, services).await {
                Ok(listening) => self.listening = Some(listening),
                Err(refused) => return Some(refused),
            }
        }
        None
    }
}

/// The format of an audio-start or audio-chunk: (rate, width, channels).
fn format(event: &Event) -> Result<(u32, u32, u32), String> {
    let field = |key: &str| event.data.get(key).and_then(Value::as_u64);
    let (Some(rate), Some(width), Some(channels)) = (field("rate"), field("width"), field("channels")) else {
        return Err(format!("{} without its format: rate, width and channels are needed (e.g. 16000, 2, 1)", event.kind));
    };
    // Higher rates would only cost memory: everything is heard at 16 kHz.
    if !(8000..=48_000).contains(&rate) {
        return Err(format!("{}: rate {rate} Hz is not taken; 8000 to 48000", event.kind));
    }
    if ![1, 2, 4].contains(&width) {
        return Err(format!("{}: width {width} is not supported; 1, 2 or 4 bytes a sample", event.kind));
    }
    if !(1..=16).contains(&channels) {
        return Err(format!("{}: {channels} channels; 1 to 16 are taken", event.kind));
    }
    Ok((rate as u32, width as u32, channels as u32))
}

impl Incoming {
    fn push(&mut self, chunk: &Event) -> Result<(), String> {
        if (self.samples.len() + chunk.payload.len() / (self.width * self.channels) as usize) as f64 > MAX_AUDIO_S * self.rate as f64 {
            return Err(format!("over {MAX_AUDIO_S} s of audio in one transcription"));
        }
        self.push_unbounded(chunk)
    }

    fn push_unbounded(&mut self, chunk: &Event) -> Result<(), String> {
        // A chunk may repeat the format; it must be the stream's.
        if chunk.data.contains_key("rate") && format(chunk)? != (self.rate, self.width, self.channels) {
            return Err(format!(
                "an audio-chunk in another format than its audio-start's ({} Hz, {} bytes, {} channels)",
                self.rate, self.width, self.channels
            ));
        }
        let frame = (self.width * self.channels) as usize;
        if chunk.payload.len() % frame != 0 {
            return Err(format!("an audio-chunk of {} bytes is not whole frames of {frame} bytes", chunk.payload.len()));
        }
        let width = self.width as usize;
        for frame in chunk.payload.chunks_exact(frame) {
            let sum: f32 = frame.chunks_exact(width).map(sample).sum();
            self.samples.push(sum / self.channels as f32);
        }
        Ok(())
    }
}

/// One little-endian PCM sample: 8-bit unsigned, 16- or 32-bit signed.
fn sample(bytes: &[u8]) -> f32 {
    match bytes.len() {
        1 => (bytes[0] as f32 - 128.0) / 128.0,
        2 => i16::from_le_bytes([bytes[0], bytes[1]]) as f32 / 32768.0,
        _ => i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as f32 / 2_147_483_648.0,
    }
}

/// A detector for a `detect` stream at `rate` Hz, listening for `names` (all: None).
async fn listen(names: Option<Vec<String>>, rate: u32, services: &Services) -> Result<Listening, Event> {
    let Some(wake) = &services.wake else {
        return Err(Event::error("no wake words here: install the wake models (`voxd models setup`) and restart voxd wyoming", "wake"));
    };
    let installed: Vec<&str> = wake.models.words.iter().map(|(id, _)| id.as_str()).collect();
    if let Some(unknown) = names.iter().flatten().find(|n| !installed.contains(&n.as_str())) {
        return Err(Event::error(format!("no wake word {unknown:?} here; voxd listens for {}", installed.join(", ")), "wake"));
    }
    let words = installed
        .iter()
        .enumerate()
        .filter(|(_, id)| names.as_ref().is_none_or(|n| n.iter().any(|n| n == *id)))
        .map(|(i, id)| (id.to_string(), i, Trigger::for_word(&wake.config, id)))
        .collect();
    let Ok(slot) = wake.detectors.clone().try_acquire_owned() else {
        return Err(Event::error(format!("wake words: {MAX_DETECTORS} connections already listen, the most voxd serves at once; try again later"), "busy"));
    };
    let models = wake.models.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let detector = Detector::load(&models).map_err(|e| Event::error(e.to_string(), "wake"))?;
        let resampler = StreamResampler::new(rate, ASR_RATE_HZ).map_err(|e| Event::error(e.to_string(), "bad-audio"))?;
        Ok((detector, resampler))
    });
    let (detector, resampler) = loaded.await.expect("loading a detector does not panic")?;
    Ok(Listening { detector, words, resampler, samples: Vec::new(), detected: false, _slot: slot })
}

impl Listening {
    /// Feeds audio at the stream's rate; each wake word heard (on the stream's 16 kHz
    /// timeline).
    fn hear(&mut self, audio: &[f32]) -> Vec<Detection> {
        self.samples.clear();
        self.resampler.push(audio, &mut self.samples);
        let steps = match self.detector.push(&self.samples) {
            Ok(steps) => steps,
            Err(e) => {
                tracing::warn!("wyoming: a wake-word step failed: {e}");
                return Vec::new();
            }
        };
        let mut detections = Vec::new();
        for step in steps {
            for (word, index, trigger) in &mut self.words {
                let score = step.scores[*index];
                if trigger.step(score, step.end_sample) {
                    self.detected = true;
                    tracing::info!("wyoming: heard {word} (score {score:.2}) at {:.2} s", step.end_sample as f64 / ASR_RATE_HZ as f64);
                    detections.push(Detection { word: word.clone(), score, at_sample: step.end_sample });
                }
            }
        }
        detections
    }
}

/// The `detection` event for a wake word heard (its timestamp in ms of the stream).
fn detection_event(detection: &Detection) -> Event {
    Event::with_data("detection", json!({ "name": detection.word, "timestamp": detection.at_sample / (ASR_RATE_HZ as u64 / 1000) }))
}

/// The transcript of `audio`, or the `error` that ends the request.
async fn transcribe(audio: Incoming, language: Option<String>, services: &Services) -> Result<Event, Event> {
    let base = |l: &str| l.split(['-', '_']).next().unwrap_or_default().to_lowercase();
    if let Some(language) = language.as_deref().filter(|l| !services.asr_languages.contains(&base(l))) {
        return Err(Event::error(format!("{} hears {}, not {language:?}", services.asr_model, services.asr_languages.join(", ")), "language"));
    }
    let Incoming { samples, rate, .. } = audio;
    // Resampled on Whisper's thread, not the connections'.
    let heard = services.asr.ask(move |asr| {
        let samples = resample(&samples, rate, ASR_RATE_HZ).map_err(|e| (e.to_string(), "bad-audio"))?;
        asr.transcribe(&samples).map_err(|e| (format!("transcription failed: {e}"), "asr"))
    });
    match heard.await {
        Ok(Ok(t)) => {
            tracing::info!("wyoming: transcribed {:.2} s in {:.0} ms: {:?}", t.audio_s, t.elapsed_ms, t.text);
            // The language asked for, or the model's only one (an "auto" model's
            // guess is not known here).
            let language = language.or_else(|| (services.asr_languages.len() == 1).then(|| services.asr_languages[0].clone()));
            Ok(Event::with_data("transcript", json!({ "text": t.text, "language": language })))
        }
        Ok(Err((why, code))) => Err(Event::error(why, code)),
        Err(refused) => Err(Event::error(refused.to_string(), refused.code())),
    }
}

/// The agent's answer to a `transcript` (Home Assistant's conversation agent),
/// streamed as it is said — `handled-start`, a `handled-chunk` a piece, `handled-stop`
/// — and then whole for clients that do not stream: `handled` with what it said,
/// `not-handled` with its apology when the turn failed or was cut short. Or the
/// `error` that ends the request.
async fn converse(event: &Event, services: &Services, out: &mut (impl AsyncWrite + Unpin)) -> std::io::Result<Option<Event>> {
    let Some(agent) = &services.agent else {
        return Ok(Some(Event::error("no conversations here: voxd wyoming runs with [wyoming] handle = false", "handle")));
    };
    let Some(text) = event.text("text").map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(Some(Event::error("transcript without a \"text\" to answer", "bad-request")));
    };
    let conversation = event.data.get("context").and_then(|c| c.get("conversation_id")).and_then(Value::as_str).map(str::to_string);
    let context = conversation.as_ref().map(|id| json!({ "conversation_id": id }));
    let asker = reply::Asker { conversation: conversation.clone(), room: None, started: Started::Typed, waits: false };
    let mut reply = match agent.ask(text, asker).await {
        Ok(reply) => reply,
        Err(error) => return Ok(Some(error)),
    };
    let mut chunks = HandledChunks { sent: 0, context: context.as_ref() };
    while let Some(piece) = reply.next().await {
        chunks.send(out, &piece).await?;
    }
    let said = match reply.end().await {
        Ok(said) => said,
        Err(error) => return Ok(Some(error)),
    };
    if !said.rest.is_empty() {
        chunks.send(out, &said.rest).await?;
    }
    let streamed = chunks.sent;
    if streamed > 0 {
        write_event(out, &Event::new("handled-stop")).await?;
    }
    let record = &said.record;
    tracing::info!(
        "wyoming: {:?} → {:?} ({}, {} tool calls, first words after {:.0} ms, {streamed} chunks)",
        text,
        said.text,
        record.outcome,
        record.tool_calls.len(),
        record.marks.first_sentence.unwrap_or_default()
    );
    let kind = if record.outcome == "answered" { "handled" } else { "not-handled" };
    let mut data = json!({ "text": said.text });
    if let Some(context) = context {
        data["context"] = context;
    }
    write_event(out, &Event::with_data(kind, data)).await?;
    Ok(None)
}

/// A reply streamed as `handled-start` and `handled-chunk`s.
struct HandledChunks<'c> {
    sent: usize,
    context: Option<&'c Value>,
}

impl HandledChunks<'_> {
    async fn send(&mut self, out: &mut (impl AsyncWrite + Unpin), piece: &str) -> std::io::Result<()> {
        if self.sent == 0 {
            let start = self.context.map_or(json!({}), |c| json!({ "context": c }));
            write_event(out, &Event::with_data("handled-start", start)).await?;
        }
        // The chunks add up to the whole text, as a client appends them.
        let text = if self.sent == 0 { piece.to_string() } else { format!(" {piece}") };
        self.sent += 1;
        write_event(out, &Event::with_data("handled-chunk", json!({ "text": text }))).await
    }
}

/// An error event when the event asks for a voice voxd does not have.
fn wrong_voice(event: &Event, services: &Services) -> Option<Event> {
    let name = event.data.get("voice")?.get("name")?.as_str()?;
    (name != services.voice).then(|| Event::error(format!("no voice {name:?} here; voxd speaks with {:?}", services.voice), "voice"))
}

/// A whole text spoken as one audio-start…audio-stop, piece by piece as each is
/// synthesised; the seconds of audio sent, or the `error` that ends the request.
async fn say_whole(text: &str, services: &Services, out: &mut (impl AsyncWrite + Unpin)) -> std::io::Result<Result<f64, Event>> {
    let (pieces, splitter) = Splitter::whole(text, services.first_phrase_words);
    let mut spoken = Spoken { first_runs_on: splitter.first_runs_on(), ..Spoken::default() };
    if let Some(error) = speak(pieces, &mut spoken, services, out, true).await? {
        return Ok(Err(error));
    }
    end_as_one(&spoken, out).await?;
    Ok(Ok(spoken.seconds))
}

/// Synthesises `pieces` in order and sends each one's audio as the vocoder makes it
/// (a slice at a time, the first ~190 ms of a piece after a third to a half of its
/// synthesis): `as_one` → within one audio-start (sent with the first audio) that
/// `end_as_one` closes (a `synthesize`, a satellite's reply); else one
/// audio-start…audio-stop per piece (a stream, as wyoming-piper sends it). Returns
/// the `error` that ends the request when a piece cannot be spoken. Only a text's
/// first piece may find Piper busy; the rest of a text already begun waits its turn.
async fn speak(pieces: Vec<String>, spoken: &mut Spoken, services: &Services, out: &mut (impl AsyncWrite + Unpin), as_one: bool) -> std::io::Result<Option<Event>> {
    for piece in pieces.iter().filter_map(|p| clean(p)) {
        // The slices come from the desk's thread while the job runs; a few may wait
        // here while the client reads slowly, then the voice waits for the socket.
        let (slices_tx, mut slices) = tokio::sync::mpsc::channel::<Slice>(4);
        let job = move |tts: &mut Tts| {
            let rate_hz = tts.rate_hz;
            tts.synthesize_streamed(&piece, &mut |samples, last| {
                let _ = slices_tx.blocking_send(Slice { samples: samples.to_vec(), last, rate_hz });
            })
        };
        let first_piece = spoken.pieces == 0;
        let asked = async move { if first_piece { services.tts.ask(job).await } else { services.tts.ask_next(job).await } };
        tokio::pin!(asked);
        let (mut outcome, mut begun) = (None, false);
        loop {
            tokio::select! {
                Some(slice) = slices.recv() => {
                    send_slice(slice, !begun, spoken, out, as_one).await?;
                    begun = true;
                }
                asked = &mut asked, if outcome.is_none() => outcome = Some(asked),
                else => break,
            }
        }
        match outcome {
            Some(Ok(Ok(_))) => {}
            Some(Ok(Err(e))) => return Ok(Some(Event::error(format!("synthesis failed: {e}"), "tts"))),
            Some(Err(refused)) => return Ok(Some(Event::error(refused.to_string(), refused.code()))),
            None => unreachable!("the loop ends once the desk has answered"),
        }
        spoken.pieces += 1;
    }
    Ok(None)
}

/// A slice of a piece's audio, as the voice made it.
struct Slice {
    samples: Vec<f32>,
    last: bool,
    rate_hz: u32,
}

/// Sends one slice of the piece `spoken.pieces`: its audio-start first where one is
/// due, its audio-stop after the last unless the reply is spoken `as_one`. A phrase
/// cut's two pieces meet without the voice's pauses (the first's end, the second's start).
async fn send_slice(mut slice: Slice, first_of_piece: bool, spoken: &mut Spoken, out: &mut (impl AsyncWrite + Unpin), as_one: bool) -> std::io::Result<()> {
    let rate_hz = slice.rate_hz;
    if spoken.first_runs_on {
        match spoken.pieces {
            0 if slice.last => trim_silent_end(&mut slice.samples, rate_hz, JOIN_PAUSE_MS),
            1 if first_of_piece => trim_silent_start(&mut slice.samples, rate_hz, JOIN_LEAD_MS),
            _ => {}
        }
    }
    spoken.seconds += slice.samples.len() as f64 / rate_hz as f64;
    let format = json!({ "rate": rate_hz, "width": 2, "channels": 1 });
    if first_of_piece && (!spoken.started || !as_one) {
        write_event(out, &Event::with_data("audio-start", format.clone())).await?;
        spoken.started = true;
    }
    for chunk in slice.samples.chunks(SAMPLES_PER_CHUNK) {
        let mut event = Event::with_data("audio-chunk", format.clone());
        event.payload = chunk.iter().flat_map(|s| ((s.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes()).collect();
        write_event(out, &event).await?;
    }
    if slice.last && !as_one {
        write_event(out, &Event::new("audio-stop")).await?;
    }
    Ok(())
}

/// Ends what `speak` sent `as_one`: its audio-stop, after an empty audio-start when
/// nothing was speakable (still a well-formed answer).
async fn end_as_one(spoken: &Spoken, out: &mut (impl AsyncWrite + Unpin)) -> std::io::Result<()> {
    if !spoken.started {
        write_event(out, &Event::with_data("audio-start", json!({ "rate": 22050, "width": 2, "channels": 1 }))).await?;
    }
    write_event(out, &Event::new("audio-stop")).await
}

/// The `info` answer to `describe`: every field the reference's dataclasses require.
fn info(services: &Services) -> Event {
    let version = json!(env!("CARGO_PKG_VERSION"));
    // The protocol requires an attribution URL; voxd has no public home to point at.
    let voxd = json!({ "name": "voxd", "url": "" });
    let by = |name: &str, url: &str| json!({ "name": name, "url": url });
    let wake = match &services.wake {
        None => json!([]),
        Some(wake) => json!([artifact("voxd-openwakeword", "openWakeWord's models on ONNX Runtime in voxd", &voxd, &version, json!({
            "models": wake.models.words.iter().map(|(id, _)| artifact(id, id, &by("David Scripka (openWakeWord)", "https://github.com/dscripka/openWakeWord"), &Value::Null, json!({
                "languages": ["en"], "phrase": phrase_words(id).join(" "),
            }))).collect::<Vec<_>>(),
        }))]),
    };
    let asr = artifact("voxd-whisper", "Whisper (whisper.cpp) in voxd", &voxd, &version, json!({
        "models": [artifact(&services.asr_model, &services.asr_model, &by("OpenAI", "https://github.com/openai/whisper"), &Value::Null, json!({
            "languages": services.asr_languages,
        }))],
        "supports_transcript_streaming": false,
    }));
    let tts = artifact("voxd-piper", "Piper in voxd, speaking each phrase as soon as it is ready", &voxd, &version, json!({
        "voices": [artifact(&services.voice, &services.voice, &by("rhasspy", "https://github.com/rhasspy/piper"), &Value::Null, json!({
            "languages": [services.voice_language], "speakers": null,
        }))],
        "supports_synthesize_streaming": true,
    }));
    let handle = match &services.agent {
        None => json!([]),
        Some(agent) => json!([artifact("voxd-agent", "voxd's agent: the LLM with the home's tools", &voxd, &version, json!({
            "models": [artifact(&agent.model, &agent.model, &by(&agent.model, ""), &Value::Null, json!({ "languages": ["en"] }))],
            "supports_handled_streaming": true,
            "supports_home_control": agent.tools > 0,
        }))]),
    };
    Event::with_data("info", json!({ "asr": [asr], "tts": [tts], "wake": wake, "handle": handle, "intent": [], "mic": [], "snd": [] }))
}

/// One of info's artifacts (a program, a model, a voice): the fields all share, and `more`.
fn artifact(name: &str, description: &str, attribution: &Value, version: &Value, more: Value) -> Value {
    let mut fields = json!({ "name": name, "description": description, "attribution": attribution, "installed": true, "version": version });
    if let (Value::Object(fields), Value::Object(more)) = (&mut fields, more) {
        fields.extend(more);
    }
    fields
}

/// Binds `uri` (tcp://HOST:PORT).
pub async fn bind(uri: &str) -> Result<TcpListener> {
    let address = tcp_address(uri).map_err(anyhow::Error::msg)?;
    TcpListener::bind(address).await.with_context(|| format!("cannot listen on {uri} (in use? another wyoming server?)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_of_any_width_and_channel_count_becomes_mono_samples() {
        let mut audio = Incoming { rate: 16000, width: 2, channels: 2, samples: Vec::new() };
        let mut chunk = Event::new("audio-chunk");
        chunk.payload = [16384i16, 0, -32768, -32768].iter().flat_map(|s| s.to_le_bytes()).collect();
        audio.push(&chunk).unwrap();
        assert_eq!(audio.samples, vec![0.25, -1.0]);
        chunk.payload.pop();
        assert!(audio.push(&chunk).unwrap_err().contains("not whole frames of 4 bytes"));
        let mut other = Event::with_data("audio-chunk", json!({"rate": 22050, "width": 2, "channels": 2}));
        other.payload = vec![0; 4];
        assert!(audio.push(&other).unwrap_err().contains("another format"));
        assert_eq!(sample(&[255]), 127.0 / 128.0);
        assert_eq!(sample(&i32::MIN.to_le_bytes()), -1.0);
    }

    #[test]
    fn formats_outside_the_protocol_are_named() {
        let start = |v: Value| format(&Event::with_data("audio-start", v));
        assert_eq!(start(json!({"rate": 16000, "width": 2, "channels": 1})), Ok((16000, 2, 1)));
        assert!(start(json!({"rate": 16000, "width": 3, "channels": 1})).unwrap_err().contains("width 3"));
        assert!(start(json!({"rate": 16000, "width": 2})).unwrap_err().contains("rate, width and channels"));
        assert!(start(json!({"rate": 5, "width": 2, "channels": 1})).unwrap_err().contains("rate 5 Hz"));
    }

    #[test]
    fn listen_addresses_are_tcp_host_port() {
        assert_eq!(tcp_address("tcp://0.0.0.0:10300"), Ok("0.0.0.0:10300"));
        assert_eq!(tcp_address("tcp://[::1]:10300"), Ok("[::1]:10300"));
        assert!(tcp_address("0.0.0.0:10300").unwrap_err().contains("not a tcp:// address"));
        assert!(tcp_address("tcp://host").unwrap_err().contains("no HOST:PORT"));
    }
}
