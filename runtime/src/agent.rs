//! `picket run`: the live agent. Kernel probes report opens of the files the rules subscribe
//! to; each becomes a normalized event (design.md "Event") for the same pipeline replay uses.
//! One thread evaluates events; reloads of the rules directory and saves of learned state land
//! between events.

use crate::event::{ArgList, Container, Event, File, FileAccess, Kind, Pod, Process};
use crate::host::{Host, HostOptions, SAVE_EVERY};
use crate::metrics::RuleMetrics;
use crate::output::{log_quarantine, log_rule_failure};
use crate::pipeline::{RuleStatus, Signal, Sink};
use crate::sandbox::RuleError;
use crate::time::Timestamp;
use picket_probes::{Access, HostPaths, OpenEvent, Probes, Strategy};
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::signal::unix::{SignalKind, signal};

/// Where signals go.
#[derive(Clone, Debug)]
pub enum Output {
    /// Standard output.
    Stdout,
    /// A file, appended to.
    File(PathBuf),
}

/// How to run the agent.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// Rules, state and limits.
    pub host: HostOptions,
    /// Where signals go.
    pub output: Output,
    /// Which kernel hook to use.
    pub strategy: Strategy,
    /// The node's name for events' `host` field.
    pub node_name: String,
    /// Where the host's runtime state and processes are seen from.
    pub host_paths: HostPaths,
    /// Where to serve `/healthz`, `/readyz` and `/metrics`, if anywhere.
    pub listen: Option<SocketAddr>,
}

/// Runs the agent until SIGINT or SIGTERM.
pub fn run(options: AgentOptions) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_until_stopped(options))
}

async fn run_until_stopped(options: AgentOptions) -> anyhow::Result<()> {
    let metrics = crate::metrics::global();
    if let Some(addr) = options.listen {
        crate::http::serve(addr)?;
    }
    // Each start-up step that completes counts as a turn of the loop for /healthz.
    metrics.heartbeat();
    let (mut host, scan) = Host::start(&options.host)?;
    host.apply(scan);
    metrics.heartbeat();
    let mut probes = Probes::load_on(options.strategy, &options.host_paths)?;
    tracing::info!(strategy = %probes.strategy(), "probes attached");
    metrics.set_strategy(&probes.strategy().to_string());
    let mut prefilter = Prefilter::default();
    prefilter.sync(&host, &mut probes);

    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::unbounded_channel();
    let _watcher = host.watch(move |scan| reload_tx.send(scan).is_ok())?;
    let mut sink = AgentSink::open(&options.output)?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(SAVE_EVERY);
    let mut lost_reported = 0;
    let rules: Vec<String> = host
        .pipeline()
        .rules()
        .map(|r| r.manifest.id.clone())
        .collect();
    tracing::info!(
        rules = ?rules,
        rules_dir = %options.host.rules.display(),
        "agent ready"
    );
    metrics.set_ready(true);

    loop {
        metrics.heartbeat();
        tokio::select! {
            opened = probes.next_event() => {
                let opened = opened?;
                if opened.path_truncated {
                    tracing::warn!(path = %opened.path, pid = opened.process.pid, "path too deep or too long to resolve completely");
                }
                let event = normalize(opened, &options.node_name);
                metrics.event(event.kind.as_str());
                host.handle(&event, &mut sink);
                sink.flush();
            }
            Some(scan) = reload_rx.recv() => {
                if host.apply(scan) {
                    prefilter.sync(&host, &mut probes);
                }
            }
            _ = tick.tick() => {
                host.save();
                sink.flush();
                let lost = probes.lost_events();
                metrics.set_kernel_events_lost(lost);
                if lost > lost_reported {
                    tracing::warn!(lost = lost - lost_reported, total = lost, "events lost in the kernel's ring buffer (reader too slow)");
                    lost_reported = lost;
                }
            }
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }
    metrics.set_ready(false);
    tracing::info!("stopping: detaching probes and saving state");
    drop(probes);
    sink.flush();
    host.shutdown();
    Ok(())
}

/// Keeps the kernel's basename approvers equal to what the rules subscribe to.
#[derive(Default)]
struct Prefilter {
    warned_all: bool,
}

impl Prefilter {
    fn sync(&mut self, host: &Host, probes: &mut Probes) {
        let names = match host.basenames() {
            Some(names) => names,
            None => {
                if !self.warned_all {
                    tracing::warn!(
                        "a rule subscribes to every file; the kernel prefilter only passes the \
                         other rules' basenames, so that rule sees only those"
                    );
                    self.warned_all = true;
                }
                host.pipeline()
                    .rules()
                    .flat_map(|r| r.manifest.subscription.basenames.iter().cloned())
                    .collect::<BTreeSet<String>>()
            }
        };
        if &names == probes.basenames() {
            return;
        }
        match probes.set_basenames(&names) {
            Ok(()) => tracing::info!(basenames = ?names, "kernel prefilter updated"),
            Err(err) => tracing::error!("updating the kernel prefilter: {err:#}"),
        }
    }
}

/// A kernel open as design.md's event.
pub fn normalize(opened: OpenEvent, node_name: &str) -> Event<'static> {
    let process = opened.process;
    let access = match opened.access {
        Access::Read => Some(FileAccess::Read),
        Access::Write => Some(FileAccess::Write),
        Access::ReadWrite => Some(FileAccess::ReadWrite),
        Access::Neither => None,
    };
    let container = (process.container_id.is_some()
        || process.container_image.is_some()
        || process.container_name.is_some())
    .then(|| Container {
        id: process.container_id.map(Cow::Owned),
        image: process.container_image.map(Cow::Owned),
        name: process.container_name.map(Cow::Owned),
    });
    let pod = process.pod.map(|pod| Pod {
        name: pod.name.map(Cow::Owned),
        namespace: pod.namespace.map(Cow::Owned),
        uid: pod.uid.map(Cow::Owned),
    });
    Event {
        ts: Timestamp::from_system_time(opened.ts),
        kind: Kind::Open,
        host: Some(Cow::Owned(node_name.to_string())),
        file: File {
            path: Cow::Owned(opened.path),
            access,
        },
        process: Process {
            pid: process.pid,
            ppid: Some(process.ppid),
            uid: Some(process.uid),
            gid: Some(process.gid),
            user: process.user.map(Cow::Owned),
            comm: Some(Cow::Owned(process.comm)),
            exe: Cow::Owned(process.exe),
            args: (!process.args.is_empty()).then(|| process.args.iter().collect::<ArgList>()),
        },
        container,
        pod,
    }
}

/// The node's name: `NODE_NAME` (as a Kubernetes DaemonSet passes it), else the hostname.
pub fn node_name() -> String {
    std::env::var("NODE_NAME")
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|name| name.trim().to_string())
        })
        .unwrap_or_else(|| "localhost".into())
}

/// Most signals kept in memory while the output cannot be written.
const MAX_UNWRITTEN: usize = 100_000;
/// How often a failing output is reported again.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// Signals as JSON lines to the output. A signal that cannot be written now (a full disk, a
/// broken pipe) is kept and written later; only past [`MAX_UNWRITTEN`] are the oldest dropped,
/// and those are counted and reported.
struct AgentSink {
    out: Box<dyn Write>,
    target: String,
    unwritten: VecDeque<Vec<u8>>,
    dropped: u64,
    failing_since: Option<Instant>,
    last_report: Instant,
    /// Each rule's metrics, looked up once.
    rule_metrics: HashMap<String, RuleMetrics>,
}

impl AgentSink {
    fn open(output: &Output) -> anyhow::Result<AgentSink> {
        let (out, target): (Box<dyn Write>, String) = match output {
            Output::Stdout => (Box::new(std::io::stdout()), "stdout".into()),
            Output::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|err| anyhow::anyhow!("output {}: {err}", path.display()))?;
                (Box::new(file), path.display().to_string())
            }
        };
        Ok(AgentSink {
            out,
            target,
            unwritten: VecDeque::new(),
            dropped: 0,
            failing_since: None,
            last_report: Instant::now(),
            rule_metrics: HashMap::new(),
        })
    }

    fn metrics_of(&mut self, rule: &str) -> &RuleMetrics {
        if !self.rule_metrics.contains_key(rule) {
            let metrics = crate::metrics::global().rule(rule);
            self.rule_metrics.insert(rule.to_string(), metrics);
        }
        &self.rule_metrics[rule]
    }

    /// Writes what is waiting, oldest first; stops at the first failure.
    fn flush(&mut self) {
        while let Some(line) = self.unwritten.front() {
            match self.out.write_all(line).and_then(|()| self.out.flush()) {
                Ok(()) => {
                    self.unwritten.pop_front();
                }
                Err(err) => {
                    let first = self.failing_since.is_none();
                    self.failing_since.get_or_insert_with(Instant::now);
                    if first || self.last_report.elapsed() >= REPORT_EVERY {
                        self.last_report = Instant::now();
                        tracing::error!(
                            output = %self.target,
                            waiting = self.unwritten.len(),
                            "cannot write signals, keeping them and retrying: {err}"
                        );
                    }
                    return;
                }
            }
        }
        if let Some(since) = self.failing_since.take() {
            tracing::info!(output = %self.target, "signals written again after failing for {:?}", since.elapsed());
        }
    }
}

impl Sink for AgentSink {
    fn signal(&mut self, signal: &Signal<'_>) {
        self.metrics_of(&signal.rule.id).signal();
        let mut line = Vec::with_capacity(1024);
        crate::output::write_signal(&mut line, signal).expect("writing to a Vec cannot fail");
        if self.unwritten.len() >= MAX_UNWRITTEN {
            self.unwritten.pop_front();
            self.dropped += 1;
            tracing::error!(
                dropped = self.dropped,
                "signal output blocked too long: dropped the oldest waiting signal"
            );
        }
        self.unwritten.push_back(line);
    }

    fn rule_failed(&mut self, rule: &RuleStatus, error: &RuleError, event: &Event<'_>) {
        self.metrics_of(&rule.manifest.id)
            .failed(matches!(error, RuleError::Timeout(_)));
        log_rule_failure(rule, error, event);
    }

    fn rule_quarantined(&mut self, rule: &RuleStatus, reason: &str) {
        self.metrics_of(&rule.manifest.id).quarantined();
        log_quarantine(rule, reason);
    }

    fn rule_evaluated(&mut self, rule: &RuleStatus, took: Duration) {
        self.metrics_of(&rule.manifest.id).evaluated(took);
    }
}
