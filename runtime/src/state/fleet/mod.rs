//! Fleet learning (`--shared-state`): the new-value semantics across every agent that shares a
//! Redis, Valkey or Redis Cluster store (docs/new-value.md, "Fleet").
//!
//! Each agent keeps its own state (memory and the redb file) as cache and durable copy and
//! answers every event from it; the store is reached only off the event path:
//!
//! - `keys` is the store's layout and the checks on everything read back from it;
//! - `store` the connection and the operations, the fleet-wide decisions as Lua scripts on one
//!   group's hash slot;
//! - `sync` the worker thread that loads the baseline, pushes what this node learned, follows
//!   what the others learn, asks the store to confirm values found new, and reconciles after an
//!   outage;
//! - `held` the signals waiting for that confirmation;
//! - `metrics` what it counts.

mod held;
pub mod keys;
mod metrics;
pub mod store;
mod sync;

pub use held::{HeldSignals, OwnedSignal};
pub use metrics::FleetMetrics;
pub use store::{
    ClaimAnswer, DEFAULT_MAX_GROUPS, DEFAULT_MAX_VALUES_PER_GROUP, Remote, SharedStore,
    StoreOptions,
};
pub use sync::{ClaimOutcome, Fleet, FleetOptions, PUSH_EVERY, Started, Update};

use crate::rule_states::RuleStates;

/// Applies what the store said to this node's states: merged like the node's own learning
/// (journaled for the local file), never sent back to the store.
pub fn apply(states: &mut RuleStates, remotes: Vec<Remote>) {
    for remote in remotes {
        match remote {
            Remote::Seen {
                name,
                started_ns,
                value,
            } => {
                let state = states.state_of(&name.rule);
                state.merge_group(&name.state, &name.group, started_ns);
                if let Some((value, _first, last)) = value {
                    state.merge_value(&name.state, &name.group, &value, last);
                }
            }
            Remote::Forgotten { name, value } => {
                let state = states.state_of(&name.rule);
                match value {
                    Some(value) => state.forget_value(&name.state, &name.group, &value),
                    None => state.forget_group(&name.state, &name.group),
                };
            }
        }
    }
}

/// This process's name in the fleet's log: the node's name and a random suffix, so that two
/// agents on one node (or two replays) each see the other's entries.
pub fn node_id(node_name: &str) -> String {
    let mut random = [0u8; 4];
    let suffix = match getrandom::fill(&mut random) {
        Ok(()) => u32::from_le_bytes(random),
        Err(_) => std::process::id(),
    };
    format!("{node_name}/{suffix:08x}")
}
