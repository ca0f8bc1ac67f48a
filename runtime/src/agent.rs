//! `picket run`: the live agent. Kernel probes report opens of the files the rules subscribe
//! to; each becomes a normalized event (docs/events.md) for the same pipeline replay uses.
//! One thread evaluates events; reloads of the rules directory and saves of learned state land
//! between events.

use crate::canary::{Canary, DEADLINE, EVERY_WHILE_BLIND, Verdict};
use crate::container_metadata::Podless;
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
    crate::container_metadata::warn_if_missing(&options.host_paths.root);
    metrics.set_output_unready_after(options.output_unready_after);
    let sink = MeteredOutput::new(Outputs::open(&options.outputs, &options.output_settings)?);
    let state_dir = options
        .engine
        .state
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    let mut canary = Canary::create(&state_dir)?;
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
    let mut detection = Detection {
        engine,
        sink,
        clock: StableClock::start(),
        node_name: options.node_name.clone(),
        podless: Podless::default(),
    };
    let mut probes = attach_proven(
        probes,
        &options,
        &mut canary,
        &mut prefilter,
        &mut detection,
    )
    .await?;

    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::unbounded_channel();
    let _watcher = detection
        .engine
        .watch(move |scan| reload_tx.send(scan).is_ok())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(SAVE_EVERY);
    let mut kernel_report = KernelReport::default();
    let rules: Vec<String> = detection
        .engine
        .pipeline()
        .rules()
        .map(|r| r.manifest.id.clone())
        .collect();
    if canary.blind() {
        tracing::warn!(
            rules = ?rules,
            rules_dir = %options.engine.rules.display(),
            "agent running blind: not ready until the kernel hook reports the canary open"
        );
    } else {
        tracing::info!(
            rules = ?rules,
            rules_dir = %options.engine.rules.display(),
            "agent ready"
        );
    }
    metrics.set_ready(true);

    loop {
        metrics.heartbeat();
        tokio::select! {
            opened = probes.next_event() => {
                let opened = opened?;
                if canary.is_canary(&opened) {
                    if canary.set_blind(false) {
                        tracing::info!(strategy = %probes.strategy(), "the kernel hook reported the canary open: no longer blind");
                        metrics.set_blind(false);
                    }
                    continue;
                }
                detection.handle(opened, &prefilter.found);
            }
            Some(scan) = reload_rx.recv() => {
                if detection.engine.apply(scan) {
                    prefilter.sync(&detection.engine, &mut probes);
                }
            }
            Some(found) = found_rx.recv() => prefilter.set_found(found, &mut probes),
            update = detection.engine.next_fleet_update() => {
                detection.engine.apply_fleet(update, &mut detection.sink);
            }
            Some(request) = next_request(&mut control) => {
                let _ = request.reply.send(detection.engine.control(request.op));
            }
            _ = tick.tick() => {
                detection.engine.save();
                detection
                    .sink
                    .outputs_mut()
                    .tick(Some(detection.clock.stable(std::time::SystemTime::now())));
                kernel_report.tick(&mut probes);
                metrics.set_kernel_events_lost(probes.lost_events());
                match canary.tick() {
                    Ok(Verdict::Missed) => {
                        if canary.set_blind(true) {
                            tracing::error!(
                                strategy = %probes.strategy(),
                                canary = %canary.path().display(),
                                "blind: the kernel hook did not report the canary open within {DEADLINE:?}; \
                                 /readyz fails and picket_probe_blind is 1 until it does"
                            );
                            metrics.set_blind(true);
                        }
                    }
                    Ok(Verdict::Waiting) => {}
                    Err(err) => tracing::warn!("opening the canary {}: {err}", canary.path().display()),
                }
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
    detection
        .engine
        .release_held(FLEET_GRACE, &mut detection.sink);
    detection.engine.shutdown();
    detection.sink.into_outputs().finish(Some(OUTPUT_GRACE));
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
/// What turns a kernel open into signals: the rules with their state, the output, the clock.
struct Detection {
    engine: RuleEngine,
    sink: MeteredOutput,
    clock: StableClock,
    node_name: String,
    podless: Podless,
}

impl Detection {
    /// Normalizes `opened` and runs the rules on it.
    fn handle(&mut self, opened: OpenEvent, found: &Found) {
        if opened.path_truncated {
            tracing::warn!(path = %opened.path, pid = opened.process.pid, "path too deep or too long to resolve completely");
        }
        // Learning and forgetting count on the boot clock, which no wall-clock step moves.
        let ts = self.clock.stable(opened.ts);
        let event = normalize(opened, ts, &self.node_name, found);
        if event.pod.is_none()
            && let Some(id) = event.container.as_ref().and_then(|c| c.id.as_deref())
        {
            let image = event.container.as_ref().and_then(|c| c.image.as_deref());
            self.podless.event(id, image);
        }
        crate::metrics::global().event(event.kind.as_str());
        self.engine.handle(&event, &mut self.sink);
    }
}

/// Proves the attached hook with the canary (see [`crate::canary`]); a hook that does not report
/// it is replaced by the next strategy (with `--probe auto`) and the proof is repeated. When no
/// strategy reports it, the agent goes on blind with the hook it has: not ready, and saying so.
async fn attach_proven(
    mut probes: Probes,
    options: &AgentOptions,
    canary: &mut Canary,
    prefilter: &mut Prefilter,
    detection: &mut Detection,
) -> anyhow::Result<Probes> {
    let metrics = crate::metrics::global();
    loop {
        if prove(&mut probes, canary, prefilter, detection).await? {
            tracing::info!(strategy = %probes.strategy(), "the kernel hook reported the canary open");
            canary.set_blind(false);
            metrics.set_blind(false);
            return Ok(probes);
        }
        let failed = probes.strategy();
        tracing::warn!(
            strategy = %failed,
            canary = %canary.path().display(),
            "the {failed} hook attached but did not report the canary open within {DEADLINE:?}"
        );
        let fallbacks = next_strategies(options.strategy, failed);
        let mut replaced = false;
        if !fallbacks.is_empty() {
            // The hooks of two strategies on the same opens would report each twice.
            drop(probes);
            let mut loaded = None;
            for candidate in fallbacks {
                tracing::warn!("falling back from {failed} to {candidate}");
                match Probes::load_on(candidate, &options.host_paths) {
                    Ok(next) => {
                        loaded = Some(next);
                        break;
                    }
                    Err(err) => tracing::info!("strategy {candidate} refused: {err:#}"),
                }
            }
            replaced = loaded.is_some();
            probes = match loaded {
                Some(next) => next,
                // None of the others attaches: back to the one that did, blind.
                None => Probes::load_on(failed, &options.host_paths)?,
            };
            prefilter.attach(&detection.engine, &mut probes);
            metrics.set_strategy(&probes.strategy().to_string());
        }
        if !replaced {
            tracing::error!(
                strategy = %probes.strategy(),
                "blind: no kernel hook reported the canary open; /readyz fails and \
                 picket_probe_blind is 1 until one does (tried again every {EVERY_WHILE_BLIND:?}). \
                 Check what confines the agent (AppArmor, SELinux: README) and the kernel's log"
            );
            canary.set_blind(true);
            metrics.set_blind(true);
            return Ok(probes);
        }
    }
}

/// The strategies to try after `failed`, the attached one: those after it in `auto`'s order
/// when the operator asked for `auto`, none when they named one.
fn next_strategies(requested: Strategy, failed: Strategy) -> Vec<Strategy> {
    const ORDER: [Strategy; 3] = [Strategy::Lsm, Strategy::Fentry, Strategy::Tracepoint];
    if requested != Strategy::Auto {
        return Vec::new();
    }
    ORDER
        .iter()
        .skip_while(|s| **s != failed)
        .skip(1)
        .copied()
        .collect()
}

/// Opens the canary and waits up to [`DEADLINE`] for the hook to report it, running the rules
/// on the other opens meanwhile. Whether it was reported.
async fn prove(
    probes: &mut Probes,
    canary: &mut Canary,
    prefilter: &Prefilter,
    detection: &mut Detection,
) -> anyhow::Result<bool> {
    let metrics = crate::metrics::global();
    canary
        .open()
        .map_err(|err| anyhow::anyhow!("opening the canary {}: {err}", canary.path().display()))?;
    let deadline = tokio::time::sleep(DEADLINE);
    tokio::pin!(deadline);
    let mut heartbeat = tokio::time::interval(SAVE_EVERY);
    loop {
        tokio::select! {
            opened = probes.next_event() => {
                let opened = opened?;
                if canary.is_canary(&opened) {
                    return Ok(true);
                }
                detection.handle(opened, &prefilter.found);
            }
            _ = heartbeat.tick() => metrics.heartbeat(),
            _ = &mut deadline => return Ok(false),
        }
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

    /// Gives freshly loaded probes (a fallback strategy) the approvers the old ones had.
    fn attach(&mut self, engine: &RuleEngine, probes: &mut Probes) {
        if let Err(err) = probes.set_identities(&self.found.ids()) {
            tracing::error!("updating the kernel identity approvers: {err:#}");
        }
        self.sync(engine, probes);
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
        let mut names = match engine.basenames() {
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
        // The agent's own canary (crate::canary), proving the hook sees opens.
        names.insert(crate::canary::BASENAME.to_owned());
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
