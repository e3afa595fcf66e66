//! The disk factory: a configured disk (a path and what the user said about it) becomes a
//! [`DiskBackend`]. Every disk a VM uses is opened here, so the safety rules hold for all of them:
//!
//! - the open never blocks (a FIFO would wait for a writer) and never makes a terminal the
//!   VMM's controlling one; the type is checked on the open file, which cannot be swapped;
//! - the image is locked, QEMU's way, before anything reads it, so a second writer (another VM,
//!   qemu, `kestrel image`) is refused before it can see a half-written header;
//! - the format is the user's, never guessed from the file's contents: a guest that writes a
//!   qcow2 header onto its raw disk cannot make the host open a backing file of its choice.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use model::config::{BlockConfig, CacheMode, ImageFormat};

use crate::lock::{self, Access, LockError};
use crate::qcow2::{self, Qcow2Error, Qcow2Options};
use crate::{DiskBackend, IoBuf, RawFile};

/// How to open a disk image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// The image's format, as the user gave it.
    pub format: ImageFormat,
    /// Open `O_RDONLY` and take a read lock (others may read too), else read-write and a write
    /// lock (others may only read).
    pub read_only: bool,
    /// `None` opens with `O_DIRECT`; `Unsafe` is the device's (it offers no flush).
    pub cache: CacheMode,
    /// Whether a qcow2 image may open the backing file its header names.
    pub allow_backing: bool,
}

impl DiskSpec {
    /// The spec of a configured disk.
    pub fn of(config: &BlockConfig) -> DiskSpec {
        DiskSpec {
            format: config.format,
            read_only: config.read_only,
            cache: config.cache,
            allow_backing: config.allow_backing,
        }
    }
}

/// An open, locked disk.
pub struct OpenedDisk {
    /// The disk; the image stays locked while it (any clone of it) lives.
    pub backend: Arc<dyn DiskBackend>,
    /// The disk's size as the guest sees it, in bytes.
    pub size: u64,
    /// The image's lock, for [`reopen_disk`] when the disk is given a new file.
    pub lock: ImageLock,
}

/// The lock an open image holds: a descriptor of the locked open file, so the lock lasts as long
/// as this (or the disk) lives.
#[derive(Clone)]
pub struct ImageLock {
    file: Arc<File>,
    access: Access,
}

impl ImageLock {
    /// Whether `file` is the locked image itself (the same inode), and this lock allows `access`.
    fn covers(&self, file: &File, access: Access) -> bool {
        use std::os::unix::fs::MetadataExt;
        let (Ok(held), Ok(other)) = (self.file.metadata(), file.metadata()) else {
            return false;
        };
        let same = held.dev() == other.dev() && held.ino() == other.ino();
        same && (self.access == Access::Write || access == Access::Read)
    }
}

/// Why a disk image cannot be opened. Each message names the image's path.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open disk {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error(
        "cannot open {} with cache=none: its filesystem does not support O_DIRECT (tmpfs does not); \
         use cache=writeback",
        path.display()
    )]
    DirectUnsupported { path: PathBuf },
    #[error("{} is not a regular file or block device (it is a {kind})", path.display())]
    NotADisk { path: PathBuf, kind: &'static str },
    #[error("{}: {source}", path.display())]
    Locked { path: PathBuf, source: LockError },
    #[error("cannot use {} as a raw disk: {source}", path.display())]
    Raw { path: PathBuf, source: crate::raw::OpenError },
    #[error("cannot open {} as qcow2: {source}", path.display())]
    Qcow2 { path: PathBuf, source: Qcow2Error },
}

/// Opens the image at `path` as `spec` says: checked, locked, then read as its format.
pub fn open_disk(path: &Path, spec: &DiskSpec) -> Result<OpenedDisk, OpenError> {
    reopen_disk(path, spec, None)
}

/// Opens the image at `path` for a disk that holds `held` now (`PATCH /drives`): if `path` is
/// the image `held` locks (a new look at the same file, after the host resized it, say), the
/// new disk keeps that lock, which its own open could not take beside it; any other image is
/// locked as [`open_disk`] locks it.
pub fn reopen_disk(path: &Path, spec: &DiskSpec, held: Option<&ImageLock>) -> Result<OpenedDisk, OpenError> {
    let file = open_file(path, spec)?;
    let access = if spec.read_only { Access::Read } else { Access::Write };
    let kept = held.filter(|held| held.covers(&file, access)).cloned();
    let lock = match kept.clone() {
        Some(held) => held,
        None => {
            // Before anything reads the image: another writer's half-written header is not ours
            // to read.
            lock::lock(&file, access)
                .map_err(|source| OpenError::Locked { path: path.to_owned(), source })?;
            let locked =
                file.try_clone().map_err(|source| OpenError::Open { path: path.to_owned(), source })?;
            ImageLock { file: Arc::new(locked), access }
        }
    };
    let backend = open_format(path, spec, file)?;
    let size = backend.size();
    // A disk on a kept lock keeps it alive itself: the old disk, and the open file that holds the
    // lock with it, go away once the requests under way on it end.
    let backend: Arc<dyn DiskBackend> = match kept {
        Some(held) => Arc::new(KeepsLock { disk: backend, _lock: held }),
        None => backend,
    };
    Ok(OpenedDisk { backend, size, lock })
}

/// Reads the open, locked image as its format.
fn open_format(path: &Path, spec: &DiskSpec, file: File) -> Result<Arc<dyn DiskBackend>, OpenError> {
    Ok(match spec.format {
        ImageFormat::Raw => {
            let raw_error = |source| OpenError::Raw { path: path.to_owned(), source };
            // RawFile sees the O_DIRECT of cache=none and bounces the requests it cannot take.
            // cache=unsafe is the device's to honour (it offers the guest no flush); the host's own
            // flushes (a snapshot, a disk replaced) still reach the file.
            Arc::new(RawFile::from_file(file).map_err(raw_error)?)
        }
        ImageFormat::Qcow2 => {
            let options = Qcow2Options {
                writable: !spec.read_only,
                direct: spec.cache == CacheMode::None,
                allow_backing: spec.allow_backing,
            };
            let disk = qcow2::open(file, path, &options)
                .map_err(|source| OpenError::Qcow2 { path: path.to_owned(), source })?;
            // cache=unsafe keeps the qcow2 flush: it is what writes the image's cached tables
            // into the file, and skipping it could leave the image inconsistent, not merely
            // behind.
            Arc::new(disk)
        }
    })
}

/// Opens `path` as [`crate::raw::open_checked`] does, `O_DIRECT` for cache=none.
fn open_file(path: &Path, spec: &DiskSpec) -> Result<File, OpenError> {
    let direct = spec.cache == CacheMode::None;
    let flags = if direct { libc::O_DIRECT } else { 0 };
    crate::raw::open_checked(path, spec.read_only, flags).map_err(|error| match error {
        crate::raw::OpenError::Io(source) if direct && source.raw_os_error() == Some(libc::EINVAL) => {
            OpenError::DirectUnsupported { path: path.to_owned() }
        }
        crate::raw::OpenError::NotADisk(kind) => OpenError::NotADisk { path: path.to_owned(), kind },
        crate::raw::OpenError::Io(source) | crate::raw::OpenError::Size(source) => {
            OpenError::Open { path: path.to_owned(), source }
        }
    })
}

/// A disk that keeps alive the lock an earlier disk on the same image took.
struct KeepsLock {
    disk: Arc<dyn DiskBackend>,
    _lock: ImageLock,
}

impl DiskBackend for KeepsLock {
    fn size(&self) -> u64 {
        self.disk.size()
    }

    fn read_vectored_at(&self, buffers: &[IoBuf], offset: u64) -> io::Result<()> {
        self.disk.read_vectored_at(buffers, offset)
    }

    fn write_vectored_at(&self, buffers: &[IoBuf], offset: u64) -> io::Result<()> {
        self.disk.write_vectored_at(buffers, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.disk.flush()
    }

    fn direct_fd(&self) -> Option<std::os::fd::RawFd> {
        self.disk.direct_fd()
    }

    fn discard(&self, offset: u64, length: u64) -> io::Result<()> {
        self.disk.discard(offset, length)
    }

    fn write_zeroes(&self, offset: u64, length: u64, may_unmap: bool) -> io::Result<()> {
        self.disk.write_zeroes(offset, length, may_unmap)
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    use super::*;
    use crate::DiskBackendExt;

    fn spec(format: ImageFormat, read_only: bool, cache: CacheMode) -> DiskSpec {
        DiskSpec { format, read_only, cache, allow_backing: true }
    }

    fn raw(read_only: bool) -> DiskSpec {
        spec(ImageFormat::Raw, read_only, CacheMode::Writeback)
    }

    fn image(dir: &Path, bytes: &[u8]) -> PathBuf {
        let path = dir.join("disk.img");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn refused(path: &Path, spec: &DiskSpec) -> String {
        match open_disk(path, spec) {
            Ok(_) => panic!("{} opened", path.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_raw_image_opens_with_its_size_and_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = image(dir.path(), &[7u8; 8192]);
        let disk = open_disk(&path, &raw(false)).unwrap();
        assert_eq!((disk.size, disk.backend.size()), (8192, 8192));
        disk.backend.write_at(&[1, 2, 3], 4096).unwrap();
        disk.backend.flush().unwrap();
        let mut back = [0u8; 4];
        disk.backend.read_at(&mut back, 4095).unwrap();
        assert_eq!(back, [7, 1, 2, 3]);
    }

    #[test]
    fn a_read_only_disk_cannot_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = image(dir.path(), &[0u8; 4096]);
        let disk = open_disk(&path, &raw(true)).unwrap();
        let error = disk.backend.write_at(&[1], 0).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EBADF), "{error}");
    }

    /// Two writers, or a writer and a reader, cannot share an image; readers can. The message
    /// names the image and says it is in use.
    #[test]
    fn images_are_locked_one_writer_or_many_readers() {
        let dir = tempfile::tempdir().unwrap();
        let path = image(dir.path(), &[0u8; 4096]);
        let writer = open_disk(&path, &raw(false)).unwrap();
        let message = refused(&path, &raw(false));
        assert!(message.starts_with(&format!("{}: the image is in use", path.display())), "{message}");
        assert!(refused(&path, &raw(true)).contains("the image is in use"));
        drop(writer);
        let readers: Vec<_> = (0..2).map(|_| open_disk(&path, &raw(true)).unwrap()).collect();
        assert!(refused(&path, &raw(false)).contains("the image is in use"));
        drop(readers);
        open_disk(&path, &raw(false)).unwrap();
    }

    /// A disk given a new look at its own image (PATCH /drives with the same path) keeps its
    /// lock, past the old disk's end; another process still cannot write the image, and a new
    /// image is locked afresh.
    #[test]
    fn a_reopened_image_keeps_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = image(dir.path(), &[0u8; 4096]);
        let first = open_disk(&path, &raw(false)).unwrap();
        assert!(refused(&path, &raw(false)).contains("in use"), "a fresh open is a second writer");
        std::fs::write(&path, [1u8; 8192]).unwrap();
        let second = reopen_disk(&path, &raw(false), Some(&first.lock)).unwrap();
        assert_eq!(second.size, 8192);
        drop(first);
        assert!(refused(&path, &raw(true)).contains("in use"), "the lock outlives the old disk");
        second.backend.write_at(&[5], 0).unwrap();

        let other = dir.path().join("other.img");
        std::fs::write(&other, [0u8; 512]).unwrap();
        let third = reopen_disk(&other, &raw(false), Some(&second.lock)).unwrap();
        assert!(refused(&other, &raw(true)).contains("in use"));
        drop(second);
        drop(third.lock);
        open_disk(&path, &raw(false)).unwrap();
        // A read lock does not let the same image be reopened writable.
        let reader = open_disk(&other, &raw(true));
        assert!(reader.is_err(), "the third disk still writes it");
        drop(third.backend);
        let reader = open_disk(&other, &raw(true)).unwrap();
        assert!(reopen_disk(&other, &raw(false), Some(&reader.lock)).is_err());
    }

    #[test]
    fn what_is_not_a_disk_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let name = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path, which lives across the call.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        // Without O_NONBLOCK the open would wait for a writer forever.
        for read_only in [true, false] {
            let message = refused(&fifo, &raw(read_only));
            assert_eq!(
                message,
                format!("{} is not a regular file or block device (it is a FIFO)", fifo.display())
            );
        }
        assert!(refused(dir.path(), &raw(true)).contains("(it is a directory)"));
        assert!(refused(Path::new("/dev/null"), &raw(true)).contains("(it is a character device)"));
        let missing = dir.path().join("missing.img");
        assert!(
            refused(&missing, &raw(true)).starts_with(&format!("cannot open disk {}: ", missing.display()))
        );
    }

    #[test]
    fn cache_unsafe_opens_plainly_and_none_opens_o_direct() {
        let dir = tempfile::tempdir().unwrap();
        let path = image(dir.path(), &[0u8; 4096]);
        let disk = open_disk(&path, &spec(ImageFormat::Raw, false, CacheMode::Unsafe)).unwrap();
        disk.backend.write_at(&[9], 0).unwrap();
        disk.backend.flush().unwrap();
        let mut byte = [0u8];
        disk.backend.read_at(&mut byte, 0).unwrap();
        assert_eq!(byte, [9]);
        drop(disk);
        // O_DIRECT is refused by some filesystems (tmpfs): then the message says what to do.
        match open_disk(&path, &spec(ImageFormat::Raw, true, CacheMode::None)) {
            Ok(disk) => assert_eq!(disk.size, 4096),
            Err(error) => {
                let message = error.to_string();
                assert!(message.contains("does not support O_DIRECT"), "{message}");
                assert!(message.contains(path.to_str().unwrap()), "{message}");
            }
        }
    }

    /// The format is the user's: a raw disk whose guest wrote a qcow2 header is still raw.
    #[test]
    fn a_raw_disk_with_a_qcow2_header_stays_raw() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = vec![0u8; 4096];
        bytes[..4].copy_from_slice(b"QFI\xfb");
        let path = image(dir.path(), &bytes);
        let disk = open_disk(&path, &raw(true)).unwrap();
        assert_eq!(disk.size, 4096);
        let mut magic = [0u8; 4];
        disk.backend.read_at(&mut magic, 0).unwrap();
        assert_eq!(&magic, b"QFI\xfb");
    }

    /// `qemu-img create`, or `None` (the test skips) where qemu-img is missing outside CI.
    fn qemu_img(args: &[&str]) -> Option<()> {
        if !Path::new("/usr/bin/qemu-img").exists() {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "qemu-img is missing (install qemu-utils)");
            return None;
        }
        let output = std::process::Command::new("/usr/bin/qemu-img").args(args).output().unwrap();
        assert!(output.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        Some(())
    }

    /// The status flags of this process's descriptors open on `path` (/proc/self/fdinfo).
    fn open_flags(path: &Path) -> Vec<i32> {
        let mut flags = Vec::new();
        for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            if std::fs::read_link(entry.path()).ok().as_deref() != Some(path) {
                continue;
            }
            let info = std::fs::read_to_string(Path::new("/proc/self/fdinfo").join(entry.file_name()));
            let Ok(info) = info else { continue };
            let field = info.lines().find_map(|line| line.strip_prefix("flags:")).unwrap();
            flags.push(i32::from_str_radix(field.trim(), 8).unwrap());
        }
        flags
    }

    fn qcow2(read_only: bool, allow_backing: bool) -> DiskSpec {
        DiskSpec { format: ImageFormat::Qcow2, read_only, cache: CacheMode::Writeback, allow_backing }
    }

    /// A qcow2 overlay over a raw base opens as qcow2: its size is the virtual one, its reads
    /// come from the base, and the base is read-locked while it is open. The backing file can be
    /// refused; a raw image named qcow2 is refused with the path in the message.
    #[test]
    fn a_qcow2_overlay_opens_with_its_backing_file_locked_for_reading() {
        let dir = tempfile::tempdir().unwrap();
        let base = image(dir.path(), &[0x5Au8; 1 << 20]);
        let overlay = dir.path().join("overlay.qcow2");
        let (base_text, overlay_text) = (base.to_str().unwrap(), overlay.to_str().unwrap());
        if qemu_img(&["create", "-q", "-f", "qcow2", "-F", "raw", "-b", base_text, overlay_text]).is_none() {
            return;
        }
        let disk = open_disk(&overlay, &qcow2(false, true)).unwrap();
        assert_eq!(disk.size, 1 << 20);
        let mut bytes = [0u8; 2];
        disk.backend.read_at(&mut bytes, 4095).unwrap();
        assert_eq!(bytes, [0x5A, 0x5A]);
        disk.backend.write_at(&[1, 2], 4095).unwrap();
        disk.backend.flush().unwrap();
        assert!(refused(&base, &raw(false)).contains("the image is in use"), "the base is read-locked");
        // A child the VMM starts (a helper, a hook) inherits none of them, nor their locks.
        for path in [&overlay, &base] {
            let flags = open_flags(path);
            assert!(!flags.is_empty(), "{} is open", path.display());
            assert!(flags.iter().all(|f| f & libc::O_CLOEXEC != 0), "{}: {flags:?}", path.display());
        }
        open_disk(&base, &raw(true)).unwrap();
        assert!(refused(&overlay, &qcow2(true, true)).contains("the image is in use"));
        drop(disk);
        let disk = open_disk(&overlay, &qcow2(true, true)).unwrap();
        disk.backend.read_at(&mut bytes, 4095).unwrap();
        assert_eq!(bytes, [1, 2]);
        drop(disk);
        // The overlay gone, nothing holds its backing file's lock any more.
        drop(open_disk(&base, &raw(false)).unwrap());

        let message = refused(&overlay, &qcow2(true, false));
        assert!(message.starts_with(&format!("cannot open {overlay_text} as qcow2: ")), "{message}");
        let message = refused(&base, &qcow2(true, true));
        assert!(message.starts_with(&format!("cannot open {base_text} as qcow2: ")), "{message}");
    }
}

/// The backing file names an image header may give, and what the gate makes of them.
#[cfg(test)]
mod backing_name_tests {
    use super::*;
    use crate::image::{create, CreateOptions, Format, Preallocation};
    use crate::qcow2::Qcow2Error;

    /// A qcow2 image at `path` whose header names `backing` (not opened when it is made).
    fn overlay(path: &Path, backing: &str) {
        let options = CreateOptions {
            format: Format::Qcow2,
            size: Some(1 << 20),
            backing: Some((backing.to_owned(), Format::Qcow2)),
            cluster_size: None,
            preallocation: Preallocation::Off,
        };
        create(path, &options).unwrap();
    }

    fn refusal(path: &Path) -> Qcow2Error {
        let spec = DiskSpec {
            format: ImageFormat::Qcow2,
            read_only: true,
            cache: CacheMode::Writeback,
            allow_backing: true,
        };
        match open_disk(path, &spec) {
            Err(OpenError::Qcow2 { source, .. }) => source,
            Err(other) => panic!("{} refused for another reason: {other}", path.display()),
            Ok(_) => panic!("{} opened", path.display()),
        }
    }

    /// A directory, the image itself under another name (a symlink, a `..` detour), and a
    /// symlink loop are all refused with the reason, never opened or followed forever.
    #[test]
    fn odd_backing_names_are_refused_with_their_reason() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();

        let image = sub.join("dir.qcow2");
        overlay(&image, ".");
        assert!(matches!(refusal(&image), Qcow2Error::BackingNotFile { kind: "directory", .. }));

        let image = sub.join("self.qcow2");
        std::os::unix::fs::symlink("self.qcow2", sub.join("alias")).unwrap();
        overlay(&image, "alias");
        assert!(matches!(refusal(&image), Qcow2Error::BackingCycle { .. }));

        let image = sub.join("detour.qcow2");
        overlay(&image, "../sub/detour.qcow2");
        assert!(matches!(refusal(&image), Qcow2Error::BackingCycle { .. }));

        let image = sub.join("loop.qcow2");
        std::os::unix::fs::symlink("loop-b", sub.join("loop-a")).unwrap();
        std::os::unix::fs::symlink("loop-a", sub.join("loop-b")).unwrap();
        overlay(&image, "loop-a");
        let error = refusal(&image);
        assert!(
            matches!(&error, Qcow2Error::Backing { source, .. } if source.raw_os_error() == Some(libc::ELOOP)),
            "{error}"
        );
    }
}

/// qcow2 on a host block device (an LVM volume, say), through a loop device where the test may
/// make one (root); elsewhere it has nothing to test and returns.
#[cfg(test)]
mod block_device_tests {
    use super::*;
    use crate::image::{create, CreateOptions, Format, Preallocation};
    use crate::DiskBackendExt;

    /// A loop device over a file, detached when dropped.
    struct Loop(PathBuf);

    impl Loop {
        fn attach(file: &Path) -> Option<Loop> {
            let output =
                std::process::Command::new("losetup").args(["--find", "--show"]).arg(file).output().ok()?;
            let name = String::from_utf8(output.stdout).ok()?;
            (output.status.success() && !name.trim().is_empty()).then(|| Loop(PathBuf::from(name.trim())))
        }
    }

    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup").arg("--detach").arg(&self.0).status();
        }
    }

    /// A block device's metadata gives its length as 0: the header checks and the image check
    /// must take the device's real length, or every table would lie "past the end".
    #[test]
    fn a_qcow2_image_on_a_block_device_opens_and_checks_clean() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.qcow2");
        let options = CreateOptions {
            format: Format::Qcow2,
            size: Some(4 << 20),
            backing: None,
            cluster_size: None,
            preallocation: Preallocation::Off,
        };
        create(&path, &options).unwrap();
        // Loop devices are whole 512-byte sectors; the image file is cluster-sized anyway.
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len + (1 << 20)).unwrap();
        let Some(device) = Loop::attach(&path) else { return };
        let spec = DiskSpec {
            format: ImageFormat::Qcow2,
            read_only: false,
            cache: CacheMode::Writeback,
            allow_backing: false,
        };
        let disk = open_disk(&device.0, &spec).unwrap();
        assert_eq!(disk.size, 4 << 20);
        disk.backend.write_at(&[7u8; 4096], 1 << 20).unwrap();
        disk.backend.flush().unwrap();
        let mut back = [0u8; 4096];
        disk.backend.read_at(&mut back, 1 << 20).unwrap();
        assert_eq!(back, [7u8; 4096]);
        drop(disk);
        let file = std::fs::File::open(&device.0).unwrap();
        let report = crate::qcow2::check::check(&file).unwrap();
        assert_eq!(report.corruptions, 0, "{:?}", report.messages);
    }
}
