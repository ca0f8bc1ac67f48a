//! Loads the probes and prints each open of an approved file as it comes.
//!
//! ```text
//! sudo probe-dump [--strategy auto|lsm|fentry|tracepoint] [--basename token]... [--identity PATH]...
//!     [--count N] [--stats]
//! ```
//! `--identity` approves the file at PATH by its device and inode, under any name.
//! `--stats` prints how many instructions the verifier processed for each loaded program.
//! Without `--basename`, `token` is approved. Logs go to stderr (`RUST_LOG=debug` for more).

use std::collections::BTreeSet;

use anyhow::{Context as _, Result, bail};
use picket_probes::{Probes, Strategy};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let mut strategy = Strategy::Auto;
    let mut basenames = BTreeSet::new();
    let mut identities = BTreeSet::new();
    let mut count: Option<u64> = None;
    let mut stats = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--strategy" => strategy = Strategy::parse(&value()?)?,
            "--basename" => {
                basenames.insert(value()?);
            }
            "--identity" => {
                let path = value()?;
                let metadata = std::fs::metadata(&path).with_context(|| path.clone())?;
                identities.insert(picket_probes::file_id_of(&metadata));
            }
            "--count" => count = Some(value()?.parse().context("--count")?),
            "--stats" => stats = true,
            "-h" | "--help" => {
                println!(
                    "usage: probe-dump [--strategy auto|lsm|fentry|tracepoint] [--basename NAME]... \
                     [--identity PATH]... [--count N] [--stats]"
                );
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if basenames.is_empty() {
        basenames.insert("token".to_owned());
    }

    let mut probes = Probes::load(strategy)?;
    probes.set_basenames(&basenames)?;
    probes.set_identities(&identities)?;
    if stats {
        for (program, insns) in probes.verified_instructions() {
            match insns {
                Some(n) => eprintln!("verifier processed {n} instructions for {program}"),
                None => eprintln!("{program}: not loaded"),
            }
        }
    }
    eprintln!(
        "attached with strategy {}; watching basenames {:?} and {} files by identity; Ctrl-C to stop",
        probes.strategy(),
        basenames,
        identities.len()
    );
    let mut seen = 0;
    loop {
        tokio::select! {
            event = probes.next_event() => {
                let event = event?;
                println!("{event:?}");
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    break;
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    eprintln!("{seen} events, {} lost", probes.lost_events());
    Ok(())
}
