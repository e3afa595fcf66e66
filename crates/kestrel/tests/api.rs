//! `kestrel vmm --api-sock`: the Firecracker-compatible API over its Unix socket, driven by a tiny
//! std-only HTTP client; and `kestrel run --config`.

mod common;

use std::io::{BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::api::{assert_fault, raw, request, start_vmm, start_vmm_with};
use common::{kestrel, kvm_available, wait_for_line, wait_with_limit, Watchdog};

/// A number field of a JSON body as the API writes it (`"name":123`, no spaces).
fn number(body: &str, name: &str) -> Option<u64> {
    let start = body.find(&format!("\"{name}\":"))? + name.len() + 3;
    body[start..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Repeats `GET path` until its body satisfies `done` (the guest's device has caught up); panics
/// past a bound.
fn get_until(socket: &Path, path: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = request(socket, "GET", path, "");
        assert_eq!(status, 200, "GET {path}: {body}");
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "GET {path} did not reach the expected state: {body}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn configure_and_boot_the_hello_guest_through_the_socket() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let child = start_vmm(&socket);
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600);

    let (status, info) = request(&socket, "GET", "/", "");
    assert_eq!(status, 200);
    assert!(info.contains("\"state\":\"Not started\""), "{info}");
    let boot = format!(r#"{{"kernel_image_path": "{}", "boot_args": "exit=poweroff"}}"#, guests::HELLO);
    assert_eq!(request(&socket, "PUT", "/boot-source", &boot).0, 204);
    assert_eq!(request(&socket, "PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 64}"#).0, 204);
    let (status, machine) = request(&socket, "GET", "/machine-config", "");
    assert_eq!(status, 200);
    assert!(machine.contains("\"mem_size_mib\":64"), "{machine}");

    // Malformed requests: 400 with a message, and the server carries on.
    assert_fault(request(&socket, "PUT", "/machine-config", "{"), "Invalid request body");
    assert_fault(
        request(&socket, "PUT", "/machine-config", r#"{"vcpu_count": "1", "mem_size_mib": 64}"#),
        "invalid type",
    );
    assert_fault(
        request(&socket, "PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 64, "x": 1}"#),
        "unknown field",
    );
    assert_fault(
        request(&socket, "PUT", "/machine-config", r#"{"vcpu_count": 0, "mem_size_mib": 64}"#),
        "vCPU number",
    );
    assert_fault(request(&socket, "GET", "/nowhere", ""), "Invalid request method and/or path");
    assert_fault(request(&socket, "PUT", "/snapshot/create", "{}"), "missing field");
    assert_fault(raw(&socket, b"BREW / HTTP/1.1\r\n\r\n"), "Unsupported HTTP method");
    assert_fault(raw(&socket, b"garbage\r\n\r\n"), "Invalid request line");
    assert_fault(
        raw(&socket, b"PUT /vsock HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n"),
        "larger than the limit",
    );

    assert_eq!(request(&socket, "PUT", "/actions", r#"{"action_type": "InstanceStart"}"#).0, 204);
    // The API keeps answering while the guest runs (or has just ended).
    if let Ok(mut stream) = UnixStream::connect(&socket) {
        let _ = stream.write_all(b"PUT /boot-source HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}");
    }
    let output = wait_with_limit(child);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("exit: poweroff"), "{stdout}");
}

/// The scheduler state (`R`, `S`, ...) of the thread of process `pid` named `name`.
fn thread_state(pid: u32, name: &str) -> Option<char> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            // The state follows the parenthesised name, which may itself hold spaces.
            return stat.rsplit_once(')')?.1.trim_start().chars().next();
        }
    }
    None
}

/// Re-reads the thread's state until it is `expected`; panics past a bound.
fn wait_for_thread_state(pid: u32, name: &str, expected: char) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = thread_state(pid, name);
        if state == Some(expected) {
            return;
        }
        assert!(Instant::now() < deadline, "thread {name} is in state {state:?}, not {expected}");
        std::thread::yield_now();
    }
}

#[test]
fn patch_vm_pauses_and_resumes_the_vcpus() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let mut child = start_vmm(&socket);
    let watchdog = Watchdog::new(&child);
    let paused = r#"{"state": "Paused"}"#;
    let resumed = r#"{"state": "Resumed"}"#;
    assert_fault(request(&socket, "PATCH", "/vm", paused), "not supported before starting the microVM");
    assert_fault(request(&socket, "PATCH", "/vm", r#"{"state": "Stopped"}"#), "unknown variant");
    assert_fault(request(&socket, "PATCH", "/vm", "{"), "Invalid request body");
    // The hello guest spinning at CPL3 keeps its vCPU thread running.
    let boot = format!(r#"{{"kernel_image_path": "{}", "boot_args": "exit=hang"}}"#, guests::HELLO);
    assert_eq!(request(&socket, "PUT", "/boot-source", &boot).0, 204);
    assert_eq!(request(&socket, "PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 64}"#).0, 204);
    assert_eq!(request(&socket, "PUT", "/actions", r#"{"action_type": "InstanceStart"}"#).0, 204);
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    wait_for_line(&mut reader, "exit: hang");
    let pid = child.id();
    wait_for_thread_state(pid, "fc_vcpu 0", 'R');

    assert_eq!(request(&socket, "PATCH", "/vm", paused).0, 204);
    wait_for_thread_state(pid, "fc_vcpu 0", 'S');
    assert!(request(&socket, "GET", "/", "").1.contains("\"state\":\"Paused\""));
    // Like Firecracker: pausing a paused VM is fine.
    assert_eq!(request(&socket, "PATCH", "/vm", paused).0, 204);
    assert_fault(request(&socket, "PATCH", "/vm", r#"{"state": "Stopped"}"#), "unknown variant");
    assert_eq!(request(&socket, "PATCH", "/vm", resumed).0, 204);
    wait_for_thread_state(pid, "fc_vcpu 0", 'R');
    assert!(request(&socket, "GET", "/", "").1.contains("\"state\":\"Running\""));

    // Stopping a paused VM works: the parked vCPU ends.
    assert_eq!(request(&socket, "PATCH", "/vm", paused).0, 204);
    wait_for_thread_state(pid, "fc_vcpu 0", 'S');
    // SAFETY: kill with a valid pid and signal number has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) }, 0);
    child.stdout = Some(reader.into_inner());
    drop(watchdog);
    let output = wait_with_limit(child);
    assert_eq!(
        output.status.code(),
        Some(128 + libc::SIGTERM),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn configuration_after_start_is_refused() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let child = start_vmm(&socket);
    // A guest that waits: the hello guest with exit=wait is not available everywhere, so boot
    // one that resets only after the API has been checked: a kernel line the guest ignores and
    // a reset at the end. The check races with the guest's end, so it accepts either answer.
    let boot = format!(r#"{{"kernel_image_path": "{}", "boot_args": "exit=reset"}}"#, guests::HELLO);
    assert_eq!(request(&socket, "PUT", "/boot-source", &boot).0, 204);
    assert_eq!(request(&socket, "PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 64}"#).0, 204);
    assert_eq!(request(&socket, "PUT", "/actions", r#"{"action_type": "InstanceStart"}"#).0, 204);
    if let Ok(mut stream) = UnixStream::connect(&socket) {
        let put = format!("PUT /boot-source HTTP/1.1\r\nContent-Length: {}\r\n\r\n{boot}", boot.len());
        let mut response = String::new();
        if stream.write_all(put.as_bytes()).is_ok()
            && stream.read_to_string(&mut response).is_ok()
            && !response.is_empty()
        {
            assert!(response.contains("not supported after starting the microVM"), "{response}");
        }
    }
    let output = wait_with_limit(child);
    assert_eq!(output.status.code(), Some(3), "stderr: {}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn a_live_socket_is_not_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let mut first = start_vmm(&socket);
    let second = kestrel()
        .arg("vmm")
        .arg("--api-sock")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = wait_with_limit(second);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("in use"));
    first.kill().unwrap();
    first.wait().unwrap();
    // The first left a stale socket, which a new VMM replaces.
    let mut third = start_vmm(&socket);
    assert_eq!(request(&socket, "GET", "/", "").0, 200);
    third.kill().unwrap();
    third.wait().unwrap();
}

#[test]
fn run_with_a_firecracker_config_file() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vm.json");
    let config = format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "exit=poweroff"}},
            "machine-config": {{"vcpu_count": 2, "mem_size_mib": 64}}}}"#,
        guests::HELLO
    );
    std::fs::write(&file, config).unwrap();
    let mut command = kestrel();
    command.arg("run").arg("--config").arg(&file);
    let output = common::run_to_end(command, b"");
    assert_eq!(output.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("exit: poweroff"));

    std::fs::write(&file, r#"{"boot-source": {"kernel_image_path": "/nonexistent"}}"#).unwrap();
    let mut command = kestrel();
    command.arg("run").arg("--config").arg(&file);
    let output = common::run_to_end(command, b"");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("kernel file cannot be opened"));

    let mut command = kestrel();
    command.arg("run").arg("--config").arg(&file).arg("--kernel").arg(guests::HELLO);
    assert_eq!(common::run_to_end(command, b"").status.code(), Some(2));
}

/// `SendCtrlAltDel`: the hello guest, waiting on the i8042 with IRQ 1 routed to its local APIC,
/// finds the interrupt pending and reads Ctrl, Alt, Delete in scan code set 2; then it resets, as
/// Linux reboots on Ctrl+Alt+Del, and the VMM ends with the reset status.
#[test]
fn send_ctrl_alt_del_types_the_keys_and_raises_irq_1() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let mut child = start_vmm(&socket);
    let watchdog = Watchdog::new(&child);
    let action = r#"{"action_type": "SendCtrlAltDel"}"#;
    assert_fault(request(&socket, "PUT", "/actions", action), "not supported before starting the microVM");
    let boot = format!(r#"{{"kernel_image_path": "{}", "boot_args": "exit=ctrl-alt-del"}}"#, guests::HELLO);
    assert_eq!(request(&socket, "PUT", "/boot-source", &boot).0, 204);
    assert_eq!(request(&socket, "PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 64}"#).0, 204);
    assert_eq!(request(&socket, "PUT", "/actions", r#"{"action_type": "InstanceStart"}"#).0, 204);
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut out = wait_for_line(&mut reader, "keyboard: waiting");

    assert_eq!(request(&socket, "PUT", "/actions", action).0, 204);
    reader.read_to_string(&mut out).unwrap();
    drop(watchdog);
    let output = wait_with_limit(child);
    assert_eq!(
        output.status.code(),
        Some(3),
        "stdout: {out}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in
        ["keyboard: irq 1 pending", "keyboard: scan codes 14 11 e0 71", "keyboard: ctrl-alt-del, rebooting"]
    {
        assert!(out.lines().any(|l| l == line), "no line {line:?} in:\n{out}");
    }
}

/// `PATCH /balloon`, `PATCH /balloon/statistics` and `GET /balloon/statistics` with the virtio
/// guest's `balloon_update` test on the other side: the statistics it sends come back through the
/// API, a new interval asks for fresh ones at once, a new target reaches its driver as a
/// configuration change, and `actual` comes back.
fn the_running_balloon_follows_the_api(transport: &str) {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let mut child = start_vmm_with(&socket, &["--transport", transport]);
    let watchdog = Watchdog::new(&child);
    let boot =
        format!(r#"{{"kernel_image_path": "{}", "boot_args": "test=balloon_update"}}"#, guests::VIRTIO);
    assert_eq!(request(&socket, "PUT", "/boot-source", &boot).0, 204);
    assert_eq!(request(&socket, "PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 64}"#).0, 204);
    // An interval the test never waits out: the guest gets a request only when the API asks.
    let balloon = r#"{"amount_mib": 16, "deflate_on_oom": false, "stats_polling_interval_s": 3600}"#;
    assert_eq!(request(&socket, "PUT", "/balloon", balloon).0, 204);
    assert_fault(request(&socket, "GET", "/balloon/statistics", ""), "not supported before starting");
    assert_fault(
        request(&socket, "PATCH", "/balloon", r#"{"amount_mib": 8}"#),
        "not supported before starting",
    );
    assert_eq!(request(&socket, "PUT", "/actions", r#"{"action_type": "InstanceStart"}"#).0, 204);
    let mut reader = BufReader::new(child.stdout.take().unwrap());

    let mut out = wait_for_line(&mut reader, "balloon_update: statistics round 1 sent");
    assert!(out.contains("balloon_update: target 4096 pages\n"), "{out}");
    let stats = get_until(&socket, "/balloon/statistics", |b| number(b, "swap_in") == Some(1));
    assert_eq!(number(&stats, "free_memory"), Some(1 << 20), "{stats}");
    assert_eq!((number(&stats, "target_pages"), number(&stats, "target_mib")), (Some(4096), Some(16)));
    assert_eq!(number(&stats, "actual_pages"), Some(0), "{stats}");
    assert!(!stats.contains("total_memory"), "statistics the guest did not send are left out: {stats}");

    let interval = r#"{"stats_polling_interval_s": 1800}"#;
    assert_eq!(request(&socket, "PATCH", "/balloon/statistics", interval).0, 204);
    out += &wait_for_line(&mut reader, "balloon_update: statistics round 2 sent");
    let stats = get_until(&socket, "/balloon/statistics", |b| number(b, "swap_in") == Some(2));
    assert_eq!(number(&stats, "free_memory"), Some(2 << 20), "{stats}");

    assert_eq!(request(&socket, "PATCH", "/balloon", r#"{"amount_mib": 32}"#).0, 204);
    out += &wait_for_line(&mut reader, "balloon_update: target 8192 pages, actual set");
    let (status, stats) = request(&socket, "GET", "/balloon/statistics", "");
    assert_eq!(status, 200);
    assert_eq!((number(&stats, "target_mib"), number(&stats, "actual_mib")), (Some(32), Some(32)), "{stats}");
    assert_eq!(number(&stats, "actual_pages"), Some(8192), "{stats}");
    let (status, config) = request(&socket, "GET", "/balloon", "");
    assert_eq!(status, 200);
    assert_eq!(
        (number(&config, "amount_mib"), number(&config, "stats_polling_interval_s")),
        (Some(32), Some(1800))
    );

    assert_fault(
        request(&socket, "PATCH", "/balloon/statistics", r#"{"stats_polling_interval_s": 0}"#),
        "cannot be turned on or off",
    );
    assert_fault(
        request(&socket, "PATCH", "/balloon", r#"{"amount_mib": 65}"#),
        "larger than the guest's 64 MiB",
    );
    assert_eq!(request(&socket, "PATCH", "/balloon", r#"{"amount_mib": 0}"#).0, 204);
    reader.read_to_string(&mut out).unwrap();
    drop(watchdog);
    let output = wait_with_limit(child);
    assert_eq!(
        output.status.code(),
        Some(3),
        "stdout: {out}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in ["balloon_update: target 0 pages, done", "balloon_update: ok"] {
        assert!(out.lines().any(|l| l == line), "no line {line:?} in:\n{out}");
    }
}

#[test]
fn the_running_balloon_follows_the_api_on_mmio() {
    the_running_balloon_follows_the_api("mmio");
}

#[test]
fn the_running_balloon_follows_the_api_on_pci() {
    the_running_balloon_follows_the_api("pci");
}

/// `PATCH /drives/{id}` with the virtio guest's `blk_swap` test on the other side: the running
/// disk's new file, of another size, reaches the guest as a configuration change, and the guest
/// reads the new contents up to the new end.
fn a_running_disk_gets_a_new_backing_file(transport: &str) {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = |name: &str, text: &str, sectors: usize| {
        let path = dir.path().join(name);
        let mut bytes = vec![0u8; sectors * 512];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (first, second) =
        (image("first.img", "the first disk", 128), image("second.img", "the second disk", 256));
    let socket = dir.path().join("api.sock");
    let mut child = start_vmm_with(&socket, &["--transport", transport]);
    let watchdog = Watchdog::new(&child);
    let boot = format!(r#"{{"kernel_image_path": "{}", "boot_args": "test=blk_swap"}}"#, guests::VIRTIO);
    assert_eq!(request(&socket, "PUT", "/boot-source", &boot).0, 204);
    assert_eq!(request(&socket, "PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 64}"#).0, 204);
    let drive = format!(
        r#"{{"drive_id": "data", "path_on_host": "{first}", "is_root_device": false, "is_read_only": false}}"#
    );
    assert_eq!(request(&socket, "PUT", "/drives/data", &drive).0, 204);
    let update = format!(r#"{{"drive_id": "data", "path_on_host": "{second}"}}"#);
    assert_fault(request(&socket, "PATCH", "/drives/data", &update), "not supported before starting");
    assert_eq!(request(&socket, "PUT", "/actions", r#"{"action_type": "InstanceStart"}"#).0, 204);
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut out = wait_for_line(&mut reader, "blk_swap: waiting for a new disk");
    assert!(out.contains("blk_swap: capacity 128 sectors, sector 0 says the first disk\n"), "{out}");

    let missing = r#"{"drive_id": "data", "path_on_host": "/nonexistent/disk.img"}"#;
    assert_fault(request(&socket, "PATCH", "/drives/data", missing), "cannot be opened");
    // A limiter alone changes no file: the guest goes on waiting for one.
    let unlimited = r#"{"drive_id": "data", "rate_limiter": {}}"#;
    assert_eq!(request(&socket, "PATCH", "/drives/data", unlimited).0, 204);
    let bad_limit = r#"{"drive_id": "data", "rate_limiter": {"ops": {"size": 1, "refill_time": 0}}}"#;
    assert_fault(request(&socket, "PATCH", "/drives/data", bad_limit), "refill_time must not be 0");
    assert_eq!(request(&socket, "PATCH", "/drives/data", &update).0, 204);
    reader.read_to_string(&mut out).unwrap();
    drop(watchdog);
    let output = wait_with_limit(child);
    assert_eq!(
        output.status.code(),
        Some(3),
        "stdout: {out}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in [
        "blk_swap: capacity 256 sectors, sector 0 says the second disk",
        "blk_swap: last sector 255 read, the one after IOERR",
        "blk_swap: ok",
    ] {
        assert!(out.lines().any(|l| l == line), "no line {line:?} in:\n{out}");
    }
}

#[test]
fn a_running_disk_gets_a_new_backing_file_on_mmio() {
    a_running_disk_gets_a_new_backing_file("mmio");
}

#[test]
fn a_running_disk_gets_a_new_backing_file_on_pci() {
    a_running_disk_gets_a_new_backing_file("pci");
}
