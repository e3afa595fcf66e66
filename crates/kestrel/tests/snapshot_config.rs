//! What a VM restored from a snapshot reports about itself, and what `PUT /snapshot/load` changes
//! on the way: `GET /vm/config` and `GET /machine-config` after a load answer from the snapshot
//! (vCPUs, memory, every device as it was configured), `network_overrides` moves a card to
//! another tap, and the `Uffd` memory backend has a page-fault handler of the test's serve guest
//! RAM. VMs with cards run in a network namespace of the test's own (their cards need taps).

mod common;

use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::api::{assert_fault, request, spawn_vmm, vmm_command, ApiVmm};
use common::netns::NetNamespace;
use common::{kvm_available, HANG_LIMIT};

const TAP_A: &str = "ktap-cfg-a";
const TAP_B: &str = "ktap-cfg-b";
const GUEST_MAC: &str = "02:4b:53:00:00:07";

/// A `kestrel vmm` in the namespace, with its serial log; killed when dropped.
struct Vmm(ApiVmm);

impl std::ops::Deref for Vmm {
    type Target = ApiVmm;
    fn deref(&self) -> &ApiVmm {
        &self.0
    }
}

impl Vmm {
    fn start(namespace: Option<&NetNamespace>, dir: &Path, name: &str) -> Vmm {
        let socket = dir.join(format!("{name}.sock"));
        let log = dir.join(format!("{name}.log"));
        let mut command = vmm_command(&socket);
        command.args(["--serial", &format!("file:{}", log.display())]);
        let mut wrapped = match namespace {
            Some(namespace) => namespace.wrap(&command),
            None => command,
        };
        wrapped.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit());
        let child = spawn_vmm(wrapped, &socket);
        Vmm(ApiVmm::adopt(child, socket, log, 4 * HANG_LIMIT))
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

    let first = Vmm::start(Some(&namespace), dir.path(), "first");
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

    let second = Vmm::start(Some(&namespace), dir.path(), "second");
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

    let first = Vmm::start(Some(&namespace), dir.path(), "first");
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

    let second = Vmm::start(Some(&namespace), dir.path(), "second");
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

/// hello.c's COUNT_STEP.
const COUNT_STEP: u64 = 1 << 25;

/// A page-fault handler of Firecracker's protocol on a thread: it accepts one VMM on `socket`,
/// then serves every page the guest touches from the memory file (holes read as zeroes) until
/// it is dropped. `served` counts the pages it copied in.
struct PageServer {
    served: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl PageServer {
    fn start(socket: &Path, memory: &Path) -> PageServer {
        let listener = UnixListener::bind(socket).unwrap();
        let memory = std::fs::File::open(memory).unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopped) = (served.clone(), stop.clone());
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let (mappings, uffd) = vmm::uffd::receive_from_vmm(&stream).unwrap();
            let mut page = vec![0u8; 4096];
            while !stopped.load(Ordering::Relaxed) {
                let mut poll = libc::pollfd {
                    fd: std::os::fd::AsRawFd::as_raw_fd(&uffd),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: poll reads and writes the one pollfd, alive across the call.
                if unsafe { libc::poll(&mut poll, 1, 50) } <= 0 {
                    continue;
                }
                let Some(event) = uffd.read_event().unwrap() else { continue };
                let vmm::uffd::UffdEvent::PageFault { address } = event else { continue };
                let address = address & !4095;
                let region = mappings
                    .iter()
                    .find(|m| {
                        (m.base_host_virt_addr..m.base_host_virt_addr + m.size as u64).contains(&address)
                    })
                    .expect("a fault inside guest RAM");
                assert_eq!(region.page_size, 4096);
                page.fill(0);
                let offset = region.offset + (address - region.base_host_virt_addr);
                // Past the end of the file (or in a hole) the page is zeroes.
                let _ = memory.read_at(&mut page, offset).unwrap();
                uffd.copy(address, &page).unwrap();
                count.fetch_add(1, Ordering::Relaxed);
            }
        });
        PageServer { served, stop }
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `"mem_backend": {"backend_type": "Uffd"}`: guest RAM comes empty and a handler process fills
/// each page the guest touches (Firecracker's protocol: the mappings as JSON with the
/// userfaultfd). The restored guest counts on from where it was, through pages only the handler
/// gave it; no handler at the socket is a clear error, and the VMM stays loadable.
#[test]
fn the_uffd_backend_has_a_page_fault_handler_serve_guest_memory() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (state, memory) = (dir.path().join("state"), dir.path().join("memory"));
    let first = Vmm::start(None, dir.path(), "first");
    let boot = serde_json::json!({"kernel_image_path": guests::HELLO, "boot_args": "exit=count"});
    first.ok("PUT", "/boot-source", &boot.to_string());
    first.ok("PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 64}"#);
    first.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    first.wait_for_counts(2);
    first.snapshot(&state, &memory);
    let last = *first.counts().last().unwrap();
    drop(first);

    let second = Vmm::start(None, dir.path(), "second");
    let socket = dir.path().join("uffd.sock");
    let uffd = |socket: &Path| {
        serde_json::json!({"snapshot_path": state, "mem_backend": {"backend_type": "Uffd", "backend_path": socket},
            "resume_vm": true})
        .to_string()
    };
    assert_fault(request(&second.socket, "PUT", "/snapshot/load", &uffd(&socket)), "page-fault handler");
    let server = PageServer::start(&socket, &memory);
    second.ok("PUT", "/snapshot/load", &uffd(&socket));
    let counts = second.wait_for_counts(2);
    assert_eq!(counts[0], last + COUNT_STEP, "the guest counts on from where it was: {counts:?}");
    let served = server.served.load(Ordering::Relaxed);
    // The code, stack, page tables and counter at least; never more than the guest's RAM.
    assert!(served > 3 && served <= (64 << 20) / 4096, "{served} pages served");
}
