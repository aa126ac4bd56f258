//! `voxd select`: the LLM is the fastest candidate that passes the quality gates.
//!
//! Every LLM in models.toml whose file is present (and not corrupt) is measured in a
//! process of its own (`voxd select-measure`: a fair peak memory, and a candidate
//! that crashes fails alone): speed on the prompt the pipeline uses (`measure`) and
//! quality (`gates`). Candidates that pass every gate (thresholds in models.toml
//! `[gates]`) are ranked by time to first sentence; the fastest is written to the
//! selection file, where `voxd run` takes it from when `llm.model` is empty. A report
//! in markdown and JSON lists every candidate, its numbers and each gate's result.

pub mod gates;
pub mod measure;

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::catalog::{Gates, ModelEntry};

/// One candidate's figures, as its measuring process reports them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measured {
    pub id: String,
    pub speed: measure::Speed,
    pub quality: gates::Quality,
    pub peak_rss_mib: Option<f64>,
}

/// A measured candidate judged against the gates.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub id: String,
    pub params: String,
    pub quant: String,
    /// "verified" (matches its pinned sha256) or "unpinned".
    pub file: String,
    pub measured: Measured,
    /// Each gate missed, as "tool-call accuracy 3 % < 80 %".
    pub failed: Vec<String>,
}

/// The whole run, as the JSON report holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub date: String,
    pub machine: Machine,
    pub gates: Gates,
    pub quick: bool,
    pub threads: u32,
    pub verdicts: Vec<Verdict>,
    /// (id, why it was not measured).
    pub skipped: Vec<(String, String)>,
    pub selected: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub os: String,
    /// llama.cpp's system info: the CPU features ggml was built for, GPU backends.
    pub ggml: String,
}

impl Machine {
    pub fn describe() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpu = read("/proc/cpuinfo").lines().find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())).unwrap_or_else(|| std::env::consts::ARCH.to_string());
        let memory_gib = read("/proc/meminfo").lines().find_map(|l| l.strip_prefix("MemTotal:")).and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()).map_or(0.0, |kb| kb / 1024.0 / 1024.0);
        let os = read("/etc/os-release").lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string())).unwrap_or_default();
        let os = format!("{os}, Linux {}", read("/proc/sys/kernel/osrelease").trim());
        // SAFETY: llama.cpp returns a pointer to a static, NUL-terminated string.
        let ggml = unsafe { std::ffi::CStr::from_ptr(llama_cpp_sys_2::llama_print_system_info()) }.to_string_lossy().trim().to_string();
        Machine { cpu, cores: std::thread::available_parallelism().map_or(1, |n| n.get()), memory_gib, os, ggml }
    }
}

impl Gates {
    /// Every gate `m` misses, phrased for the report.
    pub fn failures(&self, m: &gates::Quality) -> Vec<String> {
        let pct = |x: f64| format!("{:.0} %", 100.0 * x);
        [
            ("tool-call accuracy", m.tool_call_accuracy, self.tool_call_accuracy),
            ("valid structured output", m.valid_output, self.valid_output),
            ("\"no tool\" precision", m.no_tool_precision, self.no_tool_precision),
            ("spoken-answer discipline", m.spoken_discipline, self.spoken_discipline),
            ("multi-turn stability", m.multi_turn_stability, self.multi_turn_stability),
        ]
        .into_iter()
        .filter(|(_, got, min)| got < min)
        .map(|(name, got, min)| format!("{name} {} < {}", pct(got), pct(min)))
        .chain((m.invented_states > self.invented_states).then(|| format!("{} device states answered with no read (at most {})", m.invented_states, self.invented_states)))
        .chain((m.leaks > self.leaks).then(|| format!("{} calls or tool names in spoken words (at most {})", m.leaks, self.leaks)))
        .collect()
    }
}

/// The fastest candidate that passed every gate, by time to first sentence; within
/// 5 % of each other the better tool caller wins.
pub fn choose(verdicts: &[Verdict]) -> Option<&Verdict> {
    let mut passed: Vec<&Verdict> = verdicts.iter().filter(|v| v.failed.is_empty()).collect();
    passed.sort_by(|a, b| a.measured.speed.first_sentence_ms.total_cmp(&b.measured.speed.first_sentence_ms));
    let fastest = *passed.first()?;
    let close = |v: &&Verdict| v.measured.speed.first_sentence_ms <= fastest.measured.speed.first_sentence_ms * 1.05;
    passed.into_iter().filter(close).max_by(|a, b| a.measured.quality.tool_call_accuracy.total_cmp(&b.measured.quality.tool_call_accuracy).then(b.measured.speed.first_sentence_ms.total_cmp(&a.measured.speed.first_sentence_ms)))
}

/// Where the selection is kept: `${XDG_STATE_HOME:-~/.local/state}/voxd/selection.toml`.
pub fn selection_path() -> PathBuf {
    crate::paths::state_dir().join("selection.toml")
}

#[derive(Debug, Serialize, Deserialize)]
struct Selection {
    llm: String,
    selected: String,
    report: String,
}

/// The LLM `voxd select` chose, if it has run.
pub fn selected_llm() -> Option<String> {
    let text = std::fs::read_to_string(selection_path()).ok()?;
    match toml::from_str::<Selection>(&text) {
        Ok(s) => Some(s.llm),
        Err(e) => {
            tracing::warn!("ignoring {}: {e}", selection_path().display());
            None
        }
    }
}

pub fn write_selection(id: &str, date: &str, report: &Path) -> anyhow::Result<PathBuf> {
    let path = selection_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = format!(
        "# Written by `voxd select`: the fastest LLM that passed every quality gate.\n# voxd run uses it when llm.model is empty; delete this file to go back to models.toml's default.\n{}",
        toml::to_string(&Selection { llm: id.into(), selected: date.into(), report: report.display().to_string() })?
    );
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

impl Report {
    pub fn markdown(&self) -> String {
        use std::fmt::Write;
        let m = &self.machine;
        let pct = |x: f64| format!("{:.0} %", 100.0 * x);
        let ms = |x: f64| if x.is_finite() { format!("{x:.0}") } else { "-".into() };
        let mut out = String::new();
        let _ = writeln!(out, "# LLM selection ({})\n", self.date);
        let _ = writeln!(out, "`voxd select{}` on {} ({} cores, {:.0} GiB), {}; {} threads; ggml: `{}`.\n", if self.quick { " --quick" } else { "" }, m.cpu, m.cores, m.memory_gib, m.os, self.threads, m.ggml);
        match &self.selected {
            Some(id) => {
                let v = self.verdicts.iter().find(|v| &v.id == id).expect("selected from the verdicts");
                let _ = writeln!(out, "**Selected: `{id}`** — the fastest candidate that passes every gate ({} ms to the first sentence).\n", ms(v.measured.speed.first_sentence_ms));
            }
            None => {
                let _ = writeln!(out, "**No candidate passes every gate**: nothing is selected, and `voxd run` keeps models.toml's default.\n");
            }
        }
        let _ = writeln!(out, "## Speed (median of {} run{}; preamble = persona + tools + examples)\n", self.verdicts.first().map_or(0, |v| v.measured.speed.repetitions), if self.verdicts.first().is_some_and(|v| v.measured.speed.repetitions == 1) { "" } else { "s" });
        let _ = writeln!(out, "| model | params | quant | load ms | prompt tok/s | gen tok/s | first token, uncached ms | first token, cached ms | first sentence ms | 50-token answer ms | peak RSS MiB |");
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
        for v in &self.verdicts {
            let s = &v.measured.speed;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.0} | {:.1} | {} | {} | {} | {} | {} |",
                v.id, v.params, v.quant, ms(s.load_ms), s.prompt_tok_s, s.generate_tok_s, ms(s.first_token_uncached_ms), ms(s.first_token_cached_ms), ms(s.first_sentence_ms), ms(s.answer_50_tokens_ms),
                v.measured.peak_rss_mib.map_or("-".into(), |r| format!("{r:.0}"))
            );
        }
        let g = &self.gates;
        let _ = writeln!(out, "\n## Quality gates\n");
        let _ = writeln!(
            out,
            "| model | tool-call accuracy ≥ {} | valid output ≥ {} | \"no tool\" precision ≥ {} | spoken discipline ≥ {} | multi-turn ≥ {} | verdict |",
            pct(g.tool_call_accuracy), pct(g.valid_output), pct(g.no_tool_precision), pct(g.spoken_discipline), pct(g.multi_turn_stability)
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        for v in &self.verdicts {
            let q = &v.measured.quality;
            let mark = |x: f64, min: f64| format!("{} {}", pct(x), if x >= min { "✓" } else { "✗" });
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                v.id,
                mark(q.tool_call_accuracy, g.tool_call_accuracy),
                mark(q.valid_output, g.valid_output),
                mark(q.no_tool_precision, g.no_tool_precision),
                mark(q.spoken_discipline, g.spoken_discipline),
                mark(q.multi_turn_stability, g.multi_turn_stability),
                if v.failed.is_empty() { "passes" } else { "fails" }
            );
        }
        let failing: Vec<&Verdict> = self.verdicts.iter().filter(|v| !v.failed.is_empty()).collect();
        if !failing.is_empty() {
            let _ = writeln!(out, "\n## Why candidates failed\n");
            for v in failing {
                let _ = writeln!(out, "- **{}** ({}): {}", v.id, v.file, v.failed.join("; "));
                // A couple of examples from each kind of test.
                for kind in ["tools:", "spoken:", "conversation:"] {
                    for e in v.measured.quality.evidence.iter().filter(|e| e.starts_with(kind)).take(2) {
                        let _ = writeln!(out, "  - {e}");
                    }
                }
            }
        }
        if !self.skipped.is_empty() {
            let _ = writeln!(out, "\n## Not measured\n");
            for (id, why) in &self.skipped {
                let _ = writeln!(out, "- {id}: {why}");
            }
        }
        out
    }
}

/// Why a candidate in the table is not measured, or None when it can be.
pub fn unmeasurable(entry: &ModelEntry, models_dir: &Path) -> anyhow::Result<Option<String>> {
    use crate::models::Status;
    Ok(match crate::models::status(entry, models_dir)? {
        Status::Missing => Some(format!("not installed (`voxd models fetch {}`{})", entry.id, if entry.registry.is_some() { " or `--registry`" } else { "" })),
        Status::Verified { .. } | Status::Unpinned { .. } => None,
        damaged => Some(format!("installed file is damaged: {}", damaged.problem().unwrap_or_default())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(id: &str, first_sentence_ms: f64, tools: f64, failed: &[&str]) -> Verdict {
        Verdict {
            id: id.into(),
            params: "1B".into(),
            quant: "Q4".into(),
            file: "verified".into(),
            measured: Measured {
                id: id.into(),
                speed: measure::Speed { first_sentence_ms, ..Default::default() },
                quality: gates::Quality { tool_call_accuracy: tools, valid_output: 1.0, no_tool_precision: 1.0, spoken_discipline: 1.0, multi_turn_stability: 1.0, invented_states: 0, leaks: 0, homes: vec![], evidence: vec![] },
                peak_rss_mib: None,
            },
            failed: failed.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_fastest_candidate_that_passes_is_chosen() {
        let v = [verdict("fast-but-bad", 100.0, 0.2, &["tool-call accuracy 20 % < 80 %"]), verdict("slow", 900.0, 0.95, &[]), verdict("quick", 300.0, 0.85, &[])];
        assert_eq!(choose(&v).unwrap().id, "quick");
        assert!(choose(&v[..1]).is_none(), "no candidate passes: nothing is chosen");
    }

    #[test]
    fn a_near_tie_goes_to_the_better_tool_caller() {
        let v = [verdict("a", 300.0, 0.85, &[]), verdict("b", 310.0, 0.97, &[]), verdict("c", 400.0, 1.0, &[])];
        assert_eq!(choose(&v).unwrap().id, "b", "within 5 %: quality decides; 400 ms is not close");
    }

    #[test]
    fn gates_name_what_failed() {
        let g = Gates::default();
        let q = gates::Quality { tool_call_accuracy: 0.03, valid_output: 1.0, no_tool_precision: 0.5, spoken_discipline: 1.0, multi_turn_stability: 0.2, invented_states: 2, leaks: 0, homes: vec![], evidence: vec![] };
        assert_eq!(g.failures(&q), vec!["tool-call accuracy 3 % < 80 %", "\"no tool\" precision 50 % < 80 %", "multi-turn stability 20 % < 80 %", "2 device states answered with no read (at most 0)"]);
    }
}
