//! An unfamiliar process read a user's AWS shared credentials file (`~/.aws/credentials`).
//!
//! The file holds long-lived access keys. The AWS CLI and SDKs of a workload read it routinely,
//! so the rule learns which executables do, per workload, and raises a signal the first time
//! another one does (MITRE ATT&CK TA0006 credential access, T1552.001 credentials in files).
//!
//! Replace the id, the words, the subscription and `on_event` with your own; the cases in
//! `cases/` show what the rule must and must not do, and `picket test` checks them (README.md).

use picket_rule_sdk::prelude::*;

/// The rule id: state is kept under it, signals carry it, cases name it.
const ID: &str = "aws-credentials";

fn manifest() -> Manifest {
    ManifestBuilder::new(ID)
        .title("Unfamiliar process read AWS shared credentials")
        .description(
            "A process not seen before in this workload read a ~/.aws/credentials file, which \
             holds long-lived AWS access keys.",
        )
        .severity(Severity::High)
        .mitre("TA0006-credential-access", "T1552.001-credentials-in-files")
        // The kernel drops the opens of every file with another basename; the host skips paths
        // under none of these prefixes before the rule is even entered.
        .subscribe(EventKind::Open, &["credentials"])
        .under(&["/root/.aws/", "/home/"])
        .learning_period(days(7))
        .forget_after(days(28))
        .build()
}

/// Whether `path` is a home directory's `.aws/credentials`: `/root/.aws/credentials` or
/// `/home/USER/.aws/credentials`.
fn is_aws_credentials(path: &str) -> bool {
    if path == "/root/.aws/credentials" {
        return true;
    }
    path.strip_prefix("/home/")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(user, rest)| !user.is_empty() && rest == ".aws/credentials")
}

fn on_event(event: &Event) {
    if !event.may_read() || !is_aws_credentials(event.path()) {
        return;
    }
    // The container's image, else its id, else the node: readers are learned per workload.
    let group = event.workload();
    if new_value("process.exe", group, event.exe()) {
        Signal::new()
            .new_value("process.exe", event.exe(), group)
            .emit();
    }
}

picket_rule_sdk::rule!(manifest, on_event);

#[cfg(test)]
mod tests {
    use super::is_aws_credentials;

    #[test]
    fn only_a_home_directorys_credentials_match() {
        assert!(is_aws_credentials("/root/.aws/credentials"));
        assert!(is_aws_credentials("/home/dev/.aws/credentials"));
        assert!(!is_aws_credentials("/home/.aws/credentials"));
        assert!(!is_aws_credentials("/home/dev/.aws/credentials.bak"));
        assert!(!is_aws_credentials("/home/dev/src/.aws/credentials"));
        assert!(!is_aws_credentials("/tmp/.aws/credentials"));
    }
}
