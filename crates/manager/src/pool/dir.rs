//! A pool's directory, reached only through its open descriptor: every file is opened with
//! `openat(…, O_NOFOLLOW)` by a single checked name, so neither `../` nor a symlink planted in the
//! pool can make the daemon (root) open, write or remove a file outside it.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The prefix of the files a volume is written under before it is whole; the leading dot keeps
/// them from ever being volume names (see `check_name`).
pub const TEMP_PREFIX: &str = ".kestrel-tmp-";

/// What a directory entry is, without following it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Symlink,
    Other,
}

/// An open pool directory.
pub struct PoolDir {
    fd: OwnedFd,
}

fn c_name(name: &str) -> io::Result<CString> {
    // Names are checked before they get here; a NUL is refused rather than truncating.
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a file name"))
}

fn refuse_separators(name: &str) -> io::Result<()> {
    // Defence in depth: every caller checked the name already.
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("'{name}' is not a file name")));
    }
    Ok(())
}

impl PoolDir {
    /// Opens the pool's directory, recorded canonical when the pool was defined: its last
    /// component is not followed if it has since become a symlink. The directory must be owned
    /// by root (or this process's user) and writable by no one else (sshd's StrictModes rule):
    /// whoever may write it could swap a checked volume for a symlink to a host disk before
    /// the VMM opens it.
    pub fn open(path: &Path) -> io::Result<PoolDir> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        // Checked on the descriptor, so it is the directory actually opened.
        let meta = file.metadata()?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if meta.uid() != 0 && meta.uid() != euid {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "it is owned by uid {}; a pool's directory must be owned by root (its owner could swap a volume for a host disk)",
                    meta.uid()
                ),
            ));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "its mode {:o} lets group or others write it; a pool's directory must be writable by its owner only (chmod go-w)",
                    meta.mode() & 0o7777
                ),
            ));
        }
        Ok(PoolDir { fd: file.into() })
    }

    /// A path naming `name` in this directory through the descriptor, for the storage functions
    /// that take paths: the directory is the one this descriptor holds, whatever was renamed or
    /// replaced since; only `name` itself is looked up. Use it only where following a symlink
    /// planted as `name` is harmless, or with [`PoolDir::fd_path`].
    pub fn through_fd(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/{name}", self.fd.as_raw_fd()))
    }

    /// A path that reopens exactly the file `file` holds (no lookup by name at all).
    pub fn fd_path(file: &File) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
    }

    /// Opens the regular file `name` (never through a symlink), read-only or read-write.
    pub fn open_file(&self, name: &str, write: bool) -> io::Result<File> {
        refuse_separators(name)?;
        let c = c_name(name)?;
        let access = if write { libc::O_RDWR } else { libc::O_RDONLY };
        let flags = access | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
        // SAFETY: openat with our directory descriptor and a NUL-terminated name; the result is
        // checked and owned below.
        let fd = unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags) };
        if fd < 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::ELOOP) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("'{name}' is a symbolic link, which a pool does not follow"),
                ));
            }
            return Err(error);
        }
        // SAFETY: `fd` is a descriptor openat just returned, owned by nothing else.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        if !file.metadata()?.file_type().is_file() {
            // A FIFO would have blocked without O_NONBLOCK; a device is not a pool's volume.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("'{name}' is not a regular file"),
            ));
        }
        clear_nonblocking(&file)?;
        Ok(file)
    }

    /// Creates a new, empty, private (0600) temporary file in the directory; its name starts
    /// with [`TEMP_PREFIX`] and this process's random instance ID.
    pub fn create_temp(&self) -> io::Result<(String, File)> {
        let name = format!("{TEMP_PREFIX}{}-{}", instance(), uuid::Uuid::new_v4().simple());
        let c = c_name(&name)?;
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: as in `open_file`; the mode is passed as the variadic third argument.
        let fd = unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags, 0o600 as libc::c_uint) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor openat just returned.
        Ok((name, File::from(unsafe { OwnedFd::from_raw_fd(fd) })))
    }

    /// Gives the file `temp` its final name `name`, refusing (`AlreadyExists`) to replace a file
    /// that is there; then makes the rename durable.
    pub fn publish(&self, temp: &str, name: &str) -> io::Result<()> {
        refuse_separators(name)?;
        let (from, to) = (c_name(temp)?, c_name(name)?);
        let dir = self.fd.as_raw_fd();
        // SAFETY: renameat2 on our directory descriptor with NUL-terminated names.
        let renamed =
            unsafe { libc::renameat2(dir, from.as_ptr(), dir, to.as_ptr(), libc::RENAME_NOREPLACE) };
        if renamed != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EINVAL) {
                return Err(error);
            }
            // A filesystem without RENAME_NOREPLACE: a hard link fails the same way when the
            // name is taken.
            // SAFETY: linkat on our directory with NUL-terminated names, no flags.
            if unsafe { libc::linkat(dir, from.as_ptr(), dir, to.as_ptr(), 0) } != 0 {
                return Err(io::Error::last_os_error());
            }
            self.remove(temp)?;
        }
        self.sync()
    }

    /// Removes the directory entry `name` (a symlink is removed, not followed).
    pub fn remove(&self, name: &str) -> io::Result<()> {
        refuse_separators(name)?;
        let c = c_name(name)?;
        // SAFETY: unlinkat on our directory descriptor with a NUL-terminated name.
        if unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether `name` exists (as anything, a dangling symlink included).
    pub fn exists(&self, name: &str) -> io::Result<bool> {
        match self.kind(name) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// What `name` is, without following it.
    pub fn kind(&self, name: &str) -> io::Result<EntryKind> {
        refuse_separators(name)?;
        let c = c_name(name)?;
        // SAFETY: an all-zero `stat` is a valid value to be overwritten.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstatat writes only into `stat`, which lives across the call.
        let result =
            unsafe { libc::fstatat(self.fd.as_raw_fd(), c.as_ptr(), &mut stat, libc::AT_SYMLINK_NOFOLLOW) };
        if result != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(match stat.st_mode & libc::S_IFMT {
            libc::S_IFREG => EntryKind::File,
            libc::S_IFLNK => EntryKind::Symlink,
            _ => EntryKind::Other,
        })
    }

    /// Every entry of the directory but `.` and `..`, with what it is; names that are not UTF-8
    /// come back lossily converted (they are never volume names).
    pub fn entries(&self) -> io::Result<Vec<(String, EntryKind)>> {
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let kind = if kind.is_symlink() {
                EntryKind::Symlink
            } else if kind.is_file() {
                EntryKind::File
            } else {
                EntryKind::Other
            };
            entries.push((entry.file_name().to_string_lossy().into_owned(), kind));
        }
        Ok(entries)
    }

    /// The filesystem's size and the bytes still available, in bytes.
    pub fn space(&self) -> io::Result<(u64, u64)> {
        // SAFETY: an all-zero `statvfs` is a valid value to be overwritten.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: fstatvfs writes only into `stat`.
        if unsafe { libc::fstatvfs(self.fd.as_raw_fd(), &mut stat) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let block = stat.f_frsize;
        Ok((stat.f_blocks.saturating_mul(block), stat.f_bavail.saturating_mul(block)))
    }

    /// Makes the directory's entries durable (after a rename or removal).
    pub fn sync(&self) -> io::Result<()> {
        // SAFETY: fsync on our own descriptor.
        if unsafe { libc::fsync(self.fd.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// O_NONBLOCK was for the open only (a FIFO must not block it).
fn clear_nonblocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own change only its status flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// This process's instance ID, random: a PID comes back after a reboot (systemd boots are
/// deterministic), and a dead daemon's temporary files would then look like ours forever.
fn instance() -> &'static str {
    static INSTANCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    INSTANCE.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..16].to_owned())
}

/// Whether `name` is a temporary file of a process other than this one (left by a daemon that
/// died while writing it).
pub fn is_stale_temp(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(TEMP_PREFIX) else { return false };
    rest.split('-').next().unwrap_or_default() != instance()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_and_escapes_are_refused_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, b"secret").unwrap();
        let pool = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(&secret, pool.path().join("link")).unwrap();
        let dir = PoolDir::open(pool.path()).unwrap();
        let error = dir.open_file("link", false).unwrap_err();
        assert!(error.to_string().contains("symbolic link"), "{error}");
        assert!(dir.open_file("link", true).is_err());
        for bad in ["../secret", "..", "a/b", ""] {
            assert!(dir.open_file(bad, false).is_err(), "{bad}");
            assert!(dir.remove(bad).is_err(), "{bad}");
        }
        assert_eq!(dir.kind("link").unwrap(), EntryKind::Symlink);
        dir.remove("link").unwrap();
        assert_eq!(std::fs::read(&secret).unwrap(), b"secret");
    }

    #[test]
    fn a_directory_others_may_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let pool = tempfile::tempdir().unwrap();
        for mode in [0o770, 0o757, 0o1777] {
            std::fs::set_permissions(pool.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            let error = PoolDir::open(pool.path()).err().expect("refused");
            assert_eq!(error.kind(), io::ErrorKind::PermissionDenied);
            assert!(error.to_string().contains("writable by its owner only"), "{error}");
        }
        std::fs::set_permissions(pool.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        PoolDir::open(pool.path()).unwrap();
        if running_as_root() {
            std::os::unix::fs::chown(pool.path(), Some(65534), None).unwrap();
            let error = PoolDir::open(pool.path()).err().expect("refused");
            assert!(error.to_string().contains("owned by uid 65534"), "{error}");
        }
    }

    fn running_as_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn publish_never_replaces() {
        let pool = tempfile::tempdir().unwrap();
        let dir = PoolDir::open(pool.path()).unwrap();
        let (temp, _file) = dir.create_temp().unwrap();
        dir.publish(&temp, "a").unwrap();
        let (temp, _file) = dir.create_temp().unwrap();
        assert_eq!(dir.publish(&temp, "a").unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert!(!is_stale_temp(&temp));
        assert!(is_stale_temp(&format!("{TEMP_PREFIX}{}-abc", std::process::id())));
        let mode = std::fs::metadata(pool.path().join("a")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    }
}
