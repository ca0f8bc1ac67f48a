//! Outputs: where signals go (docs/signals.md). Each `--output` is one [`Destination`] (one file
//! per kind: [`file`] for stdout and files, [`http`] for webhooks, [`falcosidekick`]) behind its
//! own queue and thread ([`queue`]), with a disk [`spool`] for a remote one under `--state`.
//! The event thread only builds each signal's JSON line once ([`signal`]), passes it through
//! flood control ([`flood`]) and hands it to every output's queue; a new kind of output is one
//! file implementing [`Destination`] and one arm in [`Outputs::open`].

pub mod falcosidekick;
pub mod file;
pub mod flood;
pub mod http;
pub mod queue;
pub mod signal;
pub mod spec;
pub mod spool;

pub use flood::FloodSettings;
pub use http::HttpSettings;
pub use queue::{Delivery, WhenFull};
pub use spec::OutputSpec;

use crate::event::Event;
use crate::metrics::RuleMetrics;
use crate::pipeline::{OutputSignal, RuleStatus, Sink};
use crate::sandbox::RuleError;
use crate::time::Timestamp;
use bytes::Bytes;
use queue::{Backlog, OutputQueue};
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

/// Why a delivery failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Try again later (no connection, a timeout, a server error, a full disk, a closed pipe).
    Retry(String),
    /// The receiver refused these signals for good: they are dropped, counted and logged, and
    /// the output goes on with the next ones.
    Rejected(String),
    /// The output gives up (only a replay's local output: its reader is gone).
    Fatal(String),
}

/// A delivery in progress.
pub type Sending<'a> = Pin<Box<dyn Future<Output = Result<(), Failure>> + Send + 'a>>;

/// One kind of output. It runs on the output's own thread and runtime: a slow or blocking
/// delivery delays only that output.
pub trait Destination: Send {
    /// Most signals one delivery carries.
    fn max_batch(&self) -> usize;
    /// Delivers `batch` (signal lines, [`signal::signal_line`], without line ends), in order;
    /// `Ok` once written or acknowledged. On failure the same batch is delivered again.
    fn deliver<'a>(&'a mut self, batch: &'a [Bytes]) -> Sending<'a>;
}

/// How the outputs run.
#[derive(Clone, Debug)]
pub struct OutputSettings {
    /// Signals queued in front of each output (`--output-queue`).
    pub queue: usize,
    /// What a full queue does.
    pub when_full: WhenFull,
    /// Whether a local output gives up at its first failure (a replay's) instead of retrying.
    pub give_up: bool,
    /// The state directory, under which remote outputs spool (`--state`).
    pub state: Option<PathBuf>,
    /// Most bytes of each remote output's spool (`--spool-bytes`).
    pub spool_bytes: u64,
    /// HTTP settings.
    pub http: HttpSettings,
    /// Flood control.
    pub flood: FloodSettings,
}

impl Default for OutputSettings {
    fn default() -> OutputSettings {
        OutputSettings {
            queue: 10_000,
            when_full: WhenFull::Drop,
            give_up: false,
            state: None,
            spool_bytes: 256 << 20,
            http: HttpSettings::default(),
            flood: FloodSettings::default(),
        }
    }
}

/// Every output of a run: flood control, then each signal's line to each output's queue.
pub struct Outputs {
    queues: Vec<OutputQueue>,
    flood: flood::FloodControl,
    lines: Vec<Vec<u8>>,
}

impl Outputs {
    /// Opens `specs` (a file that cannot be opened, a spool in use, a bad URL fail here).
    pub fn open(specs: &[OutputSpec], settings: &OutputSettings) -> anyhow::Result<Outputs> {
        let mut queues = Vec::with_capacity(specs.len());
        for (index, spec) in specs.iter().enumerate() {
            let name = spec.name();
            if specs[..index].contains(spec) {
                anyhow::bail!("--output {name} is given twice");
            }
            let destination: Box<dyn Destination> = match spec {
                OutputSpec::Stdout => Box::new(file::FileOutput::stdout(settings.give_up)),
                OutputSpec::File(path) => Box::new(
                    file::FileOutput::file(path.clone(), settings.give_up)
                        .map_err(|err| anyhow::anyhow!("output {err}"))?,
                ),
                OutputSpec::Http(uri) => Box::new(
                    http::Webhook::new(uri.clone(), &settings.http)
                        .map_err(|err| anyhow::anyhow!("output {err}"))?,
                ),
                OutputSpec::Falcosidekick(uri) => Box::new(
                    falcosidekick::Falcosidekick::new(uri.clone(), &settings.http)
                        .map_err(|err| anyhow::anyhow!("output {err}"))?,
                ),
            };
            let backlog = match &settings.state {
                Some(state) if spec.is_remote() => {
                    let dir = spec.spool_dir(state);
                    let (spool, recovered) = spool::Spool::open(&dir, settings.spool_bytes)
                        .map_err(|err| anyhow::anyhow!("output {name}: spool {err}"))?;
                    // Which output the folder belongs to, for whoever looks.
                    let _ = std::fs::write(dir.join("output"), format!("{name}\n"));
                    if recovered.pending > 0 {
                        tracing::info!(output = %name, spooled = recovered.pending, spool = %dir.display(), "signals spooled before this start are delivered first");
                    }
                    if recovered.damaged > 0 {
                        crate::metrics::global()
                            .output(&name)
                            .dropped_spool_full
                            .inc_by(recovered.damaged);
                    }
                    Backlog::Disk(Box::new(spool))
                }
                _ => Backlog::Memory {
                    items: Default::default(),
                    bound: settings.queue.max(1),
                    drops: settings.when_full == WhenFull::Drop,
                },
            };
            queues.push(
                OutputQueue::start(
                    name,
                    destination,
                    backlog,
                    settings.queue,
                    settings.when_full,
                )
                .map_err(|err| anyhow::anyhow!("starting output {}: {err}", spec.name()))?,
            );
        }
        Ok(Outputs {
            queues,
            flood: flood::FloodControl::new(settings.flood),
            lines: Vec::new(),
        })
    }

    fn send(&mut self) {
        for line in self.lines.drain(..) {
            let line = Bytes::from(line);
            for queue in &mut self.queues {
                queue.send(line.clone());
            }
        }
    }

    /// Periodic work: sends the folds of flood windows closed by `now` (event time; the latest
    /// event's when `None`) and reports drops.
    pub fn tick(&mut self, now: Option<Timestamp>) {
        self.flood.flush_due(now, &mut self.lines);
        self.send();
        for queue in &mut self.queues {
            queue.report();
        }
    }

    /// The failure that ended an output, if one did (a replay's local output).
    pub fn error(&self) -> Option<String> {
        self.queues.iter().find_map(|queue| queue.error())
    }

    /// Sends what flood control still holds, closes every queue and waits for the outputs to
    /// deliver: up to `grace` in all (as long as it takes with `None`). What a remote output
    /// did not deliver stays in its spool.
    pub fn finish(mut self, grace: Option<Duration>) -> Vec<Delivery> {
        self.flood.flush_all(&mut self.lines);
        self.send();
        let deadline = grace.map(|grace| std::time::Instant::now() + grace);
        self.queues
            .into_iter()
            .map(|queue| {
                let left =
                    deadline.map(|at| at.saturating_duration_since(std::time::Instant::now()));
                queue.finish(left)
            })
            .collect()
    }
}

/// Logs a rule's failure on an event.
pub fn log_rule_failure(rule: &RuleStatus, error: &RuleError, event: &Event<'_>) {
    tracing::warn!(
        rule = %rule.manifest.id,
        module = %rule.source,
        event.ts = %event.ts,
        event.path = %event.file.path,
        "rule failed on an event: {error}"
    );
}

/// Logs a rule's quarantine.
pub fn log_quarantine(rule: &RuleStatus, reason: &str) {
    tracing::error!(
        rule = %rule.manifest.id,
        module = %rule.source,
        "rule quarantined, it gets no more events until a new version is loaded: {reason}"
    );
}

impl Sink for Outputs {
    fn signal(&mut self, signal: &OutputSignal<'_>) {
        self.flood.admit(signal, &mut self.lines);
        self.send();
    }

    fn rule_failed(&mut self, rule: &RuleStatus, error: &RuleError, event: &Event<'_>) {
        log_rule_failure(rule, error, event);
    }

    fn rule_quarantined(&mut self, rule: &RuleStatus, reason: &str) {
        log_quarantine(rule, reason);
    }
}

/// The live agent's sink: signals go to the [`Outputs`], and every rule outcome also moves the
/// rule's metrics (`/metrics`). Replay and `picket test` use the outputs alone.
pub struct MeteredOutput {
    outputs: Outputs,
    /// Each rule's metrics, looked up once.
    rule_metrics: HashMap<String, RuleMetrics>,
}

impl MeteredOutput {
    /// Meters the signals and rule outcomes that go to `outputs`.
    pub fn new(outputs: Outputs) -> MeteredOutput {
        MeteredOutput {
            outputs,
            rule_metrics: HashMap::new(),
        }
    }

    /// The outputs, for their periodic work.
    pub fn outputs_mut(&mut self) -> &mut Outputs {
        &mut self.outputs
    }

    /// The outputs, to finish them at shutdown.
    pub fn into_outputs(self) -> Outputs {
        self.outputs
    }

    fn metrics_of(&mut self, rule: &str) -> &RuleMetrics {
        if !self.rule_metrics.contains_key(rule) {
            let metrics = crate::metrics::global().rule(rule);
            self.rule_metrics.insert(rule.to_string(), metrics);
        }
        &self.rule_metrics[rule]
    }
}

impl Sink for MeteredOutput {
    fn signal(&mut self, signal: &OutputSignal<'_>) {
        self.metrics_of(&signal.rule.id).signal();
        self.outputs.signal(signal);
    }

    fn rule_failed(&mut self, rule: &RuleStatus, error: &RuleError, event: &Event<'_>) {
        self.metrics_of(&rule.manifest.id)
            .failed(matches!(error, RuleError::Timeout(_)));
        self.outputs.rule_failed(rule, error, event);
    }

    fn rule_quarantined(&mut self, rule: &RuleStatus, reason: &str) {
        self.metrics_of(&rule.manifest.id).quarantined();
        self.outputs.rule_quarantined(rule, reason);
    }

    fn rule_evaluated(&mut self, rule: &RuleStatus, took: Duration) {
        self.metrics_of(&rule.manifest.id).evaluated(took);
    }
}
