//! The MADT: a local APIC per vCPU, the IOAPIC, and the same ISA interrupt wiring as the MP table.

use acpi_tables::madt::{EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT};
use acpi_tables::{Aml, AmlSink};
use zerocopy::{Immutable, IntoBytes};

use crate::layout::{IOAPIC_START, LAPIC_START, SCI_IRQ};

use super::{OEM_ID, OEM_REVISION};

/// MADT entry types the `acpi_tables` crate has no structure for.
const ENTRY_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
const ENTRY_LOCAL_APIC_NMI: u8 = 4;
/// "Conforming to the bus" polarity and trigger: active high, edge for ISA.
const CONFORMING: u16 = 0;
/// Processor UID meaning every processor.
const ALL_PROCESSORS: u8 = 0xFF;
/// The local APIC input NMIs arrive on (LINT1), as the MP table and `interrupts::set_lint` wire it.
const NMI_LINT: u8 = 1;
/// The ISA timer (IRQ 0) is wired to IOAPIC pin 2, as on PC hardware and in the MP table.
const TIMER_IRQ: u8 = 0;
const TIMER_GSI: u32 = 2;
/// The SCI: level-triggered (0b11 << 2), active high (0b01), as ACPI wants it.
const SCI_FLAGS: u16 = 0b1101;

/// Interrupt Source Override (ACPI 6.5, 5.2.12.5): ISA `source` arrives on `gsi`.
#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct InterruptSourceOverride {
    kind: u8,
    length: u8,
    bus: u8,
    source: u8,
    gsi: [u8; 4],
    flags: [u8; 2],
}

impl Aml for InterruptSourceOverride {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

/// Local APIC NMI (ACPI 6.5, 5.2.12.7): which LINT input of which processors takes NMIs.
#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct LocalApicNmi {
    kind: u8,
    length: u8,
    processor_uid: u8,
    flags: [u8; 2],
    lint: u8,
}

impl Aml for LocalApicNmi {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

const _: () = assert!(size_of::<InterruptSourceOverride>() == 10 && size_of::<LocalApicNmi>() == 6);
// Both are 32-bit fields of the MADT.
const _: () = assert!(IOAPIC_START < 1 << 32 && LAPIC_START < 1 << 32);

/// The MADT for `num_cpus` vCPUs (1..=254, checked by the caller).
pub(super) fn madt(num_cpus: u8) -> MADT {
    let mut madt =
        MADT::new(OEM_ID, *b"KESTAPIC", OEM_REVISION, LocalInterruptController::Address(LAPIC_START as u32));
    for cpu in 0..num_cpus {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    // The IOAPIC's id follows the vCPUs' APIC ids, as in the MP table; its 24 pins are GSIs 0-23.
    madt.add_structure(IoApic::new(num_cpus, IOAPIC_START as u32, 0));
    madt.add_structure(InterruptSourceOverride {
        kind: ENTRY_INTERRUPT_SOURCE_OVERRIDE,
        length: size_of::<InterruptSourceOverride>() as u8,
        bus: 0,
        source: TIMER_IRQ,
        gsi: TIMER_GSI.to_le_bytes(),
        flags: CONFORMING.to_le_bytes(),
    });
    madt.add_structure(InterruptSourceOverride {
        kind: ENTRY_INTERRUPT_SOURCE_OVERRIDE,
        length: size_of::<InterruptSourceOverride>() as u8,
        bus: 0,
        source: SCI_IRQ,
        gsi: u32::from(SCI_IRQ).to_le_bytes(),
        flags: SCI_FLAGS.to_le_bytes(),
    });
    madt.add_structure(LocalApicNmi {
        kind: ENTRY_LOCAL_APIC_NMI,
        length: size_of::<LocalApicNmi>() as u8,
        processor_uid: ALL_PROCESSORS,
        flags: CONFORMING.to_le_bytes(),
        lint: NMI_LINT,
    });
    madt
}
