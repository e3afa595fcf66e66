//! [`Qcow2Disk`]: a qcow2 image and its backing chain as a [`DiskBackend`].

use super::epoch::Epoch;
use super::header::Header;
use crate::direct::Alignment;
use crate::{DiskBackend, Extent, IoBuf};
use imago::file::File as ImagoFile;
use imago::io_buffers::{IoVector, IoVectorMut};
use imago::{FormatAccess, Storage};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// An open qcow2 image (with its backing chain), usable from any number of threads at once.
///
/// Reads and writes run concurrently (imago serialises only the metadata updates that need
/// it); discards and resizes, which may invalidate the mappings a running request holds, wait
/// for the running requests and run alone.
///
/// Requests on allocated clusters may bypass imago: [`DiskBackend::map_extent`] gives their host
/// place, under a lease on the mapping epoch that discards and resizes wait for.
pub struct Qcow2Disk {
    image: RwLock<FormatAccess<ImagoFile>>,
    size: AtomicU64,
    header: Header,
    backing_chain: Vec<PathBuf>,
    writable: bool,
    /// Leased by fast-path I/O; taken exclusively (after `image`'s write lock is no longer
    /// enough) by whatever may move clusters. Always taken before `image`'s write lock.
    epoch: Arc<Epoch>,
    /// The files imago's storage objects read, by the storage object's address (stable: imago
    /// keeps them on the heap for as long as the image is open), with our own descriptor for
    /// each, so fast-path I/O can reach them.
    extents: Vec<ExtentFile>,
}

/// A file of the chain as the fast path reaches it.
struct ExtentFile {
    storage: usize,
    file: File,
    /// Set when the file is opened with `O_DIRECT`.
    alignment: Option<Alignment>,
}

/// A file of the image or its backing chain, opened by Kestrel (a duplicate of the descriptor
/// imago uses), for the fast path.
pub(super) struct ChainFile {
    /// The name the file was given to imago under (its storage object's filename).
    pub path: PathBuf,
    pub file: File,
    pub direct: bool,
}

impl Qcow2Disk {
    pub(super) fn new(
        image: FormatAccess<ImagoFile>,
        header: Header,
        backing_chain: Vec<PathBuf>,
        writable: bool,
        files: Vec<ChainFile>,
    ) -> Qcow2Disk {
        let extents = extent_files(&image, files);
        Qcow2Disk {
            size: AtomicU64::new(image.size()),
            image: RwLock::new(image),
            header,
            backing_chain,
            writable,
            epoch: Arc::new(Epoch::default()),
            extents,
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
        let _exclusive = self.epoch.exclusive();
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
        let _exclusive = self.epoch.exclusive();
        let mut image = self.image.write().unwrap_or_else(|e| e.into_inner());
        image.discard_to_backing(offset, length)
    }

    /// The descriptor (and `O_DIRECT` alignment) of the file behind imago's storage object.
    fn extent_file(&self, storage: &ImagoFile) -> Option<&ExtentFile> {
        let address = std::ptr::from_ref(storage) as usize;
        self.extents.iter().find(|e| e.storage == address)
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
        // Freeing clusters needs every fast-path request on them to have ended. This may be the
        // queue thread that reaps those requests, so it does not wait: while any runs, the range
        // is zeroed in place instead (it reads as zeroes all the same; the space stays
        // allocated, which a discard and an unmap hint allow).
        let exclusive = match may_unmap && self.backing_chain.is_empty() {
            true => self.epoch.try_exclusive(),
            false => None,
        };
        if let Some(_exclusive) = exclusive {
            let mut image = self.image.write().unwrap_or_else(|e| e.into_inner());
            image.discard_to_zero(offset, length)
        } else {
            let image = self.image.read().unwrap_or_else(|e| e.into_inner());
            image.write_zeroes(offset, length)
        }
    }

    fn map_extent(&self, offset: u64, length: u64, write: bool) -> Option<Extent> {
        if self.extents.is_empty() || length == 0 || (write && !self.writable) {
            return None;
        }
        if offset.checked_add(length)? > self.size() {
            return None;
        }
        // The lease first: holding it, no one holds or waits for `image`'s write lock (they
        // take the epoch before it), so the read lock below is free to take.
        let lease = self.epoch.try_lease()?;
        let image = self.image.try_read().ok()?;
        let (mapping, mapped) = image.get_mapping(offset, length).ok()?;
        if mapped < length {
            return None;
        }
        let imago::Mapping::Raw { storage, offset: host_offset, writable, .. } = mapping else {
            return None;
        };
        if write && !writable {
            return None;
        }
        let file = self.extent_file(storage)?;
        Some(Extent { fd: file.file.as_raw_fd(), host_offset, alignment: file.alignment, lease })
    }
}

/// Pairs imago's storage objects with Kestrel's descriptors of the same files, by the name each
/// was opened under. A storage object without a match is simply not reached by the fast path.
fn extent_files(image: &FormatAccess<ImagoFile>, files: Vec<ChainFile>) -> Vec<ExtentFile> {
    let storages = image.inner().collect_storage_dependencies();
    let mut extents = Vec::new();
    for chain_file in files {
        let found = storages.iter().find(|s| s.get_filename().as_deref() == Some(chain_file.path.as_path()));
        let Some(storage) = found else { continue };
        let alignment = chain_file.direct.then(|| Alignment::of(&chain_file.file));
        extents.push(ExtentFile {
            storage: std::ptr::from_ref(*storage) as usize,
            file: chain_file.file,
            alignment,
        });
    }
    extents
}
