//! Tier 2: disk formats and cache modes end to end. The virtio guest's `blk` test writes a
//! pattern into sectors 2-5 of a qcow2 overlay over a raw base; afterwards `qemu-img check`
//! finds the overlay clean, its contents are the base's with the pattern, and the base is
//! unchanged. The format is the user's: the same overlay named raw is a raw disk.

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

/// Runs the `blk` test on `disk` (a `--disk` value) and checks the guest saw a working disk, with
/// a flush that works.
#[track_caller]
fn blk_test_passes(disk: &str) -> String {
    blk_test_passes_offering_flush(disk, true)
}

/// [`blk_test_passes`], with the device offering a flush or not (`cache=unsafe`, as
/// Firecracker's `Unsafe`, offers none, and the guest then sends none).
#[track_caller]
fn blk_test_passes_offering_flush(disk: &str, flush: bool) -> String {
    let output = run_guest(guests::VIRTIO, &["--disk", disk, "--cmdline", "test=blk"]);
    assert_status(&output, RESET);
    let out = stdout(&output);
    for line in ["blk: capacity 128 sectors", "blk: wrote and read back sectors 2-5", "blk: ok"] {
        assert!(out.lines().any(|l| l == line), "no {line:?} in:\n{out}\n{}", stderr(&output));
    }
    assert_eq!(out.lines().any(|l| l == "blk: flush ok"), flush, "flush offered and used:\n{out}");
    out
}

fn qemu_img() -> Option<std::path::PathBuf> {
    host_tool("qemu-img")
}

/// A raw base of [`FILL`] bytes and a qcow2 overlay over it, made by qemu-img in `dir`: (qemu-img,
/// base, overlay). `None` (the test skips) without KVM or qemu-img.
fn base_and_overlay(
    dir: &std::path::Path,
) -> Option<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)> {
    if !kvm_available() {
        return None;
    }
    let qemu_img = qemu_img()?;
    let base = dir.join("base.img");
    std::fs::write(&base, vec![FILL; DISK_BYTES]).unwrap();
    let overlay = dir.join("overlay.qcow2");
    run_tool(
        &qemu_img,
        &["create", "-q", "-f", "qcow2", "-F", "raw", "-b", path_str(&base), path_str(&overlay)],
    );
    Some((qemu_img, base, overlay))
}

#[test]
fn a_guest_writes_a_qcow2_overlay_that_qemu_img_finds_clean() {
    let dir = tempfile::tempdir().unwrap();
    let Some((qemu_img, base, overlay)) = base_and_overlay(dir.path()) else { return };
    let overlay_text = path_str(&overlay);

    blk_test_passes(&format!("path={overlay_text},format=qcow2,cache=none"));

    let check =
        std::process::Command::new(&qemu_img).args(["check", "-f", "qcow2", overlay_text]).output().unwrap();
    assert!(check.status.success(), "qemu-img check: {}{}", stdout(&check), stderr(&check));
    assert!(stdout(&check).contains("No errors were found on the image."), "{}", stdout(&check));
    let flat = dir.path().join("flat.img");
    run_tool(&qemu_img, &["convert", "-f", "qcow2", "-O", "raw", overlay_text, path_str(&flat)]);
    assert!(std::fs::read(&flat).unwrap() == expected_after_blk_test(), "the overlay's contents");
    assert!(std::fs::read(&base).unwrap().iter().all(|&b| b == FILL), "the base changed");

    // backing=off refuses the overlay, naming it.
    let output =
        run_guest(guests::VIRTIO, &["--disk", &format!("path={overlay_text},format=qcow2,backing=off")]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains(&format!("cannot open {overlay_text} as qcow2")), "{}", stderr(&output));
}

/// Named raw (the default), a qcow2 file is a raw disk: its header is data, its backing file
/// is never opened.
#[test]
fn a_qcow2_file_named_raw_is_a_raw_disk() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_, _, overlay)) = base_and_overlay(dir.path()) else { return };
    let before = std::fs::read(&overlay).unwrap();
    let output = run_guest(
        guests::VIRTIO,
        &["--disk", &format!("path={}", path_str(&overlay)), "--cmdline", "test=blk"],
    );
    // The file is far smaller than a disk the blk test can use, or not: either way it is raw.
    let sectors = before.len() / 512;
    assert!(stdout(&output).contains(&format!("blk: capacity {sectors} sectors")), "{}", stdout(&output));
}

/// Each cache mode gives the guest a working disk whose writes reach the file. The images are on
/// the build's disk, not /tmp, which may be a tmpfs that refuses O_DIRECT.
#[test]
fn every_cache_mode_works() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for cache in ["writeback", "unsafe", "none"] {
        let disk = dir.path().join(format!("{cache}.img"));
        std::fs::write(&disk, vec![FILL; DISK_BYTES]).unwrap();
        blk_test_passes_offering_flush(&format!("path={},cache={cache}", path_str(&disk)), cache != "unsafe");
        assert!(std::fs::read(&disk).unwrap() == expected_after_blk_test(), "cache={cache}");
    }
}

/// `PATCH /drives` on a qcow2 drive opens the new file as qcow2 too (the drive keeps its
/// format): the guest's `blk_swap` test sees the new image's virtual size and contents, not its
/// file's.
#[test]
fn a_qcow2_drive_given_a_new_file_opens_it_as_qcow2() {
    use common::api::{request, start_vmm};
    use std::io::{BufReader, Read};
    if !kvm_available() {
        return;
    }
    let Some(qemu_img) = qemu_img() else { return };
    let dir = tempfile::tempdir().unwrap();
    let image = |name: &str, text: &str, sectors: usize| {
        let raw = dir.path().join(format!("{name}.raw"));
        let mut bytes = vec![0u8; sectors * 512];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        std::fs::write(&raw, bytes).unwrap();
        let qcow2 = dir.path().join(format!("{name}.qcow2"));
        run_tool(&qemu_img, &["convert", "-f", "raw", "-O", "qcow2", path_str(&raw), path_str(&qcow2)]);
        path_str(&qcow2).to_owned()
    };
    let (first, second) = (image("first", "the first disk", 128), image("second", "the second disk", 256));
    let socket = dir.path().join("api.sock");
    let mut child = start_vmm(&socket);
    let watchdog = Watchdog::new(&child);
    let boot = format!(r#"{{"kernel_image_path": "{}", "boot_args": "test=blk_swap"}}"#, guests::VIRTIO);
    assert_eq!(request(&socket, "PUT", "/boot-source", &boot).0, 204);
    let drive = format!(
        r#"{{"drive_id": "data", "path_on_host": "{first}", "is_root_device": false, "is_read_only": false,
            "x-kestrel": {{"format": "qcow2"}}}}"#
    );
    assert_eq!(request(&socket, "PUT", "/drives/data", &drive).0, 204);
    assert_eq!(request(&socket, "PUT", "/actions", r#"{"action_type": "InstanceStart"}"#).0, 204);
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut out = wait_for_line(&mut reader, "blk_swap: waiting for a new disk");
    assert!(out.contains("blk_swap: capacity 128 sectors, sector 0 says the first disk\n"), "{out}");
    let update = format!(r#"{{"drive_id": "data", "path_on_host": "{second}"}}"#);
    assert_eq!(request(&socket, "PATCH", "/drives/data", &update).0, 204);
    reader.read_to_string(&mut out).unwrap();
    drop(watchdog);
    assert_status(&wait_with_limit(child), RESET);
    assert!(out.contains("blk_swap: capacity 256 sectors, sector 0 says the second disk\n"), "{out}");
    assert!(out.contains("blk_swap: ok"), "{out}");
}
