//! An unfamiliar process read a cloud provider's credentials from a home directory.
//!
//! The cloud CLIs and SDKs keep long-lived credentials in their user's home: AWS's
//! `~/.aws/credentials` (access keys), Google Cloud's
//! `~/.config/gcloud/application_default_credentials.json` (a refresh token or a service
//! account key) and the Azure CLI's `~/.azure/msal_token_cache.json` (access and refresh
//! tokens). Whoever reads one acts as that identity. The rule watches them for root and every
//! home under `/home`, learns which processes read them per workload (with their content and
//! their parent, as the token rules do), and raises a signal when another one does (MITRE
//! ATT&CK TA0006, T1552.001 credentials in files).

use picket_rule_sdk::path::{
    AWS_CREDENTIALS, AZURE_MSAL_TOKEN_CACHE, GCP_APPLICATION_DEFAULT_CREDENTIALS, HomeFile,
};
use picket_rule_sdk::prelude::*;

const FILES: [HomeFile; 3] = [
    AWS_CREDENTIALS,
    GCP_APPLICATION_DEFAULT_CREDENTIALS,
    AZURE_MSAL_TOKEN_CACHE,
];

fn manifest() -> Manifest {
    let mut builder = ManifestBuilder::new("cloud-credentials")
        .title("Unfamiliar process accessed cloud credentials")
        .description(
            "A process not seen before in this workload read a cloud provider's credentials file \
             in a home directory (AWS ~/.aws/credentials, Google Cloud's application default \
             credentials, the Azure CLI's token cache), which let it act as that identity.",
        )
        .severity(Severity::High)
        .mitre("TA0006-credential-access", "T1552.001-credentials-in-files")
        .learning_period(days(7))
        .forget_after(days(28));
    for file in &FILES {
        let prefixes = file.path_prefixes();
        let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
        builder = builder
            .subscribe(EventKind::Open, &[file.basename()])
            .under(&prefixes);
    }
    builder.build()
}

fn on_event(event: &Event) {
    if !event.may_read() || !FILES.iter().any(|file| file.matches_event(event)) {
        return;
    }
    let group = event.workload();
    if let Some(claimed) = event.exe_swapped_to() {
        Signal::new()
            .new_value("process.exe_swapped_to", claimed, group)
            .process_context(event)
            .emit();
        return;
    }
    if let Some(unfamiliar) = unfamiliar_process(event, group) {
        Signal::new()
            .new_value(unfamiliar.field, &unfamiliar.value, group)
            .process_context(event)
            .emit();
    }
}

picket_rule_sdk::rule!(manifest, on_event);
