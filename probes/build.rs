//! Builds the eBPF object (`picket-probes-ebpf`, target bpfel-unknown-none) with the dated nightly
//! toolchain that aya needs for `-Z build-std=core`, so a plain `cargo build -p picket-probes` on
//! the stable toolchain builds everything. Set `AYA_BUILD_SKIP=1` to skip (the library then
//! embeds an empty object and `Probes::load` fails with a clear error).
//!
//! This does what aya-build 0.2.1's `build_ebpf` does (same command line and flags), with one
//! difference: the inner build has a stable target directory, `<target-dir>/bpf`, instead of one
//! inside this script's `OUT_DIR`. Cargo gives the script a different `OUT_DIR` for each set of
//! dependency features (`cargo build`, `cargo test`, `cargo clippy` and `cargo bench` each get
//! one), and aya-build has no option for the target directory, so with it every one of them
//! rebuilt `core` and the programs from scratch (~25 s each). Here the second and later ones are
//! incremental no-ops. `PICKET_EBPF_TARGET_DIR` overrides the directory.

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The nightly that builds the eBPF crate; it needs `rust-src` and `bpf-linker` on PATH.
const EBPF_TOOLCHAIN: &str = "nightly-2026-07-01";
const EBPF_PACKAGE: &str = "picket-probes-ebpf";
const EBPF_BIN: &str = "picket-ebpf";

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.parent().context("no parent directory")?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let out = out_dir.join(EBPF_BIN);

    for var in ["AYA_BUILD_SKIP", "PICKET_EBPF_TARGET_DIR"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    if let Ok(skip) = env::var("AYA_BUILD_SKIP")
        && (skip == "1" || skip.eq_ignore_ascii_case("true"))
    {
        println!("cargo::warning=AYA_BUILD_SKIP={skip}; skipping the eBPF build");
        fs::write(&out, [])?;
        return Ok(());
    }
    // The programs, the shared types, and the workspace manifest and lock file (the eBPF
    // profile and aya-ebpf's version live there). Cargo compares the newest mtime under a
    // directory, so an edit anywhere in the crates reruns this script.
    for path in [
        workspace.join("probes-ebpf"),
        workspace.join("probes-common"),
        workspace.join("Cargo.toml"),
        workspace.join("Cargo.lock"),
    ] {
        println!("cargo::rerun-if-changed={}", path.display());
    }

    let target_dir = match env::var_os("PICKET_EBPF_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => ebpf_target_dir(&out_dir),
    };
    fs::create_dir_all(&target_dir)
        .with_context(|| format!("creating {}", target_dir.display()))?;
    // Held while building and copying, so that two builds sharing the directory (two target
    // directories with one PICKET_EBPF_TARGET_DIR, or cargo's finer-grained locking) cannot copy
    // an object the other is rewriting. The inner cargo takes its own lock as well.
    let lock = fs::File::create(target_dir.join(".picket-build.lock"))?;
    lock.lock()
        .with_context(|| format!("locking {}", target_dir.display()))?;

    let target = match env::var("CARGO_CFG_TARGET_ENDIAN")?.as_str() {
        "little" => "bpfel-unknown-none",
        "big" => "bpfeb-unknown-none",
        other => bail!("unsupported endianness {other}"),
    };
    let arch = env::var("CARGO_CFG_TARGET_ARCH")?;
    let arch = if arch.starts_with("riscv64") {
        "riscv64"
    } else {
        arch.as_str()
    };

    let mut cmd = Command::new("rustup");
    cmd.args(["run", EBPF_TOOLCHAIN, "cargo", "build"])
        .args(["--package", EBPF_PACKAGE, "--bin", EBPF_BIN, "--release"])
        .args(["--target", target, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(workspace);
    // The flags aya-build passes: the architecture for aya-ebpf's cfgs, and full debug info,
    // from which bpf-linker emits the BTF that aya needs for maps and globals.
    let mut rustflags = OsString::new();
    for (i, flag) in [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
    ]
    .iter()
    .enumerate()
    {
        if i > 0 {
            rustflags.push("\x1f");
        }
        rustflags.push(flag);
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // The outer cargo's compiler (and clippy's wrapper) are not for this toolchain, and anything
    // that would make the inner build depend on how the outer one was invoked must go too.
    for var in [
        "RUSTC",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }

    let output = cmd
        .output()
        .with_context(|| format!("running {cmd:?} (is rustup installed?)"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!(
            "building the eBPF programs failed ({}); it needs `rustup toolchain install \
             {EBPF_TOOLCHAIN} --component rust-src` and `cargo install bpf-linker`. \
             {cmd:?} said:\n{stderr}",
            output.status
        );
    }
    // What the inner cargo did (`cargo build -vv` shows it): "Finished" alone when it was
    // an incremental no-op.
    eprint!("{stderr}");
    // Compiler warnings about the eBPF crate would otherwise go unseen.
    let mut in_warning = false;
    for line in stderr.lines() {
        if line.starts_with("warning") {
            in_warning = true;
        }
        if in_warning {
            println!("cargo::warning={line}");
        }
        if line.trim().is_empty() {
            in_warning = false;
        }
    }

    let object = target_dir.join(target).join("release").join(EBPF_BIN);
    // Through a temporary file, so that the library never embeds a half-written object.
    let tmp = out_dir.join(format!("{EBPF_BIN}.tmp"));
    fs::copy(&object, &tmp)
        .with_context(|| format!("copying {} to {}", object.display(), tmp.display()))?;
    fs::rename(&tmp, &out)?;
    drop(lock);
    Ok(())
}

/// `<target-dir>/bpf` (or `<target-dir>/<triple>/bpf` when cross-compiling), found from `OUT_DIR`,
/// which is `<that>/<profile>/build/picket-probes-<hash>/out`: shared by every profile and every
/// feature set of this workspace's builds into that target directory. Falls back to `OUT_DIR`
/// itself for a layout it does not recognise.
fn ebpf_target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .find(|dir| dir.file_name().is_some_and(|name| name == "build"))
        .and_then(|build| build.parent()?.parent())
        .map(|base| base.join("bpf"))
        .unwrap_or_else(|| out_dir.join("bpf-target"))
}
