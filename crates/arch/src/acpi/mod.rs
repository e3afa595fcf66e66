//! ACPI tables: how a guest with ACPI finds its vCPUs and IOAPIC (MADT), PCI configuration space
//! (MCFG), how it powers off (`_S5` and the PM1a control block) and its power button (a generic
//! event device, `ACPI0013`, whose `_EVT` notifies the `PNP0C0C` button).
//!
//! The tables go into [`ACPI_START`]..[`ACPI_END`]: the RSDP (revision 2) first, on the 16-byte
//! boundary Linux's scan of 0xE0000–0xFFFFF finds even without a pointer from the boot protocol,
//! then DSDT, FACS, FADT, MADT, MCFG and XSDT. The e820 map reserves the
//! range. The MP table stays for guests without ACPI (`acpi=off`).
//!
//! The FADT is *not* hardware-reduced, although that would need no PM1 blocks: Linux/x86 on a
//! hardware-reduced platform drops the legacy PIC and with it the identity mapping of ISA IRQs
//! (`nr_legacy_irqs()` becomes 0), so COM1's IRQ 4 and the virtio-mmio devices' IRQs, named on the
//! command line as ISA IRQ numbers, would reach no handler (measured with the kit's kernel: no
//! console output from user space). So the FADT has a PM1a event block (status and enable
//! registers, nothing ever set), a PM1a control block (SCI_EN reads 1: always in ACPI mode, no
//! SMI command port; `SLP_TYP=5 | SLP_EN` powers off) and an SCI on [`SCI_IRQ`] that nothing
//! raises. Events come through the GED's interrupt ([`GED_IRQ`](crate::layout::GED_IRQ)) and
//! event register ([`GED_PORT`](crate::layout::GED_PORT)). The hardware-reduced sleep registers
//! still name [`SLEEP_CONTROL_PORT`] (ignored by a guest of a full FADT).

mod dsdt;
mod madt;
#[cfg(test)]
mod tests;

use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{GuestAddress, GuestMemoryBackend};
use zerocopy::byteorder::{U16, U32, U64};

use crate::guest_write::write_bytes;
use crate::layout::{
    ACPI_END, ACPI_START, MAX_VCPUS, PCI_ECAM_SIZE, PCI_ECAM_START, PM1A_CONTROL_PORT, PM1A_EVENT_PORT,
    PM1_CONTROL_LEN, PM1_EVENT_LEN, SCI_IRQ, SLEEP_CONTROL_PORT,
};
use crate::{BootEntry, Error, Result};

/// OEM ID of every table.
const OEM_ID: [u8; 6] = *b"KESTRL";
/// OEM revision of every table.
const OEM_REVISION: u32 = 1;
/// The FADT's hypervisor vendor identity.
const HYPERVISOR_VENDOR: [u8; 8] = *b"KESTREL ";

/// The bit of the GED's event register that says the power button was pressed: the device sets
/// it (`devices::acpi::Ged`), the DSDT's `_EVT` tests it and notifies `\_SB.PWRB`.
pub const GED_EVENT_POWER_BUTTON: u8 = 1 << 0;

/// The sleep type the DSDT's `_S5_` package gives S5 (soft off); the PM1a control block (and the
/// hardware-reduced sleep control register) power off on `SLP_TYP=5 | SLP_EN`.
pub const S5_SLEEP_TYPE: u8 = 5;

/// IAPC_BOOT_ARCH: legacy (ISA) devices present.
const BOOT_ARCH_LEGACY_DEVICES: u16 = 1 << 0;
/// IAPC_BOOT_ARCH: an 8042 keyboard controller is present (Kestrel's i8042 takes Ctrl+Alt+Del).
const BOOT_ARCH_8042: u16 = 1 << 1;

/// The tables are aligned to this inside their room (nothing requires more)...
const TABLE_ALIGNMENT: usize = 16;
/// ... but the FACS, which must be 64-byte aligned.
const FACS_ALIGNMENT: usize = 64;

/// What the tables describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiConfig {
    /// vCPUs, with APIC ids 0..num_cpus (the IOAPIC takes id `num_cpus`, as in the MP table).
    pub num_cpus: u8,
}

/// Writes the ACPI tables for `config` into guest memory and returns the RSDP's address.
pub fn setup_acpi(mem: &impl GuestMemoryBackend, config: &AcpiConfig) -> Result<GuestAddress> {
    let image = build_tables(config)?;
    write_bytes(mem, "ACPI tables", GuestAddress(ACPI_START), &image)?;
    Ok(GuestAddress(ACPI_START))
}

/// Tells the kernel where the RSDP is, in the boot information of its entry protocol (the zero
/// page's `acpi_rsdp_addr`, PVH's `rsdp_paddr`), which must already be written.
pub fn announce_rsdp(mem: &impl GuestMemoryBackend, entry: BootEntry, rsdp: GuestAddress) -> Result<()> {
    match entry {
        BootEntry::Linux64(_) => crate::boot_params::set_rsdp_address(mem, rsdp),
        BootEntry::Pvh(_) => crate::pvh::set_rsdp_address(mem, rsdp),
    }
}

/// The tables as one image to be written at [`ACPI_START`], the RSDP at its start.
fn build_tables(config: &AcpiConfig) -> Result<Vec<u8>> {
    if config.num_cpus == 0 {
        return Err(Error::NoVcpus);
    }
    if config.num_cpus > MAX_VCPUS {
        return Err(Error::TooManyCpus(config.num_cpus));
    }
    let mut image = TableImage::new();
    let dsdt = image.push(&dsdt::dsdt(), TABLE_ALIGNMENT);
    let facs = image.push(&FACS::new(), FACS_ALIGNMENT);
    let fadt = image.push(&fadt(dsdt, facs), TABLE_ALIGNMENT);
    let madt = image.push(&madt::madt(config.num_cpus), TABLE_ALIGNMENT);
    let mut xsdt = XSDT::new(OEM_ID, *b"KESTXSDT", OEM_REVISION);
    xsdt.add_entry(fadt);
    xsdt.add_entry(madt);
    // Every VM has the PCI host bridge, whichever transport its virtio devices use: a guest with
    // ACPI scans only the buses the tables describe, so the MCFG and `\_SB.PCI0` are always there.
    xsdt.add_entry(image.push(&mcfg(), TABLE_ALIGNMENT));
    let xsdt = image.push(&xsdt, TABLE_ALIGNMENT);
    let rsdp = Rsdp::new(OEM_ID, xsdt);
    image.finish(&rsdp)
}

/// The FADT: the DSDT and FACS, the PM1a blocks, the SCI, the boot flags.
fn fadt(dsdt: u64, facs: u64) -> impl Aml {
    let io = |bits: u8, port: u16| {
        GAS::new(AddressSpace::SystemIo, bits, 0, AccessSize::WordAccess, u64::from(port))
    };
    let mut fadt = FADTBuilder::new(OEM_ID, *b"KESTFACP", OEM_REVISION);
    fadt.sci_int = U16::new(u16::from(SCI_IRQ));
    // No SMI command port: the platform is always in ACPI mode (PM1_CNT.SCI_EN reads 1).
    fadt.pm1a_evt_blk = U32::new(u32::from(PM1A_EVENT_PORT));
    fadt.pm1_evt_len = PM1_EVENT_LEN;
    fadt.x_pm1a_evt_blk = io(PM1_EVENT_LEN * 8, PM1A_EVENT_PORT);
    fadt.pm1a_cnt_blk = U32::new(u32::from(PM1A_CONTROL_PORT));
    fadt.pm1_cnt_len = PM1_CONTROL_LEN;
    fadt.x_pm1a_cnt_blk = io(PM1_CONTROL_LEN * 8, PM1A_CONTROL_PORT);
    // Hardware-reduced sleep registers, for a guest that would use them: one byte, reads 0.
    let sleep_register =
        GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, u64::from(SLEEP_CONTROL_PORT));
    fadt.sleep_control_reg = sleep_register;
    fadt.sleep_status_reg = sleep_register;
    fadt.iapc_boot_arch = U16::new(BOOT_ARCH_LEGACY_DEVICES | BOOT_ARCH_8042);
    fadt.hypervisor_vendor_identity = U64::new(u64::from_le_bytes(HYPERVISOR_VENDOR));
    fadt
        // Both buttons are "control method" ones: the power button is the DSDT's PNP0C0C device
        // (no fixed-feature button in PM1), and there is no sleep button.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .dsdt_64(dsdt)
        .firmware_ctrl_64(facs)
        .finalize()
}

/// The MCFG: bus 0's ECAM window, the one Kestrel's PCI root serves.
fn mcfg() -> MCFG {
    let mut mcfg = MCFG::new(OEM_ID, *b"KESTMCFG", OEM_REVISION);
    // One MiB of ECAM per bus.
    let last_bus = (PCI_ECAM_SIZE >> 20).saturating_sub(1) as u8;
    mcfg.add_ecam(PCI_ECAM_START, 0, 0, last_bus);
    mcfg
}

/// The tables laid out one after the other behind room for the RSDP, which is written last
/// (it points at the XSDT, which points at the others).
struct TableImage {
    bytes: Vec<u8>,
}

impl TableImage {
    fn new() -> TableImage {
        let rsdp_room = Rsdp::len().next_multiple_of(TABLE_ALIGNMENT);
        TableImage { bytes: vec![0; rsdp_room] }
    }

    /// Appends `table` at the next multiple of `alignment` and returns its guest-physical address
    /// (`ACPI_START` is 64 KiB aligned).
    fn push(&mut self, table: &dyn Aml, alignment: usize) -> u64 {
        self.bytes.resize(self.bytes.len().next_multiple_of(alignment), 0);
        let address = ACPI_START + self.bytes.len() as u64;
        table.to_aml_bytes(&mut self.bytes);
        address
    }

    /// Puts the RSDP in front; fails if the tables outgrew their room.
    fn finish(mut self, rsdp: &Rsdp) -> Result<Vec<u8>> {
        let room = ACPI_END - ACPI_START;
        if self.bytes.len() as u64 > room {
            return Err(Error::AcpiTablesTooLarge { len: self.bytes.len(), room });
        }
        let mut rsdp_bytes = Vec::with_capacity(Rsdp::len());
        rsdp.to_aml_bytes(&mut rsdp_bytes);
        self.bytes[..rsdp_bytes.len()].copy_from_slice(&rsdp_bytes);
        Ok(self.bytes)
    }
}
