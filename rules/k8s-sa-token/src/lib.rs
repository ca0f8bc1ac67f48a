//! An unfamiliar process read a pod's Kubernetes service-account token.
//!
//! Every pod that mounts its service account gets a projected token at
//! `/var/run/secrets/kubernetes.io/serviceaccount/token`, which authenticates to the API server
//! with the service account's permissions. The workload's own client reads it routinely, so the
//! rule learns which executables do, per workload, and raises a signal when another one does
//! (MITRE ATT&CK TA0006, T1552). What it does is the SDK's [`UnfamiliarReader`]; this crate
//! gives it its file and words.

use picket_rule_sdk::path::KUBERNETES_SERVICE_ACCOUNT_TOKEN;
use picket_rule_sdk::prelude::*;
use picket_rule_sdk::reader::UnfamiliarReader;

const K8S_SA_TOKEN: UnfamiliarReader = UnfamiliarReader {
    id: "k8s-sa-token",
    title: "Unfamiliar process accessed Kubernetes service account token",
    description: "A process not seen before in this workload read the pod's service-account \
                  token, which authenticates to the Kubernetes API server as the service account.",
    file: KUBERNETES_SERVICE_ACCOUNT_TOKEN,
};

fn manifest() -> Manifest {
    K8S_SA_TOKEN.manifest()
}

fn on_event(event: &Event) {
    K8S_SA_TOKEN.on_event(event)
}

picket_rule_sdk::rule!(manifest, on_event);
