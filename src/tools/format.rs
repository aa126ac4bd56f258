//! How tools and calls look to the model. voxd's own format: the tools as compact
//! signatures in the system text, a call as a bare JSON object `{"name": ...,
//! "arguments": {...}}`, a result as "Result of tool: ...". Or the model family's own,
//! where its chat template defines one — Hermes-style `<tool_call>` (Qwen 2.5 and
//! Qwen2.5-Coder, SmolLM3, Hermes): the tools as JSON schemas inside `<tools>`, each
//! call wrapped in `<tool_call>` tags, each result in `<tool_response>` — the text the
//! model was trained to call tools in. `[tools] call_format` chooses ("native": the
//! model's own where it has one); docs/tools-homes.md has what each scores.
//!
//! Only the framing differs: the rules, the devices, the example turns and the
//! grammar's JSON are the same in both, so the evaluation compares formats alone.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallFormat {
    /// voxd's own: what every model gets unless its template has a format of its own.
    Json,
    /// `<tool_call>{...}</tool_call>`, tools in `<tools>`, results in `<tool_response>`.
    Hermes,
}

/// The tag pair that frames a Hermes call. Qwen's vocabulary has each as one token.
const CALL_OPEN: &str = "<tool_call>";
const CALL_CLOSE: &str = "</tool_call>";

impl CallFormat {
    /// `[tools] call_format` ("json" or "native") for a model whose chat template is
    /// `template`: "native" is the model's own format where its template calls tools
    /// in one voxd speaks, else voxd's JSON.
    pub fn resolve(setting: &str, template: Option<&str>) -> CallFormat {
        match (setting, template) {
            ("native", Some(t)) if t.contains(CALL_OPEN) => CallFormat::Hermes,
            _ => CallFormat::Json,
        }
    }

    /// `[tools] call_format` for the loaded model.
    pub fn of(style: &super::ToolsConfig, llm: &crate::engine::llm::Llm) -> CallFormat {
        CallFormat::resolve(&style.call_format, llm.chat_template_text())
    }

    /// As logs and reports name it.
    pub fn name(self) -> &'static str {
        match self {
            CallFormat::Json => "json",
            CallFormat::Hermes => "hermes",
        }
    }

    /// A call as the assistant writes it (in example turns and the history).
    pub fn call_text(self, name: &str, arguments: &Value) -> String {
        self.framed(&serde_json::json!({ "name": name, "arguments": arguments }).to_string())
    }

    /// A call's JSON (or what the model wrote for one) framed as this format frames it.
    pub fn framed(self, json: &str) -> String {
        match self {
            CallFormat::Json => json.to_string(),
            CallFormat::Hermes => format!("{CALL_OPEN}\n{}\n{CALL_CLOSE}", call_json(json)),
        }
    }

    /// What a call came to, as the (user) message after it. (Qwen's template renders
    /// a tool message so: a user turn holding `<tool_response>`.)
    pub fn result_text(self, name: &str, result: &str) -> String {
        let said = format!("Result of {name}: {result}.");
        match self {
            CallFormat::Json => said,
            CallFormat::Hermes => format!("<tool_response>\n{said}\n</tool_response>"),
        }
    }

    /// The grammar rule `voxd-call`, around `voxd-json` (one call's JSON object). The
    /// Hermes tags are optional: Qwen2.5-Coder, shown them in the system text and in
    /// every example, still answers with the bare object most of the time, and a
    /// grammar that insists on them turns its calls into words (0 % of the mqtt-only
    /// home's calls, against 100 % with them optional).
    pub fn call_rule(self) -> String {
        match self {
            CallFormat::Json => "voxd-call ::= voxd-json".to_string(),
            CallFormat::Hermes => format!("voxd-call ::= (\"{CALL_OPEN}\" [\\n]?)? voxd-json ([\\n]? \"{CALL_CLOSE}\")?"),
        }
    }
}

/// The JSON object of a call written in either format. (The tags may be missing from
/// the text: a vocabulary may hold them as special tokens that decode to nothing.)
pub fn call_json(text: &str) -> &str {
    let t = text.trim();
    let t = t.strip_prefix(CALL_OPEN).unwrap_or(t);
    t.strip_suffix(CALL_CLOSE).unwrap_or(t).trim()
}

/// Does a reply that begins so begin a call? A JSON object, or the opening tag — or
/// the start of it, as the first token of a tag spelled out ("<", "tool").
pub fn begins_call(text: &str) -> bool {
    let t = text.trim_start();
    t.starts_with('{') || t.starts_with(CALL_OPEN) || (!t.is_empty() && CALL_OPEN.starts_with(t))
}

/// The tools section of a Hermes system message, as Qwen 2.5's template writes it:
/// each tool's schema (its description carrying the devices it may touch).
pub fn hermes_tools(tools: &[(String, String, Value)]) -> String {
    let mut out = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for (name, description, parameters) in tools {
        let function = serde_json::json!({ "type": "function", "function": { "name": name, "description": description, "parameters": parameters } });
        out.push('\n');
        out.push_str(&function.to_string());
    }
    out.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and arguments \
         within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_is_the_template_s_own_format_where_it_has_one() {
        let qwen = "{%- if tools %}...<tool_call>\\n{\"name\": <function-name>...";
        assert_eq!(CallFormat::resolve("native", Some(qwen)), CallFormat::Hermes);
        assert_eq!(CallFormat::resolve("json", Some(qwen)), CallFormat::Json);
        assert_eq!(CallFormat::resolve("native", Some("{% for message in messages %}<|im_start|>")), CallFormat::Json, "no tools in the template");
        assert_eq!(CallFormat::resolve("native", None), CallFormat::Json);
    }

    #[test]
    fn a_call_reads_the_same_with_or_without_its_tags() {
        let args = serde_json::json!({ "entity_id": "light.kitchen" });
        let written = CallFormat::Hermes.call_text("light_on", &args);
        assert!(written.starts_with("<tool_call>\n{") && written.ends_with("}\n</tool_call>"), "{written}");
        let bare = CallFormat::Json.call_text("light_on", &args);
        assert_eq!(call_json(&written), bare);
        assert_eq!(call_json(&bare), bare);
        // The tags as special tokens that decode to nothing: only the newlines are left.
        assert_eq!(call_json(&format!("\n{bare}\n")), bare);
    }

    #[test]
    fn a_reply_begins_a_call_with_a_brace_or_the_opening_tag() {
        for call in ["{\"name\"", " <tool_call>", "<", "<tool", "<tool_call>\n{"] {
            assert!(begins_call(call), "{call:?}");
        }
        for answer in ["The light is on.", "", "<b>", "tool_call"] {
            assert!(!begins_call(answer), "{answer:?}");
        }
    }
}
