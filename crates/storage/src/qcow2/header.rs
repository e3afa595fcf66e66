//! A small, strict parser of the qcow2 header (v2 and v3) and its extensions, run before imago
//! sees an image: every size and offset is checked against the file's length and QEMU's limits,
//! so nothing later allocates in proportion to a header field it has not checked.

use super::metaio::{AlignedBuf, ALIGN};
use super::Qcow2Error;

/// "QFI\xfb".
pub const MAGIC: u32 = 0x5146_49fb;
/// The smallest and largest cluster sizes QEMU accepts (512 B and 2 MiB).
pub const MIN_CLUSTER_BITS: u32 = 9;
pub const MAX_CLUSTER_BITS: u32 = 21;
/// QEMU's limits on the L1 table (32 MiB) and the refcount table (8 MiB).
pub const MAX_L1_BYTES: u64 = 32 << 20;
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// The v2 header's length; v3 adds 32 bytes.
pub const V2_HEADER_LEN: usize = 72;
pub const V3_HEADER_LEN: usize = 104;

/// Incompatible feature bits.
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION;
/// Compatible feature bit 0: lazy refcounts.
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;

const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_DATA_FILE: u32 = 0x4441_5441;

/// The fields of a qcow2 header Kestrel uses, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    pub cluster_bits: u32,
    /// The virtual disk's size in bytes.
    pub size: u64,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    /// log2 of the refcount width in bits (4 = 16-bit, v2's only width).
    pub refcount_order: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    /// The header's own length (72 for v2).
    pub header_length: u32,
    /// 0 = zlib, 1 = zstd.
    pub compression_type: u8,
    pub backing_file: Option<String>,
    /// The backing format header extension (imago reads it only in v3 images).
    pub backing_format: Option<String>,
    /// The other header extensions, (type, data), kept to rewrite the header.
    pub other_extensions: Vec<(u32, Vec<u8>)>,
}

impl Header {
    /// The cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Whether the image was not closed cleanly (its refcounts may be stale).
    pub fn dirty(&self) -> bool {
        self.incompatible_features & INCOMPAT_DIRTY != 0
    }

    /// Whether QEMU found the image corrupt and marked it so.
    pub fn corrupt(&self) -> bool {
        self.incompatible_features & INCOMPAT_CORRUPT != 0
    }

    /// The backing file's format as imago will decide it: the one the header names (v3 only),
    /// or `None` when imago probes it.
    pub fn imago_backing_format(&self) -> Option<&str> {
        if self.version >= 3 {
            self.backing_format.as_deref()
        } else {
            None
        }
    }

    /// The header (its fixed part as it is in `first`, the file's first bytes), followed by
    /// the extensions, a backing format extension for `backing_format`, the end marker and
    /// `backing_file`: what `rebase` writes at offset 0. Errors when it does not fit in the
    /// first cluster.
    pub fn with_backing(
        &self,
        first: &[u8],
        backing_file: Option<&str>,
        backing_format: Option<&str>,
    ) -> Result<Vec<u8>, Qcow2Error> {
        let fixed = self.header_length as usize;
        let mut out = first[..fixed].to_vec();
        let push_extension = |out: &mut Vec<u8>, kind: u32, data: &[u8]| {
            out.extend_from_slice(&kind.to_be_bytes());
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().next_multiple_of(8), 0);
        };
        if let (Some(format), Some(_)) = (backing_format, backing_file) {
            push_extension(&mut out, EXT_BACKING_FORMAT, format.as_bytes());
        }
        for (kind, data) in &self.other_extensions {
            push_extension(&mut out, *kind, data);
        }
        out.extend_from_slice(&[0u8; 8]);
        let (offset, len) = match backing_file {
            Some(name) if !name.is_empty() => {
                let offset = out.len() as u64;
                out.extend_from_slice(name.as_bytes());
                (offset, name.len() as u32)
            }
            _ => (0, 0),
        };
        out[8..16].copy_from_slice(&offset.to_be_bytes());
        out[16..20].copy_from_slice(&len.to_be_bytes());
        if out.len() as u64 > self.cluster_size() || len > 1023 {
            return Err(Qcow2Error::Invalid("the new header does not fit in the first cluster".into()));
        }
        Ok(out)
    }

    /// How many L1 entries the virtual size needs.
    pub fn l1_entries_needed(&self) -> u64 {
        let per_l2 = self.cluster_size() / 8 * self.cluster_size();
        self.size.div_ceil(per_l2)
    }

    /// Parses and checks the header at the start of `bytes`, which holds at least the file's
    /// first cluster (or the whole file when shorter); `file_len` is the file's length.
    pub fn parse(bytes: &[u8], file_len: u64) -> Result<Header, Qcow2Error> {
        if bytes.len() < V2_HEADER_LEN {
            return Err(Qcow2Error::Truncated {
                what: "header",
                needed: V2_HEADER_LEN as u64,
                len: file_len,
            });
        }
        let magic = be32(bytes, 0);
        if magic != MAGIC {
            return Err(Qcow2Error::BadMagic);
        }
        let version = be32(bytes, 4);
        if version != 2 && version != 3 {
            return Err(Qcow2Error::UnsupportedVersion(version));
        }
        let cluster_bits = be32(bytes, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(Qcow2Error::Invalid(format!(
                "cluster_bits {cluster_bits} is outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}"
            )));
        }
        let cluster_size = 1u64 << cluster_bits;
        let mut header = Header {
            version,
            cluster_bits,
            size: be64(bytes, 24),
            l1_size: be32(bytes, 36),
            l1_table_offset: be64(bytes, 40),
            refcount_table_offset: be64(bytes, 48),
            refcount_table_clusters: be32(bytes, 56),
            refcount_order: 4,
            nb_snapshots: be32(bytes, 60),
            snapshots_offset: be64(bytes, 64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            header_length: V2_HEADER_LEN as u32,
            compression_type: 0,
            backing_file: None,
            backing_format: None,
            other_extensions: Vec::new(),
        };
        if be32(bytes, 32) != 0 {
            return Err(Qcow2Error::Unsupported("encrypted images".into()));
        }
        if version == 3 {
            if bytes.len() < V3_HEADER_LEN {
                return Err(Qcow2Error::Truncated {
                    what: "v3 header",
                    needed: V3_HEADER_LEN as u64,
                    len: file_len,
                });
            }
            header.incompatible_features = be64(bytes, 72);
            header.compatible_features = be64(bytes, 80);
            header.autoclear_features = be64(bytes, 88);
            header.refcount_order = be32(bytes, 96);
            header.header_length = be32(bytes, 100);
            let header_length = u64::from(header.header_length);
            if header_length < V3_HEADER_LEN as u64
                || header_length > cluster_size
                || !header_length.is_multiple_of(8)
            {
                return Err(Qcow2Error::Invalid(format!("header_length {header_length} is invalid")));
            }
            if header_length > bytes.len() as u64 {
                return Err(Qcow2Error::Truncated { what: "header", needed: header_length, len: file_len });
            }
            if header_length > V3_HEADER_LEN as u64 {
                header.compression_type = bytes[V3_HEADER_LEN];
            }
        }
        header.check_features()?;
        if header.refcount_order > 6 {
            return Err(Qcow2Error::Invalid(format!("refcount_order {} is above 6", header.refcount_order)));
        }
        header.check_tables(file_len)?;
        header.parse_backing_name(bytes, file_len)?;
        header.parse_extensions(bytes, file_len)?;
        Ok(header)
    }

    fn check_features(&self) -> Result<(), Qcow2Error> {
        if self.incompatible_features & INCOMPAT_EXTL2 != 0 {
            return Err(Qcow2Error::Unsupported("extended L2 entries (subclusters)".into()));
        }
        let unknown = self.incompatible_features & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(Qcow2Error::Unsupported(format!("unknown incompatible feature bits {unknown:#x}")));
        }
        if self.incompatible_features & INCOMPAT_DATA_FILE != 0 {
            return Err(Qcow2Error::Unsupported("external data files".into()));
        }
        if self.incompatible_features & INCOMPAT_COMPRESSION != 0 && self.compression_type != 0 {
            return Err(Qcow2Error::Unsupported(format!(
                "compression type {} (only zlib)",
                self.compression_type
            )));
        }
        Ok(())
    }

    /// The L1 and refcount tables must lie inside the file, aligned, within QEMU's limits, and
    /// the L1 table must cover the virtual size.
    fn check_tables(&self, file_len: u64) -> Result<(), Qcow2Error> {
        let cluster_size = self.cluster_size();
        // QEMU's limit on the virtual size, and one that keeps every byte offset in an i64.
        let max_size = (MAX_L1_BYTES / 8) * (cluster_size / 8) * cluster_size;
        let max_size = max_size.min(i64::MAX as u64 / 2);
        if self.size > max_size {
            return Err(Qcow2Error::TooLarge { what: "virtual size", value: self.size, limit: max_size });
        }
        let l1_bytes = u64::from(self.l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(Qcow2Error::TooLarge { what: "L1 table", value: l1_bytes, limit: MAX_L1_BYTES });
        }
        if u64::from(self.l1_size) < self.l1_entries_needed() {
            return Err(Qcow2Error::Invalid(format!(
                "the L1 table ({} entries) is too small for the virtual size {} ({} entries needed)",
                self.l1_size,
                self.size,
                self.l1_entries_needed()
            )));
        }
        if self.l1_size > 0 {
            check_region("L1 table", self.l1_table_offset, l1_bytes, cluster_size, file_len)?;
        }
        let reftable_bytes = u64::from(self.refcount_table_clusters) * cluster_size;
        if reftable_bytes > MAX_REFTABLE_BYTES.max(cluster_size) {
            return Err(Qcow2Error::TooLarge {
                what: "refcount table",
                value: reftable_bytes,
                limit: MAX_REFTABLE_BYTES.max(cluster_size),
            });
        }
        if reftable_bytes == 0 {
            return Err(Qcow2Error::Invalid("the refcount table is empty".into()));
        }
        check_region("refcount table", self.refcount_table_offset, reftable_bytes, cluster_size, file_len)?;
        if self.nb_snapshots > 0 {
            // 65536 is QEMU's limit; each snapshot entry is at least 40 bytes.
            if self.nb_snapshots > 65536 {
                return Err(Qcow2Error::TooLarge {
                    what: "snapshot count",
                    value: u64::from(self.nb_snapshots),
                    limit: 65536,
                });
            }
            check_region(
                "snapshot table",
                self.snapshots_offset,
                u64::from(self.nb_snapshots) * 40,
                cluster_size,
                file_len,
            )?;
        }
        Ok(())
    }

    fn parse_backing_name(&mut self, bytes: &[u8], file_len: u64) -> Result<(), Qcow2Error> {
        let offset = be64(bytes, 8);
        let len = u64::from(be32(bytes, 16));
        if offset == 0 {
            return Ok(());
        }
        if len > 1023 {
            return Err(Qcow2Error::Invalid(format!(
                "the backing file name is {len} bytes long (at most 1023)"
            )));
        }
        let end = offset.checked_add(len).filter(|end| *end <= self.cluster_size()).ok_or_else(|| {
            Qcow2Error::Invalid("the backing file name lies beyond the first cluster".into())
        })?;
        if end > bytes.len() as u64 {
            return Err(Qcow2Error::Truncated { what: "backing file name", needed: end, len: file_len });
        }
        let name = std::str::from_utf8(&bytes[offset as usize..end as usize])
            .map_err(|_| Qcow2Error::Invalid("the backing file name is not UTF-8".into()))?;
        if name.is_empty() {
            return Ok(());
        }
        if name.contains('\0') {
            return Err(Qcow2Error::Invalid("the backing file name contains a NUL byte".into()));
        }
        self.backing_file = Some(name.to_owned());
        Ok(())
    }

    /// Walks the header extensions (v3: right after the header, up to the end of the first
    /// cluster). Each step advances at least 8 bytes, so the walk is bounded by the cluster size.
    fn parse_extensions(&mut self, bytes: &[u8], file_len: u64) -> Result<(), Qcow2Error> {
        // As QEMU: the extensions end at the end marker, the backing file name or the end of
        // the first cluster, whichever comes first (old v2 images have no end marker).
        let cluster_size = self.cluster_size();
        let mut offset = u64::from(self.header_length);
        let backing_offset = be64(bytes, 8);
        let end_offset = if backing_offset != 0 && backing_offset >= offset {
            backing_offset.min(cluster_size)
        } else {
            cluster_size
        };
        let truncated = |needed| Qcow2Error::Truncated { what: "header extensions", needed, len: file_len };
        while offset < end_offset {
            if offset + 8 > end_offset {
                return Err(Qcow2Error::Invalid("a header extension runs past the first cluster".into()));
            }
            if offset + 8 > bytes.len() as u64 {
                return Err(truncated(offset + 8));
            }
            let kind = be32(bytes, offset as usize);
            let len = u64::from(be32(bytes, offset as usize + 4));
            offset += 8;
            if kind == EXT_END {
                return Ok(());
            }
            let end = offset + len;
            if end > end_offset {
                return Err(Qcow2Error::Invalid("a header extension runs past the first cluster".into()));
            }
            if end > bytes.len() as u64 {
                return Err(truncated(end));
            }
            let data = &bytes[offset as usize..end as usize];
            match kind {
                EXT_BACKING_FORMAT => {
                    let format = std::str::from_utf8(data)
                        .map_err(|_| Qcow2Error::Invalid("the backing format is not UTF-8".into()))?
                        .trim_end_matches('\0');
                    self.backing_format = Some(format.to_owned());
                }
                EXT_DATA_FILE => return Err(Qcow2Error::Unsupported("external data files".into())),
                _ => self.other_extensions.push((kind, data.to_vec())),
            }
            offset = end.next_multiple_of(8);
        }
        Ok(())
    }
}

/// `what` at `offset..offset + len` must be cluster-aligned and inside the file.
fn check_region(
    what: &'static str,
    offset: u64,
    len: u64,
    cluster_size: u64,
    file_len: u64,
) -> Result<(), Qcow2Error> {
    if offset == 0 {
        return Err(Qcow2Error::Invalid(format!("its {what} is at offset 0, over the header")));
    }
    if !offset.is_multiple_of(cluster_size) {
        return Err(Qcow2Error::Unaligned { what, offset });
    }
    match offset.checked_add(len) {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(Qcow2Error::PastEnd { what, offset, len, file_len }),
    }
}

/// A big-endian u32 at `at` (the caller checked the bounds).
pub fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// A big-endian u64 at `at` (the caller checked the bounds).
pub fn be64(bytes: &[u8], at: usize) -> u64 {
    (u64::from(be32(bytes, at)) << 32) | u64::from(be32(bytes, at + 4))
}

/// Reads the first cluster (at most 2 MiB, or the whole file when shorter) of `file` and parses
/// the header in it. The reads use 4 KiB-aligned buffers and offsets, so an O_DIRECT file works.
pub fn read(file: &std::fs::File) -> Result<Header, Qcow2Error> {
    let file_len =
        super::metaio::file_len(file).map_err(|e| Qcow2Error::io("reading the image's size", e))?;
    let mut first = AlignedBuf::new(ALIGN);
    let got = read_up_to(file, first.as_mut_slice(), 0)?;
    // The cluster size decides how much more to read: the header, extensions and backing name
    // all live in the first cluster.
    let cluster_bits = if got >= V2_HEADER_LEN { be32(first.as_mut_slice(), 20) } else { MIN_CLUSTER_BITS };
    let cluster_bits = cluster_bits.clamp(MIN_CLUSTER_BITS, MAX_CLUSTER_BITS);
    let want = (1u64 << cluster_bits).min(file_len) as usize;
    let mut bytes = AlignedBuf::new(want.max(ALIGN));
    let got = read_up_to(file, bytes.as_mut_slice(), 0)?;
    Header::parse(&bytes.as_mut_slice()[..got], file_len)
}

/// Whether `file` starts with the qcow2 magic and a version imago knows (the probe of a backing
/// file without a named format; the top image's format is never probed).
pub fn has_magic(file: &std::fs::File) -> std::io::Result<bool> {
    let mut first = AlignedBuf::new(ALIGN);
    let got = read_up_to(file, first.as_mut_slice(), 0).map_err(|e| match e {
        Qcow2Error::Io { source, .. } => source,
        other => std::io::Error::other(other.to_string()),
    })?;
    let bytes = first.as_mut_slice();
    Ok(got >= 8 && be32(bytes, 0) == MAGIC && matches!(be32(bytes, 4), 2 | 3))
}

fn read_up_to(file: &std::fs::File, buffer: &mut [u8], offset: u64) -> Result<usize, Qcow2Error> {
    super::metaio::read_up_to(file, buffer, offset).map_err(|e| Qcow2Error::io("reading the qcow2 header", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A valid v3 header for a 1 MiB disk with 64 KiB clusters in a 5-cluster file.
    fn valid() -> Vec<u8> {
        let mut h = vec![0u8; 65536];
        h[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[24..32].copy_from_slice(&(1u64 << 20).to_be_bytes());
        h[36..40].copy_from_slice(&1u32.to_be_bytes());
        h[40..48].copy_from_slice(&(3u64 << 16).to_be_bytes());
        h[48..56].copy_from_slice(&(1u64 << 16).to_be_bytes());
        h[56..60].copy_from_slice(&1u32.to_be_bytes());
        h[96..100].copy_from_slice(&4u32.to_be_bytes());
        h[100..104].copy_from_slice(&104u32.to_be_bytes());
        h
    }

    #[test]
    fn a_valid_header_parses() {
        let header = Header::parse(&valid(), 5 << 16).unwrap();
        assert_eq!((header.version, header.cluster_size(), header.size), (3, 65536, 1 << 20));
        assert_eq!(header.backing_file, None);
        assert!(!header.dirty());
    }

    #[test]
    fn backing_name_and_format_are_read() {
        let mut h = valid();
        // Backing format extension, end marker, then the name.
        h[104..108].copy_from_slice(&0xe279_2acau32.to_be_bytes());
        h[108..112].copy_from_slice(&3u32.to_be_bytes());
        h[112..115].copy_from_slice(b"raw");
        h[128..133].copy_from_slice(b"b.img");
        h[8..16].copy_from_slice(&128u64.to_be_bytes());
        h[16..20].copy_from_slice(&5u32.to_be_bytes());
        let header = Header::parse(&h, 5 << 16).unwrap();
        assert_eq!(header.backing_file.as_deref(), Some("b.img"));
        assert_eq!(header.backing_format.as_deref(), Some("raw"));
        let rewritten = header.with_backing(&h, Some("other.qcow2"), Some("qcow2")).unwrap();
        let mut again = rewritten.clone();
        again.resize(65536, 0);
        let header = Header::parse(&again, 5 << 16).unwrap();
        assert_eq!(header.backing_file.as_deref(), Some("other.qcow2"));
        assert_eq!(header.backing_format.as_deref(), Some("qcow2"));
    }

    #[test]
    fn an_old_v2_header_with_the_backing_name_right_after_it_parses() {
        let mut h = valid();
        h[4..8].copy_from_slice(&2u32.to_be_bytes());
        h[72..112].fill(0);
        h[72..80].copy_from_slice(b"base.img");
        h[8..16].copy_from_slice(&72u64.to_be_bytes());
        h[16..20].copy_from_slice(&8u32.to_be_bytes());
        let header = Header::parse(&h, 5 << 16).unwrap();
        assert_eq!((header.version, header.backing_file.as_deref()), (2, Some("base.img")));
        assert_eq!(header.backing_format, None);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any bytes over a valid header, any file length: a result, never a panic.
        #[test]
        fn parse_never_panics(
            changes in prop::collection::vec((0usize..200, any::<u8>()), 0..12),
            truncate in prop::option::of(0usize..65536),
            file_len in any::<u64>(),
        ) {
            let mut h = valid();
            for (at, value) in changes {
                h[at] = value;
            }
            if let Some(len) = truncate {
                h.truncate(len);
            }
            let _ = Header::parse(&h, file_len);
        }
    }
}
