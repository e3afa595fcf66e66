//! Tier 3: the kit's Linux under `kestrel jailer`. The jailed VMM (uid 4321, no capabilities, the
//! jail as its root, in a network namespace of the test's own) boots Linux, which writes to its
//! ext4 disk and pings the host through a tap the jailed user owns; the guest is snapshotted
//! inside the jail and restored in a second jail, where it reads back what it wrote, writes more
//! (the host finds it in the image) and pings again through the same tap.
//!
//! Needs root, the kit and `debugfs`; without them the test skips, except on CI (CI=true).

mod common;

use std::io::{BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use common::api::{request, spawn_vmm};
use common::kit::*;
use common::netns::NetNamespace;
use common::*;

const UID: u32 = 4321;
const GID: u32 = 4322;
const TAP: &str = "kjail0";
const HOST_IP: &str = "10.231.7.1";
const GUEST_IP: &str = "10.231.7.2";

fn script() -> String {
    format!(
        r#"set -e
ip addr add {GUEST_IP}/24 dev eth0
ip link set eth0 up
ping -c2 -W5 {HOST_IP} >/dev/null && echo ping before: ok
mount /dev/vda /mnt
echo before-snapshot >/mnt/before.txt
sync
echo snapshot point
read line
echo disk: $(cat /mnt/before.txt)
echo after-restore >/mnt/after.txt
umount /mnt
ping -c2 -W5 {HOST_IP} >/dev/null && echo ping after: ok"#
    )
}

/// A jailed `kestrel vmm` with its console on stdin/stdout, in the namespace at `netns`.
fn start_jailed(base: &Path, id: &str, netns: &Path) -> Child {
    let mut command = kestrel();
    command
        .args(["jailer", "--id", id, "--exec-file", env!("CARGO_BIN_EXE_kestrel")])
        .args(["--uid", &UID.to_string(), "--gid", &GID.to_string()])
        .arg("--chroot-base-dir")
        .arg(base)
        .arg("--netns")
        .arg(netns)
        .args(["--", "--api-sock", "/run/api.sock", "--serial", "stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    spawn_vmm(command, &jail_root(base, id).join("run/api.sock"))
}

fn jail_root(base: &Path, id: &str) -> PathBuf {
    base.join("kestrel").join(id).join("root")
}

/// Puts a copy of `from` at `/<name>` in the jail, owned by the jailed user.
fn copy_in(from: &Path, root: &Path, name: &str) {
    std::fs::create_dir_all(root).unwrap();
    let to = root.join(name);
    std::fs::copy(from, &to).unwrap();
    std::os::unix::fs::chown(&to, Some(UID), Some(GID)).unwrap();
}

fn ok(socket: &Path, method: &str, path: &str, body: &str) {
    let (status, reply) = request(socket, method, path, body);
    assert_eq!(status, 204, "{method} {path}: {reply}");
}

#[test]
fn jailed_linux_uses_its_disk_and_nic_and_restores_in_another_jail() {
    if !is_root() {
        return;
    }
    let Some(kit) = kit_available() else { return };
    let Some(rootfs) = kit_path("rootfs.ext4") else { return };
    let Some(debugfs) = host_tool("debugfs") else { return };
    let Some(namespace) = NetNamespace::with_tap(TAP, &format!("{HOST_IP}/24")) else { return };
    // The jailed VMM has no CAP_NET_ADMIN: it can only attach to a tap its user owns.
    namespace.ip(&["link", "del", TAP]);
    namespace.ip(&[
        "tuntap",
        "add",
        "dev",
        TAP,
        "mode",
        "tap",
        "user",
        &UID.to_string(),
        "group",
        &GID.to_string(),
    ]);
    namespace.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", TAP]);
    namespace.ip(&["link", "set", TAP, "up"]);
    let netns = Path::new("/var/run/netns").join(namespace.name());
    let _serial = one_boot_at_a_time();
    eprintln!("tier 3: Linux (kit) in a jail: disk, NIC, snapshot and restore in a second jail");

    let base = tempfile::tempdir().unwrap();
    let (first_id, second_id) =
        (format!("linux-a-{}", std::process::id()), format!("linux-b-{}", std::process::id()));
    let first_root = jail_root(base.path(), &first_id);
    copy_in(&kit.0, &first_root, "vmlinux");
    copy_in(&kit.1, &first_root, "initramfs.cpio");
    copy_in(&rootfs, &first_root, "disk.ext4");

    // Boot in the first jail and run the script up to its snapshot point.
    let mut first = start_jailed(base.path(), &first_id, &netns);
    let watchdog = Watchdog::within(&first, LINUX_LIMIT);
    let socket = first_root.join("run/api.sock");
    let status = std::fs::read_to_string(format!("/proc/{}/status", first.id())).unwrap();
    assert!(
        status.contains(&format!("Uid:\t{UID}\t")) && status.contains("CapEff:\t0000000000000000"),
        "{status}"
    );
    let cmdline = format!("{} quiet kestrel.run={}", kit_cmdline(), percent_encode(&script()));
    let boot = format!(
        r#"{{"kernel_image_path": "/vmlinux", "initrd_path": "/initramfs.cpio", "boot_args": "{cmdline}"}}"#
    );
    ok(&socket, "PUT", "/boot-source", &boot);
    ok(&socket, "PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 256}"#);
    let drive = r#"{"drive_id": "root", "path_on_host": "/disk.ext4", "is_root_device": false, "is_read_only": false}"#;
    ok(&socket, "PUT", "/drives/root", drive);
    let nic =
        format!(r#"{{"iface_id": "eth0", "host_dev_name": "{TAP}", "guest_mac": "52:54:00:12:34:99"}}"#);
    ok(&socket, "PUT", "/network-interfaces/eth0", &nic);
    ok(&socket, "PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    let mut console = BufReader::new(first.stdout.take().unwrap());
    let before = wait_for_line(&mut console, "snapshot point");
    assert!(before.lines().any(|l| l.trim() == "ping before: ok"), "{before}");
    ok(&socket, "PATCH", "/vm", r#"{"state": "Paused"}"#);
    ok(&socket, "PUT", "/snapshot/create", r#"{"snapshot_path": "/state", "mem_file_path": "/memory"}"#);
    first.kill().unwrap();
    first.wait().unwrap();
    drop(watchdog);

    // Restore in a second jail, which gets the snapshot and the disk.
    let second_root = jail_root(base.path(), &second_id);
    for name in ["state", "memory", "disk.ext4"] {
        copy_in(&first_root.join(name), &second_root, name);
    }
    let mut second = start_jailed(base.path(), &second_id, &netns);
    let watchdog = Watchdog::within(&second, LINUX_LIMIT);
    let socket = second_root.join("run/api.sock");
    let load = r#"{"snapshot_path": "/state", "mem_backend": {"backend_type": "File", "backend_path": "/memory"},
        "resume_vm": true}"#;
    ok(&socket, "PUT", "/snapshot/load", load);
    second.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let mut after = String::new();
    second.stdout.take().unwrap().read_to_string(&mut after).unwrap();
    let status = second.wait().unwrap();
    let mut log = String::new();
    second.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    drop(watchdog);

    let context =
        format!("--- before the snapshot\n{before}\n--- after the restore\n{after}\n--- VMM log\n{log}");
    let lines: Vec<&str> = after.lines().map(str::trim).collect();
    assert!(lines.contains(&"disk: before-snapshot"), "{context}");
    assert!(lines.contains(&"ping after: ok"), "{context}");
    assert!(lines.contains(&"kestrel-kit: command exited 0"), "{context}");
    assert_eq!(status.code(), Some(0), "the restored guest powers off: {context}");
    let disk = second_root.join("disk.ext4");
    assert_eq!(std::fs::metadata(&disk).unwrap().uid(), UID);
    let written = run_tool(&debugfs, &["-R", "cat /after.txt", path_str(&disk)]);
    assert_eq!(written.trim(), "after-restore", "the file the restored guest wrote");
}
