//! Snapshots through the API: pause, snapshot, restore in a fresh `kestrel vmm` process, and the
//! guest goes on exactly where it was. The hello guest's `exit=count` mode counts in memory at
//! user level and prints every COUNT_STEP counts, so a restored guest's first line must be the
//! count after the last one its original printed: a guest restarted, or restored with lost
//! registers or memory, prints something else.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use common::api::{assert_fault, request, start_vmm_with};
use common::{kvm_available, Watchdog, HANG_LIMIT};

/// hello.c's COUNT_STEP.
const COUNT_STEP: u64 = 1 << 25;

/// The counts the guest has printed to its serial log so far.
fn counts(log: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    // The last line may be half written.
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete.lines().filter_map(|line| line.strip_prefix("count: ")?.parse().ok()).collect()
}

/// Waits until the guest has printed at least `n` counts (bounded by the hang limit).
fn wait_for_counts(log: &Path, n: usize) -> Vec<u64> {
    let deadline = Instant::now() + HANG_LIMIT;
    loop {
        let seen = counts(log);
        if seen.len() >= n {
            return seen;
        }
        assert!(Instant::now() < deadline, "only {} counts after {HANG_LIMIT:?}: {seen:?}", seen.len());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_consecutive(counts: &[u64], first: u64) {
    let expected: Vec<u64> = (0..counts.len() as u64).map(|i| first + i * COUNT_STEP).collect();
    assert_eq!(counts, expected, "the guest's counts do not go on from {first}");
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
        let watchdog = Watchdog::within(&child, 4 * HANG_LIMIT);
        Vmm { child, _watchdog: watchdog, socket, log }
    }

    fn put(&self, path: &str, body: &str) -> (u16, String) {
        request(&self.socket, "PUT", path, body)
    }

    fn ok(&self, method: &str, path: &str, body: &str) {
        let (status, reply) = request(&self.socket, method, path, body);
        assert_eq!(status, 204, "{method} {path}: {reply}");
    }

    fn pause(&self) {
        self.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    }

    fn snapshot(&self, state: &Path, memory: &Path, kind: &str) {
        let body = format!(
            r#"{{"snapshot_path": "{}", "mem_file_path": "{}", "snapshot_type": "{kind}"}}"#,
            state.display(),
            memory.display()
        );
        self.ok("PUT", "/snapshot/create", &body);
    }

    fn load_body(state: &Path, memory: &Path) -> String {
        format!(
            r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "File", "backend_path": "{}"}},
                "track_dirty_pages": true, "resume_vm": true}}"#,
            state.display(),
            memory.display()
        )
    }
}

/// Copies the data ranges of the sparse file `diff` (SEEK_DATA to SEEK_HOLE) into `base`.
fn lay_over(diff: &Path, base: &Path) {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let diff = std::fs::File::open(diff).unwrap();
    let base = std::fs::OpenOptions::new().write(true).open(base).unwrap();
    let mut offset = 0;
    loop {
        // SAFETY: lseek on an open descriptor has no memory-safety preconditions.
        let start = unsafe { libc::lseek(diff.as_raw_fd(), offset, libc::SEEK_DATA) };
        if start < 0 {
            break; // ENXIO: no data after `offset`.
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(diff.as_raw_fd(), start, libc::SEEK_HOLE) };
        let mut data = vec![0u8; (end - start) as usize];
        diff.read_exact_at(&mut data, start as u64).unwrap();
        base.write_all_at(&data, start as u64).unwrap();
        offset = end;
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_restored_guest_counts_on_from_where_it_was_and_diffs_hold_only_new_pages() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (state1, memory1) = (dir.path().join("state1"), dir.path().join("memory1"));

    // 1. Boot the counting guest with dirty-page tracking, let it count, pause, snapshot.
    let first = Vmm::start(dir.path(), "first");
    let boot = format!(r#"{{"kernel_image_path": "{}", "boot_args": "exit=count"}}"#, guests::HELLO);
    first.ok("PUT", "/boot-source", &boot);
    first.ok("PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 64, "track_dirty_pages": true}"#);
    assert_fault(
        first.put(
            "/snapshot/create",
            &format!(
                r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
                state1.display(),
                memory1.display()
            ),
        ),
        "before starting",
    );
    first.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    wait_for_counts(&first.log, 3);
    assert_fault(
        first.put(
            "/snapshot/create",
            &format!(
                r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
                state1.display(),
                memory1.display()
            ),
        ),
        "must be paused",
    );
    first.pause();
    let before = counts(&first.log);
    first.snapshot(&state1, &memory1, "Full");
    // The paused guest did not go on counting while it was saved.
    assert_eq!(counts(&first.log), before);
    drop(first);
    let last_before = *before.last().unwrap();

    // 2. Restore in a fresh process: the first count printed is the next one.
    let second = Vmm::start(dir.path(), "second");
    second.ok("PUT", "/snapshot/load", &Vmm::load_body(&state1, &memory1));
    let after = wait_for_counts(&second.log, 3);
    assert_consecutive(&after, last_before + COUNT_STEP);

    // 3. A diff snapshot of the restored guest holds only the pages written since it was restored
    //    (the counter, the stack, little else): a sparse file. Laid over a copy of the first memory
    //    file, it makes this moment's full memory.
    second.pause();
    let second_counts = counts(&second.log);
    let (state2, diff) = (dir.path().join("state2"), dir.path().join("diff"));
    second.snapshot(&state2, &diff, "Diff");
    let diff_bytes = std::fs::metadata(&diff).unwrap().blocks() * 512;
    assert!(diff_bytes > 0 && diff_bytes < 1 << 20, "a diff of a counting guest took {diff_bytes} bytes");
    let memory2 = dir.path().join("memory2");
    std::fs::copy(&memory1, &memory2).unwrap();
    lay_over(&diff, &memory2);
    // A full snapshot into the file the guest's memory is mapped from replaces that file without
    // touching the pages under the guest: it goes on counting from where it was.
    let (state3, memory3) = (dir.path().join("state3"), memory1.clone());
    second.snapshot(&state3, &memory3, "Full");
    second.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    let goes_on = wait_for_counts(&second.log, second_counts.len() + 2);
    assert_consecutive(&goes_on[second_counts.len()..], *second_counts.last().unwrap() + COUNT_STEP);
    drop(second);

    // 4. Bad snapshot files are refused with a clear error, and the fresh VMM stays loadable.
    let third = Vmm::start(dir.path(), "third");
    let bytes = std::fs::read(&state2).unwrap();
    let corrupt = dir.path().join("corrupt");
    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 1;
    std::fs::write(&corrupt, &flipped).unwrap();
    assert_fault(third.put("/snapshot/load", &Vmm::load_body(&corrupt, &memory2)), "corrupt");
    std::fs::write(&corrupt, &bytes[..bytes.len() - 100]).unwrap();
    assert_fault(third.put("/snapshot/load", &Vmm::load_body(&corrupt, &memory2)), "truncated");
    let mut newer = bytes.clone();
    newer[8] = newer[8].wrapping_add(1);
    std::fs::write(&corrupt, &newer).unwrap();
    assert_fault(third.put("/snapshot/load", &Vmm::load_body(&corrupt, &memory2)), "format version");
    std::fs::write(&corrupt, b"not a snapshot").unwrap();
    assert_fault(third.put("/snapshot/load", &Vmm::load_body(&corrupt, &memory2)), "not a Kestrel snapshot");
    let short = dir.path().join("short");
    std::fs::write(&short, vec![0u8; 4096]).unwrap();
    assert_fault(third.put("/snapshot/load", &Vmm::load_body(&state2, &short)), "the snapshot needs");
    assert_fault(
        third.put("/snapshot/load", &Vmm::load_body(&dir.path().join("none"), &memory2)),
        "No such file",
    );

    // 5. The diff-updated memory file restores the second guest where it was paused.
    third.ok("PUT", "/snapshot/load", &Vmm::load_body(&state2, &memory2));
    let resumed = wait_for_counts(&third.log, 2);
    assert_consecutive(&resumed, *second_counts.last().unwrap() + COUNT_STEP);
}
