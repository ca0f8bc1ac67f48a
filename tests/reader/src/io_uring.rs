//! Just enough io_uring to submit one `IORING_OP_OPENAT` and wait for it, with raw syscalls.

use std::{ffi::CString, io, ptr};

#[repr(C)]
#[derive(Default)]
struct SqringOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    flags: u32,
    dropped: u32,
    array: u32,
    resv1: u32,
    user_addr: u64,
}

#[repr(C)]
#[derive(Default)]
struct CqringOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    overflow: u32,
    cqes: u32,
    flags: u32,
    resv1: u32,
    user_addr: u64,
}

#[repr(C)]
#[derive(Default)]
struct Params {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
    sq_thread_cpu: u32,
    sq_thread_idle: u32,
    features: u32,
    wq_fd: u32,
    resv: [u32; 3],
    sq_off: SqringOffsets,
    cq_off: CqringOffsets,
}

/// `struct io_uring_sqe` for an openat.
#[repr(C)]
struct Sqe {
    opcode: u8,
    flags: u8,
    ioprio: u16,
    fd: i32,
    off: u64,
    addr: u64,
    len: u32,
    open_flags: u32,
    user_data: u64,
    buf_index: u16,
    personality: u16,
    file_index: u32,
    addr3: u64,
    pad: u64,
}

const IORING_OFF_SQ_RING: i64 = 0;
const IORING_OFF_CQ_RING: i64 = 0x800_0000;
const IORING_OFF_SQES: i64 = 0x1000_0000;
const IORING_ENTER_GETEVENTS: u32 = 1;
const IORING_OP_OPENAT: u8 = 18;

fn check(ret: i64) -> io::Result<i64> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

unsafe fn map(fd: i32, len: usize, offset: i64) -> io::Result<*mut u8> {
    // SAFETY: a shared mapping of the ring fd at one of its documented offsets.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd,
            offset,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p.cast())
}

/// Opens `path` read-only through io_uring; returns the CQE result (fd or -errno).
pub fn openat(path: &str) -> io::Result<i32> {
    submit_openat(path, false)
}

/// Opens `path` read-only through io_uring into fixed-file slot 0 of the ring (Linux 5.15+), so
/// that no descriptor is created; returns the CQE result (0 or -errno).
pub fn openat_fixed(path: &str) -> io::Result<i32> {
    submit_openat(path, true)
}

const IORING_REGISTER_FILES: u32 = 2;

fn submit_openat(path: &str, fixed_slot: bool) -> io::Result<i32> {
    let path = CString::new(path)?;
    let mut params = Params::default();
    // SAFETY: io_uring_setup with a zeroed params struct of the kernel's layout.
    let ring = check(unsafe {
        libc::syscall(libc::SYS_io_uring_setup, 1u32, &mut params as *mut Params)
    })? as i32;
    if fixed_slot {
        // One empty slot (-1) in the ring's fixed-file table.
        let slots = [-1i32];
        // SAFETY: an array of one descriptor, as IORING_REGISTER_FILES takes.
        check(unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                ring,
                IORING_REGISTER_FILES,
                slots.as_ptr(),
                1u32,
            )
        })?;
    }
    // SAFETY: the offsets and sizes come from the kernel's answer in params; this
    // single-threaded code is the ring's only user.
    unsafe {
        let sq_len = params.sq_off.array as usize + params.sq_entries as usize * 4;
        let cq_len = params.cq_off.cqes as usize + params.cq_entries as usize * 16;
        let sq = map(ring, sq_len, IORING_OFF_SQ_RING)?;
        let cq = map(ring, cq_len, IORING_OFF_CQ_RING)?;
        let sqes = map(
            ring,
            size_of::<Sqe>() * params.sq_entries as usize,
            IORING_OFF_SQES,
        )?;
        sqes.cast::<Sqe>().write(Sqe {
            opcode: IORING_OP_OPENAT,
            flags: 0,
            ioprio: 0,
            fd: libc::AT_FDCWD,
            off: 0,
            addr: path.as_ptr() as u64,
            len: 0,
            open_flags: libc::O_RDONLY as u32,
            user_data: 7,
            buf_index: 0,
            personality: 0,
            // Slot index + 1; 0 asks for a normal descriptor.
            file_index: u32::from(fixed_slot),
            addr3: 0,
            pad: 0,
        });
        let tail = sq.add(params.sq_off.tail as usize).cast::<u32>();
        let mask = *sq.add(params.sq_off.ring_mask as usize).cast::<u32>();
        let index = *tail & mask;
        *sq.add(params.sq_off.array as usize)
            .cast::<u32>()
            .add(index as usize) = 0;
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        *tail = tail.read_volatile().wrapping_add(1);
        check(libc::syscall(
            libc::SYS_io_uring_enter,
            ring,
            1u32,
            1u32,
            IORING_ENTER_GETEVENTS,
            ptr::null::<u8>(),
            0usize,
        ))?;
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        let head = cq
            .add(params.cq_off.head as usize)
            .cast::<u32>()
            .read_volatile();
        let cq_mask = *cq.add(params.cq_off.ring_mask as usize).cast::<u32>();
        // struct io_uring_cqe { u64 user_data; s32 res; u32 flags; }
        let cqe = cq.add(params.cq_off.cqes as usize + (head & cq_mask) as usize * 16);
        Ok(cqe.add(8).cast::<i32>().read_volatile())
    }
}
