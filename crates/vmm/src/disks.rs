//! Opening the VM's disks: the one place the VMM turns a configured path into a disk backend for
//! virtio-blk (which itself knows nothing of files or formats).

use std::path::Path;

use storage::open::{reopen_disk, DiskSpec, ImageLock, OpenedDisk};
use virtio::block::{disk_id, Block, DiskError};

use crate::config::BlockConfig;

/// Why a configured disk cannot be given to the guest.
#[derive(Debug, thiserror::Error)]
pub enum DiskOpenError {
    #[error("{0}")]
    Open(#[from] storage::open::OpenError),
    #[error("{0}")]
    Device(#[from] DiskError),
}

impl DiskOpenError {
    /// The message, naming the disk at `path` once: the storage crate's errors name it already.
    pub fn describe(&self, path: &Path) -> String {
        match self {
            DiskOpenError::Open(error) => error.to_string(),
            DiskOpenError::Device(error) => format!("disk {}: {error}", path.display()),
        }
    }
}

/// Opens `path` as a disk the way `spec` says (format, read-only, cache mode, backing files),
/// locked against other writers, through the storage crate's one factory. A disk that holds
/// `held` now may be given its own image again (see [`storage::open::reopen_disk`]).
pub fn open_backend(
    path: &Path,
    spec: &DiskSpec,
    held: Option<&ImageLock>,
) -> Result<OpenedDisk, DiskOpenError> {
    Ok(reopen_disk(path, spec, held)?)
}

/// The virtio-blk device for `config`, and its image's lock.
pub fn open_block(config: &BlockConfig) -> Result<(Block, ImageLock), DiskOpenError> {
    let id = disk_id(&config.path, config.id.as_deref())?;
    let opened = open_backend(&config.path, &DiskSpec::of(config), None)?;
    Ok((Block::new(opened.backend, config.read_only, id), opened.lock))
}
