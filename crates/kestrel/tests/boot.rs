//! Tier 2: the real `kestrel` binary boots the test guests from `guests/` under KVM.

mod common;

use std::io::BufReader;
use std::process::Stdio;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;

/// Exit statuses the README documents.
const POWER_OFF: i32 = 0;
const RESET: i32 = 3;
const TRIPLE_FAULT: i32 = 4;
const VCPU_FAILURE: i32 = 5;
const USER_QUIT: i32 = 6;

/// Usable RAM the e820 map must report for a guest of `memory` bytes below 3 GiB: everything but the
/// EBDA/BIOS hole between 0x9FC00 and 1 MiB.
fn expected_usable(memory: u64) -> u64 {
    0x9_fc00 + (memory - 0x10_0000)
}

#[test]
fn hello_boots_through_the_64bit_entry_and_sees_its_boot_info() {
    if !kvm_available() {
        return;
    }
    let output = run_guest(guests::HELLO, &["--memory", "64M", "--cmdline", "exit=reset answer=42"]);
    assert_status(&output, RESET);
    let out = stdout(&output);
    assert!(out.contains("Hello from the Kestrel test guest (entry: linux64)"), "{out}");
    assert_eq!(line_value(&output, "cmdline: ").as_deref(), Some("exit=reset answer=42"));
    assert_eq!(line_value(&output, "memory: "), Some(expected_usable(64 << 20).to_string()));
    assert_eq!(line_value(&output, "initrd: ").as_deref(), Some("none"));
    assert!(out.contains("exit: reset"), "{out}");
    assert!(stderr(&output).contains("guest reset"), "{}", stderr(&output));
}

#[test]
fn hello_boots_through_the_pvh_entry_and_sees_its_boot_info() {
    if !kvm_available() {
        return;
    }
    let output = run_guest(guests::HELLO_PVH, &["--memory", "48M", "--cmdline", "exit=reset pvh=yes"]);
    assert_status(&output, RESET);
    assert!(stdout(&output).contains("Hello from the Kestrel test guest (entry: pvh)"));
    assert_eq!(line_value(&output, "cmdline: ").as_deref(), Some("exit=reset pvh=yes"));
    assert_eq!(line_value(&output, "memory: "), Some(expected_usable(48 << 20).to_string()));
}

#[test]
fn memory_above_the_mmio_gap_is_reported_to_the_guest() {
    if !kvm_available() {
        return;
    }
    // 3.5 GiB: 3 GiB below the gap, 512 MiB above 4 GiB. The pages are never touched, so the host
    // commits almost nothing.
    let output = run_guest(guests::HELLO, &["--memory", "3584M", "--cmdline", "exit=reset"]);
    assert_status(&output, RESET);
    assert_eq!(line_value(&output, "memory: "), Some(expected_usable(3584 << 20).to_string()));
}

#[test]
fn the_initrd_reaches_the_guest_intact_on_both_entry_paths() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.img");
    let content: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(&initrd, &content).unwrap();
    let expected = format!("{} {:08x}", content.len(), fnv1a32(&content));
    for guest in [guests::HELLO, guests::HELLO_PVH] {
        let output = run_guest(guest, &["--initrd", path_str(&initrd), "--cmdline", "exit=reset"]);
        assert_status(&output, RESET);
        assert_eq!(line_value(&output, "initrd: "), Some(expected.clone()), "{guest}");
    }
}

#[test]
fn hello_boots_as_a_bzimage_through_the_64bit_entry_of_its_setup_header() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.img");
    let content: Vec<u8> = (0..123_457u32).map(|i| (i.wrapping_mul(2_246_822_519) >> 24) as u8).collect();
    std::fs::write(&initrd, &content).unwrap();
    let output = run_guest(
        guests::HELLO_BZIMAGE,
        &["--memory", "96M", "--initrd", path_str(&initrd), "--cmdline", "exit=reset bz=1"],
    );
    assert_status(&output, RESET);
    let out = stdout(&output);
    assert!(out.contains("Hello from the Kestrel test guest (entry: bzimage)"), "{out}");
    assert_eq!(line_value(&output, "cmdline: ").as_deref(), Some("exit=reset bz=1"), "{out}");
    assert_eq!(line_value(&output, "memory: "), Some(expected_usable(96 << 20).to_string()), "{out}");
    let expected_initrd = format!("{} {:08x}", content.len(), fnv1a32(&content));
    assert_eq!(line_value(&output, "initrd: "), Some(expected_initrd), "{out}");
    assert!(out.contains("exit: reset"), "{out}");
}

#[test]
fn the_guest_reads_the_host_time_from_the_rtc() {
    if !kvm_available() {
        return;
    }
    let before = unix_now();
    let output = run_guest(guests::HELLO, &["--cmdline", "exit=reset"]);
    let after = unix_now();
    assert_status(&output, RESET);
    let rtc = line_value(&output, "rtc: ").expect("rtc line");
    let guest_time = parse_utc(&rtc).unwrap_or_else(|| panic!("bad rtc line {rtc:?}"));
    assert!(
        guest_time + 1 >= before && guest_time <= after,
        "guest RTC {rtc} is outside the run [{before}, {after}]"
    );
}

#[test]
fn guest_power_off_exits_zero() {
    if !kvm_available() {
        return;
    }
    let output = run_guest(guests::HELLO, &["--cmdline", "exit=poweroff"]);
    assert_status(&output, POWER_OFF);
    assert!(stdout(&output).contains("exit: poweroff"));
}

#[test]
fn triple_fault_is_reported_with_vcpu_and_rip() {
    if !kvm_available() {
        return;
    }
    let output = run_guest(guests::HELLO, &["--cmdline", "exit=triple-fault"]);
    assert_status(&output, TRIPLE_FAULT);
    let err = stderr(&output);
    assert!(err.contains("vCPU 0 triple-faulted at RIP 0x"), "{err}");
}

#[test]
fn unhandled_mmio_reads_all_ones_is_logged_and_the_guest_goes_on() {
    if !kvm_available() {
        return;
    }
    let output = run_guest(guests::HELLO, &["--cmdline", "exit=unhandled-mmio"]);
    assert_status(&output, RESET);
    assert_eq!(line_value(&output, "mmio read: ").as_deref(), Some("0xffffffff"));
    let err = stderr(&output);
    assert!(err.contains("unhandled MMIO read of 4 bytes at 0xd0000000"), "{err}");
    assert!(err.contains("unhandled MMIO write"), "{err}");
}

#[test]
fn a_vcpu_failure_is_reported_and_does_not_hang_the_vmm() {
    if !kvm_available() {
        return;
    }
    // Executing from guest-physical space with no memory behind it: KVM cannot emulate the fetch.
    let output = run_guest(guests::HELLO, &["--cmdline", "exit=crash", "--cpus", "2"]);
    assert_status(&output, VCPU_FAILURE);
    let err = stderr(&output);
    assert!(err.contains("vCPU 0 failed at RIP 0x"), "{err}");
    assert!(err.contains("KVM_EXIT_INTERNAL_ERROR") || err.contains("unhandled KVM exit"), "{err}");
    assert_eq!(err.lines().filter(|l| l.contains("failed at RIP")).count(), 1, "{err}");
}

#[test]
fn console_input_reaches_the_guest() {
    if !kvm_available() {
        return;
    }
    let mut command = kestrel();
    command.args(["run", "--kernel", guests::HELLO, "--cmdline", "exit=echo"]);
    let output = run_to_end(command, b"hello kestrel\n");
    assert_status(&output, RESET);
    let out = stdout(&output);
    let echoed: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("echo: ")).collect();
    assert_eq!(echoed, ["ready", "hello kestrel"], "{out}");
}

#[test]
fn console_input_longer_than_the_uart_fifo_arrives_whole() {
    if !kvm_available() {
        return;
    }
    // 200 bytes against a 64-byte receive FIFO: the rest must wait for the guest to drain it.
    let line: String = (0..200).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let mut command = kestrel();
    command.args(["run", "--kernel", guests::HELLO, "--cmdline", "exit=echo"]);
    let output = run_to_end(command, format!("{line}\n").as_bytes());
    assert_status(&output, RESET);
    assert!(stdout(&output).contains(&format!("echo: {line}\n")), "{}", stdout(&output));
}

#[test]
fn console_input_can_come_from_a_file() {
    if !kvm_available() {
        return;
    }
    // A regular file cannot be polled; Kestrel reads it as the guest drains its FIFO.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("keys.txt");
    let line: String = (0..150).map(|i| char::from(b'A' + (i % 26) as u8)).collect();
    std::fs::write(&input, format!("{line}\n")).unwrap();
    let output =
        wait_with_limit(spawn_hello(&["--cmdline", "exit=echo"], std::fs::File::open(&input).unwrap()));
    assert_status(&output, RESET);
    assert!(stdout(&output).contains(&format!("echo: {line}\n")), "{}", stdout(&output));
}

#[test]
fn a_stdin_that_cannot_be_polled_is_no_problem() {
    if !kvm_available() {
        return;
    }
    let output = wait_with_limit(spawn_hello(&["--cmdline", "exit=reset"], Stdio::null()));
    assert_status(&output, RESET);
}

#[test]
fn output_to_a_closed_pipe_neither_hangs_nor_crashes() {
    if !kvm_available() {
        return;
    }
    // Like `kestrel run ... 2>&1 | head -1`: the reader goes away, every later write gets EPIPE.
    let mut child = spawn_hello(&["--cmdline", "exit=reset", "--cpus", "2"], Stdio::null());
    drop(child.stdout.take());
    drop(child.stderr.take());
    let output = wait_with_limit(child);
    assert_status(&output, RESET);
}

#[test]
fn ctrl_a_x_quits() {
    if !kvm_available() {
        return;
    }
    let mut command = kestrel();
    command.args(["run", "--kernel", guests::HELLO, "--cmdline", "exit=hang"]);
    let output = run_to_end(command, b"\x01x");
    assert_status(&output, USER_QUIT);
    assert!(stderr(&output).contains("Ctrl-A X"), "{}", stderr(&output));
}

#[test]
fn sigterm_stops_the_vm_with_128_plus_signal() {
    if !kvm_available() {
        return;
    }
    let mut child = spawn_hello(&["--cmdline", "exit=hang", "--cpus", "2"], Stdio::null());
    let watchdog = Watchdog::new(&child);
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    wait_for_line(&mut reader, "exit: hang");
    // SAFETY: kill with a valid pid and signal number has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) }, 0);
    child.stdout = Some(reader.into_inner());
    drop(watchdog);
    let output = wait_with_limit(child);
    assert_status(&output, 128 + libc::SIGTERM);
}

#[test]
fn serial_output_can_go_to_a_file() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("console.log");
    let serial = format!("file:{}", path_str(&log));
    let output = run_guest(guests::HELLO, &["--cmdline", "exit=reset", "--serial", &serial]);
    assert_status(&output, RESET);
    assert!(!stdout(&output).contains("Hello"), "{}", stdout(&output));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("Hello from the Kestrel test guest"), "{logged}");
}

#[test]
fn port_io_exit_loop_runs_to_completion() {
    if !kvm_available() {
        return;
    }
    let output = run_guest(guests::HELLO, &["--cmdline", "exit=reset loops=5000"]);
    assert_status(&output, RESET);
    assert_eq!(line_value(&output, "loops: ").as_deref(), Some("5000"));
}

#[test]
fn every_vcpu_comes_up_and_reports_its_apic_id() {
    if !kvm_available() {
        return;
    }
    for (guest, cpus) in [(guests::SMP, 4u8), (guests::SMP_PVH, 2), (guests::SMP, 1)] {
        let output = run_guest(guest, &["--cpus", &cpus.to_string()]);
        assert_status(&output, RESET);
        let out = stdout(&output);
        assert_eq!(line_value(&output, "mptable: "), Some(format!("{cpus} cpus")), "{out}");
        assert!(out.contains("cpu 0 cpuid ok\n"), "{guest} cpu 0: {out}");
        for id in 1..cpus {
            assert!(out.contains(&format!("cpu {id} online cpuid ok\n")), "{guest} cpu {id}: {out}");
        }
        assert!(!out.contains(&format!("cpu {cpus} online")), "{out}");
        assert_eq!(line_value(&output, "smp: "), Some(format!("{cpus} cpus online")), "{out}");
    }
}

#[test]
fn help_explains_every_run_flag() {
    let mut command = kestrel();
    command.args(["run", "--help"]);
    let output = run_to_end(command, b"");
    assert_status(&output, 0);
    let help = stdout(&output);
    for flag in ["--kernel", "--initrd", "--cmdline", "--cpus", "--memory", "--serial", "Ctrl-A", "Example"] {
        assert!(help.contains(flag), "run --help lacks {flag}:\n{help}");
    }
}

/// Starts the hello guest with `args`, stdout and stderr piped.
fn spawn_hello(args: &[&str], stdin: impl Into<Stdio>) -> std::process::Child {
    kestrel()
        .args(["run", "--kernel", guests::HELLO])
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kestrel")
}

fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |hash, &b| (hash ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Parses "YYYY-MM-DD HH:MM:SS" (UTC) into seconds since the epoch.
fn parse_utc(text: &str) -> Option<u64> {
    let (date, time) = text.trim().split_once(' ')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':').map(|p| p.parse::<i64>());
    let (h, min, s) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    // Days from civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + min * 60 + s).ok()
}
