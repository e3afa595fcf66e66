//! Where guest RAM lives and where the initrd goes in it.

use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::guest_write::check_room;
use crate::layout::{MMIO_GAP_END, MMIO_GAP_START};
use crate::{Error, Result};

const PAGE_SIZE: u64 = 0x1000;

/// Guest RAM ranges for `mem_size` bytes: everything below the 3 GiB MMIO gap first,
/// the remainder starting at 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    let low = mem_size.min(MMIO_GAP_START);
    let high = mem_size - low;
    [(GuestAddress(0), low), (GuestAddress(MMIO_GAP_END), high)]
        .into_iter()
        .filter(|&(_, size)| size > 0)
        .map(|(start, size)| (start, to_usize(size)))
        .collect()
}

/// End (exclusive) of the RAM below the MMIO gap.
pub(crate) fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

/// Where to load an initrd of `initrd_size` bytes: as high as possible in low RAM, page
/// aligned, so the kernel's own allocations below it have the most room.
///
/// Fails with [`Error::InitrdTooLarge`] if it would reach down into the kernel, which ends
/// at `kernel_end`, and with [`Error::GuestMemoryTooSmall`] if `mem` does not back it.
pub fn initrd_load_address(
    mem: &impl GuestMemoryBackend,
    mem_size: u64,
    initrd_size: usize,
    kernel_end: u64,
) -> Result<GuestAddress> {
    let top = low_ram_end(mem_size);
    let too_large = || Error::InitrdTooLarge { size: initrd_size, room: top.saturating_sub(kernel_end) };
    let start = top
        .checked_sub(initrd_size as u64)
        .map(|addr| addr & !(PAGE_SIZE - 1))
        .filter(|&addr| addr >= kernel_end)
        .ok_or_else(too_large)?;
    check_room(mem, "initrd", GuestAddress(start), initrd_size)?;
    Ok(GuestAddress(start))
}

/// Kestrel only builds for x86_64, where `usize` is 64 bits wide: the conversion is lossless.
fn to_usize(size: u64) -> usize {
    usize::try_from(size).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn ram_below_the_gap_is_one_region() {
        assert_eq!(ram_regions(16 * MIB), vec![(GuestAddress(0), (16 * MIB) as usize)]);
        assert_eq!(ram_regions(3 * GIB), vec![(GuestAddress(0), (3 * GIB) as usize)]);
    }

    #[test]
    fn ram_above_the_gap_continues_at_4_gib() {
        assert_eq!(
            ram_regions(5 * GIB),
            vec![(GuestAddress(0), (3 * GIB) as usize), (GuestAddress(4 * GIB), (2 * GIB) as usize)]
        );
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_ram_page_aligned() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&ram_regions(16 * MIB)).unwrap();
        let addr = initrd_load_address(&mem, 16 * MIB, 0x1234, 2 * MIB).unwrap();
        assert_eq!(addr, GuestAddress(16 * MIB - 0x2000));
    }

    #[test]
    fn initrd_overlapping_the_kernel_is_refused() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&ram_regions(16 * MIB)).unwrap();
        let err = initrd_load_address(&mem, 16 * MIB, (15 * MIB) as usize, 2 * MIB);
        assert!(matches!(err, Err(Error::InitrdTooLarge { .. })));
        let err = initrd_load_address(&mem, 16 * MIB, usize::MAX, 0);
        assert!(matches!(err, Err(Error::InitrdTooLarge { .. })));
    }

    #[test]
    fn initrd_outside_guest_memory_is_refused() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&ram_regions(16 * MIB)).unwrap();
        // mem_size claims more RAM than `mem` has.
        let err = initrd_load_address(&mem, 32 * MIB, 0x1000, 2 * MIB);
        assert!(matches!(err, Err(Error::GuestMemoryTooSmall { .. })));
    }
}
