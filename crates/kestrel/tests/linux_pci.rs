//! Tier 3: the kit's Linux finds its virtio devices on PCI (`--transport pci`): it probes bus 0
//! with type-1 configuration cycles, binds virtio-pci (modern) and takes its interrupts as MSI-X.
//! Slow like every kit boot; skips without the kit, except on CI (see `common/kit.rs`).

mod common;

use std::time::Instant;

use common::kit::*;
use common::*;

const POWER_OFF: i32 = 0;

#[test]
fn linux_reads_virtio_rng_over_pci_with_msix() {
    let Some(kit) = kit_available() else { return };
    let _serial = one_boot_at_a_time();
    eprintln!("tier 3: Linux (kit), virtio-rng over virtio-pci with MSI-X");
    let mut command = linux_script_command(
        &kit,
        "head -c 16 /dev/hwrng | od -An -tx1; cat /proc/interrupts; cat /sys/bus/pci/devices/*/uevent; \
         cat /proc/cmdline",
    );
    command.args(["--rng", "--transport", "pci"]);
    let started = Instant::now();
    let output = run_to_end_within(command, b"", LINUX_LIMIT);
    eprintln!("tier 3: booted, read /dev/hwrng and powered off in {:.1?}", started.elapsed());
    assert_status(&output, POWER_OFF);
    assert_command_exited(&output, 0);
    let lines = lines_after_init(&output);
    let context = || format!("--- stdout\n{}\n--- stderr\n{}", stdout(&output), stderr(&output));

    // od prints the 16 bytes as one line of 16 two-digit hex numbers.
    let entropy = lines
        .iter()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|words| {
            words.len() == 16 && words.iter().all(|w| w.len() == 2 && u8::from_str_radix(w, 16).is_ok())
        })
        .unwrap_or_else(|| panic!("no 16 bytes from /dev/hwrng\n{}", context()));
    assert!(entropy.iter().any(|w| *w != "00"), "/dev/hwrng gave zeros\n{}", context());

    // Both vectors (configuration changes and the request queue) are MSI-X, and the queue's fired.
    let interrupts = |name: &str| {
        lines
            .iter()
            .find(|l| l.ends_with(name) && l.contains("PCI-MSI"))
            .unwrap_or_else(|| panic!("no PCI-MSI interrupt {name} in /proc/interrupts\n{}", context()))
    };
    interrupts("virtio0-config");
    let input = interrupts("virtio0-input");
    let count: u64 = input.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    assert!(count > 0, "the queue's vector never fired: {input}");

    // The bus holds the host bridge and the rng, bound to virtio-pci.
    for expected in ["PCI_ID=8086:0D57", "PCI_ID=1AF4:1044", "DRIVER=virtio-pci", "PCI_SUBSYS_ID=1AF4:1044"] {
        assert!(lines.iter().any(|l| l == expected), "no {expected} in the devices' uevent\n{}", context());
    }
    let cmdline = lines.iter().find(|l| l.starts_with("console=")).expect("/proc/cmdline");
    assert!(!cmdline.contains("virtio_mmio"), "PCI devices need no command-line declaration: {cmdline}");
}
