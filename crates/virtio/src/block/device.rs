//! The block device as its transport sees it: features, configuration space, activation.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use storage::DiskBackend;

use super::control::{BlockControl, SharedDisk};
use super::handler::{
    Disk, Mode, MAX_DISCARD_SECTORS, MAX_DISCARD_SEGMENTS, MAX_WRITE_ZEROES_SECTORS,
    MAX_WRITE_ZEROES_SEGMENTS, SEG_MAX, SIZE_MAX,
};
use super::server::BlockHandler;
use super::{ID_BYTES, SECTOR_SIZE};
use crate::device::{
    device_type, read_config_bytes, ActivateContext, ActivateError, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::metrics::BlockMetrics;
use crate::rate_limiter::{RateLimit, RateLimitError, RateLimiter};
use crate::worker::Worker;
use virtio_queue::QueueT;

// Feature bits (virtio 1.2 section 5.2.3).
const VIRTIO_BLK_F_SIZE_MAX: u64 = 1 << 1;
const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const VIRTIO_BLK_F_MQ: u64 = 1 << 12;
const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;

/// VIRTIO_RING_F_EVENT_IDX (virtio 1.2 section 6): the driver and device say up to which
/// request they want to be told of, which saves interrupts and notifications under load.
pub(super) const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// The most request queues a disk may have: one per vCPU is the point, and no VM has more.
pub const MAX_QUEUES: u16 = 64;

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
    #[error("its rate limiter: {0}")]
    RateLimiter(#[from] RateLimitError),
}

/// How the device carries out requests (Firecracker's `io_engine`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Engine {
    /// One request at a time, on the device's worker thread. Backends without a direct file
    /// descriptor (qcow2) are still served asynchronously, through a thread pool: their work per
    /// request is too long to hold up the queue.
    Sync,
    /// Many requests in flight per queue: io_uring on a raw file (a thread pool where io_uring
    /// is unavailable, and for other backends).
    #[default]
    Async,
}

/// The device's settings beside its disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockOptions {
    /// Request queues (VIRTIO_BLK_F_MQ when more than one), clamped to 1..=[`MAX_QUEUES`].
    pub num_queues: u16,
    pub engine: Engine,
    /// Offer VIRTIO_BLK_F_FLUSH, so the guest's flushes reach the disk. False for
    /// `cache=unsafe`: the guest is told the disk has no write cache (Firecracker's `Unsafe`).
    pub flush: bool,
    /// Token buckets for the guest's bandwidth and requests, shared by all the disk's queues;
    /// `None` limits nothing (one can still be set while the guest runs, through
    /// [`BlockControl::update_rate_limiter`]).
    pub rate_limit: Option<RateLimit>,
    /// Adaptive polling: once out of work, the worker keeps the guest's notifications off and
    /// polls the rings for a window of up to this long, which grows while requests come that
    /// close together and shrinks when they do not (`None`: never; see the block module's
    /// `poll.rs`). Saves a qd1 request the worker's wake-up, at the cost of a host CPU while
    /// the window lasts.
    pub poll: Option<Duration>,
}

impl Default for BlockOptions {
    fn default() -> BlockOptions {
        BlockOptions { num_queues: 1, engine: Engine::default(), flush: true, rate_limit: None, poll: None }
    }
}

/// A virtio-blk device over any disk backend.
pub struct Block {
    disk: Arc<SharedDisk<dyn DiskBackend>>,
    features: u64,
    queue_sizes: Vec<u16>,
    engine: Engine,
    poll: Option<Duration>,
    /// Every disk has one, limiting nothing unless configured, so that a limit can be set while
    /// the guest runs: its timer is among the worker's descriptors from the start. It outlives
    /// the worker, so a reset does not refill the buckets.
    limiter: Arc<Mutex<RateLimiter>>,
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
    /// offered a read-only disk). GET_ID returns `id` (see [`disk_id`]). Fails only when the rate
    /// limiter cannot be made ([`DiskError::RateLimiter`]: an absurd refill time, no timerfd).
    pub fn new(
        backend: Arc<dyn DiskBackend>,
        read_only: bool,
        id: [u8; ID_BYTES],
        options: BlockOptions,
    ) -> Result<Block, DiskError> {
        let limiter = RateLimiter::new(options.rate_limit.unwrap_or_default())?;
        let sectors = sectors_of(backend.size(), &id);
        let num_queues = options.num_queues.clamp(1, MAX_QUEUES);
        let mut features = VIRTIO_F_VERSION_1
            | VIRTIO_BLK_F_SIZE_MAX
            | VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_BLK_SIZE
            | VIRTIO_RING_F_EVENT_IDX;
        if options.flush {
            features |= VIRTIO_BLK_F_FLUSH;
        }
        if num_queues > 1 {
            features |= VIRTIO_BLK_F_MQ;
        }
        features |=
            if read_only { VIRTIO_BLK_F_RO } else { VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES };
        let disk = Disk { backend, sectors, read_only, id };
        Ok(Block {
            disk: Arc::new(SharedDisk::new(disk)),
            features,
            queue_sizes: vec![super::QUEUE_SIZE; usize::from(num_queues)],
            engine: options.engine,
            poll: options.poll,
            limiter: Arc::new(Mutex::new(limiter)),
            metrics: Arc::default(),
            worker: None,
        })
    }

    /// The host's handle on this disk, to replace its backing file or change its rate limiter
    /// while the guest runs.
    pub fn control(&self) -> BlockControl {
        BlockControl::new(self.disk.clone(), self.limiter.clone())
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
fn config_space(sectors: u64, num_queues: u16) -> [u8; CONFIG_BYTES] {
    let mut config = [0u8; CONFIG_BYTES];
    let mut put = |offset: usize, bytes: &[u8]| config[offset..offset + bytes.len()].copy_from_slice(bytes);
    put(0, &sectors.to_le_bytes()); // capacity
    put(8, &SIZE_MAX.to_le_bytes()); // size_max
    put(12, &SEG_MAX.to_le_bytes()); // seg_max
    put(20, &(SECTOR_SIZE as u32).to_le_bytes()); // blk_size
    put(34, &num_queues.to_le_bytes()); // num_queues, read with VIRTIO_BLK_F_MQ
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
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    /// The capacity is the current disk's (see `SharedDisk::replace` on reading it while it
    /// changes).
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&config_space(self.disk.sectors(), self.queue_sizes.len() as u16), offset, data);
    }

    /// Every field Kestrel offers is read-only (`writeback` needs VIRTIO_BLK_F_CONFIG_WCE).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, mut context: ActivateContext) -> Result<(), ActivateError> {
        // A driver without VIRTIO_BLK_F_MQ uses the first queue only; one with it may use fewer
        // than offered (Linux: one per vCPU).
        let mut queues = context.take_queues(&self.worker, self.queue_sizes.len(), 1)?;
        let event_idx = context.acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
        for queue in &mut queues {
            queue.set_event_idx(event_idx);
        }
        // Backends that map the guest's bytes themselves are never served on the worker thread.
        let direct = self.disk.current().backend.direct_fd().is_some();
        let mode = Mode {
            defer: self.engine == Engine::Async || !direct,
            flush: self.features & VIRTIO_BLK_F_FLUSH != 0,
        };
        let handler = BlockHandler::new(
            context.memory.clone(),
            queues,
            context.interrupt.clone(),
            context.guest_errors.clone(),
            self.metrics.clone(),
            self.disk.clone(),
            self.limiter.clone(),
            mode,
        )
        .map_err(ActivateError::Backend)?
        .with_poll(self.poll);
        self.worker = Some(context.spawn_worker("virtio-blk", jail::seccomp::ThreadRole::Block, handler)?);
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
        Block::new(backend, read_only, disk_id(path, None).unwrap(), BlockOptions::default()).unwrap()
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
