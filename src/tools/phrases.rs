//! How a home's tools and devices are said: each entity's spoken name, example
//! requests derived from each tool (so a home written from the README needs no
//! hand-written `examples`). The everyday commands that skip the model are
//! generated in `intents` from these names, with phrasings of their own (patterns
//! with alternatives, where an example needs one plain sentence).
//!
//! A tool says what it does through its Home Assistant service (`light.turn_off`,
//! `climate.set_temperature`, `lock.unlock`) or, for state tools, through the
//! domains it may read; its entities through their friendly names where Home
//! Assistant gave them, else through their ids ("light.living_room" → "living room
//! light"). MQTT and webhook tools have neither: their example is their description,
//! with the first value of each parameter.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{ToolCall, ToolConfig};

/// Names of entities as Home Assistant calls them (`friendly_name`), by entity id.
pub type FriendlyNames = BTreeMap<String, String>;

/// What people call a device of `entity_id`: its friendly name, lower case, else its
/// object id in words with the domain's noun when the id does not say it already
/// ("light.kitchen" → "kitchen light", "cover.garage_door" → "garage door").
pub fn spoken_name(entity_id: &str, names: &FriendlyNames) -> String {
    if let Some(name) = names.get(entity_id) {
        return name.to_lowercase();
    }
    let (domain, object) = entity_id.split_once('.').unwrap_or(("", entity_id));
    let words = object.replace('_', " ");
    let noun = match domain {
        "light" => "light",
        "switch" => "switch",
        "fan" => "fan",
        "climate" => "thermostat",
        "media_player" => "speaker",
        "lock" => "lock",
        "vacuum" => "vacuum",
        _ => "",
    };
    // "front door" is a lock's name already; "front door lock" would be odd.
    let named_by_id = noun.is_empty() || words.split(' ').any(|w| w == noun || w == "door" || w == "gate" || w == "blinds" || w == "light" || w == "lights");
    if named_by_id {
        words
    } else {
        format!("{words} {noun}")
    }
}

/// The entities a tool may touch that are named outright (patterns left out),
/// followed by those of `known` that its patterns allow.
pub fn entities_of(tool: &ToolConfig, known: &[String]) -> Vec<String> {
    let mut out: Vec<String> = tool.allow.iter().filter(|a| !a.contains('*') && super::is_entity_id(a)).cloned().collect();
    for id in known {
        if !out.contains(id) && tool.allow.iter().any(|p| super::allowed_by(p, id, super::Target::Entity)) {
            out.push(id.clone());
        }
    }
    out
}

/// How a request for a tool's action is said, with `{name}` for the device (and
/// `{n}` for a number), from its Home Assistant service.
fn request_phrase(service: &str) -> Option<&'static str> {
    let (domain, action) = service.split_once('.')?;
    Some(match (domain, action) {
        ("climate", "set_temperature") => "set the {name} to {n} degrees",
        ("cover", "open_cover") => "open the {name}",
        ("cover", "close_cover") => "close the {name}",
        ("cover", "stop_cover") => "stop the {name}",
        ("lock", "lock") => "lock the {name}",
        ("lock", "unlock") => "unlock the {name}",
        ("scene", "turn_on") | ("script", "turn_on") => "start {name}",
        (_, "turn_on") => "turn on the {name}",
        (_, "turn_off") => "turn off the {name}",
        (_, "toggle") => "toggle the {name}",
        ("media_player", "media_pause") => "pause the {name}",
        ("media_player", "media_play") => "play the {name}",
        ("vacuum", "start") => "start the {name}",
        ("vacuum", "return_to_base") => "send the {name} home",
        _ => return None,
    })
}

/// How a question about a device's state is said, by its domain.
fn question_phrase(entity_id: &str) -> &'static str {
    match entity_id.split('.').next().unwrap_or("") {
        "lock" => "is the {name} locked",
        "cover" => "is the {name} open",
        "light" | "switch" | "fan" | "media_player" => "is the {name} on",
        "climate" => "what is the {name} set to",
        "sensor" => "what is the {name}",
        _ => "what is the {name} doing",
    }
}

/// A number a parameter takes: the middle of its bounds, whole for integers.
fn middle(prop: &Value) -> Value {
    let (min, max) = (prop.get("minimum").and_then(Value::as_f64), prop.get("maximum").and_then(Value::as_f64));
    let x = match (min, max) {
        (Some(a), Some(b)) => (a + b) / 2.0,
        (Some(a), None) => a,
        (None, Some(b)) => b,
        (None, None) => 1.0,
    };
    if prop.get("type").and_then(Value::as_str) == Some("integer") || x.fract() == 0.0 {
        Value::from(x.round() as i64)
    } else {
        Value::from(x)
    }
}

/// One example request for `tool`, and the call it makes; None when it cannot be
/// phrased (a parameter that is neither an entity, a number nor an enum).
pub fn example(tool: &ToolConfig, known: &[String], names: &FriendlyNames) -> Option<(String, ToolCall)> {
    let props = tool.properties().cloned().unwrap_or_default();
    let required = tool.required_parameters();
    let entities = entities_of(tool, known);
    let entity = entities.first();
    let mut arguments = Map::new();
    let mut number = None;
    for (key, prop) in &props {
        if !required.contains(&key.as_str()) {
            continue;
        }
        let value = if key == "entity_id" {
            Value::String(entity?.clone())
        } else if let Some(first) = prop.get("enum").and_then(Value::as_array).and_then(|v| v.first()) {
            first.clone()
        } else if matches!(prop.get("type").and_then(Value::as_str), Some("number" | "integer")) {
            let n = middle(prop);
            number = Some(n.clone());
            n
        } else {
            return None;
        };
        arguments.insert(key.clone(), value);
    }
    let call = ToolCall { name: tool.name.clone(), arguments: Value::Object(arguments.clone()) };
    let name = entity.map(|e| spoken_name(e, names));
    let say = match (tool.executor.as_str(), &name) {
        ("home_assistant_state", Some(name)) => fill(question_phrase(entity?), name, None) + "?",
        ("home_assistant", Some(name)) => fill(request_phrase(&tool.service)?, name, number.as_ref()),
        _ => {
            // The description, said as a request, with the values chosen above:
            // "Switch the kitchen lights on or off" → "switch the kitchen lights on".
            let mut said = tool.description.trim_end_matches('.').to_lowercase();
            for value in arguments.values() {
                let v = super::plain(value).to_lowercase();
                if let Some(choices) = props.values().find_map(|p| p.get("enum").and_then(Value::as_array)).filter(|c| c.len() == 2) {
                    let (a, b) = (super::plain(&choices[0]).to_lowercase(), super::plain(&choices[1]).to_lowercase());
                    said = said.replace(&format!("{a} or {b}"), &v);
                }
            }
            said
        }
    };
    Some((capitalise(&say), call))
}

fn fill(phrase: &str, name: &str, number: Option<&Value>) -> String {
    phrase.replace("{name}", name).replace("{n}", &number.map(super::plain).unwrap_or_default())
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

/// Example exchanges for `tools`: one request per tool, derived as above. When no
/// tool of the home reads states (`reads_states`), a question about one gets "I
/// can't check that": an example of *not* inventing an answer.
pub fn examples(tools: &[ToolConfig], reads_states: bool, known: &[String], names: &FriendlyNames) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for tool in tools {
        if let Some((say, call)) = example(tool, known, names) {
            out.push((say, serde_json::json!({ "name": call.name, "arguments": call.arguments }).to_string()));
        }
    }
    if !reads_states {
        out.insert(0, ("Is the front door locked?".to_string(), "Sorry, I can't check that: I can't read the state of your devices.".to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ha(name: &str, service: &str, allow: &[&str]) -> ToolConfig {
        ToolConfig {
            name: name.into(),
            description: "A tool".into(),
            executor: if service.is_empty() { "home_assistant_state".into() } else { "home_assistant".into() },
            service: service.into(),
            parameters: json!({ "type": "object", "properties": { "entity_id": { "type": "string" } }, "required": ["entity_id"] }),
            allow: allow.iter().map(|s| s.to_string()).collect(),
            ..ToolConfig::default()
        }
    }

    #[test]
    fn entities_are_said_by_their_names() {
        let none = FriendlyNames::new();
        assert_eq!(spoken_name("light.living_room", &none), "living room light");
        assert_eq!(spoken_name("light.kitchen_lights", &none), "kitchen lights");
        assert_eq!(spoken_name("cover.garage_door", &none), "garage door");
        assert_eq!(spoken_name("lock.front_door", &none), "front door");
        assert_eq!(spoken_name("climate.bedroom", &none), "bedroom thermostat");
        let names = FriendlyNames::from([("light.lr_1".to_string(), "Reading Lamp".to_string())]);
        assert_eq!(spoken_name("light.lr_1", &names), "reading lamp");
    }

    #[test]
    fn each_tool_gets_an_example_request_from_its_service() {
        let none = FriendlyNames::new();
        let off = ha("light_turn_off", "light.turn_off", &["light.kitchen", "light.living_room"]);
        let (say, call) = example(&off, &[], &none).unwrap();
        assert_eq!(say, "Turn off the kitchen light");
        assert_eq!(call.arguments, json!({ "entity_id": "light.kitchen" }));
        let mut climate = ha("set_temp", "climate.set_temperature", &["climate.living_room"]);
        climate.parameters = json!({ "type": "object", "properties": { "entity_id": { "type": "string" }, "temperature": { "type": "number", "minimum": 10, "maximum": 30 } }, "required": ["entity_id", "temperature"] });
        let (say, call) = example(&climate, &[], &none).unwrap();
        assert_eq!((say.as_str(), call.arguments["temperature"].clone()), ("Set the living room thermostat to 20 degrees", json!(20)));
        let state = ha("get_state", "", &["lock.front_door"]);
        assert_eq!(example(&state, &[], &none).unwrap().0, "Is the front door locked?");
        // Patterns take their entities from what Home Assistant listed.
        let lights = ha("on", "light.turn_on", &["light.*"]);
        assert!(example(&lights, &[], &none).is_none(), "no entity known: nothing to say");
        assert_eq!(example(&lights, &["switch.a".into(), "light.porch".into()], &none).unwrap().0, "Turn on the porch light");
        let mqtt = ToolConfig {
            name: "kitchen_lights".into(),
            description: "Switch the kitchen lights on or off".into(),
            executor: "mqtt".into(),
            parameters: json!({ "type": "object", "properties": { "state": { "type": "string", "enum": ["on", "off"] } }, "required": ["state"] }),
            ..ToolConfig::default()
        };
        let (say, call) = example(&mqtt, &[], &none).unwrap();
        assert_eq!((say.as_str(), call.arguments.clone()), ("Switch the kitchen lights on", json!({ "state": "on" })));
    }

    #[test]
    fn a_home_that_cannot_read_states_shows_how_to_say_so() {
        let none = FriendlyNames::new();
        let off = ha("light_turn_off", "light.turn_off", &["light.kitchen"]);
        let ex = examples(&[off.clone()], false, &[], &none);
        assert_eq!(ex[0].0, "Is the front door locked?");
        assert!(ex[0].1.contains("can't check"));
        let ex = examples(&[off.clone(), ha("get_state", "", &["light.kitchen"])], true, &[], &none);
        assert!(ex.iter().all(|(_, a)| !a.contains("can't check")), "a home that can read states reads them");
        // Also when the state tool's examples are written by hand (none derived for it).
        let mut read = ha("get_state", "", &["light.kitchen"]);
        read.examples = json!([{ "say": "Is the kitchen light on?", "arguments": { "entity_id": "light.kitchen" } }]);
        let prompt = super::super::preamble("", &[off, read], &super::super::Home::default(), &super::super::ToolsConfig::default(), super::super::CallFormat::Json);
        assert!(prompt.iter().all(|m| !m.content.contains("can't check")), "{prompt:?}");
    }
}
