//! Disk images for Kestrel: where a virtio-blk device's bytes live.
//!
//! A VM's disk is a [`DiskBackend`]: positional, vectored I/O on `&self`, so any number of
//! requests can run at once from any thread, with no shared file offset to keep consistent.
//! The device model (`virtio::block`) holds an `Arc<dyn DiskBackend>` and knows nothing of files
//! or formats.
//!
//! - `buffer.rs`: [`IoBuf`], a piece of guest memory a request reads into or writes from.
//! - `raw.rs`: [`RawFile`], a raw image or host block device, with `preadv`/`pwritev` straight
//!   into the request's buffers (`vectored.rs`).
//! - `direct.rs`: `O_DIRECT` (`cache=none`) for [`RawFile`]: the file's alignment, and a bounce
//!   buffer for the requests that do not meet it.
//! - `engine/`: asynchronous I/O for a device queue ([`engine::IoEngine`]): io_uring on a direct
//!   descriptor, a thread pool otherwise.
//! - `open.rs`: the disk factory, [`open::open_disk`]: checks, locks and opens an image as the
//!   format the user gave.
//! - `lock.rs`: image locking as QEMU does it (OFD locks on fixed bytes), so Kestrel and QEMU
//!   processes keep each other from writing an image another one uses.

mod buffer;
pub mod direct;
pub mod engine;
pub mod image;
pub mod lock;
pub mod open;
pub mod qcow2;
pub mod raw;
mod vectored;

pub use buffer::{total_len, IoBuf};
pub use raw::{OpenError, RawFile};

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

/// The storage behind a virtio-blk device: a raw file, a qcow2 image (and its backing chain), or a
/// test double. Offsets and lengths are in bytes of the guest's view of the disk.
pub trait DiskBackend: Send + Sync + 'static {
    /// The disk's size as the guest sees it, in bytes.
    fn size(&self) -> u64;
    /// Fills `buffers`, in order, from `offset`; reading past the end is an error.
    fn read_vectored_at(&self, buffers: &[IoBuf], offset: u64) -> io::Result<()>;
    /// Writes all of `buffers`, in order, at `offset`.
    fn write_vectored_at(&self, buffers: &[IoBuf], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// Gives back the storage of a range, which then reads as zeroes. Storage that cannot
    /// deallocate keeps the data, which a discard allows.
    fn discard(&self, offset: u64, length: u64) -> io::Result<()>;
    /// Makes a range read as zeroes, deallocating its storage when `may_unmap`.
    fn write_zeroes(&self, offset: u64, length: u64, may_unmap: bool) -> io::Result<()>;
    /// A descriptor whose byte N is the guest's byte N (a raw file), so an engine may submit I/O
    /// to it directly (io_uring) instead of calling this backend's methods. None for formats that
    /// map the guest's bytes themselves (qcow2) and for test doubles.
    fn direct_fd(&self) -> Option<RawFd> {
        None
    }
    /// Where the guest's `offset..offset + length` lives on the host, when that is one
    /// contiguous range of one file that may be read (and, for `write`, written in place), so an
    /// engine may move the bytes itself (io_uring) instead of calling this backend. None when the
    /// range needs the backend (unallocated, zeroes, compressed, copy-on-write, spanning
    /// mappings) or the mapping is being changed; the request then goes through the backend's
    /// methods. The mapping stays valid while the returned [`Extent`]'s lease is held.
    fn map_extent(&self, offset: u64, length: u64, write: bool) -> Option<Extent> {
        let _ = (offset, length, write);
        None
    }
}

/// A guest range's place on the host, from [`DiskBackend::map_extent`].
pub struct Extent {
    /// The file the range lives in; kept open by the backend (which the engine holds).
    pub fd: RawFd,
    /// Where the range starts in that file.
    pub host_offset: u64,
    /// What the file needs for its I/O to go straight to the kernel, when it was opened with
    /// `O_DIRECT`; requests that do not fit go through the backend instead.
    pub alignment: Option<direct::Alignment>,
    /// Keeps the mapping from changing (a discard, a resize) until it is dropped, after the I/O
    /// on it completed.
    pub lease: Lease,
}

/// Something that counts the [`Lease`]s it gave out, so it can wait for them before changing
/// mappings.
pub trait LeaseHolder: Send + Sync + 'static {
    /// One lease of this holder's ended.
    fn release(&self);
}

/// A hold on a backend's mappings: while it lives, the [`Extent`] it came with stays where it
/// is. Dropping it tells the holder.
pub struct Lease(Arc<dyn LeaseHolder>);

impl Lease {
    /// A lease the holder has already counted; [`LeaseHolder::release`] is called on drop.
    pub fn new(holder: Arc<dyn LeaseHolder>) -> Lease {
        Lease(holder)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lease")
    }
}

/// Plain-slice convenience over [`DiskBackend`], for tools and tests (the device uses guest memory
/// directly).
pub trait DiskBackendExt: DiskBackend {
    /// Fills `buffer` from `offset`.
    fn read_at(&self, buffer: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_vectored_at(&[IoBuf::from_mut_slice(buffer)], offset)
    }
    /// Writes all of `buffer` at `offset`.
    fn write_at(&self, buffer: &[u8], offset: u64) -> io::Result<()> {
        self.write_vectored_at(&[IoBuf::from_slice(buffer)], offset)
    }
}

impl<T: DiskBackend + ?Sized> DiskBackendExt for T {}
