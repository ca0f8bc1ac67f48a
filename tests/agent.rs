//! `picket run` end to end on the real kernel: probes attached, a private mount namespace with
//! the kubelet's token layout, real processes reading the tokens.
//!
//! Needs root (BPF, mounts): the tests are `#[ignore]`d so that a plain `cargo test` reports them
//! ignored; `./run-tests` (as root in CI) runs them with `--include-ignored`.

mod support;

use std::path::Path;
use std::process::Command;
use support::{require_root, rule_wasm, temp_dir, workspace_binary};

/// The kubelet's token layout, built in a private mount namespace: /run becomes a tmpfs there
/// (the machine's own /run is untouched), each serviceaccount directory a tmpfs of its own as a
/// projected volume is, with the kubelet's timestamped directory, `..data` link and `token`
/// link. `/var/run` is the usual link to `/run`. Also defines `start_agent` and `wait_for`.
const SETUP: &str = r#"
set -eu
mount -t tmpfs picket-e2e /run
stamp=..2026_11_22_10_00_00.000000001
for provider in kubernetes.io eks.amazonaws.com; do
    sa=/run/secrets/$provider/serviceaccount
    mkdir -p "$sa"
    mount -t tmpfs picket-e2e-sa "$sa"
    mkdir "$sa/$stamp"
    echo "token-for-$provider" > "$sa/$stamp/token"
    echo "certificate" > "$sa/$stamp/ca.crt"
    echo "default" > "$sa/$stamp/namespace"
    ln -s "$stamp" "$sa/..data"
    for f in token ca.crt namespace; do ln -s "..data/$f" "$sa/$f"; done
done
[ "$(readlink -f /var/run)" = /run ] || { echo "/var/run does not lead to /run here" >&2; exit 3; }
K8S=/var/run/secrets/kubernetes.io/serviceaccount/token
EKS=/var/run/secrets/eks.amazonaws.com/serviceaccount/token
mkdir -p "$WORK/bin"
for name in xcat ycat zcat; do cp "$(command -v cat)" "$WORK/bin/$name"; done

# wait_for FILE TEXT: until FILE contains TEXT (10 s at most).
wait_for() {
    for _ in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; return 1
}

# A step that fails (set -e) must not leave an agent running: it holds the test's output pipes.
trap 'status=$?; [ -z "${agent:-}" ] || kill -KILL "$agent" 2>/dev/null || :; exit $status' EXIT

# signal_for NAME: until a signal's new value is about $WORK/bin/NAME. (Not just the name
# anywhere: a signal carries its reader's ancestors' command lines, and this script is one.)
signal_for() {
    wait_for "$WORK/signals.jsonl" "\"value\":\"$WORK/bin/$1"
}

# start_agent LOG: starts picket run in the background; $agent is its pid.
start_agent() {
    "$PICKET" run --rules "$WORK/rules" --state "$WORK/state" --learning-period 0s \
        --output "$WORK/signals.jsonl" 2>"$1" &
    agent=$!
    wait_for "$1" "agent ready"
}

# settle NAME: one more unfamiliar reader of the Kubernetes token (its own copy of cat,
# bin/settle-NAME), then until its signal is out. The ring buffer keeps the opens' order, so
# every earlier open has been evaluated by then: a signal that should not come would be out
# too. The tests leave these signals out of what they compare.
settle() {
    cp "$(command -v cat)" "$WORK/bin/settle-$1"
    "$WORK/bin/settle-$1" "$K8S" >/dev/null
    signal_for "settle-$1"
}

# metric LOG SERIES: the value of SERIES on /metrics of the agent whose log is LOG (started with
# --listen 127.0.0.1:0; the log says the address), 0 while it is not there.
metric() {
    addr=$(sed -n 's/.*address=\([0-9.:]*\).*/\1/p' "$1" | head -n 1)
    perl -MIO::Socket::INET -e '
        my $s = IO::Socket::INET->new(PeerAddr => $ARGV[0]) or die "connecting to $ARGV[0]: $!";
        print $s "GET /metrics HTTP/1.0\r\n\r\n";
        while (<$s>) { if (index($_, "$ARGV[1] ") == 0) { print((split / /)[1]); exit } }
        print "0\n";' "$addr" "$2"
}

# signals N: until the output holds N signals (10 s at most).
signals() {
    for _ in $(seq 100); do
        [ "$(cat "$WORK/signals.jsonl" 2>/dev/null | wc -l)" -ge "$1" ] && return 0
        sleep 0.1
    done
    echo "expected $1 signals, got:" >&2; cat "$WORK/signals.jsonl" >&2; return 1
}
"#;

/// A remote output whose receiver is down: the file output goes on, `/readyz` names the failing
/// output, the metrics count it; kill -9, a receiver comes up, and the restarted agent delivers
/// what was spooled.
const REMOTE_OUTPUT_DOWN: &str = r#"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port/"
echo "$url" > "$WORK/url"
# get LOG PATH: the answer to GET PATH on the endpoint of the agent whose log is LOG.
get() {
    addr=$(sed -n 's/.*address=\([0-9.:]*\).*/\1/p' "$1" | head -n 1)
    perl -MIO::Socket::INET -e '
        my $s = IO::Socket::INET->new(PeerAddr => $ARGV[0]) or die "connecting to $ARGV[0]: $!";
        print $s "GET $ARGV[1] HTTP/1.0\r\n\r\n"; print while <$s>;' "$addr" "$2"
}
run_agent() {
    "$PICKET" run --rules "$WORK/rules" --state "$WORK/state" --learning-period 0s \
        --output "$WORK/signals.jsonl" --output "$url" --output-unready-after 1s \
        --listen 127.0.0.1:0 2>"$1" &
    agent=$!
    wait_for "$1" "agent ready"
}
run_agent "$WORK/agent1.log"
cat "$K8S" >/dev/null
"$WORK/bin/xcat" "$K8S" >/dev/null
signals 1
wait_for "$WORK/agent1.log" "cannot deliver signals"
for _ in $(seq 100); do
    get "$WORK/agent1.log" /readyz > "$WORK/readyz"
    grep -q "failing for" "$WORK/readyz" && break
    sleep 0.1
done
metric "$WORK/agent1.log" "picket_output_spooled{output=\"$url\"}" > "$WORK/spooled"
metric "$WORK/agent1.log" "picket_output_delivered_total{output=\"$WORK/signals.jsonl\"}" > "$WORK/delivered"
kill -KILL $agent
wait $agent || true
python3 -c '
import http.server, sys
class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open(sys.argv[2], "ab") as f:
            f.write(body)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Receiver).serve_forever()
' "$port" "$WORK/received" &
receiver=$!
run_agent "$WORK/agent2.log"
wait_for "$WORK/received" "\"value\":\"$WORK/bin/xcat"
kill -TERM $agent
wait $agent
kill $receiver
"#;

/// One process reads each token: an unfamiliar program after a known one.
const READ_EACH_TOKEN: &str = r#"
start_agent "$WORK/agent.log"
# A known reader first: the first value of a group is learned silently.
cat "$K8S" "$EKS" >/dev/null
# An unfamiliar program (a renamed copy of cat) reads each token once and exits at once: by a
# relative path through the links, and by the /var/run spelling.
(cd /run/secrets/kubernetes.io/serviceaccount && "$WORK/bin/xcat" token >/dev/null)
"$WORK/bin/xcat" "$EKS" >/dev/null
# Nothing for the other files of the directory, or for another file named token.
"$WORK/bin/xcat" /var/run/secrets/kubernetes.io/serviceaccount/ca.crt \
    /var/run/secrets/eks.amazonaws.com/serviceaccount/namespace >/dev/null
echo unrelated > "$WORK/token" && "$WORK/bin/xcat" "$WORK/token" >/dev/null
# A second read by the same program raises nothing new.
"$WORK/bin/xcat" /run/secrets/kubernetes.io/serviceaccount/..data/token >/dev/null
signals 2
settle read-each
# Rules leaving the directory take their basenames out of the kernel prefilter (the agent's own
# canary stays, the proof that the hook sees opens).
rm "$WORK/rules/eks_token.wasm" "$WORK/rules/k8s_sa_token.wasm"
wait_for "$WORK/agent.log" 'kernel prefilter updated basenames={"picket-canary"}'
kill -TERM $agent
wait $agent
"#;

/// A rule dropped into the running agent, a garbage file beside it, then kill -9 and restart.
const RELOAD_AND_KILL: &str = r#"
start_agent "$WORK/agent1.log"
cat "$K8S" "$EKS" >/dev/null
"$WORK/bin/xcat" "$K8S" >/dev/null          # signal 1: k8s-sa-token, xcat
"$WORK/bin/ycat" "$EKS" >/dev/null          # no eks rule yet: nothing
signals 1
cp "$EKS_MODULE" "$WORK/rules/eks_token.wasm"
printf 'not wasm' > "$WORK/rules/garbage.wasm"
wait_for "$WORK/agent1.log" "rule=eks-token"
wait_for "$WORK/agent1.log" "garbage.wasm: is not a WebAssembly module"
cat "$EKS" >/dev/null                       # the eks group's baseline
"$WORK/bin/ycat" "$EKS" >/dev/null          # signal 2: eks-token, ycat
signals 2
# The time passing is what is tested: learned over a second ago (state is saved every 200 ms)...
sleep 1.5
kill -KILL $agent                           # ...then a crash
wait $agent || true
start_agent "$WORK/agent2.log"
"$WORK/bin/xcat" "$K8S" >/dev/null          # known before the crash: nothing
"$WORK/bin/ycat" "$EKS" >/dev/null          # known before the crash: nothing
"$WORK/bin/zcat" "$K8S" >/dev/null          # signal 3: k8s-sa-token, zcat
signals 3
settle after-restart
kill -TERM $agent
wait $agent
"#;

/// Signals to a pipe whose reader never reads: the agent keeps detecting and learning, says
/// that it drops signals, and stops on SIGTERM; a second agent knows what the first learned.
const STUCK_OUTPUT: &str = r#"
# The agent's stdout is a pipe (a FIFO) to a consumer that never reads.
mkfifo "$WORK/pipe"
sleep 1000 <"$WORK/pipe" &
consumer=$!
"$PICKET" run --rules "$WORK/rules" --state "$WORK/state" --learning-period 0s \
    --output - --output-queue 8 --flood-limit 0 --listen 127.0.0.1:0 >"$WORK/pipe" \
    2>"$WORK/agent1.log" &
agent=$!
wait_for "$WORK/agent1.log" "agent ready"
cat "$K8S" >/dev/null                       # the group's baseline
# 300 unfamiliar readers: far more signals than the pipe (64 KiB) and the queue (8) hold.
cp "$(command -v cat)" "$WORK/bin/base"
for i in $(seq 300); do ln "$WORK/bin/base" "$WORK/bin/r$i"; "$WORK/bin/r$i" "$K8S" >/dev/null; done
wait_for "$WORK/agent1.log" "signals dropped"
# Still detecting and learning, with the output stuck: zcat's is the 301st signal raised (the
# metric counts each before the output drops it). 20 s at most.
"$WORK/bin/zcat" "$K8S" >/dev/null
series='picket_signals_total{rule="k8s-sa-token"}'
for i in $(seq 201); do [ "$(metric "$WORK/agent1.log" "$series")" -ge 301 ] && break; sleep 0.1; done
[ "$i" -le 200 ] || { echo "zcat's signal was not raised: $(metric "$WORK/agent1.log" "$series")" >&2; exit 1; }
kill -TERM $agent
# SIGTERM is answered: the agent exits (a zombie until waited for) within 20 s, or fails here.
for _ in $(seq 200); do
    state=$(cut -d' ' -f3 "/proc/$agent/stat" 2>/dev/null || echo gone)
    if [ "$state" = Z ] || [ "$state" = gone ]; then break; fi
    sleep 0.1
done
if [ "$state" != Z ] && [ "$state" != gone ]; then
    kill -KILL $agent; kill $consumer; echo "the agent ignored SIGTERM" >&2; exit 1
fi
wait $agent
kill $consumer
# A second agent, with a working output: what the first learned is known.
start_agent "$WORK/agent2.log"
"$WORK/bin/zcat" "$K8S" >/dev/null          # learned while the output was stuck: nothing
"$WORK/bin/r300" "$K8S" >/dev/null          # likewise
"$WORK/bin/ycat" "$K8S" >/dev/null          # signal 1
signals 1
settle second-agent
kill -TERM $agent
wait $agent
"#;

/// Perl programs the scenarios run from renamed copies of perl, so that each technique has its
/// own executable. `HANDLE_OPEN FILE DIR`: `open_by_handle_at(2)` of FILE (x86_64 syscall
/// numbers), with DIR as the mount descriptor. `CHROOT_OPEN ROOT FILE`: chroot into ROOT, then
/// open FILE by its path inside it.
const READERS: &str = r#"
cat > "$WORK/handle.pl" <<'PERL'
my ($path, $dir) = @ARGV;
my $handle = pack("LlZ128", 128, 0, "");
my $mount_id = pack("l", 0);
syscall(303, -100, $path, $handle, $mount_id, 0) == 0 or die "name_to_handle_at $path: $!";
opendir(my $d, $dir) or die "$dir: $!";
my $fd = syscall(304, fileno($d), $handle, 0);
$fd >= 0 or die "open_by_handle_at $path: $!";
open(my $f, "<&=", $fd) or die "fdopen: $!";
print <$f>;
PERL
cat > "$WORK/chroot.pl" <<'PERL'
my ($root, @files) = @ARGV;
chroot($root) or die "chroot $root: $!";
chdir("/") or die "chdir: $!";
for my $file (@files) { open(my $f, "<", $file) or die "$file: $!"; print <$f>; }
PERL
for name in hperl cperl; do cp "$(command -v perl)" "$WORK/bin/$name"; done
for name in bcat fcat lcat rcat ocat; do cp "$(command -v cat)" "$WORK/bin/$name"; done
cp "$(command -v sh)" "$WORK/bin/wsh"
SA=/run/secrets/kubernetes.io/serviceaccount
ESA=/run/secrets/eks.amazonaws.com/serviceaccount
STAMP=..2026_11_22_10_00_00.000000001
"#;

/// Every way of reaching a token under another path or name, each by its own program, reading
/// both tokens; then the look-alikes that must raise nothing.
const OTHER_NAMES: &str = r#"
start_agent "$WORK/agent.log"
wait_for "$WORK/agent.log" "kernel identity approvers updated"
cat "$K8S" "$EKS" >/dev/null                        # the known reader
# A bind mount of each serviceaccount directory elsewhere.
mkdir -p "$WORK/mnt/k8s" "$WORK/mnt/eks"
mount --bind "$SA" "$WORK/mnt/k8s" && mount --bind "$ESA" "$WORK/mnt/eks"
"$WORK/bin/bcat" "$WORK/mnt/k8s/token" "$WORK/mnt/eks/token" >/dev/null
# A bind mount of each token file onto another name.
touch "$WORK/creds-k8s" "$WORK/creds-eks"
mount --bind "$SA/$STAMP/token" "$WORK/creds-k8s" && mount --bind "$ESA/$STAMP/token" "$WORK/creds-eks"
"$WORK/bin/fcat" "$WORK/creds-k8s" "$WORK/creds-eks" >/dev/null
# A hard link to each token under another name (on its own filesystem, as links must be).
mkdir "$SA/.cache" "$ESA/.cache"
ln "$SA/$STAMP/token" "$SA/.cache/blob" && ln "$ESA/$STAMP/token" "$ESA/.cache/blob"
"$WORK/bin/lcat" "$SA/.cache/blob" "$ESA/.cache/blob" >/dev/null
# open_by_handle_at while those links exist: the kernel may hand back the link's name.
"$WORK/bin/hperl" "$WORK/handle.pl" "$SA/.cache/blob" "$SA" >/dev/null
"$WORK/bin/hperl" "$WORK/handle.pl" "$ESA/.cache/blob" "$ESA" >/dev/null
# A reader that chroots into a parent of the tokens and opens them by the shortened paths.
"$WORK/bin/cperl" "$WORK/chroot.pl" /run/secrets     /kubernetes.io/serviceaccount/token /eks.amazonaws.com/serviceaccount/token >/dev/null
# Nothing for: ca.crt and namespace through a bind mount and a hard link, another file named
# token, a write-only open of a token through its hard link.
ln "$SA/$STAMP/ca.crt" "$SA/.cache/cert"
"$WORK/bin/ocat" "$WORK/mnt/k8s/ca.crt" "$WORK/mnt/eks/namespace" "$SA/.cache/cert" >/dev/null
echo unrelated > "$WORK/token" && "$WORK/bin/ocat" "$WORK/token" >/dev/null
"$WORK/bin/wsh" -c ': >> "$1"' wsh "$SA/.cache/blob"
signals 10
settle other-names
kill -TERM $agent
wait $agent
"#;

/// The kubelet rotates the token (a new timestamped directory, an atomic `..data` swap, the old
/// directory removed): the agent follows, so a read of the new token by another name is caught,
/// and a hard link made to the old token before the rotation still counts as that token.
const ROTATION: &str = r#"
start_agent "$WORK/agent.log"
wait_for "$WORK/agent.log" "kernel identity approvers updated"
cat "$K8S" >/dev/null                               # the known reader
mkdir "$SA/.cache"
ln "$SA/$STAMP/token" "$SA/.cache/old"              # a link to the token before rotation
NEW=..2026_11_22_11_00_00.000000002
mkdir "$SA/$NEW"
echo rotated > "$SA/$NEW/token"
echo certificate > "$SA/$NEW/ca.crt"
echo default > "$SA/$NEW/namespace"
ln -s "$NEW" "$SA/..data_tmp" && mv -T "$SA/..data_tmp" "$SA/..data"
rm -r "$SA/$STAMP"
wait_for "$WORK/agent.log" "$NEW/token"
ln "$SA/$NEW/token" "$SA/.cache/new"
"$WORK/bin/lcat" "$SA/.cache/new" >/dev/null        # signal: the new token by another name
"$WORK/bin/ocat" "$SA/.cache/old" >/dev/null        # signal: the old token, still known
signals 2
settle rotation
kill -TERM $agent
wait $agent
"#;
/// The lineage and the executable's identity: a familiar chain (the app running its
/// interpreter) is learned and stays silent; the interpreter run from a shell the workload never
/// runs, the interpreter's file written over in place, a short-lived reader whose parent exited
/// before it read, and a process that borrowed a learned program as its executable after its
/// exec (`prctl(PR_SET_MM_EXE_FILE)`) each raise one signal.
const LINEAGE: &str = r#"
start_agent "$WORK/agent.log"
for name in app shell; do cp "$(command -v sh)" "$WORK/bin/$name"; done
for name in interp orphan; do cp "$(command -v cat)" "$WORK/bin/$name"; done
# ("; true" keeps the shell from exec'ing its last command in place: the reader is its child.)
# The familiar chain, learned silently (the group's first values), then again: silent.
"$WORK/bin/app" -c '"$0" "$1" >/dev/null; true' "$WORK/bin/interp" "$K8S"
"$WORK/bin/app" -c '"$0" "$1" >/dev/null; true' "$WORK/bin/interp" "$K8S"
# The same interpreter, run from a shell the workload never ran it from: signal 1.
"$WORK/bin/shell" -c '"$0" "$1" >/dev/null; true' "$WORK/bin/interp" "$K8S"
# The interpreter's file written over in place (same path and inode, other bytes), run by the
# app: signal 2, with the new contents' digest.
cp "$(command -v head)" "$WORK/bin/interp"
sha256sum "$WORK/bin/interp" | cut -d' ' -f1 > "$WORK/interp.sha256"
"$WORK/bin/app" -c '"$0" "$1" >/dev/null; true' "$WORK/bin/interp" "$K8S"
# A reader of a millisecond whose parent (the app) has exited and been reaped before it runs:
# signal 3, with the app as its parent. ($$ in the subshell is the app's pid.)
"$WORK/bin/app" -c '( while kill -0 $$ 2>/dev/null; do sleep 0.01; done; exec "$0" "$1" >/dev/null ) & exit 0'     "$WORK/bin/orphan" "$K8S"
signal_for orphan
# Started through the dynamic loader, the swapper points its executable at the learned
# interpreter, then reads: signal 4, its executable being the loader it exec'd.
readlink -f /lib64/ld-linux-x86-64.so.2 > "$WORK/loader"
"$(cat "$WORK/loader")" "$EXE_SWAPPER" "$WORK/bin/interp" "$K8S" >/dev/null
signals 4
settle lineage
kill -TERM $agent
wait $agent
"#;

/// Runs `steps` after [`SETUP`] in a private mount namespace, with the named rule modules in
/// the rules directory, and returns the work directory. Fails without root.
fn scenario(steps: &str, rules: &[&str]) -> tempfile::TempDir {
    scenario_with::<&str>(steps, rules, &[])
}

/// [`scenario`] with more environment variables for the steps (and the agents they start).
fn scenario_with<V: AsRef<std::ffi::OsStr>>(
    steps: &str,
    rules: &[&str],
    env: &[(&str, V)],
) -> tempfile::TempDir {
    // Probes see the whole machine: two agents at once would each see the other's readers.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    require_root("picket run end to end (BPF, mounts)");
    let work = temp_dir();
    let dir = work.path().join("rules");
    std::fs::create_dir(&dir).unwrap();
    for rule in rules {
        let file = format!("{}.wasm", rule.replace('-', "_"));
        std::fs::copy(rule_wasm(rule), dir.join(file)).unwrap();
    }
    let script = format!("{SETUP}\n{READERS}\n{steps}");
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("PICKET", env!("CARGO_BIN_EXE_picket"))
        .env("WORK", work.path())
        .env("EKS_MODULE", rule_wasm("eks-token"))
        .envs(env.iter().map(|(name, value)| (*name, value)))
        .output()
        .expect("running unshare");
    let logs: String = ["agent.log", "agent1.log", "agent2.log"]
        .iter()
        .filter_map(|name| std::fs::read_to_string(work.path().join(name)).ok())
        .collect();
    assert!(
        output.status.success(),
        "scenario failed ({}):\n{}\nagent logs:\n{logs}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    work
}

/// The signals in the output, without those of the scenario's `settle` readers.
fn read_signals(work: &Path) -> Vec<serde_json::Value> {
    let settle = work.join("bin/settle-").display().to_string();
    std::fs::read_to_string(work.join("signals.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|s| {
            !s["event"]["process"]["exe"]
                .as_str()
                .is_some_and(|exe| exe.starts_with(&settle))
        })
        .collect()
}

#[test]
#[ignore = "needs root: BPF and mounts (./run-tests runs it)"]
fn an_unfamiliar_program_reading_each_token_raises_one_signal_per_rule() {
    let work = scenario(READ_EACH_TOKEN, &["eks-token", "k8s-sa-token"]);
    let log = std::fs::read_to_string(work.path().join("agent.log")).unwrap();
    assert!(log.contains("probes attached"), "{log}");
    assert!(log.contains("stopping: detaching probes"), "{log}");
    let signals = read_signals(work.path());
    let xcat = work.path().join("bin/xcat").display().to_string();
    let stamp = "..2026_11_22_10_00_00.000000001";
    let mut seen: Vec<(String, String, String)> = signals
        .iter()
        .map(|s| {
            (
                s["rule"].as_str().unwrap().to_string(),
                s["new_value"]["value"].as_str().unwrap().to_string(),
                s["event"]["file"]["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (
                "eks-token".to_string(),
                xcat.clone(),
                format!("/run/secrets/eks.amazonaws.com/serviceaccount/{stamp}/token"),
            ),
            (
                "k8s-sa-token".to_string(),
                xcat.clone(),
                format!("/run/secrets/kubernetes.io/serviceaccount/{stamp}/token"),
            ),
        ],
        "agent log:\n{log}"
    );
    for signal in &signals {
        let process = &signal["event"]["process"];
        assert_eq!(process["exe"], xcat.as_str());
        assert_eq!(process["comm"], "xcat");
        assert_eq!(process["uid"], 0);
        assert_eq!(process["args"][0], xcat.as_str());
        assert_eq!(signal["event"]["file"]["access"], "read");
        assert_eq!(signal["severity"], "medium");
        assert!(signal["event"].get("container").is_none());
        assert_eq!(signal["new_value"]["group"], signal["event"]["host"]);
    }
    assert_state_remembers(work.path(), &["eks-token", "k8s-sa-token"], &signals);
}

#[test]
#[ignore = "needs root: BPF and mounts (./run-tests runs it)"]
fn a_live_agent_takes_a_dropped_in_rule_and_survives_kill_9_without_forgetting() {
    let work = scenario(RELOAD_AND_KILL, &["k8s-sa-token"]);
    let bin = |name: &str| work.path().join("bin").join(name).display().to_string();
    let seen: Vec<(String, String)> = read_signals(work.path())
        .iter()
        .map(|s| {
            (
                s["rule"].as_str().unwrap().to_string(),
                s["new_value"]["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let log = std::fs::read_to_string(work.path().join("agent2.log")).unwrap();
    assert_eq!(
        seen,
        [
            ("k8s-sa-token".to_string(), bin("xcat")),
            ("eks-token".to_string(), bin("ycat")),
            ("k8s-sa-token".to_string(), bin("zcat")),
        ],
        "after restart:\n{log}"
    );
    assert!(log.contains("learned state restored"), "{log}");
    assert!(log.contains("rule loaded (cached code)"), "{log}");
}

#[test]
#[ignore = "needs root: BPF and mounts (./run-tests runs it)"]
fn a_stuck_output_costs_signals_past_its_queue_but_never_detection_or_shutdown() {
    let work = scenario(STUCK_OUTPUT, &["k8s-sa-token"]);
    let first = std::fs::read_to_string(work.path().join("agent1.log")).unwrap();
    let dropped = first
        .lines()
        .find(|l| l.contains("signals dropped"))
        .unwrap_or_else(|| panic!("{first}"));
    assert!(
        dropped.contains("ERROR") && dropped.contains("output=stdout"),
        "{dropped}"
    );
    assert!(first.contains("stopping: detaching probes"), "{first}");
    assert!(
        first.contains("the output did not take the waiting signals"),
        "{first}"
    );
    let seen: Vec<String> = read_signals(work.path())
        .iter()
        .map(|s| s["new_value"]["value"].as_str().unwrap().to_string())
        .collect();
    let ycat = work.path().join("bin/ycat").display().to_string();
    let second = std::fs::read_to_string(work.path().join("agent2.log")).unwrap();
    assert_eq!(seen, [ycat], "{second}");
}

#[test]
#[ignore = "needs root: BPF and mounts (./run-tests runs it)"]
fn a_remote_output_down_is_reported_and_its_spool_delivered_after_kill_9() {
    let work = scenario(REMOTE_OUTPUT_DOWN, &["k8s-sa-token"]);
    let read = |name: &str| std::fs::read_to_string(work.path().join(name)).unwrap();
    let readyz = read("readyz");
    let url = read("url");
    assert!(readyz.contains(" 503 "), "{readyz}");
    assert!(
        readyz.contains(&format!("output {} failing for", url.trim())),
        "{readyz}"
    );
    assert_eq!(read("spooled").trim(), "1");
    assert_eq!(read("delivered").trim(), "1");
    let signals = read_signals(work.path());
    assert_eq!(signals.len(), 1);
    // The signal the file got before the kill is the one the receiver got after the restart.
    let received: Vec<serde_json::Value> = read("received")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(received, signals);
    assert!(read("agent2.log").contains("delivered first"));
}

/// (rule, exe, path, canonical path) of each signal, sorted.
fn signal_summary(signals: &[serde_json::Value]) -> Vec<(String, String, String, String)> {
    let mut seen: Vec<_> = signals
        .iter()
        .map(|s| {
            let file = &s["event"]["file"];
            assert_eq!(s["new_value"]["value"], s["event"]["process"]["exe"]);
            (
                s["rule"].as_str().unwrap().to_string(),
                s["event"]["process"]["exe"].as_str().unwrap().to_string(),
                file["path"].as_str().unwrap().to_string(),
                file["canonical_path"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    seen.sort();
    seen
}

#[test]
#[ignore = "needs root: BPF and mounts (./run-tests runs it)"]
fn a_token_reached_by_another_path_or_name_raises_one_signal_per_rule() {
    let work = scenario(OTHER_NAMES, &["eks-token", "k8s-sa-token"]);
    let log = std::fs::read_to_string(work.path().join("agent.log")).unwrap();
    let signals = read_signals(work.path());
    let bin = |name: &str| work.path().join("bin").join(name).display().to_string();
    let w = work.path().display().to_string();
    let stamp = "..2026_11_22_10_00_00.000000001";
    let k8s = format!("/run/secrets/kubernetes.io/serviceaccount/{stamp}/token");
    let eks = format!("/run/secrets/eks.amazonaws.com/serviceaccount/{stamp}/token");
    let sa = "/run/secrets/kubernetes.io/serviceaccount";
    let esa = "/run/secrets/eks.amazonaws.com/serviceaccount";
    let row = |rule: &str, exe: &str, path: String, canonical: &str| {
        (rule.to_string(), bin(exe), path, canonical.to_string())
    };
    let mut expected = vec![
        row(
            "k8s-sa-token",
            "bcat",
            format!("{w}/mnt/k8s/{stamp}/token"),
            &k8s,
        ),
        row(
            "eks-token",
            "bcat",
            format!("{w}/mnt/eks/{stamp}/token"),
            &eks,
        ),
        row("k8s-sa-token", "fcat", format!("{w}/creds-k8s"), &k8s),
        row("eks-token", "fcat", format!("{w}/creds-eks"), &eks),
        row("k8s-sa-token", "lcat", format!("{sa}/.cache/blob"), &k8s),
        row("eks-token", "lcat", format!("{esa}/.cache/blob"), &eks),
        row(
            "k8s-sa-token",
            "cperl",
            format!("/kubernetes.io/serviceaccount/{stamp}/token"),
            &k8s,
        ),
        row(
            "eks-token",
            "cperl",
            format!("/eks.amazonaws.com/serviceaccount/{stamp}/token"),
            &eks,
        ),
    ];
    // open_by_handle_at: the kernel picks one of the file's names, either is right.
    let handles: Vec<_> = signal_summary(&signals)
        .into_iter()
        .filter(|(_, exe, _, _)| *exe == bin("hperl"))
        .collect();
    for (rule, path, canonical) in [
        ("k8s-sa-token", format!("{sa}/.cache/blob"), &k8s),
        ("eks-token", format!("{esa}/.cache/blob"), &eks),
    ] {
        let got = handles
            .iter()
            .find(|(r, ..)| r == rule)
            .unwrap_or_else(|| panic!("no {rule} signal for open_by_handle_at: {handles:?}"));
        assert!(got.2 == path || got.2 == *canonical, "{got:?}");
        expected.push(row(rule, "hperl", got.2.clone(), canonical));
    }
    expected.sort();
    assert_eq!(signal_summary(&signals), expected, "agent log:\n{log}");
    for signal in &signals {
        let file = &signal["event"]["file"];
        assert_eq!(file["access"], "read");
        assert!(file["dev"].as_u64().is_some() && file["ino"].as_u64().is_some());
    }
}

#[test]
#[ignore = "needs root: BPF and mounts (./run-tests runs it)"]
fn a_rotated_token_is_followed_and_the_old_one_stays_known() {
    let work = scenario(ROTATION, &["k8s-sa-token"]);
    let log = std::fs::read_to_string(work.path().join("agent.log")).unwrap();
    let bin = |name: &str| work.path().join("bin").join(name).display().to_string();
    let sa = "/run/secrets/kubernetes.io/serviceaccount";
    let row = |exe: &str, path: String, canonical: String| {
        ("k8s-sa-token".to_string(), bin(exe), path, canonical)
    };
    let expected = vec![
        row(
            "lcat",
            format!("{sa}/.cache/new"),
            format!("{sa}/..2026_11_22_11_00_00.000000002/token"),
        ),
        row(
            "ocat",
            format!("{sa}/.cache/old"),
            format!("{sa}/..2026_11_22_10_00_00.000000001/token"),
        ),
    ];
    assert_eq!(
        signal_summary(&read_signals(work.path())),
        expected,
        "agent log:\n{log}"
    );
}

/// The state the agent left in `work/state` remembers what it learned: `picket replay` on it,
/// with `rules`, knows the readers of `signals`. In an order an empty state would fail: first
/// an unfamiliar reader of each signal's file (with the learned state it raises a signal; with
/// none it would be learned silently, as its group's first value), then each signal's own
/// reader again (known: nothing).
fn assert_state_remembers(work: &Path, rules: &[&str], signals: &[serde_json::Value]) {
    let state = work.join("state");
    assert!(
        state.join("state.redb").is_file(),
        "no state file in {}",
        state.display()
    );
    let dir = work.join("replay-rules");
    std::fs::create_dir(&dir).unwrap();
    for rule in rules {
        let file = format!("{}.wasm", rule.replace('-', "_"));
        std::fs::copy(rule_wasm(rule), dir.join(file)).unwrap();
    }
    let unfamiliar = "/nonexistent/unfamiliar-reader";
    let mut events: Vec<String> = signals
        .iter()
        .map(|signal| {
            let mut event = signal["event"].clone();
            event["process"]["exe"] = unfamiliar.into();
            event.to_string()
        })
        .collect();
    events.extend(signals.iter().map(|signal| signal["event"].to_string()));
    let replayed = support::run(
        support::picket()
            .args(["replay", "--learning-period", "0s", "--rules"])
            .arg(&dir)
            .arg("--state")
            .arg(&state)
            .arg("-"),
        &(events.join("\n") + "\n"),
    );
    assert_eq!(replayed.code, Some(0), "{}", replayed.stderr);
    assert!(
        replayed.stderr.contains("learned state restored"),
        "{}",
        replayed.stderr
    );
    let mut seen: Vec<(String, String)> = replayed
        .signals()
        .iter()
        .map(|s| {
            (
                s["rule"].as_str().unwrap().to_string(),
                s["new_value"]["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    let mut expected: Vec<(String, String)> = signals
        .iter()
        .map(|s| (s["rule"].as_str().unwrap().to_string(), unfamiliar.into()))
        .collect();
    expected.sort();
    expected.dedup();
    assert_eq!(seen, expected, "{}", replayed.stderr);
}

/// A running agent in a fleet: its learned state seen and edited through its control socket
/// while it runs, and its signals confirmed by the store.
const LIVE_STATE: &str = r#"
start_agent "$WORK/agent.log"
wait_for "$WORK/agent.log" "joined the fleet"
node=$(cat /proc/sys/kernel/hostname)
cat "$K8S" >/dev/null                      # the host group's baseline
# Approved while the agent runs: through its control socket (it holds the state file).
"$PICKET" state allow --state "$WORK/state" k8s-sa-token "$node" "$WORK/bin/ycat" 2>"$WORK/allow.log"
"$WORK/bin/ycat" "$K8S" >/dev/null         # approved: nothing
"$WORK/bin/xcat" "$K8S" >/dev/null         # unfamiliar: one signal, confirmed by the fleet
signals 1
"$PICKET" state show --state "$WORK/state" --rule k8s-sa-token >"$WORK/shown.jsonl"
kill -TERM $agent
wait $agent
"#;

#[test]
#[ignore = "needs root: BPF and mounts (./run-tests runs it)"]
fn a_running_agent_in_a_fleet_is_seen_and_edited_through_its_control_socket() {
    let server = support::redis::RedisServer::start();
    // The agent reads the store's URL from the environment, as the DaemonSet passes it.
    let url = server.url();
    let work = scenario_with(
        LIVE_STATE,
        &["k8s-sa-token"],
        &[("PICKET_SHARED_STATE", url.as_str())],
    );
    let xcat = work.path().join("bin/xcat").display().to_string();
    let ycat = work.path().join("bin/ycat").display().to_string();
    // `allow` approved ycat's path (the state process.exe); the rules also learn a reader's
    // content and parent, in states of their own, which may still raise for it.
    let signals: Vec<serde_json::Value> = read_signals(work.path())
        .into_iter()
        .filter(|s| s["new_value"]["field"] == "process.exe")
        .collect();
    let raised: Vec<&str> = signals
        .iter()
        .map(|s| s["new_value"]["value"].as_str().unwrap())
        .collect();
    assert_eq!(raised, [xcat.as_str()]);
    assert_eq!(signals[0]["fleet"]["confirmed"], true, "{}", signals[0]);
    let allow = std::fs::read_to_string(work.path().join("allow.log")).unwrap();
    assert!(allow.contains("allowed"), "{allow}");
    let shown = std::fs::read_to_string(work.path().join("shown.jsonl")).unwrap();
    let group: serde_json::Value = shown
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|group| group["state"] == "process.exe")
        .unwrap_or_else(|| panic!("no process.exe group shown:\n{shown}"));
    assert_eq!(group["rule"], "k8s-sa-token");
    assert_eq!(group["status"], "detecting", "{group}");
    let values: Vec<&str> = group["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["value"].as_str().unwrap())
        .collect();
    assert!(
        values.contains(&ycat.as_str()) && values.contains(&xcat.as_str()),
        "{shown}"
    );
}

#[test]
#[ignore = "needs root: BPF and mounts (./run-tests runs it)"]
fn a_familiar_name_in_an_unfamiliar_chain_or_with_other_contents_is_caught() {
    let swapper = workspace_binary("picket-test-reader", "exe-swapper");
    let work = scenario_with(LINEAGE, &["k8s-sa-token"], &[("EXE_SWAPPER", &swapper)]);
    let dir = work.path();
    let log = std::fs::read_to_string(dir.join("agent.log")).unwrap();
    let bin = |name: &str| dir.join("bin").join(name).display().to_string();
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .unwrap()
            .trim()
            .to_string()
    };
    let signals = read_signals(dir);
    let seen: Vec<(&str, &str)> = signals
        .iter()
        .map(|s| {
            (
                s["new_value"]["field"].as_str().unwrap(),
                s["new_value"]["value"].as_str().unwrap(),
            )
        })
        .collect();
    let interp = bin("interp");
    assert_eq!(
        seen,
        [
            (
                "process.parent.exe",
                format!("{interp} <- {}", bin("shell")).as_str()
            ),
            (
                "process.exe_digest",
                format!("{interp} sha256:{}", read("interp.sha256")).as_str()
            ),
            ("process.exe", bin("orphan").as_str()),
            ("process.exe_swapped_to", interp.as_str()),
        ],
        "agent log:\n{log}"
    );
    for signal in &signals {
        let process = &signal["event"]["process"];
        assert_eq!(process["euid"], 0, "{signal}");
        assert!(process["parent"]["exe"].is_string(), "{signal}");
    }
    // The orphan's parent had exited (it was re-parented: ppid is no longer the app's), and is
    // still its parent, with the app's own parent after it.
    let orphan = &signals[2]["event"]["process"];
    assert_eq!(orphan["parent"]["exe"], bin("app").as_str());
    assert_ne!(orphan["parent"]["pid"], orphan["ppid"]);
    assert!(orphan["ancestors"][0]["exe"].is_string(), "{orphan}");
    assert_eq!(orphan["args"][0], bin("orphan").as_str());
    // The interpreter run from the shell: the shell and its command line.
    let from_shell = &signals[0]["event"]["process"];
    assert_eq!(from_shell["parent"]["args"][0], bin("shell").as_str());
    // The swapper is what it exec'd, the loader, and says what it passed for.
    let swapped = &signals[3]["event"]["process"];
    assert_eq!(swapped["exe"], read("loader").as_str());
    assert_eq!(swapped["exe_swapped_to"], interp.as_str());
}

/// `GET path` on the agent's endpoint; the whole response.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// Starts `picket run --listen 127.0.0.1:0` on the bundled k8s-sa-token rule with `env`; returns
/// the agent and the address it serves on (from its log).
fn agent_with_endpoint(work: &Path, env: &[(&str, &str)]) -> (support::Streaming, String) {
    let rules = work.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::copy(rule_wasm("k8s-sa-token"), rules.join("k8s_sa_token.wasm")).unwrap();
    let mut command = support::picket();
    command
        .arg("run")
        .arg("--rules")
        .arg(&rules)
        .arg("--state")
        .arg(work.join("state"))
        .args(["--listen", "127.0.0.1:0"]);
    for (name, value) in env {
        command.env(name, value);
    }
    let agent = support::Streaming::spawn(&mut command);
    let serving = "serving /healthz, /readyz and /metrics";
    assert!(
        agent.wait_for_log(serving, std::time::Duration::from_secs(60)),
        "{}",
        agent.stderr()
    );
    let log = agent.stderr();
    let addr = log
        .lines()
        .find(|l| l.contains(serving))
        .and_then(|l| l.split("address=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {log}"))
        .to_string();
    (agent, addr)
}

/// SIGTERM, as the kubelet stops a pod; the exit code and the log.
fn terminate(agent: support::Streaming) -> (Option<i32>, String) {
    let status = Command::new("kill")
        .args(["-TERM", &agent.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (code, _, log) = agent.finish();
    (code, log)
}

/// After attaching, the hook must report the agent's canary open before it is ready; the canary
/// goes to no rule.
#[test]
#[ignore = "needs root: BPF and mounts (./run-tests runs it)"]
fn the_hook_is_proven_by_the_canary_before_the_agent_is_ready() {
    require_root("the canary test");
    let work = temp_dir();
    let (agent, addr) = agent_with_endpoint(work.path(), &[]);
    assert!(
        agent.wait_for_log("agent ready", std::time::Duration::from_secs(60)),
        "{}",
        agent.stderr()
    );
    let log = agent.stderr();
    let proven = log
        .find("the kernel hook reported the canary open")
        .unwrap_or_else(|| panic!("{log}"));
    assert!(proven < log.find("agent ready").unwrap(), "{log}");
    assert!(http_get(&addr, "/readyz").starts_with("HTTP/1.1 200"));
    let metrics = http_get(&addr, "/metrics");
    assert!(metrics.contains("\npicket_probe_blind 0\n"), "{metrics}");
    assert!(metrics.contains("\npicket_ready 1\n"), "{metrics}");
    assert!(
        work.path().join("state/picket-canary").is_file(),
        "the canary is in the state directory"
    );
    let (code, log) = terminate(agent);
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("blind"), "{log}");
}

/// A hook that attaches but reports nothing (the probes' measurement mode that stops the open
/// programs at once, `PICKET_PROBES_STOP_AFTER=0`, stands for a hook that an inactive LSM or a
/// confinement blinds): the agent says it is blind, `/readyz` fails and the metrics say so,
/// while it stays alive and stops cleanly.
#[test]
#[ignore = "needs root: BPF and mounts (./run-tests runs it)"]
fn a_blind_hook_is_never_ready_and_says_so() {
    require_root("the blind hook test");
    let work = temp_dir();
    let (agent, addr) = agent_with_endpoint(work.path(), &[("PICKET_PROBES_STOP_AFTER", "0")]);
    assert!(
        agent.wait_for_log(
            "blind: no kernel hook reported the canary open",
            std::time::Duration::from_secs(120)
        ),
        "{}",
        agent.stderr()
    );
    let readyz = http_get(&addr, "/readyz");
    assert!(readyz.starts_with("HTTP/1.1 503"), "{readyz}");
    assert!(readyz.contains("blind"), "{readyz}");
    assert!(http_get(&addr, "/healthz").starts_with("HTTP/1.1 200"));
    let metrics = http_get(&addr, "/metrics");
    assert!(metrics.contains("\npicket_probe_blind 1\n"), "{metrics}");
    assert!(metrics.contains("\npicket_ready 0\n"), "{metrics}");
    let (code, log) = terminate(agent);
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("did not report the canary open within"),
        "the warning names the strategy that failed: {log}"
    );
}
