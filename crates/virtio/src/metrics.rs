//! What the devices count, for the metrics Kestrel writes (Firecracker's metrics format).
//!
//! Each device owns its counters (`Arc<BlockMetrics>`, ...) and shares them with the metrics
//! writer, which reads each [`Counter`] as the count since its previous flush, like Firecracker's
//! `SharedIncMetric`. Counting is one relaxed atomic add, never a lock, so the hot paths (a worker
//! serving requests, a vCPU exiting) pay next to nothing. Counter names are Firecracker's where
//! Firecracker has the counter, so tools that read Firecracker's metrics read Kestrel's.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

/// A count that only grows, read as deltas: [`Counter::take`] returns what was added since the
/// previous `take`.
#[derive(Debug, Default)]
pub struct Counter {
    total: AtomicU64,
    /// `total` at the previous `take`.
    taken: AtomicU64,
}

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, count: u64) {
        // Relaxed: each counter is independent, and the writer needs no ordering with the data
        // the count describes.
        self.total.fetch_add(count, Ordering::Relaxed);
    }

    /// The count since the previous call. Meant for one metrics writer at a time (it serialises
    /// its flushes); counting may go on concurrently and lands in this delta or the next.
    pub fn take(&self) -> u64 {
        let total = self.total.load(Ordering::Relaxed);
        total.wrapping_sub(self.taken.swap(total, Ordering::Relaxed))
    }
}

/// One group of counts as taken at a flush, in the group's field order; serialised as a JSON
/// object of numbers (`{"read_bytes": 4096, ...}`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts(Vec<(&'static str, u64)>);

impl Counts {
    pub fn new(counts: Vec<(&'static str, u64)>) -> Counts {
        Counts(counts)
    }

    /// The count named `name`.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.0.iter().find(|(n, _)| *n == name).map(|&(_, count)| count)
    }

    /// Adds `other`'s counts to the counts of the same name (for a group's aggregate over its
    /// devices; both come from the same group type, so they have the same names).
    pub fn add(&mut self, other: &Counts) {
        for (name, count) in &mut self.0 {
            *count = count.wrapping_add(other.get(name).unwrap_or(0));
        }
    }
}

impl Serialize for Counts {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, count) in &self.0 {
            map.serialize_entry(name, count)?;
        }
        map.end()
    }
}

/// Declares a group of [`Counter`]s, each field a counter under the name it is written with, and
/// its `take()`, which returns every counter's delta as [`Counts`].
#[macro_export]
macro_rules! counter_group {
    ($(#[$attr:meta])* $vis:vis struct $name:ident { $($(#[$doc:meta])* $field:ident,)* }) => {
        $(#[$attr])*
        #[derive(Debug, Default)]
        $vis struct $name {
            $($(#[$doc])* pub $field: $crate::metrics::Counter,)*
        }

        impl $name {
            /// Every counter's count since the previous call.
            pub fn take(&self) -> $crate::metrics::Counts {
                $crate::metrics::Counts::new(vec![$((stringify!($field), self.$field.take()),)*])
            }
        }
    };
}

counter_group! {
    /// A virtio-blk disk (Firecracker's `block` group).
    pub struct BlockMetrics {
        /// The device could not be started.
        activate_fails,
        /// Notifications of the request queue.
        queue_event_count,
        /// Successful reads and the bytes they moved to the guest.
        read_count,
        read_bytes,
        /// Successful writes and the bytes they moved to the disk.
        write_count,
        write_bytes,
        /// Successful flushes.
        flush_count,
        /// Successful discard and write-zeroes requests (Kestrel's; Firecracker has neither).
        discard_count,
        write_zeroes_count,
        /// Requests refused for the guest's doing: malformed, unsupported, out of range, a write
        /// to a read-only disk.
        invalid_reqs_count,
        /// Requests the host's storage failed.
        execute_fails,
        /// Times a queue stopped taking requests because the disk's rate limiter had no budget
        /// left for the next one (Firecracker's name).
        rate_limiter_throttled_events,
    }
}

counter_group! {
    /// A virtio-net card (Firecracker's `net` group). Bytes count whole frames without their
    /// virtio-net header.
    pub struct NetMetrics {
        activate_fails,
        /// Notifications of the receive and transmit queues.
        rx_queue_event_count,
        tx_queue_event_count,
        /// Readiness events of the tap.
        rx_tap_event_count,
        /// Frames put into the guest's receive buffers, and their bytes.
        rx_packets_count,
        rx_bytes_count,
        /// Frames from the tap that could not be delivered (no room in the buffer, guest memory).
        rx_fails,
        /// The tap had frames but the guest had no receive buffer.
        no_rx_avail_buffer,
        /// Reading the tap failed.
        tap_read_fails,
        /// Frames sent to the tap, and their bytes.
        tx_packets_count,
        tx_bytes_count,
        /// Transmit requests that were no frame (too short, too long, unreadable).
        tx_malformed_frames,
        /// Frames the tap refused.
        tap_write_fails,
        /// Times the receive limiter held a frame back, and the tap unread, for want of budget
        /// (Firecracker's name).
        rx_rate_limiter_throttled,
        /// Times the transmit queue stopped for want of the transmit limiter's budget.
        tx_rate_limiter_throttled,
    }
}

counter_group! {
    /// The virtio-vsock device (Firecracker's `vsock` group). "rx" is towards the guest, "tx"
    /// from it; bytes count payload.
    pub struct VsockMetrics {
        activate_fails,
        rx_queue_event_count,
        tx_queue_event_count,
        rx_packets_count,
        rx_bytes_count,
        tx_packets_count,
        tx_bytes_count,
        /// Connections set up (either side asking), closed, and closed by a reset.
        conns_added,
        conns_removed,
        conns_killed,
        /// Reading from or writing to a host socket failed.
        rx_read_fails,
        tx_write_fails,
    }
}

counter_group! {
    /// The virtio-rng device (Firecracker's `entropy` group).
    pub struct EntropyMetrics {
        activate_fails,
        /// Requests served, and the random bytes they carried to the guest.
        entropy_event_count,
        entropy_bytes,
        /// Requests that were malformed.
        entropy_event_fails,
        /// The host's getrandom failed.
        host_rng_fails,
    }
}

counter_group! {
    /// The virtio-balloon device (Firecracker's `balloon` group).
    pub struct BalloonMetrics {
        activate_fails,
        /// Inflate and deflate buffers served.
        inflate_count,
        deflate_count,
        /// Statistics buffers the guest sent, and those that could not be read.
        stats_updates_count,
        stats_update_fails,
        /// Free page reports served, the bytes they gave back to the host, and discards that
        /// failed.
        free_page_report_count,
        free_page_report_freed,
        free_page_report_fails,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_counter_reads_as_the_delta_since_the_previous_take() {
        let counter = Counter::default();
        assert_eq!(counter.take(), 0);
        counter.add(5);
        counter.inc();
        assert_eq!(counter.take(), 6);
        assert_eq!(counter.take(), 0, "a second take sees nothing new");
        counter.add(u64::MAX);
        counter.add(3);
        assert_eq!(counter.take(), 2, "the total wraps, the delta stays right");
    }

    #[test]
    fn concurrent_counting_is_never_lost_between_takes() {
        let counter = Arc::new(Counter::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let counter = counter.clone();
                std::thread::spawn(move || (0..10_000).for_each(|_| counter.inc()))
            })
            .collect();
        let mut taken = 0;
        while !threads.iter().all(|t| t.is_finished()) {
            taken += counter.take();
        }
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(taken + counter.take(), 40_000);
    }

    #[test]
    fn a_group_serialises_in_field_order_with_firecracker_names() {
        let block = BlockMetrics::default();
        block.read_bytes.add(4096);
        block.read_count.inc();
        block.write_bytes.add(512);
        let json = serde_json::to_string(&block.take()).unwrap();
        assert!(
            json.starts_with(
                r#"{"activate_fails":0,"queue_event_count":0,"read_count":1,"read_bytes":4096,"#
            ),
            "{json}"
        );
        assert!(json.contains(r#""write_bytes":512,"#), "{json}");
        let again = block.take();
        assert_eq!((again.get("read_bytes"), again.get("write_bytes")), (Some(0), Some(0)));
        assert_eq!(again.get("no_such_counter"), None);
    }

    #[test]
    fn an_aggregate_adds_by_name() {
        let (first, second) = (NetMetrics::default(), NetMetrics::default());
        first.rx_bytes_count.add(100);
        second.rx_bytes_count.add(20);
        second.tx_packets_count.inc();
        let mut total = NetMetrics::default().take();
        total.add(&first.take());
        total.add(&second.take());
        assert_eq!(total.get("rx_bytes_count"), Some(120));
        assert_eq!(total.get("tx_packets_count"), Some(1));
        assert_eq!(total.get("activate_fails"), Some(0));
    }
}
