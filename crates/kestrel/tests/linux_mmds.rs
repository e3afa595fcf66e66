//! Tier 3: the metadata service (MMDS V2) as a Linux guest reaches it. A `kestrel vmm` in a
//! private network namespace (see `common/netns.rs`) gets its configuration, the MMDS config and
//! contents through the API; the kit's Linux routes 169.254.169.254 over its NIC, asks for a
//! session token with busybox `nc` (`PUT /latest/api/token`), then reads its instance ID with it.
//! The VMM answers those frames itself (that they never reach the tap is checked in
//! `virtio::net::mmds`'s tests).

mod common;

use std::process::Stdio;

use common::api::{request, spawn_vmm, vmm_command};
use common::kit::*;
use common::netns::NetNamespace;
use common::*;

const TAP: &str = "kmmds0";

fn ok(socket: &std::path::Path, method: &str, path: &str, body: &str) {
    let (status, reply) = request(socket, method, path, body);
    assert_eq!(status, 204, "{method} {path}: {reply}");
}

/// The guest's side: an address and a route to MMDS, a GET without a token (refused), a token,
/// then the GET with it. Each answer's last line is its body (`Connection: close` ends it).
const SCRIPT: &str = r#"ip addr add 10.231.9.2/24 dev eth0 && ip link set eth0 up && ip route add 169.254.169.254 dev eth0
ask() { printf "$1" | nc 169.254.169.254 80; }
echo "mmds no token: $(ask 'GET /latest/meta-data/instance-id HTTP/1.1\r\nConnection: close\r\n\r\n' | head -n 1)"
TOKEN=$(ask 'PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\nConnection: close\r\n\r\n' | tail -n 1)
echo "mmds token length: ${#TOKEN}"
echo "mmds instance-id: $(ask "GET /latest/meta-data/instance-id HTTP/1.1\r\nX-metadata-token: $TOKEN\r\nConnection: close\r\n\r\n" | tail -n 1)"
echo "mmds keys: $(ask "GET /latest/meta-data/ HTTP/1.1\r\nX-metadata-token: $TOKEN\r\nConnection: close\r\n\r\n" | tail -n 2 | tr '\n' ' ')""#;

#[test]
fn linux_reads_its_metadata_from_mmds_v2_with_a_session_token() {
    let Some(kit) = kit_available() else { return };
    let Some(namespace) = NetNamespace::with_tap(TAP, "10.231.9.1/24") else { return };
    let _serial = one_boot_at_a_time();
    eprintln!("tier 3: Linux (kit) reads MMDS V2 over virtio-net in {}", namespace.name());

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let mut command = vmm_command(&socket);
    command.args(["--serial", "stdio"]);
    let mut wrapped = namespace.wrap(&command);
    wrapped.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let vmm = spawn_vmm(wrapped, &socket);

    let cmdline = format!("{} quiet kestrel.run={}", kit_cmdline(), percent_encode(SCRIPT));
    let boot = serde_json::json!({
        "kernel_image_path": kit.0, "initrd_path": kit.1, "boot_args": cmdline,
    });
    ok(&socket, "PUT", "/boot-source", &boot.to_string());
    ok(&socket, "PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 256}"#);
    let nic = format!(r#"{{"iface_id": "eth0", "host_dev_name": "{TAP}"}}"#);
    ok(&socket, "PUT", "/network-interfaces/eth0", &nic);
    ok(&socket, "PUT", "/mmds/config", r#"{"version": "V2", "network_interfaces": ["eth0"]}"#);
    let data = r#"{"latest": {"meta-data": {"instance-id": "i-kestrel-42", "local-ipv4": "10.231.9.2"}}}"#;
    ok(&socket, "PUT", "/mmds", data);
    ok(&socket, "PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);

    let output = wait_within(vmm, LINUX_LIMIT);
    assert_command_exited(&output, 0);
    let lines = lines_after_init(&output);
    let line = |prefix: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line:\n{}\n{}", stdout(&output), stderr(&output)))
            .trim()
            .to_owned()
    };
    assert_eq!(line("mmds no token:"), "HTTP/1.1 401 Unauthorized");
    assert_eq!(line("mmds token length:"), "64");
    assert_eq!(line("mmds instance-id:"), "i-kestrel-42");
    assert_eq!(line("mmds keys:"), "instance-id local-ipv4");
}
