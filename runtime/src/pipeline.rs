//! The rule pipeline: events in, each to the rules subscribed to it, signals out.
//!
//! Live events and replayed ones both enter here (docs/README.md "Data flow"). The pipeline owns
//! the running rules; installing or removing one happens between two events, so every event is
//! evaluated by exactly one version of each rule. A rule that fails is contained: the failure is
//! reported, its instance rebuilt, and after repeated failures it is quarantined while the other
//! rules carry on. New-value state belongs to the rule id, not to the module, so it survives a
//! rule being replaced, quarantined or removed and added again.

use crate::event::Event;
use crate::rule_states::{RuleStates, StateId};
use crate::sandbox::{Context, LoadedModule, NewValue, RuleError, RuleInstance, Sandbox};
use crate::state::{DEFAULT_CAPACITY, DEFAULT_RULE_BYTES, DEFAULT_TOTAL_BYTES, Settings};
use picket_abi::{EventKind, Manifest, Subscription};
use std::collections::BTreeSet;
use std::sync::Arc;

/// Settings an operator or a conformance case imposes on every rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Learning period instead of the manifests' defaults.
    pub learning_period_ns: Option<u64>,
    /// Forget-after period instead of the manifests' defaults.
    pub forget_after_ns: Option<u64>,
}

impl Overrides {
    /// The settings of the states the manifest gives settings of their own, with the
    /// overrides applied to each as to the rule's.
    pub fn state_settings_for<'m>(
        &self,
        manifest: &'m Manifest,
    ) -> impl Iterator<Item = (&'m str, Settings)> + use<'m> {
        let overrides = *self;
        manifest.states.iter().map(move |state| {
            let settings = Settings {
                learning_period_ns: overrides
                    .learning_period_ns
                    .unwrap_or(state.learning_period_ns),
                forget_after_ns: overrides.forget_after_ns.unwrap_or(state.forget_after_ns),
            };
            (state.name.as_str(), settings)
        })
    }

    /// The settings for a rule with this manifest.
    pub fn settings_for(&self, manifest: &Manifest) -> Settings {
        Settings {
            learning_period_ns: self
                .learning_period_ns
                .unwrap_or(manifest.new_value.learning_period_ns),
            forget_after_ns: self
                .forget_after_ns
                .unwrap_or(manifest.new_value.forget_after_ns),
        }
    }
}

/// How the pipeline runs rules.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// Settings that override the rules' defaults.
    pub overrides: Overrides,
    /// Bound on each rule's new-value entries.
    pub state_capacity: usize,
    /// Bound on the bytes of each rule's new-value state.
    pub state_rule_bytes: usize,
    /// Bound on the bytes of all rules' new-value states together (the largest is evicted
    /// from first).
    pub state_total_bytes: usize,
    /// Failed events in a row after which a rule is quarantined.
    pub max_consecutive_failures: u32,
    /// Whether new states record their changes for a durable store.
    pub journal: bool,
}

impl Default for PipelineConfig {
    fn default() -> PipelineConfig {
        PipelineConfig {
            overrides: Overrides::default(),
            state_capacity: DEFAULT_CAPACITY,
            state_rule_bytes: DEFAULT_RULE_BYTES,
            state_total_bytes: DEFAULT_TOTAL_BYTES,
            max_consecutive_failures: 5,
            journal: false,
        }
    }
}

/// A signal on its way to the outputs: what a rule raised (the SDK's `Signal`, decoded by the
/// sandbox as a `RaisedSignal`) with the rule's manifest and the event, as a signal line is
/// written from them.
#[derive(Clone, Copy, Debug)]
pub struct OutputSignal<'a> {
    /// The manifest of the rule that raised it.
    pub rule: &'a Manifest,
    /// The new value behind it.
    pub new_value: Option<&'a NewValue>,
    /// The context the rule attached.
    pub context: &'a Context,
    /// The event that raised it.
    pub event: &'a Event<'a>,
    /// What the fleet said of it, when the state is shared (`None`: not shared, or the rule
    /// raised it without asking about a new value).
    pub fleet: Option<&'a FleetMark>,
}

/// Whether the fleet confirmed the new value behind a signal (docs/signals.md, `fleet`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FleetMark {
    /// `true`: the fleet store confirmed the value new for the whole fleet. `false`: the store
    /// did not answer in time, and this node decided alone.
    pub confirmed: bool,
    /// Why it is not confirmed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Where the pipeline's results go.
pub trait Sink {
    /// A rule raised a signal.
    fn signal(&mut self, signal: &OutputSignal<'_>);
    /// A rule failed on an event.
    fn rule_failed(&mut self, rule: &RuleStatus, error: &RuleError, event: &Event<'_>);
    /// A rule was quarantined and will see no more events until it is replaced.
    fn rule_quarantined(&mut self, rule: &RuleStatus, reason: &str);
    /// A rule evaluated an event in `took` (for metrics; ignored by default).
    fn rule_evaluated(&mut self, rule: &RuleStatus, took: std::time::Duration) {
        let _ = (rule, took);
    }
}

/// Counters for one rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleStats {
    /// Events handed to the rule.
    pub events: u64,
    /// Events it failed on.
    pub failures: u64,
    /// Signals it raised.
    pub signals: u64,
}

/// What the pipeline knows about one installed rule.
#[derive(Clone, Debug)]
pub struct RuleStatus {
    /// Its manifest.
    pub manifest: Arc<Manifest>,
    /// Where its module came from.
    pub source: Arc<str>,
    /// Why it is quarantined, if it is.
    pub quarantined: Option<String>,
    /// Its counters.
    pub stats: RuleStats,
    consecutive_failures: u32,
}

struct Slot {
    status: RuleStatus,
    module: LoadedModule,
    /// `None` only while quarantined after the module could not even be instantiated again.
    instance: Option<RuleInstance>,
    /// Its new-value state in the pipeline's [`RuleStates`].
    state: StateId,
}

impl Slot {
    fn wants(&self, kind: EventKind, path: &str, basename: &str) -> bool {
        self.status.quarantined.is_none()
            && subscribed(&self.status.manifest.subscription, kind, path, basename)
    }
}

/// Whether a subscription covers an event: its kind, its basename and its path prefix. The host
/// checks this before entering a rule, so most events a rule cannot match cost no sandbox call.
pub fn subscribed(
    subscription: &Subscription,
    kind: EventKind,
    path: &str,
    basename: &str,
) -> bool {
    subscription.kinds.contains(&kind)
        && (subscription.basenames.is_empty()
            || subscription.basenames.iter().any(|name| name == basename))
        && (subscription.path_prefixes.is_empty()
            || subscription
                .path_prefixes
                .iter()
                .any(|prefix| prefix_matches(prefix, path)))
}

/// Whether `path` starts with `prefix`, where a `*` segment of the prefix (`/home/*/.aws/`)
/// stands for any one whole, non-empty path segment. Loading refuses a `*` anywhere else
/// (`sandbox/load.rs`), so a prefix is never matched with a literal `*` by mistake.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if !prefix.contains('*') {
        return path.starts_with(prefix);
    }
    let mut want = prefix.split('/').peekable();
    let mut have = path.split('/');
    while let Some(piece) = want.next() {
        let Some(segment) = have.next() else {
            return false;
        };
        let last = want.peek().is_none();
        let fits = match piece {
            "*" => !segment.is_empty(),
            // The prefix may end inside a name, as `/run/sec` does.
            _ if last => segment.starts_with(piece),
            _ => segment == piece,
        };
        if !fits {
            return false;
        }
    }
    true
}

/// Why a path prefix cannot be a subscription's, if it cannot: a `*` must be a whole segment
/// followed by more of the path (`/home/*/.aws/`), since it is matched segment by segment.
pub fn prefix_pattern_error(prefix: &str) -> Option<String> {
    let segments: Vec<&str> = prefix.split('/').collect();
    for (index, segment) in segments.iter().enumerate() {
        if !segment.contains('*') {
            continue;
        }
        if *segment != "*" {
            return Some(format!(
                "path prefix `{}`: `*` stands for a whole path segment (`/home/*/.aws/`), not part \
                 of one (`{segment}`)",
                prefix.escape_debug()
            ));
        }
        if index + 1 == segments.len() {
            return Some(format!(
                "path prefix `{}` ends with `*`: write the directory itself (`{}`), which \
                 covers every path under it",
                prefix.escape_debug(),
                &prefix[..prefix.len() - 1]
            ));
        }
    }
    None
}

/// Whether installing a module added a rule or replaced one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Installed {
    /// A rule id not running before.
    Added,
    /// A new version of a running rule.
    Replaced,
}

/// The running rules.
pub struct Pipeline {
    sandbox: Arc<Sandbox>,
    config: PipelineConfig,
    slots: Vec<Slot>,
    /// Every rule's state, installed or not; lent to an instance for each call.
    states: RuleStates,
    encoded: Vec<u8>,
}

impl Pipeline {
    /// An empty pipeline.
    pub fn new(sandbox: Arc<Sandbox>, config: PipelineConfig) -> Pipeline {
        let states = RuleStates::new(
            config.state_capacity,
            config.state_rule_bytes,
            config.state_total_bytes,
            config.journal,
        );
        Pipeline {
            sandbox,
            config,
            slots: Vec::new(),
            states,
            encoded: Vec::with_capacity(1024),
        }
    }

    /// The sandbox rules run in.
    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    /// Installs a module: adds its rule, or replaces the running version of the same id, which
    /// keeps its new-value state. On failure nothing changes.
    pub fn install(&mut self, module: LoadedModule) -> Result<Installed, RuleError> {
        let id = module.manifest.id.clone();
        let settings = self.config.overrides.settings_for(&module.manifest);
        let instance = self.sandbox.instantiate(&module)?;
        let position = self
            .slots
            .iter()
            .position(|slot| slot.status.manifest.id == id);
        // The state stays where it is, under the rule id: a new version of a running rule, or
        // a rule that returns, finds what was learned before.
        let state = self.states.prepare(&id, settings);
        self.states
            .get_mut(state)
            .set_state_settings(self.config.overrides.state_settings_for(&module.manifest));
        let slot = Slot {
            status: RuleStatus {
                manifest: Arc::clone(&module.manifest),
                source: Arc::clone(&module.source),
                quarantined: None,
                stats: RuleStats::default(),
                consecutive_failures: 0,
            },
            module,
            instance: Some(instance),
            state,
        };
        match position {
            Some(index) => {
                self.slots[index] = slot;
                Ok(Installed::Replaced)
            }
            None => {
                let at = self
                    .slots
                    .partition_point(|other| other.status.manifest.id < id);
                self.slots.insert(at, slot);
                Ok(Installed::Added)
            }
        }
    }

    /// Removes the rule `id`, keeping its state for if it returns. Returns whether it was there.
    pub fn remove(&mut self, id: &str) -> bool {
        let Some(index) = self.slots.iter().position(|s| s.status.manifest.id == id) else {
            return false;
        };
        // Its state stays in `states`, for if it returns.
        self.slots.remove(index);
        true
    }

    /// The installed rules, ordered by id.
    pub fn rules(&self) -> impl Iterator<Item = &RuleStatus> {
        self.slots.iter().map(|slot| &slot.status)
    }

    /// Every rule's new-value state, installed or not.
    pub fn states(&self) -> &RuleStates {
        &self.states
    }

    /// Every rule's new-value state, to drain journals or place restored states.
    pub fn states_mut(&mut self) -> &mut RuleStates {
        &mut self.states
    }

    /// Basenames the installed rules subscribe to, for the kernel prefilter; `None` when some
    /// rule wants every file.
    pub fn basenames(&self) -> Option<BTreeSet<String>> {
        let mut names = BTreeSet::new();
        for slot in self.slots.iter().filter(|s| s.status.quarantined.is_none()) {
            let subscription = &slot.status.manifest.subscription;
            if subscription.basenames.is_empty() {
                return None;
            }
            names.extend(subscription.basenames.iter().cloned());
        }
        Some(names)
    }

    /// Evaluates one event with every rule subscribed to it.
    pub fn handle(&mut self, event: &Event<'_>, sink: &mut dyn Sink) {
        let kind = event.kind;
        let basename = event.basename();
        // A file known by identity is also offered under the path the agent found it at, so
        // that a hard link's or a chrooted reader's path reaches the rules of that file.
        let canonical = event
            .file
            .canonical_path
            .as_deref()
            .map(|path| (path, path.rsplit('/').next().unwrap_or(path)));
        let mut encoded = false;
        for slot in &mut self.slots {
            if !slot.wants(kind, &event.file.path, basename)
                && !canonical.is_some_and(|(path, name)| slot.wants(kind, path, name))
            {
                continue;
            }
            if !encoded {
                event.fields().encode(&mut self.encoded);
                encoded = true;
            }
            let Some(instance) = slot.instance.as_mut() else {
                continue;
            };
            slot.status.stats.events += 1;
            let started = std::time::Instant::now();
            let state = self.states.get_mut(slot.state);
            let result = instance.handle(&self.encoded, event.ts.as_nanos(), state);
            sink.rule_evaluated(&slot.status, started.elapsed());
            // Signals raised before a failure are still delivered: they are real detections.
            for raised in instance.take_signals() {
                slot.status.stats.signals += 1;
                sink.signal(&OutputSignal {
                    rule: &slot.status.manifest,
                    new_value: raised.new_value.as_ref(),
                    context: &raised.context,
                    event,
                    fleet: None,
                });
            }
            match result {
                Ok(()) => slot.status.consecutive_failures = 0,
                Err(error) => {
                    slot.status.stats.failures += 1;
                    slot.status.consecutive_failures += 1;
                    sink.rule_failed(&slot.status, &error, event);
                    Self::recover(&self.sandbox, &self.config, slot, &error, sink);
                }
            }
        }
        if encoded {
            self.states.enforce_total_bytes();
        }
    }

    /// After a failure: rebuild a poisoned instance, and quarantine a rule that keeps failing.
    fn recover(
        sandbox: &Sandbox,
        config: &PipelineConfig,
        slot: &mut Slot,
        error: &RuleError,
        sink: &mut dyn Sink,
    ) {
        let failures = slot.status.consecutive_failures;
        let mut reason = (failures >= config.max_consecutive_failures)
            .then(|| format!("failed {failures} events in a row; last error: {error}"));
        if slot
            .instance
            .as_ref()
            .is_some_and(RuleInstance::is_poisoned)
        {
            // The state was only lent to the failed call: it is still in `states`, untouched.
            slot.instance = None;
            match sandbox.instantiate(&slot.module) {
                Ok(instance) => slot.instance = Some(instance),
                Err(err) => reason = Some(format!("could not be instantiated again: {err}")),
            }
        }
        if let Some(reason) = reason {
            slot.status.quarantined = Some(reason.clone());
            sink.rule_quarantined(&slot.status, &reason);
        }
    }
}

#[cfg(test)]
mod pattern_tests {
    use super::*;

    #[test]
    fn star_segments_match_one_whole_segment() {
        let aws = "/home/*/.aws/";
        assert!(prefix_matches(aws, "/home/alice/.aws/credentials"));
        assert!(!prefix_matches(aws, "/home/.aws/credentials"));
        assert!(!prefix_matches(aws, "/home/a/b/.aws/credentials"));
        assert!(!prefix_matches(aws, "/home/alice/.aws"));
        assert!(!prefix_matches(aws, "/root/.aws/credentials"));
        assert!(prefix_matches(
            "/home/*/.config/gcloud/",
            "/home/b/.config/gcloud/x.json"
        ));
        assert!(prefix_matches(
            "/home/*/.az",
            "/home/b/.azure/msal_token_cache.json"
        ));
        // Literal prefixes keep their meaning, down to a prefix ending inside a name.
        for (prefix, path) in [
            ("/run/sec", "/run/secrets/x"),
            ("/a/", "/a/b"),
            ("/a/", "/ab"),
        ] {
            assert_eq!(
                prefix_matches(prefix, path),
                path.starts_with(prefix),
                "{prefix} {path}"
            );
        }
        // A literal `*` never matches a path holding one.
        assert!(!prefix_matches("/x/*/y/", "/x/*"));
    }

    #[test]
    fn a_star_that_is_not_a_whole_inner_segment_is_refused() {
        assert_eq!(prefix_pattern_error("/home/*/.aws/"), None);
        assert_eq!(prefix_pattern_error("/var/lib/kubelet/pods/"), None);
        let part = prefix_pattern_error("/home/a*/.aws/").unwrap();
        assert!(part.contains("whole path segment"), "{part}");
        let last = prefix_pattern_error("/home/*").unwrap();
        assert!(last.contains("`/home/`"), "{last}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::parse_event;
    use crate::sandbox::{Limits, test_module};
    use crate::state::Verdict;

    /// What the sink was told, in order.
    #[derive(Default)]
    struct Record {
        said: Vec<String>,
    }

    impl Sink for Record {
        fn signal(&mut self, signal: &OutputSignal<'_>) {
            self.said.push(format!("signal {}", signal.rule.id));
        }
        fn rule_failed(&mut self, rule: &RuleStatus, _: &RuleError, _: &Event<'_>) {
            self.said.push(format!("failed {}", rule.manifest.id));
        }
        fn rule_quarantined(&mut self, rule: &RuleStatus, _: &str) {
            self.said.push(format!("quarantined {}", rule.manifest.id));
        }
    }

    const EVENT: &str = r#"{"ts":"2026-11-22T10:00:00Z","kind":"open","file":{"path":"/x"},"process":{"pid":1,"exe":"/bin/x"}}"#;

    fn pipeline(config: PipelineConfig) -> Pipeline {
        Pipeline::new(Arc::new(Sandbox::new(Limits::default()).unwrap()), config)
    }

    fn load(pipeline: &Pipeline, id: &str, trap_on: &[u32]) -> LoadedModule {
        let bytes = test_module::rule(&test_module::manifest(id), trap_on);
        pipeline.sandbox().load(id, &bytes).unwrap()
    }

    fn run(pipeline: &mut Pipeline, events: usize) -> Vec<String> {
        let event = parse_event(EVENT).unwrap();
        let mut sink = Record::default();
        for _ in 0..events {
            pipeline.handle(&event, &mut sink);
        }
        sink.said
    }

    fn known(pipeline: &mut Pipeline, id: &str, value: &str) -> bool {
        let settings = pipeline.states().get(id).unwrap().settings();
        let state = pipeline.states_mut().prepare(id, settings);
        let state = pipeline.states_mut().get_mut(state);
        state.check(i64::MAX / 2, "s", "g", value).unwrap() == Verdict::Known
    }

    #[test]
    fn a_failed_rule_is_rebuilt_and_keeps_what_it_learned() {
        let mut pipeline = pipeline(PipelineConfig::default());
        let module = load(&pipeline, "flaky", &[2]);
        assert_eq!(pipeline.install(module).unwrap(), Installed::Added);
        // 1: learns a. 2: b is new (signal), then traps. 3: a rebuilt instance asks about a
        // again, known: nothing. 4: b, known: nothing, but it traps again.
        assert_eq!(
            run(&mut pipeline, 4),
            ["signal flaky", "failed flaky", "failed flaky"]
        );
        let status = pipeline.rules().next().unwrap();
        assert_eq!(status.stats.events, 4);
        assert_eq!(status.stats.failures, 2);
        assert_eq!(status.quarantined, None);
        assert!(known(&mut pipeline, "flaky", "b"));
    }

    #[test]
    fn a_rule_failing_in_a_row_is_quarantined_and_sees_no_more_events() {
        let config = PipelineConfig {
            max_consecutive_failures: 2,
            ..PipelineConfig::default()
        };
        let mut pipeline = pipeline(config);
        let module = load(&pipeline, "broken", &[1]);
        pipeline.install(module).unwrap();
        assert_eq!(
            run(&mut pipeline, 4),
            ["failed broken", "failed broken", "quarantined broken"]
        );
        let status = pipeline.rules().next().unwrap();
        assert_eq!(status.stats.events, 2);
        assert!(
            status
                .quarantined
                .as_deref()
                .unwrap()
                .contains("2 events in a row")
        );
        assert_eq!(pipeline.basenames(), Some(BTreeSet::new()));
    }

    #[test]
    fn state_belongs_to_the_rule_id_across_replace_and_remove() {
        let mut pipeline = pipeline(PipelineConfig::default());
        let module = load(&pipeline, "kept", &[]);
        pipeline.install(module.clone()).unwrap();
        run(&mut pipeline, 2);
        assert!(known(&mut pipeline, "kept", "b"));

        // A new version (a fresh instance, its counter at a): a and b are known, c is new.
        assert_eq!(
            pipeline.install(module.clone()).unwrap(),
            Installed::Replaced
        );
        assert_eq!(run(&mut pipeline, 3), ["signal kept"]);

        assert!(pipeline.remove("kept"));
        assert!(!pipeline.remove("kept"));
        assert_eq!(pipeline.rules().count(), 0);
        assert!(run(&mut pipeline, 1).is_empty());
        assert!(known(&mut pipeline, "kept", "c"), "kept while removed");

        assert_eq!(pipeline.install(module).unwrap(), Installed::Added);
        assert_eq!(run(&mut pipeline, 4), ["signal kept"], "only d is new");
        assert_eq!(pipeline.states().len(), 1);
    }

    #[test]
    fn rules_run_in_id_order() {
        let mut pipeline = pipeline(PipelineConfig::default());
        for id in ["b-rule", "a-rule"] {
            let module = load(&pipeline, id, &[]);
            pipeline.install(module).unwrap();
        }
        let ids: Vec<_> = pipeline.rules().map(|r| r.manifest.id.clone()).collect();
        assert_eq!(ids, ["a-rule", "b-rule"]);
        assert_eq!(run(&mut pipeline, 2), ["signal a-rule", "signal b-rule"]);
    }
}
