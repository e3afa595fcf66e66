//! The snapshot state file: a fixed header (magic, format version, payload length, CRC-32 of the
//! payload) and the state itself, encoded with postcard. A file that is not one, comes from
//! another format version, is cut short or has any byte changed is refused before anything is
//! decoded from it.

use std::io::{Read, Write};
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{open_regular, write_atomically, SnapshotError};

/// The first bytes of every Kestrel snapshot state file.
const MAGIC: [u8; 8] = *b"KSTLSNAP";
/// Bumped whenever the encoded state changes shape: an older or newer file is refused with a
/// message naming both versions, never misread.
pub const FORMAT_VERSION: u32 = 1;
/// Magic, version (u32), payload length (u64), CRC-32 (u32), all little-endian.
const HEADER_LEN: usize = 8 + 4 + 8 + 4;
/// No real state comes near this (it is dominated by 4 KiB of XSAVE area per vCPU); a length
/// field above it is corruption, and refusing it keeps a damaged file from causing a huge read.
const MAX_PAYLOAD_LEN: u64 = 256 << 20;

/// Encodes `state` into `path` (created or replaced atomically), synced to disk.
pub fn write<T: Serialize>(path: &Path, state: &T) -> Result<u64, SnapshotError> {
    let payload = postcard::to_allocvec(state).map_err(|e| SnapshotError::Encode(e.to_string()))?;
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    write_atomically(path, |mut file| {
        file.write_all(&bytes)?;
        Ok(bytes.len() as u64)
    })
}

/// Reads and checks `path`, then decodes the state in it.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<T, SnapshotError> {
    let io_error = |source| SnapshotError::Io { path: path.to_owned(), source };
    let mut bytes = Vec::new();
    // At most one byte more than the largest valid file: enough to tell it is too long.
    let limit = HEADER_LEN as u64 + MAX_PAYLOAD_LEN + 1;
    open_regular(path, std::fs::OpenOptions::new().read(true))?
        .take(limit)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    decode(&bytes)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, SnapshotError> {
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::NotASnapshot);
    }
    let Some(header) = bytes.get(..HEADER_LEN) else {
        return Err(SnapshotError::Truncated { expected: HEADER_LEN as u64, found: bytes.len() as u64 });
    };
    let field = |range: std::ops::Range<usize>| &header[range];
    let version = u32::from_le_bytes(field(8..12).try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(SnapshotError::Version { found: version, supported: FORMAT_VERSION });
    }
    let length = u64::from_le_bytes(field(12..20).try_into().expect("8 bytes"));
    let checksum = u32::from_le_bytes(field(20..24).try_into().expect("4 bytes"));
    if length > MAX_PAYLOAD_LEN {
        return Err(SnapshotError::Corrupt(format!("its header claims a {length}-byte state")));
    }
    let payload = &bytes[HEADER_LEN..];
    let expected = HEADER_LEN as u64 + length;
    if (payload.len() as u64) < length {
        return Err(SnapshotError::Truncated { expected, found: bytes.len() as u64 });
    }
    if payload.len() as u64 > length {
        return Err(SnapshotError::Corrupt(format!(
            "{} bytes follow the {length}-byte state",
            payload.len() as u64 - length
        )));
    }
    if crc32fast::hash(payload) != checksum {
        return Err(SnapshotError::Corrupt("its checksum does not match its contents".into()));
    }
    postcard::from_bytes(payload).map_err(|e| SnapshotError::Corrupt(format!("cannot decode the state: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        name: String,
        values: Vec<u64>,
    }

    fn encoded(test: &str) -> Vec<u8> {
        let dir = std::env::temp_dir().join(format!("kestrel-snapfile-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state");
        let sample = Sample { name: "vm".into(), values: vec![1, u64::MAX, 3] };
        write(&path, &sample).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(read::<Sample>(&path).unwrap(), sample, "round trip");
        std::fs::remove_dir_all(&dir).unwrap();
        bytes
    }

    #[test]
    fn a_written_state_reads_back() {
        let bytes = encoded("round-trip");
        assert_eq!(&bytes[..8], b"KSTLSNAP");
        assert!(decode::<Sample>(&bytes).is_ok());
    }

    #[test]
    fn every_kind_of_damage_is_refused_with_its_own_error() {
        let bytes = encoded("damage");
        assert!(matches!(decode::<Sample>(b"ELF\x7f...."), Err(SnapshotError::NotASnapshot)));
        assert!(matches!(decode::<Sample>(&bytes[..10]), Err(SnapshotError::Truncated { .. })));
        assert!(matches!(decode::<Sample>(&bytes[..bytes.len() - 1]), Err(SnapshotError::Truncated { .. })));

        let mut newer = bytes.clone();
        newer[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        let error = decode::<Sample>(&newer).err().unwrap();
        assert!(
            matches!(error, SnapshotError::Version { found, supported: FORMAT_VERSION } if found == FORMAT_VERSION + 1)
        );

        // Any flipped byte in the state is caught by the checksum.
        for index in HEADER_LEN..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[index] ^= 0x40;
            assert!(matches!(decode::<Sample>(&flipped), Err(SnapshotError::Corrupt(_))), "byte {index}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode::<Sample>(&longer), Err(SnapshotError::Corrupt(_))));
        let mut huge = bytes;
        huge[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(decode::<Sample>(&huge), Err(SnapshotError::Corrupt(_))));
        // A device that never ends is refused before it is read.
        let endless = read::<Sample>(Path::new("/dev/zero"));
        assert!(matches!(endless, Err(SnapshotError::NotARegularFile(_))));
    }
}
