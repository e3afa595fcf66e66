//! Tier 3: Linux from the guest kit on qcow2 disks, checked afterwards with QEMU's own tools.
//!
//! One boot, two disks:
//! - `vda` is a thin qcow2 overlay over the kit's ext4 root filesystem (a raw base). The guest
//!   mounts it, writes files and unmounts; the host then finds the overlay clean by
//!   `qemu-img check`, the filesystem clean by `e2fsck`, the new file in it, and the base unchanged.
//! - `vdb` is an empty thin qcow2 image. The guest writes 64 KiB blocks to it, each synced
//!   (`conv=fsync`: a virtio-blk flush) before it says so, and the host kills the VMM with SIGKILL
//!   while it is writing. `qemu-img check` must then find no corruption (leaked clusters are
//!   allowed: a crash may leak, never corrupt), and every block the guest said was flushed must
//!   read back.
//!
//! The boot takes ~15-30 s on a nested-KVM host. Needs the kit, `qemu-img`, `e2fsck`, `debugfs`;
//! without them it skips, except on CI (CI=true), where it fails.

mod common;

use std::io::BufReader;
use std::process::{Command, Stdio};

use common::kit::*;
use common::*;

/// Blocks the guest says it flushed before the host kills the VMM.
const FLUSHED_BEFORE_KILL: usize = 12;
const BLOCK: usize = 64 * 1024;
const MARKER: &str = "written-through-a-qcow2-overlay";

fn script() -> String {
    format!(
        "set -e\n\
         mount /dev/vda /mnt\n\
         echo {MARKER} >/mnt/qcow2.txt\n\
         dd if=/dev/urandom of=/mnt/bulk bs=64k count=8 2>/dev/null\n\
         umount /mnt\n\
         echo overlay done\n\
         i=1\n\
         while [ $i -le 1000 ]; do\n\
           yes $i | head -c {BLOCK} >/tmp/block\n\
           dd if=/tmp/block of=/dev/vdb bs={BLOCK} seek=$i count=1 conv=fsync 2>/dev/null\n\
           echo flushed $i\n\
           i=$((i+1))\n\
         done\n"
    )
}

/// The block the guest writes at index `i`: `yes i` cut to 64 KiB.
fn expected_block(i: usize) -> Vec<u8> {
    format!("{i}\n").into_bytes().into_iter().cycle().take(BLOCK).collect()
}

#[test]
fn linux_on_qcow2_leaves_images_qemu_img_finds_clean_even_after_a_crash() {
    let Some(kit) = kit_available() else { return };
    let Some(rootfs) = kit_path("rootfs.ext4") else { return };
    let (Some(qemu_img), Some(e2fsck), Some(debugfs)) =
        (host_tool("qemu-img"), host_tool("e2fsck"), host_tool("debugfs"))
    else {
        return;
    };
    let _serial = one_boot_at_a_time();
    eprintln!(
        "tier 3: Linux writes ext4 into a qcow2 overlay, then is killed while writing a second qcow2 disk"
    );
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    std::fs::copy(&rootfs, &base).unwrap();
    let base_before = std::fs::read(&base).unwrap();
    let overlay = dir.path().join("overlay.qcow2");
    run_tool(
        &qemu_img,
        &["create", "-q", "-f", "qcow2", "-b", path_str(&base), "-F", "raw", path_str(&overlay)],
    );
    let crash = dir.path().join("crash.qcow2");
    run_tool(&qemu_img, &["create", "-q", "-f", "qcow2", path_str(&crash), "128M"]);

    let mut command = linux_script_command(&kit, &script());
    command
        .args(["--disk", &format!("path={},format=qcow2", path_str(&overlay))])
        .args(["--disk", &format!("path={},format=qcow2", path_str(&crash))])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let watchdog = Watchdog::within(&child, LINUX_LIMIT);
    let mut console = BufReader::new(child.stdout.take().unwrap());
    wait_for_child_line(&mut console, "overlay done", &mut child);
    wait_for_child_line(&mut console, &format!("flushed {FLUSHED_BEFORE_KILL}"), &mut child);
    // Mid-write: the guest goes on writing and flushing as fast as it can.
    child.kill().unwrap();
    child.wait().unwrap();
    drop(watchdog);

    // The overlay: clean, with the guest's file, over an unchanged base.
    run_tool(&qemu_img, &["check", "-f", "qcow2", path_str(&overlay)]);
    assert!(std::fs::read(&base).unwrap() == base_before, "the base image was written");
    let flat = dir.path().join("overlay-flat.raw");
    run_tool(&qemu_img, &["convert", "-f", "qcow2", "-O", "raw", path_str(&overlay), path_str(&flat)]);
    run_tool(&e2fsck, &["-fn", path_str(&flat)]);
    let file = run_tool(&debugfs, &["-R", "cat /qcow2.txt", path_str(&flat)]);
    assert_eq!(file.trim(), MARKER);

    // The crashed disk: no corruption (exit 0, or 3 for leaks only), every flushed block there.
    let check = Command::new(&qemu_img).args(["check", "-f", "qcow2", path_str(&crash)]).output().unwrap();
    assert!(
        matches!(check.status.code(), Some(0) | Some(3)),
        "qemu-img check found corruption after the crash ({}):\n{}{}",
        check.status,
        stdout(&check),
        stderr(&check)
    );
    let crash_flat = dir.path().join("crash-flat.raw");
    run_tool(&qemu_img, &["convert", "-f", "qcow2", "-O", "raw", path_str(&crash), path_str(&crash_flat)]);
    let contents = std::fs::read(&crash_flat).unwrap();
    for i in 1..=FLUSHED_BEFORE_KILL {
        assert!(
            contents[i * BLOCK..(i + 1) * BLOCK] == expected_block(i)[..],
            "block {i} was flushed before the kill but is not on the disk"
        );
    }
}
