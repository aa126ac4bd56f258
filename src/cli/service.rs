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
    if request == (Request::PushToTalk { down: true }) {
        // Held by this connection: voxd lets go when it closes.
        crate::control::hold_push_to_talk(&socket, |reply| {
            let most = reply["held_at_most_s"].as_f64().map_or(String::new(), |s| format!(" (for {s:.0} s at most)"));
            println!("push-to-talk held{most}: speak, then Ctrl-C or `voxd ctl ptt up`");
        })?;
        println!("push-to-talk released");
        return Ok(());
    }
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

pub(super) fn check_config(file: Option<&Path>) -> Result<()> {
    let config = Config::discover(file)?;
    match &config.source {
        Some(p) => eprintln!("{}: ok", p.display()),
        None => eprintln!("no config file found; the built-in defaults are valid"),
    }
    Ok(())
}
