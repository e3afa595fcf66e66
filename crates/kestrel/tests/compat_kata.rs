//! Kata Containers' Firecracker driver (`src/runtime/virtcontainers/fc.go`) replayed against
//! Kestrel started as `firecracker`, on the virtio test guest: the same command lines, the same
//! files in the same places, the same requests in the same order, and at each step the check Kata
//! makes. What Kata does and this test does differently is said where it happens.
//!
//! The sequence (Kata, not jailed, with `debug = true` so the console goes to the VMM's stdout):
//! `firecracker --version` (semver >= 0.21.1); the jail-like directory `<vm>/root` with `run/`;
//! the kernel and image as `root/vmlinux` and `root/rootfs`; eight empty placeholder drives
//! `root/drive_0..7`; the log and metrics FIFOs opened for reading; `fcConfig.json` (Go's
//! `MarshalIndent` with tabs) holding boot-source, machine-config, vsock, logger, metrics and the
//! drives; `firecracker --api-sock root/run/firecracker.socket --config-file root/fcConfig.json`;
//! `GET /` every 10 ms until `Running`; `chmod 0640` of the hybrid vsock socket; the vCPU threads
//! by name; a hot-plug (`PATCH /drives/drive_0` with the same path, now naming the container's
//! image); the agent reached with `CONNECT <port>\n` → `OK <port>\n`; the unplug (the placeholder
//! back, `PATCH` again); `SIGTERM` and at most 15 s for the process to end.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::firecracker::{
    firecracker_in, open_files, signal_and_wait, vcpu_threads_as_kata_finds_them, version_as_kata_parses_it,
    wait_until_running, FifoReader, GoClient,
};
use common::{kvm_available, wait_for_child_line, Watchdog};

/// Kata's `fcDiskPoolSize`: placeholder drives attached before the start, patched later.
const POOL: usize = 8;
/// Kata's `fcStopSandboxTimeout`, seconds.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Kata's `fcKernelParams` after `GetKernelRootParams("ext4", ...)`, with `debug = true`'s console.
const KATA_PARAMS: &str = "root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4 \
    pci=off reboot=k panic=1 iommu=off net.ifnames=0 random.trust_cpu=on acpi=off console=ttyS0";

/// A disk image of `sectors` sectors starting with `text`.
fn image(path: &Path, text: &str, sectors: usize) {
    let mut bytes = vec![0u8; sectors * 512];
    bytes[..text.len()].copy_from_slice(text.as_bytes());
    std::fs::write(path, bytes).unwrap();
}

/// Kata's `fcConfig.json` as `json.MarshalIndent(fc.fcConfig, "", "\t")` writes it: the struct
/// fields in their Go order (`types.FcConfig`, the go-swagger models' fields alphabetical).
fn kata_config(root: &Path, kernel_params: &str) -> String {
    let path = |name: &str| root.join(name).to_str().unwrap().to_owned();
    let mut drives = vec![serde_json::json!({
        "drive_id": "rootfs", "is_read_only": true, "is_root_device": false, "path_on_host": path("rootfs"),
    })];
    for i in 0..POOL {
        let id = format!("drive_{i}");
        drives.push(serde_json::json!({
            "drive_id": id, "is_read_only": false, "is_root_device": false, "path_on_host": path(&id),
        }));
    }
    let config = serde_json::json!({
        "boot-source": { "boot_args": format!("{kernel_params} {KATA_PARAMS}"), "kernel_image_path": path("vmlinux") },
        "machine-config": { "mem_size_mib": 128, "smt": false, "vcpu_count": 1 },
        "vsock": { "guest_cid": 3, "uds_path": path("kata.hvsock"), "vsock_id": "root" },
        "logger": { "level": "Error", "log_path": path("logs.fifo") },
        "metrics": { "metrics_path": path("metrics.fifo") },
        "drives": drives,
    });
    // Go indents with tabs, as this does; serde_json orders the keys alphabetically where Go keeps
    // the struct's order, which a JSON reader must not care about.
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    serde::Serialize::serialize(&config, &mut serializer).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn kata_boots_from_its_config_file_hot_plugs_a_placeholder_drive_and_reaches_the_agent_over_hybrid_vsock() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let firecracker = firecracker_in(dir.path());

    // fcInit: the version check comes first.
    let version = version_as_kata_parses_it(&firecracker);
    assert!(version >= (0, 21, 1), "Kata refuses Firecracker older than 0.21.1; this says {version:?}");

    // setPaths: <chroot base>/<binary name>/<sandbox id (32 characters)>/root.
    let vm_path = dir.path().join("vc/firecracker/0123456789abcdef0123456789abcdef");
    let root = vm_path.join("root");
    std::fs::create_dir_all(root.join("run")).unwrap();
    std::fs::set_permissions(root.join("run"), std::fs::Permissions::from_mode(0o750)).unwrap();
    // fcJailResource bind-mounts the kernel and the image into root/; copies stand in for the
    // mounts (the VMM sees the same bytes at the same paths).
    std::fs::copy(guests::VIRTIO, root.join("vmlinux")).unwrap();
    image(&root.join("rootfs"), "kata guest image", 64);
    // createDiskPool: empty files (os.Create), attached as writable drives.
    for i in 0..POOL {
        std::fs::File::create(root.join(format!("drive_{i}"))).unwrap();
    }
    // fcListenToFifo: the FIFOs exist and have a reader before the VMM starts (Kata creates them
    // in <vm>/ and bind-mounts them into root/; the FIFO is the same either way).
    let logs = FifoReader::create(&root.join("logs.fifo"), 0o600);
    let metrics = FifoReader::create(&root.join("metrics.fifo"), 0o600);
    // The guest's own connection (as the agent's log port would be): the host listens on
    // <uds>_<port>, the hybrid vsock convention.
    let hvsock = root.join("kata.hvsock");
    let agent_log = UnixListener::bind(format!("{}_1234", hvsock.display())).unwrap();
    let echo = std::thread::spawn(move || {
        let (mut stream, _) = agent_log.accept().unwrap();
        let mut buffer = [0u8; 256];
        while let Ok(n @ 1..) = stream.read(&mut buffer) {
            stream.write_all(&buffer[..n]).unwrap();
        }
    });

    // The guest drives the first placeholder (device 1: the image is device 0) and the vsock
    // (device 9, after the nine drives), then holds so the VMM is still there to be stopped.
    let config_path = root.join("fcConfig.json");
    std::fs::write(&config_path, kata_config(&root, "test=blk_swap,vsock devices=1,9 hold=1")).unwrap();
    std::fs::set_permissions(&config_path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let socket = root.join("run/firecracker.socket");
    let mut child = Command::new(&firecracker)
        .arg("--api-sock")
        .arg(&socket)
        .arg("--config-file")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start firecracker");
    let watchdog = Watchdog::within(&child, Duration::from_secs(90));
    let pid = child.id();

    // waitVMMRunning: GET / every 10 ms until the state is Running (Kata allows 10 s).
    let mut client = GoClient::new(&socket);
    let info = wait_until_running(&mut client, Duration::from_secs(30));
    assert!(info["id"].is_string() && info["vmm_version"].is_string(), "{info}");
    // StartVM: the hybrid vsock socket exists by then and can be made group-readable.
    let socket_type = std::fs::metadata(&hvsock).expect("the hybrid vsock socket exists once Running");
    assert!(socket_type.file_type().is_socket());
    std::fs::set_permissions(&hvsock, std::fs::Permissions::from_mode(0o640)).unwrap();
    // GetThreadIDs: tasks named "fc_vcpu N", for the sandbox's cgroup.
    let vcpus = vcpu_threads_as_kata_finds_them(pid);
    assert_eq!(vcpus.keys().copied().collect::<Vec<_>>(), vec![0], "vCPU threads by name: {vcpus:?}");
    // The logger and metrics went to Kata's FIFOs.
    let files = open_files(pid);
    for fifo in ["logs.fifo", "metrics.fifo"] {
        assert!(files.iter().any(|f| f.ends_with(fifo)), "the VMM does not hold {fifo} open: {files:?}");
    }

    let mut console = BufReader::new(child.stdout.take().unwrap());
    let seen = wait_for_child_line(&mut console, "blk_swap: waiting for a new disk", &mut child);
    assert!(seen.contains("virtio: device 1 type 2"), "{seen}");
    assert!(seen.contains("blk_swap: capacity 0 sectors, empty\n"), "{seen}");

    // hotplugBlockDevice(AddDevice): the container's image is bind-mounted over the placeholder
    // and the drive patched with the same path. A rename stands in for the mount: the path now
    // names another file, which the VMM must open afresh.
    let drive_0 = root.join("drive_0");
    let container = dir.path().join("container.img");
    image(&container, "container rootfs", 32);
    std::fs::rename(&container, &drive_0).unwrap();
    let patch = format!(r#"{{"drive_id":"drive_0","path_on_host":"{}"}}"#, drive_0.display());
    client.expect("PATCH", "/drives/drive_0", Some(&patch), 204);
    let seen = wait_for_child_line(&mut console, "blk_swap: ok", &mut child);
    assert!(seen.contains("blk_swap: capacity 32 sectors, sector 0 says container rootfs\n"), "{seen}");
    assert!(seen.contains("blk_swap: last sector 31 read, the one after IOERR\n"), "{seen}");

    // The agent: Kata dials the hybrid vsock socket and sends CONNECT <port>; the answer's first
    // line must start with "OK ".
    let seen = wait_for_child_line(&mut console, "vsock: listening on 5678", &mut child);
    assert!(seen.contains("vsock: guest cid 3\n"), "{seen}");
    let mut agent = UnixStream::connect(&hvsock).unwrap();
    agent.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    agent.write_all(b"CONNECT 5678\n").unwrap();
    let mut agent = BufReader::new(agent);
    let mut ok = String::new();
    agent.read_line(&mut ok).unwrap();
    assert!(ok.starts_with("OK ") && ok.ends_with('\n'), "the handshake answered {ok:?}");
    agent.get_mut().write_all(b"ttrpc hello").unwrap();
    let mut reply = Vec::new();
    agent.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"ttrpc hello");
    let seen = wait_for_child_line(&mut console, "virtio: holding", &mut child);
    assert!(seen.contains("vsock: ok\n"), "{seen}");

    // hotplugBlockDevice(RemoveDevice): unmounted, so the path names the empty placeholder again.
    std::fs::File::create(&drive_0).unwrap();
    client.expect("PATCH", "/drives/drive_0", Some(&patch), 204);

    // StopVM: SIGTERM, then the process must be gone within fcStopSandboxTimeout.
    let status = signal_and_wait(&mut child, libc::SIGTERM, STOP_TIMEOUT);
    drop(watchdog);
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "stderr: {stderr}");
    echo.join().unwrap();
    // updateMetrics: every metrics line Kata reads must be one JSON object.
    for line in metrics.finish().lines() {
        let parsed: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(parsed.is_object(), "{line}");
    }
    drop(logs.finish());
}
