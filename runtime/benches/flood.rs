//! A flood of opens of the token (issue 8, finding 2): how fast one process (and eight of them,
//! as in the finding) can open the token while the agent still sees every other reader, and the
//! agent's CPU meanwhile, with repeats dropped in the kernel (the default) and without
//! (`PICKET_PROBES_DROP_REPEATS=off`), side by side in one run.
//!
//! Run as root: `cargo bench -p picket --bench flood` (`-- --quick` for a smoke run, which also
//! checks that no reader is missed with repeats dropped). It re-runs itself in a private mount
//! namespace with a tmpfs over /run holding a service-account token. For each flood and each
//! condition it starts `picket run` (learning period 0, fresh state), starts this binary again as
//! the flooders (a loop of open+close of the token, paced to a rate or as fast as it goes), runs
//! 20 distinct readers (renamed copies of `cat`) spread over the flood, then one more reader
//! after it: once that one's signal is out, everything before it has been read from the ring
//! buffer. Reported: the opens/s reached (all flooders together), events lost, readers detected, repeats dropped and the
//! agent's CPU (user + system time over the flood and the drain, per second of wall time).

#[path = "../../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
const READERS: usize = 20;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--flood") {
        let seconds: f64 = args[i + 1].parse().unwrap();
        let rate: f64 = args[i + 2].parse().unwrap();
        flood(Duration::from_secs_f64(seconds), rate);
        return;
    }
    if let Some(quick) = support::bench_in_private_mount_namespace("flood") {
        inner(quick);
    }
}

/// The flooder: opens and closes the token for `length`, at `rate` opens/s (0: as fast as it
/// can); prints how many opens it made.
fn flood(length: Duration, rate: f64) {
    let start = Instant::now();
    let mut opens = 0u64;
    while start.elapsed() < length {
        for _ in 0..64 {
            drop(std::fs::File::open(TOKEN).expect("opening the token"));
        }
        opens += 64;
        if rate > 0.0 {
            let due = Duration::from_secs_f64(opens as f64 / rate);
            if let Some(ahead) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
    }
    println!("{opens}");
}

/// User + system CPU time of a process so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    static HZ: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let hz = HZ.get_or_init(|| {
        let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    });
    Duration::from_secs_f64(ticks as f64 / hz)
}

/// One flood against one agent.
struct Outcome {
    opens_per_s: f64,
    lost: u64,
    detected: usize,
    dropped: u64,
    agent_cpu: f64,
}

fn inner(quick: bool) {
    let work = support::bench_token_layout(0..=READERS);
    // (flooding processes, opens/s each: 0 for as fast as they go)
    let (length, floods): (f64, &[(usize, f64)]) = if quick {
        (1.0, &[(1, 0.0)])
    } else {
        (
            3.0,
            &[
                (1, 10_000.0),
                (1, 20_000.0),
                (1, 40_000.0),
                (1, 0.0),
                (8, 0.0),
            ],
        )
    };
    println!(
        "picket run, the token opened in a loop for {length} s while {READERS} distinct readers \
         read it once each"
    );
    println!(
        "| flooders × target opens/s | repeats | opens/s reached | events lost | readers detected | \
         repeats dropped | agent CPU |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: |");
    let mut run = 0;
    for &(flooders, rate) in floods {
        for drop_repeats in [true, false] {
            run += 1;
            let outcome = one_flood(work.path(), run, drop_repeats, length, flooders, rate);
            println!(
                "| {flooders} × {} | {} | {:.0} | {} | {}/{READERS} | {} | {:.0}% |",
                if rate > 0.0 {
                    format!("{rate:.0}")
                } else {
                    "as fast as it goes".into()
                },
                if drop_repeats { "dropped" } else { "sent" },
                outcome.opens_per_s,
                outcome.lost,
                outcome.detected,
                outcome.dropped,
                outcome.agent_cpu * 100.0
            );
            if drop_repeats {
                assert_eq!(
                    outcome.detected, READERS,
                    "with repeats dropped, a flood hid readers"
                );
            }
        }
    }
}

fn one_flood(
    work: &std::path::Path,
    run: usize,
    drop_repeats: bool,
    length: f64,
    flooders: usize,
    rate: f64,
) -> Outcome {
    let w = work.display().to_string();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_picket"))
        .args(["run", "--learning-period", "0s", "--rules"])
        .arg(work.join("rules"))
        .arg("--state")
        .arg(work.join(format!("state{run}")))
        .env("PICKET_LOG", "info")
        .env(
            "PICKET_PROBES_DROP_REPEATS",
            if drop_repeats { "on" } else { "off" },
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = agent.id();
    let (signal_tx, signals) = std::sync::mpsc::channel::<String>();
    let stdout = BufReader::new(agent.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let signal: serde_json::Value = serde_json::from_str(&line).unwrap();
            let exe = signal["new_value"]["value"].as_str().unwrap_or_default();
            let _ = signal_tx.send(exe.to_owned());
        }
    });
    let (log_tx, log) = std::sync::mpsc::channel::<String>();
    let stderr = BufReader::new(agent.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = log_tx.send(line);
        }
    });
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("agent ready")) {
        lines.push(
            log.recv_timeout(Duration::from_secs(60))
                .expect("the agent did not get ready"),
        );
    }
    support::sh(&format!("cat {TOKEN} >/dev/null")); // the group's baseline, learned silently

    let cpu_before = cpu_time(pid);
    let started = Instant::now();
    let flooders: Vec<_> = (0..flooders)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--flood", &length.to_string(), &rate.to_string()])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for i in 1..=READERS {
        std::thread::sleep(Duration::from_secs_f64(length / (READERS + 2) as f64));
        support::sh(&format!("{w}/bin/reader{i} {TOKEN} >/dev/null"));
    }
    let opens: u64 = flooders
        .into_iter()
        .map(|flooder| {
            let out = flooder.wait_with_output().unwrap();
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    let flood_time = started.elapsed();
    // The last reader comes after the flood; its signal means the ring buffer has been read.
    support::sh(&format!("{w}/bin/reader0 {TOKEN} >/dev/null"));
    let mut seen = std::collections::BTreeSet::new();
    let marker = format!("{w}/bin/reader0");
    loop {
        let exe = signals
            .recv_timeout(Duration::from_secs(120))
            .expect("the agent did not report the last reader");
        if exe == marker {
            break;
        }
        seen.insert(exe);
    }
    let agent_cpu = (cpu_time(pid) - cpu_before).as_secs_f64() / started.elapsed().as_secs_f64();
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = agent.wait();
    lines.extend(log.try_iter());
    let detected = (1..=READERS)
        .filter(|i| seen.contains(&format!("{w}/bin/reader{i}")))
        .count();
    let last_number = |message: &str, field: &str| -> u64 {
        lines
            .iter()
            .filter(|l| l.contains(message))
            .filter_map(|l| {
                let start = l.find(&format!(" {field}="))? + field.len() + 2;
                l[start..]
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .next_back()
            .unwrap_or(0)
    };
    Outcome {
        opens_per_s: opens as f64 / flood_time.as_secs_f64(),
        lost: last_number("events lost in the kernel's ring buffer", "total"),
        detected,
        dropped: last_number("repeated opens dropped in the kernel", "total"),
        agent_cpu,
    }
}
