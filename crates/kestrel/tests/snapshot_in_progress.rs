//! A snapshot runs off the VMM's event loop: while one client waits for `PUT /snapshot/create`
//! of a guest with 1 GiB of written memory, another client's `GET /` is answered (and says a
//! snapshot is in progress), a conflicting request is refused as busy, and the first client then
//! gets its 204 and the snapshot restores as before.

mod common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::api::{request, start_vmm_with};
use common::{kvm_available, Watchdog, HANG_LIMIT};

/// hello.c's COUNT_STEP.
const COUNT_STEP: u64 = 1 << 25;
/// The guest memory the counting guest rewrites before each count it prints.
const TOUCH_MIB: u64 = 1024;

/// The counts the guest has printed to its serial log so far.
fn counts(log: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete.lines().filter_map(|line| line.strip_prefix("count: ")?.parse().ok()).collect()
}

/// Waits until the guest has printed at least `n` counts (bounded by the hang limit).
fn wait_for_counts(log: &Path, n: usize) -> Vec<u64> {
    let deadline = Instant::now() + 2 * HANG_LIMIT;
    loop {
        let seen = counts(log);
        if seen.len() >= n {
            return seen;
        }
        assert!(Instant::now() < deadline, "only {} counts: {seen:?}", seen.len());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `kestrel vmm` process with its serial log; killed when dropped.
struct Vmm {
    child: Child,
    _watchdog: Watchdog,
    socket: PathBuf,
    log: PathBuf,
}

impl Vmm {
    fn start(dir: &Path, name: &str) -> Vmm {
        let socket = dir.join(format!("{name}.sock"));
        let log = dir.join(format!("{name}.log"));
        let serial = format!("file:{}", log.display());
        let child = start_vmm_with(&socket, &["--serial", &serial]);
        let watchdog = Watchdog::within(&child, 6 * HANG_LIMIT);
        Vmm { child, _watchdog: watchdog, socket, log }
    }

    fn ok(&self, method: &str, path: &str, body: &str) {
        let (status, reply) = request(&self.socket, method, path, body);
        assert_eq!(status, 204, "{method} {path}: {reply}");
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What client B saw while client A's snapshot ran.
#[derive(Default, Debug)]
struct Observed {
    /// `GET /` answers that named the snapshot as in progress.
    in_progress_answers: u32,
    /// Conflicting requests refused as busy.
    busy_refusals: u32,
    /// The slowest `GET /` answer.
    slowest: Duration,
}

#[test]
fn get_is_answered_while_a_snapshot_is_written_and_conflicts_are_refused() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (state, memory) = (dir.path().join("state"), dir.path().join("memory"));
    let first = Vmm::start(dir.path(), "first");
    let boot = format!(
        r#"{{"kernel_image_path": "{}", "boot_args": "exit=count touch_mib={TOUCH_MIB}"}}"#,
        guests::HELLO
    );
    first.ok("PUT", "/boot-source", &boot);
    first.ok("PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 1280}"#);
    first.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    // Each printed count comes after the whole touched range was written.
    wait_for_counts(&first.log, 1);
    first.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let before = counts(&first.log);

    // Client A asks for the snapshot and waits for its answer.
    let done = Arc::new(AtomicBool::new(false));
    let (socket, a_done) = (first.socket.clone(), done.clone());
    let body =
        format!(r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#, state.display(), memory.display());
    let client_a = std::thread::spawn(move || {
        let answer = request(&socket, "PUT", "/snapshot/create", &body);
        a_done.store(true, Ordering::SeqCst);
        answer
    });

    // Client B asks `GET /` on its own connections until A has its answer.
    let mut observed = Observed::default();
    while !done.load(Ordering::SeqCst) {
        let asked = Instant::now();
        let (status, info) = request(&first.socket, "GET", "/", "");
        observed.slowest = observed.slowest.max(asked.elapsed());
        assert_eq!(status, 200, "{info}");
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["state"], "Paused", "{info}");
        if info["x-kestrel"]["operation_in_progress"] != "SnapshotCreate" {
            continue;
        }
        // Seen before A's answer: the controller had not had the snapshot's report yet.
        observed.in_progress_answers += 1;
        let (status, refusal) = request(&first.socket, "PATCH", "/vm", r#"{"state": "Paused"}"#);
        // 204 only if the snapshot ended in between (pausing a paused VM succeeds).
        if status == 400 {
            assert!(refusal.contains("busy: PUT /snapshot/create is in progress"), "{refusal}");
            observed.busy_refusals += 1;
        }
    }
    let (status, reply) = client_a.join().unwrap();
    assert_eq!(status, 204, "{reply}");
    eprintln!("during the snapshot: {observed:?}");
    assert!(observed.in_progress_answers > 0, "GET / was not answered during the snapshot: {observed:?}");
    assert!(observed.busy_refusals > 0, "no conflicting request was refused: {observed:?}");
    let (_, info) = request(&first.socket, "GET", "/", "");
    assert!(!info.contains("operation_in_progress"), "the snapshot is over: {info}");
    assert_eq!(counts(&first.log), before, "the paused guest did not run during the snapshot");
    drop(first);

    // The snapshot restores as before: the guest counts on from its last printed count.
    let second = Vmm::start(dir.path(), "second");
    let load = format!(
        r#"{{"snapshot_path": "{}", "mem_file_path": "{}", "resume_vm": true}}"#,
        state.display(),
        memory.display()
    );
    second.ok("PUT", "/snapshot/load", &load);
    let after = wait_for_counts(&second.log, 1);
    assert_eq!(after[0], before.last().unwrap() + COUNT_STEP, "{after:?}");
}
