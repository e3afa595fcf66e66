//! Guest pages the driver gave up, turned into host memory given back: page frame numbers
//! coalesced into ranges, and each range discarded on the host mapping behind it
//! (`MADV_DONTNEED` on private memory, `MADV_REMOVE` on shared memory).

use std::io;

use crate::GuestRam;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

/// The balloon's page size: PFNs always count 4 KiB pages, whatever the guest's own page size
/// (virtio 1.2, 5.5.6: `VIRTIO_BALLOON_PFN_SHIFT` is 12).
pub const PAGE_SIZE: u64 = 4096;

/// A run of contiguous guest-physical bytes, page aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRange {
    pub start: u64,
    /// One past the last byte; at least `start`.
    pub end: u64,
}

impl GuestRange {
    /// The pages `first_pfn` to `first_pfn + count - 1`.
    pub fn from_pfns(first_pfn: u32, count: u64) -> GuestRange {
        // A u32 PFN reaches at most 16 TiB, and `count` at most 2^32 pages: no overflow.
        let start = u64::from(first_pfn) * PAGE_SIZE;
        GuestRange { start, end: start + count * PAGE_SIZE }
    }

    /// The whole pages inside `len` bytes at `addr` (a free-page report), or None if there are
    /// none. Rounding inwards means a misaligned report never costs the guest a byte it still uses.
    pub fn whole_pages_within(addr: u64, len: u64) -> Option<GuestRange> {
        let start = addr.checked_next_multiple_of(PAGE_SIZE)?;
        let end = addr.saturating_add(len) / PAGE_SIZE * PAGE_SIZE;
        (start < end).then_some(GuestRange { start, end })
    }

    pub fn len(&self) -> u64 {
        self.end - self.start
    }
}

/// Sorts `pfns` and merges runs of consecutive page numbers into ranges (duplicates count once):
/// one `madvise` per range instead of one per page.
pub fn coalesce(pfns: &mut [u32]) -> Vec<GuestRange> {
    pfns.sort_unstable();
    let mut ranges = Vec::new();
    let mut run: Option<(u32, u64)> = None; // (first PFN, count)
    for &pfn in pfns.iter() {
        run = match run {
            Some((first, count)) if u64::from(first) + count == u64::from(pfn) => Some((first, count + 1)),
            Some((first, count)) if u64::from(first) + count > u64::from(pfn) => Some((first, count)),
            Some((first, count)) => {
                ranges.push(GuestRange::from_pfns(first, count));
                Some((pfn, 1))
            }
            None => Some((pfn, 1)),
        };
    }
    ranges.extend(run.map(|(first, count)| GuestRange::from_pfns(first, count)));
    ranges
}

/// What [`discard`] did with a range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Discarded {
    /// Bytes of the range outside guest RAM (left alone).
    pub outside: u64,
    /// Bytes given back to the host: whole backing pages only, so on huge pages less than the
    /// part inside guest RAM.
    pub freed: u64,
}

/// Gives the host memory behind `range` back to the host kernel; the guest reads zeros there
/// afterwards.
///
/// Private memory (anonymous, or a snapshot file mapped copy-on-write) is dropped with
/// `MADV_DONTNEED`: the pages are freed at once and the next access faults in a zeroed page (or
/// the file's). On shared memory (a memfd, hugetlb pages) `MADV_DONTNEED` only unmaps the pages
/// and frees nothing, so the backing file's pages are removed instead (`MADV_REMOVE`, a hole
/// punched in the file); a backing page goes whole or not at all, so only the whole backing pages
/// inside the range are freed ([`whole_backing_pages`]).
pub fn discard(memory: &GuestRam, range: GuestRange) -> io::Result<Discarded> {
    let mut covered = 0;
    let mut freed = 0;
    for region in memory.iter() {
        let region_start = region.start_addr().0;
        let start = range.start.max(region_start);
        let end = range.end.min(region_start + region.len());
        if start >= end {
            continue;
        }
        covered += end - start;
        let shared = region.flags() & libc::MAP_SHARED != 0 && region.file_offset().is_some();
        let (advice, unit) = if shared {
            (libc::MADV_REMOVE, backing_page_size(region)?)
        } else {
            (libc::MADV_DONTNEED, PAGE_SIZE)
        };
        let Some((start, end)) = whole_backing_pages(region_start, start, end, unit) else {
            continue;
        };
        let host = region
            .get_host_address(MemoryRegionAddress(start - region_start))
            .map_err(|e| io::Error::other(format!("guest address {start:#x} has no host address: {e}")))?;
        let len = usize::try_from(end - start).map_err(io::Error::other)?;
        // SAFETY: [host, host + len) lies inside one region's mapping, which `memory` keeps alive
        // for the duration of the call, and is aligned to the mapping's pages. Only the guest
        // uses these bytes (vm-memory never lends out references to them), and the guest gave
        // the pages up; MADV_DONTNEED and MADV_REMOVE replace them with zero-fill-on-demand
        // pages, which keeps the mapping valid for KVM and for every later access.
        if unsafe { libc::madvise(host.cast(), len, advice) } != 0 {
            return Err(io::Error::last_os_error());
        }
        freed += end - start;
    }
    Ok(Discarded { outside: range.len() - covered, freed })
}

/// The whole backing pages of `unit` bytes inside `[start, end)` of a region that starts at
/// `region_start` (regions start on a backing page: they are laid out in whole huge pages), or
/// None if there is none. A backing page the range covers only in part is left alone: the
/// guest still uses the rest of it.
pub fn whole_backing_pages(region_start: u64, start: u64, end: u64, unit: u64) -> Option<(u64, u64)> {
    let first =
        region_start.checked_add((start.checked_sub(region_start)?).checked_next_multiple_of(unit)?)?;
    let last = region_start + (end.checked_sub(region_start)? / unit * unit);
    (first < last).then_some((first, last))
}

/// The size of the pages behind a shared region: its file's block size, which for hugetlbfs (and
/// a hugetlb memfd) is the huge page size.
fn backing_page_size(
    region: &vm_memory::GuestRegionMmap<vm_memory::bitmap::AtomicBitmap>,
) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    match region.file_offset() {
        Some(file) => Ok(file.file().metadata()?.blksize().max(PAGE_SIZE)),
        None => Ok(PAGE_SIZE),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;

    /// How many of the 4 KiB pages of guest RAM in `range` the host has in memory, by mincore(2):
    /// exact and immediate, unlike RSS figures from /proc.
    pub fn resident_pages(memory: &GuestRam, range: GuestRange) -> usize {
        let host = memory.get_host_address(GuestAddress(range.start)).unwrap();
        let pages = usize::try_from(range.len() / PAGE_SIZE).unwrap();
        let mut residency = vec![0u8; pages];
        // SAFETY: the range is inside one mapping of `memory` (the tests use one region), page
        // aligned, and `residency` has one byte per page.
        let result = unsafe { libc::mincore(host.cast(), range.len() as usize, residency.as_mut_ptr()) };
        assert_eq!(result, 0, "mincore: {}", io::Error::last_os_error());
        residency.iter().filter(|&&byte| byte & 1 != 0).count()
    }

    /// Writes a non-zero byte into every page of `range`, so the host backs each of them.
    pub fn touch(memory: &GuestRam, range: GuestRange) {
        for page in (range.start..range.end).step_by(PAGE_SIZE as usize) {
            memory.write_obj(0xA5u8, GuestAddress(page)).unwrap();
        }
    }

    fn pages(first: u32, count: u64) -> GuestRange {
        GuestRange::from_pfns(first, count)
    }

    #[test]
    fn coalescing_sorts_merges_and_drops_duplicates() {
        assert_eq!(coalesce(&mut []), []);
        assert_eq!(coalesce(&mut [7]), [pages(7, 1)]);
        assert_eq!(coalesce(&mut [12, 11, 10, 3, 2, 20]), [pages(2, 2), pages(10, 3), pages(20, 1)]);
        assert_eq!(coalesce(&mut [5, 5, 6, 5]), [pages(5, 2)]);
        assert_eq!(coalesce(&mut [u32::MAX, u32::MAX - 1]), [pages(u32::MAX - 1, 2)]);
    }

    #[test]
    fn reports_are_rounded_inwards_to_whole_pages() {
        let range = |start, end| Some(GuestRange { start, end });
        assert_eq!(GuestRange::whole_pages_within(0x10_0000, 0x20_0000), range(0x10_0000, 0x30_0000));
        assert_eq!(GuestRange::whole_pages_within(0x1001, 0x2ffe), range(0x2000, 0x3000));
        assert_eq!(GuestRange::whole_pages_within(0x1001, 0x1000), None);
        assert_eq!(GuestRange::whole_pages_within(0x1000, 0), None);
        assert_eq!(GuestRange::whole_pages_within(u64::MAX - 5, 100), None);
    }

    #[test]
    fn discarding_frees_the_host_pages_and_zeroes_them() {
        let memory = GuestRam::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let range = pages(0x100, 0x100); // 1 MiB at 1 MiB
        touch(&memory, range);
        assert_eq!(resident_pages(&memory, range), 0x100);
        assert_eq!(discard(&memory, range).unwrap(), Discarded { outside: 0, freed: range.len() });
        assert_eq!(resident_pages(&memory, range), 0);
        assert_eq!(memory.read_obj::<u8>(GuestAddress(range.start)).unwrap(), 0);
    }

    #[test]
    fn only_the_part_inside_guest_ram_is_discarded() {
        // Two regions with a hole between them, as around the MMIO gap.
        let memory =
            GuestRam::from_ranges(&[(GuestAddress(0), 0x10_0000), (GuestAddress(0x20_0000), 0x10_0000)])
                .unwrap();
        let low = pages(0xf0, 0x10);
        let high = pages(0x200, 0x10);
        touch(&memory, low);
        touch(&memory, high);
        // From 16 pages below the hole to 16 pages above it: the hole's 256 pages are not RAM.
        let across = GuestRange { start: low.start, end: high.end };
        assert_eq!(discard(&memory, across).unwrap(), Discarded { outside: 0x10_0000, freed: 0x2_0000 });
        assert_eq!(resident_pages(&memory, low), 0);
        assert_eq!(resident_pages(&memory, high), 0);
        // Entirely outside, and at the very top of the PFN space.
        assert_eq!(
            discard(&memory, pages(0x1000, 4)).unwrap(),
            Discarded { outside: 4 * PAGE_SIZE, freed: 0 }
        );
        assert_eq!(discard(&memory, pages(u32::MAX, 1)).unwrap(), Discarded { outside: PAGE_SIZE, freed: 0 });
    }

    /// On a shared memfd, MADV_DONTNEED would leave the file's pages allocated: the discard must
    /// punch them out of the file.
    #[test]
    fn discarding_shared_memory_frees_the_files_pages() {
        use std::os::fd::FromRawFd;
        use std::os::unix::fs::MetadataExt;
        use vm_memory::mmap::MmapRegionBuilder;
        use vm_memory::{FileOffset, GuestRegionMmap};

        // SAFETY: a valid NUL-terminated name; memfd_create only creates a descriptor.
        let fd = unsafe { libc::memfd_create(c"balloon-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a new descriptor nothing else owns.
        let file = std::sync::Arc::new(unsafe { std::fs::File::from_raw_fd(fd) });
        file.set_len(0x40_0000).unwrap();
        let mapping = MmapRegionBuilder::new_with_bitmap(
            0x40_0000,
            <vm_memory::bitmap::AtomicBitmap as vm_memory::bitmap::NewBitmap>::with_len(0x40_0000),
        )
        .with_file_offset(FileOffset::from_arc(file.clone(), 0))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_SHARED)
        .build()
        .unwrap();
        let memory =
            GuestRam::from_regions(vec![GuestRegionMmap::new(mapping, GuestAddress(0)).unwrap()]).unwrap();
        let range = pages(0x100, 0x100);
        touch(&memory, range);
        let allocated = || file.metadata().unwrap().blocks() * 512;
        assert_eq!(allocated(), range.len());
        assert_eq!(discard(&memory, range).unwrap(), Discarded { outside: 0, freed: range.len() });
        assert_eq!(allocated(), 0, "the memfd's pages are freed");
        assert_eq!(memory.read_obj::<u8>(GuestAddress(range.start)).unwrap(), 0);
    }

    /// A huge page the guest gave back only in part is never freed: the rest of it is in use.
    #[test]
    fn only_whole_backing_pages_are_freed() {
        const HUGE: u64 = 2 << 20;
        // A region at 1 GiB; a range from 4 KiB into its first huge page to 4 KiB short of the
        // end of its fourth: only the second and third are whole.
        let base = 1 << 30;
        let (start, end) = (base + PAGE_SIZE, base + 4 * HUGE - PAGE_SIZE);
        assert_eq!(whole_backing_pages(base, start, end, HUGE), Some((base + HUGE, base + 3 * HUGE)));
        // Inside one huge page, however much of it: nothing.
        assert_eq!(whole_backing_pages(base, base + PAGE_SIZE, base + HUGE, HUGE), None);
        assert_eq!(whole_backing_pages(base, base, base + HUGE - PAGE_SIZE, HUGE), None);
        // Exactly one.
        assert_eq!(
            whole_backing_pages(base, base + HUGE, base + 2 * HUGE, HUGE),
            Some((base + HUGE, base + 2 * HUGE))
        );
        // 4 KiB pages: every page of the range.
        assert_eq!(whole_backing_pages(base, start, end, PAGE_SIZE), Some((start, end)));
        // A range starting below the region, or at the top of the address space: no panic.
        assert_eq!(whole_backing_pages(base, base - PAGE_SIZE, base + HUGE, HUGE), None);
        assert_eq!(whole_backing_pages(0, u64::MAX - PAGE_SIZE, u64::MAX, HUGE), None);
    }
}
