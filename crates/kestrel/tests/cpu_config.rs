//! `PUT /cpu-config` (Firecracker's custom CPU template) through the API on KVM: the guest reads
//! CPUID as the template changed it, a template naming a leaf KVM does not give fails the start
//! with the leaf's name, and Firecracker's deprecated static templates are refused with the way
//! to get the same.

mod common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use common::api::{assert_fault, request, start_vmm_with};
use common::{kvm_available, Watchdog, HANG_LIMIT};

struct Vmm {
    child: Child,
    _watchdog: Watchdog,
    socket: PathBuf,
    log: PathBuf,
}

impl Vmm {
    fn start(dir: &Path, name: &str) -> Vmm {
        let socket = dir.join(format!("{name}.sock"));
        let log = dir.join(format!("{name}.log"));
        let child = start_vmm_with(&socket, &["--serial", &format!("file:{}", log.display())]);
        let watchdog = Watchdog::within(&child, 2 * HANG_LIMIT);
        Vmm { child, _watchdog: watchdog, socket, log }
    }

    #[track_caller]
    fn ok(&self, method: &str, path: &str, body: &str) {
        let (status, reply) = request(&self.socket, method, path, body);
        assert_eq!(status, 204, "{method} {path}: {reply}");
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

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
