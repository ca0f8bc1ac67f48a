//! An unfamiliar process read the kubelet's credentials.
//!
//! The kubelet authenticates to the API server as the node (`system:node:<name>`) with a client
//! certificate, whose key sits under `/var/lib/kubelet/pki/`, named in its kubeconfig
//! (`/etc/kubernetes/kubelet.conf` with kubeadm, `/var/lib/kubelet/kubeconfig` on EKS and
//! others). Whoever reads them can act as the node: read every secret its pods use, and more.
//! Only the kubelet reads them in normal operation, so the rule learns the readers per node
//! (each named with its container's image, if any: one path in two images is two programs),
//! and raises a signal for any other (MITRE ATT&CK TA0006, T1552.001 credentials in files).
//!
//! The client key is `kubelet-client-current.pem`, a link to a dated
//! `kubelet-client-<date>.pem` the kubelet rotates: an open reports the dated name (links are
//! resolved), which no exact basename can name. The agent's discovery finds the link under
//! `/var/lib/kubelet/pki/` and follows it, so the kernel knows the dated file by its identity and
//! the event carries `kubelet-client-current.pem` as its canonical path.

use picket_rule_sdk::prelude::*;

/// Every file the rule watches, by its full path.
const FILES: [&str; 6] = [
    "/etc/kubernetes/kubelet.conf",
    "/etc/kubernetes/bootstrap-kubelet.conf",
    "/var/lib/kubelet/kubeconfig",
    "/var/lib/kubelet/pki/kubelet-client-current.pem",
    "/var/lib/kubelet/pki/kubelet.key",
    "/var/lib/kubelet/pki/kubelet-server-current.pem",
];

fn manifest() -> Manifest {
    let basenames: Vec<&str> = FILES.iter().map(|path| basename(path)).collect();
    ManifestBuilder::new("kubelet-credentials")
        .title("Unfamiliar process accessed the kubelet's credentials")
        .description(
            "A process not seen before on this node read the kubelet's kubeconfig or its client \
             or serving key, which let it authenticate to the API server as the node.",
        )
        .severity(Severity::High)
        .mitre("TA0006-credential-access", "T1552.001-credentials-in-files")
        .subscribe(EventKind::Open, &basenames)
        .under(&[
            "/etc/kubernetes/",
            "/var/lib/kubelet/kubeconfig",
            "/var/lib/kubelet/pki/",
        ])
        .learning_period(days(7))
        .forget_after(days(28))
        .build()
}

fn is_watched(path: &str) -> bool {
    FILES.contains(&path)
}

fn on_event(event: &Event) {
    let watched = is_watched(event.path()) || event.canonical_path().is_some_and(is_watched);
    if !event.may_read() || !watched {
        return;
    }
    // One group per node: the kubelet is the reader, and a workload reading the node's
    // credentials is unfamiliar however new the workload is.
    let group = event.node_name().unwrap_or("host");
    let reader = match event.container_image().or_else(|| event.container_id()) {
        Some(workload) if event.in_container() => format!("{workload} {}", event.exe()),
        _ => event.exe().to_owned(),
    };
    if let Some(claimed) = event.exe_swapped_to() {
        Signal::new()
            .new_value("process.exe_swapped_to", claimed, group)
            .process_context(event)
            .emit();
        return;
    }
    if let Some(unfamiliar) = unfamiliar_process_as(event, group, &reader) {
        Signal::new()
            .new_value(unfamiliar.field, &unfamiliar.value, group)
            .process_context(event)
            .emit();
    }
}

picket_rule_sdk::rule!(manifest, on_event);
