//! Positional reads and writes of a qcow2 file's metadata that also work on an O_DIRECT file:
//! every transfer goes through a 4 KiB-aligned buffer at a 4 KiB-aligned offset.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The alignment O_DIRECT asks for on any device Kestrel meets.
pub(crate) const ALIGN: usize = 4096;

#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Block([u8; ALIGN]);

/// A zeroed buffer whose address and length are multiples of 4 KiB, as O_DIRECT wants.
pub(crate) struct AlignedBuf {
    blocks: Vec<Block>,
}

impl AlignedBuf {
    /// At least `len` zeroed bytes.
    pub(crate) fn new(len: usize) -> AlignedBuf {
        AlignedBuf { blocks: vec![Block([0; ALIGN]); len.div_ceil(ALIGN)] }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.blocks.len() * ALIGN;
        // SAFETY: `Block` is plain bytes with no padding (repr(C), one byte array as large as
        // its alignment), so the vector's storage is `len` initialised bytes, borrowed mutably
        // through `self` for the slice's lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.blocks.as_mut_ptr().cast::<u8>(), len) }
    }
}

/// The length of the image's file: a block device's metadata says 0, so its end is found by
/// seeking (all I/O here is positional, so the file offset does not matter).
pub(crate) fn file_len(file: &File) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::FileTypeExt;
    let metadata = file.metadata()?;
    if metadata.file_type().is_block_device() {
        let mut file = file;
        file.seek(SeekFrom::End(0))
    } else {
        Ok(metadata.len())
    }
}

/// Reads `len` bytes at `offset`; bytes past the end of the file read as zeroes.
pub(crate) fn read_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let start = offset - offset % ALIGN as u64;
    let head = (offset - start) as usize;
    let mut buffer = AlignedBuf::new(head + len);
    read_aligned(file, buffer.as_mut_slice(), start)?;
    Ok(buffer.as_mut_slice()[head..head + len].to_vec())
}

/// Writes `data` at `offset` (reading and rewriting the partial 4 KiB blocks around it).
pub(crate) fn write_at(file: &File, offset: u64, data: &[u8]) -> io::Result<()> {
    let start = offset - offset % ALIGN as u64;
    let head = (offset - start) as usize;
    let mut buffer = AlignedBuf::new(head + data.len());
    let bytes = buffer.as_mut_slice();
    let file_len = file_len(file)?;
    if head != 0 || !data.len().is_multiple_of(ALIGN) {
        read_aligned(file, bytes, start)?;
    }
    bytes[head..head + data.len()].copy_from_slice(data);
    // Never grow the file by more than the data asks for when the tail block is partial and
    // past the end: write whole blocks, then cut the file back to where the data ends.
    let end = offset + data.len() as u64;
    file.write_all_at(bytes, start)?;
    let written_end = start + bytes.len() as u64;
    // (A block device, which cannot be cut, ends on a block boundary: this never applies.)
    if written_end > file_len.max(end) {
        file.set_len(file_len.max(end))?;
    }
    Ok(())
}

/// Fills `buffer` from `offset`, zeroes past the end of the file.
fn read_aligned(file: &File, buffer: &mut [u8], offset: u64) -> io::Result<()> {
    let done = read_up_to(file, buffer, offset)?;
    buffer[done..].fill(0);
    Ok(())
}

/// Reads into `buffer` (aligned, at an aligned `offset`) until it is full or the file ends;
/// returns how many bytes were read.
pub(crate) fn read_up_to(file: &File, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buffer.len() {
        match file.read_at(&mut buffer[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => {
                done += n;
                if !done.is_multiple_of(ALIGN) {
                    break; // a short read of a regular file is its end (and O_DIRECT wants aligned offsets)
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
