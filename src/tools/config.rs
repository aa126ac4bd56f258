//! The tool sections of `voxd.toml`: `[tools]`, `[home_assistant]`, `[mqtt]`, and the
//! `[[tool]]` and `[[intent]]` lists. Declared like every other section (one line per
//! field with its default and range); what one field cannot check alone — a service
//! for a Home Assistant tool, placeholders that name real parameters, an allow-list
//! where arguments choose the target — is checked here, with every problem reported.

use std::ops::Range;

use serde_json::Value;

use crate::config::{section, Problems};

section! {
    /// How the model calls tools.
    ToolsConfig "tools" {
        /// Constrain the model's output with a grammar built from the tool schemas, so
        /// it is either a well-formed call or a spoken answer (false: hope; for
        /// measurements with `voxd eval-tools --no-grammar`).
        grammar: bool = true;
        /// Few-shot examples of calls and plain answers in the (cached) system prompt:
        /// small models need them to tell a command from a question.
        examples: bool = true;
        /// Everyday commands for the home's own devices — "turn off the {name}", "set
        /// the {name} to {n} degrees", "is the {name} locked" — made from the Home
        /// Assistant tools and run without asking the model (fast, deterministic);
        /// false: only the [[intent]]s do.
        generated_intents: bool = true;
        /// The user's words reach the model with the home's devices they name ("the
        /// under cabinet lights" → light.kitchen_under_cabinet): a small model choosing
        /// from a long list picks by the words, not by habit.
        device_hints: bool = true;
        /// How calls look to the model: "json" (voxd's own: compact signatures, a bare
        /// JSON call) or "native" (the model's own format where its chat template has
        /// one — Qwen's `<tool_call>` — else voxd's). docs/tools-homes.md has both
        /// measured on every registry model.
        call_format: String = "json".into(), check(|s: &String| ["json", "native"].contains(&s.as_str()), "\"json\" or \"native\"");
        /// A tool with `confirm = true` runs only after a yes said within this many
        /// seconds of its question (heard in full), as a short answer on its own.
        confirm_within_s: f32 = 10.0, check(|x: &f32| (2.0..=120.0).contains(x), "2.0 to 120.0");
    }
}

section! {
    /// Home Assistant's REST API, for `home_assistant` and `home_assistant_state` tools.
    HomeAssistantConfig "home_assistant" {
        /// Base URL, e.g. "http://homeassistant.local:8123". Empty: no Home Assistant.
        url: String = String::new();
        /// Environment variable holding a long-lived access token (never put the token
        /// itself in this file).
        token_env: String = "HASS_TOKEN".into();
        /// Or a file holding the token (readable by voxd only); used when set.
        token_file: String = String::new();
        /// The devices voxd may know by name: entity ids or patterns ("light.*",
        /// "lock.front_door"). At start voxd reads them from Home Assistant's
        /// `/api/states`, with their friendly names, so "the living room lights" finds
        /// `light.living_room` without listing every device in the tools (allow-lists
        /// still decide what each tool may touch); the list is kept for starts while
        /// Home Assistant is down. Empty: only the devices the tools name.
        expose: Vec<String> = Vec::new();
        /// Seconds between reads of that list while voxd runs: a device added, renamed
        /// or removed in Home Assistant is known by the next turn after it. 0: at start
        /// only.
        refresh_s: f32 = 300.0, check(|x: &f32| *x == 0.0 || (10.0..=86400.0).contains(x), "0 (at start only) or 10.0 to 86400.0");
        /// Or the systemd credential holding it (`LoadCredential=hass_token` in the
        /// unit): read from `$CREDENTIALS_DIRECTORY` when neither `token_file` nor the
        /// environment variable gives a token.
        token_credential: String = "hass_token".into(), check(|s: &String| s.is_empty() || crate::catalog::plain_name(s).is_ok(), "a credential name (no '/')");
    }
}

section! {
    /// An MQTT broker, for `mqtt` and `mqtt_state` tools.
    MqttConfig "mqtt" {
        /// Broker host name or address. Empty: no MQTT.
        host: String = String::new();
        port: u16 = 1883, check(|n: &u16| *n > 0, "1 to 65535");
        /// Client id; must be unique on the broker (two clients with one id throw each
        /// other off). Empty: "voxd-<hostname>". `voxd wyoming` adds "-wyoming" to it,
        /// so it and `voxd run` on one machine each have their own.
        client_id: String = String::new();
        username: String = String::new();
        /// Environment variable holding the password (never the password itself here).
        password_env: String = String::new();
        /// Seconds between keep-alive pings; a dead connection is noticed and redialled.
        keep_alive_s: u16 = 30, check(|n: &u16| (5..=3600).contains(n), "5 to 3600");
    }
}

section! {
    /// One tool the assistant may call (`[[tool]]`, any number).
    ToolConfig "tool" {
        /// Name the model calls it by: lowercase letters, digits and '_'.
        name: String = String::new(), check(|s: &String| !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "lowercase letters, digits and '_'");
        /// What it does, for the model ("Turn a light on").
        description: String = String::new();
        /// "home_assistant" (call a service), "home_assistant_state" (read an entity),
        /// "mqtt" (publish), "mqtt_state" (last message on a topic) or "webhook".
        executor: String = String::new(), check(|s: &String| EXECUTORS.contains(&s.as_str()), "\"home_assistant\", \"home_assistant_state\", \"mqtt\", \"mqtt_state\" or \"webhook\"");
        /// JSON schema of the arguments: { type = "object", properties = { ... }, required = [...] }.
        parameters: Value = serde_json::json!({ "type": "object", "properties": {} });
        /// What calls may touch: entity ids for Home Assistant ("light.kitchen",
        /// "light.*"), topic filters for MQTT ("home/+/light/set"), URLs for webhooks
        /// ('*' matches within one segment: "light.*" is every light, never
        /// "light.x/../lock.y"). A call outside it is refused, never run; an entity id
        /// that is not `domain.object_id` in lowercase letters, digits and '_' never
        /// gets as far as the list.
        allow: Vec<String> = Vec::new();
        /// Give up on the call after this long, and say so.
        timeout_ms: u32 = 3000, check(|n: &u32| (100..=60_000).contains(n), "100 to 60000");
        /// Ask "yes or no?" first, and run only after a yes (doors, locks, garages).
        confirm: bool = false;
        /// The question asked when `confirm` is set; {argument} placeholders. Empty:
        /// "Should I {description} {arguments}?".
        confirm_prompt: String = String::new();
        /// Spoken after the call succeeded; {argument} and {state} placeholders. Empty:
        /// the model phrases a short confirmation from the result (slower).
        reply: String = String::new();
        /// Home Assistant service, "domain.service" (e.g. "light.turn_on").
        service: String = String::new();
        /// MQTT topic (publish, or read for mqtt_state); {argument} placeholders.
        topic: String = String::new();
        /// MQTT payload; {argument} placeholders. Empty: the arguments as JSON.
        payload: String = String::new();
        /// MQTT quality of service for the publish: 0, 1 or 2.
        qos: u8 = 1, check(|n: &u8| *n <= 2, "0, 1 or 2");
        /// MQTT retain flag for the publish.
        retain: bool = false;
        /// Webhook URL; {argument} placeholders.
        url: String = String::new();
        /// Webhook method: "POST" (arguments as a JSON body), "PUT" or "GET".
        method: String = "POST".into(), check(|s: &String| ["POST", "PUT", "GET"].contains(&s.as_str()), "\"POST\", \"PUT\" or \"GET\"");
        /// Example requests for the prompt: [{ say = "turn on the kitchen light",
        /// arguments = { entity_id = "light.kitchen" } }].
        examples: Value = Value::Array(Vec::new());
    }
}

section! {
    /// A fast-path command (`[[intent]]`): when the whole transcript matches `pattern`,
    /// the tool runs without asking the model at all.
    IntentConfig "intent" {
        /// Regular expression over the lowercased transcript (punctuation removed);
        /// named groups become {placeholders}: "turn (?P<state>on|off) the kitchen lights?".
        pattern: String = String::new();
        /// The `[[tool]]` to call.
        tool: String = String::new();
        /// The call's arguments; string values may use the pattern's {groups} (in an
        /// entity id such as "light.{room}", spoken words join with '_').
        arguments: Value = serde_json::json!({});
    }
}

pub const EXECUTORS: [&str; 5] = ["home_assistant", "home_assistant_state", "mqtt", "mqtt_state", "webhook"];

/// Reads the `[[KEY]]` list of tables of a document.
pub(crate) fn read_list<T>(doc: &toml_edit::ImDocument<&str>, key: &str, problems: &mut Problems<'_>, read: impl Fn(&toml_edit::Table, &str, &mut Problems<'_>) -> T) -> Vec<(T, toml_edit::Table)> {
    match doc.get(key) {
        None => Vec::new(),
        Some(toml_edit::Item::ArrayOfTables(list)) => list.iter().enumerate().map(|(i, t)| (read(t, &format!("{key}[{i}]"), problems), t.clone())).collect(),
        Some(item) => {
            problems.add(item.span(), key.into(), format!("expected a list of tables: write each as [[{key}]]"));
            Vec::new()
        }
    }
}

fn span(table: &toml_edit::Table, key: &str) -> Option<Range<usize>> {
    table.key(key).and_then(|k| k.span()).or_else(|| table.span())
}

/// `{name}` placeholders in a template.
pub fn placeholders(template: &str) -> Vec<&str> {
    // `{name}` with a name of letters, digits and '_': the braces of a JSON template
    // around it (`{"state": "{state}"}`) are text, not placeholders.
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let name_len = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
        if name_len > 0 && after[name_len..].starts_with('}') {
            out.push(&after[..name_len]);
            rest = &after[name_len + 1..];
        } else {
            rest = after;
        }
    }
    out
}

impl ToolConfig {
    pub fn parameter_names(&self) -> Vec<&str> {
        self.properties().map(|p| p.keys().map(String::as_str).collect()).unwrap_or_default()
    }

    /// The schema of each parameter, by name.
    pub fn properties(&self) -> Option<&serde_json::Map<String, Value>> {
        self.parameters.get("properties").and_then(Value::as_object)
    }

    /// The parameters a call must give.
    pub fn required_parameters(&self) -> Vec<&str> {
        self.parameters.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect()
    }

    /// The checks no single field can make, each reported at its key.
    pub(crate) fn check(&self, table: &toml_edit::Table, prefix: &str, problems: &mut Problems<'_>) {
        let mut add = |key: &str, message: String| problems.add(span(table, key), format!("{prefix}.{key}"), message);
        for key in ["name", "description", "executor"] {
            if table.get(key).is_none() {
                add(key, "is required".into());
            }
        }
        for p in super::schema::check_parameters(&self.parameters) {
            add("parameters", format!("{}: {}", p.path, p.message));
        }
        let params = self.parameter_names();
        let needs = |key: &str, what: &str, add: &mut dyn FnMut(&str, String)| {
            if table.get(key).is_none() {
                add(key, format!("is required for {} tools: {what}", self.executor));
            }
        };
        let target: Option<(&str, &str)> = match self.executor.as_str() {
            "home_assistant" => {
                needs("service", "the Home Assistant service, e.g. \"light.turn_on\"", &mut add);
                if !self.service.is_empty() && self.service.split('.').filter(|p| !p.is_empty()).count() != 2 {
                    add("service", format!("{:?}: expected \"domain.service\", e.g. \"light.turn_on\"", self.service));
                }
                None
            }
            "home_assistant_state" => None,
            "mqtt" | "mqtt_state" => {
                needs("topic", "the MQTT topic, e.g. \"home/kitchen/light/set\"", &mut add);
                Some(("topic", &self.topic))
            }
            "webhook" => {
                needs("url", "the URL to call", &mut add);
                Some(("url", &self.url))
            }
            _ => None,
        };
        if self.executor.starts_with("home_assistant") {
            if !params.contains(&"entity_id") {
                add("parameters", "Home Assistant tools act on entities: declare an entity_id parameter".into());
            }
            if self.allow.is_empty() {
                add("allow", "list the entities this tool may touch, e.g. [\"light.kitchen\", \"light.*\"]: an empty list would let the model pick any".into());
            }
        }
        if let Some((key, template)) = target {
            // A target the arguments choose needs an allow-list; a fixed one is its own.
            if !placeholders(template).is_empty() && self.allow.is_empty() {
                add("allow", format!("the {key} depends on the arguments: list what it may be ('*' within a segment, or MQTT '+'/'#', matches more)"));
            }
        }
        let state = if self.executor.ends_with("_state") { vec!["state"] } else { vec![] };
        for (key, template, extra) in [("reply", &self.reply, &state), ("confirm_prompt", &self.confirm_prompt, &vec![]), ("topic", &self.topic, &vec![]), ("payload", &self.payload, &vec![]), ("url", &self.url, &vec![])] {
            for p in placeholders(template) {
                if !params.contains(&p) && !extra.contains(&p) {
                    add(key, format!("{{{p}}} is not a parameter of this tool; it has: {}", params.join(", ")));
                }
            }
        }
        match self.examples.as_array() {
            Some(list) => {
                for (i, e) in list.iter().enumerate() {
                    let ok = e.get("say").is_some_and(Value::is_string) && e.get("arguments").is_some_and(Value::is_object);
                    if !ok {
                        add("examples", format!("example {i}: expected {{ say = \"what a user says\", arguments = {{ ... }} }}"));
                    } else if let Err(e) = super::schema::validate(&self.parameters, &e["arguments"]) {
                        add("examples", format!("example {i}: {e}"));
                    }
                }
            }
            None => add("examples", "expected a list of { say = ..., arguments = { ... } }".into()),
        }
    }
}

impl IntentConfig {
    pub(crate) fn check(&self, table: &toml_edit::Table, prefix: &str, tools: &[ToolConfig], problems: &mut Problems<'_>) {
        let mut add = |key: &str, message: String| problems.add(span(table, key), format!("{prefix}.{key}"), message);
        let groups: Vec<String> = match regex::Regex::new(&self.pattern) {
            Ok(re) => re.capture_names().flatten().map(str::to_string).collect(),
            Err(e) => {
                add("pattern", format!("not a regular expression: {}", e.to_string().lines().last().unwrap_or("")));
                Vec::new()
            }
        };
        if self.pattern.is_empty() {
            add("pattern", "is required".into());
        }
        match tools.iter().find(|t| t.name == self.tool) {
            None => add("tool", format!("{:?} is not a [[tool]]; known: {}", self.tool, tools.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", "))),
            Some(tool) => {
                let Some(args) = self.arguments.as_object() else {
                    add("arguments", "expected a table of arguments".into());
                    return;
                };
                for (k, v) in args {
                    for p in v.as_str().map(placeholders).unwrap_or_default() {
                        if !groups.iter().any(|g| g == p) {
                            add("arguments", format!("{k}: {{{p}}} is not a named group of the pattern"));
                        }
                    }
                }
                // With placeholders filled in by plausible text, the call must be valid.
                let sample: serde_json::Map<String, Value> = args.iter().map(|(k, v)| (k.clone(), if v.as_str().is_some_and(|s| s.contains('{')) { tool_sample(tool, k) } else { v.clone() })).collect();
                if let Err(e) = super::schema::validate(&tool.parameters, &Value::Object(sample)) {
                    add("arguments", format!("not a valid call of {}: {e}", tool.name));
                }
            }
        }
    }
}

/// A value of the right type for a parameter, to check intent arguments whose text
/// comes from the transcript.
fn tool_sample(tool: &ToolConfig, param: &str) -> Value {
    let prop = &tool.parameters["properties"][param];
    if let Some(first) = prop.get("enum").and_then(Value::as_array).and_then(|e| e.first()) {
        return first.clone();
    }
    match prop.get("type").and_then(Value::as_str) {
        Some("integer") | Some("number") => prop.get("minimum").cloned().unwrap_or(Value::from(1)),
        Some("boolean") => Value::Bool(true),
        _ => Value::String("x".into()),
    }
}
