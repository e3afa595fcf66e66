//! `--netns PATH` (join a network namespace) and `--new-pid-ns` (the VMM runs as PID 1 of a new
//! PID namespace; its host pid goes to `<exec name>.pid` in the jail, as Firecracker writes it;
//! without one the VMM's pid, its own, goes there too).

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{exec, JailerError, StartTimes};

/// setns(CLONE_NEWNET) into the namespace at `path` (such as /var/run/netns/NAME).
pub(super) fn join_netns(path: &Path) -> Result<(), JailerError> {
    let file =
        std::fs::File::open(path).map_err(|e| JailerError::path("open the network namespace", path, e))?;
    // SAFETY: setns on an open fd this function owns.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(JailerError::path("join the network namespace", path, std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Forks into a new PID namespace. In the parent: writes the child's pid to `/<exec name>.pid`
/// and exits 0. In the child (PID 1 of the namespace): returns, with the times updated.
pub(super) fn fork_into_new_pid_ns(exec_name: &Path, times: &mut StartTimes) -> Result<(), JailerError> {
    times.parent_cpu_time_us = exec::cpu_time_us().saturating_sub(times.start_time_cpu_us);
    // SAFETY: unshare takes flags only; it affects the children created after it.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(JailerError::sys("unshare(CLONE_NEWPID)"));
    }
    // SAFETY: the jailer is single-threaded (kestrel's main thread, before any other starts), so
    // the child may run any code after fork.
    match unsafe { libc::fork() } {
        -1 => Err(JailerError::sys("fork into the new PID namespace")),
        0 => {
            times.start_time_cpu_us = 0;
            Ok(())
        }
        child => match write_pid_file(exec_name, child as u32) {
            // SAFETY: _exit ends this process at once, as Firecracker's jailer does; the child
            // goes on as the VMM.
            Ok(()) => unsafe { libc::_exit(0) },
            Err(e) => {
                // SAFETY: kill on the child just forked; it has not been reaped.
                unsafe { libc::kill(child, libc::SIGKILL) };
                Err(e)
            }
        },
    }
}

/// Writes `pid` to `/<exec name>.pid` in the jail (created, 0600), where Firecracker's jailer
/// leaves the VMM's pid with or without a new PID namespace; Kata Containers reads it to find the
/// VMM once the jailer has daemonized.
pub(super) fn write_pid_file(exec_name: &Path, pid: u32) -> Result<(), JailerError> {
    let mut pid_path = exec_name.as_os_str().to_owned();
    pid_path.push(".pid");
    let pid_path = Path::new("/").join(pid_path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&pid_path)
        .and_then(|mut file| write!(file, "{pid}"))
        .map_err(|e| JailerError::path("write", pid_path, e))
}
