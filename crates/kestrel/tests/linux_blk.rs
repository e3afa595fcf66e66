//! Tier 3: Linux from the guest kit drives Kestrel's virtio-blk with its real virtio_blk driver,
//! and the host checks the disk images afterwards (debugfs, e2fsck, qemu-img compare).
//!
//! Each test boots Linux once (~25 s on a nested-KVM host). Besides the kit they need e2fsprogs
//! (`debugfs`, `e2fsck`; kit/build.sh installs it) and `qemu-img` (qemu-utils); without them they
//! skip, except on CI (CI=true), where they fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::kit::*;
use common::*;

const POWER_OFF: i32 = 0;

/// The host tool `name`, or `None` (the test skips; on CI it fails).
fn host_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .chain(["/sbin", "/usr/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|path| path.is_file());
    if found.is_none() {
        let message = format!("{name} is not installed");
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{message}; scripts/install-prerequisites installs it");
        }
        eprintln!("skipping: {message}");
    }
    found
}

/// Runs a host tool and returns its stdout, failing the test with its output if it fails.
fn run_tool(tool: &Path, args: &[&str]) -> String {
    let output = Command::new(tool).args(args).output().unwrap_or_else(|e| panic!("run {tool:?}: {e}"));
    assert!(
        output.status.success(),
        "{tool:?} {args:?} failed ({})\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

#[test]
fn linux_writes_a_file_to_an_ext4_disk_and_cannot_change_a_read_only_one() {
    let Some(kit) = kit_available() else { return };
    let Some(rootfs) = kit_path("rootfs.ext4") else { return };
    let (Some(debugfs), Some(e2fsck)) = (host_tool("debugfs"), host_tool("e2fsck")) else { return };
    let _serial = one_boot_at_a_time();
    eprintln!("tier 3: Linux (kit) mounts, writes and unmounts an ext4 virtio-blk disk; a read-only one");
    // Copies: the cached image is shared by every test and must never change.
    let dir = tempfile::tempdir().unwrap();
    let writable = dir.path().join("rw.ext4");
    let read_only = dir.path().join("ro.ext4");
    std::fs::copy(&rootfs, &writable).unwrap();
    std::fs::copy(&rootfs, &read_only).unwrap();
    let marker = "written-by-the-guest-through-virtio-blk-6d1c";
    let script = format!(
        "set -e\n\
         mkdir -p /mnt/rw /mnt/ro\n\
         mount /dev/vda /mnt/rw\n\
         echo \"rw: $(cat /mnt/rw/hello.txt)\"\n\
         echo {marker} > /mnt/rw/new.txt\n\
         umount /mnt/rw\n\
         echo \"ro flag: $(cat /sys/block/vdb/ro)\"\n\
         mount -o ro /dev/vdb /mnt/ro\n\
         echo \"ro: $(cat /mnt/ro/hello.txt)\"\n\
         umount /mnt/ro\n\
         if dd if=/dev/zero of=/dev/vdb bs=512 count=1 conv=fsync; then echo 'raw write: accepted'; \
         else echo 'raw write: refused'; fi\n"
    );
    let mut command = linux_script_command(&kit, &script);
    command.args(["--disk", &format!("path={}", path_str(&writable))]);
    command.args(["--disk", &format!("path={},readonly=on", path_str(&read_only))]);
    let started = Instant::now();
    let output = run_to_end_within(command, b"", LINUX_LIMIT);
    eprintln!("tier 3: booted, used the disks and powered off in {:.1?}", started.elapsed());
    assert_status(&output, POWER_OFF);
    assert_command_exited(&output, 0);
    let lines = lines_after_init(&output);
    for expected in [
        "rw: hello from the kestrel rootfs",
        "ro flag: 1",
        "ro: hello from the kestrel rootfs",
        "raw write: refused",
    ] {
        assert!(lines.iter().any(|l| l == expected), "no {expected:?} line:\n{}", stdout(&output));
    }

    let written = run_tool(&debugfs, &["-R", "cat /new.txt", path_str(&writable)]);
    assert_eq!(written.trim(), marker, "the file the guest wrote, read on the host with debugfs");
    run_tool(&e2fsck, &["-fn", path_str(&writable)]);
    assert!(
        std::fs::read(&read_only).unwrap() == std::fs::read(&rootfs).unwrap(),
        "the read-only disk changed"
    );
}

#[test]
fn linux_raw_writes_and_discards_give_the_expected_image() {
    let Some(kit) = kit_available() else { return };
    let Some(qemu_img) = host_tool("qemu-img") else { return };
    let _serial = one_boot_at_a_time();
    eprintln!("tier 3: Linux (kit) writes a pattern to a raw virtio-blk disk and discards a range");
    const DISK_BYTES: usize = 4 << 20;
    const PATTERN_OFFSET: usize = 5 * 4096;
    const DISCARDED: std::ops::Range<usize> = (1 << 20)..(2 << 20);
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("data.raw");
    // Not sparse, and not zero: untouched and discarded ranges are then told apart.
    std::fs::write(&disk, vec![0x5A; DISK_BYTES]).unwrap();
    let script = format!(
        "set -e\n\
         echo \"serial: $(cat /sys/block/vda/serial)\"\n\
         seq 1 20000 > /tmp/pattern\n\
         dd if=/tmp/pattern of=/dev/vda bs=4096 seek={} conv=fsync\n\
         blkdiscard -o {} -l {} /dev/vda\n\
         sync\n",
        PATTERN_OFFSET / 4096,
        DISCARDED.start,
        DISCARDED.len()
    );
    let mut command = linux_script_command(&kit, &script);
    command.args(["--disk", &format!("path={},id=kestrel-raw-disk", path_str(&disk))]);
    let started = Instant::now();
    let output = run_to_end_within(command, b"", LINUX_LIMIT);
    eprintln!("tier 3: booted, wrote, discarded and powered off in {:.1?}", started.elapsed());
    assert_status(&output, POWER_OFF);
    assert_command_exited(&output, 0);
    assert!(
        lines_after_init(&output).iter().any(|l| l == "serial: kestrel-raw-disk"),
        "GET_ID did not give the disk's id:\n{}",
        stdout(&output)
    );

    let mut expected = vec![0x5A; DISK_BYTES];
    let pattern: String = (1..=20000).map(|n| format!("{n}\n")).collect();
    expected[PATTERN_OFFSET..PATTERN_OFFSET + pattern.len()].copy_from_slice(pattern.as_bytes());
    expected[DISCARDED].fill(0);
    let expected_path = dir.path().join("expected.raw");
    std::fs::write(&expected_path, &expected).unwrap();
    run_tool(&qemu_img, &["compare", "-f", "raw", "-F", "raw", path_str(&expected_path), path_str(&disk)]);
}
