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
    fn transcripts_are_normalized_before_matching() {
        assert_eq!(normalize("Set it to 21.5 degrees, please!"), "set it to 21.5 degrees please");
        assert_eq!(normalize("  Lights... ON?"), "lights on");
    }
}
