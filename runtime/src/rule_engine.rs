//! The rule engine: the pipeline with its rules, fed from the rules directory (and its watch),
//! with its learned state restored from and saved to the state directory. `picket replay` and
//! `picket run` both drive one.

use crate::admission::Admission;
use crate::event::Event;
use crate::module_cache::{CACHE_DIR, CacheKey};
use crate::pipeline::{Pipeline, PipelineConfig, Sink};
use crate::rules_dir::{self, RuleDirectory, Scan};
use crate::sandbox::{Limits, Sandbox};
use crate::signing::Signers;
use crate::state::Stats;
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
        if let Some(states) = restored {
            pipeline.states_mut().restore(states);
        }
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
        self.pipeline.handle(event, sink);
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

    /// Hands learned values to the persister now, and reports rules whose state is full.
    pub fn save(&mut self) {
        self.last_save = Instant::now();
        if let Some(persister) = &mut self.persister {
            persister.send(self.pipeline.states_mut().take_changes());
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

    /// Saves what was learned and waits until it is committed.
    pub fn shutdown(mut self) {
        self.save();
        self.report_state(true);
        if let Some(persister) = self.persister.take() {
            persister.finish();
        }
    }
}
