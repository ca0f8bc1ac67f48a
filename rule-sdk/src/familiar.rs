//! What makes a process familiar to a workload, beyond its executable's path: the bundled token
//! rules' way of not being fooled by a familiar name (docs/new-value.md, "Familiar processes").
//!
//! A path alone is evaded twice: a process that writes over a learned program's file (inside
//! its own container) runs under a learned path, and an interpreter the workload runs (its
//! `python3`) is learned, so a shell running it reads as familiar. So a process is asked about
//! in three new-value states, each learned on its own:
//!
//! | state | value | new when |
//! | --- | --- | --- |
//! | `process.exe` | the executable's path | an unseen program reads |
//! | `process.exe_digest` | path and content digest, `PATH sha256:…` | a learned path holds other bytes |
//! | `process.parent.exe` | path and the parent's path, `PATH <- PARENT` | a learned program is started by a process that never started it |
//!
//! The last two are asked only when the event carries the digest, resp. the parent (the live
//! agent gives both; a replayed event may give neither), so events without them are judged by
//! the path alone, as before.

use crate::{Event, new_value};

/// The first of the states above in which the event's process is new for `group`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unfamiliar {
    /// The state, and the event field it is about: `process.exe`, `process.exe_digest` or
    /// `process.parent.exe`.
    pub field: &'static str,
    /// The value that was new, as learned.
    pub value: String,
}

/// Asks every state that applies whether the event's process is new for `group` (so that each
/// learns), and returns the first that answered new, in the order of the table above.
pub fn unfamiliar_process(event: &Event<'_>, group: &str) -> Option<Unfamiliar> {
    unfamiliar_process_as(event, group, event.exe())
}

/// [`unfamiliar_process`] with `exe` standing for the executable's path in every value: for a
/// rule whose group spans workloads (the node), `exe` can name the workload too
/// (`registry.example/app:1.2 /usr/bin/cat`), since the same path in two images is two programs.
pub fn unfamiliar_process_as(event: &Event<'_>, group: &str, exe: &str) -> Option<Unfamiliar> {
    let mut first = None;
    let mut ask = |field: &'static str, value: String| {
        if new_value(field, group, &value) && first.is_none() {
            first = Some(Unfamiliar { field, value });
        }
    };
    ask("process.exe", exe.to_owned());
    if let Some(digest) = event.exe_digest() {
        ask("process.exe_digest", format!("{exe} {digest}"));
    }
    if let Some(parent) = event.parent() {
        ask("process.parent.exe", format!("{exe} <- {}", parent.exe));
    }
    first
}

/// The triage context of a signal about the event's process: `process.chain`, its executable
/// and its ancestors' (`/usr/bin/python3 <- /bin/sh <- /usr/bin/containerd-shim`, nearest first,
/// as far as known), `process.parent.cmdline` (the parent's command line, arguments joined by
/// spaces) and `process.euid` (else `process.uid`): who read the file, started by what, as
/// whom. Each value is cut to the ABI's 4096 bytes. Entries the event does not carry are left
/// out.
pub fn process_context(event: &Event<'_>) -> Vec<(&'static str, String)> {
    let mut context = Vec::with_capacity(3);
    let ancestors = event.ancestors();
    let mut chain = String::from(event.exe());
    for ancestor in ancestors.as_slice() {
        chain.push_str(" <- ");
        chain.push_str(ancestor.exe);
    }
    context.push(("process.chain", cut(chain)));
    if let Some(args) = ancestors.parent().and_then(|parent| parent.args) {
        let cmdline = args.iter().collect::<Vec<_>>().join(" ");
        context.push(("process.parent.cmdline", cut(cmdline)));
    }
    match (event.euid(), event.uid()) {
        (Some(euid), _) => context.push(("process.euid", euid.to_string())),
        (None, Some(uid)) => context.push(("process.uid", uid.to_string())),
        (None, None) => {}
    }
    context
}

/// `text` cut to at most [`picket_abi::MAX_STRING_BYTES`], at a character boundary.
fn cut(mut text: String) -> String {
    let max = picket_abi::MAX_STRING_BYTES;
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}
