//! The fast path: commands common enough to be matched by a pattern instead of asked
//! of the model. A match becomes a tool call at once (no prompt, no generation), and
//! goes through the same validation and allow-list as the model's calls.

use regex::Regex;
use serde_json::{Map, Value};

use super::{ToolCall, ToolConfig};
use crate::config::IntentConfig;

pub struct Intents {
    list: Vec<(Regex, IntentConfig)>,
}

impl Intents {
    /// Compiles the patterns (already checked with the config), each anchored to the
    /// whole transcript.
    pub fn new(configs: &[IntentConfig]) -> anyhow::Result<Intents> {
        let list = configs
            .iter()
            .map(|c| Ok((Regex::new(&format!("^(?:{})$", c.pattern))?, c.clone())))
            .collect::<Result<_, regex::Error>>()?;
        Ok(Intents { list })
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The call the first matching intent makes of `transcript`, if any.
    pub fn call(&self, transcript: &str, tools: &[ToolConfig]) -> Option<ToolCall> {
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

/// Lowercase words, punctuation gone (a decimal point between digits stays):
/// "Turn on the kitchen lights!" → "turn on the kitchen lights".
pub fn normalize(text: &str) -> String {
    let chars: Vec<char> = text.to_lowercase().chars().collect();
    let mut out = String::with_capacity(chars.len());
    for (i, &c) in chars.iter().enumerate() {
        let decimal = c == '.' && i > 0 && chars[i - 1].is_ascii_digit() && chars.get(i + 1).is_some_and(char::is_ascii_digit);
        if c.is_alphanumeric() || c == '\'' || c == '%' || decimal {
            out.push(c);
        } else if !out.ends_with(' ') {
            out.push(' ');
        }
    }
    out.trim().to_string()
}

/// The answer to a yes/no question: Some(true) for "yes, go ahead", Some(false) for
/// "no, don't", None for anything else (a new request: the question lapses).
pub fn yes_or_no(text: &str) -> Option<bool> {
    const YES: [&str; 12] = ["yes", "yeah", "yep", "yup", "sure", "ok", "okay", "please do", "do it", "go ahead", "confirm", "correct"];
    const NO: [&str; 8] = ["no", "nope", "don't", "do not", "cancel", "stop", "never mind", "never"];
    let text = normalize(text);
    let starts = |w: &str| text == w || text.starts_with(&format!("{w} "));
    // "No" first: "no, don't do it" must not count as "do it".
    if NO.iter().any(|w| starts(w)) {
        Some(false)
    } else if YES.iter().any(|w| starts(w)) {
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
    }

    #[test]
    fn transcripts_are_normalized_before_matching() {
        assert_eq!(normalize("Set it to 21.5 degrees, please!"), "set it to 21.5 degrees please");
        assert_eq!(normalize("  Lights... ON?"), "lights on");
    }
}
