//! io_uring on a backend's direct descriptor: `readv`/`writev` from and into the request's own
//! buffers, `fsync(DATASYNC)` for a flush. The kernel may move fewer bytes than asked (a signal,
//! a filesystem splitting a large request); the rest is submitted again from where it stopped.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use io_uring::register::Restriction;
use io_uring::{opcode, squeue, types, IoUring};

use super::inline::{Inline, Tried};
use super::{Completion, EventFd, Op};
use crate::{DiskBackend, IoBuf, Lease};

/// The most iovecs one `readv` takes (`IOV_MAX` on Linux); a longer list goes in parts.
const IOV_MAX: usize = 1024;

/// How often one operation may come back with EAGAIN or EINTR before it is failed: the kernel
/// returns those for passing conditions, and a descriptor that returns them forever must not
/// keep a request (and a snapshot waiting for it) going forever.
const MAX_RETRIES: u32 = 1000;

pub(super) struct Uring<B: ?Sized> {
    ring: IoUring,
    /// The operations in flight, by their io_uring user data.
    slots: Vec<Option<Slot<B>>>,
    free: Vec<usize>,
    /// The iovec arrays of ended operations, emptied, for the next ones: no allocation per
    /// request (at most one per slot ever made).
    spare: Vec<Spare>,
    /// Operations that completed without reaching the kernel (nothing to move, no room).
    ready: Vec<Completion>,
    /// Entries pushed since the last submission to the kernel.
    queued: bool,
    /// Entries pushed whose completion was not reaped yet.
    in_kernel: usize,
    /// Tries reads and writes of buffered descriptors on the spot first.
    inline: Inline,
}

/// An emptied iovec array kept for reuse.
struct Spare(Vec<libc::iovec>);

// SAFETY: the vector is empty (`recycle` clears it): it holds no pointer, only its allocation,
// which any thread may use or free.
unsafe impl Send for Spare {}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Flush,
}

struct Slot<B: ?Sized> {
    token: u64,
    /// Kept so `fd` stays open until the operation ends, even if the disk is replaced.
    _backend: Arc<B>,
    /// For I/O on a backend's mapped extent: keeps the mapping in place until the operation
    /// ends (dropped with the slot, when it is reaped).
    _lease: Option<Lease>,
    fd: RawFd,
    kind: Kind,
    /// Where the kernel reads from or writes to; the first `next` are done, and the one at `next`
    /// is shortened by what was done of it. Its heap buffer does not move while in flight.
    iovecs: Vec<libc::iovec>,
    next: usize,
    offset: u64,
    moved: usize,
    retries: u32,
}

// SAFETY: the iovecs point into buffers whose maker promised (`IoBuf::new`) they stay valid for
// the operation from any thread; nothing in a slot is tied to the thread that made it.
unsafe impl<B: ?Sized + Send + Sync> Send for Slot<B> {}

impl<B: DiskBackend + ?Sized> Uring<B> {
    pub fn new(entries: u32, event: &Arc<EventFd>) -> io::Result<Uring<B>> {
        // The ring is made, restricted and enabled on the thread that starts the VMM's threads
        // (the seccomp spawner): no thread the guest reaches (a vCPU activating the device, the
        // disk's worker) may call io_uring_setup, whose SQPOLL rings would run operations seccomp
        // never sees. With seccomp off this runs here.
        let event_fd = event.as_raw_fd();
        let ring = jail::seccomp::run_where_threads_start(move || -> io::Result<IoUring> {
            let ring = restricted_ring(entries)?;
            ring.submitter().register_eventfd(event_fd)?;
            ring.submitter().register_enable_rings()?;
            Ok(ring)
        })??;
        Ok(Uring {
            ring,
            slots: Vec::new(),
            free: Vec::new(),
            spare: Vec::new(),
            ready: Vec::new(),
            queued: false,
            in_kernel: 0,
            inline: Inline::default(),
        })
    }

    /// Starts `op` on `fd`; with `extent`, at that host offset instead of the op's, holding the
    /// lease until it ends. On a `buffered` descriptor (not `O_DIRECT`) a read or write is first
    /// tried on the spot (`inline.rs`); one that completes so is reported at the next reap
    /// without the eventfd, which the caller reaps after submitting anyway.
    pub fn submit(
        &mut self,
        backend: Arc<B>,
        fd: RawFd,
        op: Op,
        token: u64,
        extent: Option<(u64, Lease)>,
        buffered: bool,
    ) {
        let (kind, buffers, offset) = match op {
            Op::Read { buffers, offset } => (Kind::Read, buffers, offset),
            Op::Write { buffers, offset } => (Kind::Write, buffers, offset),
            Op::Flush => (Kind::Flush, Vec::new(), 0),
        };
        let mut iovecs = self.spare.pop().map(|spare| spare.0).unwrap_or_default();
        iovecs.extend(buffers.iter().filter(|b| !b.is_empty()).map(IoBuf::iovec));
        if kind != Kind::Flush && iovecs.is_empty() {
            self.recycle(iovecs);
            self.complete_early(token, Ok(0));
            return;
        }
        let (offset, lease) = match extent {
            Some((host_offset, lease)) => (host_offset, Some(lease)),
            None => (offset, None),
        };
        let mut slot = Slot {
            token,
            _backend: backend,
            _lease: lease,
            fd,
            kind,
            iovecs,
            next: 0,
            offset,
            moved: 0,
            retries: 0,
        };
        if buffered {
            let tried = match kind {
                Kind::Read => self.inline.read(fd, &slot.iovecs, offset),
                Kind::Write => self.inline.write(fd, &slot.iovecs, offset),
                Kind::Flush => Tried::Submit,
            };
            if let Tried::Result(result) = tried {
                // A transfer cut short (part of a read cached) goes on in io_uring from there.
                if let Progress::Done(result) = progress(&mut slot, result) {
                    self.recycle(slot.iovecs);
                    self.ready.push(Completion { token, result });
                    return;
                }
            }
        }
        let index = match self.free.pop() {
            Some(index) => {
                self.slots[index] = Some(slot);
                index
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.push(index);
    }

    /// An operation that ends without the kernel: reported at the next reap (which follows
    /// every submission and every reap that resubmits, so no eventfd wake-up is needed).
    fn complete_early(&mut self, token: u64, result: io::Result<usize>) {
        self.ready.push(Completion { token, result });
    }

    /// Keeps an ended operation's iovec array for a later one. A queue's depth bounds how many
    /// are kept; one grown past a typical request by a long chain is let go.
    fn recycle(&mut self, mut iovecs: Vec<libc::iovec>) {
        if iovecs.capacity() <= 64 {
            iovecs.clear();
            self.spare.push(Spare(iovecs));
        }
    }

    /// Entries in the kernel's hands: their completions will signal the eventfd.
    pub fn in_kernel(&self) -> usize {
        self.in_kernel
    }

    /// Queues the submission for what is left of slot `index`.
    fn push(&mut self, index: usize) {
        let Some(slot) = &self.slots[index] else { return };
        let entry = match slot.kind {
            Kind::Flush => opcode::Fsync::new(types::Fd(slot.fd)).flags(types::FsyncFlags::DATASYNC).build(),
            Kind::Read | Kind::Write => {
                let rest = &slot.iovecs[slot.next..];
                let count = rest.len().min(IOV_MAX) as u32;
                if slot.kind == Kind::Read {
                    opcode::Readv::new(types::Fd(slot.fd), rest.as_ptr(), count).offset(slot.offset).build()
                } else {
                    opcode::Writev::new(types::Fd(slot.fd), rest.as_ptr(), count).offset(slot.offset).build()
                }
            }
        }
        .user_data(index as u64);
        if self.push_entry(&entry).is_err() {
            // Room for one more failed even after handing the queued ones to the kernel.
            self.commit();
            if self.push_entry(&entry).is_err() {
                let error =
                    io::Error::new(io::ErrorKind::WouldBlock, "the io_uring submission queue is full");
                self.finish_early(index, Err(error));
                return;
            }
        }
        self.in_kernel += 1;
        self.queued = true;
    }

    fn push_entry(&mut self, entry: &squeue::Entry) -> Result<(), squeue::PushError> {
        // SAFETY: the entry's iovec array is its slot's, whose heap buffer stays in place until
        // the completion is reaped (slots are only taken out then), and the iovecs name buffers
        // valid until then by `IoBuf::new`'s contract; the descriptor is kept open by the slot's
        // backend.
        unsafe { self.ring.submission().push(entry) }
    }

    fn finish_early(&mut self, index: usize, result: io::Result<usize>) {
        if let Some(slot) = self.slots[index].take() {
            self.free.push(index);
            self.recycle(slot.iovecs);
            self.complete_early(slot.token, result);
        }
    }

    /// Hands the queued submissions to the kernel. On a failure other than a signal they stay
    /// queued, and the next commit tries again.
    pub fn commit(&mut self) {
        if !self.queued {
            return;
        }
        loop {
            match self.ring.submit() {
                Ok(_) => {
                    self.queued = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("cannot submit disk I/O to io_uring (will retry): {e}");
                    return;
                }
            }
        }
    }

    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        out.append(&mut self.ready);
        let finished: Vec<(u64, i32)> =
            self.ring.completion().map(|entry| (entry.user_data(), entry.result())).collect();
        for (index, result) in finished {
            self.in_kernel = self.in_kernel.saturating_sub(1);
            let index = index as usize;
            let Some(slot) = self.slots.get_mut(index).and_then(Option::as_mut) else {
                tracing::error!("io_uring completed an operation it was not given ({index})");
                continue;
            };
            match progress(slot, result) {
                Progress::Again => self.push(index),
                Progress::Done(result) => {
                    if let Some(slot) = self.slots[index].take() {
                        self.free.push(index);
                        self.recycle(slot.iovecs);
                        out.push(Completion { token: slot.token, result });
                    }
                }
            }
        }
        out.append(&mut self.ready);
        self.commit();
    }
}

enum Progress {
    /// Submit what is left.
    Again,
    Done(io::Result<usize>),
}

/// What a completion with `result` (bytes moved, or a negated errno) means for `slot`.
fn progress<B: ?Sized>(slot: &mut Slot<B>, result: i32) -> Progress {
    if result < 0 {
        let errno = -result;
        if (errno == libc::EAGAIN || errno == libc::EINTR) && slot.retries < MAX_RETRIES {
            slot.retries += 1;
            return Progress::Again;
        }
        return Progress::Done(Err(io::Error::from_raw_os_error(errno)));
    }
    if slot.kind == Kind::Flush {
        return Progress::Done(Ok(0));
    }
    if result == 0 {
        return Progress::Done(Err(match slot.kind {
            Kind::Read => io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the image"),
            _ => io::Error::new(io::ErrorKind::WriteZero, "the image took no more bytes"),
        }));
    }
    let mut moved = result as usize;
    slot.moved += moved;
    slot.offset += moved as u64;
    // Skip the iovecs done, and shorten the one the transfer stopped in.
    while moved > 0 && slot.next < slot.iovecs.len() {
        let current = &mut slot.iovecs[slot.next];
        if moved >= current.iov_len {
            moved -= current.iov_len;
            slot.next += 1;
        } else {
            // SAFETY: `moved` is less than the iovec's length, so the pointer stays inside it.
            current.iov_base = unsafe { current.iov_base.cast::<u8>().add(moved) }.cast();
            current.iov_len -= moved;
            moved = 0;
        }
    }
    match slot.next == slot.iovecs.len() {
        true => Progress::Done(Ok(slot.moved)),
        false => Progress::Again,
    }
}

/// A ring, still disabled, that can only ever run the operations Kestrel submits (`readv`,
/// `writev`, `fsync`), with no SQE flags and no registration once enabled: io_uring's operations
/// do not pass through seccomp, so a bug that reached the ring could otherwise open, connect or
/// read anything the process may. The caller registers the eventfd, then enables it.
fn restricted_ring(entries: u32) -> io::Result<IoUring> {
    let ring = IoUring::builder().setup_r_disabled().build(entries)?;
    let mut restrictions = [
        Restriction::sqe_op(opcode::Readv::CODE),
        Restriction::sqe_op(opcode::Writev::CODE),
        Restriction::sqe_op(opcode::Fsync::CODE),
    ];
    ring.submitter().register_restrictions(&mut restrictions)?;
    Ok(ring)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An operation Kestrel never submits (here a no-op) is refused by the kernel; the ones it
    /// submits are not.
    #[test]
    fn the_ring_runs_only_kestrels_operations() {
        use std::os::fd::AsRawFd;

        let mut ring = restricted_ring(4).unwrap();
        ring.submitter().register_enable_rings().unwrap();
        let file = tempfile::tempfile().unwrap();
        let fsync = opcode::Fsync::new(types::Fd(file.as_raw_fd())).build().user_data(1);
        let nop = opcode::Nop::new().build().user_data(2);
        // SAFETY: neither entry points at memory (the fd outlives the wait below).
        unsafe {
            ring.submission().push(&fsync).unwrap();
            ring.submission().push(&nop).unwrap();
        }
        ring.submit_and_wait(2).unwrap();
        let mut results: Vec<(u64, i32)> = ring.completion().map(|c| (c.user_data(), c.result())).collect();
        results.sort_unstable();
        assert_eq!(results, [(1, 0), (2, -libc::EACCES)]);
    }

    fn slot(buffers: &mut [Vec<u8>], kind: Kind) -> Slot<()> {
        let iovecs = buffers.iter_mut().map(|b| IoBuf::from_mut_slice(b).iovec()).collect();
        Slot {
            token: 0,
            _backend: Arc::new(()),
            _lease: None,
            fd: -1,
            kind,
            iovecs,
            next: 0,
            offset: 100,
            moved: 0,
            retries: 0,
        }
    }

    #[test]
    fn a_short_transfer_resumes_inside_the_iovec_it_stopped_in() {
        let mut buffers = vec![vec![0u8; 3], vec![0u8; 5000]];
        let start = buffers[1].as_ptr() as usize;
        let mut slot = slot(&mut buffers, Kind::Read);
        assert!(matches!(progress(&mut slot, 1000), Progress::Again));
        assert_eq!((slot.next, slot.offset, slot.moved), (1, 1100, 1000));
        assert_eq!(slot.iovecs[1].iov_base as usize, start + 997);
        assert_eq!(slot.iovecs[1].iov_len, 4003);
        assert!(matches!(progress(&mut slot, 4003), Progress::Done(Ok(5003))));
    }

    #[test]
    fn no_progress_and_lasting_retries_are_errors() {
        let mut buffers = vec![vec![0u8; 512]];
        let mut read = slot(&mut buffers, Kind::Read);
        assert!(
            matches!(progress(&mut read, 0), Progress::Done(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof)
        );
        let mut write = slot(&mut buffers, Kind::Write);
        for _ in 0..MAX_RETRIES {
            assert!(matches!(progress(&mut write, -libc::EAGAIN), Progress::Again));
        }
        assert!(matches!(progress(&mut write, -libc::EINTR), Progress::Done(Err(_))));
        let mut flush = slot(&mut [], Kind::Flush);
        assert!(
            matches!(progress(&mut flush, -libc::EIO), Progress::Done(Err(e)) if e.raw_os_error() == Some(libc::EIO))
        );
    }
}
