//! Outputs (issue 16), two measurements:
//!
//! 1. **Delivery throughput**: `picket replay` of N token reads, each raising a signal, to a file
//!    and to a local HTTP receiver (this benchmark's own, on 127.0.0.1), batched and one signal
//!    a request, in memory and through the disk spool (`--state`); side by side, signals/s as
//!    the wall time of the whole replay, which waits for every signal to be delivered.
//! 2. **Latency while a remote output is stalled** (root: the real probes, in a private mount
//!    namespace): p50/p99 open -> signal on stdout with a second output, an HTTP receiver that
//!    takes requests and never answers, against stdout alone.
//!
//! Run: `cargo bench -p picket --bench outputs` (as root for part 2; `-- --quick` for a smoke
//! run, which checks that every signal was delivered, once, in order, and that the stalled
//! output never got one through).

#[path = "../../tests/support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};
use support::receiver::{Mode, Receiver};
use support::{K8S_TOKEN, percentile, picket, run, temp_dir, token_read};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if !std::env::args().any(|a| a == "--inner") {
        throughput(quick);
    }
    if let Some(quick) = support::bench_in_private_mount_namespace("outputs latency") {
        latency(quick);
    }
}

/// One replay; returns its wall time.
fn replay(rules: &Path, events: &Path, args: &[String]) -> Duration {
    let start = Instant::now();
    let out = run(
        picket()
            .args(["replay", "--learning-period", "0s", "--flood-limit", "0"])
            .arg("--rules")
            .arg(rules)
            .args(args)
            .arg(events),
        "",
    );
    let took = start.elapsed();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    took
}

fn throughput(quick: bool) {
    let signals: u32 = if quick { 2_000 } else { 50_000 };
    let rounds = if quick { 1 } else { 5 };
    let work = temp_dir();
    let rules_dir = support::rules_dir_of(&["k8s-sa-token"]);
    let rules = rules_dir.path().to_path_buf();
    let events = work.path().join("events.jsonl");
    let mut text = token_read(0, "/usr/bin/app", K8S_TOKEN);
    text.push('\n');
    for i in 1..=signals {
        text.push_str(&token_read(i % 3600, &format!("/tmp/d{i}/tool"), K8S_TOKEN));
        text.push('\n');
    }
    std::fs::write(&events, text).unwrap();
    // Compiled modules cached once, so that each replay measures the same work.
    let cache = work.path().join("cache-warm");
    replay(
        &rules,
        &events,
        &[
            "--state".into(),
            cache.display().to_string(),
            "--output".into(),
            "/dev/null".into(),
        ],
    );

    let receiver = Receiver::start(0, Mode::Accept, None);
    let url = format!("{}/ingest", receiver.url());
    let variants: Vec<(&str, Vec<String>)> = vec![
        (
            "file",
            vec![
                "--output".into(),
                work.path().join("out.jsonl").display().to_string(),
            ],
        ),
        (
            "http, batches of 100, in memory",
            vec!["--output".into(), url.clone()],
        ),
        (
            "http, batches of 100, disk spool",
            vec![
                "--output".into(),
                url.clone(),
                "--state".into(),
                "SPOOL".into(),
            ],
        ),
        (
            "http, one signal a request, in memory",
            vec![
                "--output".into(),
                url.clone(),
                "--output-batch".into(),
                "1".into(),
            ],
        ),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 0..rounds {
        for (index, (_, args)) in variants.iter().enumerate() {
            let spool = work.path().join(format!("spool-{round}-{index}"));
            let args: Vec<String> = args
                .iter()
                .map(|a| {
                    if a == "SPOOL" {
                        spool.display().to_string()
                    } else {
                        a.clone()
                    }
                })
                .collect();
            let _ = std::fs::remove_file(work.path().join("out.jsonl"));
            let before = receiver.lines().len();
            let took = replay(&rules, &events, &args);
            times[index].push(took.as_secs_f64());
            if args.contains(&url) {
                let lines = receiver.lines();
                let delivered = &lines[before..];
                // Every signal delivered, once, in order.
                let ids: Vec<&str> = delivered
                    .iter()
                    .map(|s| s["id"].as_str().unwrap())
                    .collect();
                assert_eq!(ids.len(), signals as usize, "{}", variants[index].0);
                assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
                let exes: Vec<&str> = delivered
                    .iter()
                    .map(|s| s["new_value"]["value"].as_str().unwrap())
                    .collect();
                assert_eq!(exes.first(), Some(&"/tmp/d1/tool"));
                assert_eq!(
                    exes.last().copied(),
                    Some(format!("/tmp/d{signals}/tool").as_str())
                );
            } else {
                let written = std::fs::read_to_string(work.path().join("out.jsonl")).unwrap();
                assert_eq!(written.lines().count(), signals as usize);
            }
        }
    }
    println!(
        "picket replay of {signals} token reads, each raising a signal; median of {rounds} round(s), wall time of the whole replay (start-up included)"
    );
    println!(
        "{:<40} {:>10} {:>12} {:>8}",
        "output", "seconds", "signals/s", "ratio"
    );
    let median = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(f64::total_cmp);
        percentile(&v, 0.5)
    };
    let base = median(&times[0]);
    for ((name, _), t) in variants.iter().zip(&times) {
        let t = median(t);
        println!(
            "{name:<40} {t:>10.3} {:>12.0} {:>8.2}",
            f64::from(signals) / t,
            t / base
        );
    }
}

fn latency(quick: bool) {
    let readers = if quick { 20 } else { 300 };
    let work = support::bench_token_layout(1..=2 * readers);
    let stalled = Receiver::start(0, Mode::Stall, None);
    // Interleaved: stdout alone, then stdout with the stalled output, in slices, so that both
    // see the same machine.
    let slices = if quick { 1 } else { 5 };
    let per = readers / slices;
    let mut alone = Vec::new();
    let mut with_stalled = Vec::new();
    for slice in 0..slices {
        let first = slice * per * 2 + 1;
        let mut agent = support::BenchAgent::start(work.path(), &[]);
        alone.extend(agent.latencies_us(first..=first + per - 1));
        agent.stop();
        let mut agent = support::BenchAgent::start(
            work.path(),
            &[
                "--output".into(),
                "-".into(),
                "--output".into(),
                stalled.url(),
            ],
        );
        with_stalled.extend(agent.latencies_us(first + per..=first + 2 * per - 1));
        agent.stop();
    }
    // The stalled output took requests and answered none.
    assert!(stalled.stalled() > 0, "the stalled receiver got no request");
    assert!(stalled.accepted().is_empty());
    alone.sort_by(f64::total_cmp);
    with_stalled.sort_by(f64::total_cmp);
    println!(
        "picket run, {} readers per condition: open -> signal read from stdout",
        alone.len()
    );
    for (name, l) in [
        ("stdout alone", &alone),
        ("stdout + a stalled http output", &with_stalled),
    ] {
        println!(
            "{name:<32} p50 {:>7.0} us  p99 {:>7.0} us",
            percentile(l, 0.5),
            percentile(l, 0.99)
        );
    }
    println!(
        "p99 ratio (stalled / alone): {:.2}",
        percentile(&with_stalled, 0.99) / percentile(&alone, 0.99)
    );
}
