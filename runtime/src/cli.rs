//! The `picket` command line (docs/cli.md): argument parsing, and dispatch to the module
//! that does each command's work (agent, replay, conformance).

use crate::agent::AgentOptions;
use crate::outputs::{FloodSettings, HttpSettings, OutputSettings, OutputSpec, WhenFull};
use crate::pipeline::{Overrides, PipelineConfig};
use crate::replay::{ReplayOptions, Source};
use crate::rule_engine::RuleEngineOptions;
use crate::rules_dir::load_file;
use crate::sandbox::{Limits, Sandbox};
use crate::signing::Signers;
use crate::state::DEFAULT_CAPACITY;
use crate::time::{duration_nanos, parse_duration};
use clap::{Args, Parser, Subcommand};
use picket_abi::{ABI_VERSION, Manifest};
use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Exit status: everything worked and every case passed.
pub const EXIT_OK: u8 = 0;
/// Exit status: a conformance case failed, or the command failed while running.
pub const EXIT_FAILED: u8 = 1;
/// Exit status: input could not be used (a module, a case file, an event line, a flag).
pub const EXIT_UNUSABLE: u8 = 2;
/// Exit status (`replay`): signals raised but not delivered in time wait in the spool under
/// `--state`, for the next run with the same `--state` and `--output`.
pub const EXIT_SPOOLED: u8 = 3;

/// picket: a node agent that runs sandboxed WebAssembly detection rules on file events.
#[derive(Debug, Parser)]
#[command(name = "picket", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines on stderr as text, or as one JSON object per line (fields in docs/cli.md).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How log lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable text.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message` and the event's fields.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent: watch file opens in the kernel, run the rules from --rules (reloaded as
    /// the directory changes), write signals to --output.
    Run(RunArgs),
    /// Feed a JSON-lines event file through the rules; signals go to --output (stdout by
    /// default).
    Replay(ReplayArgs),
    /// Check a rule module's exports and manifest, then run conformance cases against it.
    Test(TestArgs),
    /// Print a rule module's manifest as JSON.
    Inspect(InspectArgs),
    /// See and edit what the rules learned: in a state directory, a running agent, or the
    /// fleet store.
    #[command(subcommand)]
    State(StateCommand),
}

/// `picket state` subcommands (docs/cli.md).
#[derive(Debug, Subcommand)]
enum StateCommand {
    /// Print each group (rule, state, group) as a JSON line: learning or detecting (and until
    /// when), its values with when they were seen.
    Show(StateShowArgs),
    /// Print every group as JSON lines, for `import` elsewhere (a baseline from staging).
    Export(StateTarget),
    /// Merge groups from JSON lines (as `export` prints them): learning starts at the earliest,
    /// values are seen at the latest.
    Import(StateImportArgs),
    /// Make VALUE known in GROUP, from now on (approve a reader ahead of time).
    Allow(StateAllowArgs),
    /// Make VALUE, or the whole GROUP, be forgotten: new again when it returns (a whole group
    /// learns again from its next event).
    Forget(StateForgetArgs),
}

/// Where `picket state` works: a state directory (through the running agent's control socket
/// when one listens there), or the fleet store.
#[derive(Debug, Args)]
struct StateTarget {
    /// The agent's state directory (the running agent's, through its control socket); wins
    /// over a `PICKET_SHARED_STATE` in the environment (as inside the agent's own pod).
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    #[command(flatten)]
    fleet: FleetArgs,
}

#[derive(Debug, Args)]
struct StateShowArgs {
    #[command(flatten)]
    target: StateTarget,
    /// Only this rule.
    #[arg(long, value_name = "RULE")]
    rule: Option<String>,
    /// Only this group.
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,
}

#[derive(Debug, Args)]
struct StateImportArgs {
    #[command(flatten)]
    target: StateTarget,
    /// JSON lines as `export` prints them, or - for stdin.
    #[arg(value_name = "FILE|-")]
    input: PathBuf,
}

#[derive(Debug, Args)]
struct StateAllowArgs {
    #[command(flatten)]
    target: StateTarget,
    /// The state the rule learns in (the bundled rules' is process.exe).
    #[arg(long = "name", value_name = "STATE", default_value = "process.exe")]
    state_name: String,
    /// The rule id.
    rule: String,
    /// The group (for the bundled rules, the image repository, or the node's name).
    group: String,
    /// The value to allow (for the bundled rules, an executable's path).
    value: String,
}

#[derive(Debug, Args)]
struct StateForgetArgs {
    #[command(flatten)]
    target: StateTarget,
    /// The state the rule learns in (the bundled rules' is process.exe).
    #[arg(long = "name", value_name = "STATE", default_value = "process.exe")]
    state_name: String,
    /// The rule id.
    rule: String,
    /// The group.
    group: String,
    /// The value to forget; without it, the whole group.
    value: Option<String>,
}

/// How rule modules are loaded and run: shared by every command that runs rules, `test`
/// included.
#[derive(Debug, Args)]
struct SandboxArgs {
    /// Longest a rule may take on one event before it is interrupted.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "50ms")]
    rule_timeout: Duration,
    /// Longest a rule module's compile is waited for; a module still compiling then is refused
    /// (the other modules load meanwhile, each on its own worker).
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "30s")]
    compile_timeout: Duration,
    /// Largest rule module file accepted (a bound on compile time and memory too).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "16MiB")]
    max_module_size: usize,
    /// Largest memory a rule module may use, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 16)]
    rule_memory: usize,
    /// minisign public key (repeatable): when given, a module loads only with a valid signature
    /// by one of these keys in MODULE.wasm.minisig beside it.
    #[arg(long = "trusted-key", value_name = "FILE")]
    trusted_keys: Vec<PathBuf>,
}

impl SandboxArgs {
    fn limits(&self) -> Limits {
        Limits {
            memory_bytes: self.rule_memory.saturating_mul(1 << 20),
            timeout: self.rule_timeout,
            compile_timeout: self.compile_timeout,
            max_module_bytes: self.max_module_size,
            ..Limits::default()
        }
    }

    fn sandbox(&self) -> anyhow::Result<Arc<Sandbox>> {
        Ok(Arc::new(Sandbox::new(self.limits())?))
    }
}

/// Settings for running rules over a stream of events (`run`, `replay`): the sandbox's, and
/// the new-value state's. `test` takes only the sandbox's: a case fixes its own timing and
/// starts from empty state, so state flags there would be accepted and do nothing.
#[derive(Debug, Args)]
struct RuleArgs {
    #[command(flatten)]
    sandbox: SandboxArgs,
    /// Learning period for every rule, instead of each manifest's default (e.g. 0s, 90m, 7d).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    learning_period: Option<Duration>,
    /// Forget values unseen for this long, instead of each manifest's default (e.g. 28d).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    forget_after: Option<Duration>,
    /// Most new-value entries kept per rule (a quarter of it bounds its groups); past it the
    /// groups holding the most evict their own least recently seen values.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CAPACITY)]
    state_capacity: usize,
    /// Most bytes of new-value state kept per rule (keys plus a fixed overhead per entry, e.g.
    /// 16MiB); past it the groups holding the most evict their own least recently seen values,
    /// counted and reported.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "16MiB")]
    state_bytes_per_rule: usize,
    /// Most bytes of new-value state kept for all rules together; past it the largest rule's
    /// state evicts, its groups holding the most giving way first.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "64MiB")]
    state_bytes_total: usize,
    #[command(flatten)]
    fleet: FleetArgs,
}

/// Fleet learning: the new-value state shared with every agent using the same store.
#[derive(Debug, Args)]
struct FleetArgs {
    /// Share what the rules learn with every agent using this Redis, Valkey or Redis Cluster
    /// store: redis://[USER[:PASSWORD]@]HOST:PORT or rediss:// for TLS (docs/new-value.md).
    #[arg(
        long,
        value_name = "URL",
        env = "PICKET_SHARED_STATE",
        hide_env_values = true
    )]
    shared_state: Option<String>,
    /// Read the store's password from the first line of FILE (instead of the URL).
    #[arg(long, value_name = "FILE", requires = "shared_state")]
    shared_state_password_file: Option<PathBuf>,
    /// Trust the CA certificates in this PEM file for rediss:// (instead of the system's).
    #[arg(long, value_name = "FILE", requires = "shared_state")]
    shared_state_ca: Option<PathBuf>,
    /// Prefix of every key in the store: one per cluster of nodes that learn together.
    #[arg(long, value_name = "PREFIX", default_value = "picket")]
    shared_state_prefix: String,
    /// Longest the store may take to answer; past it the agent decides alone (and raises).
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "250ms")]
    shared_state_timeout: Duration,
    /// Most values the store keeps per group (a flood fills only its own group).
    #[arg(long, value_name = "N", default_value_t = crate::state::fleet::DEFAULT_MAX_VALUES_PER_GROUP)]
    shared_state_max_values: usize,
}

impl FleetArgs {
    fn options(&self) -> Option<crate::state::fleet::FleetOptions> {
        let url = self.shared_state.clone()?;
        Some(crate::state::fleet::FleetOptions {
            store: crate::state::fleet::StoreOptions {
                url,
                password_file: self.shared_state_password_file.clone(),
                ca_file: self.shared_state_ca.clone(),
                prefix: self.shared_state_prefix.clone(),
                timeout: self.shared_state_timeout,
                max_values_per_group: self.shared_state_max_values,
                max_groups: crate::state::fleet::DEFAULT_MAX_GROUPS,
            },
            node: crate::state::fleet::node_id(&crate::agent::node_name()),
            start_timeout: self.shared_state_timeout.max(Duration::from_secs(10)),
        })
    }
}

impl RuleArgs {
    fn engine_options(&self, rules: PathBuf, state: Option<PathBuf>) -> RuleEngineOptions {
        RuleEngineOptions {
            rules,
            state,
            limits: self.sandbox.limits(),
            pipeline: self.pipeline_config(),
            trusted_keys: self.sandbox.trusted_keys.clone(),
            fleet: self.fleet.options(),
        }
    }

    fn pipeline_config(&self) -> PipelineConfig {
        PipelineConfig {
            overrides: Overrides {
                learning_period_ns: self.learning_period.map(duration_nanos),
                forget_after_ns: self.forget_after.map(duration_nanos),
            },
            state_capacity: self.state_capacity,
            state_rule_bytes: self.state_bytes_per_rule,
            state_total_bytes: self.state_bytes_total,
            ..PipelineConfig::default()
        }
    }
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Read these options from FILE (TOML, or YAML when it ends in .yaml or .yml): each key is
    /// an option's long name; the flags given here win over the file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory of rule modules (*.wasm), watched for changes.
    #[arg(long, value_name = "DIR", default_value = "/etc/picket/rules")]
    rules: PathBuf,
    /// Keep learned state (and compiled modules) in DIR across restarts.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/picket")]
    state: PathBuf,
    #[command(flatten)]
    outputs: OutputArgs,
    /// `/readyz` fails while an output has failed to deliver for longer than this.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "5m")]
    output_unready_after: Duration,
    /// Where the host's container runtime state is mounted (`/run/containerd`,
    /// `/run/containers`, `/var/lib/containers`, `/var/lib/docker` under it), for an agent in a
    /// container; `/` on the node itself.
    #[arg(long, value_name = "DIR", default_value = "/")]
    host_root: PathBuf,
    /// A procfs of the host's pid namespace (in a container: `/proc` with hostPID, or the host's
    /// `/proc` mounted elsewhere).
    #[arg(long, value_name = "DIR", default_value = "/proc")]
    host_proc: PathBuf,
    /// Serve /healthz, /readyz and Prometheus /metrics on ADDR (for example 0.0.0.0:9464).
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// Kernel hook for file opens: auto tries lsm, fentry, then tracepoint.
    #[arg(long, value_name = "auto|lsm|fentry|tracepoint", default_value = "auto", value_parser = parse_strategy)]
    probe: picket_probes::Strategy,
    #[command(flatten)]
    settings: RuleArgs,
}

fn parse_strategy(name: &str) -> Result<picket_probes::Strategy, String> {
    picket_probes::Strategy::parse(name).map_err(|err| err.to_string())
}

#[derive(Debug, Args)]
struct ReplayArgs {
    /// Directory of rule modules (*.wasm).
    #[arg(long, value_name = "DIR")]
    rules: PathBuf,
    /// Keep learned state (and compiled modules) in DIR across runs.
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Reload rules while replaying, as modules are added, replaced or removed in --rules.
    #[arg(long)]
    watch: bool,
    #[command(flatten)]
    outputs: OutputArgs,
    /// At the end, longest to wait for the outputs to deliver what was raised; what is left
    /// stays spooled under --state (exit 3).
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "30s")]
    output_wait: Duration,
    #[command(flatten)]
    settings: RuleArgs,
    /// JSON-lines event file, or - for stdin.
    #[arg(value_name = "FILE|-")]
    input: PathBuf,
}

/// Where signals go and how (`run`, `replay`).
#[derive(Debug, Args)]
struct OutputArgs {
    /// Where signals go (repeatable): - for stdout, a file path (appended to, reopened after
    /// rotation), http(s)://URL (POSTed as JSON), or falcosidekick+http(s)://HOST:PORT.
    #[arg(long = "output", value_name = "SPEC", value_parser = OutputSpec::parse)]
    outputs: Vec<OutputSpec>,
    /// An HTTP header sent by the http and falcosidekick outputs, `Name: value` (repeatable).
    #[arg(long = "output-header", value_name = "HEADER", value_parser = crate::outputs::spec::parse_header)]
    headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    /// A file of HTTP headers, one `Name: value` a line (keeps a token off the command line).
    #[arg(long, value_name = "FILE")]
    output_header_file: Option<PathBuf>,
    /// Longest one HTTP delivery may take, connecting included; past it, it is tried again.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "10s")]
    output_timeout: Duration,
    /// Most signals in one request to an http(s) output (1: one JSON object a request).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    output_batch: u32,
    /// Signals queued in front of each output while it is slow or stuck; past this many (a
    /// local output, or a remote one without --state), signals are dropped, counted and
    /// reported, and detection carries on.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    output_queue: usize,
    /// Most bytes of each remote output's disk spool under --state; past it the oldest signals
    /// are dropped, counted and reported.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "256MiB")]
    spool_bytes: usize,
    /// Signals of one rule and group passed within --flood-window; the rest are folded into
    /// one signal saying how many it stands for (0: no flood control).
    #[arg(long, value_name = "N", default_value_t = 100)]
    flood_limit: u32,
    /// The flood control window, in event time.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "1m")]
    flood_window: Duration,
}

impl OutputArgs {
    /// The outputs (stdout when none is given) and their settings.
    fn settings(
        &self,
        state: Option<PathBuf>,
        when_full: WhenFull,
        give_up: bool,
    ) -> anyhow::Result<(Vec<OutputSpec>, OutputSettings)> {
        let mut headers = self.headers.clone();
        if let Some(file) = &self.output_header_file {
            headers.extend(
                crate::outputs::spec::read_header_file(file)
                    .map_err(|err| anyhow::anyhow!("--output-header-file {err}"))?,
            );
        }
        let specs = if self.outputs.is_empty() {
            vec![OutputSpec::Stdout]
        } else {
            self.outputs.clone()
        };
        Ok((
            specs,
            OutputSettings {
                queue: self.output_queue,
                when_full,
                give_up,
                state,
                spool_bytes: self.spool_bytes as u64,
                http: HttpSettings {
                    headers,
                    timeout: self.output_timeout,
                    batch: self.output_batch as usize,
                },
                flood: FloodSettings {
                    limit: self.flood_limit,
                    window: self.flood_window,
                },
            },
        ))
    }
}

#[derive(Debug, Args)]
struct TestArgs {
    #[command(flatten)]
    settings: SandboxArgs,
    /// The rule module.
    #[arg(value_name = "RULE.wasm")]
    module: PathBuf,
    /// Case files, or directories of *.json case files.
    #[arg(value_name = "CASE", required = true)]
    cases: Vec<PathBuf>,
}

#[derive(Debug, Args)]
struct InspectArgs {
    /// The rule module.
    #[arg(value_name = "RULE.wasm")]
    module: PathBuf,
}

/// Runs a parsed command line; returns the process exit status.
pub fn main(cli: Cli) -> ExitCode {
    init_logging(cli.log_format);
    let status = match cli.command {
        Command::Run(args) => run(args),
        Command::Replay(args) => replay(args),
        Command::Test(args) => test(args),
        Command::Inspect(args) => inspect(args),
        Command::State(command) => state(command),
    };
    match status {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PICKET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
            .try_init(),
        // One flat object per line (the event's fields beside `message`), for log pipelines.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
}

fn run(args: RunArgs) -> anyhow::Result<u8> {
    let (outputs, output_settings) =
        args.outputs
            .settings(Some(args.state.clone()), WhenFull::Drop, false)?;
    crate::agent::run(AgentOptions {
        engine: args
            .settings
            .engine_options(args.rules.clone(), Some(args.state.clone())),
        outputs,
        output_settings,
        output_unready_after: args.output_unready_after,
        strategy: args.probe,
        node_name: crate::agent::node_name(),
        host_paths: picket_probes::HostPaths {
            root: args.host_root,
            proc: args.host_proc,
        },
        listen: args.listen,
    })?;
    Ok(EXIT_OK)
}

fn replay(args: ReplayArgs) -> anyhow::Result<u8> {
    let source = if args.input.as_os_str() == "-" {
        Source::Stdin
    } else {
        Source::File(args.input.clone())
    };
    // A replay loses nothing: a slow output sets its pace, and a local one that fails ends it.
    let (outputs, output_settings) =
        args.outputs
            .settings(args.state.clone(), WhenFull::Wait, true)?;
    let replayed = crate::replay::run(ReplayOptions {
        engine: args.settings.engine_options(args.rules, args.state),
        watch: args.watch,
        source,
        outputs,
        output_settings,
        output_wait: args.output_wait,
    })?;
    Ok(if replayed.spooled > 0 {
        EXIT_SPOOLED
    } else if replayed.all_usable() {
        EXIT_OK
    } else {
        EXIT_UNUSABLE
    })
}

fn test(args: TestArgs) -> anyhow::Result<u8> {
    let sandbox = args.settings.sandbox()?;
    let signers = match Signers::load(&args.settings.trusted_keys) {
        Ok(signers) => signers,
        Err(err) => {
            println!("ERROR {err:#}");
            return Ok(EXIT_UNUSABLE);
        }
    };
    let module = match load_file(&sandbox, &args.module, signers.as_ref()) {
        Ok(module) => module,
        Err(err) => {
            println!("ERROR {err}");
            return Ok(EXIT_UNUSABLE);
        }
    };
    println!(
        "module {}: rule `{}` ({}), ABI version {ABI_VERSION}",
        args.module.display(),
        module.manifest.id,
        module.manifest.title
    );
    let tally = crate::conformance::report(&sandbox, &module, &args.cases, &mut io::stdout())?;
    Ok(if tally.unusable > 0 {
        EXIT_UNUSABLE
    } else if tally.failed > 0 {
        EXIT_FAILED
    } else {
        EXIT_OK
    })
}

fn state(command: StateCommand) -> anyhow::Result<u8> {
    use crate::state::admin::{GroupRecord, Op};
    let (target, op, groups_only) = match command {
        StateCommand::Show(args) => (
            args.target,
            Op::Show {
                rule: args.rule,
                group: args.group,
            },
            false,
        ),
        StateCommand::Export(target) => (
            target,
            Op::Show {
                rule: None,
                group: None,
            },
            true,
        ),
        StateCommand::Import(args) => {
            let name = args.input.display().to_string();
            let text = if args.input.as_os_str() == "-" {
                io::read_to_string(io::stdin())
            } else {
                std::fs::read_to_string(&args.input)
            }
            .map_err(|err| anyhow::anyhow!("{name}: {err}"))?;
            let mut groups = Vec::new();
            for (number, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                match GroupRecord::parse(line) {
                    Ok(group) => groups.push(group),
                    Err(err) => {
                        eprintln!("error: {name}:{}: {err}", number + 1);
                        return Ok(EXIT_UNUSABLE);
                    }
                }
            }
            (args.target, Op::Import { groups }, false)
        }
        StateCommand::Allow(args) => (
            args.target,
            Op::Allow {
                rule: args.rule,
                state: args.state_name,
                group: args.group,
                value: args.value,
            },
            false,
        ),
        StateCommand::Forget(args) => (
            args.target,
            Op::Forget {
                rule: args.rule,
                state: args.state_name,
                group: args.group,
                value: args.value,
            },
            false,
        ),
    };
    let now = crate::time::Timestamp::from_system_time(std::time::SystemTime::now());
    let outcome = match (&target.state, target.fleet.options()) {
        (Some(dir), _) => state_in_dir(dir, op, now)?,
        (None, Some(fleet)) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(crate::state::admin::apply_fleet(
                &fleet.store,
                &fleet.node,
                op,
                now,
            )),
        (None, None) => {
            eprintln!("error: say where: --state DIR or --shared-state URL");
            return Ok(EXIT_UNUSABLE);
        }
    };
    match outcome {
        Ok(outcome) => {
            let mut out = io::stdout().lock();
            for group in &outcome.groups {
                let mut group = group.clone();
                if groups_only {
                    group.status = None;
                    group.learning_until = None;
                }
                serde_json::to_writer(&mut out, &group)?;
                io::Write::write_all(&mut out, b"\n")?;
            }
            if let Some(message) = outcome.message {
                eprintln!("{message}");
            }
            Ok(EXIT_OK)
        }
        Err(err) => {
            eprintln!("error: {err}");
            Ok(EXIT_FAILED)
        }
    }
}

/// `picket state` on a state directory: through the running agent's control socket when one
/// answers, else on the state file itself.
fn state_in_dir(
    dir: &std::path::Path,
    op: crate::state::admin::Op,
    now: crate::time::Timestamp,
) -> anyhow::Result<Result<crate::state::admin::Outcome, String>> {
    if let Some(answer) = crate::control::ask(dir, &op) {
        return Ok(answer);
    }
    let file = dir.join(crate::store::STATE_FILE);
    if !file.is_file() {
        anyhow::bail!(
            "{}: no learned state there (no agent has run on it)",
            file.display()
        );
    }
    let mut store = crate::store::StateStore::open(dir).map_err(|err| {
        anyhow::anyhow!(
            "{err} (is an agent running on {} without its control socket?)",
            dir.display()
        )
    })?;
    let settings = store.settings().map_err(anyhow::Error::msg)?;
    let (states, _) = store.load(DEFAULT_CAPACITY).map_err(anyhow::Error::msg)?;
    let mut rule_states =
        crate::rule_states::RuleStates::new(usize::MAX, usize::MAX, usize::MAX, true);
    rule_states.restore(states);
    let outcome = crate::state::admin::apply_local(&mut rule_states, &settings, op, now);
    store
        .apply(&rule_states.take_changes())
        .map_err(anyhow::Error::msg)?;
    Ok(outcome)
}

fn inspect(args: InspectArgs) -> anyhow::Result<u8> {
    let sandbox = Sandbox::new(Limits::default())?;
    match load_file(&sandbox, &args.module, None) {
        Ok(module) => {
            let json = manifest_json(&module.manifest);
            println!("{}", serde_json::to_string_pretty(&json)?);
            Ok(EXIT_OK)
        }
        Err(err) => {
            eprintln!("error: {err}");
            Ok(EXIT_UNUSABLE)
        }
    }
}

/// A manifest as `picket inspect` prints it.
pub fn manifest_json(manifest: &Manifest) -> serde_json::Value {
    serde_json::json!({
        "id": manifest.id,
        "title": manifest.title,
        "description": manifest.description,
        "severity": manifest.severity.as_str(),
        "tactic": manifest.tactic,
        "technique": manifest.technique,
        "subscribe": {
            "kinds": manifest.subscription.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
            "basenames": manifest.subscription.basenames,
            "path_prefixes": manifest.subscription.path_prefixes,
        },
        "new_value": {
            "learning_period": format_duration(manifest.new_value.learning_period_ns),
            "forget_after": format_duration(manifest.new_value.forget_after_ns),
            "states": manifest.states.iter().map(|state| serde_json::json!({
                "name": state.name,
                "learning_period": format_duration(state.learning_period_ns),
                "forget_after": format_duration(state.forget_after_ns),
            })).collect::<Vec<_>>(),
        },
        "abi_version": ABI_VERSION,
    })
}

/// Parses a size such as `4096`, `512KiB`, `64MiB` or `1GiB`.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" | "K" => 10,
        "MiB" | "M" => 20,
        "GiB" | "G" => 30,
        _ => {
            return Err(format!(
                "`{text}` is not a size such as 4096, 512KiB, 64MiB or 1GiB"
            ));
        }
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("`{text}` is not a size such as 4096, 512KiB, 64MiB or 1GiB"))
}

/// A duration in the largest unit that divides it: `7d`, `90m`, `0s`.
pub fn format_duration(ns: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (86_400_000_000_000, "d"),
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
    ];
    if ns == 0 {
        return "0s".into();
    }
    UNITS
        .iter()
        .find(|(unit, _)| ns.is_multiple_of(*unit))
        .map(|(unit, suffix)| format!("{}{suffix}", ns / unit))
        .unwrap_or_else(|| format!("{ns}ns"))
}
