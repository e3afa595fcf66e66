//! `cache=none` on a raw image: `O_DIRECT` I/O, around the host's page cache.
//!
//! `O_DIRECT` takes a request only if the file offset, each buffer's address and each buffer's
//! length are multiples of the file's direct-I/O alignment; anything else fails with `EINVAL`.
//! A guest chooses its buffers, and not every guest aligns them (Linux does: its requests go
//! straight through). A request that is not aligned goes through a second descriptor of the same
//! file opened without `O_DIRECT`, through the page cache: Linux keeps the two coherent (direct
//! I/O writes back and drops the cached pages of its range first), and a flush (`fdatasync`)
//! covers the file whichever descriptor wrote it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::{DiskBackend, IoBuf, RawFile};

/// The alignment assumed where the kernel does not say (before Linux 6.1, or a filesystem that
/// does not report it): the largest logical block size in common use.
const FALLBACK_ALIGN: u64 = 4096;

/// A raw image opened `O_DIRECT`, with a page-cache descriptor for unaligned requests.
pub(crate) struct DirectRaw {
    direct: RawFile,
    buffered: RawFile,
    /// Buffer addresses must be multiples of this.
    memory_align: u64,
    /// File offsets and buffer lengths must be multiples of this.
    offset_align: u64,
}

impl DirectRaw {
    /// `file` is the image, open (and locked) with `O_DIRECT`; `read_only` as it was opened.
    pub(crate) fn new(file: File, read_only: bool) -> Result<DirectRaw, crate::raw::OpenError> {
        let (memory_align, offset_align) = direct_alignment(&file);
        // The same open file, again, without O_DIRECT: /proc/self/fd names the inode, not a path
        // that could have been swapped since.
        let again = Path::new("/proc/self/fd").join(file.as_raw_fd().to_string());
        let buffered =
            OpenOptions::new().read(true).write(!read_only).open(again).map_err(crate::raw::OpenError::Io)?;
        Ok(DirectRaw {
            direct: RawFile::from_file(file)?,
            buffered: RawFile::from_file(buffered)?,
            memory_align,
            offset_align,
        })
    }

    fn aligned(&self, buffers: &[IoBuf], offset: u64) -> bool {
        offset.is_multiple_of(self.offset_align)
            && buffers.iter().all(|buffer| {
                (buffer.as_ptr() as u64).is_multiple_of(self.memory_align)
                    && (buffer.len() as u64).is_multiple_of(self.offset_align)
            })
    }

    fn for_request(&self, buffers: &[IoBuf], offset: u64) -> &RawFile {
        if self.aligned(buffers, offset) {
            &self.direct
        } else {
            &self.buffered
        }
    }
}

/// The file's direct-I/O alignment (memory, offset) as `statx` reports it, else the fallback.
fn direct_alignment(file: &File) -> (u64, u64) {
    // SAFETY: statx is plain data, for which all zeroes is a valid value.
    let mut info: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the descriptor is open for the call, the path is a NUL-terminated empty string
    // (AT_EMPTY_PATH: the descriptor itself), and `info` is a valid, exclusively borrowed statx.
    let result = unsafe {
        libc::statx(file.as_raw_fd(), c"".as_ptr(), libc::AT_EMPTY_PATH, libc::STATX_DIOALIGN, &mut info)
    };
    let reported = result == 0
        && info.stx_mask & libc::STATX_DIOALIGN != 0
        && info.stx_dio_mem_align > 0
        && info.stx_dio_offset_align > 0;
    if !reported {
        return (FALLBACK_ALIGN, FALLBACK_ALIGN);
    }
    // Powers of two by the kernel's definition; bounded so a strange report cannot matter.
    let sane = |align: u32| u64::from(align).clamp(1, 1 << 20);
    (sane(info.stx_dio_mem_align), sane(info.stx_dio_offset_align))
}

impl DiskBackend for DirectRaw {
    fn size(&self) -> u64 {
        self.direct.size()
    }

    fn read_vectored_at(&self, buffers: &[IoBuf], offset: u64) -> io::Result<()> {
        self.for_request(buffers, offset).read_vectored_at(buffers, offset)
    }

    fn write_vectored_at(&self, buffers: &[IoBuf], offset: u64) -> io::Result<()> {
        self.for_request(buffers, offset).write_vectored_at(buffers, offset)
    }

    fn flush(&self) -> io::Result<()> {
        // fdatasync writes the file's dirty pages (from the buffered descriptor) and its metadata.
        self.direct.flush()
    }

    fn discard(&self, offset: u64, length: u64) -> io::Result<()> {
        // Through the buffered descriptor: a fallback that writes zeroes must not meet O_DIRECT.
        self.buffered.discard(offset, length)
    }

    fn write_zeroes(&self, offset: u64, length: u64, may_unmap: bool) -> io::Result<()> {
        self.buffered.write_zeroes(offset, length, may_unmap)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::OpenOptionsExt;

    use super::*;
    use crate::DiskBackendExt;

    /// The image opened O_DIRECT, or `None` where the filesystem cannot (tmpfs).
    fn direct(path: &Path) -> Option<DirectRaw> {
        let file = OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT).open(path).ok()?;
        Some(DirectRaw::new(file, false).unwrap())
    }

    /// A buffer of `len` bytes at an address that is a multiple of 4096 (plus `skew`).
    fn buffer(storage: &mut Vec<u8>, skew: usize, len: usize) -> IoBuf {
        storage.resize(len + 8192, 0);
        let start = storage.as_ptr().align_offset(4096) + skew;
        IoBuf::from_mut_slice(&mut storage[start..start + len])
    }

    /// Aligned requests go straight to the file, others through the page cache; both read back
    /// what either wrote.
    #[test]
    fn aligned_and_unaligned_requests_both_work() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, vec![0u8; 1 << 16]).unwrap();
        let Some(disk) = direct(&path) else {
            eprintln!("skipping: the filesystem of {} has no O_DIRECT", path.display());
            return;
        };
        let mut storage = Vec::new();
        let aligned = buffer(&mut storage, 0, 4096);
        // SAFETY: the buffer is ours and no request is using it.
        unsafe { aligned.as_mut_slice() }.fill(0xAB);
        assert!(disk.aligned(&[aligned], 8192));
        disk.write_vectored_at(&[aligned], 8192).unwrap();
        // An odd address, length and offset: the page cache's.
        assert!(!disk.aligned(&[IoBuf::from_slice(&[1, 2, 3])], 8191));
        disk.write_at(&[1, 2, 3], 8191).unwrap();
        disk.flush().unwrap();
        let mut back = [0u8; 5];
        disk.read_at(&mut back, 8190).unwrap();
        assert_eq!(back, [0, 1, 2, 3, 0xAB]);
        let mut other = Vec::new();
        let again = buffer(&mut other, 0, 4096);
        disk.read_vectored_at(&[again], 8192).unwrap();
        // SAFETY: the read is over.
        let read = unsafe { again.as_slice() };
        assert_eq!(&read[..3], &[2, 3, 0xAB]);
        assert!(read[3..].iter().all(|&b| b == 0xAB));
        assert_eq!(std::fs::read(&path).unwrap()[8191..8195], [1, 2, 3, 0xAB]);
    }
}
