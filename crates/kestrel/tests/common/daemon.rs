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
    /// Flags after `kestrel daemon --foreground --state-dir … --socket …` (e.g. `--web`).
    extra_args: Vec<String>,
    /// Where the current run's lines begin in `daemon.log` (restarts append to it).
    log_start: usize,
}

impl Daemon {
    /// Starts a daemon in a fresh temporary directory and waits until it listens.
    pub fn start() -> Daemon {
        Daemon::start_with(&[])
    }

    /// [`Daemon::start`] with more flags for `kestrel daemon` (kept for restarts).
    pub fn start_with(extra_args: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("temporary directory");
        let state_dir = dir.path().join("state");
        let socket = dir.path().join("kestrel.sock");
        let extra_args = extra_args.iter().map(|a| a.to_string()).collect();
        let mut daemon = Daemon { dir, state_dir, socket, child: None, extra_args, log_start: 0 };
        daemon.restart();
        daemon
    }

    /// A daemon with the browser console on a free loopback port, and the console's URL
    /// (`https://127.0.0.1:PORT/`).
    pub fn start_with_web() -> (Daemon, String) {
        let daemon = Daemon::start_with(&["--web", "127.0.0.1:0"]);
        let url = daemon.web_url();
        (daemon, url)
    }

    /// The web console's URL, from this run's log line `kestrel daemon: web console at URL
    /// (certificate SHA-256 …)` (waited for: the daemon logs it once the port is bound).
    pub fn web_url(&self) -> String {
        let line = self.wait_for_log("kestrel daemon: web console at ");
        let rest = &line[line.find("https://").expect("a URL in the web console's line")..];
        rest.split_whitespace().next().unwrap().to_owned()
    }

    /// The first line of this run's log containing `needle`, waited for (bounded).
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let log = self.log();
            if let Some(line) =
                log.get(self.log_start..).and_then(|run| run.lines().find(|l| l.contains(needle)))
            {
                return line.to_owned();
            }
            assert!(Instant::now() < deadline, "no line with '{needle}' in the daemon's log:\n{log}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Starts the daemon again on the same state directory and socket (after [`Daemon::kill`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the daemon is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .expect("daemon log");
        self.log_start = log.metadata().map_or(0, |m| m.len() as usize);
        let child = self
            .daemon_command(&[])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn kestrel daemon");
        self.child = Some(child);
        self.wait_listening();
    }

    /// `kestrel daemon` on this state directory and socket, with the start's flags and `more`.
    pub fn daemon_command(&self, more: &[&str]) -> Command {
        let mut command = super::kestrel();
        command
            .args(["--log-level", "info", "daemon", "--foreground", "--state-dir"])
            .arg(&self.state_dir)
            .arg("--socket")
            .arg(&self.socket)
            .args(&self.extra_args)
            .args(more);
        command
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
