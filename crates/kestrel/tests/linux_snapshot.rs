//! Tier 3: the kit's Linux is snapshotted mid-script and restored in a fresh `kestrel vmm`, where
//! it goes on: its ext4 disk still mounted (it reads what it wrote before the snapshot and writes
//! more, which the host finds in the image afterwards), and virtio-vsock, whose connections a
//! restore resets, connects to the host again and moves data. The guest waits for a line on its
//! console at the snapshot point, so the host knows where the snapshot falls. Once per transport:
//! virtio-mmio devices interrupt through the IOAPIC, virtio-pci ones through MSI-X, and the PCI
//! devices' BARs and MSI-X tables must come back where the guest put them.
//!
//! Needs the kit and `debugfs`; without them the test skips, except on CI (CI=true).

mod common;

use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::process::Child;
use std::thread;

use common::api::{request, start_vmm_with};
use common::kit::*;
use common::*;

const HOST_PORT: u32 = 6000;
const VSOCK_BYTES: usize = 64 * 1024;

fn script() -> String {
    format!(
        r#"set -e
mount /dev/vda /mnt
echo before-snapshot >/mnt/before.txt
sync
echo snapshot point
read line
echo disk: $(cat /mnt/before.txt)
echo after-restore >/mnt/after.txt
umount /mnt
vsock-test connect {HOST_PORT} {VSOCK_BYTES}"#
    )
}

/// Starts `kestrel vmm` with the guest console on its stdin and stdout.
fn start_vmm(socket: &std::path::Path, transport: &str) -> Child {
    start_vmm_with(socket, &["--serial", "stdio", "--transport", transport])
}

fn ok(socket: &std::path::Path, method: &str, path: &str, body: &str) {
    let (status, reply) = request(socket, method, path, body);
    assert_eq!(status, 204, "{method} {path}: {reply}");
}

#[test]
fn linux_goes_on_after_a_restore_with_its_disk_and_vsock_over_mmio() {
    linux_goes_on_after_a_restore_with_its_disk_and_vsock("mmio");
}

#[test]
fn linux_goes_on_after_a_restore_with_its_disk_and_vsock_over_pci() {
    linux_goes_on_after_a_restore_with_its_disk_and_vsock("pci");
}

fn linux_goes_on_after_a_restore_with_its_disk_and_vsock(transport: &str) {
    let Some(kit) = kit_available() else { return };
    let Some(rootfs) = kit_path("rootfs.ext4") else { return };
    let Some(debugfs) = host_tool("debugfs") else { return };
    let _serial = one_boot_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.ext4");
    std::fs::copy(&rootfs, &disk).unwrap();
    let uds = dir.path().join("vsock");
    let (state, memory) = (dir.path().join("state"), dir.path().join("memory"));

    // Boot through the API and run the script up to its snapshot point.
    let socket = dir.path().join("first.sock");
    let mut first = start_vmm(&socket, transport);
    let _watchdog = Watchdog::within(&first, LINUX_LIMIT);
    let cmdline = format!("{} quiet kestrel.run={}", kit_cmdline(), percent_encode(&script()));
    let boot = format!(
        r#"{{"kernel_image_path": "{}", "initrd_path": "{}", "boot_args": "{cmdline}"}}"#,
        kit.0.display(),
        kit.1.display()
    );
    ok(&socket, "PUT", "/boot-source", &boot);
    // Two vCPUs: the second one's state (an AP, its own local APIC and TSC) must come back too.
    ok(&socket, "PUT", "/machine-config", r#"{"vcpu_count": 2, "mem_size_mib": 256}"#);
    let drive = format!(
        r#"{{"drive_id": "root", "path_on_host": "{}", "is_root_device": false, "is_read_only": false}}"#,
        disk.display()
    );
    ok(&socket, "PUT", "/drives/root", &drive);
    ok(&socket, "PUT", "/vsock", &format!(r#"{{"guest_cid": 3, "uds_path": "{}"}}"#, uds.display()));
    ok(&socket, "PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    let mut console = BufReader::new(first.stdout.take().unwrap());
    let before = wait_for_line(&mut console, "snapshot point");
    ok(&socket, "PATCH", "/vm", r#"{"state": "Paused"}"#);
    let create =
        format!(r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#, state.display(), memory.display());
    ok(&socket, "PUT", "/snapshot/create", &create);
    first.kill().unwrap();
    first.wait().unwrap();
    drop(_watchdog);

    // The host side of the guest's vsock connection after the restore.
    let _ = std::fs::remove_file(&uds);
    let listener = UnixListener::bind(format!("{}_{HOST_PORT}", uds.display())).unwrap();
    let host = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut received = Vec::new();
        stream.read_to_end(&mut received).unwrap();
        let sum: u64 = received.iter().map(|&b| u64::from(b)).sum();
        // The guest reads the reply before it reports success; a failed write shows there.
        let _ = writeln!(stream, "host read {} bytes, sum {sum}", received.len());
        (received.len(), sum)
    });

    // Restore in a fresh process and let the script go on.
    let socket = dir.path().join("second.sock");
    let mut second = start_vmm(&socket, transport);
    let watchdog = Watchdog::within(&second, LINUX_LIMIT);
    let load = format!(
        r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "File", "backend_path": "{}"}},
            "resume_vm": true}}"#,
        state.display(),
        memory.display()
    );
    ok(&socket, "PUT", "/snapshot/load", &load);
    second.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let mut after = String::new();
    second.stdout.take().unwrap().read_to_string(&mut after).unwrap();
    let status = second.wait().unwrap();
    let mut log = String::new();
    second.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    drop(watchdog);

    let expected_sum: u64 = (0..VSOCK_BYTES).map(|i| u64::from((i * 7) as u8)).sum();
    let lines: Vec<&str> = after.lines().map(str::trim).collect();
    let context =
        format!("--- before the snapshot\n{before}\n--- after the restore\n{after}\n--- VMM log\n{log}");
    assert_eq!(
        host.join().unwrap(),
        (VSOCK_BYTES, expected_sum),
        "the vsock data after the restore: {context}"
    );
    assert!(lines.contains(&"disk: before-snapshot"), "{context}");
    let reply = format!("vsock-test: host replied: host read {VSOCK_BYTES} bytes, sum {expected_sum}");
    assert!(lines.contains(&reply.as_str()), "{context}");
    assert!(lines.contains(&"kestrel-kit: command exited 0"), "{context}");
    assert_eq!(status.code(), Some(0), "the restored guest powers off: {context}");
    let written = run_tool(&debugfs, &["-R", "cat /after.txt", path_str(&disk)]);
    assert_eq!(written.trim(), "after-restore", "the file the restored guest wrote");
}
