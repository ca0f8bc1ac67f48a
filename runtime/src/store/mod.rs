//! Durable new-value state: an embedded redb database under `--state DIR`.
//!
//! redb commits are atomic and copy-on-write with checksums, so a crash at any moment leaves the
//! last committed state readable. The rule engine drains each rule's journal of changes a few
//! times a second (`RuleStates::take_changes`) and hands them to a persister thread, which commits them; a failed commit (a full
//! disk) is logged and retried, and nothing is dropped meanwhile. State is keyed by rule id and
//! state name, so a new version of a rule finds what the old one learned.
//!
//! One file per job: `db` is the schema and the transactions on it, `overlay` the group
//! ids a transaction sees, `pending` the queue of changes and its folding, `persister` the
//! thread that commits them and its retry loop, `recovery` opening a file and setting a
//! damaged one aside. The store knows nothing of the pipeline: it is handed [`RuleChange`]s and
//! hands back states by rule id.

mod db;
mod overlay;
mod pending;
mod persister;
mod recovery;
#[cfg(test)]
mod tests;

pub use crate::state::RuleChange;
pub use db::{STATE_FILE, STATE_FORMAT, StateStore};
pub use persister::Persister;
pub use recovery::{Restored, open_and_load};

use std::fmt;

/// A state store problem, naming the file.
#[derive(Debug)]
pub struct StoreError {
    message: String,
    /// Whether the file itself is damaged (as opposed to locked, unreadable, foreign).
    damaged: bool,
    /// The file's state format, when it is newer than this picket's (written by a newer one).
    newer_format: Option<u64>,
}

impl StoreError {
    fn new(message: String) -> StoreError {
        StoreError {
            message,
            damaged: false,
            newer_format: None,
        }
    }

    fn damage(message: String) -> StoreError {
        StoreError {
            message,
            damaged: true,
            newer_format: None,
        }
    }

    fn newer(message: String, format: u64) -> StoreError {
        StoreError {
            message,
            damaged: false,
            newer_format: Some(format),
        }
    }

    /// The file's format when a newer picket wrote it (see [`open_and_load`]).
    pub fn newer_format(&self) -> Option<u64> {
        self.newer_format
    }

    /// Whether the file's content is damaged: it should be set aside, not retried.
    pub fn is_damage(&self) -> bool {
        self.damaged
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StoreError {}
