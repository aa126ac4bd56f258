//! The satellites' board: what each `[[satellite]]` is doing, kept by the thread that
//! serves it and read by `voxd ctl status` (through `voxd wyoming`'s status socket).

use std::time::Instant;

use serde_json::json;

/// How each satellite is doing, for `voxd ctl status`: one line a satellite, in the
/// order of the config, each written by its own thread.
#[derive(Default)]
pub struct Board {
    seats: std::sync::Mutex<Vec<Seat>>,
}

/// What a satellite is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Being dialled (at start, or again after it was lost).
    Dialling,
    /// Connected, waiting for its `run-pipeline`.
    Connected,
    /// Streaming its microphone to voxd.
    Listening,
    /// A turn it asked is being answered.
    Answering,
    /// Dials fail; redialled with backoff.
    Unreachable,
}

pub(super) struct Seat {
    room: String,
    uri: String,
    state: State,
    since: Instant,
    pub(super) turns: u64,
    /// Dials that failed since it was last reached.
    pub(super) failed_dials: u32,
    /// Why it was last lost or could not be reached.
    pub(super) last_error: Option<String>,
}

impl Board {
    pub(super) fn seat(&self, room: &str, uri: &str) -> usize {
        let mut seats = self.seats.lock().unwrap_or_else(|e| e.into_inner());
        seats.push(Seat { room: room.into(), uri: uri.into(), state: State::Dialling, since: Instant::now(), turns: 0, failed_dials: 0, last_error: None });
        seats.len() - 1
    }

    /// Sets what a satellite is doing now; `change` may touch the rest of its line.
    pub(super) fn set(&self, seat: usize, state: State, change: impl FnOnce(&mut Seat)) {
        let mut seats = self.seats.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut seats[seat];
        if s.state != state {
            (s.state, s.since) = (state, Instant::now());
        }
        change(s);
    }

    /// Each satellite: its room and address, what it is doing (`State`, in lower case)
    /// and for how long, the turns it has asked, and the last trouble.
    pub fn report(&self) -> Vec<serde_json::Value> {
        let seats = self.seats.lock().unwrap_or_else(|e| e.into_inner());
        seats
            .iter()
            .map(|s| {
                json!({
                    "room": s.room, "uri": s.uri, "state": s.state, "for_s": s.since.elapsed().as_secs(),
                    "turns": s.turns, "failed_dials": s.failed_dials, "last_error": s.last_error,
                })
            })
            .collect()
    }
}
