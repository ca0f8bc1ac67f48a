//! Builds the eBPF object (`picket-probes-ebpf`, target bpfel-unknown-none) with the dated nightly
//! toolchain that aya needs for `-Z build-std=core`, so a plain `cargo build -p picket-probes` on
//! the stable toolchain builds everything. Set `AYA_BUILD_SKIP=1` to skip (the library then
//! embeds an empty object and `Probes::load` fails with a clear error).

use std::path::PathBuf;

use anyhow::{Context as _, anyhow};

/// The nightly that builds the eBPF crate; it needs `rust-src` and `bpf-linker` on PATH.
const EBPF_TOOLCHAIN: &str = "nightly-2026-07-01";

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.parent().context("no parent directory")?;
    let ebpf_dir = workspace.join("probes-ebpf");
    let common_dir = workspace.join("probes-common");
    // aya-build watches the eBPF crate; the shared types change its output too.
    println!("cargo::rerun-if-changed={}", common_dir.display());
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("picket-probes");
    let skip =
        std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        std::fs::write(&out, [])?;
        return Ok(());
    }
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {ebpf_dir:?}"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "picket-probes-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )
    .with_context(|| {
        format!(
            "building the eBPF programs (needs `rustup toolchain install {EBPF_TOOLCHAIN} --component rust-src` and `cargo install bpf-linker`)"
        )
    })
}
