//! Home Assistant's REST API: call a service (`POST /api/services/<domain>/<service>`)
//! or read an entity (`GET /api/states/<entity_id>`), with a long-lived access token
//! from the environment or a file — never from the config text, never in logs. Each
//! call is bounded as [`http`] says: within the tool's timeout, 64 KiB of answer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use super::{http, http_failure, Failure};
use crate::config::HomeAssistantConfig;

const NAME: &str = "Home Assistant";

pub struct HomeAssistant {
    base: String,
    token: String,
}

/// The token stays out of debug output (and so out of logs).
impl std::fmt::Debug for HomeAssistant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HomeAssistant").field("base", &self.base).field("token", &"<redacted>").finish()
    }
}

impl HomeAssistant {
    /// None when `[home_assistant] url` is empty.
    pub fn from_config(c: &HomeAssistantConfig) -> anyhow::Result<Option<HomeAssistant>> {
        if c.url.is_empty() {
            return Ok(None);
        }
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()).map(PathBuf::from);
        let token = token(c, std::env::var(&c.token_env).ok(), credentials.as_deref())?;
        Ok(Some(HomeAssistant { base: c.url.trim_end_matches('/').to_string(), token }))
    }

    /// Calls `service` ("light.turn_on") with `data` (the call's arguments).
    pub fn call_service(&self, service: &str, data: &Value, timeout: Duration) -> Result<String, Failure> {
        let (domain, name) = service.split_once('.').unwrap_or((service, ""));
        let url = format!("{}/api/services/{domain}/{name}", self.base);
        let response = http::agent(timeout).post(&url).set("Authorization", &format!("Bearer {}", self.token)).send_json(data.clone()).map_err(|e| http_failure(NAME, e))?;
        Ok(http::read_body(NAME, response)?.chars().take(200).collect())
    }

    /// Every entity Home Assistant has, with its friendly name (`GET /api/states`).
    pub fn entities(&self, timeout: Duration) -> Result<Vec<(String, Option<String>)>, Failure> {
        const MAX_STATES: usize = 8 << 20;
        let url = format!("{}/api/states", self.base);
        let response = http::agent(timeout).get(&url).set("Authorization", &format!("Bearer {}", self.token)).call().map_err(|e| http_failure(NAME, e))?;
        let body: Value = serde_json::from_str(&http::read_body_up_to(NAME, response, MAX_STATES)?).map_err(|_| Failure(format!("{NAME} sent a list of states I could not read")))?;
        Ok(entities_in(&body))
    }

    /// The state of `entity_id` ("on", "21.5").
    pub fn state(&self, entity_id: &str, timeout: Duration) -> Result<String, Failure> {
        let url = format!("{}/api/states/{entity_id}", self.base);
        let response = http::agent(timeout).get(&url).set("Authorization", &format!("Bearer {}", self.token)).call().map_err(|e| http_failure(NAME, e))?;
        let body: Value = serde_json::from_str(&http::read_body(NAME, response)?).map_err(|_| Failure(format!("{NAME} sent an answer I could not read")))?;
        let state = body.get("state").map(super::plain).ok_or_else(|| Failure(format!("{NAME} sent no state for {entity_id}")))?;
        let unit = body.pointer("/attributes/unit_of_measurement").and_then(Value::as_str).map(|u| format!(" {u}")).unwrap_or_default();
        Ok(format!("{state}{unit}"))
    }
}

/// The access token, from the first source that gives one: `token_file` (named in
/// the config, so meant), the environment variable `token_env`, then systemd's
/// credential `token_credential` in `credentials` ($CREDENTIALS_DIRECTORY).
fn token(c: &HomeAssistantConfig, env: Option<String>, credentials: Option<&Path>) -> anyhow::Result<String> {
    if !c.token_file.is_empty() {
        return read_token_file(Path::new(&c.token_file));
    }
    if let Some(t) = env.filter(|t| !t.trim().is_empty()) {
        return Ok(t.trim().to_string());
    }
    if let Some(file) = credentials.filter(|_| !c.token_credential.is_empty()).map(|dir| dir.join(&c.token_credential)).filter(|f| f.exists()) {
        return read_token_file(&file);
    }
    bail!(
        "Home Assistant tools need an access token: set the environment variable {} (home_assistant.token_env) or home_assistant.token_file, or under systemd give the credential {:?} (LoadCredential={} in the unit)",
        c.token_env,
        c.token_credential,
        c.token_credential
    )
}

/// Entity ids and friendly names out of an `/api/states` answer (a dump of one).
pub fn entities_in(states: &Value) -> Vec<(String, Option<String>)> {
    states
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let id = s.get("entity_id")?.as_str()?;
            super::is_entity_id(id).then(|| (id.to_string(), s.pointer("/attributes/friendly_name").and_then(Value::as_str).map(str::to_string)))
        })
        .collect()
}

/// The devices of the home voxd may know about: those of Home Assistant's entities
/// that `[home_assistant] expose` names (patterns as in allow-lists), fetched now and
/// kept in `cache` — from where they come when Home Assistant cannot be reached, so
/// a voxd started while it is down still knows the home. Nothing to expose, nothing
/// fetched.
pub fn discover(config: &HomeAssistantConfig, cache: &Path) -> super::Home {
    if config.expose.is_empty() || config.url.is_empty() {
        return super::Home::default();
    }
    let fetched = fetch(config).inspect(|all| keep(all, cache)).map(|all| exposed(all, &config.expose));
    let home = fetched.unwrap_or_else(|why| match std::fs::read_to_string(cache).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok()) {
        Some(snapshot) => {
            tracing::warn!("Home Assistant's devices: {why}; using the list kept in {}", cache.display());
            exposed(entities_in(&snapshot), &config.expose)
        }
        None => {
            tracing::warn!("Home Assistant's devices: {why}, and no list kept from before: only the devices the tools name are known");
            super::Home::default()
        }
    });
    tracing::info!("Home Assistant: {} devices exposed to voxd", home.entities.len());
    home
}

/// `discover` now, and with `[home_assistant] refresh_s` again every so often on a
/// thread of its own, for as long as anyone watches: a device added, renamed or
/// removed in Home Assistant reaches the receivers as a change.
pub fn watch(config: &HomeAssistantConfig, cache: &Path) -> tokio::sync::watch::Receiver<super::Home> {
    let (tx, rx) = tokio::sync::watch::channel(discover(config, cache));
    if config.refresh_s == 0.0 || config.expose.is_empty() || config.url.is_empty() {
        return rx;
    }
    let (config, cache, every) = (config.clone(), cache.to_path_buf(), Duration::from_secs_f32(config.refresh_s));
    let refresh = move || {
        let mut failing = false;
        loop {
            // Short naps, so the thread ends soon after the run that watched it.
            let until = std::time::Instant::now() + every;
            while let Some(left) = until.checked_duration_since(std::time::Instant::now()).filter(|d| !d.is_zero()) {
                if tx.is_closed() {
                    return;
                }
                std::thread::sleep(left.min(Duration::from_millis(250)));
            }
            match fetch(&config) {
                Ok(all) => {
                    failing = false;
                    let (home, mut before) = (exposed(all.clone(), &config.expose), 0);
                    let changed = tx.send_if_modified(|known| {
                        before = known.entities.len();
                        let changed = *known != home;
                        if changed {
                            *known = home;
                        }
                        changed
                    });
                    if changed {
                        keep(&all, &cache);
                        tracing::info!("Home Assistant: the devices changed ({} exposed, {before} before)", tx.borrow().entities.len());
                    }
                }
                // Once an outage: the list from before stays.
                Err(why) if !failing => {
                    failing = true;
                    tracing::warn!("Home Assistant's devices: {why}; keeping the list from before");
                }
                Err(_) => {}
            }
        }
    };
    if let Err(e) = std::thread::Builder::new().name("voxd-ha-devices".into()).spawn(refresh) {
        tracing::warn!("cannot start reading Home Assistant's devices again and again ({e}): the list from start stays");
    }
    rx
}

/// Every entity Home Assistant has now, with its friendly name.
fn fetch(config: &HomeAssistantConfig) -> Result<Vec<(String, Option<String>)>, String> {
    HomeAssistant::from_config(config).map_err(|e| format!("{e:#}")).and_then(|ha| ha.expect("url set").entities(Duration::from_secs(5)).map_err(|e| e.0))
}

/// Keeps `all` in `cache` (as `/api/states` would list them), for starts while Home
/// Assistant is down.
fn keep(all: &[(String, Option<String>)], cache: &Path) {
    let snapshot = serde_json::json!(all.iter().map(|(id, name)| serde_json::json!({ "entity_id": id, "attributes": { "friendly_name": name } })).collect::<Vec<_>>());
    if let Err(e) = std::fs::create_dir_all(cache.parent().unwrap_or(Path::new("."))).and_then(|()| std::fs::write(cache, snapshot.to_string())) {
        tracing::warn!("cannot keep Home Assistant's device list in {}: {e}", cache.display());
    }
}

/// The entities of `all` that `expose` names (patterns as in allow-lists), with their
/// friendly names.
pub fn exposed(all: Vec<(String, Option<String>)>, expose: &[String]) -> super::Home {
    let mut kept: Vec<(String, Option<String>)> = all.into_iter().filter(|(id, _)| expose.iter().any(|p| super::allowed_by(p, id, super::Target::Entity))).collect();
    // In a stable order: Home Assistant listing the same devices otherwise is no change.
    kept.sort();
    super::Home { names: kept.iter().filter_map(|(id, name)| Some((id.clone(), name.clone()?))).collect(), entities: kept.into_iter().map(|(id, _)| id).collect() }
}

fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path).with_context(|| format!("reading the Home Assistant token file {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
            tracing::warn!("{} can be read by other users: chmod 600 it", path.display());
        }
    }
    let token = token.trim().to_string();
    if token.is_empty() {
        bail!("the Home Assistant token file {} is empty", path.display());
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_the_file_then_the_environment_then_the_credential() {
        let dir = tempfile::tempdir().unwrap();
        let credentials = dir.path().join("credentials");
        std::fs::create_dir(&credentials).unwrap();
        std::fs::write(credentials.join("hass_token"), "from-systemd\n").unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file").unwrap();
        let c = HomeAssistantConfig { url: "http://ha".into(), ..HomeAssistantConfig::default() };
        let with_file = HomeAssistantConfig { token_file: file.to_string_lossy().into(), ..c.clone() };
        assert_eq!(token(&with_file, Some("from-env".into()), Some(&credentials)).unwrap(), "from-file");
        assert_eq!(token(&c, Some("from-env".into()), Some(&credentials)).unwrap(), "from-env");
        assert_eq!(token(&c, Some("  ".into()), Some(&credentials)).unwrap(), "from-systemd", "a blank variable gives no token");
        assert_eq!(token(&c, None, Some(&credentials)).unwrap(), "from-systemd");
        let err = token(&c, None, Some(dir.path())).unwrap_err().to_string();
        assert!(err.contains("set the environment variable HASS_TOKEN") && err.contains("LoadCredential=hass_token"), "{err}");
        let err = token(&c, None, None).unwrap_err().to_string();
        assert!(err.contains("credential \"hass_token\""), "{err}");
        std::fs::write(credentials.join("hass_token"), "\n").unwrap();
        let err = token(&c, None, Some(&credentials)).unwrap_err().to_string();
        assert!(err.contains("hass_token is empty"), "{err}");
    }
}
