//! Guest RAM as a stream (a socket for migration, a pipe, a `Vec`), beside the memory file: a
//! header with the memory layout, then page runs, each either data or a zero marker (a run of
//! zero pages costs 13 bytes, not its pages), then an end marker.
//!
//! ```text
//! header  "KSTLMEM\0" | version u32 | region count u32 | (guest address u64, size u64) per region
//! record  1 | guest address u64 | pages u32 | the pages' bytes     (data)
//!         2 | guest address u64 | pages u32                        (zero pages)
//!         0                                                        (end)
//! ```
//!
//! All little-endian. The reader refuses a layout other than the memory it fills and any run
//! outside it, and never buffers more than one run of at most [`MAX_RUN_PAGES`].

use std::io::{Read, Write};

use virtio::GuestRam;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::memory_file::{is_zero, layout, Pages, PAGE_SIZE};
use super::SnapshotError;

const MAGIC: [u8; 8] = *b"KSTLMEM\0";
/// The stream format's version.
pub const VERSION: u32 = 1;
/// The longest run one record carries: 1 MiB, the reader's largest buffer.
pub const MAX_RUN_PAGES: u32 = 256;
/// More regions than any Kestrel VM has (two today: below and above the MMIO gap).
const MAX_REGIONS: u32 = 64;

const END: u8 = 0;
const DATA: u8 = 1;
const ZERO: u8 = 2;

/// Writes guest RAM (every page, or the pages a dirty bitmap marks) to `output`; returns the
/// number of bytes written. The guest must be paused and the devices held, as for the file.
pub fn write_memory(
    memory: &GuestRam,
    output: &mut (impl Write + ?Sized),
    pages: Pages<'_>,
) -> Result<u64, SnapshotError> {
    let layout = layout(memory);
    let mut writer = Counting { output, written: 0 };
    let mut header = Vec::with_capacity(16 + 16 * layout.len());
    header.extend_from_slice(&MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&(layout.len() as u32).to_le_bytes());
    for region in &layout {
        header.extend_from_slice(&region.guest_address.to_le_bytes());
        header.extend_from_slice(&region.size.to_le_bytes());
    }
    writer.put(&header)?;
    for (index, region) in memory.iter().enumerate() {
        // SAFETY: the region is a live mapping of `region.len()` bytes owned by `memory`, which
        // outlives this borrow; the caller guarantees nothing writes guest RAM meanwhile.
        let bytes = unsafe { std::slice::from_raw_parts(region.as_ptr(), region.len() as usize) };
        let wanted = |page: usize| match &pages {
            Pages::All => true,
            Pages::Dirty(bitmaps) => bitmaps
                .get(index)
                .and_then(|words| words.get(page / 64))
                .is_some_and(|word| word >> (page % 64) & 1 == 1),
        };
        let page_bytes = |page: usize| &bytes[page * PAGE_SIZE..(page + 1) * PAGE_SIZE];
        let page_count = bytes.len() / PAGE_SIZE;
        let mut page = 0;
        while page < page_count {
            if !wanted(page) {
                page += 1;
                continue;
            }
            let zero = is_zero(page_bytes(page));
            let start = page;
            while page < page_count
                && page - start < MAX_RUN_PAGES as usize
                && wanted(page)
                && is_zero(page_bytes(page)) == zero
            {
                page += 1;
            }
            let address = region.start_addr().0 + (start * PAGE_SIZE) as u64;
            let mut record = [0u8; 13];
            record[0] = if zero { ZERO } else { DATA };
            record[1..9].copy_from_slice(&address.to_le_bytes());
            record[9..13].copy_from_slice(&((page - start) as u32).to_le_bytes());
            writer.put(&record)?;
            if !zero {
                writer.put(&bytes[start * PAGE_SIZE..page * PAGE_SIZE])?;
            }
        }
    }
    writer.put(&[END])?;
    writer.output.flush().map_err(SnapshotError::Stream)?;
    Ok(writer.written)
}

struct Counting<'a, W: ?Sized> {
    output: &'a mut W,
    written: u64,
}

impl<W: Write + ?Sized> Counting<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        self.output.write_all(bytes).map_err(SnapshotError::Stream)?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

fn read_array<const N: usize>(input: &mut (impl Read + ?Sized)) -> Result<[u8; N], SnapshotError> {
    let mut bytes = [0u8; N];
    input.read_exact(&mut bytes).map_err(SnapshotError::Stream)?;
    Ok(bytes)
}

fn read_u32(input: &mut (impl Read + ?Sized)) -> Result<u32, SnapshotError> {
    read_array(input).map(u32::from_le_bytes)
}

fn read_u64(input: &mut (impl Read + ?Sized)) -> Result<u64, SnapshotError> {
    read_array(input).map(u64::from_le_bytes)
}

/// Reads a memory stream into `memory`, whose layout must be the stream's; returns the number of
/// pages the stream set (data and zero). Pages the stream does not name keep what they had, so a
/// diff stream applies over the memory of the snapshot it follows.
pub fn read_memory(memory: &GuestRam, input: &mut (impl Read + ?Sized)) -> Result<u64, SnapshotError> {
    if read_array::<8>(input)? != MAGIC {
        return Err(SnapshotError::NotASnapshot);
    }
    let version = read_u32(input)?;
    if version != VERSION {
        return Err(SnapshotError::ComponentVersion {
            component: "memory stream".into(),
            found: version,
            supported: VERSION,
        });
    }
    let count = read_u32(input)?;
    if count > MAX_REGIONS {
        return Err(SnapshotError::Invalid("memory layout (too many regions)"));
    }
    let saved = (0..count)
        .map(|_| Ok((read_u64(input)?, read_u64(input)?)))
        .collect::<Result<Vec<_>, SnapshotError>>()?;
    let regions: Vec<(u64, u64)> = layout(memory).iter().map(|r| (r.guest_address, r.size)).collect();
    if saved != regions {
        return Err(SnapshotError::Invalid("memory layout (the stream's is not this VM's)"));
    }
    let mut buffer = Vec::new();
    let mut pages_set = 0;
    loop {
        let [tag] = read_array::<1>(input)?;
        if tag == END {
            return Ok(pages_set);
        }
        if tag != DATA && tag != ZERO {
            return Err(SnapshotError::Corrupt(format!("the memory stream has a record of kind {tag}")));
        }
        let address = read_u64(input)?;
        let pages = read_u32(input)?;
        let bytes = u64::from(pages) * PAGE_SIZE as u64;
        if pages == 0 || pages > MAX_RUN_PAGES || !inside(&regions, address, bytes) {
            return Err(SnapshotError::MemoryRun { address, bytes });
        }
        buffer.clear();
        buffer.resize(bytes as usize, 0);
        if tag == DATA {
            input.read_exact(&mut buffer).map_err(SnapshotError::Stream)?;
        }
        memory
            .write_slice(&buffer, GuestAddress(address))
            .map_err(|e| SnapshotError::Map(format!("cannot write guest memory at {address:#x}: {e}")))?;
        pages_set += u64::from(pages);
    }
}

/// Whether `[address, address + bytes)` is page-aligned and lies within one region.
fn inside(regions: &[(u64, u64)], address: u64, bytes: u64) -> bool {
    address.is_multiple_of(PAGE_SIZE as u64)
        && address.checked_add(bytes).is_some_and(|end| {
            regions
                .iter()
                .any(|&(start, size)| address >= start && start.checked_add(size).is_some_and(|e| end <= e))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram() -> GuestRam {
        GuestRam::from_ranges(&[(GuestAddress(0), 600 * PAGE_SIZE), (GuestAddress(1 << 30), 16 * PAGE_SIZE)])
            .unwrap()
    }

    fn fill(memory: &GuestRam) {
        memory.write_obj(0x1234_5678u32, GuestAddress(3 * PAGE_SIZE as u64 + 8)).unwrap();
        // A data run longer than one record.
        memory.write_slice(&vec![0xa5; 300 * PAGE_SIZE], GuestAddress(100 * PAGE_SIZE as u64)).unwrap();
        memory.write_obj(0xabcdu16, GuestAddress((1 << 30) + 5 * PAGE_SIZE as u64)).unwrap();
    }

    fn same(a: &GuestRam, b: &GuestRam) -> bool {
        a.iter().zip(b.iter()).all(|(x, y)| {
            let mut left = vec![0u8; x.len() as usize];
            let mut right = vec![0u8; y.len() as usize];
            a.read_slice(&mut left, x.start_addr()).unwrap();
            b.read_slice(&mut right, y.start_addr()).unwrap();
            left == right
        })
    }

    /// Through a real pipe, with a writer thread: the reader gets exactly the writer's memory,
    /// and zero pages cost markers, not pages.
    #[test]
    fn memory_round_trips_through_a_pipe() {
        let source = ram();
        fill(&source);
        // Pages the target has that the source's zero pages must clear.
        let target = ram();
        target.write_obj(0xffu8, GuestAddress(50 * PAGE_SIZE as u64)).unwrap();
        let (reader, writer) = std::io::pipe().unwrap();
        let sender = {
            let source = source.clone();
            std::thread::spawn(move || {
                let mut writer = writer;
                write_memory(&source, &mut writer, Pages::All).unwrap()
            })
        };
        let mut reader = std::io::BufReader::new(reader);
        let pages = read_memory(&target, &mut reader).unwrap();
        let written = sender.join().unwrap();
        assert_eq!(pages, 616, "every page is set");
        assert!(written < 303 * PAGE_SIZE as u64, "{written} bytes: zero pages are markers");
        assert!(same(&source, &target));
    }

    #[test]
    fn a_dirty_stream_applies_over_the_previous_memory() {
        let source = ram();
        fill(&source);
        let mut full = Vec::new();
        write_memory(&source, &mut full, Pages::All).unwrap();
        source.write_obj(7u8, GuestAddress(PAGE_SIZE as u64)).unwrap();
        source.write_obj(9u8, GuestAddress(0)).unwrap();
        let bitmaps = vec![vec![0b10u64], vec![0u64]];
        let mut diff = Vec::new();
        write_memory(&source, &mut diff, Pages::Dirty(&bitmaps)).unwrap();
        let target = ram();
        read_memory(&target, &mut full.as_slice()).unwrap();
        assert_eq!(read_memory(&target, &mut diff.as_slice()).unwrap(), 1);
        assert_eq!(target.read_obj::<u8>(GuestAddress(PAGE_SIZE as u64)).unwrap(), 7);
        assert_eq!(target.read_obj::<u8>(GuestAddress(0)).unwrap(), 0, "page 0 was not marked");
    }

    #[test]
    fn runs_outside_the_layout_and_other_layouts_are_refused() {
        let memory = ram();
        let mut stream = Vec::new();
        write_memory(&memory, &mut stream, Pages::Dirty(&[])).unwrap();
        let header_len = stream.len() - 1;
        let with_record = |tag: u8, address: u64, pages: u32| {
            let mut bytes = stream[..header_len].to_vec();
            bytes.push(tag);
            bytes.extend_from_slice(&address.to_le_bytes());
            bytes.extend_from_slice(&pages.to_le_bytes());
            bytes.push(END);
            bytes
        };
        let read = |bytes: Vec<u8>| read_memory(&ram(), &mut bytes.as_slice());
        assert!(read(with_record(ZERO, 0, 1)).is_ok());
        for (address, pages) in [
            (600 * PAGE_SIZE as u64, 1), // the gap after region 0
            (599 * PAGE_SIZE as u64, 2), // across region 0's end
            ((1 << 30) + 16 * PAGE_SIZE as u64, 1),
            (u64::MAX - 4095, 1), // wraps
            (8, 1),               // not page-aligned
            (0, 0),
            (0, MAX_RUN_PAGES + 1),
        ] {
            let result = read(with_record(ZERO, address, pages));
            assert!(
                matches!(result, Err(SnapshotError::MemoryRun { .. })),
                "{address:#x}+{pages}: {result:?}"
            );
        }
        assert!(matches!(read(with_record(7, 0, 1)), Err(SnapshotError::Corrupt(_))));
        // A data record whose pages never come.
        assert!(matches!(read(with_record(DATA, 0, 4)), Err(SnapshotError::Stream(_))));
        let other = GuestRam::from_ranges(&[(GuestAddress(0), 64 * PAGE_SIZE)]).unwrap();
        let result = read_memory(&other, &mut stream.as_slice());
        assert!(matches!(result, Err(SnapshotError::Invalid(_))), "{result:?}");
        assert!(matches!(read(b"KSTLSNAP".to_vec()), Err(SnapshotError::NotASnapshot)));
    }
}
