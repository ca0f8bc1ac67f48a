//! Shared by the integration tests: builds the rule modules to wasm once, runs the real `picket`
//! binary, and writes events.
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
const WASM_PACKAGES: [&str; 6] = [
    "eks-token",
    "k8s-sa-token",
    "hostile-loop",
    "hostile-memory",
    "hostile-panic",
    "hostile-flood",
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
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target"));
        target.join("wasm32-unknown-unknown/release")
    })
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

/// Runs `command` to completion, with `stdin` as its input.
pub fn run(command: &mut Command, stdin: &str) -> Run {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting picket");
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

/// A fresh temporary directory.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("creating a temporary directory")
}
