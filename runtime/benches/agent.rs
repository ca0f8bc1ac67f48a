//! The live agent's detection latency (a token opened in the kernel → its signal written) and
//! its memory, with the real probes on the real kernel.
//!
//! Run as root: `cargo bench -p picket --bench agent` (`-- --quick` for a smoke run). It re-runs
//! itself in a private mount namespace with a tmpfs over /run holding a service-account token,
//! starts `picket run` with a learning period of 0, then starts many distinct short-lived
//! programs (renamed copies of `cat`) that each read the token once and exit. Each one raises a
//! signal; latency is the time the signal is read from the agent's output minus the event's
//! kernel timestamp (both wall clock on this machine).

#[path = "../../tests/support/mod.rs"]
mod support;

use support::percentile;

fn main() {
    if let Some(quick) = support::bench_in_private_mount_namespace("agent") {
        inner(quick);
    }
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn inner(quick: bool) {
    let readers = if quick { 20 } else { 400 };
    let work = support::bench_token_layout(1..=readers);
    let mut agent = support::BenchAgent::start(work.path(), &[]);
    let pid = agent.pid();
    let rss_ready = rss_kib(pid, "VmRSS:");
    let mut latencies_us = agent.latencies_us(1..=readers);
    let rss_after = rss_kib(pid, "VmRSS:");
    let hwm = rss_kib(pid, "VmHWM:");
    agent.stop();

    latencies_us.sort_by(f64::total_cmp);
    println!(
        "picket run, tracepoint probes, {} distinct short-lived readers of the token",
        latencies_us.len()
    );
    println!(
        "open -> signal written and read: p50 {:.0} us, p90 {:.0} us, p99 {:.0} us, max {:.0} us",
        percentile(&latencies_us, 0.5),
        percentile(&latencies_us, 0.9),
        percentile(&latencies_us, 0.99),
        latencies_us.last().unwrap()
    );
    println!("agent RSS: {rss_ready} KiB when ready, {rss_after} KiB after, peak {hwm} KiB");
}
