//! picket's kernel programs. Built for `bpfel-unknown-none` by `picket-probes`' build script; on
//! any other target this crate is an empty binary so that workspace-wide builds still work.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("picket-probes-ebpf only runs in the kernel; build it for bpfel-unknown-none");
}
