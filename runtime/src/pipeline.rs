//! The rule pipeline: events in, each to the rules subscribed to it, signals out.
//!
//! Live events and replayed ones both enter here (design.md "Data flow"). The pipeline owns the
//! running rules; installing or removing one happens between two events, so every event is
//! evaluated by exactly one version of each rule. A rule that fails is contained: the failure is
//! reported, its instance rebuilt, and after repeated failures it is quarantined while the other
//! rules carry on. New-value state belongs to the rule id, not to the module, so it survives a
//! rule being replaced, quarantined or removed and added again.

use crate::event::Event;
use crate::sandbox::{LoadedModule, NewValue, RuleError, RuleInstance, Sandbox};
use crate::state::{
    DEFAULT_CAPACITY, DEFAULT_RULE_BYTES, DEFAULT_TOTAL_BYTES, RuleState, Settings,
};
use hashbrown::HashMap;
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

/// A signal on its way out.
#[derive(Clone, Copy, Debug)]
pub struct Signal<'a> {
    /// The manifest of the rule that raised it.
    pub rule: &'a Manifest,
    /// The new value behind it.
    pub new_value: Option<&'a NewValue>,
    /// The event that raised it.
    pub event: &'a Event<'a>,
}

/// Where the pipeline's results go.
pub trait Sink {
    /// A rule raised a signal.
    fn signal(&mut self, signal: &Signal<'_>);
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
    /// `None` only while quarantined after the module could not even be instantiated again;
    /// its state then waits in `parked`.
    instance: Option<RuleInstance>,
    parked: Option<RuleState>,
}

impl Slot {
    fn wants(&self, kind: EventKind, path: &str, basename: &str) -> bool {
        self.status.quarantined.is_none()
            && subscribed(&self.status.manifest.subscription, kind, path, basename)
    }

    fn take_state(self) -> Option<RuleState> {
        match self.instance {
            Some(instance) => Some(instance.into_state()),
            None => self.parked,
        }
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
                .any(|prefix| path.starts_with(prefix.as_str())))
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
    /// States of rules that are not installed now, kept for when they return.
    parked: HashMap<String, RuleState>,
    encoded: Vec<u8>,
}

impl Pipeline {
    /// An empty pipeline.
    pub fn new(sandbox: Arc<Sandbox>, config: PipelineConfig) -> Pipeline {
        Pipeline {
            sandbox,
            config,
            slots: Vec::new(),
            parked: HashMap::new(),
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
        let mut fresh = RuleState::new(settings, self.config.state_capacity);
        if self.config.journal {
            fresh.enable_journal();
        }
        let mut instance = self.sandbox.instantiate(&module, fresh)?;
        let position = self
            .slots
            .iter()
            .position(|slot| slot.status.manifest.id == id);
        // The new instance takes over the state in place; the old version, if any, is dropped
        // with the empty state it gets in exchange.
        match position {
            Some(index) => {
                let old = &mut self.slots[index];
                let old_state = match old.instance.as_mut() {
                    Some(old_instance) => Some(old_instance.state_mut()),
                    None => old.parked.as_mut(),
                };
                if let Some(old_state) = old_state {
                    std::mem::swap(instance.state_mut(), old_state);
                }
            }
            None => {
                if let Some(mut parked) = self.parked.remove(&id) {
                    std::mem::swap(instance.state_mut(), &mut parked);
                }
            }
        }
        instance.state_mut().set_settings(settings);
        instance
            .state_mut()
            .set_bounds(self.config.state_capacity, self.config.state_rule_bytes);
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
            parked: None,
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
        let slot = self.slots.remove(index);
        if let Some(state) = slot.take_state() {
            self.parked.insert(id.to_string(), state);
        }
        true
    }

    /// The installed rules, ordered by id.
    pub fn rules(&self) -> impl Iterator<Item = &RuleStatus> {
        self.slots.iter().map(|slot| &slot.status)
    }

    /// Runs `f` on the new-value state of every rule, installed or not.
    pub fn for_each_state(&mut self, mut f: impl FnMut(&str, &mut RuleState)) {
        for slot in &mut self.slots {
            let id = slot.status.manifest.id.as_str();
            if let Some(state) = slot
                .instance
                .as_mut()
                .map(RuleInstance::state_mut)
                .or(slot.parked.as_mut())
            {
                f(id, state);
            }
        }
        for (id, state) in &mut self.parked {
            f(id, state);
        }
    }

    /// Bytes of keys waiting in every state's journal.
    pub fn journal_bytes(&self) -> usize {
        let installed = self.slots.iter().map(|slot| {
            slot.instance
                .as_ref()
                .map(|i| i.state().journal_bytes())
                .or(slot.parked.as_ref().map(RuleState::journal_bytes))
                .unwrap_or(0)
        });
        installed.sum::<usize>()
            + self
                .parked
                .values()
                .map(RuleState::journal_bytes)
                .sum::<usize>()
    }

    /// Places a state read back from a durable store; it is used when the rule is installed.
    pub fn park_state(&mut self, id: &str, mut state: RuleState) {
        state.set_bounds(self.config.state_capacity, self.config.state_rule_bytes);
        self.parked.insert(id.to_string(), state);
    }

    /// Keeps all states together within the total byte budget: past it, the largest state
    /// evicts its least recently seen values until the total is at 7/8 of the budget.
    fn enforce_total_bytes(&mut self) {
        let total = self.config.state_total_bytes;
        let mut sum = 0;
        let mut largest = 0;
        self.for_each_state(|_, state| {
            sum += state.bytes();
            largest = largest.max(state.bytes());
        });
        if sum <= total {
            return;
        }
        let target = largest.saturating_sub(sum - (total - total / 8));
        let mut done = false;
        self.for_each_state(|_, state| {
            if !done && state.bytes() == largest {
                state.shrink_to(target);
                done = true;
            }
        });
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
            let result = instance.handle(&self.encoded, event.ts.as_nanos());
            sink.rule_evaluated(&slot.status, started.elapsed());
            // Signals raised before a failure are still delivered: they are real detections.
            for raised in instance.take_signals() {
                slot.status.stats.signals += 1;
                sink.signal(&Signal {
                    rule: &slot.status.manifest,
                    new_value: raised.new_value.as_ref(),
                    event,
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
            self.enforce_total_bytes();
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
            let mut old = slot.instance.take().expect("checked above");
            let scratch = RuleState::new(old.state().settings(), 2);
            match sandbox.instantiate(&slot.module, scratch) {
                Ok(mut instance) => {
                    std::mem::swap(instance.state_mut(), old.state_mut());
                    slot.instance = Some(instance);
                }
                Err(err) => {
                    slot.parked = Some(old.into_state());
                    reason = Some(format!("could not be instantiated again: {err}"));
                }
            }
        }
        if let Some(reason) = reason {
            slot.status.quarantined = Some(reason.clone());
            sink.rule_quarantined(&slot.status, &reason);
        }
    }
}
