//! Reloads and learned state: how fast a new module takes over, how fast a restart is ready,
//! and what 1 M learned values cost in memory and on disk.
//!
//! Run: `cargo bench -p picket --bench state` (`-- --quick` for a smoke run).

#[path = "../../tests/support/mod.rs"]
mod support;

use picket::event::parse_event;
use picket::pipeline::{OutputSignal, PipelineConfig, RuleStatus, Sink};
use picket::rule_engine::{RuleEngine, RuleEngineOptions};
use picket::sandbox::{Limits, RuleError};
use picket::state::{DEFAULT_CAPACITY, RuleState, Settings};
use picket::store::StateStore;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Counts live heap bytes, to measure the state's memory.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged, only counting sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

struct Titles(Vec<String>);

impl Sink for Titles {
    fn signal(&mut self, signal: &OutputSignal<'_>) {
        self.0.push(signal.rule.title.clone());
    }
    fn rule_failed(&mut self, rule: &RuleStatus, error: &RuleError, _: &picket::event::Event<'_>) {
        panic!("{}: {error}", rule.manifest.id);
    }
    fn rule_quarantined(&mut self, _: &RuleStatus, reason: &str) {
        panic!("{reason}");
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Milliseconds from writing a module file until an event is evaluated by it.
fn reload_latencies(rounds: usize, cached: bool) -> Vec<f64> {
    let rules = support::temp_dir();
    let state = support::temp_dir();
    let module = rules.path().join("rule.wasm");
    std::fs::write(&module, support::new_exe_rule("reload-bench", "v0")).unwrap();
    let options = RuleEngineOptions {
        rules: rules.path().to_path_buf(),
        state: Some(state.path().to_path_buf()),
        limits: Limits::default(),
        pipeline: PipelineConfig {
            journal: true,
            ..PipelineConfig::default()
        },
        trusted_keys: Vec::new(),
        fleet: None,
    };
    let (mut host, scan) = RuleEngine::start(&options).unwrap();
    host.apply(scan);
    let (tx, rx) = std::sync::mpsc::channel();
    let _watcher = host.watch(move |scan| tx.send(scan).is_ok()).unwrap();
    // Versions differ only in title; a cached run reuses two versions whose code is in the
    // module cache, a cold one builds a new version each round.
    let versions: Vec<Vec<u8>> = (0..=rounds)
        .map(|round| {
            let title = if cached { round % 2 } else { round };
            support::new_exe_rule("reload-bench", &format!("v{title}"))
        })
        .collect();
    if cached {
        // Compile both versions once, so that every measured round hits the cache.
        for version in &versions[..2] {
            let _ = host.pipeline().sandbox().load("warm", version);
        }
    }
    let mut latencies = Vec::new();
    let mut n = 0u32;
    for (round, version) in versions.iter().enumerate().skip(1) {
        let expected = format!("v{}", if cached { round % 2 } else { round });
        std::thread::sleep(Duration::from_millis(50));
        let written = Instant::now();
        std::fs::write(&module, version).unwrap();
        loop {
            while let Ok(scan) = rx.try_recv() {
                host.apply(scan);
            }
            n += 1;
            let line = support::token_read(n % 3600, &format!("/bench/{n}"), support::K8S_TOKEN);
            let mut titles = Titles(Vec::new());
            host.handle(&parse_event(&line).unwrap(), &mut titles);
            if titles.0.last() == Some(&expected) {
                latencies.push(written.elapsed().as_secs_f64() * 1e3);
                break;
            }
            assert!(
                written.elapsed() < Duration::from_secs(10),
                "reload never landed"
            );
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    host.shutdown();
    latencies
}

/// Wall time of `picket replay` on empty input: engine, state and rules loaded, then exit.
fn restart_ms(rules: &std::path::Path, state: &std::path::Path) -> f64 {
    let started = Instant::now();
    let out = support::run(
        support::picket()
            .args(["replay", "--rules"])
            .arg(rules)
            .arg("--state")
            .arg(state)
            .arg("-"),
        "",
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    started.elapsed().as_secs_f64() * 1e3
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, values) = if quick { (3, 20_000) } else { (15, 1_000_000) };

    let cold = reload_latencies(rounds, false);
    let cached = reload_latencies(rounds, true);
    println!(
        "reload, module file written -> first event evaluated by the new version ({rounds} rounds)"
    );
    println!(
        "  compiled now : median {:.1} ms, max {:.1} ms",
        median(cold.clone()),
        cold.iter().cloned().fold(0.0, f64::max)
    );
    println!(
        "  cached code  : median {:.1} ms, max {:.1} ms",
        median(cached.clone()),
        cached.iter().cloned().fold(0.0, f64::max)
    );

    // Restart to ready: both bundled rules, empty and then warm module cache.
    let rules = support::temp_dir();
    for rule in ["eks-token", "k8s-sa-token"] {
        let file = format!("{}.wasm", rule.replace('-', "_"));
        std::fs::copy(support::rule_wasm(rule), rules.path().join(file)).unwrap();
    }
    let state = support::temp_dir();
    let first = restart_ms(rules.path(), state.path());
    let warm: Vec<f64> = (0..5)
        .map(|_| restart_ms(rules.path(), state.path()))
        .collect();
    println!("restart to ready (picket replay on empty input, 2 rules)");
    println!("  first start, compiling : {first:.0} ms");
    println!("  restart, cached modules: median {:.0} ms", median(warm));

    // 1 M learned values: 1,000 images with 1,000 executables each.
    let settings = Settings {
        learning_period_ns: u64::MAX,
        forget_after_ns: u64::MAX,
    };
    let groups = 1000;
    let learn = |rule: &mut RuleState| {
        for i in 0..values {
            let group = format!("registry.example/team-{}/service:1.{}", i % groups, i % 7);
            let value = format!("/usr/local/lib/service-{}/bin/worker-{i}", i % groups);
            rule.check(i as i64, "process.exe", &group, &value).unwrap();
        }
    };
    let capacity = DEFAULT_CAPACITY.max(values * 3);
    let before = LIVE.load(Ordering::Relaxed);
    let mut rule = RuleState::new(settings, capacity);
    learn(&mut rule);
    let in_memory = LIVE.load(Ordering::Relaxed) - before;
    drop(rule);
    // Again with the journal on, for what a durable store receives.
    let mut rule = RuleState::new(settings, capacity);
    rule.enable_journal();
    learn(&mut rule);
    let changes = rule.take_changes();
    drop(rule);
    let dir = support::temp_dir();
    let mut store = StateStore::open(dir.path()).unwrap();
    let batch: Vec<(String, picket::state::Change)> = changes
        .into_iter()
        .map(|c| ("k8s-sa-token".to_string(), c))
        .collect();
    let started = Instant::now();
    for chunk in batch.chunks(50_000) {
        store.apply(chunk).unwrap();
    }
    let write_ms = started.elapsed().as_secs_f64() * 1e3;
    drop(batch);
    let on_disk = std::fs::metadata(store.path()).unwrap().len();
    let started = Instant::now();
    let (restored, count) = store.load(capacity).unwrap();
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    assert_eq!(count, values);
    drop(restored);
    println!(
        "{values} learned values (1,000 groups; values like /usr/local/lib/service-N/bin/worker-M)"
    );
    println!(
        "  in memory: {:.1} MiB ({:.0} bytes per value)",
        in_memory as f64 / (1 << 20) as f64,
        in_memory as f64 / values as f64
    );
    println!(
        "  on disk  : {:.1} MiB ({:.0} bytes per value); written in {write_ms:.0} ms, read back in {load_ms:.0} ms",
        on_disk as f64 / (1 << 20) as f64,
        on_disk as f64 / values as f64
    );
}
