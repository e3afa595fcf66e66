//! Files written into the jail by root before pivot_root. The jail root may belong to the jailed
//! uid, so a previous run's (compromised) VMM may have left anything in it, symlinks included.
//! Every step here is relative to a directory descriptor and refuses to follow a symlink:
//! mkdirat + openat(O_DIRECTORY | O_NOFOLLOW) for each directory, and a file is created with
//! O_CREAT | O_EXCL | O_NOFOLLOW after unlinking whatever had its name.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use super::JailerError;

/// Copy buffer size (the files are a VMM and its libraries).
const BUFFER: usize = 1 << 20;

/// An open directory of the jail, named `path` in messages.
pub(super) struct JailDir {
    fd: OwnedFd,
    path: PathBuf,
}

fn c_name(name: &OsStr, path: &Path) -> Result<CString, JailerError> {
    CString::new(name.as_bytes())
        .map_err(|_| JailerError::path("use", path, std::io::ErrorKind::InvalidInput.into()))
}

impl JailDir {
    /// Opens the jail root itself, refusing a symlink in its place.
    pub(super) fn open(path: &Path) -> Result<JailDir, JailerError> {
        let c = c_name(path.as_os_str(), path)?;
        // SAFETY: c is a NUL-terminated path living across the call; the result is checked.
        let fd = unsafe {
            libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        };
        if fd < 0 {
            return Err(open_error(path));
        }
        // SAFETY: fd was just opened and is owned by nothing else.
        Ok(JailDir { fd: unsafe { OwnedFd::from_raw_fd(fd) }, path: path.to_owned() })
    }

    /// The subdirectory `name`, created (0755) if missing; a symlink or other non-directory in
    /// its place is refused.
    fn child_dir(&self, name: &OsStr) -> Result<JailDir, JailerError> {
        let path = self.path.join(name);
        let c = c_name(name, &path)?;
        // SAFETY: a valid directory fd and a NUL-terminated name; mkdirat never follows a
        // symlink in the last component (it fails with EEXIST instead).
        if unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), 0o755) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(JailerError::path("create", path, error));
            }
        }
        // SAFETY: as above; O_NOFOLLOW makes a symlink fail with ELOOP, O_DIRECTORY anything
        // else that is not a directory with ENOTDIR.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(open_error(&path));
        }
        // SAFETY: fd was just opened and is owned by nothing else.
        Ok(JailDir { fd: unsafe { OwnedFd::from_raw_fd(fd) }, path })
    }

    /// Creates the file at `relative` (normal components only) below this directory, making the
    /// directories on the way, and fills it with at most `len` bytes of `source`, mode 0755
    /// (executable by the jailed uid, writable by root only). Whatever had the file's name is
    /// removed first (never followed); a directory there is an error.
    pub(super) fn install(&self, relative: &Path, source: &File, len: u64) -> Result<(), JailerError> {
        let whole = self.path.join(relative);
        let mut names = Vec::new();
        for component in relative.components() {
            match component {
                Component::Normal(name) => names.push(name),
                _ => {
                    return Err(JailerError::path("create", &whole, std::io::ErrorKind::InvalidInput.into()))
                }
            }
        }
        let Some((file_name, dirs)) = names.split_last() else {
            return Err(JailerError::path("create", &whole, std::io::ErrorKind::InvalidInput.into()));
        };
        let mut parent = None;
        for dir in dirs {
            let next = parent.as_ref().unwrap_or(self).child_dir(dir)?;
            parent = Some(next);
        }
        parent.as_ref().unwrap_or(self).create_file(file_name, source, len)
    }

    fn create_file(&self, name: &OsStr, source: &File, len: u64) -> Result<(), JailerError> {
        let path = self.path.join(name);
        let c = c_name(name, &path)?;
        // SAFETY: a valid directory fd and a NUL-terminated name; unlinkat removes a symlink
        // itself, not its target, and fails on a directory (flags 0).
        if unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::NotFound {
                return Err(JailerError::path("replace", path, error));
            }
        }
        // SAFETY: as above; O_EXCL | O_NOFOLLOW fail on anything placed there since the unlink.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o755 as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(JailerError::path("create", path, std::io::Error::last_os_error()));
        }
        // SAFETY: fd was just opened and is owned by nothing else.
        let mut target = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut reader = source.take(len);
        let mut buffer = vec![0u8; BUFFER.min(usize::try_from(len).unwrap_or(BUFFER)).max(1)];
        loop {
            let n = reader.read(&mut buffer).map_err(|e| JailerError::path("read into", &path, e))?;
            if n == 0 {
                break;
            }
            target.write_all(&buffer[..n]).map_err(|e| JailerError::path("write", &path, e))?;
        }
        // The umask may have narrowed the mode.
        target
            .set_permissions(std::fs::Permissions::from_mode(0o755))
            .map_err(|e| JailerError::path("chmod", &path, e))
    }
}

fn open_error(path: &Path) -> JailerError {
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => JailerError::NotADirectory(path.to_owned()),
        _ => JailerError::path("open", path, error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(bytes: &[u8]) -> (File, u64) {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        std::io::Seek::rewind(&mut file).unwrap();
        (file, bytes.len() as u64)
    }

    #[test]
    fn a_planted_directory_symlink_is_refused_and_nothing_is_written_outside() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("root"), tmp.path().join("outside"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("lib64")).unwrap();
        // Mid-path too: lib/x86_64-linux-gnu -> outside.
        std::fs::create_dir(root.join("lib")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("lib/x86_64-linux-gnu")).unwrap();
        let jail = JailDir::open(&root).unwrap();
        let (file, len) = source(b"loader");
        for relative in ["lib64/ld-linux-x86-64.so.2", "lib/x86_64-linux-gnu/libc.so.6"] {
            let error = jail.install(Path::new(relative), &file, len).unwrap_err();
            assert!(matches!(error, JailerError::NotADirectory(_)), "{error}");
            assert!(error.to_string().contains("symlink"), "{error}");
        }
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn a_planted_file_or_file_symlink_is_replaced_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("lib64")).unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"host file").unwrap();
        std::os::unix::fs::symlink(&victim, root.join("lib64/ld.so")).unwrap();
        std::fs::write(root.join("lib64/libc.so"), b"the previous tenant's libc").unwrap();
        let jail = JailDir::open(&root).unwrap();
        let (file, len) = source(b"real");
        jail.install(Path::new("lib64/ld.so"), &file, len).unwrap();
        let (file, len) = source(b"real libc");
        jail.install(Path::new("lib64/libc.so"), &file, len).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"host file");
        let installed = root.join("lib64/ld.so");
        assert!(installed.symlink_metadata().unwrap().file_type().is_file());
        assert_eq!(std::fs::read(&installed).unwrap(), b"real");
        assert_eq!(std::fs::read(root.join("lib64/libc.so")).unwrap(), b"real libc");
        assert_eq!(installed.metadata().unwrap().permissions().mode() & 0o7777, 0o755);
    }

    #[test]
    fn the_copy_stops_at_the_checked_length() {
        let tmp = tempfile::tempdir().unwrap();
        let jail = JailDir::open(tmp.path()).unwrap();
        let zero = File::open("/dev/zero").unwrap();
        jail.install(Path::new("lib/x"), &zero, 3).unwrap();
        assert_eq!(std::fs::read(tmp.path().join("lib/x")).unwrap(), [0, 0, 0]);
    }

    #[test]
    fn a_symlinked_jail_root_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", tmp.path().join("root")).unwrap();
        assert!(matches!(JailDir::open(&tmp.path().join("root")), Err(JailerError::NotADirectory(_))));
    }
}
