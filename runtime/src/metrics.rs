//! What `picket run --listen` reports: Prometheus metrics (OpenMetrics text), liveness and
//! readiness. One process-wide [`Metrics`] ([`global`]) so that the parts that count — the agent
//! loop, its signal sink, the state persister's thread — each update it with one call, and the
//! HTTP server ([`crate::http`]) reads it from its own thread.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The event loop is unhealthy when it has not turned for this long. It turns at least every
/// [`crate::rule_engine::SAVE_EVERY`] when idle, so only a loop that is stuck goes this long.
pub const STALE_AFTER: Duration = Duration::from_secs(10);

/// Labels naming a rule.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    /// The rule id.
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupStatusLabel {
    rule: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StrategyLabel {
    strategy: String,
}

/// Labels naming an output (its `--output` spec, credentials left out).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutputLabel {
    /// The output's name.
    pub output: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutputDropLabel {
    output: String,
    reason: &'static str,
}

type HistogramFamily = Family<RuleLabel, Histogram, fn() -> Histogram>;

/// Rule evaluation times from 1 µs to about 4 s (the timeout is 50 ms by default).
fn evaluation_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-6, 4.0, 12))
}

/// The agent's metrics and health.
pub struct Metrics {
    registry: Registry,
    events: Family<KindLabel, Counter>,
    events_lost: Counter,
    signals: Family<RuleLabel, Counter>,
    rule_failures: Family<RuleLabel, Counter>,
    rule_timeouts: Family<RuleLabel, Counter>,
    rule_quarantines: Family<RuleLabel, Counter>,
    rule_evaluation: HistogramFamily,
    reloads: Family<ResultLabel, Counter>,
    learned_values: Family<RuleLabel, Gauge>,
    evictions: Family<RuleLabel, Counter>,
    group_evictions: Family<GroupStatusLabel, Counter>,
    state_saves: Counter,
    state_save_failures: Counter,
    state_files_set_aside: Counter,
    state_persister_restarts: Counter,
    strategy: Family<StrategyLabel, Gauge>,
    /// The fleet store's instruments, and the groups learning and detecting.
    pub fleet: crate::state::fleet::FleetMetrics,
    signals_folded: Family<RuleLabel, Counter>,
    output_queued: Family<OutputLabel, Counter>,
    output_delivered: Family<OutputLabel, Counter>,
    output_retries: Family<OutputLabel, Counter>,
    output_dropped: Family<OutputDropLabel, Counter>,
    output_spooled: Family<OutputLabel, Gauge>,
    output_oldest: Family<OutputLabel, Gauge<f64, AtomicU64>>,
    /// Outputs failing now: since when, and the last error.
    output_failing: Mutex<BTreeMap<String, (Instant, String)>>,
    /// An output failing longer than this makes `/readyz` fail.
    output_unready_after: Mutex<Duration>,
    probe_blind: Gauge,
    ready_gauge: Gauge,
    events_without_pod: Counter,
    started: Instant,
    /// Milliseconds after `started` of the event loop's last turn.
    last_turn_ms: AtomicU64,
    ready: AtomicBool,
    blind: AtomicBool,
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// One rule's instruments, looked up once and kept by whoever counts for that rule.
#[derive(Clone, Debug)]
pub struct RuleMetrics {
    signals: Counter,
    failures: Counter,
    timeouts: Counter,
    quarantines: Counter,
    evaluation: Histogram,
}

impl RuleMetrics {
    /// The rule raised a signal.
    pub fn signal(&self) {
        self.signals.inc();
    }

    /// The rule failed on an event; `timeout` when it was interrupted for running too long.
    pub fn failed(&self, timeout: bool) {
        self.failures.inc();
        if timeout {
            self.timeouts.inc();
        }
    }

    /// The rule was quarantined.
    pub fn quarantined(&self) {
        self.quarantines.inc();
    }

    /// The rule evaluated one event in `took`.
    pub fn evaluated(&self, took: Duration) {
        self.evaluation.observe(took.as_secs_f64());
    }
}

/// One output's instruments (see [`Metrics::output`]).
#[derive(Clone, Debug)]
pub struct OutputMetrics {
    /// The output's name (its label).
    pub name: String,
    /// Signals handed to the output.
    pub queued: Counter,
    /// Signals delivered.
    pub delivered: Counter,
    /// Deliveries tried again.
    pub retries: Counter,
    /// Signals dropped because the queue was full.
    pub dropped_queue_full: Counter,
    /// Signals dropped because the spool was full (the oldest).
    pub dropped_spool_full: Counter,
    /// Signals the receiver refused for good (a 4xx answer that retrying cannot change).
    pub dropped_rejected: Counter,
    /// Signals waiting for delivery.
    pub spooled: Gauge,
    /// Age of the oldest undelivered signal, in seconds.
    pub oldest: Gauge<f64, AtomicU64>,
}

impl Metrics {
    /// Fresh metrics, for [`global`] and for tests.
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("picket");
        let metrics = Metrics {
            events: Family::default(),
            events_lost: Counter::default(),
            signals: Family::default(),
            rule_failures: Family::default(),
            rule_timeouts: Family::default(),
            rule_quarantines: Family::default(),
            rule_evaluation: Family::new_with_constructor(evaluation_histogram),
            reloads: Family::default(),
            learned_values: Family::default(),
            evictions: Family::default(),
            group_evictions: Family::default(),
            state_saves: Counter::default(),
            state_save_failures: Counter::default(),
            state_files_set_aside: Counter::default(),
            state_persister_restarts: Counter::default(),
            strategy: Family::default(),
            fleet: crate::state::fleet::FleetMetrics::new(),
            signals_folded: Family::default(),
            output_queued: Family::default(),
            output_delivered: Family::default(),
            output_retries: Family::default(),
            output_dropped: Family::default(),
            output_spooled: Family::default(),
            output_oldest: Family::default(),
            output_failing: Mutex::new(BTreeMap::new()),
            output_unready_after: Mutex::new(Duration::from_secs(300)),
            probe_blind: Gauge::default(),
            ready_gauge: Gauge::default(),
            events_without_pod: Counter::default(),
            registry: Registry::default(),
            started: Instant::now(),
            last_turn_ms: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            blind: AtomicBool::new(false),
        };
        let r = &mut registry;
        r.register(
            "events",
            "Events evaluated, by kind",
            metrics.events.clone(),
        );
        r.register(
            "kernel_events_lost",
            "Events the kernel could not queue because the ring buffer was full",
            metrics.events_lost.clone(),
        );
        r.register(
            "signals",
            "Signals raised, by rule",
            metrics.signals.clone(),
        );
        r.register(
            "rule_failures",
            "Events a rule failed on (traps, panics, timeouts, memory), by rule",
            metrics.rule_failures.clone(),
        );
        r.register(
            "rule_timeouts",
            "Events a rule was interrupted on for running past its timeout, by rule",
            metrics.rule_timeouts.clone(),
        );
        r.register(
            "rule_quarantines",
            "Times a rule was quarantined after repeated failures, by rule",
            metrics.rule_quarantines.clone(),
        );
        r.register_with_unit(
            "rule_evaluation",
            "Time a rule took on one event, by rule",
            Unit::Seconds,
            metrics.rule_evaluation.clone(),
        );
        r.register(
            "rule_reloads",
            "Rule modules from the rules directory installed (applied) or refused",
            metrics.reloads.clone(),
        );
        r.register(
            "learned_values",
            "New-value entries (values and groups) a rule's state holds, by rule",
            metrics.learned_values.clone(),
        );
        r.register(
            "state_evictions",
            "New-value entries evicted because a rule's state was full, by rule",
            metrics.evictions.clone(),
        );
        r.register(
            "state_groups_evicted",
            "New-value groups dropped with their values because a rule's group table was full, \
             by rule and by status (learning, or detecting: dropped only when none was learning)",
            metrics.group_evictions.clone(),
        );
        r.register(
            "state_saves",
            "Commits of learned state to the state directory",
            metrics.state_saves.clone(),
        );
        r.register(
            "state_save_failures",
            "Failed commits of learned state (retried)",
            metrics.state_save_failures.clone(),
        );
        r.register(
            "state_files_set_aside",
            "Damaged or emptied state files moved aside at start (what they held is learned again)",
            metrics.state_files_set_aside.clone(),
        );
        r.register(
            "state_persister_restarts",
            "Times the thread saving learned state was found dead and started again",
            metrics.state_persister_restarts.clone(),
        );
        r.register(
            "probe_strategy",
            "The kernel hook reporting file opens (1 for the attached one)",
            metrics.strategy.clone(),
        );
        metrics.fleet.register(r);
        r.register(
            "signals_folded",
            "Signals held back by flood control and folded into one signal, by rule",
            metrics.signals_folded.clone(),
        );
        r.register(
            "output_queued",
            "Signals handed to an output, by output",
            metrics.output_queued.clone(),
        );
        r.register(
            "output_delivered",
            "Signals an output wrote or its receiver acknowledged, by output",
            metrics.output_delivered.clone(),
        );
        r.register(
            "output_retries",
            "Failed deliveries tried again, by output",
            metrics.output_retries.clone(),
        );
        r.register(
            "output_dropped",
            "Signals an output lost, by output and reason (queue_full, spool_full, rejected)",
            metrics.output_dropped.clone(),
        );
        r.register(
            "output_spooled",
            "Signals waiting for delivery in an output's disk spool or memory queue, by output",
            metrics.output_spooled.clone(),
        );
        r.register_with_unit(
            "output_oldest_undelivered_age",
            "Age of the oldest signal an output has not delivered yet (0 when none), by output",
            Unit::Seconds,
            metrics.output_oldest.clone(),
        );
        r.register(
            "probe_blind",
            "1 while the kernel hook did not report the agent's canary open (blind), else 0",
            metrics.probe_blind.clone(),
        );
        r.register(
            "ready",
            "1 while /readyz answers 200 (probes attached and proven, rules loaded), else 0",
            metrics.ready_gauge.clone(),
        );
        r.register(
            "events_without_pod",
            "Events from a container whose runtime metadata names no pod (metadata not found)",
            metrics.events_without_pod.clone(),
        );
        r.register(
            "build",
            "The running picket",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// The instruments of rule `id`.
    pub fn rule(&self, id: &str) -> RuleMetrics {
        let label = RuleLabel { rule: id.into() };
        RuleMetrics {
            signals: self.signals.get_or_create_owned(&label),
            failures: self.rule_failures.get_or_create_owned(&label),
            timeouts: self.rule_timeouts.get_or_create_owned(&label),
            quarantines: self.rule_quarantines.get_or_create_owned(&label),
            evaluation: self.rule_evaluation.get_or_create_owned(&label),
        }
    }

    /// The instruments of the output named `name`.
    pub fn output(&self, name: &str) -> OutputMetrics {
        let label = OutputLabel {
            output: name.into(),
        };
        let dropped = |reason| {
            self.output_dropped.get_or_create_owned(&OutputDropLabel {
                output: name.into(),
                reason,
            })
        };
        OutputMetrics {
            name: name.into(),
            queued: self.output_queued.get_or_create_owned(&label),
            delivered: self.output_delivered.get_or_create_owned(&label),
            retries: self.output_retries.get_or_create_owned(&label),
            dropped_queue_full: dropped("queue_full"),
            dropped_spool_full: dropped("spool_full"),
            dropped_rejected: dropped("rejected"),
            spooled: self.output_spooled.get_or_create_owned(&label),
            oldest: self.output_oldest.get_or_create_owned(&label),
        }
    }

    /// Flood control held back `count` signals of rule `id`.
    pub fn signals_folded(&self, id: &str, count: u64) {
        self.signals_folded
            .get_or_create(&RuleLabel { rule: id.into() })
            .inc_by(count);
    }

    /// Output `name` is failing since `since` with `error`, or works (`None`).
    pub fn output_failing(&self, name: &str, failing: Option<(Instant, String)>) {
        let mut outputs = self
            .output_failing
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match failing {
            Some(failing) => outputs.insert(name.to_string(), failing),
            None => outputs.remove(name),
        };
    }

    /// An output failing for longer than `after` makes the agent unready.
    pub fn set_output_unready_after(&self, after: Duration) {
        *self
            .output_unready_after
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = after;
    }

    /// The outputs failing for longer than the bound, each with how long and its last error.
    pub fn outputs_failing_too_long(&self) -> Vec<String> {
        let after = *self
            .output_unready_after
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.output_failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, (since, _))| since.elapsed() > after)
            .map(|(name, (since, error))| {
                format!(
                    "output {name} failing for {}s: {error}",
                    since.elapsed().as_secs()
                )
            })
            .collect()
    }

    /// An event of `kind` entered the pipeline.
    pub fn event(&self, kind: &'static str) {
        self.events.get_or_create(&KindLabel { kind }).inc();
    }

    /// The kernel's count of lost events, as a running total.
    pub fn set_kernel_events_lost(&self, total: u64) {
        self.events_lost.inner().store(total, Ordering::Relaxed);
    }

    /// Rule modules installed and refused by one application of the rules directory.
    pub fn reloaded(&self, applied: usize, refused: usize) {
        let count = |result, n: usize| {
            self.reloads
                .get_or_create(&ResultLabel { result })
                .inc_by(n as u64)
        };
        count("applied", applied);
        count("refused", refused);
    }

    /// A rule's state: entries held now, and evictions since it was created.
    pub fn rule_state(&self, id: &str, entries: usize, evicted: u64) {
        let label = RuleLabel { rule: id.into() };
        self.learned_values
            .get_or_create(&label)
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.evictions
            .get_or_create(&label)
            .inner()
            .store(evicted, Ordering::Relaxed);
    }

    /// A rule's groups dropped because its group table was full, since its state was created:
    /// those still learning, and those that had finished.
    pub fn rule_state_groups_evicted(&self, id: &str, learning: u64, detecting: u64) {
        for (status, count) in [("learning", learning), ("detecting", detecting)] {
            let label = GroupStatusLabel {
                rule: id.into(),
                status,
            };
            self.group_evictions
                .get_or_create(&label)
                .inner()
                .store(count, Ordering::Relaxed);
        }
    }

    /// A commit of learned state succeeded (`true`) or failed.
    pub fn state_saved(&self, ok: bool) {
        if ok {
            self.state_saves.inc();
        } else {
            self.state_save_failures.inc();
        }
    }

    /// A damaged or emptied state file was moved aside and a fresh one started.
    pub fn state_file_set_aside(&self) {
        self.state_files_set_aside.inc();
    }

    /// The thread saving learned state died and was started again.
    pub fn state_persister_restarted(&self) {
        self.state_persister_restarts.inc();
    }

    /// The kernel hook that was attached.
    pub fn set_strategy(&self, strategy: &str) {
        self.strategy.clear();
        self.strategy
            .get_or_create(&StrategyLabel {
                strategy: strategy.into(),
            })
            .set(1);
    }

    /// The event loop turned: called on every turn.
    pub fn heartbeat(&self) {
        // Stored plus one, so that 0 means "never".
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last_turn_ms.store(ms + 1, Ordering::Relaxed);
    }

    /// How long ago the event loop last turned (`None`: it never did).
    pub fn since_last_turn(&self) -> Option<Duration> {
        let at = self.last_turn_ms.load(Ordering::Relaxed).checked_sub(1)?;
        Some(
            self.started
                .elapsed()
                .saturating_sub(Duration::from_millis(at)),
        )
    }

    /// Probes attached and rules loaded (`true`), or not yet / no longer.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
        self.ready_gauge.set(i64::from(self.ready()));
    }

    /// Whether the agent is ready: started, and not blind.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.blind()
    }

    /// The kernel hook did not report the canary open (`true`), or did.
    pub fn set_blind(&self, blind: bool) {
        self.blind.store(blind, Ordering::Relaxed);
        self.probe_blind.set(i64::from(blind));
        self.ready_gauge.set(i64::from(self.ready()));
    }

    /// Whether the kernel hook is blind (see [`crate::canary`]).
    pub fn blind(&self) -> bool {
        self.blind.load(Ordering::Relaxed)
    }

    /// An event came from a container whose metadata names no pod.
    pub fn event_without_pod(&self) {
        self.events_without_pod.inc();
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(8192);
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Metrics with every family touched once, so each one has a sample to show.
    fn counted() -> Metrics {
        let metrics = Metrics::new();
        metrics.event("open");
        metrics.event("open");
        let rule = metrics.rule("k8s-sa-token");
        rule.signal();
        rule.failed(true);
        rule.evaluated(Duration::from_micros(30));
        metrics.reloaded(2, 1);
        metrics.rule_state("k8s-sa-token", 5, 3);
        metrics.rule_state_groups_evicted("k8s-sa-token", 4, 1);
        metrics.set_kernel_events_lost(7);
        metrics.state_saved(true);
        metrics.state_file_set_aside();
        metrics.set_strategy("tracepoint");
        metrics.signals_folded("k8s-sa-token", 4);
        let output = metrics.output("http://127.0.0.1:1/");
        output.queued.inc();
        output.delivered.inc();
        output.retries.inc();
        output.dropped_spool_full.inc();
        output.spooled.set(1);
        output.oldest.set(1.5);
        metrics.event_without_pod();
        metrics.set_ready(true);
        metrics
    }

    #[test]
    fn encodes_what_was_counted() {
        let text = counted().encode();
        for line in [
            r#"picket_events_total{kind="open"} 2"#,
            r#"picket_signals_total{rule="k8s-sa-token"} 1"#,
            r#"picket_rule_failures_total{rule="k8s-sa-token"} 1"#,
            r#"picket_rule_timeouts_total{rule="k8s-sa-token"} 1"#,
            r#"picket_rule_quarantines_total{rule="k8s-sa-token"} 0"#,
            r#"picket_rule_evaluation_seconds_count{rule="k8s-sa-token"} 1"#,
            r#"picket_rule_reloads_total{result="applied"} 2"#,
            r#"picket_rule_reloads_total{result="refused"} 1"#,
            r#"picket_learned_values{rule="k8s-sa-token"} 5"#,
            r#"picket_state_evictions_total{rule="k8s-sa-token"} 3"#,
            r#"picket_state_groups_evicted_total{rule="k8s-sa-token",status="learning"} 4"#,
            r#"picket_state_groups_evicted_total{rule="k8s-sa-token",status="detecting"} 1"#,
            "picket_kernel_events_lost_total 7",
            "picket_state_saves_total 1",
            "picket_state_save_failures_total 0",
            "picket_state_files_set_aside_total 1",
            r#"picket_probe_strategy{strategy="tracepoint"} 1"#,
            r#"picket_signals_folded_total{rule="k8s-sa-token"} 4"#,
            r#"picket_output_queued_total{output="http://127.0.0.1:1/"} 1"#,
            r#"picket_output_delivered_total{output="http://127.0.0.1:1/"} 1"#,
            r#"picket_output_retries_total{output="http://127.0.0.1:1/"} 1"#,
            r#"picket_output_dropped_total{output="http://127.0.0.1:1/",reason="spool_full"} 1"#,
            r#"picket_output_dropped_total{output="http://127.0.0.1:1/",reason="queue_full"} 0"#,
            r#"picket_output_spooled{output="http://127.0.0.1:1/"} 1"#,
            r#"picket_output_oldest_undelivered_age_seconds{output="http://127.0.0.1:1/"} 1.5"#,
            "picket_probe_blind 0",
            "picket_ready 1",
            "picket_events_without_pod_total 1",
            &format!(
                r#"picket_build_info{{version="{}"}} 1"#,
                env!("CARGO_PKG_VERSION")
            ),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    /// Operators read docs/cli.md to know what each metric means: a metric added here without
    /// its line there fails this test, naming it.
    #[test]
    fn every_metric_is_documented() {
        let docs = include_str!("../../docs/cli.md");
        let text = counted().encode();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(names.len() > 10, "too few metrics parsed from\n{text}");
        for name in names {
            // Counters are exposed with `_total` and infos with `_info`; the docs use the
            // exposed name (a histogram keeps its family name).
            let exposed = ["_total", "_info"]
                .iter()
                .map(|suffix| format!("{name}{suffix}"))
                .find(|sample| text.contains(&format!("\n{sample}")))
                .unwrap_or_else(|| name.to_string());
            assert!(
                docs.contains(&format!("`{exposed}`")),
                "metric {exposed} is not described in docs/cli.md"
            );
        }
    }

    #[test]
    fn health_follows_the_heartbeat() {
        let metrics = Metrics::new();
        assert_eq!(metrics.since_last_turn(), None);
        assert!(!metrics.ready());
        metrics.heartbeat();
        assert!(metrics.since_last_turn().unwrap() < STALE_AFTER);
        metrics.set_ready(true);
        assert!(metrics.ready());
        // Blind: not ready, and both gauges say so, until the hook is proven again.
        metrics.set_blind(true);
        assert!(!metrics.ready());
        let text = metrics.encode();
        assert!(text.contains("\npicket_ready 0\n"), "{text}");
        assert!(text.contains("\npicket_probe_blind 1\n"), "{text}");
        metrics.set_blind(false);
        assert!(metrics.ready());
    }
}
