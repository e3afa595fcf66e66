//! Interop with QEMU's `qemu-img`: images it makes are read byte-exact through `Qcow2Disk`, images
//! Kestrel writes pass its check and compare equal. Without qemu-img the tests skip, except under
//! CI=true, where a missing qemu-img fails them.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use storage::lock::{self, Access};
use storage::qcow2::{self, Qcow2Error, Qcow2Options};
use storage::{DiskBackend, DiskBackendExt};

mod common;
use common::{have_qemu_img, qemu_img, qemu_img_status, s, serial};

/// qemu-img check's exit status and output.
fn qemu_img_check(path: &Path) -> (i32, String) {
    qemu_img_status(&["check", s(path)])
}

/// Deterministic, position-dependent bytes (a different pattern per `seed`).
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i / 512) as u8).wrapping_mul(31).wrapping_add(seed) ^ (i as u8)).collect()
}

/// Turns the backing-format header extension into an unknown one (which QEMU and imago skip),
/// as in images made before QEMU recorded backing formats.
fn forget_backing_format(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes[..4096].windows(4).position(|w| w == [0xe2, 0x79, 0x2a, 0xca]).expect("a backing format");
    bytes[at..at + 4].copy_from_slice(&[0x12, 0x34, 0x56, 0x78]);
    std::fs::write(path, bytes).unwrap();
}

fn write_raw(path: &Path, content: &[u8]) {
    std::fs::write(path, content).unwrap();
}

fn open(path: &Path, options: Qcow2Options) -> Result<qcow2::Qcow2Disk, Qcow2Error> {
    let file = OpenOptions::new().read(true).write(options.writable).open(path).unwrap();
    lock::lock(&file, if options.writable { Access::Write } else { Access::Read }).unwrap();
    qcow2::open(file, path, &options)
}

fn read_only() -> Qcow2Options {
    Qcow2Options { writable: false, direct: false, allow_backing: true }
}

fn writable() -> Qcow2Options {
    Qcow2Options { writable: true, direct: false, allow_backing: true }
}

fn read_all(disk: &dyn DiskBackend) -> Vec<u8> {
    let mut content = vec![0u8; disk.size() as usize];
    // Odd-sized pieces, so requests cross cluster and L2 boundaries.
    let mut offset = 0;
    for chunk in content.chunks_mut(3 * 4096 + 512) {
        disk.read_at(chunk, offset).unwrap();
        offset += chunk.len() as u64;
    }
    content
}

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(tempfile::tempdir().unwrap())
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

#[test]
fn compressed_images_of_every_cluster_size_and_version_read_byte_exact() {
    let _serial = serial();
    if !have_qemu_img() {
        return;
    }
    let dir = Dir::new();
    // Past one 2 MiB cluster; mostly holes (unallocated clusters), so that decompressing in a
    // debug build stays quick.
    let size = (2 << 20) + 300 * 1024;
    let mut content = vec![0u8; size];
    for start in [0usize, 70_000, 1 << 20, (2 << 20) + 100_000] {
        content[start..start + 20_000].copy_from_slice(&pattern(20_000, start as u8));
    }
    let raw = dir.path("content.raw");
    write_raw(&raw, &content);
    for cluster_size in ["4096", "65536", "2097152"] {
        for compat in ["0.10", "1.1"] {
            let image = dir.path(&format!("c{cluster_size}-{compat}.qcow2"));
            let options = format!("cluster_size={cluster_size},compat={compat}");
            qemu_img(&["convert", "-c", "-f", "raw", "-O", "qcow2", "-o", &options, s(&raw), s(&image)]);
            let disk = open(&image, read_only()).unwrap();
            assert_eq!(disk.size(), size as u64);
            assert!(read_all(&disk) == content, "{cluster_size} {compat}: content differs");
            let report = storage::qcow2::check::check(&File::open(&image).unwrap()).unwrap();
            assert!(report.compressed_clusters > 0, "{cluster_size} {compat}: nothing compressed");
            assert_eq!((report.corruptions, report.leaks), (0, 0), "{:?}", report.messages);
        }
    }
}

#[test]
fn a_four_deep_chain_of_raw_and_qcow2_reads_byte_exact() {
    let _serial = serial();
    if !have_qemu_img() {
        return;
    }
    let dir = Dir::new();
    let (top, expected) = chain_without_dd(&dir);
    let disk = open(&top, read_only()).unwrap();
    assert_eq!(disk.backing_chain().len(), 3);
    assert!(read_all(&disk) == expected);
    // qemu-img agrees on what the chain holds.
    let flat = dir.path("flat.raw");
    write_raw(&flat, &expected);
    qemu_img(&["compare", "-f", "qcow2", "-F", "raw", s(&top), s(&flat)]);
}

/// base.raw ← l1.qcow2 (v2, raw backing) ← l2.qcow2 (v3, no backing format: probed) ←
/// top.qcow2; each layer holds its own pieces, written through Qcow2Disk.
fn chain_without_dd(dir: &Dir) -> (PathBuf, Vec<u8>) {
    let size = 2 << 20;
    let mut expected = pattern(size, 1);
    write_raw(&dir.path("base.raw"), &expected);
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        "-b",
        "base.raw",
        "-F",
        "raw",
        s(&dir.path("l1.qcow2")),
    ]);
    qemu_img(&["create", "-f", "qcow2", "-b", "l1.qcow2", "-F", "qcow2", s(&dir.path("l2.qcow2"))]);
    // No backing format: the backing file's format is probed (qcow2 magic).
    forget_backing_format(&dir.path("l2.qcow2"));
    qemu_img(&["create", "-f", "qcow2", "-b", "l2.qcow2", "-F", "qcow2", s(&dir.path("top.qcow2"))]);
    for (layer, offset, len, seed) in [
        ("l1.qcow2", 4096usize, 70_000usize, 2u8),
        ("l2.qcow2", 65536, 200_000, 3),
        ("top.qcow2", 1 << 20, 5000, 4),
    ] {
        let piece = pattern(len, seed);
        let disk = open(&dir.path(layer), writable()).unwrap();
        disk.write_at(&piece, offset as u64).unwrap();
        disk.flush().unwrap();
        expected[offset..offset + len].copy_from_slice(&piece);
    }
    (dir.path("top.qcow2"), expected)
}

#[test]
fn writes_through_qcow2disk_pass_qemu_img_check_and_compare() {
    let _serial = serial();
    if !have_qemu_img() {
        return;
    }
    let dir = Dir::new();
    let (top, mut expected) = chain_without_dd(&dir);
    {
        let disk = open(&top, writable()).unwrap();
        // Unaligned writes, across clusters, discards and write-zeroes over backing data.
        for (offset, len, seed) in
            [(100usize, 9000usize, 9u8), (65_000, 140_000, 10), (2_000_000, 97_152, 11)]
        {
            let piece = pattern(len, seed);
            disk.write_at(&piece, offset as u64).unwrap();
            expected[offset..offset + len].copy_from_slice(&piece);
        }
        disk.discard(0, 65536).unwrap();
        expected[..65536].fill(0);
        disk.write_zeroes(300_000, 5000, false).unwrap();
        expected[300_000..305_000].fill(0);
        disk.flush().unwrap();
        assert!(read_all(&disk) == expected);
    }
    for layer in ["top.qcow2", "l2.qcow2", "l1.qcow2"] {
        let (status, out) = qemu_img_check(&dir.path(layer));
        assert_eq!(status, 0, "{layer}: {out}");
        assert!(out.contains("No errors were found"), "{layer}: {out}");
    }
    let flat = dir.path("flat.raw");
    write_raw(&flat, &expected);
    qemu_img(&["compare", "-f", "qcow2", "-F", "raw", s(&top), s(&flat)]);
}

#[test]
fn concurrent_writers_from_several_threads_keep_the_image_consistent() {
    let _serial = serial();
    if !have_qemu_img() {
        return;
    }
    let dir = Dir::new();
    let image = dir.path("mt.qcow2");
    qemu_img(&["create", "-f", "qcow2", "-o", "cluster_size=4096", s(&image), "4M"]);
    let disk = std::sync::Arc::new(open(&image, writable()).unwrap());
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let disk = disk.clone();
            std::thread::spawn(move || {
                for i in 0..64u64 {
                    let offset = (i * 4 + u64::from(t)) * 16384 + 1000;
                    disk.write_at(&pattern(6000, t), offset).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    disk.flush().unwrap();
    for t in 0..4u8 {
        for i in 0..64u64 {
            let mut back = vec![0u8; 6000];
            disk.read_at(&mut back, (i * 4 + u64::from(t)) * 16384 + 1000).unwrap();
            assert!(back == pattern(6000, t));
        }
    }
    drop(disk);
    let (status, out) = qemu_img_check(&image);
    assert_eq!(status, 0, "{out}");
}

#[test]
fn backing_files_are_refused_when_not_allowed_naming_the_path() {
    let _serial = serial();
    if !have_qemu_img() {
        return;
    }
    let dir = Dir::new();
    write_raw(&dir.path("base.raw"), &[0u8; 65536]);
    qemu_img(&["create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", s(&dir.path("top.qcow2"))]);
    let options = Qcow2Options { allow_backing: false, ..read_only() };
    let error = open(&dir.path("top.qcow2"), options).err().unwrap();
    assert!(matches!(error, Qcow2Error::BackingDenied { .. }), "{error}");
    assert!(error.to_string().contains("base.raw"), "{error}");
}

#[test]
fn a_cyclic_chain_is_refused() {
    let _serial = serial();
    if !have_qemu_img() {
        return;
    }
    let dir = Dir::new();
    qemu_img(&["create", "-f", "qcow2", s(&dir.path("b.qcow2")), "1M"]);
    qemu_img(&["create", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", s(&dir.path("a.qcow2"))]);
    // b now names a as its backing file: a → b → a.
    qemu_img(&["rebase", "-u", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", s(&dir.path("b.qcow2"))]);
    let error = open(&dir.path("a.qcow2"), read_only()).err().unwrap();
    assert!(matches!(error, Qcow2Error::BackingCycle { .. }), "{error}");
    // A file that names itself.
    qemu_img(&["rebase", "-u", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", s(&dir.path("b.qcow2"))]);
    let error = open(&dir.path("b.qcow2"), read_only()).err().unwrap();
    assert!(matches!(error, Qcow2Error::BackingCycle { .. }), "{error}");
}

#[test]
fn a_fifo_backing_file_is_refused_without_blocking() {
    let _serial = serial();
    if !have_qemu_img() {
        return;
    }
    let dir = Dir::new();
    let fifo = dir.path("fifo");
    let c_path = std::ffi::CString::new(s(&fifo)).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo touches nothing else of ours.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    qemu_img(&["create", "-f", "qcow2", "-u", "-b", "fifo", "-F", "raw", s(&dir.path("top.qcow2")), "1M"]);
    // Opening a FIFO for reading with no writer would block forever without O_NONBLOCK.
    let error = open(&dir.path("top.qcow2"), read_only()).err().unwrap();
    assert!(matches!(error, Qcow2Error::BackingNotFile { kind: "FIFO", .. }), "{error}");
}

#[test]
fn a_chain_deeper_than_the_limit_is_refused() {
    let _serial = serial();
    if !have_qemu_img() {
        return;
    }
    let dir = Dir::new();
    write_raw(&dir.path("0"), &[0u8; 4096]);
    // Headers are tiny: write them with qemu-img once and copy, changing only the name.
    for i in 1..=qcow2::MAX_DEPTH + 1 {
        qemu_img(&[
            "create",
            "-f",
            "qcow2",
            "-u",
            "-b",
            &format!("{}", i - 1),
            "-F",
            if i == 1 { "raw" } else { "qcow2" },
            s(&dir.path(&i.to_string())),
            "4096",
        ]);
    }
    let error = open(&dir.path(&(qcow2::MAX_DEPTH + 1).to_string()), read_only()).err().unwrap();
    assert!(matches!(error, Qcow2Error::BackingTooDeep { .. }), "{error}");
    // One level less opens.
    let disk = open(&dir.path(&qcow2::MAX_DEPTH.to_string()), read_only()).unwrap();
    assert_eq!(disk.backing_chain().len(), qcow2::MAX_DEPTH);
    let _ = File::open(dir.path("0")).unwrap();
}

#[test]
fn o_direct_images_and_backing_files_read_and_write_unaligned_requests() {
    let _serial = serial();
    if !have_qemu_img() {
        return;
    }
    use std::os::unix::fs::OpenOptionsExt;
    let dir = Dir::new();
    let (top, mut expected) = chain_without_dd(&dir);
    let file = OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT).open(&top).unwrap();
    lock::lock(&file, Access::Write).unwrap();
    let options = Qcow2Options { writable: true, direct: true, allow_backing: true };
    let disk = qcow2::open(file, &top, &options).unwrap();
    // Buffers and offsets that are not sector-aligned: imago bounces them.
    let piece = pattern(10_001, 42);
    disk.write_at(&piece, 12_345).unwrap();
    expected[12_345..12_345 + piece.len()].copy_from_slice(&piece);
    disk.flush().unwrap();
    let mut odd = vec![0u8; 33_333];
    disk.read_at(&mut odd[..], 7).unwrap();
    assert!(odd[..] == expected[7..7 + 33_333]);
    assert!(read_all(&disk) == expected);
    drop(disk);
    let (status, out) = qemu_img_check(&top);
    assert_eq!(status, 0, "{out}");
}
