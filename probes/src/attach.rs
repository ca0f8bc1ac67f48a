//! Loading and attaching the eBPF programs: the process lifecycle tracepoints, and the open hook
//! of a [`Strategy`] with the fallback from one strategy to the next.

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf,
    programs::{FEntry, Lsm, RawTracePoint, TracePoint},
};
use picket_probes_common::programs;

use crate::{Strategy, tracefs, verifier};

/// Attaches the open hook of `strategy`; [`Strategy::Auto`] tries LSM, then fentry, then
/// tracepoints, logging why each one was refused. Returns the strategy attached (never `Auto`).
pub(crate) fn attach_open_hook(
    ebpf: &mut Ebpf,
    strategy: Strategy,
    btf: &aya::Btf,
    io_uring: bool,
) -> Result<Strategy> {
    match strategy {
        Strategy::Auto => {
            let mut reasons = Vec::new();
            for candidate in [Strategy::Lsm, Strategy::Fentry, Strategy::Tracepoint] {
                match attach_open(ebpf, candidate, btf, io_uring) {
                    Ok(()) => return Ok(candidate),
                    Err(err) => {
                        tracing::info!("strategy {candidate} refused: {err:#}");
                        reasons.push(format!("{candidate}: {err:#}"));
                    }
                }
            }
            bail!("no open hook could be attached ({})", reasons.join("; "))
        }
        explicit => {
            attach_open(ebpf, explicit, btf, io_uring)
                .with_context(|| format!("strategy {explicit}"))?;
            Ok(explicit)
        }
    }
}

/// Loads and attaches the exec, fork and exit programs that keep the process cache current;
/// every strategy needs them.
pub(crate) fn attach_lifecycle(ebpf: &mut Ebpf) -> Result<()> {
    let exec: &mut TracePoint = program(ebpf, programs::SCHED_EXEC)?;
    exec.load()
        .map_err(|err| verifier::load_error(err, "loading sched_process_exec"))?;
    exec.attach("sched", "sched_process_exec")
        .context("attaching sched/sched_process_exec")?;
    for (name, tp) in [
        (programs::SCHED_FORK, "sched_process_fork"),
        (programs::SCHED_EXIT, "sched_process_exit"),
    ] {
        let raw: &mut RawTracePoint = program(ebpf, name)?;
        raw.load()
            .map_err(|err| verifier::load_error(err, &format!("loading {name}")))?;
        raw.attach(tp)
            .with_context(|| format!("attaching raw tracepoint {tp}"))?;
    }
    Ok(())
}

/// The syscalls whose exit returns a new descriptor for a file opened by path or handle.
/// (`open_tree` also returns one, but only as an `O_PATH`-like mount handle.)
const OPEN_SYSCALLS: [&str; 5] = ["open", "openat", "openat2", "creat", "open_by_handle_at"];

/// Loads and attaches the open hook of one strategy (not `Auto`); an LSM or fentry program that
/// loads but does not attach is unloaded, so the next strategy can be tried.
fn attach_open(ebpf: &mut Ebpf, strategy: Strategy, btf: &aya::Btf, io_uring: bool) -> Result<()> {
    match strategy {
        Strategy::Auto => bail!("Auto is not a hook"),
        Strategy::Lsm => {
            match tracefs::active_lsms() {
                Some(lsms) if !lsms.split(',').any(|l| l == "bpf") => {
                    bail!("the BPF LSM is not active (active LSMs: {lsms}); boot with lsm=...,bpf")
                }
                Some(_) => {}
                None => tracing::warn!(
                    "cannot read /sys/kernel/security/lsm; an LSM program may attach but never run"
                ),
            }
            let lsm: &mut Lsm = program(ebpf, programs::LSM_FILE_OPEN)?;
            lsm.load("file_open", btf)
                .map_err(|err| verifier::load_error(err, "loading lsm/file_open"))?;
            if let Err(err) = lsm.attach() {
                let _ = lsm.unload();
                return Err(err).context("attaching lsm/file_open");
            }
        }
        Strategy::Fentry => {
            let fentry: &mut FEntry = program(ebpf, programs::FENTRY_FILE_OPEN)?;
            fentry
                .load("security_file_open", btf)
                .map_err(|err| verifier::load_error(err, "loading fentry/security_file_open"))?;
            if let Err(err) = fentry.attach() {
                let _ = fentry.unload();
                return Err(err).context("attaching fentry/security_file_open");
            }
        }
        Strategy::Tracepoint => {
            let name = load_sys_exit_open(ebpf)?;
            let tp: &mut TracePoint = program(ebpf, name)?;
            let mut attached = Vec::new();
            for syscall in OPEN_SYSCALLS {
                let name = format!("sys_exit_{syscall}");
                if !tracefs::event_exists("syscalls", &name) {
                    // e.g. arm64 has no open(2) or creat(2).
                    tracing::debug!("no tracepoint syscalls/{name} on this kernel");
                    continue;
                }
                tp.attach("syscalls", &name)
                    .with_context(|| format!("attaching syscalls/{name}"))?;
                attached.push(name);
            }
            ensure!(
                attached.iter().any(|n| n == "sys_exit_openat"),
                "no syscalls/sys_exit_openat tracepoint (kernel without CONFIG_FTRACE_SYSCALLS?)"
            );
            if io_uring && tracefs::event_exists("io_uring", "io_uring_complete") {
                let tp: &mut TracePoint = program(ebpf, programs::IO_URING_COMPLETE)?;
                let res = tp
                    .load()
                    .map_err(|err| verifier::load_error(err, "loading io_uring_complete"))
                    .and_then(|()| Ok(tp.attach("io_uring", "io_uring_complete")?));
                if let Err(err) = res {
                    tracing::warn!("io_uring opens will not be seen: {err:#}");
                }
            }
        }
    }
    Ok(())
}

/// Loads the `sys_exit_*` program, or its variant for kernels without
/// `bpf_get_current_task_btf` (before 5.11) when the kernel refuses it; returns the name of the
/// one loaded.
fn load_sys_exit_open(ebpf: &mut Ebpf) -> Result<&'static str> {
    let tp: &mut TracePoint = program(ebpf, programs::SYS_EXIT_OPEN)?;
    let Err(err) = tp.load() else {
        return Ok(programs::SYS_EXIT_OPEN);
    };
    let first = verifier::load_error(err, "loading the sys_exit_* tracepoint program");
    tracing::debug!("{first:#}; trying the variant for kernels before 5.11");
    let compat: &mut TracePoint = program(ebpf, programs::SYS_EXIT_OPEN_COMPAT)?;
    match compat.load() {
        Ok(()) => Ok(programs::SYS_EXIT_OPEN_COMPAT),
        Err(err) => Err(first.context(verifier::load_error(
            err,
            "and its variant without bpf_get_current_task_btf",
        ))),
    }
}

/// The program `name` of the object, as the program type `T` its hook needs.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("no program {name} in the eBPF object"))?;
    Ok(program.try_into()?)
}
