//! The programs. Every kernel struct is read through `bpf_probe_read_kernel` at offsets the loader
//! found in the kernel's BTF (see `Offsets`): no CO-RE, and the same code works for the tracepoint,
//! fentry and LSM hooks, which differ in how much the verifier knows about their arguments.
//!
//! Verifier lessons that shape this file:
//! - A read whose failure only zero-fills (the helper memsets the destination on error) needs no
//!   branch: a zero pointer propagates, every later read fails cheaply and the name-length check
//!   rejects it. Fewer branches keep the verifier's state count low and the hot path short.
//! - Records are built in a per-CPU scratch buffer, names packed one after the other, and only
//!   their used bytes are copied into the ring buffer. A walk's write position lives in map
//!   memory and is masked (`& DATA_MASK`) after each load: the verifier then sees the same range
//!   `0..=DATA_MASK` on every path, whatever earlier reads returned, and prunes. Kept in a
//!   register, the position's range differed with the number of names read so far, no two
//!   states matched and the verifier processed 955k of its 1M instructions. The byte budgets
//!   keep real positions below the mask.
//! - Flags that must survive the loop are accumulated without branches for the same reason.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _, Global,
    helpers::generated::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_current_task_btf, bpf_get_current_uid_gid,
        bpf_ktime_get_boot_ns, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_str,
        bpf_probe_read_user,
    },
    macros::{fentry, lsm, map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
    programs::{FEntryContext, LsmContext, RawTracePointContext, TracePointContext},
};
use picket_probes_common::{
    ARGS_LEN, BASENAME_KEY_LEN, BasenameKey, CGROUP_NAME_LEN, COMM_LEN, EXE_BYTES, EXE_DEPTH,
    ExeId, ExecRecord, ExitRecord, FMODE_PATH, FMODE_READ, FMODE_WRITE, FileIdKey, FileIdentity,
    Filter, ForkRecord, IDENTITY_CAPACITY, INODE_FILTER_BITS, IORING_OP_OPENAT, IORING_OP_OPENAT2,
    InodeFilter, LOST_CGROUP_ENTRIES, MAX_BASENAME, MAX_RECORD_DATA, NAME_READ, Offsets,
    OpenRecord, OpenSource, PATH_ABSENT, PATH_BYTES, PATH_COMPLETE, PATH_DEPTH, PATH_READ_ERROR,
    PATH_TOO_DEEP, PATH_TOO_LONG, PREFIX_ANY, PathInfo, REPEAT_ENTRIES, RecordHeader, RecordKind,
    RepeatConfig, RepeatEntry, RepeatKey, TaskInfo,
};

// The loader finds the globals and the license by symbol name, hence `no_mangle` (the names are
// unique in this object).

/// Kernel's license string. bpf_probe_read_kernel and friends are GPL-only helpers.
#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 4] = *b"GPL\0";

/// Struct member offsets, filled in by the loader from the kernel's BTF.
#[unsafe(no_mangle)]
// SAFETY: all-zero is a valid Offsets (plain integers).
static OFFSETS: Global<Offsets> = Global::new(unsafe { core::mem::zeroed() });

/// The loader's tgid: its own opens (e.g. of container metadata) are never reported.
#[unsafe(no_mangle)]
static SELF_TGID: Global<u32> = Global::new(0);

/// Measurement aid: the open programs stop after this many prefilter steps (see
/// probes/NOTES.md). The verifier sees the constant and removes the dead branches, so the default
/// (all steps) costs nothing.
#[unsafe(no_mangle)]
static STOP_AFTER: Global<u32> = Global::new(u32::MAX);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Room for a record's fixed part (`OpenRecord`, `ExecRecord`) at the start of a [`Scratch`].
const HEADER_ROOM: usize = 160;
/// Mask applied to data positions where they address a [`Scratch`]. Above every real position
/// (`MAX_RECORD_DATA`), so it never changes one; it bounds them for the verifier.
const DATA_MASK: u64 = 8191;
/// Mask for the position of the exec arguments, which come after at most a cgroup name and an
/// executable path (and are read `ARGS_LEN` bytes at a time).
const ARGS_MASK: u64 = 4095;
const _: () = {
    assert!(MAX_RECORD_DATA <= DATA_MASK as usize);
    assert!(CGROUP_NAME_LEN + EXE_BYTES + NAME_READ - 1 <= ARGS_MASK as usize);
    assert!(size_of::<OpenRecord>() <= HEADER_ROOM && size_of::<ExecRecord>() <= HEADER_ROOM);
    assert!(ARGS_MASK as usize + ARGS_LEN <= DATA_MASK as usize + NAME_READ);
    assert!(NAME_READ.is_power_of_two() && CGROUP_NAME_LEN <= NAME_READ);
};

/// Where a record is built before its used bytes are copied into the ring buffer.
#[repr(C)]
pub struct Scratch {
    /// The fixed part at the start, its data right after it. Every write ends below
    /// `size_of::<fixed part>() + DATA_MASK + NAME_READ`.
    record: [u64; (HEADER_ROOM + DATA_MASK as usize + 1 + NAME_READ) / 8],
    /// The write position of a path walk, kept in map memory rather than in a register: see
    /// [`walk`].
    cursor: u64,
}

/// Scratch for the tracepoint programs. Perf-event tracepoint programs run with preemption off
/// and never nest on a CPU (the kernel's `bpf_prog_active` guard), so one per CPU is enough.
#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Scratch for the LSM and fentry programs, which run with only migration disabled: a
/// preempted one must not share its buffer with the tracepoint programs.
#[map]
static HOOK_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[map]
static FILTER: Array<Filter> = Array::with_max_entries(1, 0);

#[map]
static APPROVERS: HashMap<BasenameKey, u8> = HashMap::with_max_entries(1024, 0);

/// Files approved by what they are, (device, inode), whatever name or mount they are reached
/// through: hard links, bind mounts of the file, chroots. Filled by user space from the files it
/// finds under the rules' path prefixes.
#[map]
static IDENTITIES: HashMap<FileIdKey, u8> = HashMap::with_max_entries(IDENTITY_CAPACITY, 0);

/// Bitmap of the approved inode numbers, tested before [`IDENTITIES`].
#[map]
static INODE_FILTER: Array<InodeFilter> = Array::with_max_entries(1, 0);

/// Reads one field of [`OFFSETS`]. A volatile load of just that field: loading the whole struct
/// would copy it to the stack, and the verifier sees each field as a constant (the map is frozen).
macro_rules! off {
    ($field:ident) => {{
        #[allow(unused_unsafe, reason = "the macro is also used inside unsafe blocks")]
        // SAFETY: Global is repr(transparent) over Offsets, and OFFSETS lives forever.
        let value = unsafe {
            core::ptr::read_volatile(&raw const (*(&raw const OFFSETS).cast::<Offsets>()).$field)
        };
        value
    }};
}

#[inline(always)]
fn read_u64(addr: u64) -> u64 {
    let mut value = 0u64;
    // SAFETY: the helper checks the source; on failure it zeroes the 8-byte destination.
    unsafe { bpf_probe_read_kernel((&raw mut value).cast::<c_void>(), 8, addr as *const c_void) };
    value
}

#[inline(always)]
fn read_u32(addr: u64) -> u32 {
    let mut value = 0u32;
    // SAFETY: as in read_u64.
    unsafe { bpf_probe_read_kernel((&raw mut value).cast::<c_void>(), 4, addr as *const c_void) };
    value
}

#[inline(always)]
fn read_u8(addr: u64) -> u8 {
    let mut value = 0u8;
    // SAFETY: as in read_u64.
    unsafe { bpf_probe_read_kernel((&raw mut value).cast::<c_void>(), 1, addr as *const c_void) };
    value
}

/// Copies a NUL-terminated kernel string into `dst` (`len` bytes); returns the bytes written
/// including the NUL, or a negative error (then `dst` is zeroed).
#[inline(always)]
unsafe fn read_str(dst: *mut u8, len: u32, src: u64) -> i64 {
    // SAFETY: the caller passes a writable dst of len bytes; the helper checks src.
    unsafe { bpf_probe_read_kernel_str(dst.cast::<c_void>(), len, src as *const c_void) }
}

/// Zeroes `len` bytes (a multiple of 8, known at compile time after inlining) with plain stores.
/// Left to itself LLVM calls the byte-at-a-time `memset` subprogram instead, which costs a call
/// and a verified loop.
#[inline(always)]
unsafe fn zero(dst: *mut u8, len: usize) {
    for i in 0..len / 8 {
        // SAFETY: the caller passes len writable bytes, 8-byte aligned.
        unsafe { core::ptr::write_volatile(dst.cast::<u64>().add(i), 0) };
    }
}

#[inline(always)]
fn count_lost() {
    if let Some(lost) = LOST.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, and BPF programs do not preempt each other on one CPU.
        unsafe { *lost += 1 };
    }
    count_lost_in_cgroup();
}

/// `task->files->fdt->fd[fd]` for the current task, with the first three steps as direct loads
/// through the BTF-typed task pointer (the verifier turns them into fault-tolerant loads; each
/// saves a helper call on the hot path). `fd` is an array of pointers, which the verifier types as
/// a plain number, so its element needs a helper read.
#[inline(always)]
fn current_fd_file(fd: u64) -> (u64, u64) {
    // SAFETY: no preconditions; the result is a trusted pointer to the current task.
    let task = unsafe { bpf_get_current_task_btf() }.cast::<u8>();
    // SAFETY: the offsets are those of task_struct.files, files_struct.fdt and fdtable.fd in
    // this kernel's BTF; the verifier checks each load against that BTF and makes it fault-safe.
    let fds = unsafe {
        let files =
            core::ptr::read_volatile(task.add(off!(task_files) as usize).cast::<*const u8>());
        let fdt = core::ptr::read_volatile(files.add(off!(files_fdt) as usize).cast::<*const u8>());
        core::ptr::read_volatile(fdt.add(off!(fdtable_fd) as usize).cast::<u64>())
    };
    (task as u64, read_u64(fds + fd * 8))
}

/// `task->files->fdt->fd[fd]`.
#[inline(always)]
fn fd_file(task: u64, fd: u64) -> u64 {
    let files = read_u64(task + off!(task_files));
    let fdt = read_u64(files + off!(files_fdt));
    let fds = read_u64(fdt + off!(fdtable_fd));
    // No max_fds check: the syscall has just installed this descriptor, so it is in range, and a
    // racing close only makes the probe read return a stale or zero pointer.
    read_u64(fds + fd * 8)
}

// ---------------------------------------------------------------------------------------------
// File opens.

/// `sys_exit_{open,openat,openat2,creat,open_by_handle_at}`: the new descriptor is the return
/// value at offset 16 of every `sys_exit_*` record.
#[tracepoint]
pub fn sys_exit_open(ctx: TracePointContext) -> u32 {
    if STOP_AFTER.load() == 0 {
        return 0;
    }
    // SAFETY: offset 16 is `long ret` in every syscalls:sys_exit_* record; a constant-offset ctx
    // load is what the verifier allows (and it is cheaper than a helper call).
    let ret = unsafe { *(ctx.as_ptr() as *const u8).add(16).cast::<i64>() };
    if ret < 0 {
        return 0;
    }
    let (task, file) = current_fd_file(ret as u64);
    if STOP_AFTER.load() == 1 {
        return 0;
    }
    on_file(task, file, ret as i32, OpenSource::Syscall, &SCRATCH);
    0
}

/// [`sys_exit_open`] for kernels before 5.11, which have no `bpf_get_current_task_btf`: the
/// descriptor table is reached with helper reads instead of BTF loads. The loader takes it when
/// the kernel refuses the first.
#[tracepoint]
pub fn sys_exit_open_compat(ctx: TracePointContext) -> u32 {
    // SAFETY: as in sys_exit_open.
    let ret = unsafe { *(ctx.as_ptr() as *const u8).add(16).cast::<i64>() };
    if ret < 0 {
        return 0;
    }
    // SAFETY: no preconditions.
    let task = unsafe { bpf_get_current_task() };
    let file = fd_file(task, ret as u64);
    on_file(task, file, ret as i32, OpenSource::Syscall, &SCRATCH);
    0
}

/// `io_uring/io_uring_complete`: an `IORING_OP_OPENAT{,2}` completes with the new descriptor in
/// `res`. Only descriptors in the normal table are followed; fixed-file slots have no fd.
#[tracepoint]
pub fn io_uring_complete(ctx: TracePointContext) -> u32 {
    let base = ctx.as_ptr() as u64;
    let res = read_u32(base + off!(tp_io_uring_res)) as i32;
    if res < 0 {
        return 0;
    }
    let req = read_u64(base + off!(tp_io_uring_req));
    let opcode = read_u8(req + off!(io_kiocb_opcode));
    if opcode != IORING_OP_OPENAT && opcode != IORING_OP_OPENAT2 {
        return 0;
    }
    if read_u32(req + off!(io_open_file_slot)) != 0 {
        return 0;
    }
    // SAFETY: no preconditions.
    let task = unsafe { bpf_get_current_task() };
    // io-wq workers and the SQPOLL thread share the ring owner's file table.
    let file = fd_file(task, res as u64);
    on_file(task, file, res, OpenSource::IoUring, &SCRATCH);
    0
}

/// `lsm/file_open`: runs inside every open that passed the other permission checks, io_uring's
/// included, before the descriptor exists. Always allows.
#[lsm(hook = "file_open")]
pub fn lsm_file_open(ctx: LsmContext) -> i32 {
    let file: u64 = ctx.arg(0);
    // SAFETY: no preconditions.
    let task = unsafe { bpf_get_current_task() };
    on_file(task, file, -1, OpenSource::Lsm, &HOOK_SCRATCH);
    0
}

/// `fentry/security_file_open`: the same place as the LSM hook, for kernels without the BPF LSM
/// in their `lsm=` list.
#[fentry(function = "security_file_open")]
pub fn fentry_security_file_open(ctx: FEntryContext) -> i32 {
    let file: u64 = ctx.arg(0);
    // SAFETY: no preconditions.
    let task = unsafe { bpf_get_current_task() };
    on_file(task, file, -1, OpenSource::Fentry, &HOOK_SCRATCH);
    0
}

/// The prefilter, then the event. Everything before the approver lookup runs on every open, so it
/// is kept to three reads after the file pointer: dentry, the name's `hash_len`+`name` (one
/// 16-byte read) and the length mask (an array lookup the verifier inlines). A name that is not
/// approved gets a second chance by the file's identity ([`identity_approved`]).
#[inline(always)]
fn on_file(task: u64, file: u64, fd: i32, source: OpenSource, scratch: &PerCpuArray<Scratch>) {
    let dentry = read_u64(file + off!(file_f_path) + off!(path_dentry));
    if STOP_AFTER.load() == 2 {
        return;
    }
    let mut qstr = core::mem::MaybeUninit::<[u64; 2]>::uninit();
    // SAFETY: 16 bytes into a 16-byte local, which the helper fully writes (zeroes on failure);
    // the loader checked that qstr.name follows hash_len.
    let qstr = unsafe {
        bpf_probe_read_kernel(
            qstr.as_mut_ptr().cast::<c_void>(),
            16,
            (dentry + off!(dentry_d_name) + off!(qstr_hash_len)) as *const c_void,
        );
        qstr.assume_init()
    };
    let len = qstr[0] >> 32;
    if STOP_AFTER.load() == 3 {
        return;
    }
    let by_identity = !name_approved(len, qstr[1]);
    if by_identity && !identity_approved(file) {
        return;
    }
    // SAFETY: no preconditions.
    let pid_tgid = unsafe { bpf_get_current_pid_tgid() };
    if (pid_tgid >> 32) as u32 == SELF_TGID.load() {
        return;
    }
    let f_mode = read_u32(file + off!(file_f_mode));
    if f_mode & FMODE_PATH != 0 {
        // O_PATH gives no access to the contents; the LSM hook does not even run for it.
        return;
    }
    if is_repeat(task, file, f_mode, source) {
        return;
    }
    if emit_open(task, file, dentry, fd, f_mode, source, by_identity, scratch) {
        remember_sent(source);
    }
}

/// Whether the basename (`len` bytes at `name`) is approved: the length mask, the prefix of
/// that length, then the exact lookup in [`APPROVERS`].
#[inline(always)]
fn name_approved(len: u64, name: u64) -> bool {
    let Some(filter) = FILTER.get(0) else {
        return false;
    };
    if len > MAX_BASENAME as u64 || (filter.len_mask >> len) & 1 == 0 {
        return false;
    }
    // Second cut, for names of an approved length: their first 8 bytes against the approved
    // prefixes of that length. One 8-byte read (names live in the dentry's inline buffer or a
    // longer allocation, so 8 bytes are always there) instead of a string copy and a 64-byte hash.
    let mut word = 0u64;
    // SAFETY: 8 bytes into a local u64.
    let failed = unsafe {
        bpf_probe_read_kernel((&raw mut word).cast::<c_void>(), 8, name as *const c_void)
    } != 0;
    if !failed {
        if len < 8 {
            word &= (1u64 << (len * 8)) - 1;
        }
        let slots = &filter.prefixes[len as usize];
        if !slots.iter().any(|&slot| slot == word || slot == PREFIX_ANY) {
            return false;
        }
    }
    let mut key = core::mem::MaybeUninit::<BasenameKey>::uninit();
    // SAFETY: key is BASENAME_KEY_LEN bytes, zeroed then filled; len <= MAX_BASENAME so the name
    // and its NUL fit, and the bytes after them stay zero as the map's keys expect.
    let key = unsafe {
        zero(key.as_mut_ptr().cast::<u8>(), BASENAME_KEY_LEN);
        read_str(key.as_mut_ptr().cast::<u8>(), BASENAME_KEY_LEN as u32, name);
        key.assume_init()
    };
    APPROVERS.get_ptr(&key).is_some()
}

/// `file->f_inode`'s device (`i_sb->s_dev`) and inode number (`i_ino`).
#[inline(always)]
fn file_identity(file: u64) -> (u32, u64) {
    let inode = read_u64(file + off!(file_f_inode));
    let sb = read_u64(inode + off!(inode_i_sb));
    (
        read_u32(sb + off!(super_block_s_dev)),
        read_u64(inode + off!(inode_i_ino)),
    )
}

/// The identity of `task->mm->exe_file` (all zero for a task without one): which file, and its
/// change time and size, so that a file written over in place reads as another one.
#[inline(always)]
fn exe_identity(task: u64) -> ExeId {
    let mm = read_u64(task + off!(task_mm));
    let exe = read_u64(mm + off!(mm_exe_file));
    let inode = read_u64(exe + off!(file_f_inode));
    let sb = read_u64(inode + off!(inode_i_sb));
    ExeId {
        ino: read_u64(inode + off!(inode_i_ino)),
        dev: read_u32(sb + off!(super_block_s_dev)),
        ctime_nsec: read_u32(inode + off!(inode_ctime_nsec)),
        ctime_sec: read_u64(inode + off!(inode_ctime_sec)) as i64,
        size: read_u64(inode + off!(inode_i_size)) as i64,
    }
}

/// Whether the file is one approved by identity: its inode number's bit in [`INODE_FILTER`],
/// then its (device, inode) in [`IDENTITIES`]. Costs nothing while no identity is approved,
/// two reads and a bit test for an unwatched file.
#[inline(always)]
fn identity_approved(file: u64) -> bool {
    let Some(filter) = INODE_FILTER.get(0) else {
        return false;
    };
    if filter.count == 0 {
        return false;
    }
    let inode = read_u64(file + off!(file_f_inode));
    let ino = read_u64(inode + off!(inode_i_ino));
    let bit = ino & (INODE_FILTER_BITS - 1);
    let Some(word) = filter.bits.get((bit >> 6) as usize) else {
        return false;
    };
    if (word >> (bit & 63)) & 1 == 0 {
        return false;
    }
    let sb = read_u64(inode + off!(inode_i_sb));
    let key = FileIdKey {
        ino,
        dev: read_u32(sb + off!(super_block_s_dev)),
        _pad: 0,
    };
    IDENTITIES.get_ptr(&key).is_some()
}

/// Where a record of type `T` is built in this CPU's scratch buffer.
struct Building<T> {
    /// The fixed part.
    fixed: *mut T,
    /// The variable part, right after it.
    data: *mut u8,
    /// The scratch buffer's cursor.
    cursor: *mut u64,
}

/// This CPU's scratch buffer, for a record with a fixed part of type `T`.
#[inline(always)]
fn scratch_for<T>(scratch: &PerCpuArray<Scratch>) -> Option<Building<T>> {
    let scratch = scratch.get_ptr_mut(0)?;
    // SAFETY: T is one of the record types, which fit in HEADER_ROOM (checked above).
    unsafe {
        let base = (&raw mut (*scratch).record).cast::<u8>();
        Some(Building {
            fixed: base.cast::<T>(),
            data: base.add(size_of::<T>()),
            cursor: &raw mut (*scratch).cursor,
        })
    }
}

/// Copies the first `size_of::<T>() + data_len` bytes of the scratch buffer holding a `T` into
/// the ring buffer, or counts a lost event. Returns whether the record was queued.
///
/// # Safety
/// `record` is a scratch buffer from [`scratch_for`], filled up to there.
#[inline(always)]
unsafe fn output<T>(record: *mut T, data_len: u64) -> bool {
    let len = size_of::<T>() + (data_len & DATA_MASK) as usize;
    // SAFETY: the scratch buffer has HEADER_ROOM + DATA_MASK + 1 + NAME_READ bytes.
    let bytes = unsafe { core::slice::from_raw_parts(record.cast::<u8>(), len) };
    if EVENTS.output(bytes, 0).is_err() {
        count_lost();
        return false;
    }
    true
}

#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "each hook passes what it has in registers; a struct would go through the stack, whose 512 bytes the verifier counts"
)]
fn emit_open(
    task: u64,
    file: u64,
    dentry: u64,
    fd: i32,
    f_mode: u32,
    source: OpenSource,
    by_identity: bool,
    scratch: &PerCpuArray<Scratch>,
) -> bool {
    let Some(Building {
        fixed: event,
        data,
        cursor,
    }) = scratch_for::<OpenRecord>(scratch)
    else {
        return false;
    };
    // SAFETY: event and data point into this CPU's scratch buffer, which nothing else uses while
    // this program runs; every write is in bounds (see `walk`).
    unsafe {
        (*event).header = header(RecordKind::Open);
        let pos = fill_task(&raw mut (*event).task, task, data);
        (*event).source = source as u32;
        (*event).f_mode = f_mode;
        (*event).f_flags = read_u32(file + off!(file_f_flags));
        (*event).fd = fd;
        let (dev, ino) = file_identity(file);
        (*event).dev = dev;
        (*event).ino = ino;
        (*event).by_identity = by_identity as u32;
        (*event).exe_id = exe_identity(task);
        let (root_dentry, root_mnt) = task_root(task);
        let vfsmnt = read_u64(file + off!(file_f_path) + off!(path_mnt));
        let (pos, path) = walk::<PATH_DEPTH>(
            data,
            cursor,
            pos,
            PATH_BYTES as u64,
            dentry,
            vfsmnt,
            root_dentry,
            root_mnt,
        );
        (*event).path = path;
        let (pos, exe) = walk_exe(data, cursor, pos, task, root_dentry, root_mnt);
        (*event).exe = exe;
        output(event, pos)
    }
}

#[inline(always)]
fn header(kind: RecordKind) -> RecordHeader {
    RecordHeader {
        kind: kind as u32,
        _pad: 0,
        // SAFETY: no preconditions.
        ts_boot_ns: unsafe { bpf_ktime_get_boot_ns() },
    }
}

/// Fills `info` from the current task (`task` must be current) and writes its cgroup name at the
/// start of `data`; returns the bytes written there.
#[inline(always)]
unsafe fn fill_task(info: *mut TaskInfo, task: u64, data: *mut u8) -> u64 {
    // SAFETY: the helpers have no preconditions; info is writable and data has room for
    // CGROUP_NAME_LEN bytes (caller).
    unsafe {
        let pid_tgid = bpf_get_current_pid_tgid();
        let uid_gid = bpf_get_current_uid_gid();
        (*info).tgid = (pid_tgid >> 32) as u32;
        (*info).tid = pid_tgid as u32;
        let parent = read_u64(task + off!(task_real_parent));
        (*info).ppid = read_u32(parent + off!(task_tgid));
        (*info).uid = uid_gid as u32;
        (*info).gid = (uid_gid >> 32) as u32;
        let cred = read_u64(task + off!(task_cred));
        (*info).euid = read_u32(cred + off!(cred_euid));
        (*info).egid = read_u32(cred + off!(cred_egid));
        bpf_get_current_comm((*info).comm.as_mut_ptr().cast::<c_void>(), COMM_LEN as u32);
        let css_set = read_u64(task + off!(task_cgroups));
        let cgroup = read_u64(css_set + off!(css_set_dfl_cgrp));
        let kn = read_u64(cgroup + off!(cgroup_kn));
        let name = read_u64(kn + off!(kernfs_node_name));
        let n = read_str(data, CGROUP_NAME_LEN as u32, name);
        let len = non_negative(n) & (NAME_READ as u64 - 1);
        (*info).cgroup_len = len as u32;
        len
    }
}

/// `n` if it is not negative (a helper's byte count), else 0; without a branch.
#[inline(always)]
fn non_negative(n: i64) -> u64 {
    (n & !(n >> 63)) as u64
}

/// `task->fs->root` as (dentry, vfsmount).
#[inline(always)]
fn task_root(task: u64) -> (u64, u64) {
    let fs = read_u64(task + off!(task_fs));
    let root = fs + off!(fs_root);
    (
        read_u64(root + off!(path_dentry)),
        read_u64(root + off!(path_mnt)),
    )
}

/// Appends the path of `task->mm->exe_file` at `pos` in `data`; see [`walk`].
#[inline(always)]
unsafe fn walk_exe(
    data: *mut u8,
    cursor: *mut u64,
    pos: u64,
    task: u64,
    root_dentry: u64,
    root_mnt: u64,
) -> (u64, PathInfo) {
    let mm = read_u64(task + off!(task_mm));
    let exe = read_u64(mm + off!(mm_exe_file));
    if exe == 0 {
        // Kernel threads have no mm.
        return (
            pos,
            PathInfo {
                len: 0,
                flags: PATH_ABSENT,
            },
        );
    }
    let dentry = read_u64(exe + off!(file_f_path) + off!(path_dentry));
    let vfsmnt = read_u64(exe + off!(file_f_path) + off!(path_mnt));
    // SAFETY: as for walk (caller).
    unsafe {
        walk::<EXE_DEPTH>(
            data,
            cursor,
            pos,
            EXE_BYTES as u64,
            dentry,
            vfsmnt,
            root_dentry,
            root_mnt,
        )
    }
}

/// Walks from `dentry` (in mount `vfsmnt`) up to the task's root, like the kernel's d_path(): up
/// `d_parent` to the mount's root, then across to the mountpoint in the parent mount. Appends the
/// names, leaf first and each NUL-terminated, at `start` in `data`, until `DEPTH` steps or
/// `budget` bytes are used. Returns the new position and the path's length and flags.
///
/// The write position lives in `cursor`, map memory: each step loads it (the verifier knows
/// nothing of a value loaded from a map), masks it (now it knows `0..=DATA_MASK`) and stores it
/// back advanced. Kept in a register, its range would depend on how many earlier reads
/// succeeded, so the states of different histories would never match, the verifier could not
/// prune, and it ran out of its budget; loaded this way it is the same on every path.
///
/// # Safety
/// `data` and `cursor` must come from the same [`scratch_for`], and `start + budget` must be at
/// most `MAX_RECORD_DATA - NAME_READ + 1`, so that every name lands below `DATA_MASK`.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "the walk's state stays in registers; a struct would go through the stack, whose 512 bytes the verifier counts"
)]
unsafe fn walk<const DEPTH: usize>(
    data: *mut u8,
    cursor: *mut u64,
    start: u64,
    budget: u64,
    mut dentry: u64,
    mut vfsmnt: u64,
    root_dentry: u64,
    root_mnt: u64,
) -> (u64, PathInfo) {
    let mount_mnt = off!(mount_mnt);
    let limit = start + budget;
    let mut flags = PATH_TOO_DEEP;
    let mut errors = 0u64;
    // SAFETY: cursor is the scratch buffer's (caller).
    unsafe { core::ptr::write_volatile(cursor, start) };
    for _ in 0..DEPTH {
        if dentry == root_dentry && vfsmnt == root_mnt {
            flags = PATH_COMPLETE;
            break;
        }
        let mnt_root = read_u64(vfsmnt + off!(vfsmount_mnt_root));
        if dentry == mnt_root {
            let mount = vfsmnt - mount_mnt;
            let parent = read_u64(mount + off!(mount_mnt_parent));
            if parent == mount || parent == 0 {
                // Top of this namespace's mount tree (or outside the task's root).
                flags = PATH_COMPLETE;
                break;
            }
            dentry = read_u64(mount + off!(mount_mnt_mountpoint));
            vfsmnt = parent + mount_mnt;
            continue;
        }
        // SAFETY: cursor is the scratch buffer's (caller).
        let pos = unsafe { core::ptr::read_volatile(cursor) } & DATA_MASK;
        if pos >= limit {
            flags = PATH_TOO_LONG;
            break;
        }
        let parent = read_u64(dentry + off!(dentry_d_parent));
        let name = read_u64(dentry + off!(dentry_d_name) + off!(qstr_name));
        // SAFETY: pos <= DATA_MASK, and the scratch buffer has NAME_READ bytes more (caller).
        let n = unsafe { read_str(data.add(pos as usize), NAME_READ as u32, name) };
        // SAFETY: as above.
        unsafe {
            core::ptr::write_volatile(cursor, pos + (non_negative(n) & (2 * NAME_READ as u64 - 1)))
        };
        // Branch-free: a failed read adds nothing and sets the error bit.
        errors |= (n as u64) >> 63;
        if parent == dentry || parent == 0 {
            // A filesystem root that is not a mount root: a detached or lazily unmounted tree.
            flags = PATH_COMPLETE;
            break;
        }
        dentry = parent;
    }
    // SAFETY: as above.
    let end = unsafe { core::ptr::read_volatile(cursor) } & DATA_MASK;
    let flags = flags | if errors != 0 { PATH_READ_ERROR } else { 0 };
    (
        end,
        PathInfo {
            len: end.wrapping_sub(start) as u32,
            flags,
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Process lifecycle, for the user-space process cache.

/// `sched/sched_process_exec`: current is the task with its new image.
#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let Some(Building {
        fixed: event,
        data,
        cursor,
    }) = scratch_for::<ExecRecord>(&SCRATCH)
    else {
        return 0;
    };
    // SAFETY: event and data point into this CPU's scratch buffer, which nothing else uses while
    // this program runs; every write is in bounds.
    unsafe {
        let task = bpf_get_current_task();
        (*event).header = header(RecordKind::Exec);
        let pos = fill_task(&raw mut (*event).task, task, data);
        let (root_dentry, root_mnt) = task_root(task);
        let (pos, exe) = walk_exe(data, cursor, pos, task, root_dentry, root_mnt);
        (*event).exe = exe;
        (*event).exe_id = exe_identity(task);
        let pos = pos & ARGS_MASK;
        let mm = read_u64(task + off!(task_mm));
        let start = read_u64(mm + off!(mm_arg_start));
        let end = read_u64(mm + off!(mm_arg_end));
        let mut len = end.wrapping_sub(start);
        (*event).args_truncated = 0;
        if len > ARGS_LEN as u64 {
            // Never read past arg_end: the environment (with its secrets) follows.
            len = ARGS_LEN as u64;
            (*event).args_truncated = 1;
        }
        let read = bpf_probe_read_user(
            data.add(pos as usize).cast::<c_void>(),
            len as u32,
            start as *const c_void,
        );
        (*event).args_len = if read == 0 { len as u32 } else { 0 };
        // Read back from map memory and masked, as the walk's cursor is: LLVM clamps `len` with
        // two comparisons, and verifiers before 6.2 follow the branch that cannot be taken with
        // contradictory bounds (umin 2049, umax 2047), which made the size passed to
        // bpf_ringbuf_output unbounded ("R3 min value is negative" on 6.1). After the mask every
        // path has 0..=ARGS_MASK.
        let args_len =
            u64::from(core::ptr::read_volatile(&raw const (*event).args_len)) & ARGS_MASK;
        output(event, pos + args_len);
    }
    0
}

/// `sched_process_fork(parent, child)`: only new processes matter; threads share the cache entry.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let parent: u64 = ctx.arg(0);
    let child: u64 = ctx.arg(1);
    let child_tgid = read_u32(child + off!(task_tgid));
    let child_pid = read_u32(child + off!(task_pid));
    if child_pid != child_tgid {
        return 0;
    }
    let Some(mut entry) = EVENTS.reserve::<ForkRecord>(0) else {
        count_lost();
        return 0;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: event points at a reservation of size_of::<ForkRecord>() that only we write.
    unsafe {
        (*event).header = header(RecordKind::Fork);
        (*event).parent_tgid = read_u32(parent + off!(task_tgid));
        (*event).child_tgid = child_tgid;
    }
    entry.submit(0);
    0
}

/// `sched_process_exit(task, ...)`: reports the process once its last thread is gone
/// (`signal->live` reached zero). Older kernels lack the `group_dead` argument, hence the read.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> i32 {
    let task: u64 = ctx.arg(0);
    let signal = read_u64(task + off!(task_signal));
    if read_u32(signal + off!(signal_live)) != 0 {
        return 0;
    }
    let Some(mut entry) = EVENTS.reserve::<ExitRecord>(0) else {
        count_lost();
        return 0;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: event points at a reservation of size_of::<ExitRecord>() that only we write.
    unsafe {
        (*event).header = header(RecordKind::Exit);
        (*event).tgid = read_u32(task + off!(task_tgid));
        (*event)._pad = 0;
    }
    entry.submit(0);
    0
}

// ---------------------------------------------------------------------------------------------
// Flood resistance: repeats of an open that no rule can answer differently are dropped before
// the ring buffer, so one reader opening a file in a loop cannot push other readers' events
// out of it; and events lost anyway are counted by cgroup, so the agent can say whose they were.

/// Opens recently sent. LRU: a flood of distinct keys evicts entries, which only makes their next
/// open be sent again.
#[map]
static REPEATS: LruHashMap<RepeatKey, RepeatEntry> =
    LruHashMap::with_max_entries(REPEAT_ENTRIES, 0);

/// Opens dropped as repeats.
#[map]
static REPEATS_DROPPED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The window, and the rule set's generation (bumped by user space on every rule change: what
/// was sent before may not have reached the rules now running).
#[map]
static REPEATS_CONFIG: Array<RepeatConfig> = Array::with_max_entries(1, 0);

/// An open being sent: its key and what to remember of it once its record is queued.
#[repr(C)]
pub struct Pending {
    /// 152 bytes: too much for the 512-byte stack next to the rest.
    key: RepeatKey,
    entry: RepeatEntry,
    /// Non-zero when `key` and `entry` are to be remembered.
    armed: u64,
    /// `bpf_get_current_pid_tgid()` of the program run using the slot. The LSM and fentry
    /// programs can be preempted (with `CONFIG_PREEMPT`) by another task's run of the same
    /// program on the same CPU, which would take over the slot: a run checks that it still owns
    /// the slot before it trusts what it read there.
    owner: u64,
}

/// Per CPU: slot 0 for the tracepoint programs, slot 1 for the LSM and fentry programs, which
/// can be preempted by them (as with `SCRATCH` and `HOOK_SCRATCH`). Kept in map memory rather
/// than carried across `emit_open` in registers: the verifier then walks the paths once, not once
/// per outcome of the check.
#[map]
static PENDING: PerCpuArray<Pending> = PerCpuArray::with_max_entries(2, 0);

/// Events lost (ring buffer full) by cgroup id, per CPU: no atomics needed (BPF has no portable
/// atomic add in Rust's `core`), and user space sums the CPUs.
#[map]
static LOST_BY_CGROUP: LruPerCpuHashMap<u64, u64> =
    LruPerCpuHashMap::with_max_entries(LOST_CGROUP_ENTRIES, 0);

/// This CPU's [`Pending`] slot for the program kind of `source`.
#[inline(always)]
fn pending_slot(source: OpenSource) -> Option<*mut Pending> {
    let slot = match source {
        OpenSource::Lsm | OpenSource::Fentry => 1,
        OpenSource::Syscall | OpenSource::IoUring => 0,
    };
    PENDING.get_ptr_mut(slot)
}

/// Whether the open repeats one sent less than the window ago; then it is counted and must be
/// dropped. Otherwise arms the [`Pending`] slot with what to remember if the record gets into
/// the ring buffer (nothing when repeats are not dropped). Only a queued record is remembered:
/// an open whose record was lost is never the reason to drop the next one.
#[inline(always)]
fn is_repeat(task: u64, file: u64, f_mode: u32, source: OpenSource) -> bool {
    let Some(pending) = pending_slot(source) else {
        return false;
    };
    // SAFETY: no preconditions.
    let me = unsafe { bpf_get_current_pid_tgid() };
    // SAFETY: this CPU's slot for this kind of program (see Pending::owner for the hooks).
    unsafe {
        (*pending).armed = 0;
        (*pending).owner = me;
    }
    let Some(config) = REPEATS_CONFIG.get_ptr(0) else {
        return false;
    };
    // SAFETY: aligned u64s in map memory. User space rewrites the slot whole; reading the window
    // of one version and the epoch of another is harmless (an epoch never goes back, and the
    // window only bounds what counts as a repeat).
    let (window, epoch) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*config).window_ns),
            core::ptr::read_volatile(&raw const (*config).epoch),
        )
    };
    if window == 0 {
        return false;
    }
    // SAFETY: as above.
    let key = unsafe {
        fill_repeat_key(&raw mut (*pending).key, task, file, f_mode);
        &(*pending).key
    };
    let tag = repeat_tag(key);
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(entry) = REPEATS.get_ptr(key) {
        // SAFETY: entry points at this map's value. The element may be recycled for another key
        // meanwhile (LRU elements are reused without waiting): the tag check catches that.
        let (sent, entry_tag, entry_epoch) = unsafe {
            (
                core::ptr::read_volatile(&raw const (*entry).sent_ns),
                core::ptr::read_volatile(&raw const (*entry).tag),
                core::ptr::read_volatile(&raw const (*entry).epoch),
            )
        };
        // A time after `now` (another CPU sent it since) wraps to a large age: not a repeat.
        // Last, the slot must still be ours, or the key looked up may have been another run's.
        if entry_tag == tag
            && entry_epoch == epoch
            && now.wrapping_sub(sent) < window
            // SAFETY: as above.
            && unsafe { core::ptr::read_volatile(&raw const (*pending).owner) } == me
        {
            if let Some(dropped) = REPEATS_DROPPED.get_ptr_mut(0) {
                // SAFETY: per-CPU slot; see count_lost.
                unsafe { *dropped += 1 };
            }
            return true;
        }
    }
    // SAFETY: as above.
    unsafe {
        (*pending).entry = RepeatEntry {
            tag,
            epoch,
            sent_ns: now,
        };
        (*pending).armed = 1;
    }
    false
}

/// Remembers the open [`is_repeat`] armed, now that its record is queued.
#[inline(always)]
fn remember_sent(source: OpenSource) {
    let Some(pending) = pending_slot(source) else {
        return;
    };
    // SAFETY: no preconditions.
    let me = unsafe { bpf_get_current_pid_tgid() };
    // SAFETY: this CPU's slot, as in is_repeat; emit_open does not touch it.
    unsafe {
        if core::ptr::read_volatile(&raw const (*pending).armed) != 0
            && core::ptr::read_volatile(&raw const (*pending).owner) == me
        {
            // Replaces the element whole; never written through a looked-up pointer, which may
            // belong to another key by now. A failed insert only means the next open is sent.
            let _ = REPEATS.insert(&(*pending).key, &(*pending).entry, 0);
            (*pending).armed = 0;
        }
    }
}

/// Writes the [`RepeatKey`] of the current task opening `file` into `key`, field by field (a
/// whole struct would be built on the stack first).
///
/// # Safety
/// `key` is writable map memory.
#[inline(always)]
unsafe fn fill_repeat_key(key: *mut RepeatKey, task: u64, file: u64, f_mode: u32) {
    let mm = read_u64(task + off!(task_mm));
    let exe = read_u64(mm + off!(mm_exe_file));
    let (root_dentry, root_mnt) = task_root(task);
    // SAFETY: key is writable (caller); the helpers have no preconditions.
    unsafe {
        (*key).tgid = bpf_get_current_pid_tgid() >> 32;
        (*key).mm = mm;
        (*key).cgroup = bpf_get_current_cgroup_id();
        (*key).uid_gid = bpf_get_current_uid_gid();
        (*key).access = u64::from(f_mode & (FMODE_READ | FMODE_WRITE));
        (*key).root_dentry = root_dentry;
        (*key).root_mnt = root_mnt;
        fill_file_identity(&raw mut (*key).exe, exe);
        fill_file_identity(&raw mut (*key).file, file);
    }
}

/// See [`FileIdentity`]. A null `file` (no executable) reads as all zeros.
///
/// # Safety
/// `id` is writable map memory.
#[inline(always)]
unsafe fn fill_file_identity(id: *mut FileIdentity, file: u64) {
    let dentry = read_u64(file + off!(file_f_path) + off!(path_dentry));
    let inode = read_u64(file + off!(file_f_inode));
    // SAFETY: id is writable (caller).
    unsafe {
        (*id).mnt = read_u64(file + off!(file_f_path) + off!(path_mnt));
        (*id).dentry = dentry;
        (*id).parent = read_u64(dentry + off!(dentry_d_parent));
        (*id).name = read_u64(dentry + off!(dentry_d_name) + off!(qstr_hash_len));
        (*id).inode = inode;
        (*id).ino = read_u64(inode + off!(inode_i_ino));
        (*id).generation = u64::from(read_u32(inode + off!(inode_i_generation)));
    }
}

/// A hash of every word of the key (see [`RepeatEntry::tag`]).
#[inline(always)]
fn repeat_tag(key: &RepeatKey) -> u64 {
    const WORDS: usize = size_of::<RepeatKey>() / 8;
    const _: () = assert!(size_of::<RepeatKey>().is_multiple_of(8));
    let words = (key as *const RepeatKey).cast::<u64>();
    let mut hash = 0u64;
    for i in 0..WORDS {
        // SAFETY: i < WORDS, inside the key; RepeatKey is made of u64s.
        let word = unsafe { *words.add(i) };
        hash = (hash.rotate_left(23) ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    hash
}

/// Adds a lost event to the current task's cgroup. Best effort where the total (`LOST`) is exact:
/// an evicted cgroup loses its count, and an element recycled under us may take another's.
#[inline(always)]
fn count_lost_in_cgroup() {
    // SAFETY: no preconditions.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    match LOST_BY_CGROUP.get_ptr_mut(&cgroup) {
        // SAFETY: this CPU's slot; see count_lost.
        Some(count) => unsafe { *count += 1 },
        // Creates the element with 1 in this CPU's slot and 0 in the others.
        None => {
            let _ = LOST_BY_CGROUP.insert(&cgroup, &1, 0);
        }
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path, so this is never run.
    unsafe { core::hint::unreachable_unchecked() }
}
