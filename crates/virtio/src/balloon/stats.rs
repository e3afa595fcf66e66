//! The guest's memory statistics (virtio 1.3, 5.5.6.3): a buffer of `struct virtio_balloon_stat
//! { le16 tag; le64 val; }`, packed, 10 bytes each.

/// Bytes of one tag/value pair.
pub const STAT_BYTES: usize = 10;

// Tags (virtio 1.3, 5.5.6.3; 10 and later are the memory-pressure counters Linux 6.12 added).
const TAG_SWAP_IN: u16 = 0;
const TAG_SWAP_OUT: u16 = 1;
const TAG_MAJOR_FAULTS: u16 = 2;
const TAG_MINOR_FAULTS: u16 = 3;
const TAG_FREE_MEMORY: u16 = 4;
const TAG_TOTAL_MEMORY: u16 = 5;
const TAG_AVAILABLE_MEMORY: u16 = 6;
const TAG_DISK_CACHES: u16 = 7;
const TAG_HUGETLB_ALLOCATIONS: u16 = 8;
const TAG_HUGETLB_FAILURES: u16 = 9;
const TAG_OOM_KILLS: u16 = 10;
const TAG_ALLOC_STALLS: u16 = 11;
const TAG_ASYNC_SCAN: u16 = 12;
const TAG_DIRECT_SCAN: u16 = 13;
const TAG_ASYNC_RECLAIM: u16 = 14;
const TAG_DIRECT_RECLAIM: u16 = 15;

/// The latest statistics the guest reported; a field is None until the guest reports it. Units
/// are the specification's: bytes for amounts of memory, counts for the rest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BalloonStats {
    /// Bytes swapped in.
    pub swap_in: Option<u64>,
    /// Bytes swapped out.
    pub swap_out: Option<u64>,
    /// Page faults that needed disk I/O.
    pub major_faults: Option<u64>,
    /// Page faults served from memory.
    pub minor_faults: Option<u64>,
    /// Bytes not used for any purpose.
    pub free_memory: Option<u64>,
    /// Bytes of memory the guest can use.
    pub total_memory: Option<u64>,
    /// Bytes the guest estimates it could use for new work without swapping.
    pub available_memory: Option<u64>,
    /// Bytes of file cache the guest could drop.
    pub disk_caches: Option<u64>,
    /// Successful huge page allocations.
    pub hugetlb_allocations: Option<u64>,
    /// Failed huge page allocations.
    pub hugetlb_failures: Option<u64>,
    /// OOM killer invocations.
    pub oom_kills: Option<u64>,
    /// Allocations that stalled to reclaim memory.
    pub alloc_stalls: Option<u64>,
    /// Pages scanned by background reclaim (kswapd).
    pub async_scan: Option<u64>,
    /// Pages scanned by allocations reclaiming directly.
    pub direct_scan: Option<u64>,
    /// Pages reclaimed in the background.
    pub async_reclaim: Option<u64>,
    /// Pages reclaimed directly by allocations.
    pub direct_reclaim: Option<u64>,
}

impl BalloonStats {
    /// Reads a stats buffer: every complete tag/value pair, last one wins for a repeated tag.
    /// Tags this device does not know (newer specifications add some) and a trailing partial
    /// pair are skipped; the guest's bytes never make this fail.
    pub fn parse(buffer: &[u8]) -> BalloonStats {
        let mut stats = BalloonStats::default();
        for pair in buffer.chunks_exact(STAT_BYTES) {
            let tag = u16::from_le_bytes([pair[0], pair[1]]);
            let mut value = [0u8; 8];
            value.copy_from_slice(&pair[2..]);
            if let Some(field) = stats.field(tag) {
                *field = Some(u64::from_le_bytes(value));
            } else {
                tracing::debug!("virtio-balloon: unknown statistic tag {tag} skipped");
            }
        }
        stats
    }

    fn field(&mut self, tag: u16) -> Option<&mut Option<u64>> {
        Some(match tag {
            TAG_SWAP_IN => &mut self.swap_in,
            TAG_SWAP_OUT => &mut self.swap_out,
            TAG_MAJOR_FAULTS => &mut self.major_faults,
            TAG_MINOR_FAULTS => &mut self.minor_faults,
            TAG_FREE_MEMORY => &mut self.free_memory,
            TAG_TOTAL_MEMORY => &mut self.total_memory,
            TAG_AVAILABLE_MEMORY => &mut self.available_memory,
            TAG_DISK_CACHES => &mut self.disk_caches,
            TAG_HUGETLB_ALLOCATIONS => &mut self.hugetlb_allocations,
            TAG_HUGETLB_FAILURES => &mut self.hugetlb_failures,
            TAG_OOM_KILLS => &mut self.oom_kills,
            TAG_ALLOC_STALLS => &mut self.alloc_stalls,
            TAG_ASYNC_SCAN => &mut self.async_scan,
            TAG_DIRECT_SCAN => &mut self.direct_scan,
            TAG_ASYNC_RECLAIM => &mut self.async_reclaim,
            TAG_DIRECT_RECLAIM => &mut self.direct_reclaim,
            _ => return None,
        })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A stats buffer as the driver lays it out.
    pub fn encode(pairs: &[(u16, u64)]) -> Vec<u8> {
        pairs
            .iter()
            .flat_map(|(tag, value)| tag.to_le_bytes().into_iter().chain(value.to_le_bytes()))
            .collect()
    }

    #[test]
    fn every_known_tag_lands_in_its_field() {
        let buffer = encode(&(0..16).map(|tag| (tag, 1000 + u64::from(tag))).collect::<Vec<_>>());
        let stats = BalloonStats::parse(&buffer);
        assert_eq!(
            stats,
            BalloonStats {
                swap_in: Some(1000),
                swap_out: Some(1001),
                major_faults: Some(1002),
                minor_faults: Some(1003),
                free_memory: Some(1004),
                total_memory: Some(1005),
                available_memory: Some(1006),
                disk_caches: Some(1007),
                hugetlb_allocations: Some(1008),
                hugetlb_failures: Some(1009),
                oom_kills: Some(1010),
                alloc_stalls: Some(1011),
                async_scan: Some(1012),
                direct_scan: Some(1013),
                async_reclaim: Some(1014),
                direct_reclaim: Some(1015),
            }
        );
    }

    #[test]
    fn unknown_tags_partial_pairs_and_repeats_are_harmless() {
        let mut buffer = encode(&[(TAG_FREE_MEMORY, 1), (0xffff, 7), (42, 8), (TAG_FREE_MEMORY, u64::MAX)]);
        buffer.extend_from_slice(&[5, 0, 1, 2]); // the start of a pair that never ends
        let stats = BalloonStats::parse(&buffer);
        assert_eq!(stats, BalloonStats { free_memory: Some(u64::MAX), ..BalloonStats::default() });
        assert_eq!(BalloonStats::parse(&[]), BalloonStats::default());
        assert_eq!(BalloonStats::parse(&[1, 2, 3]), BalloonStats::default());
    }
}
