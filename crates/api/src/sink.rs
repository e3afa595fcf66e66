//! Where the VMM writes its logs and metrics: a regular file or a named pipe, as Firecracker's
//! `log_path` and `metrics_path` allow.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Opens `path` for appending, creating a missing regular file readable and writable by its
/// owner only (0600, whatever the umask: logs and metrics say what the VM does); an existing
/// file is never truncated, nor its mode changed. Writes never block: a named pipe whose reader falls behind makes a write fail with
/// `WouldBlock` rather than stall the VMM (the line is lost and counted). The pipe is opened
/// read-write, as Firecracker does, so that opening it neither waits for nor needs a reader.
pub fn open_for_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

/// Helpers the crate's tests share.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;

    /// Makes a named pipe at `path`.
    pub(crate) fn make_fifo(path: &Path) {
        let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates the file.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::testing::make_fifo;
    use super::*;

    #[test]
    fn a_file_is_appended_to_and_created_if_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        std::fs::write(&path, b"kept\n").unwrap();
        open_for_append(&path).unwrap().write_all(b"more\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "kept\nmore\n");
        let new = dir.path().join("new");
        open_for_append(&new).unwrap().write_all(b"x").unwrap();
        assert_eq!(std::fs::read(&new).unwrap(), b"x");
    }

    #[test]
    fn a_created_file_is_the_owners_alone_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics");
        // SAFETY: umask only swaps the process's file mode mask; restored below. Under 022, the
        // usual default, a file created 0666 would be 0644: readable by everyone.
        let old = unsafe { libc::umask(0o022) };
        let file = open_for_append(&path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        file.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_named_pipe_opens_without_a_reader_and_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fifo");
        make_fifo(&path);
        let mut pipe = open_for_append(&path).unwrap();
        pipe.write_all(b"line\n").unwrap();
        let mut reader = File::open(&path).unwrap();
        let mut line = [0u8; 5];
        reader.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"line\n");
        // Fill the pipe: the write that does not fit fails at once.
        let chunk = [0u8; 4096];
        let full = (0..1024).map(|_| pipe.write(&chunk)).find_map(Result::err);
        assert_eq!(full.map(|e| e.kind()), Some(io::ErrorKind::WouldBlock));
    }

    #[test]
    fn directories_and_missing_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(open_for_append(dir.path()).is_err());
        assert!(open_for_append(&dir.path().join("no/such/file")).is_err());
    }
}
