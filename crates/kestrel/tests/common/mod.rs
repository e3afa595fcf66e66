//! Shared test harness: runs the real `kestrel` binary on the test guests.
#![allow(dead_code)] // each test binary uses its own subset of the harness

pub mod api;
pub mod daemon;
pub mod firecracker;
pub mod kit;
pub mod netns;
// --- manager: VM API helpers (core) ---
pub mod vms;
// --- end core ---

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use wait_timeout::ChildExt;

/// A run that takes longer than this has hung; the test fails instead of hanging CI. Not a speed
/// target: a guest run takes well under a second here.
pub const HANG_LIMIT: Duration = Duration::from_secs(60);

/// True when the KVM tests can run. On CI (CI=true) a missing /dev/kvm is a failure, not a skip.
pub fn kvm_available() -> bool {
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => true,
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("this test needs /dev/kvm, which cannot be opened on CI: {e}")
        }
        Err(e) => {
            eprintln!("skipping: /dev/kvm cannot be opened ({e}); on CI this fails");
            false
        }
    }
}

/// Tests that need root (to unshare mounts or drop privileges) fail on CI without it.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && std::env::var("CI").as_deref() == Ok("true") {
        panic!("this test needs root on CI");
    }
    root
}

pub fn kestrel() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kestrel"))
}

/// `kestrel run` on a guest with the given extra arguments, stdin closed.
pub fn run_guest(kernel: &str, args: &[&str]) -> Output {
    let mut command = kestrel();
    command.arg("run").arg("--kernel").arg(kernel).args(args);
    run_to_end(command, b"")
}

/// Runs a command with `input` on its stdin and waits for it, failing the test if it hangs.
pub fn run_to_end(command: Command, input: &[u8]) -> Output {
    run_to_end_within(command, input, HANG_LIMIT)
}

/// [`run_to_end`] with a hang limit other than [`HANG_LIMIT`] (for slow guests such as Linux).
pub fn run_to_end_within(mut command: Command, input: &[u8], limit: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kestrel");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).expect("write stdin");
    drop(stdin);
    wait_within(child, limit)
}

/// Waits for a child whose stdout/stderr are piped, collecting both; kills it past HANG_LIMIT.
pub fn wait_with_limit(child: Child) -> Output {
    wait_within(child, HANG_LIMIT)
}

/// [`wait_with_limit`] with a hang limit other than [`HANG_LIMIT`].
pub fn wait_within(mut child: Child, limit: Duration) -> Output {
    let stdout = child.stdout.take().map(drain_in_background);
    let stderr = child.stderr.take().map(drain_in_background);
    let status = match child.wait_timeout(limit).expect("wait") {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kestrel did not exit within {limit:?}");
        }
    };
    let join = |h: Option<std::thread::JoinHandle<Vec<u8>>>| h.map(|h| h.join().unwrap()).unwrap_or_default();
    Output { status, stdout: join(stdout), stderr: join(stderr) }
}

fn drain_in_background<R: Read + Send + 'static>(mut reader: R) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buffer = Vec::new();
        let _ = reader.read_to_end(&mut buffer);
        buffer
    })
}

/// Kills a child that is still running after [`HANG_LIMIT`] (or the limit given to
/// [`Watchdog::within`]), so a test that reads its output line by line fails (at end of output)
/// instead of hanging. Dropping the watchdog disarms it.
pub struct Watchdog {
    disarm: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    pub fn new(child: &Child) -> Watchdog {
        Watchdog::within(child, HANG_LIMIT)
    }

    pub fn within(child: &Child, limit: Duration) -> Watchdog {
        let pid = child.id() as libc::pid_t;
        let (disarm, disarmed) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = disarmed.recv_timeout(limit) {
                eprintln!("watchdog: child {pid} still running after {limit:?}; killing it");
                // SAFETY: kill has no memory-safety preconditions; the child is not reaped yet
                // (the test holds it), so the pid cannot have been reused.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        Watchdog { disarm: Some(disarm), thread: Some(thread) }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.disarm.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads lines from `reader` until one contains `needle`; the lines read so far, or at end of
/// output `Err` with everything read.
pub fn read_to_line<R: Read>(reader: &mut BufReader<R>, needle: &str) -> Result<String, String> {
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).expect("read guest output") == 0 {
            return Err(seen);
        }
        seen.push_str(&line);
        if line.contains(needle) {
            return Ok(seen);
        }
    }
}

/// Reads lines from `reader` until one contains `needle` (the guest said it is ready); returns the
/// lines read so far. Panics at end of output.
pub fn wait_for_line<R: Read>(reader: &mut BufReader<R>, needle: &str) -> String {
    read_to_line(reader, needle)
        .unwrap_or_else(|seen| panic!("output ended before a line containing {needle:?}; got:\n{seen}"))
}

/// [`wait_for_line`] on a child's piped stdout, but when the output ends first, the panic says
/// why: the child's exit status and its stderr (a VMM that died early says so there).
pub fn wait_for_child_line<R: Read>(reader: &mut BufReader<R>, needle: &str, child: &mut Child) -> String {
    read_to_line(reader, needle).unwrap_or_else(|seen| {
        let status = child.wait().map(|s| s.to_string()).unwrap_or_else(|e| format!("unknown ({e})"));
        let stderr = child_stderr(child);
        panic!("output ended before a line containing {needle:?}; the child exited with {status}; got:\n{seen}\nits stderr:\n{stderr}");
    })
}

/// The rest of a child's piped stderr (empty when it was not piped or was taken already).
pub fn child_stderr(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut text);
    }
    text
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The value after `prefix` on the first stdout line that starts with it.
pub fn line_value(output: &Output, prefix: &str) -> Option<String> {
    stdout(output).lines().find_map(|l| l.strip_prefix(prefix).map(str::to_owned))
}

/// Asserts the exit status, printing both streams when it differs.
#[track_caller]
pub fn assert_status(output: &Output, expected: i32) {
    assert_eq!(
        output.status.code(),
        Some(expected),
        "unexpected exit status\n--- stdout\n{}\n--- stderr\n{}",
        stdout(output),
        stderr(output)
    );
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// The host tool `name`, or `None` (the test skips; on CI it fails).
pub fn host_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .chain(["/sbin", "/usr/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|path| path.is_file());
    if found.is_none() {
        let message = format!("{name} is not installed");
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{message}; scripts/install-prerequisites --tests installs it");
        }
        eprintln!("skipping: {message}");
    }
    found
}

/// Runs a host tool and returns its stdout, failing the test with its output if it fails.
pub fn run_tool(tool: &Path, args: &[&str]) -> String {
    let output = Command::new(tool).args(args).output().unwrap_or_else(|e| panic!("run {tool:?}: {e}"));
    assert!(
        output.status.success(),
        "{tool:?} {args:?} failed ({})\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}
