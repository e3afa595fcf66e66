//! Firecracker's Python SDK from PyPI (hysn-firecracker-python, pinned in
//! `tests/compat/python/requirements.txt`), unchanged, driving Kestrel as `firecracker`:
//! `tests/compat/python/hysn_firecracker_python.py` creates, pauses, resumes, snapshots, deletes
//! and restores a microVM through the SDK's own classes, on the hello test guest.
//!
//! The SDK has fixed paths (`/usr/local/bin/firecracker`, `/var/lib/firecracker`) and makes taps
//! and nftables rules on the host, so the script runs in a private mount namespace
//! (`tests/compat/python/sandbox.sh`: those two paths private, the rest of the host as it is) and
//! in a network namespace of the test's own, whose default route leaves through `eth0` (the SDK
//! names the guest's card after the host's uplink). Driven from here rather than from
//! `scripts/test` so it runs with the other KVM tests, with the binary under test, and fails
//! (not skips) on CI when its virtualenv (`scripts/compat-venv`) is missing. Needs root.
//!
//! firecracker-python 0.0.5, the SDK this one forks, cannot run here: `MicroVM()` asks public web
//! services for the host's IP address and fails without them.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::netns::NetNamespace;
use common::{kvm_available, run_to_end_within, stderr, stdout};

/// The SDKs' virtualenv's Python, or `None` (skip) when it has not been made; on CI that fails.
fn sdk_python() -> Option<PathBuf> {
    let venv = std::env::var_os("KESTREL_COMPAT_VENV").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/kestrel-compat-venv")
    });
    let python = venv.join("bin/python");
    if python.exists() {
        return Some(python);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{} is missing: scripts/compat-venv makes it (scripts/test runs it)", python.display());
    }
    eprintln!("skipping: {} is missing; run scripts/compat-venv", python.display());
    None
}

#[test]
fn hysn_firecracker_python_creates_pauses_resumes_snapshots_and_restores_a_microvm() {
    if !kvm_available() {
        return;
    }
    let Some(python) = sdk_python() else { return };
    // The host's uplink as the SDK sees it: the default route's device.
    let Some(namespace) = NetNamespace::with_tap("eth0", "10.0.0.2/24") else {
        return;
    };
    namespace.ip(&["route", "add", "default", "via", "10.0.0.1"]);
    let dir = tempfile::tempdir().unwrap();
    let (rootfs, overlay) = (dir.path().join("rootfs.img"), dir.path().join("overlay.ext4"));
    std::fs::write(&rootfs, vec![0u8; 1 << 20]).unwrap();
    std::fs::write(&overlay, vec![0u8; 1 << 20]).unwrap();
    let scratch = dir.path().join("sandbox");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let compat = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/compat/python");

    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "sh"])
        .arg(format!("{compat}/sandbox.sh"))
        .arg(&scratch)
        .arg(env!("CARGO_BIN_EXE_kestrel"))
        .args(["ip", "netns", "exec", namespace.name()])
        .arg(&python)
        .arg(format!("{compat}/hysn_firecracker_python.py"))
        .args([guests::HELLO.as_ref(), rootfs.as_os_str(), overlay.as_os_str(), work.as_os_str()]);
    // The SDK waits on its own between steps (1-2 s each); the whole run takes about 20 s.
    let output = run_to_end_within(command, b"", Duration::from_secs(180));
    let (out, err) = (stdout(&output), stderr(&output));
    assert!(output.status.success(), "the SDK script failed ({}):\n{out}\nstderr:\n{err}", output.status);
    assert!(out.contains("hysn-firecracker-python: all steps passed"), "{out}\nstderr:\n{err}");
}
