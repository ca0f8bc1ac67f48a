//! Write picket detection rules in Rust.
//!
//! A rule is a manifest, saying what it is and which events it wants, and a handler that receives
//! each of those events. The handler asks the host whether a value is new with [`new_value`] and
//! raises a [`Signal`]. [`rule!`] exports both in the form the host loads:
//!
//! ```
//! use picket_rule_sdk::prelude::*;
//!
//! fn manifest() -> Manifest {
//!     ManifestBuilder::new("shadow-reader")
//!         .title("Unfamiliar process read /etc/shadow")
//!         .severity(Severity::High)
//!         .mitre("TA0006-credential-access", "T1003-os-credential-dumping")
//!         .subscribe(EventKind::Open, &["shadow"])
//!         .build()
//! }
//!
//! fn on_event(event: &Event) {
//!     if event.path() != "/etc/shadow" {
//!         return;
//!     }
//!     let group = event.workload();
//!     if new_value("process.exe", group, event.exe()) {
//!         Signal::new().new_value("process.exe", event.exe(), group).emit();
//!     }
//! }
//!
//! picket_rule_sdk::rule!(manifest, on_event);
//! ```
//!
//! Build with `cargo build --release --target wasm32-unknown-unknown` and check the module with
//! `picket test`. On other targets the same crate builds natively: [`native`] lets a program run
//! the rule's functions directly, which picket uses to measure what the sandbox costs.
#![warn(missing_docs)]

pub mod familiar;
mod imports;
mod manifest;
pub mod path;

#[doc(hidden)]
pub mod __private;

pub use manifest::{ManifestBuilder, days, hours, minutes};
pub use picket_abi::{
    ABI_VERSION, Access, AncestorFields, Ancestors, Args, EventFields, EventKind, LINEAGE_DEPTH,
    Manifest, NewValueDefaults, Severity, Subscription,
};

#[cfg(not(target_arch = "wasm32"))]
pub use imports::native;

/// An event handed to a rule: every accessor reads the host's buffer in place, and a string is
/// sliced and checked only when asked for.
pub type Event<'a> = picket_abi::Event<'a>;

/// The two functions that make a rule; [`rule!`] defines one named `RULE`.
#[derive(Clone, Copy)]
pub struct Rule {
    /// Returns the rule's manifest.
    pub manifest: fn() -> Manifest,
    /// Handles one event.
    pub on_event: fn(&Event<'_>),
}

/// Asks the host whether `value` is new for `group` in the new-value state named `state`.
///
/// While the group is in its learning period the host learns the value and answers `false`.
/// Afterwards an unseen (or forgotten) value is answered `true` once, and learned.
pub fn new_value(state: &str, group: &str, value: &str) -> bool {
    imports::new_value(state, group, value)
}

/// Levels for [`log`].
pub use picket_abi::LogLevel;

/// Writes a line to the agent's log, attributed to this rule.
pub fn log(level: LogLevel, message: &str) {
    imports::log(level, message)
}

/// A signal to raise for the event being handled. The host adds the rule's title, severity and
/// MITRE fields and the event itself.
#[derive(Clone, Copy, Debug, Default)]
#[must_use = "a signal is only raised by calling emit()"]
pub struct Signal<'a> {
    new_value: Option<picket_abi::NewValueView<'a>>,
}

impl<'a> Signal<'a> {
    /// A signal with no details yet.
    pub fn new() -> Self {
        Signal { new_value: None }
    }

    /// Records the unfamiliar value behind the signal: the event `field` it came from, the
    /// `value` and the `group` it was new in.
    pub fn new_value(mut self, field: &'a str, value: &'a str, group: &'a str) -> Self {
        self.new_value = Some(picket_abi::NewValueView {
            field,
            value,
            group,
        });
        self
    }

    /// Raises the signal.
    pub fn emit(self) {
        imports::emit_signal(&picket_abi::SignalRequest {
            new_value: self.new_value,
        })
    }
}

/// Conveniences on [`Event`].
pub trait EventExt<'a> {
    /// The workload the process belongs to, the usual group for new values: the container's
    /// image, else its id, else the event's node name (or `"host"`) for a process of the node itself.
    fn workload(&self) -> &'a str;

    /// Whether the file may have been read: opened for reading, or with unknown access.
    fn may_read(&self) -> bool;
}

impl<'a> EventExt<'a> for Event<'a> {
    fn workload(&self) -> &'a str {
        if self.in_container()
            && let Some(group) = self.container_image().or_else(|| self.container_id())
        {
            return group;
        }
        self.node_name().unwrap_or("host")
    }

    fn may_read(&self) -> bool {
        !matches!(self.access(), Some(Access::Write))
    }
}

/// Everything a rule usually needs.
pub mod prelude {
    pub use crate::familiar::{Unfamiliar, unfamiliar_process, unfamiliar_process_as};
    pub use crate::path::{ProjectedFile, basename};
    pub use crate::{
        Access, Event, EventExt, EventKind, LogLevel, Manifest, ManifestBuilder, Severity, Signal,
        days, hours, log, minutes, new_value,
    };
}

/// Exports a rule: `rule!(manifest_fn, handler_fn)`.
///
/// Defines `pub const RULE: Rule` on every target and, on `wasm32`, the exports the host calls.
#[macro_export]
macro_rules! rule {
    ($manifest:path, $on_event:path $(,)?) => {
        /// This rule's functions, for running it natively.
        pub const RULE: $crate::Rule = $crate::Rule {
            manifest: $manifest,
            on_event: $on_event,
        };

        #[cfg(target_arch = "wasm32")]
        mod __picket_exports {
            #[unsafe(no_mangle)]
            extern "C" fn picket_abi_version() -> i32 {
                $crate::__private::abi_version()
            }

            #[unsafe(no_mangle)]
            extern "C" fn picket_manifest() -> i64 {
                $crate::__private::manifest(super::RULE.manifest)
            }

            #[unsafe(no_mangle)]
            extern "C" fn picket_alloc(len: i32) -> i32 {
                $crate::__private::alloc(len)
            }

            #[unsafe(no_mangle)]
            extern "C" fn picket_on_event(ptr: i32, len: i32) -> i32 {
                $crate::__private::on_event(ptr, len, super::RULE.on_event)
            }
        }
    };
}
