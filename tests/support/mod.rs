//! Shared by the integration tests: builds the rule modules to wasm once, runs the real `picket`
//! binary, and writes events.
//!
//! Tests that need what a plain `cargo test` may not have (root for BPF and mounts, the QEMU
//! kernels, the container image) are marked `#[ignore = "needs root: ..."]` (the reason says
//! what is missing), so that such a run reports them *ignored*, never passed. `./run-tests` runs
//! them with `-- --include-ignored`; a requirement missing then fails the test, saying which
//! (see [`require_root`]). No other test is ignored, so that flag runs exactly these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("runtime/ sits in the workspace")
        .to_path_buf()
}

/// Every wasm package the tests load.
const WASM_PACKAGES: [&str; 9] = [
    "eks-token",
    "k8s-sa-token",
    "cloud-credentials",
    "kubelet-credentials",
    "hostile-loop",
    "hostile-memory",
    "hostile-panic",
    "hostile-flood",
    "hostile-state",
];

/// Builds the rule modules once per test binary and returns the directory holding them. Cargo's
/// own lock serializes test binaries that build at the same time.
pub fn wasm_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command.current_dir(workspace()).args([
            "build",
            "--release",
            "--target",
            "wasm32-unknown-unknown",
        ]);
        for package in WASM_PACKAGES {
            command.args(["-p", package]);
        }
        let status = command
            .status()
            .expect("running cargo to build the rule modules");
        assert!(status.success(), "building the rule modules to wasm failed");
        target_dir().join("wasm32-unknown-unknown/release")
    })
}

/// Builds binary `bin` of workspace package `package` (release) and returns its path. For
/// helpers the tests copy elsewhere (a QEMU guest); cargo's lock serializes concurrent builds.
pub fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace())
        .args(["build", "--release", "-p", package, "--bin", bin])
        .status()
        .expect("running cargo");
    assert!(status.success(), "building {package} failed");
    target_dir().join("release").join(bin)
}

/// Cargo's target directory.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// The module of a wasm package, such as `eks-token`.
pub fn rule_wasm(package: &str) -> PathBuf {
    let path = wasm_dir().join(format!("{}.wasm", package.replace('-', "_")));
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// A `picket` command.
pub fn picket() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_picket"));
    command.env("PICKET_LOG", "info");
    command
}

/// What a finished command printed.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The stdout lines parsed as JSON signals.
    pub fn signals(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }
}

/// Starts `command` with stdin, stdout and stderr piped.
fn spawn_piped(command: &mut Command) -> std::process::Child {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting picket")
}

/// Runs `command` to completion, with `stdin` as its input.
pub fn run(command: &mut Command, stdin: &str) -> Run {
    use std::io::Write;
    let mut child = spawn_piped(command);
    let mut input = child.stdin.take().expect("stdin");
    let text = stdin.to_string();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(text.as_bytes());
    });
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("waiting for picket");
    writer.join().expect("stdin writer");
    Run {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// A token-read event as one JSON line.
pub fn token_read(second: u32, exe: &str, path: &str) -> String {
    serde_json::json!({
        "ts": format!("2026-11-22T10:{:02}:{:02}Z", second / 60, second % 60),
        "kind": "open",
        "host": "node-a",
        "file": {"path": path, "access": "read"},
        "process": {"pid": 1000 + second, "exe": exe},
    })
    .to_string()
}

/// The Kubernetes token path.
pub const K8S_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The EKS token path.
pub const EKS_TOKEN: &str = "/var/run/secrets/eks.amazonaws.com/serviceaccount/token";

/// Whether the tests run as root (needed for BPF and for mounts in a private namespace).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|ids| ids.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Fails the test, saying why, unless it runs as root. For the tests marked
/// `#[ignore = "needs root: ..."]`: run with `--include-ignored`, they must not pass without
/// having run.
pub fn require_root(what: &str) {
    assert!(
        is_root(),
        "{what} needs root; run it as root (./run-tests does), or without --include-ignored"
    );
}

/// For the live benchmarks, which need their own mount namespace: in the process started by
/// `cargo bench`, re-runs this binary with `--inner` (and `--quick` if given) in a private mount
/// namespace, waits for it and returns `None`; in that child, returns `Some(quick)`. Without
/// root, says why it skips and returns `None`.
pub fn bench_in_private_mount_namespace(name: &str) -> Option<bool> {
    let quick = std::env::args().any(|a| a == "--quick");
    if std::env::args().any(|a| a == "--inner") {
        return Some(quick);
    }
    if !is_root() {
        println!("SKIPPED {name} benchmark: needs root for BPF and mounts");
        return None;
    }
    let status = Command::new("unshare")
        .args(["--mount", "--propagation", "private"])
        .arg(std::env::current_exe().unwrap())
        .arg("--inner")
        .args(quick.then_some("--quick"))
        .status()
        .expect("unshare");
    assert!(status.success(), "the {name} benchmark failed");
    None
}

/// Runs a shell script; panics if it fails.
pub fn sh(script: &str) {
    let status = Command::new("sh").args(["-ec", script]).status().unwrap();
    assert!(status.success(), "{script}");
}

/// For the live benchmarks, inside their private mount namespace: a tmpfs over /run holding the
/// kubelet's projected Kubernetes token, a temporary work directory with `rules/` holding the
/// k8s-sa-token module, and `bin/reader<i>` for each `i` in `readers`, renamed copies of `cat`.
pub fn bench_token_layout(readers: std::ops::RangeInclusive<usize>) -> tempfile::TempDir {
    let work = temp_dir();
    let w = work.path().display().to_string();
    let (first, last) = readers.into_inner();
    sh(&format!(
        "mount -t tmpfs bench /run
         sa=/run/secrets/kubernetes.io/serviceaccount; mkdir -p $sa; mount -t tmpfs bench-sa $sa
         mkdir $sa/..2026_11_22_10_00_00.1; echo t > $sa/..2026_11_22_10_00_00.1/token
         ln -s ..2026_11_22_10_00_00.1 $sa/..data; ln -s ..data/token $sa/token
         mkdir -p {w}/rules {w}/bin
         for i in $(seq {first} {last}); do cp $(command -v cat) {w}/bin/reader$i; done"
    ));
    std::fs::copy(
        rule_wasm("k8s-sa-token"),
        work.path().join("rules/k8s_sa_token.wasm"),
    )
    .unwrap();
    work
}

/// A fresh temporary directory.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("creating a temporary directory")
}

/// A picket process fed through stdin while the test watches its signals as they arrive.
pub struct Streaming {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    signals: std::sync::mpsc::Receiver<(std::time::Instant, serde_json::Value)>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    /// Signals [`Streaming::wait_for_signals`] took off the channel, kept for `finish`.
    waited: Vec<serde_json::Value>,
}

impl Streaming {
    /// Starts `command` with piped stdin, stdout and stderr.
    pub fn spawn(command: &mut Command) -> Streaming {
        use std::io::BufRead;
        let mut child = spawn_piped(command);
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, signals) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let log_writer = std::sync::Arc::clone(&log);
        let readers = vec![
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { return };
                    let value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("signal is not JSON ({e}): {line}"));
                    if tx.send((std::time::Instant::now(), value)).is_err() {
                        return;
                    }
                }
            }),
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { return };
                    let mut log = log_writer.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            }),
        ];
        Streaming {
            stdin: child.stdin.take(),
            child,
            signals,
            stderr: log,
            readers,
            waited: Vec::new(),
        }
    }

    /// Writes one event line.
    pub fn send(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(line.as_bytes()).expect("writing to picket");
        stdin.write_all(b"\n").expect("writing to picket");
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Signals that arrived so far, with when they arrived.
    pub fn received(&self) -> Vec<(std::time::Instant, serde_json::Value)> {
        self.signals.try_iter().collect()
    }

    /// Waits until `count` signals have arrived in all (since the start, not counting those
    /// [`Streaming::received`] took), up to `timeout`: proof that the events before them were
    /// evaluated. They stay part of what [`Streaming::finish`] returns.
    pub fn wait_for_signals(&mut self, count: usize, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while self.waited.len() < count {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.signals.recv_timeout(left) {
                Ok((_, signal)) => self.waited.push(signal),
                Err(_) => return false,
            }
        }
        true
    }

    /// Waits until stderr contains `text`, up to `timeout`.
    pub fn wait_for_log(&self, text: &str, timeout: std::time::Duration) -> bool {
        self.wait_for_stderr(timeout, |stderr| stderr.contains(text))
    }

    /// Waits for one log line that contains every one of `parts` (a message and the module it
    /// names, say: a single substring could match an earlier line about the same module).
    pub fn wait_for_log_line(&self, parts: &[&str], timeout: std::time::Duration) -> bool {
        self.wait_for_stderr(timeout, |stderr| {
            stderr
                .lines()
                .any(|line| parts.iter().all(|part| line.contains(part)))
        })
    }

    /// Polls what picket logged until `found` holds, up to `timeout`.
    fn wait_for_stderr(&self, timeout: std::time::Duration, found: impl Fn(&str) -> bool) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < timeout {
            if found(&self.stderr()) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        false
    }

    /// What picket logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Closes stdin and waits for the exit; returns the exit code and the remaining signals.
    pub fn finish(mut self) -> (Option<i32>, Vec<serde_json::Value>, String) {
        self.stdin.take();
        let status = self.child.wait().expect("waiting for picket");
        for reader in self.readers.drain(..) {
            reader.join().expect("reader thread");
        }
        let mut signals = std::mem::take(&mut self.waited);
        signals.extend(self.signals.try_iter().map(|(_, v)| v));
        (status.code(), signals, self.stderr())
    }

    /// Kills the process with SIGKILL, as a crash or an OOM kill would.
    pub fn kill9(mut self) -> String {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
        self.stdin.take();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        self.stderr()
    }
}

/// The bincode-encoded manifest of a test rule subscribed to opens of `token` files.
pub fn manifest_bytes(id: &str, title: &str) -> Vec<u8> {
    use picket_abi::{EventKind, Manifest, NewValueDefaults, Severity, Subscription};
    let manifest = Manifest {
        id: id.into(),
        title: title.into(),
        description: String::new(),
        severity: Severity::Low,
        tactic: "TA0006-credential-access".into(),
        technique: "T1552-unsecured-credentials".into(),
        subscription: Subscription {
            kinds: vec![EventKind::Open],
            basenames: vec!["token".into()],
            path_prefixes: vec![],
        },
        new_value: NewValueDefaults {
            learning_period_ns: 0,
            forget_after_ns: u64::MAX,
        },
    };
    let mut bytes = Vec::new();
    picket_abi::encode_into_vec(&manifest, &mut bytes).unwrap();
    bytes
}

/// Bytes as a WAT string literal.
pub fn wat_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}

/// A small rule in WAT: raises a signal (titled `title`) the first time each `process.exe`
/// reads a token, in one group. Two builds with different titles are two versions of one rule
/// whose signals say which version evaluated the event.
pub fn new_exe_rule(id: &str, title: &str) -> Vec<u8> {
    let text = new_exe_rule_wat(id, title);
    wat::parse_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The WAT text of [`new_exe_rule`].
pub fn new_exe_rule_wat(id: &str, title: &str) -> String {
    let manifest = manifest_bytes(id, title);
    let packed = (1024i64 << 32) | manifest.len() as i64;
    format!(
        r#"(module
  (import "picket" "new_value" (func $new_value (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "picket" "emit_signal" (func $emit_signal (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 1024) "{manifest}")
  (data (i32.const 3072) "process.exe")
  (data (i32.const 3088) "g")
  (data (i32.const 3104) "\00")
  (func (export "picket_abi_version") (result i32) i32.const 1)
  (func (export "picket_manifest") (result i64) i64.const {packed})
  (func (export "picket_alloc") (param i32) (result i32) i32.const 8192)
  (func (export "picket_on_event") (param $p i32) (param $n i32) (result i32)
    ;; the exe string slot: offset at +56, length at +60 (docs/abi.md)
    (if (i32.eq
          (call $new_value (i32.const 3072) (i32.const 11) (i32.const 3088) (i32.const 1)
            (i32.add (local.get $p) (i32.load offset=56 (local.get $p)))
            (i32.load offset=60 (local.get $p)))
          (i32.const 1))
      (then (drop (call $emit_signal (i32.const 3104) (i32.const 1)))))
    i32.const 0))"#,
        manifest = wat_bytes(&manifest),
    )
}
