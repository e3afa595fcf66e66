//! Snapshots through the API: pause, snapshot, restore in a fresh `kestrel vmm` process, and the
//! guest goes on exactly where it was. The hello guest's `exit=count` mode counts in memory at
//! user level and prints every COUNT_STEP counts, so a restored guest's first line must be the
//! count after the last one its original printed: a guest restarted, or restored with lost
//! registers or memory, prints something else. A snapshot runs off the VMM's event loop: while
//! one client waits for it, another's `GET /` is answered and conflicting requests are refused.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::api::{assert_fault, request, ApiVmm};
use common::{kvm_available, HANG_LIMIT};

/// hello.c's COUNT_STEP.
const COUNT_STEP: u64 = 1 << 25;
/// The guest memory the counting guest rewrites before each count it prints, for a snapshot that
/// takes a while.
const TOUCH_MIB: u64 = 1024;

/// The counts the guest has printed to its serial log so far.
///
/// The guest writes a line a byte at a time, so a pause can cut one: its start stays in the
/// saved VM's log and the restored VM's log begins with its end ("unt: 1234", "34", or only the
/// newline). That first fragment is the count just before the first whole one, and is counted
/// as such when it matches it; anything else there is left out (and the assertions then fail).
fn counts(log: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    // The last line may be half written.
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    let mut counts: Vec<u64> =
        complete.lines().filter_map(|line| line.strip_prefix("count: ")?.parse().ok()).collect();
    let first_line = complete.lines().next().filter(|line| !line.starts_with("count: "));
    if let (Some(fragment), Some(&next)) = (first_line, counts.first()) {
        if let Some(cut) = next.checked_sub(COUNT_STEP) {
            if format!("count: {cut}").ends_with(fragment) {
                counts.insert(0, cut);
            }
        }
    }
    counts
}

/// Waits until the guest has printed at least `n` counts (bounded by twice the hang limit: a guest
/// touching 1 GiB per count is slow to print).
fn wait_for_counts(log: &Path, n: usize) -> Vec<u64> {
    let deadline = Instant::now() + 2 * HANG_LIMIT;
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
struct Vmm(ApiVmm);

impl std::ops::Deref for Vmm {
    type Target = ApiVmm;
    fn deref(&self) -> &ApiVmm {
        &self.0
    }
}

impl Vmm {
    fn start(dir: &Path, name: &str) -> Vmm {
        Vmm(ApiVmm::start(dir, name, &[], 6 * HANG_LIMIT))
    }

    fn put(&self, path: &str, body: &str) -> (u16, String) {
        request(&self.socket, "PUT", path, body)
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

/// CRC-32 (IEEE), as the state file's header has it.
fn crc32(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!0u32, |crc, &byte| {
        (0..8).fold(
            crc ^ u32::from(byte),
            |crc, _| if crc & 1 == 1 { crc >> 1 ^ 0xedb8_8320 } else { crc >> 1 },
        )
    })
}

/// Rewrites the first payload byte of the state file's `section` section and fixes up the CRC,
/// as someone editing a state file would. The state file is a 24-byte header (magic, version,
/// length, CRC-32 of the payload) and sections of (name length u8, name, version u32, length
/// u32, payload).
fn forge(state: &Path, section: &str, first_byte: u8) -> Vec<u8> {
    let mut bytes = std::fs::read(state).unwrap();
    let mut at = 24;
    loop {
        assert!(at < bytes.len(), "no {section} section");
        let name_len = usize::from(bytes[at]);
        let name = &bytes[at + 1..at + 1 + name_len];
        let length_at = at + 1 + name_len + 4;
        let length = u32::from_le_bytes(bytes[length_at..length_at + 4].try_into().unwrap()) as usize;
        let payload_at = length_at + 4;
        if name == section.as_bytes() {
            bytes[payload_at] = first_byte;
            break;
        }
        at = payload_at + length;
    }
    let crc = crc32(&bytes[24..]);
    bytes[20..24].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// Boots the counting guest (with `drive` as disk `rootfs`, if given), lets it count, pauses it
/// and snapshots it; returns the VMM (paused) and the last count it printed.
fn counting_snapshot(
    dir: &Path,
    name: &str,
    drive: Option<&Path>,
    state: &Path,
    memory: &Path,
) -> (Vmm, u64) {
    let vmm = Vmm::start(dir, name);
    let boot = format!(r#"{{"kernel_image_path": "{}", "boot_args": "exit=count"}}"#, guests::HELLO);
    vmm.ok("PUT", "/boot-source", &boot);
    vmm.ok("PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 64}"#);
    if let Some(drive) = drive {
        let body = format!(
            r#"{{"drive_id": "rootfs", "path_on_host": "{}", "is_root_device": false, "is_read_only": false}}"#,
            drive.display()
        );
        vmm.ok("PUT", "/drives/rootfs", &body);
    }
    vmm.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    wait_for_counts(&vmm.log, 2);
    vmm.pause();
    let last = *counts(&vmm.log).last().unwrap();
    vmm.snapshot(state, memory, "Full");
    (vmm, last)
}

/// A state file whose CMOS index is 0xFF (its CRC fixed up) must not take the VMM down: the load
/// is refused with 400, or it succeeds and the guest goes on running. Snapshot files are the
/// user's alone whatever the umask.
#[test]
fn a_forged_cmos_index_does_not_abort_the_vmm_and_snapshot_files_are_0600() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (state, memory) = (dir.path().join("state"), dir.path().join("memory"));
    // SAFETY: umask only swaps the process's file-creation mask (022 is the usual one); the VMM
    // started next inherits it.
    unsafe { libc::umask(0o022) };
    let (first, last) = counting_snapshot(dir.path(), "first", None, &state, &memory);
    drop(first);
    for file in [&state, &memory] {
        let mode = std::fs::metadata(file).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}: {mode:o}", file.display());
    }

    let forged = dir.path().join("forged");
    std::fs::write(&forged, forge(&state, "cmos", 0xff)).unwrap();
    let mut second = Vmm::start(dir.path(), "second");
    let (status, reply) = second.put("/snapshot/load", &Vmm::load_body(&forged, &memory));
    if status == 204 {
        let after = wait_for_counts(&second.log, 2);
        assert_consecutive(&after, last + COUNT_STEP);
        assert_eq!(second.0.child.try_wait().unwrap(), None, "the VMM is still running");
        assert_eq!(request(&second.socket, "GET", "/", "").0, 200);
    } else {
        assert_eq!(status, 400, "{reply}");
        assert!(reply.contains("CMOS"), "{reply}");
    }
}

/// A counting guest with a 1 MiB disk (`rootfs.img`, drive ID `rootfs`), snapshotted into `dir`
/// and its VMM gone.
struct SnapshotWithDisk {
    disk: PathBuf,
    state: PathBuf,
    memory: PathBuf,
    /// The last count the guest printed before the snapshot.
    last: u64,
}

fn snapshot_with_a_disk(dir: &Path) -> SnapshotWithDisk {
    let disk = dir.join("rootfs.img");
    std::fs::write(&disk, vec![0x5au8; 1 << 20]).unwrap();
    let (state, memory) = (dir.join("state"), dir.join("memory"));
    let (first, last) = counting_snapshot(dir, "first", Some(&disk), &state, &memory);
    drop(first);
    SnapshotWithDisk { disk, state, memory, last }
}

/// The disks a state file names are checked before they are opened for the guest: a FIFO is
/// refused at once (it would hang the open, and the API with it), a file of another size than
/// the guest's disk (an `/etc/passwd`) is refused, the right file restores.
#[test]
fn a_restored_disk_must_be_a_file_of_the_size_the_guest_saw() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let SnapshotWithDisk { disk, state, memory, last } = snapshot_with_a_disk(dir.path());
    let saved = dir.path().join("saved.img");
    std::fs::rename(&disk, &saved).unwrap();

    let third = Vmm::start(dir.path(), "third");
    assert!(std::process::Command::new("mkfifo").arg(&disk).status().unwrap().success());
    let started = Instant::now();
    assert_fault(
        third.put("/snapshot/load", &Vmm::load_body(&state, &memory)),
        "not a regular file or block device (it is a FIFO)",
    );
    assert!(started.elapsed() < Duration::from_secs(5), "the FIFO took {:?}", started.elapsed());
    std::fs::remove_file(&disk).unwrap();

    std::fs::copy("/etc/passwd", &disk).unwrap();
    assert_fault(
        third.put("/snapshot/load", &Vmm::load_body(&state, &memory)),
        "2048 when the snapshot was taken",
    );

    std::fs::rename(&saved, &disk).unwrap();
    third.ok("PUT", "/snapshot/load", &Vmm::load_body(&state, &memory));
    assert_consecutive(&wait_for_counts(&third.log, 2), last + COUNT_STEP);
}

/// `drive_overrides` (an `x-kestrel` extension of `PUT /snapshot/load`) names each disk's host
/// file instead of the state file.
#[test]
fn drive_overrides_are_checked_like_saved_paths() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let SnapshotWithDisk { disk, state, memory, last } = snapshot_with_a_disk(dir.path());
    let load = |drive_id: &str, path: &Path| {
        let mut body: serde_json::Value = serde_json::from_str(&Vmm::load_body(&state, &memory)).unwrap();
        body["drive_overrides"] = serde_json::json!([{"drive_id": drive_id, "path_on_host": path}]);
        body.to_string()
    };
    let second = Vmm::start(dir.path(), "second");
    let fifo = dir.path().join("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let started = Instant::now();
    assert_fault(
        second.put("/snapshot/load", &load("rootfs", &fifo)),
        "not a regular file or block device (it is a FIFO)",
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let passwd = dir.path().join("passwd");
    std::fs::copy("/etc/passwd", &passwd).unwrap();
    assert_fault(second.put("/snapshot/load", &load("rootfs", &passwd)), "when the snapshot was taken");
    assert_fault(second.put("/snapshot/load", &load("data", &disk)), "no drive \"data\"");
    let copy = dir.path().join("copy.img");
    std::fs::copy(&disk, &copy).unwrap();
    std::fs::remove_file(&disk).unwrap();
    second.ok("PUT", "/snapshot/load", &load("rootfs", &copy));
    assert_consecutive(&wait_for_counts(&second.log, 2), last + COUNT_STEP);
}

/// A restored VM's drive answers `PATCH /drives` (a rate limiter, a new file) as a booted one's
/// does, and `GET /vm/config` shows the drive with what the PATCH changed.
#[test]
fn a_restored_vms_drive_can_be_patched() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let SnapshotWithDisk { disk, state, memory, last } = snapshot_with_a_disk(dir.path());
    let second = Vmm::start(dir.path(), "second");
    second.ok("PUT", "/snapshot/load", &Vmm::load_body(&state, &memory));
    assert_consecutive(&wait_for_counts(&second.log, 2), last + COUNT_STEP);
    let limited = r#"{"drive_id": "rootfs", "rate_limiter": {"ops": {"size": 100, "refill_time": 1000}}}"#;
    second.ok("PATCH", "/drives/rootfs", limited);
    let copy = dir.path().join("copy.img");
    std::fs::copy(&disk, &copy).unwrap();
    second.ok(
        "PATCH",
        "/drives/rootfs",
        &format!(r#"{{"drive_id": "rootfs", "path_on_host": "{}"}}"#, copy.display()),
    );
    let (status, config) = request(&second.socket, "GET", "/vm/config", "");
    assert_eq!(status, 200, "{config}");
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let drive = &config["drives"][0];
    assert_eq!(drive["drive_id"], "rootfs", "{config}");
    assert_eq!(drive["path_on_host"], copy.to_str().unwrap(), "{config}");
    assert_eq!(drive["rate_limiter"]["ops"]["size"], 100, "{config}");
    assert_fault(
        request(&second.socket, "PATCH", "/drives/data", r#"{"drive_id": "data", "rate_limiter": {}}"#),
        "data",
    );
}

/// Guest RAM locked in host memory cannot give a balloon's pages back: a restore of a VM with a
/// balloon onto locked memory is refused (as a boot is), and onto unlocked memory the restored
/// balloon answers `PATCH /balloon`.
#[test]
fn a_snapshot_with_a_balloon_is_not_restored_onto_locked_memory() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (state, memory) = (dir.path().join("state"), dir.path().join("memory"));
    let first = Vmm::start(dir.path(), "first");
    let boot = format!(r#"{{"kernel_image_path": "{}", "boot_args": "exit=count"}}"#, guests::HELLO);
    first.ok("PUT", "/boot-source", &boot);
    first.ok("PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 64}"#);
    first.ok("PUT", "/balloon", r#"{"amount_mib": 0, "deflate_on_oom": false}"#);
    first.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    wait_for_counts(&first.log, 2);
    first.pause();
    first.snapshot(&state, &memory, "Full");
    drop(first);

    let second = Vmm::start(dir.path(), "second");
    let mut locked: serde_json::Value = serde_json::from_str(&Vmm::load_body(&state, &memory)).unwrap();
    locked["x-kestrel"] = serde_json::json!({"mlock": true});
    assert_fault(second.put("/snapshot/load", &locked.to_string()), "mlock keeps guest RAM resident");
    second.ok("PUT", "/snapshot/load", &Vmm::load_body(&state, &memory));
    wait_for_counts(&second.log, 2);
    second.ok("PATCH", "/balloon", r#"{"amount_mib": 4}"#);
    let (status, balloon) = request(&second.socket, "GET", "/balloon", "");
    assert_eq!(status, 200, "{balloon}");
    assert!(balloon.contains(r#""amount_mib":4"#), "{balloon}");
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
