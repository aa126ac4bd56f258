//! `voxd.toml`: the user's configuration.
//!
//! Strict by design: an unknown key, a wrong type or an out-of-range value is an error,
//! and every problem in the file is reported at once, each with its line and column,
//! so a user fixes the file in one pass. Each field is declared once below with its
//! type, default, allowed range and doc comment; `voxd.example.toml` shows them all
//! and a test keeps the two in step.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

pub use crate::tools::config::{HomeAssistantConfig, IntentConfig, MqttConfig, ToolConfig, ToolsConfig};


/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigProblem {
    pub line: usize,
    pub column: usize,
    /// Dotted key, e.g. `asr.threads`.
    pub key: String,
    pub message: String,
}

/// Every problem found in a configuration file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors {
    pub path: PathBuf,
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(f, "{} has {n} problem{}", self.path.display(), if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            write!(f, "\n  {}:{}:{}: {}: {}", self.path.display(), p.line, p.column, p.key, p.message)?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Invalid(#[from] ConfigErrors),
}

/// Collects problems while a document is walked.
pub(crate) struct Problems<'a> {
    text: &'a str,
    found: Vec<ConfigProblem>,
}

impl Problems<'_> {
    pub(crate) fn add(&mut self, span: Option<Range<usize>>, key: String, message: String) {
        let (line, column) = line_column(self.text, span.map_or(0, |s| s.start));
        self.found.push(ConfigProblem { line, column, key, message });
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Declares a config section: a struct whose fields each carry a doc comment, a type,
/// a default and an optional check `(predicate, "what is allowed")`.
macro_rules! section {
    (
        $(#[doc = $sdoc:literal])*
        $name:ident $key:literal {
            $(
                $(#[doc = $doc:literal])*
                $field:ident : $ty:ty = $default:expr $(, check($check:expr, $expect:literal))? ;
            )*
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        impl $name {
            pub const KEY: &'static str = $key;
            pub const FIELDS: &'static [&'static str] = &[$(stringify!($field)),*];

            #[allow(dead_code)]
            pub(crate) fn from_table(table: &toml_edit::Table, problems: &mut $crate::config::Problems<'_>) -> Self {
                Self::from_table_at(table, $key, problems)
            }

            /// Reads the section from `table`, naming keys `PREFIX.key` in problems
            /// (`tool[2].service` for the third `[[tool]]`).
            pub(crate) fn from_table_at(table: &toml_edit::Table, prefix: &str, problems: &mut $crate::config::Problems<'_>) -> Self {
                use serde::de::IntoDeserializer as _;
                use serde::Deserialize as _;
                let mut out = Self::default();
                for (k, item) in table.iter() {
                    let span = table.key(k).and_then(|key| key.span()).or_else(|| item.span());
                    match k {
                        $(
                        stringify!($field) => {
                            let path = format!("{}.{}", prefix, k);
                            let value = match item.clone().into_value() {
                                Ok(v) => v,
                                Err(_) => { problems.add(span, path, "expected a value, found a table".into()); continue; }
                            };
                            let value_span = value.span().or(span);
                            match <$ty>::deserialize(value.into_deserializer()) {
                                Ok(v) => {
                                    $(
                                    let ok: fn(&$ty) -> bool = $check;
                                    if !ok(&v) {
                                        problems.add(value_span, path, format!("{:?} is out of range: expected {}", v, $expect));
                                        continue;
                                    }
                                    )?
                                    out.$field = v;
                                }
                                Err(e) => problems.add(value_span, path, format!("{}", e.message())),
                            }
                        }
                        )*
                        other => problems.add(
                            span,
                            format!("{}.{}", prefix, other),
                            format!("unknown key; expected one of: {}", Self::FIELDS.join(", ")),
                        ),
                    }
                }
                out
            }
        }
    };
}

pub(crate) use section;

section! {
    /// Where voxd keeps its models.
    PathsConfig "paths" {
        /// Directory holding installed models. Empty: `$VOXD_MODELS_DIR`, else
        /// `${XDG_DATA_HOME:-~/.local/share}/voxd/models`.
        models_dir: String = String::new();
        /// The model table. Empty: `models.toml` beside the config, else the one voxd ships.
        models_toml: String = String::new();
    }
}

section! {
    /// Speech recognition (whisper.cpp).
    AsrConfig "asr" {
        /// Model id from models.toml, or a path to a whisper.cpp ggml file. Empty: the
        /// table's default (whisper-small), falling back to the installed test model.
        model: String = String::new();
        /// Language spoken to the assistant (ISO 639-1), or "auto" to detect it.
        language: String = "en".into(), check(|s: &String| s == "auto" || (s.len() == 2 && s.chars().all(|c| c.is_ascii_lowercase())), "a two-letter language code or \"auto\"");
        /// CPU threads for Whisper. On a 2-core board, 1 leaves room for the rest.
        threads: u32 = 2, check(|n: &u32| (1..=64).contains(n), "1 to 64");
        /// Segments whose no-speech probability is above this are dropped as noise.
        no_speech_threshold: f32 = 0.6, check(|x: &f32| (0.0..=1.0).contains(x), "0.0 to 1.0");
        /// Encode only as much of Whisper's 30 s window as the utterance needs (much
        /// faster for short commands); false always encodes the full window.
        scale_encoder: bool = true;
        /// Smallest encoder window in seconds when scaling. Measured on the test speech
        /// (`voxd bench-asr`): 10 s keeps the full window's accuracy; 3 s is faster but
        /// makes Whisper invent repeats.
        min_encoder_s: f32 = 10.0, check(|x: &f32| (1.0..=30.0).contains(x), "1.0 to 30.0");
        /// Decode again at rising temperatures when a greedy pass looks unsure
        /// (whisper.cpp's fallback). Off: one greedy pass — on the test speech
        /// (`voxd bench-asr`) as accurate and 1.4x faster.
        temperature_fallback: bool = false;
        /// whisper.cpp's fused attention kernels: the same words, the encoder ~15 %
        /// faster on the scaled window and ~30 % on the full one (`voxd bench-asr`).
        flash_attention: bool = true;
        /// Run Whisper on the GPU when this ggml has one (built with
        /// `VOXD_GGML_CUDA=ON`, e.g. on a Jetson); without one it runs on the CPU.
        gpu: bool = true;
    }
}

section! {
    /// Voice activity detection (webrtc-vad) and end-of-turn detection.
    VadConfig "vad" {
        /// webrtc-vad aggressiveness: 0 (lenient) to 3 (strict about what is speech).
        aggressiveness: u8 = 2, check(|n: &u8| *n <= 3, "0 to 3");
        /// Analysis frame in ms: 10, 20 or 30.
        frame_ms: u32 = 20, check(|n: &u32| [10, 20, 30].contains(n), "10, 20 or 30");
        /// Audio kept from before speech is detected, so first syllables are not lost.
        preroll_ms: u32 = 300, check(|n: &u32| *n <= 2000, "0 to 2000");
        /// Voiced audio needed before a sound counts as speech (clicks and knocks are shorter).
        min_speech_ms: u32 = 200, check(|n: &u32| (20..=2000).contains(n), "20 to 2000");
        /// Silence that ends a turn. Part of every round trip: keep it short.
        hangover_ms: u32 = 300, check(|n: &u32| (60..=3000).contains(n), "60 to 3000");
        /// Longest utterance; longer speech is cut here and answered.
        max_utterance_s: f32 = 15.0, check(|x: &f32| (1.0..=30.0).contains(x), "1.0 to 30.0");
        /// Start transcribing at a pause this long, before the hangover ends; kept only
        /// if the pause becomes the end of the turn. 0 turns it off.
        speculate_after_ms: u32 = 60, check(|n: &u32| *n <= 3000, "0 to 3000");
        /// While the user speaks, transcribe what was said so far every this many ms
        /// of speech, and have the LLM read it ahead, so at the end only the last
        /// words remain for it (the pass is dropped the moment the pause comes).
        /// 0 turns it off.
        partial_every_ms: u32 = 700, check(|n: &u32| *n == 0 || (200..=10_000).contains(n), "0 (off) or 200 to 10000");
    }
}

section! {
    /// Listening: which speech voxd answers. The wake words are openWakeWord models
    /// (models.toml role `wake`); `voxd bench-wake` measures them.
    WakeConfig "wake" {
        /// "wake_word": speech that begins with a wake word, or that starts within
        /// `follow_up_s` of an answer; "always": every utterance; "push_to_talk": only
        /// while `voxd ctl ptt` holds. Empty: "wake_word" on a live microphone,
        /// "always" for a recording (`voxd run --input`, `voxd bench`).
        mode: String = String::new(), check(|s: &String| ["", "wake_word", "always", "push_to_talk"].contains(&s.as_str()), "\"wake_word\", \"always\" or \"push_to_talk\"");
        /// Wake words: ids from models.toml (`voxd models list`) or paths to your own
        /// openWakeWord classifiers (.onnx). Empty: the table's default (hey_jarvis).
        words: Vec<String> = Vec::new();
        /// Score (0 to 1) at which a wake word counts; `voxd bench-wake` shows the
        /// false rejects and false accepts per hour at each threshold.
        threshold: f32 = 0.5, check(|x: &f32| *x > 0.0 && *x < 1.0, "above 0.0 and below 1.0");
        /// Per wake word, a threshold of its own: { "alexa_v0.1" = 0.6 }.
        word_threshold: std::collections::BTreeMap<String, f32> = Default::default(), check(|m: &std::collections::BTreeMap<String, f32>| m.values().all(|x| *x > 0.0 && *x < 1.0), "scores above 0.0 and below 1.0");
        /// 80 ms steps in a row at or above the threshold before a wake counts
        /// (openWakeWord's trigger level): more is fewer false wakes, a little later.
        trigger_steps: u32 = 1, check(|n: &u32| (1..=10).contains(n), "1 to 10");
        /// Per wake word, a trigger level of its own: { "alexa_v0.1" = 2 }.
        word_trigger_steps: std::collections::BTreeMap<String, u32> = Default::default(), check(|m: &std::collections::BTreeMap<String, u32>| m.values().all(|n| (1..=10).contains(n)), "1 to 10 steps");
        /// After a wake, the same word is not heard again for this long.
        refractory_ms: u32 = 2000, check(|n: &u32| (0..=30_000).contains(n), "0 to 30000");
        /// After a wake word said on its own, how long voxd waits for the request to
        /// begin before it stops listening.
        listen_s: f32 = 6.0, check(|x: &f32| (1.0..=60.0).contains(x), "1.0 to 60.0");
        /// After each answer, how long the user may begin speaking again without the
        /// wake word. 0: always the wake word.
        follow_up_s: f32 = 5.0, check(|x: &f32| (0.0..=60.0).contains(x), "0.0 to 60.0");
        /// A short sound (a WAV file) played when voxd wakes. Empty: none.
        earcon: String = String::new();
    }
}

section! {
    /// Live audio devices (`voxd run` without --input; `voxd devices` lists them).
    AudioConfig "audio" {
        /// The audio system: "pulseaudio" (a PulseAudio server, or PipeWire's pulse
        /// server), "alsa" (the sound cards directly, or ALSA's plugins), or "auto": the
        /// sound server when one answers, else ALSA.
        backend: String = "auto".to_string(), check(|s: &String| ["auto", "pulseaudio", "alsa"].contains(&s.as_str()), "\"auto\", \"pulseaudio\" or \"alsa\"");
        /// Microphone: a device id from `voxd devices` ("pulseaudio:alsa_input.usb-…",
        /// "alsa:hw:CARD=USB,DEV=0"), a part of its name, or empty for the default.
        input_device: String = String::new();
        /// Speaker, likewise.
        output_device: String = String::new();
        /// Audio per device callback in ms: smaller is less latency, more wake-ups.
        period_ms: u32 = 20, check(|n: &u32| (5..=200).contains(n), "5 to 200");
        /// Room in the microphone's ring (ms): the slack while voxd is busy; beyond it
        /// samples are dropped and counted.
        capture_ring_ms: u32 = 2000, check(|n: &u32| (500..=30_000).contains(n), "500 to 30000");
        /// Room in the speaker's ring (ms).
        output_ring_ms: u32 = 1000, check(|n: &u32| (500..=30_000).contains(n), "500 to 30000");
        /// Do not listen while speaking (and `echo_tail_ms` after): the assistant never
        /// hears itself. false: the user can interrupt (`agent.barge_in`), which needs
        /// echo cancellation (README: "Echo cancellation") or a headset.
        half_duplex: bool = true;
        /// Half-duplex: how long after the last reply sample the microphone stays deaf
        /// (the room's echo and the devices' buffers).
        echo_tail_ms: u32 = 300, check(|n: &u32| *n <= 5000, "0 to 5000");
        /// The room the microphone is in ("living room"): its turns carry it in the
        /// latency log, and the agent is told where the user is ("turn on the light"
        /// means this room's). Empty: none.
        room: String = String::new();
    }
}

section! {
    /// The conversation: history and interruptions.
    AgentConfig "agent" {
        /// Tokens of earlier turns kept in the prompt (oldest dropped first).
        history_tokens: u32 = 768, check(|n: &u32| *n <= 65_536, "0 to 65536");
        /// Keep the conversation so far in the prompt: "on", "off" (each question on
        /// its own), or "auto": on unless models.toml marks the LLM `multi_turn = false`
        /// (a model that degenerates with history, like the 135M test model).
        multi_turn: String = "auto".into(), check(|s: &String| ["auto", "on", "off"].contains(&s.as_str()), "\"auto\", \"on\" or \"off\"");
        /// Let the user interrupt the assistant by speaking (barge-in).
        barge_in: bool = true;
        /// Speech needed during a reply before it counts as an interruption.
        barge_in_min_ms: u32 = 300, check(|n: &u32| (20..=5000).contains(n), "20 to 5000");
        /// The longest a turn may take, from its start to the last sample of its
        /// reply; a turn still going then is cut short (and logged so), so nothing
        /// holds the speaker, or in half-duplex the microphone, for longer.
        max_reply_s: f32 = 120.0, check(|x: &f32| (5.0..=3600.0).contains(x), "5.0 to 3600.0");
    }
}

section! {
    /// Running as a service: the control socket, metrics, stopping.
    ServiceConfig "service" {
        /// The control socket `voxd ctl` talks to (owner-only). Empty:
        /// `$RUNTIME_DIRECTORY/control.sock` under systemd, else
        /// `$XDG_RUNTIME_DIR/voxd/control.sock`; "off": no socket.
        control_socket: String = String::new();
        /// Serve Prometheus metrics at http://ADDRESS/metrics, e.g. "127.0.0.1:9464".
        /// Empty: off.
        metrics_listen: String = String::new(), check(|s: &String| s.is_empty() || s.parse::<std::net::SocketAddr>().is_ok(), "empty (off) or an IP address and port such as \"127.0.0.1:9464\"");
        /// On SIGTERM or Ctrl-C the turn in flight is finished and logged; after this
        /// many seconds its reply is cut short, so stopping stays well inside
        /// systemd's TimeoutStopSec (60 s in the unit).
        stop_drain_s: f32 = 10.0, check(|x: &f32| (0.0..=50.0).contains(x), "0.0 to 50.0");
        /// A stage that holds work (a transcription, a reply, a sentence, a tool
        /// call) without progress for this long is hung: voxd logs the turn as failed
        /// and exits non-zero, and under systemd the watchdog is no longer fed, so it
        /// is restarted. Tools whose timeout_ms is longer get that plus 5 s.
        stage_deadline_s: f32 = 60.0, check(|x: &f32| (1.0..=3600.0).contains(x), "1.0 to 3600.0");
    }
}

section! {
    /// The Wyoming server (`voxd wyoming`): Home Assistant and other Wyoming clients
    /// use voxd's Whisper, Piper, wake words and agent.
    WyomingConfig "wyoming" {
        /// Where `voxd wyoming` listens: "tcp://HOST:PORT". Empty: "tcp://0.0.0.0:10300"
        /// (Wyoming's usual port for speech to text).
        listen: String = String::new(), check(|s: &String| s.is_empty() || crate::wyoming::tcp_address(s).is_ok(), "empty or \"tcp://HOST:PORT\", e.g. \"tcp://0.0.0.0:10300\"");
        /// `voxd run` serves Wyoming too, at `listen`, with its own engines: one copy of
        /// each model, the microphone's turns and Wyoming's requests taking turns at
        /// Whisper and Piper, and the satellites dialled from it — instead of a
        /// `voxd wyoming` beside it with models of its own.
        serve_in_run: bool = false;
        /// Requests that may wait for each engine while it works on another; one more
        /// is refused at once with an `error` event (code "busy").
        queue: u32 = 4, check(|n: &u32| (1..=64).contains(n), "1 to 64");
        /// Offer voxd's agent (the LLM with the `[[tool]]`s) as a conversation agent
        /// (Wyoming's `handle`): loads the LLM beside Whisper and Piper.
        handle: bool = true;
        /// Serve Prometheus metrics of the agent's turns (Home Assistant's
        /// conversations and the satellites' requests, by room) at
        /// http://ADDRESS/metrics, e.g. "127.0.0.1:9465". Empty: off. (Not `[service]
        /// metrics_listen`: `voxd run` may be serving that one from the same config.)
        metrics_listen: String = String::new(), check(|s: &String| s.is_empty() || s.parse::<std::net::SocketAddr>().is_ok(), "empty (off) or an IP address and port such as \"127.0.0.1:9465\"");
        /// The socket `voxd ctl status` reads `voxd wyoming`'s status on (what it
        /// serves, each satellite's state; owner-only). Empty:
        /// `$XDG_RUNTIME_DIR/voxd/wyoming.sock` (under systemd its RuntimeDirectory);
        /// "off": none.
        control_socket: String = String::new();
    }
}

section! {
    /// A Wyoming satellite `voxd wyoming` dials (`[[satellite]]`, any number): a
    /// `wyoming-satellite` streaming a room's microphone, answered through voxd's
    /// wake word, Whisper, agent and voice, with the reply played back there.
    SatelliteConfig "satellite" {
        /// Where the satellite listens: "tcp://HOST:PORT" (wyoming-satellite's --uri,
        /// usually port 10700).
        uri: String = String::new(), check(|s: &String| crate::wyoming::tcp_address(s).is_ok(), "\"tcp://HOST:PORT\", e.g. \"tcp://kitchen.local:10700\"");
        /// The room it is in ("kitchen"): its turns carry it in the latency log, and
        /// the agent is told where the user is. Empty: the satellite's address.
        room: String = String::new();
    }
}

impl SatelliteConfig {
    /// What the logs, the status and doctor call it: its room, else its HOST:PORT.
    pub fn name(&self) -> &str {
        match (self.room.as_str(), self.uri.strip_prefix("tcp://")) {
            ("", Some(address)) => address,
            ("", None) => &self.uri,
            (room, _) => room,
        }
    }
}

section! {
    /// Logs.
    LogConfig "log" {
        /// Per-turn latency log (JSON lines). Empty: none, unless --latency-log is given.
        latency_log: String = String::new();
    }
}

section! {
    /// The language model (llama.cpp).
    LlmConfig "llm" {
        /// Model id from models.toml, or a path to a GGUF file. Empty: the table's default.
        model: String = String::new();
        /// CPU threads for generation (and for prompt processing).
        threads: u32 = 2, check(|n: &u32| (1..=64).contains(n), "1 to 64");
        /// Layers offloaded to the GPU when this ggml has one: -1 all, 0 none (CPU
        /// only), N the first N (a model too big for the GPU's memory). Without a GPU
        /// the LLM runs on the CPU.
        gpu_layers: i32 = -1, check(|n: &i32| (-1..=1000).contains(n), "-1 (all) to 1000");
        /// Context window in tokens (prompt + history + reply).
        context_tokens: u32 = 2048, check(|n: &u32| (256..=131_072).contains(n), "256 to 131072");
        /// Longest reply in tokens; a spoken answer should be short.
        max_reply_tokens: u32 = 160, check(|n: &u32| (1..=4096).contains(n), "1 to 4096");
        /// Sampling temperature; 0 is greedy (deterministic).
        temperature: f32 = 0.0, check(|x: &f32| (0.0..=2.0).contains(x), "0.0 to 2.0");
        /// Seed for sampling when temperature > 0.
        seed: u32 = 42;
        /// Keep the system prompt and earlier turns in the KV cache across turns, so
        /// each prompt evaluates only what is new; false evaluates every prompt whole
        /// (`voxd bench --ablate` measures what this saves).
        reuse_prefix: bool = true;
        /// Speak the reply clause by clause as it is generated; false waits for the
        /// whole reply before synthesising it (`voxd bench --ablate`).
        stream_sentences: bool = true;
        /// The first spoken piece may be a phrase of at least this many words, cut
        /// before a word that starts the next phrase ("The capital of Italy | is
        /// Rome."), so the voice starts a few tokens sooner; 0: it is a whole sentence
        /// or a clause ending in a comma. `voxd bench` measures both the time and how
        /// well the joined reply is heard (transcribed back).
        first_phrase_words: u32 = 3, check(|n: &u32| *n == 0 || (2..=20).contains(n), "0 (off) or 2 to 20");
        /// The assistant's persona and rules, sent first in every conversation.
        system_prompt: String = "You are voxd, a helpful voice assistant in the user's home. Answer in one or two short spoken sentences. Use plain words: no lists, no markdown, no emoji.".into();
    }
}

section! {
    /// Speech synthesis (Piper).
    TtsConfig "tts" {
        /// Voice id from models.toml, or a path to a Piper `.onnx` (its `.onnx.json` beside it).
        voice: String = String::new();
        /// Speaking rate: 1.0 is the voice's own, 1.2 is 20 % faster.
        rate: f32 = 1.0, check(|x: &f32| (0.5..=2.0).contains(x), "0.5 to 2.0");
        /// Variation in prosody and timing from one synthesis to the next: 1.0 is the
        /// voice's own; 0.0 says the same text the same way every time.
        variability: f32 = 1.0, check(|x: &f32| (0.0..=2.0).contains(x), "0.0 to 2.0");
        /// CPU threads for ONNX Runtime. The llm stage pauses while the first sentence
        /// is synthesised, so Piper can use the cores then.
        threads: u32 = 2, check(|n: &u32| (1..=64).contains(n), "1 to 64");
        /// Directory that contains `espeak-ng-data`. Empty: found automatically.
        espeak_data_dir: String = String::new();
    }
}

/// The whole configuration, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// The file it came from (None: built-in defaults).
    pub source: Option<PathBuf>,
    pub paths: PathsConfig,
    pub asr: AsrConfig,
    pub llm: LlmConfig,
    pub tts: TtsConfig,
    pub vad: VadConfig,
    pub wake: WakeConfig,
    pub wyoming: WyomingConfig,
    pub agent: AgentConfig,
    pub audio: AudioConfig,
    pub log: LogConfig,
    pub service: ServiceConfig,
    pub tools: ToolsConfig,
    pub home_assistant: HomeAssistantConfig,
    pub mqtt: MqttConfig,
    /// `[[tool]]`: what the assistant may do.
    pub tool: Vec<ToolConfig>,
    /// `[[intent]]`: commands that skip the model.
    pub intent: Vec<IntentConfig>,
    /// `[[satellite]]`: rooms `voxd wyoming` hears through Wyoming satellites.
    pub satellite: Vec<SatelliteConfig>,
}

/// The sections, for messages and for the example-config test (`tool` and `intent`
/// are lists: `[[tool]]`).
pub const SECTIONS: &[(&str, &[&str])] = &[
    (PathsConfig::KEY, PathsConfig::FIELDS),
    (AsrConfig::KEY, AsrConfig::FIELDS),
    (LlmConfig::KEY, LlmConfig::FIELDS),
    (TtsConfig::KEY, TtsConfig::FIELDS),
    (VadConfig::KEY, VadConfig::FIELDS),
    (WakeConfig::KEY, WakeConfig::FIELDS),
    (WyomingConfig::KEY, WyomingConfig::FIELDS),
    (AgentConfig::KEY, AgentConfig::FIELDS),
    (AudioConfig::KEY, AudioConfig::FIELDS),
    (LogConfig::KEY, LogConfig::FIELDS),
    (ServiceConfig::KEY, ServiceConfig::FIELDS),
    (ToolsConfig::KEY, ToolsConfig::FIELDS),
    (HomeAssistantConfig::KEY, HomeAssistantConfig::FIELDS),
    (MqttConfig::KEY, MqttConfig::FIELDS),
    (ToolConfig::KEY, ToolConfig::FIELDS),
    (IntentConfig::KEY, IntentConfig::FIELDS),
    (SatelliteConfig::KEY, SatelliteConfig::FIELDS),
];

impl Config {
    /// Parses configuration text; `path` names it in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        Config::parse_with(text, path, &[])
    }

    /// Parses configuration text that may also hold the top-level keys `other`
    /// (read by someone else: the evaluation set's `[[case]]`s).
    pub fn parse_with(text: &str, path: &Path, other: &[&str]) -> Result<Config, ConfigErrors> {
        let mut problems = Problems { text, found: Vec::new() };
        let doc = match toml_edit::ImDocument::parse(text) {
            Ok(doc) => doc,
            Err(e) => {
                // toml_edit says nothing about some characters (a lone '\r'): name it.
                let message = match e.message().trim() {
                    "" => match e.span().and_then(|s| text.get(s.start..)).and_then(|rest| rest.chars().next()) {
                        Some(c) => format!("unexpected {c:?}; not valid TOML here"),
                        None => "not valid TOML here".to_string(),
                    },
                    m => m.to_string(),
                };
                problems.add(e.span(), "(syntax)".into(), message);
                return Err(ConfigErrors { path: path.into(), problems: problems.found });
            }
        };
        let mut config = Config { source: Some(path.into()), ..Config::default() };
        let empty = toml_edit::Table::new();
        let section = |name: &str, problems: &mut Problems<'_>| -> Option<&toml_edit::Table> {
            match doc.get(name) {
                None => Some(&empty),
                Some(item) => match item.as_table() {
                    Some(t) => Some(t),
                    None => {
                        problems.add(item.span(), name.into(), format!("expected a table [{name}]"));
                        None
                    }
                },
            }
        };
        if let Some(t) = section(PathsConfig::KEY, &mut problems) {
            config.paths = PathsConfig::from_table(t, &mut problems);
        }
        if let Some(t) = section(AsrConfig::KEY, &mut problems) {
            config.asr = AsrConfig::from_table(t, &mut problems);
        }
        if let Some(t) = section(LlmConfig::KEY, &mut problems) {
            config.llm = LlmConfig::from_table(t, &mut problems);
            // The reply and a question must fit beside the system prompt (whose real
            // length `voxd doctor` counts with the model, and `voxd run` at start).
            let l = &config.llm;
            if l.max_reply_tokens as usize + crate::pipeline::llm::QUESTION_ROOM >= l.context_tokens as usize {
                let span = t.key("max_reply_tokens").and_then(|k| k.span()).or_else(|| t.key("context_tokens").and_then(|k| k.span()));
                problems.add(span, "llm.max_reply_tokens".into(), format!("{} leaves no room in context_tokens = {} for the system prompt and the question: lower it, or raise context_tokens", l.max_reply_tokens, l.context_tokens));
            }
        }
        if let Some(t) = section(TtsConfig::KEY, &mut problems) {
            config.tts = TtsConfig::from_table(t, &mut problems);
        }
        if let Some(t) = section(VadConfig::KEY, &mut problems) {
            config.vad = VadConfig::from_table(t, &mut problems);
        }
        if let Some(t) = section(WakeConfig::KEY, &mut problems) {
            config.wake = WakeConfig::from_table(t, &mut problems);
        }
        if let Some(t) = section(WyomingConfig::KEY, &mut problems) {
            config.wyoming = WyomingConfig::from_table(t, &mut problems);
        }
        if let Some(t) = section(AgentConfig::KEY, &mut problems) {
            config.agent = AgentConfig::from_table(t, &mut problems);
        }
        if let Some(t) = section(AudioConfig::KEY, &mut problems) {
            config.audio = AudioConfig::from_table(t, &mut problems);
        }
        if let Some(t) = section(LogConfig::KEY, &mut problems) {
            config.log = LogConfig::from_table(t, &mut problems);
        }
        if let Some(t) = section(ServiceConfig::KEY, &mut problems) {
            config.service = ServiceConfig::from_table(t, &mut problems);
        }
        if let Some(t) = section(ToolsConfig::KEY, &mut problems) {
            config.tools = ToolsConfig::from_table(t, &mut problems);
        }
        if let Some(t) = section(HomeAssistantConfig::KEY, &mut problems) {
            config.home_assistant = HomeAssistantConfig::from_table(t, &mut problems);
            secret_hint(t, HomeAssistantConfig::KEY, &["token", "password"], "token_env (an environment variable) or token_file", &mut problems);
        }
        if let Some(t) = section(MqttConfig::KEY, &mut problems) {
            config.mqtt = MqttConfig::from_table(t, &mut problems);
            secret_hint(t, MqttConfig::KEY, &["password"], "password_env (an environment variable)", &mut problems);
        }
        let tools = crate::tools::config::read_list(&doc, ToolConfig::KEY, &mut problems, ToolConfig::from_table_at);
        for (i, (tool, table)) in tools.iter().enumerate() {
            let prefix = format!("tool[{i}]");
            tool.check(table, &prefix, &mut problems);
            if tools[..i].iter().any(|(t, _)| t.name == tool.name) {
                problems.add(table.key("name").and_then(|k| k.span()), format!("{prefix}.name"), format!("{:?}: another [[tool]] has this name", tool.name));
            }
            let (needs, set) = if tool.executor.starts_with("home_assistant") {
                ("[home_assistant] url", config.home_assistant.url.is_empty())
            } else if tool.executor.starts_with("mqtt") {
                ("[mqtt] host", config.mqtt.host.is_empty())
            } else {
                ("", false)
            };
            if set {
                problems.add(table.key("executor").and_then(|k| k.span()), format!("{prefix}.executor"), format!("{} tools need {needs} to be set", tool.executor));
            }
        }
        config.tool = tools.into_iter().map(|(t, _)| t).collect();
        let intents = crate::tools::config::read_list(&doc, IntentConfig::KEY, &mut problems, IntentConfig::from_table_at);
        for (i, (intent, table)) in intents.iter().enumerate() {
            intent.check(table, &format!("intent[{i}]"), &config.tool, &mut problems);
        }
        config.intent = intents.into_iter().map(|(t, _)| t).collect();
        let satellites = crate::tools::config::read_list(&doc, SatelliteConfig::KEY, &mut problems, SatelliteConfig::from_table_at);
        for (i, (satellite, table)) in satellites.iter().enumerate() {
            let at = table.key("uri").and_then(|k| k.span()).or_else(|| table.span());
            if table.get("uri").is_none() {
                problems.add(at, format!("satellite[{i}].uri"), "is required: where the satellite listens, e.g. \"tcp://kitchen.local:10700\"".into());
            } else if satellites[..i].iter().any(|(s, _)| s.uri == satellite.uri) {
                problems.add(at, format!("satellite[{i}].uri"), format!("{:?}: another [[satellite]] has this address", satellite.uri));
            }
        }
        config.satellite = satellites.into_iter().map(|(s, _)| s).collect();
        for (k, item) in doc.iter() {
            if !SECTIONS.iter().any(|(name, _)| *name == k) && !other.contains(&k) {
                let span = doc.key(k).and_then(|key| key.span()).or_else(|| item.span());
                let names: Vec<_> = SECTIONS.iter().map(|(n, _)| format!("[{n}]")).collect();
                problems.add(span, k.into(), format!("unknown section; expected one of: {}", names.join(", ")));
            }
        }
        if problems.found.is_empty() {
            Ok(config)
        } else {
            problems.found.sort_by_key(|p| (p.line, p.column));
            Err(ConfigErrors { path: path.into(), problems: problems.found })
        }
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Ok(Config::parse(&text, path)?)
    }

    /// The config a command uses: `--config FILE` if given; else `$VOXD_CONFIG`;
    /// else `${XDG_CONFIG_HOME:-~/.config}/voxd/voxd.toml` if it exists; else defaults.
    pub fn discover(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        if let Some(path) = explicit {
            return Config::load(path);
        }
        if let Some(path) = std::env::var_os("VOXD_CONFIG") {
            return Config::load(Path::new(&path));
        }
        let user = crate::paths::config_home().join("voxd/voxd.toml");
        if user.exists() {
            return Config::load(&user);
        }
        Ok(Config::default())
    }
}

/// A secret written into the file is an error with a pointer to where it belongs.
fn secret_hint(table: &toml_edit::Table, section: &str, keys: &[&str], instead: &str, problems: &mut Problems<'_>) {
    for key in keys {
        if let Some(k) = table.key(key) {
            // Instead of the generic "unknown key" for it.
            let path = format!("{section}.{key}");
            problems.found.retain(|p| p.key != path);
            problems.add(k.span(), path, format!("secrets never go in the config file (it is often shared or logged): set {instead}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(text, Path::new("voxd.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.asr, AsrConfig::default());
        assert_eq!(c.llm.context_tokens, 2048);
    }

    #[test]
    fn values_are_read() {
        let c = parse("[asr]\nthreads = 1\nlanguage = \"de\"\n[llm]\ntemperature = 0.7\n").unwrap();
        assert_eq!(c.asr.threads, 1);
        assert_eq!(c.asr.language, "de");
        assert_eq!(c.llm.temperature, 0.7);
    }

    #[test]
    fn every_problem_is_reported_at_once_with_line_and_column() {
        let text = "[asr]\nthreads = 0\nspeed = 3\n\n[llm]\ncontext_tokens = \"big\"\n\n[wakeword]\nx = 1\n";
        let err = parse(text).unwrap_err();
        let got: Vec<_> = err.problems.iter().map(|p| (p.line, p.column, p.key.as_str())).collect();
        assert_eq!(
            got,
            vec![(2, 11, "asr.threads"), (3, 1, "asr.speed"), (6, 18, "llm.context_tokens"), (8, 2, "wakeword")],
            "{err}"
        );
        let msg = err.to_string();
        assert!(msg.contains("voxd.toml:2:11: asr.threads: 0 is out of range: expected 1 to 64"), "{msg}");
        assert!(msg.contains("asr.speed: unknown key; expected one of: model, language, threads"), "{msg}");
        assert!(msg.contains("has 4 problems"), "{msg}");
    }

    #[test]
    fn syntax_error_names_line_and_column() {
        let err = parse("[asr]\nthreads = = 2\n").unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert_eq!(err.problems[0].line, 2);
    }

    /// Found by the config property test: toml_edit's message for a lone '\r' is
    /// empty, which left a problem that said nothing.
    #[test]
    fn a_syntax_error_always_says_something() {
        let err = parse("\r").unwrap_err();
        assert_eq!((err.problems[0].line, err.problems[0].column), (1, 1));
        assert_eq!(err.problems[0].message, "unexpected '\\r'; not valid TOML here");
    }

    #[test]
    fn a_section_that_is_not_a_table_is_an_error() {
        let err = parse("asr = 3\n").unwrap_err();
        assert_eq!(err.problems[0].key, "asr");
        assert!(err.problems[0].message.contains("expected a table [asr]"));
    }
}
