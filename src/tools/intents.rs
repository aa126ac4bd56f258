//! The fast path: commands common enough to be matched by a pattern instead of asked
//! of the model. A match becomes a tool call at once (no prompt, no generation), and
//! goes through the same validation and allow-list as the model's calls.
//!
//! Two kinds: the `[[intent]]`s of the config (a pattern and argument templates),
//! and intents generated from the home itself — for each Home Assistant tool and
//! the devices it may touch, the everyday ways of saying its action ("turn off the
//! {name}", "set the {name} to {n} degrees", "is the {name} locked"), in the words
//! of `phrases`. Configured intents come first.

use std::collections::BTreeMap;

use regex::Regex;
use serde_json::{Map, Value};

use super::phrases;
use super::{Home, ToolCall, ToolConfig};
use crate::config::IntentConfig;

#[derive(Default)]
pub struct Intents {
    list: Vec<(Regex, IntentConfig)>,
    generated: Vec<Generated>,
}

/// An intent made from a tool: its phrasing, with the device's spoken names in a
/// group `name` (and a number in `n`).
struct Generated {
    pattern: Regex,
    tool: String,
    /// Spoken name → entity id.
    entities: BTreeMap<String, String>,
    /// The parameter a spoken number fills.
    number: Option<String>,
}

impl Intents {
    /// Compiles the patterns (already checked with the config), each anchored to the
    /// whole transcript.
    pub fn new(configs: &[IntentConfig]) -> anyhow::Result<Intents> {
        let list = configs
            .iter()
            .map(|c| Ok((Regex::new(&format!("^(?:{})$", c.pattern))?, c.clone())))
            .collect::<Result<_, regex::Error>>()?;
        Ok(Intents { list, generated: Vec::new() })
    }

    /// Adds the intents generated from `tools` and the devices of `home`.
    pub fn with_generated(mut self, tools: &[ToolConfig], home: &Home) -> Intents {
        self.regenerate(tools, home);
        self
    }

    /// Makes the generated intents again, for the devices `home` has now.
    pub fn regenerate(&mut self, tools: &[ToolConfig], home: &Home) {
        self.generated = tools.iter().flat_map(|t| generate(t, home)).collect();
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty() && self.generated.is_empty()
    }

    /// The call the first matching intent makes of `transcript`, if any.
    pub fn call(&self, transcript: &str, tools: &[ToolConfig]) -> Option<ToolCall> {
        self.configured(transcript, tools).or_else(|| self.generated_call(transcript))
    }

    fn generated_call(&self, transcript: &str) -> Option<ToolCall> {
        let text = normalize(transcript);
        self.generated.iter().find_map(|g| {
            let caps = g.pattern.captures(&text)?;
            let said = caps.name("name")?.as_str();
            let entity = g.entities.get(said).or_else(|| g.entities.get(said.strip_suffix('s')?))?;
            let mut arguments = Map::new();
            arguments.insert("entity_id".into(), Value::String(entity.clone()));
            if let (Some(param), Some(n)) = (&g.number, caps.name("n")) {
                let n: f64 = n.as_str().parse().ok()?;
                arguments.insert(param.clone(), if n.fract() == 0.0 { Value::from(n as i64) } else { Value::from(n) });
            }
            Some(ToolCall { name: g.tool.clone(), arguments: Value::Object(arguments) })
        })
    }

    fn configured(&self, transcript: &str, tools: &[ToolConfig]) -> Option<ToolCall> {
        let text = normalize(transcript);
        self.list.iter().find_map(|(re, intent)| {
            let caps = re.captures(&text)?;
            let tool = tools.iter().find(|t| t.name == intent.tool)?;
            let mut arguments = Map::new();
            for (key, value) in intent.arguments.as_object()? {
                let filled = match value.as_str() {
                    Some(template) if template.contains('{') => {
                        // In an entity id ("light.{room}") spoken words join with '_':
                        // "living room" → light.living_room.
                        let entity = template.split_once('.').is_some_and(|(domain, _)| !domain.is_empty() && domain.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
                        let mut s = template.to_string();
                        for name in re.capture_names().flatten() {
                            let words = caps.name(name).map_or("", |m| m.as_str());
                            let words = if entity { words.replace(' ', "_") } else { words.to_string() };
                            s = s.replace(&format!("{{{name}}}"), &words);
                        }
                        coerce(&tool.parameters["properties"][key.as_str()], &s)?
                    }
                    _ => value.clone(),
                };
                arguments.insert(key.clone(), filled);
            }
            Some(ToolCall { name: tool.name.clone(), arguments: Value::Object(arguments) })
        })
    }
}

/// The ways of saying a tool's action, with `{name}` for the device and `{n}` for a
/// number; empty for a tool that is not a Home Assistant one (its words are its own).
fn phrasings(tool: &ToolConfig, entity: &str) -> &'static [&'static str] {
    if tool.executor == "home_assistant_state" {
        return match entity.split('.').next().unwrap_or("") {
            // "lock": how Whisper's small models often hear "locked" at the end.
            "lock" => &["is the {name} (?:locked|unlocked|lock)", "did i lock the {name}"],
            "cover" => &["is the {name} (?:open|closed|shut)"],
            "light" | "switch" | "fan" | "media_player" => &["(?:is|are) the {name} (?:on|off)"],
            "climate" => &["what is the {name} set to", "what temperature is the {name} set to"],
            "sensor" => &["what is the {name}", "what does the {name} say"],
            _ => &[],
        };
    }
    if tool.executor != "home_assistant" {
        return &[];
    }
    match tool.service.as_str() {
        s if s.ends_with(".turn_on") && !s.starts_with("scene.") && !s.starts_with("script.") => &["(?:turn|switch) on the {name}", "(?:turn|switch) the {name} on"],
        s if s.ends_with(".turn_off") => &["(?:turn|switch) off the {name}", "(?:turn|switch) the {name} off"],
        "scene.turn_on" | "script.turn_on" => &["(?:start|activate|run|turn on) (?:the )?{name}(?: scene)?"],
        "climate.set_temperature" => &["set the {name} to {n}(?: degrees)?(?: celsius)?", "set the temperature (?:of|in) the {name} to {n}(?: degrees)?"],
        "cover.open_cover" => &["open(?: up)? the {name}"],
        "cover.close_cover" => &["close the {name}", "shut the {name}"],
        "lock.lock" => &["lock the {name}"],
        "lock.unlock" => &["unlock the {name}"],
        _ => &[],
    }
}

/// The intents of one tool: one pattern per phrasing, over the spoken names of the
/// devices it may touch (each also in the plural: "the kitchen lights").
fn generate(tool: &ToolConfig, home: &Home) -> Vec<Generated> {
    let props = tool.properties();
    if !props.is_some_and(|p| p.contains_key("entity_id")) {
        return Vec::new();
    }
    let number = props.and_then(|p| p.iter().find(|(k, v)| *k != "entity_id" && matches!(v.get("type").and_then(Value::as_str), Some("number" | "integer"))).map(|(k, _)| k.clone()));
    let required = tool.required_parameters();
    if required.iter().any(|r| *r != "entity_id" && Some(*r) != number.as_deref()) {
        return Vec::new();
    }
    // A number the tool requires must be said: no phrasing without one.
    let number_required = number.as_deref().is_some_and(|n| required.contains(&n));
    // Two devices one name ("Ceiling Light" twice): neither is taken on a guess; the
    // model asks which one.
    let named: Vec<(String, String)> = phrases::entities_of(tool, &home.entities).into_iter().map(|id| (normalize(&phrases::spoken_name(&id, &home.names)), id)).collect();
    let ambiguous = |name: &str| named.iter().filter(|(n, _)| n == name).count() > 1;
    // Devices by domain: a state tool says "locked" of locks and "on" of lights.
    let mut by_phrasing: BTreeMap<&'static [&'static str], BTreeMap<String, String>> = BTreeMap::new();
    for (name, id) in named.iter().filter(|(n, _)| !ambiguous(n)) {
        by_phrasing.entry(phrasings(tool, id)).or_default().insert(name.clone(), id.clone());
    }
    let mut out = Vec::new();
    for (phrasings, entities) in by_phrasing {
        if phrasings.is_empty() || entities.is_empty() {
            continue;
        }
        let mut names: Vec<&String> = entities.keys().collect();
        names.sort_by_key(|n| std::cmp::Reverse(n.len()));
        let alternatives = names.iter().map(|n| regex::escape(n)).collect::<Vec<_>>().join("|");
        for phrasing in phrasings {
            // A phrasing with a number needs a parameter for it; a required number, a
            // phrasing that says it.
            let says_number = phrasing.contains("{n}");
            if (says_number && number.is_none()) || (!says_number && number_required) {
                continue;
            }
            let body = phrasing.replace("{name}", &format!("(?P<name>(?:{alternatives})s?)")).replace("{n}", r"(?P<n>-?\d+(?:\.\d+)?)");
            let pattern = format!("^(?:please |could you |can you )?{body}(?: please)?$");
            if let Ok(pattern) = Regex::new(&pattern) {
                out.push(Generated { pattern, tool: tool.name.clone(), entities: entities.clone(), number: number.clone() });
            }
        }
    }
    out
}

/// Lowercase words, punctuation gone (a decimal point between digits stays):
/// "Turn on the kitchen lights!" → "turn on the kitchen lights".
pub fn normalize(text: &str) -> String {
    let chars: Vec<char> = text.to_lowercase().chars().collect();
    let mut out = String::with_capacity(chars.len());
    for (i, &c) in chars.iter().enumerate() {
        let decimal = c == '.' && i > 0 && chars[i - 1].is_ascii_digit() && chars.get(i + 1).is_some_and(char::is_ascii_digit);
        // "-18": a minus sign, not a dash ("set the freezer to -18" is not 18).
        let minus = c == '-' && (i == 0 || !chars[i - 1].is_alphanumeric()) && chars.get(i + 1).is_some_and(char::is_ascii_digit);
        if c.is_alphanumeric() || c == '\'' || c == '%' || decimal || minus {
            out.push(c);
        } else if !out.ends_with(' ') {
            out.push(' ');
        }
    }
    out.trim().to_string()
}

/// The answer to a yes/no question: Some(true) for "yes, go ahead", Some(false) for
/// "no, don't", None for anything else — a new request, and the question lapses.
/// Only a short answer that is nothing but yes or no counts: "sure, what time is it"
/// is a question that happens to start with "sure", and must not open a door.
pub fn yes_or_no(text: &str) -> Option<bool> {
    const YES: [&str; 10] = ["yes", "yeah", "yep", "yup", "sure", "ok", "okay", "confirm", "confirmed", "correct"];
    const NO: [&str; 7] = ["no", "nope", "don't", "not", "cancel", "stop", "never"];
    // Words that may stand around the answer without changing it.
    const ALSO: [&str; 9] = ["please", "do", "it", "go", "ahead", "thanks", "thank", "you", "mind"];
    let text = normalize(text);
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() || words.len() > 5 || !words.iter().all(|w| YES.contains(w) || NO.contains(w) || ALSO.contains(w)) {
        return None;
    }
    // "do it" and "go ahead" alone are a yes; any no-word makes it a no ("no, don't do it").
    if words.iter().any(|w| NO.contains(w)) {
        Some(false)
    } else if words.iter().any(|w| YES.contains(w)) || text == "do it" || text == "go ahead" || text == "please do" {
        Some(true)
    } else {
        None
    }
}

/// Captured words as a value of the parameter's type: an enum value whatever its case
/// ("on" → "ON"), a number, a yes/no.
fn coerce(prop: &Value, text: &str) -> Option<Value> {
    if let Some(values) = prop.get("enum").and_then(Value::as_array) {
        return values.iter().find(|v| v.as_str().is_some_and(|s| s.eq_ignore_ascii_case(text)) || v.to_string() == text).cloned();
    }
    match prop.get("type").and_then(Value::as_str) {
        Some("integer") => text.parse::<i64>().ok().map(Value::from),
        Some("number") => text.parse::<f64>().ok().map(Value::from),
        Some("boolean") => match text {
            "on" | "yes" | "true" => Some(Value::Bool(true)),
            "off" | "no" | "false" => Some(Value::Bool(false)),
            _ => None,
        },
        _ => Some(Value::String(text.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_matching_transcript_becomes_a_call() {
        let tool = ToolConfig {
            name: "kitchen_lights".into(),
            parameters: json!({ "type": "object", "properties": { "state": { "type": "string", "enum": ["ON", "OFF"] }, "level": { "type": "integer" } }, "required": ["state"] }),
            ..ToolConfig::default()
        };
        let intent = IntentConfig { pattern: "(?:please )?turn (?P<state>on|off) the kitchen lights?".into(), tool: "kitchen_lights".into(), arguments: json!({ "state": "{state}" }) };
        let dim = IntentConfig { pattern: "dim the kitchen lights? to (?P<n>\\d+)%?(?: percent)?".into(), tool: "kitchen_lights".into(), arguments: json!({ "state": "ON", "level": "{n}" }) };
        let intents = Intents::new(&[intent, dim]).unwrap();
        let tools = [tool];
        assert_eq!(intents.call("Turn on the kitchen lights.", &tools).unwrap().arguments, json!({ "state": "ON" }));
        assert_eq!(intents.call("Please turn off the kitchen light!", &tools).unwrap().arguments, json!({ "state": "OFF" }));
        assert_eq!(intents.call("Dim the kitchen lights to 30 percent.", &tools).unwrap().arguments, json!({ "state": "ON", "level": 30 }));
        assert_eq!(intents.call("Turn on the kitchen lights and the fan.", &tools), None, "the whole transcript must match");
        assert_eq!(intents.call("What is the weather?", &tools), None);
    }

    #[test]
    fn spoken_names_fill_entity_ids_with_underscores() {
        let tool = ToolConfig { name: "on".into(), parameters: json!({ "type": "object", "properties": { "entity_id": { "type": "string" } } }), ..ToolConfig::default() };
        let intent = IntentConfig { pattern: "turn on the (?P<room>kitchen|living room) light".into(), tool: "on".into(), arguments: json!({ "entity_id": "light.{room}" }) };
        let call = Intents::new(&[intent]).unwrap().call("Turn on the living room light.", &[tool]).unwrap();
        assert_eq!(call.arguments["entity_id"], "light.living_room");
    }

    #[test]
    fn yes_and_no_are_told_apart() {
        assert_eq!(yes_or_no("Yes."), Some(true));
        assert_eq!(yes_or_no("Yes, please do."), Some(true));
        assert_eq!(yes_or_no("Okay go ahead"), Some(true));
        assert_eq!(yes_or_no("No."), Some(false));
        assert_eq!(yes_or_no("No, don't do it."), Some(false));
        assert_eq!(yes_or_no("What time is it?"), None);
        assert_eq!(yes_or_no("Yesterday was fun"), None);
        assert_eq!(yes_or_no("Go ahead."), Some(true));
        assert_eq!(yes_or_no("Never mind."), Some(false));
        assert_eq!(yes_or_no("Do not."), Some(false));
        // A yes-word at the start of something else is not an answer.
        assert_eq!(yes_or_no("Sure, what time is it?"), None);
        assert_eq!(yes_or_no("Yes, and turn on the lights."), None);
        assert_eq!(yes_or_no("Okay, open the garage door."), None);
        assert_eq!(yes_or_no("Please."), None);
    }

    #[test]
    fn the_home_generates_its_everyday_commands() {
        let ha = |name: &str, executor: &str, service: &str, allow: &[&str]| ToolConfig {
            name: name.into(),
            executor: executor.into(),
            service: service.into(),
            parameters: json!({ "type": "object", "properties": { "entity_id": { "type": "string" } }, "required": ["entity_id"] }),
            allow: allow.iter().map(|s| s.to_string()).collect(),
            ..ToolConfig::default()
        };
        let mut climate = ha("set_temp", "home_assistant", "climate.set_temperature", &["climate.living_room"]);
        climate.parameters = json!({ "type": "object", "properties": { "entity_id": { "type": "string" }, "temperature": { "type": "number", "minimum": 10, "maximum": 30 } }, "required": ["entity_id", "temperature"] });
        let tools = [
            ha("light_off", "home_assistant", "light.turn_off", &["light.*"]),
            ha("unlock", "home_assistant", "lock.unlock", &["lock.front_door"]),
            ha("get_state", "home_assistant_state", "", &["lock.front_door", "light.*"]),
            climate,
        ];
        let home = Home { entities: vec!["light.living_room".into(), "light.kitchen".into()], names: Default::default() };
        let intents = Intents::new(&[]).unwrap().with_generated(&tools, &home);
        let call = |text: &str| intents.call(text, &tools).map(|c| (c.name, c.arguments));
        assert_eq!(call("Turn off the living room lights."), Some(("light_off".into(), json!({ "entity_id": "light.living_room" }))));
        assert_eq!(call("Switch the kitchen light off, please."), Some(("light_off".into(), json!({ "entity_id": "light.kitchen" }))));
        assert_eq!(call("Is the front door locked?"), Some(("get_state".into(), json!({ "entity_id": "lock.front_door" }))));
        assert_eq!(call("Are the kitchen lights on?"), Some(("get_state".into(), json!({ "entity_id": "light.kitchen" }))));
        assert_eq!(call("Set the living room thermostat to 21.5 degrees."), Some(("set_temp".into(), json!({ "entity_id": "climate.living_room", "temperature": 21.5 }))));
        // A value out of range is passed on as said: the schema refuses it aloud.
        assert_eq!(call("Set the living room thermostat to 95 degrees.").unwrap().1["temperature"], 95);
        assert_eq!(call("Unlock the front door."), Some(("unlock".into(), json!({ "entity_id": "lock.front_door" }))));
        assert_eq!(call("Turn off the garage light."), None, "not a device of this home: the model answers");
        assert_eq!(call("Turn off the living room lights and lock the door."), None, "the whole transcript must match");
        assert_eq!(call("is the front door lock"), Some(("get_state".into(), json!({ "entity_id": "lock.front_door" }))), "as tiny.en hears it");
        assert_eq!(call("Set the living room thermostat to -5 degrees.").unwrap().1["temperature"], -5, "never 5");
    }

    #[test]
    fn generated_intents_never_guess() {
        let mut on = ToolConfig {
            name: "light_on".into(),
            executor: "home_assistant".into(),
            service: "light.turn_on".into(),
            parameters: json!({ "type": "object", "properties": { "entity_id": { "type": "string" } }, "required": ["entity_id"] }),
            allow: vec!["light.*".into()],
            ..ToolConfig::default()
        };
        // Two lights one name: neither is switched on a guess (the model asks which).
        let names = [("light.hall_1", "Ceiling Light"), ("light.bedroom_2", "Ceiling Light"), ("light.desk", "Desk Lamp")];
        let home = Home { entities: names.iter().map(|(id, _)| id.to_string()).collect(), names: names.iter().map(|(id, n)| (id.to_string(), n.to_string())).collect() };
        let tools = [on.clone()];
        let intents = Intents::new(&[]).unwrap().with_generated(&tools, &home);
        assert_eq!(intents.call("Turn on the ceiling light.", &tools), None);
        assert_eq!(intents.call("Turn on the desk lamp.", &tools).map(|c| c.arguments), Some(json!({ "entity_id": "light.desk" })));
        // A number the tool requires must be said: "turn on the desk lamp" is the model's.
        on.parameters = json!({ "type": "object", "properties": { "entity_id": { "type": "string" }, "brightness_pct": { "type": "integer" } }, "required": ["entity_id", "brightness_pct"] });
        let tools = [on];
        let intents = Intents::new(&[]).unwrap().with_generated(&tools, &home);
        assert_eq!(intents.call("Turn on the desk lamp.", &tools), None);
    }

    #[test]
    fn transcripts_are_normalized_before_matching() {
        assert_eq!(normalize("Set it to 21.5 degrees, please!"), "set it to 21.5 degrees please");
        assert_eq!(normalize("  Lights... ON?"), "lights on");
        assert_eq!(normalize("Set the freezer to -18, the well-lit hall - now"), "set the freezer to -18 the well lit hall now");
    }
}
