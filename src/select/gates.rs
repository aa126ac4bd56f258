//! The quality gates a candidate must pass to be selected: tool calls (every home of
//! the evaluation, scored by the worst), spoken-answer discipline, and multi-turn
//! stability. Each is a score in 0..=1 with the evidence for it, so a report can say
//! why a candidate failed.

use serde::{Deserialize, Serialize};

use crate::engine::llm::{Llm, Message, Role};
use crate::tools::eval;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Quality {
    /// The tool figures are the worst over the evaluation's homes.
    pub tool_call_accuracy: f64,
    pub valid_output: f64,
    pub no_tool_precision: f64,
    /// Device states answered with no read behind them, and calls or tool names in
    /// spoken words, over every home (a gate allows none).
    #[serde(default)]
    pub invented_states: usize,
    #[serde(default)]
    pub leaks: usize,
    /// Each home's tool-call accuracy, for the report.
    #[serde(default)]
    pub homes: Vec<(String, f64)>,
    pub spoken_discipline: f64,
    pub multi_turn_stability: f64,
    /// The answers and why each failed, for the report.
    pub evidence: Vec<String>,
}

/// Questions that tempt a small model into lists, markdown, emoji, long lectures or
/// thinking aloud — all wrong for a voice.
const DISCIPLINE: [&str; 8] = [
    "What is the capital of France?",
    "Give me three tips for sleeping better.",
    "How does a rainbow form?",
    "What is 17 times 3?",
    "Tell me a fun fact about octopuses.",
    "How far away is the moon?",
    "Who painted the Mona Lisa?",
    "What's a good name for a cat?",
];

/// A conversation that needs the earlier turns, and must not degenerate.
const CONVERSATION: [&str; 6] = [
    "Hi, my name is Sam.",
    "What is the capital of Italy?",
    "How many people live there?",
    "What was my name again?",
    "Tell me a short joke.",
    "Thanks, good night.",
];

/// Runs every gate (`quick`: a subset of each, for tests).
pub fn measure(llm: &Llm, persona: &str, quick: bool) -> anyhow::Result<Quality> {
    let mut evidence = Vec::new();
    // Tool calls: every home, as voxd runs it (grammar on, examples derived where
    // none are written); the gates take the worst home.
    let mut worst = (1.0f64, 1.0f64, 1.0f64);
    let (mut invented_states, mut leaks, mut homes) = (0, 0, Vec::new());
    let all = eval::homes()?;
    for (name, set) in if quick { eval::quick(all) } else { all } {
        let report = eval::run_home(llm, persona, &set, &crate::tools::ToolsConfig::default(), |_, r| {
            if !r.correct {
                tracing::debug!("eval {name}: {:?} → {}", r.say, r.output);
            }
        })?;
        worst = (worst.0.min(report.call_accuracy), worst.1.min(report.valid_rate), worst.2.min(report.no_tool_precision));
        invented_states += report.invented_states;
        leaks += report.leaks;
        homes.push((name.clone(), report.call_accuracy));
        for r in report.results.iter().filter(|r| !r.correct).take(3) {
            evidence.push(format!("tools ({name}): {:?} → {}", r.say, short(&r.output)));
        }
    }

    // Spoken answers: short, plain, no thinking aloud (the persona alone, no tools).
    let system = Message { role: Role::System, content: persona.to_string() };
    let mut session = llm.session()?;
    let questions = if quick { &DISCIPLINE[..3] } else { &DISCIPLINE[..] };
    let mut good = 0;
    for q in questions {
        let g = session.generate(&[system.clone(), Message { role: Role::User, content: q.to_string() }], None, |_| true)?;
        let truncated = g.generated_tokens >= llm.options().max_reply_tokens as usize;
        match spoken_fault(g.text.trim(), truncated) {
            None => good += 1,
            Some(fault) => evidence.push(format!("spoken: {q:?} → {} ({fault})", short(&g.text))),
        }
    }
    let spoken_discipline = good as f64 / questions.len() as f64;

    // A conversation with its history: every reply fitting, none a copy of an earlier
    // one, and the name remembered.
    let turns = if quick { &CONVERSATION[..4] } else { &CONVERSATION[..] };
    let mut history = vec![system];
    let mut replies: Vec<String> = Vec::new();
    let mut stable = 0;
    for q in turns {
        history.push(Message { role: Role::User, content: q.to_string() });
        let g = session.generate(&history, None, |_| true)?;
        let reply = g.text.trim().to_string();
        let truncated = g.generated_tokens >= llm.options().max_reply_tokens as usize;
        let fault = spoken_fault(&reply, truncated)
            .or_else(|| replies.iter().any(|r| similar(r, &reply)).then_some("repeats an earlier answer"))
            .or_else(|| similar(q, &reply).then_some("repeats the question"))
            .or_else(|| (q.contains("my name again") && !reply.to_lowercase().contains("sam")).then_some("forgot the name"));
        match fault {
            None => stable += 1,
            Some(f) => evidence.push(format!("conversation: {q:?} → {} ({f})", short(&reply))),
        }
        history.push(Message { role: Role::Assistant, content: reply.clone() });
        replies.push(reply);
    }
    Ok(Quality {
        tool_call_accuracy: worst.0,
        valid_output: worst.1,
        no_tool_precision: worst.2,
        invented_states,
        leaks,
        homes,
        spoken_discipline,
        multi_turn_stability: stable as f64 / turns.len() as f64,
        evidence,
    })
}

/// What makes a reply wrong to say aloud, if anything.
pub fn spoken_fault(reply: &str, truncated: bool) -> Option<&'static str> {
    let lower = reply.to_lowercase();
    if reply.is_empty() {
        Some("empty")
    } else if truncated {
        Some("ran to the token limit")
    } else if reply.split_whitespace().count() > 45 {
        Some("too long to listen to")
    } else if ["<think>", "let me think", "step 1", "first, let's", "let's think"].iter().any(|t| lower.contains(t)) {
        Some("thinks aloud")
    } else if reply.contains("**") || reply.contains('#') || reply.contains('`') || reply.lines().any(|l| is_list_item(l.trim_start())) {
        Some("markdown")
    } else if reply.chars().any(|c| matches!(c as u32, 0x1F000..=0x1FAFF | 0x2600..=0x27BF)) {
        Some("emoji")
    } else {
        None
    }
}

fn is_list_item(line: &str) -> bool {
    line.starts_with("- ") || line.starts_with("* ") || line.split_once(". ").is_some_and(|(n, _)| !n.is_empty() && n.len() <= 2 && n.chars().all(|c| c.is_ascii_digit()))
}

/// Near-identical texts (word-level edit distance under a fifth of the longer).
fn similar(a: &str, b: &str) -> bool {
    let (wa, wb) = (crate::bench::words(a), crate::bench::words(b));
    let longer = wa.len().max(wb.len());
    longer > 0 && crate::bench::wer(a, b) * (wa.len().max(1) as f64) < 0.2 * longer as f64
}

fn short(text: &str) -> String {
    let t: String = text.trim().chars().take(90).collect();
    format!("{t:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_voice_must_not_say_is_caught() {
        assert_eq!(spoken_fault("Paris is the capital of France.", false), None);
        assert_eq!(spoken_fault("1. Go to bed early.\n2. No screens.", false), Some("markdown"));
        assert_eq!(spoken_fault("- sleep\n- eat", false), Some("markdown"));
        assert_eq!(spoken_fault("**Paris**", false), Some("markdown"));
        assert_eq!(spoken_fault("Octopuses have three hearts 🐙", false), Some("emoji"));
        assert_eq!(spoken_fault("<think>17 times 3 is</think> 51", false), Some("thinks aloud"));
        assert_eq!(spoken_fault("It is 51.", true), Some("ran to the token limit"));
        assert_eq!(spoken_fault(&"word ".repeat(60), false), Some("too long to listen to"));
    }

    #[test]
    fn copies_are_told_from_new_answers() {
        assert!(similar("Il cielo di Roma, il cielo di Roma.", "Il cielo di Roma, il cielo di Roma!"));
        assert!(!similar("The capital of Italy is Rome.", "About 2.8 million people live in Rome."));
    }
}
