//! `models.toml`: the table of models voxd knows, where each comes from, and which
//! are the defaults. `voxd models list` shows it with what is installed and verified.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The table shipped with this build (the repository's `models.toml`).
pub const BUILTIN: &str = include_str!("../models.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Asr,
    Llm,
    Tts,
    /// openWakeWord: its feature models and the wake-word classifiers.
    Wake,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Asr => "asr",
            Role::Llm => "llm",
            Role::Tts => "tts",
            Role::Wake => "wake",
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// Production defaults, fetched from the hub by `voxd models setup`.
    pub defaults: PerRole,
    /// Used when a default is not installed (e.g. the hub is unreachable): the
    /// registry test models.
    pub fallbacks: PerRole,
    #[serde(rename = "model")]
    pub models: Vec<ModelEntry>,
    /// What an LLM must reach on the quality gates for `voxd select` to choose it.
    #[serde(default)]
    pub gates: Gates,
}

/// `[gates]`: minimum scores (0..=1) for `voxd select`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gates {
    /// Calls with the right tool and arguments, of the evaluation set's commands.
    pub tool_call_accuracy: f64,
    /// Calls that are valid JSON of a known tool with arguments fitting its schema.
    pub valid_output: f64,
    /// Of the answers given instead of a call, the share where no call was wanted.
    pub no_tool_precision: f64,
    /// Spoken answers that are short and plain: no markdown, emoji or thinking aloud.
    pub spoken_discipline: f64,
    /// Turns of a conversation answered without repeating, forgetting or rambling.
    pub multi_turn_stability: f64,
    /// The most answers about a device's state with no read behind them (a count,
    /// over every home of the evaluation).
    pub invented_states: usize,
    /// The most calls or tool names in spoken words (a count).
    pub leaks: usize,
}

impl Default for Gates {
    fn default() -> Gates {
        Gates { tool_call_accuracy: 0.8, valid_output: 0.95, no_tool_precision: 0.8, spoken_discipline: 0.75, multi_turn_stability: 0.8, invented_states: 0, leaks: 0 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerRole {
    pub asr: String,
    pub llm: String,
    pub tts: String,
    /// Absent in tables written before wake words: none.
    #[serde(default)]
    pub wake: String,
}

impl PerRole {
    pub fn get(&self, role: Role) -> &str {
        match role {
            Role::Asr => &self.asr,
            Role::Llm => &self.llm,
            Role::Tts => &self.tts,
            Role::Wake => &self.wake,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub id: String,
    pub role: Role,
    pub family: String,
    /// Parameter count, e.g. "1.24B".
    pub params: String,
    /// Weight format/quantisation, e.g. "Q4_K_M", "f16".
    pub quant: String,
    pub license: String,
    /// Installed file name inside the models directory.
    pub file: String,
    /// sha256 of the file at `url`. Absent: not pinned yet (voxd prints the digest it saw).
    pub sha256: Option<String>,
    /// Exact size in bytes of the file at `url`, pinned with `sha256`: a truncated
    /// file is then caught without reading it all.
    pub bytes: Option<u64>,
    /// Approximate download size in MB, for humans and progress estimates.
    pub size_mb: Option<f64>,
    /// Where users download it from (the model hub).
    pub url: Option<String>,
    /// Piper voices: the `.onnx.json` that goes with `file`.
    pub config_url: Option<String>,
    pub config_sha256: Option<String>,
    pub chat_template: Option<String>,
    pub tool_format: Option<String>,
    /// Expected generation speed on a Jetson Orin NX 16 GB (see the table's header).
    pub orin_nx_tok_s: Option<f64>,
    /// LLMs: false when the model degenerates given the conversation so far
    /// (measured); voxd then answers each question on its own. Absent: it copes.
    pub multi_turn: Option<bool>,
    pub notes: Option<String>,
    /// Installed by `scripts/setup` for the tests.
    #[serde(default)]
    pub test_set: bool,
    /// How to get it from a package registry when the hub is out of reach.
    pub registry: Option<RegistrySource>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySource {
    pub packages: Vec<Package>,
    /// Concatenate these unpacked files, in order, into `into` (split uploads).
    pub join: Option<Join>,
    /// The unpacked file that is the model, installed as-is.
    pub take: Option<String>,
    /// An unpacked CTranslate2 Whisper directory, converted to whisper.cpp ggml.
    pub ct2_whisper: Option<String>,
    /// Piper voices: the unpacked `.onnx.json`.
    pub config: Option<String>,
    /// sha256 of the file this recipe installs (for `ct2_whisper`: of voxd's conversion,
    /// which is deterministic).
    pub sha256: String,
    /// Exact size in bytes of the file this recipe installs, pinned with `sha256`.
    pub bytes: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Join {
    pub into: String,
    pub parts: Vec<String>,
}

/// A package pinned by version and by the sha256 of the downloaded archive.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    /// `name==version` on PyPI.
    pub pypi: Option<String>,
    /// `name@version` on npm.
    pub npm: Option<String>,
    pub sha256: String,
}

impl ModelEntry {
    /// Every name in the entry that becomes part of a path on disk: the id (the
    /// staging directory), `file` (inside the models directory) and the registry
    /// recipe's members (inside the unpacked packages). A table that says
    /// `file = "../x"` must not make voxd write, rename or delete outside its own
    /// directories. `n` is the entry's place in the table, for a bad id.
    fn check_names(&self, n: usize) -> Result<(), String> {
        if let Err(why) = plain_id(&self.id) {
            return Err(format!("[[model]] number {}: id {:?} {why}", n + 1, self.id));
        }
        let bad = |field: &str, value: &str, why: String| Err(format!("model {}: {field} {value:?} {why}", self.id));
        if let Err(why) = plain_name(&self.file) {
            return bad("file", &self.file, format!("{why}; expected a file name inside the models directory, such as \"model.gguf\""));
        }
        let Some(r) = &self.registry else { return Ok(()) };
        let member = |field: &str, value: &str| match relative_path(value) {
            Ok(()) => Ok(()),
            Err(why) => bad(field, value, format!("{why}; expected a path inside the unpacked packages, such as \"pkg/data/model.gguf\"")),
        };
        for (field, value) in [("registry.take", &r.take), ("registry.ct2_whisper", &r.ct2_whisper), ("registry.config", &r.config)] {
            if let Some(value) = value {
                member(field, value)?;
            }
        }
        if let Some(join) = &r.join {
            member("registry.join.into", &join.into)?;
            for part in &join.parts {
                member("registry.join.parts", part)?;
            }
        }
        for p in &r.packages {
            let spec = p.spec();
            if let Err(why) = plain_name(&package_slot(spec)) {
                return bad("registry package", spec, format!("{why}; expected name==version (pypi) or name@version (npm)"));
            }
        }
        Ok(())
    }
}

impl Package {
    /// `name==version` or `name@version`, whichever the table gives.
    pub fn spec(&self) -> &str {
        self.pypi.as_deref().or(self.npm.as_deref()).unwrap_or_default()
    }
}

/// The package cache's directory name for a package spec (one per version).
pub fn package_slot(spec: &str) -> String {
    spec.replace(['/', '@', '='], "_")
}

/// A model id: what `voxd models fetch ID` takes and what names the staging
/// directory. Letters, digits, '.', '-' and '_', not starting with '.'.
pub fn plain_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("is empty".into());
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))) {
        return Err(format!("holds {c:?}; an id is letters, digits, '.', '-' and '_'"));
    }
    if id.starts_with('.') {
        return Err("starts with '.'; an id is letters, digits, '.', '-' and '_', starting with a letter or digit".into());
    }
    Ok(())
}

/// One name inside a directory: not empty, not `.` or `..`, no `/`, `\` or NUL.
pub fn plain_name(name: &str) -> Result<(), String> {
    match name {
        "" => Err("is empty".into()),
        "." | ".." => Err("names a directory, not a file".into()),
        _ if name.contains(['/', '\\']) => Err("holds a path separator".into()),
        _ if name.contains('\0') => Err("holds a NUL byte".into()),
        _ => Ok(()),
    }
}

/// A path below a directory: relative, each '/'-separated part a plain name.
pub fn relative_path(path: &str) -> Result<(), String> {
    if path.starts_with('/') {
        return Err("is absolute".into());
    }
    for part in path.split('/') {
        match part {
            ".." => return Err("climbs out with '..'".into()),
            "" | "." => return Err("has an empty or '.' part".into()),
            _ => plain_name(part)?,
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read model table {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("model table {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("no model {id:?} in {table}; known {role}models: {known}")]
    UnknownModel { id: String, role: String, table: String, known: String },
    #[error("model {id} ({role}) is not installed: {path} is missing; run `voxd models setup` (or `voxd models fetch {id}`)")]
    NotInstalled { id: String, role: Role, path: PathBuf },
    #[error("{path} does not exist (the {role} model given in the config)")]
    MissingPath { path: PathBuf, role: Role },
}

impl Catalog {
    pub fn parse(text: &str, path: &Path) -> Result<Catalog, CatalogError> {
        let catalog: Catalog = toml::from_str(text).map_err(|e| CatalogError::Parse { path: path.into(), message: e.to_string() })?;
        catalog.check(path)?;
        Ok(catalog)
    }

    pub fn builtin() -> Catalog {
        Catalog::parse(BUILTIN, Path::new("models.toml (built in)")).expect("the built-in models.toml is checked by a test")
    }

    /// The table a config names, or the built-in one.
    pub fn load(path: Option<&Path>) -> Result<Catalog, CatalogError> {
        match path {
            None => Ok(Catalog::builtin()),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| CatalogError::Read { path: p.into(), source })?;
                Catalog::parse(&text, p)
            }
        }
    }

    fn check(&self, path: &Path) -> Result<(), CatalogError> {
        let err = |message: String| Err(CatalogError::Parse { path: path.into(), message });
        for (i, m) in self.models.iter().enumerate() {
            if let Err(message) = m.check_names(i) {
                return err(message);
            }
            if self.models[..i].iter().any(|o| o.id == m.id) {
                return err(format!("model id {:?} appears twice", m.id));
            }
            let registry_sha = m.registry.as_ref().map(|r| &r.sha256);
            for sha in [m.sha256.as_ref(), m.config_sha256.as_ref(), registry_sha].into_iter().flatten() {
                if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return err(format!("model {}: sha256 {sha:?} is not 64 hex digits", m.id));
                }
            }
            if let Some(r) = &m.registry {
                let sources = [r.take.is_some(), r.ct2_whisper.is_some()].iter().filter(|b| **b).count();
                if sources != 1 {
                    return err(format!("model {}: registry needs exactly one of `take` or `ct2_whisper`", m.id));
                }
                for p in &r.packages {
                    if p.pypi.is_some() == p.npm.is_some() {
                        return err(format!("model {}: each package names exactly one of `pypi` or `npm`", m.id));
                    }
                }
            }
        }
        for role in [Role::Asr, Role::Llm, Role::Tts, Role::Wake] {
            for id in [self.defaults.get(role), self.fallbacks.get(role)].into_iter().filter(|id| !(role == Role::Wake && id.is_empty())) {
                match self.get(id) {
                    Some(m) if m.role == role => {}
                    Some(m) => return err(format!("default {role} model {id:?} has role {}", m.role)),
                    None => return err(format!("default {role} model {id:?} is not in the table")),
                }
            }
        }
        Ok(())
    }

    pub fn get(&self, id: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.id == id)
    }

    pub fn by_role(&self, role: Role) -> impl Iterator<Item = &ModelEntry> {
        self.models.iter().filter(move |m| m.role == role)
    }
}

/// A model chosen for a role, ready to load.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The table id, or the file name for a model given by path.
    pub id: String,
    pub path: PathBuf,
    /// Set when the production default was missing and the fallback is used instead.
    pub fell_back_from: Option<String>,
}

impl Catalog {
    /// Picks the model for `role`: `requested` is what the config says (an id, a path,
    /// or empty for the default). An empty request falls back to the registry test model
    /// when the production default is not installed, so a fresh set-up still runs.
    pub fn resolve(&self, role: Role, requested: &str, models_dir: &Path) -> Result<Resolved, CatalogError> {
        if looks_like_path(requested) {
            let path = PathBuf::from(requested);
            if !path.exists() {
                return Err(CatalogError::MissingPath { path, role });
            }
            let id = path.file_name().map_or_else(|| requested.to_string(), |n| n.to_string_lossy().into_owned());
            return Ok(Resolved { id, path, fell_back_from: None });
        }
        let installed = |id: &str| -> Result<(String, PathBuf), CatalogError> {
            let entry = self.get(id).filter(|m| m.role == role).ok_or_else(|| CatalogError::UnknownModel {
                id: id.into(),
                role: format!("{role} "),
                table: "models.toml".into(),
                known: self.by_role(role).map(|m| m.id.as_str()).collect::<Vec<_>>().join(", "),
            })?;
            let path = models_dir.join(&entry.file);
            if path.exists() {
                Ok((entry.id.clone(), path))
            } else {
                Err(CatalogError::NotInstalled { id: entry.id.clone(), role, path })
            }
        };
        if !requested.is_empty() {
            let (id, path) = installed(requested)?;
            return Ok(Resolved { id, path, fell_back_from: None });
        }
        let default = self.defaults.get(role);
        match installed(default) {
            Ok((id, path)) => Ok(Resolved { id, path, fell_back_from: None }),
            Err(missing) => match installed(self.fallbacks.get(role)) {
                Ok((id, path)) if id != default => Ok(Resolved { id, path, fell_back_from: Some(default.to_string()) }),
                _ => Err(missing),
            },
        }
    }
}

fn looks_like_path(s: &str) -> bool {
    s.contains('/') || [".bin", ".gguf", ".onnx"].iter().any(|ext| s.ends_with(ext))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_table_parses_and_names_every_design_candidate() {
        let c = Catalog::builtin();
        let llm_families: Vec<String> = c.by_role(Role::Llm).map(|m| m.id.to_lowercase()).collect();
        for wanted in [
            "smollm2-1.7b", "phi-3.5-mini", "nemotron-mini-4b", "qwen2.5-3b", "gemma-2-2b", "smollm3-3b",
            "stablelm-zephyr-3b", "llama-3.2-1b", "qwen2-0.5b", "deepseek-r1-distill-qwen-1.5b", "llama-3.2-3b",
        ] {
            assert!(llm_families.iter().any(|id| id.starts_with(wanted)), "no LLM candidate {wanted} in models.toml");
        }
        for m in c.by_role(Role::Llm).filter(|m| m.url.is_some()) {
            assert!(m.orin_nx_tok_s.is_some() && m.chat_template.is_some() && m.size_mb.is_some(), "{} lacks speed/template/size", m.id);
        }
        assert_eq!(c.defaults.asr, "whisper-small");
        for m in c.models.iter().filter(|m| m.test_set) {
            let r = m.registry.as_ref().unwrap_or_else(|| panic!("test model {} has no registry source", m.id));
            assert!(!r.packages.is_empty());
        }
    }

    #[test]
    fn a_duplicate_id_is_rejected() {
        let text = BUILTIN.to_string() + "\n[[model]]\nid = \"whisper-small\"\nrole = \"asr\"\nfamily = \"x\"\nparams = \"1\"\nquant = \"f16\"\nlicense = \"MIT\"\nfile = \"x.bin\"\n";
        let err = Catalog::parse(&text, Path::new("m.toml")).unwrap_err().to_string();
        assert!(err.contains("\"whisper-small\" appears twice"), "{err}");
    }

    #[test]
    fn an_unknown_field_is_rejected_with_its_line() {
        let text = BUILTIN.replacen("[[model]]\n", "[[model]]\nspeed = 3\n", 1);
        let err = Catalog::parse(&text, Path::new("m.toml")).unwrap_err().to_string();
        assert!(err.contains("unknown field `speed`") && err.contains("line"), "{err}");
    }

    /// The table with one more model, `fields` being its TOML lines after the id.
    fn table_with(id: &str, fields: &str) -> Result<Catalog, String> {
        let text = format!("{BUILTIN}\n[[model]]\nid = {id:?}\nrole = \"llm\"\nfamily = \"x\"\nparams = \"1\"\nquant = \"q\"\nlicense = \"MIT\"\n{fields}\n");
        Catalog::parse(&text, Path::new("m.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn names_that_would_leave_their_directory_are_refused_naming_the_entry_and_field() {
        let registry = |member: &str| format!("file = \"x.gguf\"\n[model.registry]\npackages = [{{ pypi = \"p==1\", sha256 = \"{}\" }}]\n{member}\nsha256 = \"{}\"", "ab".repeat(32), "cd".repeat(32));
        let n = Catalog::builtin().models.len() + 1;
        for (id, fields, needles) in [
            ("x", "file = \"../x.gguf\"".to_string(), vec!["model x: file \"../x.gguf\" holds a path separator", "a file name inside the models directory"]),
            ("x", "file = \"..\"".to_string(), vec!["model x: file \"..\" names a directory"]),
            ("x", "file = \"\"".to_string(), vec!["model x: file \"\" is empty"]),
            ("../../x", "file = \"x.gguf\"".to_string(), vec![&format!("[[model]] number {n}: id \"../../x\" holds '/'")]),
            ("", "file = \"x.gguf\"".to_string(), vec!["id \"\" is empty"]),
            ("x", registry("take = \"../../etc/passwd\""), vec!["model x: registry.take \"../../etc/passwd\" climbs out with '..'", "inside the unpacked packages"]),
            ("x", registry("take = \"/etc/passwd\""), vec!["registry.take \"/etc/passwd\" is absolute"]),
            ("x", registry("take = \"a\"\njoin = { into = \"a\", parts = [\"p/../../b\"] }"), vec!["model x: registry.join.parts \"p/../../b\" climbs out"]),
            ("x", registry("ct2_whisper = \"a//b\""), vec!["registry.ct2_whisper \"a//b\" has an empty or '.' part"]),
        ] {
            let err = table_with(id, &fields).expect_err(&fields);
            for needle in needles {
                assert!(err.contains(needle), "{fields}: {err}");
            }
        }
        // A package whose cache slot would be the cache itself.
        let err = table_with("x", &format!("file = \"x.gguf\"\n[model.registry]\npackages = [{{ pypi = \"..\", sha256 = \"{}\" }}]\ntake = \"a\"\nsha256 = \"{}\"", "ab".repeat(32), "cd".repeat(32))).unwrap_err();
        assert!(err.contains("model x: registry package \"..\""), "{err}");
        // Paths with folders inside the packages are what the shipped table uses.
        table_with("x", &registry("take = \"pkg/data/model.gguf\"")).unwrap();
    }

    #[test]
    fn empty_request_falls_back_when_the_default_is_missing() {
        let c = Catalog::builtin();
        let dir = tempfile::tempdir().unwrap();
        let fallback = c.get(&c.fallbacks.asr).unwrap();
        std::fs::write(dir.path().join(&fallback.file), b"x").unwrap();
        let r = c.resolve(Role::Asr, "", dir.path()).unwrap();
        assert_eq!(r.id, c.fallbacks.asr);
        assert_eq!(r.fell_back_from.as_deref(), Some("whisper-small"));
        let err = c.resolve(Role::Asr, "whisper-small", dir.path()).unwrap_err().to_string();
        assert!(err.contains("whisper-small (asr) is not installed"), "{err}");
        let err = c.resolve(Role::Asr, "whisper-huge", dir.path()).unwrap_err().to_string();
        assert!(err.contains("no model \"whisper-huge\""), "{err}");
    }
}
