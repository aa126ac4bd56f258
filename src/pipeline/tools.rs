//! Tools stage.
//!
//! Input: `Job` (from agent) · Output: `Outcome` (to agent, per job) · Thread:
//! dedicated (`voxd-tools`; executors block on the network, each with its timeout)
//!
//! Runs tool calls the agent has already validated and checked against the
//! allow-list, one at a time, and logs every one of them.

use tokio::sync::{mpsc, oneshot};

use super::health::Pulse;
use super::telemetry::{Note, Notes, ToolCallRecord};
use super::TurnId;
use crate::tools::{Outcome, ToolCall, ToolConfig, Toolbox};

pub struct Job {
    pub turn: TurnId,
    pub call: ToolCall,
    pub tool: ToolConfig,
    /// "model" or "intent", for the log.
    pub via: &'static str,
    pub respond_to: oneshot::Sender<Outcome>,
}

pub fn run(toolbox: Toolbox, mut rx: mpsc::Receiver<Job>, notes: Notes, pulse: Pulse) -> anyhow::Result<()> {
    while let Some(job) = rx.blocking_recv() {
        pulse.busy(job.turn);
        // An executor that panics fails this call, not the stage.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| toolbox.run(&job.tool, &job.call))).unwrap_or_else(|_| Outcome {
            ok: false,
            result: String::new(),
            error: Some("the tool failed unexpectedly".into()),
            ms: 0.0,
        });
        pulse.idle();
        match &outcome.error {
            None => tracing::info!(turn = job.turn, ms = outcome.ms as u64, "tool {} {} ran", job.call.name, job.call.arguments),
            Some(e) => tracing::warn!(turn = job.turn, ms = outcome.ms as u64, "tool {} {} failed: {e}", job.call.name, job.call.arguments),
        }
        let record = ToolCallRecord { name: job.call.name, arguments: job.call.arguments, ok: outcome.ok, ms: outcome.ms, via: job.via.into(), error: outcome.error.clone() };
        notes.send(Note::ToolCall { turn: job.turn, record });
        // The agent may have moved on (the user interrupted): the call still happened
        // and is logged above.
        let _ = job.respond_to.send(outcome);
    }
    Ok(())
}
