//! virtio-balloon (memory balloon, virtio 1.2 section 5.5): the host sets a target size, the guest
//! driver inflates the balloon towards it by handing over pages it promises not to use, and the
//! host frees the memory behind them (`madvise(MADV_DONTNEED)`), so the VMM's resident memory
//! shrinks. Deflating hands pages back; they are backed again on the guest's next access.
//!
//! Queues: inflate and deflate (arrays of le32 page frame numbers of 4 KiB pages), the stats queue
//! (with `stats_interval`: the guest's memory statistics, kept for the host), and the free page
//! reporting queue (the guest reports ranges it freed; the host discards them too).
//!
//! `device.rs` is what the transport sees (features, configuration space: `num_pages`, the target,
//! and `actual`, the driver's count), `handler.rs` serves the queues on the worker thread,
//! `pages.rs` turns PFNs into discarded host memory, `stats.rs` parses statistics, and `control.rs`
//! is [`BalloonControl`], the handle the VMM keeps to set the target and the statistics interval
//! and read what the guest reports.

mod control;
mod device;
mod handler;
mod pages;
mod stats;

pub use control::{BalloonControl, BalloonError, BalloonReport};
pub use device::{Balloon, BalloonSettings, BalloonState};
pub use stats::BalloonStats;
