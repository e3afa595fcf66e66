//! File descriptors: every inherited one above stderr closed; `--daemonize`'s stdio on /dev/null.

use std::os::fd::{AsRawFd, OwnedFd};

use super::JailerError;

/// /dev/null, opened on the host before the jail (which has none) for `--daemonize`.
pub(super) fn open_dev_null() -> Result<OwnedFd, JailerError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| JailerError::path("open", "/dev/null", e))
}

/// A new session with no controlling terminal, and stdin/stdout/stderr on /dev/null.
pub(super) fn daemonize(null: OwnedFd) -> Result<(), JailerError> {
    // SAFETY: setsid takes no arguments.
    if unsafe { libc::setsid() } < 0 {
        // A process group leader (a shell's job) cannot start a session: fork, and let the
        // child, which leads no group, go on.
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
            return Err(JailerError::sys("setsid"));
        }
        // SAFETY: the jailer is single-threaded here, so the child may run any code.
        match unsafe { libc::fork() } {
            -1 => return Err(JailerError::sys("fork to daemonize")),
            // SAFETY: _exit ends the parent at once; the child goes on as the jailer.
            child if child > 0 => unsafe { libc::_exit(0) },
            _ => {}
        }
        // SAFETY: as above; the child is in its parent's group but leads none.
        if unsafe { libc::setsid() } < 0 {
            return Err(JailerError::sys("setsid"));
        }
    }
    for target in 0..=2 {
        // SAFETY: dup2 on an fd this function owns onto the stdio numbers.
        if unsafe { libc::dup2(null.as_raw_fd(), target) } < 0 {
            return Err(JailerError::sys("dup2 onto stdio"));
        }
    }
    Ok(())
}

/// Closes every fd above 2: whatever the caller leaked to the jailer (and the jailer's own)
/// must not reach the VMM.
pub(super) fn close_inherited() -> Result<(), JailerError> {
    // SAFETY: close_range takes plain integers; nothing in this process uses fds above 2 after
    // this point (Rust's std keeps none open behind our back).
    let closed = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if closed != 0 {
        return Err(JailerError::sys("close_range"));
    }
    Ok(())
}
