//! The jail directory and the move into it: a fresh mount namespace whose root is the jail.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::jaildir::JailDir;
use super::{libs, JailerConfig, JailerError};

/// The directory the old root is moved to by pivot_root, then detached and removed.
const OLD_ROOT: &str = "old_root";

/// Creates `<base>/<exec name>/<id>/root` (it may already exist: clients such as
/// firecracker-go-sdk link the kernel and disks in before starting the jailer) and copies the
/// exec file in. A jail that holds a previous run's exec file or `/dev` is refused.
pub(super) fn prepare(config: &JailerConfig) -> Result<PathBuf, JailerError> {
    let root = &config.jail_root;
    // Read before anything is created, so a missing library leaves no half-made jail behind.
    let libraries = libs::loader_files(&config.exec_file)?;
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
    // From here on every step is relative to the jail root's descriptor and follows no symlink
    // a previous tenant may have planted.
    let jail = JailDir::open(root)?;
    let exec = libs::open_regular(&config.exec_file, &config.exec_file)?;
    jail.install(Path::new(&config.exec_name()), &exec.file, exec.len)?;
    for library in libraries {
        let inside = library.path.strip_prefix("/").unwrap_or(&library.path);
        jail.install(inside, &library.file, library.len)?;
    }
    Ok(root.clone())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jailer::{RawJailerArgs, StartTimes};

    /// A config jailing this (dynamically linked) test binary under a temporary base.
    fn config(base: &Path) -> JailerConfig {
        let raw = RawJailerArgs {
            id: "vm1".into(),
            exec_file: std::env::current_exe().unwrap(),
            chroot_base_dir: base.into(),
            cgroup_version: "1".into(),
            ..RawJailerArgs::default()
        };
        let config = JailerConfig::new(raw, StartTimes::default(), |_| false).unwrap();
        std::fs::create_dir_all(&config.jail_root).unwrap();
        config
    }

    #[test]
    fn a_reused_jail_with_a_planted_library_directory_symlink_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let config = config(&tmp.path().join("base"));
        let loader = libs::loader_files(&config.exec_file).unwrap().remove(0).path;
        // lib64 -> <tmp>/outside (standing in for /etc/cron.d).
        let top = loader.strip_prefix("/").unwrap().components().next().unwrap();
        std::os::unix::fs::symlink(&outside, config.jail_root.join(top)).unwrap();
        let error = prepare(&config).unwrap_err();
        assert!(matches!(error, JailerError::NotADirectory(_)), "{error}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "the jailer wrote through the symlink");
    }

    #[test]
    fn a_previous_tenants_library_is_replaced_and_a_planted_file_symlink_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let config = config(&tmp.path().join("base"));
        let files = libs::loader_files(&config.exec_file).unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"host file").unwrap();
        let inside = |f: &libs::LoaderFile| config.jail_root.join(f.path.strip_prefix("/").unwrap());
        let (loader, library) = (inside(&files[0]), inside(&files[1]));
        std::fs::create_dir_all(loader.parent().unwrap()).unwrap();
        std::fs::create_dir_all(library.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&victim, &loader).unwrap();
        std::fs::write(&library, b"planted").unwrap();
        prepare(&config).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"host file");
        for (jailed, host) in [(&loader, &files[0].path), (&library, &files[1].path)] {
            assert!(jailed.symlink_metadata().unwrap().file_type().is_file(), "{jailed:?}");
            assert_eq!(std::fs::read(jailed).unwrap(), std::fs::read(host).unwrap(), "{jailed:?}");
        }
    }
}
