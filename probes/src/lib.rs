//! picket's kernel probes: loads the eBPF programs that watch file opens, keeps the approver set
//! (the basenames the rules care about) in the kernel, and turns ring buffer records into
//! [`OpenEvent`]s with their process context.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use std::collections::BTreeSet;
//! use picket_probes::{Probes, Strategy};
//!
//! let mut probes = Probes::load(Strategy::Auto)?;
//! probes.set_basenames(&BTreeSet::from(["token".to_owned()]))?;
//! loop {
//!     let event = probes.next_event().await?;
//!     println!("{} opened {}", event.process.comm, event.path);
//! }
//! # }
//! ```
//!
//! Loading needs root (CAP_BPF, CAP_PERFMON and, for tracepoints, CAP_SYS_ADMIN to mount tracefs
//! or securityfs when absent). Everything is detached when the [`Probes`] is dropped.
//! [`Probes::next_event`] must be awaited inside a tokio runtime with I/O enabled.
//!
//! Diagnostics: `PICKET_PROBES_STOP_AFTER=<n>` makes the open programs stop after prefilter step
//! `n` (so nothing is reported), to measure what each step costs; see `probes/NOTES.md`.
//! `PICKET_PROBES_DROP_REPEATS=off` sends every approved open, repeats included (to measure what
//! dropping them saves).
//!
//! Layout: [`Probes`] (`probes.rs`) loads and owns everything; `attach.rs` attaches the programs
//! and falls back from one [`Strategy`] to the next; `maps.rs` writes the approvers and reads the
//! counters; `ring.rs` reads the ring buffer and `records.rs` decodes its records (the kernel's
//! wire format, `picket-probes-common`); `enrich.rs` turns them into [`OpenEvent`]s with their
//! process context (`process.rs`, `users.rs`, `containers.rs`, `cgroups.rs`); `clock.rs` dates
//! them.

mod attach;
mod btf;
mod cgroups;
mod clock;
mod containers;
mod enrich;
mod event;
mod exe_digest;
mod filter;
mod identity;
mod maps;
mod offsets;
mod probes;
mod process;
mod records;
mod ring;
mod strategy;
mod tracefs;
mod users;
mod verifier;

pub use crate::cgroups::CgroupLoss;
pub use crate::containers::{Pod, RUNTIME_METADATA_DIRS};
pub use crate::event::{Ancestor, OpenEvent, ProcessInfo};
pub use crate::identity::{FileId, file_id_from_kernel, file_id_of, kernel_dev};
pub use crate::probes::{HostPaths, Probes};
pub use crate::process::{LINEAGE_DEPTH, container_id_from_cgroup};
pub use crate::strategy::Strategy;
/// How a file was opened: the rule ABI's type, re-exported for [`OpenEvent::access`].
pub use picket_abi::Access;
