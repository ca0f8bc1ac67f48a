#!/usr/bin/env bash
# Measures what file-open monitoring adds to open()+close() and getppid(), side by side in one
# session: no monitoring, the picket agent (`picket run` with the bundled rules), picket's probes
# alone, an auditd watch rule and a bpftrace one-liner.
# Conditions are interleaved over several passes so that drift of the machine hits them all alike.
#
#   sudo probes/bench.sh [passes]            (default 5 passes; needs root, auditctl, bpftrace)
#   STAGES=1 sudo probes/bench.sh            (also the prefilter cut after each step)
#   IDENTITIES=1 sudo probes/bench.sh        (also the probes with 200 files approved by identity)
#
# Builds the examples in release mode into $CARGO_TARGET_DIR (default: the workspace's target/).
set -euo pipefail

passes=${1:-5}
here=$(cd "$(dirname "$0")" && pwd)
cargo build --release -p picket-probes --examples --manifest-path "$here/Cargo.toml" >&2
cargo build --release -p picket --manifest-path "$here/../Cargo.toml" >&2
cargo build --release --target wasm32-unknown-unknown -p eks-token -p k8s-sa-token \
    --manifest-path "$here/../Cargo.toml" >&2
target=${CARGO_TARGET_DIR:-$here/../target}
bin=$target/release/examples
work=$(mktemp -d /tmp/picket-bench.XXXXXX)
mkdir -p "$work/rules"
cp "$target"/wasm32-unknown-unknown/release/{eks_token,k8s_sa_token}.wasm "$work/rules/"
token=$work/token
echo secret > "$token"
results=$work/results.tsv
monitor_pid=

cleanup() {
  if [[ -n $monitor_pid ]]; then kill -INT "$monitor_pid" 2>/dev/null || true; wait "$monitor_pid" 2>/dev/null || true; fi
  auditctl -W "$token" -p r >/dev/null 2>&1 || true
  if [[ -n ${audit_was:-} ]]; then auditctl -e "$audit_was" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

audit_was=$(auditctl -s 2>/dev/null | awk '/^enabled/ {print $2}' || true)

wait_for() { # file pattern
  for _ in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "monitor did not start: $(cat "$1")" >&2; return 1
}

start() { # condition
  monitor_pid=
  case $1 in
    none) ;;
    agent) taskset -c 0 "$target/release/picket" run --rules "$work/rules" --state "$work/state" \
               >"$work/agent.out" 2>"$work/agent.log" &
           monitor_pid=$!; wait_for "$work/agent.log" "agent ready" ;;
    probes) taskset -c 0 "$bin/probe-dump" --basename token >"$work/probes.log" 2>&1 &
            monitor_pid=$!; wait_for "$work/probes.log" "attached with strategy" ;;
    identities) taskset -c 0 "$bin/probe-dump" --basename token "${identity_args[@]}" >"$work/probes.log" 2>&1 &
                monitor_pid=$!; wait_for "$work/probes.log" "attached with strategy" ;;
    stage*) PICKET_PROBES_STOP_AFTER=${1#stage} taskset -c 0 "$bin/probe-dump" --basename token >"$work/probes.log" 2>&1 &
            monitor_pid=$!; wait_for "$work/probes.log" "attached with strategy" ;;
    auditd) auditctl -e 1 >/dev/null; auditctl -w "$token" -p r >/dev/null ;;
    bpftrace) taskset -c 0 bpftrace -e 'tracepoint:syscalls:sys_exit_openat { @opens = count(); }' >"$work/bpftrace.log" 2>&1 &
              monitor_pid=$!; wait_for "$work/bpftrace.log" "Attaching" ; sleep 0.5 ;;
  esac
}

stop() { # condition
  case $1 in
    auditd) auditctl -W "$token" -p r >/dev/null; auditctl -e "${audit_was:-0}" >/dev/null ;;
  esac
  if [[ -n $monitor_pid ]]; then kill -INT "$monitor_pid"; wait "$monitor_pid" 2>/dev/null || true; monitor_pid=; fi
}

conditions=(none agent probes auditd bpftrace)
if [[ -n ${STAGES:-} ]]; then conditions+=(stage0 stage1 stage2 stage3); fi
# Files approved by identity (none of them the benchmark's): what the inode-bitmap check costs
# an unwatched open.
identity_args=()
if [[ -n ${IDENTITIES:-} ]]; then
  conditions+=(identities)
  mkdir -p "$work/ids"
  for i in $(seq 200); do echo x > "$work/ids/f$i"; identity_args+=(--identity "$work/ids/f$i"); done
fi

for pass in $(seq "$passes"); do
  for c in "${conditions[@]}"; do
    start "$c"
    for mode in open open-samelen getppid; do
      iters=200000; [[ $mode == getppid ]] && iters=2000000
      line=$(taskset -c 1 "$bin/syscall-bench" "$mode" --iters $iters --rounds 7)
      ns=$(sed -E 's/.*median_ns_per_op=([0-9.]+).*/\1/' <<<"$line")
      printf '%s\t%s\t%s\t%s\n' "$pass" "$c" "$mode" "$ns" >>"$results"
    done
    stop "$c"
  done
  echo "pass $pass done" >&2
done

python3 - "$results" <<'EOF'
import sys, statistics, collections
rows = [l.split('\t') for l in open(sys.argv[1]).read().split('\n') if l]
ns = collections.defaultdict(list)
for _, cond, mode, v in rows:
    ns[(cond, mode)].append(float(v))
modes = ['open', 'open-samelen', 'getppid']
conds = list(dict.fromkeys(c for _, c, _, _ in rows))
print('condition'.ljust(10), *(f'{m:>22}' for m in modes))
for c in conds:
    cells = []
    for m in modes:
        med = statistics.median(ns[(c, m)])
        base = statistics.median(ns[('none', m)])
        cells.append(f'{med:8.1f} ns {med / base:5.3f}x'.rjust(22))
    print(c.ljust(10), *cells)
EOF
echo "raw results: $results" >&2
