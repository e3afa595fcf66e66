//! Opening the VM's disks: the one place the VMM turns a configured path into a disk backend for
//! virtio-blk (which itself knows nothing of files or formats).

use std::path::Path;
use std::sync::Arc;

use storage::DiskBackend;
use virtio::block::{disk_id, Block, DiskError};

use crate::config::BlockConfig;

/// Why a configured disk cannot be given to the guest.
#[derive(Debug, thiserror::Error)]
pub enum DiskOpenError {
    #[error("{0}")]
    Open(#[from] storage::OpenError),
    #[error("{0}")]
    Device(#[from] DiskError),
}

/// Opens `path` as a disk, read-only (`O_RDONLY`) if asked.
pub fn open_backend(path: &Path, read_only: bool) -> Result<Arc<dyn DiskBackend>, DiskOpenError> {
    Ok(Arc::new(storage::RawFile::open(path, read_only)?))
}

/// The virtio-blk device for `config`.
pub fn open_block(config: &BlockConfig) -> Result<Block, DiskOpenError> {
    let id = disk_id(&config.path, config.id.as_deref())?;
    let backend = open_backend(&config.path, config.read_only)?;
    Ok(Block::new(backend, config.read_only, id, virtio::block::BlockOptions::default()))
}
