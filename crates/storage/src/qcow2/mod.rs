//! qcow2 images (v2 and v3) as live disks, on top of the `imago` crate, with Kestrel's own
//! header checks, backing-file policy and (for the image tool) consistency check and writer.
//!
//! - `header.rs`: a strict parser of the header and its extensions, run before imago sees a file.
//! - `gate.rs`: how backing files are opened (or refused).
//! - `disk.rs`: [`Qcow2Disk`], the [`crate::DiskBackend`] over an opened chain.

pub mod check;
mod disk;
mod epoch;
mod gate;
pub mod header;
pub(crate) mod metaio;
pub mod writer;

use disk::ChainFile;
pub use disk::Qcow2Disk;
pub use gate::MAX_DEPTH;
pub use header::Header;

use crate::lock::LockError;
use imago::file::File as ImagoFile;
use imago::format::builder::FormatDriverBuilder;
use imago::qcow2::Qcow2;
use imago::{FormatAccess, StorageOpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// How a qcow2 image is opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Qcow2Options {
    /// The image is written (the file must then be open read-write).
    pub writable: bool,
    /// The file was opened with O_DIRECT; backing files are opened the same way.
    pub direct: bool,
    /// Backing files named in the header are opened; when false, an image with one is refused.
    pub allow_backing: bool,
}

/// Why a qcow2 image could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the image is truncated: its {what} needs {needed} bytes but the file has {len}")]
    Truncated { what: &'static str, needed: u64, len: u64 },
    #[error("not a qcow2 image (bad magic)")]
    BadMagic,
    #[error("qcow2 version {0} is not supported (only 2 and 3)")]
    UnsupportedVersion(u32),
    #[error("invalid qcow2 image: {0}")]
    Invalid(String),
    #[error("unsupported qcow2 feature: {0}")]
    Unsupported(String),
    #[error("invalid qcow2 image: its {what} ({value}) is above the limit of {limit}")]
    TooLarge { what: &'static str, value: u64, limit: u64 },
    #[error("invalid qcow2 image: its {what} at offset {offset} is not cluster-aligned")]
    Unaligned { what: &'static str, offset: u64 },
    #[error("invalid qcow2 image: its {what} ({len} bytes at offset {offset}) runs past the end of the file ({file_len} bytes)")]
    PastEnd { what: &'static str, offset: u64, len: u64, file_len: u64 },
    #[error(
        "the image was not closed cleanly (its dirty bit is set) and is opened read-only; \
         run `kestrel image check --repair` on it first"
    )]
    Dirty,
    #[error("the image is marked corrupt; run `kestrel image check --repair` on it")]
    Corrupt,
    #[error(
        "the image's refcounts are damaged: its metadata cluster {cluster} has refcount 0, so a \
         write could be put over it; run `kestrel image check --repair` on it"
    )]
    MetadataUnreferenced { cluster: u64 },
    #[error("backing files are not allowed here, and the image has one: {path}")]
    BackingDenied { path: PathBuf },
    #[error("the backing chain is a cycle: {path} is already in it")]
    BackingCycle { path: PathBuf },
    #[error("the backing chain is deeper than {limit} images, at {path}")]
    BackingTooDeep { path: PathBuf, limit: usize },
    #[error("backing file {path} is a {kind}, not a regular file or block device")]
    BackingNotFile { path: PathBuf, kind: &'static str },
    #[error("backing file {path}: {source}")]
    Backing {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("backing file {path}: {source}")]
    BackingImage {
        path: PathBuf,
        #[source]
        source: Box<Qcow2Error>,
    },
    #[error("backing file {path}: {source}")]
    BackingLock {
        path: PathBuf,
        #[source]
        source: LockError,
    },
    #[error("repairing the dirty image: {0}")]
    Repair(#[source] Box<check::CheckError>),
    #[error("qcow2: {0}")]
    Imago(#[source] io::Error),
}

impl Qcow2Error {
    pub(crate) fn io(context: &'static str, source: io::Error) -> Qcow2Error {
        Qcow2Error::Io { context, source }
    }
}

/// Opens the qcow2 image in `file` (already opened O_RDONLY or O_RDWR — O_DIRECT when
/// `options.direct` — type-checked and locked by the caller) and its backing chain. `path` is
/// where it was opened from; relative backing file names are resolved against its directory.
///
/// The header is checked before anything else reads the file; backing files are opened only
/// when `options.allow_backing`, read-only and read-locked, and must be regular files or block
/// devices, no deeper than [`MAX_DEPTH`], without cycles.
pub fn open(file: std::fs::File, path: &Path, options: &Qcow2Options) -> Result<Qcow2Disk, Qcow2Error> {
    let mut header = header::read(&file)?;
    if header.corrupt() {
        return Err(Qcow2Error::Corrupt);
    }
    if header.dirty() {
        // imago cannot open a dirty image. QEMU, when it may write, repairs the refcounts (which
        // a crash with lazy refcounts may have left stale) and clears the bit; so does Kestrel.
        if !options.writable {
            return Err(Qcow2Error::Dirty);
        }
        let report = check::repair(&file).map_err(|e| Qcow2Error::Repair(Box::new(e)))?;
        if report.corruptions > 0 {
            return Err(Qcow2Error::Corrupt);
        }
        header = header::read(&file)?;
    }
    if options.writable {
        refuse_unreferenced_metadata(&file)?;
    }
    let gate = gate::BackingGate::new(&file, &header, options.allow_backing, options.direct)?;
    // A second descriptor of the image for fast-path I/O (see `Qcow2Disk`'s map_extent); without
    // one, every request goes through imago, which is correct, only slower.
    let top =
        file.try_clone().ok().map(|file| ChainFile { path: path.to_owned(), file, direct: options.direct });
    let storage = ImagoFile::from_open_file(
        file,
        StorageOpenOptions::new().filename(path).write(options.writable).direct(options.direct),
    )
    .map_err(|e| Qcow2Error::io("opening the image", e))?;
    let opened = Qcow2::<ImagoFile>::builder(storage).write(options.writable).open(gate.clone());
    let qcow2 = match opened {
        Ok(qcow2) => qcow2,
        Err(e) => return Err(gate.take_refusal().unwrap_or(Qcow2Error::Imago(e))),
    };
    let access = FormatAccess::new(qcow2);
    let backing =
        gate.take_files().into_iter().map(|(path, file)| ChainFile { path, file, direct: options.direct });
    let files = top.into_iter().chain(backing).collect();
    Ok(Qcow2Disk::new(access, header, gate.chain(), options.writable, files))
}

/// Opens one qcow2 layer without its backing file (unallocated ranges read as zeroes and
/// [`Qcow2Disk::allocated`] tells them apart): for the image tool's commit and rebase, which
/// handle the backing files themselves. `file` is opened and locked by the caller.
pub(crate) fn open_layer(file: std::fs::File, path: &Path, writable: bool) -> Result<Qcow2Disk, Qcow2Error> {
    let header = header::read(&file)?;
    if header.corrupt() {
        return Err(Qcow2Error::Corrupt);
    }
    if header.dirty() {
        return Err(Qcow2Error::Dirty);
    }
    if writable {
        refuse_unreferenced_metadata(&file)?;
    }
    let gate = gate::BackingGate::new(&file, &header, false, false)?;
    let storage = ImagoFile::from_open_file(file, StorageOpenOptions::new().filename(path).write(writable))
        .map_err(|e| Qcow2Error::io("opening the image", e))?;
    let opened = Qcow2::<ImagoFile>::builder(storage).write(writable).backing(None).open(gate.clone());
    let qcow2 = opened.map_err(|e| gate.take_refusal().unwrap_or(Qcow2Error::Imago(e)))?;
    Ok(Qcow2Disk::new(FormatAccess::new(qcow2), header, Vec::new(), writable, Vec::new()))
}

/// An image is written only if none of its metadata is free for the taking (see
/// [`check::unreferenced_metadata`]).
fn refuse_unreferenced_metadata(file: &std::fs::File) -> Result<(), Qcow2Error> {
    match check::unreferenced_metadata(file) {
        Ok(None) => Ok(()),
        Ok(Some(cluster)) => Err(Qcow2Error::MetadataUnreferenced { cluster }),
        Err(check::CheckError::Header(error)) => Err(error),
        Err(check::CheckError::Io(error)) => Err(Qcow2Error::io("reading the refcounts", error)),
        Err(error) => Err(Qcow2Error::Repair(Box::new(error))),
    }
}
