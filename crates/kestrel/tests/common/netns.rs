//! A private network namespace holding one tap, for tests of virtio-net: Kestrel runs inside it
//! (`ip netns exec`), the host side of the tap gets an address only there, and nothing in it has
//! a route anywhere else, so no frame of a test can leave it. The namespace, with its tap, is
//! deleted when the guard drops, when a test fails too.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::is_root;

/// A network namespace of this test run, with a persistent tap in it, up and addressed.
pub struct NetNamespace {
    name: String,
    tap: String,
}

impl NetNamespace {
    /// A fresh namespace with the tap `tap` (at `host_cidr`, e.g. `10.231.0.1/24`) and `lo` up.
    /// `None` when the test must skip (not root, or no /dev/net/tun); on CI that is a failure.
    pub fn with_tap(tap: &str, host_cidr: &str) -> Option<NetNamespace> {
        if !is_root() {
            eprintln!("skipping: network namespaces and taps need root");
            return None;
        }
        if let Err(e) = File::open("/dev/net/tun") {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("this test needs /dev/net/tun, which cannot be opened on CI: {e}");
            }
            eprintln!("skipping: /dev/net/tun cannot be opened ({e})");
            return None;
        }
        let name = unique_name();
        ip(&["netns", "add", &name]);
        // From here on the guard exists, so a failing step still deletes the namespace.
        let namespace = NetNamespace { name, tap: tap.to_owned() };
        namespace.ip(&["link", "set", "lo", "up"]);
        namespace.ip(&["tuntap", "add", "dev", tap, "mode", "tap"]);
        namespace.ip(&["addr", "add", host_cidr, "dev", tap]);
        namespace.ip(&["link", "set", tap, "up"]);
        Some(namespace)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <namespace> args...`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        ip(&[&["-n", &self.name], args].concat());
    }

    /// `command` run inside the namespace (`ip netns exec` execs it: same process, same status).
    pub fn wrap(&self, command: &Command) -> Command {
        let mut wrapped = Command::new("ip");
        wrapped.args([OsStr::new("netns"), OsStr::new("exec"), OsStr::new(&self.name)]);
        wrapped.arg(command.get_program()).args(command.get_args());
        wrapped
    }

    /// Moves the calling thread into the namespace: sockets it creates afterwards live there.
    /// Meant for a thread of its own (the network namespace is per thread).
    pub fn enter_on_this_thread(&self) {
        let path = format!("/var/run/netns/{}", self.name);
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns with a namespace descriptor we hold open; it changes only this thread's
        // network namespace and touches no memory of ours.
        let result = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(result, 0, "setns into {}: {}", self.name, std::io::Error::last_os_error());
    }
}

impl Drop for NetNamespace {
    fn drop(&mut self) {
        // Deleting the namespace deletes its devices too; the tap goes first all the same, so
        // that nothing of it can outlive the test.
        let _ = Command::new("ip")
            .args(["-n", &self.name, "link", "del", &self.tap])
            .stderr(Stdio::null())
            .status();
        match Command::new("ip").args(["netns", "del", &self.name]).status() {
            Ok(status) if status.success() => {}
            other => eprintln!("cannot delete network namespace {}: {other:?}", self.name),
        }
    }
}

/// `kestrel-test-<pid>-<nanoseconds>-<counter>`: unique across concurrent test runs and threads.
fn unique_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("kestrel-test-{}-{nanos}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().unwrap_or_else(|e| panic!("run ip: {e}"));
    assert!(
        output.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}
