//! Measures how long an open takes to reach user space as an [`picket_probes::OpenEvent`]: from
//! the kernel's timestamp at the open (the event's `ts`) to the moment `next_event` returns it.
//!
//! ```text
//! sudo open-latency [--strategy auto|tracepoint|...] [--opens N] [--gap-us U]
//! ```
//! A child process (this binary again, with `--child`) opens a file named `token` N times, U µs
//! apart; the probes' own process is never reported, hence the child. Prints p50/p99/max, the
//! events lost, and (logged by the probes when dropped) the average size of an open record.
//! `RUST_LOG` picks the logs (default: `warn,picket_probes=debug`).

use std::{
    collections::BTreeSet,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use picket_probes::{Probes, Strategy};

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,picket_probes=debug".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut strategy = Strategy::Auto;
    let mut opens: u32 = 2000;
    let mut gap_us: u64 = 500;
    let mut child: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--strategy" => strategy = Strategy::parse(&value()?)?,
            "--opens" => opens = value()?.parse()?,
            "--gap-us" => gap_us = value()?.parse()?,
            "--child" => child = Some(value()?),
            other => bail!("unknown argument {other:?}"),
        }
    }
    if let Some(path) = child {
        for _ in 0..opens {
            drop(std::fs::File::open(&path)?);
            std::thread::sleep(Duration::from_micros(gap_us));
        }
        return Ok(());
    }

    let dir = std::env::temp_dir().join(format!("picket-open-latency-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let token = dir.join("token");
    std::fs::write(&token, "x")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut latencies = rt.block_on(async {
        let mut probes = Probes::load(strategy)?;
        probes.set_basenames(&BTreeSet::from(["token".to_owned()]))?;
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["--child", token.to_str().context("path")?])
            .args([
                "--opens",
                &opens.to_string(),
                "--gap-us",
                &gap_us.to_string(),
            ])
            .spawn()?;
        let pid = child.id().context("child pid")?;
        let mut latencies = Vec::with_capacity(opens as usize);
        let mut exited = false;
        // Until every open arrived, or the child is done and the ring stays empty for a second
        // (the rest were lost to a full ring buffer).
        while latencies.len() < opens as usize {
            let wait = if exited {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(30)
            };
            tokio::select! {
                event = tokio::time::timeout(wait, probes.next_event()) => {
                    let Ok(event) = event else { break };
                    let event = event?;
                    let now = SystemTime::now();
                    if event.process.pid == pid {
                        latencies.push(now.duration_since(event.ts).unwrap_or_default());
                    }
                }
                status = child.wait(), if !exited => {
                    status?;
                    exited = true;
                }
            }
        }
        eprintln!(
            "strategy {}: {} of {opens} opens reported, {} events lost (ring buffer full)",
            probes.strategy(),
            latencies.len(),
            probes.lost_events()
        );
        anyhow::Ok(latencies)
    })?;
    std::fs::remove_dir_all(&dir)?;
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "open->event latency over {} opens: p50={:?} p99={:?} max={:?}",
        latencies.len(),
        at(0.5),
        at(0.99),
        latencies[latencies.len() - 1]
    );
    Ok(())
}
