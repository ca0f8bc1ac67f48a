//! Building a rule's manifest.

use picket_abi::{EventKind, Manifest, NewValueDefaults, Severity, StateSettings, Subscription};

/// Nanoseconds in `n` minutes, for [`ManifestBuilder::learning_period`] and
/// [`ManifestBuilder::forget_after`].
pub const fn minutes(n: u64) -> u64 {
    n * 60 * 1_000_000_000
}

/// Nanoseconds in `n` hours.
pub const fn hours(n: u64) -> u64 {
    minutes(n * 60)
}

/// Nanoseconds in `n` days.
pub const fn days(n: u64) -> u64 {
    hours(n * 24)
}

/// Appends the `items` not already in `list`, in order: subscribing twice to the same name or
/// prefix lists it once.
fn add_new(list: &mut Vec<String>, items: &[&str]) {
    for item in items {
        if !list.iter().any(|have| have == item) {
            list.push(String::from(*item));
        }
    }
}

/// Builds a [`Manifest`]; unset fields take sensible defaults (severity medium, learning period
/// 7 days, forget after 28 days).
#[derive(Clone, Debug)]
pub struct ManifestBuilder {
    manifest: Manifest,
}

impl ManifestBuilder {
    /// Starts a manifest for the rule `id` (`[a-z0-9][a-z0-9-]*`, at most 64 bytes).
    pub fn new(id: &str) -> Self {
        ManifestBuilder {
            manifest: Manifest {
                id: id.into(),
                title: String::new(),
                description: String::new(),
                severity: Severity::Medium,
                tactic: String::new(),
                technique: String::new(),
                subscription: Subscription {
                    kinds: Vec::new(),
                    basenames: Vec::new(),
                    path_prefixes: Vec::new(),
                },
                new_value: NewValueDefaults {
                    learning_period_ns: days(7),
                    forget_after_ns: days(28),
                },
                states: Vec::new(),
            },
        }
    }

    /// The one-line title every signal carries.
    pub fn title(mut self, title: &str) -> Self {
        self.manifest.title = title.into();
        self
    }

    /// What the rule detects and why it matters.
    pub fn description(mut self, description: &str) -> Self {
        self.manifest.description = description.into();
        self
    }

    /// Severity of the rule's signals.
    pub fn severity(mut self, severity: Severity) -> Self {
        self.manifest.severity = severity;
        self
    }

    /// MITRE ATT&CK tactic and technique, such as `TA0006-credential-access` and
    /// `T1552-unsecured-credentials`.
    pub fn mitre(mut self, tactic: &str, technique: &str) -> Self {
        self.manifest.tactic = tactic.into();
        self.manifest.technique = technique.into();
        self
    }

    /// Subscribes to events of `kind` on files with one of these basenames (after links are
    /// resolved). The kernel drops opens of every other file before they reach user space.
    pub fn subscribe(mut self, kind: EventKind, basenames: &[&str]) -> Self {
        let subscription = &mut self.manifest.subscription;
        if !subscription.kinds.contains(&kind) {
            subscription.kinds.push(kind);
        }
        add_new(&mut subscription.basenames, basenames);
        self
    }

    /// Narrows the subscription to paths under these prefixes, so that the host does not even
    /// enter the rule for other files that share a basename.
    ///
    /// A `*` segment stands for any one path segment: `/home/*/.aws/` covers every user's
    /// `.aws` directory (matched by the host; the kernel prefilter works on basenames).
    pub fn under(mut self, prefixes: &[&str]) -> Self {
        add_new(&mut self.manifest.subscription.path_prefixes, prefixes);
        self
    }

    /// Subscribes to events of `kind` on a file the kubelet projects into pods: its basename,
    /// and the prefixes of every path it can appear under.
    pub fn subscribe_projected(self, kind: EventKind, file: &crate::path::ProjectedFile) -> Self {
        let prefixes = file.path_prefixes();
        let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
        self.subscribe(kind, &[file.basename()]).under(&prefixes)
    }

    /// Default learning period of the rule's new-value states, in nanoseconds.
    pub fn learning_period(mut self, ns: u64) -> Self {
        self.manifest.new_value.learning_period_ns = ns;
        self
    }

    /// Default time after which an unseen value is forgotten, in nanoseconds.
    pub fn forget_after(mut self, ns: u64) -> Self {
        self.manifest.new_value.forget_after_ns = ns;
        self
    }

    /// Learning settings for one new-value state, in place of the rule's defaults
    /// ([`learning_period`](Self::learning_period), [`forget_after`](Self::forget_after)):
    /// a state that pairs values (`process.parent.exe`) can learn longer than the rule's
    /// main one, or forget sooner. Given twice for one state, the second wins. An operator's
    /// `--learning-period` or `--forget-after` still overrides every state.
    pub fn state(mut self, name: &str, learning_period_ns: u64, forget_after_ns: u64) -> Self {
        let settings = StateSettings {
            name: name.into(),
            learning_period_ns,
            forget_after_ns,
        };
        let states = &mut self.manifest.states;
        match states.iter_mut().find(|state| state.name == name) {
            Some(existing) => *existing = settings,
            None => states.push(settings),
        }
        self
    }

    /// The finished manifest.
    pub fn build(self) -> Manifest {
        self.manifest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribing_twice_lists_each_name_and_prefix_once() {
        let file = crate::path::KUBERNETES_SERVICE_ACCOUNT_TOKEN;
        let once = ManifestBuilder::new("x")
            .subscribe_projected(EventKind::Open, &file)
            .build();
        let twice = ManifestBuilder::new("x")
            .subscribe_projected(EventKind::Open, &file)
            .subscribe_projected(EventKind::Open, &file)
            .subscribe(EventKind::Open, &["token", "other", "other"])
            .build();
        assert_eq!(twice.subscription.kinds, [EventKind::Open]);
        assert_eq!(twice.subscription.basenames, ["token", "other"]);
        assert_eq!(
            twice.subscription.path_prefixes,
            once.subscription.path_prefixes
        );
    }
}
