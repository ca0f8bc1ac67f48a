//! The [`Probes`] handle: loads the eBPF object with what this kernel needs, attaches it, and
//! owns everything that lives as long as the programs (maps, ring buffer, process context).

use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{Ebpf, EbpfLoader, maps::RingBuf};
use picket_probes_common::{Filter, REPEAT_WINDOW_NS, RepeatConfig, names};

use crate::{
    OpenEvent, Strategy, attach, btf, cgroups::CgroupPaths, enrich::Enricher, identity, offsets,
    ring::Ring, tracefs,
};

/// The eBPF object built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/picket-ebpf"));

/// Where the host's files are, for an agent that runs in a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPaths {
    /// Where the host's container runtime state is mounted (`/run/containerd`,
    /// `/run/containers`, `/var/lib/containers`, `/var/lib/docker` under it); `/` on the host.
    pub root: PathBuf,
    /// A procfs of the host's pid namespace: `/proc` on the host, and in a container that shares
    /// the host's pid namespace (Kubernetes' `hostPID`).
    pub proc: PathBuf,
}

impl Default for HostPaths {
    fn default() -> HostPaths {
        HostPaths {
            root: PathBuf::from("/"),
            proc: PathBuf::from("/proc"),
        }
    }
}

/// The loaded and attached probes. Dropping it detaches and unloads everything.
pub struct Probes {
    pub(crate) ebpf: Ebpf,
    strategy: Strategy,
    ring: Ring,
    enricher: Enricher,
    pub(crate) basenames: BTreeSet<String>,
    /// What the kernel's FILTER map holds.
    pub(crate) filter: Filter,
    /// The files approved by identity, as the kernel's IDENTITIES and INODE_FILTER hold them.
    pub(crate) identities: identity::Approved,
    /// What the kernel's `REPEATS_CONFIG` holds.
    pub(crate) repeats: RepeatConfig,
    pub(crate) cgroup_paths: CgroupPaths,
}

impl Probes {
    /// Loads the programs and attaches the lifecycle tracepoints and the open hook for
    /// `strategy`. [`Strategy::Auto`] tries LSM, then fentry, then tracepoints, logging (through
    /// `tracing`) why each one was refused. Nothing is reported until [`Probes::set_basenames`].
    pub fn load(strategy: Strategy) -> Result<Probes> {
        Probes::load_on(strategy, &HostPaths::default())
    }

    /// [`Probes::load`] for an agent that sees the host's files at `host`.
    pub fn load_on(strategy: Strategy, host: &HostPaths) -> Result<Probes> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("loading eBPF programs needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)");
        }
        raise_memlock_limit();
        tracefs::ensure_mounted()?;
        let btf = btf::Btf::from_sys_fs()?;
        let (offsets, io_uring) = offsets::from_kernel(&btf)?;
        ensure!(
            !EBPF_OBJECT.is_empty(),
            "this build has no eBPF object (built with AYA_BUILD_SKIP?)"
        );
        let self_tgid = std::process::id();
        let stop_after = stop_after()?;
        let mut ebpf = EbpfLoader::new()
            .override_global(names::OFFSETS, &offsets, true)
            .override_global(names::SELF_TGID, &self_tgid, true)
            .override_global(names::STOP_AFTER, &stop_after, true)
            .load(EBPF_OBJECT)
            // Some of aya's parse errors display as nothing; their Debug form names the cause.
            .map_err(|err| anyhow::anyhow!("{err:?}"))
            .context("loading the eBPF object (maps and relocations)")?;

        attach::attach_lifecycle(&mut ebpf)?;
        let aya_btf = aya::Btf::from_sys_fs().context("reading kernel BTF for aya")?;
        let attached = attach::attach_open_hook(&mut ebpf, strategy, &aya_btf, io_uring)?;
        tracing::info!("file opens reported by the {attached} strategy");
        for (name, program) in ebpf.programs() {
            if let Ok(info) = program.info() {
                // The verifier's cost of each program: comparable across kernels (BENCHMARKS.md).
                match info.verified_instruction_count() {
                    Some(count) => {
                        tracing::debug!("verifier: {name}: {count} instructions processed")
                    }
                    None => tracing::debug!(
                        "verifier: {name}: loaded (this kernel does not report the instructions processed)"
                    ),
                }
            }
        }

        let ring = RingBuf::try_from(
            ebpf.take_map(names::EVENTS)
                .context("no EVENTS map in the eBPF object")?,
        )?;
        // After attaching, so that a process started in between is in the scan or has an event.
        let enricher = Enricher::new(&host.root, &host.proc);
        let mut probes = Probes {
            ebpf,
            strategy: attached,
            ring: Ring::new(ring),
            enricher,
            basenames: BTreeSet::new(),
            filter: Filter::EMPTY,
            identities: identity::Approved::default(),
            repeats: RepeatConfig::default(),
            cgroup_paths: CgroupPaths::default(),
        };
        // Before any approver is set, so no open is sent before the window is in place.
        probes.set_repeat_window(repeat_window()?)?;
        Ok(probes)
    }

    /// The strategy that was attached (never [`Strategy::Auto`]).
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Instructions the verifier processed for each loaded program (diagnostics; `None` when the
    /// kernel does not report it).
    pub fn verified_instructions(&self) -> Vec<(String, Option<u32>)> {
        self.ebpf
            .programs()
            .filter_map(|(name, program)| {
                let info = program.info().ok()?;
                Some((name.to_owned(), info.verified_instruction_count()))
            })
            .collect()
    }

    /// Waits for the next open of an approved file that is not a repeat (see
    /// [`Probes::repeats_dropped`] and [`Probes::set_repeat_window`]). Exec, fork and exit records met on the way
    /// update the process cache. Cancel-safe: dropping the future loses no event.
    pub async fn next_event(&mut self) -> Result<OpenEvent> {
        loop {
            while let Some(record) = self.ring.next_record()? {
                if let Some(event) = self.enricher.record(record) {
                    return Ok(event);
                }
            }
            self.ring.readable().await?;
        }
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        let (records, bytes) = self.ring.open_records();
        if records > 0 {
            // In the ring buffer each record also takes an 8-byte header and is padded to 8.
            let avg = bytes as f64 / records as f64;
            tracing::debug!(
                "read {records} open records of {avg:.0} bytes on average ({} events lost)",
                self.lost_events()
            );
        }
    }
}

/// `PICKET_PROBES_STOP_AFTER=<n>` cuts the open prefilter after step `n` (0: return at once;
/// 1: after finding the `struct file`; 2: after its dentry; 3: after the name length), to measure
/// what each step costs. Unset in production.
fn stop_after() -> Result<u32> {
    match std::env::var("PICKET_PROBES_STOP_AFTER") {
        Ok(n) => {
            let n = n
                .parse()
                .context("PICKET_PROBES_STOP_AFTER must be a number")?;
            tracing::warn!(
                "PICKET_PROBES_STOP_AFTER={n}: measurement mode, opens are not all reported"
            );
            Ok(n)
        }
        Err(_) => Ok(u32::MAX),
    }
}

/// The repeat window: [`REPEAT_WINDOW_NS`], or none with `PICKET_PROBES_DROP_REPEATS=off`.
fn repeat_window() -> Result<Option<Duration>> {
    match std::env::var("PICKET_PROBES_DROP_REPEATS").as_deref() {
        Err(_) | Ok("on") => Ok(Some(Duration::from_nanos(REPEAT_WINDOW_NS))),
        Ok("off") => {
            tracing::warn!(
                "PICKET_PROBES_DROP_REPEATS=off: measurement mode, every repeated open is sent"
            );
            Ok(None)
        }
        Ok(other) => bail!("PICKET_PROBES_DROP_REPEATS must be on or off, not {other:?}"),
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones ignore it.
fn raise_memlock_limit() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: limit is a valid rlimit for the duration of the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        tracing::debug!(
            "cannot raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn probes_can_move_between_tasks() {
        fn assert_send<T: Send>() {}
        assert_send::<super::Probes>();
    }
}
