//! `picket run`: the live agent. Kernel probes report opens of the files the rules subscribe
//! to; each becomes a normalized event (docs/events.md) for the same pipeline replay uses.
//! One thread evaluates events; reloads of the rules directory and saves of learned state land
//! between events.

use crate::discovery::{Discovery, Found, Targets};
use crate::event::{Ancestor, ArgList, Container, Event, File, Pod, Process};
use crate::kernel_report::KernelReport;
use crate::outputs::{MeteredOutput, OutputSettings, OutputSpec, Outputs};
use crate::rule_engine::{RuleEngine, RuleEngineOptions, SAVE_EVERY};
use crate::time::{StableClock, Timestamp};
use picket_abi::EventKind;
use picket_probes::{HostPaths, OpenEvent, Probes, Strategy};
use std::borrow::Cow;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};

/// How to run the agent.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// Rules, state and limits.
    pub engine: RuleEngineOptions,
    /// Where signals go.
    pub outputs: Vec<OutputSpec>,
    /// How (queues, spools, HTTP, flood control).
    pub output_settings: OutputSettings,
    /// An output failing for longer than this makes `/readyz` fail.
    pub output_unready_after: Duration,
    /// Which kernel hook to use.
    pub strategy: Strategy,
    /// The node's name for events' `host` field.
    pub node_name: String,
    /// Where the host's runtime state and processes are seen from.
    pub host_paths: HostPaths,
    /// Where to serve `/healthz`, `/readyz` and `/metrics`, if anywhere.
    pub listen: Option<SocketAddr>,
}

/// How long a stopping agent waits for the fleet's answers on held signals.
const FLEET_GRACE: Duration = Duration::from_secs(1);

/// How long the outputs may take, at shutdown, to deliver what is queued (a remote output keeps
/// the rest in its spool).
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

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
    let (mut engine, scan) = RuleEngine::start(&options.engine)?;
    engine.apply(scan);
    metrics.heartbeat();
    let mut probes = Probes::load_on(options.strategy, &options.host_paths)?;
    tracing::info!(strategy = %probes.strategy(), "probes attached");
    metrics.set_strategy(&probes.strategy().to_string());
    let (found_tx, mut found_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut prefilter = Prefilter::start(&engine, &mut probes, move |found| {
        found_tx.send(found).is_ok()
    })?;
    prefilter.sync(&engine, &mut probes);

    let mut control = match &options.engine.state {
        Some(dir) => Some(
            crate::control::listen(dir)
                .map_err(|err| anyhow::anyhow!("control socket in {}: {err}", dir.display()))?,
        ),
        None => None,
    };
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::unbounded_channel();
    let _watcher = engine.watch(move |scan| reload_tx.send(scan).is_ok())?;
    metrics.set_output_unready_after(options.output_unready_after);
    let mut sink = MeteredOutput::new(Outputs::open(&options.outputs, &options.output_settings)?);
    let clock = StableClock::start();
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(SAVE_EVERY);
    let mut kernel_report = KernelReport::default();
    let rules: Vec<String> = engine
        .pipeline()
        .rules()
        .map(|r| r.manifest.id.clone())
        .collect();
    tracing::info!(
        rules = ?rules,
        rules_dir = %options.engine.rules.display(),
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
                // Learning and forgetting count on the boot clock, which no wall-clock step moves.
                let ts = clock.stable(opened.ts);
                let event = normalize(opened, ts, &options.node_name, &prefilter.found);
                metrics.event(event.kind.as_str());
                engine.handle(&event, &mut sink);
            }
            Some(scan) = reload_rx.recv() => {
                if engine.apply(scan) {
                    prefilter.sync(&engine, &mut probes);
                }
            }
            Some(found) = found_rx.recv() => prefilter.set_found(found, &mut probes),
            update = engine.next_fleet_update() => engine.apply_fleet(update, &mut sink),
            Some(request) = next_request(&mut control) => {
                let _ = request.reply.send(engine.control(request.op));
            }
            _ = tick.tick() => {
                engine.save();
                sink.outputs_mut().tick(Some(clock.stable(std::time::SystemTime::now())));
                kernel_report.tick(&mut probes);
                metrics.set_kernel_events_lost(probes.lost_events());
            }
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }
    metrics.set_ready(false);
    tracing::info!("stopping: detaching probes and saving state");
    kernel_report.at_stop(&mut probes);
    drop(probes);
    // Signals waiting for the fleet's answer go out, confirmed or not: none is lost.
    engine.release_held(FLEET_GRACE, &mut sink);
    engine.shutdown();
    sink.into_outputs().finish(Some(OUTPUT_GRACE));
    Ok(())
}

/// The control socket's next request; never comes without one.
async fn next_request(
    control: &mut Option<tokio::sync::mpsc::Receiver<crate::control::Request>>,
) -> Option<crate::control::Request> {
    match control {
        Some(control) => control.recv().await,
        None => std::future::pending().await,
    }
}

/// Keeps the kernel's approvers equal to what the rules subscribe to: their basenames, and the
/// identities of the files found under their path prefixes (see [`crate::discovery`]).
struct Prefilter {
    warned_all: bool,
    discovery: Discovery,
    targets: Targets,
    /// The files known by identity, with the paths they were found at.
    found: Found,
}

impl Prefilter {
    /// Finds the rules' files and approves them, before the agent says it is ready; later
    /// changes go to `deliver`, to come back through [`Prefilter::set_found`] on the agent's
    /// thread.
    fn start(
        engine: &RuleEngine,
        probes: &mut Probes,
        deliver: impl FnMut(Found) -> bool + Send + 'static,
    ) -> anyhow::Result<Prefilter> {
        let targets = Targets::of_rules(engine.pipeline());
        let (discovery, found) = Discovery::spawn(targets.clone(), deliver)?;
        let mut prefilter = Prefilter {
            warned_all: false,
            discovery,
            targets,
            found: Found::default(),
        };
        prefilter.set_found(found, probes);
        Ok(prefilter)
    }

    /// Approves the files discovery found, by identity.
    fn set_found(&mut self, found: Found, probes: &mut Probes) {
        match probes.set_identities(&found.ids()) {
            Ok(()) => {
                let added: Vec<&str> = found
                    .iter()
                    .filter(|(id, _)| self.found.path_of(id).is_none())
                    .map(|(_, path)| path)
                    .take(8)
                    .collect();
                tracing::info!(files = found.len(), added = ?added, "kernel identity approvers updated");
                self.found = found;
            }
            Err(err) => tracing::error!("updating the kernel identity approvers: {err:#}"),
        }
    }

    fn sync(&mut self, engine: &RuleEngine, probes: &mut Probes) {
        // The rules changed: an open sent before may not have reached the rules now running.
        if let Err(err) = probes.forget_repeats() {
            tracing::error!("resetting the kernel's repeat filter: {err:#}");
        }
        let targets = Targets::of_rules(engine.pipeline());
        if targets != self.targets {
            self.discovery.set_targets(targets.clone());
            self.targets = targets;
        }
        let names = match engine.basenames() {
            Some(names) => names,
            None => {
                if !self.warned_all {
                    tracing::warn!(
                        "a rule subscribes to every file; the kernel prefilter only passes the \
                         other rules' basenames, so that rule sees only those"
                    );
                    self.warned_all = true;
                }
                engine
                    .pipeline()
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

/// A kernel open as a normalized event (docs/events.md), dated `ts`; `found` gives the canonical
/// path of a file known by identity.
pub fn normalize(
    opened: OpenEvent,
    ts: Timestamp,
    node_name: &str,
    found: &Found,
) -> Event<'static> {
    let canonical_path = found
        .path_of(&opened.file)
        .map(|path| Cow::Owned(path.to_string()));
    let process = opened.process;
    let mut ancestors = process.ancestors.into_iter().map(|a| Ancestor {
        pid: a.pid,
        uid: a.uid,
        exe: Cow::Owned(a.exe),
        args: args_of(&a.args),
    });
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
        ts,
        kind: EventKind::Open,
        node_name: Some(Cow::Owned(node_name.to_string())),
        file: File {
            path: Cow::Owned(opened.path),
            access: opened.access,
            dev: Some(opened.file.dev),
            ino: Some(opened.file.ino),
            canonical_path,
        },
        process: Process {
            pid: process.pid,
            ppid: Some(process.ppid),
            uid: Some(process.uid),
            gid: Some(process.gid),
            user: process.user.map(Cow::Owned),
            comm: Some(Cow::Owned(process.comm)),
            exe: Cow::Owned(process.exe),
            args: args_of(&process.args),
            euid: Some(process.euid),
            egid: Some(process.egid),
            exe_digest: process.exe_digest.map(Cow::Owned),
            exe_swapped_to: process.exe_swapped_to.map(Cow::Owned),
            parent: ancestors.next(),
            ancestors: ancestors.collect(),
        },
        container,
        pod,
    }
}

/// A command line for the event; `None` when the probes know none.
fn args_of(args: &[String]) -> Option<ArgList> {
    (!args.is_empty()).then(|| args.iter().collect())
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
