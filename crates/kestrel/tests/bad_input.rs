//! Bad input: each gets one clear line on stderr and a non-zero status, never a panic or a hang.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use common::*;

const ERROR: i32 = 1;
const USAGE: i32 = 2;

/// Asserts a clean failure: the status, exactly one line on stderr, naming `needle`, and no panic.
#[track_caller]
fn assert_clean_failure(output: &Output, status: i32, needle: &str) {
    assert_status(output, status);
    let err = stderr(output);
    assert!(err.contains(needle), "stderr lacks {needle:?}:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    if status == ERROR {
        assert_eq!(err.trim_end().lines().count(), 1, "want one line:\n{err}");
        assert!(err.starts_with("kestrel: error: "), "{err}");
    }
    assert!(output.stdout.is_empty(), "{}", stdout(output));
}

fn run(args: &[&str]) -> Output {
    let mut command = kestrel();
    command.arg("run").args(args);
    run_to_end(command, b"")
}

#[test]
fn missing_kernel() {
    let output = run(&["--kernel", "/nonexistent/vmlinux"]);
    assert_clean_failure(&output, ERROR, "cannot read kernel /nonexistent/vmlinux: No such file");
}

#[test]
fn directory_as_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(&["--kernel", path_str(dir.path())]);
    assert_clean_failure(&output, ERROR, "not a regular file");
}

#[test]
fn unreadable_kernel() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let kernel = dir.path().join("vmlinux");
    std::fs::copy(guests::HELLO, &kernel).unwrap();
    std::fs::set_permissions(&kernel, std::fs::Permissions::from_mode(0o000)).unwrap();
    let output = as_nobody(&["run", "--kernel", path_str(&kernel)]);
    assert_clean_failure(&output, ERROR, "Permission denied");
}

#[test]
fn file_that_is_not_a_kernel() {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in
        [("text", &b"just some text, no kernel here\n"[..]), ("empty", b""), ("short", b"\x7fEL")]
    {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let output = run(&["--kernel", path_str(&path)]);
        assert_clean_failure(&output, ERROR, "is not a kernel image");
    }
}

#[test]
fn truncated_elf_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let whole = std::fs::read(guests::HELLO).unwrap();
    let path = dir.path().join("truncated");
    std::fs::write(&path, &whole[..200.min(whole.len())]).unwrap();
    let output = run(&["--kernel", path_str(&path)]);
    assert_clean_failure(&output, ERROR, "cannot load kernel");
}

#[test]
fn initrd_larger_than_memory() {
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("big.img");
    // Sparse: 64 MiB of apparent size, no disk used.
    std::fs::File::create(&initrd).unwrap().set_len(64 << 20).unwrap();
    let output = run(&["--kernel", guests::HELLO, "--memory", "32M", "--initrd", path_str(&initrd)]);
    assert_clean_failure(&output, ERROR, "too large for 33554432 bytes of guest memory");
}

#[test]
fn missing_initrd() {
    let output = run(&["--kernel", guests::HELLO, "--initrd", "/nonexistent/initrd"]);
    assert_clean_failure(&output, ERROR, "cannot read initrd /nonexistent/initrd");
}

#[test]
fn memory_below_the_minimum() {
    let output = run(&["--kernel", guests::HELLO, "--memory", "1M"]);
    assert_clean_failure(&output, ERROR, "below the minimum");
}

#[test]
fn memory_above_the_host() {
    let output = run(&["--kernel", guests::HELLO, "--memory", "64T"]);
    assert_clean_failure(&output, ERROR, "more than this host's");
}

#[test]
fn memory_that_is_not_a_size() {
    let output = run(&["--kernel", guests::HELLO, "--memory", "lots"]);
    assert_clean_failure(&output, USAGE, "not a size");
}

#[test]
fn zero_or_too_many_cpus() {
    for cpus in ["0", "255", "-1", "many"] {
        let output = run(&["--kernel", guests::HELLO, &format!("--cpus={cpus}")]);
        assert_clean_failure(&output, USAGE, "--cpus");
    }
}

#[test]
fn over_long_command_line() {
    let long = "x".repeat(3000);
    let output = run(&["--kernel", guests::HELLO, "--cmdline", &long]);
    assert_clean_failure(&output, ERROR, "longer than the 2047 bytes");
}

#[test]
fn command_line_with_control_characters() {
    let output = run(&["--kernel", guests::HELLO, "--cmdline", "console=ttyS0\u{7}"]);
    assert_clean_failure(&output, ERROR, "invalid kernel command line");
}

#[test]
fn bad_serial_option() {
    let output = run(&["--kernel", guests::HELLO, "--serial", "tcp:1234"]);
    assert_clean_failure(&output, USAGE, "not stdio, none or file:PATH");
}

#[test]
fn serial_file_in_a_missing_directory() {
    let output = run(&["--kernel", guests::HELLO, "--serial", "file:/nonexistent/dir/log"]);
    assert_clean_failure(&output, ERROR, "cannot open the serial output file");
}

#[test]
fn missing_disk_file() {
    let output = run(&["--kernel", guests::HELLO, "--disk", "path=/nonexistent/disk.img"]);
    assert_clean_failure(&output, ERROR, "cannot open disk /nonexistent/disk.img: No such file");
}

#[test]
fn directory_as_disk() {
    let dir = tempfile::tempdir().unwrap();
    let output =
        run(&["--kernel", guests::HELLO, "--disk", &format!("path={},readonly=on", path_str(dir.path()))]);
    assert_clean_failure(&output, ERROR, "not a regular file or block device (it is a directory)");
}

/// A FIFO as a disk is refused at once: opening it as usual would wait forever for a writer.
#[test]
fn fifo_as_disk() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("disk.fifo");
    let name = std::ffi::CString::new(path_str(&fifo)).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path, which lives across the call.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    let output = run(&["--kernel", guests::HELLO, "--disk", &format!("path={}", path_str(&fifo))]);
    assert_clean_failure(&output, ERROR, "not a regular file or block device (it is a FIFO)");
}

#[test]
fn malformed_disk_option() {
    for (spec, why) in [
        ("disk.img", "not KEY=VALUE"),
        ("readonly=on", "path= is missing"),
        ("path=disk.img,readonly=yes", "must be on or off"),
        ("path=disk.img,format=vmdk", "format=vmdk: the value must be one of raw, qcow2"),
        ("path=disk.img,aio=native", "unknown key 'aio'"),
        ("path=disk.img,id=an-id-of-more-than-20-bytes", "longer than 20 bytes"),
    ] {
        let output = run(&["--kernel", guests::HELLO, "--disk", spec]);
        assert_clean_failure(&output, USAGE, "--disk");
        assert!(stderr(&output).contains(why), "{spec}: {}", stderr(&output));
    }
}

#[test]
fn vsock_socket_in_a_missing_directory() {
    let output = run(&["--kernel", guests::HELLO, "--vsock", "cid=3,uds=/nonexistent/dir/v.sock"]);
    assert_clean_failure(&output, ERROR, "vsock: cannot listen on /nonexistent/dir/v.sock: No such file");
}

#[test]
fn vsock_socket_already_in_use_or_not_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let output = run(&["--kernel", guests::HELLO, "--vsock", &format!("cid=3,uds={}", path_str(&live))]);
    assert_clean_failure(&output, ERROR, "is in use: something listens on it");

    let file = dir.path().join("file");
    std::fs::write(&file, b"not a socket").unwrap();
    let output = run(&["--kernel", guests::HELLO, "--vsock", &format!("cid=3,uds={}", path_str(&file))]);
    assert_clean_failure(&output, ERROR, "exists and is not a socket");
    assert_eq!(std::fs::read(&file).unwrap(), b"not a socket", "the file is left alone");
}

#[test]
fn malformed_vsock_option() {
    for (spec, why) in [
        ("cid=3", "uds= is missing"),
        ("uds=/tmp/v.sock", "cid= is missing"),
        ("cid=2,uds=/tmp/v.sock", "the CID must be 3 to 4294967294"),
        ("cid=-1,uds=/tmp/v.sock", "the CID must be 3 to 4294967294"),
        ("cid=3,uds=/tmp/v.sock,port=1", "unknown key 'port'"),
    ] {
        let output = run(&["--kernel", guests::HELLO, "--vsock", spec]);
        assert_clean_failure(&output, USAGE, "--vsock");
        assert!(stderr(&output).contains(why), "{spec}: {}", stderr(&output));
    }
    let output =
        run(&["--kernel", guests::HELLO, "--vsock", "cid=3,uds=/tmp/a", "--vsock", "cid=4,uds=/tmp/b"]);
    assert_clean_failure(&output, USAGE, "'--vsock <cid=N,uds=PATH>' cannot be used multiple times");
}

#[test]
fn unknown_log_level_is_a_usage_error() {
    let output = run(&["--kernel", guests::HELLO, "--log-level", "loud"]);
    assert_clean_failure(&output, USAGE, "--log-level");
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let output = run(&["--kernel", guests::HELLO, "--frobnicate"]);
    assert_clean_failure(&output, USAGE, "--frobnicate");
}

#[test]
fn missing_dev_kvm() {
    if !is_root() {
        return;
    }
    // A private mount namespace where /dev is an empty tmpfs: /dev/kvm does not exist there.
    let script = format!(
        "mount -t tmpfs none /dev && exec {} run --kernel {}",
        env!("CARGO_BIN_EXE_kestrel"),
        guests::HELLO
    );
    let mut command = Command::new("unshare");
    command.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    let output = run_to_end(command, b"");
    assert_clean_failure(&output, ERROR, "cannot open /dev/kvm: No such file or directory");
}

#[test]
fn dev_kvm_not_permitted() {
    if !is_root() {
        return;
    }
    // /dev/kvm is root-only on this host (and the test makes sure of it in a private namespace).
    let output = as_nobody(&["run", "--kernel", guests::HELLO]);
    assert_clean_failure(&output, ERROR, "cannot open /dev/kvm: Permission denied");
}

/// Runs kestrel as the unprivileged `nobody` user, in a mount namespace where /dev/kvm is mode 0600
/// and owned by root whatever the host's udev rules say.
fn as_nobody(args: &[&str]) -> Output {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let script = format!(
        "mount -t tmpfs none /dev && mknod -m 0600 /dev/kvm c 10 232 && \
         exec setpriv --reuid=65534 --regid=65534 --clear-groups {} {}",
        env!("CARGO_BIN_EXE_kestrel"),
        quoted.join(" ")
    );
    let mut command = Command::new("unshare");
    command.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    run_to_end(command, b"")
}

#[test]
fn malformed_net_option() {
    for (spec, why) in [
        ("tap0", "not KEY=VALUE"),
        ("mac=52:54:00:12:34:56", "tap= is missing"),
        ("tap=", "must be 1 to 15 bytes"),
        ("tap=a/b", "not an interface name"),
        ("tap=tap0,mac=52:54:00", "not a MAC address"),
        ("tap=auto,mac=01:00:5e:00:00:01", "multicast"),
    ] {
        let output = run(&["--kernel", guests::HELLO, "--net", spec]);
        assert_clean_failure(&output, USAGE, why);
    }
}

#[test]
fn a_tap_that_cannot_be_created_is_named_with_the_reason() {
    if !kvm_available() {
        return;
    }
    // In a network namespace of the test's own, as root without CAP_NET_ADMIN: the tap cannot be
    // created (and, had it been, it would have gone with the namespace).
    let Some(namespace) = common::netns::NetNamespace::with_tap("ktap-other", "10.231.9.1/24") else {
        return;
    };
    let mut command = Command::new("setpriv");
    command.args(["--bounding-set=-net_admin", "--inh-caps=-net_admin", env!("CARGO_BIN_EXE_kestrel")]);
    command.args(["run", "--kernel", guests::HELLO, "--net", "tap=ktap-new"]);
    let output = run_to_end(namespace.wrap(&command), b"");
    assert_clean_failure(&output, ERROR, "cannot set up tap ktap-new: not permitted (creating a tap needs");
}
