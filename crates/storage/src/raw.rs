//! A raw disk image or host block device: the guest's byte N is the file's byte N.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::direct::{Alignment, Direct};
use crate::{vectored, DiskBackend, IoBuf};

/// A raw disk image (a regular file, sparse or not) or a host block device.
pub struct RawFile {
    file: File,
    /// The size when opened: the guest's disk does not grow or shrink with the file.
    size: u64,
    /// Set when the file was opened with `O_DIRECT` (`cache=none`): requests the storage cannot
    /// take as they are go through an aligned bounce buffer.
    pub(crate) direct: Option<Direct>,
    /// A regular file (not a block device), whose length a bounced write may have to restore.
    regular: bool,
}

/// Why a path cannot be a disk.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Io(io::Error),
    #[error("cannot find its size: {0}")]
    Size(io::Error),
    #[error("not a regular file or block device (it is a {0})")]
    NotADisk(&'static str),
}

impl RawFile {
    /// Opens `path` read-only (`O_RDONLY`, so even a file the user may not write works) or
    /// read-write. Anything other than a regular file or a block device is refused: a directory
    /// opens read-only but is no disk, `/dev/zero` would be an endless one, and a FIFO would
    /// block the opening thread (the API's, or a restore's) until someone opened its other end.
    /// So the open does not block (`O_NONBLOCK`), and the type is checked on the open file, not
    /// on the path, which could be swapped in between.
    pub fn open(path: &Path, read_only: bool) -> Result<RawFile, OpenError> {
        RawFile::from_file(open_checked(path, read_only, 0)?)
    }

    /// A raw disk over an open file the caller has checked (and locked). Its size is taken now:
    /// seeking to the end works for block devices too, whose metadata says 0. A file opened
    /// with `O_DIRECT` has its alignment found now (see `direct.rs`).
    pub fn from_file(file: File) -> Result<RawFile, OpenError> {
        let size = (&file).seek(SeekFrom::End(0)).map_err(OpenError::Size)?;
        // SAFETY: F_GETFL only reads the flags of the open descriptor the caller handed over.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        if flags < 0 {
            return Err(OpenError::Io(io::Error::last_os_error()));
        }
        let direct = (flags & libc::O_DIRECT != 0).then(|| Direct::new(Alignment::of(&file)));
        let regular = file.metadata().map_err(OpenError::Io)?.file_type().is_file();
        Ok(RawFile { file, size, direct, regular })
    }

    /// The alignment direct I/O needs, when the file was opened with `O_DIRECT`.
    pub fn direct_alignment(&self) -> Option<Alignment> {
        self.direct.as_ref().map(Direct::alignment)
    }

    /// The open file, for locking and for engines that submit I/O to it themselves.
    pub fn file(&self) -> &File {
        &self.file
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, length: u64) -> io::Result<()> {
        let too_far = || io::Error::new(io::ErrorKind::InvalidInput, "range beyond the largest file offset");
        let offset = libc::off_t::try_from(offset).map_err(|_| too_far())?;
        let length = libc::off_t::try_from(length).map_err(|_| too_far())?;
        // Not beside a bounced write, which would put the range's old bytes back (direct.rs).
        let _no_bounced_writes = self.direct.as_ref().map(Direct::exclude_bounced_writes);
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
        let end = offset.checked_add(length).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "range beyond the largest file offset")
        })?;
        while offset < end {
            let count = (end - offset).min(CHUNK) as usize;
            // Through the request path, so that O_DIRECT gets aligned buffers.
            self.write_vectored_at(&[IoBuf::from_slice(&zeroes[..count])], offset)?;
            offset += count as u64;
        }
        Ok(())
    }
}

/// Opens `path` as a disk file, read-only or read-write, with `extra_flags` (`O_DIRECT`) added:
/// without blocking (`O_NONBLOCK`, so a FIFO cannot wait for a writer) and without making a
/// terminal the VMM's controlling one (`O_NOCTTY`); the type is checked on the open file, which
/// cannot be swapped, and must be a regular file or a block device. The returned file blocks.
/// (`std` adds `O_CLOEXEC` to every open.)
pub(crate) fn open_checked(
    path: &Path,
    read_only: bool,
    extra_flags: libc::c_int,
) -> Result<File, OpenError> {
    let file = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC | extra_flags)
        .open(path)
        .map_err(OpenError::Io)?;
    let file_type = file.metadata().map_err(OpenError::Io)?.file_type();
    if let Some(kind) = not_a_disk(file_type) {
        return Err(OpenError::NotADisk(kind));
    }
    clear_nonblocking(&file).map_err(OpenError::Io)?;
    Ok(file)
}

/// What a file of this type is, when it is not a regular file or block device.
fn not_a_disk(file_type: std::fs::FileType) -> Option<&'static str> {
    if file_type.is_file() || file_type.is_block_device() {
        None
    } else if file_type.is_dir() {
        Some("directory")
    } else if file_type.is_char_device() {
        Some("character device")
    } else if file_type.is_fifo() {
        Some("FIFO")
    } else if file_type.is_socket() {
        Some("socket")
    } else {
        Some("special file")
    }
}

/// Disk I/O is meant to block: O_NONBLOCK was for the open only (it has no effect on regular
/// files and block devices today, but clearing it keeps a future one from returning EAGAIN).
fn clear_nonblocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL only reads the flags of a descriptor we own and keep open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL only changes the status flags of the same open descriptor.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The filesystem (tmpfs cannot zero ranges, for instance) or the device does not do this mode.
fn unsupported(error: &io::Error) -> bool {
    error.raw_os_error() == Some(libc::EOPNOTSUPP)
}

impl DiskBackend for RawFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_vectored_at(&self, buffers: &[IoBuf], offset: u64) -> io::Result<()> {
        match &self.direct {
            Some(direct) => direct.read(self.file.as_raw_fd(), buffers, offset),
            None => vectored::read_all(self.file.as_raw_fd(), buffers, offset),
        }
    }

    fn write_vectored_at(&self, buffers: &[IoBuf], offset: u64) -> io::Result<()> {
        match &self.direct {
            Some(direct) => {
                let size = self.regular.then_some(self.size);
                direct.write(self.file.as_raw_fd(), buffers, offset, size)
            }
            None => vectored::write_all(self.file.as_raw_fd(), buffers, offset),
        }
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

    /// None under `O_DIRECT`: the guest picks its buffers, and the unaligned ones must go through
    /// this file's bounce path (`direct.rs`) rather than straight to io_uring, which would fail
    /// them with EINVAL. Such a disk's requests run on the engine's thread pool.
    fn direct_fd(&self) -> Option<std::os::fd::RawFd> {
        match self.direct {
            Some(_) => None,
            None => Some(self.file.as_raw_fd()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    use super::*;

    fn refused(path: &Path, read_only: bool) -> String {
        match RawFile::open(path, read_only) {
            Err(e @ OpenError::NotADisk(_)) => e.to_string(),
            Err(e) => panic!("{} refused for another reason: {e}", path.display()),
            Ok(_) => panic!("{} opened as a disk", path.display()),
        }
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let name = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path, which lives across the call.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        // Without O_NONBLOCK either open would block here forever: nobody opens the other end.
        assert_eq!(refused(&fifo, true), "not a regular file or block device (it is a FIFO)");
        assert_eq!(refused(&fifo, false), "not a regular file or block device (it is a FIFO)");
    }

    #[test]
    fn character_devices_and_directories_are_refused() {
        assert!(refused(Path::new("/dev/null"), true).contains("character device"));
        assert!(refused(Path::new("/dev/zero"), true).contains("character device"));
        let dir = tempfile::tempdir().unwrap();
        assert!(refused(dir.path(), true).contains("directory"));
    }

    #[test]
    fn a_regular_file_opens_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, [0u8; 1024]).unwrap();
        let disk = RawFile::open(&path, false).unwrap();
        assert_eq!(disk.size(), 1024);
        // SAFETY: F_GETFL only reads the flags of the open descriptor.
        let flags = unsafe { libc::fcntl(disk.file.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0, "O_NONBLOCK was for the open only");
    }
}
