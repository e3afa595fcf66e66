//! `storage::qcow2::check` finds what `qemu-img check` finds on hand-damaged images, and its
//! repair leaves an image qemu-img finds clean. Under CI=true a missing qemu-img fails.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use storage::qcow2::check::{self, CheckReport};

mod common;
use common::{have_qemu_img, qemu_img, qemu_img_status, s};

/// qemu-img check's (exit status, corruptions, leaks).
fn qemu_check(path: &Path) -> (i32, u64, u64) {
    let (status, output) = qemu_img_status(&["check", "--output", "json", s(path)]);
    let json: serde_json::Value = serde_json::from_str(&output).unwrap();
    let get = |key: &str| json.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
    (status, get("corruptions"), get("leaks"))
}

fn kestrel_check(path: &Path) -> CheckReport {
    check::check(&std::fs::File::open(path).unwrap()).unwrap()
}

fn be64(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// A 1 MiB v3 image with 4 KiB clusters and its first 64 KiB written by qemu-img; returns its
/// path and (refcount block, L2 table, first data cluster) offsets.
fn image(dir: &Path, name: &str) -> (PathBuf, u64, u64, u64) {
    let raw = dir.join("data.raw");
    std::fs::write(&raw, vec![0x5au8; 65536]).unwrap();
    let path = dir.join(name);
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=4096",
        raw.to_str().unwrap(),
        path.to_str().unwrap(),
    ]);
    qemu_img(&["resize", "-f", "qcow2", path.to_str().unwrap(), "1M"]);
    let bytes = std::fs::read(&path).unwrap();
    let reftable = be64(&bytes, 48) as usize;
    let l1 = be64(&bytes, 40) as usize;
    let refblock = be64(&bytes, reftable) & !0x1ff;
    let l2 = be64(&bytes, l1) & 0x00ff_ffff_ffff_fe00;
    let data = be64(&bytes, l2 as usize) & 0x00ff_ffff_ffff_fe00;
    (path, refblock, l2, data)
}

fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    OpenOptions::new().write(true).open(path).unwrap().write_all_at(bytes, offset).unwrap();
}

/// Both tools agree on the damage; Kestrel's repair leaves it clean for qemu-img.
fn agree_and_repair(path: &Path, expect: (i32, u64, u64)) {
    let ours = kestrel_check(path);
    assert_eq!(qemu_check(path), expect, "qemu-img's view of {}", path.display());
    assert_eq!((ours.exit_code(), ours.corruptions, ours.leaks), expect, "{:#?}", ours.messages);
    let file = OpenOptions::new().read(true).write(true).open(path).unwrap();
    let repaired = check::repair(&file).unwrap();
    assert_eq!(repaired.repaired.unwrap().corruptions, expect.1);
    assert_eq!(
        (repaired.exit_code(), repaired.corruptions, repaired.leaks),
        (0, 0, 0),
        "{:#?}",
        repaired.messages
    );
    drop(file);
    assert_eq!(qemu_check(path), (0, 0, 0), "qemu-img after Kestrel's repair");
}

#[test]
fn a_clean_image_is_clean_for_both() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (path, ..) = image(dir.path(), "clean.qcow2");
    let ours = kestrel_check(&path);
    assert_eq!((ours.exit_code(), ours.corruptions, ours.leaks), (0, 0, 0), "{:#?}", ours.messages);
    assert_eq!(ours.allocated_clusters, 16);
    assert_eq!(ours.total_clusters, 256);
    assert_eq!(ours.image_end_offset, std::fs::metadata(&path).unwrap().len());
}

#[test]
fn a_used_cluster_with_refcount_zero_is_a_corruption() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (path, refblock, _, data) = image(dir.path(), "zeroed.qcow2");
    patch(&path, refblock + data / 4096 * 2, &[0, 0]);
    // The refcount (0 < 1 reference) and the COPIED flag (set, refcount not 1).
    agree_and_repair(&path, (2, 2, 0));
}

#[test]
fn an_l2_entry_past_the_end_is_a_corruption() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (path, _, l2, _) = image(dir.path(), "past.qcow2");
    patch(&path, l2, &(0x8000_0001_0000_0000u64).to_be_bytes());
    // The reference past the end and its COPIED flag; the cluster it pointed to leaks.
    agree_and_repair(&path, (2, 2, 1));
}

#[test]
fn a_leaked_cluster_is_a_leak() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (path, refblock, ..) = image(dir.path(), "leak.qcow2");
    let len = std::fs::metadata(&path).unwrap().len();
    OpenOptions::new().write(true).open(&path).unwrap().set_len(len + 8 * 4096).unwrap();
    patch(&path, refblock + (len / 4096 + 3) * 2, &[0, 1]);
    agree_and_repair(&path, (3, 0, 1));
}

#[test]
fn an_unaligned_l2_entry_and_reserved_bits_are_corruptions() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (path, _, l2, data) = image(dir.path(), "unaligned.qcow2");
    patch(&path, l2, &((1u64 << 63) | (data + 0x200)).to_be_bytes());
    // The misaligned entry, and the next cluster counted twice through it.
    agree_and_repair(&path, (2, 2, 0));
    let (path, _, l2, _) = image(dir.path(), "reserved.qcow2");
    let bytes = std::fs::read(&path).unwrap();
    let l1 = be64(&bytes, 40);
    patch(&path, l1, &((1u64 << 63) | l2 | 0x10).to_be_bytes());
    agree_and_repair(&path, (2, 1, 0));
}

#[test]
fn two_entries_sharing_a_cluster_are_a_corruption_and_a_leak() {
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (path, _, l2, data) = image(dir.path(), "overlap.qcow2");
    // The second guest cluster now maps onto the first's host cluster; its own leaks.
    patch(&path, l2 + 8, &((1u64 << 63) | data).to_be_bytes());
    agree_and_repair(&path, (2, 1, 1));
}
