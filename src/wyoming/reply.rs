//! The agent's reply to one ask, as it comes: each piece as soon as the agent has
//! said it (so a satellite hears the first words while the model is still writing
//! the rest, and Home Assistant reads them as `handled-chunk`s), then the turn's
//! record with the whole text.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::event::Event;
use super::AgentService;
use crate::pipeline::telemetry::TurnRecord;
use crate::pipeline::wake::Started;
use crate::pipeline::Ask;

/// Pieces of one reply that may wait for an asker busy with the ones before (a
/// satellite's Piper); more than that go with the record.
const PIECES_WAITING: usize = 32;

/// Who asks, and where: the conversation it continues and the room it was said in.
pub struct Asker {
    pub conversation: Option<String>,
    pub room: Option<String>,
    pub started: Started,
    /// Wait for a place in the agent's queue (a satellite's request, already
    /// heard), or be refused at once when it is full (a client that may try again).
    pub waits: bool,
}

pub struct Reply {
    pieces: mpsc::Receiver<String>,
    record: oneshot::Receiver<Arc<TurnRecord>>,
    /// The pieces passed on so far, joined as the record joins them.
    passed: String,
}

/// A reply's end: its record, all it said, and the part of that not passed on as a
/// piece (said, but not seen in time), to be sent now.
pub struct Said {
    pub record: Arc<TurnRecord>,
    pub text: String,
    pub rest: String,
}

impl AgentService {
    /// Hands `text` to the agent; its reply as it comes, or the `error` to send.
    pub async fn ask(&self, text: &str, asker: Asker) -> Result<Reply, Event> {
        use tokio::sync::mpsc::error::{SendError, TrySendError};
        let (pieces_tx, pieces) = mpsc::channel(PIECES_WAITING);
        let (answer, record) = oneshot::channel();
        let Asker { conversation, room, started, waits } = asker;
        let ask = Ask { text: text.to_string(), conversation, room, started, asked: Instant::now(), pieces: Some(pieces_tx), answer };
        let stopped = || Event::error("voxd's agent has stopped (see voxd's log); restart voxd wyoming", "engine");
        if waits {
            self.asks.send(ask).await.map_err(|SendError(_)| stopped())?;
        } else {
            self.asks.try_send(ask).map_err(|e| match e {
                TrySendError::Full(_) => Event::error(format!("voxd's agent is busy: {} conversations already wait (`[wyoming] queue`); try again shortly", self.queue), "busy"),
                TrySendError::Closed(_) => stopped(),
            })?;
        }
        Ok(Reply { pieces, record, passed: String::new() })
    }
}

impl Reply {
    /// The next piece the agent has said; None once the reply is over.
    pub async fn next(&mut self) -> Option<String> {
        let piece = self.pieces.recv().await?;
        if !self.passed.is_empty() {
            self.passed.push(' ');
        }
        self.passed.push_str(&piece);
        Some(piece)
    }

    /// Waits for the turn's record; the `error` to send when the agent gave none.
    /// Pieces not taken with `next` are in the rest.
    pub async fn end(mut self) -> Result<Said, Event> {
        self.pieces.close();
        let record = self.record.await.map_err(|_| Event::error("voxd's agent gave no answer (it stopped, or the turn never ended: see voxd's log)", "engine"))?;
        // What was said: all of the reply (a text run hears every piece).
        let text = if record.spoken.is_empty() { record.reply.clone() } else { record.spoken.clone() };
        Ok(Said { rest: rest_of(&text, &self.passed), text, record })
    }
}

/// What of `said` comes after the pieces already passed on. The record joins its
/// pieces as `next` does, so they are its start; were they not, nothing more is
/// sent rather than words said twice.
fn rest_of(said: &str, passed: &str) -> String {
    match said.strip_prefix(passed) {
        Some(rest) => rest.trim().to_string(),
        None => {
            tracing::warn!("wyoming: the reply's record {said:?} does not start with the pieces passed on ({passed:?}); the rest is not sent");
            String::new()
        }
    }
}

/// Whether a piece stops mid-sentence (the reply's first piece may be a phrase cut
/// at a comma or between words): the voice then runs on into the next without the
/// pause of a full stop.
pub fn runs_on(piece: &str) -> bool {
    !piece.trim_end().ends_with(['.', '!', '?', ':', ';'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rest_is_what_follows_the_pieces_passed_on() {
        let said = "The capital of France is Paris. It is on the Seine.";
        assert_eq!(rest_of(said, ""), said);
        assert_eq!(rest_of(said, "The capital of France"), "is Paris. It is on the Seine.");
        assert_eq!(rest_of(said, "The capital of France is Paris. It is on the Seine."), "");
        // Not its start: nothing is said twice.
        assert_eq!(rest_of(said, "Paris"), "");
    }

    #[test]
    fn a_phrase_cut_runs_on_and_a_sentence_does_not() {
        assert!(runs_on("The capital of France"));
        assert!(runs_on("Sure,"));
        assert!(!runs_on("The light is on. "));
        assert!(!runs_on("Is it?"));
    }
}
