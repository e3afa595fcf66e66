//! Tier 3: virtio-net on a tap, with the kit's Linux: TCP with a megabyte each way. (The MAC and a
//! ping are part of the one boot per transport in `linux_devices.rs`.) The test makes its own
//! network namespace (see `common/netns.rs`) with a tap at 10.231.2.1/24, runs Kestrel inside it,
//! and gives the guest 10.231.2.2: the traffic never leaves the namespace.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::kit::*;
use common::netns::NetNamespace;
use common::*;

/// Bytes each way: enough for full-sized TCP segments and, with the offloads Linux accepts, 64 KiB
/// segmentation-offload frames in both directions.
const LINES: u32 = 150_000;

/// What `seq 1 LINES` prints (the guest sends it).
fn counting_up() -> Vec<u8> {
    (1..=LINES).flat_map(|n| format!("{n}\n").into_bytes()).collect()
}

/// What `seq LINES -1 1` prints (the host sends it; the guest checks it with cmp).
fn counting_down() -> Vec<u8> {
    (1..=LINES).rev().flat_map(|n| format!("{n}\n").into_bytes()).collect()
}

#[test]
fn linux_exchanges_a_megabyte_each_way_with_the_host_over_tcp() {
    let Some(kit) = kit_available() else { return };
    let Some(namespace) = NetNamespace::with_tap("ktap-tcp", "10.231.2.1/24") else { return };
    let _serial = one_boot_at_a_time();
    eprintln!("tier 3: Linux (kit), virtio-net on a tap in {}, TCP both ways", namespace.name());

    // The host's server, on a thread inside the namespace, listens before the guest boots.
    let (listening_tx, listening) = mpsc::channel();
    let server = thread::scope(|scope| {
        let server = scope.spawn(|| {
            namespace.enter_on_this_thread();
            let listener = TcpListener::bind("10.231.2.1:5000").expect("bind in the namespace");
            listening_tx.send(()).unwrap();
            serve_once(&listener)
        });
        listening.recv_timeout(Duration::from_secs(10)).expect("the server did not start");

        let script = "seq 1 150000 > /tmp/up && ip addr add 10.231.2.2/24 dev eth0 && ip link set eth0 up \
                      && nc 10.231.2.1 5000 < /tmp/up > /tmp/down; wc -c < /tmp/down; \
                      seq 150000 -1 1 | cmp - /tmp/down && echo kestrel-net: received intact";
        let mut command = linux_script_command(&kit, script);
        command.args(["--net", "tap=ktap-tcp"]);
        let output = run_to_end_within(namespace.wrap(&command), b"", LINUX_LIMIT);
        (output, server.join().expect("server thread"))
    });
    let (output, received) = server;
    assert_status(&output, 0);
    assert_command_exited(&output, 0);
    let received = received.unwrap_or_else(|e| panic!("host side: {e}\n{}", stdout(&output)));
    assert!(received == counting_up(), "the host received {} bytes, not what the guest sent", received.len());
    let lines = lines_after_init(&output);
    assert!(lines.iter().any(|l| l == "kestrel-net: received intact"), "{}", stdout(&output));
}

/// Accepts one connection (waiting at most the Linux boot limit), sends [`counting_down`] while
/// reading what the guest sends until it closes its side, and returns that.
fn serve_once(listener: &TcpListener) -> Result<Vec<u8>, String> {
    let mut poll = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let limit_ms = LINUX_LIMIT.as_millis() as libc::c_int;
    // SAFETY: one valid pollfd, and its count.
    if unsafe { libc::poll(&mut poll, 1, limit_ms) } != 1 {
        return Err("the guest did not connect".into());
    }
    let (mut stream, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
    for timeout in [stream.set_read_timeout(Some(LINUX_LIMIT)), stream.set_write_timeout(Some(LINUX_LIMIT))] {
        timeout.map_err(|e| format!("socket timeout: {e}"))?;
    }
    let mut sender = stream.try_clone().map_err(|e| format!("clone the socket: {e}"))?;
    // Both ways at once: each side's buffers are far smaller than a megabyte.
    let sending = thread::spawn(move || {
        sender.write_all(&counting_down())?;
        sender.shutdown(Shutdown::Write)
    });
    let mut received = Vec::new();
    let read = stream.read_to_end(&mut received);
    sending.join().expect("sender thread").map_err(|e| format!("send: {e}"))?;
    read.map_err(|e| format!("receive after {} bytes: {e}", received.len()))?;
    Ok(received)
}
