use std::collections::HashMap;
use std::os::unix::fs::FileExt;

use super::*;
use crate::RawFile;

const BLOCK: usize = 4096;

fn raw_file(bytes: u64, read_only: bool) -> (tempfile::TempDir, std::path::PathBuf, Arc<RawFile>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    std::fs::File::create(&path).unwrap().set_len(bytes).unwrap();
    let disk = Arc::new(RawFile::open(&path, read_only).unwrap());
    (dir, path, disk)
}

/// Waits for `count` completions; returns their results by token.
fn collect<B: DiskBackend + ?Sized>(
    engine: &mut IoEngine<B>,
    count: usize,
) -> HashMap<u64, io::Result<usize>> {
    let mut done = Vec::new();
    while done.len() < count {
        assert!(engine.in_flight() > 0, "{} of {count} completed and nothing is in flight", done.len());
        engine.wait(&mut done).unwrap();
    }
    assert_eq!(engine.in_flight(), 0);
    done.into_iter().map(|c| (c.token, c.result)).collect()
}

fn both_kinds() -> [EngineKind; 2] {
    [EngineKind::IoUring, EngineKind::ThreadPool]
}

/// An io_uring engine of `depth`, or None (said on stderr) where the kernel has none for this
/// process — never under CI=true, where that is a failure rather than a skip.
fn uring_engine<B: DiskBackend + ?Sized>(depth: u16) -> Option<IoEngine<B>> {
    let engine = IoEngine::new(depth, EngineKind::IoUring).unwrap();
    if engine.kind() == EngineKind::IoUring {
        return Some(engine);
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "io_uring is unavailable on a CI host");
    eprintln!("io_uring unavailable here; the thread pool stands in");
    None
}

#[test]
fn io_uring_is_used_for_a_raw_file_where_the_kernel_has_it() {
    // Where io_uring is disabled the fallback is the point; say so rather than fail.
    let _ = uring_engine::<RawFile>(8);
    assert_eq!(IoEngine::<RawFile>::new(8, EngineKind::ThreadPool).unwrap().kind(), EngineKind::ThreadPool);
}

#[test]
fn many_writes_and_reads_in_flight_land_where_they_should() {
    for kind in both_kinds() {
        let (_dir, path, disk) = raw_file(64 * BLOCK as u64, false);
        let mut engine = IoEngine::new(64, kind).unwrap();
        // Each block written from two buffers, so the iovec lists are exercised too.
        let data: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8 + 1; BLOCK]).collect();
        for (i, block) in data.iter().enumerate() {
            let (a, b) = block.split_at(100);
            let buffers = vec![IoBuf::from_slice(a), IoBuf::from_slice(b)];
            engine.submit(&disk, Op::Write { buffers, offset: (i * BLOCK) as u64 }, i as u64).unwrap();
        }
        assert_eq!(engine.in_flight(), 64);
        assert!(engine.is_full());
        engine.commit();
        let written = collect(&mut engine, 64);
        for i in 0..64u64 {
            assert_eq!(written[&i].as_ref().unwrap(), &BLOCK, "{kind:?} write {i}");
        }
        let file = std::fs::read(&path).unwrap();
        for (i, block) in data.iter().enumerate() {
            assert_eq!(&file[i * BLOCK..(i + 1) * BLOCK], &block[..], "{kind:?} block {i} on the file");
        }

        let mut back = vec![vec![0u8; BLOCK]; 64];
        for (i, block) in back.iter_mut().enumerate() {
            let buffers = vec![IoBuf::from_mut_slice(block)];
            engine.submit(&disk, Op::Read { buffers, offset: (i * BLOCK) as u64 }, 100 + i as u64).unwrap();
        }
        engine.submit(&disk, Op::Flush, 999).unwrap_err();
        engine.commit();
        let read = collect(&mut engine, 64);
        assert!(read.values().all(|r| matches!(r, Ok(n) if *n == BLOCK)), "{kind:?}");
        assert_eq!(back, data, "{kind:?}");

        engine.submit(&disk, Op::Flush, 7).unwrap();
        engine.commit();
        assert_eq!(collect(&mut engine, 1)[&7].as_ref().unwrap(), &0);
    }
}

#[test]
fn a_full_engine_refuses_more() {
    let (_dir, _path, disk) = raw_file(BLOCK as u64, false);
    let mut engine = IoEngine::new(2, EngineKind::ThreadPool).unwrap();
    engine.submit(&disk, Op::Flush, 1).unwrap();
    engine.submit(&disk, Op::Flush, 2).unwrap();
    assert!(matches!(engine.submit(&disk, Op::Flush, 3), Err(Full(2))));
    assert_eq!(collect(&mut engine, 2).len(), 2);
    engine.submit(&disk, Op::Flush, 3).unwrap();
    assert_eq!(collect(&mut engine, 1).len(), 1);
}

#[test]
fn a_read_running_past_the_end_of_the_file_is_an_error_after_the_short_part() {
    for kind in both_kinds() {
        // 6000 bytes: the kernel reads the first 6000 of 8192, then nothing.
        let (_dir, path, disk) = raw_file(0, false);
        std::fs::write(&path, vec![5u8; 6000]).unwrap();
        let mut buffer = vec![0u8; 8192];
        let mut engine = IoEngine::new(4, kind).unwrap();
        let buffers = vec![IoBuf::from_mut_slice(&mut buffer)];
        engine.submit(&disk, Op::Read { buffers, offset: 0 }, 1).unwrap();
        engine.commit();
        let error = collect(&mut engine, 1).remove(&1).unwrap().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{kind:?}");
        assert!(buffer[..6000].iter().all(|&b| b == 5), "{kind:?}: the part there was read");
    }
}

#[test]
fn host_errors_are_reported_per_operation() {
    for kind in both_kinds() {
        // Opened read-only: every write fails with EBADF, reads still work.
        let (_dir, _path, disk) = raw_file(2 * BLOCK as u64, true);
        let mut engine = IoEngine::new(4, kind).unwrap();
        let data = vec![1u8; BLOCK];
        let mut back = vec![9u8; BLOCK];
        engine.submit(&disk, Op::Write { buffers: vec![IoBuf::from_slice(&data)], offset: 0 }, 1).unwrap();
        let buffers = vec![IoBuf::from_mut_slice(&mut back)];
        engine.submit(&disk, Op::Read { buffers, offset: BLOCK as u64 }, 2).unwrap();
        engine.commit();
        let mut done = collect(&mut engine, 2);
        assert_eq!(done.remove(&1).unwrap().unwrap_err().raw_os_error(), Some(libc::EBADF), "{kind:?}");
        assert_eq!(done.remove(&2).unwrap().unwrap(), BLOCK, "{kind:?}");
        assert_eq!(back, vec![0u8; BLOCK], "{kind:?}");
    }
}

/// A backend with no direct descriptor whose operations fail.
struct Failing;
impl DiskBackend for Failing {
    fn size(&self) -> u64 {
        1 << 20
    }
    fn read_vectored_at(&self, _: &[IoBuf], _: u64) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EIO))
    }
    fn write_vectored_at(&self, _: &[IoBuf], _: u64) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::ENOSPC))
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

#[test]
fn backends_without_a_direct_descriptor_go_to_the_pool() {
    let backend: Arc<dyn DiskBackend> = Arc::new(Failing);
    let mut engine = IoEngine::new(4, EngineKind::IoUring).unwrap();
    let mut buffer = [0u8; 512];
    let buffers = vec![IoBuf::from_mut_slice(&mut buffer)];
    engine.submit(&backend, Op::Read { buffers, offset: 0 }, 1).unwrap();
    engine.submit(&backend, Op::Write { buffers: vec![IoBuf::from_slice(&[1; 512])], offset: 0 }, 2).unwrap();
    engine.submit(&backend, Op::Flush, 3).unwrap();
    engine.commit();
    let done = collect(&mut engine, 3);
    assert_eq!(done[&1].as_ref().unwrap_err().raw_os_error(), Some(libc::EIO));
    assert_eq!(done[&2].as_ref().unwrap_err().raw_os_error(), Some(libc::ENOSPC));
    assert_eq!(done[&3].as_ref().unwrap(), &0);
}

#[test]
fn an_operation_keeps_its_backend_open_after_the_caller_lets_go() {
    for kind in both_kinds() {
        let (_dir, path, disk) = raw_file(BLOCK as u64, false);
        let mut engine = IoEngine::new(4, kind).unwrap();
        let data = vec![3u8; BLOCK];
        engine.submit(&disk, Op::Write { buffers: vec![IoBuf::from_slice(&data)], offset: 0 }, 1).unwrap();
        drop(disk);
        engine.commit();
        assert_eq!(collect(&mut engine, 1)[&1].as_ref().unwrap(), &BLOCK, "{kind:?}");
        assert_eq!(std::fs::read(&path).unwrap(), data, "{kind:?}");
    }
}

#[test]
fn empty_transfers_complete_at_once() {
    for kind in both_kinds() {
        let (_dir, _path, disk) = raw_file(BLOCK as u64, false);
        let mut engine = IoEngine::new(4, kind).unwrap();
        engine.submit(&disk, Op::Read { buffers: Vec::new(), offset: 0 }, 1).unwrap();
        engine.commit();
        assert_eq!(collect(&mut engine, 1)[&1].as_ref().unwrap(), &0, "{kind:?}");
    }
}

#[test]
fn dropping_an_engine_waits_for_its_operations() {
    let (_dir, path, disk) = raw_file(0, false);
    let data = vec![8u8; 1 << 20];
    {
        let mut engine = IoEngine::new(4, EngineKind::ThreadPool).unwrap();
        engine.submit(&disk, Op::Write { buffers: vec![IoBuf::from_slice(&data)], offset: 0 }, 1).unwrap();
    }
    // Had the drop not waited, the file could still be short here.
    assert_eq!(disk.file().metadata().unwrap().len(), 1 << 20);
    let mut first = [0u8; 1];
    std::fs::File::open(&path).unwrap().read_exact_at(&mut first, (1 << 20) - 1).unwrap();
    assert_eq!(first, [8]);
}

#[test]
fn more_buffers_than_iov_max_are_submitted_in_parts() {
    for kind in both_kinds() {
        let (_dir, path, disk) = raw_file(0, false);
        let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let mut engine = IoEngine::new(4, kind).unwrap();
        let buffers: Vec<IoBuf> = data.chunks(1).map(IoBuf::from_slice).collect();
        engine.submit(&disk, Op::Write { buffers, offset: 0 }, 1).unwrap();
        engine.commit();
        assert_eq!(collect(&mut engine, 1)[&1].as_ref().unwrap(), &3000, "{kind:?}");
        assert_eq!(std::fs::read(&path).unwrap(), data, "{kind:?}");
    }
}

/// A backend whose bytes live in a file at a shift of `SHIFT` and that maps them for the fast
/// path; its own methods fail, so a request that succeeds went to the extent.
struct Mapped {
    file: std::fs::File,
    leases: Arc<Leases>,
    alignment: Option<crate::direct::Alignment>,
}

const SHIFT: u64 = 3 * BLOCK as u64;

#[derive(Default)]
struct Leases(std::sync::atomic::AtomicUsize);

impl crate::LeaseHolder for Leases {
    fn release(&self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Leases {
    fn held(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl DiskBackend for Mapped {
    fn size(&self) -> u64 {
        16 * BLOCK as u64
    }
    fn read_vectored_at(&self, _: &[IoBuf], _: u64) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EIO))
    }
    fn write_vectored_at(&self, _: &[IoBuf], _: u64) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::ENOSPC))
    }
    fn flush(&self) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EROFS))
    }
    fn discard(&self, _: u64, _: u64) -> io::Result<()> {
        Ok(())
    }
    fn write_zeroes(&self, _: u64, _: u64, _: bool) -> io::Result<()> {
        Ok(())
    }
    /// Blocks 0..8 map for reading and writing, blocks 8..12 for reading only, the rest not.
    fn map_extent(&self, offset: u64, length: u64, write: bool) -> Option<crate::Extent> {
        let end = offset + length;
        let limit = if write { 8 * BLOCK as u64 } else { 12 * BLOCK as u64 };
        if end > limit {
            return None;
        }
        self.leases.0.fetch_add(1, Ordering::SeqCst);
        Some(crate::Extent {
            fd: std::os::fd::AsRawFd::as_raw_fd(&self.file),
            host_offset: offset + SHIFT,
            alignment: self.alignment,
            lease: crate::Lease::new(self.leases.clone()),
        })
    }
}

fn mapped(alignment: Option<crate::direct::Alignment>) -> (tempfile::TempDir, Arc<Mapped>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mapped.img");
    let bytes: Vec<u8> = (0..SHIFT as usize + 16 * BLOCK).map(|i| (i / BLOCK) as u8).collect();
    std::fs::write(&path, bytes).unwrap();
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    (dir, Arc::new(Mapped { file, leases: Arc::default(), alignment }))
}

#[test]
fn mapped_extents_go_to_io_uring_at_their_host_offset_and_hold_their_lease_until_reaped() {
    let (_dir, disk) = mapped(None);
    let Some(mut engine) = uring_engine(16) else { return };
    let data = vec![0xabu8; BLOCK];
    let mut back = vec![vec![0u8; BLOCK]; 2];
    engine
        .submit(&disk, Op::Write { buffers: vec![IoBuf::from_slice(&data)], offset: BLOCK as u64 }, 1)
        .unwrap();
    let [a, b] = &mut back[..] else { unreachable!() };
    engine
        .submit(&disk, Op::Read { buffers: vec![IoBuf::from_mut_slice(a)], offset: 9 * BLOCK as u64 }, 2)
        .unwrap();
    // Not mapped: the backend's own (failing) methods.
    engine
        .submit(&disk, Op::Read { buffers: vec![IoBuf::from_mut_slice(b)], offset: 13 * BLOCK as u64 }, 3)
        .unwrap();
    engine
        .submit(&disk, Op::Write { buffers: vec![IoBuf::from_slice(&data)], offset: 9 * BLOCK as u64 }, 4)
        .unwrap();
    // Flushes never take the fast path: the backend's flush writes its metadata too.
    engine.submit(&disk, Op::Flush, 5).unwrap();
    // A buffered file's cached pages are read and written on the spot (`inline.rs`), and their
    // leases end with them; `O_DIRECT` extents below stay in flight.
    assert_eq!(disk.leases.held(), 0, "the two mapped operations ran on the spot");
    engine.commit();
    let done = collect(&mut engine, 5);
    assert_eq!(disk.leases.held(), 0, "reaped operations let their leases go");
    assert_eq!(done[&1].as_ref().unwrap(), &BLOCK);
    assert_eq!(done[&2].as_ref().unwrap(), &BLOCK);
    assert_eq!(done[&3].as_ref().unwrap_err().raw_os_error(), Some(libc::EIO));
    assert_eq!(done[&4].as_ref().unwrap_err().raw_os_error(), Some(libc::ENOSPC));
    assert_eq!(done[&5].as_ref().unwrap_err().raw_os_error(), Some(libc::EROFS));
    // Guest block 9 is file block 12.
    assert_eq!(back[0], vec![12u8; BLOCK]);
    let mut written = vec![0u8; BLOCK];
    disk.file.read_exact_at(&mut written, BLOCK as u64 + SHIFT).unwrap();
    assert_eq!(written, data, "the write landed at the host offset");
}

#[test]
fn mapped_requests_that_miss_the_direct_alignment_go_to_the_backend() {
    let alignment = crate::direct::Alignment { offset: 512, memory: 512 };
    let (_dir, disk) = mapped(Some(alignment));
    let Some(mut engine) = uring_engine(4) else { return };
    // A 512-aligned block of a larger buffer, and a 100-byte piece that no O_DIRECT file takes.
    let mut memory = vec![0u8; 2 * BLOCK];
    let skip = memory.as_ptr().align_offset(512);
    let aligned = IoBuf::from_mut_slice(&mut memory[skip..skip + BLOCK]);
    // SAFETY: inside `memory`, which outlives the requests.
    let odd = unsafe { IoBuf::new(aligned.as_ptr(), 100) };
    engine.submit(&disk, Op::Read { buffers: vec![aligned], offset: 0 }, 1).unwrap();
    engine.submit(&disk, Op::Read { buffers: vec![odd], offset: 0 }, 2).unwrap();
    engine.commit();
    let done = collect(&mut engine, 2);
    assert_eq!(done[&1].as_ref().unwrap(), &BLOCK, "aligned: the fast path");
    assert_eq!(done[&2].as_ref().unwrap_err().raw_os_error(), Some(libc::EIO), "unaligned: the backend");
    assert_eq!(disk.leases.held(), 0, "a refused extent's lease ends at once");
}

#[test]
fn mapped_direct_extents_go_to_io_uring_and_hold_their_lease_until_reaped() {
    // The descriptor is not really O_DIRECT: the alignment only keeps the read off the
    // on-the-spot path, as a real O_DIRECT file's would.
    let alignment = crate::direct::Alignment { offset: 512, memory: 512 };
    let (_dir, disk) = mapped(Some(alignment));
    let Some(mut engine) = uring_engine(4) else { return };
    let mut memory = vec![0u8; 2 * BLOCK];
    let skip = memory.as_ptr().align_offset(512);
    let buffer = IoBuf::from_mut_slice(&mut memory[skip..skip + BLOCK]);
    engine.submit(&disk, Op::Read { buffers: vec![buffer], offset: 9 * BLOCK as u64 }, 1).unwrap();
    assert_eq!(disk.leases.held(), 1, "the operation holds its lease until it is reaped");
    engine.commit();
    let done = collect(&mut engine, 1);
    assert_eq!(done[&1].as_ref().unwrap(), &BLOCK);
    assert_eq!(disk.leases.held(), 0, "reaped: the lease ended");
    // Guest block 9 is file block 12.
    assert_eq!(memory[skip..skip + BLOCK], vec![12u8; BLOCK]);
}
