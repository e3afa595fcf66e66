//! `O_DIRECT` (`cache=none`): the kernel moves data between the disk and the request's memory
//! without the page cache, but only if the file offset, every buffer's address and every
//! buffer's length are aligned as the file's storage needs; anything else fails with `EINVAL`.
//! Guests do not promise that (a 512-byte-sector guest on a 4 KiB-sector disk, a buffer at any
//! address), so a request that does not fit goes through an aligned bounce buffer here, in
//! bounded chunks, and one that fits goes straight to `preadv`/`pwritev`.

use std::alloc::{self, Layout};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use crate::{total_len, vectored, IoBuf};

/// The largest alignment probed for, as QEMU's `MAX_BLOCKSIZE`; also the guess when nothing
/// answers.
const PROBE_MAX: usize = 4096;

/// The most a bounce buffer holds: a larger unaligned request is done in pieces this size.
const CHUNK: usize = 1 << 20;

/// The largest alignment believed from the kernel; anything larger (or not a power of two) is
/// not a real storage constraint and the probing decides instead.
const ALIGNMENT_MAX: u32 = 1 << 16;

/// What `O_DIRECT` needs on one file, in bytes (powers of two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alignment {
    /// File offsets and buffer lengths: the storage's logical block size.
    pub offset: usize,
    /// Buffer addresses in memory.
    pub memory: usize,
}

impl Alignment {
    /// Finds the file's alignment: `statx(STATX_DIOALIGN)` where the kernel and filesystem tell
    /// it (Linux 6.1 and later), the logical block size (`BLKSSZGET`) of a block device, or else
    /// by trying reads as QEMU does (`raw_probe_alignment`).
    pub fn of(file: &File) -> Alignment {
        let fd = file.as_raw_fd();
        if let Some(alignment) = from_statx(fd) {
            return alignment;
        }
        let is_block_device = file.metadata().is_ok_and(|m| m.file_type().is_block_device());
        if is_block_device {
            if let Some(size) = logical_block_size(fd) {
                return Alignment { offset: size, memory: size };
            }
        }
        probe(fd)
    }

    /// Whether `buffers` at `offset` can go to the kernel as they are. Each buffer's length must
    /// be a multiple of the block size too: the kernel checks every segment, not the total.
    pub fn fits(&self, buffers: &[IoBuf], offset: u64) -> bool {
        offset.is_multiple_of(self.offset as u64)
            && buffers.iter().all(|b| {
                (b.as_ptr() as usize).is_multiple_of(self.memory) && b.len().is_multiple_of(self.offset)
            })
    }

    /// The alignment a bounce buffer needs to satisfy both.
    fn strictest(&self) -> usize {
        self.offset.max(self.memory)
    }
}

fn believable(value: u32) -> Option<usize> {
    (value.is_power_of_two() && value <= ALIGNMENT_MAX).then_some(value as usize)
}

/// `STATX_DIOALIGN` from the kernel's `struct statx`, read from its fixed layout: libc's glibc
/// binding does not expose the two fields.
fn from_statx(fd: RawFd) -> Option<Alignment> {
    // The kernel's struct statx is 256 bytes; u64s keep it 8-byte aligned.
    let mut buffer = [0u64; 32];
    // SAFETY: statx writes at most 256 bytes into the buffer, which is 256 bytes and lives
    // across the call; the empty path with AT_EMPTY_PATH names the open descriptor itself.
    let result = unsafe {
        libc::syscall(
            libc::SYS_statx,
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            buffer.as_mut_ptr(),
        )
    };
    if result != 0 {
        return None;
    }
    let word = |byte: usize| -> u32 {
        let pair = buffer[byte / 8];
        // Little- or big-endian, the u32 at `byte` is the matching half of its u64's bytes.
        let bytes = pair.to_ne_bytes();
        let at = byte % 8;
        u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
    };
    // stx_mask at 0, stx_dio_mem_align at 152, stx_dio_offset_align at 156.
    if word(0) & libc::STATX_DIOALIGN == 0 {
        return None;
    }
    // An offset alignment of 0 means "no direct I/O here"; the file was opened with O_DIRECT
    // anyway, so let the probing find what works.
    Some(Alignment { offset: believable(word(156))?, memory: believable(word(152))? })
}

fn logical_block_size(fd: RawFd) -> Option<usize> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int, into `size`, which lives across the call.
    let result = unsafe { libc::ioctl(fd, libc::BLKSSZGET, &mut size) };
    if result != 0 {
        return None;
    }
    believable(u32::try_from(size).ok()?)
}

/// Tries reads with growing alignments, as QEMU does: first the offset/length (with a buffer
/// aligned to the largest), then the buffer's address. A read that does not fail with EINVAL
/// was accepted. Where nothing works, the largest is the best guess.
fn probe(fd: RawFd) -> Alignment {
    let Ok(mut buffer) = AlignedBuffer::new(2 * PROBE_MAX, PROBE_MAX) else {
        return Alignment { offset: PROBE_MAX, memory: PROBE_MAX };
    };
    let candidates = || (9..=12).map(|shift| 1usize << shift);
    let accepted = |memory: &mut [u8]| {
        // SAFETY: pread writes at most `memory.len()` bytes into `memory`, which lives across
        // the call.
        let result = unsafe { libc::pread(fd, memory.as_mut_ptr().cast(), memory.len(), 0) };
        result >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
    };
    let slice = buffer.as_mut_slice();
    let offset = candidates().find(|&size| accepted(&mut slice[..size])).unwrap_or(PROBE_MAX);
    let memory =
        candidates().find(|&align| accepted(&mut slice[align..align + PROBE_MAX])).unwrap_or(PROBE_MAX);
    Alignment { offset, memory }
}

/// Heap memory with a chosen alignment, zeroed (so it is never read uninitialised).
struct AlignedBuffer {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuffer {
    fn new(size: usize, align: usize) -> io::Result<AlignedBuffer> {
        let layout = Layout::from_size_align(size.max(1), align)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout's size is not zero.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(io::Error::new(io::ErrorKind::OutOfMemory, "no memory for a bounce buffer"));
        }
        Ok(AlignedBuffer { ptr, layout })
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the allocation is `layout.size()` bytes, zeroed at birth, and owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout, and freed only here.
        unsafe { alloc::dealloc(self.ptr, self.layout) }
    }
}

/// Direct I/O on one file: aligned requests straight through, the others bounced.
#[derive(Debug)]
pub struct Direct {
    alignment: Alignment,
    /// A bounced write rewrites whole blocks, including bytes around the request that it read
    /// first; a concurrent write to those bytes would be undone. Bounced writes take this lock
    /// exclusively and straight writes shared, so they never overlap in time.
    blocks: RwLock<()>,
    /// The most one bounce buffer holds.
    chunk: usize,
    /// Requests that went through a bounce buffer.
    bounced: AtomicU64,
}

impl Direct {
    /// Direct I/O with `alignment`.
    pub fn new(alignment: Alignment) -> Direct {
        Direct { alignment, blocks: RwLock::new(()), chunk: CHUNK, bounced: AtomicU64::new(0) }
    }

    /// How many requests went through a bounce buffer (they cost a copy, and a bounced write
    /// of a partial block a read first).
    pub fn bounced(&self) -> u64 {
        self.bounced.load(Ordering::Relaxed)
    }

    /// The alignment requests are checked against.
    pub fn alignment(&self) -> Alignment {
        self.alignment
    }

    /// Fills `buffers` from `offset`.
    pub fn read(&self, fd: RawFd, buffers: &[IoBuf], offset: u64) -> io::Result<()> {
        if self.alignment.fits(buffers, offset) {
            match vectored::read_all(fd, buffers, offset) {
                // The kernel knows better than the probing: bounce after all.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                result => return result,
            }
        }
        self.bounce(fd, buffers, offset, Direction::Read, None)
    }

    /// Writes `buffers` at `offset`. A bounced write that has to round the file's last block up
    /// writes past `size` and then cuts the file back to it, so the image does not grow.
    pub fn write(&self, fd: RawFd, buffers: &[IoBuf], offset: u64, size: Option<u64>) -> io::Result<()> {
        if self.alignment.fits(buffers, offset) {
            let _shared = self.blocks.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            match vectored::write_all(fd, buffers, offset) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                result => return result,
            }
        }
        let _exclusive = self.blocks.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.bounce(fd, buffers, offset, Direction::Write, size)
    }

    /// Holds bounced writes off while the file's bytes change outside the request path (a hole
    /// punched, a range zeroed): a bounced write puts back whole blocks from a copy it read
    /// first, and would undo a zeroing of their other bytes done in between.
    pub(crate) fn exclude_bounced_writes(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.blocks.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn bounce(
        &self,
        fd: RawFd,
        buffers: &[IoBuf],
        offset: u64,
        direction: Direction,
        size: Option<u64>,
    ) -> io::Result<()> {
        let total = total_len(buffers) as u64;
        if total == 0 {
            return Ok(());
        }
        self.bounced.fetch_add(1, Ordering::Relaxed);
        // The chunk is a multiple of every believable block size.
        let chunk_size = self.chunk.max(self.alignment.strictest());
        let block = self.alignment.offset as u64;
        let too_far =
            || io::Error::new(io::ErrorKind::InvalidInput, "request beyond the largest file offset");
        let end = offset.checked_add(total).ok_or_else(too_far)?;
        let (first, last) =
            (offset - offset % block, end.checked_next_multiple_of(block).ok_or_else(too_far)?);
        let mut bounce =
            AlignedBuffer::new(chunk_size.min((last - first) as usize), self.alignment.strictest())?;
        let bounce = bounce.as_mut_slice();
        // A write past the disk's end (rounded up to a block) is cut back afterwards, to the
        // file's length now if the host has grown the file since (its bytes are not ours).
        let cut_to = match (direction, size) {
            (Direction::Write, Some(size)) if last > size => Some(size.max(file_length(fd)?)),
            _ => None,
        };
        let mut cursor = Cursor::new(buffers);
        let mut position = first;
        while position < last {
            let length = (chunk_size as u64).min(last - position) as usize;
            let chunk = &mut bounce[..length];
            // The part of this chunk the request covers.
            let (from, to) = (offset.max(position), end.min(position + length as u64));
            let (inner_from, inner_to) = ((from - position) as usize, (to - position) as usize);
            match direction {
                Direction::Read => {
                    let got = read_up_to(fd, chunk, position, block)?;
                    if got < inner_to {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "read past the end of the image",
                        ));
                    }
                    cursor.copy_out(&chunk[inner_from..inner_to]);
                }
                Direction::Write => {
                    // Blocks the request covers only partly keep their other bytes: read them.
                    let size = block as usize;
                    if !inner_from.is_multiple_of(size) {
                        read_block(fd, &mut chunk[..size], position)?;
                    }
                    if !inner_to.is_multiple_of(size) {
                        let tail = length - size;
                        read_block(fd, &mut chunk[tail..], position + tail as u64)?;
                    }
                    cursor.copy_in(&mut chunk[inner_from..inner_to]);
                    vectored::write_all(fd, &[IoBuf::from_slice(chunk)], position)?;
                }
            }
            position += length as u64;
        }
        if let Some(size) = cut_to.filter(|&length| last > length) {
            let size = libc::off_t::try_from(size).map_err(|_| too_far())?;
            // SAFETY: ftruncate only reads its integer arguments; the descriptor is open.
            if unsafe { libc::ftruncate(fd, size) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// The length of the open file.
fn file_length(fd: RawFd) -> io::Result<u64> {
    // SAFETY: an all-zero stat is a valid value of the plain C struct fstat fills.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes one struct stat into `stat`, which lives across the call.
    if unsafe { libc::fstat(fd, &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::try_from(stat.st_size).unwrap_or(0))
}

#[derive(Clone, Copy)]
enum Direction {
    Read,
    Write,
}

/// Reads one whole block, or what there is of it before the end of the file (the rest stays
/// zero).
fn read_block(fd: RawFd, block: &mut [u8], position: u64) -> io::Result<()> {
    let got = read_up_to(fd, block, position, block.len() as u64)?;
    block[got..].fill(0);
    Ok(())
}

/// Reads into `memory` from `position` until it is full or the file ends; returns the count.
/// `block` is the alignment, to see where the file ends.
fn read_up_to(fd: RawFd, memory: &mut [u8], position: u64, block: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < memory.len() {
        let at = libc::off_t::try_from(position + got as u64).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "offset beyond the largest file offset")
        })?;
        let rest = &mut memory[got..];
        // SAFETY: pread writes at most `rest.len()` bytes into `rest`, which lives across the call.
        let result = unsafe { libc::pread(fd, rest.as_mut_ptr().cast(), rest.len(), at) };
        match result {
            0 => break,
            n if n > 0 => got += n as usize,
            _ => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
        // A direct read that stops inside a block stopped at the end of the file; asking again
        // from there would be unaligned.
        if !(got as u64).is_multiple_of(block) {
            break;
        }
    }
    Ok(got)
}

/// A position in a list of request buffers, for copying a request's bytes in order.
struct Cursor<'a> {
    buffers: &'a [IoBuf],
    index: usize,
    within: usize,
}

impl<'a> Cursor<'a> {
    fn new(buffers: &'a [IoBuf]) -> Cursor<'a> {
        Cursor { buffers, index: 0, within: 0 }
    }

    /// Copies `data` into the request's (read) buffers from the cursor on.
    fn copy_out(&mut self, mut data: &[u8]) {
        while let Some((buffer, start)) = self.next_piece(data.len()) {
            // SAFETY: a read request's buffers are its destination, mapped and writable for the
            // call (IoBuf::new's contract).
            let target = unsafe { buffer.as_mut_slice() };
            let count = (target.len() - start).min(data.len());
            target[start..start + count].copy_from_slice(&data[..count]);
            data = &data[count..];
            self.advance(count);
        }
    }

    /// Copies the request's (write) buffers from the cursor on into `data`.
    fn copy_in(&mut self, mut data: &mut [u8]) {
        while let Some((buffer, start)) = self.next_piece(data.len()) {
            // SAFETY: a write request's buffers are mapped and readable for the call.
            let source = unsafe { buffer.as_slice() };
            let count = (source.len() - start).min(data.len());
            data[..count].copy_from_slice(&source[start..start + count]);
            data = &mut data[count..];
            self.advance(count);
        }
    }

    /// The buffer the cursor is in, and where in it, while `wanted` bytes remain.
    fn next_piece(&mut self, wanted: usize) -> Option<(IoBuf, usize)> {
        if wanted == 0 {
            return None;
        }
        while self.index < self.buffers.len() && self.within == self.buffers[self.index].len() {
            self.index += 1;
            self.within = 0;
        }
        self.buffers.get(self.index).map(|b| (*b, self.within))
    }

    fn advance(&mut self, count: usize) {
        self.within += count;
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::{DiskBackend, RawFile};

    /// tmpfs may refuse O_DIRECT: the tests need a disk-backed directory, /var/tmp unless
    /// KESTREL_DIRECT_TMPDIR names another.
    fn disk_dir() -> tempfile::TempDir {
        let base = std::env::var_os("KESTREL_DIRECT_TMPDIR")
            .map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
        tempfile::tempdir_in(&base)
            .unwrap_or_else(|e| panic!("cannot make a directory in {}: {e}", base.display()))
    }

    fn pattern(length: usize) -> Vec<u8> {
        (0..length).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// A file holding `content`, and the same file opened again with O_DIRECT as a disk.
    fn direct_disk(dir: &Path, content: &[u8]) -> (PathBuf, RawFile) {
        let path = dir.join("disk.img");
        std::fs::write(&path, content).unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .unwrap_or_else(|e| panic!("O_DIRECT is not supported in {}: {e}", dir.display()));
        let disk = RawFile::from_file(file).unwrap();
        (path, disk)
    }

    fn bounced(disk: &RawFile) -> u64 {
        disk.direct.as_ref().unwrap().bounced()
    }

    /// A buffer at an address that is `skew` bytes past an alignment of 4096.
    fn skewed(length: usize, skew: usize) -> (AlignedBuffer, usize) {
        (AlignedBuffer::new(length + skew, 4096).unwrap(), skew)
    }

    #[test]
    fn the_alignment_found_is_one_the_kernel_enforces() {
        let dir = disk_dir();
        let (_, disk) = direct_disk(dir.path(), &pattern(64 * 1024));
        let alignment = disk.direct_alignment().expect("O_DIRECT seen on the file");
        assert!(alignment.offset.is_power_of_two() && alignment.memory.is_power_of_two(), "{alignment:?}");
        let fd = disk.file().as_raw_fd();
        let mut buffer = AlignedBuffer::new(2 * 4096, 4096).unwrap();
        let memory = buffer.as_mut_slice();
        let block = alignment.offset;
        // SAFETY: pread writes at most `block` bytes into the buffer, which is larger.
        let aligned = unsafe { libc::pread(fd, memory.as_mut_ptr().cast(), block, block as i64) };
        assert_eq!(aligned, block as isize, "an aligned direct read works");
        // SAFETY: as above, at an offset one byte off the block size.
        let unaligned = unsafe { libc::pread(fd, memory.as_mut_ptr().cast(), block, 1) };
        assert_eq!(unaligned, -1, "O_DIRECT is in force: an unaligned read fails");
        assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn probing_finds_an_alignment_the_kernel_accepts() {
        let dir = disk_dir();
        let (_, disk) = direct_disk(dir.path(), &pattern(64 * 1024));
        let probed = probe(disk.file().as_raw_fd());
        let told = disk.direct_alignment().unwrap();
        // The kernel may accept less than it tells (statx gives the safe value), never more.
        assert!(probed.offset <= told.offset.max(PROBE_MAX), "{probed:?} against {told:?}");
        let mut direct = Direct::new(probed);
        direct.chunk = 4096;
        let mut back = vec![0u8; 4000];
        direct.read(disk.file().as_raw_fd(), &[IoBuf::from_mut_slice(&mut back)], 1234).unwrap();
        assert_eq!(back, pattern(64 * 1024)[1234..5234]);
    }

    #[test]
    fn without_o_direct_there_is_no_alignment() {
        let dir = disk_dir();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, [0u8; 4096]).unwrap();
        assert_eq!(RawFile::open(&path, true).unwrap().direct_alignment(), None);
    }

    #[test]
    fn aligned_requests_go_straight_and_unaligned_ones_are_bounced() {
        let dir = disk_dir();
        let content = pattern(256 * 1024);
        let (_, disk) = direct_disk(dir.path(), &content);
        let (mut buffer, _) = skewed(8192, 0);
        disk.read_vectored_at(&[IoBuf::from_mut_slice(&mut buffer.as_mut_slice()[..8192])], 16384).unwrap();
        assert_eq!(&buffer.as_mut_slice()[..8192], &content[16384..16384 + 8192]);
        assert_eq!(bounced(&disk), 0, "an aligned read went straight");

        // A 512-byte-sector guest's request with buffers anywhere in its memory.
        let (mut buffer, skew) = skewed(3000, 3);
        let target = &mut buffer.as_mut_slice()[skew..skew + 3000];
        disk.read_vectored_at(&[IoBuf::from_mut_slice(target)], 1536).unwrap();
        assert_eq!(&target[..], &content[1536..4536]);
        assert_eq!(bounced(&disk), 1);
    }

    #[test]
    fn an_unaligned_write_keeps_the_bytes_around_it() {
        let dir = disk_dir();
        let mut expected = pattern(64 * 1024);
        let (path, disk) = direct_disk(dir.path(), &expected);
        let (a, b) = (vec![0xaa; 1000], vec![0xbb; 2001]);
        disk.write_vectored_at(&[IoBuf::from_slice(&a), IoBuf::from_slice(&b)], 4095).unwrap();
        expected[4095..5095].fill(0xaa);
        expected[5095..7096].fill(0xbb);
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        assert_eq!(bounced(&disk), 1);
    }

    /// A guest's write and write-zeroes of different bytes in one block, in flight at once (the
    /// device zeroes on its worker while the engine writes): the bounced write's copy of the
    /// block must not put back bytes the zeroing cleared. Without the exclusion this fails
    /// within a few hundred rounds on two cores.
    #[test]
    fn a_bounced_write_does_not_undo_a_concurrent_write_zeroes() {
        let dir = disk_dir();
        let (_, disk) = direct_disk(dir.path(), &[0u8; 64 * 1024]);
        let disk = std::sync::Arc::new(disk);
        let middle = (disk.direct_alignment().unwrap().offset / 2) as u64;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (disk, stop) = (disk.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    disk.write_vectored_at(&[IoBuf::from_slice(&[0xaa])], 0).unwrap();
                }
            })
        };
        let mut failures = 0;
        for _ in 0..2000 {
            disk.write_vectored_at(&[IoBuf::from_slice(&[0xbb])], middle).unwrap();
            disk.write_zeroes(middle, 1, false).unwrap();
            let mut byte = [0xffu8];
            disk.read_vectored_at(&[IoBuf::from_mut_slice(&mut byte)], middle).unwrap();
            failures += usize::from(byte != [0]);
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        assert_eq!(failures, 0, "zeroed bytes came back");
    }

    #[test]
    fn a_bounced_write_at_the_unaligned_end_of_a_file_does_not_grow_it() {
        let dir = disk_dir();
        let mut expected = pattern(5000);
        let (path, disk) = direct_disk(dir.path(), &expected);
        disk.write_vectored_at(&[IoBuf::from_slice(&[1u8; 100])], 4900).unwrap();
        expected[4900..].fill(1);
        assert_eq!(std::fs::read(&path).unwrap(), expected, "same length, new tail");
        let mut tail = [0u8; 200];
        disk.read_vectored_at(&[IoBuf::from_mut_slice(&mut tail)], 4800).unwrap();
        assert_eq!(&tail[..], &expected[4800..]);
        let mut past = [0u8; 2];
        let error = disk.read_vectored_at(&[IoBuf::from_mut_slice(&mut past)], 4999).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// A file the host grew after the disk was opened keeps its new bytes when a bounced write
    /// rounds the disk's unaligned end up: the cut goes back to the file's length, not the
    /// disk's.
    #[test]
    fn a_bounced_write_at_the_end_keeps_what_the_host_appended() {
        let dir = disk_dir();
        let mut expected = pattern(5000);
        let (path, disk) = direct_disk(dir.path(), &expected);
        let appended = vec![0x77u8; 4000];
        std::io::Write::write_all(
            &mut std::fs::OpenOptions::new().append(true).open(&path).unwrap(),
            &appended,
        )
        .unwrap();
        disk.write_vectored_at(&[IoBuf::from_slice(&[1u8; 100])], 4900).unwrap();
        expected[4900..].fill(1);
        expected.extend_from_slice(&appended);
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }

    #[test]
    fn a_request_larger_than_the_bounce_buffer_is_done_in_chunks() {
        let dir = disk_dir();
        let mut expected = pattern(3 << 20);
        let (path, disk) = direct_disk(dir.path(), &expected);
        let data: Vec<u8> = pattern((2 << 20) + 777).iter().map(|b| !b).collect();
        disk.write_vectored_at(&[IoBuf::from_slice(&data)], 333).unwrap();
        expected[333..333 + data.len()].copy_from_slice(&data);
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        let mut back = vec![0u8; data.len() + 2];
        disk.read_vectored_at(&[IoBuf::from_mut_slice(&mut back)], 332).unwrap();
        assert_eq!(back, expected[332..334 + data.len()]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 48, ..Default::default() })]

        /// Requests at any offset, cut into buffers of any size, with a small bounce buffer so
        /// they span several chunks, read and write what a plain file would.
        #[test]
        fn direct_io_matches_a_plain_file(
            requests in proptest::collection::vec(
                (proptest::bool::ANY, 0u64..60_000, proptest::collection::vec(0usize..5000, 0..5), 0usize..64),
                1..12,
            ),
        ) {
            let dir = disk_dir();
            let mut model = pattern(64 * 1024);
            let (path, mut disk) = direct_disk(dir.path(), &model);
            disk.direct.as_mut().unwrap().chunk = 8192;
            for (write, offset, lengths, skew) in requests {
                let total: usize = lengths.iter().sum();
                let offset = offset.min((model.len() - total.min(model.len())) as u64);
                if offset as usize + total > model.len() {
                    continue;
                }
                let mut memory = AlignedBuffer::new(total + skew, 4096).unwrap();
                let memory = &mut memory.as_mut_slice()[skew..];
                let start = offset as usize;
                if write {
                    for (i, byte) in memory.iter_mut().enumerate() {
                        *byte = (i as u8) ^ 0x5a ^ (offset as u8);
                    }
                }
                let mut buffers = Vec::new();
                let mut rest = &mut memory[..];
                for length in &lengths {
                    let (piece, tail) = rest.split_at_mut(*length);
                    buffers.push(IoBuf::from_mut_slice(piece));
                    rest = tail;
                }
                if write {
                    disk.write_vectored_at(&buffers, offset).unwrap();
                    model[start..start + total].copy_from_slice(&memory[..total]);
                } else {
                    disk.read_vectored_at(&buffers, offset).unwrap();
                    proptest::prop_assert_eq!(&memory[..total], &model[start..start + total]);
                }
            }
            proptest::prop_assert_eq!(std::fs::read(&path).unwrap(), model);
        }
    }
}
