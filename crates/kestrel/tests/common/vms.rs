//! Driving a test daemon's VM API with raw HTTP (common::api), and looking at its VMM processes.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::daemon::Daemon;

/// One request to the daemon: the status and the JSON body (`Null` when empty).
pub fn call(daemon: &Daemon, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, text) = super::api::request(&daemon.socket, method, path, body);
    let value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"))
    };
    (status, value)
}

/// A request that must answer `expected`; its body.
#[track_caller]
pub fn expect(daemon: &Daemon, method: &str, path: &str, body: &str, expected: u16) -> Value {
    let (status, value) = call(daemon, method, path, body);
    assert_eq!(status, expected, "{method} {path} {body}: {value}\ndaemon log:\n{}", daemon.log());
    value
}

/// A definition of the hello guest with `cmdline` (`exit=hang` stays up).
pub fn hello(name: &str, cmdline: &str) -> String {
    serde_json::json!({ "name": name, "kernel": guests::HELLO, "cmdline": cmdline, "memory_mib": 32 })
        .to_string()
}

/// Defines and starts a hello guest that stays up; its info.
pub fn running_hang(daemon: &Daemon, name: &str) -> Value {
    expect(daemon, "POST", "/v1/vms", &hello(name, "exit=hang"), 201);
    expect(daemon, "POST", &format!("/v1/vms/{name}/start"), "", 200)
}

/// Waits (polling, bounded) until the VM's info satisfies `condition`; the info.
#[track_caller]
pub fn wait_for_vm(daemon: &Daemon, name: &str, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, info) = call(daemon, "GET", &format!("/v1/vms/{name}"), "");
        if status == 200 && condition(&info) {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "VM {name} never became {what}: {info}\ndaemon log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `kestrel vmm` processes whose API socket is under `state_dir`, as PIDs.
pub fn vmm_pids(state_dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let state = state_dir.as_os_str().as_encoded_bytes();
        if args.get(1) == Some(&&b"vmm"[..]) && args.iter().any(|a| a.starts_with(state)) {
            // A zombie (reaped soon) is not a running VMM.
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let zombie = stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            if !zombie {
                pids.push(pid);
            }
        }
    }
    pids.sort_unstable();
    pids
}

/// Waits (bounded) until the VMMs under `state_dir` are exactly `expected`.
#[track_caller]
pub fn wait_for_vmms(state_dir: &Path, expected: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pids = vmm_pids(state_dir);
        if pids.len() == expected {
            return pids;
        }
        assert!(Instant::now() < deadline, "expected {expected} VMMs, found {pids:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The events the daemon keeps, as (kind, object, detail).
pub fn events(daemon: &Daemon) -> Vec<(String, String, String)> {
    use std::io::{Read, Write};
    // The answer is streamed (chunked); read it whole on a connection the daemon then closes.
    let mut stream = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.write_all(b"GET /v1/events HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, mut rest) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut body = String::new();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        loop {
            let (size, after) = rest.split_once("\r\n").expect("a chunk size");
            let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
            if size == 0 {
                break;
            }
            body.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
    } else {
        body.push_str(rest);
    }
    body.lines()
        .map(|line| {
            let event: Value = serde_json::from_str(line).unwrap();
            let field = |f: &str| event[f].as_str().unwrap_or_default().to_owned();
            (field("kind"), field("object"), field("detail"))
        })
        .collect()
}
