//! Identity page tables for entering a kernel in long mode: the first 4 GiB mapped with
//! 2 MiB pages (PML4 -> one PDPT -> four page directories).

use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::guest_write::write_bytes;
use crate::layout::{PDPT_START, PD_START, PML4_START};
use crate::Result;

const PAGE_SIZE: usize = 0x1000;
const ENTRIES_PER_TABLE: usize = PAGE_SIZE / 8;
/// Present and writable; never user-accessible, as the contract promises.
const PRESENT_WRITABLE: u64 = 0x3;
/// The page-directory entry maps a 2 MiB page instead of pointing to a page table.
const PAGE_SIZE_2M: u64 = 0x80;
const MAPPED_GIBS: usize = 4;

/// Writes the tables; CR3 must then point at [`PML4_START`].
pub(crate) fn write_identity_page_tables(mem: &impl GuestMemoryBackend) -> Result<()> {
    // Whole pages are written so nothing stale from guest memory can become a mapping.
    let pml4 = table_page(|index| (index == 0).then_some(PDPT_START | PRESENT_WRITABLE));
    write_bytes(mem, "PML4", GuestAddress(PML4_START), &pml4)?;

    let pdpt = table_page(|gib| {
        (gib < MAPPED_GIBS).then_some((PD_START + (gib * PAGE_SIZE) as u64) | PRESENT_WRITABLE)
    });
    write_bytes(mem, "PDPT", GuestAddress(PDPT_START), &pdpt)?;

    for gib in 0..MAPPED_GIBS {
        let page_directory = table_page(|index| {
            let page = (gib * ENTRIES_PER_TABLE + index) as u64;
            Some((page << 21) | PAGE_SIZE_2M | PRESENT_WRITABLE)
        });
        let addr = PD_START + (gib * PAGE_SIZE) as u64;
        write_bytes(mem, "page directory", GuestAddress(addr), &page_directory)?;
    }
    Ok(())
}

/// One 4 KiB table whose entry `index` is `entry(index)`, or not present for `None`.
fn table_page(entry: impl Fn(usize) -> Option<u64>) -> Vec<u8> {
    (0..ENTRIES_PER_TABLE).flat_map(|index| entry(index).unwrap_or(0).to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;

    use super::*;
    use crate::ram_regions;
    use vm_memory::GuestMemoryMmap;

    const ADDRESS_MASK: u64 = 0x000F_FFFF_FFFF_F000;

    fn read_entry(mem: &GuestMemoryMmap, table: u64, index: u64) -> u64 {
        mem.read_obj(GuestAddress((table & ADDRESS_MASK) + index * 8)).unwrap()
    }

    /// Translates like the MMU does, asserting every level is present, writable and
    /// supervisor-only.
    fn translate(mem: &GuestMemoryMmap, virt: u64) -> u64 {
        let pml4e = read_entry(mem, PML4_START, (virt >> 39) & 0x1FF);
        let pdpte = read_entry(mem, pml4e, (virt >> 30) & 0x1FF);
        let pde = read_entry(mem, pdpte, (virt >> 21) & 0x1FF);
        for entry in [pml4e, pdpte, pde] {
            assert_eq!(entry & 0x7, PRESENT_WRITABLE, "entry {entry:#x}");
        }
        assert_eq!(pde & PAGE_SIZE_2M, PAGE_SIZE_2M);
        (pde & 0x000F_FFFF_FFE0_0000) | (virt & 0x1F_FFFF)
    }

    #[test]
    fn walks_resolve_to_identity() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&ram_regions(16 << 20)).unwrap();
        write_identity_page_tables(&mem).unwrap();
        for addr in [0, 0x20_0000, 0x12_3456, 0xFEE0_0000, 0xFFFF_FFFF] {
            assert_eq!(translate(&mem, addr), addr);
        }
    }

    #[test]
    fn nothing_is_mapped_beyond_4_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&ram_regions(16 << 20)).unwrap();
        write_identity_page_tables(&mem).unwrap();
        let pml4e = read_entry(&mem, PML4_START, 0);
        assert_eq!(read_entry(&mem, pml4e, 4), 0);
        assert_eq!(read_entry(&mem, PML4_START, 1), 0);
    }

    #[test]
    fn memory_without_room_is_an_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0xC000)]).unwrap();
        assert!(write_identity_page_tables(&mem).is_err());
    }
}
