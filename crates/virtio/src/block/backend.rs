//! Where a disk's bytes live. Everything is positional I/O on `&self`, so no shared file offset
//! has to be kept consistent between requests.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;

/// The storage behind a virtio-blk device: a raw file here, a failing double in tests.
pub trait DiskBackend: Send + Sync + 'static {
    /// Fills `buffer` from `offset`; a short read (the image shrank under us) is an error.
    fn read_at(&self, buffer: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buffer` at `offset`.
    fn write_at(&self, buffer: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// Gives back the storage of a range, which then reads as zeroes. Storage that cannot
    /// deallocate keeps the data, which a discard allows.
    fn discard(&self, offset: u64, length: u64) -> io::Result<()>;
    /// Makes a range read as zeroes, deallocating its storage when `may_unmap`.
    fn write_zeroes(&self, offset: u64, length: u64, may_unmap: bool) -> io::Result<()>;
}

/// A raw disk image (a regular file, sparse or not) or a host block device.
pub struct RawFile {
    file: File,
}

impl RawFile {
    /// Opens `path` read-only (`O_RDONLY`, so even a file the user may not write works) or
    /// read-write. Anything other than a regular file or a block device is refused: a directory
    /// opens read-only but is no disk.
    pub fn open(path: &Path, read_only: bool) -> io::Result<RawFile> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let file_type = file.metadata()?.file_type();
        if !file_type.is_file() && !file_type.is_block_device() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "neither a regular file nor a block device",
            ));
        }
        Ok(RawFile { file })
    }

    /// The size in bytes. Seeking to the end works for block devices too, whose metadata says 0.
    pub fn size(&self) -> io::Result<u64> {
        (&self.file).seek(SeekFrom::End(0))
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, length: u64) -> io::Result<()> {
        let too_far = || io::Error::new(io::ErrorKind::InvalidInput, "range beyond the largest file offset");
        let offset = libc::off_t::try_from(offset).map_err(|_| too_far())?;
        let length = libc::off_t::try_from(length).map_err(|_| too_far())?;
        loop {
            // SAFETY: fallocate only reads its integer arguments; the descriptor is ours and open.
            let result = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset, length) };
            if result == 0 {
                return Ok(());
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }

    /// Zeroes a range by writing zeroes: for filesystems that can neither punch holes nor zero
    /// ranges. The request limits (see the handler) bound how long this takes.
    fn write_zeroes_slowly(&self, mut offset: u64, length: u64) -> io::Result<()> {
        const CHUNK: u64 = 64 * 1024;
        let zeroes = vec![0u8; CHUNK.min(length) as usize];
        let end = offset + length;
        while offset < end {
            let count = (end - offset).min(CHUNK) as usize;
            self.file.write_all_at(&zeroes[..count], offset)?;
            offset += count as u64;
        }
        Ok(())
    }
}

/// The filesystem (tmpfs cannot zero ranges, for instance) or the device does not do this mode.
fn unsupported(error: &io::Error) -> bool {
    error.raw_os_error() == Some(libc::EOPNOTSUPP)
}

impl DiskBackend for RawFile {
    fn read_at(&self, buffer: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buffer, offset)
    }

    fn write_at(&self, buffer: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buffer, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn discard(&self, offset: u64, length: u64) -> io::Result<()> {
        match self.fallocate(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset, length) {
            Err(e) if unsupported(&e) => Ok(()),
            result => result,
        }
    }

    fn write_zeroes(&self, offset: u64, length: u64, may_unmap: bool) -> io::Result<()> {
        // The cheapest way the storage offers, falling back to the next: punching a hole (when the
        // driver allows deallocation), zeroing the range in place, writing zeroes.
        if may_unmap {
            match self.fallocate(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset, length) {
                Err(e) if unsupported(&e) => {}
                result => return result,
            }
        }
        match self.fallocate(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE, offset, length) {
            Err(e) if unsupported(&e) => self.write_zeroes_slowly(offset, length),
            result => result,
        }
    }
}
