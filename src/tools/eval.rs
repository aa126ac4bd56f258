//! `voxd eval-tools`: how well the configured model calls tools, on fixed sets of
//! spoken-style requests with known answers, each in a home of its own: the home
//! the prompt was tuned on (`tests/data/tools-eval.toml`, with hand-written
//! examples), the same home without them, and held-out homes nobody tuned on
//! (`tests/data/homes/`: other tool names and phrasings with tiny.en's mishearings,
//! an MQTT-only home, a 62-entity home from a Home Assistant `/api/states` dump).
//! Each set brings its own tools, so results compare across models; the
//! model-selection benchmark gates on the worst home, not the best.
//!
//! Scored as voxd runs: a call found inside words is made (not spoken), a value out
//! of a parameter's range is the user's and is answered with the range. Counted
//! besides accuracy: answers about a device's state that no read backs ("invented
//! states"), and answers whose spoken words carry a call or a tool's name ("leaks").

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{looks_like_call, parse_call, ToolConfig};
use crate::engine::llm::{Grammar, Llm, LlmError, Message, Role};

/// The evaluation set shipped with voxd: the home the prompt was tuned on.
pub const BUILTIN: &str = include_str!("../../tests/data/tools-eval.toml");

/// The held-out homes, shipped too: (name, set, `/api/states` dump it names).
const HELD_OUT: [(&str, &str, Option<(&str, &str)>); 3] = [
    ("renamed", include_str!("../../tests/data/homes/renamed.toml"), None),
    ("mqtt-only", include_str!("../../tests/data/homes/mqtt.toml"), None),
    ("62-entities", include_str!("../../tests/data/homes/big.toml"), Some(("big-states.json", include_str!("../../tests/data/homes/big-states.json")))),
];

/// Every home: the tuned one, the same without its hand-written examples, and the
/// held-out ones.
pub fn homes() -> anyhow::Result<Vec<(String, EvalSet)>> {
    let tuned = EvalSet::parse(BUILTIN, Path::new("tests/data/tools-eval.toml"))?;
    let mut bare = tuned.clone();
    for t in &mut bare.tools {
        t.examples = Value::Array(Vec::new());
    }
    let mut out = vec![("tuned".to_string(), tuned), ("no-examples".to_string(), bare)];
    for (name, text, dump) in HELD_OUT {
        let mut set = EvalSet::parse(text, Path::new(&format!("tests/data/homes/{name}.toml")))?;
        if let Some((file, json)) = dump {
            let states: Value = serde_json::from_str(json).with_context(|| format!("reading tests/data/homes/{file}"))?;
            set.home = super::home_assistant::exposed(super::home_assistant::entities_in(&states), &set.expose);
        }
        out.push((name.to_string(), set));
    }
    Ok(out)
}

/// A quick pass (`--quick`, for tests): every fifth request of each home, a different
/// fifth in each, so that together they still cover every kind of request.
pub fn quick(homes: Vec<(String, EvalSet)>) -> Vec<(String, EvalSet)> {
    const EVERY: usize = 5;
    homes
        .into_iter()
        .enumerate()
        .map(|(h, (name, mut set))| {
            set.cases = set.cases.into_iter().enumerate().filter(|(i, _)| i % EVERY == h % EVERY).map(|(_, c)| c).collect();
            (name, set)
        })
        .collect()
}

/// One request and what should come of it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub say: String,
    pub category: String,
    pub expect: Expect,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Expect {
    /// A call of this tool with exactly these arguments.
    Call { name: String, arguments: serde_json::Map<String, Value> },
    /// "none": a spoken answer, no call. "no_action": nothing may run — an answer, or
    /// a call the allow-list refuses (requests for devices voxd may not touch).
    Word(String),
}

/// An evaluation set: its tools (as `[[tool]]` in voxd.toml), fast-path intents for
/// the commonest of them (`voxd bench-tools`), its cases, and the home's devices
/// beyond what the tools name (from an `/api/states` dump, as `expose` would fetch).
#[derive(Clone)]
pub struct EvalSet {
    pub tools: Vec<ToolConfig>,
    pub intents: Vec<crate::config::IntentConfig>,
    pub cases: Vec<Case>,
    pub home: super::Home,
    /// `[home_assistant] expose` of the set.
    pub expose: Vec<String>,
}

impl EvalSet {
    pub fn parse(text: &str, path: &Path) -> anyhow::Result<EvalSet> {
        #[derive(Deserialize)]
        struct Cases {
            case: Vec<Case>,
        }
        let config = crate::config::Config::parse_with(text, path, &["case", "home"])?;
        let cases: Cases = toml::from_str(text).with_context(|| format!("reading the [[case]]s of {}", path.display()))?;
        for (i, c) in cases.case.iter().enumerate() {
            match &c.expect {
                Expect::Word(w) if w != "none" && w != "no_action" => anyhow::bail!("{}: case {i} ({:?}): expect = {w:?}; expected \"none\", \"no_action\" or {{ name = ..., arguments = {{ ... }} }}", path.display(), c.say),
                Expect::Call { name, .. } if !config.tool.iter().any(|t| &t.name == name) => anyhow::bail!("{}: case {i} ({:?}) expects a call of {name:?}, which is not a [[tool]]", path.display(), c.say),
                _ => {}
            }
        }
        Ok(EvalSet { tools: config.tool, intents: config.intent, cases: cases.case, home: super::Home::default(), expose: config.home_assistant.expose })
    }
}

/// What the model did with one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub say: String,
    pub category: String,
    pub output: String,
    /// The output was a call (began with '{', or carried one inside its words).
    pub called: bool,
    /// Answered in words about a device's state, with no read behind them.
    #[serde(default)]
    pub invented_state: bool,
    /// The words that would be spoken carry a call or a tool's name.
    #[serde(default)]
    pub leaked: bool,
    /// A generated intent took the case before the model (and was right, or not).
    #[serde(default)]
    pub intent: Option<bool>,
    /// ... and a valid one (JSON, a known tool, arguments matching its schema).
    pub valid: bool,
    pub correct: bool,
    pub ms: f64,
}

/// The figures `voxd eval-tools` prints and `voxd select` gates on.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub model: String,
    pub grammar: bool,
    /// How calls were put to the model (`[tools] call_format`, as the model resolved it).
    pub call_format: &'static str,
    pub cases: usize,
    pub correct: usize,
    /// Correct cases among those expecting a call.
    pub call_accuracy: f64,
    pub accuracy: f64,
    /// Valid calls among outputs that were calls.
    pub valid_rate: f64,
    /// Of the answers given instead of a call, the share where no call was wanted.
    pub no_tool_precision: f64,
    pub by_category: BTreeMap<String, (usize, usize)>,
    /// Answers that state a device's state with no read behind them.
    pub invented_states: usize,
    /// Answers whose spoken words carry a call or a tool's name.
    pub leaks: usize,
    /// Cases a generated intent takes before the model, and those it gets right; and
    /// the accuracy of intents first, then the model (what voxd does).
    pub intent_cases: usize,
    pub intent_correct: usize,
    pub accuracy_with_intents: f64,
    pub p50_ms: f64,
    pub results: Vec<CaseResult>,
}

/// Runs every case on `llm` after `preamble` (each a fresh one-question conversation;
/// the preamble, written in `format`, stays cached), with or without the tools grammar.
fn run(llm: &Llm, preamble: &[Message], set: &EvalSet, grammar: Option<&Grammar>, hints: bool, format: super::CallFormat, mut progress: impl FnMut(usize, &CaseResult)) -> anyhow::Result<Report> {
    let mut session = llm.session()?;
    let intents = super::intents::Intents::new(&[])?.with_generated(&set.tools, &set.home);
    let mut results = Vec::new();
    for (i, case) in set.cases.iter().enumerate() {
        let started = Instant::now();
        let mut messages = preamble.to_vec();
        let asked = super::grounding::asked(&case.say, &set.tools, &set.home, hints);
        messages.push(Message { role: Role::User, content: asked });
        // A home too big for the model's context: each of its cases fails, saying so.
        let (output, fits) = match session.generate(&messages, grammar, |_| true) {
            Ok(g) => (g.text.trim().to_string(), true),
            Err(e @ LlmError::PromptTooLong { .. }) => (format!("({e})"), false),
            Err(e) => return Err(e.into()),
        };
        // As the llm stage does: a call at the start, or one inside the words, is made;
        // the words before a '{' are all that is spoken.
        let call_text = if looks_like_call(&output) { Some(output.clone()) } else { super::call_in(&output, &set.tools) };
        let called = call_text.is_some() || looks_like_call(&output);
        let spoken = if called && call_text.as_deref() == Some(output.as_str()) { String::new() } else { output.split('{').next().unwrap_or("").trim().to_string() };
        // A value out of range is still the call the user asked for (voxd answers it
        // with the range, and does nothing): scored as that call.
        let parsed = parse_scored(call_text.as_deref(), &set.tools);
        // (A prompt that did not fit says nothing about the home: failed, not invented.)
        let invented_state = fits && !called && case.category == "state" && invents_state(&spoken);
        let leaked = leaks(&spoken, &set.tools);
        let correct = fits && !leaked && scores(case, parsed.as_ref(), called, invented_state);
        // What the home's generated intents would have done before the model was asked.
        let intent = intents.call(&case.say, &set.tools).map(|call| {
            let text = serde_json::json!({ "name": call.name, "arguments": call.arguments }).to_string();
            scores(case, parse_scored(Some(&text), &set.tools).as_ref(), true, false)
        });
        let r = CaseResult { say: case.say.clone(), category: case.category.clone(), output, called, invented_state, leaked, intent, valid: parsed.is_some(), correct, ms: started.elapsed().as_secs_f64() * 1000.0 };
        progress(i, &r);
        results.push(r);
    }
    Ok(summarize(llm.model_id.clone(), grammar.is_some(), format, &set.cases, results))
}

/// A call as voxd would take it: a value out of range is still the call the user
/// asked for (voxd answers it with the range, and does nothing), so it is scored as
/// that call, marked out of range.
fn parse_scored<'t>(call_text: Option<&str>, tools: &'t [ToolConfig]) -> Option<(super::ToolCall, &'t ToolConfig, bool)> {
    match parse_call(call_text?, tools) {
        Ok((call, tool)) => Some((call, tool, true)),
        Err(super::Rejected::OutOfRange { call, tool, .. }) => tools.iter().find(|t| t.name == tool).map(|tool| (call, tool, false)),
        Err(_) => None,
    }
}

/// Whether what came of a case is what it expects.
fn scores(case: &Case, parsed: Option<&(super::ToolCall, &ToolConfig, bool)>, called: bool, invented_state: bool) -> bool {
    match (&case.expect, parsed) {
        (Expect::Call { name, arguments }, Some((call, _, _))) => &call.name == name && same_arguments(arguments, &call.arguments),
        (Expect::Call { .. }, None) => false,
        (Expect::Word(w), _) if w == "none" => !called && !invented_state,
        // no_action: an answer, or a call that voxd would refuse (out of range, not
        // allowed, the opposite of what was asked).
        (Expect::Word(_), Some((call, tool, in_range))) => !in_range || tool.permits(call).is_err() || tool.contradicts(&case.say),
        (Expect::Word(_), None) => !called && !invented_state,
    }
}

/// Does an answer say how a device is — "The front door is locked.", "It's 21
/// degrees in the living room." — rather than that it cannot tell? (Said without a
/// read, that is an invention.)
pub fn invents_state(answer: &str) -> bool {
    let a = super::intents::normalize(answer);
    let words: Vec<&str> = a.split_whitespace().collect();
    // Whole words and phrases: "I checked: it's locked" is no "can't check".
    let padded = format!(" {a} ");
    let unsure = ["can't", "cannot", "can not", "unable", "not able", "don't know", "do not know", "no way to", "not sure", "check", "which"];
    if unsure.iter().any(|u| padded.contains(&format!(" {u} "))) {
        return false;
    }
    const STATES: [&str; 14] = ["on", "off", "open", "closed", "locked", "unlocked", "running", "finished", "done", "idle", "degrees", "percent", "humid", "shut"];
    // "Yes, it is." to "is the light on?" says how the light is as much as "it's on".
    const ANSWERS: [&str; 6] = ["yes", "yeah", "yep", "no", "nope", "nah"];
    words.first().is_some_and(|w| ANSWERS.contains(w)) || words.iter().any(|w| STATES.contains(w)) || words.iter().any(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
}

/// Do the words that would be spoken carry a call or a tool's name?
fn leaks(spoken: &str, tools: &[ToolConfig]) -> bool {
    spoken.contains('{') || spoken.contains("\"arguments\"") || tools.iter().any(|t| t.name.contains('_') && spoken.contains(&t.name))
}

/// Runs a home's cases as voxd would run them with `style` (`[tools]`): the preamble
/// from its tools and devices (examples derived where the tools have none), the
/// grammar, the device hints.
pub fn run_home(llm: &Llm, persona: &str, set: &EvalSet, style: &super::ToolsConfig, progress: impl FnMut(usize, &CaseResult)) -> anyhow::Result<Report> {
    let format = super::CallFormat::of(style, llm);
    let preamble = super::preamble(persona, &set.tools, &set.home, style, format);
    let compiled = if style.grammar { super::grammar(&set.tools, format)?.map(|g| llm.grammar(&g)).transpose()? } else { None };
    run(llm, &preamble, set, compiled.as_ref(), style.device_hints, format, progress)
}

/// Arguments equal key for key (numbers by value: 21 is 21.0).
fn same_arguments(expected: &serde_json::Map<String, Value>, got: &Value) -> bool {
    let Some(got) = got.as_object() else { return false };
    expected.len() == got.len()
        && expected.iter().all(|(k, v)| match (v.as_f64(), got.get(k)) {
            (Some(x), Some(g)) => g.as_f64() == Some(x),
            (None, Some(g)) => g == v,
            _ => false,
        })
}

fn summarize(model: String, grammar: bool, format: super::CallFormat, cases: &[Case], results: Vec<CaseResult>) -> Report {
    let share = |n: usize, d: usize| if d == 0 { 1.0 } else { n as f64 / d as f64 };
    let mut by_category: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for r in &results {
        let e = by_category.entry(r.category.clone()).or_default();
        e.0 += 1;
        e.1 += usize::from(r.correct);
    }
    let expects_call = |i: usize| matches!(cases[i].expect, Expect::Call { .. });
    let calls_wanted = (0..results.len()).filter(|&i| expects_call(i)).count();
    let calls_right = (0..results.len()).filter(|&i| expects_call(i) && results[i].correct).count();
    let called = results.iter().filter(|r| r.called).count();
    let valid = results.iter().filter(|r| r.called && r.valid).count();
    let answered: Vec<usize> = (0..results.len()).filter(|&i| !results[i].called).collect();
    let rightly_answered = answered.iter().filter(|&&i| !expects_call(i)).count();
    let correct = results.iter().filter(|r| r.correct).count();
    let ms: Vec<f64> = results.iter().map(|r| r.ms).collect();
    Report {
        model,
        grammar,
        call_format: format.name(),
        cases: results.len(),
        correct,
        call_accuracy: share(calls_right, calls_wanted),
        accuracy: share(correct, results.len()),
        valid_rate: share(valid, called),
        no_tool_precision: share(rightly_answered, answered.len()),
        by_category,
        invented_states: results.iter().filter(|r| r.invented_state).count(),
        intent_cases: results.iter().filter(|r| r.intent.is_some()).count(),
        intent_correct: results.iter().filter(|r| r.intent == Some(true)).count(),
        accuracy_with_intents: share(results.iter().filter(|r| r.intent.unwrap_or(r.correct)).count(), results.len()),
        leaks: results.iter().filter(|r| r.leaked).count(),
        p50_ms: crate::bench::percentile(&ms, 50.0).unwrap_or(0.0),
        results,
    }
}

/// Every home's report, and the figures the gates take: the worst home's.
#[derive(Debug, Clone, Serialize)]
pub struct Homes {
    pub homes: Vec<(String, Report)>,
    pub worst_call_accuracy: f64,
    pub worst_home: String,
    pub overall_accuracy: f64,
    pub invented_states: usize,
    pub leaks: usize,
}

impl Homes {
    pub fn new(homes: Vec<(String, Report)>) -> Homes {
        let worst = homes.iter().min_by(|a, b| a.1.call_accuracy.total_cmp(&b.1.call_accuracy));
        let (cases, correct) = homes.iter().fold((0, 0), |(n, ok), (_, r)| (n + r.cases, ok + r.correct));
        Homes {
            worst_call_accuracy: worst.map_or(1.0, |(_, r)| r.call_accuracy),
            worst_home: worst.map(|(n, _)| n.clone()).unwrap_or_default(),
            overall_accuracy: if cases == 0 { 1.0 } else { correct as f64 / cases as f64 },
            invented_states: homes.iter().map(|(_, r)| r.invented_states).sum(),
            leaks: homes.iter().map(|(_, r)| r.leaks).sum(),
            homes,
        }
    }

    /// One line a home, then the overall figures and the worst home.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let pct = |x: f64| format!("{:.0} %", 100.0 * x);
        let mut out = String::new();
        let _ = writeln!(out, "{:<12} {:>6} {:>9} {:>10} {:>7} {:>9} {:>9} {:>6} {:>9} {:>12}", "home", "cases", "accuracy", "tool calls", "valid", "no-tool", "invented", "leaks", "intents", "with intents");
        for (name, r) in &self.homes {
            let intents = format!("{}/{}", r.intent_correct, r.intent_cases);
            let _ = writeln!(out, "{:<12} {:>6} {:>9} {:>10} {:>7} {:>9} {:>9} {:>6} {:>9} {:>12}", name, r.cases, pct(r.accuracy), pct(r.call_accuracy), pct(r.valid_rate), pct(r.no_tool_precision), r.invented_states, r.leaks, intents, pct(r.accuracy_with_intents));
        }
        let _ = writeln!(out, "overall accuracy {}; worst home for tool calls: {} ({}); invented states {}, leaks {}", pct(self.overall_accuracy), self.worst_home, pct(self.worst_call_accuracy), self.invented_states, self.leaks);
        out
    }
}

impl Report {
    /// The plain-text table `voxd eval-tools` prints.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let pct = |x: f64| format!("{:.0} %", 100.0 * x);
        let mut out = String::new();
        let _ = writeln!(out, "{:<12} {:>6} {:>8} {:>9}", "category", "cases", "correct", "accuracy");
        for (cat, (n, ok)) in &self.by_category {
            let _ = writeln!(out, "{:<12} {:>6} {:>8} {:>9}", cat, n, ok, pct(*ok as f64 / *n as f64));
        }
        let _ = writeln!(out, "{:<12} {:>6} {:>8} {:>9}", "overall", self.cases, self.correct, pct(self.accuracy));
        let _ = writeln!(out, "\ntool-call accuracy (right tool and arguments): {}", pct(self.call_accuracy));
        let _ = writeln!(out, "valid structured output (calls that parse and fit their schema): {}", pct(self.valid_rate));
        let _ = writeln!(out, "\"no tool\" precision (answers given when no call was wanted): {}", pct(self.no_tool_precision));
        let _ = writeln!(out, "invented states (a device's state said with no read): {}", self.invented_states);
        let _ = writeln!(out, "leaks (a call or a tool's name in the spoken words): {}", self.leaks);
        let _ = writeln!(out, "generated intents: take {} of {} requests before the model, {} of them right; intents then model: {}", self.intent_cases, self.cases, self.intent_correct, pct(self.accuracy_with_intents));
        let _ = writeln!(out, "time to decision: p50 {:.0} ms", self.p50_ms);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_set_is_valid_and_large_enough() {
        let set = EvalSet::parse(BUILTIN, Path::new("tools-eval.toml")).unwrap();
        assert!(set.cases.len() >= 40, "{} cases", set.cases.len());
        let categories: std::collections::BTreeSet<&str> = set.cases.iter().map(|c| c.category.as_str()).collect();
        for c in ["lights", "climate", "covers", "locks", "scenes", "state", "chitchat", "ambiguous", "unsafe"] {
            assert!(categories.contains(c), "no {c} cases");
        }
    }

    #[test]
    fn every_home_is_valid_and_its_expected_calls_allowed() {
        let homes = homes().unwrap();
        assert!(homes.len() >= 5);
        for (name, set) in &homes {
            assert!(set.cases.len() >= 15, "{name}: {} cases", set.cases.len());
            for c in &set.cases {
                if let Expect::Call { name: tool, arguments } = &c.expect {
                    let text = serde_json::json!({ "name": tool, "arguments": arguments }).to_string();
                    // A value out of range is expected as said (voxd answers it).
                    let (call, tool) = match parse_call(&text, &set.tools) {
                        Ok(ok) => ok,
                        Err(super::super::Rejected::OutOfRange { call, tool, .. }) => (call, set.tools.iter().find(|t| t.name == tool).unwrap()),
                        Err(e) => panic!("{name}: {:?}: {e}", c.say),
                    };
                    assert_eq!(tool.permits(&call), Ok(()), "{name}: {:?}", c.say);
                }
            }
        }
        let big = &homes.iter().find(|(n, _)| n == "62-entities").unwrap().1;
        assert!(big.home.entities.len() >= 40 && big.home.names.get("light.lr_lamp_1").map(String::as_str) == Some("Reading Lamp"), "{:?}", big.home.entities.len());
        assert!(!big.home.entities.iter().any(|e| e.starts_with("person.")), "only what expose names");
    }

    #[test]
    fn an_answer_about_a_state_without_a_read_is_an_invention() {
        assert!(invents_state("The front door is locked."));
        assert!(invents_state("It's 21 degrees in the living room."));
        assert!(invents_state("Yes, the porch light is on."));
        assert!(!invents_state("Sorry, I can't check that."));
        assert!(!invents_state("I don't know whether it is locked."));
        assert!(!invents_state("Which light do you mean?"));
        assert!(invents_state("Yes, it is."));
        assert!(invents_state("I checked: it's locked."));
        assert!(!invents_state("No, I can't check that."));
        let tools = [ToolConfig { name: "light_turn_on".into(), ..ToolConfig::default() }];
        assert!(leaks("To do it, use light_turn_on with the kitchen", &tools));
        assert!(!leaks("The kitchen light is on now.", &tools));
    }

    #[test]
    fn arguments_compare_by_value() {
        let expected = serde_json::json!({ "entity_id": "climate.bedroom", "temperature": 21 });
        let expected = expected.as_object().unwrap();
        assert!(same_arguments(expected, &serde_json::json!({ "temperature": 21.0, "entity_id": "climate.bedroom" })));
        assert!(!same_arguments(expected, &serde_json::json!({ "entity_id": "climate.bedroom", "temperature": 22 })));
        assert!(!same_arguments(expected, &serde_json::json!({ "entity_id": "climate.bedroom", "temperature": 21, "hvac_mode": "heat" })), "an invented argument is wrong");
    }
}
