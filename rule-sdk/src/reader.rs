//! A complete rule of one common kind: an unfamiliar executable read a file that the kubelet
//! projects into pods (a service-account token, a cloud web-identity token).
//!
//! The workload's own client reads such a file routinely, so the rule learns which executables
//! read it, per workload ([`EventExt::workload`]), and raises a signal naming the first
//! unfamiliar one. The bundled `eks-token` and `k8s-sa-token` rules are this rule with their own
//! file and words:
//!
//! ```
//! use picket_rule_sdk::path::KUBERNETES_SERVICE_ACCOUNT_TOKEN;
//! use picket_rule_sdk::prelude::*;
//! use picket_rule_sdk::reader::UnfamiliarReader;
//!
//! const TOKEN_READER: UnfamiliarReader = UnfamiliarReader {
//!     id: "k8s-sa-token",
//!     title: "Unfamiliar process accessed Kubernetes service account token",
//!     description: "A process not seen before in this workload read the token.",
//!     file: KUBERNETES_SERVICE_ACCOUNT_TOKEN,
//! };
//!
//! fn manifest() -> Manifest {
//!     TOKEN_READER.manifest()
//! }
//!
//! fn on_event(event: &Event) {
//!     TOKEN_READER.on_event(event)
//! }
//!
//! picket_rule_sdk::rule!(manifest, on_event);
//! ```

use crate::path::ProjectedFile;
use crate::{EventExt, EventKind, Manifest, ManifestBuilder, Severity, Signal, days};

/// The new-value state the rule keeps, and the event field it learns: the reader's executable.
pub const STATE: &str = "process.exe";

/// A rule that flags the first unfamiliar executable to read `file` in a workload.
#[derive(Clone, Copy, Debug)]
pub struct UnfamiliarReader {
    /// The rule id (`[a-z0-9][a-z0-9-]*`).
    pub id: &'static str,
    /// The title every signal carries.
    pub title: &'static str,
    /// What the rule detects and why it matters.
    pub description: &'static str,
    /// The file whose readers are learned.
    pub file: ProjectedFile,
}

impl UnfamiliarReader {
    /// The manifest: severity medium, MITRE ATT&CK TA0006 / T1552 (unsecured credentials), opens
    /// of the file under every path it can be reported at, readers learned for 7 days and
    /// forgotten after 28 days unseen.
    pub fn manifest(&self) -> Manifest {
        ManifestBuilder::new(self.id)
            .title(self.title)
            .description(self.description)
            .severity(Severity::Medium)
            .mitre("TA0006-credential-access", "T1552-unsecured-credentials")
            .subscribe_projected(EventKind::Open, &self.file)
            .learning_period(days(7))
            .forget_after(days(28))
            .build()
    }

    /// Handles one event: an open that may read the file (matched by its path or, for a hard
    /// link, a bind mount or a chrooted reader, by the canonical path the agent adds), by an
    /// executable not seen reading it in this workload, raises a signal.
    pub fn on_event(&self, event: &crate::Event<'_>) {
        if !event.may_read() || !self.file.matches_event(event) {
            return;
        }
        let group = event.workload();
        // Who read it, started by what, as whom: the signal answers the first triage question.
        let raise = |field: &str, value: &str| {
            Signal::new()
                .new_value(field, value, group)
                .process_context(event)
                .emit();
        };
        if let Some(claimed) = event.exe_swapped_to() {
            // Not a matter of familiarity: the process made itself look like another program
            // after its exec (prctl PR_SET_MM_MAP), which only evasion needs.
            raise("process.exe_swapped_to", claimed);
            return;
        }
        // The path, the file's content and the parent: a learned path with other bytes, or a
        // learned program started by an unfamiliar parent, is unfamiliar (docs/new-value.md).
        if let Some(unfamiliar) = crate::familiar::unfamiliar_process(event, group) {
            raise(unfamiliar.field, &unfamiliar.value);
        }
    }
}
