//! firecracker-go-sdk (`machine.go`, `handlers.go`; also what firecracker-containerd runs)
//! replayed against Kestrel started as `firecracker`, on the hello test guest: the default
//! handler list of `Machine.Start`, the metadata calls (`SetMetadata`, `UpdateMetadata`,
//! `GetMetadata`), then pause, snapshot, resume, stop, and a second machine started
//! `WithSnapshot` that is shut down with Ctrl+Alt+Del. Every request is the go-swagger
//! client's (Go's headers, one kept-alive connection), with the body the SDK's models marshal
//! (`omitempty` fields left out), in the SDK's order; each step asserts what the SDK checks.

mod common;

use std::io::{BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::firecracker::{firecracker_in, signal_and_wait, FifoReader, GoClient};
use common::{kvm_available, wait_for_child_line, Watchdog};

const VMID: &str = "4bd1c7a5-5d4e-4e43-9b1a-6f0b7f1f3c01";

/// `NewMachine` + `startVMM`: the command line `configureBuilder` makes with the SDK's default
/// `Seccomp.Enabled == false`, then `waitForSocket`: every 10 ms, the socket must exist and
/// `GET /machine-config` must succeed (the SDK's default init timeout is 3 s; this host is slower).
fn start_vmm(firecracker: &Path, socket: &Path) -> (Child, GoClient) {
    let mut child = Command::new(firecracker)
        .arg("--api-sock")
        .arg(socket)
        .args(["--id", VMID, "--no-seccomp"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start firecracker");
    let mut client = GoClient::new(socket);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if socket.exists() && matches!(client.try_send("GET", "/machine-config", None), Ok((200, _))) {
            return (child, client);
        }
        if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "Firecracker did not create API socket {} ({}): {}",
                socket.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `CreateLogFilesHandler` + `BootstrapLoggingHandler` with `LogFifo`, `MetricsFifo` and a
/// `FifoLogWriter`: both FIFOs made (mode 0700), only the log FIFO read, then `PUT /logger` and
/// `PUT /metrics`. Nothing ever reads the metrics FIFO: the VMM must open it all the same.
fn bootstrap_logging(client: &mut GoClient, dir: &Path, name: &str) -> FifoReader {
    let log_fifo = dir.join(format!("{name}-log.fifo"));
    let metrics_fifo = dir.join(format!("{name}-metrics.fifo"));
    let c_path = std::ffi::CString::new(metrics_fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path, which lives for the call.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o700) }, 0);
    let log = FifoReader::create(&log_fifo, 0o700);
    let logger = format!(
        r#"{{"level":"Debug","log_path":"{}","show_level":true,"show_log_origin":false}}"#,
        log_fifo.display()
    );
    client.expect("PUT", "/logger", Some(&logger), 204);
    let metrics = format!(r#"{{"metrics_path":"{}"}}"#, metrics_fifo.display());
    client.expect("PUT", "/metrics", Some(&metrics), 204);
    log
}

#[test]
fn the_go_sdk_starts_pauses_snapshots_resumes_and_restores_a_machine() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let firecracker = firecracker_in(dir.path());
    let rootfs = dir.path().join("rootfs.ext4");
    std::fs::write(&rootfs, vec![0u8; 1 << 20]).unwrap();
    let (memory, state) = (dir.path().join("mem.snap"), dir.path().join("vm.snap"));

    // Machine.Start: the default FcInit handlers, in order.
    let socket = dir.path().join("fc.sock");
    let (mut child, mut client) = start_vmm(&firecracker, &socket);
    let watchdog = Watchdog::within(&child, Duration::from_secs(90));
    let log = bootstrap_logging(&mut client, dir.path(), "first");
    // CreateMachineHandler: PUT, then refreshMachineConfiguration reads it back.
    client.expect("PUT", "/machine-config", Some(r#"{"mem_size_mib":64,"smt":false,"vcpu_count":1}"#), 204);
    let machine: serde_json::Value =
        serde_json::from_str(&client.expect("GET", "/machine-config", None, 200)).unwrap();
    assert_eq!(
        (machine["vcpu_count"].as_u64(), machine["mem_size_mib"].as_u64()),
        (Some(1), Some(64)),
        "{machine}"
    );
    // CreateBootSourceHandler (the kernel arguments after setupKernelArgs).
    let boot = format!(
        r#"{{"boot_args":"console=ttyS0 exit=ctrl-alt-del","kernel_image_path":"{}"}}"#,
        guests::HELLO
    );
    client.expect("PUT", "/boot-source", Some(&boot), 204);
    // AttachDrivesHandler: NewDrivesBuilder's root drive.
    let drive = format!(
        r#"{{"drive_id":"rootfs","is_read_only":false,"is_root_device":true,"path_on_host":"{}"}}"#,
        rootfs.display()
    );
    client.expect("PUT", "/drives/rootfs", Some(&drive), 204);
    // CreateNetworkInterfacesHandler, AddVsocksHandler: none configured. ConfigMmdsHandler: no
    // interface allows MMDS, so the SDK skips PUT /mmds/config.
    // startInstance.
    client.expect("PUT", "/actions", Some(r#"{"action_type":"InstanceStart"}"#), 204);
    let mut console = BufReader::new(child.stdout.take().unwrap());
    wait_for_child_line(&mut console, "keyboard: waiting", &mut child);

    // SetMetadata, UpdateMetadata, GetMetadata (firecracker-containerd passes its metadata so).
    let metadata = r#"{"latest":{"meta-data":{"instance-id":"i-1","local-hostname":"vm1"}}}"#;
    client.expect("PUT", "/mmds", Some(metadata), 204);
    client.expect("PATCH", "/mmds", Some(r#"{"latest":{"meta-data":{"local-hostname":"vm2"}}}"#), 204);
    let stored: serde_json::Value = serde_json::from_str(&client.expect("GET", "/mmds", None, 200)).unwrap();
    assert_eq!(
        stored,
        serde_json::json!({"latest": {"meta-data": {"instance-id": "i-1", "local-hostname": "vm2"}}}),
        "GET /mmds after PUT and PATCH"
    );

    // PauseVM, CreateSnapshot, ResumeVM, DescribeInstanceInfo.
    client.expect("PATCH", "/vm", Some(r#"{"state":"Paused"}"#), 204);
    let create =
        format!(r#"{{"mem_file_path":"{}","snapshot_path":"{}"}}"#, memory.display(), state.display());
    client.expect("PUT", "/snapshot/create", Some(&create), 204);
    client.expect("PATCH", "/vm", Some(r#"{"state":"Resumed"}"#), 204);
    let info: serde_json::Value = serde_json::from_str(&client.expect("GET", "/", None, 200)).unwrap();
    assert_eq!(info["state"], "Running", "{info}");
    assert_eq!(info["id"], VMID, "{info}");
    // StopVMM: SIGTERM.
    signal_and_wait(&mut child, libc::SIGTERM, Duration::from_secs(15));
    drop(watchdog);
    // The FifoLogWriter got the VMM's log, with levels (show_level), at Debug.
    let logged = log.finish();
    assert!(
        logged.lines().any(|l| l.contains("PUT /actions") && l.contains("DEBUG")),
        "the log FIFO lacks the API's debug lines:\n{logged}"
    );

    // A new Machine WithSnapshot(memory, state) and ResumeVM: the FcInit list less the handlers
    // that configure a boot, plus LoadSnapshotHandler; startInstance is skipped.
    let socket = dir.path().join("fc2.sock");
    let (mut child, mut client) = start_vmm(&firecracker, &socket);
    let watchdog = Watchdog::within(&child, Duration::from_secs(90));
    let log = bootstrap_logging(&mut client, dir.path(), "second");
    let load = format!(
        r#"{{"mem_file_path":"{}","resume_vm":true,"snapshot_path":"{}"}}"#,
        memory.display(),
        state.display()
    );
    client.expect("PUT", "/snapshot/load", Some(&load), 204);
    let info: serde_json::Value = serde_json::from_str(&client.expect("GET", "/", None, 200)).unwrap();
    assert_eq!(info["state"], "Running", "{info}");
    // Shutdown: Ctrl+Alt+Del; the guest, restored while waiting for a key, reboots.
    client.expect("PUT", "/actions", Some(r#"{"action_type":"SendCtrlAltDel"}"#), 204);
    let mut out = String::new();
    let mut console = BufReader::new(child.stdout.take().unwrap());
    console.read_to_string(&mut out).unwrap();
    let status = child.wait().unwrap();
    drop(watchdog);
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(out.contains("keyboard: ctrl-alt-del, rebooting"), "{out}\nstderr: {stderr}");
    // Machine.Wait reports the process's exit: an error unless it exited with 0, as Firecracker
    // does when its guest reboots.
    assert_eq!(status.code(), Some(0), "Wait would fail: {status}\nstderr: {stderr}");
    drop(log.finish());
}
