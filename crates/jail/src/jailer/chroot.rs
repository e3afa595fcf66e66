//! The jail directory and the move into it: a fresh mount namespace whose root is the jail.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{JailerConfig, JailerError};

/// The directory the old root is moved to by pivot_root, then detached and removed.
const OLD_ROOT: &str = "old_root";

/// Creates `<base>/<exec name>/<id>/root` (it may already exist: clients such as
/// firecracker-go-sdk link the kernel and disks in before starting the jailer) and copies the
/// exec file in. A jail that holds a previous run's exec file or `/dev` is refused.
pub(super) fn prepare(config: &JailerConfig) -> Result<PathBuf, JailerError> {
    let root = &config.jail_root;
    // Read before anything is created, so a missing library leaves no half-made jail behind.
    let libraries = super::libs::loader_files(&config.exec_file)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(root)
        .map_err(|e| JailerError::path("create the jail", root, e))?;
    // `<exec name>/<id>/root` must be real directories: a planted symlink would make the jailer
    // chown and pivot into a directory of the host's.
    let mut below_base = root.clone();
    for _ in 0..3 {
        let real_dir = below_base.symlink_metadata().map(|m| m.is_dir()).unwrap_or(false);
        if !real_dir {
            return Err(JailerError::NotADirectory(below_base));
        }
        below_base.pop();
    }
    let exec_copy = root.join(config.exec_name());
    for used in [exec_copy.as_path(), &root.join("dev"), &root.join(OLD_ROOT)] {
        if used.symlink_metadata().is_ok() {
            return Err(JailerError::JailInUse(root.clone()));
        }
    }
    copy_exec(&config.exec_file, &exec_copy)?;
    for library in libraries {
        let inside = root.join(library.strip_prefix("/").unwrap_or(&library));
        if inside.symlink_metadata().is_ok() {
            continue; // linked in by the caller, or shared by two names
        }
        if let Some(dir) = inside.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|e| JailerError::path("create", dir, e))?;
        }
        copy_exec(&library, &inside)?;
    }
    Ok(root.clone())
}

/// Copies the exec file into a new file (never through an existing one), executable by the
/// jailed uid, writable by root only.
fn copy_exec(from: &Path, to: &Path) -> Result<(), JailerError> {
    let mut source = std::fs::File::open(from).map_err(|e| JailerError::path("open", from, e))?;
    let mut target = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .custom_flags(libc::O_NOFOLLOW)
        .open(to)
        .map_err(|e| JailerError::path("create", to, e))?;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = source.read(&mut buffer).map_err(|e| JailerError::path("read", from, e))?;
        if n == 0 {
            break;
        }
        target.write_all(&buffer[..n]).map_err(|e| JailerError::path("write", to, e))?;
    }
    // The umask may have narrowed the mode.
    target
        .set_permissions(std::fs::Permissions::from_mode(0o755))
        .map_err(|e| JailerError::path("chmod", to, e))
}

fn c_path(path: &Path) -> Result<CString, JailerError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| JailerError::path("use", path, std::io::ErrorKind::InvalidInput.into()))
}

/// Unshares the mount namespace, keeps the host's mounts from propagating into it (rslave),
/// bind-mounts the jail onto itself (pivot_root needs a mount point), pivots into it, and
/// detaches and removes the old root, so nothing of the host stays reachable.
pub(super) fn pivot_into(jail: &Path) -> Result<(), JailerError> {
    let jail_c = c_path(jail)?;
    // SAFETY: unshare takes flags only.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(JailerError::sys("unshare(CLONE_NEWNS)"));
    }
    // SAFETY: the strings are NUL-terminated literals; null source/type/data are allowed for a
    // propagation change.
    if unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_SLAVE | libc::MS_REC,
            std::ptr::null(),
        )
    } != 0
    {
        return Err(JailerError::sys("mount --make-rslave /"));
    }
    // SAFETY: jail_c is a NUL-terminated path living across the call.
    if unsafe {
        libc::mount(
            jail_c.as_ptr(),
            jail_c.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    } != 0
    {
        return Err(JailerError::sys("bind-mounting the jail onto itself"));
    }
    std::env::set_current_dir(jail).map_err(|e| JailerError::path("enter", jail, e))?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(OLD_ROOT)
        .map_err(|e| JailerError::path("create", jail.join(OLD_ROOT), e))?;
    // SAFETY: both strings are NUL-terminated literals.
    if unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c"old_root".as_ptr()) } != 0 {
        return Err(JailerError::sys("pivot_root"));
    }
    std::env::set_current_dir("/").map_err(|e| JailerError::path("enter", "/", e))?;
    // SAFETY: a NUL-terminated literal; MNT_DETACH unmounts lazily the whole old tree.
    if unsafe { libc::umount2(c"/old_root".as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(JailerError::sys("unmounting the old root"));
    }
    std::fs::remove_dir("/old_root").map_err(|e| JailerError::path("remove", "/old_root", e))
}
