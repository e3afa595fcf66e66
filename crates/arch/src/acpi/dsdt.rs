//! The DSDT: `_S5_`, the power button behind the generic event device, the ISA devices, and the
//! PCI host bridge.

use acpi_tables::aml::{
    self, AddressSpace, AddressSpaceCacheable, EISAName, FieldAccessType, FieldEntry, FieldLockRule,
    FieldUpdateRule, OpRegionSpace, Path, ResourceTemplate,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

use crate::layout::{GED_IRQ, GED_PORT, IOAPIC_START, PCI_ECAM_SIZE, PCI_ECAM_START, PCI_MMIO_START};

use super::{GED_EVENT_POWER_BUTTON, OEM_ID, OEM_REVISION, S5_SLEEP_TYPE};

/// DSDT revision 2: integers are 64 bits wide.
const DSDT_REVISION: u8 = 2;
/// `Notify` value of a power button press ("button pressed").
const NOTIFY_BUTTON_PRESSED: u8 = 0x80;
/// PCI configuration mechanism #1's ports (CONFIG_ADDRESS, CONFIG_DATA).
const PCI_CONFIG_PORT: u16 = 0xcf8;
const PCI_CONFIG_PORT_COUNT: u8 = 8;
const COM1_PORT: u16 = 0x3f8;
const COM1_IRQ: u32 = 4;
const I8042_DATA_PORT: u16 = 0x60;
const I8042_COMMAND_PORT: u16 = 0x64;
const KEYBOARD_IRQ: u32 = 1;

// The PCI windows are 32-bit resource descriptors.
const _: () = assert!(PCI_ECAM_START + PCI_ECAM_SIZE <= 1 << 32 && IOAPIC_START <= 1 << 32);

/// The DSDT.
pub(super) fn dsdt() -> Sdt {
    let mut body = Vec::new();
    sleep_states(&mut body);
    power_button(&mut body);
    isa_devices(&mut body);
    pci_host_bridge(&mut body);
    let mut dsdt = Sdt::new(*b"DSDT", 36, DSDT_REVISION, OEM_ID, *b"KESTDSDT", OEM_REVISION);
    dsdt.append_slice(&body);
    dsdt
}

/// `\_S5_`: soft off is sleep type 5 (SLP_TYPa, SLP_TYPb, two reserved), what the power port
/// takes.
fn sleep_states(sink: &mut Vec<u8>) {
    let package = aml::Package::new(vec![&S5_SLEEP_TYPE, &S5_SLEEP_TYPE, &0u8, &0u8]);
    aml::Name::new("_S5_".into(), &package).to_aml_bytes(sink);
}

/// `\_SB.PWRB` (PNP0C0C), and `\_SB.GED_` (ACPI0013): on its interrupt the guest runs `_EVT`,
/// which reads (and so clears) the event register and notifies the button if the event says so.
fn power_button(sink: &mut Vec<u8>) {
    let hid = aml::Name::new("_HID".into(), &EISAName::new("PNP0C0C"));
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    aml::Device::new("_SB_.PWRB".into(), vec![&hid, &uid]).to_aml_bytes(sink);

    let hid = aml::Name::new("_HID".into(), &"ACPI0013");
    let interrupt = aml::Interrupt::new(true, true, false, false, GED_IRQ);
    let crs = aml::Name::new("_CRS".into(), &ResourceTemplate::new(vec![&interrupt]));
    let port = usize::from(GED_PORT);
    let region = aml::OpRegion::new("GDST".into(), OpRegionSpace::SystemIO, &port, &1usize);
    let field = aml::Field::new(
        "GDST".into(),
        FieldAccessType::Byte,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        vec![FieldEntry::Named(*b"GDAT", 8)],
    );
    let button = aml::Path::new("\\_SB_.PWRB");
    let notify = aml::Notify::new(&button, &NOTIFY_BUTTON_PRESSED);
    let (event, bit) = (aml::Local(0), aml::Local(1));
    let gdat = Path::new("GDAT");
    let read_event = aml::Store::new(&event, &gdat);
    let test_bit = aml::And::new(&bit, &event, &GED_EVENT_POWER_BUTTON);
    let pressed = aml::Equal::new(&bit, &GED_EVENT_POWER_BUTTON);
    let notify_if_pressed = aml::If::new(&pressed, vec![&notify]);
    let evt = aml::Method::new("_EVT".into(), 1, true, vec![&read_event, &test_bit, &notify_if_pressed]);
    aml::Device::new("_SB_.GED_".into(), vec![&hid, &uid, &crs, &region, &field, &evt]).to_aml_bytes(sink);
}

/// COM1 (PNP0501) and the i8042's keyboard (PNP0303), where the legacy devices are.
fn isa_devices(sink: &mut Vec<u8>) {
    let hid = aml::Name::new("_HID".into(), &EISAName::new("PNP0501"));
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let io = aml::IO::new(COM1_PORT, COM1_PORT, 0, 8);
    let irq = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    let crs = aml::Name::new("_CRS".into(), &ResourceTemplate::new(vec![&io, &irq]));
    aml::Device::new("_SB_.COM1".into(), vec![&hid, &uid, &crs]).to_aml_bytes(sink);

    let hid = aml::Name::new("_HID".into(), &EISAName::new("PNP0303"));
    let data = aml::IO::new(I8042_DATA_PORT, I8042_DATA_PORT, 0, 1);
    let command = aml::IO::new(I8042_COMMAND_PORT, I8042_COMMAND_PORT, 0, 1);
    let irq = aml::Interrupt::new(true, true, false, false, KEYBOARD_IRQ);
    let crs = aml::Name::new("_CRS".into(), &ResourceTemplate::new(vec![&data, &command, &irq]));
    aml::Device::new("_SB_.PS2K".into(), vec![&hid, &uid, &crs]).to_aml_bytes(sink);
}

/// `\_SB.PCI0`: the PCIe host bridge of bus 0 (configuration ports, the 32-bit BAR window up to
/// the IOAPIC), and `\_SB.MBRD`, the motherboard resource that reserves the ECAM window (Linux
/// uses the MCFG's window only when firmware reserves it).
fn pci_host_bridge(sink: &mut Vec<u8>) {
    let hid = aml::Name::new("_HID".into(), &EISAName::new("PNP0A08"));
    let cid = aml::Name::new("_CID".into(), &EISAName::new("PNP0A03"));
    let adr = aml::Name::new("_ADR".into(), &aml::ZERO);
    let seg = aml::Name::new("_SEG".into(), &aml::ZERO);
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let bbn = aml::Name::new("_BBN".into(), &aml::ZERO);
    let buses = AddressSpace::new_bus_number(0u16, 0u16);
    let config_ports = aml::IO::new(PCI_CONFIG_PORT, PCI_CONFIG_PORT, 1, PCI_CONFIG_PORT_COUNT);
    let bars = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        PCI_MMIO_START as u32,
        (IOAPIC_START - 1) as u32,
        None,
    );
    let crs = aml::Name::new("_CRS".into(), &ResourceTemplate::new(vec![&buses, &config_ports, &bars]));
    aml::Device::new("_SB_.PCI0".into(), vec![&hid, &cid, &adr, &seg, &uid, &bbn, &crs]).to_aml_bytes(sink);

    let hid = aml::Name::new("_HID".into(), &EISAName::new("PNP0C02"));
    let ecam = aml::Memory32Fixed::new(false, PCI_ECAM_START as u32, PCI_ECAM_SIZE as u32);
    let crs = aml::Name::new("_CRS".into(), &ResourceTemplate::new(vec![&ecam]));
    aml::Device::new("_SB_.MBRD".into(), vec![&hid, &uid, &crs]).to_aml_bytes(sink);
}
