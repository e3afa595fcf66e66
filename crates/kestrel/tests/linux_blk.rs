//! Tier 3: Linux from the guest kit drives Kestrel's virtio-blk with its real virtio_blk driver,
//! and the host checks the disk image afterwards with `qemu-img compare`. (The ext4 and read-only
//! disks are part of the one boot per transport in `linux_devices.rs`.)
//!
//! The test boots Linux once (~15 s on a nested-KVM host). Besides the kit it needs `qemu-img`
//! (qemu-utils); without it it skips, except on CI (CI=true), where it fails.

mod common;

use std::time::Instant;

use common::kit::*;
use common::*;

const POWER_OFF: i32 = 0;

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
