//! An unfamiliar process read the AWS EKS (IRSA) web-identity token.
//!
//! Pods that use IAM Roles for Service Accounts get a projected token at
//! `/var/run/secrets/eks.amazonaws.com/serviceaccount/token`. Whoever reads it can exchange it
//! for the pod role's AWS credentials with `sts:AssumeRoleWithWebIdentity`. The AWS SDK in the
//! workload reads it routinely, so the rule learns which executables do (with their content and their parent), per
//! workload, and raises
//! a signal when another one does (MITRE ATT&CK TA0006, T1552). What it does is the SDK's
//! [`UnfamiliarReader`]; this crate gives it its file and words.

use picket_rule_sdk::path::EKS_WEB_IDENTITY_TOKEN;
use picket_rule_sdk::prelude::*;
use picket_rule_sdk::reader::UnfamiliarReader;

const EKS_TOKEN: UnfamiliarReader = UnfamiliarReader {
    id: "eks-token",
    title: "Unfamiliar process accessed AWS EKS service account token",
    description: "A process not seen before in this workload read the EKS web-identity token, \
                  which can be exchanged for the pod role's AWS credentials \
                  (sts:AssumeRoleWithWebIdentity).",
    file: EKS_WEB_IDENTITY_TOKEN,
};

fn manifest() -> Manifest {
    EKS_TOKEN.manifest()
}

fn on_event(event: &Event) {
    EKS_TOKEN.on_event(event)
}

picket_rule_sdk::rule!(manifest, on_event);
