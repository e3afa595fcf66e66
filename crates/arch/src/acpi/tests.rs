//! The tables read back from guest memory as a guest would find them, and (with `iasl` from
//! Debian's acpica-tools) decoded by ACPICA's disassembler.

use std::path::PathBuf;
use std::process::Command;

use vm_memory::{Bytes, GuestMemoryMmap};

use super::*;
use crate::layout::{EBDA_START, GED_IRQ, GED_PORT, IOAPIC_START, LAPIC_START, LOW_RAM_END};
use crate::ram_regions;

const MEM_SIZE: u64 = 64 << 20;
const HEADER_LEN: usize = 36;

fn written(config: AcpiConfig) -> (GuestMemoryMmap, GuestAddress) {
    let mem = GuestMemoryMmap::<()>::from_ranges(&ram_regions(MEM_SIZE)).unwrap();
    let rsdp = setup_acpi(&mem, &config).unwrap();
    (mem, rsdp)
}

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
    bytes
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b))
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().unwrap())
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// One table as found: where, and its bytes (checked: length, checksum, inside the ACPI room).
struct Table {
    addr: u64,
    bytes: Vec<u8>,
}

impl Table {
    fn signature(&self) -> &[u8] {
        &self.bytes[0..4]
    }
}

fn table_at(mem: &GuestMemoryMmap, addr: u64) -> Table {
    let header = read(mem, addr, HEADER_LEN);
    let len = u32_at(&header, 4) as usize;
    assert!(len >= HEADER_LEN, "table at {addr:#x} is {len} bytes");
    assert!(addr >= ACPI_START && addr + len as u64 <= ACPI_END, "table at {addr:#x} is outside its room");
    let bytes = read(mem, addr, len);
    assert_eq!(sum(&bytes), 0, "checksum of {}", String::from_utf8_lossy(&bytes[0..4]));
    assert_eq!(&bytes[10..16], b"KESTRL", "OEM ID");
    Table { addr, bytes }
}

/// Finds the RSDP the way Linux does without a boot-protocol pointer: "RSD PTR " on a 16-byte
/// boundary of 0xE0000–0xFFFFF, its first 20 bytes and all 36 summing to zero.
fn find_rsdp(mem: &GuestMemoryMmap) -> u64 {
    let area = read(mem, 0xE0000, 0x20000);
    let offset = (0..area.len())
        .step_by(16)
        .find(|&at| &area[at..at + 8] == b"RSD PTR " && sum(&area[at..at + 20]) == 0)
        .expect("no RSDP in the BIOS area");
    let rsdp = &area[offset..offset + 36];
    assert_eq!(sum(rsdp), 0, "extended checksum");
    assert_eq!(rsdp[15], 2, "revision");
    assert_eq!(u32_at(rsdp, 20), 36, "length");
    0xE0000 + offset as u64
}

/// The tables the XSDT lists, in order, and the DSDT the FADT points at.
fn parse(mem: &GuestMemoryMmap) -> (Vec<Table>, Table) {
    let rsdp = read(mem, find_rsdp(mem), 36);
    let xsdt = table_at(mem, u64_at(&rsdp, 24));
    assert_eq!(xsdt.signature(), b"XSDT");
    assert_eq!((xsdt.bytes.len() - HEADER_LEN) % 8, 0);
    let tables: Vec<Table> =
        xsdt.bytes[HEADER_LEN..].chunks(8).map(|entry| table_at(mem, u64_at(entry, 0))).collect();
    let fadt = tables.iter().find(|t| t.signature() == b"FACP").expect("no FADT");
    assert_eq!(u32_at(&fadt.bytes, 40), 0, "32-bit DSDT pointer beside X_DSDT");
    let dsdt = table_at(mem, u64_at(&fadt.bytes, 140));
    assert_eq!(dsdt.signature(), b"DSDT");
    (tables, dsdt)
}

fn signatures(tables: &[Table]) -> Vec<String> {
    tables.iter().map(|t| String::from_utf8_lossy(t.signature()).into_owned()).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn rsdp_xsdt_and_tables_read_back_with_valid_checksums() {
    let (mem, rsdp) = written(AcpiConfig { num_cpus: 2 });
    assert_eq!(rsdp, GuestAddress(ACPI_START));
    assert_eq!(find_rsdp(&mem), ACPI_START);
    let (tables, _) = parse(&mem);
    assert_eq!(signatures(&tables), ["FACP", "APIC", "MCFG"]);
    // Nothing overlaps: each table ends before the next begins.
    let mut ranges: Vec<(u64, u64)> =
        tables.iter().map(|t| (t.addr, t.addr + t.bytes.len() as u64)).collect();
    ranges.sort();
    assert!(ranges.windows(2).all(|w| w[0].1 <= w[1].0), "{ranges:x?}");
}

#[test]
fn every_vm_describes_its_dsdt_devices() {
    // The PCI host bridge is there whichever transport the virtio devices use (every VM has it).
    let (mem, _) = written(AcpiConfig { num_cpus: 1 });
    let (_, dsdt) = parse(&mem);
    for device in [&b"PCI0"[..], b"MBRD", b"PWRB", b"GED_"] {
        assert!(contains(&dsdt.bytes, device), "{}", String::from_utf8_lossy(device));
    }
}

#[test]
fn fadt_has_pm1_blocks_an_sci_a_facs_and_the_sleep_registers_at_the_power_port() {
    let (mem, _) = written(AcpiConfig { num_cpus: 1 });
    let (tables, _) = parse(&mem);
    let fadt = &tables[0].bytes;
    assert_eq!(fadt.len(), 276, "FADT revision 6 length");
    let flags = u32_at(fadt, 112);
    assert_eq!(flags & (1 << 20), 0, "not HW_REDUCED_ACPI (Linux would drop the ISA IRQs)");
    assert_ne!(flags & (1 << 4), 0, "power button is a control method device");
    assert_eq!(u16_at(fadt, 46), 13, "SCI_INT");
    assert_eq!(u32_at(fadt, 48), 0, "no SMI_CMD: always in ACPI mode");
    assert_eq!((u32_at(fadt, 56), fadt[88]), (0x608, 4), "PM1a event block");
    assert_eq!((u32_at(fadt, 64), fadt[89]), (0x60C, 2), "PM1a control block");
    assert_eq!(u64_at(fadt, 148 + 4), 0x608, "X_PM1a_EVT_BLK");
    assert_eq!(u64_at(fadt, 172 + 4), 0x60C, "X_PM1a_CNT_BLK");
    let facs = u64_at(fadt, 132);
    assert_eq!(facs % 64, 0, "FACS alignment");
    let facs = read(&mem, facs, 64);
    assert_eq!((&facs[0..4], u32_at(&facs, 4)), (&b"FACS"[..], 64));
    // SLEEP_CONTROL_REG and SLEEP_STATUS_REG: system I/O, 8 bits, byte access, port 0x600.
    for offset in [244, 256] {
        assert_eq!(&fadt[offset..offset + 4], [1, 8, 0, 1], "GAS at {offset}");
        assert_eq!(u64_at(fadt, offset + 4), 0x600);
    }
    assert_eq!(u16_at(fadt, 109), 0b11, "IAPC_BOOT_ARCH: legacy devices, 8042");
}

#[test]
fn madt_lists_every_vcpu_the_ioapic_and_the_isa_wiring_of_the_mp_table() {
    for num_cpus in [1u8, 4, MAX_VCPUS] {
        let (mem, _) = written(AcpiConfig { num_cpus });
        let (tables, _) = parse(&mem);
        let madt = &tables[1].bytes;
        assert_eq!(u32_at(madt, 36) as u64, LAPIC_START);
        let mut rest = &madt[44..];
        let (mut apic_ids, mut ioapics, mut overrides, mut nmis) = (Vec::new(), Vec::new(), Vec::new(), 0);
        while !rest.is_empty() {
            let (kind, len) = (rest[0], usize::from(rest[1]));
            let entry = &rest[..len];
            match kind {
                0 => {
                    assert_eq!(u32_at(entry, 4), 1, "enabled");
                    apic_ids.push(entry[3]);
                }
                1 => ioapics.push((entry[2], u32_at(entry, 4) as u64, u32_at(entry, 8))),
                2 => overrides.push((entry[3], u32_at(entry, 4))),
                4 => {
                    assert_eq!((entry[2], entry[5]), (0xFF, 1), "NMI on LINT1 of every processor");
                    nmis += 1;
                }
                other => panic!("unexpected MADT entry type {other}"),
            }
            rest = &rest[len..];
        }
        assert_eq!(apic_ids, (0..num_cpus).collect::<Vec<_>>());
        assert_eq!(ioapics, [(num_cpus, IOAPIC_START, 0)]);
        assert_eq!(overrides, [(0, 2), (13, 13)], "IRQ 0 arrives on pin 2; the SCI on 13");
        assert_eq!(nmis, 1);
    }
}

#[test]
fn mcfg_declares_bus_0s_ecam_window() {
    let (mem, _) = written(AcpiConfig { num_cpus: 1 });
    let (tables, dsdt) = parse(&mem);
    let mcfg = &tables[2].bytes;
    assert_eq!(mcfg.len(), 44 + 16);
    assert_eq!(u64_at(mcfg, 44), PCI_ECAM_START);
    assert_eq!((u16_at(mcfg, 52), mcfg[54], mcfg[55]), (0, 0, 0), "segment 0, buses 0-0");
    assert!(contains(&dsdt.bytes, b"PCI0") && contains(&dsdt.bytes, b"MBRD"));
}

#[test]
fn tables_stay_clear_of_the_mp_table_and_ram() {
    const _: () = assert!(EBDA_START < LOW_RAM_END && LOW_RAM_END <= ACPI_START);
    // The MP table ends below the legacy hole even with the most vCPUs; the ACPI room starts above
    // it and ends where the BIOS area (reserved) does, below the kernel's 1 MiB.
    let image = build_tables(&AcpiConfig { num_cpus: MAX_VCPUS }).unwrap();
    assert!(ACPI_START + image.len() as u64 <= ACPI_END);
    let map = crate::e820::memory_map(MEM_SIZE);
    let reserved = map.iter().find(|e| e.addr <= ACPI_START && ACPI_END <= e.addr + e.size).unwrap();
    assert_eq!(reserved.kind, crate::e820::E820_RESERVED);
}

#[test]
fn bad_vcpu_counts_and_small_memory_are_errors() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&ram_regions(MEM_SIZE)).unwrap();
    assert!(matches!(setup_acpi(&mem, &AcpiConfig { num_cpus: 0 }), Err(Error::NoVcpus)));
    assert!(matches!(setup_acpi(&mem, &AcpiConfig { num_cpus: 255 }), Err(Error::TooManyCpus(255))));
    let tiny = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x9_0000)]).unwrap();
    assert!(matches!(setup_acpi(&tiny, &AcpiConfig { num_cpus: 1 }), Err(Error::GuestMemoryTooSmall { .. })));
}

#[test]
fn the_boot_protocols_point_at_the_rsdp() {
    use linux_loader::loader::bootparam::boot_params;
    use linux_loader::loader::elf::start_info::hvm_start_info;

    use crate::layout::{CMDLINE_START, PVH_INFO_START, ZERO_PAGE_START};

    let (mem, rsdp) = written(AcpiConfig { num_cpus: 1 });
    let cmdline = crate::CmdlineLocation { addr: GuestAddress(CMDLINE_START), size_with_nul: 1 };
    crate::configure_linux_boot(&mem, MEM_SIZE, cmdline, None, None).unwrap();
    announce_rsdp(&mem, BootEntry::Linux64(GuestAddress(0x20_0000)), rsdp).unwrap();
    let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
    assert_eq!({ params.acpi_rsdp_addr }, ACPI_START);

    crate::configure_pvh_boot(&mem, MEM_SIZE, cmdline, None).unwrap();
    announce_rsdp(&mem, BootEntry::Pvh(GuestAddress(0x20_0000)), rsdp).unwrap();
    let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
    assert_eq!(info.rsdp_paddr, ACPI_START);
    assert_eq!(info.magic, 0x336e_c578, "the rest of the start info is intact");
}

/// A directory of its own under the temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("kestrel-acpi-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether `iasl` can run; under CI=true it must (scripts/install-prerequisites installs it).
fn iasl_available() -> bool {
    let found = Command::new("iasl").arg("-v").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(std::env::var_os("CI").is_none_or(|v| v != "true"), "iasl missing under CI (acpica-tools)");
        eprintln!("iasl not found (Debian: acpica-tools): skipping the disassembly test");
    }
    found
}

/// `iasl -d` on each table, as dumped from guest memory; returns the disassembly.
fn disassemble(dir: &TempDir, table: &Table) -> String {
    let name = String::from_utf8_lossy(table.signature()).to_lowercase();
    let data = dir.0.join(format!("{name}.dat"));
    std::fs::write(&data, &table.bytes).unwrap();
    let output = Command::new("iasl").arg("-d").arg(&data).current_dir(&dir.0).output().unwrap();
    let log =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "iasl -d {name}.dat failed:\n{log}");
    std::fs::read_to_string(dir.0.join(format!("{name}.dsl"))).unwrap_or_else(|e| panic!("{e}:\n{log}"))
}

#[test]
fn iasl_decodes_every_table() {
    if !iasl_available() {
        return;
    }
    let (mem, _) = written(AcpiConfig { num_cpus: 2 });
    let (tables, dsdt) = parse(&mem);
    let dir = TempDir::new("iasl");

    let asl = disassemble(&dir, &dsdt);
    for expected in [
        "Name (_S5, Package (0x04)",
        "Device (_SB.PWRB)",
        "EisaId (\"PNP0C0C\")",
        "Device (_SB.GED)",
        "\"ACPI0013\"",
        "Method (_EVT, 1, Serialized)",
        "Notify (\\_SB.PWRB, 0x80)",
        &format!("OperationRegion (GDST, SystemIO, 0x{GED_PORT:04X}, One)"),
        &format!("0x{GED_IRQ:08X},"),
        "Device (_SB.PCI0)",
        "EisaId (\"PNP0A08\")",
        "Device (_SB.COM1)",
    ] {
        assert!(asl.contains(expected), "DSDT disassembly lacks {expected:?}:\n{asl}");
    }

    let fadt = disassemble(&dir, &tables[0]);
    assert!(fadt.contains("Hardware Reduced (V5) : 0"), "{fadt}");
    assert!(fadt.contains("PM1A Event Block Address : 00000608"), "{fadt}");
    assert!(fadt.contains("PM1A Control Block Address : 0000060C"), "{fadt}");
    let madt = disassemble(&dir, &tables[1]);
    assert_eq!(madt.matches("Subtable Type : 00 [Processor Local APIC]").count(), 2, "{madt}");
    assert!(madt.contains("[Interrupt Source Override]"), "{madt}");
    let mcfg = disassemble(&dir, &tables[2]);
    assert!(mcfg.contains("Base Address : 00000000C8000000"), "{mcfg}");
}
