//! Events per second through the rule pipeline: the two bundled rules as wasm modules in the
//! sandbox, against the very same rule crates compiled natively and run the same way (same
//! routing by subscription, same new-value state engine, same event view).
//!
//! Run: `cargo bench -p picket --bench throughput` (add `-- --quick` for a smoke run).
//! Every variant runs in the same process, interleaved round by round, on one thread; the table
//! gives the median events/s of the rounds and the wasm/native ratio.

#[path = "../../tests/support/mod.rs"]
mod support;

use picket::event::{Event, parse_event};
use picket::pipeline::{OutputSignal, Pipeline, PipelineConfig, RuleStatus, Sink, subscribed};
use picket::sandbox::{Limits, RuleError, Sandbox};
use picket::state::{DEFAULT_CAPACITY, RuleState, Verdict};
use picket_abi::{LogLevel, Manifest, SignalRequest};
use picket_rule_sdk::native::{NativeImports, with_imports};
use std::cell::{Cell, RefCell};
use std::hint::black_box;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// Counts signals; the benchmark measures evaluation, not output.
#[derive(Default)]
struct CountingSink {
    signals: u64,
}

impl Sink for CountingSink {
    fn signal(&mut self, _signal: &OutputSignal<'_>) {
        self.signals += 1;
    }
    fn rule_failed(&mut self, rule: &RuleStatus, error: &RuleError, _event: &Event<'_>) {
        panic!("{} failed: {error}", rule.manifest.id);
    }
    fn rule_quarantined(&mut self, rule: &RuleStatus, reason: &str) {
        panic!("{} quarantined: {reason}", rule.manifest.id);
    }
}

/// The host side of one natively run rule: its own new-value state, as in the sandbox.
struct NativeRuleImports {
    state: RefCell<RuleState>,
    ts_ns: Cell<i64>,
    signals: Cell<u64>,
}

impl NativeImports for NativeRuleImports {
    fn new_value(&self, state: &str, group: &str, value: &str) -> bool {
        let verdict = self
            .state
            .borrow_mut()
            .check(self.ts_ns.get(), state, group, value);
        matches!(verdict, Ok(Verdict::New))
    }
    fn is_known(&self, state: &str, group: &str, value: &str) -> bool {
        let ts_ns = self.ts_ns.get();
        self.state
            .borrow()
            .is_known(ts_ns, state.as_bytes(), group.as_bytes(), value.as_bytes())
    }
    fn emit_signal(&self, _request: &SignalRequest<'_>) {
        self.signals.set(self.signals.get() + 1);
    }
    fn log(&self, _level: LogLevel, _message: &str) {}
}

struct NativeRule {
    manifest: Manifest,
    on_event: fn(&picket_rule_sdk::Event<'_>),
    host: Rc<NativeRuleImports>,
}

/// The native counterpart of `Pipeline::handle`: same routing, same event encoding (the SDK's
/// `Event` reads that buffer natively too), same state engine; no sandbox.
struct NativePipeline {
    rules: Vec<NativeRule>,
    encoded: Vec<u8>,
}

impl NativePipeline {
    fn new(rules: &[picket_rule_sdk::Rule]) -> NativePipeline {
        let rules = rules
            .iter()
            .map(|rule| {
                let manifest = (rule.manifest)();
                let settings = picket::pipeline::Overrides::default().settings_for(&manifest);
                NativeRule {
                    manifest,
                    on_event: rule.on_event,
                    host: Rc::new(NativeRuleImports {
                        state: RefCell::new(RuleState::new(settings, DEFAULT_CAPACITY)),
                        ts_ns: Cell::new(0),
                        signals: Cell::new(0),
                    }),
                }
            })
            .collect();
        NativePipeline {
            rules,
            encoded: Vec::new(),
        }
    }

    fn handle(&mut self, event: &Event<'_>) {
        let kind = event.kind;
        let basename = event.basename();
        let mut encoded = false;
        for rule in &self.rules {
            if !subscribed(
                &rule.manifest.subscription,
                kind,
                &event.file.path,
                basename,
            ) {
                continue;
            }
            if !encoded {
                event.fields().encode(&mut self.encoded);
                encoded = true;
            }
            // SAFETY: written by `encode` just above, as the host does for wasm rules.
            let view = unsafe { picket_rule_sdk::Event::parse_trusted(&self.encoded) }
                .expect("just encoded");
            rule.host.ts_ns.set(view.ts_ns());
            let host: Rc<dyn NativeImports> = rule.host.clone();
            with_imports(host, || (rule.on_event)(&view));
        }
    }

    fn signals(&self) -> u64 {
        self.rules.iter().map(|r| r.host.signals.get()).sum()
    }
}

/// A day of token reads after a week of learning: 40 images with 4 known readers each, both
/// tokens, through every path spelling; one read in 10,000 is by an unfamiliar program.
/// `token_share` of the events are token reads; the rest open other files (which the kernel
/// prefilter would drop, but replays contain). With `lineage`, each event also carries what the
/// live agent adds (effective ids, the executable's digest, the parent and two more ancestors),
/// which makes the bundled rules ask three new-value states instead of one.
fn workload(events: usize, token_share: f64, lineage: bool) -> String {
    let spellings = [
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
        "/run/secrets/kubernetes.io/serviceaccount/..2026_11_22_10_00_00.123456789/token",
        "/var/run/secrets/eks.amazonaws.com/serviceaccount/token",
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
        // The first tenth of the stream is the learning week, the rest the day after it.
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
        let token = ((r >> 32) % 1000) as f64 / 1000.0 < token_share;
        let path = if token {
            spellings[((r >> 40) % 4) as usize].to_string()
        } else {
            format!(
                "/usr/lib/python3.12/site-packages/mod{}/__init__.py",
                (r >> 40) % 500
            )
        };
        let mut line = serde_json::json!({
            "ts": picket::time::Timestamp::from_nanos(secs * 1_000_000_000 + (i as i64 % 1_000_000_000)).to_string(),
            "kind": "open",
            "host": "node-a",
            "file": {"path": path, "access": "read"},
            "process": {"pid": 1000 + (r >> 48) % 30000, "ppid": 1, "uid": 1000, "gid": 1000,
                        "comm": "reader", "exe": exe, "args": [exe.as_str(), "--serve"]},
            "container": {"id": format!("{image:064x}"), "image": format!("registry.example/svc-{image}:1.0")},
        });
        if lineage {
            let process = &mut line["process"];
            process["euid"] = 1000.into();
            process["egid"] = 1000.into();
            process["exe_digest"] = format!("sha256:{:064x}", (r >> 20) % 4).into();
            process["parent"] = serde_json::json!({"pid": 900, "uid": 1000,
                "exe": "/usr/local/bin/app", "args": ["app", "--workers", "4"]});
            process["ancestors"] = serde_json::json!([
                {"pid": 800, "uid": 0, "exe": "/usr/bin/containerd-shim-runc-v2",
                 "args": ["containerd-shim-runc-v2", "-namespace", "k8s.io"]},
                {"pid": 1, "uid": 0, "exe": "/usr/lib/systemd/systemd", "args": ["/sbin/init"]}]);
        }
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out
}

fn wasm_pipeline(sandbox: &Arc<Sandbox>) -> Pipeline {
    let mut pipeline = Pipeline::new(Arc::clone(sandbox), PipelineConfig::default());
    for rule in ["eks-token", "k8s-sa-token"] {
        let path = support::rule_wasm(rule);
        let module = sandbox
            .load(&path.display().to_string(), &std::fs::read(&path).unwrap())
            .unwrap();
        pipeline.install(module).unwrap();
    }
    pipeline
}

const NATIVE_RULES: [picket_rule_sdk::Rule; 2] = [eks_token::RULE, k8s_sa_token::RULE];

/// One timed pass; returns events per second and the signals raised.
fn measure(events: usize, f: impl FnOnce() -> u64) -> (f64, u64) {
    let start = Instant::now();
    let signals = f();
    let seconds = start.elapsed().as_secs_f64();
    (events as f64 / seconds, signals)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (events, rounds) = if quick { (20_000, 1) } else { (400_000, 7) };
    let sandbox = Arc::new(Sandbox::new(Limits::default()).unwrap());
    if std::env::args().any(|a| a == "--profile-wasm") {
        // For `perf record`: only the sandboxed stage, long enough to dominate the profile.
        let text = workload(200_000, 1.0, false);
        let parsed: Vec<Event<'_>> = text.lines().map(|l| parse_event(l).unwrap()).collect();
        let mut pipeline = wasm_pipeline(&sandbox);
        let mut sink = CountingSink::default();
        for _ in 0..20 {
            for event in &parsed {
                pipeline.handle(event, &mut sink);
            }
        }
        println!("{} signals", sink.signals);
        return;
    }

    println!("picket throughput: {events} events per pass, {rounds} rounds, one thread");
    println!(
        "{:<44} {:>14} {:>14} {:>8}",
        "workload / stage", "wasm ev/s", "native ev/s", "ratio"
    );
    for (name, share, lineage) in [
        ("token reads only", 1.0, false),
        ("token reads only, with lineage", 1.0, true),
        ("10% token reads", 0.1, false),
    ] {
        let text = workload(events, share, lineage);
        let parsed: Vec<Event<'_>> = text.lines().map(|l| parse_event(l).unwrap()).collect();

        let mut stages: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![
            ("rules + state (events in memory)", vec![], vec![]),
            ("replay (JSON parse + rules + state)", vec![], vec![]),
        ];
        let mut signal_counts = (0, 0);
        for _ in 0..rounds {
            // Fresh state each pass, so every pass learns and then detects the same way.
            let mut pipeline = wasm_pipeline(&sandbox);
            let (rate, signals) = measure(events, || {
                let mut sink = CountingSink::default();
                for event in &parsed {
                    pipeline.handle(event, &mut sink);
                }
                sink.signals
            });
            stages[0].1.push(rate);
            signal_counts.0 = signals;

            let mut native = NativePipeline::new(&NATIVE_RULES);
            let (rate, signals) = measure(events, || {
                for event in &parsed {
                    native.handle(event);
                }
                native.signals()
            });
            stages[0].2.push(rate);
            signal_counts.1 = signals;

            let mut pipeline = wasm_pipeline(&sandbox);
            let (rate, _) = measure(events, || {
                let mut sink = CountingSink::default();
                for line in text.lines() {
                    pipeline.handle(&parse_event(black_box(line)).unwrap(), &mut sink);
                }
                sink.signals
            });
            stages[1].1.push(rate);

            let mut native = NativePipeline::new(&NATIVE_RULES);
            let (rate, _) = measure(events, || {
                for line in text.lines() {
                    native.handle(&parse_event(black_box(line)).unwrap());
                }
                native.signals()
            });
            stages[1].2.push(rate);
        }
        assert_eq!(
            signal_counts.0, signal_counts.1,
            "wasm and native rules must raise the same signals"
        );
        for (stage, wasm, native) in &mut stages {
            let (w, n) = (median(wasm), median(native));
            println!(
                "{:<44} {:>14.0} {:>14.0} {:>7.2}x",
                format!("{name} / {stage}"),
                w,
                n,
                n / w
            );
        }
        println!("  ({} signals raised per pass by each)", signal_counts.0);
    }
}
