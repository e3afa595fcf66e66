//! The image tool's operations against qemu-img: what Kestrel writes, qemu-img reads as clean
//! and equal; what they report agrees. Under CI=true a missing qemu-img fails.

use std::fs::OpenOptions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use storage::image::{
    self, ConvertOptions, CreateOptions, Format, ImageError, Preallocation, Progress, RebaseOptions,
};
use storage::lock::{self, Access};
use storage::qcow2::{self, Qcow2Options};
use storage::{DiskBackend, DiskBackendExt};

mod common;
use common::{have_qemu_img, qemu_img, s, serial};

fn assert_clean(path: &Path) -> String {
    let out = qemu_img(&["check", s(path)]);
    assert!(out.contains("No errors were found on the image."), "{}: {out}", path.display());
    out
}

/// Half compressible text, half noise, with holes.
fn content(size: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; size];
    let mut state = 0x1234_5678u32;
    for (i, byte) in bytes.iter_mut().enumerate() {
        let block = i / 65536;
        *byte = match block % 4 {
            0 => b"kestrel qcow2 "[i % 14],
            1 => {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            }
            2 => 0,
            _ => (i / 512) as u8,
        };
    }
    bytes
}

fn hidden() -> Progress {
    Progress::hidden()
}

fn write_through_kestrel(path: &Path, data: &[u8], offset: u64) {
    let file = OpenOptions::new().read(true).write(true).open(path).unwrap();
    lock::lock(&file, Access::Write).unwrap();
    let disk = qcow2::open(file, path, &Qcow2Options { writable: true, direct: false, allow_backing: true })
        .unwrap();
    disk.write_at(data, offset).unwrap();
    disk.flush().unwrap();
}

#[test]
fn convert_c_output_is_clean_compressed_and_equal_at_every_cluster_size() {
    let _serial = serial();
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("source.raw");
    std::fs::write(&raw, content(5 << 20)).unwrap();
    for cluster_size in [4096u64, 65536, 2 << 20] {
        let target = dir.path().join(format!("c{cluster_size}.qcow2"));
        let options = ConvertOptions {
            source_format: Some(Format::Raw),
            target_format: Format::Qcow2,
            compress: true,
            cluster_size: Some(cluster_size),
            force_share: false,
        };
        image::convert(&raw, &target, &options, &hidden()).unwrap();
        let check = assert_clean(&target);
        assert!(!check.contains(" 0.00% compressed"), "{cluster_size}: nothing compressed: {check}");
        qemu_img(&["compare", "-f", "raw", "-F", "qcow2", s(&raw), s(&target)]);
        assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o600);
        // And back to raw through Kestrel.
        let back = dir.path().join("back.raw");
        let options = ConvertOptions {
            source_format: None,
            target_format: Format::Raw,
            compress: false,
            cluster_size: None,
            force_share: false,
        };
        image::convert(&target, &back, &options, &hidden()).unwrap();
        assert!(std::fs::read(&back).unwrap() == std::fs::read(&raw).unwrap());
    }
}

#[test]
fn created_images_are_what_qemu_img_info_says() {
    let _serial = serial();
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    let overlay = dir.path().join("overlay.qcow2");
    let create = |path: &Path, options: CreateOptions| image::create(path, &options).unwrap();
    create(
        &base,
        CreateOptions {
            format: Format::Raw,
            size: Some(3 << 20),
            backing: None,
            cluster_size: None,
            preallocation: Preallocation::Full,
        },
    );
    create(
        &overlay,
        CreateOptions {
            format: Format::Qcow2,
            size: None,
            backing: Some(("base.raw".into(), Format::Raw)),
            cluster_size: Some(4096),
            preallocation: Preallocation::Off,
        },
    );
    assert_clean(&overlay);
    let theirs: serde_json::Value =
        serde_json::from_str(&qemu_img(&["info", "--output", "json", s(&overlay)])).unwrap();
    let ours = serde_json::to_value(&image::info(&overlay, None, false, false).unwrap()[0]).unwrap();
    for key in [
        "virtual-size",
        "format",
        "cluster-size",
        "backing-filename",
        "backing-filename-format",
        "dirty-flag",
    ] {
        assert_eq!(ours[key], theirs[key], "{key}");
    }
    for path in [&base, &overlay] {
        assert_eq!(std::fs::metadata(path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let chain = image::info(&overlay, None, false, true).unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1].format, "raw");
    // Resize grows; shrinking needs --shrink.
    image::resize(&overlay, Format::Qcow2, "+1M", false).unwrap();
    assert!(qemu_img(&["info", s(&overlay)]).contains("(4194304 bytes)"));
    assert!(matches!(image::resize(&overlay, Format::Qcow2, "-1M", false), Err(ImageError::Usage(_))));
    image::resize(&overlay, Format::Qcow2, "-1M", true).unwrap();
    assert_clean(&overlay);
}

/// base.qcow2 ← mid.qcow2 ← top.qcow2, each with data of its own; returns the paths and the
/// content top shows.
fn chain(dir: &Path) -> (PathBuf, PathBuf, PathBuf, Vec<u8>) {
    let base = dir.join("base.qcow2");
    let mid = dir.join("mid.qcow2");
    let top = dir.join("top.qcow2");
    qemu_img(&["create", "-f", "qcow2", "-o", "cluster_size=4096", s(&base), "4M"]);
    qemu_img(&["create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", s(&mid)]);
    qemu_img(&["create", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", s(&top)]);
    let mut expected = vec![0u8; 4 << 20];
    for (path, offset, len, value) in
        [(&base, 0usize, 2 << 20, 0x11u8), (&mid, 1 << 20, 2 << 20, 0x22), (&top, 2_600_000, 1 << 20, 0x33)]
    {
        let data = vec![value; len];
        write_through_kestrel(path, &data, offset as u64);
        expected[offset..offset + len].copy_from_slice(&data);
    }
    (base, mid, top, expected)
}

fn assert_content(path: &Path, expected: &[u8], dir: &Path) {
    let flat = dir.join("expected.raw");
    std::fs::write(&flat, expected).unwrap();
    qemu_img(&["compare", "-F", "raw", s(path), s(&flat)]);
}

#[test]
fn rebase_keeps_the_content_and_commit_moves_it_down() {
    let _serial = serial();
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (base, _mid, top, expected) = chain(dir.path());
    let options = RebaseOptions {
        backing: Some("base.qcow2".into()),
        backing_format: Some(Format::Qcow2),
        unsafe_header_only: false,
    };
    image::rebase(&top, &options, &hidden()).unwrap();
    assert!(qemu_img(&["info", s(&top)]).contains("backing file: base.qcow2"));
    assert_content(&top, &expected, dir.path());
    assert_clean(&top);
    image::commit(&top, &hidden()).unwrap();
    assert_content(&base, &expected, dir.path());
    assert_content(&top, &expected, dir.path());
    assert_clean(&base);
    assert_clean(&top);
    // The overlay is empty: everything maps to the base.
    let map = qemu_img(&["map", "--output", "json", s(&top)]);
    let map: serde_json::Value = serde_json::from_str(&map).unwrap();
    assert!(
        map.as_array().unwrap().iter().all(|m| m["depth"].as_u64() != Some(0) || m["data"] == false),
        "{map}"
    );
    // -u: only the header changes.
    let options =
        RebaseOptions { backing: Some(String::new()), backing_format: None, unsafe_header_only: true };
    image::rebase(&top, &options, &hidden()).unwrap();
    assert!(!qemu_img(&["info", s(&top)]).contains("backing file"));
    assert_clean(&top);
}

#[test]
fn a_running_vms_image_is_refused_to_writers_and_lock_taking_readers() {
    let _serial = serial();
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.qcow2");
    qemu_img(&["create", "-f", "qcow2", s(&path), "1M"]);
    let vm = OpenOptions::new().read(true).write(true).open(&path).unwrap();
    lock::lock(&vm, Access::Write).unwrap();
    for error in [
        image::check(&path, true, false, &hidden()).err().unwrap(),
        image::resize(&path, Format::Qcow2, "2M", false).err().unwrap(),
        image::info(&path, None, false, false).err().unwrap(),
    ] {
        assert!(matches!(error, ImageError::Lock { .. }), "{error}");
        assert!(error.to_string().contains("the image is in use"), "{error}");
    }
    // Creating or converting over it is refused before anything is truncated.
    let before = std::fs::read(&path).unwrap();
    let create = CreateOptions {
        format: Format::Raw,
        size: Some(4096),
        backing: None,
        cluster_size: None,
        preallocation: Preallocation::Off,
    };
    assert!(matches!(image::create(&path, &create), Err(ImageError::Lock { .. })));
    assert!(std::fs::read(&path).unwrap() == before);
    // -U reads without the lock.
    assert_eq!(image::info(&path, None, true, false).unwrap()[0].virtual_size, 1 << 20);
    assert_eq!(image::check(&path, false, true, &hidden()).unwrap().exit_code(), 0);
    drop(vm);
    image::resize(&path, Format::Qcow2, "2M", false).unwrap();
}

#[test]
fn a_raw_backing_file_with_a_qcow2_header_is_not_opened_as_qcow2() {
    let _serial = serial();
    if !have_qemu_img() {
        return;
    }
    // The guest of a raw disk wrote a qcow2 header (naming /etc/shadow as backing file) into it;
    // the overlay above it says raw, in a v2 header (which imago reads without the format).
    let dir = tempfile::tempdir().unwrap();
    let evil = dir.path().join("evil.qcow2");
    qemu_img(&["create", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw", s(&evil), "1M"]);
    let base = dir.path().join("base.raw");
    std::fs::copy(&evil, &base).unwrap();
    let top = dir.path().join("top.qcow2");
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        "-u",
        "-b",
        "base.raw",
        "-F",
        "raw",
        s(&top),
        "1M",
    ]);
    let file = std::fs::File::open(&top).unwrap();
    let options = Qcow2Options { writable: false, direct: false, allow_backing: true };
    // imago would probe it as qcow2 (a v2 header's backing format is not read): refused.
    let error = qcow2::open(file, &top, &options).err().unwrap();
    assert!(error.to_string().contains("has a qcow2 header but the image names its format raw"), "{error}");
}
