//! A tiny std-only HTTP client for `kestrel vmm`'s API socket, and the VMM's start.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::kestrel;

/// Sends raw request bytes on a fresh connection; returns the status and body of the response.
pub fn raw(socket: &Path, request: &[u8]) -> (u16, String) {
    let mut stream = UnixStream::connect(socket).expect("connect to the API socket");
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.write_all(request).expect("send request");
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    // Read until the whole response (head + Content-Length bytes) is in.
    loop {
        // A child's exit interrupts the read: wait-timeout catches SIGCHLD in the test process.
        let n = match stream.read(&mut chunk) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            read => read.expect("read response"),
        };
        response.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&response).into_owned();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length = text[..head_end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if response.len() >= head_end + 4 + length {
                let status = text[9..12].parse().unwrap();
                return (status, text[head_end + 4..head_end + 4 + length].to_owned());
            }
        }
        assert!(n > 0, "connection closed mid-response: {text:?}");
    }
}

pub fn request(socket: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    raw(socket, request.as_bytes())
}

/// `kestrel vmm --api-sock socket` with stdin closed and stdout and stderr piped.
pub fn vmm_command(socket: &Path) -> Command {
    let mut command = kestrel();
    command
        .arg("vmm")
        .arg("--api-sock")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Starts `command` (a `kestrel vmm`) and waits for its socket.
pub fn spawn_vmm(mut command: Command, socket: &Path) -> Child {
    let child = command.spawn().expect("start kestrel vmm");
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(socket).is_err() {
        assert!(Instant::now() < deadline, "the API socket did not appear");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// Starts `kestrel vmm` and waits for its socket.
pub fn start_vmm(socket: &Path) -> Child {
    spawn_vmm(vmm_command(socket), socket)
}

/// Starts `kestrel vmm` with more arguments (`--serial file:PATH`, say) and waits for its socket.
/// Its stdin is a pipe: with `--serial stdio` the test types into the guest console.
pub fn start_vmm_with(socket: &Path, args: &[&str]) -> Child {
    let mut command = vmm_command(socket);
    command.args(args).stdin(Stdio::piped());
    spawn_vmm(command, socket)
}

/// Asserts a 400 whose `fault_message` contains `expected`.
#[track_caller]
pub fn assert_fault(response: (u16, String), expected: &str) {
    assert_eq!(response.0, 400, "{}", response.1);
    let body: serde_json::Value = serde_json::from_str(&response.1).expect("a JSON error body");
    let fault = body["fault_message"].as_str().unwrap_or_else(|| panic!("no fault_message: {}", response.1));
    assert!(fault.contains(expected), "{fault:?} does not contain {expected:?}");
}

/// Flushes the VMM's metrics (to `metrics`, set by `PUT /metrics`) until the counter
/// `section.key`, summed over the file's lines, is above zero — a device saying it throttled —
/// and fails after 20 s.
#[allow(dead_code)] // Not every test binary that shares this module waits for a metric.
pub fn wait_for_metric(socket: &Path, metrics: &Path, section: &str, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert_eq!(request(socket, "PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#).0, 204);
        let text = std::fs::read_to_string(metrics).unwrap();
        let total: u64 = text
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .filter_map(|line| line[section][key].as_u64())
            .sum();
        if total > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{section}.{key} never rose above 0: {text}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A `kestrel vmm` serving its API on `socket`, with its serial console in the file `log`;
/// killed and reaped when dropped, and killed by its watchdog if the test hangs.
pub struct ApiVmm {
    pub child: Child,
    _watchdog: super::Watchdog,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl ApiVmm {
    /// `kestrel vmm` on `<dir>/<name>.sock` with `--serial file:<dir>/<name>.log` and `args`,
    /// killed after `limit`.
    pub fn start(dir: &Path, name: &str, args: &[&str], limit: Duration) -> ApiVmm {
        let socket = dir.join(format!("{name}.sock"));
        let log = dir.join(format!("{name}.log"));
        let serial = format!("file:{}", log.display());
        let child = start_vmm_with(&socket, &[&["--serial", serial.as_str()], args].concat());
        ApiVmm::adopt(child, socket, log, limit)
    }

    /// A VMM the caller started itself (in a namespace, say), serving on `socket`.
    pub fn adopt(child: Child, socket: PathBuf, log: PathBuf, limit: Duration) -> ApiVmm {
        let watchdog = super::Watchdog::within(&child, limit);
        ApiVmm { child, _watchdog: watchdog, socket, log }
    }

    /// Makes a request that must answer 204.
    #[track_caller]
    pub fn ok(&self, method: &str, path: &str, body: &str) {
        let (status, reply) = request(&self.socket, method, path, body);
        assert_eq!(status, 204, "{method} {path}: {reply}");
    }

    /// `GET path`, which must answer 200 with JSON.
    #[track_caller]
    pub fn get(&self, path: &str) -> serde_json::Value {
        let (status, reply) = request(&self.socket, "GET", path, "");
        assert_eq!(status, 200, "GET {path}: {reply}");
        serde_json::from_str(&reply).unwrap()
    }
}

impl Drop for ApiVmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
