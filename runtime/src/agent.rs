//! `picket run`: the live agent. Kernel probes report opens of the files the rules subscribe
//! to; each becomes a normalized event (design.md "Event") for the same pipeline replay uses.
//! One thread evaluates events; reloads of the rules directory and saves of learned state land
//! between events.

use crate::event::{ArgList, Container, Event, File, FileAccess, Kind, Process};
use crate::host::{Host, HostOptions, SAVE_EVERY};
pub use crate::output::Output;
use crate::output::{OnError, SignalOutput, WhenFull};
use crate::time::{StableClock, Timestamp};
use picket_probes::{Access, OpenEvent, Probes, Strategy};
use std::borrow::Cow;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};

/// How to run the agent.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// Rules, state and limits.
    pub host: HostOptions,
    /// Where signals go.
    pub output: Output,
    /// Signals queued in front of the output; past it, new signals are dropped and counted.
    pub output_queue: usize,
    /// Which kernel hook to use.
    pub strategy: Strategy,
    /// The node's name for events' `host` field.
    pub node_name: String,
}

/// How long the output may take, at shutdown, to write what is queued.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Runs the agent until SIGINT or SIGTERM.
pub fn run(options: AgentOptions) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_until_stopped(options))
}

async fn run_until_stopped(options: AgentOptions) -> anyhow::Result<()> {
    let (mut host, scan) = Host::start(&options.host)?;
    host.apply(scan);
    let mut probes = Probes::load(options.strategy)?;
    tracing::info!(strategy = %probes.strategy(), "probes attached");
    let mut prefilter = Prefilter::default();
    prefilter.sync(&host, &mut probes);

    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::unbounded_channel();
    let _watcher = host.watch(move |scan| reload_tx.send(scan).is_ok())?;
    let mut sink = SignalOutput::open(
        &options.output,
        options.output_queue,
        WhenFull::Drop,
        OnError::Retry,
    )
    .map_err(|err| anyhow::anyhow!("output {err}"))?;
    let clock = StableClock::start();
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

    loop {
        tokio::select! {
            opened = probes.next_event() => {
                let opened = opened?;
                if opened.path_truncated {
                    tracing::warn!(path = %opened.path, pid = opened.process.pid, "path too deep or too long to resolve completely");
                }
                let dated = opened.ts;
                let mut event = normalize(opened, &options.node_name);
                // Learning and forgetting count on the boot clock, which no wall-clock step moves.
                event.ts = clock.stable(dated);
                host.handle(&event, &mut sink);
            }
            Some(scan) = reload_rx.recv() => {
                if host.apply(scan) {
                    prefilter.sync(&host, &mut probes);
                }
            }
            _ = tick.tick() => {
                host.save();
                sink.report();
                let lost = probes.lost_events();
                if lost > lost_reported {
                    tracing::warn!(lost = lost - lost_reported, total = lost, "events lost in the kernel's ring buffer (reader too slow)");
                    lost_reported = lost;
                }
            }
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }
    tracing::info!("stopping: detaching probes and saving state");
    drop(probes);
    host.shutdown();
    sink.finish(Some(OUTPUT_GRACE));
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
    let container =
        (process.container_id.is_some() || process.container_image.is_some()).then(|| Container {
            id: process.container_id.map(Cow::Owned),
            image: process.container_image.map(Cow::Owned),
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
            comm: Some(Cow::Owned(process.comm)),
            exe: Cow::Owned(process.exe),
            args: (!process.args.is_empty()).then(|| process.args.iter().collect::<ArgList>()),
        },
        container,
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
