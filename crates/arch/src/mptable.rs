//! Intel MultiProcessor Specification 1.4 tables: how a guest without ACPI finds its
//! vCPUs, its IOAPIC and the routing of the ISA interrupts.
//!
//! The floating pointer sits at the start of the EBDA (0x9FC00, the "last KiB of base
//! memory" that Linux scans) and the configuration table follows it directly. Up to 40
//! vCPUs it ends inside the EBDA; with more it runs on into the legacy 0xA0000–0xF0000
//! hole, which the e820 map does not list as RAM, so the guest still never reuses it.

use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::guest_write::write_bytes;
use crate::layout::{EBDA_START, IOAPIC_START, LAPIC_START, MAX_VCPUS};
use crate::{Error, Result};

const FLOATING_POINTER_SIGNATURE: &[u8; 4] = b"_MP_";
const CONFIG_TABLE_SIGNATURE: &[u8; 4] = b"PCMP";
/// MP specification 1.4.
const SPEC_REVISION: u8 = 4;
const OEM_ID: &[u8; 8] = b"KESTREL ";
const PRODUCT_ID: &[u8; 12] = b"KESTREL VMM ";

const FLOATING_POINTER_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;
const PROCESSOR_ENTRY_SIZE: usize = 20;
/// Every entry except the processor entries is 8 bytes long.
const SHORT_ENTRY_SIZE: usize = 8;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

/// Version KVM's local APIC reports.
const LAPIC_VERSION: u8 = 0x14;
/// Version of an 82093AA-style IOAPIC, as the userspace IOAPIC models.
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1 << 0;
const CPU_BOOTSTRAP: u8 = 1 << 1;
/// Family 6 signature and the FPU + APIC feature flags; Linux only checks they are set.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 9) | 1;
const IOAPIC_ENABLED: u8 = 1;

const ISA_BUS_ID: u8 = 0;
const ISA_BUS_TYPE: &[u8; 6] = b"ISA   ";
const INTERRUPT_INT: u8 = 0;
const INTERRUPT_NMI: u8 = 1;
const INTERRUPT_EXTINT: u8 = 3;
/// Polarity and trigger "conforming to the bus": active high, edge for ISA.
const CONFORMING: u16 = 0;
const BOOTSTRAP_APIC_ID: u8 = 0;
/// Destination id meaning every local APIC.
const ALL_LOCAL_APICS: u8 = 0xFF;

/// Legacy ISA IRQs routed through the IOAPIC.
const ISA_IRQS: u8 = 16;
/// The 8259 cascade line: nothing is wired to it, and its pin takes the timer.
const ISA_CASCADE_IRQ: u8 = 2;

/// Writes the MP floating pointer and configuration table for `num_cpus` vCPUs.
pub fn setup_mptable(mem: &impl GuestMemoryBackend, num_cpus: u8) -> Result<()> {
    if num_cpus == 0 {
        return Err(Error::NoVcpus);
    }
    if num_cpus > MAX_VCPUS {
        return Err(Error::TooManyCpus(num_cpus));
    }
    let config_table = config_table(num_cpus);
    let config_table_addr = EBDA_START + FLOATING_POINTER_SIZE as u64;
    let floating_pointer = floating_pointer(config_table_addr as u32);

    let mut image = Vec::with_capacity(FLOATING_POINTER_SIZE + config_table.len());
    image.extend_from_slice(&floating_pointer);
    image.extend_from_slice(&config_table);
    write_bytes(mem, "MP table", GuestAddress(EBDA_START), &image)
}

fn floating_pointer(config_table_addr: u32) -> [u8; FLOATING_POINTER_SIZE] {
    let mut bytes = [0u8; FLOATING_POINTER_SIZE];
    bytes[0..4].copy_from_slice(FLOATING_POINTER_SIGNATURE);
    bytes[4..8].copy_from_slice(&config_table_addr.to_le_bytes());
    bytes[8] = (FLOATING_POINTER_SIZE / 16) as u8;
    bytes[9] = SPEC_REVISION;
    // Feature bytes 11..16 stay zero: a configuration table is present.
    bytes[10] = checksum(&bytes);
    bytes
}

fn config_table(num_cpus: u8) -> Vec<u8> {
    let ioapic_id = num_cpus;
    let mut entries = Vec::new();
    let mut entry_count: u16 = 0;
    let mut push = |entry: &[u8]| {
        entries.extend_from_slice(entry);
        entry_count += 1;
    };

    for apic_id in 0..num_cpus {
        push(&processor_entry(apic_id));
    }
    push(&bus_entry());
    push(&ioapic_entry(ioapic_id));
    for irq in (0..ISA_IRQS).filter(|&irq| irq != ISA_CASCADE_IRQ) {
        // As on PC hardware, the timer (IRQ 0) is wired to pin 2; the rest map 1:1.
        let pin = if irq == 0 { ISA_CASCADE_IRQ } else { irq };
        push(&io_interrupt_entry(irq, ioapic_id, pin));
    }
    // The 8259-style ExtINT goes to the bootstrap processor only; NMIs reach everyone.
    push(&local_interrupt_entry(INTERRUPT_EXTINT, BOOTSTRAP_APIC_ID, 0));
    push(&local_interrupt_entry(INTERRUPT_NMI, ALL_LOCAL_APICS, 1));

    let length = HEADER_SIZE + entries.len();
    let mut table = Vec::with_capacity(length);
    table.extend_from_slice(CONFIG_TABLE_SIGNATURE);
    // At most 44 + 254 * 20 + 21 * 8 bytes: fits 16 bits.
    table.extend_from_slice(&(length as u16).to_le_bytes());
    table.push(SPEC_REVISION);
    table.push(0); // checksum, filled in below
    table.extend_from_slice(OEM_ID);
    table.extend_from_slice(PRODUCT_ID);
    table.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&entry_count.to_le_bytes());
    table.extend_from_slice(&(LAPIC_START as u32).to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes()); // no extended table
    table.push(0); // extended table checksum
    table.push(0); // reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);
    table
}

fn processor_entry(apic_id: u8) -> [u8; PROCESSOR_ENTRY_SIZE] {
    let mut entry = [0u8; PROCESSOR_ENTRY_SIZE];
    entry[0] = ENTRY_PROCESSOR;
    entry[1] = apic_id;
    entry[2] = LAPIC_VERSION;
    entry[3] = CPU_ENABLED | if apic_id == BOOTSTRAP_APIC_ID { CPU_BOOTSTRAP } else { 0 };
    entry[4..8].copy_from_slice(&CPU_SIGNATURE.to_le_bytes());
    entry[8..12].copy_from_slice(&CPU_FEATURES.to_le_bytes());
    entry
}

fn bus_entry() -> [u8; SHORT_ENTRY_SIZE] {
    let mut entry = [ENTRY_BUS, ISA_BUS_ID, 0, 0, 0, 0, 0, 0];
    entry[2..8].copy_from_slice(ISA_BUS_TYPE);
    entry
}

fn ioapic_entry(ioapic_id: u8) -> [u8; SHORT_ENTRY_SIZE] {
    let mut entry = [ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, IOAPIC_ENABLED, 0, 0, 0, 0];
    entry[4..8].copy_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    entry
}

fn io_interrupt_entry(irq: u8, ioapic_id: u8, pin: u8) -> [u8; SHORT_ENTRY_SIZE] {
    let [flags_low, flags_high] = CONFORMING.to_le_bytes();
    [ENTRY_IO_INTERRUPT, INTERRUPT_INT, flags_low, flags_high, ISA_BUS_ID, irq, ioapic_id, pin]
}

fn local_interrupt_entry(kind: u8, apic_id: u8, lint: u8) -> [u8; SHORT_ENTRY_SIZE] {
    let [flags_low, flags_high] = CONFORMING.to_le_bytes();
    [ENTRY_LOCAL_INTERRUPT, kind, flags_low, flags_high, ISA_BUS_ID, 0, apic_id, lint]
}

/// The byte that makes all bytes of a structure sum to zero (mod 256).
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b)))
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;

    use super::*;
    use crate::layout::LOW_RAM_END;
    use crate::ram_regions;
    use vm_memory::GuestMemoryMmap;

    fn guest_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&ram_regions(16 << 20)).unwrap()
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
        bytes
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b))
    }

    /// Finds the floating pointer the way Linux does: on a 16-byte boundary in the last
    /// KiB of base memory.
    fn find_floating_pointer(mem: &GuestMemoryMmap) -> u64 {
        let area = read(mem, LOW_RAM_END - 0x400, 0x400);
        let offset = (0..area.len())
            .step_by(16)
            .find(|&off| &area[off..off + 4] == FLOATING_POINTER_SIGNATURE)
            .expect("no _MP_ signature");
        LOW_RAM_END - 0x400 + offset as u64
    }

    struct Parsed {
        processors: Vec<[u8; PROCESSOR_ENTRY_SIZE]>,
        others: Vec<[u8; SHORT_ENTRY_SIZE]>,
    }

    fn parse(mem: &GuestMemoryMmap) -> Parsed {
        let fp_addr = find_floating_pointer(mem);
        let fp = read(mem, fp_addr, 16);
        assert_eq!(sum(&fp), 0, "floating pointer checksum");
        assert_eq!(fp[9], 4);
        let table_addr = u64::from(u32::from_le_bytes(fp[4..8].try_into().unwrap()));

        let header = read(mem, table_addr, HEADER_SIZE);
        assert_eq!(&header[0..4], b"PCMP");
        let length = usize::from(u16::from_le_bytes([header[4], header[5]]));
        let count = u16::from_le_bytes([header[34], header[35]]);
        assert_eq!(u32::from_le_bytes(header[36..40].try_into().unwrap()), 0xFEE0_0000);
        let table = read(mem, table_addr, length);
        assert_eq!(sum(&table), 0, "configuration table checksum");

        let mut parsed = Parsed { processors: Vec::new(), others: Vec::new() };
        let mut rest = &table[HEADER_SIZE..];
        for _ in 0..count {
            if rest[0] == ENTRY_PROCESSOR {
                parsed.processors.push(rest[..20].try_into().unwrap());
                rest = &rest[20..];
            } else {
                parsed.others.push(rest[..8].try_into().unwrap());
                rest = &rest[8..];
            }
        }
        assert!(rest.is_empty(), "entry count disagrees with table length");
        parsed
    }

    #[test]
    fn one_processor_entry_per_vcpu() {
        for num_cpus in [1, 2, 41, MAX_VCPUS] {
            let mem = guest_memory();
            setup_mptable(&mem, num_cpus).unwrap();
            let parsed = parse(&mem);
            assert_eq!(parsed.processors.len(), usize::from(num_cpus));
            for (index, cpu) in parsed.processors.iter().enumerate() {
                assert_eq!(usize::from(cpu[1]), index, "APIC id");
                let bsp = if index == 0 { CPU_BOOTSTRAP } else { 0 };
                assert_eq!(cpu[3], CPU_ENABLED | bsp);
            }
        }
    }

    #[test]
    fn ioapic_and_interrupt_routing() {
        let mem = guest_memory();
        setup_mptable(&mem, 2).unwrap();
        let parsed = parse(&mem);

        let ioapics: Vec<_> = parsed.others.iter().filter(|e| e[0] == ENTRY_IOAPIC).collect();
        assert_eq!(ioapics.len(), 1);
        let ioapic = ioapics[0];
        assert_eq!((ioapic[1], ioapic[2], ioapic[3]), (2, 0x11, 1));
        assert_eq!(u32::from_le_bytes(ioapic[4..8].try_into().unwrap()), 0xFEC0_0000);

        let buses: Vec<_> = parsed.others.iter().filter(|e| e[0] == ENTRY_BUS).collect();
        assert_eq!(buses.len(), 1);
        assert_eq!(&buses[0][2..8], b"ISA   ");

        let routes: Vec<(u8, u8)> = parsed
            .others
            .iter()
            .filter(|e| e[0] == ENTRY_IO_INTERRUPT)
            .map(|e| {
                assert_eq!((e[1], e[2], e[3], e[4], e[6]), (INTERRUPT_INT, 0, 0, 0, 2));
                (e[5], e[7])
            })
            .collect();
        let mut expected = vec![(0, 2), (1, 1)];
        expected.extend((3..16).map(|irq| (irq, irq)));
        assert_eq!(routes, expected);

        let lints: Vec<(u8, u8, u8)> = parsed
            .others
            .iter()
            .filter(|e| e[0] == ENTRY_LOCAL_INTERRUPT)
            .map(|e| (e[1], e[6], e[7]))
            .collect();
        assert_eq!(lints, [(INTERRUPT_EXTINT, 0, 0), (INTERRUPT_NMI, 0xFF, 1)]);
    }

    #[test]
    fn small_tables_stay_inside_the_ebda() {
        let length = FLOATING_POINTER_SIZE + config_table(40).len();
        assert!(EBDA_START + length as u64 <= LOW_RAM_END);
    }

    #[test]
    fn bad_vcpu_counts_and_small_memory_are_errors() {
        let mem = guest_memory();
        assert!(matches!(setup_mptable(&mem, 0), Err(Error::NoVcpus)));
        assert!(matches!(setup_mptable(&mem, 255), Err(Error::TooManyCpus(255))));
        let tiny = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x9_0000)]).unwrap();
        assert!(matches!(setup_mptable(&tiny, 1), Err(Error::GuestMemoryTooSmall { .. })));
    }
}
