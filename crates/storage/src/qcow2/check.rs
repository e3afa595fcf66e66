//! A consistency check of a qcow2 image's metadata, as `qemu-img check` does it, and a repair
//! that rebuilds the refcounts.
//!
//! The check walks the L1 and L2 tables and counts every cluster they, the header and the
//! refcount structures use; then it compares those counts with the refcounts on disk
//! (fewer on disk: a corruption, as a write could then reuse a used cluster; more: a leak),
//! and checks every table entry's COPIED flag against the refcount on disk. The findings and
//! messages are QEMU's, so the two tools report the same on the same image.
//!
//! Memory is proportional to the clusters the tables really reference, never to a header
//! field: the tables' sizes were checked against the file by `header.rs`, and an L2 table used
//! twice is walked once.

use super::header::{self, Header, INCOMPAT_DIRTY};
use super::metaio;
use super::Qcow2Error;
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io;

const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const REFT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
const OFLAG_COPIED: u64 = 1 << 63;
const OFLAG_COMPRESSED: u64 = 1 << 62;
const OFLAG_ZERO: u64 = 1;
/// Bits an L1 entry, or an uncompressed L2 entry, must leave clear.
const L1_RESERVED: u64 = 0x7f00_0000_0000_01ff;
const L2_RESERVED: u64 = 0x3f00_0000_0000_01fe;

/// Why an image could not be checked (a finding is not an error: see [`CheckReport`]).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Header(#[from] Qcow2Error),
    #[error("i/o error while checking the image: {0}")]
    Io(#[from] io::Error),
    #[error("checking images with internal snapshots is not supported")]
    Snapshots,
    #[error("the image still has {0} corruptions after the repair")]
    NotRepaired(u64),
}

/// What a check found, as `qemu-img check` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// One line per problem, as QEMU prints them.
    pub messages: Vec<String>,
    pub corruptions: u64,
    pub leaks: u64,
    pub check_errors: u64,
    /// The virtual disk's size in clusters.
    pub total_clusters: u64,
    pub allocated_clusters: u64,
    pub fragmented_clusters: u64,
    pub compressed_clusters: u64,
    /// The end of the last cluster in use, in bytes.
    pub image_end_offset: u64,
    /// What a repair fixed (the rest of the report is the check after it).
    pub repaired: Option<Repaired>,
}

/// What `check --repair` fixed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Repaired {
    pub corruptions: u64,
    pub leaks: u64,
}

impl CheckReport {
    /// `qemu-img check`'s exit status: 0 clean, 2 corruptions, 3 leaks only (1, a check that
    /// did not complete, is the caller's on a [`CheckError`]).
    pub fn exit_code(&self) -> i32 {
        if self.check_errors > 0 {
            1
        } else if self.corruptions > 0 {
            2
        } else if self.leaks > 0 {
            3
        } else {
            0
        }
    }
}

/// Checks the qcow2 image in `file`, read-only.
pub fn check(file: &File) -> Result<CheckReport, CheckError> {
    check_with_progress(file, &mut |_, _| {})
}

/// [`check`], calling `progress(done, total)` as the L1 table is walked.
pub fn check_with_progress(
    file: &File,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<CheckReport, CheckError> {
    let image = Image::new(file)?;
    let mut walk = Walk::new(&image, true);
    walk.run(progress)?;
    walk.compare()
}

/// Checks the image and, when it has corruptions or leaks (or is dirty), rebuilds its refcounts
/// and COPIED flags, drops table entries that point outside the file, and clears the dirty bit.
/// The report is the check after the repair, with [`CheckReport::repaired`] set.
pub fn repair(file: &File) -> Result<CheckReport, CheckError> {
    repair_with_progress(file, &mut |_, _| {})
}

/// [`repair`], calling `progress(done, total)` during the first check.
pub fn repair_with_progress(
    file: &File,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<CheckReport, CheckError> {
    let before = check_with_progress(file, progress)?;
    let image = Image::new(file)?;
    if before.corruptions == 0 && before.leaks == 0 {
        if image.header.dirty() {
            clear_dirty(file, &image.header)?;
        }
        return Ok(CheckReport { repaired: Some(Repaired::default()), ..before });
    }
    rebuild(&image)?;
    file.sync_all()?;
    let mut after = check(file)?;
    after.repaired = Some(Repaired { corruptions: before.corruptions, leaks: before.leaks });
    Ok(after)
}

/// The first cluster of the image's active metadata — the header, the L1 and refcount tables,
/// the refcount blocks and L2 tables they name — whose refcount on disk is 0, if one is. imago's
/// allocator hands such a cluster out again (it has no overlap check, unlike QEMU), so the first
/// write would put a new table or the guest's data over the header or a table. Cheap enough for
/// every writable open: it reads the L1 and refcount tables and the refcount blocks that cover
/// the clusters found, each once, never an L2 table.
pub(crate) fn unreferenced_metadata(file: &File) -> Result<Option<u64>, CheckError> {
    let image = Image::read(file)?;
    let cs = image.cluster_size;
    let mut on_disk = OnDisk::new(&image)?;
    let span = |offset: u64, len: u64| offset / cs..(offset + len).div_ceil(cs);
    let mut clusters = vec![0];
    clusters.extend(span(image.header.l1_table_offset, u64::from(image.header.l1_size) * 8));
    clusters.extend(span(
        image.header.refcount_table_offset,
        u64::from(image.header.refcount_table_clusters) * cs,
    ));
    let tables = |entries: &[u64], mask: u64| -> Vec<u64> {
        entries
            .iter()
            .map(|entry| entry & mask)
            .filter(|offset| *offset != 0)
            .map(|offset| offset / cs)
            .collect()
    };
    clusters.extend(tables(&on_disk.reftable, REFT_OFFSET_MASK));
    clusters.extend(tables(&image.l1()?, OFFSET_MASK));
    clusters.sort_unstable();
    clusters.dedup();
    for cluster in clusters {
        if on_disk.get(cluster)? == 0 {
            return Ok(Some(cluster));
        }
    }
    Ok(None)
}

struct Image<'a> {
    file: &'a File,
    header: Header,
    file_len: u64,
    cluster_size: u64,
}

impl<'a> Image<'a> {
    /// The image, for a check (which does not handle internal snapshots).
    fn new(file: &'a File) -> Result<Image<'a>, CheckError> {
        let image = Image::read(file)?;
        if image.header.nb_snapshots > 0 {
            return Err(CheckError::Snapshots);
        }
        Ok(image)
    }

    fn read(file: &'a File) -> Result<Image<'a>, CheckError> {
        let header = header::read(file)?;
        Ok(Image { file, file_len: metaio::file_len(file)?, cluster_size: header.cluster_size(), header })
    }

    fn read_table(&self, offset: u64, entries: u64) -> io::Result<Vec<u64>> {
        let bytes = metaio::read_at(self.file, offset, (entries * 8) as usize)?;
        Ok(bytes.chunks_exact(8).map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default())).collect())
    }

    fn write_table(&self, offset: u64, table: &[u64]) -> io::Result<()> {
        let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_be_bytes()).collect();
        metaio::write_at(self.file, offset, &bytes)
    }

    fn l1(&self) -> io::Result<Vec<u64>> {
        self.read_table(self.header.l1_table_offset, u64::from(self.header.l1_size))
    }

    fn refcount_bits(&self) -> u64 {
        1 << self.header.refcount_order
    }

    /// Refcounts per refcount block.
    fn per_block(&self) -> u64 {
        self.cluster_size * 8 / self.refcount_bits()
    }

    /// A compressed L2 entry's host range (offset, length), as QEMU decodes it.
    fn compressed_range(&self, entry: u64) -> (u64, u64) {
        let shift = 62 - (self.header.cluster_bits - 8);
        let offset = entry & ((1u64 << shift) - 1);
        let sectors = ((entry >> shift) & ((1u64 << (self.header.cluster_bits - 8)) - 1)) + 1;
        (offset, sectors * 512 - (offset & 511))
    }
}

/// A refcount of `bits` width at `index` of a refcount block (QEMU's bit order below 8 bits).
fn get_refcount(block: &[u8], index: u64, bits: u64) -> u64 {
    if bits >= 8 {
        let bytes = (bits / 8) as usize;
        let at = index as usize * bytes;
        block[at..at + bytes].iter().fold(0, |value, b| (value << 8) | u64::from(*b))
    } else {
        let per_byte = 8 / bits;
        let byte = block[(index / per_byte) as usize];
        (u64::from(byte) >> (bits * (index % per_byte))) & ((1 << bits) - 1)
    }
}

fn set_refcount(block: &mut [u8], index: u64, bits: u64, value: u64) {
    let value = if bits < 64 { value.min((1 << bits) - 1) } else { value };
    if bits >= 8 {
        let bytes = (bits / 8) as usize;
        let at = index as usize * bytes;
        block[at..at + bytes].copy_from_slice(&value.to_be_bytes()[8 - bytes..]);
    } else {
        let per_byte = 8 / bits;
        let shift = bits * (index % per_byte);
        let byte = &mut block[(index / per_byte) as usize];
        *byte = (*byte & !(((1u8 << bits) - 1) << shift)) | ((value as u8) << shift);
    }
}

/// The (index, refcount) of the refcounts from index `from` on in a refcount block that are not
/// zero, skipping zero words whole: the cost is the block's length plus its non-zero entries.
fn nonzero_refcounts(block: &[u8], bits: u64, from: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
    let per_word = 64 / bits;
    block.chunks_exact(8).enumerate().filter(|(_, word)| word.iter().any(|b| *b != 0)).flat_map(
        move |(w, _)| {
            let first = (w as u64 * per_word).max(from);
            (first..(w as u64 + 1) * per_word)
                .map(move |index| (index, get_refcount(block, index, bits)))
                .filter(|(_, refcount)| *refcount != 0)
        },
    )
}

/// The refcounts on disk, read through the refcount table, one block cached (lookups mostly go
/// in order).
struct OnDisk<'a> {
    image: &'a Image<'a>,
    reftable: Vec<u64>,
    cached: Option<(u64, Vec<u8>)>,
}

impl<'a> OnDisk<'a> {
    fn new(image: &'a Image<'a>) -> io::Result<OnDisk<'a>> {
        let entries = u64::from(image.header.refcount_table_clusters) * image.cluster_size / 8;
        Ok(OnDisk {
            reftable: image.read_table(image.header.refcount_table_offset, entries)?,
            image,
            cached: None,
        })
    }

    /// A usable refcount block's offset for reftable index `i`.
    fn block_offset(&self, i: u64) -> Option<u64> {
        let offset = self.reftable.get(i as usize)? & REFT_OFFSET_MASK;
        (offset != 0 && offset.is_multiple_of(self.image.cluster_size) && offset < self.image.file_len)
            .then_some(offset)
    }

    fn get(&mut self, cluster: u64) -> io::Result<u64> {
        let per_block = self.image.per_block();
        let (i, index) = (cluster / per_block, cluster % per_block);
        let Some(offset) = self.block_offset(i) else { return Ok(0) };
        if self.cached.as_ref().map(|(c, _)| *c) != Some(i) {
            self.cached =
                Some((i, metaio::read_at(self.image.file, offset, self.image.cluster_size as usize)?));
        }
        let block = &self.cached.as_ref().map(|(_, b)| b.as_slice()).unwrap_or_default();
        Ok(get_refcount(block, index, self.image.refcount_bits()))
    }
}

/// One pass over the metadata, counting references.
struct Walk<'a> {
    image: &'a Image<'a>,
    /// Whether the refcount table and blocks count (not when rebuilding them).
    count_refcount_structures: bool,
    refs: BTreeMap<u64, u64>,
    report: CheckReport,
    on_disk: OnDisk<'a>,
    /// L1 indices whose L2 table is unusable, and (L2 offset, index) of unusable data entries.
    bad_l1: Vec<usize>,
    bad_l2: Vec<(u64, usize)>,
    /// The distinct, usable L2 tables.
    l2_tables: Vec<u64>,
    /// The COPIED flags to check against the refcounts on disk once the walk is done, in
    /// cluster order, so that each refcount block is read once however the tables scatter
    /// their entries (a lookup per entry, in table order, could read one block per entry).
    copied: Vec<CopiedCheck>,
}

/// A table entry's COPIED flag, to be checked against its cluster's refcount on disk.
struct CopiedCheck {
    cluster: u64,
    entry: u64,
    /// The L1 index, for an L2 table's entry; `None` for a data cluster's L2 entry.
    l1_index: Option<usize>,
}

impl<'a> Walk<'a> {
    fn new(image: &'a Image<'a>, count_refcount_structures: bool) -> Walk<'a> {
        Walk {
            image,
            count_refcount_structures,
            refs: BTreeMap::new(),
            report: CheckReport::default(),
            on_disk: OnDisk { image, reftable: Vec::new(), cached: None },
            bad_l1: Vec::new(),
            bad_l2: Vec::new(),
            l2_tables: Vec::new(),
            copied: Vec::new(),
        }
    }

    fn error(&mut self, message: String) {
        self.report.corruptions += 1;
        self.report.messages.push(message);
    }

    /// Counts one reference to every cluster of `offset..offset + size`; false (a corruption)
    /// when the range lies a cluster or more past the end of the file.
    fn count(&mut self, offset: u64, size: u64) -> bool {
        let cs = self.image.cluster_size;
        if offset.saturating_add(size) >= self.image.file_len.saturating_add(cs) {
            self.error(format!(
                "ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset {offset:#x} size {size:#x}"
            ));
            return false;
        }
        if size == 0 {
            return true;
        }
        for cluster in offset / cs..=(offset + size - 1) / cs {
            *self.refs.entry(cluster).or_default() += 1;
        }
        true
    }

    fn run(&mut self, progress: &mut dyn FnMut(u64, u64)) -> Result<(), CheckError> {
        let image = self.image;
        let cs = image.cluster_size;
        self.on_disk = OnDisk::new(image)?;
        self.report.total_clusters = image.header.size.div_ceil(cs);
        self.count(0, cs);
        self.count(image.header.l1_table_offset, u64::from(image.header.l1_size) * 8);
        let l1 = image.l1()?;
        let mut walked = HashSet::new();
        let mut next_contiguous = 0u64;
        for (l1_index, entry) in l1.iter().enumerate() {
            progress(l1_index as u64, l1.len() as u64);
            if entry & L1_RESERVED != 0 {
                self.error(format!("ERROR found L1 entry with reserved bits set: {entry:x}"));
            }
            let l2_offset = entry & OFFSET_MASK;
            if l2_offset == 0 {
                continue;
            }
            if !l2_offset.is_multiple_of(cs) {
                self.error(format!(
                    "ERROR l2_offset={l2_offset:#x}: Table is not cluster aligned; L1 entry corrupted"
                ));
                self.bad_l1.push(l1_index);
                continue;
            }
            self.copied.push(CopiedCheck {
                cluster: l2_offset / cs,
                entry: *entry,
                l1_index: Some(l1_index),
            });
            if !self.count(l2_offset, cs) {
                self.bad_l1.push(l1_index);
                continue;
            }
            if !walked.insert(l2_offset) {
                continue; // its entries were counted already
            }
            self.l2_tables.push(l2_offset);
            self.walk_l2(l2_offset, &mut next_contiguous)?;
        }
        if self.count_refcount_structures {
            self.count(
                image.header.refcount_table_offset,
                u64::from(image.header.refcount_table_clusters) * cs,
            );
            for i in 0..self.on_disk.reftable.len() {
                let offset = self.on_disk.reftable[i] & REFT_OFFSET_MASK;
                if offset == 0 {
                    continue;
                }
                if !offset.is_multiple_of(cs) {
                    self.error(format!(
                        "ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted"
                    ));
                } else if offset >= image.file_len {
                    self.error(format!("ERROR refcount block {i} is outside image"));
                } else {
                    self.count(offset, cs);
                }
            }
        }
        self.check_copied()
    }

    /// Checks the COPIED flags collected by the walk: set exactly when the refcount is 1.
    fn check_copied(&mut self) -> Result<(), CheckError> {
        let mut copied = std::mem::take(&mut self.copied);
        copied.sort_by_key(|check| check.cluster);
        for CopiedCheck { cluster, entry, l1_index } in copied {
            let refcount = self.on_disk.get(cluster)?;
            if (refcount == 1) == (entry & OFLAG_COPIED != 0) {
                continue;
            }
            self.error(match l1_index {
                Some(l1_index) => format!(
                    "ERROR OFLAG_COPIED L2 cluster: l1_index={l1_index} l1_entry={entry:x} refcount={refcount}"
                ),
                None => format!("ERROR OFLAG_COPIED data cluster: l2_entry={entry:x} refcount={refcount}"),
            });
        }
        Ok(())
    }

    fn walk_l2(&mut self, l2_offset: u64, next_contiguous: &mut u64) -> Result<(), CheckError> {
        let image = self.image;
        let cs = image.cluster_size;
        let table = image.read_table(l2_offset, cs / 8)?;
        for (index, entry) in table.into_iter().enumerate() {
            if entry & OFLAG_COMPRESSED != 0 {
                if entry & OFLAG_COPIED != 0 {
                    let (offset, _) = image.compressed_range(entry);
                    self.error(format!("ERROR: coffset={offset:#x}: Compressed cluster has copied flag set"));
                }
                let (offset, size) = image.compressed_range(entry);
                self.report.allocated_clusters += 1;
                self.report.compressed_clusters += 1;
                self.report.fragmented_clusters += 1;
                *next_contiguous = 0;
                if !self.count(offset, size) {
                    self.bad_l2.push((l2_offset, index));
                }
                continue;
            }
            if entry & L2_RESERVED != 0 {
                self.error(format!("ERROR found L2 entry with reserved bits set: {entry:x}"));
            }
            let offset = entry & OFFSET_MASK;
            if offset == 0 {
                continue;
            }
            if !offset.is_multiple_of(cs) {
                // QEMU still counts the cluster-sized range it points at.
                self.error(format!(
                    "ERROR offset={offset:x}: Data cluster is not properly aligned; L2 entry corrupted."
                ));
                self.bad_l2.push((l2_offset, index));
                self.count(offset, cs);
                continue;
            }
            self.report.allocated_clusters += 1;
            if *next_contiguous != 0 && offset != *next_contiguous {
                self.report.fragmented_clusters += 1;
            }
            *next_contiguous = offset + cs;
            self.copied.push(CopiedCheck { cluster: offset / cs, entry, l1_index: None });
            if !self.count(offset, cs) {
                self.bad_l2.push((l2_offset, index));
            }
        }
        Ok(())
    }

    /// Compares the counted references with the refcounts on disk. Every refcount of the
    /// clusters inside the file is compared (as QEMU does); past the end of the file only the
    /// refcounts that are not zero are (stale ones, a crash with lazy refcounts leaves them, are
    /// leaks), and each refcount block is read once. So the work is bounded by the file and its
    /// distinct blocks, not by the refcount table: a hostile table of a million entries naming
    /// one block would otherwise cover 2^35 refcounts.
    fn compare(mut self) -> Result<CheckReport, CheckError> {
        let per_block = self.image.per_block();
        let bits = self.image.refcount_bits();
        let file_clusters = self.image.file_len.div_ceil(self.image.cluster_size);
        let mut highest = self.refs.keys().next_back().copied();
        let mut read_blocks = HashSet::new();
        for i in 0..self.on_disk.reftable.len() as u64 {
            let Some(offset) = self.on_disk.block_offset(i) else { continue };
            let first = i * per_block;
            let inside = file_clusters.saturating_sub(first).min(per_block);
            // A block named twice is a corruption the walk counted already.
            if !read_blocks.insert(offset) && inside == 0 {
                continue;
            }
            let block = metaio::read_at(self.image.file, offset, self.image.cluster_size as usize)?;
            for index in 0..inside {
                let on_disk = get_refcount(&block, index, bits);
                let counted = self.refs.remove(&(first + index)).unwrap_or(0);
                if on_disk != 0 {
                    highest = highest.max(Some(first + index));
                }
                self.compare_one(first + index, on_disk, counted);
            }
            for (index, on_disk) in nonzero_refcounts(&block, bits, inside) {
                let counted = self.refs.remove(&(first + index)).unwrap_or(0);
                highest = highest.max(Some(first + index));
                self.compare_one(first + index, on_disk, counted);
            }
        }
        // References to clusters no refcount block covers, or whose refcount is zero.
        for (cluster, counted) in std::mem::take(&mut self.refs) {
            self.compare_one(cluster, 0, counted);
        }
        self.report.image_end_offset = highest.map_or(0, |c| (c + 1) * self.image.cluster_size);
        Ok(self.report)
    }

    fn compare_one(&mut self, cluster: u64, on_disk: u64, counted: u64) {
        if on_disk == counted {
            return;
        }
        if on_disk < counted {
            self.error(format!("ERROR cluster {cluster} refcount={on_disk} reference={counted}"));
        } else {
            self.report.leaks += 1;
            self.report
                .messages
                .push(format!("Leaked cluster {cluster} refcount={on_disk} reference={counted}"));
        }
    }
}

/// Rebuilds the image's metadata: drops unusable table entries, sets every COPIED flag from the
/// real reference counts, writes fresh refcount structures past the end of the file and points
/// the header at them (the old ones become free space), and clears the dirty bit.
fn rebuild(image: &Image<'_>) -> Result<(), CheckError> {
    let cs = image.cluster_size;
    // 1. Entries that point outside the file or are misaligned go (as zero clusters in v3).
    let mut walk = Walk::new(image, false);
    walk.run(&mut |_, _| {})?;
    if !walk.bad_l1.is_empty() {
        let mut l1 = image.l1()?;
        for i in &walk.bad_l1 {
            l1[*i] = 0;
        }
        image.write_table(image.header.l1_table_offset, &l1)?;
    }
    let mut bad_l2 = walk.bad_l2.clone();
    bad_l2.sort_unstable();
    for chunk in bad_l2.chunk_by(|a, b| a.0 == b.0) {
        let mut table = image.read_table(chunk[0].0, cs / 8)?;
        for (_, index) in chunk {
            table[*index] = if image.header.version >= 3 { OFLAG_ZERO } else { 0 };
        }
        image.write_table(chunk[0].0, &table)?;
    }
    // 2. The references as they now are, without the old refcount structures.
    let mut walk = Walk::new(image, false);
    walk.run(&mut |_, _| {})?;
    let mut refs = walk.refs;
    // 3. COPIED flags from the real counts.
    let mut l1 = image.l1()?;
    let mut l1_changed = false;
    for entry in l1.iter_mut() {
        let offset = *entry & OFFSET_MASK;
        if offset == 0 {
            // No table, but maybe reserved bits or a stray COPIED flag: the entry is just empty.
            l1_changed |= *entry != 0;
            *entry = 0;
            continue;
        }
        let copied = refs.get(&(offset / cs)) == Some(&1);
        let entry_clean = *entry & !L1_RESERVED;
        let fixed = if copied { entry_clean | OFLAG_COPIED } else { entry_clean & !OFLAG_COPIED };
        l1_changed |= fixed != *entry;
        *entry = fixed;
    }
    if l1_changed {
        image.write_table(image.header.l1_table_offset, &l1)?;
    }
    for l2_offset in &walk.l2_tables {
        let mut table = image.read_table(*l2_offset, cs / 8)?;
        let mut changed = false;
        for entry in table.iter_mut() {
            let fixed = if *entry & OFLAG_COMPRESSED != 0 {
                *entry & !OFLAG_COPIED
            } else if *entry & OFFSET_MASK != 0 {
                let clean = *entry & !L2_RESERVED;
                if refs.get(&((*entry & OFFSET_MASK) / cs)) == Some(&1) {
                    clean | OFLAG_COPIED
                } else {
                    clean & !OFLAG_COPIED
                }
            } else {
                *entry & !L2_RESERVED
            };
            changed |= fixed != *entry;
            *entry = fixed;
        }
        if changed {
            image.write_table(*l2_offset, &table)?;
        }
    }
    // 4. New refcount blocks and table after everything in use and the current end of file.
    let per_block = image.per_block();
    let start = image.file_len.div_ceil(cs).max(refs.keys().next_back().map_or(0, |c| c + 1));
    let (mut blocks, mut table_clusters) = (0u64, 0u64);
    loop {
        let total = start + blocks + table_clusters;
        let new_blocks = total.div_ceil(per_block);
        let new_table_clusters = (new_blocks * 8).div_ceil(cs);
        if (new_blocks, new_table_clusters) == (blocks, table_clusters) {
            break;
        }
        (blocks, table_clusters) = (new_blocks, new_table_clusters);
    }
    if table_clusters * cs > header::MAX_REFTABLE_BYTES {
        return Err(CheckError::Header(Qcow2Error::TooLarge {
            what: "rebuilt refcount table",
            value: table_clusters * cs,
            limit: header::MAX_REFTABLE_BYTES,
        }));
    }
    for cluster in start..start + blocks + table_clusters {
        refs.insert(cluster, 1);
    }
    let bits = image.refcount_bits();
    let mut reftable = vec![0u64; (table_clusters * cs / 8) as usize];
    for b in 0..blocks {
        let mut block = vec![0u8; cs as usize];
        for (cluster, count) in refs.range(b * per_block..(b + 1) * per_block) {
            set_refcount(&mut block, cluster - b * per_block, bits, *count);
        }
        let offset = (start + b) * cs;
        metaio::write_at(image.file, offset, &block)?;
        reftable[b as usize] = offset;
    }
    let table_offset = (start + blocks) * cs;
    image.write_table(table_offset, &reftable)?;
    image.file.sync_all()?;
    // 5. The header points at them, in one write of the fields that change.
    let mut fields = Vec::with_capacity(12);
    fields.extend_from_slice(&table_offset.to_be_bytes());
    fields.extend_from_slice(&(table_clusters as u32).to_be_bytes());
    metaio::write_at(image.file, 48, &fields)?;
    if image.header.incompatible_features & INCOMPAT_DIRTY != 0 {
        let features = image.header.incompatible_features & !INCOMPAT_DIRTY;
        metaio::write_at(image.file, 72, &features.to_be_bytes())?;
    }
    Ok(())
}

/// Clears the dirty bit of a (consistent) v3 image.
fn clear_dirty(file: &File, header: &Header) -> io::Result<()> {
    let features = header.incompatible_features & !INCOMPAT_DIRTY;
    metaio::write_at(file, 72, &features.to_be_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// Runs `f` on another thread and fails the test if it takes more than a minute (a hostile
    /// image that makes the check loop would otherwise hang the test run).
    fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (done, result) = std::sync::mpsc::channel();
        std::thread::spawn(move || done.send(f()).unwrap());
        result.recv_timeout(std::time::Duration::from_secs(60)).expect("the check did not finish")
    }

    /// A refcount table of a million entries (8 MiB, QEMU's limit) that all name one refcount
    /// block: the check compares only the clusters inside the file (QEMU's bound) rather than a
    /// million blocks' worth (2^35 refcounts), and the repair rebuilds a small, clean table.
    #[test]
    fn a_refcount_table_naming_one_block_a_million_times_is_checked_quickly() {
        const CS: u64 = 1 << 16;
        let table_clusters = (header::MAX_REFTABLE_BYTES / CS) as u32;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hostile.qcow2");
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
        let mut h = vec![0u8; 104];
        h[0..4].copy_from_slice(&header::MAGIC.to_be_bytes());
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[24..32].copy_from_slice(&(1u64 << 20).to_be_bytes());
        h[36..40].copy_from_slice(&1u32.to_be_bytes());
        h[40..48].copy_from_slice(&(2 * CS).to_be_bytes());
        h[48..56].copy_from_slice(&(3 * CS).to_be_bytes());
        h[56..60].copy_from_slice(&table_clusters.to_be_bytes());
        h[96..100].copy_from_slice(&4u32.to_be_bytes());
        h[100..104].copy_from_slice(&104u32.to_be_bytes());
        file.write_all_at(&h, 0).unwrap();
        let table: Vec<u8> = (0..header::MAX_REFTABLE_BYTES / 8).flat_map(|_| CS.to_be_bytes()).collect();
        file.write_all_at(&table, 3 * CS).unwrap();
        let file_len = (3 + u64::from(table_clusters)) * CS;
        assert_eq!(file.metadata().unwrap().len(), file_len);

        let checked = file.try_clone().unwrap();
        let report = bounded(move || check(&checked).unwrap());
        assert!(report.corruptions > 0, "{:?}", report.messages);
        let repaired = bounded(move || repair(&file).unwrap());
        assert_eq!((repaired.corruptions, repaired.leaks), (0, 0), "{:?}", repaired.messages);
        let grown = std::fs::metadata(&path).unwrap().len() - file_len;
        assert!(grown <= 2 * CS, "the rebuilt refcounts take {grown} bytes");
    }

    #[test]
    fn refcounts_of_every_width_round_trip() {
        for order in 0..=6u32 {
            let bits = 1u64 << order;
            let mut block = vec![0u8; 512];
            let entries = 512 * 8 / bits;
            for i in 0..entries {
                set_refcount(&mut block, i, bits, i % 3);
            }
            for i in 0..entries {
                assert_eq!(
                    get_refcount(&block, i, bits),
                    (i % 3).min(if bits < 64 { (1 << bits) - 1 } else { u64::MAX })
                );
            }
        }
        // QEMU's order below a byte: entry 0 in the low bits.
        let mut block = vec![0u8; 1];
        set_refcount(&mut block, 0, 1, 1);
        assert_eq!(block[0], 1);
    }
}
