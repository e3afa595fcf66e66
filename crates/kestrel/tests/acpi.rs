//! Tier 2: the ACPI tables `kestrel vmm` writes at boot, read back from a snapshot of the running
//! hello guest's memory (where a guest finds them: the RSDP in the BIOS area, pointed at by the
//! boot protocol), and the `SendPowerButton` action (x-kestrel): refused before the start, taken
//! after it, also while paused. The guest's side of the button is tier 3 (`linux_acpi.rs`).

mod common;

use std::io::BufReader;

use common::api::{assert_fault, request, start_vmm, start_vmm_with};
use common::{kvm_available, wait_for_line, wait_with_limit, Watchdog};

const POWER_BUTTON: &str = r#"{"action_type": "SendPowerButton"}"#;
/// Where Linux scans for the RSDP without a pointer: 0xE0000 up to 1 MiB.
const BIOS_AREA: std::ops::Range<usize> = 0xE0000..0x10_0000;
/// `boot_params.acpi_rsdp_addr` in the zero page at 0x7000.
const ZERO_PAGE_RSDP: usize = 0x7000 + 0x70;
/// `hvm_start_info.rsdp_paddr` in the PVH start info at 0x6000.
const PVH_RSDP: usize = 0x6000 + 32;

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// A table at `addr` of guest memory `ram`, checked (length, checksum); its signature and bytes.
fn table(ram: &[u8], addr: u64) -> &[u8] {
    let addr = addr as usize;
    let len = u32_at(ram, addr + 4) as usize;
    let bytes = &ram[addr..addr + len];
    assert_eq!(sum(bytes), 0, "checksum of the {} at {addr:#x}", String::from_utf8_lossy(&bytes[..4]));
    bytes
}

/// Boots `kernel` (a hello guest spinning at CPL3) on `transport`, pauses it, snapshots it and
/// returns its RAM as the memory file holds it (offset = guest-physical address below 3 GiB).
fn guest_ram(kernel: &str, transport: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let mut child = start_vmm_with(&socket, &["--transport", transport]);
    let watchdog = Watchdog::new(&child);
    let boot = format!(r#"{{"kernel_image_path": "{kernel}", "boot_args": "exit=hang"}}"#);
    assert_eq!(request(&socket, "PUT", "/boot-source", &boot).0, 204);
    assert_eq!(request(&socket, "PUT", "/machine-config", r#"{"vcpu_count": 2, "mem_size_mib": 32}"#).0, 204);
    assert_eq!(request(&socket, "PUT", "/actions", r#"{"action_type": "InstanceStart"}"#).0, 204);
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    wait_for_line(&mut reader, "exit: hang");
    assert_eq!(request(&socket, "PATCH", "/vm", r#"{"state": "Paused"}"#).0, 204);
    let memory = dir.path().join("memory");
    let snapshot = format!(
        r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        dir.path().join("state").display(),
        memory.display()
    );
    let (status, body) = request(&socket, "PUT", "/snapshot/create", &snapshot);
    assert_eq!(status, 204, "{body}");
    let ram = std::fs::read(&memory).unwrap();
    child.kill().unwrap();
    child.stdout = Some(reader.into_inner());
    drop(watchdog);
    wait_with_limit(child);
    ram
}

/// The RSDP found as Linux finds it, the tables its XSDT lists (signatures), the DSDT's bytes.
fn find_tables(ram: &[u8]) -> (u64, Vec<String>, Vec<u8>) {
    let rsdp = BIOS_AREA
        .step_by(16)
        .find(|&at| &ram[at..at + 8] == b"RSD PTR " && sum(&ram[at..at + 20]) == 0)
        .expect("no RSDP in 0xE0000-0xFFFFF");
    assert_eq!(sum(&ram[rsdp..rsdp + 36]), 0, "RSDP extended checksum");
    assert_eq!(ram[rsdp + 15], 2, "RSDP revision");
    let xsdt = table(ram, u64_at(ram, rsdp + 24));
    assert_eq!(&xsdt[..4], b"XSDT");
    let tables: Vec<&[u8]> = xsdt[36..].chunks(8).map(|entry| table(ram, u64_at(entry, 0))).collect();
    let fadt = tables.iter().find(|t| &t[..4] == b"FACP").expect("no FADT");
    let dsdt = table(ram, u64_at(fadt, 140));
    assert_eq!(&dsdt[..4], b"DSDT");
    let signatures = tables.iter().map(|t| String::from_utf8_lossy(&t[..4]).into_owned()).collect();
    (rsdp as u64, signatures, dsdt.to_vec())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_tables_are_where_the_spec_says_and_the_zero_page_points_at_them() {
    if !kvm_available() {
        return;
    }
    let ram = guest_ram(guests::HELLO, "mmio");
    let (rsdp, signatures, dsdt) = find_tables(&ram);
    assert_eq!(rsdp, 0xE0000);
    assert_eq!(u64_at(&ram, ZERO_PAGE_RSDP), rsdp, "boot_params.acpi_rsdp_addr");
    // The MCFG and the host bridge on the mmio transport too: every VM has PCI bus 0.
    assert_eq!(signatures, ["FACP", "APIC", "MCFG"]);
    assert!(contains(&dsdt, b"_S5_") && contains(&dsdt, b"PWRB") && contains(&dsdt, b"ACPI0013"));
    assert!(contains(&dsdt, b"PCI0"));
}

#[test]
fn on_pci_the_tables_are_the_same_and_pvh_points_at_them() {
    if !kvm_available() {
        return;
    }
    let ram = guest_ram(guests::HELLO_PVH, "pci");
    let (rsdp, signatures, dsdt) = find_tables(&ram);
    assert_eq!(u64_at(&ram, PVH_RSDP), rsdp, "hvm_start_info.rsdp_paddr");
    assert_eq!(signatures, ["FACP", "APIC", "MCFG"]);
    assert!(contains(&dsdt, b"PCI0"));
}

#[test]
fn the_power_button_is_refused_before_the_start_and_pressed_after_even_while_paused() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let mut child = start_vmm(&socket);
    let watchdog = Watchdog::new(&child);
    assert_fault(
        request(&socket, "PUT", "/actions", POWER_BUTTON),
        "not supported before starting the microVM",
    );
    let boot = format!(r#"{{"kernel_image_path": "{}", "boot_args": "exit=hang"}}"#, guests::HELLO);
    assert_eq!(request(&socket, "PUT", "/boot-source", &boot).0, 204);
    assert_eq!(request(&socket, "PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 32}"#).0, 204);
    assert_eq!(request(&socket, "PUT", "/actions", r#"{"action_type": "InstanceStart"}"#).0, 204);
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    wait_for_line(&mut reader, "exit: hang");
    // The hello guest has no ACPI: the press is taken, the guest goes on.
    assert_eq!(request(&socket, "PUT", "/actions", POWER_BUTTON).0, 204);
    assert_eq!(request(&socket, "PATCH", "/vm", r#"{"state": "Paused"}"#).0, 204);
    assert_eq!(request(&socket, "PUT", "/actions", POWER_BUTTON).0, 204);
    let (status, info) = request(&socket, "GET", "/", "");
    assert_eq!(status, 200);
    assert!(info.contains("\"state\":\"Paused\""), "{info}");
    child.kill().unwrap();
    child.stdout = Some(reader.into_inner());
    drop(watchdog);
    wait_with_limit(child);
}
