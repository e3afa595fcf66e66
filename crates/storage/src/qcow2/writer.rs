//! Writes a fresh, standalone qcow2 v3 image from any disk, sequentially, optionally with
//! zlib-compressed clusters (imago cannot write those): the image tool's `convert -O qcow2`.
//!
//! Layout: the header in cluster 0; then data (packed compressed extents, or whole clusters) and
//! each L2 table once its range is done, in disk order; then the L1 table, the refcount blocks and
//! the refcount table. Every host cluster's refcount is the number of things using it (an
//! extent packed among others shares its cluster), so `qemu-img check` finds the image clean.

use super::header::{self, MAGIC, MAX_L1_BYTES, V3_HEADER_LEN};
use crate::{DiskBackend, DiskBackendExt};
use flate2::{Compress, Compression, FlushCompress, Status};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

const OFLAG_COPIED: u64 = 1 << 63;
const OFLAG_COMPRESSED: u64 = 1 << 62;
/// 16-bit refcounts, QEMU's default.
const REFCOUNT_ORDER: u32 = 4;

/// How `write_image` lays out the new image.
#[derive(Clone, Copy, Debug)]
pub struct WriterOptions {
    /// log2 of the cluster size (9..=21).
    pub cluster_bits: u32,
    /// Compress every cluster that shrinks (zlib, as QEMU: raw deflate with a 4 KiB window).
    pub compress: bool,
}

impl Default for WriterOptions {
    fn default() -> WriterOptions {
        WriterOptions { cluster_bits: 16, compress: false }
    }
}

struct Writer<'a> {
    file: &'a File,
    cluster_size: u64,
    compress: Option<Compress>,
    /// The next free byte.
    cursor: u64,
    /// References per host cluster.
    refcounts: Vec<u16>,
    l1: Vec<u64>,
    /// The L2 table being filled: (L1 index, entries).
    l2: Option<(usize, Vec<u64>)>,
}

impl Writer<'_> {
    fn reference(&mut self, offset: u64, len: u64) {
        for cluster in offset / self.cluster_size..=(offset + len - 1) / self.cluster_size {
            let cluster = cluster as usize;
            if self.refcounts.len() <= cluster {
                self.refcounts.resize(cluster + 1, 0);
            }
            self.refcounts[cluster] = self.refcounts[cluster].saturating_add(1);
        }
    }

    /// Writes `data` at a fresh cluster boundary, taking whole clusters.
    fn put_clusters(&mut self, data: &[u8]) -> io::Result<u64> {
        self.cursor = self.cursor.next_multiple_of(self.cluster_size);
        let offset = self.cursor;
        self.file.write_all_at(data, offset)?;
        let len = (data.len() as u64).next_multiple_of(self.cluster_size).max(self.cluster_size);
        self.reference(offset, len);
        self.cursor += len;
        Ok(offset)
    }

    /// Writes `data` right after the last compressed extent (they pack, as QEMU's do).
    fn put_bytes(&mut self, data: &[u8]) -> io::Result<u64> {
        let offset = self.cursor;
        self.file.write_all_at(data, offset)?;
        self.reference(offset, data.len() as u64);
        self.cursor += data.len() as u64;
        Ok(offset)
    }

    fn finish_l2(&mut self) -> io::Result<()> {
        if let Some((index, table)) = self.l2.take() {
            let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_be_bytes()).collect();
            let offset = self.put_clusters(&bytes)?;
            self.l1[index] = offset | OFLAG_COPIED;
        }
        Ok(())
    }

    fn set_entry(&mut self, guest_cluster: u64, entry: u64) -> io::Result<()> {
        let per_l2 = self.cluster_size / 8;
        let index = (guest_cluster / per_l2) as usize;
        if self.l2.as_ref().map(|(i, _)| *i) != Some(index) {
            self.finish_l2()?;
            self.l2 = Some((index, vec![0; per_l2 as usize]));
        }
        if let Some((_, table)) = self.l2.as_mut() {
            table[(guest_cluster % per_l2) as usize] = entry;
        }
        Ok(())
    }

    /// Raw deflate with QEMU's 4 KiB window, if it comes out smaller than a cluster.
    fn compressed(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        let compress = self.compress.as_mut()?;
        compress.reset();
        let mut out = Vec::with_capacity(self.cluster_size as usize - 1);
        match compress.compress_vec(data, &mut out, FlushCompress::Finish) {
            Ok(Status::StreamEnd) if (out.len() as u64) < self.cluster_size - 1 => Some(out),
            _ => None,
        }
    }

    fn put_data(&mut self, guest_cluster: u64, data: &[u8]) -> io::Result<()> {
        if let Some(compressed) = self.compressed(data) {
            let offset = self.put_bytes(&compressed)?;
            let cluster_bits = self.cluster_size.trailing_zeros();
            let shift = 62 - (cluster_bits - 8);
            let sectors = (offset + compressed.len() as u64 - 1) / 512 - offset / 512 + 1;
            self.set_entry(guest_cluster, OFLAG_COMPRESSED | ((sectors - 1) << shift) | offset)
        } else {
            let offset = self.put_clusters(data)?;
            self.set_entry(guest_cluster, offset | OFLAG_COPIED)
        }
    }
}

/// Writes `source` as a new qcow2 image into `file` (empty, opened for writing), calling
/// `progress` with the bytes done so far. All-zero clusters stay unallocated.
pub fn write_image(
    source: &dyn DiskBackend,
    file: &File,
    options: WriterOptions,
    progress: &mut dyn FnMut(u64),
) -> io::Result<()> {
    let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
    if !(header::MIN_CLUSTER_BITS..=header::MAX_CLUSTER_BITS).contains(&options.cluster_bits) {
        return Err(invalid(format!(
            "cluster size 2^{} is out of range (512 B to 2 MiB)",
            options.cluster_bits
        )));
    }
    let cluster_size = 1u64 << options.cluster_bits;
    let size = source.size();
    let l1_entries = size.div_ceil(cluster_size / 8 * cluster_size);
    if l1_entries * 8 > MAX_L1_BYTES {
        return Err(invalid(format!("{size} bytes is too large for {cluster_size}-byte clusters")));
    }
    let compress =
        options.compress.then(|| Compress::new_with_window_bits(Compression::default(), false, 12));
    let mut writer = Writer {
        file,
        cluster_size,
        compress,
        cursor: 0,
        refcounts: Vec::new(),
        l1: vec![0; l1_entries as usize],
        l2: None,
    };
    writer.put_clusters(&[0u8; 8])?; // the header's cluster, written last
                                     // Read in pieces of at least 1 MiB, and whole clusters.
    let chunk = cluster_size.max(1 << 20);
    let mut buffer = vec![0u8; chunk as usize];
    let mut offset = 0;
    while offset < size {
        let len = chunk.min(size - offset);
        let piece = &mut buffer[..len as usize];
        source.read_at(piece, offset)?;
        for (i, data) in piece.chunks(cluster_size as usize).enumerate() {
            if data.iter().all(|b| *b == 0) {
                continue;
            }
            let guest_cluster = offset / cluster_size + i as u64;
            if data.len() < cluster_size as usize {
                // The last, partial cluster: padded with zeroes.
                let mut whole = data.to_vec();
                whole.resize(cluster_size as usize, 0);
                writer.put_data(guest_cluster, &whole)?;
            } else {
                writer.put_data(guest_cluster, data)?;
            }
        }
        offset += len;
        progress(offset);
    }
    writer.finish_l2()?;
    let l1_bytes: Vec<u8> = writer.l1.iter().flat_map(|e| e.to_be_bytes()).collect();
    let l1_offset =
        if l1_bytes.is_empty() { writer.put_clusters(&[0u8; 8])? } else { writer.put_clusters(&l1_bytes)? };
    let (reftable_offset, reftable_clusters) = write_refcounts(&mut writer)?;
    let header = header_bytes(
        options.cluster_bits,
        size,
        l1_entries as u32,
        l1_offset,
        reftable_offset,
        reftable_clusters,
    );
    file.write_all_at(&header, 0)?;
    file.set_len(writer.cursor)?;
    file.sync_all()
}

/// Writes refcount blocks and table after everything else (they count themselves too);
/// returns the table's offset and size in clusters.
fn write_refcounts(writer: &mut Writer<'_>) -> io::Result<(u64, u32)> {
    let cs = writer.cluster_size;
    writer.cursor = writer.cursor.next_multiple_of(cs);
    let start = writer.cursor / cs;
    let per_block = cs * 8 / (1 << REFCOUNT_ORDER);
    let (mut blocks, mut table_clusters) = (0u64, 0u64);
    loop {
        let total = start + blocks + table_clusters;
        let new = (total.div_ceil(per_block), (total.div_ceil(per_block) * 8).div_ceil(cs));
        if new == (blocks, table_clusters) {
            break;
        }
        (blocks, table_clusters) = new;
    }
    if table_clusters * cs > header::MAX_REFTABLE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the image is too large for its cluster size",
        ));
    }
    let end = (start + blocks + table_clusters) as usize;
    writer.refcounts.resize(end, 0);
    for count in &mut writer.refcounts[start as usize..end] {
        *count = 1;
    }
    let mut table = vec![0u64; (table_clusters * cs / 8) as usize];
    for (b, entry) in table.iter_mut().enumerate().take(blocks as usize) {
        let first = b * per_block as usize;
        let counts = &writer.refcounts[first.min(end)..(first + per_block as usize).min(end)];
        let mut block = vec![0u8; cs as usize];
        for (i, count) in counts.iter().enumerate() {
            block[i * 2..i * 2 + 2].copy_from_slice(&count.to_be_bytes());
        }
        *entry = (start + b as u64) * cs;
        writer.file.write_all_at(&block, *entry)?;
    }
    let table_offset = (start + blocks) * cs;
    let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_be_bytes()).collect();
    writer.file.write_all_at(&bytes, table_offset)?;
    writer.cursor = end as u64 * cs;
    Ok((table_offset, table_clusters as u32))
}

/// A v3 header (zlib compression, 16-bit refcounts, no extensions but the end marker).
fn header_bytes(
    cluster_bits: u32,
    size: u64,
    l1_size: u32,
    l1_offset: u64,
    reftable_offset: u64,
    reftable_clusters: u32,
) -> Vec<u8> {
    let mut h = vec![0u8; V3_HEADER_LEN + 8];
    h[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    h[20..24].copy_from_slice(&cluster_bits.to_be_bytes());
    h[24..32].copy_from_slice(&size.to_be_bytes());
    h[36..40].copy_from_slice(&l1_size.to_be_bytes());
    h[40..48].copy_from_slice(&l1_offset.to_be_bytes());
    h[48..56].copy_from_slice(&reftable_offset.to_be_bytes());
    h[56..60].copy_from_slice(&reftable_clusters.to_be_bytes());
    h[96..100].copy_from_slice(&REFCOUNT_ORDER.to_be_bytes());
    h[100..104].copy_from_slice(&(V3_HEADER_LEN as u32).to_be_bytes());
    h
}
