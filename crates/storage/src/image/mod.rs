//! The image tool's operations (`kestrel image …`): create, info, convert, resize, check, commit
//! and rebase, on raw and qcow2 images. The command line is a thin layer over these.
//!
//! Probing an image's format happens only here, in `info` and for `convert`'s source when no
//! format is given: never when a VM opens a disk. Writers lock the images they change
//! `Access::Write` (a running VM's image is refused), readers `Access::Read` unless told to
//! share. Files created are 0600.

mod check;
mod convert;
mod create;
mod info;
mod ops;
mod progress;
mod size;

pub use check::{check, check_report_json, check_report_text};
pub use convert::{convert, ConvertOptions};
pub use create::{create, parse_create_options, CreateOptions, Preallocation};
pub use info::{backing_files, human_size, info, ImageInfo};
pub use ops::{commit, rebase, resize, RebaseOptions};
pub use progress::Progress;
pub use size::parse_size;

use crate::lock::{self, Access, LockError};
use crate::qcow2::{self, Qcow2Error, Qcow2Options};
use crate::DiskBackend;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// An image format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
}

impl Format {
    /// The name qemu-img uses.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

impl FromStr for Format {
    type Err = ImageError;
    fn from_str(text: &str) -> Result<Format, ImageError> {
        match text {
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            other => Err(ImageError::Usage(format!("unknown image format '{other}': use raw or qcow2"))),
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an image operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: LockError,
    },
    #[error("{path}: {source}")]
    Qcow2 {
        path: PathBuf,
        #[source]
        source: Qcow2Error,
    },
    #[error("{path}: {source}")]
    Check {
        path: PathBuf,
        #[source]
        source: qcow2::check::CheckError,
    },
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Unsupported(String),
}

impl ImageError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
        move |source| ImageError::Io { path: path.to_owned(), source }
    }
    fn qcow2(path: &Path) -> impl FnOnce(Qcow2Error) -> ImageError + '_ {
        move |source| ImageError::Qcow2 { path: path.to_owned(), source }
    }
}

/// The format of the image at `path`: qcow2 if it starts with the qcow2 magic, raw otherwise.
/// Only `info` and `convert`'s source probe.
pub fn probe(path: &Path) -> Result<Format, ImageError> {
    let file = open_file(path, false)?;
    let magic = qcow2::header::has_magic(&file).map_err(ImageError::io(path))?;
    Ok(if magic { Format::Qcow2 } else { Format::Raw })
}

/// Opens `path` for reading (or writing), refusing what is not a regular file or block device
/// without blocking on a FIFO.
fn open_file(path: &Path, write: bool) -> Result<File, ImageError> {
    crate::raw::open_checked(path, !write, 0).map_err(|error| match error {
        crate::raw::OpenError::NotADisk(_) => {
            ImageError::Unsupported(format!("{}: not a regular file or block device", path.display()))
        }
        crate::raw::OpenError::Io(source) | crate::raw::OpenError::Size(source) => {
            ImageError::Io { path: path.to_owned(), source }
        }
    })
}

/// Refuses to create `target` over `used`, an image the operation reads (a source, a backing
/// file): replacing it would destroy what is about to be read. The locks do not catch every
/// case — a source read with `-U` takes none, and a backing file is only read when no size is
/// given — so the files are compared.
fn refuse_overwriting(target: &Path, used: &Path, what: &str) -> Result<(), ImageError> {
    use std::os::unix::fs::MetadataExt;
    let (Ok(target_meta), Ok(used_meta)) = (std::fs::metadata(target), std::fs::metadata(used)) else {
        return Ok(()); // a file that does not exist is not overwritten
    };
    if (target_meta.dev(), target_meta.ino()) == (used_meta.dev(), used_meta.ino()) {
        return Err(ImageError::Usage(format!(
            "{}: the new image would replace its own {what} ({})",
            target.display(),
            used.display()
        )));
    }
    Ok(())
}

/// Opens and locks the image at `path` in `format`: `Access::Write` when `write`, else
/// `Access::Read` unless `force_share`.
fn open_locked(path: &Path, write: bool, force_share: bool) -> Result<File, ImageError> {
    let file = open_file(path, write)?;
    if write || !force_share {
        let access = if write { Access::Write } else { Access::Read };
        lock::lock(&file, access).map_err(|source| ImageError::Lock { path: path.to_owned(), source })?;
    }
    Ok(file)
}

/// An open image of either format.
enum Disk {
    Raw(crate::RawFile),
    Qcow2(Box<qcow2::Qcow2Disk>),
}

impl Disk {
    fn backend(&self) -> &dyn DiskBackend {
        match self {
            Disk::Raw(raw) => raw,
            Disk::Qcow2(qcow2) => qcow2.as_ref(),
        }
    }

    fn resize(&self, size: u64) -> io::Result<()> {
        match self {
            // Only the file: the disk's own size stays as opened, and no operation reads past
            // it after a resize (`commit` only writes the grown range).
            Disk::Raw(raw) => raw.file().set_len(size),
            Disk::Qcow2(qcow2) => qcow2.resize(size),
        }
    }
}

/// The image at `path` as a disk, with its backing chain.
fn open_disk(path: &Path, format: Format, write: bool, force_share: bool) -> Result<Disk, ImageError> {
    let file = open_locked(path, write, force_share)?;
    Ok(match format {
        Format::Raw => Disk::Raw(crate::RawFile::from_file(file).map_err(|error| match error {
            crate::raw::OpenError::Io(source) | crate::raw::OpenError::Size(source) => {
                ImageError::io(path)(source)
            }
            crate::raw::OpenError::NotADisk(kind) => {
                ImageError::io(path)(io::Error::other(format!("not a regular file or block device ({kind})")))
            }
        })?),
        Format::Qcow2 => {
            let options = Qcow2Options { writable: write, direct: false, allow_backing: true };
            Disk::Qcow2(Box::new(qcow2::open(file, path, &options).map_err(ImageError::qcow2(path))?))
        }
    })
}

/// Runs `make`, which creates the image at `path`: when it fails (a size the format cannot hold,
/// a source that cannot be read), a file that was not there before is removed rather than left
/// half-made. One another process holds locked is not ours to remove.
fn removed_on_error(path: &Path, make: impl FnOnce() -> Result<(), ImageError>) -> Result<(), ImageError> {
    let existed = path.symlink_metadata().is_ok();
    let result = make();
    if let Err(error) = &result {
        if !existed && !matches!(error, ImageError::Lock { .. }) {
            let _ = std::fs::remove_file(path);
        }
    }
    result
}

/// Creates `path` (0600) for a new image, replacing what was there — but only once it is locked
/// for writing, so that the image of a running VM is refused, not truncated under it.
fn create_file(path: &Path) -> Result<File, ImageError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(ImageError::io(path))?;
    let kind = file.metadata().map_err(ImageError::io(path))?.file_type();
    if !kind.is_file() {
        return Err(ImageError::Unsupported(format!("{}: not a regular file", path.display())));
    }
    lock::lock(&file, Access::Write).map_err(|source| ImageError::Lock { path: path.to_owned(), source })?;
    file.set_len(0).map_err(ImageError::io(path))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qcow2(size: Option<u64>, backing: Option<&str>) -> CreateOptions {
        CreateOptions {
            format: Format::Qcow2,
            size,
            backing: backing.map(|name| (name.to_owned(), Format::Qcow2)),
            cluster_size: None,
            preallocation: Preallocation::Off,
        }
    }

    fn refused(result: Result<(), ImageError>) -> String {
        match result {
            Ok(()) => panic!("the image was replaced"),
            Err(error) => error.to_string(),
        }
    }

    /// `create -b x x` (with a size or without) and `convert -U x x`, or a convert into the
    /// source's backing file, are refused and leave the image as it was: they would truncate
    /// the file they read.
    #[test]
    fn an_image_is_never_replaced_by_one_made_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("x.qcow2");
        create(&image, &qcow2(Some(1 << 20), None)).unwrap();
        let before = std::fs::read(&image).unwrap();
        for size in [Some(1 << 20), None] {
            let message = refused(create(&image, &qcow2(size, Some("x.qcow2"))));
            assert!(message.contains("would replace its own backing file"), "{message}");
        }
        let options = ConvertOptions {
            source_format: Some(Format::Qcow2),
            target_format: Format::Raw,
            compress: false,
            cluster_size: None,
            force_share: true,
        };
        let message = refused(convert(&image, &image, &options, &Progress::hidden()));
        assert!(message.contains("would replace its own source"), "{message}");
        assert_eq!(std::fs::read(&image).unwrap(), before);

        let overlay = dir.path().join("overlay.qcow2");
        create(&overlay, &qcow2(None, Some("x.qcow2"))).unwrap();
        let message = refused(convert(&overlay, &image, &options, &Progress::hidden()));
        assert!(message.contains("would replace its own source's backing file"), "{message}");
        assert_eq!(std::fs::read(&image).unwrap(), before);
    }

    /// commit into a backing file another VM reads, and rebase onto an image another VM
    /// writes, are refused before either image changes.
    #[test]
    fn commit_and_rebase_leave_images_in_use_alone() {
        use crate::DiskBackendExt;
        let dir = tempfile::tempdir().unwrap();
        let (base, overlay, new) =
            (dir.path().join("base.qcow2"), dir.path().join("overlay.qcow2"), dir.path().join("new.qcow2"));
        create(&base, &qcow2(Some(1 << 20), None)).unwrap();
        create(&new, &qcow2(Some(1 << 20), None)).unwrap();
        create(&overlay, &qcow2(None, Some("base.qcow2"))).unwrap();
        open_disk(&overlay, Format::Qcow2, true, false).unwrap().backend().write_at(&[9u8; 512], 0).unwrap();
        let files = || [&base, &overlay, &new].map(|path| std::fs::read(path).unwrap());
        let before = files();

        let reader = File::open(&base).unwrap();
        lock::lock(&reader, Access::Read).unwrap();
        let error = commit(&overlay, &Progress::hidden()).unwrap_err();
        assert!(matches!(error, ImageError::Lock { .. }), "{error}");
        let writer = OpenOptions::new().read(true).write(true).open(&new).unwrap();
        lock::lock(&writer, Access::Write).unwrap();
        let options = RebaseOptions {
            backing: Some("new.qcow2".into()),
            backing_format: Some(Format::Qcow2),
            unsafe_header_only: false,
        };
        let error = rebase(&overlay, &options, &Progress::hidden()).unwrap_err();
        assert!(matches!(error, ImageError::Lock { .. }), "{error}");
        assert!(files() == before, "an image changed");

        drop((reader, writer));
        commit(&overlay, &Progress::hidden()).unwrap();
        let mut byte = [0u8];
        open_disk(&base, Format::Qcow2, false, false).unwrap().backend().read_at(&mut byte, 0).unwrap();
        assert_eq!(byte, [9]);
    }

    /// An image that cannot be made (a size beyond qcow2's tables) leaves no file behind.
    #[test]
    fn a_failed_create_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("huge.qcow2");
        let message = refused(create(&image, &qcow2(Some(1 << 52), None)));
        assert!(message.contains("too big"), "{message}");
        assert!(!image.exists(), "a half-made image was left");
    }
}
