//! Fleet learning (`--shared-state`) against a real Redis server the benchmark starts on a
//! loopback port (Debian's redis-server, as the tests use):
//!
//! 1. `picket replay` of the realistic workload (the throughput benchmark's: 40 images, a week
//!    of learning, a day after it) with and without `--shared-state`, rounds interleaved: the
//!    goal is within 10%, since known values never leave the node.
//! 2. The latency the fleet check adds to a signal: claims of new values, p50 and p99.
//! 3. The store's memory per million learned values (`INFO memory` before and after).
//! 4. Many agents joining at once: each connects and loads the baseline; the time until each
//!    has it, and the store's CPU time meanwhile (`INFO cpu`).
//!
//! Run: `cargo bench -p picket --bench fleet` (add `-- --quick` for a smoke run, which checks
//! what it measures on small sizes). Figures go to BENCHMARKS.md.

#[path = "../../tests/support/mod.rs"]
mod support;

use picket::state::fleet::{ClaimAnswer, SharedStore, StoreOptions};
use picket::state::{Settings, Sighting};
use std::time::{Duration, Instant};
use support::redis::RedisServer;

fn options(server: &RedisServer, prefix: &str) -> StoreOptions {
    StoreOptions {
        url: server.url(),
        password_file: None,
        ca_file: None,
        prefix: prefix.into(),
        timeout: Duration::from_secs(30),
        max_values_per_group: 1 << 20,
        max_groups: 1 << 24,
    }
}

/// The throughput benchmark's workload: a week of learning, then a day, 40 images.
fn workload(events: usize) -> String {
    let spellings = [
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
        "/run/secrets/eks.amazonaws.com/serviceaccount/..data/token",
    ];
    let mut out = String::new();
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let base_s: i64 = 1_795_000_000;
    for i in 0..events {
        let r = next();
        let image = r % 40;
        let learning = i < events / 10;
        let secs = if learning {
            base_s + (i as i64 * 7 * 86_400) / (events as i64 / 10)
        } else {
            base_s + 7 * 86_400 + (i as i64 * 86_400) / events as i64
        };
        let exe = if !learning && (r >> 8) % 10_000 == 0 {
            format!("/tmp/dropper-{i}/cat")
        } else {
            format!("/usr/local/bin/reader-{}", (r >> 20) % 4)
        };
        let line = serde_json::json!({
            "ts": picket::time::Timestamp::from_nanos(secs * 1_000_000_000 + (i as i64 % 1_000_000_000)).to_string(),
            "kind": "open",
            "host": "node-a",
            "file": {"path": spellings[((r >> 40) % 2) as usize], "access": "read"},
            "process": {"pid": 1000 + (r >> 48) % 30000, "ppid": 1, "uid": 1000, "gid": 1000,
                        "comm": "reader", "exe": exe, "args": [exe.as_str(), "--serve"]},
            "container": {"id": format!("{image:064x}"), "image": format!("registry.example/svc-{image}")},
        });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One `picket replay` of `file`; returns events per second and the signals printed.
fn replay(
    rules: &std::path::Path,
    file: &std::path::Path,
    events: usize,
    fleet: Option<(&RedisServer, &str)>,
) -> (f64, usize) {
    let mut command = support::picket();
    command
        .env("PICKET_LOG", "warn")
        .arg("replay")
        .arg("--rules")
        .arg(rules)
        .arg(file);
    if let Some((server, prefix)) = fleet {
        command
            .args(["--shared-state", &server.url()])
            .args(["--shared-state-prefix", prefix]);
    }
    let started = Instant::now();
    let out = command.output().expect("running picket replay");
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let signals = String::from_utf8_lossy(&out.stdout).lines().count();
    (events as f64 / seconds, signals)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // 1. Replay throughput with and without the fleet.
    let (events, rounds) = if quick { (20_000, 1) } else { (400_000, 5) };
    let dir = support::temp_dir();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    for rule in ["eks-token", "k8s-sa-token"] {
        let file = format!("{}.wasm", rule.replace('-', "_"));
        std::fs::copy(support::rule_wasm(rule), rules.join(file)).unwrap();
    }
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, workload(events)).unwrap();
    let (mut alone, mut shared) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (rate, signals_alone) = replay(&rules, &file, events, None);
        alone.push(rate);
        // A fresh prefix each round: the fleet learns the week like the lone agent does.
        let prefix = format!("bench-{round}");
        let (rate, signals_shared) = replay(&rules, &file, events, Some((&server, &prefix)));
        shared.push(rate);
        assert_eq!(
            signals_alone, signals_shared,
            "a lone agent and a fleet of one raise the same signals"
        );
        assert!(signals_alone > 0, "the workload's intruders raise signals");
    }
    alone.sort_by(f64::total_cmp);
    shared.sort_by(f64::total_cmp);
    let (a, s) = (percentile(&alone, 0.5), percentile(&shared, 0.5));
    println!("picket fleet: {events} events per replay, {rounds} rounds interleaved");
    println!(
        "replay, alone: {a:.0} ev/s; with --shared-state: {s:.0} ev/s; shared/alone {:.3}",
        s / a
    );

    if std::env::args().any(|a| a == "--replay-only") {
        return;
    }

    // 2. Claim latency: values new to the fleet, one at a time, as signals ask for them.
    let claims = if quick { 200 } else { 10_000 };
    let mut latencies = runtime.block_on(async {
        let mut store = SharedStore::connect(&options(&server, "latency"))
            .await
            .unwrap();
        let settings = Settings {
            learning_period_ns: 0,
            forget_after_ns: u64::MAX,
        };
        let mut latencies = Vec::with_capacity(claims);
        for i in 0..claims {
            let sighting = Sighting {
                state: "process.exe".into(),
                group: format!("registry.example/svc-{}", i % 40).into(),
                started_ns: 0,
                value: format!("/tmp/dropper-{i}/cat").into(),
                seen_ns: 1_000_000_000 + i as i64,
            };
            let started = Instant::now();
            let (answer, _) = store
                .claim("bench-node", "eks-token", &sighting, settings)
                .await
                .unwrap();
            latencies.push(started.elapsed().as_secs_f64() * 1e6);
            assert_eq!(answer, ClaimAnswer::New, "every claimed value is new");
        }
        latencies
    });
    latencies.sort_by(f64::total_cmp);
    println!(
        "claim round trip (loopback): p50 {:.0} us, p99 {:.0} us, max {:.0} us ({claims} claims)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );

    // 3. Store memory per million values: 1,000 groups of 1,000 values (~40-byte paths).
    let (groups, per_group) = if quick { (20, 500) } else { (1000, 1000) };
    let before = server.used_memory();
    runtime.block_on(async {
        let mut store = SharedStore::connect(&options(&server, "memory"))
            .await
            .unwrap();
        for g in 0..groups {
            let batch: Vec<(String, Sighting, i64)> = (0..per_group)
                .map(|v| {
                    (
                        "eks-token".to_string(),
                        Sighting {
                            state: "process.exe".into(),
                            group: format!("registry.example/team-{g}/service").into(),
                            started_ns: 0,
                            value: format!("/usr/local/lib/reader-{v:06}/bin/tool").into(),
                            seen_ns: 1_000_000_000,
                        },
                        1_000_000_000,
                    )
                })
                .collect();
            store.push("bench-node", &batch, false).await.unwrap();
        }
    });
    // The log holds a copy of every push; it is trimmed to its bound, and measured apart.
    let log_bytes: u64 = server
        .cli(&["MEMORY", "USAGE", "memory:log"])
        .trim()
        .parse()
        .unwrap_or(0);
    let values = (groups * per_group) as f64;
    let total = server.used_memory().saturating_sub(before) as f64;
    println!(
        "store memory: {:.0} bytes per value with the log, {:.0} without ({} values; log {:.1} MiB)",
        total / values,
        (total - log_bytes as f64) / values,
        groups * per_group,
        log_bytes as f64 / (1 << 20) as f64
    );
    assert!(total > 0.0);

    // 4. Agents joining at once, each loading a cluster's baseline: 2,000 groups (two rules,
    //    1,000 workloads) of 10 readers each.
    let (agents, groups, per_group) = if quick {
        (20, 100, 10)
    } else {
        (1000, 2000, 10)
    };
    runtime.block_on(async {
        let mut store = SharedStore::connect(&options(&server, "join"))
            .await
            .unwrap();
        for g in 0..groups {
            let batch: Vec<(String, Sighting, i64)> = (0..per_group)
                .map(|v| {
                    let sighting = Sighting {
                        state: "process.exe".into(),
                        group: format!("registry.example/team-{}/service", g / 2).into(),
                        started_ns: 0,
                        value: format!("/usr/local/lib/reader-{v:06}/bin/tool").into(),
                        seen_ns: 1_000_000_000,
                    };
                    let rule = if g % 2 == 0 {
                        "eks-token"
                    } else {
                        "k8s-sa-token"
                    };
                    (rule.to_string(), sighting, 1_000_000_000)
                })
                .collect();
            store.push("bench-node", &batch, false).await.unwrap();
        }
    });
    let cpu = |server: &RedisServer| -> f64 {
        let info = server.cli(&["INFO", "cpu"]);
        ["used_cpu_sys:", "used_cpu_user:"]
            .iter()
            .filter_map(|key| {
                info.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .sum()
    };
    let cpu_before = cpu(&server);
    let started = Instant::now();
    let mut joined: Vec<f64> = runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..agents {
            let options = options(&server, "join");
            tasks.spawn(async move {
                let mut store = SharedStore::connect(&options).await.unwrap();
                let mut loaded = 0usize;
                store.load(None, |_| loaded += 1).await.unwrap();
                (loaded, Instant::now())
            });
        }
        let mut done = Vec::new();
        while let Some(result) = tasks.join_next().await {
            let (loaded, at) = result.unwrap();
            assert_eq!(
                loaded,
                groups * (per_group + 1),
                "every agent loads every group and value"
            );
            done.push(at.duration_since(started).as_secs_f64());
        }
        done
    });
    let store_cpu = cpu(&server) - cpu_before;
    joined.sort_by(f64::total_cmp);
    println!(
        "{agents} agents joining at once ({} values each): baseline loaded p50 {:.2} s, p99 {:.2} s, \
         last {:.2} s; store CPU {:.1} s",
        groups * per_group,
        percentile(&joined, 0.5),
        percentile(&joined, 0.99),
        joined[joined.len() - 1],
        store_cpu
    );
}
