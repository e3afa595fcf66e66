//! The qcow2 fast path: reads and writes of allocated clusters go from the engine straight to
//! io_uring on the image's descriptor (`DiskBackend::map_extent`), everything else through imago
//! on the pool, and both mixed leave an image that qemu-img checks clean and compares equal.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io;
use std::path::Path;
use std::sync::Arc;
use storage::engine::{EngineKind, IoEngine, Op};
use storage::lock::{self, Access};
use storage::qcow2::{self, Qcow2Disk, Qcow2Options};
use storage::{DiskBackend, DiskBackendExt, IoBuf};

mod common;
use common::{have_qemu_img, qemu_img, qemu_img_status, s, serial};

const BLOCK: usize = 4096;
const CLUSTER: u64 = 65536;
const SIZE: usize = 4 << 20;
/// The first half of the image is allocated (non-zero data), the second half is not.
const ALLOCATED: usize = SIZE / 2;

/// Deterministic bytes, different per block and per `seed`.
fn block_bytes(block: usize, seed: u8) -> Vec<u8> {
    (0..BLOCK).map(|i| (block as u8).wrapping_mul(7).wrapping_add(seed) ^ (i as u8) | 1).collect()
}

/// A qcow2 image (64 KiB clusters) whose first half is allocated and its second half not; the
/// raw content it should have beside it.
fn image(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let mut content = vec![0u8; SIZE];
    for block in 0..ALLOCATED / BLOCK {
        content[block * BLOCK..(block + 1) * BLOCK].copy_from_slice(&block_bytes(block, 0));
    }
    let raw = dir.join("source.raw");
    std::fs::write(&raw, &content).unwrap();
    let path = dir.join("disk.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=65536", s(&raw), s(&path)]);
    (path, content)
}

fn open(path: &Path) -> Arc<Qcow2Disk> {
    let file = OpenOptions::new().read(true).write(true).open(path).unwrap();
    lock::lock(&file, Access::Write).unwrap();
    let options = Qcow2Options { writable: true, direct: false, allow_backing: false };
    Arc::new(qcow2::open(file, path, &options).unwrap())
}

fn uring(depth: u16) -> Option<IoEngine<Qcow2Disk>> {
    let engine = IoEngine::new(depth, EngineKind::IoUring).unwrap();
    if engine.kind() != EngineKind::IoUring {
        eprintln!("skipped: io_uring is unavailable here");
        return None;
    }
    Some(engine)
}

fn collect(engine: &mut IoEngine<Qcow2Disk>, count: usize) -> HashMap<u64, io::Result<usize>> {
    let mut done = Vec::new();
    while done.len() < count {
        assert!(engine.in_flight() > 0, "{} of {count} completed and nothing is in flight", done.len());
        engine.wait(&mut done).unwrap();
    }
    done.into_iter().map(|c| (c.token, c.result)).collect()
}

/// qemu-img finds no errors or leaks, and the image reads as `expected`.
fn check_with_qemu(dir: &Path, path: &Path, expected: &[u8]) {
    let (status, output) = qemu_img_status(&["check", s(path)]);
    assert_eq!(status, 0, "qemu-img check: {output}");
    let raw = dir.join("expected.raw");
    std::fs::write(&raw, expected).unwrap();
    let (status, output) = qemu_img_status(&["compare", "-f", "raw", "-F", "qcow2", s(&raw), s(path)]);
    assert_eq!(status, 0, "qemu-img compare: {output}");
}

/// xorshift: reproducible offsets without a dependency.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn allocated_clusters_map_to_the_image_file_and_nothing_else_does() {
    let _serial = serial();
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = image(dir.path());
    let disk = open(&path);
    let extent = disk.map_extent(CLUSTER + 512, 4096, true).expect("an allocated cluster maps");
    // qemu-img convert lays the data clusters out in order after the metadata.
    assert_eq!(extent.host_offset % CLUSTER, 512);
    assert!(disk.map_extent(0, 2 * CLUSTER, false).is_some(), "contiguous clusters map as one");
    assert!(disk.map_extent(ALLOCATED as u64, 4096, false).is_none(), "unallocated");
    assert!(disk.map_extent(ALLOCATED as u64 - 512, 1024, false).is_none(), "half allocated");
    assert!(disk.map_extent(SIZE as u64 - 512, 1024, false).is_none(), "past the end");
    assert!(disk.map_extent(SIZE as u64, 0, false).is_none());
    drop(extent);

    // Read-only: reads map, writes do not.
    drop(disk);
    let file = OpenOptions::new().read(true).open(&path).unwrap();
    lock::lock(&file, Access::Read).unwrap();
    let options = Qcow2Options { writable: false, direct: false, allow_backing: false };
    let disk = qcow2::open(file, &path, &options).unwrap();
    assert!(disk.map_extent(0, 4096, false).is_some());
    assert!(disk.map_extent(0, 4096, true).is_none());
}

#[test]
fn many_requests_in_flight_mixing_the_fast_path_and_the_pool_land_where_they_should() {
    let _serial = serial();
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (path, mut expected) = image(dir.path());
    let disk = open(&path);
    let Some(mut engine) = uring(64) else { return };
    let blocks = SIZE / BLOCK;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..8u8 {
        // 32 writes to distinct blocks anywhere (allocated ones take the fast path, the others
        // the pool, which allocates), then 32 reads of distinct blocks, all in flight at once.
        let mut chosen = Vec::new();
        while chosen.len() < 64 {
            let block = (next(&mut state) % blocks as u64) as usize;
            if !chosen.contains(&block) {
                chosen.push(block);
            }
        }
        let (writes, reads) = chosen.split_at(32);
        let data: Vec<Vec<u8>> = writes.iter().map(|&b| block_bytes(b, round + 1)).collect();
        let mut back = vec![vec![0u8; BLOCK]; reads.len()];
        for (i, (&block, bytes)) in writes.iter().zip(&data).enumerate() {
            // Two pieces, so iovec lists go through both paths.
            let (a, b) = bytes.split_at(1000);
            let buffers = vec![IoBuf::from_slice(a), IoBuf::from_slice(b)];
            engine.submit(&disk, Op::Write { buffers, offset: (block * BLOCK) as u64 }, i as u64).unwrap();
        }
        for (i, (&block, buffer)) in reads.iter().zip(back.iter_mut()).enumerate() {
            let buffers = vec![IoBuf::from_mut_slice(buffer)];
            engine
                .submit(&disk, Op::Read { buffers, offset: (block * BLOCK) as u64 }, 100 + i as u64)
                .unwrap();
        }
        engine.commit();
        let done = collect(&mut engine, 64);
        assert!(done.values().all(|r| matches!(r, Ok(n) if *n == BLOCK)), "round {round}: {done:?}");
        for (&block, buffer) in reads.iter().zip(&back) {
            assert_eq!(buffer, &expected[block * BLOCK..(block + 1) * BLOCK], "round {round} block {block}");
        }
        for (&block, bytes) in writes.iter().zip(&data) {
            expected[block * BLOCK..(block + 1) * BLOCK].copy_from_slice(bytes);
        }
    }
    engine.submit(&disk, Op::Flush, 1).unwrap();
    engine.commit();
    collect(&mut engine, 1).remove(&1).unwrap().unwrap();
    let mut content = vec![0u8; SIZE];
    disk.read_at(&mut content, 0).unwrap();
    assert!(content == expected, "the disk reads back what was written");
    drop(engine);
    drop(disk);
    check_with_qemu(dir.path(), &path, &expected);
}

#[test]
fn a_write_to_an_unallocated_cluster_goes_through_imago_and_allocates_it() {
    let _serial = serial();
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (path, mut expected) = image(dir.path());
    let disk = open(&path);
    let Some(mut engine) = uring(4) else { return };
    let offset = ALLOCATED as u64 + 3 * CLUSTER;
    assert!(disk.map_extent(offset, BLOCK as u64, true).is_none());
    assert!(!disk.allocated(offset, BLOCK as u64).unwrap().0);
    let data = block_bytes(7, 9);
    engine.submit(&disk, Op::Write { buffers: vec![IoBuf::from_slice(&data)], offset }, 1).unwrap();
    engine.commit();
    assert_eq!(collect(&mut engine, 1).remove(&1).unwrap().unwrap(), BLOCK);
    assert!(disk.allocated(offset, BLOCK as u64).unwrap().0, "the write allocated the cluster");
    let extent = disk.map_extent(offset, BLOCK as u64, true).expect("now the cluster maps");
    drop(extent);
    expected[offset as usize..offset as usize + BLOCK].copy_from_slice(&data);
    drop(engine);
    disk.flush().unwrap();
    drop(disk);
    check_with_qemu(dir.path(), &path, &expected);
}

#[test]
fn a_discard_beside_fast_path_requests_in_flight_zeroes_its_range_and_nothing_else() {
    let _serial = serial();
    if !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (path, mut expected) = image(dir.path());
    let disk = open(&path);
    let Some(mut engine) = uring(64) else { return };
    // Fast-path writes to cluster 1 and reads of cluster 2, submitted to the kernel and not
    // reaped: their leases are held while this same thread discards clusters 4 and 5 (it must
    // not wait for them, being the thread that reaps them).
    let data: Vec<Vec<u8>> = (0..16).map(|b| block_bytes(b, 42)).collect();
    let mut back = vec![vec![0u8; BLOCK]; 16];
    for (i, bytes) in data.iter().enumerate() {
        assert!(disk.map_extent(CLUSTER + (i * BLOCK) as u64, BLOCK as u64, true).is_some());
        let buffers = vec![IoBuf::from_slice(bytes)];
        engine.submit(&disk, Op::Write { buffers, offset: CLUSTER + (i * BLOCK) as u64 }, i as u64).unwrap();
    }
    for (i, buffer) in back.iter_mut().enumerate() {
        let buffers = vec![IoBuf::from_mut_slice(buffer)];
        let offset = 2 * CLUSTER + (i * BLOCK) as u64;
        engine.submit(&disk, Op::Read { buffers, offset }, 100 + i as u64).unwrap();
    }
    engine.commit();
    // The engine may have done those on the spot (cached pages of a buffered file), letting their
    // leases go already: one held here stands for a request still in the kernel.
    let in_flight = disk.map_extent(2 * CLUSTER, BLOCK as u64, false).expect("cluster 2 maps");
    disk.discard(4 * CLUSTER, 2 * CLUSTER).unwrap();
    drop(in_flight);
    let done = collect(&mut engine, 32);
    assert!(done.values().all(|r| matches!(r, Ok(n) if *n == BLOCK)), "{done:?}");
    for (i, buffer) in back.iter().enumerate() {
        let at = 2 * CLUSTER as usize + i * BLOCK;
        assert_eq!(buffer, &expected[at..at + BLOCK], "read {i}");
    }
    for (i, bytes) in data.iter().enumerate() {
        let at = CLUSTER as usize + i * BLOCK;
        expected[at..at + BLOCK].copy_from_slice(bytes);
    }
    expected[4 * CLUSTER as usize..6 * CLUSTER as usize].fill(0);
    assert!(disk.map_extent(4 * CLUSTER, 512, false).is_none(), "the discarded range reads as zeroes");

    // With nothing in flight, a discard frees the clusters.
    disk.discard(8 * CLUSTER, CLUSTER).unwrap();
    expected[8 * CLUSTER as usize..9 * CLUSTER as usize].fill(0);

    // A resize on another thread waits for the leases of requests in flight; meanwhile new
    // requests take the pool.
    let bytes = block_bytes(3, 77);
    engine.submit(&disk, Op::Write { buffers: vec![IoBuf::from_slice(&bytes)], offset: 0 }, 1).unwrap();
    engine.commit();
    let resizer = {
        let disk = disk.clone();
        std::thread::spawn(move || disk.resize(2 * SIZE as u64))
    };
    assert_eq!(collect(&mut engine, 1).remove(&1).unwrap().unwrap(), BLOCK);
    resizer.join().unwrap().unwrap();
    expected[..BLOCK].copy_from_slice(&bytes);
    expected.resize(2 * SIZE, 0);

    let mut content = vec![0u8; 2 * SIZE];
    disk.read_at(&mut content, 0).unwrap();
    assert!(content == expected, "every offset outside the discards holds its data");
    drop(engine);
    disk.flush().unwrap();
    drop(disk);
    check_with_qemu(dir.path(), &path, &expected);
    // The discard beside leases in flight zeroed in place (the clusters stay in the file); the
    // one with nothing in flight freed its cluster.
    assert!(host_offset_of(&path, 4 * CLUSTER).is_some(), "zeroed in place");
    assert_eq!(host_offset_of(&path, 8 * CLUSTER), None, "freed when no request holds a lease");
}

/// Where qemu-img says the guest's `offset` is in the file (None: nowhere, not allocated).
fn host_offset_of(path: &Path, offset: u64) -> Option<u64> {
    let map: serde_json::Value = serde_json::from_str(&qemu_img(&["map", "--output=json", s(path)])).unwrap();
    let entry = map
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            let start = e["start"].as_u64().unwrap();
            start <= offset && offset < start + e["length"].as_u64().unwrap()
        })
        .unwrap();
    entry["offset"].as_u64().map(|host| host + offset - entry["start"].as_u64().unwrap())
}

#[test]
fn reads_of_a_thin_overlay_map_to_its_backing_file_and_writes_copy_up_through_imago() {
    let _serial = serial();
    if !have_qemu_img() {
        return;
    }
    for base_format in ["qcow2", "raw"] {
        let dir = tempfile::tempdir().unwrap();
        let (qcow2_base, mut expected) = image(dir.path());
        let original = expected.clone();
        let base = match base_format {
            "qcow2" => qcow2_base,
            _ => dir.path().join("source.raw"),
        };
        let top = dir.path().join("top.qcow2");
        qemu_img(&["create", "-q", "-f", "qcow2", "-b", s(&base), "-F", base_format, s(&top)]);
        let file = OpenOptions::new().read(true).write(true).open(&top).unwrap();
        lock::lock(&file, Access::Write).unwrap();
        let options = Qcow2Options { writable: true, direct: false, allow_backing: true };
        let disk = Arc::new(qcow2::open(file, &top, &options).unwrap());
        assert!(disk.map_extent(CLUSTER, 4096, false).is_some(), "{base_format}: the base's data maps");
        assert!(disk.map_extent(CLUSTER, 4096, true).is_none(), "{base_format}: a write copies up first");
        let Some(mut engine) = uring(64) else { return };
        let mut back = vec![vec![0u8; BLOCK]; 16];
        let data: Vec<Vec<u8>> = (0..16).map(|b| block_bytes(b, 5)).collect();
        for (i, buffer) in back.iter_mut().enumerate() {
            let offset = (i * 4 * BLOCK) as u64;
            engine
                .submit(&disk, Op::Read { buffers: vec![IoBuf::from_mut_slice(buffer)], offset }, i as u64)
                .unwrap();
        }
        for (i, bytes) in data.iter().enumerate() {
            let offset = (i * 4 * BLOCK + BLOCK) as u64;
            let buffers = vec![IoBuf::from_slice(bytes)];
            engine.submit(&disk, Op::Write { buffers, offset }, 100 + i as u64).unwrap();
        }
        engine.commit();
        let done = collect(&mut engine, 32);
        assert!(done.values().all(|r| matches!(r, Ok(n) if *n == BLOCK)), "{base_format}: {done:?}");
        for (i, buffer) in back.iter().enumerate() {
            assert_eq!(buffer, &expected[i * 4 * BLOCK..(i * 4 + 1) * BLOCK], "{base_format}: read {i}");
        }
        for (i, bytes) in data.iter().enumerate() {
            expected[i * 4 * BLOCK + BLOCK..i * 4 * BLOCK + 2 * BLOCK].copy_from_slice(bytes);
        }
        assert!(
            disk.map_extent(BLOCK as u64, 4096, true).is_some(),
            "{base_format}: copied up, now in place"
        );
        drop(engine);
        disk.flush().unwrap();
        drop(disk);
        check_with_qemu(dir.path(), &top, &expected);
        let unchanged = dir.path().join("original.raw");
        std::fs::write(&unchanged, &original).unwrap();
        let (status, output) =
            qemu_img_status(&["compare", "-f", "raw", "-F", base_format, s(&unchanged), s(&base)]);
        assert_eq!(status, 0, "{base_format}: the base is untouched: {output}");
    }
}
