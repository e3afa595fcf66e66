//! What the qemu-img interop tests share: finding and running qemu-img, one test at a time.
// Each test file compiles this module on its own and uses only some of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

pub const QEMU_IMG: &str = "/usr/bin/qemu-img";

/// Tests here run one at a time: a qemu-img another test spawns holds copies of this process's
/// descriptors between its fork and exec, and with them the OFD image locks of files a test has
/// just closed, which would make the test's next lock of that file fail now and then.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds the other tests of this file off while it lives.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether qemu-img is there; under CI=true its absence is a failure, not a skip.
pub fn have_qemu_img() -> bool {
    if Path::new(QEMU_IMG).exists() {
        return true;
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{QEMU_IMG} is missing (install qemu-utils)");
    eprintln!("skipped: {QEMU_IMG} is missing");
    false
}

/// Runs qemu-img, which must succeed; its standard output.
pub fn qemu_img(args: &[&str]) -> String {
    let output = Command::new(QEMU_IMG).args(args).output().expect("run qemu-img");
    assert!(
        output.status.success(),
        "qemu-img {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A path as a command-line argument.
pub fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Runs qemu-img, which may fail (a check that finds problems); its exit status and output.
pub fn qemu_img_status(args: &[&str]) -> (i32, String) {
    let output = Command::new(QEMU_IMG).args(args).output().expect("run qemu-img");
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stdout).into_owned())
}
