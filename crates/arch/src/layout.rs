//! Guest-physical addresses and sizes fixed by `docs/guest-contract.md`.

/// Start of the RAM above the legacy BIOS area; kernels are loaded here.
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the 3–4 GiB hole that holds device MMIO instead of RAM.
pub const MMIO_GAP_START: u64 = 0xC000_0000;
/// End (exclusive) of the MMIO hole; RAM beyond 3 GiB resumes here.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;

/// virtio-mmio devices: one 4 KiB register window each, from the start of the MMIO gap.
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START;
/// Firecracker's boot-timer device (`--boot-timer`), where Firecracker puts it: the first
/// virtio-mmio window, the devices then starting one window later.
pub const BOOT_TIMER_START: u64 = MMIO_GAP_START;
/// Size of one virtio-mmio device's window.
pub const VIRTIO_MMIO_WINDOW: u64 = 0x1000;
/// How many virtio-mmio devices fit their 1 MiB window (the IOAPIC pins run out first).
pub const VIRTIO_MMIO_SLOTS: u64 = 256;
/// PCI configuration space, memory-mapped (ECAM), bus 0 only.
pub const PCI_ECAM_START: u64 = 0xC800_0000;
/// Size of bus 0's ECAM window: 32 devices × 8 functions × 4 KiB.
pub const PCI_ECAM_SIZE: u64 = 0x10_0000;
/// 32-bit PCI BARs are allocated from here up to the IOAPIC; `0xD000_0000` stays empty so a
/// guest can probe a guest-physical address with nothing behind it.
pub const PCI_MMIO_START: u64 = 0xE000_0000;

/// The (userspace) IOAPIC's MMIO window.
pub const IOAPIC_START: u64 = 0xFEC0_0000;
/// Where every vCPU's in-kernel local APIC is mapped.
pub const LAPIC_START: u64 = 0xFEE0_0000;

/// PVH `hvm_start_info`, immediately followed by its memory map and module list.
pub const PVH_INFO_START: u64 = 0x6000;
/// Linux `boot_params` ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU; the stack grows down, away from the page tables.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;

/// Boot page tables: PML4, then one PDPT, then four page directories (one per GiB).
pub const PML4_START: u64 = 0x9000;
/// The single page-directory-pointer table.
pub const PDPT_START: u64 = 0xA000;
/// The first of the four consecutive page directories (0xB000, 0xC000, 0xD000, 0xE000).
pub const PD_START: u64 = 0xB000;

/// Boot GDT (null, code, data, TSS descriptors).
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT (empty: the guest installs its own before enabling interrupts).
pub const BOOT_IDT_START: u64 = 0x520;

/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line, including its terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 2048;

/// Extended BIOS data area: holds the MP floating pointer and configuration table.
pub const EBDA_START: u64 = 0x9FC00;
/// End (exclusive) of conventional memory; 0xA0000–0xF0000 is the legacy VGA/ROM hole.
pub const LOW_RAM_END: u64 = 0xA0000;
/// Legacy BIOS area, reserved in the e820 map.
pub const BIOS_AREA_START: u64 = 0xF0000;

/// ACPI tables: the RSDP first, on the 16-byte boundary Linux's scan of 0xE0000–0xFFFFF finds,
/// the other tables right behind it, up to [`ACPI_END`]. Reserved in the e820 map together with
/// the BIOS area above it.
pub const ACPI_START: u64 = 0xE0000;
/// End (exclusive) of the ACPI tables' room.
pub const ACPI_END: u64 = BIOS_AREA_START;
/// The ACPI sleep control (and status) register of hardware-reduced ACPI, on the I/O bus: writing
/// SLP_TYP=5 with SLP_EN (0x34) powers the VM off. Kestrel's FADT is not hardware-reduced (see
/// `arch::acpi`), but the port stays: guests without ACPI power off through it.
pub const SLEEP_CONTROL_PORT: u16 = 0x600;
/// The ACPI PM1a event block (PM1_STS, PM1_EN: 16 bits each), on the I/O bus.
pub const PM1A_EVENT_PORT: u16 = 0x608;
/// Length of the PM1a event block.
pub const PM1_EVENT_LEN: u8 = 4;
/// The ACPI PM1a control block (PM1_CNT, 16 bits: SCI_EN, SLP_TYP, SLP_EN), on the I/O bus.
pub const PM1A_CONTROL_PORT: u16 = 0x60C;
/// Length of the PM1a control block.
pub const PM1_CONTROL_LEN: u8 = 2;
/// The ACPI SCI's ISA IRQ (and GSI, level-triggered, active high): the one ISA line no device and
/// no virtio-mmio slot uses. Nothing raises it (the power button comes through the GED).
pub const SCI_IRQ: u8 = 13;
/// The generic event device's (GED) event register, on the I/O bus: one byte, read-to-clear,
/// which the DSDT's `_EVT` method reads to learn what happened.
pub const GED_PORT: u16 = 0x604;
/// The GED's interrupt: IOAPIC pin 23 (edge, active high), used by no ISA device and no
/// virtio-mmio slot; only an ACPI guest, which learns it from the DSDT, routes it.
pub const GED_IRQ: u32 = 23;

/// Three pages KVM needs for the real-mode TSS on Intel hosts (`KVM_SET_TSS_ADDR`).
pub const KVM_TSS_ADDRESS: u64 = 0xFFFB_D000;
/// One page KVM needs for the EPT identity map on Intel hosts (`KVM_SET_IDENTITY_MAP_ADDR`).
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xFFFB_C000;

/// Smallest guest RAM Kestrel accepts.
pub const MIN_MEMORY: u64 = 16 << 20;
/// Most vCPUs: APIC ids are 8 bits, 255 is broadcast, and the IOAPIC takes id `num_cpus`.
pub const MAX_VCPUS: u8 = 254;
