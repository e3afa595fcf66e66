//! Reads and writes tried on the submitting thread before io_uring is asked: a buffered read
//! whose pages are cached, or a buffered write the page cache takes at once, is a copy the kernel
//! does in a system call; handing it to io_uring instead costs a submission, a completion, an
//! eventfd wake-up of the worker and, for writes on filesystems that cannot write into the page
//! cache without blocking (ext4), a hop to an io_uring worker thread and back.
//!
//! Only for buffered descriptors: under `O_DIRECT` a "non-blocking" read still waits for the
//! device, which is io_uring's job.

use std::os::fd::RawFd;

/// Whether a try on the spot is worth it for the descriptors of one engine: a filesystem that
/// refuses non-blocking reads or writes (EOPNOTSUPP) is remembered, so its later requests skip
/// the system call that would only fail again.
#[derive(Default)]
pub(super) struct Inline {
    /// The last descriptor that refused `RWF_NOWAIT` reads: they go to io_uring directly.
    reads_refused: Option<RawFd>,
    /// The last descriptor that refused `RWF_NOWAIT` writes: they are written with a plain
    /// (blocking) `pwritev`, as io_uring would only do the same on one of its worker threads.
    writes_refused: Option<RawFd>,
}

/// What a try on the spot gave.
pub(super) enum Tried {
    /// The system call's result as io_uring reports one: bytes moved, or a negated errno.
    Result(i32),
    /// The data are not at hand (EAGAIN) or the filesystem cannot tell without blocking: the
    /// operation goes to io_uring.
    Submit,
}

impl Inline {
    /// Reads into `iovecs` from `offset` of `fd` if that needs no waiting.
    pub fn read(&mut self, fd: RawFd, iovecs: &[libc::iovec], offset: u64) -> Tried {
        if self.reads_refused == Some(fd) {
            return Tried::Submit;
        }
        match syscall_result(preadv2(fd, iovecs, offset, libc::RWF_NOWAIT)) {
            result if result == -libc::EOPNOTSUPP => {
                self.reads_refused = Some(fd);
                Tried::Submit
            }
            result if result == -libc::EAGAIN => Tried::Submit,
            result => Tried::Result(result),
        }
    }

    /// Writes `iovecs` at `offset` of `fd`: without blocking if the filesystem can, else (it
    /// refuses `RWF_NOWAIT`) with a plain buffered write, a copy into the page cache.
    pub fn write(&mut self, fd: RawFd, iovecs: &[libc::iovec], offset: u64) -> Tried {
        if self.writes_refused != Some(fd) {
            match syscall_result(pwritev2(fd, iovecs, offset, libc::RWF_NOWAIT)) {
                result if result == -libc::EOPNOTSUPP => self.writes_refused = Some(fd),
                result if result == -libc::EAGAIN => return Tried::Submit,
                result => return Tried::Result(result),
            }
        }
        match syscall_result(pwritev2(fd, iovecs, offset, 0)) {
            result if result == -libc::EAGAIN => Tried::Submit,
            result => Tried::Result(result),
        }
    }
}

/// At most this many iovecs per call (IOV_MAX); the rest, if any, is io_uring's.
const IOV_MAX: usize = 1024;

fn preadv2(fd: RawFd, iovecs: &[libc::iovec], offset: u64, flags: libc::c_int) -> isize {
    let count = iovecs.len().min(IOV_MAX) as libc::c_int;
    // SAFETY: the iovecs name buffers the caller keeps valid for the operation (`IoBuf::new`'s
    // contract); preadv2 reads `count` of them, all inside the slice.
    unsafe { libc::preadv2(fd, iovecs.as_ptr(), count, offset as libc::off_t, flags) }
}

fn pwritev2(fd: RawFd, iovecs: &[libc::iovec], offset: u64, flags: libc::c_int) -> isize {
    let count = iovecs.len().min(IOV_MAX) as libc::c_int;
    // SAFETY: as in `preadv2`; pwritev2 only reads the buffers.
    unsafe { libc::pwritev2(fd, iovecs.as_ptr(), count, offset as libc::off_t, flags) }
}

/// A system call's return as io_uring reports it: bytes (a request is at most a few MiB, so they
/// fit), or the negated errno.
fn syscall_result(returned: isize) -> i32 {
    if returned < 0 {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO);
        return -errno;
    }
    i32::try_from(returned).unwrap_or(i32::MAX)
}
