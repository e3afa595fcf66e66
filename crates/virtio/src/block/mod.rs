//! virtio-blk (block device, virtio 1.2 section 5.2): one or more request queues over a
//! [`storage::DiskBackend`] — a raw file, a qcow2 image, whatever the VMM opened. This module
//! knows nothing of files or formats.
//!
//! `device.rs` is what the transport sees (features, configuration space), `handler.rs` parses and
//! executes the guest's requests, handing the request's guest memory to the disk without a copy,
//! `server.rs` serves the queues on the device's worker thread (many requests in flight through
//! a [`storage::engine::IoEngine`] per queue, or one at a time on the spot), and `control.rs`
//! holds the current disk, which [`BlockControl`] replaces while the guest runs.
//!
//! The disk is addressed in 512-byte sectors. An image whose size is not a multiple of 512 is
//! rounded down: its last partial sector cannot be reached by the guest (a warning says so).

mod control;
mod device;
mod handler;
mod poll;
mod server;

pub use control::BlockControl;
pub use device::{disk_id, Block, BlockOptions, DiskError, Engine};
pub use storage::DiskBackend;

/// The size of each request queue.
const QUEUE_SIZE: u16 = 256;

/// The unit of the guest's addressing, whatever the host storage's own block size.
const SECTOR_SIZE: u64 = 512;

/// The serial number GET_ID returns is at most this long (NUL-padded when shorter).
pub const ID_BYTES: usize = 20;
