//! Tier 3: virtio-vsock between host processes and the kit's Linux (`/bin/vsock-test`, built from
//! `kit/vsock-test.c`), both ways in one boot, with enough data to run through the credit windows
//! of both sides several times.

mod common;

use std::io::{BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Stdio;
use std::thread;

use common::kit::*;
use common::*;

/// Bytes sent each way: several times both sides' receive buffers (Kestrel's 128 KiB, Linux's
/// 256 KiB), so each direction waits for credit updates.
const BYTES: usize = 512 * 1024;
const GUEST_LISTEN_PORT: u32 = 5000;
const HOST_LISTEN_PORT: u32 = 6000;

/// The pattern `vsock-test` sends (byte i is i * 7 mod 256) and its byte sum.
fn pattern(count: usize) -> (Vec<u8>, u64) {
    let bytes: Vec<u8> = (0..count).map(|i| (i * 7) as u8).collect();
    let sum = bytes.iter().map(|&b| u64::from(b)).sum();
    (bytes, sum)
}

#[test]
fn linux_exchanges_data_with_host_processes_over_vsock_both_ways() {
    let Some(kit) = kit_available() else { return };
    let _serial = one_boot_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let (data, sum) = pattern(BYTES);

    // Guest → host: whoever listens on <uds>_6000 gets the guest's connections to host port 6000.
    let listener = UnixListener::bind(format!("{}_{HOST_LISTEN_PORT}", uds.display())).unwrap();
    let host_server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut received = Vec::new();
        stream.read_to_end(&mut received).unwrap();
        let received_sum: u64 = received.iter().map(|&b| u64::from(b)).sum();
        stream
            .write_all(format!("host read {} bytes, sum {received_sum}\n", received.len()).as_bytes())
            .unwrap();
    });

    let script =
        format!("vsock-test listen {GUEST_LISTEN_PORT} && vsock-test connect {HOST_LISTEN_PORT} {BYTES}");
    let mut command = linux_script_command(&kit, &script);
    command.args(["--serial", "stdio", "--vsock", &format!("cid=3,uds={}", uds.display())]);
    let mut child =
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
    let watchdog = Watchdog::within(&child, LINUX_LIMIT);
    let mut console = BufReader::new(child.stdout.take().unwrap());
    let mut seen = wait_for_line(&mut console, &format!("vsock-test: listening on {GUEST_LISTEN_PORT}"));

    // Host → guest, Firecracker-style: CONNECT through the device's socket, then the bytes.
    let mut stream = UnixStream::connect(&uds).unwrap();
    stream.set_read_timeout(Some(LINUX_LIMIT)).unwrap();
    stream.write_all(format!("CONNECT {GUEST_LISTEN_PORT}\n").as_bytes()).unwrap();
    let mut ok = Vec::new();
    let mut byte = [0u8];
    while stream.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        ok.push(byte[0]);
    }
    let ok = String::from_utf8(ok).unwrap();
    let host_port: u32 =
        ok.strip_prefix("OK ").and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{ok:?}"));
    assert!(host_port >= 1 << 30, "{ok}");
    stream.write_all(&data).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, format!("guest read {BYTES} bytes, sum {sum}\n"));

    console.read_to_string(&mut seen).unwrap();
    let status = child.wait().unwrap();
    drop(watchdog);
    let expected = format!("vsock-test: host replied: host read {BYTES} bytes, sum {sum}");
    assert!(seen.lines().any(|l| l.trim() == expected), "no {expected:?} in:\n{seen}");
    assert!(seen.contains("kestrel-kit: command exited 0"), "{seen}");
    assert_eq!(status.code(), Some(0), "{seen}");
    host_server.join().unwrap();
}
