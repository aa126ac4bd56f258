//! The part of JSON Schema that tool parameters use: an object of typed properties
//! (string, number, integer, boolean), enums, numeric bounds, required keys. Checked
//! when the config is loaded (a schema voxd cannot enforce is an error, not a hope),
//! and used to validate every call before it runs — the grammar makes calls
//! well-formed, this makes sure they are right.

use serde_json::{Map, Value};

/// What is wrong with a schema (at config load) or a value (at call time), with the
/// dotted path of the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct Invalid {
    pub path: String,
    pub message: String,
    /// A value outside what its parameter allows (a bound, an enum): what would be
    /// right, in words ("between 10 and 30", "low or high"). Such a value is what the
    /// user asked for, so it is answered, never repaired into another value.
    pub allowed: Option<String>,
}

fn invalid(path: &str, message: impl Into<String>) -> Invalid {
    Invalid { path: path.to_string(), message: message.into(), allowed: None }
}

impl Invalid {
    /// The parameter a value problem is about ("temperature" for
    /// "arguments.temperature").
    pub fn parameter(&self) -> &str {
        self.path.strip_prefix("arguments.").unwrap_or(&self.path)
    }
}

/// Values as a list said aloud: "low, medium or high".
fn spoken_list(values: &[Value]) -> String {
    let words: Vec<String> = values.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).collect();
    match words.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => words.concat(),
    }
}

const TYPES: [&str; 5] = ["object", "string", "number", "integer", "boolean"];
const KEYWORDS: [&str; 8] = ["type", "description", "properties", "required", "enum", "minimum", "maximum", "additionalProperties"];

/// Checks that `schema` is a parameters schema voxd can enforce: an object whose
/// properties are scalars. Returns every problem.
pub fn check_parameters(schema: &Value) -> Vec<Invalid> {
    let mut problems = Vec::new();
    let Some(obj) = schema.as_object() else {
        return vec![invalid("parameters", "expected a table: { type = \"object\", properties = { ... }, required = [...] }")];
    };
    check_keywords(obj, "parameters", &mut problems);
    if obj.get("type").and_then(Value::as_str) != Some("object") {
        problems.push(invalid("parameters.type", "expected \"object\" (tool arguments are named)"));
    }
    let empty = Map::new();
    let properties = match obj.get("properties") {
        None => &empty,
        Some(Value::Object(p)) => p,
        Some(_) => {
            problems.push(invalid("parameters.properties", "expected a table of parameter schemas"));
            &empty
        }
    };
    for (name, prop) in properties {
        let path = format!("parameters.properties.{name}");
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || name.is_empty() {
            problems.push(invalid(&path, "parameter names are letters, digits and '_'"));
        }
        check_property(prop, &path, &mut problems);
    }
    match obj.get("required") {
        None => {}
        Some(Value::Array(names)) => {
            for n in names {
                match n.as_str() {
                    Some(n) if properties.contains_key(n) => {}
                    Some(n) => problems.push(invalid("parameters.required", format!("{n:?} is not among the properties"))),
                    None => problems.push(invalid("parameters.required", format!("{n} is not a property name"))),
                }
            }
        }
        Some(_) => problems.push(invalid("parameters.required", "expected a list of property names")),
    }
    if obj.get("additionalProperties").is_some_and(|v| v != &Value::Bool(false)) {
        problems.push(invalid("parameters.additionalProperties", "only false is supported: a call may carry only the declared parameters"));
    }
    problems
}

fn check_keywords(obj: &Map<String, Value>, path: &str, problems: &mut Vec<Invalid>) {
    for k in obj.keys() {
        if !KEYWORDS.contains(&k.as_str()) {
            problems.push(invalid(&format!("{path}.{k}"), format!("unsupported schema keyword; voxd understands: {}", KEYWORDS.join(", "))));
        }
    }
}

fn check_property(prop: &Value, path: &str, problems: &mut Vec<Invalid>) {
    let Some(obj) = prop.as_object() else {
        problems.push(invalid(path, "expected a table such as { type = \"string\", description = \"...\" }"));
        return;
    };
    check_keywords(obj, path, problems);
    let ty = obj.get("type").and_then(Value::as_str);
    match ty {
        Some("object") => problems.push(invalid(&format!("{path}.type"), "nested objects are not supported: flatten the parameter")),
        Some(t) if TYPES.contains(&t) => {}
        _ => problems.push(invalid(&format!("{path}.type"), "expected one of \"string\", \"number\", \"integer\", \"boolean\"")),
    }
    if let Some(values) = obj.get("enum") {
        match values.as_array() {
            Some(vs) if !vs.is_empty() => {
                for v in vs {
                    if let Err(e) = check_scalar(ty.unwrap_or("string"), v, &format!("{path}.enum")) {
                        problems.push(e);
                    }
                }
            }
            _ => problems.push(invalid(&format!("{path}.enum"), "expected a non-empty list of allowed values")),
        }
    }
    for bound in ["minimum", "maximum"] {
        if let Some(b) = obj.get(bound) {
            if !matches!(ty, Some("number" | "integer")) || !b.is_number() {
                problems.push(invalid(&format!("{path}.{bound}"), "a number, on number or integer parameters only"));
            }
        }
    }
}

fn check_scalar(ty: &str, v: &Value, path: &str) -> Result<(), Invalid> {
    let ok = match ty {
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.as_i64().is_some() || v.as_u64().is_some(),
        "boolean" => v.is_boolean(),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(path, format!("{v} is not a{} {ty}", if ty.starts_with(['a', 'e', 'i', 'o', 'u']) { "n" } else { "" })))
    }
}

/// Validates a call's arguments against its (checked) parameters schema. Returns the
/// first problem, phrased so a model can fix it.
pub fn validate(schema: &Value, arguments: &Value) -> Result<(), Invalid> {
    let Some(args) = arguments.as_object() else {
        return Err(invalid("arguments", format!("expected an object of named arguments, got {arguments}")));
    };
    let empty = Map::new();
    let properties = schema.get("properties").and_then(Value::as_object).unwrap_or(&empty);
    for required in schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
        if !args.contains_key(required) {
            return Err(invalid(&format!("arguments.{required}"), "is required"));
        }
    }
    for (name, value) in args {
        let path = format!("arguments.{name}");
        let Some(prop) = properties.get(name) else {
            let known: Vec<&str> = properties.keys().map(String::as_str).collect();
            return Err(invalid(&path, format!("unknown argument; expected one of: {}", known.join(", "))));
        };
        let ty = prop.get("type").and_then(Value::as_str).unwrap_or("string");
        check_scalar(ty, value, &path)?;
        if let Some(allowed) = prop.get("enum").and_then(Value::as_array) {
            if !allowed.contains(value) {
                let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
                return Err(Invalid { allowed: Some(spoken_list(allowed)), ..invalid(&path, format!("{value} is not one of {}", list.join(", "))) });
            }
        }
        if let Some(x) = value.as_f64() {
            let (min, max) = (prop.get("minimum").and_then(Value::as_f64), prop.get("maximum").and_then(Value::as_f64));
            let range = match (min, max) {
                (Some(a), Some(b)) => format!("between {a} and {b}"),
                (Some(a), None) => format!("{a} or more"),
                (None, Some(b)) => format!("{b} or less"),
                (None, None) => String::new(),
            };
            if let Some(min) = min.filter(|m| x < *m) {
                return Err(Invalid { allowed: Some(range), ..invalid(&path, format!("{value} is below the minimum {min}")) });
            }
            if let Some(max) = max.filter(|m| x > *m) {
                return Err(Invalid { allowed: Some(range), ..invalid(&path, format!("{value} is above the maximum {max}")) });
            }
        }
    }
    Ok(())
}

/// The schema of a whole call `{"name": NAME, "arguments": {...}}` for one tool, in the
/// form llama.cpp's JSON-schema-to-grammar converter takes. Numbers are left free of
/// their bounds: a grammar that knows the thermostat stops at 30 turns "95 degrees"
/// into some number it allows, and the thermostat is set to what nobody asked for.
/// The bounds are checked on the call instead, and a value outside them answered.
pub fn call_schema(name: &str, parameters: &Value) -> Value {
    let mut arguments = parameters.clone();
    if let Some(obj) = arguments.as_object_mut() {
        obj.insert("additionalProperties".into(), Value::Bool(false));
        obj.entry("properties").or_insert_with(|| Value::Object(Map::new()));
        // Descriptions steer the model through the prompt; the grammar needs none.
        strip_descriptions(obj);
        if let Some(Value::Object(props)) = obj.get_mut("properties") {
            for p in props.values_mut().filter_map(Value::as_object_mut) {
                p.remove("minimum");
                p.remove("maximum");
            }
        }
    }
    serde_json::json!({
        "type": "object",
        "properties": { "name": { "const": name }, "arguments": arguments },
        "required": ["name", "arguments"],
        "additionalProperties": false
    })
}

fn strip_descriptions(obj: &mut Map<String, Value>) {
    obj.remove("description");
    if let Some(Value::Object(props)) = obj.get_mut("properties") {
        for p in props.values_mut() {
            if let Some(p) = p.as_object_mut() {
                p.remove("description");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn light() -> Value {
        json!({
            "type": "object",
            "properties": {
                "entity_id": { "type": "string", "description": "the light" },
                "brightness_pct": { "type": "integer", "minimum": 1, "maximum": 100 },
                "mode": { "type": "string", "enum": ["warm", "cold"] }
            },
            "required": ["entity_id"]
        })
    }

    #[test]
    fn a_supported_schema_has_no_problems() {
        assert_eq!(check_parameters(&light()), vec![]);
        assert_eq!(check_parameters(&json!({ "type": "object" })), vec![], "a tool without parameters");
    }

    #[test]
    fn every_schema_problem_is_named() {
        let bad = json!({
            "type": "object",
            "properties": {
                "a": { "type": "object" },
                "b": { "type": "string", "enum": [1] },
                "c": { "type": "string", "minimum": 3 },
                "d": { "type": "strin" },
                "e": { "type": "string", "pattern": "x" }
            },
            "required": ["a", "zzz"]
        });
        let paths: Vec<String> = check_parameters(&bad).into_iter().map(|p| p.path).collect();
        for p in ["parameters.properties.a.type", "parameters.properties.b.enum", "parameters.properties.c.minimum", "parameters.properties.d.type", "parameters.properties.e.pattern", "parameters.required"] {
            assert!(paths.contains(&p.to_string()), "{p} not in {paths:?}");
        }
    }

    #[test]
    fn arguments_are_validated_with_a_reason_a_model_can_act_on() {
        let s = light();
        assert_eq!(validate(&s, &json!({ "entity_id": "light.kitchen", "brightness_pct": 40 })), Ok(()));
        let err = |v: Value| validate(&s, &v).unwrap_err().to_string();
        assert_eq!(err(json!({})), "arguments.entity_id: is required");
        assert_eq!(err(json!({ "entity_id": "l", "brightness_pct": 150 })), "arguments.brightness_pct: 150 is above the maximum 100");
        assert_eq!(err(json!({ "entity_id": "l", "brightness_pct": 4.5 })), "arguments.brightness_pct: 4.5 is not an integer");
        assert_eq!(err(json!({ "entity_id": "l", "mode": "hot" })), "arguments.mode: \"hot\" is not one of \"warm\", \"cold\"");
        assert_eq!(err(json!({ "entity_id": "l", "colour": "red" })), "arguments.colour: unknown argument; expected one of: entity_id, brightness_pct, mode");
        assert_eq!(err(json!("light.kitchen")), "arguments: expected an object of named arguments, got \"light.kitchen\"");
    }

    #[test]
    fn the_call_schema_fixes_the_name_and_closes_the_arguments() {
        let c = call_schema("light_turn_on", &light());
        assert_eq!(c["properties"]["name"]["const"], "light_turn_on");
        assert_eq!(c["properties"]["arguments"]["additionalProperties"], false);
        assert!(c["properties"]["arguments"]["properties"]["entity_id"].get("description").is_none());
        assert!(c["properties"]["arguments"]["properties"]["brightness_pct"].get("maximum").is_none(), "the grammar must not pick another number for the user");
    }

    #[test]
    fn a_value_out_of_bounds_says_what_is_allowed() {
        let s = light();
        let e = validate(&s, &json!({ "entity_id": "l", "brightness_pct": 150 })).unwrap_err();
        assert_eq!((e.parameter(), e.allowed.as_deref()), ("brightness_pct", Some("between 1 and 100")));
        let e = validate(&s, &json!({ "entity_id": "l", "mode": "hot" })).unwrap_err();
        assert_eq!(e.allowed.as_deref(), Some("warm or cold"));
        assert_eq!(validate(&s, &json!({})).unwrap_err().allowed, None, "a missing argument is the model's to fix");
    }
}
