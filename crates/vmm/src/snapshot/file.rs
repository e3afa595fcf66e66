//! The state file: the state stream ([`super::components`]) in a regular file. Written atomically
//! and 0600; read with the same checks as any stream, plus: only a regular file, and nothing may
//! follow the state.

use std::io::{BufReader, Read, Write};
use std::path::Path;

use super::components::{read_state, write_state};
use super::{open_regular, write_atomically, SnapshotError, VmState};

/// Encodes `state` into `path` (created or replaced atomically, mode 0600), synced to disk.
pub fn write(path: &Path, state: &VmState) -> Result<u64, SnapshotError> {
    // The state is small (about 10 KiB a vCPU): encoded first, so an encoding error never
    // leaves a half-written temporary file behind.
    let mut bytes = Vec::new();
    write_state(state, &mut bytes)?;
    write_atomically(path, |mut file| {
        file.write_all(&bytes)?;
        Ok(bytes.len() as u64)
    })
}

/// Reads and checks `path`, then decodes the state in it.
pub fn read(path: &Path) -> Result<VmState, SnapshotError> {
    let io_error = |source| SnapshotError::Io { path: path.to_owned(), source };
    let mut input = BufReader::new(open_regular(path, std::fs::OpenOptions::new().read(true))?);
    let state = read_state(&mut input).map_err(|error| match error {
        SnapshotError::Stream(source) => io_error(source),
        other => other,
    })?;
    let mut rest = Vec::new();
    input.take(1 << 20).read_to_end(&mut rest).map_err(io_error)?;
    if !rest.is_empty() {
        return Err(SnapshotError::Corrupt(format!("{} bytes or more follow the state", rest.len())));
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::snapshot::testing::sample_state;

    #[test]
    fn a_written_state_file_reads_back_and_trailing_bytes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let written = write(&path, &sample_state()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(written, bytes.len() as u64);
        assert_eq!(read(&path).unwrap().vcpus.len(), 2);
        let mut longer = bytes;
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        assert!(matches!(read(&path), Err(SnapshotError::Corrupt(_))));
        // A device that never ends is refused before it is read.
        assert!(matches!(read(Path::new("/dev/zero")), Err(SnapshotError::NotARegularFile(_))));
        let missing = read(&dir.path().join("none"));
        assert!(matches!(missing, Err(SnapshotError::Io { .. })), "{:?}", missing.err());
    }

    /// Whatever the umask, a state file is the user's alone: it holds the guest's registers and
    /// configuration.
    #[test]
    fn a_state_file_is_0600_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let _umask = crate::snapshot::testing::Umask::set(0o022);
        write(&path, &sample_state()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
    }
}
