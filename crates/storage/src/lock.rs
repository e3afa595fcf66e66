//! Image locking as QEMU does it, so that two VMs never write one image, a running VM's image is not
//! changed under it by the image tool, and a base image can be shared read-only by many VMs — with
//! Kestrel and QEMU processes (qemu-img, a QEMU VM) seeing each other's locks.
//!
//! QEMU's scheme (`block/file-posix.c`): each permission a user of the image may hold has a bit
//! (consistent read 0, write 1, write-unchanged 2, resize 3). A user takes a shared OFD lock on
//! byte `100 + bit` for each permission it holds, and on byte `200 + bit` for each permission it
//! will not share with others. A user may hold a permission only if nobody locks its "not shared"
//! byte, and may refuse to share one only if nobody locks its "held" byte. The locks are taken
//! first and the conflicts tested after, so two users racing both see each other.
//!
//! Open file description (OFD) locks belong to the open file, not the process: they are released
//! when the last descriptor of that open file closes, and they do not vanish when some other
//! descriptor of the same file in the process is closed (as POSIX record locks would).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

const PERM_BASE: i64 = 100;
const SHARED_BASE: i64 = 200;

/// QEMU's permission bits, by their byte offset from the bases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Permission {
    ConsistentRead = 0,
    Write = 1,
    WriteUnchanged = 2,
    Resize = 3,
}

const ALL: [Permission; 4] =
    [Permission::ConsistentRead, Permission::Write, Permission::WriteUnchanged, Permission::Resize];

impl Permission {
    fn name(self) -> &'static str {
        match self {
            Permission::ConsistentRead => "consistent read",
            Permission::Write => "write",
            Permission::WriteUnchanged => "write unchanged",
            Permission::Resize => "resize",
        }
    }
}

/// How an image is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read, and let others read but not write: a read-only disk, a backing file, an image the
    /// image tool reads.
    Read,
    /// Read, write and resize, and let others only read: a VM's writable disk, an image the image
    /// tool changes.
    Write,
}

impl Access {
    fn held(self) -> &'static [Permission] {
        match self {
            Access::Read => &[Permission::ConsistentRead],
            Access::Write => &ALL,
        }
    }

    fn not_shared(self) -> &'static [Permission] {
        match self {
            Access::Read | Access::Write => &[Permission::Write, Permission::Resize],
        }
    }
}

/// Why an image could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "the image is in use: another process holds a \"{permission}\" lock on it (a running VM, \
         or qemu); an image can have one writer, or any number of readers"
    )]
    InUse { permission: &'static str },
    #[error("cannot lock the image: {0}")]
    Io(#[source] io::Error),
}

/// Locks `file` for `access`, QEMU's way. The locks last as long as the open file (every
/// descriptor of it); dropping `file` releases them. Filesystems without OFD locks (some network
/// filesystems) are used unlocked, with a warning, as QEMU does.
pub fn lock(file: &File, access: Access) -> Result<(), LockError> {
    let mut bytes: Vec<i64> = access.held().iter().map(|p| PERM_BASE + *p as i64).collect();
    bytes.extend(access.not_shared().iter().map(|p| SHARED_BASE + *p as i64));
    for byte in bytes {
        match set_read_lock(file, byte) {
            Ok(()) => {}
            Err(e) if unsupported(&e) => {
                tracing::warn!("the filesystem does not support OFD locks; the image is used unlocked: {e}");
                return Ok(());
            }
            Err(e) if in_use(&e) => return Err(LockError::InUse { permission: permission_at(byte).name() }),
            Err(e) => return Err(LockError::Io(e)),
        }
    }
    // Now that ours are set, anyone else's conflicting lock is a conflict, including one set by a
    // process that raced us (it will see ours as well).
    for permission in access.held() {
        if locked_by_others(file, SHARED_BASE + *permission as i64).map_err(LockError::Io)? {
            return Err(LockError::InUse { permission: permission.name() });
        }
    }
    for permission in access.not_shared() {
        if locked_by_others(file, PERM_BASE + *permission as i64).map_err(LockError::Io)? {
            return Err(LockError::InUse { permission: permission.name() });
        }
    }
    Ok(())
}

/// Gives up every lock this open file holds (before it is reopened or handed to another user).
pub fn unlock(file: &File) -> io::Result<()> {
    let mut request = flock(libc::F_UNLCK as i16, 0);
    request.l_len = 0; // to the end of the file
    fcntl_lock(file, libc::F_OFD_SETLK, &mut request)
}

fn permission_at(byte: i64) -> Permission {
    let bit = if byte >= SHARED_BASE { byte - SHARED_BASE } else { byte - PERM_BASE };
    ALL.into_iter().find(|p| *p as i64 == bit).unwrap_or(Permission::ConsistentRead)
}

fn flock(kind: i16, byte: i64) -> libc::flock {
    libc::flock { l_type: kind, l_whence: libc::SEEK_SET as i16, l_start: byte, l_len: 1, l_pid: 0 }
}

fn fcntl_lock(file: &File, command: libc::c_int, request: &mut libc::flock) -> io::Result<()> {
    loop {
        // SAFETY: the descriptor is open for the call and `request` is a valid, exclusively
        // borrowed flock the kernel may read and (for F_OFD_GETLK) write.
        let result = unsafe { libc::fcntl(file.as_raw_fd(), command, request as *mut libc::flock) };
        if result == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

fn set_read_lock(file: &File, byte: i64) -> io::Result<()> {
    fcntl_lock(file, libc::F_OFD_SETLK, &mut flock(libc::F_RDLCK as i16, byte))
}

/// Whether another open file holds a lock on `byte`: would an exclusive lock there be refused?
/// Our own open file's locks never conflict with themselves.
fn locked_by_others(file: &File, byte: i64) -> io::Result<bool> {
    let mut request = flock(libc::F_WRLCK as i16, byte);
    fcntl_lock(file, libc::F_OFD_GETLK, &mut request)?;
    Ok(request.l_type != libc::F_UNLCK as i16)
}

fn in_use(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES))
}

fn unsupported(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOTSUP) | Some(libc::ENOLCK))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::path::Path;

    fn open(path: &Path) -> File {
        OpenOptions::new().read(true).write(true).open(path).unwrap()
    }

    fn image() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, [0u8; 4096]).unwrap();
        (dir, path)
    }

    #[test]
    fn a_second_writer_is_refused_and_may_write_once_the_first_closes() {
        let (_dir, path) = image();
        let first = open(&path);
        lock(&first, Access::Write).unwrap();
        let second = open(&path);
        let error = lock(&second, Access::Write).unwrap_err();
        assert!(error.to_string().contains("the image is in use"), "{error}");
        drop(second);
        drop(first);
        let third = open(&path);
        lock(&third, Access::Write).unwrap();
    }

    #[test]
    fn readers_share_and_keep_writers_out() {
        let (_dir, path) = image();
        let readers: Vec<File> = (0..3).map(|_| open(&path)).collect();
        for reader in &readers {
            lock(reader, Access::Read).unwrap();
        }
        let writer = open(&path);
        assert!(matches!(lock(&writer, Access::Write), Err(LockError::InUse { .. })));
    }

    #[test]
    fn a_reader_is_refused_while_a_writer_runs() {
        let (_dir, path) = image();
        let writer = open(&path);
        lock(&writer, Access::Write).unwrap();
        let reader = open(&path);
        assert!(matches!(lock(&reader, Access::Read), Err(LockError::InUse { permission: "write" })));
    }

    #[test]
    fn locks_are_the_open_files_not_the_processes() {
        // A second open of the same file in this process is another user, as for QEMU.
        let (_dir, path) = image();
        let a = open(&path);
        lock(&a, Access::Write).unwrap();
        let b = open(&path);
        assert!(lock(&b, Access::Read).is_err());
        unlock(&a).unwrap();
        lock(&b, Access::Read).unwrap();
    }
}
