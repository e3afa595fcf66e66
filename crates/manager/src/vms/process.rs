//! The VMM processes as the kernel sees them: spawning `kestrel vmm` in its own session,
//! pidfds (a handle on one process that a reused PID cannot fool), killing and reaping, the
//! peer of a VMM's API socket, and finding `kestrel vmm` processes of this state directory.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;

/// A pidfd: the process it was opened on, forever (a PID may be reused; this may not).
#[derive(Clone, Debug)]
pub struct PidFd(Arc<OwnedFd>);

impl AsRawFd for PidFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl PidFd {
    /// Opens a pidfd on `pid`; `None` when no such process exists.
    pub fn open(pid: u32) -> std::io::Result<PidFd> {
        let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::Error::from_raw_os_error(libc::ESRCH))?;
        // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor or -1; no memory
        // is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor, which nothing else owns.
        Ok(PidFd(Arc::new(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })))
    }

    /// Sends `signal` to the process (nothing happens if it has ended).
    pub fn signal(&self, signal: libc::c_int) -> std::io::Result<()> {
        // SAFETY: pidfd_send_signal takes our descriptor, a signal number, a null siginfo and
        // flags 0; no memory of ours is written.
        let result = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if result < 0 {
            let error = std::io::Error::last_os_error();
            // An ended process (zombie or reaped) has nothing left to signal.
            if error.raw_os_error() == Some(libc::ESRCH) {
                return Ok(());
            }
            return Err(error);
        }
        Ok(())
    }

    /// Whether the process has ended (the pidfd polls readable then).
    pub fn has_ended(&self) -> bool {
        let mut poll = libc::pollfd { fd: self.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, no wait.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        ready > 0
    }

    /// Waits until the process ends.
    pub async fn ended(&self) -> std::io::Result<()> {
        // SAFETY: the AsyncFd owns a clone of this PidFd, whose Arc keeps the descriptor open
        // (and the same) for as long as the AsyncFd lives.
        let fd = unsafe { AsyncFd::register_with_interest(self.clone(), tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        let _guard = fd.readable().await?;
        Ok(())
    }

    /// Reaps the process, when it is this process's child, and says how it ended. `None` when
    /// it is not our child (adopted) or was already reaped.
    pub fn reap(&self) -> Option<Ended> {
        // SAFETY: siginfo_t is plain data; waitid fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our pidfd with a valid siginfo_t to fill; WNOHANG never blocks.
        let result = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                self.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            )
        };
        if result < 0 {
            return None;
        }
        // SAFETY: waitid filled `info` for a child state change (si_pid is 0 when none was
        // waiting, which WNOHANG allows).
        let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if pid == 0 {
            return None;
        }
        Some(match info.si_code {
            libc::CLD_EXITED => Ended { status: Some(status), signal: None },
            _ => Ended { status: None, signal: Some(status) },
        })
    }
}

/// How a VMM process ended, when known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ended {
    pub status: Option<i32>,
    pub signal: Option<i32>,
}

impl Ended {
    /// From a status as `kestrel vmm` writes it: 128 + N is "killed by signal N", as shells say.
    pub fn from_status(status: i32) -> Ended {
        Ended { status: Some(status), signal: None }
    }
}

/// What to start: `kestrel vmm` with these files.
pub struct Spawn<'a> {
    pub binary: &'a Path,
    pub name: &'a str,
    pub socket: &'a Path,
    pub transport: &'static str,
    pub console_input: &'a Path,
    pub console_log: &'a Path,
    pub vmm_log: &'a Path,
    pub exit_status: &'a Path,
    pub landlock_allow: &'a [PathBuf],
}

/// A VMM just started.
pub struct Spawned {
    pub pid: u32,
    pub pidfd: PidFd,
    /// Its start time (`/proc/PID/stat`), when `/proc` could say.
    pub start_time: Option<u64>,
}

/// Starts `kestrel vmm` in its own session: stdin the console FIFO (opened read-write, so the
/// VMM never sees its end when a writer leaves), stdout the console log (appended), stderr its
/// own log (truncated: this run's words).
pub fn spawn(what: &Spawn<'_>) -> std::io::Result<Spawned> {
    let input = std::fs::OpenOptions::new().read(true).write(true).open(what.console_input)?;
    let output = open_private(what.console_log, true)?;
    let log = open_private(what.vmm_log, false)?;
    let mut command = Command::new(what.binary);
    command
        .arg("vmm")
        .arg("--api-sock")
        .arg(what.socket)
        .args(["--id", what.name, "--serial", "stdio", "--transport", what.transport, "--landlock", "on"])
        .arg("--exit-status-file")
        .arg(what.exit_status);
    for path in what.landlock_allow {
        let mut allow = OsString::from(path.as_os_str());
        allow.push(":rw");
        command.arg("--landlock-allow").arg(allow);
    }
    command.stdin(Stdio::from(input)).stdout(Stdio::from(output)).stderr(Stdio::from(log));
    // SAFETY: between fork and exec only setsid and close_range run, both plain system calls
    // (async-signal-safe). The VMM gets a session of its own, so signals to the daemon's
    // terminal or process group never reach it, and no descriptor but its stdio: whatever the
    // daemon inherited without close-on-exec stays with the daemon.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // CLOSE_RANGE_CLOEXEC: closed at the exec, so std's own exec-error pipe still works.
            const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;
            if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    let pid = child.id();
    // The child is reaped through its pidfd (waitid), not through `Child`.
    drop(child);
    let pidfd = PidFd::open(pid)?;
    // Unknown only if /proc cannot be read: then the VMM is told by its command line instead
    // (never by a made-up start time, which would disown it after a daemon restart).
    let start_time = start_time(pid);
    Ok(Spawned { pid, pidfd, start_time })
}

fn open_private(path: &Path, append: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.create(true).write(true).mode(0o600).custom_flags(libc::O_NOFOLLOW);
    if append {
        options.append(true);
    } else {
        options.truncate(true);
    }
    options.open(path)
}

/// The process's start time (clock ticks after boot, `/proc/PID/stat` field 22): with the PID,
/// it names one process for good.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = read_bounded(&PathBuf::from(format!("/proc/{pid}/stat")), 4096)?;
    let text = String::from_utf8_lossy(&stat);
    // The command name (field 2) is in parentheses and may hold anything; count after its end.
    let after = &text[text.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// How long finding a socket's listener may take: a VMM that is stopped or wedged, with its
/// listen backlog full, must not hold up the daemon.
const PEER_LIMIT: Duration = Duration::from_secs(1);

/// The PID of the process listening on the Unix socket `socket`, from SO_PEERCRED; `None` when
/// nothing answers there within [`PEER_LIMIT`].
pub async fn socket_peer(socket: &Path) -> Option<u32> {
    let stream =
        tokio::time::timeout(PEER_LIMIT, tokio::net::UnixStream::connect(socket)).await.ok()?.ok()?;
    let pid = stream.peer_cred().ok()?.pid()?;
    u32::try_from(pid).ok().filter(|pid| *pid > 0)
}

/// Kills the process behind `pidfd` and waits (bounded) for its end; reaps it if it is ours.
pub async fn kill_and_wait(pidfd: &PidFd, limit: Duration) -> Option<Ended> {
    if let Err(e) = pidfd.signal(libc::SIGKILL) {
        tracing::warn!("cannot kill a VMM: {e}");
    }
    let _ = tokio::time::timeout(limit, pidfd.ended()).await;
    pidfd.reap()
}

/// The `kestrel vmm` processes of this user whose API socket is under `vms_dir`, as
/// (PID, socket). Used at the daemon's start to find VMMs the store does not account for.
pub fn vmm_processes(vms_dir: &Path) -> Vec<(u32, PathBuf)> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(metadata) = std::fs::metadata(entry.path()) else { continue };
        if std::os::unix::fs::MetadataExt::uid(&metadata) != uid {
            continue;
        }
        if let Some(socket) = vmm_socket_of(pid) {
            if socket.starts_with(vms_dir) {
                found.push((pid, socket));
            }
        }
    }
    found
}

/// The API socket of the process `pid` when it is a `kestrel vmm` (its `--api-sock`), from its
/// command line.
pub fn vmm_socket_of(pid: u32) -> Option<PathBuf> {
    let cmdline = read_bounded(&PathBuf::from(format!("/proc/{pid}/cmdline")), 64 << 10)?;
    vmm_socket_in(&cmdline)
}

/// The `--api-sock` of a `kestrel vmm` command line (NUL-separated arguments).
fn vmm_socket_in(cmdline: &[u8]) -> Option<PathBuf> {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    if args.get(1) != Some(&&b"vmm"[..]) {
        return None;
    }
    args.windows(2).find(|w| w[0] == b"--api-sock").map(|w| PathBuf::from(std::ffi::OsStr::from_bytes(w[1])))
}

/// Whether `pid` (opened as `pidfd`) is still the VMM the store recorded: the same start time
/// when one was recorded, else a `kestrel vmm` serving `socket`. A PID reused by another
/// process fails both.
pub fn is_recorded_vmm(pid: u32, pidfd: &PidFd, pid_start: Option<u64>, socket: &Path) -> bool {
    // Checked after the pidfd was opened, so the process checked is the one the pidfd holds
    // (unless it ended in between, which `has_ended` then says).
    let same = match pid_start {
        Some(recorded) => start_time(pid) == Some(recorded),
        None => vmm_socket_of(pid).as_deref() == Some(socket),
    };
    same && !pidfd.has_ended()
}

/// The exit status `kestrel vmm --exit-status-file` wrote, if it did.
pub fn read_exit_status(path: &Path) -> Option<i32> {
    let bytes = read_bounded(path, 64)?;
    std::str::from_utf8(&bytes).ok()?.trim().parse().ok()
}

/// The last `lines` lines of a file (reading at most its last 16 KiB), lossily decoded.
pub fn tail(path: &Path, lines: usize) -> Vec<String> {
    use std::io::Seek;
    const WINDOW: u64 = 16 << 10;
    let Ok(mut file) = std::fs::File::open(path) else { return Vec::new() };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    if file.seek(std::io::SeekFrom::Start(length.saturating_sub(WINDOW))).is_err() {
        return Vec::new();
    }
    let mut bytes = Vec::new();
    if file.take(WINDOW).read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.is_empty()).collect();
    all[all.len().saturating_sub(lines)..].iter().map(|l| l.chars().take(300).collect()).collect()
}

/// Reads at most `limit` bytes of a file.
fn read_bounded(path: &Path, limit: u64) -> Option<Vec<u8>> {
    let file = std::fs::File::open(path).ok()?;
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_of_this_process_is_stable() {
        let pid = std::process::id();
        let first = start_time(pid).expect("our own start time");
        assert_eq!(start_time(pid), Some(first));
    }

    #[test]
    fn tails_keep_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "a\nb\r\n\nc\nd\n").unwrap();
        assert_eq!(tail(&path, 2), ["c", "d"]);
        assert_eq!(tail(&path, 10), ["a", "b", "c", "d"]);
        assert!(tail(&dir.path().join("none"), 3).is_empty());
    }

    #[test]
    fn exit_status_files_are_read_strictly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status");
        std::fs::write(&path, "3\n").unwrap();
        assert_eq!(read_exit_status(&path), Some(3));
        std::fs::write(&path, "x".repeat(1000)).unwrap();
        assert_eq!(read_exit_status(&path), None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 128, ..Default::default() })]
        /// The files a VMM (or anyone who can write the VM's directory) leaves: any bytes are
        /// read without a panic, and a status the VMM writes reads back.
        #[test]
        fn exit_status_and_log_files_of_any_bytes_are_read_safely(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20_000),
            status in 0i32..=255,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("file");
            std::fs::write(&path, &bytes).unwrap();
            let _ = read_exit_status(&path);
            let lines = tail(&path, 5);
            proptest::prop_assert!(lines.len() <= 5 && lines.iter().all(|l| l.chars().count() <= 300));
            std::fs::write(&path, format!("{status}\n")).unwrap();
            proptest::prop_assert_eq!(read_exit_status(&path), Some(status));
        }
    }

    #[test]
    fn the_api_socket_is_read_from_a_vmm_command_line_only() {
        let line = |args: &[&str]| args.join("\0").into_bytes();
        assert_eq!(
            vmm_socket_in(&line(&["kestrel", "vmm", "--api-sock", "/s/vmm.sock", "--id", "x"])),
            Some(PathBuf::from("/s/vmm.sock"))
        );
        assert_eq!(vmm_socket_in(&line(&["kestrel", "daemon", "--api-sock", "/s"])), None);
        assert_eq!(vmm_socket_in(&line(&["kestrel", "vmm", "--api-sock"])), None);
        assert_eq!(vmm_socket_of(std::process::id()), None, "this test is no VMM");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]
        /// A command line is whatever a process of this user put there: any bytes are read
        /// without a panic.
        #[test]
        fn command_lines_of_any_bytes_are_read_safely(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
        ) {
            let _ = vmm_socket_in(&bytes);
        }
    }

    #[tokio::test]
    async fn the_peer_of_a_socket_is_its_listener_and_nothing_else_answers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        assert_eq!(socket_peer(&path).await, None, "no socket");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        assert_eq!(socket_peer(&path).await, Some(std::process::id()));
        drop(listener);
        assert_eq!(socket_peer(&path).await, None, "a stale socket");
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"not a socket").unwrap();
        assert_eq!(socket_peer(&path).await, None, "a regular file");
    }

    #[tokio::test]
    #[allow(clippy::zombie_processes)] // reaped through its pidfd by kill_and_wait
    async fn a_recorded_vmm_is_told_by_its_start_time() {
        let child = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = child.id();
        let pidfd = PidFd::open(pid).unwrap();
        let started = start_time(pid).unwrap();
        let socket = Path::new("/nowhere/vmm.sock");
        assert!(is_recorded_vmm(pid, &pidfd, Some(started), socket));
        assert!(!is_recorded_vmm(pid, &pidfd, Some(started + 1), socket), "a reused PID");
        assert!(!is_recorded_vmm(pid, &pidfd, None, socket), "no start time, and not a VMM of that socket");
        kill_and_wait(&pidfd, Duration::from_secs(10)).await;
        assert!(!is_recorded_vmm(pid, &pidfd, Some(started), socket), "ended");
    }

    #[tokio::test]
    #[allow(clippy::zombie_processes)] // reaped through its pidfd by kill_and_wait
    async fn a_killed_child_is_seen_ending_and_reaped_with_its_signal() {
        let child = Command::new("sleep").arg("60").spawn().unwrap();
        let pidfd = PidFd::open(child.id()).unwrap();
        assert!(!pidfd.has_ended());
        let ended = kill_and_wait(&pidfd, Duration::from_secs(10)).await;
        assert!(pidfd.has_ended());
        assert_eq!(ended, Some(Ended { status: None, signal: Some(libc::SIGKILL) }));
    }
}
