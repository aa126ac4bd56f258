//! `voxd eval-tools`: how well the configured model calls tools, on a fixed set of
//! spoken-style requests with known answers (`tests/data/tools-eval.toml`, built in).
//! The set brings its own tools, so results compare across models and configs; the
//! model-selection benchmark uses the same figures as quality gates.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{looks_like_call, parse_call, ToolConfig};
use crate::engine::llm::{Grammar, Llm, Message, Role};

/// The evaluation set shipped with voxd.
pub const BUILTIN: &str = include_str!("../../tests/data/tools-eval.toml");

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
/// the commonest of them (`voxd bench-tools`), and its cases.
pub struct EvalSet {
    pub tools: Vec<ToolConfig>,
    pub intents: Vec<crate::config::IntentConfig>,
    pub cases: Vec<Case>,
}

impl EvalSet {
    pub fn parse(text: &str, path: &Path) -> anyhow::Result<EvalSet> {
        #[derive(Deserialize)]
        struct Cases {
            case: Vec<Case>,
        }
        let config = crate::config::Config::parse_with(text, path, &["case"])?;
        let cases: Cases = toml::from_str(text).with_context(|| format!("reading the [[case]]s of {}", path.display()))?;
        for (i, c) in cases.case.iter().enumerate() {
            match &c.expect {
                Expect::Word(w) if w != "none" && w != "no_action" => anyhow::bail!("{}: case {i} ({:?}): expect = {w:?}; expected \"none\", \"no_action\" or {{ name = ..., arguments = {{ ... }} }}", path.display(), c.say),
                Expect::Call { name, .. } if !config.tool.iter().any(|t| &t.name == name) => anyhow::bail!("{}: case {i} ({:?}) expects a call of {name:?}, which is not a [[tool]]", path.display(), c.say),
                _ => {}
            }
        }
        Ok(EvalSet { tools: config.tool, intents: config.intent, cases: cases.case })
    }
}

/// What the model did with one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub say: String,
    pub category: String,
    pub output: String,
    /// The output was a call (began with '{').
    pub called: bool,
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
    pub p50_ms: f64,
    pub results: Vec<CaseResult>,
}

/// Runs every case on `llm` after `preamble` (each a fresh one-question conversation;
/// the preamble stays cached), with or without the tools grammar.
pub fn run(llm: &Llm, preamble: &[Message], set: &EvalSet, grammar: Option<&Grammar>, mut progress: impl FnMut(usize, &CaseResult)) -> anyhow::Result<Report> {
    let mut session = llm.session()?;
    let mut results = Vec::new();
    for (i, case) in set.cases.iter().enumerate() {
        let started = Instant::now();
        let mut messages = preamble.to_vec();
        messages.push(Message { role: Role::User, content: case.say.clone() });
        let g = session.generate(&messages, grammar, |_| true)?;
        let output = g.text.trim().to_string();
        let called = looks_like_call(&output);
        let parsed = parse_call(&output, &set.tools).ok();
        let correct = match (&case.expect, &parsed) {
            (Expect::Call { name, arguments }, Some((call, _))) => &call.name == name && same_arguments(arguments, &call.arguments),
            (Expect::Call { .. }, None) => false,
            (Expect::Word(w), _) if w == "none" => !called,
            // no_action: an answer, or a call that would be refused.
            (Expect::Word(_), Some((call, tool))) => tool.permits(call).is_err(),
            (Expect::Word(_), None) => !called,
        };
        let r = CaseResult { say: case.say.clone(), category: case.category.clone(), output, called, valid: parsed.is_some(), correct, ms: started.elapsed().as_secs_f64() * 1000.0 };
        progress(i, &r);
        results.push(r);
    }
    Ok(summarize(llm.model_id.clone(), grammar.is_some(), &set.cases, results))
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

fn summarize(model: String, grammar: bool, cases: &[Case], results: Vec<CaseResult>) -> Report {
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
        cases: results.len(),
        correct,
        call_accuracy: share(calls_right, calls_wanted),
        accuracy: share(correct, results.len()),
        valid_rate: share(valid, called),
        no_tool_precision: share(rightly_answered, answered.len()),
        by_category,
        p50_ms: crate::bench::percentile(&ms, 50.0).unwrap_or(0.0),
        results,
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
        // Expected calls are themselves valid and allowed.
        for c in &set.cases {
            if let Expect::Call { name, arguments } = &c.expect {
                let text = serde_json::json!({ "name": name, "arguments": arguments }).to_string();
                let (call, tool) = parse_call(&text, &set.tools).unwrap_or_else(|e| panic!("{:?}: {e}", c.say));
                assert_eq!(tool.permits(&call), Ok(()), "{:?}", c.say);
            }
        }
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
