//! Conversion of the kernel's boot-time clock, which the eBPF programs stamp records with, to
//! wall-clock time.

use std::time::{Duration, SystemTime};

/// The current time of `clock`, in nanoseconds.
fn clock_ns(clock: libc::clockid_t) -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write; both clocks exist on every Linux we load on.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// Converts `bpf_ktime_get_boot_ns()` to wall-clock time using the clocks' current difference.
pub(crate) fn boot_ns_to_wall(boot_ns: u64) -> SystemTime {
    let now_boot = clock_ns(libc::CLOCK_BOOTTIME);
    let ago = now_boot.saturating_sub(u128::from(boot_ns));
    SystemTime::now() - Duration::from_nanos(u64::try_from(ago).unwrap_or(u64::MAX))
}
