//! Tier 2: a disk's rate limiter holds the CPL3 bench guest (guests/c/test_bench_blk.c) to the
//! rate set with `--disk ...,iops=` / `bw=`.
//!
//! The limits are far below what the guest and this host do unlimited (hundreds of thousands of
//! requests a second), so the time a run takes is the limiter's alone. It is the guest's own
//! figure: TSC cycles from its first request to its last completion, which leaves out the VMM's
//! start-up. A limiter's bucket starts full (`size` tokens, one second's worth for `iops=` and
//! `bw=`), so a run of `n` requests takes `(n - size) / rate` seconds: no less, as the limiter lets
//! nothing through early, and not much more, as the tokens come back continuously whenever the
//! worker wakes (a late wake-up does not lose any); only the last request's completion adds to it.

mod common;

use std::time::Duration;

use common::*;

/// The rate of the guest's TSC: what KVM gives a new vCPU.
fn tsc_khz() -> u32 {
    let kvm = kvm_ioctls::Kvm::new().expect("open /dev/kvm");
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    vcpu.get_tsc_khz().expect("KVM_GET_TSC_KHZ")
}

/// Runs the bench guest on a fresh 8 MiB disk with the disk options `limit` and the guest
/// parameters `params`; returns the seconds the guest measured for its requests.
fn guest_seconds(limit: &str, params: &str) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(8 << 20).unwrap();
    let disk_arg = format!("path={},{limit}", path_str(&disk));
    let cmdline = format!("test=bench_blk {params}");
    let args = ["--memory", "128M", "--serial", "stdio", "--disk", &disk_arg, "--cmdline", &cmdline];
    let mut command = kestrel();
    command.arg("run").arg("--kernel").arg(guests::VIRTIO).args(args);
    let output = run_to_end_within(command, b"", Duration::from_secs(30));
    assert_status(&output, 3);
    let out = stdout(&output);
    let line = out.lines().find(|l| l.starts_with("bench_blk: ")).unwrap_or_else(|| panic!("{out}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let cycles: u64 = words
        .iter()
        .position(|&w| w == "cycles")
        .and_then(|i| words.get(i + 1)?.parse().ok())
        .unwrap_or_else(|| panic!("no cycles in {line:?}"));
    let seconds = cycles as f64 / (f64::from(tsc_khz()) * 1000.0);
    eprintln!("{line}: {seconds:.3} s");
    seconds
}

/// The limiter holds the guest to the rate: never more than 5 % faster than it allows. Nor much
/// slower — but the guest itself can be slower than the limit when the shared host is loaded
/// (each request is an exit, a worker wake-up and an interrupt), so the upper bound is looser:
/// a limiter that held the guest back needlessly (a lost timer: seconds per request) still fails.
fn assert_held_to_the_limit(seconds: f64, expected: f64, what: &str) {
    assert!(
        seconds >= expected * 0.95 && seconds <= expected * 1.5,
        "{what}: the guest took {seconds:.3} s, the limit says {expected:.3} s"
    );
}

/// One limited guest at a time: three at once on a 2-core host slow each other below the limits.
fn one_guest_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static GUEST: std::sync::Mutex<()> = std::sync::Mutex::new(());
    GUEST.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn an_iops_limit_holds_the_guest_to_its_request_rate() {
    if !kvm_available() {
        return;
    }
    let _one = one_guest_at_a_time();
    // 200 requests at once, then 400 more at 200 a second: 2 s.
    let seconds = guest_seconds("iops=200", "blk.mode=randread blk.bs=4096 blk.qd=8 blk.count=600");
    assert_held_to_the_limit(seconds, 2.0, "600 requests at iops=200");
}

#[test]
fn a_bandwidth_limit_holds_the_guest_to_its_byte_rate() {
    if !kvm_available() {
        return;
    }
    let _one = one_guest_at_a_time();
    // 1 MiB at once (16 requests of 64 KiB), then 2 MiB more (32 requests) at 1 MiB a second.
    let seconds = guest_seconds("bw=1M", "blk.mode=seqwrite blk.bs=65536 blk.qd=4 blk.count=48");
    assert_held_to_the_limit(seconds, 2.0, "48 writes of 64 KiB at bw=1M");
}

/// `PATCH /drives/{id}` with a `rate_limiter` on a running VM: the disk starts at one request per
/// 10 s, so the bench guest's 20 requests would take over 3 minutes; the PATCH lifts the limit
/// and the guest is done within seconds (the new limit, one request per 150 ms, keeps it running
/// long enough for the VMM to answer the PATCH and a GET). The worker, waiting for the old limit's timer, must look
/// again at once: waiting for that timer alone would take 10 s. `GET /vm/config` shows the new
/// limiter. (The polling for the first throttling waits on the guest, not for ordering.)
#[test]
fn a_patch_changes_the_limit_of_a_running_disk() {
    use common::api::{request, start_vmm};
    use std::io::Read;
    use std::time::Instant;

    if !kvm_available() {
        return;
    }
    let _one = one_guest_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(8 << 20).unwrap();
    let socket = dir.path().join("api.sock");
    let mut child = start_vmm(&socket);
    let watchdog = Watchdog::new(&child);
    let boot = format!(
        r#"{{"kernel_image_path": "{}", "boot_args": "test=bench_blk blk.mode=randread blk.bs=4096 blk.count=20"}}"#,
        guests::VIRTIO
    );
    assert_eq!(request(&socket, "PUT", "/boot-source", &boot).0, 204);
    assert_eq!(
        request(&socket, "PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 128}"#).0,
        204
    );
    let drive = format!(
        r#"{{"drive_id": "data", "path_on_host": "{}", "is_root_device": false, "is_read_only": false,
            "rate_limiter": {{"ops": {{"size": 1, "refill_time": 10000}}}}}}"#,
        path_str(&disk)
    );
    assert_eq!(request(&socket, "PUT", "/drives/data", &drive).0, 204);
    let metrics = dir.path().join("metrics.json");
    let put_metrics = format!(r#"{{"metrics_path": "{}"}}"#, path_str(&metrics));
    assert_eq!(request(&socket, "PUT", "/metrics", &put_metrics).0, 204);
    assert_eq!(request(&socket, "PUT", "/actions", r#"{"action_type": "InstanceStart"}"#).0, 204);

    // The PATCH must find the guest held back: wait until the device says it throttled a queue.
    common::api::wait_for_metric(&socket, &metrics, "block", "rate_limiter_throttled_events");
    let patched = Instant::now();
    // Lifted to one request per 150 ms, not to no limit: the guest's last ~19 requests then take
    // ~2.7 s, so the VMM is still there to answer this PATCH and the GET below (a guest done at
    // once would reset the machine and end the VMM under them).
    let lifted = r#"{"drive_id": "data", "rate_limiter": {"ops": {"size": 1, "refill_time": 150}}}"#;
    let (status, body) = request(&socket, "PATCH", "/drives/data", lifted);
    assert_eq!(status, 204, "{body}");
    let (status, config) = request(&socket, "GET", "/vm/config", "");
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["drives"][0]["rate_limiter"]["ops"]["refill_time"], 150, "{config}");

    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let took = patched.elapsed();
    drop(watchdog);
    let output = wait_with_limit(child);
    assert_eq!(output.status.code(), Some(3), "stdout: {out}\nstderr: {}", stderr(&output));
    assert!(out.contains("bench_blk: randread bs 4096 qd 1 requests 20"), "{out}");
    // ~2.7 s under the new limit; a worker that waited for the old limit's timer first would take
    // 10 s more, and the old limit over 3 minutes.
    assert!(took < Duration::from_secs(8), "the guest took {took:?} after the limit was lifted");
}
