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

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn inner(quick: bool) {
    let readers = if quick { 20 } else { 400 };
    let work = support::bench_token_layout(1..=readers);
    let w = work.path().display().to_string();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_picket"))
        .args(["run", "--learning-period", "0s", "--rules"])
        .arg(work.path().join("rules"))
        .arg("--state")
        .arg(work.path().join("state"))
        .env("PICKET_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = agent.id();
    let mut signals = BufReader::new(agent.stdout.take().unwrap()).lines();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let log = BufReader::new(agent.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in log.lines().map_while(Result::ok) {
            if line.contains("agent ready") {
                let _ = ready_tx.send(());
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the agent did not get ready");
    // The group's first reader is its baseline, learned silently.
    support::sh(&format!("cat {TOKEN} >/dev/null"));
    let rss_ready = rss_kib(pid, "VmRSS:");

    let mut latencies_us = Vec::new();
    for i in 1..=readers {
        let status = Command::new(format!("{w}/bin/reader{i}"))
            .arg(TOKEN)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let line = signals.next().expect("a signal").unwrap();
        let read_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let signal: serde_json::Value = serde_json::from_str(&line).unwrap();
        let ts = picket::time::Timestamp::parse(signal["ts"].as_str().unwrap()).unwrap();
        let opened_at = Duration::from_nanos(ts.as_nanos() as u64);
        latencies_us.push((read_at.as_secs_f64() - opened_at.as_secs_f64()) * 1e6);
        assert_eq!(signal["new_value"]["value"], format!("{w}/bin/reader{i}"));
    }
    let rss_after = rss_kib(pid, "VmRSS:");
    let hwm = rss_kib(pid, "VmHWM:");
    unsafe_free_kill(pid);
    let _ = agent.wait();

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

fn unsafe_free_kill(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}
