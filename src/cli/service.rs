//! Looking after a running voxd: latency reports, doctor, the control socket's client, config checks.

use super::*;

pub(super) fn latency_report(logs: &[PathBuf], compare: Option<&[PathBuf]>, plot: Option<&Path>) -> Result<()> {
    use crate::latency;
    // Lines that are not turn records are skipped, and said so here, on stderr.
    let load = |paths: &[PathBuf]| -> Result<Vec<crate::pipeline::telemetry::TurnRecord>> {
        let loaded = latency::load(paths)?;
        for s in &loaded.skipped {
            eprintln!("warning: {s}");
        }
        Ok(loaded.turns)
    };
    let series: Vec<(String, Vec<crate::pipeline::telemetry::TurnRecord>)> = match compare {
        Some([old, new]) => {
            let (a, b) = (load(std::slice::from_ref(old))?, load(std::slice::from_ref(new))?);
            print!("{}", latency::compare(&a, &b, &old.display().to_string(), &new.display().to_string()));
            vec![(format!("before: {}", old.display()), a), (format!("after: {}", new.display()), b)]
        }
        Some(_) => anyhow::bail!("--compare takes two logs: OLD NEW"),
        None => {
            let turns = load(logs)?;
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
pub(super) fn doctor(config_path: Option<&Path>) -> Result<()> {
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
pub(super) fn ctl(config: Option<&Path>, socket: Option<&Path>, command: CtlCommand) -> Result<()> {
    use crate::control::{Daemon, Request};
    let configured = Config::discover(config).ok();
    let explicit = socket;
    let setting = |daemon: Daemon| configured.as_ref().map_or("", |c| if daemon == Daemon::Run { c.service.control_socket.as_str() } else { c.wyoming.control_socket.as_str() });
    let socket = crate::control::client_socket(Daemon::Run, explicit, setting(Daemon::Run));
    let (request, json) = match command {
        CtlCommand::Status { json } => (Request::Status, json),
        CtlCommand::Mute => (Request::Mute, false),
        CtlCommand::Unmute => (Request::Unmute, false),
        CtlCommand::Ptt { state } => (Request::PushToTalk { down: matches!(state, PttState::Down) }, false),
        CtlCommand::Ask { text } => (Request::Ask { text }, false),
        CtlCommand::Cancel => (Request::Cancel, false),
    };
    if request == (Request::PushToTalk { down: true }) {
        // Held by this connection: voxd lets go when it closes.
        crate::control::hold_push_to_talk(&socket, |reply| {
            let most = reply["held_at_most_s"].as_f64().map_or(String::new(), |s| format!(" (for {s:.0} s at most)"));
            println!("push-to-talk held{most}: speak, then Ctrl-C or `voxd ctl ptt up`");
        })?;
        println!("push-to-talk released");
        return Ok(());
    }
    if request == Request::Status {
        // voxd run and voxd wyoming may both be running (or either): each is asked.
        let wyoming_socket = crate::control::client_socket(Daemon::Wyoming, None, setting(Daemon::Wyoming));
        let wyoming = (explicit.is_none() && setting(Daemon::Wyoming) != "off" && wyoming_socket.exists()).then(|| crate::control::request(&wyoming_socket, &Request::Status));
        let run = crate::control::request(&socket, &request);
        let (mut run, wyoming) = match (run, wyoming) {
            (Err(e), None | Some(Err(_))) => return Err(e),
            (Ok(reply), Some(Err(e))) => {
                eprintln!("voxd wyoming's socket {} does not answer: {e:#}", wyoming_socket.display());
                (Some(reply), None)
            }
            (run, wyoming) => (run.ok(), wyoming.and_then(Result::ok)),
        };
        // What a socket given with --socket answers may be voxd wyoming's.
        let (run, wyoming) = match run.take() {
            Some(reply) if reply["daemon"] == "wyoming" => (None, Some(reply)),
            reply => (reply, wyoming),
        };
        if json {
            let both = match (run, wyoming) {
                (Some(mut run), Some(wyoming)) => {
                    run["wyoming"] = wyoming;
                    run
                }
                (run, wyoming) => run.or(wyoming).unwrap_or_default(),
            };
            println!("{}", serde_json::to_string_pretty(&both)?);
            return Ok(());
        }
        if let Some(reply) = &run {
            print_run_status(reply);
        }
        if let Some(reply) = &wyoming {
            print_wyoming_status(reply);
        }
        return Ok(());
    }
    let reply = crate::control::request(&socket, &request)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
        return Ok(());
    }
    match request {
        Request::Status => unreachable!("answered above"),
        Request::Mute => println!("microphone muted"),
        Request::Unmute => println!("microphone on"),
        // (A press is held above.)
        Request::PushToTalk { .. } => println!("push-to-talk released"),
        Request::Ask { .. } => println!("turn {} started", reply["turn"]),
        Request::Cancel => match reply["cancelled"].as_u64() {
            Some(turn) => println!("turn {turn} cancelled"),
            None => println!("nothing to cancel: no turn was being answered"),
        },
    }
    Ok(())
}

/// `voxd ctl status` of `voxd run`: its state, turns, models, devices and stages.
fn print_run_status(reply: &serde_json::Value) {
    let s = &reply["summary"];
    let rt = s["last_round_trip_ms"].as_f64().map_or("-".into(), |ms| format!("{ms:.0} ms"));
    println!("{} ({}{})", reply["state"].as_str().unwrap_or("?"), if reply["muted"] == true { "microphone muted" } else { "microphone on" }, if reply["push_to_talk"] == true { ", push-to-talk held" } else { "" });
    println!("up {:.0} s; {} turns ({} cancelled); last round trip {rt}", s["uptime_s"].as_f64().unwrap_or(0.0), s["turns"], s["cancelled"]);
    let m = &reply["models"];
    println!("models: asr {}, llm {}, tts {}", m["asr"].as_str().unwrap_or("?"), m["llm"].as_str().unwrap_or("?"), m["tts"].as_str().unwrap_or("?"));
    let d = &reply["devices"];
    println!("devices: {} xruns, reopened {} times; capture {} ms, output {} ms", d["xruns"], d["reopens"], d["capture_ms"], d["output_ms"]);
    let stages: Vec<String> = reply["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let work = match (s["turn"].as_u64(), s["busy_ms"].as_f64()) {
                (Some(turn), Some(ms)) => format!(" (turn {turn}, {:.1} s)", ms / 1000.0),
                _ => String::new(),
            };
            format!("{} {}{work}", s["stage"].as_str().unwrap_or("?"), s["state"].as_str().unwrap_or("?"))
        })
        .collect();
    println!("stages: {}", stages.join(", "));
}

/// `voxd ctl status` of `voxd wyoming`: what it serves, and each satellite.
fn print_wyoming_status(reply: &serde_json::Value) {
    let serves = &reply["serves"];
    let named = |v: &serde_json::Value| v.as_str().map(str::to_string).or_else(|| v.as_array().map(|a| a.iter().filter_map(|w| w.as_str()).collect::<Vec<_>>().join(", "))).unwrap_or_else(|| "none".into());
    println!(
        "wyoming: listening on {} for {} s: asr {}, tts {}, wake {}, agent {}",
        reply["listening"].as_str().unwrap_or("?"),
        reply["uptime_s"],
        named(&serves["asr"]),
        named(&serves["tts"]),
        named(&serves["wake"]),
        named(&serves["handle"])
    );
    let satellites: Vec<String> = reply["satellites"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let turns = s["turns"].as_u64().unwrap_or(0);
            let mut line = format!("{} {} for {} s ({turns} turn{}", s["room"].as_str().unwrap_or("?"), s["state"].as_str().unwrap_or("?"), s["for_s"], if turns == 1 { "" } else { "s" });
            if s["failed_dials"].as_u64().unwrap_or(0) > 0 {
                line += &format!(", {} failed dials", s["failed_dials"]);
            }
            if let Some(why) = s["last_error"].as_str() {
                line += &format!("; last: {why}");
            }
            line + ")"
        })
        .collect();
    println!("satellites: {}", if satellites.is_empty() { "none".to_string() } else { satellites.join(", ") });
}

pub(super) fn check_config(file: Option<&Path>) -> Result<()> {
    let config = Config::discover(file)?;
    match &config.source {
        Some(p) => eprintln!("{}: ok", p.display()),
        None => eprintln!("no config file found; the built-in defaults are valid"),
    }
    Ok(())
}
