//! `voxd doctor`: is this machine ready to run voxd, and if not, what to do.
//!
//! Each check looks at one thing `voxd run` needs — the configuration, each model,
//! espeak-ng's data, ONNX Runtime, the ggml build, threads, memory, the audio
//! devices, the side doors (socket, metrics port, log), the home's endpoints — and
//! on a Jetson reads the power mode and clocks. A check that fails names what would
//! stop `voxd run` and how to fix it; a warning is something that runs, but worse.
//! Nothing is changed: the checks only read (the audio devices are opened and
//! closed again).

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::catalog::{Catalog, Resolved, Role};
use crate::config::Config;
use crate::models::{self, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    /// Runs, but not as well as it could (or could not be checked).
    Warn,
    /// `voxd run` would fail.
    Fail,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub level: Level,
    pub area: &'static str,
    pub finding: String,
    /// What to do about it (for warnings and failures).
    pub fix: Option<String>,
}

fn ok(area: &'static str, finding: impl Into<String>) -> Check {
    Check { level: Level::Ok, area, finding: finding.into(), fix: None }
}

fn warn(area: &'static str, finding: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { level: Level::Warn, area, finding: finding.into(), fix: Some(fix.into()) }
}

fn fail(area: &'static str, finding: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { level: Level::Fail, area, finding: finding.into(), fix: Some(fix.into()) }
}

/// What the checks look at: the configuration (or why it could not be read), the
/// model table and a way to pick each role's model as `voxd run` would.
pub struct Subject<'a> {
    pub config: Result<&'a Config, String>,
    pub config_source: String,
    pub catalog: &'a Catalog,
    pub models_dir: &'a Path,
    pub resolve: &'a dyn Fn(Role) -> anyhow::Result<Resolved>,
}

/// Runs every check, in the order a user fixes things.
pub fn examine(s: &Subject<'_>) -> Vec<Check> {
    let mut checks = Vec::new();
    let defaults = Config::default();
    let config = match &s.config {
        Ok(c) => {
            checks.push(ok("config", s.config_source.clone()));
            *c
        }
        Err(e) => {
            checks.push(fail("config", e.clone(), "fix the file (`voxd check-config` lists every problem); the checks below use the defaults"));
            &defaults
        }
    };
    let mut model_bytes = 0u64;
    for role in [Role::Asr, Role::Llm, Role::Tts] {
        let (check, bytes) = model(s, role);
        checks.push(check);
        model_bytes += bytes;
    }
    // Listening for a wake word (the default on a microphone) needs its model.
    if crate::pipeline::wake::Mode::of(&config.wake, true) == crate::pipeline::wake::Mode::WakeWord {
        checks.push(model(s, Role::Wake).0);
    }
    checks.push(context(s, config));
    checks.push(espeak(config));
    checks.push(onnx_runtime());
    checks.push(ggml());
    checks.push(gpu(config));
    checks.push(threads(config));
    checks.push(memory(model_bytes));
    checks.extend(audio(config));
    checks.extend(service(config));
    checks.extend(home(config));
    checks.extend(satellites(config));
    checks.extend(jetson());
    checks
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1 << 20) as f64)
}

/// A role's model: present, readable, and the file the table pins.
fn model(s: &Subject<'_>, role: Role) -> (Check, u64) {
    let area = match role {
        Role::Asr => "asr model",
        Role::Llm => "llm model",
        Role::Tts => "tts voice",
        Role::Wake => "wake word model",
    };
    let r = match (s.resolve)(role) {
        Ok(r) => r,
        Err(e) => return (fail(area, format!("{e:#}"), "install it: `voxd models setup` (all defaults) or `voxd models fetch ID`"), 0),
    };
    let bytes = std::fs::metadata(&r.path).map_or(0, |m| m.len());
    let described = format!("{} ({}, {})", r.id, r.path.display(), mib(bytes));
    let Some(entry) = s.catalog.get(&r.id).filter(|e| s.models_dir.join(&e.file) == r.path) else {
        return (ok(area, format!("{described}; a file of your own, not in models.toml: not verified")), bytes);
    };
    let check = match models::status(entry, s.models_dir) {
        Err(e) => fail(area, format!("{described}: cannot be read ({e})"), format!("check the file's permissions, or fetch it again: `voxd models fetch {}`", r.id)),
        Ok(Status::Missing) => fail(area, format!("{}: not installed", r.id), format!("`voxd models fetch {}`", r.id)),
        Ok(damaged @ (Status::Mismatch { .. } | Status::WrongSize { .. })) => fail(area, format!("{described}: {}", damaged.problem().unwrap_or_default()), format!("fetch it again: `{}`", models::fetch_command(entry))),
        Ok(Status::Unpinned { .. }) => warn(area, format!("{described}: nothing pinned in models.toml to verify it against"), "pin its sha256 in models.toml"),
        Ok(Status::Verified { via }) => match &r.fell_back_from {
            Some(default) => warn(area, format!("{described}, sha256 verified ({via}); the default {default} is not installed, so the test model stands in"), format!("`voxd models fetch {default}`")),
            None => ok(area, format!("{described}, sha256 verified ({via})")),
        },
    };
    (check, bytes)
}

/// Does a turn fit the LLM's context: the system prompt with the tools (counted with
/// the model's own tokenizer), the reply's room, and the history's budget?
fn context(s: &Subject<'_>, config: &Config) -> Check {
    const AREA: &str = "llm context";
    let Ok(r) = (s.resolve)(Role::Llm) else { return warn(AREA, "not checked: no LLM model", "install the model (above)") };
    let l = &config.llm;
    let options = crate::engine::llm::LlmOptions { threads: 1, context_tokens: l.context_tokens, max_reply_tokens: l.max_reply_tokens, temperature: 0.0, seed: 0, reuse_prefix: true, gpu_layers: 0 };
    let llm = match crate::engine::llm::Llm::load_vocab(&r.path, &r.id, options) {
        Ok(llm) => llm,
        Err(e) => return warn(AREA, format!("not checked: {e}"), "see the llm model check above"),
    };
    let format = crate::tools::CallFormat::of(&config.tools, &llm);
    let mut preamble = crate::tools::preamble(&l.system_prompt, &config.tool, &crate::tools::Home::default(), &config.tools, format);
    preamble.push(crate::engine::llm::Message { role: crate::engine::llm::Role::User, content: String::new() });
    let fixed = match llm.count_tokens(&preamble) {
        Ok(n) => n,
        Err(e) => return warn(AREA, format!("not checked: {e}"), "see the llm model check above"),
    };
    let (reply, history, ctx) = (l.max_reply_tokens as usize, config.agent.history_tokens as usize, l.context_tokens as usize);
    let finding = format!("system prompt and tools {fixed} tokens + reply {reply} + history up to {history} of {ctx} ([llm] context_tokens)");
    if fixed + reply + crate::pipeline::llm::QUESTION_ROOM > ctx {
        fail(AREA, finding, "raise [llm] context_tokens, lower [llm] max_reply_tokens, or shorten the system prompt or the tools")
    } else if fixed + reply + crate::pipeline::llm::QUESTION_ROOM + history > ctx {
        let left = ctx - fixed - reply - crate::pipeline::llm::QUESTION_ROOM;
        warn(AREA, format!("{finding}: only about {left} tokens are left for the history"), "raise [llm] context_tokens, or lower [agent] history_tokens to what fits")
    } else {
        ok(AREA, finding)
    }
}

fn espeak(config: &Config) -> Check {
    match crate::engine::tts::locate_espeak_data(&config.tts.espeak_data_dir) {
        Ok(dir) => ok("espeak-ng", format!("data in {}", dir.join("espeak-ng-data").display())),
        Err(e) => fail("espeak-ng", e.to_string(), "`sudo apt install espeak-ng-data`, or point tts.espeak_data_dir at the directory holding espeak-ng-data"),
    }
}

/// ONNX Runtime is linked when voxd loads (without it voxd would not have started):
/// this says which library that was.
fn onnx_runtime() -> Check {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    match maps.split_whitespace().find(|w| w.contains("libonnxruntime")) {
        Some(lib) => {
            let lib = std::fs::canonicalize(lib).unwrap_or_else(|_| PathBuf::from(lib));
            ok("onnxruntime", format!("{} (loaded)", lib.display()))
        }
        None => warn("onnxruntime", "not among the loaded libraries", "reinstall voxd (`./scripts/setup` puts libonnxruntime beside the binary)"),
    }
}

/// The shared ggml's build: the CPU features it uses, and whether CUDA is in it.
fn ggml() -> Check {
    // SAFETY: llama.cpp returns a pointer to a static, NUL-terminated string.
    let info = unsafe { std::ffi::CStr::from_ptr(llama_cpp_sys_2::llama_print_system_info()) }.to_string_lossy().into_owned();
    // "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 0 | OPENMP = 1 |": the names set to 1.
    let on: Vec<&str> = info.split('|').filter_map(|part| part.trim().strip_suffix("= 1")).filter_map(|f| f.trim().rsplit(' ').next()).collect();
    let cuda = info.contains("CUDA");
    let finding = format!("CPU: {}; CUDA: {}", if on.is_empty() { "no SIMD features".to_string() } else { on.join(" ") }, if cuda { "built in" } else { "not built in (CPU only)" });
    let simd = if cfg!(target_arch = "aarch64") { "NEON" } else { "AVX2" };
    if cfg!(any(target_arch = "aarch64", target_arch = "x86_64")) && !info.contains(&format!("{simd} = 1")) {
        return warn("ggml", finding, format!("this ggml uses no {simd}: Whisper and the LLM run several times slower; rebuild with `./scripts/setup` on this machine"));
    }
    ok("ggml", finding)
}

/// The GPU: which one, its memory, and which engines run on it; a warning when a CUDA
/// build finds none (they run on the CPU instead).
fn gpu(config: &Config) -> Check {
    match crate::engine::gpu::placement(config.asr.gpu, config.llm.gpu_layers) {
        Ok(placement) => ok("gpu", placement),
        Err(why) => warn("gpu", why, "on a Jetson: JetPack's driver, and under systemd the GPU's device nodes allowed (the comment in voxd.service); elsewhere an NVIDIA driver; or set [asr] gpu = false and [llm] gpu_layers = 0 to run on the CPU on purpose"),
    }
}

fn threads(config: &Config) -> Check {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let (asr, llm, tts) = (config.asr.threads, config.llm.threads, config.tts.threads);
    let finding = format!("{cores} cores; threads: asr {asr}, llm {llm}, tts {tts}");
    let over: Vec<&str> = [("asr.threads", asr), ("llm.threads", llm), ("tts.threads", tts)].into_iter().filter(|(_, n)| *n > cores).map(|(k, _)| k).collect();
    if over.is_empty() {
        ok("threads", finding)
    } else {
        warn("threads", finding, format!("{} above the {cores} cores only adds contention: set at most {cores}", over.join(", ")))
    }
}

/// Free memory against what the models need: their files (mapped) plus working room.
fn memory(model_bytes: u64) -> Check {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |key: &str| meminfo.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok()).map(|k| k * 1024);
    let (Some(total), Some(available)) = (kib("MemTotal:"), kib("MemAvailable:")) else {
        return warn("memory", "could not read /proc/meminfo", "check the free memory by hand: the models need their size and about 500 MiB more");
    };
    // Working room: KV cache, Whisper's and Piper's buffers, the rest of voxd.
    let needed = model_bytes + (512 << 20);
    let finding = format!("{} available of {}; the models need about {}", mib(available), mib(total), mib(needed));
    if available < needed {
        fail("memory", finding, "free memory (stop other programs) or choose smaller models (`voxd select`, models.toml)")
    } else if available < needed + needed / 2 {
        warn("memory", finding, "little room to spare: other programs may push voxd into swap")
    } else {
        ok("memory", finding)
    }
}

/// The microphone and the speaker: opened as `voxd run` opens them, then closed.
fn audio(config: &Config) -> Vec<Check> {
    let a = &config.audio;
    // alsa-lib's complaints about devices that are not there stay off the report: the
    // lines below say it.
    let _quiet = alsa::Output::local_error_handler();
    let fix_server = "start the sound server (PulseAudio or PipeWire) or set [audio] backend = \"alsa\"; `voxd devices` lists what voxd can reach";
    let mut checks = Vec::new();
    for input in [true, false] {
        let (area, spec, key) = if input { ("microphone", &a.input_device, "input_device") } else { ("speaker", &a.output_device, "output_device") };
        let opened = crate::device::Endpoint::resolve(&a.backend, spec, input).and_then(|endpoint| {
            if input {
                crate::device::Input::open(endpoint, a.period_ms, a.capture_ring_ms).map(|d| d.opened.clone())
            } else {
                crate::device::Output::open(endpoint, 22_050, a.period_ms, a.output_ring_ms).map(|d| d.opened.clone())
            }
        });
        let finding = |e: anyhow::Error| format!("cannot be opened ([audio] backend = {:?}, {key} = {spec:?}): {e:#}", a.backend);
        checks.push(match opened {
            Ok(what) => ok(area, what),
            // `voxd run` waits for a microphone (it may be plugged in later): it runs,
            // but hears nothing until then.
            Err(e) if input => warn(area, format!("{}; `voxd run` waits for it and hears nothing until then", finding(e)), fix_server),
            Err(e) => fail(area, finding(e), fix_server),
        });
    }
    checks
}

/// The control socket, the metrics port and the latency log: each can be created.
fn service(config: &Config) -> Vec<Check> {
    let sv = &config.service;
    let mut checks = Vec::new();
    if sv.control_socket != "off" {
        let path = if sv.control_socket.is_empty() { crate::control::default_socket(crate::control::Daemon::Run) } else { PathBuf::from(&sv.control_socket) };
        checks.push(if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            warn("control", format!("{}: a voxd is already running there", path.display()), "stop it before starting another (`voxd ctl status` asks it what it is doing)")
        } else {
            match creatable(path.parent().unwrap_or(Path::new("/"))) {
                Ok(()) => ok("control", format!("socket {}", path.display())),
                Err(e) => fail("control", format!("socket {}: {e}", path.display()), "set [service] control_socket to a path voxd may create, or \"off\""),
            }
        });
    }
    if !sv.metrics_listen.is_empty() {
        checks.push(match std::net::TcpListener::bind(&sv.metrics_listen) {
            Ok(_) => ok("metrics", format!("http://{}/metrics can be served", sv.metrics_listen)),
            Err(e) => fail("metrics", format!("[service] metrics_listen = {:?}: {e}", sv.metrics_listen), "choose a free port, or leave metrics_listen empty"),
        });
    }
    if !config.log.latency_log.is_empty() {
        let log = Path::new(&config.log.latency_log);
        checks.push(match std::fs::OpenOptions::new().append(true).open(log).map(|_| ()).or_else(|_| creatable(log.parent().unwrap_or(Path::new(".")))) {
            Ok(()) => ok("latency log", log.display().to_string()),
            Err(e) => fail("latency log", format!("{}: {e}", log.display()), "set [log] latency_log to a file voxd may write"),
        });
    }
    checks
}

/// `dir` exists and is writable, or can be made.
fn creatable(dir: &Path) -> std::io::Result<()> {
    let mut existing = dir;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    let probe = existing.join(format!(".voxd-doctor-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

/// The home's endpoints the tools use: configured properly, and answering.
fn home(config: &Config) -> Vec<Check> {
    let uses = |prefix: &str| config.tool.iter().any(|t| t.executor.starts_with(prefix));
    let mut checks = Vec::new();
    if uses("home_assistant") {
        let ha = &config.home_assistant;
        checks.push(match crate::tools::home_assistant::HomeAssistant::from_config(ha) {
            Err(e) => fail("home assistant", format!("{e:#}"), "set the token, then check with `voxd doctor` again"),
            Ok(_) => reachable("home assistant", &ha.url, host_port(&ha.url)),
        });
    }
    if uses("mqtt") {
        let m = &config.mqtt;
        checks.push(reachable("mqtt", &format!("{}:{}", m.host, m.port), Some((m.host.clone(), m.port))));
    }
    checks
}

/// Each `[[satellite]]` `voxd wyoming` dials: does a wyoming-satellite answer there?
/// (Asked with `describe` only, which a satellite answers without leaving the
/// voxd it serves.)
fn satellites(config: &Config) -> Vec<Check> {
    config
        .satellite
        .iter()
        .map(|s| {
            let room = s.name();
            match crate::wyoming::satellite::probe(&s.uri, Duration::from_secs(2)) {
                Ok(name) => ok("satellite", format!("{room}: {} answers (wyoming-satellite \"{name}\")", s.uri)),
                Err(why) => warn("satellite", format!("{room}: {}: {why}", s.uri), "start wyoming-satellite there with --uri matching this address; `voxd wyoming` keeps dialling it (every 30 s at most) and answers that room once it is up"),
            }
        })
        .collect()
}

/// "http://ha.local:8123/" → ("ha.local", 8123).
fn host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    let default = if scheme == "https" { 443 } else { 80 };
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), port.parse().ok()?)),
        None => Some((authority.to_string(), default)),
    }
}

fn reachable(area: &'static str, what: &str, at: Option<(String, u16)>) -> Check {
    use std::net::ToSocketAddrs;
    let Some((host, port)) = at else {
        return fail(area, format!("{what}: not a URL voxd can read"), "write it as http://HOST:PORT");
    };
    let addrs: Vec<_> = (host.as_str(), port).to_socket_addrs().map(|a| a.collect()).unwrap_or_default();
    if addrs.is_empty() {
        return warn(area, format!("{what}: {host} does not resolve"), "check the host name; voxd keeps trying, but its tools fail until then");
    }
    match addrs.iter().find_map(|a| std::net::TcpStream::connect_timeout(a, Duration::from_secs(2)).ok()) {
        Some(_) => ok(area, format!("{what} answers")),
        None => warn(area, format!("{what}: nothing answers"), "start it, or check host and port; voxd runs, but its tools fail until it answers"),
    }
}

/// A Jetson's power mode and clocks, read only. Elsewhere: nothing.
fn jetson() -> Vec<Check> {
    let model = std::fs::read_to_string("/proc/device-tree/model").unwrap_or_default().trim_end_matches('\0').to_string();
    if !model.contains("Jetson") && !Path::new("/etc/nv_tegra_release").exists() {
        return Vec::new();
    }
    let mut checks = vec![ok("jetson", if model.is_empty() { "a Jetson (L4T)".to_string() } else { model })];
    let mode = std::process::Command::new("nvpmodel").arg("-q").output().ok().filter(|o| o.status.success()).map(|o| power_mode(&String::from_utf8_lossy(&o.stdout)).unwrap_or_default());
    checks.push(match mode {
        Some(m) if m.contains("MAXN") => ok("power mode", m),
        Some(m) if !m.is_empty() => warn("power mode", m, "for the lowest latency use the fastest mode: `sudo nvpmodel -m 0` (MAXN), then `sudo jetson_clocks`"),
        _ => warn("power mode", "nvpmodel could not be asked", "`sudo nvpmodel -q` shows it"),
    });
    let khz = |p: &str| std::fs::read_to_string(p).ok().and_then(|v| v.trim().parse::<u64>().ok());
    if let (Some(cur), Some(max)) = (khz("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq"), khz("/sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq")) {
        let finding = format!("CPU {} of {} MHz", cur / 1000, max / 1000);
        checks.push(if cur * 10 < max * 9 { warn("clocks", finding, "the CPU is not at its top clock: `sudo jetson_clocks` pins it (latency varies less)") } else { ok("clocks", finding) });
    }
    // The GPU's devfreq node: 17000000.ga10b on Orin, 17000000.gv11b on Xavier.
    let is_gpu = |name: &str| ["gpu", "ga10b", "gv11b", "gp10b"].iter().any(|g| name.contains(g));
    let gpu = std::fs::read_dir("/sys/class/devfreq").into_iter().flatten().flatten().find(|e| is_gpu(&e.file_name().to_string_lossy()) || std::fs::read_to_string(e.path().join("device/of_node/name")).is_ok_and(|n| is_gpu(&n)));
    if let Some(gpu) = gpu {
        let hz = |f: &str| khz(&gpu.path().join(f).to_string_lossy());
        if let (Some(cur), Some(max)) = (hz("cur_freq"), hz("max_freq")) {
            checks.push(ok("clocks", format!("GPU {} of {} MHz", cur / 1_000_000, max / 1_000_000)));
        }
    }
    checks
}

/// "MAXN" from `nvpmodel -q`'s "NV Power Mode: MAXN" (the mode's number follows on
/// the next line).
fn power_mode(nvpmodel_q: &str) -> Option<String> {
    nvpmodel_q.lines().find_map(|l| l.strip_prefix("NV Power Mode:")).map(|m| m.trim().to_string()).filter(|m| !m.is_empty())
}

/// The report as `voxd doctor` prints it.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let tag = match c.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        let _ = writeln!(out, "{tag}  {:<14} {}", c.area, c.finding);
        if let Some(fix) = &c.fix {
            let _ = writeln!(out, "      {:<14} fix: {fix}", "");
        }
    }
    let (fails, warns) = (checks.iter().filter(|c| c.level == Level::Fail).count(), checks.iter().filter(|c| c.level == Level::Warn).count());
    let plural = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let _ = match fails {
        0 => writeln!(out, "\nready: `voxd run` has what it needs ({}).", plural(warns, "warning", "warnings")),
        n => writeln!(out, "\nnot ready: {} would stop `voxd run` ({}).", plural(n, "problem", "problems"), plural(warns, "warning", "warnings")),
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_and_port() {
        assert_eq!(host_port("http://ha.local:8123/"), Some(("ha.local".into(), 8123)));
        assert_eq!(host_port("https://ha.example"), Some(("ha.example".into(), 443)));
        assert_eq!(host_port("ha.local"), None);
    }

    #[test]
    fn the_power_mode_is_read_from_nvpmodel() {
        assert_eq!(power_mode("NV Power Mode: MAXN\n0\n").as_deref(), Some("MAXN"));
        assert_eq!(power_mode("NVPM WARN: ...\nNV Power Mode: 15W\n2\n").as_deref(), Some("15W"));
        assert_eq!(power_mode("nothing here"), None);
    }

    #[test]
    fn the_verdict_counts_failures_and_warnings() {
        let text = render(&[ok("a", "fine"), warn("b", "meh", "do x"), fail("c", "broken", "do y")]);
        assert!(text.contains("FAIL  c              broken\n"), "{text}");
        assert!(text.contains("fix: do y"), "{text}");
        assert!(text.contains("not ready: 1 problem would stop `voxd run` (1 warning)."), "{text}");
    }
}
