//! PVH boot protocol: the `hvm_start_info` a PVH kernel reads via EBX, with its memory map
//! and module list packed right behind it.

use std::mem::size_of;

use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use vm_memory::{ByteValued, GuestAddress, GuestMemoryBackend};

use crate::e820::{memory_map, MAX_E820_ENTRIES};
use crate::guest_write::{check_room, write_bytes, write_obj};
use crate::layout::{PVH_INFO_START, ZERO_PAGE_START};
use crate::{CmdlineLocation, Result};

/// `magic` of `hvm_start_info` ("xEn3" with the top bit of the last byte set).
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// Version 1 of the structure has the memory map fields.
const XEN_HVM_START_INFO_VERSION: u32 = 1;

// The start info, the longest memory map and one module must stay clear of the zero page.
const _: () = assert!(
    PVH_INFO_START as usize
        + size_of::<hvm_start_info>()
        + MAX_E820_ENTRIES * size_of::<hvm_memmap_table_entry>()
        + size_of::<hvm_modlist_entry>()
        <= ZERO_PAGE_START as usize
);

/// Writes `hvm_start_info` at [`PVH_INFO_START`], its memory map right after it and, with
/// an initrd (which must already be in guest memory), a one-entry module list after that.
pub fn configure_pvh_boot(
    mem: &impl GuestMemoryBackend,
    mem_size: u64,
    cmdline: CmdlineLocation,
    initrd: Option<(GuestAddress, usize)>,
) -> Result<()> {
    cmdline.check(mem)?;

    let memmap: Vec<hvm_memmap_table_entry> = memory_map(mem_size)
        .into_iter()
        .map(|entry| hvm_memmap_table_entry {
            addr: entry.addr,
            size: entry.size,
            // PVH memory types use the e820 numbering.
            type_: entry.kind,
            reserved: 0,
        })
        .collect();
    let memmap_bytes: Vec<u8> = memmap.iter().flat_map(|e| e.as_slice().to_vec()).collect();
    let memmap_addr = PVH_INFO_START + size_of::<hvm_start_info>() as u64;
    let modlist_addr = memmap_addr + memmap_bytes.len() as u64;

    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: XEN_HVM_START_INFO_VERSION,
        cmdline_paddr: cmdline.addr.0,
        memmap_paddr: memmap_addr,
        // At most MAX_E820_ENTRIES: the cast cannot truncate.
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };

    if let Some((addr, size)) = initrd {
        check_room(mem, "initrd", addr, size)?;
        let module = hvm_modlist_entry { paddr: addr.0, size: size as u64, ..Default::default() };
        write_obj(mem, "PVH module list", GuestAddress(modlist_addr), &module)?;
        start_info.nr_modules = 1;
        start_info.modlist_paddr = modlist_addr;
    }
    write_bytes(mem, "PVH memory map", GuestAddress(memmap_addr), &memmap_bytes)?;
    write_obj(mem, "PVH start info", GuestAddress(PVH_INFO_START), &start_info)
}

/// Points the `hvm_start_info` written by [`configure_pvh_boot`] at the ACPI RSDP (`rsdp_paddr`).
pub(crate) fn set_rsdp_address(mem: &impl GuestMemoryBackend, rsdp: GuestAddress) -> Result<()> {
    let field = PVH_INFO_START + std::mem::offset_of!(hvm_start_info, rsdp_paddr) as u64;
    write_obj(mem, "PVH start info RSDP address", GuestAddress(field), &rsdp.0)
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;

    use super::*;
    use crate::e820::{E820_RAM, E820_RESERVED};
    use crate::layout::CMDLINE_START;
    use crate::{ram_regions, Error};
    use vm_memory::GuestMemoryMmap;

    const MEM_SIZE: u64 = 32 << 20;

    fn cmdline() -> CmdlineLocation {
        CmdlineLocation { addr: GuestAddress(CMDLINE_START), size_with_nul: 5 }
    }

    fn read_memmap(mem: &GuestMemoryMmap, info: &hvm_start_info) -> Vec<hvm_memmap_table_entry> {
        let entry_size = size_of::<hvm_memmap_table_entry>() as u64;
        (0..u64::from(info.memmap_entries))
            .map(|i| mem.read_obj(GuestAddress(info.memmap_paddr + i * entry_size)).unwrap())
            .collect()
    }

    #[test]
    fn start_info_memmap_and_modlist_read_back() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&ram_regions(MEM_SIZE)).unwrap();
        let initrd = (GuestAddress(0x1F0_0000), 0x8000);
        configure_pvh_boot(&mem, MEM_SIZE, cmdline(), Some(initrd)).unwrap();

        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, 0x336e_c578);
        assert_eq!(info.version, 1);
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!(info.rsdp_paddr, 0);
        assert_eq!(info.memmap_paddr, PVH_INFO_START + 56);

        let memmap = read_memmap(&mem, &info);
        let kinds: Vec<u32> = memmap.iter().map(|e| e.type_).collect();
        assert_eq!(kinds, [E820_RAM, E820_RESERVED, E820_RESERVED, E820_RAM]);
        assert_eq!(memmap[3].addr, 0x10_0000);
        assert_eq!(memmap[3].size, MEM_SIZE - 0x10_0000);

        assert_eq!(info.nr_modules, 1);
        assert!(info.modlist_paddr >= info.memmap_paddr + 4 * 24);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x1F0_0000, 0x8000));
        assert_eq!(module.cmdline_paddr, 0);
    }

    #[test]
    fn no_initrd_means_no_modules() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&ram_regions(MEM_SIZE)).unwrap();
        configure_pvh_boot(&mem, MEM_SIZE, cmdline(), None).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
    }

    #[test]
    fn memory_too_small_is_an_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x6010)]).unwrap();
        let cmdline = CmdlineLocation { addr: GuestAddress(0x1000), size_with_nul: 1 };
        assert!(matches!(
            configure_pvh_boot(&mem, 0x6010, cmdline, None),
            Err(Error::GuestMemoryTooSmall { .. })
        ));
    }
}
