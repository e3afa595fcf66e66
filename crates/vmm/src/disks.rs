//! Opening the VM's disks: the one place the VMM turns a configured path into a disk backend for
//! virtio-blk (which itself knows nothing of files or formats).

use std::path::Path;
use std::sync::Arc;

use storage::open::{open_disk, DiskSpec};
use storage::DiskBackend;
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

/// Opens `path` as a disk the way `spec` says (format, read-only, cache mode, backing files),
/// locked against other writers, through the storage crate's one factory.
pub fn open_backend(path: &Path, spec: &DiskSpec) -> Result<Arc<dyn DiskBackend>, DiskOpenError> {
    Ok(open_disk(path, spec)?.backend)
}

/// The virtio-blk device for `config`.
pub fn open_block(config: &BlockConfig) -> Result<Block, DiskOpenError> {
    let id = disk_id(&config.path, config.id.as_deref())?;
    let backend = open_backend(&config.path, &DiskSpec::of(config))?;
    Ok(Block::new(backend, config.read_only, id))
}
