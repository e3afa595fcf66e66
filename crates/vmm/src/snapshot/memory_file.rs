//! The snapshot memory file: guest RAM, region after region, at the offsets the state file records.
//!
//! A full snapshot writes every page that is not all zeros and leaves the zero ones as holes, so
//! a mostly idle guest's file is sparse and quick to write. A diff snapshot writes only the dirty
//! pages at their offsets and leaves the rest of the file alone: into a new file that gives a
//! sparse diff (Firecracker's layout), into the full memory file of the previous snapshot it
//! brings that file up to date. A restore maps the file copy-on-write (MAP_PRIVATE), so nothing is
//! read up front and the file never changes under the guest.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use serde::{Deserialize, Serialize};
use virtio::GuestRam;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

use super::{check_regular_file, SnapshotError};

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
    let mut offset = 0;
    memory
        .iter()
        .map(|region| {
            let saved =
                SavedRegion { guest_address: region.start_addr().0, size: region.len(), file_offset: offset };
            offset += region.len();
            saved
        })
        .collect()
}

/// The file a region list needs: the end of its last region.
fn file_len(layout: &[SavedRegion]) -> u64 {
    layout.iter().map(|r| r.file_offset + r.size).max().unwrap_or(0)
}

/// Identifies a file across paths (device and inode), so a snapshot never truncates the file the
/// running guest's memory is mapped from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileIdentity {
    device: u64,
    inode: u64,
}

impl FileIdentity {
    pub fn of(file: &File) -> std::io::Result<FileIdentity> {
        let meta = file.metadata()?;
        Ok(FileIdentity { device: meta.dev(), inode: meta.ino() })
    }

    fn of_path(path: &Path) -> Option<FileIdentity> {
        let meta = std::fs::metadata(path).ok()?;
        Some(FileIdentity { device: meta.dev(), inode: meta.ino() })
    }
}

/// Which pages of each region to write: all of them, or those a dirty bitmap (one bit per page,
/// one `Vec` per region) marks.
pub enum Pages<'a> {
    All,
    Dirty(&'a [Vec<u64>]),
}

/// Writes guest RAM into `path`. A full write replaces the file (refused when it is `backing`, the
/// file the guest's memory is mapped from); a dirty-page write updates it in place. Returns the
/// number of bytes written. The guest must be paused and the devices quiesced: nothing may write
/// guest RAM meanwhile.
pub fn write(
    memory: &GuestRam,
    path: &Path,
    pages: Pages<'_>,
    backing: Option<FileIdentity>,
) -> Result<u64, SnapshotError> {
    let io_error = |source| SnapshotError::Io { path: path.to_owned(), source };
    let full = matches!(pages, Pages::All);
    check_regular_file(path, false)?;
    if full && backing.is_some() && FileIdentity::of_path(path) == backing {
        return Err(SnapshotError::MemoryFileInUse(path.to_owned()));
    }
    let file = OpenOptions::new().create(true).write(true).truncate(full).open(path).map_err(io_error)?;
    let layout = layout(memory);
    let needed = file_len(&layout);
    if file.metadata().map_err(io_error)?.len() < needed {
        file.set_len(needed).map_err(io_error)?;
    }
    let mut written = 0;
    for (index, (region, saved)) in memory.iter().zip(&layout).enumerate() {
        // SAFETY: the region is a live mapping of `region.len()` bytes owned by `memory`, which
        // outlives this borrow; the caller guarantees nothing writes guest RAM meanwhile.
        let bytes = unsafe { std::slice::from_raw_parts(region.as_ptr(), region.len() as usize) };
        let wanted = |page: usize| match &pages {
            // Zero pages are left as holes: a fresh file reads them as zeros.
            Pages::All => !is_zero(&bytes[page * PAGE_SIZE..(page + 1) * PAGE_SIZE]),
            Pages::Dirty(bitmaps) => bitmaps
                .get(index)
                .and_then(|words| words.get(page / 64))
                .is_some_and(|w| w >> (page % 64) & 1 == 1),
        };
        let page_count = bytes.len() / PAGE_SIZE;
        let mut page = 0;
        while page < page_count {
            if !wanted(page) {
                page += 1;
                continue;
            }
            let start = page;
            while page < page_count && wanted(page) {
                page += 1;
            }
            let run = &bytes[start * PAGE_SIZE..page * PAGE_SIZE];
            file.write_all_at(run, saved.file_offset + (start * PAGE_SIZE) as u64).map_err(io_error)?;
            written += run.len() as u64;
        }
    }
    file.sync_all().map_err(io_error)?;
    Ok(written)
}

fn is_zero(page: &[u8]) -> bool {
    // Word-sized compares: scanning a gigabyte of idle guest RAM stays well under a second.
    let (head, words, tail) = {
        // SAFETY: any initialised bytes are valid u64s; align_to only reinterprets the middle.
        unsafe { page.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// Maps the memory file copy-on-write at the saved layout. Returns the memory and the file's
/// identity (later full snapshots must not truncate it).
pub fn map(path: &Path, layout: &[SavedRegion]) -> Result<(GuestRam, FileIdentity), SnapshotError> {
    let io_error = |source| SnapshotError::Io { path: path.to_owned(), source };
    check_regular_file(path, true)?;
    let file = File::open(path).map_err(io_error)?;
    let identity = FileIdentity::of(&file).map_err(io_error)?;
    let found = file.metadata().map_err(io_error)?.len();
    let expected = file_len(layout);
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
    let memory = GuestRam::from_regions(regions).map_err(|e| SnapshotError::Map(e.to_string()))?;
    Ok((memory, identity))
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
        let written = write(&memory, &path, Pages::All, None).unwrap();
        assert_eq!(written, 2 * PAGE_SIZE as u64, "only the two non-zero pages");

        let (restored, identity) = map(&path, &layout(&memory)).unwrap();
        assert_eq!(restored.read_obj::<u32>(GuestAddress(3 * PAGE_SIZE as u64 + 8)).unwrap(), 0x1234_5678);
        assert_eq!(restored.read_obj::<u16>(GuestAddress((1 << 20) + 5 * PAGE_SIZE as u64)).unwrap(), 0xabcd);
        // Copy-on-write: the guest's writes stay out of the file.
        restored.write_obj(7u8, GuestAddress(0)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap()[0], 0);
        // A full snapshot into the file the memory is mapped from is refused, not truncated.
        let refused = write(&restored, &path, Pages::All, Some(identity));
        assert!(matches!(refused, Err(SnapshotError::MemoryFileInUse(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_dirty_write_updates_only_the_marked_pages() {
        let dir = temp_dir("diff");
        let memory = ram();
        memory.write_obj(1u8, GuestAddress(0)).unwrap();
        let path = dir.join("mem");
        write(&memory, &path, Pages::All, None).unwrap();
        memory.write_obj(2u8, GuestAddress(0)).unwrap();
        memory.write_obj(3u8, GuestAddress(PAGE_SIZE as u64)).unwrap();
        // Only page 1 of region 0 is marked: page 0's change must not reach the file.
        let bitmaps = vec![vec![0b10u64], vec![0u64]];
        let written = write(&memory, &path, Pages::Dirty(&bitmaps), None).unwrap();
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
        let written = write(&ram(), &fifo, Pages::All, None);
        assert!(matches!(written, Err(SnapshotError::NotARegularFile(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
