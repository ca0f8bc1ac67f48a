//! Times syscalls in a tight loop, to measure what monitoring adds to them.
//!
//! ```text
//! syscall-bench open|getppid|open-samelen [--iters N] [--rounds R] [--file PATH]
//! ```
//! Prints one line: `<mode> median_ns_per_op=<x> min=<y> max=<z>` over R rounds of N calls.
//! `open` is `openat(path, O_RDONLY)` + `close` of a file whose basename the probes do not
//! approve; `open-samelen` uses a basename as long as `token` (5 bytes), which passes the length
//! prefilter and costs the name read and the approver lookup; `getppid` is the cheapest syscall,
//! which only pays for the syscall-tracing slow path. See probes/NOTES.md and probes/bench.sh.

use std::{ffi::CString, hint::black_box, time::Instant};

use anyhow::{Context as _, Result, bail};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().context(
        "usage: syscall-bench open|open-samelen|getppid [--iters N] [--rounds R] [--file PATH]",
    )?;
    let mut iters: u64 = 200_000;
    let mut rounds = 11;
    let mut file: Option<String> = None;
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--iters" => iters = value()?.parse()?,
            "--rounds" => rounds = value()?.parse()?,
            "--file" => file = Some(value()?),
            other => bail!("unknown argument {other:?}"),
        }
    }
    let dir = std::env::temp_dir().join("picket-syscall-bench");
    std::fs::create_dir_all(&dir)?;
    let path = match (mode.as_str(), file) {
        (_, Some(file)) => file.into(),
        ("open", None) => dir.join("unwatched-file.txt"),
        ("open-samelen", None) => dir.join("tokem"),
        ("getppid", None) => dir.join("unused"),
        (other, None) => bail!("unknown mode {other:?}"),
    };
    std::fs::write(&path, b"x")?;
    let c_path = CString::new(path.to_str().context("non-UTF-8 path")?)?;

    let op: Box<dyn Fn()> = match mode.as_str() {
        "open" | "open-samelen" => Box::new(|| {
            // SAFETY: c_path is a valid NUL-terminated string; the fd is closed right away.
            unsafe {
                let fd = libc::openat(libc::AT_FDCWD, c_path.as_ptr(), libc::O_RDONLY);
                assert!(fd >= 0, "open failed");
                libc::close(fd);
            }
        }),
        // SAFETY: getppid has no preconditions. Called through syscall() so libc cannot cache it.
        "getppid" => Box::new(|| unsafe {
            black_box(libc::syscall(libc::SYS_getppid));
        }),
        other => bail!("unknown mode {other:?}"),
    };

    // Warm up caches (dentry, page tables, branch predictors).
    for _ in 0..iters / 10 {
        op();
    }
    let mut per_op = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..iters {
            op();
        }
        per_op.push(start.elapsed().as_nanos() as f64 / iters as f64);
    }
    per_op.sort_by(f64::total_cmp);
    println!(
        "{mode} median_ns_per_op={:.1} min={:.1} max={:.1}",
        per_op[per_op.len() / 2],
        per_op[0],
        per_op[per_op.len() - 1]
    );
    Ok(())
}
