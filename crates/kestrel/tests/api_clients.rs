//! `kestrel vmm`'s API socket against hostile clients: a flood of idle connections and slowloris
//! clients must not lock a real client out, and the refusals must not flood the VMM's log. No VM
//! is started: `GET /` and `PUT /machine-config` are served before `InstanceStart`.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use common::api::{request, spawn_vmm, start_vmm, vmm_command};
use common::{wait_with_limit, Watchdog};

/// The listener's connection cap (`api::listener::MAX_CONNECTIONS`); each connection holds two
/// descriptors in the VMM (its socket and the handle that can shut it down).
const CAP: usize = 64;
/// The listener's per-request deadline (`api::listener::REQUEST_DEADLINE`).
const DEADLINE: Duration = Duration::from_secs(5);
const IDLE_CLIENTS: usize = 1000;

/// Raises this process's open-file soft limit to the hard limit, for the flood's descriptors.
fn raise_fd_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the struct it is given, which lives for the call.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit only reads the struct it is given.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    assert!(limit.rlim_cur >= (IDLE_CLIENTS + 100) as u64, "the hard limit {} is too low", limit.rlim_cur);
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).expect("the VMM's fd directory").count()
}

/// Opens `IDLE_CLIENTS` connections that never send anything; returns them and the most
/// descriptors the VMM held, sampled as they were opened.
fn flood(socket: &Path, pid: u32) -> (Vec<UnixStream>, usize) {
    let mut most = 0;
    let idle: Vec<UnixStream> = (0..IDLE_CLIENTS)
        .map(|i| {
            if i % 50 == 0 {
                most = most.max(open_fds(pid));
            }
            UnixStream::connect(socket).expect("connect an idle client")
        })
        .collect();
    (idle, most)
}

/// `GET /` from a fresh client: its status and how long it took.
fn timed_get(socket: &Path) -> (u16, Duration) {
    let start = Instant::now();
    let (status, _) = request(socket, "GET", "/", "");
    (status, start.elapsed())
}

/// Whether the server has closed `stream` (end of file, or a reset) without answering.
fn closed_by_server(mut stream: &UnixStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(n) => n == 0,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

fn kill(mut child: Child) -> String {
    child.kill().unwrap();
    String::from_utf8_lossy(&wait_with_limit(child).stderr).into_owned()
}

#[test]
fn a_thousand_idle_connections_do_not_lock_out_a_real_client() {
    raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let child = start_vmm(&socket);
    let _watchdog = Watchdog::within(&child, Duration::from_secs(30));
    let pid = child.id();
    let baseline = open_fds(pid);
    let bound = baseline + 2 * CAP + 2;

    let (idle, most_during) = flood(&socket, pid);
    // The listener accepts in order, so by the time this client is answered all the idle ones
    // have been accepted and all but the newest evicted.
    let (status, took) = timed_get(&socket);
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(3), "GET / took {took:?} behind {IDLE_CLIENTS} idle connections");
    assert_eq!(request(&socket, "PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 64}"#).0, 204);
    let after = open_fds(pid);
    assert!(most_during <= bound && after <= bound, "{most_during} and {after} fds; the cap allows {bound}");

    // The oldest were closed to make room; the newest (less the two real clients') are still open.
    let closed = idle.iter().filter(|stream| closed_by_server(stream)).count();
    assert!(closed >= IDLE_CLIENTS - CAP, "only {closed} of {IDLE_CLIENTS} idle connections were closed");
    assert!(closed < IDLE_CLIENTS, "every idle connection was closed");
    kill(child);
}

#[test]
fn refusals_of_a_thousand_idle_connections_log_a_bounded_number_of_lines() {
    raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let mut command = vmm_command(&socket);
    command.args(["--log-level", "warn"]);
    let child = spawn_vmm(command, &socket);
    let _watchdog = Watchdog::within(&child, Duration::from_secs(30));
    let (idle, _) = flood(&socket, child.id());
    assert_eq!(timed_get(&socket).0, 200);
    drop(idle);
    let stderr = kill(child);
    let evictions = stderr.lines().filter(|line| line.contains("to make room")).count();
    // Five lines per kind per 10 s; the flood may straddle two intervals.
    assert!((1..=10).contains(&evictions), "{evictions} eviction lines:\n{stderr}");
    assert!(stderr.lines().count() <= 20, "the log was flooded:\n{stderr}");
    assert!(
        stderr.contains("more suppressed for up to 10 s"),
        "the log does not say lines were left out:\n{stderr}"
    );
}

/// Sends a request head that never ends, one byte a second (saying so on `started` after the
/// second byte); returns when the server closed the connection and what it answered first.
fn slowloris(socket: &Path, started: std::sync::mpsc::Sender<()>) -> (Duration, Vec<u8>) {
    let mut started = Some(started);
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.write_all(b"G").unwrap();
    let start = Instant::now();
    // The pacing: one second between bytes, unless the server answers or closes first.
    stream.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut answer = Vec::new();
    let mut head = b"ET / HTTP/1.1\r\nX-Slow: ".iter().chain(std::iter::repeat(&b'a'));
    loop {
        let mut chunk = [0u8; 1024];
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if stream.write_all(&[*head.next().unwrap()]).is_err() {
                    break;
                }
                if let Some(started) = started.take() {
                    let _ = started.send(());
                }
            }
            // A child's exit interrupts the read: wait-timeout catches SIGCHLD in this process.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
        assert!(start.elapsed() < DEADLINE * 3, "the slow client was never closed");
    }
    (start.elapsed(), answer)
}

#[test]
fn slowloris_clients_are_closed_at_the_deadline_while_a_real_client_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let child = start_vmm(&socket);
    let _watchdog = Watchdog::within(&child, Duration::from_secs(30));
    let (started_tx, started) = std::sync::mpsc::channel();
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let (socket, started) = (socket.clone(), started_tx.clone());
            std::thread::spawn(move || slowloris(&socket, started))
        })
        .collect();
    // Every slow client has sent a second byte: they are all mid-request.
    for _ in 0..slow.len() {
        started.recv_timeout(Duration::from_secs(10)).expect("a slow client started");
    }
    let (status, took) = timed_get(&socket);
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(3), "GET / took {took:?} behind the slow clients");
    assert_eq!(request(&socket, "PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 64}"#).0, 204);

    for client in slow {
        let (closed_after, answer) = client.join().unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
        // The deadline runs from the first byte; a timeout restarted by every byte would never fire.
        assert!(closed_after < DEADLINE + Duration::from_secs(2), "closed after {closed_after:?}");
        assert!(closed_after >= DEADLINE - Duration::from_secs(1), "closed early, after {closed_after:?}");
    }
    kill(child);
}
