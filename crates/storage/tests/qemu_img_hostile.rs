//! Hostile qcow2 images give clear errors: no panic, no hang, no huge allocation. A bounded
//! property test mutates a valid image's header and tables and opens, reads and checks it.
//! Needs no qemu-img: the valid image comes from Kestrel's own writer.

use proptest::prelude::*;
use std::fs::OpenOptions;
use std::io;
use std::path::Path;
use storage::qcow2::writer::{self, WriterOptions};
use storage::qcow2::{self, check, Qcow2Error, Qcow2Options};
use storage::{DiskBackend, DiskBackendExt, IoBuf};

/// A disk in memory, the writer's source.
struct Memory(Vec<u8>);

impl DiskBackend for Memory {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_vectored_at(&self, buffers: &[IoBuf], offset: u64) -> io::Result<()> {
        let mut at = offset as usize;
        for buffer in buffers {
            // SAFETY: the test's own buffers, live for the call.
            let slice = unsafe { buffer.as_mut_slice() };
            slice.copy_from_slice(&self.0[at..at + slice.len()]);
            at += slice.len();
        }
        Ok(())
    }
    fn write_vectored_at(&self, _: &[IoBuf], _: u64) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn discard(&self, _: u64, _: u64) -> io::Result<()> {
        Ok(())
    }
    fn write_zeroes(&self, _: u64, _: u64, _: bool) -> io::Result<()> {
        Ok(())
    }
}

/// A small valid image (512-byte clusters so that tables are many and small): some
/// compressed clusters, some plain, some holes.
fn valid_image(compress: bool) -> Vec<u8> {
    // Made once per variant: deflate in a debug build is slow enough to dominate the proptests.
    static IMAGES: [std::sync::OnceLock<Vec<u8>>; 2] =
        [std::sync::OnceLock::new(), std::sync::OnceLock::new()];
    IMAGES[compress as usize].get_or_init(|| make_valid_image(compress)).clone()
}

fn make_valid_image(compress: bool) -> Vec<u8> {
    let mut content = vec![0u8; 96 * 1024];
    for (i, byte) in content.iter_mut().enumerate() {
        if (i / 4096) % 3 != 2 {
            *byte = if (i / 512) % 2 == 0 { (i % 7) as u8 } else { ((i * 2654435761usize) >> 13) as u8 };
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("valid.qcow2");
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    writer::write_image(&Memory(content), &file, WriterOptions { cluster_bits: 9, compress }, &mut |_| {})
        .unwrap();
    std::fs::read(&path).unwrap()
}

fn options(writable: bool) -> Qcow2Options {
    Qcow2Options { writable, direct: false, allow_backing: false }
}

fn open_bytes(dir: &Path, bytes: &[u8], writable: bool) -> Result<qcow2::Qcow2Disk, Qcow2Error> {
    let path = dir.join("image.qcow2");
    std::fs::write(&path, bytes).unwrap();
    let file = OpenOptions::new().read(true).write(writable).open(&path).unwrap();
    qcow2::open(file, &path, &options(writable))
}

fn put32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

fn put64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_be_bytes());
}

#[test]
fn kestrels_own_images_are_clean_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    for compress in [false, true] {
        let bytes = valid_image(compress);
        let disk = open_bytes(dir.path(), &bytes, false).unwrap();
        let mut all = vec![0u8; disk.size() as usize];
        disk.read_at(&mut all, 0).unwrap();
        assert_eq!(all[1], 1);
        assert!(all[2 * 4096..3 * 4096].iter().all(|b| *b == 0));
        let file = std::fs::File::open(dir.path().join("image.qcow2")).unwrap();
        let report = check::check(&file).unwrap();
        assert_eq!((report.corruptions, report.leaks), (0, 0), "{:?}", report.messages);
        assert_eq!(report.compressed_clusters > 0, compress);
    }
}

#[test]
fn hostile_headers_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let valid = valid_image(false);
    type Mutation = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Mutation, &str)> = vec![
        ("truncated", Box::new(|b: &mut Vec<u8>| b.truncate(50)), "truncated"),
        ("bad magic", Box::new(|b: &mut Vec<u8>| b[0] = b'X'), "bad magic"),
        ("version 4", Box::new(|b: &mut Vec<u8>| put32(b, 4, 4)), "version 4"),
        ("absurd size", Box::new(|b: &mut Vec<u8>| put64(b, 24, u64::MAX / 2)), "virtual size"),
        ("absurd l1_size", Box::new(|b: &mut Vec<u8>| put32(b, 36, u32::MAX)), "L1 table"),
        ("L1 past the end", Box::new(|b: &mut Vec<u8>| put64(b, 40, 1 << 40)), "past the end of the file"),
        ("small L1", Box::new(|b: &mut Vec<u8>| put32(b, 36, 0)), "too small"),
        ("absurd reftable", Box::new(|b: &mut Vec<u8>| put32(b, 56, u32::MAX)), "refcount table"),
        ("cluster bits", Box::new(|b: &mut Vec<u8>| put32(b, 20, 40)), "cluster_bits"),
        ("unknown feature", Box::new(|b: &mut Vec<u8>| put64(b, 72, 1 << 20)), "incompatible feature"),
        ("corrupt bit", Box::new(|b: &mut Vec<u8>| put64(b, 72, 2)), "marked corrupt"),
        ("dirty, read-only", Box::new(|b: &mut Vec<u8>| put64(b, 72, 1)), "check --repair"),
        ("truncated tables", Box::new(|b: &mut Vec<u8>| b.truncate(4096)), "past the end of the file"),
    ];
    for (name, mutate, expected) in cases {
        let mut bytes = valid.clone();
        mutate(&mut bytes);
        let error = open_bytes(dir.path(), &bytes, false).err().unwrap_or_else(|| panic!("{name}: opened"));
        assert!(error.to_string().contains(expected), "{name}: {error}");
        assert!(!error.to_string().contains('\n'), "{name}: one line: {error}");
    }
}

#[test]
fn a_dirty_image_opened_writable_is_repaired_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = valid_image(false);
    put64(&mut bytes, 72, 1);
    // Stale refcounts, as a crash with lazy refcounts leaves them: a leaked cluster (refcount
    // 1, used by nothing) just past the end of the file.
    let be64 = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
    let refblock = be64(&bytes, be64(&bytes, 48) as usize) as usize;
    let leaked = bytes.len() / 512 + 2;
    assert!(leaked < 256, "the first refcount block covers it");
    bytes[refblock + leaked * 2 + 1] = 1;
    {
        let path = dir.path().join("image.qcow2");
        std::fs::write(&path, &bytes).unwrap();
        let report = check::check(&std::fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(report.leaks, 1, "{:?}", report.messages);
    }
    let error = open_bytes(dir.path(), &bytes, false).err().unwrap();
    assert!(matches!(error, Qcow2Error::Dirty), "{error}");
    let disk = open_bytes(dir.path(), &bytes, true).unwrap();
    disk.write_at(&[7u8; 512], 8192 + 512).unwrap();
    disk.flush().unwrap();
    drop(disk);
    let file = std::fs::File::open(dir.path().join("image.qcow2")).unwrap();
    let header = qcow2::header::read(&file).unwrap();
    assert!(!header.dirty());
    let report = check::check(&file).unwrap();
    assert_eq!((report.corruptions, report.leaks), (0, 0), "{:?}", report.messages);
}

/// Metadata with a refcount of 0 is free to imago's allocator, which would put the first write's
/// new table (or data) over it — the header itself, without this refusal. Read-only opens still
/// work, and the repair makes the image writable again.
#[test]
fn an_image_whose_metadata_looks_free_is_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let valid = valid_image(false);
    let be64 = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
    let refblock = be64(&valid, be64(&valid, 48) as usize) as usize;
    let l2 = be64(&valid, be64(&valid, 40) as usize) & 0x00ff_ffff_ffff_fe00;
    for cluster in [0, l2 / 512] {
        let mut bytes = valid.clone();
        bytes[refblock + cluster as usize * 2..][..2].copy_from_slice(&[0, 0]);
        let error = open_bytes(dir.path(), &bytes, true).err().expect("opened writable");
        assert!(matches!(error, Qcow2Error::MetadataUnreferenced { cluster: c } if c == cluster), "{error}");
        assert!(error.to_string().contains("check --repair"), "{error}");
        open_bytes(dir.path(), &bytes, false).unwrap();

        let path = dir.path().join("image.qcow2");
        let file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        check::repair(&file).unwrap();
        let disk = qcow2::open(file, &path, &options(true)).unwrap();
        disk.write_at(&[0x5a; 4096], 90 * 1024).unwrap();
        disk.flush().unwrap();
        drop(disk);
        let file = std::fs::File::open(&path).unwrap();
        let report = check::check(&file).unwrap();
        assert_eq!((report.corruptions, report.leaks), (0, 0), "{:?}", report.messages);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random byte and word changes anywhere in the metadata: opening, reading and checking
    /// either work or fail with an error, quickly.
    #[test]
    fn mutated_images_never_panic(
        compress in any::<bool>(),
        changes in prop::collection::vec((any::<prop::sample::Index>(), any::<u64>(), 0usize..3), 1..6),
        metadata_only in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = valid_image(compress);
        let len = bytes.len();
        // The header is in the first 512 bytes; the tables follow the data at the end.
        let metadata_start = len.saturating_sub(8 * 512);
        for (index, value, kind) in changes {
            let at = if metadata_only && index.index(2) == 0 {
                index.index(112)
            } else if metadata_only {
                metadata_start + index.index(len - metadata_start)
            } else {
                index.index(len)
            };
            match kind {
                0 => bytes[at] = value as u8,
                1 if at + 4 <= len => put32(&mut bytes, at, value as u32),
                _ if at + 8 <= len => put64(&mut bytes, at, value),
                _ => bytes[at] ^= 0xff,
            }
        }
        if let Ok(disk) = open_bytes(dir.path(), &bytes, false) {
            let mut sector = vec![0u8; 4096];
            for offset in [0u64, 4096, 40_000, disk.size().saturating_sub(4096)] {
                if offset + 4096 <= disk.size() {
                    let _ = disk.read_at(&mut sector, offset);
                }
            }
        }
        let path = dir.path().join("image.qcow2");
        let file = std::fs::File::open(&path).unwrap();
        let _ = check::check(&file);
        // A repair either refuses the image or leaves it clean, and grows it by no more than
        // its new refcount structures.
        let file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        if let Ok(report) = check::repair(&file) {
            prop_assert_eq!((report.corruptions, report.leaks), (0, 0), "{:?}", report.messages);
            let grown = file.metadata().unwrap().len().saturating_sub(len as u64);
            prop_assert!(grown <= 1 << 20, "the repair grew the image by {} bytes", grown);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, failure_persistence: None, ..ProptestConfig::default() })]

    /// The same, opened writable: writes and discards on a damaged image fail or work, but
    /// never panic or hang (imago's allocator reads the damaged refcounts).
    #[test]
    fn writes_to_mutated_images_never_panic(
        compress in any::<bool>(),
        changes in prop::collection::vec((any::<prop::sample::Index>(), any::<u64>()), 1..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = valid_image(compress);
        let len = bytes.len();
        let metadata_start = len.saturating_sub(8 * 512);
        for (index, value) in changes {
            let at = metadata_start + index.index(len - metadata_start - 8);
            put64(&mut bytes, at, value);
        }
        if let Ok(disk) = open_bytes(dir.path(), &bytes, true) {
            let _ = disk.write_at(&[0x5a; 3000], 1000);
            let _ = disk.write_at(&[0xa5; 512], disk.size() - 512);
            let _ = disk.discard(4096, 8192);
            let _ = disk.write_zeroes(20_000, 700, false);
            let _ = disk.flush();
        }
    }
}
