//! Tier 2: disk formats and cache modes end to end, with the virtio guest's `blk` test (it
//! writes a pattern into sectors 2-5). The format is the user's: a qcow2 overlay named raw is a
//! raw disk.

mod common;

use common::*;

/// The guest resets the machine when its tests are done (README: exit statuses).
const RESET: i32 = 3;
const FILL: u8 = 0xEE;
const DISK_BYTES: usize = 64 * 1024;

/// The byte the `blk` test writes at `offset` (sectors 2-5), as in tests/virtio.rs.
fn pattern(offset: usize) -> u8 {
    ((offset / 512) * 31 + (offset % 512) * 7 + 3) as u8
}

fn expected_after_blk_test() -> Vec<u8> {
    (0..DISK_BYTES)
        .map(|offset| if (2 * 512..6 * 512).contains(&offset) { pattern(offset) } else { FILL })
        .collect()
}

/// Runs the `blk` test on `disk` (a `--disk` value) and checks the guest saw a working disk.
#[track_caller]
fn blk_test_passes(disk: &str) -> String {
    let output = run_guest(guests::VIRTIO, &["--disk", disk, "--cmdline", "test=blk"]);
    assert_status(&output, RESET);
    let out = stdout(&output);
    for line in
        ["blk: capacity 128 sectors", "blk: wrote and read back sectors 2-5", "blk: flush ok", "blk: ok"]
    {
        assert!(out.lines().any(|l| l == line), "no {line:?} in:\n{out}\n{}", stderr(&output));
    }
    out
}

fn qemu_img() -> Option<std::path::PathBuf> {
    host_tool("qemu-img")
}

/// Named raw (the default), a qcow2 file is a raw disk: its header is data, its backing file
/// is never opened.
#[test]
fn a_qcow2_file_named_raw_is_a_raw_disk() {
    if !kvm_available() {
        return;
    }
    let Some(qemu_img) = qemu_img() else { return };
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.img");
    std::fs::write(&base, vec![FILL; DISK_BYTES]).unwrap();
    let overlay = dir.path().join("overlay.qcow2");
    run_tool(
        &qemu_img,
        &["create", "-q", "-f", "qcow2", "-F", "raw", "-b", path_str(&base), path_str(&overlay)],
    );
    let before = std::fs::read(&overlay).unwrap();
    let output = run_guest(
        guests::VIRTIO,
        &["--disk", &format!("path={}", path_str(&overlay)), "--cmdline", "test=blk"],
    );
    // The file is far smaller than a disk the blk test can use, or not: either way it is raw.
    let sectors = before.len() / 512;
    assert!(stdout(&output).contains(&format!("blk: capacity {sectors} sectors")), "{}", stdout(&output));
}

/// Each cache mode gives the guest a working disk whose writes reach the file.
#[test]
fn every_cache_mode_works() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for cache in ["writeback", "unsafe", "none"] {
        let disk = dir.path().join(format!("{cache}.img"));
        std::fs::write(&disk, vec![FILL; DISK_BYTES]).unwrap();
        let spec = format!("path={},cache={cache}", path_str(&disk));
        let output = run_guest(guests::VIRTIO, &["--disk", &spec, "--cmdline", "test=blk"]);
        if cache == "none" && stderr(&output).contains("does not support O_DIRECT") {
            eprintln!("skipping cache=none: {}", stderr(&output));
            continue;
        }
        blk_test_passes(&spec);
        assert!(std::fs::read(&disk).unwrap() == expected_after_blk_test(), "cache={cache}");
    }
}
