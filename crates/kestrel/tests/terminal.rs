//! The console on a real terminal: raw mode while the VM runs, the user's settings restored after.
//! `script` (util-linux) gives Kestrel a pseudo-terminal, as a user's shell would.

mod common;

use std::io::{BufReader, Read, Write};
use std::process::{Command, Stdio};

use common::*;

/// Runs `kestrel run` on the echo guest inside a pty, types `keys` once the guest is ready, and
/// returns (everything the pty showed, terminal settings before, terminal settings after).
fn run_in_terminal(guest_exit: &str, keys: &[u8]) -> (String, String, String) {
    let session = TerminalSession::new(guest_exit);
    let mut child = Command::new("script")
        .args(["-qec", &session.shell, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start script (util-linux)");
    let watchdog = Watchdog::new(&child);
    let mut stdin = child.stdin.take().unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    // Kestrel enters raw mode before any vCPU runs, so once the guest speaks, keys are raw.
    let mut shown = wait_for_line(&mut reader, "echo: ready");
    if !keys.is_empty() {
        stdin.write_all(keys).unwrap();
    }
    shown.push_str(&wait_for_line(&mut reader, "kestrel-status="));
    drop(stdin);
    let mut rest = String::new();
    let _ = reader.read_to_string(&mut rest);
    shown.push_str(&rest);
    child.stdout = None;
    // Reading is done; wait_with_limit guards the rest (the watchdog must go before the child is reaped).
    drop(watchdog);
    let output = wait_with_limit(child);
    assert!(output.status.success(), "script failed: {}", stderr(&output));
    session.finish(shown)
}

#[test]
fn keys_are_raw_while_running_and_the_terminal_is_restored() {
    if !kvm_available() {
        return;
    }
    // Ctrl-C must reach the guest (not kill Kestrel), and the typed text must not be echoed by the
    // terminal: both only hold in raw mode.
    let (shown, before, after) = run_in_terminal("echo", b"ab\x03cd\r");
    assert!(shown.contains("echo: ab\x03cd"), "{shown:?}");
    assert!(shown.contains("kestrel-status=3"), "{shown:?}");
    assert!(!shown.contains("ab^Ccd"), "the terminal echoed the keys: {shown:?}");
    assert_eq!(before, after, "terminal settings were not restored");
}

#[test]
fn the_terminal_is_restored_after_ctrl_a_x() {
    if !kvm_available() {
        return;
    }
    let (shown, before, after) = run_in_terminal("echo", b"\x01x");
    assert!(shown.contains("kestrel-status=6"), "{shown:?}");
    assert_eq!(before, after, "terminal settings were not restored");
}

#[test]
fn the_terminal_is_restored_after_a_vcpu_failure() {
    if !kvm_available() {
        return;
    }
    // The echo guest waits for a line; an unrelated failure path would need another guest, so use
    // the triple fault that `exit=triple-fault` causes right after start-up.
    let (shown, before, after) = run_in_terminal_without_ready("triple-fault");
    assert!(shown.contains("kestrel-status=4"), "{shown:?}");
    assert_eq!(before, after, "terminal settings were not restored");
}

/// Like [`run_in_terminal`] for guests that end on their own without waiting for input.
fn run_in_terminal_without_ready(guest_exit: &str) -> (String, String, String) {
    let session = TerminalSession::new(guest_exit);
    let mut command = Command::new("script");
    command.args(["-qec", &session.shell, "/dev/null"]);
    let output = run_to_end(command, b"");
    assert!(output.status.success(), "script failed: {}", stderr(&output));
    session.finish(stdout(&output))
}

/// A shell line that records the terminal settings around one `kestrel run` and prints its status.
struct TerminalSession {
    dir: tempfile::TempDir,
    shell: String,
}

impl TerminalSession {
    fn new(guest_exit: &str) -> TerminalSession {
        let dir = tempfile::tempdir().unwrap();
        let shell = format!(
            "stty -g > {dir}/before; {kestrel} run --kernel {guest} --cmdline exit={guest_exit}; \
             echo kestrel-status=$?; stty -g > {dir}/after",
            dir = path_str(dir.path()),
            kestrel = env!("CARGO_BIN_EXE_kestrel"),
            guest = guests::HELLO,
        );
        TerminalSession { dir, shell }
    }

    /// (what the terminal showed, settings before, settings after)
    fn finish(self, shown: String) -> (String, String, String) {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap().trim().to_owned();
        (shown, read("before"), read("after"))
    }
}
