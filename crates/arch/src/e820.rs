//! The guest's e820 memory map, shared by the Linux and PVH boot paths.

use crate::layout::{ACPI_START, EBDA_START, HIMEM_START, LOW_RAM_END, MMIO_GAP_END};
use crate::memory::low_ram_end;

/// RAM the guest may use (same value as PVH's `XEN_HVM_MEMMAP_TYPE_RAM`).
pub const E820_RAM: u32 = 1;
/// Memory the guest must leave alone (same value as `XEN_HVM_MEMMAP_TYPE_RESERVED`).
pub const E820_RESERVED: u32 = 2;

/// Most entries [`memory_map`] returns; boot structures are sized for it.
pub(crate) const MAX_E820_ENTRIES: usize = 5;

/// One range of the memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Guest-physical start.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The memory map for `mem_size` bytes of RAM laid out by [`crate::ram_regions`].
///
/// 0xA0000–0xE0000 (legacy VGA/ROM hole) is deliberately absent: it is neither RAM nor
/// reserved firmware data, so the guest treats it as a hole. 0xE0000–1 MiB (the ACPI tables and
/// the BIOS area) is reserved.
pub fn memory_map(mem_size: u64) -> Vec<E820Entry> {
    let low_end = low_ram_end(mem_size);
    let candidates: [(u64, u64, u32); MAX_E820_ENTRIES] = [
        (0, EBDA_START, E820_RAM),
        (EBDA_START, LOW_RAM_END, E820_RESERVED),
        (ACPI_START, HIMEM_START, E820_RESERVED),
        (HIMEM_START, low_end, E820_RAM),
        (MMIO_GAP_END, ram_end(mem_size, MMIO_GAP_END), E820_RAM),
    ];
    candidates
        .into_iter()
        // Tiny memory sizes would cut ranges short or leave them empty; never list RAM
        // the guest does not have.
        .map(|(start, end, kind)| (start, end.min(ram_end(mem_size, start)), kind))
        .filter(|&(start, end, _)| end > start)
        .map(|(addr, end, kind)| E820Entry { addr, size: end - addr, kind })
        .collect()
}

/// End of the RAM region that would contain `addr`.
fn ram_end(mem_size: u64, addr: u64) -> u64 {
    let low_end = low_ram_end(mem_size);
    if addr < MMIO_GAP_END {
        low_end
    } else {
        MMIO_GAP_END.saturating_add(mem_size - low_end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::MMIO_GAP_START;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    const LEGACY_HOLE: u64 = ACPI_START - LOW_RAM_END;

    fn entry(addr: u64, end: u64, kind: u32) -> E820Entry {
        E820Entry { addr, size: end - addr, kind }
    }

    fn total(map: &[E820Entry]) -> u64 {
        map.iter().map(|e| e.size).sum()
    }

    fn low_entries() -> Vec<E820Entry> {
        vec![
            entry(0, 0x9FC00, E820_RAM),
            entry(0x9FC00, 0xA0000, E820_RESERVED),
            entry(0xE0000, 0x10_0000, E820_RESERVED),
        ]
    }

    #[test]
    fn small_guest_has_one_high_ram_range() {
        let map = memory_map(16 * MIB);
        let mut expected = low_entries();
        expected.push(entry(0x10_0000, 16 * MIB, E820_RAM));
        assert_eq!(map, expected);
        assert_eq!(total(&map) + LEGACY_HOLE, 16 * MIB);
    }

    #[test]
    fn three_gib_guest_ends_at_the_gap() {
        let map = memory_map(3 * GIB);
        assert_eq!(map.len(), 4);
        assert_eq!(map[3], entry(0x10_0000, MMIO_GAP_START, E820_RAM));
        assert_eq!(total(&map) + LEGACY_HOLE, 3 * GIB);
    }

    #[test]
    fn large_guest_continues_above_4_gib() {
        let map = memory_map(5 * GIB);
        assert_eq!(map.len(), 5);
        assert_eq!(map[3], entry(0x10_0000, MMIO_GAP_START, E820_RAM));
        assert_eq!(map[4], entry(4 * GIB, 6 * GIB, E820_RAM));
        assert_eq!(total(&map) + LEGACY_HOLE, 5 * GIB);
    }

    #[test]
    fn absurd_sizes_do_not_panic() {
        assert!(memory_map(0).is_empty());
        assert_eq!(memory_map(0x1000), vec![entry(0, 0x1000, E820_RAM)]);
        let huge = memory_map(u64::MAX);
        assert_eq!(huge.last().map(|e| e.addr), Some(MMIO_GAP_END));
    }
}
