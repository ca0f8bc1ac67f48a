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
//! `picket test`: the rule template (`templates/rule/` in picket's repository) is a crate set up
//! for that, and picket's `docs/rule-guide.md` takes a rule from zero to a signed, deployed
//! module. The SDK needs Rust 1.98 or later.
//!
//! What a handler reads is [`Event`] (its accessors, and [`EventExt`]); what it asks is
//! [`new_value`]; what it raises is a [`Signal`]. [`path`] matches the files the kubelet projects
//! into pods, and [`reader`] is a whole rule of the most common kind (an unfamiliar reader of a
//! file), which the bundled token rules use.
//!
//! On targets other than wasm32 the same crate builds natively: the module `native` (present
//! only there) lets a program run the rule's functions directly, which picket uses to measure
//! what the sandbox costs.
#![warn(missing_docs)]

pub mod familiar;
mod image;
mod imports;
mod manifest;
pub mod path;
pub mod reader;

#[doc(hidden)]
pub mod __private;

pub use image::image_repository;
pub use manifest::{ManifestBuilder, days, hours, minutes};
pub use picket_abi::{
    ABI_VERSION, Access, AncestorFields, Ancestors, Args, EventFields, EventKind, LINEAGE_DEPTH,
    Manifest, NewValueDefaults, Severity, StateSettings, Subscription,
};

#[cfg(not(target_arch = "wasm32"))]
pub use imports::native;

/// An event handed to a rule: every accessor reads the host's buffer in place, and a string is
/// sliced only when asked for. The fields: [`path`](Event::path), [`exe`](Event::exe),
/// [`access`](Event::access), [`comm`](Event::comm), [`args`](Event::args),
/// [`pid`](Event::pid), [`ppid`](Event::ppid), [`uid`](Event::uid), [`gid`](Event::gid),
/// [`ts_ns`](Event::ts_ns), [`in_container`](Event::in_container),
/// [`container_id`](Event::container_id), [`container_image`](Event::container_image),
/// [`node_name`](Event::node_name), [`file_id`](Event::file_id),
/// [`canonical_path`](Event::canonical_path); and, from [`EventExt`],
/// [`workload`](EventExt::workload) and [`may_read`](EventExt::may_read). What each means:
/// picket's `docs/events.md`.
#[doc(inline)]
pub use picket_abi::Event;

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

/// Asks the host whether `value` is known for `group` in the new-value state named `state`,
/// without learning it: nothing changes, whatever the answer (no value learned or refreshed, no
/// group started). For a rule that judges by one state and learns in another, or that adds to a
/// signal what else is (un)familiar.
pub fn is_known(state: &str, group: &str, value: &str) -> bool {
    imports::is_known(state, group, value)
}

/// Levels for [`log`].
pub use picket_abi::LogLevel;

/// Writes a line to the agent's log, attributed to this rule.
pub fn log(level: LogLevel, message: &str) {
    imports::log(level, message)
}

/// A signal to raise for the event being handled. The host adds the rule's title, severity and
/// MITRE fields and the event itself.
#[derive(Clone, Debug, Default)]
#[must_use = "a signal is only raised by calling emit()"]
pub struct Signal<'a> {
    new_value: Option<picket_abi::NewValueView<'a>>,
    context: Vec<(&'a str, std::borrow::Cow<'a, str>)>,
}

impl<'a> Signal<'a> {
    /// A signal with no details yet.
    pub fn new() -> Self {
        Signal::default()
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

    /// Adds one key-value pair of context, which the signal carries as `context.KEY` (docs:
    /// signals.md): what answers the first triage question without reading the whole event.
    /// Keys are `[a-z][a-z0-9_.]*`, at most 64 bytes, each once; at most 16 pairs, values at most
    /// 4096 bytes. The host refuses a signal that breaks these (the call traps, naming the
    /// key).
    pub fn context(mut self, key: &'a str, value: impl Into<std::borrow::Cow<'a, str>>) -> Self {
        self.context.push((key, value.into()));
        self
    }

    /// Adds the context that says who the event's process is ([`familiar::process_context`]):
    /// `process.chain` (its executable and its ancestors'), `process.parent.cmdline`,
    /// `process.euid`.
    pub fn process_context(self, event: &Event<'_>) -> Self {
        familiar::process_context(event)
            .into_iter()
            .fold(self, |signal, (key, value)| signal.context(key, value))
    }

    /// Raises the signal.
    pub fn emit(self) {
        imports::emit_signal(&picket_abi::SignalRequest {
            new_value: self.new_value,
            context: self
                .context
                .iter()
                .map(|(key, value)| picket_abi::ContextEntry { key, value })
                .collect(),
        })
    }
}

/// Conveniences on [`Event`].
pub trait EventExt<'a> {
    /// The workload the process belongs to, the usual group for new values: the repository of
    /// the container's image ([`image_repository`]: the reference without tag or digest, so a
    /// new tag keeps what was learned), else the container's id, else the event's node name (or
    /// `"host"`) for a process of the node itself. The full reference stays in the event
    /// (`container.image`), and so in the signal.
    fn workload(&self) -> &'a str;

    /// Whether the file may have been read: opened for reading, or with unknown access.
    fn may_read(&self) -> bool;
}

impl<'a> EventExt<'a> for Event<'a> {
    fn workload(&self) -> &'a str {
        if self.in_container()
            && let Some(group) = self
                .container_image()
                .map(image_repository)
                .filter(|repository| !repository.is_empty())
                .or_else(|| self.container_id())
        {
            return group;
        }
        self.node_name().unwrap_or("host")
    }

    fn may_read(&self) -> bool {
        !matches!(self.access(), Some(Access::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The group `workload()` gives for an event with these container fields.
    fn workload_of(in_container: bool, id: Option<&str>, image: Option<&str>) -> String {
        let fields = EventFields {
            ts_ns: 0,
            kind: EventKind::Open,
            node_name: Some("node-a"),
            path: "/var/run/secrets/kubernetes.io/serviceaccount/token",
            access: Some(Access::Read),
            pid: 42,
            ppid: None,
            uid: None,
            gid: None,
            comm: None,
            exe: "/usr/bin/cat",
            args: None,
            in_container,
            container_id: id,
            container_image: image,
            file_id: None,
            canonical_path: None,
            euid: None,
            egid: None,
            exe_digest: None,
            exe_swapped_to: None,
            ancestors: picket_abi::Ancestors::default(),
        };
        let mut buf = Vec::new();
        fields.encode(&mut buf);
        Event::parse(&buf).unwrap().workload().to_string()
    }

    #[test]
    fn the_workload_is_the_image_repository_else_the_container_else_the_node() {
        let digest = "@sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        for image in [
            "registry.example/payments-api:2.7.1".to_string(),
            "registry.example/payments-api:2.7.2".to_string(),
            format!("registry.example/payments-api{digest}"),
            format!("registry.example/payments-api:2.7.2{digest}"),
        ] {
            assert_eq!(
                workload_of(true, Some("3f9c"), Some(&image)),
                "registry.example/payments-api"
            );
        }
        assert_eq!(
            workload_of(true, Some("3f9c"), Some("host:5000/app")),
            "host:5000/app"
        );
        // An image that is all tag or digest names no repository: the container's id does.
        assert_eq!(workload_of(true, Some("3f9c"), Some(":")), "3f9c");
        assert_eq!(workload_of(true, Some("3f9c"), Some("")), "3f9c");
        assert_eq!(workload_of(true, Some("3f9c"), None), "3f9c");
        assert_eq!(workload_of(true, None, Some("@sha256:ab")), "node-a");
        assert_eq!(workload_of(false, Some("3f9c"), Some("app:1")), "node-a");
    }
}

/// Everything a rule usually needs.
pub mod prelude {
    pub use crate::familiar::{Unfamiliar, unfamiliar_process, unfamiliar_process_as};
    pub use crate::path::{ProjectedFile, basename};
    pub use crate::{
        Access, Event, EventExt, EventKind, LogLevel, Manifest, ManifestBuilder, Severity, Signal,
        days, hours, image_repository, log, minutes, new_value,
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
