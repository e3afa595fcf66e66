//! Asynchronous disk I/O for one request queue: many requests in flight at once, their
//! completions collected later on the thread that submitted them.
//!
//! An [`IoEngine`] takes operations ([`Op`]) tagged with a caller's token and reports them done
//! through [`IoEngine::reap`]; its [`IoEngine::event_fd`] becomes readable whenever something
//! completed, so a device's event loop waits on it beside its queue notifications.
//!
//! - `uring.rs`: io_uring, for backends whose bytes are those of a file
//!   ([`DiskBackend::direct_fd`]): `readv`/`writev`/`fdatasync` straight from guest memory; and
//!   for the reads and writes of other backends (qcow2) whose range is one host extent
//!   ([`DiskBackend::map_extent`]), which then hold the extent's lease until they end.
//! - `pool.rs`: a few threads calling the backend's own methods, for every other backend (qcow2)
//!   and wherever io_uring cannot be set up.
//! - `event.rs`: the eventfd both report through.

mod event;
mod inline;
mod pool;
mod uring;

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::{total_len, DiskBackend, Extent, IoBuf};
pub use event::EventFd;
use pool::Pool;
use uring::Uring;

/// One disk operation. Discard and write-zeroes are not here: they are rare, and the device does
/// them synchronously.
#[derive(Debug)]
pub enum Op {
    /// Fill `buffers`, in order, from byte `offset` of the disk.
    Read { buffers: Vec<IoBuf>, offset: u64 },
    /// Write `buffers`, in order, at byte `offset` of the disk.
    Write { buffers: Vec<IoBuf>, offset: u64 },
    /// Make every completed write durable.
    Flush,
}

/// An operation that ended: the token it was submitted with, and the bytes it moved (0 for a
/// flush) or why it failed. A read or write that succeeds moved all its bytes.
#[derive(Debug)]
pub struct Completion {
    pub token: u64,
    pub result: io::Result<usize>,
}

/// How an engine moves the bytes of backends that have a direct file descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// io_uring on the file descriptor.
    IoUring,
    /// Worker threads calling the backend's methods.
    ThreadPool,
}

/// The submission is refused: as many operations as the engine's depth are in flight.
#[derive(Debug, thiserror::Error)]
#[error("{0} operations are in flight, the engine's depth")]
pub struct Full(pub usize);

/// An engine for one queue: io_uring for backends with a direct descriptor (if the kernel allows
/// it), a thread pool for the others, both completing through one eventfd.
pub struct IoEngine<B: DiskBackend + ?Sized> {
    uring: Option<Uring<B>>,
    /// Started at its first use: a raw disk served by io_uring never needs its threads.
    pool: Option<Pool<B>>,
    event: Arc<EventFd>,
    depth: usize,
    in_flight: usize,
}

/// Whether the io_uring fallback was already reported: once per process is enough.
static FALLBACK_LOGGED: AtomicBool = AtomicBool::new(false);
/// Whether the engine in use was already reported.
static CHOICE_LOGGED: AtomicBool = AtomicBool::new(false);

impl<B: DiskBackend + ?Sized> IoEngine<B> {
    /// An engine with room for `depth` operations in flight (a queue's size), preferring
    /// `preferred` for direct descriptors. If io_uring cannot be set up (an old kernel, a seccomp
    /// filter, `kernel.io_uring_disabled`), the thread pool serves everything; that is logged once.
    pub fn new(depth: u16, preferred: EngineKind) -> io::Result<IoEngine<B>> {
        let depth = usize::from(depth.max(1));
        let event = Arc::new(EventFd::new()?);
        let uring = match preferred {
            EngineKind::ThreadPool => None,
            EngineKind::IoUring => match Uring::new(depth as u32, &event) {
                Ok(uring) => Some(uring),
                Err(e) => {
                    if !FALLBACK_LOGGED.swap(true, Ordering::Relaxed) {
                        tracing::warn!("io_uring is not available ({e}); disks use a thread pool instead");
                    }
                    None
                }
            },
        };
        let engine = IoEngine { uring, pool: None, event, depth, in_flight: 0 };
        if !CHOICE_LOGGED.swap(true, Ordering::Relaxed) {
            tracing::info!("disk I/O engine: {:?}", engine.kind());
        }
        Ok(engine)
    }

    /// What serves backends with a direct descriptor.
    pub fn kind(&self) -> EngineKind {
        match self.uring {
            Some(_) => EngineKind::IoUring,
            None => EngineKind::ThreadPool,
        }
    }

    /// Readable when operations completed; [`IoEngine::reap`] clears it.
    pub fn event_fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }

    /// Makes [`IoEngine::event_fd`] readable, so its owner looks at the engine again (after
    /// draining it outside its event loop, with work left that waits for room).
    pub fn wake(&self) {
        self.event.signal();
    }

    /// Operations submitted and not yet reaped.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether a submission now would be refused.
    pub fn is_full(&self) -> bool {
        self.in_flight >= self.depth
    }

    /// Starts `op` on `backend`, which the engine keeps until the operation completes (so a
    /// replaced disk's file stays open for the requests still running on it). The buffers must
    /// stay valid until then (the contract of [`IoBuf::new`]). io_uring submissions are queued
    /// until [`IoEngine::commit`], so a batch costs one system call.
    pub fn submit(&mut self, backend: &Arc<B>, op: Op, token: u64) -> Result<(), Full> {
        if self.is_full() {
            return Err(Full(self.depth));
        }
        self.in_flight += 1;
        if let Some(uring) = &mut self.uring {
            if let Some(fd) = backend.direct_fd() {
                uring.submit(backend.clone(), fd, op, token, None, true);
                return Ok(());
            }
            // Flushes always go to the backend: a format's own metadata caches must be written
            // too, not only the file synced.
            if let Some(extent) = mapped(&**backend, &op) {
                let extent_fd = extent.fd;
                let buffered = extent.alignment.is_none();
                let extent = Some((extent.host_offset, extent.lease));
                uring.submit(backend.clone(), extent_fd, op, token, extent, buffered);
                return Ok(());
            }
        }
        let event = &self.event;
        self.pool.get_or_insert_with(|| Pool::new(event.clone())).submit(backend.clone(), op, token);
        Ok(())
    }

    /// Hands the queued io_uring submissions to the kernel.
    pub fn commit(&mut self) {
        if let Some(uring) = &mut self.uring {
            uring.commit();
        }
    }

    /// Appends the operations that completed since the last call to `out`, without waiting.
    /// For a caller that was not woken by [`IoEngine::event_fd`] (it reaps after submitting):
    /// the eventfd is only cleared while operations are in the kernel or the thread pool, as
    /// those completed on the spot do not signal it, so a batch served so costs no system call
    /// here.
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        let in_kernel = self.uring.as_ref().map_or(0, Uring::in_kernel);
        let in_pool = self.pool.is_some() && self.in_flight > 0;
        self.collect(out, in_kernel > 0 || in_pool);
    }

    /// Like [`IoEngine::reap`], after [`IoEngine::event_fd`] woke the caller: the eventfd is
    /// always cleared (io_uring may signal a completion just after it was reaped).
    pub fn reap_woken(&mut self, out: &mut Vec<Completion>) {
        self.collect(out, true);
    }

    fn collect(&mut self, out: &mut Vec<Completion>, clear: bool) {
        // Cleared first: a completion after the collection below makes it readable again.
        if clear {
            self.event.clear();
        }
        let before = out.len();
        if let Some(uring) = &mut self.uring {
            uring.reap(out);
        }
        if let Some(pool) = &self.pool {
            pool.reap(out);
        }
        self.in_flight -= out.len() - before;
    }

    /// Waits until at least one operation has completed (returns at once with none in flight),
    /// then reaps like [`IoEngine::reap`]: for draining the queue before a snapshot.
    pub fn wait(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        let before = out.len();
        self.commit();
        // Operations completed on the spot are ready without the eventfd.
        self.reap(out);
        while self.in_flight > 0 && out.len() == before {
            self.event.wait()?;
            self.reap_woken(out);
        }
        Ok(())
    }
}

/// The host extent a read or write may go to directly, if the backend has one for its whole
/// range and (under `O_DIRECT`) its buffers fit the file's alignment.
fn mapped<B: DiskBackend + ?Sized>(backend: &B, op: &Op) -> Option<Extent> {
    let (buffers, offset, write) = match op {
        Op::Read { buffers, offset } => (buffers, *offset, false),
        Op::Write { buffers, offset } => (buffers, *offset, true),
        Op::Flush => return None,
    };
    let extent = backend.map_extent(offset, total_len(buffers) as u64, write)?;
    match extent.alignment {
        Some(alignment) if !alignment.fits(buffers, extent.host_offset) => None,
        _ => Some(extent),
    }
}

impl<B: DiskBackend + ?Sized> Drop for IoEngine<B> {
    /// Waits for every operation in flight: they write into guest memory, which must not be
    /// unmapped (the VM torn down) under them.
    fn drop(&mut self) {
        let mut done = Vec::new();
        while self.in_flight > 0 {
            done.clear();
            if let Err(e) = self.wait(&mut done) {
                tracing::error!("cannot wait for disk I/O to finish: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
