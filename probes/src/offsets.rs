//! Fills [`Offsets`] from the kernel's BTF and tracefs, once per load.

use anyhow::{Context as _, Result, ensure};
use picket_probes_common::Offsets;

use crate::{btf::Btf, tracefs};

/// Everything the programs read must be found, except io_uring's internals, which only the
/// io_uring tracepoint needs (it stays detached without them).
pub(crate) fn from_kernel(btf: &Btf) -> Result<(Offsets, bool)> {
    let o = |s: &str, m: &str| btf.member_offset(s, m).map(u64::from);
    let mut offsets = Offsets {
        task_pid: o("task_struct", "pid")?,
        task_tgid: o("task_struct", "tgid")?,
        task_real_parent: o("task_struct", "real_parent")?,
        task_files: o("task_struct", "files")?,
        task_fs: o("task_struct", "fs")?,
        task_mm: o("task_struct", "mm")?,
        task_cgroups: o("task_struct", "cgroups")?,
        files_fdt: o("files_struct", "fdt")?,
        fdtable_fd: o("fdtable", "fd")?,
        file_f_path: o("file", "f_path")?,
        file_f_mode: o("file", "f_mode")?,
        file_f_flags: o("file", "f_flags")?,
        file_f_inode: o("file", "f_inode")?,
        inode_i_ino: o("inode", "i_ino")?,
        inode_i_sb: o("inode", "i_sb")?,
        super_block_s_dev: o("super_block", "s_dev")?,
        path_mnt: o("path", "mnt")?,
        path_dentry: o("path", "dentry")?,
        dentry_d_parent: o("dentry", "d_parent")?,
        dentry_d_name: o("dentry", "d_name")?,
        qstr_hash_len: o("qstr", "hash_len")?,
        qstr_name: o("qstr", "name")?,
        mount_mnt: o("mount", "mnt")?,
        mount_mnt_parent: o("mount", "mnt_parent")?,
        mount_mnt_mountpoint: o("mount", "mnt_mountpoint")?,
        vfsmount_mnt_root: o("vfsmount", "mnt_root")?,
        fs_root: o("fs_struct", "root")?,
        mm_exe_file: o("mm_struct", "exe_file")?,
        mm_arg_start: o("mm_struct", "arg_start")?,
        mm_arg_end: o("mm_struct", "arg_end")?,
        css_set_dfl_cgrp: o("css_set", "dfl_cgrp")?,
        cgroup_kn: o("cgroup", "kn")?,
        kernfs_node_name: o("kernfs_node", "name")?,
        task_signal: o("task_struct", "signal")?,
        signal_live: o("signal_struct", "live")?,
        inode_i_generation: o("inode", "i_generation")?,
        task_cred: o("task_struct", "cred")?,
        cred_euid: o("cred", "euid")?,
        cred_egid: o("cred", "egid")?,
        inode_i_size: o("inode", "i_size")?,
        ..Offsets::default()
    };
    (offsets.inode_ctime_sec, offsets.inode_ctime_nsec) = ctime_offsets(btf)?;
    // The prefilter reads hash_len and the name pointer with one 16-byte read.
    ensure!(
        offsets.qstr_name == offsets.qstr_hash_len + 8 && btf.member_size("qstr", "hash_len")? == 8,
        "unexpected struct qstr layout (hash_len at {}, name at {})",
        offsets.qstr_hash_len,
        offsets.qstr_name
    );
    // The programs read these as the sizes below.
    for (s, m, size) in [
        ("task_struct", "pid", 4),
        ("task_struct", "tgid", 4),
        ("file", "f_mode", 4),
        ("file", "f_flags", 4),
        ("signal_struct", "live", 4),
        ("file", "f_inode", 8),
        ("inode", "i_ino", 8),
        ("inode", "i_generation", 4),
        ("super_block", "s_dev", 4),
        ("cred", "euid", 4),
        ("cred", "egid", 4),
        ("inode", "i_size", 8),
    ] {
        let actual = btf.member_size(s, m)?;
        ensure!(
            actual == size,
            "kernel BTF: {s}.{m} is {actual} bytes, expected {size}"
        );
    }

    let io_uring = io_uring_offsets(btf, &mut offsets);
    if let Err(err) = &io_uring {
        tracing::info!("io_uring opens will not be seen by the tracepoint strategy: {err:#}");
    }
    Ok((offsets, io_uring.is_ok()))
}

/// Where `inode`'s change time is: its spelling moved twice (`i_ctime` until 6.5, `__i_ctime` in
/// 6.6 to 6.10, `i_ctime_sec` and `i_ctime_nsec` since 6.11); seconds are 8 bytes in each, the
/// nanoseconds 4 or 8 (the programs read their low 4 bytes, little endian).
fn ctime_offsets(btf: &Btf) -> Result<(u64, u64)> {
    let at = |path: &str| btf.member_offset("inode", path).map(u64::from);
    let pair = |sec: &str, nsec: &str| -> Result<(u64, u64)> {
        ensure!(
            btf.member_size("inode", sec)? == 8,
            "kernel BTF: inode.{sec} is not 8 bytes"
        );
        Ok((at(sec)?, at(nsec)?))
    };
    pair("i_ctime_sec", "i_ctime_nsec")
        .or_else(|_| pair("__i_ctime.tv_sec", "__i_ctime.tv_nsec"))
        .or_else(|_| pair("i_ctime.tv_sec", "i_ctime.tv_nsec"))
        .context("kernel BTF: no inode change time (i_ctime_sec, __i_ctime or i_ctime)")
}

fn io_uring_offsets(btf: &Btf, offsets: &mut Offsets) -> Result<()> {
    offsets.io_kiocb_opcode = btf.member_offset("io_kiocb", "opcode")?.into();
    ensure!(
        btf.member_size("io_kiocb", "opcode")? == 1,
        "io_kiocb.opcode is not a u8"
    );
    offsets.io_open_file_slot = u64::from(btf.member_offset("io_kiocb", "cmd")?)
        + u64::from(btf.member_offset("io_open", "file_slot")?);
    let format = tracefs::event_format("io_uring", "io_uring_complete")?;
    let field = |name: &str| {
        format
            .field(name)
            .with_context(|| format!("io_uring_complete has no field {name}"))
    };
    let req = field("req")?;
    let res = field("res")?;
    ensure!(
        req.size == 8 && res.size == 4,
        "unexpected io_uring_complete field sizes"
    );
    offsets.tp_io_uring_req = req.offset.into();
    offsets.tp_io_uring_res = res.offset.into();
    Ok(())
}
