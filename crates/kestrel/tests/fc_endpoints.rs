//! Firecracker's endpoints beyond the basics, through the API on KVM: `PUT /cpu-config` (the
//! guest reads CPUID as the custom template changed it, a template naming a leaf KVM does not
//! give fails the start with the leaf's name, the deprecated static templates are refused with
//! the way to get the same), `PUT /serial` (the guest's console goes to the file it names), and
//! the endpoints Kestrel does not serve answer why.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::api::{assert_fault, request, start_vmm_with, ApiVmm};
use common::{kvm_available, HANG_LIMIT};

/// A `kestrel vmm` with the requests these tests make of it.
struct Vmm(ApiVmm);

impl std::ops::Deref for Vmm {
    type Target = ApiVmm;
    fn deref(&self) -> &ApiVmm {
        &self.0
    }
}

impl Vmm {
    fn start(dir: &Path, name: &str) -> Vmm {
        Vmm(ApiVmm::start(dir, name, &[], 2 * HANG_LIMIT))
    }

    /// The console goes nowhere unless `PUT /serial` names a file (`log` is where a test may
    /// send it).
    fn start_without_serial(dir: &Path, name: &str) -> Vmm {
        let socket = dir.join(format!("{name}.sock"));
        let child = start_vmm_with(&socket, &["--serial", "none"]);
        Vmm(ApiVmm::adopt(child, socket, dir.join(format!("{name}.log")), 2 * HANG_LIMIT))
    }

    /// Configures the hello guest printing CPUID leaf 1.
    fn configure(&self) {
        let boot = serde_json::json!({"kernel_image_path": guests::HELLO, "boot_args": "cpuid=1 exit=hang"});
        self.ok("PUT", "/boot-source", &boot.to_string());
        self.ok("PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 64}"#);
    }

    /// EAX, EBX, ECX, EDX of leaf 1 as the guest printed them.
    fn leaf1(&self) -> [u32; 4] {
        let deadline = Instant::now() + HANG_LIMIT;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.starts_with("cpuid: ") && l.len() == 42) {
                let words: Vec<u32> =
                    line[7..].split(' ').map(|w| u32::from_str_radix(w, 16).unwrap()).collect();
                return words.try_into().unwrap();
            }
            assert!(Instant::now() < deadline, "no cpuid line: {text}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn a_custom_cpu_template_changes_what_the_guest_reads() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let plain = Vmm::start(dir.path(), "plain");
    plain.configure();
    plain.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    let [eax, ebx, ecx, edx] = plain.leaf1();
    assert_ne!(ecx & 1 << 31, 0, "KVM reports a hypervisor");
    drop(plain);

    // The hypervisor bit off, the stepping (EAX bits 3:0) 0b1010; nothing else changes.
    let template = r#"{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0, "modifiers": [
        {"register": "ecx", "bitmap": "0b0xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"},
        {"register": "eax", "bitmap": "0b1010"}]}]}"#;
    let templated = Vmm::start(dir.path(), "templated");
    templated.configure();
    templated.ok("PUT", "/cpu-config", template);
    let (status, config) = request(&templated.socket, "GET", "/vm/config", "");
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["cpu-config"]["cpuid_modifiers"][0]["leaf"], "0x1", "{config}");
    templated.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    // EBX holds the APIC ID and CLFLUSH size, the same for vCPU 0 of either VM.
    assert_eq!(templated.leaf1(), [(eax & !0xF) | 0b1010, ebx, ecx & !(1 << 31), edx]);

    let bad = Vmm::start(dir.path(), "bad");
    bad.configure();
    assert_fault(
        request(
            &bad.socket,
            "PUT",
            "/cpu-config",
            r#"{"msr_modifiers": [{"addr": "0x10a", "bitmap": "0b2"}]}"#,
        ),
        "character other than 0, 1, x and _",
    );
    bad.ok(
        "PUT",
        "/cpu-config",
        r#"{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x9", "flags": 0, "modifiers": []}]}"#,
    );
    assert_fault(
        request(&bad.socket, "PUT", "/actions", r#"{"action_type": "InstanceStart"}"#),
        "CPUID leaf 0x1 subleaf 0x9",
    );
    assert_fault(
        request(
            &bad.socket,
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "T2"}"#,
        ),
        "PUT /cpu-config",
    );
}

/// `PUT /serial` (pre-boot) sends the guest's console to the file it names, in place of the
/// command line's `--serial`; a rate limiter is refused with the reason, and so is a change after
/// the start.
#[test]
fn put_serial_sends_the_console_to_its_file() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vmm = Vmm::start_without_serial(dir.path(), "serial");
    assert_fault(
        request(
            &vmm.socket,
            "PUT",
            "/serial",
            r#"{"serial_out_path": "/x", "rate_limiter": {"size": 1, "refill_time": 1}}"#,
        ),
        "does not limit the guest's output",
    );
    let body = serde_json::json!({"serial_out_path": vmm.log});
    vmm.ok("PUT", "/serial", &body.to_string());
    vmm.configure();
    vmm.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    // The guest's lines reach the file only through PUT /serial (--serial none).
    vmm.leaf1();
    assert_fault(request(&vmm.socket, "PUT", "/serial", &body.to_string()), "not supported after starting");
}

/// Firecracker's endpoints Kestrel does not serve say why (and what to use instead).
#[test]
fn unserved_endpoints_give_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let vmm = ApiVmm::start(dir.path(), "api", &[], HANG_LIMIT);
    let socket = vmm.socket.clone();
    for (method, path, body, reason) in [
        ("PUT", "/pmem/p0", r#"{"id": "p0", "path_on_host": "/x"}"#, "no virtio-pmem device"),
        ("GET", "/hotplug/memory", "", "no virtio-mem device"),
        ("PATCH", "/balloon/hinting/start", "{}", "no hinting queue"),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "C3"}"#,
            "custom template",
        ),
        (
            "PUT",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "host_dev_name": "t0", "mtu": 9000}"#,
            "VIRTIO_NET_F_MTU",
        ),
        ("PUT", "/drives/d", r#"{"drive_id": "d", "is_root_device": false, "socket": "/s"}"#, "vhost-user"),
    ] {
        assert_fault(request(&socket, method, path, body), reason);
    }
}
