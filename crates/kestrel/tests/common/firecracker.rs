//! What the compatibility tests (`compat_*.rs`) share: Kestrel started as `firecracker` (a symlink
//! of that name, as Kata, flintlock and the SDKs find it), an HTTP client that talks like Go's
//! `net/http` (one kept-alive connection, Go's headers), FIFOs read the way the tools read them,
//! and the `/proc` lookups they make (vCPU threads).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Makes `dir/firecracker`, a symlink to the kestrel binary under test, and returns its path: the
/// tools run the binary by that name (and some check the process's name).
pub fn firecracker_in(dir: &Path) -> PathBuf {
    let link = dir.join("firecracker");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kestrel"), &link).expect("make the firecracker symlink");
    link
}

/// `firecracker --version`'s first line, parsed the way Kata's `parseVersion` does: the second
/// space-separated field without its leading `v`, as (major, minor, patch).
pub fn version_as_kata_parses_it(firecracker: &Path) -> (u64, u64, u64) {
    let output = std::process::Command::new(firecracker).arg("--version").output().expect("run --version");
    assert!(output.status.success(), "--version failed: {output:?}");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let first = text.split('\n').next().unwrap_or_default();
    let field =
        first.split(' ').nth(1).unwrap_or_else(|| panic!("--version's first line is malformed: {text:?}"));
    let version = field.trim().trim_start_matches('v');
    let mut parts = version.split(['.', '-', '+']).map(|p| p.parse::<u64>());
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor)), Some(Ok(patch))) => (major, minor, patch),
        _ => panic!("{version:?} (from {first:?}) is not a semantic version"),
    }
}

/// An HTTP/1.1 client on the API socket that behaves like Go's `net/http` transport under the
/// go-swagger clients of Kata and the Go SDK: one connection kept alive across requests (a new one
/// when the server has closed it, as Go's idle-connection reader notices), and Go's headers.
pub struct GoClient {
    socket: PathBuf,
    connection: Option<UnixStream>,
}

impl GoClient {
    pub fn new(socket: &Path) -> GoClient {
        GoClient { socket: socket.to_owned(), connection: None }
    }

    /// Sends a request (with a JSON body for PUT and PATCH) and reads the answer; an error when the
    /// socket cannot be reached or the connection breaks (a poll loop retries on that).
    pub fn try_send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<(u16, String)> {
        if self.connection.as_ref().is_some_and(closed_by_peer) {
            self.connection = None;
        }
        if self.connection.is_none() {
            let stream = UnixStream::connect(&self.socket)?;
            stream.set_read_timeout(Some(Duration::from_secs(20)))?;
            self.connection = Some(stream);
        }
        let stream = self.connection.as_mut().expect("connected");
        // Go writes Host and User-Agent first, then Content-Length, then the request's own
        // headers sorted by name, then the transport's Accept-Encoding.
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: Go-http-client/1.1\r\n");
        if let Some(body) = body {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("Accept: application/json\r\n");
        if body.is_some() {
            head.push_str("Content-Type: application/json\r\n");
        }
        head.push_str("Accept-Encoding: gzip\r\n\r\n");
        let result = write_and_read(stream, head.as_bytes(), body.unwrap_or_default().as_bytes());
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    /// [`GoClient::try_send`] that fails the test when the API cannot be reached.
    #[track_caller]
    pub fn send(&mut self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        self.try_send(method, path, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Sends a request the tool treats as failed unless it gets 2xx, and asserts that status.
    #[track_caller]
    pub fn expect(&mut self, method: &str, path: &str, body: Option<&str>, status: u16) -> String {
        let (got, text) = self.send(method, path, body);
        assert_eq!(got, status, "{method} {path} {}: {text}", body.unwrap_or_default());
        text
    }
}

fn closed_by_peer(stream: &UnixStream) -> bool {
    let mut byte = [0u8; 1];
    // SAFETY: recv writes at most one byte into `byte`, which outlives the call.
    let n = unsafe {
        libc::recv(stream.as_raw_fd(), byte.as_mut_ptr().cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT)
    };
    n == 0 || (n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock)
}

fn write_and_read(stream: &mut UnixStream, head: &[u8], body: &[u8]) -> std::io::Result<(u16, String)> {
    stream.write_all(head)?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            read => read?,
        };
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed mid-response",
            ));
        }
        response.extend_from_slice(&chunk[..n]);
        let Some(head_end) = response.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&response[..head_end]).into_owned();
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>())
            })
            .transpose()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?
            .unwrap_or(0);
        if response.len() >= head_end + 4 + length {
            let status = head
                .get(9..12)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, head.clone()))?;
            return Ok((
                status,
                String::from_utf8_lossy(&response[head_end + 4..head_end + 4 + length]).into_owned(),
            ));
        }
    }
}

/// A named pipe the tool creates and reads (Kata's log and metrics FIFOs, the Go SDK's log
/// FIFO): opened read-only and non-blocking before the VMM starts, as `containerd/fifo` does,
/// and drained by a thread into a buffer until [`FifoReader::finish`].
pub struct FifoReader {
    text: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FifoReader {
    /// Creates the FIFO at `path` (mode `mode`) and starts reading it.
    pub fn create(path: &Path, mode: u32) -> FifoReader {
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path, which lives for the call.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), mode) }, 0, "mkfifo {}", path.display());
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .expect("open the FIFO for reading");
        let text = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (text, stop) = (text.clone(), stop.clone());
            std::thread::spawn(move || drain(file, &text, &stop))
        };
        FifoReader { text, stop, thread: Some(thread) }
    }

    /// What has been read so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.text.lock().unwrap()).into_owned()
    }

    /// Stops reading (after what is in the pipe now) and returns everything read.
    pub fn finish(mut self) -> String {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        self.text()
    }
}

/// Reads `file` until told to stop, waiting for data with poll(2) in 100 ms steps so the stop
/// flag is seen even when no writer ever comes.
fn drain(mut file: File, text: &Mutex<Vec<u8>>, stop: &AtomicBool) {
    let mut chunk = [0u8; 4096];
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let mut poll = libc::pollfd { fd: file.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll reads and writes the one pollfd it is given, which outlives the call.
        unsafe { libc::poll(&mut poll, 1, 100) };
        loop {
            match file.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => text.lock().unwrap().extend_from_slice(&chunk[..n]),
                Err(_) => break,
            }
        }
        if stopping {
            return;
        }
    }
}

/// The vCPU threads of process `pid` the way Kata's `GetThreadIDs` finds them: every task whose
/// `comm` starts with `fc_vcpu`, the rest (trimmed) its index. Panics on a name Kata rejects.
pub fn vcpu_threads_as_kata_finds_them(pid: u32) -> std::collections::BTreeMap<u32, u32> {
    let mut vcpus = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("the task directory").flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let comm = comm.trim_end_matches('\n');
        let Some(rest) = comm.strip_prefix("fc_vcpu") else { continue };
        let index = rest.trim().parse().unwrap_or_else(|e| panic!("Invalid fc thread info: {comm:?}: {e}"));
        let tid = task.file_name().to_string_lossy().parse().unwrap();
        vcpus.insert(index, tid);
    }
    vcpus
}

/// The targets of process `pid`'s open descriptors (to see which files the VMM holds).
pub fn open_files(pid: u32) -> Vec<PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.flatten().filter_map(|fd| std::fs::read_link(fd.path()).ok()).collect())
        .unwrap_or_default()
}

/// Polls `GET /` every 10 ms, as Kata's `waitVMMRunning` does (connection errors are retried),
/// until the instance's state is `Running`; panics after `timeout` (Kata's is 10 s; this host is
/// slower, so callers pass more).
pub fn wait_until_running(client: &mut GoClient, timeout: Duration) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok((200, body)) = client.try_send("GET", "/", None) {
            let info: serde_json::Value = serde_json::from_str(&body).expect("GET / answers JSON");
            if info["state"] == "Running" {
                return info;
            }
        }
        assert!(Instant::now() < deadline, "the instance did not report Running within {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits (bounded) for process `pid` to end after a signal, as Kata's `WaitLocalProcess` and
/// flintlock's `WaitWithContext` do, by polling whether it still exists.
pub fn signal_and_wait(
    child: &mut std::process::Child,
    signal: libc::c_int,
    limit: Duration,
) -> std::process::ExitStatus {
    // SAFETY: kill has no memory-safety preconditions; the child is not reaped yet.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
    use wait_timeout::ChildExt;
    child
        .wait_timeout(limit)
        .expect("wait")
        .unwrap_or_else(|| panic!("the VMM did not exit within {limit:?} of signal {signal}"))
}
