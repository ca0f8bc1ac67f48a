//! The running host: the pipeline with its rules, fed from the rules directory, with its
//! learned state saved to the state directory. `picket replay` and `picket run` both drive one.

use crate::event::Event;
use crate::pipeline::{Pipeline, PipelineConfig, Sink};
use crate::rules_dir::{self, RuleDirectory, Scan};
use crate::sandbox::{Limits, Sandbox};
use crate::store::{self, Persister, StateStore};
use crate::watch::{self, RuleWatcher};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often learned values are handed to the persister. With the commit after it, a value is
/// on disk well within a second of being learned.
pub const SAVE_EVERY: Duration = Duration::from_millis(200);

/// Where the host's inputs and outputs live.
#[derive(Clone, Debug)]
pub struct HostOptions {
    /// Directory of rule modules.
    pub rules: PathBuf,
    /// Directory for learned state and the compiled-module cache; nothing is kept without it.
    pub state: Option<PathBuf>,
    /// Sandbox limits.
    pub limits: Limits,
    /// Pipeline settings.
    pub pipeline: PipelineConfig,
}

/// The pipeline and what feeds and saves it.
pub struct Host {
    sandbox: Arc<Sandbox>,
    pipeline: Pipeline,
    directory: Option<RuleDirectory>,
    persister: Option<Persister>,
    last_save: Instant,
    /// Evictions already reported, per rule.
    evictions_reported: HashMap<String, u64>,
}

impl Host {
    /// Opens the state directory (restoring what was learned), then loads the rules directory.
    /// The first scan's errors are returned with the host: bad modules are reported, the good
    /// ones run.
    pub fn start(options: &HostOptions) -> anyhow::Result<(Host, Scan)> {
        let mut sandbox = Sandbox::new(options.limits.clone())?;
        let mut config = options.pipeline.clone();
        let mut restored = None;
        let mut persister = None;
        if let Some(state_dir) = &options.state {
            let store = StateStore::open(state_dir)?;
            let started = Instant::now();
            let (states, values) = store.load(config.state_capacity)?;
            tracing::info!(
                file = %store.path().display(),
                rules = states.len(),
                values,
                "learned state restored in {:?}",
                started.elapsed()
            );
            restored = Some(states);
            persister = Some(Persister::start(store));
            config.journal = true;
            let cache = state_dir.join("modules");
            if let Err(err) = sandbox.use_module_cache(&cache) {
                tracing::warn!(dir = %cache.display(), "no compiled-module cache: {err}");
            }
        }
        let sandbox = Arc::new(sandbox);
        let mut pipeline = Pipeline::new(Arc::clone(&sandbox), config);
        if let Some(states) = restored {
            store::restore(&mut pipeline, states);
        }
        let mut directory = RuleDirectory::new(&options.rules);
        let scan = directory
            .scan(&sandbox)
            .map_err(|err| anyhow::anyhow!("rules directory {}: {err}", options.rules.display()))?;
        let host = Host {
            sandbox,
            pipeline,
            directory: Some(directory),
            persister,
            last_save: Instant::now(),
            evictions_reported: HashMap::new(),
        };
        Ok((host, scan))
    }

    /// Starts watching the rules directory; each scan after a change goes to `deliver`, which
    /// returns `false` once nobody listens any more. Apply the scans with [`Host::apply`].
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

    /// Evaluates one event.
    pub fn handle(&mut self, event: &Event<'_>, sink: &mut dyn Sink) {
        self.pipeline.handle(event, sink);
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
        if let Some(persister) = &self.persister {
            persister.send(store::drain(&mut self.pipeline));
        }
        let reported = &mut self.evictions_reported;
        let metrics = crate::metrics::global();
        self.pipeline.for_each_state(|rule, state| {
            let evicted = state.stats().evicted;
            metrics.rule_state(rule, state.entries(), evicted);
            let before = reported.entry(rule.to_string()).or_insert(0);
            if evicted > *before {
                tracing::warn!(
                    rule,
                    evicted = evicted - *before,
                    total = evicted,
                    capacity = state.capacity(),
                    "new-value state full: least recently seen values evicted (see --state-capacity)"
                );
                *before = evicted;
            }
        });
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
        if let Some(persister) = self.persister.take() {
            persister.finish();
        }
    }
}
