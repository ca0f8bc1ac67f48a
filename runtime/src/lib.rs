//! picket's host runtime: the wasm sandbox for rules, their new-value state, the pipeline that
//! feeds them events, and the commands of the `picket` CLI.
//!
//! Data flows one way: events (live or replayed) → [`pipeline`] → rules in the [`sandbox`] with
//! their [`state`] → signals → [`outputs`].
#![warn(missing_docs)]

pub mod admission;
pub mod agent;
pub mod canary;
pub mod cli;
pub mod compile;
pub mod config_file;
pub mod conformance;
pub mod container_metadata;
pub mod control;
pub mod discovery;
pub mod event;
pub mod http;
pub mod kernel_report;
pub mod metrics;
pub mod module_cache;
pub mod outputs;
pub mod pipeline;
pub mod replay;
pub mod rule_engine;
pub mod rule_states;
pub mod rules_dir;
pub mod safe_file;
pub mod sandbox;
pub mod signing;
pub mod state;
pub mod store;
pub mod text;
pub mod time;
pub mod tls;
pub mod trust;
pub mod watch;
