//! `kestrel vm console`: many viewers of a running VM's serial console through the daemon,
//! input reaching the guest, no viewer able to quit the VMM with Ctrl-A X, and the scrollback
//! after the daemon was killed and restarted.
//!
//! `mod needs_core_routes` needs the daemon's VM routes (define, start) from the core work and
//! /dev/kvm; the rest runs on the daemon skeleton.

mod common;

use std::io::{BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};

use common::daemon::Daemon;
use common::*;

/// A `kestrel vm console` with piped stdin and stdout.
struct Viewer {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    _watchdog: Watchdog,
}

impl Viewer {
    fn attach(daemon: &Daemon, vm: &str, extra: &[&str]) -> Viewer {
        let mut args = vec!["vm", "console", vm];
        args.extend_from_slice(extra);
        let mut child = daemon
            .command(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start kestrel vm console");
        let watchdog = Watchdog::new(&child);
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Viewer { child, stdin, stdout, _watchdog: watchdog }
    }

    fn wait_for(&mut self, needle: &str) -> String {
        wait_for_line(&mut self.stdout, needle)
    }

    fn type_line(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    /// Closes stdin; the viewer leaves once the output is quiet.
    fn leave(mut self) -> std::process::ExitStatus {
        self.stdin = None;
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut self.stdout, &mut rest);
        self.child.wait().unwrap()
    }
}

#[test]
fn a_stopped_or_unknown_vm_has_no_console() {
    let daemon = Daemon::start();
    let output = daemon.cli(&["vm", "console", "ghost"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stderr(&output).trim(), "kestrel: error: no VM named 'ghost'");
    let (status, body) = api::request(&daemon.socket, "GET", "/v1/vms/ghost/console/log", "");
    assert_eq!(status, 404, "{body}");
}

/// Needs the daemon's VM routes (define, start) from the core work, and /dev/kvm.
mod needs_core_routes {
    use super::*;

    fn start_hello(daemon: &Daemon, name: &str, exit: &str) {
        daemon.cli_ok(&[
            "vm",
            "define",
            name,
            "--kernel",
            guests::HELLO,
            "--cmdline",
            &format!("exit={exit}"),
            "--memory",
            "64M",
        ]);
        daemon.cli_ok(&["vm", "start", name]);
    }

    #[test]
    fn two_viewers_see_the_same_output_and_input_reaches_the_guest() {
        if !kvm_available() {
            return;
        }
        let daemon = Daemon::start();
        start_hello(&daemon, "echo", "echo");
        let mut one = Viewer::attach(&daemon, "echo", &[]);
        let mut two = Viewer::attach(&daemon, "echo", &[]);
        one.wait_for("echo: ready");
        two.wait_for("echo: ready");
        one.type_line(b"hello from one\n");
        one.wait_for("echo: hello from one");
        two.wait_for("echo: hello from one");
        assert!(one.leave().success());
        assert!(two.leave().success());
    }

    #[test]
    fn ctrl_a_x_from_a_viewer_reaches_the_guest_and_does_not_quit_the_vmm() {
        if !kvm_available() {
            return;
        }
        let daemon = Daemon::start();
        start_hello(&daemon, "echo", "echo");
        let mut viewer = Viewer::attach(&daemon, "echo", &[]);
        viewer.wait_for("echo: ready");
        // Were Ctrl-A X the VMM's quit sequence here, the VMM would stop before the guest read
        // the line; the guest echoing it proves the bytes went to the guest as typed.
        viewer.type_line(b"\x01x and more\n");
        viewer.wait_for("echo: \u{1}x and more");
        assert!(viewer.leave().success());
    }

    #[test]
    fn the_scrollback_survives_a_daemon_kill_and_restart() {
        if !kvm_available() {
            return;
        }
        let mut daemon = Daemon::start();
        start_hello(&daemon, "web", "hang");
        let mut viewer = Viewer::attach(&daemon, "web", &[]);
        viewer.wait_for("exit: hang");
        daemon.kill();
        // The viewer's connection ends with the daemon (one line says so); the VM and its log
        // do not.
        assert_eq!(viewer.leave().code(), Some(1), "the viewer says the daemon went away");
        daemon.restart();
        let mut viewer = Viewer::attach(&daemon, "web", &["--scrollback", "100000"]);
        let seen = viewer.wait_for("exit: hang");
        assert!(seen.contains("Hello from the Kestrel test guest"), "{seen}");
        assert!(viewer.leave().success());
        let (status, log) = api::request(&daemon.socket, "GET", "/v1/vms/web/console/log?bytes=100000", "");
        assert_eq!(status, 200);
        assert!(log.contains("cmdline: exit=hang"), "{log}");
        daemon.cli_ok(&["vm", "destroy", "web"]);
    }
}
