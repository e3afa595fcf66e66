//! Tier 2: image locks between VMs, and with QEMU. A running VM's writable image cannot be
//! opened by a second VM (writable or not) nor by `qemu-img` (which takes QEMU's locks too); a
//! read-only image is shared by any number of VMs; the locks go with the VM.

mod common;

use std::io::{BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};

use common::api::{request, start_vmm};
use common::*;

/// The guest resets the machine when its tests are done (README: exit statuses).
const RESET: i32 = 3;

/// A `kestrel run` of the virtio guest that holds (the guest waits for a byte on its console)
/// once it has run `tests` on `disks`.
struct HeldVm {
    child: Child,
    stdin: ChildStdin,
    watchdog: Watchdog,
}

impl HeldVm {
    fn start(disks: &[String], tests: &str) -> (HeldVm, String) {
        let mut command = kestrel();
        command.arg("run").arg("--kernel").arg(guests::VIRTIO);
        for disk in disks {
            command.arg("--disk").arg(disk);
        }
        command.arg("--cmdline").arg(format!("test={tests} hold=1"));
        let mut child =
            command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let watchdog = Watchdog::new(&child);
        let stdin = child.stdin.take().unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let out = wait_for_line(&mut reader, "virtio: holding");
        child.stdout = Some(reader.into_inner());
        (HeldVm { child, stdin, watchdog }, out)
    }

    /// Lets the guest go on, and checks it ended as it does when all went well.
    fn finish(mut self) {
        self.stdin.write_all(b"x").unwrap();
        drop(self.watchdog);
        assert_status(&wait_with_limit(self.child), RESET);
    }
}

fn image(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, vec![0xEEu8; 64 * 1024]).unwrap();
    path.to_str().unwrap().to_owned()
}

/// A second `kestrel run` with `disk`, which must be refused for the lock.
#[track_caller]
fn refused(disk: &str, path: &str) {
    let output = run_guest(guests::VIRTIO, &["--disk", disk]);
    assert!(!output.status.success(), "a second VM opened {disk}: {}", stdout(&output));
    let expected = format!("{path}: the image is in use");
    assert!(stderr(&output).contains(&expected), "{expected:?} in:\n{}", stderr(&output));
}

#[test]
fn a_running_vms_image_is_locked_against_other_vms_and_qemu() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (writable, base) = (image(dir.path(), "rw.img"), image(dir.path(), "base.img"));
    let (vm, out) = HeldVm::start(&[format!("path={writable}"), format!("path={base},readonly=on")], "blk");
    assert_eq!(out.lines().filter(|&l| l == "blk: ok").count(), 2, "{out}");

    // The writable image: no second user, writer or reader.
    refused(&format!("path={writable}"), &writable);
    refused(&format!("path={writable},readonly=on"), &writable);
    // The read-only one: other readers share it, a writer is refused.
    let reader =
        run_guest(guests::VIRTIO, &["--disk", &format!("path={base},readonly=on"), "--cmdline", "test=blk"]);
    assert_status(&reader, RESET);
    assert!(stdout(&reader).contains("blk: read-only, a write fails with IOERR"), "{}", stdout(&reader));
    refused(&format!("path={base}"), &base);

    // QEMU's tools see Kestrel's locks (the same bytes, the same rules). `qemu-img info` is no
    // test of it: since QEMU 10 it reads metadata without taking the locks.
    if let Some(qemu_img) = host_tool("qemu-img") {
        let qemu = |args: &[&str]| std::process::Command::new(&qemu_img).args(args).output().unwrap();
        let copy = dir.path().join("copy.img");
        let copy = copy.to_str().unwrap();
        // A consistent read of the running VM's image would need its writer to stop.
        let convert = qemu(&["convert", "-f", "raw", "-O", "raw", &writable, copy]);
        assert!(!convert.status.success(), "qemu-img read a running VM's image");
        assert!(stderr(&convert).contains("Failed to get shared \"write\" lock"), "{}", stderr(&convert));
        // Writing the shared base image is refused; reading it beside the VM is fine.
        let resize = qemu(&["resize", "-f", "raw", &base, "128K"]);
        assert!(!resize.status.success(), "qemu-img resized an image a VM reads");
        assert!(stderr(&resize).contains("Failed to get \"write\" lock"), "{}", stderr(&resize));
        run_tool(&qemu_img, &["convert", "-f", "raw", "-O", "raw", &base, copy]);
    }

    vm.finish();
    // The locks went with the VM: QEMU and Kestrel may write the image now.
    if let Some(qemu_img) = host_tool("qemu-img") {
        run_tool(&qemu_img, &["resize", "-f", "raw", &base, "128K"]);
    }
    let after = run_guest(guests::VIRTIO, &["--disk", &format!("path={writable}"), "--cmdline", "test=blk"]);
    assert_status(&after, RESET);
}

/// `PATCH /drives` with the drive's own path (a new look at the same image, after the host
/// resized it) keeps the image's lock rather than tripping over it.
#[test]
fn a_drive_given_its_own_image_again_keeps_its_lock() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = image(dir.path(), "disk.img");
    let socket = dir.path().join("api.sock");
    let mut child = start_vmm(&socket);
    let watchdog = Watchdog::new(&child);
    let boot = format!(r#"{{"kernel_image_path": "{}", "boot_args": "hold=1"}}"#, guests::VIRTIO);
    assert_eq!(request(&socket, "PUT", "/boot-source", &boot).0, 204);
    let drive = format!(
        r#"{{"drive_id": "data", "path_on_host": "{disk}", "is_root_device": false, "is_read_only": false}}"#
    );
    assert_eq!(request(&socket, "PUT", "/drives/data", &drive).0, 204);
    assert_eq!(request(&socket, "PUT", "/actions", r#"{"action_type": "InstanceStart"}"#).0, 204);
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    wait_for_line(&mut reader, "virtio: holding");

    let update = format!(r#"{{"drive_id": "data", "path_on_host": "{disk}"}}"#);
    assert_eq!(request(&socket, "PATCH", "/drives/data", &update).0, 204);
    refused(&format!("path={disk},readonly=on"), &disk);

    drop(watchdog);
    child.kill().unwrap();
    child.wait().unwrap();
}
