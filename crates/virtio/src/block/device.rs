//! The block device as its transport sees it: features, configuration space, activation.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use storage::DiskBackend;

use super::control::{BlockControl, SharedDisk};
use super::handler::{
    BlockHandler, Disk, MAX_DISCARD_SECTORS, MAX_DISCARD_SEGMENTS, MAX_WRITE_ZEROES_SECTORS,
    MAX_WRITE_ZEROES_SEGMENTS, SEG_MAX, SIZE_MAX,
};
use super::{ID_BYTES, SECTOR_SIZE};
use crate::device::{
    device_type, read_config_bytes, ActivateContext, ActivateError, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::metrics::BlockMetrics;
use crate::worker::Worker;

const QUEUE_SIZES: [u16; 1] = [super::QUEUE_SIZE];

// Feature bits (virtio 1.2 section 5.2.3).
const VIRTIO_BLK_F_SIZE_MAX: u64 = 1 << 1;
const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;

/// Discards are best aligned to 4 KiB, the block size of common host filesystems: a hole can only
/// be punched in whole filesystem blocks (partial ones are zeroed instead).
const DISCARD_SECTOR_ALIGNMENT: u32 = 8;

/// Bytes of `struct virtio_blk_config` Kestrel fills in: up to and including the write-zeroes
/// fields (the secure-erase and zoned fields that follow belong to features it does not offer).
const CONFIG_BYTES: usize = 60;

/// Why a disk cannot be given to the guest.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("its id {id:?} is {} bytes, more than the {ID_BYTES} virtio-blk allows", id.len())]
    IdTooLong { id: String },
    #[error("cannot flush the disk being replaced, so it stays: {0}")]
    Sync(io::Error),
    #[error("the disk was replaced, but the guest could not be told: {0}")]
    Notify(io::Error),
}

/// A virtio-blk device over any disk backend.
pub struct Block {
    disk: Arc<SharedDisk<dyn DiskBackend>>,
    features: u64,
    metrics: Arc<BlockMetrics>,
    worker: Option<Worker>,
}

/// The capacity in sectors of a disk of `bytes`: a partial last sector cannot be reached.
pub(super) fn sectors_of(bytes: u64, id: &[u8; ID_BYTES]) -> u64 {
    if !bytes.is_multiple_of(SECTOR_SIZE) {
        let name = String::from_utf8_lossy(id);
        tracing::warn!(
            "disk {}: {bytes} bytes is not a whole number of 512-byte sectors; the guest sees only \
             the first {} bytes",
            name.trim_end_matches('\0'),
            bytes / SECTOR_SIZE * SECTOR_SIZE
        );
    }
    bytes / SECTOR_SIZE
}

impl Block {
    /// A disk over `backend`, which the VMM opened (read-only if `read_only`: the guest is then
    /// offered a read-only disk). GET_ID returns `id` (see [`disk_id`]).
    pub fn new(backend: Arc<dyn DiskBackend>, read_only: bool, id: [u8; ID_BYTES]) -> Block {
        let sectors = sectors_of(backend.size(), &id);
        let mut features = VIRTIO_F_VERSION_1
            | VIRTIO_BLK_F_SIZE_MAX
            | VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_BLK_SIZE
            | VIRTIO_BLK_F_FLUSH;
        features |=
            if read_only { VIRTIO_BLK_F_RO } else { VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES };
        let disk = Disk { backend, sectors, read_only, id };
        Block { disk: Arc::new(SharedDisk::new(disk)), features, metrics: Arc::default(), worker: None }
    }

    /// The host's handle on this disk, to replace its backing file while the guest runs.
    pub fn control(&self) -> BlockControl {
        BlockControl::new(self.disk.clone())
    }

    /// What the disk counts, for the VMM's metrics.
    pub fn metrics(&self) -> Arc<BlockMetrics> {
        self.metrics.clone()
    }
}

/// The serial number GET_ID returns: `id` if given, else derived from the file name, NUL-padded
/// to 20 bytes.
pub fn disk_id(path: &Path, id: Option<&str>) -> Result<[u8; ID_BYTES], DiskError> {
    let bytes = match id {
        Some(id) if id.len() > ID_BYTES => return Err(DiskError::IdTooLong { id: id.to_owned() }),
        Some(id) => id.as_bytes(),
        None => {
            let name = path.file_name().unwrap_or(path.as_os_str()).as_bytes();
            &name[..name.len().min(ID_BYTES)]
        }
    };
    let mut serial = [0u8; ID_BYTES];
    serial[..bytes.len()].copy_from_slice(bytes);
    Ok(serial)
}

/// `struct virtio_blk_config` (virtio 1.2 section 5.2.4), little-endian. The discard and
/// write-zeroes limits are read only when those features are offered, so a read-only disk may
/// carry them too.
fn config_space(sectors: u64) -> [u8; CONFIG_BYTES] {
    let mut config = [0u8; CONFIG_BYTES];
    let mut put = |offset: usize, bytes: &[u8]| config[offset..offset + bytes.len()].copy_from_slice(bytes);
    put(0, &sectors.to_le_bytes()); // capacity
    put(8, &SIZE_MAX.to_le_bytes()); // size_max
    put(12, &SEG_MAX.to_le_bytes()); // seg_max
    put(20, &(SECTOR_SIZE as u32).to_le_bytes()); // blk_size
    put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
    put(40, &MAX_DISCARD_SEGMENTS.to_le_bytes());
    put(44, &DISCARD_SECTOR_ALIGNMENT.to_le_bytes());
    put(48, &MAX_WRITE_ZEROES_SECTORS.to_le_bytes());
    put(52, &MAX_WRITE_ZEROES_SEGMENTS.to_le_bytes());
    put(56, &[1]); // write_zeroes_may_unmap: the unmap flag is honoured by punching a hole
    config
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        self.features
    }

    /// The capacity is the current disk's (see `SharedDisk::replace` on reading it while it
    /// changes).
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&config_space(self.disk.sectors()), offset, data);
    }

    /// Every field Kestrel offers is read-only (`writeback` needs VIRTIO_BLK_F_CONFIG_WCE).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, mut context: ActivateContext) -> Result<(), ActivateError> {
        let [queue] = context.take_ready_queues(&self.worker)?;
        let handler = BlockHandler::new(
            context.memory.clone(),
            queue,
            context.interrupt.clone(),
            context.guest_errors.clone(),
            self.metrics.clone(),
            self.disk.clone(),
        );
        self.worker = Some(context.spawn_worker("virtio-blk", handler)?);
        self.disk.set_interrupt(Some(context.interrupt));
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
        self.disk.set_interrupt(None);
    }

    fn worker(&self) -> Option<&Worker> {
        self.worker.as_ref()
    }

    fn activation_failed(&self) {
        self.metrics.activate_fails.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &Path, read_only: bool) -> Block {
        let backend = Arc::new(storage::RawFile::open(path, read_only).unwrap());
        Block::new(backend, read_only, disk_id(path, None).unwrap())
    }

    fn config_u32(block: &Block, offset: u64) -> u32 {
        let mut bytes = [0u8; 4];
        block.read_config(offset, &mut bytes);
        u32::from_le_bytes(bytes)
    }

    #[test]
    fn capacity_rounds_a_partial_last_sector_down() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odd.img");
        std::fs::File::create(&path).unwrap().set_len(10 * 512 + 100).unwrap();
        let block = open(&path, false);
        let mut capacity = [0u8; 8];
        block.read_config(0, &mut capacity);
        assert_eq!(u64::from_le_bytes(capacity), 10);
        assert_eq!(config_u32(&block, 8), SIZE_MAX);
        assert_eq!(config_u32(&block, 12), SEG_MAX);
        assert_ne!(block.features() & VIRTIO_BLK_F_SIZE_MAX, 0);
        assert_ne!(block.features() & VIRTIO_BLK_F_SEG_MAX, 0);
        assert_eq!(config_u32(&block, 20), 512);
    }

    #[test]
    fn read_only_disks_offer_ro_and_no_discard() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::File::create(&path).unwrap().set_len(4096).unwrap();
        let read_only = open(&path, true).features();
        assert_ne!(read_only & VIRTIO_BLK_F_RO, 0);
        assert_eq!(read_only & (VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES), 0);
        let writable = open(&path, false).features();
        assert_eq!(writable & VIRTIO_BLK_F_RO, 0);
        assert_ne!(writable & VIRTIO_BLK_F_DISCARD, 0);
        assert_ne!(writable & VIRTIO_BLK_F_WRITE_ZEROES, 0);
        assert_ne!(writable & VIRTIO_BLK_F_FLUSH, 0);
    }

    #[test]
    fn serial_from_the_id_or_the_file_name() {
        let path = Path::new("/images/a-rather-long-disk-image-name.raw");
        assert_eq!(&disk_id(path, None).unwrap(), b"a-rather-long-disk-i");
        assert_eq!(&disk_id(Path::new("/d/root.img"), None).unwrap()[..9], b"root.img\0");
        assert_eq!(&disk_id(path, Some("data")).unwrap()[..5], b"data\0");
        assert!(matches!(disk_id(path, Some("0123456789abcdefghijk")), Err(DiskError::IdTooLong { .. })));
    }

    #[test]
    fn the_capacity_follows_a_replaced_file() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (dir.path().join("first.img"), dir.path().join("second.img"));
        std::fs::File::create(&first).unwrap().set_len(4096).unwrap();
        std::fs::File::create(&second).unwrap().set_len(1 << 20).unwrap();
        let block = open(&first, false);
        block.control().replace(Arc::new(storage::RawFile::open(&second, false).unwrap())).unwrap();
        let mut capacity = [0u8; 8];
        block.read_config(0, &mut capacity);
        assert_eq!(u64::from_le_bytes(capacity), 2048);
        assert_eq!(config_u32(&block, 20), 512, "the rest of the configuration stays");
    }
}
