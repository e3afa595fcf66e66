//! flintlock's Firecracker provider (`infrastructure/microvm/firecracker/`: `create.go`,
//! `config.go`, `state.go`, `provider.go`) replayed against Kestrel started as `firecracker`, on
//! the virtio test guest: the state directory and its files, `firecracker.cfg` as flintlock writes
//! it (`json.MarshalIndent` with one space), `metadata.json`, the command line
//! `firecracker --id <uid> --boot-timer --no-api --config-file <cfg> --metadata <json>` with its
//! output in files, the state check (the pid is alive) and the delete (SIGHUP, then at most
//! `DeleteVMTimeout` = 10 s for the process to end). The microVM has one tap interface that allows
//! metadata requests (MMDS V1, as flintlock configures it) and the guest-agent vsock; the guest
//! resolves and pings the host through the tap.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::firecracker::{firecracker_in, signal_and_wait};
use common::netns::NetNamespace;
use common::{kvm_available, Watchdog};

/// flintlock's `DeleteVMTimeout` default.
const DELETE_TIMEOUT: Duration = Duration::from_secs(10);
const UID: &str = "01HZ7XK3Q9W2B5C8D6E4F1G0HJ";

/// Reads `path` (the VMM's stdout, which flintlock sends to a file) until it holds `needle`;
/// panics at a deadline or when the process has ended without it (showing `<path>.stderr`).
fn wait_for_file_line(path: &Path, needle: &str, child: &mut std::process::Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let stderr = std::fs::read_to_string(path.with_extension("stderr")).unwrap_or_default();
            panic!("the VMM exited ({status}) before {needle:?}; its stdout:\n{text}\nits stderr:\n{stderr}");
        }
        assert!(Instant::now() < deadline, "no {needle:?} in the VMM's stdout:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `firecracker.cfg`: flintlock's `VmmConfig` after `WithMicroVM`, `WithState` and `WithVsock`.
fn flintlock_config(state: &Path, kernel: &str, rootfs: &Path, tap: &str) -> String {
    let path = |name: &str| state.join(name).to_str().unwrap().to_owned();
    // DefaultKernelCmdLine (a Go map: its order varies from run to run) plus the microVM's own
    // kernel command line.
    let boot_args =
        "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd \
        ds=nocloud-net;s=http://169.254.169.254/latest/ test=net hold=1";
    let config = serde_json::json!({
        "drives": [{
            "drive_id": "root", "path_on_host": rootfs, "is_root_device": true,
            "is_read_only": false, "cache_type": "Unsafe",
        }],
        "boot-source": { "kernel_image_path": kernel, "boot_args": boot_args },
        "logger": { "log_path": path("firecracker.log"), "level": "Debug", "show_level": true, "show_log_origin": true },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 64, "smt": true, "track_dirty_pages": false },
        "metrics": { "metrics_path": path("firecracker.metrics") },
        "mmds-config": { "version": "V1", "network_interfaces": ["eth0"] },
        "network-interfaces": [{ "iface_id": "eth0", "host_dev_name": tap, "guest_mac": "52:54:00:4b:53:02" }],
        "vsock": { "vsock_id": "guest-agent", "guest_cid": 3, "uds_path": path("guest-agent.vsock") },
    });
    serde_json::to_string_pretty(&config)
        .unwrap()
        .lines()
        .map(|l| {
            // serde_json indents by two spaces, Go's MarshalIndent(.., "", " ") by one.
            let depth = l.len() - l.trim_start().len();
            format!("{}{}\n", " ".repeat(depth / 2), l.trim_start())
        })
        .collect()
}

#[test]
fn flintlock_creates_a_microvm_from_its_config_and_metadata_files_and_deletes_it_with_sighup() {
    if !kvm_available() {
        return;
    }
    let Some(namespace) = NetNamespace::with_tap("ktap-flint", "10.231.0.1/24") else {
        return;
    };
    namespace.ip(&["link", "set", "ktap-flint", "address", "02:4b:53:00:00:01"]);
    let dir = tempfile::tempdir().unwrap();
    let firecracker = firecracker_in(dir.path());
    let rootfs = dir.path().join("root.img");
    std::fs::write(&rootfs, vec![0u8; 1 << 20]).unwrap();

    // ensureState: <state root>/<namespace>/<name>/<uid>, the log and metrics files created
    // (O_APPEND, 0644) before the VMM starts.
    let state = dir.path().join("flintlock/vm/ns1/mvm1").join(UID);
    std::fs::create_dir_all(&state).unwrap();
    for file in ["firecracker.log", "firecracker.metrics"] {
        std::fs::OpenOptions::new().append(true).create(true).open(state.join(file)).unwrap();
    }
    let config = state.join("firecracker.cfg");
    std::fs::write(&config, flintlock_config(&state, guests::VIRTIO, &rootfs, "ktap-flint")).unwrap();
    // SetMetadata: the spec's values, base64-decoded, under "latest".
    let metadata = state.join("metadata.json");
    let meta = serde_json::json!({ "latest": {
        "meta-data": "instance_id: ns1/mvm1\nlocal_hostname: mvm1\nplatform: liquid_metal\n",
        "user-data": "#cloud-config\nhostname: mvm1\n",
    }});
    std::fs::write(&metadata, serde_json::to_string_pretty(&meta).unwrap()).unwrap();

    // Create: the command line, stdout and stderr to files, an empty stdin.
    let stdout_path = state.join("firecracker.stdout");
    let stderr_path = state.join("firecracker.stderr");
    let mut command = Command::new(&firecracker);
    command
        .args(["--id", UID, "--boot-timer", "--no-api"])
        .arg("--config-file")
        .arg(&config)
        .arg("--metadata")
        .arg(&metadata);
    let mut child = namespace
        .wrap(&command)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("start firecracker");
    drop(child.stdin.take());
    let watchdog = Watchdog::within(&child, Duration::from_secs(90));
    let pid = child.id();
    std::fs::write(state.join("firecracker.pid"), pid.to_string()).unwrap();

    // The guest is up on the tap the config named (and MMDS on it leaves other traffic alone).
    let out = wait_for_file_line(&stdout_path, "virtio: holding", &mut child);
    for line in [
        "net: mac 52:54:00:4b:53:02",
        "net: arp reply from 10.231.0.1 is 02:4b:53:00:00:01",
        "net: echo reply from 10.231.0.1, 32 bytes of payload",
        "net: ok",
    ] {
        assert!(out.lines().any(|l| l == line), "no line {line:?} in:\n{out}");
    }
    // State: the pid file's process exists (flintlock's "Running"); with --no-api there is no
    // socket, and the guest-agent vsock socket is where flintlock reports it.
    // SAFETY: kill with signal 0 only checks that the process exists.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, 0) }, 0);
    assert!(state.join("guest-agent.vsock").exists(), "no guest-agent vsock socket in {}", state.display());
    let log = std::fs::read_to_string(state.join("firecracker.log")).unwrap();
    assert!(!log.is_empty(), "nothing was logged to flintlock's log file");

    // Delete: SIGHUP, then the process must be gone within DeleteVMTimeout (how it ended is
    // not flintlock's concern).
    signal_and_wait(&mut child, libc::SIGHUP, DELETE_TIMEOUT);
    drop(watchdog);
    // Metrics: flintlock reads the metrics file's last line as JSON; whatever is there parses.
    let metrics = std::fs::read_to_string(state.join("firecracker.metrics")).unwrap();
    if let Some(last) = metrics.lines().last() {
        serde_json::from_str::<serde_json::Value>(last).unwrap_or_else(|e| panic!("{e}: {last}"));
    }
}
