//! A raw image file as a disk, for the image tool (the VM's raw backend lives elsewhere and is
//! built for speed; this one only has to be correct).

use crate::{DiskBackend, IoBuf};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

pub(super) struct RawFile {
    file: File,
    size: AtomicU64,
    writable: bool,
}

impl RawFile {
    pub(super) fn new(file: File, writable: bool) -> io::Result<RawFile> {
        let size = size_of(&file)?;
        Ok(RawFile { file, size: AtomicU64::new(size), writable })
    }

    /// Sets the size (a raw file's resize).
    pub(super) fn set_size(&self, size: u64) -> io::Result<()> {
        self.file.set_len(size)?;
        self.size.store(size, Ordering::Release);
        Ok(())
    }
}

/// A file's size; a block device's from seeking to its end.
pub(super) fn size_of(file: &File) -> io::Result<u64> {
    crate::qcow2::metaio::file_len(file)
}

impl DiskBackend for RawFile {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn read_vectored_at(&self, buffers: &[IoBuf], mut offset: u64) -> io::Result<()> {
        for buffer in buffers {
            // SAFETY: a read request's destination, mapped and writable for the call.
            let slice = unsafe { buffer.as_mut_slice() };
            self.file.read_exact_at(slice, offset)?;
            offset += slice.len() as u64;
        }
        Ok(())
    }

    fn write_vectored_at(&self, buffers: &[IoBuf], mut offset: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "the image is opened read-only"));
        }
        for buffer in buffers {
            // SAFETY: mapped and readable for the call.
            let slice = unsafe { buffer.as_slice() };
            self.file.write_all_at(slice, offset)?;
            offset += slice.len() as u64;
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn discard(&self, offset: u64, length: u64) -> io::Result<()> {
        self.write_zeroes(offset, length, true)
    }

    fn write_zeroes(&self, offset: u64, length: u64, _may_unmap: bool) -> io::Result<()> {
        let zeroes = vec![0u8; length.min(1 << 20) as usize];
        let mut done = 0;
        while done < length {
            let n = (length - done).min(zeroes.len() as u64) as usize;
            self.file.write_all_at(&zeroes[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}
