//! The `picket` command line (docs/cli.md): argument parsing, and dispatch to the module
//! that does each command's work (agent, replay, conformance).

use crate::agent::AgentOptions;
use crate::output::Output;
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
    /// Feed a JSON-lines event file through the rules; signals go to stdout.
    Replay(ReplayArgs),
    /// Check a rule module's exports and manifest, then run conformance cases against it.
    Test(TestArgs),
    /// Print a rule module's manifest as JSON.
    Inspect(InspectArgs),
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
    /// Most new-value entries kept per rule; the least recently seen are evicted past it.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CAPACITY)]
    state_capacity: usize,
    /// Most bytes of new-value state kept per rule (keys plus a fixed overhead per entry, e.g.
    /// 16MiB); the least recently seen values are evicted past it, counted and reported.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "16MiB")]
    state_bytes_per_rule: usize,
    /// Most bytes of new-value state kept for all rules together; past it the largest rule's
    /// state evicts its least recently seen values.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "64MiB")]
    state_bytes_total: usize,
}

impl RuleArgs {
    fn engine_options(&self, rules: PathBuf, state: Option<PathBuf>) -> RuleEngineOptions {
        RuleEngineOptions {
            rules,
            state,
            limits: self.sandbox.limits(),
            pipeline: self.pipeline_config(),
            trusted_keys: self.sandbox.trusted_keys.clone(),
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
    /// Where signals go: a file (appended to) or - for stdout.
    #[arg(long, value_name = "PATH|-", default_value = "-")]
    output: PathBuf,
    /// Signals queued in front of the output while it is slow or stuck; past this many, new
    /// signals are dropped, counted and reported, and detection carries on.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    output_queue: usize,
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
    settings: RuleArgs,
    /// JSON-lines event file, or - for stdin.
    #[arg(value_name = "FILE|-")]
    input: PathBuf,
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
    let output = if args.output.as_os_str() == "-" {
        Output::Stdout
    } else {
        Output::File(args.output.clone())
    };
    crate::agent::run(AgentOptions {
        engine: args
            .settings
            .engine_options(args.rules.clone(), Some(args.state.clone())),
        output,
        output_queue: args.output_queue,
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
    let replayed = crate::replay::run(ReplayOptions {
        engine: args.settings.engine_options(args.rules, args.state),
        watch: args.watch,
        source,
    })?;
    Ok(if replayed.all_usable() {
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
