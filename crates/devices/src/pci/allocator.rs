//! Hands out guest-physical windows for 32-bit memory BARs, the way firmware assigns them before
//! the guest runs. A bump allocator is enough: devices are only added while the VM is built.

/// Allocates naturally aligned windows from `[next, end)`.
#[derive(Debug)]
pub struct MmioAllocator {
    next: u64,
    end: u64,
}

impl MmioAllocator {
    /// Allocates from `start` up to `end` (exclusive).
    pub fn new(start: u64, end: u64) -> MmioAllocator {
        MmioAllocator { next: start, end }
    }

    /// A window of `size` bytes (a power of two) aligned to its size, as a BAR must be; None when
    /// the size is not a power of two or the range is exhausted.
    pub fn allocate(&mut self, size: u64) -> Option<u64> {
        if !size.is_power_of_two() {
            return None;
        }
        let base = self.next.checked_next_multiple_of(size)?;
        let end = base.checked_add(size)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_aligned_to_their_size_and_do_not_overlap() {
        let mut allocator = MmioAllocator::new(0xe000_0000, 0xe010_0000);
        assert_eq!(allocator.allocate(0x1000), Some(0xe000_0000));
        assert_eq!(allocator.allocate(0x4000), Some(0xe000_4000), "skips to 16 KiB alignment");
        assert_eq!(allocator.allocate(0x4000), Some(0xe000_8000));
        assert_eq!(allocator.allocate(0x1000), Some(0xe000_c000));
    }

    #[test]
    fn refuses_bad_sizes_and_exhaustion() {
        let mut allocator = MmioAllocator::new(0xe000_0000, 0xe000_8000);
        assert_eq!(allocator.allocate(0), None);
        assert_eq!(allocator.allocate(0x3000), None);
        assert_eq!(allocator.allocate(0x1_0000), None, "larger than what is left");
        assert_eq!(allocator.allocate(0x8000), Some(0xe000_0000));
        assert_eq!(allocator.allocate(0x1000), None);
        let mut top = MmioAllocator::new(u64::MAX - 0xfff, u64::MAX);
        assert_eq!(top.allocate(0x2000), None, "no overflow at the top of the address space");
    }
}
