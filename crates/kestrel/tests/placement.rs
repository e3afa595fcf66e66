//! vCPU placement: each vCPU thread on its host CPUs, the VMM's other threads on theirs, and
//! vCPU threads SCHED_FIFO when asked — from the command line and from the API. What the kernel
//! says about each thread (/proc/PID/task/TID/status and sched) is the evidence.

mod common;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use common::api::{request, start_vmm_with};
use common::{kestrel, kvm_available, path_str, Watchdog, HANG_LIMIT};

/// One thread of a process: its name, `Cpus_allowed_list`, and scheduling policy (0 normal, 1
/// SCHED_FIFO) with priority.
#[derive(Debug)]
struct ThreadInfo {
    name: String,
    cpus: String,
    policy: u32,
    priority: u32,
}

fn threads(pid: u32) -> Vec<ThreadInfo> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(|entry| {
            let dir = entry.ok()?.path();
            let status = std::fs::read_to_string(dir.join("status")).ok()?;
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_owned())
                    .unwrap_or_default()
            };
            // /proc/PID/task/TID/stat: fields 41 and 40 (after the parenthesised name) are the
            // policy and the real-time priority.
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            let after_name: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
            Some(ThreadInfo {
                name: field("Name:"),
                cpus: field("Cpus_allowed_list:"),
                priority: after_name.get(37)?.parse().ok()?,
                policy: after_name.get(38)?.parse().ok()?,
            })
        })
        .collect()
}

/// Polls until the process has a thread named `name` (bounded).
fn wait_for_thread(pid: u32, name: &str) {
    let deadline = Instant::now() + HANG_LIMIT;
    while !threads(pid).iter().any(|t| t.name == name) {
        assert!(Instant::now() < deadline, "no thread {name} appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_for_line(log: &Path, needle: &str) {
    let deadline = Instant::now() + HANG_LIMIT;
    while !std::fs::read_to_string(log).unwrap_or_default().contains(needle) {
        assert!(Instant::now() < deadline, "the guest never printed {needle:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every vCPU on its own set and the other threads on theirs, from `--cpus`.
#[test]
fn cli_pins_each_vcpu_and_keeps_the_other_threads_apart() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serial.log");
    let child = kestrel()
        .args(["run", "--kernel", guests::HELLO, "--cmdline", "exit=hang", "--cpus", "2,pin=1:0,others=0"])
        .args(["--serial", &format!("file:{}", path_str(&log))])
        .spawn()
        .unwrap();
    let _watchdog = Watchdog::within(&child, HANG_LIMIT);
    let child = Killed(child);
    wait_for_line(&log, "exit: hang");
    wait_for_thread(child.0.id(), "fc_vcpu 1");
    let seen = threads(child.0.id());
    for thread in &seen {
        let expected = match thread.name.as_str() {
            name if name.starts_with("kvm-") => continue,
            "fc_vcpu 0" => "1",
            _ => "0",
        };
        assert_eq!(thread.cpus, expected, "{thread:?} in {seen:?}");
        assert_eq!(thread.policy, 0, "nothing asked for real time: {thread:?}");
    }
    assert!(seen.len() > 2, "the main thread is there too: {seen:?}");
}

/// `x-kestrel` in machine-config: the same placement through the API, and SCHED_FIFO vCPUs.
#[test]
fn api_pins_vcpus_and_runs_them_real_time() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let log = dir.path().join("serial.log");
    let child = start_vmm_with(&socket, &["--serial", &format!("file:{}", path_str(&log))]);
    let _watchdog = Watchdog::within(&child, HANG_LIMIT);
    let child = Killed(child);
    let put = |path: &str, body: &str| {
        let (status, reply) = request(&socket, "PUT", path, body);
        assert_eq!(status, 204, "{path}: {reply}");
    };
    put(
        "/boot-source",
        &format!(r#"{{"kernel_image_path": "{}", "boot_args": "exit=hang"}}"#, guests::HELLO),
    );
    let machine = r#"{"vcpu_count": 2, "mem_size_mib": 64, "x-kestrel": {"vcpu_affinity": [[0], [1]],
        "vmm_affinity": [1], "vcpu_realtime_priority": 5}}"#;
    put("/machine-config", machine);
    let (status, shown) = request(&socket, "GET", "/machine-config", "");
    assert_eq!(status, 200);
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["x-kestrel"]["vcpu_affinity"], serde_json::json!([[0], [1]]));
    assert_eq!(shown["x-kestrel"]["vcpu_realtime_priority"], 5);
    put("/actions", r#"{"action_type": "InstanceStart"}"#);
    wait_for_line(&log, "exit: hang");
    // Parked vCPUs do not spin at real-time priority while the test looks.
    let (status, reply) = request(&socket, "PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(status, 204, "{reply}");
    let seen = threads(child.0.id());
    for thread in &seen {
        match thread.name.as_str() {
            // KVM's own kernel worker in the process (NX huge page recovery) copies the thread
            // that started it; it is not Kestrel's to place.
            name if name.starts_with("kvm-") => {}
            "fc_vcpu 0" | "fc_vcpu 1" => {
                let cpu = &thread.name["fc_vcpu ".len()..];
                assert_eq!(thread.cpus, cpu, "{thread:?}");
                assert_eq!((thread.policy, thread.priority), (1, 5), "SCHED_FIFO 5: {thread:?}");
            }
            _ => {
                assert_eq!(thread.cpus, "1", "{thread:?} in {seen:?}");
                assert_eq!(thread.policy, 0, "{thread:?}");
            }
        }
    }
    assert!(seen.iter().any(|t| t.name == "fc_api"), "{seen:?}");
}

/// Placements the host cannot honour, or that contradict themselves, are clear errors.
#[test]
fn impossible_placements_are_refused_with_their_reason() {
    if !kvm_available() {
        return;
    }
    let cases = [
        ("2,pin=0:1:1", "3 CPU sets for 2 vCPUs"),
        ("1,pin=4095", "CPU 4095 named in the CPU placement is not available to this VMM"),
        ("1,others=0-9000", "beyond the highest CPU number"),
        ("1,rt=100", "1 to 99"),
    ];
    for (cpus, expected) in cases {
        let output = kestrel()
            .args(["run", "--kernel", guests::HELLO, "--serial", "none", "--cpus", cpus])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(expected), "{cpus}: {stderr}");
    }

    // Real time without CAP_SYS_NICE and with an RLIMIT_RTPRIO of 0: refused when the VM is built,
    // before the guest runs, with the reason.
    if common::is_root() {
        let output = std::process::Command::new("setpriv")
            .args(["--bounding-set=-sys_nice", "--inh-caps=-sys_nice", "--", "prlimit", "--rtprio=0", "--"])
            .arg(env!("CARGO_BIN_EXE_kestrel"))
            .args(["run", "--kernel", guests::HELLO, "--serial", "none", "--cpus", "1,rt=10"])
            .output()
            .expect("setpriv (util-linux)");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("real-time priority 10 is not allowed: SCHED_FIFO needs CAP_SYS_NICE"),
            "{stderr}"
        );
    }
}

/// `--config`: machine-config's `x-kestrel` in the file places the vCPUs as the API does.
#[test]
fn a_config_file_places_the_vcpus() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serial.log");
    let config = dir.path().join("vm.json");
    let text = format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "exit=hang"}},
            "machine-config": {{"vcpu_count": 1, "mem_size_mib": 64, "x-kestrel": {{"vcpu_affinity": [[1]]}}}}}}"#,
        guests::HELLO
    );
    std::fs::write(&config, text).unwrap();
    let child = kestrel()
        .args(["run", "--config", path_str(&config), "--serial", &format!("file:{}", path_str(&log))])
        .spawn()
        .unwrap();
    let _watchdog = Watchdog::within(&child, HANG_LIMIT);
    let child = Killed(child);
    wait_for_line(&log, "exit: hang");
    let seen = threads(child.0.id());
    let vcpu = seen.iter().find(|t| t.name == "fc_vcpu 0").expect("a vcpu0 thread");
    assert_eq!(vcpu.cpus, "1", "{seen:?}");
}
