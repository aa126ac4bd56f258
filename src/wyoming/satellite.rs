//! Satellites: voxd dials each `[[satellite]]` (a `wyoming-satellite` streaming a
//! room's microphone) and answers what is said there, in that room.
//!
//! ```text
//! voxd ─run-satellite──────────────────────────────────────────▶ satellite
//!      ◀─run-pipeline (start: wake | asr, end: tts | handle)──────
//!      ◀─audio-chunk*  ─▶ 16 kHz ─▶ wake detector ─▶ gate ◀─ webrtc-vad + endpointer
//!      ─detection, voice-started, voice-stopped ─────────────────▶
//!      utterance ─▶ asr desk ─▶ transcript ──────────────────────▶
//!                 ─▶ voxd's agent (the room's own conversation), piece by piece as said
//!                 ─▶ tts desk ─▶ audio-start, audio-chunk* (each piece as it is ready),
//!                    synthesize (the whole text), audio-stop ─▶ played there
//! ```
//!
//! A satellite that streams all the time (`start_stage` wake) is heard exactly as the
//! local microphone is: webrtc-vad and the endpointer cut its speech, the wake
//! stage's detector listens for the wake words, and the same `Gate` lets through the
//! speech addressed to voxd (the wake word in one breath with the request, or on its
//! own and the request after it, or a follow-up after an answer). A satellite that
//! woke on its own (`start_stage` asr) streams one request: all of it is the turn.
//!
//! While its answer is worked out and played, a satellite is not listened to (its
//! microphone hears the reply): its audio is heard as silence until the reply has had
//! time to play, plus `[audio] echo_tail_ms`. Each satellite has a thread of its own
//! (webrtc-vad's detector is not `Send`) and a conversation of its own with the agent
//! ("satellite ROOM"), whose turns the latency log records with their room. The
//! engines are the server's: a turn from one room waits while another's is answered.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::BufReader;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};
use webrtc_vad::Vad;

use super::event::{read_event, write_event, Event, Limits};
use super::board::{Board, State};
use super::reply::{runs_on, Asker};
use super::{end_as_one, format, listen, speak, transcribe, Incoming, Listening, Services, Spoken};
use crate::audio::{StreamResampler, ASR_RATE_HZ};
use crate::config::{SatelliteConfig, VadConfig};
use crate::pipeline::vad::{self as endpoint, Cut, EndpointParams, Endpointer};
use crate::pipeline::wake::{strip_phrase, Gate, Mode, Started};
use crate::pipeline::splitter::Splitter;
use crate::pipeline::TurnIds;

/// The longest wait between dials of a satellite that cannot be reached.
const MOST_PATIENCE: Duration = Duration::from_secs(30);
/// A satellite that streams and then goes quiet for this long is dialled again.
const STREAM_IDLE: Duration = Duration::from_secs(30);
/// A request streamed after the satellite's own wake word that holds no speech in
/// this long ends with an empty transcript (the satellite then listens again).
const SPEECH_WITHIN_S: f64 = 8.0;

/// How satellites are heard: as the microphone is (`[vad]`, `[wake]`, the echo tail).
#[derive(Clone)]
pub struct Hearing {
    pub vad: VadConfig,
    pub echo_tail_ms: u32,
}

/// One `[[satellite]]`: where it is and which room it is in.
#[derive(Clone)]
struct Dialled {
    uri: String,
    address: String,
    room: String,
    /// Its line on the board.
    seat: usize,
    board: Arc<Board>,
}

/// Starts a thread per satellite that dials it, serves it and dials it again when it
/// goes away, for as long as voxd runs; the board they keep.
pub fn start(satellites: &[SatelliteConfig], hearing: &Hearing, services: &Arc<Services>) -> anyhow::Result<Arc<Board>> {
    let board = Arc::new(Board::default());
    for satellite in satellites {
        let address = super::tcp_address(&satellite.uri).map_err(anyhow::Error::msg)?.to_string();
        let room = satellite.name().to_string();
        let seat = board.seat(&room, &satellite.uri);
        let dialled = Dialled { uri: satellite.uri.clone(), address, room, seat, board: board.clone() };
        let (hearing, services) = (hearing.clone(), services.clone());
        std::thread::Builder::new().name("voxd-satellite".into()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => return tracing::error!("satellite {}: cannot start its runtime: {e}", dialled.room),
            };
            runtime.block_on(keep_dialling(dialled, hearing, services));
        })?;
    }
    Ok(board)
}

/// Asks the satellite at `uri` what it is (`describe` → `info`), without taking it
/// over: wyoming-satellite answers a describe from any connection and serves only
/// the one that sends it something else. Its name, or what is wrong.
pub fn probe(uri: &str, patience: Duration) -> Result<String, String> {
    let address = super::tcp_address(uri)?.to_string();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let asked = async {
            let stream = TcpStream::connect(&address).await.map_err(|e| format!("nothing answers: {e}"))?;
            let (read, mut write) = stream.into_split();
            write_event(&mut write, &Event::new("describe")).await.map_err(|e| e.to_string())?;
            let mut reader = BufReader::new(read);
            loop {
                match read_event(&mut reader, Limits::SERVED).await.map_err(|e| e.to_string())? {
                    None => return Err("it hung up without describing itself".to_string()),
                    Some(e) if e.kind == "info" => {
                        return match e.data.get("satellite") {
                            Some(satellite) => Ok(satellite.get("name").and_then(|n| n.as_str()).unwrap_or("unnamed").to_string()),
                            None => Err("it answers, but as a Wyoming service that is no satellite (its info has no \"satellite\")".to_string()),
                        };
                    }
                    Some(_) => {} // Events before the info (none expected): not ours.
                }
            }
        };
        tokio::time::timeout(patience, asked).await.unwrap_or_else(|_| Err(format!("no answer to describe within {} s", patience.as_secs_f64())))
    })
}

/// Dials the satellite, serves it until it hangs up, and dials again: at once after a
/// session, else after 1 s, doubling to `MOST_PATIENCE` while it cannot be reached.
async fn keep_dialling(satellite: Dialled, hearing: Hearing, services: Arc<Services>) {
    let mut patience = Duration::from_secs(1);
    let mut failures = 0u32;
    loop {
        match TcpStream::connect(&satellite.address).await {
            Ok(stream) => {
                if failures > 0 {
                    tracing::info!("satellite {}: reached {} after {failures} failed dials", satellite.room, satellite.uri);
                }
                (patience, failures) = (Duration::from_secs(1), 0);
                tracing::info!("satellite {}: connected to {}", satellite.room, satellite.uri);
                satellite.board.set(satellite.seat, State::Connected, |s| s.failed_dials = 0);
                let why = match serve(stream, &satellite, &hearing, &services).await {
                    Ok(turns) => format!("it hung up after {turns} turns"),
                    Err(why) => format!("lost: {why}"),
                };
                tracing::warn!("satellite {}: {}: {why}; dialling again", satellite.room, satellite.uri);
                satellite.board.set(satellite.seat, State::Dialling, |s| s.last_error = Some(why));
            }
            Err(e) => {
                failures += 1;
                satellite.board.set(satellite.seat, State::Unreachable, |s| (s.failed_dials, s.last_error) = (failures, Some(format!("cannot reach it: {e}"))));
                // Loud the first time, then once a minute or so: a satellite that is
                // switched off must not flood the log.
                if failures == 1 || failures % 8 == 0 {
                    tracing::warn!("satellite {}: cannot reach {}: {e}; trying again every {} s at most", satellite.room, satellite.uri, MOST_PATIENCE.as_secs());
                }
                tokio::time::sleep(patience).await;
                patience = (patience * 2).min(MOST_PATIENCE);
            }
        }
    }
}

/// The events a satellite sends, read on a task of their own (reading an event is not
/// safe to abandon halfway, and the session also waits for its answers).
fn reader(read: tokio::net::tcp::OwnedReadHalf) -> mpsc::Receiver<Result<Option<Event>, String>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut reader = BufReader::new(read);
        loop {
            let read = read_event(&mut reader, Limits::SERVED).await.map_err(|e| e.to_string());
            let last = !matches!(read, Ok(Some(_)));
            if tx.send(read).await.is_err() || last {
                break;
            }
        }
    });
    rx
}

type Writer = Rc<Mutex<OwnedWriteHalf>>;

async fn send(out: &Writer, event: Event) -> std::io::Result<()> {
    write_event(&mut *out.lock().await, &event).await
}

/// A turn being answered: resolves to the seconds of reply audio sent.
type Answering = Pin<Box<dyn Future<Output = std::io::Result<f64>>>>;

/// One connection to a satellite, until it ends; the turns answered.
async fn serve(stream: TcpStream, satellite: &Dialled, hearing: &Hearing, services: &Arc<Services>) -> Result<usize, String> {
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let out: Writer = Rc::new(Mutex::new(write));
    let mut events = reader(read);
    send(&out, Event::new("run-satellite")).await.map_err(|e| e.to_string())?;
    let mut pipeline: Option<Pipeline> = None;
    let mut answering: Option<Answering> = None;
    let mut turns = 0;
    loop {
        let patience = if pipeline.is_some() { STREAM_IDLE } else { Duration::MAX };
        tokio::select! {
            read = tokio::time::timeout(patience, events.recv()) => {
                let event = match read {
                    Err(_) => return Err(format!("no audio for {} s while a pipeline ran", STREAM_IDLE.as_secs())),
                    Ok(None | Some(Ok(None))) => return Ok(turns),
                    Ok(Some(Err(why))) => return Err(why),
                    Ok(Some(Ok(Some(event)))) => event,
                };
                match event.kind.as_str() {
                    "run-pipeline" => {
                        pipeline = match Pipeline::start(&event, hearing, services).await {
                            Ok(p) => {
                                tracing::info!("satellite {}: listening ({})", satellite.room, p.describe());
                                satellite.board.set(satellite.seat, State::Listening, |_| {});
                                Some(p)
                            }
                            Err(why) => {
                                tracing::error!("satellite {}: {why}", satellite.room);
                                send(&out, Event::error(why, "pipeline")).await.map_err(|e| e.to_string())?;
                                None
                            }
                        };
                    }
                    "audio-start" | "audio-chunk" => {
                        let Some(p) = pipeline.as_mut() else { continue };
                        let heard = match p.hear(&event, answering.is_some()) {
                            Ok(heard) => heard,
                            Err(why) => {
                                send(&out, Event::error(why.clone(), "bad-audio")).await.map_err(|e| e.to_string())?;
                                return Err(why);
                            }
                        };
                        for happened in heard {
                            match happened {
                                Heard::Say(event) => send(&out, event).await.map_err(|e| e.to_string())?,
                                Heard::Turn(cut) => {
                                    turns += 1;
                                    answering = Some(satellite.answer(cut, p.speaks, services, &out));
                                }
                                Heard::Nothing => {
                                    tracing::info!("satellite {}: no request within {SPEECH_WITHIN_S} s of its wake word", satellite.room);
                                    send(&out, Event::with_data("transcript", json!({ "text": "" }))).await.map_err(|e| e.to_string())?;
                                    pipeline = None;
                                    break;
                                }
                            }
                        }
                    }
                    "audio-stop" => {
                        // The satellite ended its stream: speech under way is the request.
                        if let Some(mut p) = pipeline.take() {
                            if let (Some(cut), None) = (p.finish(), &answering) {
                                turns += 1;
                                answering = Some(satellite.answer(cut, p.speaks, services, &out));
                            }
                        }
                    }
                    "ping" => {
                        let text = event.text("text").map(str::to_string);
                        send(&out, Event::with_data("pong", json!({ "text": text }))).await.map_err(|e| e.to_string())?;
                    }
                    other => tracing::debug!("satellite {}: {other}", satellite.room),
                }
            }
            answered = async { answering.as_mut().expect("polled only while answering").await }, if answering.is_some() => {
                answering = None;
                let seconds = answered.map_err(|e| e.to_string())?;
                satellite.board.set(satellite.seat, State::Listening, |s| s.turns += 1);
                if let Some(p) = pipeline.as_mut() {
                    if p.once {
                        // Woken by the satellite: it sends a new run-pipeline when woken again.
                        pipeline = None;
                    } else {
                        p.answered(seconds, hearing.echo_tail_ms);
                    }
                }
            }
        }
    }
}

impl Dialled {
    /// Starts answering a request heard from this satellite.
    fn answer(&self, cut: Cut, speaks: Speaks, services: &Arc<Services>, out: &Writer) -> Answering {
        self.board.set(self.seat, State::Answering, |_| {});
        Box::pin(answer(cut, speaks, self.room.clone(), services.clone(), out.clone()))
    }
}

/// What a satellite's audio led to.
enum Heard {
    /// An event for the satellite (detection, voice-started, voice-stopped).
    Say(Event),
    /// A request to answer.
    Turn(Cut),
    /// No request came after the satellite's own wake word.
    Nothing,
}

/// Whether the reply is spoken there (`end_stage` tts) or only its text is sent.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Speaks {
    Transcript,
    Text,
    Aloud,
}

/// One run-pipeline: the satellite's stream, heard as the microphone is.
struct Pipeline {
    /// Woken by the satellite itself (`start_stage` asr): one request, then idle.
    once: bool,
    speaks: Speaks,
    /// The stream's format, from its audio-start or first chunk.
    incoming: Option<(Incoming, StreamResampler)>,
    vad: Vad,
    endpointer: Endpointer,
    gate: Gate,
    /// The wake words, when the satellite streams all the time.
    wake: Option<Listening>,
    frame_len: usize,
    /// 16 kHz audio not yet a whole frame.
    pending: Vec<f32>,
    /// The frame being heard, and as webrtc-vad takes it: kept, so that the 50
    /// frames a second allocate nothing.
    frame: Vec<f32>,
    pcm: Vec<i16>,
    /// Samples heard so far (16 kHz): the stream's clock.
    sample: u64,
    /// Audio before this sample is heard as silence (the reply playing there).
    deaf_until: u64,
    speech_seen: bool,
}

impl Pipeline {
    async fn start(event: &Event, hearing: &Hearing, services: &Services) -> Result<Pipeline, String> {
        let stage = |key: &str| event.text(key).unwrap_or_default().to_string();
        let (start, end) = (stage("start_stage"), stage("end_stage"));
        let once = match start.as_str() {
            "wake" => false,
            "asr" => true,
            other => return Err(format!("run-pipeline from {other:?}: voxd runs a satellite's pipeline from \"wake\" (it streams all the time) or \"asr\" (it woke on its own)")),
        };
        let speaks = match end.as_str() {
            "tts" => Speaks::Aloud,
            "handle" => Speaks::Text,
            "asr" => Speaks::Transcript,
            other => return Err(format!("run-pipeline to {other:?}: voxd ends a satellite's pipeline at \"tts\", \"handle\" or \"asr\"")),
        };
        if speaks != Speaks::Transcript && services.agent.is_none() {
            return Err("a satellite's requests need voxd's agent: set [wyoming] handle = true".into());
        }
        let wake = if once {
            None
        } else {
            Some(listen(None, ASR_RATE_HZ, services).await.map_err(|e| format!("the satellite streams for voxd's wake word, but {}", e.text("text").unwrap_or_default()))?)
        };
        let wake_config = services.wake.as_ref().map(|w| w.config.clone()).unwrap_or_default();
        let mut params = EndpointParams::from_config(&hearing.vad);
        // Whole utterances only: the satellite's turn is answered from its transcript.
        (params.speculate_after, params.partial_every) = (0, 0);
        Ok(Pipeline {
            once,
            speaks,
            incoming: None,
            vad: endpoint::detector(&hearing.vad),
            endpointer: Endpointer::new(params, TurnIds::starting_at(1)),
            gate: Gate::new(if once { Mode::Always } else { Mode::WakeWord }, &wake_config, hearing.vad.min_speech_ms),
            wake,
            frame_len: params.frame_len,
            pending: Vec::new(),
            frame: Vec::with_capacity(params.frame_len),
            pcm: Vec::with_capacity(params.frame_len),
            sample: 0,
            deaf_until: 0,
            speech_seen: false,
        })
    }

    fn describe(&self) -> String {
        let from = if self.once { "woken by the satellite" } else { "for the wake word" };
        let to = match self.speaks {
            Speaks::Aloud => "replies spoken there",
            Speaks::Text => "replies as text",
            Speaks::Transcript => "transcripts only",
        };
        format!("{from}, {to}")
    }

    /// Takes an audio-start or audio-chunk. `answering`: a reply is being worked out
    /// (the satellite's audio is heard as silence).
    fn hear(&mut self, event: &Event, answering: bool) -> Result<Vec<Heard>, String> {
        if event.kind == "audio-start" || self.incoming.is_none() {
            let (rate, width, channels) = format(event)?;
            let resampler = StreamResampler::new(rate, ASR_RATE_HZ).map_err(|e| e.to_string())?;
            self.incoming = Some((Incoming { rate, width, channels, samples: Vec::new() }, resampler));
            if event.kind == "audio-start" {
                return Ok(Vec::new());
            }
        }
        let (incoming, resampler) = self.incoming.as_mut().expect("set above");
        incoming.samples.clear();
        incoming.push_unbounded(event)?;
        resampler.push(&incoming.samples, &mut self.pending);
        let mut heard = Vec::new();
        let mut at = 0;
        let mut frame = std::mem::take(&mut self.frame);
        while self.pending.len() - at >= self.frame_len {
            frame.clear();
            frame.extend_from_slice(&self.pending[at..at + self.frame_len]);
            at += self.frame_len;
            let start = self.sample;
            self.sample += frame.len() as u64;
            if answering || start < self.deaf_until {
                frame.fill(0.0);
            }
            self.frame(&frame, start, &mut heard)?;
        }
        self.frame = frame;
        self.pending.drain(..at);
        if self.once && !self.speech_seen && self.sample as f64 > SPEECH_WITHIN_S * ASR_RATE_HZ as f64 {
            heard.push(Heard::Nothing);
        }
        Ok(heard)
    }

    /// One frame through the wake detector, webrtc-vad, the endpointer and the gate.
    fn frame(&mut self, frame: &[f32], start: u64, heard: &mut Vec<Heard>) -> Result<(), String> {
        let mut events = Vec::new();
        if let Some(wake) = self.wake.as_mut() {
            for detection in wake.hear(frame) {
                heard.push(Heard::Say(super::detection_event(&detection)));
                events.extend(self.gate.woke(&detection));
            }
        }
        self.pcm.clear();
        self.pcm.extend(frame.iter().map(|s| (s.clamp(-1.0, 1.0) * i16::MAX as f32) as i16));
        let voiced = self.vad.is_voice_segment(&self.pcm).map_err(|()| format!("webrtc-vad rejected a {}-sample frame", frame.len()))?;
        for event in self.endpointer.push(frame, start, voiced) {
            events.extend(self.gate.pass(event, false));
        }
        self.gate.tick(self.sample);
        for event in events {
            self.emit(event, heard);
        }
        Ok(())
    }

    fn emit(&mut self, event: endpoint::Event, heard: &mut Vec<Heard>) {
        let ms = json!(self.sample / 16);
        match event {
            endpoint::Event::Started { .. } => {
                self.speech_seen = true;
                heard.push(Heard::Say(Event::with_data("voice-started", json!({ "timestamp": ms }))));
            }
            endpoint::Event::Final(cut) if !cut.samples.is_empty() => {
                heard.push(Heard::Say(Event::with_data("voice-stopped", json!({ "timestamp": ms }))));
                heard.push(Heard::Turn(cut));
            }
            _ => {}
        }
    }

    /// The stream ended (audio-stop): the speech under way, if it is a request.
    fn finish(&mut self) -> Option<Cut> {
        let event = self.endpointer.finish(self.sample)?;
        self.gate.pass(event, false).into_iter().find_map(|e| match e {
            endpoint::Event::Final(cut) if !cut.samples.is_empty() => Some(cut),
            _ => None,
        })
    }

    /// A reply of `seconds` was sent: deaf until it has played there (and its echo
    /// died away), then a follow-up needs no wake word for a while.
    fn answered(&mut self, seconds: f64, echo_tail_ms: u32) {
        self.deaf_until = self.sample + ((seconds + echo_tail_ms as f64 / 1000.0) * ASR_RATE_HZ as f64) as u64;
        self.gate.answered(self.deaf_until);
    }
}

/// Answers one request: its transcript, the agent's reply in the room's conversation,
/// and the reply spoken; the seconds of audio sent.
async fn answer(cut: Cut, speaks: Speaks, room: String, services: Arc<Services>, out: Writer) -> std::io::Result<f64> {
    let heard_at = Instant::now();
    let started = cut.started.clone();
    let audio = Incoming { rate: ASR_RATE_HZ, width: 2, channels: 1, samples: cut.samples };
    let heard = match transcribe(audio, None, &services).await {
        Ok(transcript) => transcript.text("text").unwrap_or_default().trim().to_string(),
        Err(error) => {
            tracing::warn!("satellite {room}: {}", error.text("text").unwrap_or_default());
            send(&out, error).await?;
            return Ok(0.0);
        }
    };
    // The wake phrase is the satellite's business, not the request's.
    let text = match &started {
        Started::Wake { word, .. } => strip_phrase(&heard, word),
        _ => heard,
    };
    send(&out, Event::with_data("transcript", json!({ "text": text }))).await?;
    let agent = match (&services.agent, speaks) {
        (Some(agent), Speaks::Text | Speaks::Aloud) if !text.is_empty() => agent,
        _ => return Ok(0.0),
    };
    let asker = Asker { conversation: Some(format!("satellite {room}")), room: Some(room.clone()), started, waits: true };
    let mut reply = match agent.ask(&text, asker).await {
        Ok(reply) => reply,
        Err(error) => {
            tracing::error!("satellite {room}: {}", error.text("text").unwrap_or_default());
            send(&out, error).await?;
            return Ok(0.0);
        }
    };
    // Each piece is spoken as soon as the agent has said it: the room hears the
    // first words while the model is still writing the rest.
    let mut spoken = Spoken::default();
    let mut first_audio = None;
    let mut failed = None;
    if speaks == Speaks::Aloud {
        while let Some(piece) = reply.next().await {
            if spoken.pieces == 0 {
                spoken.first_runs_on = runs_on(&piece);
            }
            failed = speak(vec![piece], &mut spoken, &services, &mut *out.lock().await, true).await?;
            first_audio = first_audio.or(Some(heard_at.elapsed()));
            if failed.is_some() {
                break;
            }
        }
    }
    let said = match reply.end().await {
        Ok(said) => said,
        Err(error) => {
            let mut write = out.lock().await;
            if spoken.started {
                end_as_one(&spoken, &mut *write).await?;
            }
            write_event(&mut *write, &error).await?;
            return Ok(spoken.seconds);
        }
    };
    tracing::info!(
        "satellite {room}: {text:?} → {:?} ({}, {} tool calls; first words sent {}, the reply ready {:.1} s after the request ended)",
        said.text,
        said.record.outcome,
        said.record.tool_calls.len(),
        first_audio.map_or("with it".to_string(), |t| format!("{:.1} s", t.as_secs_f64())),
        heard_at.elapsed().as_secs_f64()
    );
    // The whole text, for the satellite's synthesize command (its audio is already
    // under way, and ends below).
    send(&out, Event::with_data("synthesize", json!({ "text": said.text }))).await?;
    if speaks != Speaks::Aloud {
        return Ok(0.0);
    }
    let mut write = out.lock().await;
    if failed.is_none() && !said.rest.is_empty() {
        let (rest, _) = Splitter::whole(&said.rest, 0);
        failed = speak(rest, &mut spoken, &services, &mut *write, true).await?;
    }
    end_as_one(&spoken, &mut *write).await?;
    if let Some(error) = failed {
        tracing::warn!("satellite {room}: the reply could not be spoken: {}", error.text("text").unwrap_or_default());
        write_event(&mut *write, &error).await?;
    }
    Ok(spoken.seconds)
}
