//! An unfamiliar process read a pod's Kubernetes service-account token.
//!
//! Every pod that mounts its service account gets a projected token at
//! `/var/run/secrets/kubernetes.io/serviceaccount/token`, which authenticates to the API server
//! with the service account's permissions. The workload's own client reads it routinely, so the
//! rule learns which executables do, per image (with their content and their parent), and raises a signal when another one does
//! (MITRE ATT&CK TA0006, T1552).

use picket_rule_sdk::path::KUBERNETES_SERVICE_ACCOUNT_TOKEN;
use picket_rule_sdk::prelude::*;

fn manifest() -> Manifest {
    ManifestBuilder::new("k8s-sa-token")
        .title("Unfamiliar process accessed Kubernetes service account token")
        .description(
            "A process not seen before in this workload read the pod's service-account token, \
             which authenticates to the Kubernetes API server as the service account.",
        )
        .severity(Severity::Medium)
        .mitre("TA0006-credential-access", "T1552-unsecured-credentials")
        .subscribe_projected(EventKind::Open, &KUBERNETES_SERVICE_ACCOUNT_TOKEN)
        .learning_period(days(7))
        .forget_after(days(28))
        .build()
}

fn on_event(event: &Event) {
    if !event.may_read() || !KUBERNETES_SERVICE_ACCOUNT_TOKEN.matches_event(event) {
        return;
    }
    let group = event.workload();
    if let Some(claimed) = event.exe_swapped_to() {
        // Not a matter of familiarity: the process made itself look like another program after
        // its exec (prctl PR_SET_MM_MAP), which only evasion needs.
        Signal::new()
            .new_value("process.exe_swapped_to", claimed, group)
            .emit();
        return;
    }
    // The path, the file's content and the parent: a learned path with other bytes, or a
    // learned program started by an unfamiliar parent, is unfamiliar (docs/new-value.md).
    if let Some(unfamiliar) = unfamiliar_process(event, group) {
        Signal::new()
            .new_value(unfamiliar.field, &unfamiliar.value, group)
            .emit();
    }
}

picket_rule_sdk::rule!(manifest, on_event);
