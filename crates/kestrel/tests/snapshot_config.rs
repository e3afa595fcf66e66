//! What a VM restored from a snapshot reports about itself, and what `PUT /snapshot/load` changes
//! on the way: `GET /vm/config` and `GET /machine-config` after a load answer from the snapshot
//! (vCPUs, memory, every device as it was configured), and `network_overrides` moves a card to
//! another tap. The VMs run in a network namespace of the test's own (their cards need taps).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::api::{assert_fault, request, spawn_vmm, vmm_command};
use common::netns::NetNamespace;
use common::{kvm_available, Watchdog, HANG_LIMIT};

const TAP_A: &str = "ktap-cfg-a";
const TAP_B: &str = "ktap-cfg-b";
const GUEST_MAC: &str = "02:4b:53:00:00:07";

/// A `kestrel vmm` in the namespace, with its serial log; killed when dropped.
struct Vmm {
    child: Child,
    _watchdog: Watchdog,
    socket: PathBuf,
    log: PathBuf,
}

impl Vmm {
    fn start(namespace: &NetNamespace, dir: &Path, name: &str) -> Vmm {
        let socket = dir.join(format!("{name}.sock"));
        let log = dir.join(format!("{name}.log"));
        let mut command = vmm_command(&socket);
        command.args(["--serial", &format!("file:{}", log.display())]);
        let mut wrapped = namespace.wrap(&command);
        wrapped.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit());
        let child = spawn_vmm(wrapped, &socket);
        let watchdog = Watchdog::within(&child, 4 * HANG_LIMIT);
        Vmm { child, _watchdog: watchdog, socket, log }
    }

    #[track_caller]
    fn ok(&self, method: &str, path: &str, body: &str) {
        let (status, reply) = request(&self.socket, method, path, body);
        assert_eq!(status, 204, "{method} {path}: {reply}");
    }

    #[track_caller]
    fn get(&self, path: &str) -> serde_json::Value {
        let (status, reply) = request(&self.socket, "GET", path, "");
        assert_eq!(status, 200, "GET {path}: {reply}");
        serde_json::from_str(&reply).unwrap()
    }

    /// The counts the counting guest printed so far (whole lines only).
    fn counts(&self) -> Vec<u64> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        complete.lines().filter_map(|line| line.strip_prefix("count: ")?.parse().ok()).collect()
    }

    /// Waits until the guest printed `n` more counts than `seen`.
    fn wait_for_counts(&self, n: usize) -> Vec<u64> {
        let deadline = Instant::now() + 2 * HANG_LIMIT;
        loop {
            let counts = self.counts();
            if counts.len() >= n {
                return counts;
            }
            assert!(Instant::now() < deadline, "only {} counts: {counts:?}", counts.len());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn snapshot(&self, state: &Path, memory: &Path) {
        self.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
        let body =
            serde_json::json!({"snapshot_path": state, "mem_file_path": memory, "snapshot_type": "Full"});
        self.ok("PUT", "/snapshot/create", &body.to_string());
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A namespace with both taps, up.
fn namespace() -> Option<NetNamespace> {
    let namespace = NetNamespace::with_tap(TAP_A, "10.236.0.1/24")?;
    namespace.ip(&["tuntap", "add", "dev", TAP_B, "mode", "tap"]);
    namespace.ip(&["link", "set", TAP_B, "up"]);
    Some(namespace)
}

/// Whether a process holds the tap open (its carrier is up only then).
fn attached(namespace: &NetNamespace, tap: &str) -> bool {
    let output = std::process::Command::new("ip")
        .args(["-n", namespace.name(), "-o", "link", "show", tap])
        .output()
        .unwrap();
    assert!(output.status.success(), "ip link show {tap}: {}", String::from_utf8_lossy(&output.stderr));
    !String::from_utf8_lossy(&output.stdout).contains("NO-CARRIER")
}

fn load_body(state: &Path, memory: &Path, extra: serde_json::Value) -> String {
    let mut body = serde_json::json!({
        "snapshot_path": state,
        "mem_backend": {"backend_type": "File", "backend_path": memory},
        "track_dirty_pages": true,
        "resume_vm": true,
    });
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body.to_string()
}

/// A 2-vCPU, 256 MiB VM with a read-only root drive, a card, vsock, a balloon and an entropy
/// device reports the same configuration after a restore as before its snapshot, field by field
/// (the original bug: 1 vCPU, 128 MiB and no devices came back), and its guest counts on.
#[test]
fn a_restored_vm_reports_the_configuration_it_was_saved_with() {
    if !kvm_available() {
        return;
    }
    let Some(namespace) = namespace() else { return };
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("rootfs.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let vsock = dir.path().join("vsock.sock");
    let (state, memory) = (dir.path().join("state"), dir.path().join("memory"));

    let first = Vmm::start(&namespace, dir.path(), "first");
    let boot = serde_json::json!({"kernel_image_path": guests::HELLO, "boot_args": "exit=count"});
    first.ok("PUT", "/boot-source", &boot.to_string());
    first.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": false, "track_dirty_pages": true, "huge_pages": "None"}"#,
    );
    let drive = serde_json::json!({"drive_id": "rootfs", "path_on_host": disk, "is_root_device": true,
        "is_read_only": true});
    first.ok("PUT", "/drives/rootfs", &drive.to_string());
    let card = serde_json::json!({"iface_id": "eth0", "host_dev_name": TAP_A, "guest_mac": GUEST_MAC});
    first.ok("PUT", "/network-interfaces/eth0", &card.to_string());
    first.ok("PUT", "/vsock", &serde_json::json!({"guest_cid": 3, "uds_path": vsock}).to_string());
    first.ok(
        "PUT",
        "/balloon",
        r#"{"amount_mib": 16, "deflate_on_oom": true, "stats_polling_interval_s": 1}"#,
    );
    first.ok("PUT", "/entropy", "{}");
    first.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    first.wait_for_counts(2);
    first.snapshot(&state, &memory);
    let before = first.get("/vm/config");
    let machine_before = first.get("/machine-config");
    drop(first);
    // The restored vsock device listens on the path again.
    let _ = std::fs::remove_file(&vsock);

    let second = Vmm::start(&namespace, dir.path(), "second");
    second.ok("PUT", "/snapshot/load", &load_body(&state, &memory, serde_json::json!({})));
    let after = second.get("/vm/config");
    for section in
        ["boot-source", "machine-config", "drives", "network-interfaces", "vsock", "balloon", "entropy"]
    {
        assert_eq!(
            after[section], before[section],
            "{section} after the load; before: {before:#}\nafter: {after:#}"
        );
    }
    assert_eq!(after, before, "the whole configuration");
    assert_eq!(second.get("/machine-config"), machine_before);
    assert_eq!(after["machine-config"]["vcpu_count"], 2);
    assert_eq!(after["machine-config"]["mem_size_mib"], 256);
    assert!(attached(&namespace, TAP_A), "the restored card is on its tap");
    // The guest goes on counting (a new log: counts from where it was).
    second.wait_for_counts(2);
}

/// `network_overrides` puts a restored card on another tap (Firecracker's SDKs always send the
/// field, often empty or naming the same tap); an unknown `iface_id` is Firecracker's error.
#[test]
fn network_overrides_move_a_restored_card_to_another_tap() {
    if !kvm_available() {
        return;
    }
    let Some(namespace) = namespace() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (state, memory) = (dir.path().join("state"), dir.path().join("memory"));

    let first = Vmm::start(&namespace, dir.path(), "first");
    let boot = serde_json::json!({"kernel_image_path": guests::HELLO, "boot_args": "exit=count"});
    first.ok("PUT", "/boot-source", &boot.to_string());
    first.ok("PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 64}"#);
    let card = serde_json::json!({"iface_id": "eth0", "host_dev_name": TAP_A, "guest_mac": GUEST_MAC});
    first.ok("PUT", "/network-interfaces/eth0", &card.to_string());
    first.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    first.wait_for_counts(1);
    assert!(attached(&namespace, TAP_A));
    first.snapshot(&state, &memory);
    drop(first);
    assert!(!attached(&namespace, TAP_A), "the first VMM let go of its tap");

    let second = Vmm::start(&namespace, dir.path(), "second");
    let unknown = serde_json::json!({"network_overrides": [{"iface_id": "eth1", "host_dev_name": TAP_B}]});
    assert_fault(
        request(&second.socket, "PUT", "/snapshot/load", &load_body(&state, &memory, unknown)),
        "Unknown Network Device",
    );
    let moved = serde_json::json!({"network_overrides": [{"iface_id": "eth0", "host_dev_name": TAP_B}]});
    second.ok("PUT", "/snapshot/load", &load_body(&state, &memory, moved));
    let config = second.get("/vm/config");
    assert_eq!(config["network-interfaces"][0]["host_dev_name"], TAP_B, "{config:#}");
    assert_eq!(config["network-interfaces"][0]["guest_mac"], GUEST_MAC, "{config:#}");
    assert!(attached(&namespace, TAP_B), "the restored card opened the override's tap");
    assert!(!attached(&namespace, TAP_A), "and not the saved one");
    second.wait_for_counts(1);
}
