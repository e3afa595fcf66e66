//! The snapshot memory file: guest RAM, region after region, at the offsets the state file records.
//!
//! A full snapshot writes every page that is not all zeros and leaves the zero ones as holes, so
//! a mostly idle guest's file is sparse and quick to write. A diff snapshot writes only the dirty
//! pages at their offsets and leaves the rest of the file alone: into a new file that gives a
//! sparse diff (Firecracker's layout), into the full memory file of the previous snapshot it
//! brings that file up to date. A restore maps the file copy-on-write (MAP_PRIVATE), so nothing is
//! read up front and the file never changes under the guest.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};
use virtio::GuestRam;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

use super::{open_regular, SnapshotError};

pub const PAGE_SIZE: usize = 4096;

/// Where one region of guest RAM lies in the memory file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedRegion {
    pub guest_address: u64,
    pub size: u64,
    pub file_offset: u64,
}

/// The file layout of `memory`: its regions back to back.
pub fn layout(memory: &GuestRam) -> Vec<SavedRegion> {
    layout_of(memory.iter().map(|region| (region.start_addr().0, region.len())))
}

/// The file layout of regions given as (guest address, size): back to back from offset 0.
pub fn layout_of(regions: impl IntoIterator<Item = (u64, u64)>) -> Vec<SavedRegion> {
    let mut offset = 0;
    regions
        .into_iter()
        .map(|(guest_address, size)| {
            let saved = SavedRegion { guest_address, size, file_offset: offset };
            offset += size;
            saved
        })
        .collect()
}

/// The file a region list needs: the end of its last region (None if that overflows).
fn file_len(layout: &[SavedRegion]) -> Option<u64> {
    layout.iter().try_fold(0, |end: u64, r| Some(end.max(r.file_offset.checked_add(r.size)?)))
}

/// Which pages of each region to write: all of them, or those a dirty bitmap (one bit per page,
/// one `Vec` per region) marks.
pub enum Pages<'a> {
    All,
    Dirty(&'a [Vec<u64>]),
}

/// Writes guest RAM into `path` and returns the number of bytes written. A full write makes a new
/// file and renames it over `path` (a VM restored from the file there keeps its memory); a
/// dirty-page write updates `path` in place, which is safe for the VM whose memory is mapped
/// from it (it has its own copy of every page it wrote) but not for other VMs restored from the
/// same file. The guest must be paused and the devices held: nothing may write guest RAM
/// meanwhile.
pub fn write(memory: &GuestRam, path: &Path, pages: Pages<'_>) -> Result<u64, SnapshotError> {
    let layout = layout(memory);
    let needed = file_len(&layout).ok_or(SnapshotError::Invalid("memory layout"))?;
    match pages {
        Pages::All => super::write_atomically(path, |file| {
            file.set_len(needed)?;
            // Pages of shared guest RAM (a memfd) that its file has never backed are zero: they
            // are skipped without being read, which would allocate every one of them.
            let backed: Vec<Option<Vec<(usize, usize)>>> =
                memory.iter().map(backed_pages).collect::<std::io::Result<_>>()?;
            let in_file = |(region, page): (usize, usize)| match backed.get(region) {
                Some(Some(runs)) => {
                    // The runs are in file order: the last one starting at or before the page.
                    let after = runs.partition_point(|&(start, _)| start <= page);
                    after > 0 && page < runs[after - 1].1
                }
                _ => true,
            };
            write_pages(memory, &layout, file, |at, bytes| in_file(at) && !is_zero(bytes))
        }),
        Pages::Dirty(bitmaps) => {
            let io_error = |source| SnapshotError::Io { path: path.to_owned(), source };
            // An existing file is updated in place, not truncated; a new one is the user's alone.
            let file =
                open_regular(path, OpenOptions::new().write(true).create(true).truncate(false).mode(0o600))?;
            if file.metadata().map_err(io_error)?.len() < needed {
                file.set_len(needed).map_err(io_error)?;
            }
            let is_dirty = |(region, page): (usize, usize), _: &[u8]| {
                let word = bitmaps.get(region).and_then(|words| words.get(page / 64));
                word.is_some_and(|w| w >> (page % 64) & 1 == 1)
            };
            let written = write_pages(memory, &layout, &file, is_dirty).map_err(io_error)?;
            file.sync_all().map_err(io_error)?;
            Ok(written)
        }
    }
}

/// Writes each page `wanted` picks (by region and page index, and its bytes) at its place in
/// `file`, contiguous pages in one write.
fn write_pages(
    memory: &GuestRam,
    layout: &[SavedRegion],
    file: &File,
    wanted: impl Fn((usize, usize), &[u8]) -> bool,
) -> std::io::Result<u64> {
    let mut written = 0;
    for (index, (region, saved)) in memory.iter().zip(layout).enumerate() {
        // SAFETY: the region is a live mapping of `region.len()` bytes owned by `memory`, which
        // outlives this borrow; the caller guarantees nothing writes guest RAM meanwhile.
        let bytes = unsafe { std::slice::from_raw_parts(region.as_ptr(), region.len() as usize) };
        let page_bytes = |page: usize| &bytes[page * PAGE_SIZE..(page + 1) * PAGE_SIZE];
        let page_count = bytes.len() / PAGE_SIZE;
        let mut page = 0;
        while page < page_count {
            if !wanted((index, page), page_bytes(page)) {
                page += 1;
                continue;
            }
            let start = page;
            while page < page_count && wanted((index, page), page_bytes(page)) {
                page += 1;
            }
            let run = &bytes[start * PAGE_SIZE..page * PAGE_SIZE];
            file.write_all_at(run, saved.file_offset + (start * PAGE_SIZE) as u64)?;
            written += run.len() as u64;
        }
    }
    Ok(written)
}

/// The page runs (start, end) of a shared file-backed region that its file backs with data
/// (SEEK_DATA to SEEK_HOLE); None for private memory, any page of which may hold data.
fn backed_pages(region: &GuestRegionMmap<AtomicBitmap>) -> std::io::Result<Option<Vec<(usize, usize)>>> {
    let Some(file) = region.file_offset().filter(|_| region.flags() & libc::MAP_SHARED != 0) else {
        return Ok(None);
    };
    let (base, len) = (file.start(), region.len());
    let seek = |offset, whence| crate::memory::seek(file.file(), offset, whence);
    let mut runs = Vec::new();
    let mut position = base;
    while position < base + len {
        let Some(data) = seek(position, libc::SEEK_DATA)?.filter(|&d| d < base + len) else { break };
        let hole = seek(data, libc::SEEK_HOLE)?.unwrap_or(base + len).min(base + len);
        let page = |offset: u64| ((offset - base) / PAGE_SIZE as u64) as usize;
        runs.push((page(data), page(hole.next_multiple_of(PAGE_SIZE as u64))));
        position = hole;
    }
    Ok(Some(runs))
}

pub(crate) fn is_zero(page: &[u8]) -> bool {
    // Word-sized compares: scanning a gigabyte of idle guest RAM stays well under a second.
    let (head, words, tail) = {
        // SAFETY: any initialised bytes are valid u64s; align_to only reinterprets the middle.
        unsafe { page.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// Maps the memory file copy-on-write at the saved layout (which the caller has checked against
/// the VM's memory size).
pub fn map(path: &Path, layout: &[SavedRegion]) -> Result<GuestRam, SnapshotError> {
    let io_error = |source| SnapshotError::Io { path: path.to_owned(), source };
    let file = open_regular(path, OpenOptions::new().read(true))?;
    let found = file.metadata().map_err(io_error)?.len();
    let expected = file_len(layout).ok_or(SnapshotError::Invalid("memory layout"))?;
    if found < expected {
        // Mapping past the end would kill the VMM with SIGBUS when the guest touches those pages.
        return Err(SnapshotError::MemoryFileTooShort { path: path.to_owned(), found, expected });
    }
    let file = std::sync::Arc::new(file);
    let regions = layout
        .iter()
        .map(|saved| {
            let size =
                usize::try_from(saved.size).map_err(|_| SnapshotError::Invalid("memory region size"))?;
            let mapping = MmapRegionBuilder::new_with_bitmap(
                size,
                <AtomicBitmap as vm_memory::bitmap::NewBitmap>::with_len(size),
            )
            .with_file_offset(FileOffset::from_arc(file.clone(), saved.file_offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| SnapshotError::Map(e.to_string()))?;
            GuestRegionMmap::new(mapping, GuestAddress(saved.guest_address))
                .ok_or(SnapshotError::Invalid("memory region address"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    GuestRam::from_regions(regions).map_err(|e| SnapshotError::Map(e.to_string()))
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;

    use super::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("kestrel-memfile-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn ram() -> GuestRam {
        GuestRam::from_ranges(&[(GuestAddress(0), 64 * PAGE_SIZE), (GuestAddress(1 << 20), 16 * PAGE_SIZE)])
            .unwrap()
    }

    #[test]
    fn a_full_write_maps_back_identical_and_skips_zero_pages() {
        let dir = temp_dir("full");
        let memory = ram();
        memory.write_obj(0x1234_5678u32, GuestAddress(3 * PAGE_SIZE as u64 + 8)).unwrap();
        memory.write_obj(0xabcdu16, GuestAddress((1 << 20) + 5 * PAGE_SIZE as u64)).unwrap();
        let path = dir.join("mem");
        let written = write(&memory, &path, Pages::All).unwrap();
        assert_eq!(written, 2 * PAGE_SIZE as u64, "only the two non-zero pages");

        let restored = map(&path, &layout(&memory)).unwrap();
        assert_eq!(restored.read_obj::<u32>(GuestAddress(3 * PAGE_SIZE as u64 + 8)).unwrap(), 0x1234_5678);
        assert_eq!(restored.read_obj::<u16>(GuestAddress((1 << 20) + 5 * PAGE_SIZE as u64)).unwrap(), 0xabcd);
        // Copy-on-write: the guest's writes stay out of the file.
        restored.write_obj(7u8, GuestAddress(0)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap()[0], 0);
        // A full snapshot into the file the memory is mapped from replaces the file, not the
        // pages under the mapping: the restored memory keeps what it had.
        let other = ram();
        other.write_obj(0x5555_5555u32, GuestAddress(3 * PAGE_SIZE as u64 + 8)).unwrap();
        write(&other, &path, Pages::All).unwrap();
        assert_eq!(restored.read_obj::<u32>(GuestAddress(3 * PAGE_SIZE as u64 + 8)).unwrap(), 0x1234_5678);
        assert_eq!(
            map(&path, &layout(&other))
                .unwrap()
                .read_obj::<u32>(GuestAddress(3 * PAGE_SIZE as u64 + 8))
                .unwrap(),
            0x5555_5555
        );
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, ["mem"], "no temporary file is left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Memory files hold the guest's secrets: new ones are 0600 whatever the umask, full (a new
    /// file renamed into place) or diff (a file created in place).
    #[test]
    fn new_memory_files_are_0600_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("mode");
        let _umask = crate::snapshot::testing::Umask::set(0o022);
        let (full, diff) = (dir.join("full"), dir.join("diff"));
        write(&ram(), &full, Pages::All).unwrap();
        write(&ram(), &diff, Pages::Dirty(&[])).unwrap();
        for path in [full, diff] {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}: {mode:o}", path.display());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_dirty_write_updates_only_the_marked_pages() {
        let dir = temp_dir("diff");
        let memory = ram();
        memory.write_obj(1u8, GuestAddress(0)).unwrap();
        let path = dir.join("mem");
        write(&memory, &path, Pages::All).unwrap();
        memory.write_obj(2u8, GuestAddress(0)).unwrap();
        memory.write_obj(3u8, GuestAddress(PAGE_SIZE as u64)).unwrap();
        // Only page 1 of region 0 is marked: page 0's change must not reach the file.
        let bitmaps = vec![vec![0b10u64], vec![0u64]];
        let written = write(&memory, &path, Pages::Dirty(&bitmaps)).unwrap();
        assert_eq!(written, PAGE_SIZE as u64);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!((bytes[0], bytes[PAGE_SIZE]), (1, 3));
        assert_eq!(bytes.len(), 80 * PAGE_SIZE, "the file keeps the full layout");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_short_memory_file_is_refused_before_mapping() {
        let dir = temp_dir("short");
        let path = dir.join("mem");
        std::fs::write(&path, vec![0u8; PAGE_SIZE]).unwrap();
        let result = map(&path, &layout(&ram()));
        assert!(matches!(result, Err(SnapshotError::MemoryFileTooShort { .. })));
        // Devices and FIFOs are refused before they are opened (a FIFO would block the open).
        let result = map(Path::new("/dev/zero"), &layout(&ram()));
        assert!(matches!(result, Err(SnapshotError::NotARegularFile(_))));
        let fifo = dir.join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        assert!(matches!(map(&fifo, &layout(&ram())), Err(SnapshotError::NotARegularFile(_))));
        let written = write(&ram(), &fifo, Pages::All);
        assert!(matches!(written, Err(SnapshotError::NotARegularFile(_))));
        // Without a reader the non-blocking open fails at once (ENXIO) instead of waiting for one.
        let written = write(&ram(), &fifo, Pages::Dirty(&[]));
        assert!(matches!(written, Err(SnapshotError::Io { .. })), "{written:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
