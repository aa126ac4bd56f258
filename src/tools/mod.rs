//! Tools: what the assistant can do in the home, and how a model's call becomes an
//! action safely.
//!
//! A call travels: model output (constrained by [`grammar`] to a call or an answer)
//! → [`parse_call`] (JSON, a known tool, arguments valid against its schema) →
//! [`Tool::permits`] (the allow-list) → confirmation when the tool asks for it → an
//! executor ([`home_assistant`], [`mqtt`], [`webhook`]) with a timeout → an
//! [`Outcome`] that is spoken: a template, the model's short confirmation, or an
//! honest error. [`intents`] are the fast path that skips the model for the
//! commonest commands. The pipeline's `tools` stage runs executors on its own thread.

pub mod config;
pub mod eval;
pub mod format;
pub mod grounding;
pub mod home_assistant;
pub mod http;
pub mod intents;
pub mod local_ha;
pub mod mqtt;
pub mod phrases;
pub mod schema;
pub mod webhook;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use config::{ToolConfig, ToolsConfig};
pub use format::CallFormat;

use crate::engine::llm::{Message, Role};

/// A call of a tool: what the model (or an intent) asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub name: String,
    pub arguments: Value,
}

impl ToolCall {
    /// The arguments, for speech: "light.kitchen, 40".
    pub fn arguments_text(&self) -> String {
        self.arguments.as_object().map(|a| a.values().map(plain).collect::<Vec<_>>().join(", ")).unwrap_or_default()
    }
}

/// What running a call came to.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub ok: bool,
    /// For state tools: the state read ("on", "21.5"); for others, what the service
    /// answered, shortened.
    pub result: String,
    /// Set when not ok: what went wrong, as it can be said aloud.
    pub error: Option<String>,
    pub ms: f64,
}

/// An action that failed, phrased to be said aloud: "Home Assistant did not answer
/// in time".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Failure(pub String);

/// Maps an HTTP client error to what the user hears, naming `service`.
pub(crate) fn http_failure(service: &str, e: ureq::Error) -> Failure {
    match e {
        ureq::Error::Status(401 | 403, _) => Failure(format!("{service} refused my access token")),
        ureq::Error::Status(404, _) => Failure(format!("{service} does not know that")),
        ureq::Error::Status(code, _) => Failure(format!("{service} reported an error, code {code}")),
        ureq::Error::Transport(t) => {
            let timed_out = std::error::Error::source(&t)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .is_some_and(|io| matches!(io.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock));
            if timed_out || t.to_string().contains("timed out") {
                Failure(format!("{service} did not answer in time"))
            } else {
                Failure(format!("I could not reach {service}"))
            }
        }
    }
}

/// Why a call does not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejected {
    /// Not a call voxd can run as written (the model may repair it).
    #[error("{0}")]
    Invalid(String),
    /// A valid call the allow-list does not permit (never repaired: refused).
    #[error("{tool} may not touch {target}")]
    NotAllowed { tool: String, target: String, call: ToolCall },
    /// A value outside what its parameter allows: what the user asked for, so it is
    /// answered with what is possible, never repaired into another value.
    #[error("{tool}: {parameter} must be {allowed}")]
    OutOfRange { tool: String, parameter: String, allowed: String, call: ToolCall },
}

/// A value as it reads in speech and templates: strings without quotes.
pub fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Where a filled-in template goes, and so how a value must be written into it for
/// it to stay a value (and never become more syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// Words to be spoken, a plain MQTT payload, an MQTT topic (whose values
    /// [`ToolConfig::permits`] has checked for `+`, `#` and `/`): as they are.
    None,
    /// Inside a JSON document: JSON-escaped (a string's quotes and backslashes
    /// cannot end the string it stands in).
    Json,
    /// Inside a URL: percent-encoded (a `/`, `?` or `#` cannot change the path).
    Url,
}

/// Fills `{name}` placeholders from `arguments` (and `{state}` from `state`), each
/// value escaped for where the result goes.
pub fn render_escaped(template: &str, arguments: &Value, state: Option<&str>, escape: Escape) -> String {
    let mut out = template.to_string();
    for p in config::placeholders(template) {
        let value = match (p, state) {
            ("state", Some(s)) => Value::String(s.to_string()),
            _ => arguments.get(p).cloned().unwrap_or(Value::String(String::new())),
        };
        let text = match escape {
            Escape::None => plain(&value),
            Escape::Json => match &value {
                // The string's JSON form without its quotes: the template has those.
                Value::String(s) => {
                    let quoted = Value::String(s.clone()).to_string();
                    quoted[1..quoted.len() - 1].to_string()
                }
                other => other.to_string(),
            },
            Escape::Url => percent_encode(&plain(&value)),
        };
        out = out.replace(&format!("{{{p}}}"), &text);
    }
    out
}

/// Fills a template meant for speech (replies, questions): values as they are.
pub fn render(template: &str, arguments: &Value, state: Option<&str>) -> String {
    render_escaped(template, arguments, state, Escape::None)
}

/// RFC 3986: everything but the unreserved characters percent-encoded.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Is `id` an entity id as Home Assistant writes them — `domain.object_id`, lowercase
/// letters, digits and single underscores, neither part starting or ending with one?
/// Anything else ("sensor.x/../lock.front_door", "switch.a, switch.b") is not a
/// name but an attempt to reach something else through the URL or the service.
pub fn is_entity_id(id: &str) -> bool {
    let part = |s: &str| !s.is_empty() && !s.starts_with('_') && !s.ends_with('_') && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    match id.split_once('.') {
        Some((domain, object)) => part(domain) && part(object) && !domain.contains("__"),
        None => false,
    }
}

/// Characters an MQTT topic value may not hold: they would add levels or wildcards.
fn breaks_topic(value: &str) -> bool {
    value.contains(['+', '#', '/', '\0'])
}

/// What an allow-list names, and so where its wildcards stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Home Assistant entity ids: `*` stays within the domain or the object id.
    Entity,
    /// MQTT topics: `*` stays within a level; filters may use `+` and `#`.
    Topic,
    /// Webhook URLs: `*` stays within a path segment (and out of the query).
    Url,
}

impl Target {
    fn separators(self) -> &'static [u8] {
        match self {
            Target::Entity => b"./",
            Target::Topic => b"/",
            Target::Url => b"/?#",
        }
    }
}

/// Does `value` match an allow-list `pattern`? `*` matches a run of characters
/// within one segment of the target — so `light.*` is every light and
/// `http://hooks.local/*` one path below it; MQTT filters use `+` (one level) and
/// `#` (the rest).
pub fn allowed_by(pattern: &str, value: &str, target: Target) -> bool {
    if target == Target::Topic && (pattern.contains('+') || pattern.contains('#')) {
        let (mut p, mut v) = (pattern.split('/'), value.split('/'));
        loop {
            match (p.next(), v.next()) {
                (Some("#"), _) => return true,
                (Some("+"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
    glob(pattern.as_bytes(), value.as_bytes(), target.separators())
}

/// Wildcard match where `*` stands for any run of bytes other than `separators`
/// (two pointers, backtracking to the last star; a star cannot swallow a
/// separator, so it is never backtracked past one).
fn glob(p: &[u8], v: &[u8], separators: &[u8]) -> bool {
    let separator = |b: u8| separators.contains(&b);
    let (mut pi, mut vi) = (0, 0);
    let mut star: Option<(usize, usize)> = None; // (pattern index after '*', value index it matched from)
    while vi < v.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi + 1, vi));
            pi += 1;
        } else if pi < p.len() && p[pi] == v[vi] {
            pi += 1;
            vi += 1;
        } else if let Some((after, from)) = star.filter(|&(_, from)| !separator(v[from])) {
            // Let the star swallow one more byte and try again.
            star = Some((after, from + 1));
            pi = after;
            vi = from + 1;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

impl ToolConfig {
    /// The topic a call publishes to or reads (values as they are: `permits` refuses
    /// values that would add levels).
    pub fn topic_for(&self, call: &ToolCall) -> String {
        render_escaped(&self.topic, &call.arguments, None, Escape::None)
    }

    /// The URL a webhook call goes to (values percent-encoded).
    pub fn url_for(&self, call: &ToolCall) -> String {
        render_escaped(&self.url, &call.arguments, None, Escape::Url)
    }

    /// The MQTT payload of a call: the template filled in — JSON-escaped when the
    /// template is JSON, and then checked to still be JSON — or, with no template,
    /// the arguments as JSON.
    pub fn payload_for(&self, call: &ToolCall) -> Result<String, Failure> {
        if self.payload.is_empty() {
            return Ok(call.arguments.to_string());
        }
        // A JSON document opens with '[' or with '{' and a key; a payload that is a
        // placeholder ("{state}") opens with '{' and a name.
        let t = self.payload.trim_start();
        let json = t.starts_with('[') || t.strip_prefix('{').is_some_and(|rest| rest.trim_start().starts_with(['"', '}']));
        let payload = render_escaped(&self.payload, &call.arguments, None, if json { Escape::Json } else { Escape::None });
        if json && serde_json::from_str::<Value>(&payload).is_err() {
            return Err(Failure(format!("the payload template of {} did not make valid JSON", self.name)));
        }
        Ok(payload)
    }

    /// What a call of this tool would touch: the entity ids, the topic or the URL.
    pub fn targets(&self, call: &ToolCall) -> Vec<String> {
        match self.executor.as_str() {
            "mqtt" | "mqtt_state" => vec![self.topic_for(call)],
            "webhook" => vec![self.url_for(call)],
            _ => match call.arguments.get("entity_id") {
                Some(Value::Array(ids)) => ids.iter().map(plain).collect(),
                Some(id) => vec![plain(id)],
                None => Vec::new(),
            },
        }
    }

    /// A call's arguments against the tool's schema: a value out of its bounds or enum
    /// is `OutOfRange`, anything else `Invalid`.
    pub fn validate(&self, call: &ToolCall) -> Result<(), Rejected> {
        schema::validate(&self.parameters, &call.arguments).map_err(|e| match e.allowed.clone() {
            Some(allowed) => Rejected::OutOfRange { tool: self.name.clone(), parameter: e.parameter().to_string(), allowed, call: call.clone() },
            None => Rejected::Invalid(e.to_string()),
        })
    }

    /// Does `request` ask for the opposite of what this tool does — "unlock the back
    /// door" answered with a call to `lock.lock`, "close the garage" with
    /// `cover.open_cover`? A small model reaches for the nearest tool when the right one
    /// is missing, and the allow-list cannot tell: locking the door is allowed.
    pub fn contradicts(&self, request: &str) -> bool {
        let text = intents::normalize(request);
        let said = |words: &[&str]| text.split_whitespace().any(|w| words.contains(&w));
        match self.service.rsplit('.').next().unwrap_or("") {
            "lock" => said(&["unlock"]),
            "unlock" => said(&["lock"]) && !said(&["unlock"]),
            "open_cover" => said(&["close", "shut", "lower"]),
            "close_cover" => said(&["open", "raise"]),
            "turn_on" => said(&["off"]) && !said(&["on"]),
            "turn_off" => said(&["on"]) && !said(&["off"]),
            _ => false,
        }
    }

    /// The allow-list check: every target must match a pattern (for MQTT and webhooks
    /// with a fixed target and no list, that target itself).
    pub fn permits(&self, call: &ToolCall) -> Result<(), Rejected> {
        let mqtt = self.executor.starts_with("mqtt");
        let kind = match self.executor.as_str() {
            "webhook" => Target::Url,
            _ if mqtt => Target::Topic,
            _ => Target::Entity,
        };
        let fixed = match self.executor.as_str() {
            "mqtt" | "mqtt_state" => Some(&self.topic),
            "webhook" => Some(&self.url),
            _ => None,
        };
        let patterns: Vec<&str> = match (self.allow.is_empty(), fixed) {
            (true, Some(t)) if config::placeholders(t).is_empty() => vec![t.as_str()],
            _ => self.allow.iter().map(String::as_str).collect(),
        };
        let targets = self.targets(call);
        let refuse = |target: String| Rejected::NotAllowed { tool: self.name.clone(), target, call: call.clone() };
        if targets.is_empty() && !self.allow.is_empty() {
            return Err(refuse("nothing named".into()));
        }
        if self.executor.starts_with("home_assistant") {
            // Checked before matching: a pattern must only ever see a real name.
            if let Some(bad) = targets.iter().find(|t| !is_entity_id(t)) {
                return Err(refuse(bad.clone()));
            }
        }
        if mqtt {
            let placed = config::placeholders(&self.topic);
            if let Some(bad) = placed.iter().filter_map(|p| call.arguments.get(*p)).map(plain).find(|v| breaks_topic(v)) {
                return Err(refuse(bad));
            }
        }
        for t in targets {
            if !patterns.iter().any(|p| allowed_by(p, &t, kind)) {
                return Err(refuse(t));
            }
        }
        Ok(())
    }

    /// The question asked before a `confirm` tool runs.
    /// (Devices by their spoken names, and not twice: "Should I open the garage door?"
    /// rather than "…: cover.garage_door?" — but a device is always named unless it is
    /// the only one the tool may touch, so a yes is never to a guess.)
    pub fn confirm_question(&self, call: &ToolCall) -> String {
        if self.confirm_prompt.is_empty() {
            let what = self.description.trim_end_matches('.').to_lowercase();
            let says = |said: &str| format!(" {} ", intents::normalize(&what)).contains(&format!(" {} ", intents::normalize(said)));
            let only_device = self.allow.len() == 1 && !self.allow[0].contains('*');
            let named: Vec<String> = call
                .arguments
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| match k.as_str() {
                    "entity_id" => Some(phrases::spoken_name(&plain(v), &Default::default())).filter(|name| !(only_device && says(name))),
                    _ => Some(plain(v)).filter(|value| !says(value)),
                })
                .collect();
            match named.is_empty() {
                true => format!("Should I {what}? Please say yes or no."),
                false => format!("Should I {what}: {}? Please say yes or no.", named.join(", ")),
            }
        } else {
            render(&self.confirm_prompt, &call.arguments, None)
        }
    }
}

/// The executors, connected and ready to run calls (on the tools stage's thread).
/// The default has none (a configuration without tools).
#[derive(Default)]
pub struct Toolbox {
    home_assistant: Option<home_assistant::HomeAssistant>,
    mqtt: Option<mqtt::Mqtt>,
}

impl Toolbox {
    /// Reads the Home Assistant token and starts the MQTT connection (in the
    /// background: a broker that is down now is redialled, not fatal) for `daemon`:
    /// `voxd run` and `voxd wyoming` on one machine connect with client ids of their
    /// own (see `mqtt::client_id`).
    pub fn start(config: &crate::config::Config, daemon: crate::control::Daemon) -> anyhow::Result<Toolbox> {
        let uses = |prefix: &str| config.tool.iter().any(|t| t.executor.starts_with(prefix));
        let home_assistant = if uses("home_assistant") { home_assistant::HomeAssistant::from_config(&config.home_assistant)? } else { None };
        let state_filters = config.tool.iter().filter(|t| t.executor == "mqtt_state").map(|t| mqtt::filter(&t.topic)).collect();
        let mqtt = if uses("mqtt") { mqtt::Mqtt::start(&config.mqtt, state_filters, daemon)? } else { None };
        Ok(Toolbox { home_assistant, mqtt })
    }

    /// Runs a call (already validated and permitted) and says how it went.
    pub fn run(&self, tool: &ToolConfig, call: &ToolCall) -> Outcome {
        let started = std::time::Instant::now();
        let timeout = std::time::Duration::from_millis(tool.timeout_ms as u64);
        let args = &call.arguments;
        let missing = |what: &str| Failure(format!("{what} is not configured"));
        let result = match tool.executor.as_str() {
            "home_assistant" => self.home_assistant.as_ref().ok_or_else(|| missing("Home Assistant")).and_then(|ha| ha.call_service(&tool.service, args, timeout).map(|_| String::new())),
            "home_assistant_state" => self.home_assistant.as_ref().ok_or_else(|| missing("Home Assistant")).and_then(|ha| ha.state(&args.get("entity_id").map(plain).unwrap_or_default(), timeout)),
            "mqtt" => self.mqtt.as_ref().ok_or_else(|| missing("MQTT")).and_then(|m| m.publish(&tool.topic_for(call), &tool.payload_for(call)?, tool.qos, tool.retain, timeout).map(|_| String::new())),
            "mqtt_state" => self.mqtt.as_ref().ok_or_else(|| missing("MQTT")).and_then(|m| m.state(&tool.topic_for(call), timeout)),
            "webhook" => webhook::call(&tool.method, &tool.url_for(call), args, timeout),
            other => Err(Failure(format!("the executor {other} is unknown"))),
        };
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        match result {
            Ok(result) => Outcome { ok: true, result, error: None, ms },
            Err(Failure(e)) => Outcome { ok: false, result: String::new(), error: Some(e), ms },
        }
    }
}

/// Reads a model's output as a call of one of `tools`, validated against its schema.
pub fn parse_call<'t>(text: &str, tools: &'t [ToolConfig]) -> Result<(ToolCall, &'t ToolConfig), Rejected> {
    let text = format::call_json(text);
    let value: Value = serde_json::from_str(text).map_err(|e| Rejected::Invalid(format!("not valid JSON ({e})")))?;
    let call: ToolCall = serde_json::from_value(value).map_err(|_| Rejected::Invalid("expected {\"name\": ..., \"arguments\": {...}}".into()))?;
    let tool = tools.iter().find(|t| t.name == call.name).ok_or_else(|| {
        let known: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
        Rejected::Invalid(format!("there is no tool {:?}; the tools are: {}", call.name, known.join(", ")))
    })?;
    tool.validate(&call)?;
    if matches!(tool.permits(&call), Err(Rejected::NotAllowed { .. })) {
        if let Some(moved) = same_action_elsewhere(&call, tool, tools) {
            return Ok(moved);
        }
    }
    // (What the allow-list refuses is refused by the caller, which checks `permits`.)
    Ok((call, tool))
}

/// A call of the right action on a device of another domain ("switch_off" for a
/// light: small models follow the verb said) is the same action by the tool that may
/// touch it — the one other tool of the same executor and action (`light.turn_off`
/// for `switch.turn_off`) that takes the call as it is. It grants nothing the model
/// could not have called itself; with none, or more than one, the refusal stands.
fn same_action_elsewhere<'t>(call: &ToolCall, tool: &ToolConfig, tools: &'t [ToolConfig]) -> Option<(ToolCall, &'t ToolConfig)> {
    let action = |t: &ToolConfig| t.service.split_once('.').map(|(_, a)| a.to_string());
    let wanted = action(tool)?;
    let mut fits = tools.iter().filter(|t| t.name != tool.name && t.executor == tool.executor && action(t).as_deref() == Some(wanted.as_str())).filter_map(|t| {
        let moved = ToolCall { name: t.name.clone(), arguments: call.arguments.clone() };
        (t.validate(&moved).is_ok() && t.permits(&moved).is_ok()).then_some((moved, t))
    });
    let first = fits.next()?;
    fits.next().is_none().then_some(first)
}

/// Does the reply begin a tool call? (Calls are JSON objects, in `<tool_call>` tags
/// in the Hermes format; answers are words.)
pub fn looks_like_call(text: &str) -> bool {
    format::begins_call(text)
}

/// The devices a home is known to have beyond what its allow-lists name: entity ids
/// and friendly names, as Home Assistant lists them (`[home_assistant] expose`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Home {
    pub entities: Vec<String>,
    pub names: phrases::FriendlyNames,
}

/// The fixed start of every conversation: the system message (the persona, then the
/// tools with the devices each may touch, and the rules for calling them — the tools
/// as compact signatures, or as the schemas of the model's own `format`), and with
/// `examples` a few exchanges showing calls and plain answers — as real turns, which
/// small models follow far better than examples described in the system text. Each
/// tool's example is derived from the tool itself (see `phrases`) unless the config
/// gives its own. It is the same for every turn, so it stays in the KV cache: its
/// length costs one prefill.
pub fn preamble(persona: &str, tools: &[ToolConfig], home: &Home, style: &ToolsConfig, format: CallFormat) -> Vec<Message> {
    let mut system = persona.to_string();
    if tools.is_empty() {
        return vec![Message { role: Role::System, content: system }];
    }
    const RULES: &str = "You cannot see the home: to answer a question about a device, call the tool that reads it; \
                         never guess a state. Use only the entities listed. If no tool fits, the device is not listed, \
                         or it is unclear which device is meant, answer in one short spoken sentence instead (ask which one).";
    let described = |t: &ToolConfig| match devices_listed(t, home) {
        entities if entities.is_empty() => t.description.trim_end_matches('.').to_string(),
        entities => format!("{}. Entities: {}", t.description.trim_end_matches('.'), entities.join(", ")),
    };
    match format {
        CallFormat::Json => {
            system.push_str("\n\nYou can control the home with these tools. To use one, reply with only a JSON call \
                             {\"name\": \"tool\", \"arguments\": {...}} and nothing else. ");
            system.push_str(RULES);
            system.push_str("\nTools:");
            for t in tools {
                system.push_str(&format!("\n- {}({}): {}.", t.name, signature(t), described(t)));
            }
        }
        CallFormat::Hermes => {
            let parameters = |t: &ToolConfig| if t.parameters.is_object() { t.parameters.clone() } else { serde_json::json!({ "type": "object", "properties": {} }) };
            let schemas: Vec<(String, String, Value)> = tools.iter().map(|t| (t.name.clone(), format!("{}.", described(t)), parameters(t))).collect();
            system.push_str("\n\n");
            system.push_str(&format::hermes_tools(&schemas));
            system.push_str("\n\nCall at most one function, and only to control the home or read it. ");
            system.push_str(RULES);
        }
    }
    let mut out = vec![Message { role: Role::System, content: system }];
    if style.examples {
        // The example requests as the model will get real ones: hinted the same way.
        let asked = |said: &str| grounding::asked(said, tools, home, style.device_hints);
        let mut turn = |user: &str, assistant: String| {
            out.push(Message { role: Role::User, content: asked(user) });
            out.push(Message { role: Role::Assistant, content: assistant });
        };
        // Plain answers first: small models lean towards whatever the last example did,
        // and calls are what the examples must teach best.
        turn("What is the capital of France?", "The capital of France is Paris.".into());
        turn("Turn on the light in the shed.", "Sorry, there is no shed light I can control.".into());
        turn("Switch it off.", "Which device do you mean?".into());
        let (written, derived): (Vec<&ToolConfig>, Vec<ToolConfig>) = (tools.iter().filter(|t| t.examples.as_array().is_some_and(|e| !e.is_empty())).collect(), tools.iter().filter(|t| !t.examples.as_array().is_some_and(|e| !e.is_empty())).cloned().collect());
        let (unread, calls): (Vec<(String, String)>, Vec<(String, String)>) = phrases::examples(&derived, tools.iter().any(|t| t.executor.ends_with("_state")), &home.entities, &home.names).into_iter().partition(|(_, a)| !looks_like_call(a));
        for (say, answer) in unread {
            turn(&say, answer);
        }
        for t in written {
            for e in t.examples.as_array().into_iter().flatten() {
                turn(&plain(&e["say"]), format.call_text(&t.name, &e["arguments"]));
            }
        }
        for (say, call) in calls {
            let call: Value = serde_json::from_str(&call).expect("derived examples are calls of JSON");
            turn(&say, format.call_text(call["name"].as_str().unwrap_or_default(), &call["arguments"]));
        }
    }
    out
}

/// The devices a Home Assistant tool may touch, as the prompt lists them: each known
/// one with its spoken name, and any pattern no known device matched (it still says
/// what may be named).
fn devices_listed(t: &ToolConfig, home: &Home) -> Vec<String> {
    if !t.executor.starts_with("home_assistant") {
        return Vec::new();
    }
    let known = phrases::entities_of(t, &home.entities);
    let mut entities: Vec<String> = known.iter().map(|id| format!("{id} ({})", phrases::spoken_name(id, &home.names))).collect();
    entities.extend(t.allow.iter().filter(|p| p.contains('*') && !known.iter().any(|id| allowed_by(p, id, Target::Entity))).cloned());
    entities
}

/// `entity_id: string, brightness_pct?: integer 1-100, mode: warm|cold`.
fn signature(tool: &ToolConfig) -> String {
    let required = tool.required_parameters();
    let Some(props) = tool.properties() else { return String::new() };
    props
        .iter()
        .map(|(name, p)| {
            let opt = if required.contains(&name.as_str()) { "" } else { "?" };
            let ty = match p.get("enum").and_then(Value::as_array) {
                Some(values) => values.iter().map(plain).collect::<Vec<_>>().join("|"),
                None => {
                    let ty = p.get("type").and_then(Value::as_str).unwrap_or("string").to_string();
                    match (p.get("minimum"), p.get("maximum")) {
                        (Some(a), Some(b)) => format!("{ty} {a}-{b}"),
                        _ => ty,
                    }
                }
            };
            let doc = p.get("description").and_then(Value::as_str).map(|d| format!(" ({d})")).unwrap_or_default();
            format!("{name}{opt}: {ty}{doc}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The answer branch: words to be spoken, and nothing that is not — no braces (a
/// call or its JSON read aloud), no brackets, backticks or markup (`*`, `#`, `|`,
/// `<`, `>`, `_`, `\`: code and formatting the voice would spell out). Bounded,
/// because an unbounded "any text" rule lets a confused model ramble until the token
/// limit.
const ANSWER_RULE: &str = "voxd-answer ::= [^{}\\[\\]<>`*#|_\\\\ \\t\\r\\n\\x00] [^{}\\[\\]<>`*#|_\\\\\\x00]{0,2000}";

/// Characters a spoken answer never holds (what `ANSWER_RULE` keeps out).
pub const NOT_SPOKEN: &[char] = &['{', '}', '[', ']', '<', '>', '`', '*', '#', '|', '_', '\\'];

/// The first JSON object in `text` that reads as a call of one of `tools` (a model
/// without the grammar may put a call inside a sentence: "you can use the command
/// {...}"): the call, to be made rather than read aloud.
pub fn call_in(text: &str, tools: &[ToolConfig]) -> Option<String> {
    text.match_indices('{').find_map(|(at, _)| {
        let mut objects = serde_json::Deserializer::from_str(&text[at..]).into_iter::<Value>();
        let object = objects.next()?.ok()?;
        let name = object.get("name")?.as_str()?;
        (tools.iter().any(|t| t.name == name) && object.get("arguments").is_some()).then(|| object.to_string())
    })
}

/// A GBNF grammar whose sentences are exactly: one valid call of one of `tools`,
/// written in `format`, or a spoken answer (`ANSWER_RULE`). `None` with no tools.
pub fn grammar(tools: &[ToolConfig], format: CallFormat) -> anyhow::Result<Option<String>> {
    if tools.is_empty() {
        return Ok(None);
    }
    let schema = serde_json::json!({ "oneOf": tools.iter().map(|t| schema::call_schema(&t.name, &t.parameters)).collect::<Vec<_>>() });
    let calls = llama_cpp_2::json_schema_to_grammar(&schema.to_string()).map_err(|e| anyhow::anyhow!("converting the tool schemas to a grammar: {e}"))?;
    // llama.cpp's converter names its top rule `root`: one call's JSON, for us.
    let calls = calls.replacen("root ::=", "voxd-json ::=", 1);
    Ok(Some(format!("root ::= voxd-call | voxd-answer\n{ANSWER_RULE}\n{}\n{calls}", format.call_rule())))
}

/// A grammar that allows only a spoken answer (after a tool ran, to phrase the result).
pub fn answer_grammar() -> String {
    format!("root ::= voxd-answer\n{ANSWER_RULE}\n")
}

/// What is said when a call does not happen or fails: plain, honest, short.
pub mod say {
    use super::*;

    /// "Sorry, I'm not allowed to control the garage door." (an entity: its name
    /// without the domain); "... to do that." for topics and URLs.
    pub fn not_allowed(tool: &ToolConfig, target: &str) -> String {
        match target.split_once('.') {
            Some((_, object)) if tool.executor.starts_with("home_assistant") => format!("Sorry, I'm not allowed to control the {}.", speakable(object)),
            _ => "Sorry, I'm not allowed to do that.".to_string(),
        }
    }

    /// "Sorry, I can't do that: I can only lock a door or a gate." — said instead of
    /// doing the opposite of what was asked.
    pub fn opposite(tool: &ToolConfig) -> String {
        format!("Sorry, I can't do that: I can only {}.", tool.description.trim_end_matches('.').to_lowercase())
    }

    pub fn could_not_call() -> String {
        "Sorry, I couldn't work out how to do that.".to_string()
    }

    /// "Sorry, I can only set the temperature between 10 and 30." — said instead of
    /// acting on a value the tool does not take.
    pub fn out_of_range(parameter: &str, allowed: &str) -> String {
        format!("Sorry, I can only set the {} {allowed}.", speakable(parameter))
    }

    pub fn declined() -> String {
        "Okay, I won't.".to_string()
    }

    pub fn failed(error: &str) -> String {
        format!("Sorry, that didn't work: {error}.")
    }

    pub fn done() -> String {
        "Done.".to_string()
    }

    /// Text as the voice should get it: markup it would spell out taken away
    /// ("**Paris**" → "Paris", "living_room" → "living room").
    pub fn voice_text(text: &str) -> String {
        let plain: String = text.chars().map(|c| if c == '_' { ' ' } else { c }).filter(|c| !NOT_SPOKEN.contains(c)).collect();
        // Only where something was taken out: the splitter's spacing stays as it was.
        if plain.len() == text.len() {
            return plain;
        }
        plain.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// "light.kitchen" → "light kitchen"; "home/kitchen/light/set" → "home kitchen light set".
    pub fn speakable(target: &str) -> String {
        target.replace(['.', '_', '/'], " ").split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn light_tool() -> ToolConfig {
        ToolConfig {
            name: "light_turn_on".into(),
            description: "Turn a light on".into(),
            executor: "home_assistant".into(),
            service: "light.turn_on".into(),
            parameters: json!({ "type": "object", "properties": { "entity_id": { "type": "string" }, "brightness_pct": { "type": "integer", "minimum": 1, "maximum": 100 } }, "required": ["entity_id"] }),
            allow: vec!["light.kitchen".into(), "light.living_*".into()],
            ..ToolConfig::default()
        }
    }

    #[test]
    fn the_verb_said_on_another_domain_s_device_is_that_domain_s_tool() {
        let on = |name: &str, service: &str, allow: &str| ToolConfig { name: name.into(), service: service.into(), allow: vec![allow.into()], ..light_tool() };
        let tools = [on("light_off", "light.turn_off", "light.*"), on("switch_off", "switch.turn_off", "switch.*"), on("switch_on", "switch.turn_on", "switch.*")];
        let (call, tool) = parse_call(r#"{"name": "switch_off", "arguments": {"entity_id": "light.desk"}}"#, &tools).unwrap();
        assert_eq!((call.name.as_str(), tool.name.as_str()), ("light_off", "light_off"));
        // No tool of that action may touch it: refused, as before.
        for (text, tool) in [(r#"{"name": "switch_on", "arguments": {"entity_id": "light.desk"}}"#, "switch_on"), (r#"{"name": "switch_off", "arguments": {"entity_id": "lock.front_door"}}"#, "switch_off")] {
            let (call, t) = parse_call(text, &tools).unwrap();
            assert_eq!(t.name, tool);
            assert!(matches!(t.permits(&call), Err(Rejected::NotAllowed { .. })), "{text}");
        }
    }

    #[test]
    fn allow_lists_match_exactly_by_glob_or_by_mqtt_filter() {
        assert!(allowed_by("light.kitchen", "light.kitchen", Target::Entity));
        assert!(!allowed_by("light.kitchen", "light.kitchen2", Target::Entity));
        assert!(allowed_by("light.*", "light.anything", Target::Entity));
        assert!(!allowed_by("light.*", "lock.front_door", Target::Entity));
        assert!(allowed_by("http://hooks.local/*", "http://hooks.local/a", Target::Url));
        assert!(!allowed_by("http://hooks.local/*", "http://hooks.local/a/b", Target::Url), "a star stays in its path segment");
        assert!(allowed_by("home/+/light/set", "home/kitchen/light/set", Target::Topic));
        assert!(!allowed_by("home/+/light/set", "home/kitchen/lock/set", Target::Topic));
        assert!(allowed_by("home/#", "home/a/b/c", Target::Topic));
        assert!(!allowed_by("home/+", "home/a/b", Target::Topic));
        assert!(allowed_by("*.kitchen*", "light.kitchen_ceiling", Target::Entity));
        assert!(!allowed_by("*.kitchen", "light.kitchenette", Target::Entity));
    }

    #[test]
    fn a_wildcard_stays_inside_its_segment() {
        // The bypasses: a path climbing out of sensors, a second entity smuggled in.
        assert!(!allowed_by("sensor.*", "sensor.x/../lock.front_door", Target::Entity));
        assert!(!allowed_by("sensor.*", "sensor.a.b", Target::Entity));
        assert!(!allowed_by("switch.garden_*", "switch.garden_x, switch.alarm_siren", Target::Entity));
        assert!(allowed_by("switch.garden_*", "switch.garden_x,alarm", Target::Entity), "the glob alone cannot tell a list: the entity check must");
        assert!(!is_entity_id("switch.garden_x,alarm"));
        assert!(!allowed_by("http://hooks.local/*", "http://hooks.local/a/b", Target::Url));
        assert!(allowed_by("http://hooks.local/hook/*", "http://hooks.local/hook/front", Target::Url));
    }

    #[test]
    fn only_real_entity_ids_reach_the_allow_list() {
        for good in ["light.kitchen", "sensor.outdoor_temp_2", "lock.front_door"] {
            assert!(is_entity_id(good), "{good}");
        }
        for bad in ["sensor.x/../lock.front_door", "switch.garden_x, switch.alarm_siren", "Light.Kitchen", "light.", ".kitchen", "light", "light._x", "light.x_", "light.kitchen\n", "li__ght.x", "light.kitchen%2F..%2Flock.door"] {
            assert!(!is_entity_id(bad), "{bad:?}");
        }
        let t = ToolConfig { allow: vec!["sensor.*".into(), "switch.garden_*".into()], ..light_tool() };
        let call = |id: &str| ToolCall { name: t.name.clone(), arguments: json!({ "entity_id": id }) };
        for bypass in ["sensor.x/../lock.front_door", "switch.garden_x, switch.alarm_siren"] {
            assert!(matches!(t.permits(&call(bypass)), Err(Rejected::NotAllowed { .. })), "{bypass}");
        }
        assert_eq!(t.permits(&call("sensor.hall")), Ok(()));
    }

    #[test]
    fn template_values_cannot_escape_their_place() {
        let args = json!({ "state": "ON\",\"child_lock\":\"UNLOCK", "room": "a/b?c#d", "n": 3 });
        let t = ToolConfig { name: "t".into(), executor: "mqtt".into(), topic: "home/{room}/set".into(), payload: r#"{"state": "{state}", "level": {n}}"#.into(), allow: vec!["home/+/set".into()], ..ToolConfig::default() };
        let call = ToolCall { name: "t".into(), arguments: args.clone() };
        let payload: Value = serde_json::from_str(&t.payload_for(&call).unwrap()).expect("still JSON");
        assert_eq!(payload, json!({ "state": "ON\",\"child_lock\":\"UNLOCK", "level": 3 }), "one field, holding the whole value");
        assert!(matches!(t.permits(&call), Err(Rejected::NotAllowed { .. })), "a topic value with '/' is refused");
        for v in ["+", "#", "a\0b"] {
            let c = ToolCall { name: "t".into(), arguments: json!({ "room": v, "state": "on", "n": 1 }) };
            assert!(t.permits(&c).is_err(), "{v:?}");
        }
        let plain_payload = ToolConfig { payload: "{state}".into(), ..t.clone() };
        assert_eq!(plain_payload.payload_for(&call).unwrap(), "ON\",\"child_lock\":\"UNLOCK", "a plain payload is the value itself");
        let broken = ToolConfig { payload: r#"{"level": {state}}"#.into(), ..t.clone() };
        assert!(broken.payload_for(&call).is_err(), "a template that stops being JSON fails the call");
        let hook = ToolConfig { name: "h".into(), executor: "webhook".into(), url: "http://hooks.local/hook/{room}".into(), allow: vec!["http://hooks.local/hook/*".into()], ..ToolConfig::default() };
        let c = ToolCall { name: "h".into(), arguments: json!({ "room": "../admin?x=1#y" }) };
        assert_eq!(hook.url_for(&c), "http://hooks.local/hook/..%2Fadmin%3Fx%3D1%23y");
        assert_eq!(hook.permits(&c), Ok(()), "encoded, it is one segment under hook/");
        assert_eq!(render("Set to {room}.", &c.arguments, None), "Set to ../admin?x=1#y.", "speech as it is");
    }

    #[test]
    fn a_call_outside_the_allow_list_is_refused() {
        let t = light_tool();
        let call = |id: &str| ToolCall { name: t.name.clone(), arguments: json!({ "entity_id": id }) };
        assert_eq!(t.permits(&call("light.kitchen")), Ok(()));
        assert_eq!(t.permits(&call("light.living_room")), Ok(()));
        assert_eq!(t.permits(&call("lock.front_door")), Err(Rejected::NotAllowed { tool: t.name.clone(), target: "lock.front_door".into(), call: call("lock.front_door") }));
        let both = ToolCall { name: t.name.clone(), arguments: json!({ "entity_id": ["light.kitchen", "light.garage"] }) };
        assert!(t.permits(&both).is_err(), "one target outside the list refuses the call");
    }

    #[test]
    fn a_fixed_mqtt_topic_allows_itself_only() {
        let t = ToolConfig { name: "kitchen".into(), executor: "mqtt".into(), topic: "home/kitchen/light/set".into(), ..ToolConfig::default() };
        assert_eq!(t.permits(&ToolCall { name: "kitchen".into(), arguments: json!({}) }), Ok(()));
        let t = ToolConfig { topic: "home/{room}/light/set".into(), allow: vec!["home/+/light/set".into()], ..t };
        let call = |room: &str| ToolCall { name: "kitchen".into(), arguments: json!({ "room": room }) };
        assert_eq!(t.permits(&call("hall")), Ok(()));
        assert!(t.permits(&call("a/b")).is_err(), "an argument cannot climb out of its level");
    }

    #[test]
    fn model_output_is_parsed_and_validated() {
        let tools = [light_tool()];
        let (call, tool) = parse_call(r#" {"name": "light_turn_on", "arguments": {"entity_id": "light.kitchen"}} "#, &tools).unwrap();
        assert_eq!(tool.name, "light_turn_on");
        assert_eq!(call.arguments["entity_id"], "light.kitchen");
        let err = |t: &str| parse_call(t, &tools).unwrap_err().to_string();
        assert!(err("{\"name\": \"light_turn_on\"").starts_with("not valid JSON"));
        assert_eq!(err(r#"{"name": "fly", "arguments": {}}"#), "there is no tool \"fly\"; the tools are: light_turn_on");
        // A value out of bounds is what was asked: answered, not sent back for repair.
        assert!(matches!(parse_call(r#"{"name": "light_turn_on", "arguments": {"entity_id": "light.kitchen", "brightness_pct": 0}}"#, &tools), Err(Rejected::OutOfRange { parameter, allowed, .. }) if parameter == "brightness_pct" && allowed == "between 1 and 100"));
    }

    #[test]
    fn a_call_inside_words_is_found_and_markup_is_not_spoken() {
        let tools = [light_tool()];
        let said = r#"To turn it on, you can use the command {"name": "light_turn_on", "arguments": {"entity_id": "light.kitchen"}}."#;
        assert_eq!(call_in(said, &tools).as_deref(), Some(r#"{"name":"light_turn_on","arguments":{"entity_id":"light.kitchen"}}"#));
        assert_eq!(call_in("Use {braces} like {\"name\": \"fly\", \"arguments\": {}}.", &tools), None, "not a call of a known tool");
        assert_eq!(say::voice_text("**Paris** is the `capital` of #France."), "Paris is the capital of France.");
        assert_eq!(say::voice_text("the living_room light"), "the living room light");
        assert_eq!(say::voice_text("Plain words, kept as they are."), "Plain words, kept as they are.");
    }

    #[test]
    fn templates_fill_arguments_and_state() {
        let args = json!({ "entity_id": "light.kitchen", "brightness_pct": 40 });
        assert_eq!(render("{entity_id} at {brightness_pct} %", &args, None), "light.kitchen at 40 %");
        assert_eq!(render("It is {state}.", &args, Some("on")), "It is on.");
    }

    #[test]
    fn the_prompt_lists_tools_compactly() {
        let p = &preamble("You are voxd.", &[light_tool()], &Home::default(), &ToolsConfig { examples: false, ..ToolsConfig::default() }, CallFormat::Json)[0].content;
        assert!(p.starts_with("You are voxd."), "{p}");
        assert!(p.contains("- light_turn_on(entity_id: string, brightness_pct?: integer 1-100): Turn a light on. Entities: light.kitchen (kitchen light), light.living_*."), "{p}");
        // A pattern's devices come from what Home Assistant lists, with their names.
        let home = Home { entities: vec!["light.living_room".into(), "lock.front_door".into()], names: [("light.living_room".to_string(), "Sofa Lamp".to_string())].into() };
        let p = &preamble("You are voxd.", &[light_tool()], &home, &ToolsConfig { examples: false, ..ToolsConfig::default() }, CallFormat::Json)[0].content;
        assert!(p.contains("Entities: light.kitchen (kitchen light), light.living_room (sofa lamp)."), "{p}");
        // A pattern no listed device matches still says what may be named.
        let mut t = light_tool();
        t.allow = vec!["light.*".into()];
        let p = &preamble("You are voxd.", &[t], &Home::default(), &ToolsConfig { examples: false, ..ToolsConfig::default() }, CallFormat::Json)[0].content;
        assert!(p.contains("Entities: light.*."), "{p}");
    }

    #[test]
    fn the_native_format_lists_schemas_and_frames_every_call() {
        let p = preamble("You are voxd.", &[light_tool()], &Home::default(), &ToolsConfig::default(), CallFormat::Hermes);
        let system = &p[0].content;
        assert!(system.starts_with("You are voxd.\n\n# Tools\n") && system.contains("<tools>\n{") && system.contains("</tools>"), "{system}");
        assert!(system.contains("never guess a state") && system.contains("Use only the entities listed"), "the same rules: {system}");
        // Each tool one JSON schema a line, its devices in its description.
        let line = system.lines().find(|l| l.starts_with("{\"type\":\"function\"")).expect("a schema line");
        let function: Value = serde_json::from_str(line).unwrap();
        assert_eq!(function["function"]["name"], "light_turn_on");
        assert_eq!(function["function"]["description"], "Turn a light on. Entities: light.kitchen (kitchen light), light.living_*.");
        assert_eq!(function["function"]["parameters"], light_tool().parameters);
        // The example calls are framed, and read back as the calls they are.
        let calls: Vec<&Message> = p.iter().filter(|m| m.role == Role::Assistant && looks_like_call(&m.content)).collect();
        assert!(!calls.is_empty(), "{p:?}");
        for m in calls {
            assert!(m.content.starts_with("<tool_call>\n{") && m.content.ends_with("}\n</tool_call>"), "{}", m.content);
            let (call, _) = parse_call(&m.content, &[light_tool()]).unwrap();
            assert_eq!(call.arguments["entity_id"], "light.kitchen");
        }
        // The plain answers stay plain.
        assert_eq!(p[2].content, "The capital of France is Paris.");
    }

    #[test]
    fn a_call_that_does_the_opposite_of_the_words_is_known() {
        let tool = |service: &str| ToolConfig { name: "t".into(), service: service.into(), ..ToolConfig::default() };
        assert!(tool("lock.lock").contradicts("Unlock the back door."));
        assert!(!tool("lock.lock").contradicts("Lock the back door."));
        assert!(tool("lock.unlock").contradicts("Lock the back door, please."));
        assert!(!tool("lock.unlock").contradicts("Unlock the back door."));
        assert!(tool("cover.open_cover").contradicts("Shut the garage door."));
        assert!(tool("cover.close_cover").contradicts("Open the blinds."));
        assert!(tool("light.turn_on").contradicts("Turn off the kitchen light."));
        assert!(!tool("light.turn_on").contradicts("Turn on the light on the porch."));
        assert!(!tool("light.turn_off").contradicts("Turn off the light on the porch."), "'on' as a preposition");
        assert!(!tool("climate.set_temperature").contradicts("Turn off the heating."), "no opposite to tell");
        assert_eq!(say::opposite(&ToolConfig { description: "Lock a door or a gate".into(), ..tool("lock.lock") }), "Sorry, I can't do that: I can only lock a door or a gate.");
    }

    #[test]
    fn a_confirmation_names_the_device_unless_the_tool_has_one() {
        let mut t = ToolConfig { name: "open_cover".into(), description: "Open blinds, curtains or the garage door".into(), confirm: true, allow: vec!["cover.garage_door".into(), "cover.blinds".into()], ..ToolConfig::default() };
        let call = ToolCall { name: "open_cover".into(), arguments: json!({ "entity_id": "cover.garage_door" }) };
        assert_eq!(t.confirm_question(&call), "Should I open blinds, curtains or the garage door: garage door? Please say yes or no.");
        t.allow = vec!["cover.garage_door".into()];
        t.description = "Open the garage door".into();
        assert_eq!(t.confirm_question(&call), "Should I open the garage door? Please say yes or no.");
        // Values other than the device: left out only when the description says them as words.
        let call = ToolCall { name: "open_cover".into(), arguments: json!({ "entity_id": "cover.garage_door", "position": "on" }) };
        t.description = "Open the garage door to a position".into();
        assert_eq!(t.confirm_question(&call), "Should I open the garage door to a position: on? Please say yes or no.");
    }

    #[test]
    fn examples_are_real_turns() {
        let mut t = light_tool();
        t.examples = json!([{ "say": "kitchen light on", "arguments": { "entity_id": "light.kitchen" } }]);
        let p = preamble("You are voxd.", &[t], &Home::default(), &ToolsConfig::default(), CallFormat::Json);
        let n = p.len();
        assert_eq!(p[n - 2].role, Role::User);
        assert_eq!(p[n - 2].content, "kitchen light on\n(Devices named: light.kitchen.)", "hinted as real requests are");
        assert_eq!(p[n - 1].content, r#"{"name":"light_turn_on","arguments":{"entity_id":"light.kitchen"}}"#, "the tool's example comes last");
        assert_eq!(preamble("You are voxd.", &[], &Home::default(), &ToolsConfig::default(), CallFormat::Json).len(), 1, "no tools: the persona alone");
        // Without hand-written examples, one is derived from the tool.
        let p = preamble("You are voxd.", &[light_tool()], &Home::default(), &ToolsConfig::default(), CallFormat::Json);
        let n = p.len();
        assert_eq!((p[n - 2].content.as_str(), p[n - 1].content.as_str()), ("Turn on the kitchen light\n(Devices named: light.kitchen.)", r#"{"name":"light_turn_on","arguments":{"entity_id":"light.kitchen"}}"#));
        // Hints off: the words alone.
        let p = preamble("You are voxd.", &[light_tool()], &Home::default(), &ToolsConfig { device_hints: false, ..ToolsConfig::default() }, CallFormat::Json);
        assert_eq!(p[p.len() - 2].content, "Turn on the kitchen light");
    }
}
