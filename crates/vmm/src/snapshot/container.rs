//! The state container: a fixed header (magic, container version, payload length, CRC-32 of the
//! payload) and a payload of sections, each `(name, version, length, bytes)`. The container knows
//! nothing of what the sections hold ([`super::components`] does); it only frames them, so a
//! component can change its encoding (and version) without touching the others.
//!
//! Everything read is bounded before it is allocated: the payload length against
//! [`MAX_PAYLOAD_LEN`], each section's length against what is left of the payload.

use std::io::{Read, Write};

use super::SnapshotError;

/// The first bytes of every Kestrel snapshot state file.
const MAGIC: [u8; 8] = *b"KSTLSNAP";
/// The container's own version: bumped only if the header or the section framing changes.
/// Version 1 was a single postcard blob without sections; it is refused with a message naming
/// both versions, never misread.
pub const FORMAT_VERSION: u32 = 2;
/// Magic, version (u32), payload length (u64), CRC-32 (u32), all little-endian.
pub(crate) const HEADER_LEN: usize = 8 + 4 + 8 + 4;
/// No real state comes near this (it is dominated by 4 KiB of XSAVE area per vCPU); a length
/// field above it is corruption, and refusing it keeps a damaged file from causing a huge read.
const MAX_PAYLOAD_LEN: u64 = 256 << 20;
/// Section names are short identifiers such as `vcpu` or `virtio`.
const MAX_NAME_LEN: usize = 32;

/// One section as read: which component, in which version, and its encoded bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Section<'a> {
    pub name: &'a str,
    pub version: u32,
    pub payload: &'a [u8],
}

/// Collects sections into a payload, then writes it with its header.
#[derive(Default)]
pub struct SectionWriter {
    payload: Vec<u8>,
}

impl SectionWriter {
    /// Appends one section.
    pub fn section(&mut self, name: &str, version: u32, payload: &[u8]) -> Result<(), SnapshotError> {
        let name_len = u8::try_from(name.len())
            .ok()
            .filter(|&len| usize::from(len) <= MAX_NAME_LEN)
            .ok_or_else(|| SnapshotError::Encode(format!("section name {name:?} is too long")))?;
        let length = u32::try_from(payload.len())
            .map_err(|_| SnapshotError::Encode(format!("section {name} is larger than 4 GiB")))?;
        self.payload.push(name_len);
        self.payload.extend_from_slice(name.as_bytes());
        self.payload.extend_from_slice(&version.to_le_bytes());
        self.payload.extend_from_slice(&length.to_le_bytes());
        self.payload.extend_from_slice(payload);
        Ok(())
    }

    /// Writes the header and the sections to `output`; returns the number of bytes written.
    pub fn finish(self, output: &mut (impl Write + ?Sized)) -> Result<u64, SnapshotError> {
        let payload = self.payload;
        if payload.len() as u64 > MAX_PAYLOAD_LEN {
            return Err(SnapshotError::Encode(format!(
                "the state is {} bytes, over the limit",
                payload.len()
            )));
        }
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(&MAGIC);
        header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        header[12..20].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        header[20..24].copy_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        output.write_all(&header).map_err(SnapshotError::Stream)?;
        output.write_all(&payload).map_err(SnapshotError::Stream)?;
        output.flush().map_err(SnapshotError::Stream)?;
        Ok((HEADER_LEN + payload.len()) as u64)
    }
}

/// Reads one container from `input`: checks the header, reads exactly the payload it announces
/// (growing the buffer as bytes arrive, never by the announced length up front) and checks its
/// CRC. Nothing after the payload is read: on a stream, whatever follows is the caller's.
pub fn read_payload(input: &mut (impl Read + ?Sized)) -> Result<Vec<u8>, SnapshotError> {
    let mut header = Vec::with_capacity(HEADER_LEN);
    input.take(HEADER_LEN as u64).read_to_end(&mut header).map_err(SnapshotError::Stream)?;
    if header.len() < MAGIC.len() || header[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::NotASnapshot);
    }
    if header.len() < HEADER_LEN {
        return Err(SnapshotError::Truncated { expected: HEADER_LEN as u64, found: header.len() as u64 });
    }
    let word = |range: std::ops::Range<usize>| -> u64 {
        header[range].iter().rev().fold(0, |value, &byte| value << 8 | u64::from(byte))
    };
    let version = word(8..12) as u32;
    if version != FORMAT_VERSION {
        return Err(SnapshotError::Version { found: version, supported: FORMAT_VERSION });
    }
    let length = word(12..20);
    let checksum = word(20..24) as u32;
    if length > MAX_PAYLOAD_LEN {
        return Err(SnapshotError::Corrupt(format!("its header claims a {length}-byte state")));
    }
    let mut payload = Vec::new();
    input.take(length).read_to_end(&mut payload).map_err(SnapshotError::Stream)?;
    if (payload.len() as u64) < length {
        return Err(SnapshotError::Truncated {
            expected: HEADER_LEN as u64 + length,
            found: (HEADER_LEN + payload.len()) as u64,
        });
    }
    if crc32fast::hash(&payload) != checksum {
        return Err(SnapshotError::Corrupt("its checksum does not match its contents".into()));
    }
    Ok(payload)
}

/// Splits a checked payload into its sections, each bounded by what is left.
pub fn sections(mut payload: &[u8]) -> Result<Vec<Section<'_>>, SnapshotError> {
    let mut found = Vec::new();
    while !payload.is_empty() {
        let (name, rest) = take(payload, 1).and_then(|(len, rest)| take(rest, usize::from(len[0])))?;
        let name = std::str::from_utf8(name)
            .ok()
            .filter(|name| !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| SnapshotError::Corrupt("a section has no valid name".into()))?;
        let (version, rest) = take(rest, 4)?;
        let (length, rest) = take(rest, 4)?;
        let length = u32::from_le_bytes(length.try_into().unwrap_or_default());
        let (section, rest) = take(rest, length as usize)
            .map_err(|_| SnapshotError::Corrupt(format!("section {name} runs past the end of the state")))?;
        found.push(Section {
            name,
            version: u32::from_le_bytes(version.try_into().unwrap_or_default()),
            payload: section,
        });
        payload = rest;
    }
    Ok(found)
}

fn take(bytes: &[u8], count: usize) -> Result<(&[u8], &[u8]), SnapshotError> {
    if bytes.len() < count {
        return Err(SnapshotError::Corrupt("a section header runs past the end of the state".into()));
    }
    Ok(bytes.split_at(count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded() -> Vec<u8> {
        let mut writer = SectionWriter::default();
        writer.section("config", 1, b"hello").unwrap();
        writer.section("vcpu", 3, &[]).unwrap();
        let mut bytes = Vec::new();
        let written = writer.finish(&mut bytes).unwrap();
        assert_eq!(written, bytes.len() as u64);
        bytes
    }

    #[test]
    fn sections_round_trip_through_a_stream() {
        let bytes = encoded();
        assert_eq!(&bytes[..8], b"KSTLSNAP");
        let mut stream = bytes.as_slice();
        let payload = read_payload(&mut stream).unwrap();
        assert!(stream.is_empty(), "exactly the container is read");
        assert_eq!(
            sections(&payload).unwrap(),
            [
                Section { name: "config", version: 1, payload: b"hello" },
                Section { name: "vcpu", version: 3, payload: b"" }
            ]
        );
    }

    #[test]
    fn every_kind_of_damage_is_refused_with_its_own_error() {
        let bytes = encoded();
        let read = |bytes: &[u8]| read_payload(&mut &bytes[..]);
        assert!(matches!(read(b"ELF\x7f...."), Err(SnapshotError::NotASnapshot)));
        assert!(matches!(read(b""), Err(SnapshotError::NotASnapshot)));
        assert!(matches!(read(&bytes[..10]), Err(SnapshotError::Truncated { .. })));
        assert!(matches!(read(&bytes[..bytes.len() - 1]), Err(SnapshotError::Truncated { .. })));

        let mut newer = bytes.clone();
        newer[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        let error = read(&newer).err().unwrap();
        assert!(
            matches!(error, SnapshotError::Version { found, supported: FORMAT_VERSION } if found == FORMAT_VERSION + 1)
        );
        // Any flipped byte in the payload is caught by the checksum.
        for index in HEADER_LEN..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[index] ^= 0x40;
            assert!(matches!(read(&flipped), Err(SnapshotError::Corrupt(_))), "byte {index}");
        }
        let mut huge = bytes;
        huge[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(read(&huge), Err(SnapshotError::Corrupt(_))));
    }

    #[test]
    fn a_section_longer_than_the_payload_is_refused() {
        let mut payload = Vec::new();
        payload.push(4);
        payload.extend_from_slice(b"vcpu");
        payload.extend_from_slice(&1u32.to_le_bytes());
        payload.extend_from_slice(&u32::MAX.to_le_bytes());
        payload.extend_from_slice(b"short");
        assert!(matches!(sections(&payload), Err(SnapshotError::Corrupt(_))));
        assert!(matches!(sections(&[3, b'a']), Err(SnapshotError::Corrupt(_))));
        assert!(matches!(sections(&[0, 1, 0, 0, 0, 0, 0, 0, 0]), Err(SnapshotError::Corrupt(_))));
    }
}
