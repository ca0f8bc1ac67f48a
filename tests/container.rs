//! The OCI image under podman, run exactly as the DaemonSet of the Helm chart
//! (`deploy/helm/picket`, rendered by `helm template` with its default values) declares
//! (its args, env, security context, hostPID and volumes, translated by
//! `tests/container/podman_args.py`), next to a fake "pod": a containerd-style bundle whose
//! `config.json` annotates the pod, a process in that container's cgroup and in a mount namespace
//! of its own with the kubelet's token layout and its own `/etc/passwd`. A renamed reader of the
//! token there must give a signal naming the pod, the container, the image and the user, and the
//! health, readiness and metrics endpoints must answer with counters that follow the events.
//!
//! Needs root, podman and the image: `#[ignore]`d, so a plain `cargo test` reports it ignored.
//! `./run-tests` builds the image (`deploy/build-image`) before its one `cargo test`, sets
//! `PICKET_TEST_IMAGE`, and runs it with `--include-ignored`; anything missing then fails it.

mod support;

use std::path::Path;
use std::process::Command;
use support::{is_root, temp_dir, workspace};

/// The fake container's id, as its cgroup leaf and bundle directory name carry it.
const ID: &str = "5ca1ab1e0ddba11c0ffee0000000000000000000000000000000000000c0ffee";
const POD_NAME: &str = "payments-api-7d9f8-x2x4q";
const POD_NAMESPACE: &str = "payments";
const POD_UID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
const CONTAINER_NAME: &str = "api";
const IMAGE: &str = "registry.example/payments-api:2.7.1";
/// The group the bundled rules learn `IMAGE`'s readers in: its repository.
const IMAGE_REPOSITORY: &str = "registry.example/payments-api";

const SCENARIO: &str = r#"
set -eu
node="$WORK/node"
# The node's directory tree is a shared mount, as / is on a systemd node, so that the DaemonSet's
# HostToContainer (rslave) mount of the kubelet's pod volumes can follow mounts made later.
mkdir -p "$node/var/lib/kubelet/pods"
mount --bind "$node" "$node" && mount --make-rshared "$node"
ulimits="--ulimit nofile=$(ulimit -Hn):$(ulimit -Hn) --ulimit nproc=4096:4096"

# The node's kernel interfaces, mounted in this private namespace when the machine has none (as
# systemd does at boot on a real node).
[ -d /sys/kernel/tracing/events ] || mount -t tracefs nodev /sys/kernel/tracing
mountpoint -q /sys/kernel/security || mount -t securityfs nodev /sys/kernel/security

# containerd's bundle for the pod's container, with the CRI plugin's annotations.
bundle="$node/run/containerd/io.containerd.runtime.v2.task/k8s.io/$ID"
mkdir -p "$bundle"
cat > "$bundle/config.json" <<JSON
{"ociVersion": "1.1.0", "process": {"args": ["/app"]},
 "annotations": {"io.kubernetes.cri.container-type": "container",
  "io.kubernetes.cri.container-name": "$CONTAINER_NAME",
  "io.kubernetes.cri.image-name": "$IMAGE",
  "io.kubernetes.cri.sandbox-id": "feedface",
  "io.kubernetes.cri.sandbox-name": "$POD_NAME",
  "io.kubernetes.cri.sandbox-namespace": "$POD_NAMESPACE",
  "io.kubernetes.cri.sandbox-uid": "$POD_UID"}}
JSON

# The container's cgroup: a leaf named as containerd's systemd driver names it.
cgroot=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)
[ -n "$cgroot" ] || { echo "no cgroup v2 hierarchy" >&2; exit 3; }
cgparent="$cgroot/picket-container-test-$$"
cgroup="$cgparent/cri-containerd-$ID.scope"
mkdir -p "$cgroup"
cleanup() {
    podman rm -f -t 0 "$name" >/dev/null 2>&1 || true
    for pid in $(cat "$cgroup/cgroup.procs" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
    sleep 0.2
    rmdir "$cgroup" "$cgparent" 2>/dev/null || true
}
name="picket-test-$$"
trap cleanup EXIT

# The agent, as the chart's DaemonSet declares it; the learning period is the one deviation, so that
# the second reader raises a signal without waiting a week.
# What the image says it is (its OCI labels).
podman image inspect --format '{{json .Labels}}' "$IMAGE_UNDER_TEST" > "$WORK/labels.json"

# Signed rules, as the README's recipe deploys them: a key pair, each module signed, the rules
# ConfigMap with the signatures (deploy/rules-configmap), the public key in a ConfigMap of its
# own (kubectl), and the chart told to mount it and trust it.
minisign -G -W -p "$WORK/rules.pub" -s "$WORK/rules.key" > /dev/null
mkdir -p "$WORK/rules"
cp "$RULES_BUILT/eks_token.wasm" "$RULES_BUILT/k8s_sa_token.wasm" "$WORK/rules/"
for module in "$WORK"/rules/*.wasm; do
    file=$(basename "$module"); id=$(basename "$module" .wasm | tr _ -)
    minisign -S -s "$WORK/rules.key" -m "$module" -t "picket-rule file:$file id:$id version:1" > /dev/null
done
"$RULES_CONFIGMAP" "$WORK"/rules/*.wasm > "$WORK/rules-configmap.yaml"
(cd "$WORK" && "$KUBECTL" -n picket create configmap picket-trusted-keys --from-file=rules.pub \
    --dry-run=client -o yaml > "$WORK/keys-configmap.yaml")
"$HELM" template picket "$CHART" --namespace picket \
    --set trustedKeys.configMap=picket-trusted-keys --set 'trustedKeys.files={rules.pub}' \
    > "$WORK/chart.yaml"
# The chart's settings go to the agent in its config file (the picket-config ConfigMap).
grep -q -- '- /etc/picket/keys/rules.pub' "$WORK/chart.yaml" \
    || { echo "the chart did not pass the trusted key" >&2; exit 6; }
"$PYTHON" "$TRANSLATOR" --daemonset "$WORK/chart.yaml" --configmap "$WORK/rules-configmap.yaml" \
    --configmap "$WORK/keys-configmap.yaml" --configmap "$WORK/chart.yaml" --node "$node" \
    --image "$IMAGE_UNDER_TEST" --node-name test-node --extra-arg=--learning-period=0s \
    > "$WORK/podman-args"
mapfile -t args < "$WORK/podman-args"
podman run --rm --name "$name" --runtime runc $ulimits "${args[@]}" \
    > "$WORK/signals.jsonl" 2> "$WORK/agent.log" &
podman_pid=$!

# get PATH FILE: GET the agent's endpoint inside the pod's network namespace; prints the status.
get() {
    nsenter --net="/proc/$cpid/ns/net" curl -sS -o "$2" -w '%{http_code}' "http://127.0.0.1:9464$1"
}
cpid=
for _ in $(seq 300); do
    cpid=$(podman inspect -f '{{.State.Pid}}' "$name" 2>/dev/null || true)
    if [ -n "$cpid" ] && [ "$cpid" != 0 ] && [ "$(get /readyz "$WORK/readyz" 2>/dev/null)" = 200 ]; then
        break
    fi
    kill -0 $podman_pid 2>/dev/null || { echo "the agent's container exited" >&2; exit 4; }
    sleep 0.1
done
get /readyz "$WORK/readyz" > "$WORK/readyz.status"
get /healthz "$WORK/healthz" > "$WORK/healthz.status"
get /metrics "$WORK/metrics.before" > /dev/null

# The kubelet starts the pod after the agent: the pod's projected token volume, a tmpfs in the
# kubelet's pods directory with the atomic writer's layout, and a hard link to the token under
# another name in it. The agent must find the token there (through the HostToContainer mount)
# before the pod reads it.
vol="$node/var/lib/kubelet/pods/$POD_UID/volumes/kubernetes.io~projected/kube-api-access-x2x4q"
stamp=..2026_11_24_10_00_00.000000001
mkdir -p "$vol" && mount -t tmpfs pod-sa "$vol"
mkdir "$vol/$stamp" && echo "token-of-the-pod" > "$vol/$stamp/token" && chmod 0644 "$vol/$stamp/token"
ln -s "$stamp" "$vol/..data" && ln -s ..data/token "$vol/token"
mkdir "$vol/.cache" && ln "$vol/$stamp/token" "$vol/.cache/blob"
for _ in $(seq 300); do
    grep -q "kube-api-access-x2x4q/$stamp/token" "$WORK/agent.log" && break
    sleep 0.1
done
grep -q "kube-api-access-x2x4q/$stamp/token" "$WORK/agent.log" \
    || { echo "the agent did not find the pod's token in the kubelet's directory" >&2; exit 5; }

# The pod: its own mount namespace with the kubelet's volume at the token's place and its
# image's passwd, its processes in the container's cgroup. A long-lived main process, a known
# reader (root, as the image's entrypoint would), then a renamed reader as the image's user
# 4242, then another reading the token through its hard link.
cat > "$WORK/pod.sh" <<'POD'
set -eu
mount -t tmpfs pod-run /run
sa=/run/secrets/kubernetes.io/serviceaccount
mkdir -p "$sa" && mount --bind "$VOL" "$sa"
printf 'root:x:0:0:root:/root:/bin/sh\npicket-app:x:4242:4242::/home/app:/bin/sh\n' > /run/passwd
mount --bind /run/passwd /etc/passwd
echo $$ > "$CGROUP/cgroup.procs"
exec sh -c '
    sleep 300 &
    # The known reader first; opens reach the agent in order, so it is learned before the next.
    cat /var/run/secrets/kubernetes.io/serviceaccount/token > /dev/null
    setpriv --reuid=4242 --regid=4242 --clear-groups \
        "$WORK/bin/xcat" /var/run/secrets/kubernetes.io/serviceaccount/token > /dev/null
    "$WORK/bin/ycat" /var/run/secrets/kubernetes.io/serviceaccount/.cache/blob > /dev/null
    for _ in $(seq 100); do [ "$(grep -c . "$WORK/signals.jsonl")" -ge 2 ] && break; sleep 0.1; done
    kill $!
'
POD
mkdir -p "$WORK/bin" && cp "$(command -v cat)" "$WORK/bin/xcat" && cp "$(command -v cat)" "$WORK/bin/ycat"
chmod 0755 "$WORK" "$WORK/bin"
VOL="$vol" CGROUP="$cgroup" unshare --mount --propagation private sh "$WORK/pod.sh"
# Until the learned values are counted (at each save, every 200 ms; 10 s at most): the test
# then checks every counter, with the whole text if one did not move.
learned='^picket_learned_values\{rule="k8s-sa-token"\} ([3-9]|[1-9][0-9]+)$'
for _ in $(seq 100); do
    get /metrics "$WORK/metrics.after" > "$WORK/metrics.status"
    grep -Eq "$learned" "$WORK/metrics.after" && break
    sleep 0.1
done
get /healthz "$WORK/healthz.after" > "$WORK/healthz.after.status"

# What the agent used, for the DaemonSet's requests and limits (BENCHMARKS.md).
grep -E '^(VmHWM|VmRSS):' "/proc/$cpid/status" > "$WORK/usage"
awk '{ print "cpu_ticks:", $14 + $15 }' "/proc/$cpid/stat" >> "$WORK/usage"
ps -o etimes= -p "$cpid" | awk '{ print "elapsed_s:", $1 }' >> "$WORK/usage"
podman stop -t 20 "$name" > /dev/null
wait $podman_pid
echo $? > "$WORK/agent.status"
"#;

/// Why the test cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    if !is_root() {
        return Some("needs root (BPF, mounts, cgroups, podman)".into());
    }
    if std::env::var_os("PICKET_TEST_IMAGE").is_none() {
        return Some(
            "PICKET_TEST_IMAGE is not set (./run-tests builds the image and sets it)".into(),
        );
    }
    for tool in [
        "podman", "runc", "nsenter", "curl", "setpriv", "unshare", "minisign",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!(
                "{tool} is not installed (dev/setup with PICKET_SETUP_CONTAINER=1)"
            ));
        }
    }
    None
}

/// The value of the sample `series` (name and labels as printed) in an OpenMetrics text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn read(work: &Path, name: &str) -> String {
    std::fs::read_to_string(work.join(name)).unwrap_or_default()
}

#[test]
#[ignore = "needs root, podman and PICKET_TEST_IMAGE (./run-tests builds the image and runs it)"]
fn the_image_run_as_the_daemonset_declares_names_the_pod_container_and_user() {
    if let Some(why) = unavailable() {
        panic!("the container test cannot run: {why}");
    }
    let image = std::env::var("PICKET_TEST_IMAGE").unwrap();
    // The bundled rules as deploy/build-image built them, to sign.
    let rules_built = workspace().join("target/wasm32-unknown-unknown/release");
    assert!(
        rules_built.join("k8s_sa_token.wasm").is_file(),
        "no rule modules in {} (deploy/build-image builds them)",
        rules_built.display()
    );
    let venv = std::env::var("PICKET_K8S_VENV").expect("PICKET_K8S_VENV (set by dev/setup)");
    let helm = std::env::var("PICKET_HELM").expect("PICKET_HELM (set by dev/setup)");
    let kubectl = std::env::var("PICKET_KUBECTL").expect("PICKET_KUBECTL (set by dev/setup)");
    let work = temp_dir();
    let output = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "bash",
            "-c",
            SCENARIO,
        ])
        .env("WORK", work.path())
        .env("ID", ID)
        .env("POD_NAME", POD_NAME)
        .env("POD_NAMESPACE", POD_NAMESPACE)
        .env("POD_UID", POD_UID)
        .env("CONTAINER_NAME", CONTAINER_NAME)
        .env("IMAGE", IMAGE)
        .env("IMAGE_UNDER_TEST", &image)
        // A python with PyYAML (the kubernetes-validate venv) runs the translator.
        .env("PYTHON", Path::new(&venv).join("bin/python"))
        .env(
            "TRANSLATOR",
            workspace().join("tests/container/podman_args.py"),
        )
        .env("HELM", &helm)
        .env("CHART", workspace().join("deploy/helm/picket"))
        .env("KUBECTL", &kubectl)
        .env("RULES_BUILT", &rules_built)
        .env(
            "RULES_CONFIGMAP",
            workspace().join("deploy/rules-configmap"),
        )
        .output()
        .expect("running unshare");
    let log = read(work.path(), "agent.log");
    assert!(
        output.status.success(),
        "scenario failed ({}):\n{}\npodman args:\n{}\nagent log:\n{log}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        read(work.path(), "podman-args"),
    );
    let context = format!("agent log:\n{log}");

    // The image's OCI labels: what it is, from which commit, under which license.
    let labels: serde_json::Value =
        serde_json::from_str(&read(work.path(), "labels.json")).expect("labels.json");
    let label = |name: &str| labels[format!("org.opencontainers.image.{name}")].clone();
    assert_eq!(label("title"), "picket", "{labels:#}");
    assert_eq!(label("version"), env!("CARGO_PKG_VERSION"), "{labels:#}");
    assert_eq!(label("licenses"), "Apache-2.0", "{labels:#}");
    assert!(
        label("revision")
            .as_str()
            .is_some_and(|r| r.len() >= 40 && r[..40].chars().all(|c| c.is_ascii_hexdigit())),
        "{labels:#}"
    );
    assert!(label("created").is_string(), "{labels:#}");
    assert!(label("source").is_string(), "{labels:#}");

    // The endpoints answered.
    assert_eq!(read(work.path(), "readyz.status"), "200", "{context}");
    assert_eq!(read(work.path(), "healthz.status"), "200", "{context}");
    assert_eq!(
        read(work.path(), "healthz.after.status"),
        "200",
        "{context}"
    );
    assert_eq!(read(work.path(), "metrics.status"), "200", "{context}");

    // Two signals from the pod's container (the machine's other processes may raise their own):
    // the renamed reader, naming everything the node knows about it, then the reader of the
    // token's hard link, known by the token's identity found in the kubelet's directory.
    let signals: Vec<serde_json::Value> = read(work.path(), "signals.jsonl")
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|e| panic!("{e}: {line}"))
        })
        .filter(|signal| signal["event"]["container"]["id"] == ID)
        .collect();
    assert_eq!(signals.len(), 2, "{signals:#?}\n{context}");
    let linked = &signals[1];
    let ycat = work.path().join("bin/ycat").display().to_string();
    assert_eq!(linked["rule"], "k8s-sa-token", "{linked:#}");
    assert_eq!(linked["new_value"]["value"], ycat.as_str(), "{linked:#}");
    assert_eq!(
        linked["event"]["file"]["path"], "/run/secrets/kubernetes.io/serviceaccount/.cache/blob",
        "{linked:#}"
    );
    assert_eq!(
        linked["event"]["file"]["canonical_path"],
        format!(
            "/var/lib/kubelet/pods/{POD_UID}/volumes/kubernetes.io~projected/\
             kube-api-access-x2x4q/..2026_11_24_10_00_00.000000001/token"
        )
        .as_str(),
        "{linked:#}"
    );
    let signal = &signals[0];
    let xcat = work.path().join("bin/xcat").display().to_string();
    assert_eq!(signal["rule"], "k8s-sa-token", "{signal:#}");
    assert_eq!(signal["new_value"]["value"], xcat.as_str(), "{signal:#}");
    assert_eq!(signal["new_value"]["group"], IMAGE_REPOSITORY, "{signal:#}");
    let event = &signal["event"];
    assert_eq!(
        event["pod"],
        serde_json::json!({"name": POD_NAME, "namespace": POD_NAMESPACE, "uid": POD_UID}),
        "{signal:#}"
    );
    assert_eq!(
        event["container"],
        serde_json::json!({"id": ID, "image": IMAGE, "name": CONTAINER_NAME}),
        "{signal:#}"
    );
    assert_eq!(event["process"]["uid"], 4242, "{signal:#}");
    assert_eq!(event["process"]["user"], "picket-app", "{signal:#}");
    assert_eq!(event["process"]["exe"], xcat.as_str(), "{signal:#}");
    assert_eq!(event["host"], "test-node", "{signal:#}");

    // The counters moved with the events.
    let before = read(work.path(), "metrics.before");
    let after = read(work.path(), "metrics.after");
    let opens = r#"picket_events_total{kind="open"}"#;
    let signals_k8s = r#"picket_signals_total{rule="k8s-sa-token"}"#;
    let evaluations = r#"picket_rule_evaluation_seconds_count{rule="k8s-sa-token"}"#;
    assert!(
        sample(&after, opens).unwrap_or(0.0) >= sample(&before, opens).unwrap_or(0.0) + 2.0,
        "before:\n{before}\nafter:\n{after}"
    );
    assert!(
        sample(&after, signals_k8s).unwrap_or(0.0)
            >= sample(&before, signals_k8s).unwrap_or(0.0) + 1.0,
        "before:\n{before}\nafter:\n{after}"
    );
    assert!(
        sample(&after, evaluations).unwrap_or(0.0)
            >= sample(&before, evaluations).unwrap_or(0.0) + 2.0,
        "before:\n{before}\nafter:\n{after}"
    );
    assert!(
        sample(&after, r#"picket_learned_values{rule="k8s-sa-token"}"#).unwrap_or(0.0) >= 3.0,
        "{after}"
    );
    assert!(
        after
            .lines()
            .any(|l| l.starts_with("picket_probe_strategy{") && l.ends_with(" 1")),
        "{after}"
    );
    assert!(after.contains("picket_build_info{version="), "{after}");
    eprintln!(
        "agent in the container used:\n{}",
        read(work.path(), "usage")
    );

    // Stopped by SIGTERM (podman stop, as the kubelet does): clean exit, state on the hostPath.
    assert_eq!(read(work.path(), "agent.status").trim(), "0", "{context}");
    assert!(log.contains("stopping: detaching probes"), "{context}");
    assert!(
        work.path().join("node/var/lib/picket/state.redb").is_file(),
        "no state on the hostPath; {context}"
    );
}
