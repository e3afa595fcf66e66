//! [`Qcow2Disk`]: a qcow2 image and its backing chain as a [`DiskBackend`].

use super::header::Header;
use crate::{DiskBackend, IoBuf};
use imago::file::File as ImagoFile;
use imago::io_buffers::{IoVector, IoVectorMut};
use imago::FormatAccess;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// An open qcow2 image (with its backing chain), usable from any number of threads at once.
///
/// Reads and writes run concurrently (imago serialises only the metadata updates that need
/// it); discards and resizes, which may invalidate the mappings a running request holds, wait
/// for the running requests and run alone.
pub struct Qcow2Disk {
    image: RwLock<FormatAccess<ImagoFile>>,
    size: AtomicU64,
    header: Header,
    backing_chain: Vec<PathBuf>,
    writable: bool,
}

impl Qcow2Disk {
    pub(super) fn new(
        image: FormatAccess<ImagoFile>,
        header: Header,
        backing_chain: Vec<PathBuf>,
        writable: bool,
    ) -> Qcow2Disk {
        Qcow2Disk {
            size: AtomicU64::new(image.size()),
            image: RwLock::new(image),
            header,
            backing_chain,
            writable,
        }
    }

    /// The image's header as it was when opened.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The backing files opened below this image, nearest first.
    pub fn backing_chain(&self) -> &[PathBuf] {
        &self.backing_chain
    }

    /// Whether the image was opened writable.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Grows the virtual disk to `new_size` bytes (the new range reads as zeroes), or shrinks it
    /// (the data past `new_size` is dropped).
    pub fn resize(&self, new_size: u64) -> io::Result<()> {
        self.check_writable()?;
        let mut image = self.image.write().unwrap_or_else(|e| e.into_inner());
        image.resize(new_size, imago::format::PreallocateMode::Zero)?;
        image.flush()?;
        image.sync()?;
        self.size.store(image.size(), Ordering::Release);
        Ok(())
    }

    /// Whether `offset..offset + length` holds data of this image's own (not a backing file's,
    /// not zeroes), and for how many bytes from `offset` that answer holds (at least 1 when
    /// `length > 0` and `offset` is inside the disk).
    pub fn allocated(&self, offset: u64, length: u64) -> io::Result<(bool, u64)> {
        let image = self.image.read().unwrap_or_else(|e| e.into_inner());
        let length = length.min(self.size().saturating_sub(offset));
        let (mapping, len) = image.get_shallow_mapping(offset, length)?;
        let own = matches!(
            mapping,
            imago::ShallowMapping::Raw { .. }
                | imago::ShallowMapping::Special { .. }
                | imago::ShallowMapping::Zero { explicit: true, .. }
        );
        Ok((own, len.max(1).min(length.max(1))))
    }

    /// Drops this layer's data in a range so that the backing file shows through (the image
    /// tool's commit, once the data is in the backing file).
    pub(crate) fn discard_to_backing(&self, offset: u64, length: u64) -> io::Result<()> {
        self.check_writable()?;
        self.check_range(offset, length)?;
        let mut image = self.image.write().unwrap_or_else(|e| e.into_inner());
        image.discard_to_backing(offset, length)
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::PermissionDenied, "the qcow2 image is opened read-only"))
        }
    }

    fn check_range(&self, offset: u64, length: u64) -> io::Result<()> {
        let size = self.size();
        match offset.checked_add(length) {
            Some(end) if end <= size => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the range {offset}+{length} is past the end of the disk ({size} bytes)"),
            )),
        }
    }
}

impl DiskBackend for Qcow2Disk {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn read_vectored_at(&self, buffers: &[IoBuf], offset: u64) -> io::Result<()> {
        self.check_range(offset, crate::total_len(buffers) as u64)?;
        let mut vector = IoVectorMut::with_capacity(buffers.len());
        for buffer in buffers {
            // SAFETY: the buffers are this read request's destinations, mapped and writable for
            // the call by `IoBuf::new`'s contract; imago only copies into them.
            vector.push(unsafe { buffer.as_mut_slice() });
        }
        let image = self.image.read().unwrap_or_else(|e| e.into_inner());
        image.readv(vector, offset)
    }

    fn write_vectored_at(&self, buffers: &[IoBuf], offset: u64) -> io::Result<()> {
        self.check_writable()?;
        self.check_range(offset, crate::total_len(buffers) as u64)?;
        let mut vector = IoVector::with_capacity(buffers.len());
        for buffer in buffers {
            // SAFETY: mapped and readable for the call by `IoBuf::new`'s contract; imago only
            // copies out of them.
            vector.push(unsafe { buffer.as_slice() });
        }
        let image = self.image.read().unwrap_or_else(|e| e.into_inner());
        image.writev(vector, offset)
    }

    fn flush(&self) -> io::Result<()> {
        if !self.writable {
            return Ok(());
        }
        let image = self.image.read().unwrap_or_else(|e| e.into_inner());
        image.flush()?;
        image.sync()
    }

    fn discard(&self, offset: u64, length: u64) -> io::Result<()> {
        // A discarded range must read as zeroes, never as the backing file's data: with a
        // backing file, zero clusters (or written zeroes) hide it.
        self.write_zeroes(offset, length, true)
    }

    fn write_zeroes(&self, offset: u64, length: u64, may_unmap: bool) -> io::Result<()> {
        self.check_writable()?;
        self.check_range(offset, length)?;
        if may_unmap && self.backing_chain.is_empty() {
            let mut image = self.image.write().unwrap_or_else(|e| e.into_inner());
            image.discard_to_zero(offset, length)
        } else {
            let image = self.image.read().unwrap_or_else(|e| e.into_inner());
            image.write_zeroes(offset, length)
        }
    }
}
