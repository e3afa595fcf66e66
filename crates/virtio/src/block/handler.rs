//! Parsing and executing the guest's block requests (virtio 1.2 section 5.2.6).
//!
//! A request is one descriptor chain: a 16-byte header the device reads (type, reserved, sector),
//! then the data (read by the device for writes, written by it for reads), then one status byte
//! the device writes. The status byte is the last writable byte of the chain; a chain without one
//! cannot be answered and is completed with nothing written.

use std::io::{self, Read, Write};
use std::sync::Arc;

use crate::GuestRam;
use storage::IoBuf;
use virtio_queue::DescriptorChain;
use vm_memory::bitmap::Bitmap;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

/// A request's buffers as guest RAM hands them out (writes through them mark pages dirty).
type Reader<'a> = virtio_queue::Reader<'a, vm_memory::bitmap::MS<'a, GuestRam>>;
type Writer<'a> = virtio_queue::Writer<'a, vm_memory::bitmap::MS<'a, GuestRam>>;

use super::{ID_BYTES, QUEUE_SIZE, SECTOR_SIZE};
use crate::device::GuestErrorLog;
use crate::metrics::BlockMetrics;
use storage::engine::Op;
use storage::DiskBackend;

// Request types.
const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_T_FLUSH: u32 = 4;
const VIRTIO_BLK_T_GET_ID: u32 = 8;
const VIRTIO_BLK_T_DISCARD: u32 = 11;
const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

// Status byte values.
const VIRTIO_BLK_S_OK: u8 = 0;
const VIRTIO_BLK_S_IOERR: u8 = 1;
const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Disk errors: the host's, but the guest sends the requests that meet them, as fast as it
/// likes, so they are limited like its own problems (one budget for every disk).
static IO_ERRORS: GuestErrorLog = GuestErrorLog::site("virtio-blk disk errors");

/// Write-zeroes segment flag: the device may deallocate the range instead of writing zeroes.
const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

const HEADER_BYTES: usize = 16;
/// `struct virtio_blk_discard_write_zeroes`: le64 sector, le32 num_sectors, le32 flags.
const SEGMENT_BYTES: usize = 16;

// Limits on discard and write-zeroes requests, advertised in the configuration space. They bound
// the work of one request: a discard only punches holes, but write-zeroes may have to write real
// zeroes on storage that can neither punch holes nor zero ranges.
pub(super) const MAX_DISCARD_SECTORS: u32 = 1 << 21; // 1 GiB per segment
pub(super) const MAX_DISCARD_SEGMENTS: u32 = 32;
pub(super) const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 18; // 128 MiB per segment
pub(super) const MAX_WRITE_ZEROES_SEGMENTS: u32 = 8;

/// Data buffers per request (`seg_max`): a request also needs a descriptor for its header and one
/// for its status, and without indirect descriptors the whole chain must fit the queue.
pub(super) const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// The largest data buffer (`size_max`); Linux wants at least a page.
pub(super) const SIZE_MAX: u32 = 1 << 20;
/// The most data one request may carry, as the driver was told: a larger one is refused, so that
/// a request's work is bounded however long the descriptors the guest makes up.
const MAX_DATA_BYTES: usize = SEG_MAX as usize * SIZE_MAX as usize;

/// The disk as the handler sees it: storage, size and what the guest may do with it.
pub(super) struct Disk<B: ?Sized> {
    pub backend: Arc<B>,
    /// Capacity in 512-byte sectors.
    pub sectors: u64,
    pub read_only: bool,
    /// The serial number GET_ID returns, NUL-padded.
    pub id: [u8; ID_BYTES],
}

// Not derived: a derive would require `B: Clone`, but only the `Arc` is cloned.
impl<B: ?Sized> Clone for Disk<B> {
    fn clone(&self) -> Self {
        Disk { backend: self.backend.clone(), sectors: self.sectors, read_only: self.read_only, id: self.id }
    }
}

/// Why a request failed; each maps to the status byte the guest gets.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("the request has no 16-byte header in device-readable descriptors")]
    MissingHeader,
    #[error("request type {0} is not supported")]
    UnsupportedType(u32),
    #[error("segment flags {0:#x} are not supported")]
    UnsupportedFlags(u32),
    #[error("the disk is read-only")]
    ReadOnly,
    #[error("{0} data bytes are more than the {MAX_DATA_BYTES} a request may carry")]
    TooLarge(usize),
    #[error("{0} data bytes are not a whole number of sectors")]
    PartialSector(usize),
    #[error("{count} sectors from sector {sector} run past the end of the disk ({capacity} sectors)")]
    OutOfRange { sector: u64, count: u64, capacity: u64 },
    #[error("{0} bytes of discard/write-zeroes segments are not a whole, allowed number of segments")]
    BadSegmentList(usize),
    #[error("a segment of {count} sectors is over the limit of {max}")]
    SegmentTooLarge { count: u32, max: u32 },
    #[error("guest memory: {0}")]
    GuestMemory(io::Error),
    #[error("host I/O failed: {0}")]
    Host(io::Error),
}

/// A request carried out, for the device's metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Done {
    /// Bytes moved from the disk to the guest.
    Read(usize),
    /// Bytes moved from the guest to the disk.
    Write(usize),
    Flush,
    GetId,
    Discard,
    WriteZeroes,
}

impl Done {
    fn count(self, metrics: &BlockMetrics) {
        match self {
            Done::Read(bytes) => {
                metrics.read_count.inc();
                metrics.read_bytes.add(bytes as u64);
            }
            Done::Write(bytes) => {
                metrics.write_count.inc();
                metrics.write_bytes.add(bytes as u64);
            }
            Done::Flush => metrics.flush_count.inc(),
            Done::GetId => {}
            Done::Discard => metrics.discard_count.inc(),
            Done::WriteZeroes => metrics.write_zeroes_count.inc(),
        }
    }
}

impl RequestError {
    fn status(&self) -> u8 {
        match self {
            RequestError::UnsupportedType(_) | RequestError::UnsupportedFlags(_) => VIRTIO_BLK_S_UNSUPP,
            _ => VIRTIO_BLK_S_IOERR,
        }
    }
}

/// What became of a request the handler took from the queue.
pub(super) enum Served {
    /// It is done and its status byte written: complete it with this used length.
    Used(u32),
    /// It is valid and its data transfer (or flush) is for an engine to carry out; when that
    /// ends, [`finish`] writes the status byte at `status`.
    Pending { op: Op, done: Done, status: GuestAddress },
}

/// Where the request's status byte is: the last byte of its last device-writable descriptor.
fn status_address(chain: &DescriptorChain<&GuestRam>) -> Option<GuestAddress> {
    let last = chain.clone().filter(|d| d.is_write_only() && d.len() > 0).last()?;
    last.addr().checked_add(u64::from(last.len()) - 1)
}

/// How requests are carried out, the same for every queue of a device.
#[derive(Clone, Copy, Debug)]
pub(super) struct Mode {
    /// Reads, writes and flushes go to an engine ([`Served::Pending`]) instead of being done on
    /// the spot.
    pub defer: bool,
    /// VIRTIO_BLK_F_FLUSH is offered; without it (cache=unsafe) a flush is answered at once.
    pub flush: bool,
}

/// The data bytes a request moves, for the rate limiter's bandwidth bucket, read from its chain
/// without taking it: a read's writable bytes (less the status byte), a write's readable bytes
/// after the header. Flushes, GET_ID, discard and write-zeroes move no guest data and cost 0
/// (they still count as an operation), and so does a malformed request or one larger than a
/// request may be: it is refused without touching the disk, and charging its claimed size would
/// let a guest run up an unbounded debt.
pub(super) fn data_bytes(memory: &GuestRam, chain: &DescriptorChain<&GuestRam>) -> u64 {
    let Ok(mut reader) = Reader::new(memory, chain.clone()) else { return 0 };
    let mut header = [0u8; HEADER_BYTES];
    if reader.read_exact(&mut header).is_err() {
        return 0;
    }
    let request_type = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let bytes = match request_type {
        VIRTIO_BLK_T_IN => match Writer::new(memory, chain.clone()) {
            Ok(writer) => writer.available_bytes().saturating_sub(1),
            Err(_) => 0,
        },
        VIRTIO_BLK_T_OUT => reader.available_bytes(),
        _ => 0,
    };
    match bytes {
        0..=MAX_DATA_BYTES => bytes as u64,
        _ => 0,
    }
}

/// Validates one request and either carries it out and writes its status byte, or hands back
/// the transfer for an engine (`mode.defer`). Returns the used length of a finished request.
pub(super) fn serve<B: DiskBackend + ?Sized>(
    memory: &GuestRam,
    disk: &Disk<B>,
    guest_errors: &GuestErrorLog,
    metrics: &BlockMetrics,
    chain: DescriptorChain<&GuestRam>,
    mode: Mode,
) -> Served {
    let descriptors = chain.clone();
    let reader = Reader::new(memory, chain.clone());
    let mut data = match Writer::new(memory, chain) {
        Ok(writer) if writer.available_bytes() > 0 => writer,
        Ok(_) => {
            metrics.invalid_reqs_count.inc();
            guest_errors.log(format_args!("a request has no status byte; completed unanswered"));
            return Served::Used(0);
        }
        Err(e) => {
            metrics.invalid_reqs_count.inc();
            guest_errors.log(format_args!("a request's writable buffers are not in guest memory: {e:?}"));
            return Served::Used(0);
        }
    };
    let status_offset = data.available_bytes() - 1;
    let mut status = match data.split_at(status_offset) {
        Ok(status) => status,
        Err(e) => {
            metrics.invalid_reqs_count.inc();
            guest_errors.log(format_args!("cannot find a request's status byte: {e:?}"));
            return Served::Used(0);
        }
    };
    let Some(status_at) = status_address(&descriptors) else {
        metrics.invalid_reqs_count.inc();
        guest_errors.log(format_args!("cannot find a request's status byte"));
        return Served::Used(0);
    };
    let request = Request { memory, descriptors };
    let result = match reader {
        Ok(mut reader) => execute(disk, &request, &mut reader, &mut data, mode),
        Err(e) => Err(RequestError::GuestMemory(io::Error::other(format!("{e:?}")))),
    };
    let result = match result {
        Ok(Action::Submit(op, done)) => return Served::Pending { op, done, status: status_at },
        Ok(Action::Done(done)) => Ok(done),
        Err(e) => Err(e),
    };
    // Reads fill guest memory directly, past the writer; the rest of the chain's writable bytes
    // (GET_ID) went through it.
    let written = match result {
        Ok(Done::Read(bytes)) => bytes,
        _ => data.bytes_written(),
    };
    let status_byte = outcome(result, metrics);
    if let Err(e) = status.write_all(&[status_byte]) {
        guest_errors.log(format_args!("cannot write a status byte: {e}"));
        return Served::Used(0);
    }
    Served::Used(used_length(written))
}

/// The used length of a request that wrote `written` bytes of data and its status byte. The
/// driver's writable buffers are a u32 length at most in each of at most 65536 descriptors;
/// saturate rather than wrap on a chain claiming more than 4 GiB.
fn used_length(written: usize) -> u32 {
    u32::try_from(written.saturating_add(1)).unwrap_or(u32::MAX)
}

/// Counts a request's outcome and returns its status byte.
fn outcome(result: Result<Done, RequestError>, metrics: &BlockMetrics) -> u8 {
    match result {
        Ok(done) => {
            done.count(metrics);
            VIRTIO_BLK_S_OK
        }
        Err(e) => {
            match e {
                RequestError::Host(_) => {
                    metrics.execute_fails.inc();
                    IO_ERRORS.log(format_args!("virtio-blk: {e}"));
                }
                _ => {
                    metrics.invalid_reqs_count.inc();
                    tracing::debug!("virtio-blk: request rejected: {e}");
                }
            }
            e.status()
        }
    }
}

/// Ends a request an engine carried out (`done` is what it was, `result` the engine's): writes
/// its status byte at `status` and returns its used length.
pub(super) fn finish(
    memory: &GuestRam,
    guest_errors: &GuestErrorLog,
    metrics: &BlockMetrics,
    done: Done,
    status: GuestAddress,
    result: io::Result<usize>,
) -> u32 {
    let result = result.map(|_| done).map_err(RequestError::Host);
    let written = match result {
        Ok(Done::Read(bytes)) => bytes,
        _ => 0,
    };
    let status_byte = outcome(result, metrics);
    // The address was in a writable descriptor when the request was parsed, and guest memory
    // does not shrink while the device runs; a failure is still reported rather than assumed.
    if let Err(e) = memory.write_obj(status_byte, status) {
        guest_errors.log(format_args!("cannot write a status byte: {e}"));
        return 0;
    }
    used_length(written)
}

/// What to do with a valid request.
enum Action {
    /// It is done.
    Done(Done),
    /// The engine is to carry out the operation; the request is `Done` when it succeeds.
    Submit(Op, Done),
}

/// Carries out the request whose header `reader` starts with, or (`mode.defer`) returns its
/// read, write or flush for an engine. `data` is the chain's writable part without the status
/// byte.
fn execute<B: DiskBackend + ?Sized>(
    disk: &Disk<B>,
    request: &Request,
    reader: &mut Reader,
    data: &mut Writer,
    mode: Mode,
) -> Result<Action, RequestError> {
    let mut header = [0u8; HEADER_BYTES];
    reader.read_exact(&mut header).map_err(|_| RequestError::MissingHeader)?;
    let [t0, t1, t2, t3, _, _, _, _, sector @ ..] = header;
    let request_type = u32::from_le_bytes([t0, t1, t2, t3]);
    let sector = u64::from_le_bytes(sector);
    let data_bytes = reader.available_bytes().saturating_add(data.available_bytes());
    if data_bytes > MAX_DATA_BYTES {
        return Err(RequestError::TooLarge(data_bytes));
    }
    let done = match request_type {
        VIRTIO_BLK_T_IN => {
            let bytes = data.available_bytes();
            let (offset, buffers) = read_buffers(disk, request, sector, bytes)?;
            if mode.defer {
                return Ok(Action::Submit(Op::Read { buffers, offset }, Done::Read(bytes)));
            }
            disk.backend.read_vectored_at(&buffers, offset).map_err(RequestError::Host)?;
            Done::Read(bytes)
        }
        VIRTIO_BLK_T_OUT => {
            let bytes = reader.available_bytes();
            let (offset, buffers) = write_buffers(disk, request, sector, bytes)?;
            if mode.defer {
                return Ok(Action::Submit(Op::Write { buffers, offset }, Done::Write(bytes)));
            }
            disk.backend.write_vectored_at(&buffers, offset).map_err(RequestError::Host)?;
            Done::Write(bytes)
        }
        // Without VIRTIO_BLK_F_FLUSH (cache=unsafe) a driver should send none; one that does is
        // told it is done, as the host promised no durability.
        VIRTIO_BLK_T_FLUSH if !mode.flush => Done::Flush,
        VIRTIO_BLK_T_FLUSH if mode.defer => return Ok(Action::Submit(Op::Flush, Done::Flush)),
        VIRTIO_BLK_T_FLUSH => disk.backend.flush().map(|()| Done::Flush).map_err(RequestError::Host)?,
        VIRTIO_BLK_T_GET_ID => {
            let count = data.available_bytes().min(ID_BYTES);
            data.write_all(&disk.id[..count]).map(|()| Done::GetId).map_err(RequestError::GuestMemory)?
        }
        // Rare, and bounded by the advertised limits: done on the spot in either mode.
        VIRTIO_BLK_T_DISCARD => zero_segments(disk, reader, true).map(|()| Done::Discard)?,
        VIRTIO_BLK_T_WRITE_ZEROES => zero_segments(disk, reader, false).map(|()| Done::WriteZeroes)?,
        other => return Err(RequestError::UnsupportedType(other)),
    };
    Ok(Action::Done(done))
}

/// The byte offset of `bytes` of data starting at `sector`, once they are known to fit the disk.
fn byte_range<B: ?Sized>(disk: &Disk<B>, sector: u64, bytes: usize) -> Result<u64, RequestError> {
    if !(bytes as u64).is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::PartialSector(bytes));
    }
    sector_range(disk, sector, bytes as u64 / SECTOR_SIZE)
}

/// The byte offset of `count` sectors from `sector`, once they are known to fit the disk.
fn sector_range<B: ?Sized>(disk: &Disk<B>, sector: u64, count: u64) -> Result<u64, RequestError> {
    match sector.checked_add(count) {
        // Cannot overflow: the capacity in bytes is the size of the backing file.
        Some(end) if end <= disk.sectors => Ok(sector * SECTOR_SIZE),
        _ => Err(RequestError::OutOfRange { sector, count, capacity: disk.sectors }),
    }
}

/// VIRTIO_BLK_T_IN: the disk offset and the guest buffers (the chain's writable ones, without
/// the status byte: `bytes`) a read fills, straight from the disk.
fn read_buffers<B: ?Sized>(
    disk: &Disk<B>,
    request: &Request,
    sector: u64,
    bytes: usize,
) -> Result<(u64, Vec<IoBuf>), RequestError> {
    let offset = byte_range(disk, sector, bytes)?;
    Ok((offset, request.guest_buffers(Direction::DeviceWrites, 0, bytes)?))
}

/// VIRTIO_BLK_T_OUT: the disk offset and the guest buffers (the chain's readable ones after the
/// header: `bytes`) a write takes its data from, straight to the disk.
fn write_buffers<B: ?Sized>(
    disk: &Disk<B>,
    request: &Request,
    sector: u64,
    bytes: usize,
) -> Result<(u64, Vec<IoBuf>), RequestError> {
    if disk.read_only {
        return Err(RequestError::ReadOnly);
    }
    let offset = byte_range(disk, sector, bytes)?;
    Ok((offset, request.guest_buffers(Direction::DeviceReads, HEADER_BYTES, bytes)?))
}

/// Which of a chain's buffers: those the driver wrote (the device reads them) or those the
/// device writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    DeviceReads,
    DeviceWrites,
}

/// A request's chain, for handing its data buffers to the disk without a copy.
struct Request<'a> {
    memory: &'a GuestRam,
    descriptors: DescriptorChain<&'a GuestRam>,
}

impl Request<'_> {
    /// `length` bytes of the chain's buffers of one direction, from byte `skip` of them on, as
    /// the guest memory they are. Buffers the device writes are marked dirty now: the writes
    /// land before the request completes, and a snapshot waits for requests to complete.
    /// The caller checked the chain (a [`Reader`]/[`Writer`] over it was made), so its buffers
    /// are in guest memory; a buffer split across memory regions becomes one piece per region.
    fn guest_buffers(
        &self,
        direction: Direction,
        mut skip: usize,
        length: usize,
    ) -> Result<Vec<IoBuf>, RequestError> {
        let mut buffers = Vec::new();
        let mut remaining = length;
        for descriptor in self.descriptors.clone() {
            if remaining == 0 {
                break;
            }
            if descriptor.is_write_only() != (direction == Direction::DeviceWrites) {
                continue;
            }
            let mut len = descriptor.len() as usize;
            let mut addr = descriptor.addr();
            if skip >= len {
                skip -= len;
                continue;
            }
            addr = addr.unchecked_add(skip as u64);
            len -= skip;
            skip = 0;
            let len = len.min(remaining);
            remaining -= len;
            let mut add = |slice: vm_memory::VolatileSlice<'_, vm_memory::bitmap::MS<'_, GuestRam>>| {
                if direction == Direction::DeviceWrites {
                    slice.bitmap().mark_dirty(0, slice.len());
                }
                // SAFETY: guest memory stays mapped for the VM's life, and the device's handler
                // holds a reference to it, so it outlives the request: one carried out on the
                // spot ends in this call, and one in an engine ends before the handler lets go
                // (dropping an engine waits for its operations). The guest may change the memory
                // meanwhile, which only garbles its own data.
                buffers.push(unsafe { IoBuf::new(slice.ptr_guard_mut().as_ptr(), slice.len()) });
            };
            // Nearly every buffer lies in one memory region: one lookup, where the iterator over
            // regions costs several (it was a tenth of the worker's time at 4 KiB).
            match self.memory.get_slice(addr, len) {
                Ok(slice) => add(slice),
                Err(_) => {
                    for slice in self.memory.get_slices(addr, len) {
                        add(slice.map_err(|e| RequestError::GuestMemory(io::Error::other(e.to_string())))?);
                    }
                }
            }
        }
        if remaining > 0 {
            return Err(RequestError::GuestMemory(io::Error::other(
                "the chain is shorter than its buffers said",
            )));
        }
        Ok(buffers)
    }
}

/// One range of a discard or write-zeroes request.
struct Segment {
    sector: u64,
    count: u32,
    flags: u32,
}

/// VIRTIO_BLK_T_DISCARD and VIRTIO_BLK_T_WRITE_ZEROES: every segment is checked before any is
/// carried out, so a bad request changes nothing.
fn zero_segments<B: DiskBackend + ?Sized>(
    disk: &Disk<B>,
    reader: &mut Reader,
    discard: bool,
) -> Result<(), RequestError> {
    if disk.read_only {
        return Err(RequestError::ReadOnly);
    }
    let (max_segments, max_sectors, allowed_flags) = if discard {
        // A discard's unmap flag is reserved (section 5.2.6.2): the device must refuse it.
        (MAX_DISCARD_SEGMENTS, MAX_DISCARD_SECTORS, 0)
    } else {
        (MAX_WRITE_ZEROES_SEGMENTS, MAX_WRITE_ZEROES_SECTORS, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)
    };
    let bytes = reader.available_bytes();
    let count = bytes / SEGMENT_BYTES;
    if !bytes.is_multiple_of(SEGMENT_BYTES) || count == 0 || count > max_segments as usize {
        return Err(RequestError::BadSegmentList(bytes));
    }
    let mut segments = Vec::with_capacity(count);
    for _ in 0..count {
        let mut raw = [0u8; SEGMENT_BYTES];
        reader.read_exact(&mut raw).map_err(RequestError::GuestMemory)?;
        let [sector @ .., c0, c1, c2, c3, f0, f1, f2, f3] = raw;
        let segment = Segment {
            sector: u64::from_le_bytes(sector),
            count: u32::from_le_bytes([c0, c1, c2, c3]),
            flags: u32::from_le_bytes([f0, f1, f2, f3]),
        };
        if segment.flags & !allowed_flags != 0 {
            return Err(RequestError::UnsupportedFlags(segment.flags));
        }
        if segment.count > max_sectors {
            return Err(RequestError::SegmentTooLarge { count: segment.count, max: max_sectors });
        }
        sector_range(disk, segment.sector, segment.count.into())?;
        segments.push(segment);
    }
    for segment in segments {
        let offset = segment.sector * SECTOR_SIZE;
        let length = u64::from(segment.count) * SECTOR_SIZE;
        let result = if discard {
            disk.backend.discard(offset, length)
        } else {
            let may_unmap = segment.flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
            disk.backend.write_zeroes(offset, length, may_unmap)
        };
        result.map_err(RequestError::Host)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::unix::fs::{FileExt, MetadataExt};

    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    use super::*;
    use crate::block::control::SharedDisk;
    use crate::block::server::BlockHandler;
    use crate::device::testing::{guest_errors, Recorder};
    use crate::device::InterruptCause;
    use crate::worker::QueueHandler;
    use storage::RawFile;
    use virtio_queue::{Queue, QueueT};

    const NEXT: u16 = 1; // VRING_DESC_F_NEXT
    const WRITE: u16 = 2; // VRING_DESC_F_WRITE

    const HEADER: u64 = 0x1_0000;
    const DATA: u64 = 0x2_0000;
    const STATUS: u64 = 0x8_0000;
    /// Sectors of the test disks (64 KiB).
    const SECTORS: u64 = 128;

    /// A backend whose every operation fails, as a disk with I/O errors would.
    struct Failing;
    impl DiskBackend for Failing {
        fn size(&self) -> u64 {
            SECTORS * 512
        }
        fn read_vectored_at(&self, _: &[IoBuf], _: u64) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::EIO))
        }
        fn write_vectored_at(&self, _: &[IoBuf], _: u64) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        }
        fn flush(&self) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::EIO))
        }
        fn discard(&self, _: u64, _: u64) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::EIO))
        }
        fn write_zeroes(&self, _: u64, _: u64, _: bool) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::EIO))
        }
    }

    fn memory() -> GuestRam {
        GuestRam::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    /// A rate limiter that limits nothing.
    fn unlimited() -> Arc<std::sync::Mutex<crate::rate_limiter::RateLimiter>> {
        let limiter = crate::rate_limiter::RateLimiter::new(Default::default()).unwrap();
        Arc::new(std::sync::Mutex::new(limiter))
    }

    /// A sparse temporary file of `SECTORS` sectors whose sector n is filled with the byte n.
    fn patterned_disk() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let file = File::create(&path).unwrap();
        for sector in 0..SECTORS {
            file.write_all_at(&[sector as u8; 512], sector * 512).unwrap();
        }
        (dir, path)
    }

    fn disk_of<B>(backend: B, read_only: bool) -> Disk<B> {
        shared_disk_of(Arc::new(backend), read_only)
    }

    fn shared_disk_of<B: ?Sized>(backend: Arc<B>, read_only: bool) -> Disk<B> {
        let mut id = [0u8; ID_BYTES];
        id[..9].copy_from_slice(b"test-disk");
        Disk { backend, sectors: SECTORS, read_only, id }
    }

    fn raw_disk(path: &std::path::Path, read_only: bool) -> Disk<RawFile> {
        disk_of(RawFile::open(path, read_only).unwrap(), read_only)
    }

    /// One buffer of a chain: guest address, length, and whether the device writes it.
    #[derive(Clone, Copy)]
    struct Buffer(u64, u32, bool);

    fn header(memory: &GuestRam, request_type: u32, sector: u64) -> Buffer {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&request_type.to_le_bytes());
        bytes[8..].copy_from_slice(&sector.to_le_bytes());
        memory.write_slice(&bytes, GuestAddress(HEADER)).unwrap();
        Buffer(HEADER, 16, false)
    }

    fn status_buffer(memory: &GuestRam) -> Buffer {
        memory.write_obj(0xFFu8, GuestAddress(STATUS)).unwrap();
        Buffer(STATUS, 1, true)
    }

    fn status_byte(memory: &GuestRam) -> u8 {
        memory.read_obj(GuestAddress(STATUS)).unwrap()
    }

    /// The usual three-descriptor request: header, data (`length` bytes at DATA), status.
    fn request(
        memory: &GuestRam,
        request_type: u32,
        sector: u64,
        length: u32,
        device_writes: bool,
    ) -> Vec<Buffer> {
        vec![header(memory, request_type, sector), Buffer(DATA, length, device_writes), status_buffer(memory)]
    }

    /// Runs the handler once over `chains`; returns each chain's used length and the interrupts.
    fn serve_chains<B: DiskBackend + ?Sized>(
        memory: &GuestRam,
        disk: Disk<B>,
        chains: &[Vec<Buffer>],
    ) -> (Vec<u32>, Vec<InterruptCause>) {
        serve_counted(memory, disk, chains, Arc::default())
    }

    /// Requests through the engine, as Engine::Async serves them (and every disk without a
    /// direct descriptor).
    const DEFERRED: Mode = Mode { defer: true, flush: true };
    /// Requests carried out on the spot, as Engine::Sync serves a raw file.
    const ON_THE_SPOT: Mode = Mode { defer: false, flush: true };

    /// [`serve_chains`], counting into `metrics`.
    fn serve_counted<B: DiskBackend + ?Sized>(
        memory: &GuestRam,
        disk: Disk<B>,
        chains: &[Vec<Buffer>],
        metrics: Arc<BlockMetrics>,
    ) -> (Vec<u32>, Vec<InterruptCause>) {
        serve_in(DEFERRED, memory, disk, chains, metrics)
    }

    /// Runs a handler in `mode` once over `chains` and waits for them to complete; returns each
    /// chain's used length and the interrupts.
    fn serve_in<B: DiskBackend + ?Sized>(
        mode: Mode,
        memory: &GuestRam,
        disk: Disk<B>,
        chains: &[Vec<Buffer>],
        metrics: Arc<BlockMetrics>,
    ) -> (Vec<u32>, Vec<InterruptCause>) {
        let mock = MockSplitQueue::new(memory, 64);
        add_chains(&mock, chains, 0);
        let queue = queue_of(&mock);
        let interrupts = Arc::new(Recorder::default());
        let disk = Arc::new(SharedDisk::new(disk));
        let mut handler = BlockHandler::new(
            memory.clone(),
            vec![queue],
            interrupts.clone(),
            guest_errors(),
            metrics,
            disk,
            unlimited(),
            mode,
        )
        .unwrap();
        handler.process_queue(0);
        handler.drain();
        let completed = used_entries(memory, &mock, 64);
        assert_eq!(completed.len(), chains.len(), "every request is completed");
        // By chain, whatever order they completed in.
        let mut heads = Vec::new();
        let mut head = 0u32;
        for chain in chains {
            heads.push(head);
            head += chain.len() as u32;
        }
        let used = heads
            .iter()
            .map(|head| completed.iter().find(|(id, _)| id == head).expect("a chain completed").1)
            .collect();
        let raised = interrupts.0.lock().unwrap().clone();
        (used, raised)
    }

    /// Where a mock queue's used ring is: virtio-queue's mock puts it over the second half of
    /// the available ring (and its `used_event`), so the tests move it out of the way.
    fn used_ring_of(mock: &MockSplitQueue<GuestRam>) -> GuestAddress {
        mock.desc_table_addr().unchecked_add(0x2000)
    }

    /// The mock's queue, with its used ring where [`used_ring_of`] says.
    fn queue_of(mock: &MockSplitQueue<GuestRam>) -> Queue {
        let mut queue: Queue = mock.create_queue().unwrap();
        let used = used_ring_of(mock).raw_value();
        queue.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
        queue
    }

    /// The used ring's entries so far: (head, length), for a queue of `size`.
    fn used_entries(memory: &GuestRam, mock: &MockSplitQueue<GuestRam>, size: u16) -> Vec<(u32, u32)> {
        let used = used_ring_of(mock);
        let count = memory.read_obj::<u16>(used.unchecked_add(2)).unwrap();
        (0..count)
            .map(|i| {
                let entry = used.unchecked_add(4 + 8 * u64::from(i % size));
                let id = memory.read_obj::<u32>(entry).unwrap();
                let len = memory.read_obj::<u32>(entry.unchecked_add(4)).unwrap();
                (id, len)
            })
            .collect()
    }

    /// Puts `chains` in `mock`'s descriptor table from entry `offset` on, and makes them available.
    fn add_chains(mock: &MockSplitQueue<GuestRam>, chains: &[Vec<Buffer>], mut offset: u16) {
        for chain in chains {
            let descriptors: Vec<RawDescriptor> = chain
                .iter()
                .enumerate()
                .map(|(i, &Buffer(addr, len, writable))| {
                    let last = i + 1 == chain.len();
                    let flags = if writable { WRITE } else { 0 } | if last { 0 } else { NEXT };
                    RawDescriptor::from(Descriptor::new(addr, len, flags, offset + i as u16 + 1))
                })
                .collect();
            mock.add_desc_chains(&descriptors, offset).unwrap();
            offset += chain.len() as u16;
        }
    }

    fn serve_one<B: DiskBackend + ?Sized>(memory: &GuestRam, disk: Disk<B>, chain: Vec<Buffer>) -> u32 {
        serve_chains(memory, disk, &[chain]).0[0]
    }

    fn read_guest(memory: &GuestRam, address: u64, length: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; length];
        memory.read_slice(&mut bytes, GuestAddress(address)).unwrap();
        bytes
    }

    fn sector_holds(contents: &[u8], sector: usize, byte: u8) -> bool {
        contents[sector * 512..(sector + 1) * 512].iter().all(|&b| b == byte)
    }

    fn segment(memory: &GuestRam, at: u64, sector: u64, count: u32, flags: u32) {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&sector.to_le_bytes());
        bytes[8..12].copy_from_slice(&count.to_le_bytes());
        bytes[12..].copy_from_slice(&flags.to_le_bytes());
        memory.write_slice(&bytes, GuestAddress(at)).unwrap();
    }

    #[test]
    fn reads_sectors_into_guest_memory() {
        let (_dir, path) = patterned_disk();
        let memory = memory();
        let used =
            serve_one(&memory, raw_disk(&path, false), request(&memory, VIRTIO_BLK_T_IN, 3, 1024, true));
        assert_eq!(used, 1025, "data and status byte");
        assert_eq!(status_byte(&memory), VIRTIO_BLK_S_OK);
        let data = read_guest(&memory, DATA, 1024);
        assert!(data[..512].iter().all(|&b| b == 3) && data[512..].iter().all(|&b| b == 4));
    }

    #[test]
    fn a_read_marks_the_guest_pages_it_fills_dirty_and_a_write_does_not() {
        use vm_memory::bitmap::Bitmap;
        use vm_memory::GuestMemoryRegion;
        let (_dir, path) = patterned_disk();
        let memory = memory();
        let dirty = |memory: &GuestRam, address: u64| {
            let region = memory.find_region(GuestAddress(address)).unwrap();
            region.bitmap().dirty_at(address as usize)
        };
        // The request's header and status were written by the test through `memory`: look at
        // pages only the data touches.
        serve_one(&memory, raw_disk(&path, false), request(&memory, VIRTIO_BLK_T_OUT, 0, 8192, false));
        assert!(!dirty(&memory, DATA) && !dirty(&memory, DATA + 4096), "a write only reads guest memory");
        serve_one(&memory, raw_disk(&path, false), request(&memory, VIRTIO_BLK_T_IN, 0, 8192, true));
        assert!(dirty(&memory, DATA) && dirty(&memory, DATA + 4096), "the disk filled these pages");
        assert!(!dirty(&memory, DATA + 8192), "past the request");
    }

    #[test]
    fn a_buffer_across_two_memory_regions_is_read_and_written_in_both() {
        use vm_memory::bitmap::Bitmap;
        use vm_memory::GuestMemoryRegion;
        let (_dir, path) = patterned_disk();
        // Two adjacent regions: the data buffer starts 512 bytes before the boundary.
        let memory =
            GuestRam::from_ranges(&[(GuestAddress(0), 0x10_0000), (GuestAddress(0x10_0000), 0x1000)])
                .unwrap();
        let start = 0x10_0000 - 512;
        for mode in [DEFERRED, ON_THE_SPOT] {
            memory.write_slice(&[0u8; 1024], GuestAddress(start)).unwrap();
            let chain =
                vec![header(&memory, VIRTIO_BLK_T_IN, 5), Buffer(start, 1024, true), status_buffer(&memory)];
            let (used, _) = serve_in(mode, &memory, raw_disk(&path, false), &[chain], Arc::default());
            assert_eq!(used, [1025]);
            assert_eq!(status_byte(&memory), VIRTIO_BLK_S_OK);
            let data = read_guest(&memory, start, 1024);
            assert!(sector_holds(&data, 0, 5) && sector_holds(&data, 1, 6), "both regions filled");
            let second = memory.find_region(GuestAddress(0x10_0000)).unwrap();
            assert!(second.bitmap().dirty_at(0), "the second region's page is dirty");
        }
        memory.write_slice(&[0xEEu8; 1024], GuestAddress(start)).unwrap();
        let chain =
            vec![header(&memory, VIRTIO_BLK_T_OUT, 7), Buffer(start, 1024, false), status_buffer(&memory)];
        let (used, _) = serve_in(DEFERRED, &memory, raw_disk(&path, false), &[chain], Arc::default());
        assert_eq!((used[0], status_byte(&memory)), (1, VIRTIO_BLK_S_OK));
        let mut written = vec![0u8; 1024];
        File::open(&path).unwrap().read_exact_at(&mut written, 7 * 512).unwrap();
        assert!(written.iter().all(|&b| b == 0xEE), "both regions' bytes reached the disk");
    }

    #[test]
    fn a_read_spread_over_several_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.img");
        let contents: Vec<u8> = (0..0x6_0000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &contents).unwrap();
        let memory = GuestRam::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        let mut disk = raw_disk(&path, false);
        disk.sectors = contents.len() as u64 / 512;
        let chain = vec![
            header(&memory, VIRTIO_BLK_T_IN, 2),
            Buffer(0x10_0000, 0x200, true),
            Buffer(0x11_0000, 0x5_FA00, true),
            status_buffer(&memory),
        ];
        assert_eq!(serve_one(&memory, disk, chain), 0x6_0000 - 0x400 + 1);
        assert_eq!(status_byte(&memory), VIRTIO_BLK_S_OK);
        assert_eq!(read_guest(&memory, 0x10_0000, 0x200), contents[0x400..0x600]);
        assert_eq!(read_guest(&memory, 0x11_0000, 0x5_FA00), contents[0x600..]);
    }

    #[test]
    fn writes_guest_data_to_the_disk() {
        let (_dir, path) = patterned_disk();
        let memory = memory();
        memory.write_slice(&[0xAB; 512], GuestAddress(DATA)).unwrap();
        let used =
            serve_one(&memory, raw_disk(&path, false), request(&memory, VIRTIO_BLK_T_OUT, 5, 512, false));
        assert_eq!(used, 1, "only the status byte is written");
        assert_eq!(status_byte(&memory), VIRTIO_BLK_S_OK);
        let contents = std::fs::read(&path).unwrap();
        assert!(contents[5 * 512..6 * 512].iter().all(|&b| b == 0xAB));
        assert!(contents[4 * 512..5 * 512].iter().all(|&b| b == 4), "the sector before is untouched");
        assert!(contents[6 * 512..7 * 512].iter().all(|&b| b == 6), "the sector after is untouched");
    }

    #[test]
    fn flush_succeeds() {
        let (_dir, path) = patterned_disk();
        let memory = memory();
        let chain = vec![header(&memory, VIRTIO_BLK_T_FLUSH, 0), status_buffer(&memory)];
        assert_eq!(serve_one(&memory, raw_disk(&path, false), chain), 1);
        assert_eq!(status_byte(&memory), VIRTIO_BLK_S_OK);
    }

    #[test]
    fn get_id_returns_the_padded_serial() {
        let (_dir, path) = patterned_disk();
        let memory = memory();
        memory.write_slice(&[0xFF; 20], GuestAddress(DATA)).unwrap();
        let used =
            serve_one(&memory, raw_disk(&path, false), request(&memory, VIRTIO_BLK_T_GET_ID, 0, 20, true));
        assert_eq!(used, 21);
        assert_eq!(status_byte(&memory), VIRTIO_BLK_S_OK);
        assert_eq!(read_guest(&memory, DATA, 20), b"test-disk\0\0\0\0\0\0\0\0\0\0\0");
    }

    #[test]
    fn discard_punches_a_hole_that_reads_back_as_zeroes() {
        let (_dir, path) = patterned_disk();
        let blocks_before = std::fs::metadata(&path).unwrap().blocks();
        let memory = memory();
        // Sectors 16..80: 32 KiB, whole 4 KiB filesystem blocks.
        segment(&memory, DATA, 16, 64, 0);
        let used =
            serve_one(&memory, raw_disk(&path, false), request(&memory, VIRTIO_BLK_T_DISCARD, 0, 16, false));
        assert_eq!(used, 1);
        assert_eq!(status_byte(&memory), VIRTIO_BLK_S_OK);
        let blocks_after = std::fs::metadata(&path).unwrap().blocks();
        assert!(blocks_after < blocks_before, "st_blocks {blocks_before} -> {blocks_after}: no hole");
        let contents = std::fs::read(&path).unwrap();
        assert_eq!(contents.len() as u64, SECTORS * 512, "the size is kept");
        assert!(contents[16 * 512..80 * 512].iter().all(|&b| b == 0));
        assert!(contents[15 * 512..16 * 512].iter().all(|&b| b == 15));
        assert!(contents[80 * 512..81 * 512].iter().all(|&b| b == 80));
    }

    #[test]
    fn write_zeroes_with_and_without_unmap() {
        let (_dir, path) = patterned_disk();
        let memory = memory();
        segment(&memory, DATA, 8, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
        segment(&memory, DATA + 16, 40, 3, 0);
        let chain = request(&memory, VIRTIO_BLK_T_WRITE_ZEROES, 0, 32, false);
        assert_eq!(serve_one(&memory, raw_disk(&path, false), chain), 1);
        assert_eq!(status_byte(&memory), VIRTIO_BLK_S_OK);
        let contents = std::fs::read(&path).unwrap();
        assert!(contents[8 * 512..16 * 512].iter().all(|&b| b == 0));
        assert!(contents[40 * 512..43 * 512].iter().all(|&b| b == 0));
        assert!(contents[16 * 512..17 * 512].iter().all(|&b| b == 16));
        assert!(contents[43 * 512..44 * 512].iter().all(|&b| b == 43));
    }

    #[test]
    fn discard_with_the_unmap_flag_or_unknown_flags_is_unsupported() {
        let (_dir, path) = patterned_disk();
        let memory = memory();
        for (request_type, flags) in [(VIRTIO_BLK_T_DISCARD, 1), (VIRTIO_BLK_T_WRITE_ZEROES, 2)] {
            segment(&memory, DATA, 0, 8, flags);
            serve_one(&memory, raw_disk(&path, false), request(&memory, request_type, 0, 16, false));
            assert_eq!(status_byte(&memory), VIRTIO_BLK_S_UNSUPP, "type {request_type} flags {flags}");
        }
        let contents = std::fs::read(&path).unwrap();
        assert!((1..8).all(|n| sector_holds(&contents, n, n as u8)), "nothing was zeroed");
    }

    #[test]
    fn malformed_segment_lists_are_io_errors_and_change_nothing() {
        let (_dir, path) = patterned_disk();
        let memory = memory();
        /// (first sector, sector count) of each segment.
        type Ranges = &'static [(u64, u32)];
        let huge = 1 << 40;
        let cases: [(&str, u64, u32, Ranges); 5] = [
            ("not a whole segment", SECTORS, 15, &[(8, 8)]),
            ("no segment", SECTORS, 0, &[]),
            ("second segment past the end", SECTORS, 32, &[(8, 8), (SECTORS - 1, 2)]),
            ("over the sector limit", huge, 32, &[(8, 8), (0, MAX_WRITE_ZEROES_SECTORS + 1)]),
            ("over the segment limit", SECTORS, 9 * 16, &[(8, 8); 9]),
        ];
        for (what, sectors, length, segments) in cases {
            for (i, &(sector, count)) in segments.iter().enumerate() {
                segment(&memory, DATA + 16 * i as u64, sector, count, 0);
            }
            let mut disk = raw_disk(&path, false);
            disk.sectors = sectors;
            serve_one(&memory, disk, request(&memory, VIRTIO_BLK_T_WRITE_ZEROES, 0, length, false));
            assert_eq!(status_byte(&memory), VIRTIO_BLK_S_IOERR, "{what}");
        }
        let contents = std::fs::read(&path).unwrap();
        assert!(sector_holds(&contents, 8, 8), "the valid segments of bad requests are not carried out");
    }

    #[test]
    fn a_read_only_disk_refuses_every_change_with_an_io_error() {
        let (_dir, path) = patterned_disk();
        let memory = memory();
        segment(&memory, DATA, 0, 8, 0);
        for request_type in [VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
            let used =
                serve_one(&memory, raw_disk(&path, true), request(&memory, request_type, 0, 512, false));
            assert_eq!(used, 1);
            assert_eq!(status_byte(&memory), VIRTIO_BLK_S_IOERR, "request type {request_type}");
        }
        assert!(std::fs::read(&path).unwrap()[..512].iter().all(|&b| b == 0), "sector 0 is unchanged");
        assert!(std::fs::read(&path).unwrap()[512..1024].iter().all(|&b| b == 1), "sector 1 is unchanged");
        // Reading still works.
        serve_one(&memory, raw_disk(&path, true), request(&memory, VIRTIO_BLK_T_IN, 1, 512, true));
        assert_eq!(status_byte(&memory), VIRTIO_BLK_S_OK);
        assert!(read_guest(&memory, DATA, 512).iter().all(|&b| b == 1));
    }

    #[test]
    fn requests_past_the_end_are_io_errors() {
        let (_dir, path) = patterned_disk();
        let memory = memory();
        for (request_type, sector, length) in [
            (VIRTIO_BLK_T_IN, SECTORS, 512),
            (VIRTIO_BLK_T_IN, SECTORS - 1, 1024),
            (VIRTIO_BLK_T_OUT, SECTORS - 1, 1024),
            (VIRTIO_BLK_T_IN, u64::MAX, 512),
        ] {
            serve_one(
                &memory,
                raw_disk(&path, false),
                request(&memory, request_type, sector, length, request_type == VIRTIO_BLK_T_IN),
            );
            assert_eq!(status_byte(&memory), VIRTIO_BLK_S_IOERR, "type {request_type} sector {sector}");
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SECTORS * 512, "the file did not grow");
    }

    #[test]
    fn requests_carrying_more_data_than_advertised_are_io_errors() {
        let (_dir, path) = patterned_disk();
        // Room for the oversized buffers (the mapping is only reserved, never touched).
        let memory = GuestRam::from_ranges(&[(GuestAddress(0), 0x2000_0000)]).unwrap();
        let mut disk = raw_disk(&path, false);
        disk.sectors = u64::MAX / 512;
        let too_much = (MAX_DATA_BYTES + 512) as u32;
        for (request_type, device_writes) in [(VIRTIO_BLK_T_IN, true), (VIRTIO_BLK_T_OUT, false)] {
            let chain = vec![
                header(&memory, request_type, 0),
                Buffer(0x100_0000, too_much, device_writes),
                status_buffer(&memory),
            ];
            assert_eq!(serve_one(&memory, disk.clone(), chain), 1, "only the status byte is written");
            assert_eq!(status_byte(&memory), VIRTIO_BLK_S_IOERR, "request type {request_type}");
        }
        assert_eq!(memory.read_obj::<u8>(GuestAddress(0x100_0000)).unwrap(), 0, "nothing was read in");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SECTORS * 512, "nothing was written");
    }

    #[test]
    fn partial_sectors_are_io_errors() {
        let (_dir, path) = patterned_disk();
        let memory = memory();
        serve_one(&memory, raw_disk(&path, false), request(&memory, VIRTIO_BLK_T_IN, 0, 100, true));
        assert_eq!(status_byte(&memory), VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn unknown_request_types_are_unsupported() {
        let (_dir, path) = patterned_disk();
        let memory = memory();
        for request_type in [2, 7, 14, u32::MAX] {
            serve_one(&memory, raw_disk(&path, false), request(&memory, request_type, 0, 512, true));
            assert_eq!(status_byte(&memory), VIRTIO_BLK_S_UNSUPP, "request type {request_type}");
        }
    }

    #[test]
    fn host_failures_are_io_errors() {
        let memory = memory();
        segment(&memory, DATA, 0, 8, 0);
        for (request_type, device_writes) in [
            (VIRTIO_BLK_T_IN, true),
            (VIRTIO_BLK_T_OUT, false),
            (VIRTIO_BLK_T_FLUSH, false),
            (VIRTIO_BLK_T_DISCARD, false),
            (VIRTIO_BLK_T_WRITE_ZEROES, false),
        ] {
            let length = if device_writes { 512 } else { 16 };
            serve_one(
                &memory,
                disk_of(Failing, false),
                request(&memory, request_type, 0, length, device_writes),
            );
            assert_eq!(status_byte(&memory), VIRTIO_BLK_S_IOERR, "request type {request_type}");
        }
    }

    #[test]
    fn a_short_read_from_a_shrunken_image_is_an_io_error() {
        let (_dir, path) = patterned_disk();
        let memory = memory();
        let disk = raw_disk(&path, false);
        // Another process truncates the image behind the device's back.
        File::options().write(true).open(&path).unwrap().set_len(512).unwrap();
        serve_one(&memory, disk, request(&memory, VIRTIO_BLK_T_IN, 4, 512, true));
        assert_eq!(status_byte(&memory), VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn a_failing_host_write_is_an_io_error() {
        let (_dir, path) = patterned_disk();
        let memory = memory();
        // The file is open O_RDONLY, so pwrite fails (EBADF) although the guest sees a writable disk.
        let disk = disk_of(RawFile::open(&path, true).unwrap(), false);
        memory.write_slice(&[0xAB; 512], GuestAddress(DATA)).unwrap();
        serve_one(&memory, disk, request(&memory, VIRTIO_BLK_T_OUT, 0, 512, false));
        assert_eq!(status_byte(&memory), VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn several_requests_complete_with_one_interrupt() {
        let (_dir, path) = patterned_disk();
        let memory = memory();
        let chains: Vec<Vec<Buffer>> = (0..4u64)
            .map(|i| vec![header(&memory, VIRTIO_BLK_T_FLUSH, 0), Buffer(STATUS + 0x100 * i, 1, true)])
            .collect();
        let (used, interrupts) =
            serve_in(ON_THE_SPOT, &memory, raw_disk(&path, false), &chains, Arc::default());
        assert_eq!(used, [1, 1, 1, 1]);
        assert_eq!(interrupts, [InterruptCause::Queue(0)]);
    }

    #[test]
    fn a_request_without_a_header_is_an_io_error() {
        let (_dir, path) = patterned_disk();
        let memory = memory();
        // Only 8 header bytes.
        let chain = vec![Buffer(HEADER, 8, false), status_buffer(&memory)];
        assert_eq!(serve_one(&memory, raw_disk(&path, false), chain), 1);
        assert_eq!(status_byte(&memory), VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn a_header_in_a_writable_descriptor_is_an_io_error() {
        let (_dir, path) = patterned_disk();
        let memory = memory();
        let mut chain = request(&memory, VIRTIO_BLK_T_OUT, 0, 512, true);
        chain[0].2 = true;
        serve_one(&memory, raw_disk(&path, false), chain);
        assert_eq!(status_byte(&memory), VIRTIO_BLK_S_IOERR);
        assert!(std::fs::read(&path).unwrap()[..512].iter().all(|&b| b == 0), "nothing was written");
    }

    #[test]
    fn a_request_without_a_status_byte_completes_unanswered() {
        let (_dir, path) = patterned_disk();
        let memory = memory();
        memory.write_slice(&[0xAB; 512], GuestAddress(DATA)).unwrap();
        let chain = vec![header(&memory, VIRTIO_BLK_T_OUT, 0), Buffer(DATA, 512, false)];
        assert_eq!(serve_one(&memory, raw_disk(&path, false), chain), 0);
        assert!(std::fs::read(&path).unwrap()[..512].iter().all(|&b| b == 0), "nothing was written");
    }

    #[test]
    fn buffers_outside_guest_memory_fail_alone() {
        let (_dir, path) = patterned_disk();
        let memory = memory();
        // Readable data outside memory: the status byte still reports the failure.
        let chain = vec![
            header(&memory, VIRTIO_BLK_T_OUT, 0),
            Buffer(0xF000_0000, 512, false),
            status_buffer(&memory),
        ];
        // Status byte outside memory: nothing can be reported.
        let unanswerable = vec![header(&memory, VIRTIO_BLK_T_FLUSH, 0), Buffer(0xF000_0000, 1, true)];
        let flush = vec![header(&memory, VIRTIO_BLK_T_FLUSH, 0), Buffer(STATUS + 0x100, 1, true)];
        let (used, _) = serve_chains(&memory, raw_disk(&path, false), &[chain, unanswerable, flush]);
        assert_eq!(used, [1, 0, 1]);
        assert_eq!(status_byte(&memory), VIRTIO_BLK_S_IOERR);
        assert_eq!(memory.read_obj::<u8>(GuestAddress(STATUS + 0x100)).unwrap(), VIRTIO_BLK_S_OK);
    }

    #[test]
    fn requests_are_counted_by_kind_and_outcome() {
        let (_dir, path) = patterned_disk();
        let memory = memory();
        let status = |i: u64| Buffer(STATUS + 0x100 * i, 1, true);
        let header_at = |i: u64, request_type: u32, sector: u64| {
            let mut bytes = [0u8; 16];
            bytes[..4].copy_from_slice(&request_type.to_le_bytes());
            bytes[8..].copy_from_slice(&sector.to_le_bytes());
            memory.write_slice(&bytes, GuestAddress(HEADER + 0x100 * i)).unwrap();
            Buffer(HEADER + 0x100 * i, 16, false)
        };
        let chains = vec![
            vec![header_at(0, VIRTIO_BLK_T_IN, 0), Buffer(DATA, 1024, true), status(0)],
            vec![header_at(1, VIRTIO_BLK_T_OUT, 8), Buffer(DATA, 2048, false), status(1)],
            vec![header_at(2, VIRTIO_BLK_T_FLUSH, 0), status(2)],
            vec![header_at(3, VIRTIO_BLK_T_IN, SECTORS), Buffer(DATA, 512, true), status(3)],
            vec![header_at(4, 99, 0), status(4)],
            vec![header_at(5, VIRTIO_BLK_T_FLUSH, 0)],
        ];
        let metrics = Arc::new(BlockMetrics::default());
        serve_counted(&memory, raw_disk(&path, false), &chains, metrics.clone());
        let counts = metrics.take();
        let count = |name| counts.get(name).unwrap();
        assert_eq!((count("read_count"), count("read_bytes")), (1, 1024));
        assert_eq!((count("write_count"), count("write_bytes")), (1, 2048));
        assert_eq!(count("flush_count"), 1);
        assert_eq!(count("invalid_reqs_count"), 3, "past the end, unknown type, no status byte");
        assert_eq!(count("queue_event_count"), 1);
        assert_eq!(count("execute_fails"), 0);

        serve_counted(&memory, disk_of(Failing, false), &chains[..1], metrics.clone());
        let counts = metrics.take();
        assert_eq!((counts.get("execute_fails"), counts.get("read_count")), (Some(1), Some(0)));
    }

    #[test]
    fn a_descriptor_loop_does_not_hang() {
        let (_dir, path) = patterned_disk();
        let memory = memory();
        let mock = MockSplitQueue::new(&memory, 16);
        header(&memory, VIRTIO_BLK_T_IN, 0);
        // Descriptor 0 (the header) chains to descriptor 1, which chains back to itself forever.
        let descriptors = [
            RawDescriptor::from(Descriptor::new(HEADER, 16, NEXT, 1)),
            RawDescriptor::from(Descriptor::new(DATA, 512, WRITE | NEXT, 1)),
        ];
        mock.desc_table().store(0, descriptors[0]).unwrap();
        mock.desc_table().store(1, descriptors[1]).unwrap();
        memory.write_obj::<u16>(0, mock.avail_addr().unchecked_add(4)).unwrap();
        memory.write_obj::<u16>(1, mock.avail_addr().unchecked_add(2)).unwrap();
        let queue: Queue = mock.create_queue().unwrap();
        let mut handler = BlockHandler::new(
            memory.clone(),
            vec![queue],
            Arc::new(Recorder::default()),
            guest_errors(),
            Arc::default(),
            Arc::new(SharedDisk::new(raw_disk(&path, false))),
            unlimited(),
            DEFERRED,
        )
        .unwrap();
        handler.process_queue(0);
        let used_index = memory.read_obj::<u16>(mock.used_addr().unchecked_add(2)).unwrap();
        assert_eq!(used_index, 1, "the looping request is completed and the queue moves on");
    }

    #[test]
    fn a_disk_that_fails_every_request_logs_a_few_lines_and_a_count() {
        use devices::guest_log::{capture, LINES_PER_INTERVAL};

        let memory = memory();
        let chains: Vec<_> = (0..5).map(|_| request(&memory, VIRTIO_BLK_T_IN, 0, 512, true)).collect();
        // The site is a static: tests on other threads log into the same budget (and their lines
        // are not captured here). A flush first starts a fresh window; whatever others take of it,
        // at most the budget's lines are logged here and this test's failures are all counted.
        let ((), lines) = capture::lines(|| {
            IO_ERRORS.flush();
            for _ in 0..1000 {
                serve_in(ON_THE_SPOT, &memory, disk_of(Failing, false), &chains, Arc::default());
            }
            IO_ERRORS.flush();
        });
        let warned = capture::warnings(&lines);
        let logged = warned.iter().filter(|l| l.starts_with("virtio-blk: ")).count();
        assert!(logged <= LINES_PER_INTERVAL as usize, "{warned:?}");
        let summary = warned.last().unwrap_or_else(|| panic!("no summary: {warned:?}"));
        let suppressed: u64 = summary
            .strip_prefix("virtio-blk disk errors: ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no summary of the site: {warned:?}"));
        assert!(suppressed >= 5000 - LINES_PER_INTERVAL as u64, "{summary}");
    }

    /// A backend that only counts its flushes, or fails them.
    #[derive(Default)]
    struct Flushes {
        count: std::sync::atomic::AtomicUsize,
        fail: bool,
    }
    impl DiskBackend for Flushes {
        fn size(&self) -> u64 {
            SECTORS * 512
        }
        fn read_vectored_at(&self, _: &[IoBuf], _: u64) -> io::Result<()> {
            Ok(())
        }
        fn write_vectored_at(&self, _: &[IoBuf], _: u64) -> io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match self.fail {
                true => Err(io::Error::from_raw_os_error(libc::EIO)),
                false => Ok(()),
            }
        }
        fn discard(&self, _: u64, _: u64) -> io::Result<()> {
            Ok(())
        }
        fn write_zeroes(&self, _: u64, _: u64, _: bool) -> io::Result<()> {
            Ok(())
        }
    }

    fn held_worker(backend: Arc<Flushes>) -> crate::worker::Worker {
        let memory = memory();
        let queue: Queue = MockSplitQueue::new(&memory, 16).create_queue().unwrap();
        let handler = BlockHandler::new(
            memory.clone(),
            vec![queue],
            Arc::new(Recorder::default()),
            guest_errors(),
            Arc::default(),
            Arc::new(SharedDisk::new(shared_disk_of(backend, false))),
            unlimited(),
            DEFERRED,
        )
        .unwrap();
        let event = vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        crate::worker::Worker::spawn("test-blk-hold", jail::seccomp::ThreadRole::Block, vec![event], handler)
            .unwrap()
    }

    #[test]
    fn a_snapshot_hold_flushes_the_disk_first() {
        let backend = Arc::new(Flushes::default());
        let worker = held_worker(backend.clone());
        let queues = worker.hold().unwrap();
        assert_eq!(queues.len(), 1);
        assert_eq!(backend.count.load(std::sync::atomic::Ordering::SeqCst), 1, "flushed once, while held");
        worker.release();
    }

    #[test]
    fn a_disk_that_cannot_flush_fails_the_hold() {
        let backend = Arc::new(Flushes { fail: true, ..Flushes::default() });
        let worker = held_worker(backend.clone());
        let error = worker.hold().unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EIO));
        // The worker goes on serving: a second hold asks again.
        assert!(worker.hold().is_err());
        assert_eq!(backend.count.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    mod hostile;
    mod in_flight;
    mod polled;
    mod rate_limited;
}
