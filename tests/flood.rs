//! Issue 8, finding 2: a flood of opens of the token by one reader must not hide other readers.
//! `picket run` on the real kernel, in a private mount namespace holding the kubelet's token
//! layout; processes really open the token.
//!
//! Needs root (BPF, mounts, a cgroup): the tests are `#[ignore]`d so that a plain `cargo test`
//! reports them ignored; `./run-tests` (as root in CI) runs them with `--include-ignored`.

mod support;

use std::path::Path;
use std::process::Command;
use support::{require_root, rule_wasm, temp_dir};

/// The kubelet's projected token in a tmpfs over /run (the machine's own /run is untouched),
/// distinct copies of `sh` and `cat`, and the helpers the steps use.
const SETUP: &str = r#"
set -eu
mount -t tmpfs picket-flood /run
sa=/run/secrets/kubernetes.io/serviceaccount
stamp=..2026_11_22_10_00_00.000000001
mkdir -p "$sa" && mount -t tmpfs picket-flood-sa "$sa"
mkdir "$sa/$stamp" && echo "token" > "$sa/$stamp/token"
ln -s "$stamp" "$sa/..data" && ln -s ..data/token "$sa/token"
K8S=/var/run/secrets/kubernetes.io/serviceaccount/token
mkdir -p "$WORK/bin"
# The flooders share one executable: a copy of tests/reader's `flooder`, which opens the file in
# a loop (a shell loop is too slow to fill the ring buffer).
cp "$FLOODER" "$WORK/bin/flooder"
for i in $(seq 20); do cp "$(command -v cat)" "$WORK/bin/reader$i"; done
cp "$(command -v cat)" "$WORK/bin/last"

# until FILE contains TEXT (60 s at most: a guard against hanging, not a measurement)
until_in() {
    for _ in $(seq 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; return 1
}

# until a signal's new value is about $WORK/bin/NAME. (Not just the name anywhere: a signal
# carries its reader's ancestors' command lines, and this script is one.)
until_signal_for() {
    until_in "$WORK/signals.jsonl" "\"value\":\"$WORK/bin/$1"
}

start_agent() {
    "$PICKET" run --rules "$WORK/rules" --state "$WORK/state" --learning-period 0s \
        --output "$WORK/signals.jsonl" 2>"$WORK/agent.log" &
    agent=$!
    until_in "$WORK/agent.log" "agent ready"
    cat "$K8S" >/dev/null   # the group's first reader is learned silently
}

# flood [OPENS]: one flooder, in the background, until killed or after OPENS opens; it creates
# $WORK/flooding.<its pid> after 5,000 opens
flood() {
    "$WORK/bin/flooder" "$K8S" "$WORK/flooding" ${1:+"$1"} >/dev/null &
}

# readers: the twenty readers, one after the other
readers() {
    for i in $(seq 20); do "$WORK/bin/reader$i" "$K8S" >/dev/null; done
}

# until the agent has handled everything before: one more reader after the flood, whose signal
# comes after every earlier open's (the ring buffer keeps their order)
until_drained() {
    "$WORK/bin/last" "$K8S" >/dev/null
    until_signal_for last
}

stop_agent() {
    kill -TERM "$agent"
    wait "$agent"
}
"#;

/// Eight flooders open the token in a loop; while they do, twenty distinct programs read it once
/// each.
const FLOOD_WITH_READERS: &str = r#"
start_agent
flooders=
for _ in $(seq 8); do
    flood
    flooders="$flooders $!"
done
# The flood is on once its first open has raised the flooder's own signal.
until_signal_for flooder
readers
kill $flooders
wait $flooders 2>/dev/null || true
until_drained
stop_agent
"#;

/// The same with the agent stopped (SIGSTOP) during the flood, so that its speed plays no part:
/// the readers start once the flooders have made 40,000 opens, more than the ring buffer (4 MiB,
/// ~18,000 such records) holds. Sent, the flood would fill it and every reader would be lost;
/// dropped, it takes one record.
const FLOOD_WITH_READERS_AGENT_STALLED: &str = r#"
start_agent
kill -STOP "$agent"
flooders=
for _ in $(seq 8); do
    flood
    flooders="$flooders $!"
done
# Until all eight flood (60 s at most: a guard against hanging, not a measurement).
for i in $(seq 601); do [ "$(ls "$WORK" | grep -c '^flooding\.')" -ge 8 ] && break; sleep 0.1; done
[ "$i" -le 600 ] || { echo "the eight flooders did not all start" >&2; exit 1; }
readers
kill $flooders
wait $flooders 2>/dev/null || true
kill -CONT "$agent"
until_drained
stop_agent
"#;

/// With repeats sent (the diagnostic switch), a stopped agent and eight flooders in a cgroup of
/// their own: the ring buffer (4 MiB, ~18,000 such records) cannot hold their 80,000 opens, so
/// events are lost for certain, and the warning must name that cgroup.
const LOSS_IN_A_CGROUP: &str = r#"
cgroot=$(findmnt -n -t cgroup2 -o TARGET | head -n 1)
[ -n "$cgroot" ] || { echo "no cgroup2 mount" >&2; exit 3; }
cg="$cgroot/picket-flood-test-$$"
mkdir "$cg"
trap 'rmdir "$cg" 2>/dev/null || true' EXIT
echo "$cg" > "$WORK/cgroup"
start_agent
kill -STOP "$agent"
flooders=
home=$(sed -n 's/^0:://p' /proc/self/cgroup)
echo $$ > "$cg/cgroup.procs"     # the flooders inherit the cgroup
for _ in $(seq 8); do
    flood 10000
    flooders="$flooders $!"
done
wait $flooders
echo $$ > "$cgroot$home/cgroup.procs"
kill -CONT "$agent"
until_in "$WORK/agent.log" "events lost in the kernel's ring buffer"
stop_agent
"#;

/// Runs `steps` after [`SETUP`] in a private mount namespace with the k8s-sa-token rule; `env`
/// goes to the script (and the agent). Returns the work directory; fails without root.
fn scenario(steps: &str, env: &[(&str, &str)]) -> tempfile::TempDir {
    // Probes see the whole machine: two agents at once would each see the other's readers.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    require_root("the picket run flood test (BPF, mounts, cgroups)");
    let flooder = support::workspace_binary("picket-test-reader", "flooder");
    let work = temp_dir();
    let rules = work.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::copy(rule_wasm("k8s-sa-token"), rules.join("k8s_sa_token.wasm")).unwrap();
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!("{SETUP}\n{steps}"))
        .env("PICKET", env!("CARGO_BIN_EXE_picket"))
        .env("WORK", work.path())
        .env("FLOODER", flooder)
        .envs(env.iter().copied())
        .output()
        .expect("running unshare");
    assert!(
        output.status.success(),
        "scenario failed ({}):\n{}\nagent log:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        agent_log(work.path())
    );
    work
}

fn agent_log(work: &Path) -> String {
    std::fs::read_to_string(work.join("agent.log")).unwrap_or_default()
}

/// The number after `field=` in the first log line containing `message`.
fn logged_number(log: &str, message: &str, field: &str) -> Option<u64> {
    let line = log.lines().find(|line| line.contains(message))?;
    let start = line.find(&format!(" {field}="))? + field.len() + 2;
    let digits: String = line[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[test]
#[ignore = "needs root: BPF, mounts and cgroups (./run-tests runs it)"]
fn a_flood_of_one_reader_hides_none_of_twenty_others() {
    let work = scenario(FLOOD_WITH_READERS, &[]);
    assert_every_reader_signalled(&work);
}

#[test]
#[ignore = "needs root: BPF, mounts and cgroups (./run-tests runs it)"]
fn a_flood_hides_no_reader_even_while_the_agent_is_stalled() {
    let work = scenario(FLOOD_WITH_READERS_AGENT_STALLED, &[]);
    assert_every_reader_signalled(&work);
    let log = agent_log(work.path());
    assert!(!log.contains("events lost"), "{log}");
}

/// One signal for each reader and one for the flooder; the agent reported the repeats it
/// dropped.
fn assert_every_reader_signalled(work: &tempfile::TempDir) {
    let log = agent_log(work.path());
    let bin = |name: &str| work.path().join("bin").join(name).display().to_string();
    let signals = std::fs::read_to_string(work.path().join("signals.jsonl")).unwrap();
    let mut raised: Vec<String> = signals
        .lines()
        .map(|line| {
            let signal: serde_json::Value = serde_json::from_str(line).unwrap();
            signal["new_value"]["value"].as_str().unwrap().to_owned()
        })
        // The probes see the whole machine: leave out other tests' readers.
        .filter(|exe| exe.starts_with(&bin("")))
        .collect();
    raised.sort();
    let mut expected: Vec<String> = (1..=20).map(|i| bin(&format!("reader{i}"))).collect();
    expected.push(bin("flooder"));
    expected.push(bin("last"));
    expected.sort();
    assert_eq!(raised, expected, "signals:\n{signals}\nagent log:\n{log}");
    // The flood was real, and dropped in the kernel: the agent says how much at its stop.
    let dropped = logged_number(&log, "repeated opens dropped in the kernel", "total")
        .unwrap_or_else(|| panic!("no report of dropped repeats in:\n{log}"));
    assert!(dropped > 0, "{log}");
}

#[test]
#[ignore = "needs root: BPF, mounts and cgroups (./run-tests runs it)"]
fn events_lost_anyway_are_reported_with_the_cgroup_they_came_from() {
    let work = scenario(LOSS_IN_A_CGROUP, &[("PICKET_PROBES_DROP_REPEATS", "off")]);
    let log = agent_log(work.path());
    let cgroup = std::fs::read_to_string(work.path().join("cgroup")).unwrap();
    let name = Path::new(cgroup.trim())
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    let warning = log
        .lines()
        .find(|line| line.contains("events lost in the kernel's ring buffer"))
        .unwrap_or_else(|| panic!("no lost-events warning in:\n{log}"));
    let lost = logged_number(&log, "events lost in the kernel's ring buffer", "lost").unwrap();
    assert!(lost > 0, "{warning}");
    // Most of them came from the flooders' cgroup, named by its path.
    let attributed = warning
        .split(&format!("/{name}: "))
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("the warning does not name /{name}: {warning}"));
    assert!(attributed * 2 > lost, "{warning}");
    assert!(log.contains("repeated opens were not dropped"), "{log}");
}
