//! Linux 64-bit boot protocol: the `boot_params` ("zero page") the kernel reads via RSI.

use linux_loader::loader::bootparam::{
    boot_e820_entry, boot_params, setup_header, E820_MAX_ENTRIES_ZEROPAGE,
};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::e820::{memory_map, MAX_E820_ENTRIES};
use crate::guest_write::{check_room, write_obj};
use crate::layout::ZERO_PAGE_START;
use crate::{CmdlineLocation, Error, Result};

/// `boot_flag` every valid setup header carries.
const BOOT_FLAG_MAGIC: u16 = 0xAA55;
/// `header`: "HdrS", marks boot protocol 2.00 or newer.
const HDRS_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader`: a boot loader without an assigned id.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// Alignment a relocatable kernel is asked for when its own header gives none.
const DEFAULT_KERNEL_ALIGNMENT: u32 = 0x100_0000;

/// Writes `boot_params` at [`ZERO_PAGE_START`] for a kernel entered at its 64-bit entry.
///
/// `setup_header` is the header read from a bzImage; the kernel's own fields (e.g. its
/// alignment and protocol version) are kept and only the loader-owned ones are filled in.
/// An initrd, if any, must already be in guest memory.
pub fn configure_linux_boot(
    mem: &impl GuestMemoryBackend,
    mem_size: u64,
    cmdline: CmdlineLocation,
    initrd: Option<(GuestAddress, usize)>,
    setup_header: Option<setup_header>,
) -> Result<()> {
    cmdline.check(mem)?;
    let mut params = boot_params::default();
    if let Some(header) = setup_header {
        params.hdr = header;
    }

    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.header = HDRS_MAGIC;
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = DEFAULT_KERNEL_ALIGNMENT;
    }

    // The ext_* fields carry the upper 32 bits; a 64-bit kernel always reads them.
    let (ptr_low, ptr_high) = split(cmdline.addr.0);
    params.hdr.cmd_line_ptr = ptr_low;
    params.ext_cmd_line_ptr = ptr_high;
    params.hdr.cmdline_size =
        u32::try_from(cmdline.size_with_nul).map_err(|_| Error::CmdlineSize(cmdline.size_with_nul))?;

    if let Some((addr, size)) = initrd {
        check_room(mem, "initrd", addr, size)?;
        let (image_low, image_high) = split(addr.0);
        let (size_low, size_high) = split(size as u64);
        params.hdr.ramdisk_image = image_low;
        params.ext_ramdisk_image = image_high;
        params.hdr.ramdisk_size = size_low;
        params.ext_ramdisk_size = size_high;
    }

    fill_e820_table(&mut params, mem_size);
    write_obj(mem, "boot_params", GuestAddress(ZERO_PAGE_START), &params)
}

/// Points the zero page written by [`configure_linux_boot`] at the ACPI RSDP (`acpi_rsdp_addr`,
/// boot protocol 2.14; older kernels ignore it and scan the BIOS area, where the RSDP is too).
pub(crate) fn set_rsdp_address(mem: &impl GuestMemoryBackend, rsdp: GuestAddress) -> Result<()> {
    let field = ZERO_PAGE_START + std::mem::offset_of!(boot_params, acpi_rsdp_addr) as u64;
    write_obj(mem, "boot_params RSDP address", GuestAddress(field), &rsdp.0)
}

// The zero page's table holds every map memory_map() can return.
const _: () = assert!(MAX_E820_ENTRIES <= E820_MAX_ENTRIES_ZEROPAGE);

fn fill_e820_table(params: &mut boot_params, mem_size: u64) {
    let entries = memory_map(mem_size);
    // At most MAX_E820_ENTRIES: the cast cannot truncate.
    params.e820_entries = entries.len() as u8;
    for (slot, entry) in params.e820_table.iter_mut().zip(entries) {
        *slot = boot_e820_entry { addr: entry.addr, size: entry.size, r#type: entry.kind };
    }
}

/// Splits into (low, high) 32-bit halves.
fn split(value: u64) -> (u32, u32) {
    // Truncation is the point: each half is masked/shifted into range first.
    ((value & 0xFFFF_FFFF) as u32, (value >> 32) as u32)
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;

    use super::*;
    use crate::e820::E820_RAM;
    use crate::layout::CMDLINE_START;
    use crate::ram_regions;
    use vm_memory::GuestMemoryMmap;

    const MEM_SIZE: u64 = 64 << 20;

    fn guest_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&ram_regions(MEM_SIZE)).unwrap()
    }

    fn cmdline() -> CmdlineLocation {
        CmdlineLocation { addr: GuestAddress(CMDLINE_START), size_with_nul: 12 }
    }

    fn read_back(mem: &GuestMemoryMmap) -> boot_params {
        mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap()
    }

    #[test]
    fn fields_are_readable_from_the_zero_page() {
        let mem = guest_memory();
        let initrd = (GuestAddress(0x3F0_0000), 0x1_2345);
        configure_linux_boot(&mem, MEM_SIZE, cmdline(), Some(initrd), None).unwrap();

        let params = read_back(&mem);
        assert_eq!({ params.hdr.boot_flag }, 0xAA55);
        assert_eq!({ params.hdr.header }, 0x5372_6448);
        assert_eq!({ params.hdr.type_of_loader }, 0xff);
        assert_eq!({ params.hdr.kernel_alignment }, 0x100_0000);
        assert_eq!({ params.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ params.ext_cmd_line_ptr }, 0);
        assert_eq!({ params.hdr.cmdline_size }, 12);
        assert_eq!({ params.hdr.ramdisk_image }, 0x3F0_0000);
        assert_eq!({ params.hdr.ramdisk_size }, 0x1_2345);
        assert_eq!(params.e820_entries, 4);
        let last = params.e820_table[3];
        assert_eq!(
            ({ last.addr }, { last.size }, { last.r#type }),
            (0x10_0000, MEM_SIZE - 0x10_0000, E820_RAM)
        );
    }

    #[test]
    fn bzimage_header_fields_are_kept() {
        let mem = guest_memory();
        let header = setup_header {
            version: 0x020f,
            kernel_alignment: 0x20_0000,
            code32_start: 0x10_0000,
            ..Default::default()
        };
        configure_linux_boot(&mem, MEM_SIZE, cmdline(), None, Some(header)).unwrap();

        let params = read_back(&mem);
        assert_eq!({ params.hdr.version }, 0x020f);
        assert_eq!({ params.hdr.kernel_alignment }, 0x20_0000);
        assert_eq!({ params.hdr.code32_start }, 0x10_0000);
        assert_eq!({ params.hdr.header }, 0x5372_6448);
        assert_eq!({ params.hdr.ramdisk_image }, 0);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let mem = guest_memory();
        let long = CmdlineLocation { size_with_nul: 4096, ..cmdline() };
        assert!(matches!(
            configure_linux_boot(&mem, MEM_SIZE, long, None, None),
            Err(Error::CmdlineSize(4096))
        ));
        let outside = Some((GuestAddress(MEM_SIZE - 0x1000), 0x2000));
        assert!(matches!(
            configure_linux_boot(&mem, MEM_SIZE, cmdline(), outside, None),
            Err(Error::GuestMemoryTooSmall { .. })
        ));
        let tiny = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x7000)]).unwrap();
        let tiny_cmdline = CmdlineLocation { addr: GuestAddress(0x1000), size_with_nul: 1 };
        assert!(matches!(
            configure_linux_boot(&tiny, 0x7000, tiny_cmdline, None, None),
            Err(Error::GuestMemoryTooSmall { .. })
        ));
    }
}
