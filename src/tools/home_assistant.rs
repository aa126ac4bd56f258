//! Home Assistant's REST API: call a service (`POST /api/services/<domain>/<service>`)
//! or read an entity (`GET /api/states/<entity_id>`), with a long-lived access token
//! from the environment or a file — never from the config text, never in logs. Each
//! call is bounded as [`http`] says: within the tool's timeout, 64 KiB of answer.

use std::path::Path;
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
        let token = if !c.token_file.is_empty() {
            read_token_file(Path::new(&c.token_file))?
        } else {
            match std::env::var(&c.token_env) {
                Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
                _ => bail!(
                    "Home Assistant tools need an access token: set the environment variable {} (home_assistant.token_env) or home_assistant.token_file",
                    c.token_env
                ),
            }
        };
        Ok(Some(HomeAssistant { base: c.url.trim_end_matches('/').to_string(), token }))
    }

    /// Calls `service` ("light.turn_on") with `data` (the call's arguments).
    pub fn call_service(&self, service: &str, data: &Value, timeout: Duration) -> Result<String, Failure> {
        let (domain, name) = service.split_once('.').unwrap_or((service, ""));
        let url = format!("{}/api/services/{domain}/{name}", self.base);
        let response = http::agent(timeout).post(&url).set("Authorization", &format!("Bearer {}", self.token)).send_json(data.clone()).map_err(|e| http_failure(NAME, e))?;
        Ok(http::read_body(NAME, response)?.chars().take(200).collect())
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
