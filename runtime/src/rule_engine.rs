//! The rule engine: the pipeline with its rules, fed from the rules directory (and its watch),
//! with its learned state restored from and saved to the state directory. `picket replay` and
//! `picket run` both drive one.

use crate::admission::Admission;
use crate::event::Event;
use crate::module_cache::{CACHE_DIR, CacheKey};
use crate::pipeline::{OutputSignal, RuleStatus};
use crate::pipeline::{Pipeline, PipelineConfig, Sink};
use crate::rules_dir::{self, RuleDirectory, Scan};
use crate::sandbox::RuleError;
use crate::sandbox::{Limits, Sandbox};
use crate::signing::Signers;
use crate::state::Stats;
use crate::state::fleet::{self, Fleet, FleetOptions, HeldSignals, OwnedSignal, Update};
use crate::state::{Claim, Settings};
use crate::store::{self, Persister};
use crate::watch::{self, RuleWatcher};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often learned values are handed to the persister. With the commit after it, a value is
/// on disk well within a second of being learned.
pub const SAVE_EVERY: Duration = Duration::from_millis(200);

/// Shortest time between two reports of state evictions.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Journaled key bytes past which changes go to the persister before [`SAVE_EVERY`] is up.
const SAVE_AT_JOURNAL_BYTES: usize = 4 << 20;

/// Where the rule engine's inputs and outputs live.
#[derive(Clone, Debug)]
pub struct RuleEngineOptions {
    /// Directory of rule modules.
    pub rules: PathBuf,
    /// Directory for learned state and the compiled-module cache; nothing is kept without it.
    pub state: Option<PathBuf>,
    /// Sandbox limits.
    pub limits: Limits,
    /// Pipeline settings.
    pub pipeline: PipelineConfig,
    /// minisign public keys; when any is given, only modules signed by one of them load.
    pub trusted_keys: Vec<PathBuf>,
    /// The fleet store shared with the other agents (`--shared-state`), if any.
    pub fleet: Option<FleetOptions>,
}

/// The pipeline and what feeds and saves it: the rules directory and the state persister.
pub struct RuleEngine {
    sandbox: Arc<Sandbox>,
    pipeline: Pipeline,
    directory: Option<RuleDirectory>,
    persister: Option<Persister>,
    last_save: Instant,
    /// State counters already reported, per rule, and when.
    reported: HashMap<String, Stats>,
    last_report: Option<Instant>,
    /// The fleet store's worker and the signals waiting for it, with `--shared-state`.
    fleet: Option<FleetLink>,
    /// Settings last recorded (state file, fleet store), per rule.
    recorded_settings: HashMap<String, Settings>,
}

/// The rule engine's side of fleet learning.
struct FleetLink {
    fleet: Fleet,
    held: HeldSignals,
}

/// The groups that evicted, for the log: `state/group: N values`, most first.
fn evicting_summary(evicting: &[crate::state::EvictingGroup]) -> String {
    let parts: Vec<String> = evicting
        .iter()
        .filter(|e| !e.dropped)
        .map(|e| {
            format!(
                "{}/{}: {} values",
                shown(&e.state),
                shown(&e.group),
                e.values
            )
        })
        .collect();
    parts.join("; ")
}

/// A state name or group as the log shows it: escaped (it may come from a workload) and cut
/// to [`SHOWN_CHARS`] characters (a group may be 4 KiB).
fn shown(key: &str) -> String {
    let mut text: String = key
        .chars()
        .take(SHOWN_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if key.chars().nth(SHOWN_CHARS).is_some() {
        text.push_str("...");
    }
    text
}

/// Characters of a state name or group shown in the log.
const SHOWN_CHARS: usize = 120;

impl RuleEngine {
    /// Opens the state directory (restoring what was learned), then loads the rules directory.
    /// The first scan's errors are returned with the engine: bad modules are reported, the good
    /// ones run. A state or rules directory that others could write is refused (strict modes).
    pub fn start(options: &RuleEngineOptions) -> anyhow::Result<(RuleEngine, Scan)> {
        let signers = Signers::load(&options.trusted_keys)?;
        if let Some(signers) = &signers {
            tracing::info!(keys = ?signers, "only rule modules signed by a trusted key are loaded");
        }
        let mut sandbox = Sandbox::new(options.limits.clone())?;
        let mut config = options.pipeline.clone();
        let mut restored = None;
        let mut persister = None;
        if let Some(state_dir) = &options.state {
            crate::trust::check_state_dir(state_dir)?;
            let started = Instant::now();
            let restored_file = store::open_and_load(state_dir, config.state_capacity)?;
            let (state_store, states, values) = (
                restored_file.store,
                restored_file.states,
                restored_file.values,
            );
            tracing::info!(
                file = %state_store.path().display(),
                rules = states.len(),
                values,
                "learned state restored in {:?}",
                started.elapsed()
            );
            restored = Some(states);
            persister = Some(Persister::start(state_store)?);
            config.journal = true;
            let cache = state_dir.join(CACHE_DIR);
            let key = CacheKey::load_or_create(state_dir).map_err(anyhow::Error::msg)?;
            if let Err(err) = sandbox.use_module_cache(&cache, key) {
                tracing::warn!(dir = %cache.display(), "no compiled-module cache: {err}");
            }
        }
        let sandbox = Arc::new(sandbox);
        let mut pipeline = Pipeline::new(Arc::clone(&sandbox), config);
        if options.fleet.is_some() {
            pipeline.states_mut().enable_outbox();
        }
        if let Some(states) = restored {
            pipeline.states_mut().restore(states);
        }
        let fleet = match &options.fleet {
            Some(fleet_options) => Some(join_fleet(fleet_options, &mut pipeline)?),
            None => None,
        };
        let admission = Admission::new(signers.map(Arc::new));
        admission.check_dir(&options.rules)?;
        let mut directory = RuleDirectory::new(&options.rules).with_admission(admission);
        let scan = directory
            .scan(&sandbox)
            .map_err(|err| anyhow::anyhow!("rules directory {}: {err}", options.rules.display()))?;
        let host = RuleEngine {
            sandbox,
            pipeline,
            directory: Some(directory),
            persister,
            last_save: Instant::now(),
            reported: HashMap::new(),
            last_report: None,
            fleet,
            recorded_settings: HashMap::new(),
        };
        Ok((host, scan))
    }

    /// Starts watching the rules directory; each scan after a change goes to `deliver`, which
    /// returns `false` once nobody listens any more. Apply the scans with [`RuleEngine::apply`].
    pub fn watch(
        &mut self,
        deliver: impl FnMut(Scan) -> bool + Send + 'static,
    ) -> anyhow::Result<RuleWatcher> {
        let directory = self
            .directory
            .take()
            .ok_or_else(|| anyhow::anyhow!("the rules directory is already watched"))?;
        let dir = directory.path().display().to_string();
        watch::spawn(directory, Arc::clone(&self.sandbox), deliver)
            .map_err(|err| anyhow::anyhow!("watching rules directory {dir}: {err}"))
    }

    /// Applies a scan between two events; returns whether the set of rules changed.
    pub fn apply(&mut self, scan: Scan) -> bool {
        rules_dir::apply(&mut self.pipeline, scan)
    }

    /// Evaluates one event. A rule learning fast (or a hostile one learning big keys) has its
    /// changes handed to the persister early, so that they never pile up in memory.
    pub fn handle(&mut self, event: &Event<'_>, sink: &mut dyn Sink) {
        match &mut self.fleet {
            None => self.pipeline.handle(event, sink),
            Some(link) => {
                let mut gate = Gate {
                    sink: &mut *sink,
                    raised: Vec::new(),
                };
                self.pipeline.handle(event, &mut gate);
                let raised = gate.raised;
                let claims = self.pipeline.states_mut().take_claims();
                link.route(raised, claims, event, self.pipeline.states(), sink);
            }
        }
        if self.persister.is_some()
            && self.pipeline.states().journal_bytes() > SAVE_AT_JOURNAL_BYTES
        {
            self.save();
        }
    }

    /// Hands learned values to the persister when [`SAVE_EVERY`] has passed.
    pub fn save_if_due(&mut self) {
        if self.last_save.elapsed() >= SAVE_EVERY {
            self.save();
        }
    }

    /// Hands learned values to the persister (and to the fleet store) now, and reports rules
    /// whose state is full.
    pub fn save(&mut self) {
        self.last_save = Instant::now();
        if let Some(persister) = &mut self.persister {
            persister.send(self.pipeline.states_mut().take_changes());
        }
        if let Some(link) = &mut self.fleet {
            let sightings = self
                .pipeline
                .states_mut()
                .take_outboxes()
                .into_iter()
                .flat_map(|(rule, outbox)| {
                    outbox
                        .sightings
                        .into_iter()
                        .map(move |sighting| (rule.clone(), sighting))
                })
                .collect();
            link.fleet.push(sightings);
        }
        // The settings each rule runs with, recorded where its state is, for `picket state`.
        for rule in self.pipeline.rules() {
            let id = &rule.manifest.id;
            let settings = self.pipeline.states().get(id).map(|s| s.settings());
            if let Some(settings) = settings
                && self.recorded_settings.get(id) != Some(&settings)
            {
                if let Some(link) = &mut self.fleet {
                    link.fleet.set_settings(id, settings);
                }
                if let Some(persister) = &mut self.persister {
                    persister.send_settings(id, settings);
                }
                self.recorded_settings.insert(id.clone(), settings);
            }
        }
        // The metrics follow every save; the log only at most every REPORT_EVERY.
        let metrics = crate::metrics::global();
        for (rule, state) in self.pipeline.states().iter() {
            metrics.rule_state(rule, state.entries(), state.stats().evicted);
            let stats = state.stats();
            metrics.rule_state_groups_evicted(
                rule,
                stats.groups_evicted - stats.detecting_groups_evicted,
                stats.detecting_groups_evicted,
            );
        }
        self.report_state(false);
    }

    /// Logs evictions and events from the future since the last report: at most every
    /// [`REPORT_EVERY`] (a rule churning through its budget must not flood the log), or now.
    fn report_state(&mut self, now: bool) {
        if !now
            && self
                .last_report
                .is_some_and(|at| at.elapsed() < REPORT_EVERY)
        {
            return;
        }
        self.last_report = Some(Instant::now());
        let reported = &mut self.reported;
        for (rule, state) in self.pipeline.states_mut().iter_mut() {
            let now = state.stats();
            let before = reported.entry(rule.to_string()).or_default();
            let evicting = state.take_evicting_groups();
            if now.evicted > before.evicted {
                tracing::warn!(
                    rule,
                    evicted = now.evicted - before.evicted,
                    total = now.evicted,
                    entries = state.entries(),
                    bytes = state.bytes(),
                    capacity = state.capacity(),
                    max_bytes = state.max_bytes(),
                    groups = state.group_count(),
                    max_groups = state.max_groups(),
                    groups_dropped = now.groups_evicted - before.groups_evicted,
                    evicting = %evicting_summary(&evicting),
                    "new-value state full: the groups holding the most evicted their own least \
                     recently seen values (see --state-capacity, --state-bytes-per-rule, \
                     --state-bytes-total)"
                );
            }
            for dropped in evicting.iter().filter(|e| e.dropped) {
                tracing::warn!(
                    rule,
                    state = %shown(&dropped.state),
                    group = %shown(&dropped.group),
                    values = dropped.values,
                    "new-value group table full and no group learning: the least recently seen \
                     group that had finished learning was dropped, and learns again when it \
                     returns (docs/new-value.md)"
                );
            }
            let (learning, detecting) = state.group_status();
            crate::metrics::global()
                .fleet
                .set_groups(rule, learning, detecting);
            if now.ahead > before.ahead {
                tracing::warn!(
                    rule,
                    events = now.ahead - before.ahead,
                    total = now.ahead,
                    "events dated implausibly far ahead of the stream: not used to forget values \
                     (docs/new-value.md)"
                );
            }
            *before = now;
        }
    }

    /// Basenames the rules subscribe to (`None`: some rule wants every file).
    pub fn basenames(&self) -> Option<BTreeSet<String>> {
        self.pipeline.basenames()
    }

    /// The pipeline, for reports.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// The fleet worker's next update, for the live agent to await between events; never
    /// comes without `--shared-state`.
    pub async fn next_fleet_update(&mut self) -> Update {
        let update = match &mut self.fleet {
            Some(link) => link.fleet.updates().recv().await,
            None => None,
        };
        match update {
            Some(update) => update,
            None => std::future::pending().await,
        }
    }

    /// Applies one update of the fleet worker: what other nodes learned, or a claim's answer
    /// (which may let a held signal go to `sink`).
    pub fn apply_fleet(&mut self, update: Update, sink: &mut dyn Sink) {
        let Some(link) = &mut self.fleet else {
            return;
        };
        match update {
            Update::Remote(remotes) => fleet::apply(self.pipeline.states_mut(), remotes),
            Update::Claimed { id, outcome, .. } => link.held.answer(id, &outcome, sink),
        }
    }

    /// Applies every update already waiting (a replay, between batches of events).
    pub fn poll_fleet(&mut self, sink: &mut dyn Sink) {
        while let Some(update) = self
            .fleet
            .as_mut()
            .and_then(|link| link.fleet.updates().try_recv().ok())
        {
            self.apply_fleet(update, sink);
        }
    }

    /// Applies an operator's request from the control socket (`picket state` on a running
    /// agent) to the learned state; changes are saved like learning.
    pub fn control(
        &mut self,
        op: crate::state::admin::Op,
    ) -> Result<crate::state::admin::Outcome, String> {
        let now = crate::time::Timestamp::from_system_time(std::time::SystemTime::now());
        let outcome = crate::state::admin::apply_local(
            self.pipeline.states_mut(),
            &self.recorded_settings,
            op,
            now,
        );
        self.save();
        outcome
    }

    /// Signals still waiting for the fleet's answer.
    pub fn held_signals(&self) -> usize {
        self.fleet.as_ref().map_or(0, |link| link.held.len())
    }

    /// Waits up to `wait` for the answers held signals need, then lets whatever still waits go
    /// out unconfirmed: a stopping agent loses no signal.
    pub fn release_held(&mut self, wait: Duration, sink: &mut dyn Sink) {
        let deadline = Instant::now() + wait;
        while self.held_signals() > 0 && Instant::now() < deadline {
            self.poll_fleet(sink);
            if self.held_signals() > 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if let Some(link) = &mut self.fleet {
            link.held
                .release_all("the agent stopped before the fleet store answered", sink);
        }
    }

    /// Saves what was learned and waits until it is committed (and pushed to the fleet store,
    /// within a bound).
    pub fn shutdown(mut self) {
        self.save();
        self.report_state(true);
        if let Some(persister) = self.persister.take() {
            persister.finish();
        }
        if let Some(link) = self.fleet.take() {
            link.fleet.shutdown();
        }
    }
}

/// Connects to the fleet store and merges its baseline into the restored states, then hands it
/// what this node knows that the fleet does not (learned alone, during an outage).
fn join_fleet(options: &FleetOptions, pipeline: &mut Pipeline) -> anyhow::Result<FleetLink> {
    let started = Instant::now();
    let fleet::Started {
        mut fleet,
        baseline,
        unreachable,
    } = Fleet::start(options.clone())?;
    match &unreachable {
        None => tracing::info!(
            store = fleet.store(),
            entries = baseline.len(),
            "joined the fleet in {:?}",
            started.elapsed()
        ),
        Some(why) => tracing::error!(
            store = fleet.store(),
            "fleet store unreachable at start, deciding alone until it answers: {why}"
        ),
    }
    let known: std::collections::HashSet<(String, String, String, String)> = baseline
        .iter()
        .filter_map(|remote| match remote {
            fleet::Remote::Seen {
                name,
                value: Some((value, ..)),
                ..
            } => Some((
                name.rule.clone(),
                name.state.clone(),
                name.group.clone(),
                value.clone(),
            )),
            _ => None,
        })
        .collect();
    let mut alone = Vec::new();
    for (rule, state) in pipeline.states().iter() {
        for group in state.groups() {
            for (value, seen_ns) in &group.values {
                let key = (
                    rule.to_string(),
                    group.state.to_string(),
                    group.group.to_string(),
                    value.to_string(),
                );
                if !known.contains(&key) {
                    alone.push((
                        rule.to_string(),
                        crate::state::Sighting {
                            state: group.state.into(),
                            group: group.group.into(),
                            started_ns: group.started_ns,
                            value: (*value).into(),
                            seen_ns: *seen_ns,
                        },
                    ));
                }
            }
        }
    }
    if !alone.is_empty() {
        tracing::info!(
            values = alone.len(),
            "values this node learned that the fleet does not know yet: pushing them"
        );
        fleet.push(alone);
    }
    fleet::apply(pipeline.states_mut(), baseline);
    Ok(FleetLink {
        fleet,
        held: HeldSignals::default(),
    })
}

/// Catches the signals of one event so that those resting on a claim can wait for the fleet;
/// everything else goes straight through.
struct Gate<'s> {
    sink: &'s mut dyn Sink,
    raised: Vec<(String, OwnedSignal)>,
}

impl Sink for Gate<'_> {
    fn signal(&mut self, signal: &OutputSignal<'_>) {
        self.raised.push((
            signal.rule.id.clone(),
            OwnedSignal {
                rule: Arc::new(signal.rule.clone()),
                new_value: signal.new_value.cloned(),
                context: signal.context.clone(),
            },
        ));
    }

    fn rule_failed(&mut self, rule: &RuleStatus, error: &RuleError, event: &Event<'_>) {
        self.sink.rule_failed(rule, error, event);
    }

    fn rule_quarantined(&mut self, rule: &RuleStatus, reason: &str) {
        self.sink.rule_quarantined(rule, reason);
    }

    fn rule_evaluated(&mut self, rule: &RuleStatus, took: Duration) {
        self.sink.rule_evaluated(rule, took);
    }
}

impl FleetLink {
    /// Sends one event's claims to the store, and holds the signals that rest on them; the
    /// others go out now.
    fn route(
        &mut self,
        raised: Vec<(String, OwnedSignal)>,
        claims: Vec<(String, Vec<Claim>)>,
        event: &Event<'_>,
        states: &crate::rule_states::RuleStates,
        sink: &mut dyn Sink,
    ) {
        let mut ids: HashMap<String, Vec<u64>> = HashMap::new();
        for (rule, claims) in claims {
            let Some(settings) = states.get(&rule).map(|s| s.settings()) else {
                continue;
            };
            let rule_ids = ids.entry(rule.clone()).or_default();
            for claim in claims {
                rule_ids.push(self.fleet.claim(&rule, claim.sighting, settings));
            }
        }
        let mut by_rule: HashMap<String, Vec<OwnedSignal>> = HashMap::new();
        let mut order = Vec::new();
        for (rule, signal) in raised {
            if !by_rule.contains_key(&rule) {
                order.push(rule.clone());
            }
            by_rule.entry(rule).or_default().push(signal);
        }
        for rule in order {
            let signals = by_rule.remove(&rule).unwrap_or_default();
            match ids.get(&rule) {
                Some(claims) if !claims.is_empty() => {
                    self.held.hold(signals, event.clone().into_owned(), claims);
                }
                _ => {
                    for signal in &signals {
                        sink.signal(&OutputSignal {
                            rule: &signal.rule,
                            new_value: signal.new_value.as_ref(),
                            context: &signal.context,
                            event,
                            fleet: None,
                        });
                    }
                }
            }
        }
    }
}
