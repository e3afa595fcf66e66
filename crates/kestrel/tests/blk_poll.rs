//! Tier 2: a disk with adaptive polling (`--disk ...,poll=50us`) serves the CPL3 virtio guest's
//! disk tests and its benchmark (guests/c/test_blk.c, test_bench_blk.c) as one without: every
//! request answered, at queue depth 1 (where the worker's window grows and it finds requests by
//! polling) and 32, across both MQ queues; and a window over the limit is refused.

mod common;

use std::time::Duration;

use common::*;

const RESET: i32 = 3;
const USAGE_ERROR: i32 = 2;

/// Runs the virtio guest with `disks` (`--disk` values) and `cmdline`; returns its console.
fn run_with(disks: &[String], cmdline: &str) -> String {
    let mut command = kestrel();
    command.args(["run", "--kernel", guests::VIRTIO, "--memory", "128M", "--serial", "stdio"]);
    for disk in disks {
        command.args(["--disk", disk]);
    }
    command.args(["--cmdline", cmdline]);
    let output = run_to_end_within(command, b"", Duration::from_secs(60));
    assert_status(&output, RESET);
    let out = stdout(&output);
    assert!(!out.contains("FAILED"), "{out}");
    out
}

#[test]
fn a_polling_disk_answers_every_request_at_any_queue_depth() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (writable, read_only) = (dir.path().join("rw.img"), dir.path().join("ro.img"));
    std::fs::write(&writable, vec![0xEE; 64 * 1024]).unwrap();
    std::fs::write(&read_only, vec![0xEE; 64 * 1024]).unwrap();
    let disks = [
        format!("path={},poll=50us,queues=2", path_str(&writable)),
        format!("path={},readonly=on,poll=1000", path_str(&read_only)),
    ];
    let out = run_with(&disks, "test=blk");
    assert_eq!(out.lines().filter(|&l| l == "blk: ok").count(), 2, "{out}");
    assert!(out.lines().any(|l| l == "blk: wrote and read back sectors 2-5"), "{out}");

    let bench = dir.path().join("bench.img");
    std::fs::File::create(&bench).unwrap().set_len(8 << 20).unwrap();
    let disk = [format!("path={},poll=50us", path_str(&bench))];
    for params in [
        "blk.mode=getid blk.bs=20 blk.qd=1 blk.count=4096",
        "blk.mode=randwrite blk.bs=4096 blk.qd=1 blk.count=2048",
        "blk.mode=randread blk.bs=4096 blk.qd=32 blk.count=4096",
    ] {
        let out = run_with(&disk, &format!("test=bench_blk {params}"));
        assert!(out.lines().any(|l| l == "bench_blk: ok"), "{params}: {out}");
    }
}

#[test]
fn a_poll_window_over_a_millisecond_is_refused() {
    let output = kestrel()
        .args(["run", "--kernel", guests::VIRTIO, "--disk", "path=/nonexistent.img,poll=1001us"])
        .output()
        .unwrap();
    assert_status(&output, USAGE_ERROR);
    let error = stderr(&output);
    assert!(error.contains("poll=1001us: the window must be 0 to 1000us"), "{error}");
}
