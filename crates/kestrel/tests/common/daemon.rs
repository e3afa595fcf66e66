//! A `kestrel daemon` of the test's own (state directory and socket in a temporary directory),
//! and the CLI pointed at it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long the daemon may take to listen.
const START_LIMIT: Duration = Duration::from_secs(30);

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// Starts a daemon in a fresh temporary directory and waits until it listens.
    pub fn start() -> Daemon {
        let dir = tempfile::tempdir().expect("temporary directory");
        let state_dir = dir.path().join("state");
        let socket = dir.path().join("kestrel.sock");
        let mut daemon = Daemon { dir, state_dir, socket, child: None };
        daemon.restart();
        daemon
    }

    /// Starts the daemon again on the same state directory and socket (after [`Daemon::kill`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the daemon is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .expect("daemon log");
        let child = super::kestrel()
            .args(["--log-level", "info", "daemon", "--foreground", "--state-dir"])
            .arg(&self.state_dir)
            .arg("--socket")
            .arg(&self.socket)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn kestrel daemon");
        self.child = Some(child);
        self.wait_listening();
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("the daemon exited with {status} before listening; its log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not listen within {START_LIMIT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// SIGKILLs the daemon (its VMs keep running) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The daemon's process ID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kestrel ARGS…` against this daemon.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = super::kestrel();
        command.env("KESTREL_SOCKET", &self.socket).args(args);
        command
    }

    /// Runs `kestrel ARGS…` against this daemon to its end (failing the test if it hangs).
    pub fn cli(&self, args: &[&str]) -> Output {
        super::run_to_end(self.command(args), b"")
    }

    /// Runs the CLI and fails the test unless it succeeds; its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(
            output.status.success(),
            "kestrel {args:?} failed ({}):\n{}\n{}\ndaemon log:\n{}",
            output.status,
            super::stdout(&output),
            super::stderr(&output),
            self.log()
        );
        super::stdout(&output)
    }

    /// The state directory.
    pub fn state(&self) -> &Path {
        &self.state_dir
    }
}

impl Drop for Daemon {
    /// The daemon goes, and so does every process it left behind on purpose (VMMs and dnsmasq
    /// outlive a daemon): a test that fails, or forgets to destroy its VMs, must not leave
    /// guests spinning on the host for the rest of the run.
    fn drop(&mut self) {
        self.kill();
        kill_processes_naming(&self.state_dir);
    }
}

/// SIGKILLs every process whose command line names `dir` (the VMMs' sockets and dnsmasq's
/// files are under it), and reaps none: they are not the test's children.
pub fn kill_processes_naming(dir: &Path) {
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            // SAFETY: kill sends a signal; the PID was just read from /proc and its command line
            // names this test's own state directory.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}
