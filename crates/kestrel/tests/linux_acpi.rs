//! Tier 3: Linux and Kestrel's ACPI tables. The kit's kernel (with ACPI) finds the tables on both
//! transports, powers off through `_S5` (the PM1a control block), and answers the power button
//! (`PUT /actions {"action_type": "SendPowerButton"}`): its /init hangs up the command or the shell
//! and powers off, and `kestrel vmm` exits with status 0. The stock Debian kernel prints the
//! tables in its early boot.
//!
//! Slow (each boot takes 30–60 s on the nested test host); needs the kit (`kit/build.sh`).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::api::{request, start_vmm_with};
use common::kit::*;
use common::*;

const POWER_OFF: i32 = 0;
/// Longer than `LINUX_LIMIT`: with the other helpers' VMs running, a kit boot to /init took
/// 140-290 s here (measured 2026-12-03, load ~10 on 2 cores).
const ACPI_LIMIT: Duration = Duration::from_secs(600);
const POWER_BUTTON: &str = r#"{"action_type": "SendPowerButton"}"#;

/// Runs `script` in the kit's Linux on `transport` (with a virtio-rng device, so PCI has a
/// device to find) and returns the console lines after /init started; the command must exit 0.
fn run_script(transport: &str, script: &str) -> Vec<String> {
    let kit = kit_available().expect("kit");
    let mut command = linux_script_command(&kit, script);
    command.args(["--transport", transport, "--rng"]);
    let output = run_to_end_within(command, b"", ACPI_LIMIT);
    assert_status(&output, POWER_OFF);
    assert_command_exited(&output, 0);
    lines_after_init(&output)
}

fn tables_and_interrupts_on(transport: &str) {
    if kit_available().is_none() {
        return;
    }
    let _serial = one_boot_at_a_time();
    eprintln!("tier 3: ACPI tables in the kit's Linux, {transport} transport");
    let started = Instant::now();
    let lines = run_script(
        transport,
        "ls /sys/firmware/acpi/tables; grep -c . /sys/firmware/acpi/tables/DSDT; cat /proc/interrupts; \
         ls /sys/bus/pci/devices; cat /sys/class/misc/hw_random/rng_available",
    );
    eprintln!("tier 3: done in {:.1?}", started.elapsed());
    let text = lines.join("\n");
    let words: Vec<&str> = text.split_whitespace().collect();
    for table in ["APIC", "DSDT", "FACP", "FACS"] {
        assert!(words.contains(&table), "no {table} in /sys/firmware/acpi/tables:\n{text}");
    }
    assert!(words.contains(&"MCFG"), "no MCFG (every VM has PCI bus 0):\n{text}");
    // The host bridge of the DSDT is found on either transport (ACPI Linux scans only the buses
    // the tables name).
    assert!(words.contains(&"0000:00:00.0"), "no host bridge on bus 0:\n{text}");
    // The generic event device took its interrupt (GSI 23), and the SCI is there (unused).
    assert!(lines.iter().any(|l| l.contains("ACPI:Ged") && l.contains("23-edge")), "{text}");
    assert!(lines.iter().any(|l| l.contains("13-fasteoi") && l.ends_with("acpi")), "{text}");
    // COM1 keeps its ISA IRQ (the reason the FADT is not hardware-reduced).
    assert!(lines.iter().any(|l| l.contains("4-edge") && l.contains("ttyS0")), "{text}");
    // The entropy device was found through the host bridge of the DSDT (PCI) or the command line.
    assert!(words.contains(&"virtio_rng.0"), "no virtio-rng:\n{text}");
    if transport == "pci" {
        assert!(words.contains(&"0000:00:01.0"), "the virtio device is not on bus 0:\n{text}");
    }
}

#[test]
fn linux_finds_the_acpi_tables_on_mmio() {
    tables_and_interrupts_on("mmio");
}

#[test]
fn linux_finds_the_acpi_tables_and_the_pci_host_bridge_on_pci() {
    tables_and_interrupts_on("pci");
}

/// `poweroff -f` as the command: with ACPI the kernel powers off itself (ACPI S5 through the
/// PM1a control block); /init never gets to print that the command exited.
#[test]
fn linux_powers_off_through_acpi_s5() {
    let Some(kit) = kit_available() else { return };
    let _serial = one_boot_at_a_time();
    eprintln!("tier 3: poweroff -f through ACPI S5");
    let output = run_to_end_within(linux_script_command(&kit, "poweroff -f"), b"", ACPI_LIMIT);
    assert_status(&output, POWER_OFF);
    let lines = lines_after_init(&output);
    assert!(!lines.iter().any(|l| l.starts_with("kestrel-kit: command exited")), "{}", lines.join("\n"));
}

/// Boots the kit under `kestrel vmm` on `transport` with `extra` on the command line, waits for
/// `ready` on the console, presses the power button and returns the rest of the console and the
/// exit status.
fn press_the_button(transport: &str, extra: &str, ready: &str) -> (String, Option<i32>) {
    let kit = kit_available().expect("kit");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let mut child: Child = start_vmm_with(&socket, &["--transport", transport]);
    let watchdog = Watchdog::within(&child, ACPI_LIMIT);
    let boot = serde_json::json!({
        "kernel_image_path": kit.0,
        "initrd_path": kit.1,
        "boot_args": format!("{} {extra}", kit_cmdline()),
    });
    assert_eq!(request(&socket, "PUT", "/boot-source", &boot.to_string()).0, 204);
    assert_eq!(
        request(&socket, "PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 256}"#).0,
        204
    );
    let started = Instant::now();
    assert_eq!(request(&socket, "PUT", "/actions", r#"{"action_type": "InstanceStart"}"#).0, 204);
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut seen = wait_for_line(&mut reader, "kestrel-kit: init started");
    seen.push_str(&wait_for_line(&mut reader, ready));
    eprintln!("tier 3: {ready:?} after {:.1?}; pressing the power button", started.elapsed());
    let pressed = Instant::now();
    assert_eq!(request(&socket, "PUT", "/actions", POWER_BUTTON).0, 204);
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    child.stdout = Some(reader.into_inner());
    drop(watchdog);
    let output = wait_within(child, ACPI_LIMIT);
    eprintln!("tier 3: the VMM ended {:.1?} after the press", pressed.elapsed());
    let all = format!("{seen}{rest}\n--- stderr\n{}", stderr(&output));
    (all, output.status.code())
}

/// A command that would run for ten minutes: the press hangs it up, /init powers off.
#[test]
fn the_power_button_ends_a_running_command_and_powers_off() {
    if kit_available().is_none() {
        return;
    }
    let _serial = one_boot_at_a_time();
    let (out, status) = press_the_button("mmio", "kestrel.run=echo%20working%3Bsleep%20600", "working");
    assert_eq!(status, Some(POWER_OFF), "{out}");
    let after: Vec<&str> = out.lines().map(str::trim).collect();
    let pressed = after.iter().position(|&l| l == "kestrel-kit: power button pressed");
    let exited = after.iter().position(|l| l.starts_with("kestrel-kit: command exited"));
    assert!(matches!((pressed, exited), (Some(p), Some(e)) if p < e), "{out}");
}

/// The interactive shell (no command), on PCI: the press hangs it up, /init powers off.
#[test]
fn the_power_button_ends_the_shell_and_powers_off_on_pci() {
    if kit_available().is_none() {
        return;
    }
    let _serial = one_boot_at_a_time();
    let (out, status) = press_the_button("pci", "", "starting a shell");
    assert_eq!(status, Some(POWER_OFF), "{out}");
    assert!(out.contains("kestrel-kit: power button pressed"), "{out}");
}

/// The stock Debian cloud kernel lists Kestrel's tables in its early boot (it dies later on the
/// nested test host, see `linux.rs`, so the test stops it at console initialisation).
#[test]
fn stock_debian_kernel_prints_the_acpi_tables() {
    if !kvm_available() {
        return;
    }
    let Some(cloud) = kit_path("cloud-vmlinux") else { return };
    let _serial = one_boot_at_a_time();
    eprintln!("tier 3: stock Debian cloud kernel, early ACPI lines");
    let cmdline = "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1 reboot=k noxsave nopv \
                   clearcpuid=308,151,297,580,288,141";
    let mut child = kestrel()
        .arg("run")
        .arg("--kernel")
        .arg(&cloud)
        .args(["--memory", "256M", "--transport", "pci", "--cmdline", cmdline])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kestrel");
    let watchdog = Watchdog::within(&child, ACPI_LIMIT);
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while !seen.contains("printk: console [ttyS0] enabled") {
        line.clear();
        if reader.read_line(&mut line).expect("read guest output") == 0 {
            break;
        }
        seen.push_str(&line);
    }
    // SAFETY: kill with a valid pid and signal number has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    child.stdout = Some(reader.into_inner());
    drop(watchdog);
    wait_within(child, ACPI_LIMIT);
    for expected in [
        "ACPI: RSDP 0x00000000000E0000",
        "ACPI: XSDT",
        "ACPI: FACP",
        "ACPI: DSDT",
        "ACPI: APIC",
        "ACPI: MCFG",
    ] {
        assert!(seen.contains(expected), "no {expected:?} in the early boot:\n{seen}");
    }
}
