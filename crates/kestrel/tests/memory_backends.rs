//! Guest memory backends: what the host kernel shows of a running VMM's guest RAM
//! (/proc/PID/smaps and numa_maps) for each `--memory` option, hugetlb pages taken from the pool
//! (and a clear error when the pool is short), and snapshots taken from and restored onto memfd
//! and hugetlb memory: the restored counting guest goes on from where it was.

mod common;

use std::path::Path;
use std::process::Child;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::api::ApiVmm;
use common::{is_root, kestrel, kvm_available, path_str, Watchdog, HANG_LIMIT};

/// One mapping of /proc/PID/smaps: its header line, size in KiB, kernel page size and flags.
#[derive(Debug)]
struct Mapping {
    header: String,
    size_kib: u64,
    kernel_page_kib: u64,
    flags: Vec<String>,
}

fn mappings(pid: u32) -> Vec<Mapping> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut found: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let kib = |rest: &str| rest.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
        if let Some(rest) = line.strip_prefix("Size:") {
            found.last_mut().unwrap().size_kib = kib(rest);
        } else if let Some(rest) = line.strip_prefix("KernelPageSize:") {
            found.last_mut().unwrap().kernel_page_kib = kib(rest);
        } else if let Some(rest) = line.strip_prefix("VmFlags:") {
            found.last_mut().unwrap().flags = rest.split_whitespace().map(str::to_owned).collect();
        } else if line
            .split_whitespace()
            .next()
            .is_some_and(|range| range.contains('-') && !range.ends_with(':'))
        {
            found.push(Mapping {
                header: line.to_owned(),
                size_kib: 0,
                kernel_page_kib: 0,
                flags: Vec::new(),
            });
        }
    }
    found
}

/// The mapping of guest RAM (the one region of a small guest: `mib` MiB). Private anonymous RAM
/// may have merged with a neighbouring anonymous mapping of the same flags (the writable head of a
/// malloc arena, say), so the mapping can be a little larger than guest RAM, never smaller.
fn guest_ram(pid: u32, mib: u64) -> Mapping {
    let all = mappings(pid);
    let (least, most) = (mib << 10, (mib << 10) + (mib << 7));
    let mut ram = all
        .into_iter()
        .filter(|m| (least..most).contains(&m.size_kib) && m.flags.iter().any(|flag| flag == "wr"));
    let first = ram.next().expect("a mapping the size of guest RAM");
    assert!(ram.next().is_none(), "one mapping of {mib} MiB");
    first
}

fn wait_for_line(log: &Path, needle: &str) {
    let deadline = Instant::now() + HANG_LIMIT;
    while !std::fs::read_to_string(log).unwrap_or_default().contains(needle) {
        assert!(Instant::now() < deadline, "the guest never printed {needle:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running VMM, killed when dropped (its watchdog kills it if the test hangs).
struct Killed(Child, #[allow(dead_code)] Watchdog);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `kestrel run` of the hello guest spinning (`exit=hang`) with `--memory memory`, once it runs.
fn run_hanging(dir: &Path, memory: &str) -> Killed {
    let log = dir.join(format!("{}.log", memory.replace([',', '='], "_")));
    let child = kestrel()
        .args(["run", "--kernel", guests::HELLO, "--cmdline", "exit=hang", "--memory", memory])
        .args(["--serial", &format!("file:{}", path_str(&log))])
        .spawn()
        .unwrap();
    let watchdog = Watchdog::within(&child, HANG_LIMIT);
    let running = Killed(child, watchdog);
    wait_for_line(&log, "exit: hang");
    running
}

#[test]
fn memfd_thp_ksm_mlock_and_numa_show_in_the_vmms_mappings() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let anon = run_hanging(dir.path(), "64M");
    let ram = guest_ram(anon.0.id(), 64);
    assert!(!ram.header.contains("memfd") && !ram.flags.contains(&"sh".to_owned()), "{ram:?}");
    for flag in ["hg", "mg", "lo"] {
        assert!(!ram.flags.contains(&flag.to_owned()), "nothing asked for {flag}: {ram:?}");
    }
    drop(anon);

    let memfd = run_hanging(dir.path(), "64M,backend=memfd,thp=on");
    let ram = guest_ram(memfd.0.id(), 64);
    assert!(ram.header.ends_with("/memfd:kestrel-guest-ram (deleted)"), "{ram:?}");
    assert!(ram.flags.contains(&"sh".to_owned()) && ram.flags.contains(&"hg".to_owned()), "{ram:?}");
    drop(memfd);

    let advised = run_hanging(dir.path(), "64M,thp=on,ksm=on,mlock=on,numa=0");
    let pid = advised.0.id();
    let ram = guest_ram(pid, 64);
    for flag in ["hg", "mg", "lo"] {
        assert!(ram.flags.contains(&flag.to_owned()), "{flag}: {ram:?}");
    }
    let start = ram.header.split('-').next().unwrap().to_owned();
    let numa_maps = std::fs::read_to_string(format!("/proc/{pid}/numa_maps")).unwrap();
    let line =
        numa_maps.lines().find(|l| l.starts_with(&format!("{start} "))).expect("guest RAM in numa_maps");
    assert!(line.contains("bind:0"), "{line}");
}

#[test]
fn bad_memory_options_are_clear_errors() {
    if !kvm_available() {
        return;
    }
    let cases = [
        ("65M,hugepages=2M", "not a multiple of the 2M huge page size"),
        ("64M,numa=999", "NUMA node 999 does not exist"),
        ("64M,backend=memfd,ksm=on", "ksm merges only anonymous"),
    ];
    for (memory, expected) in cases {
        let output = kestrel()
            .args(["run", "--kernel", guests::HELLO, "--serial", "none", "--memory", memory])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(expected), "{memory}: {stderr}");
    }
}

/// Tests that change the host's huge page pool take turns.
static HUGE_PAGES: Mutex<()> = Mutex::new(());
const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

fn meminfo(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = text.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Grows the 2M pool by `pages` for as long as it lives, then puts the old size back.
struct HugePagePool {
    old: u64,
}

impl HugePagePool {
    fn grow(pages: u64) -> HugePagePool {
        let old: u64 = std::fs::read_to_string(NR_HUGEPAGES).unwrap().trim().parse().unwrap();
        let free = meminfo("HugePages_Free:");
        std::fs::write(NR_HUGEPAGES, (old + pages).to_string()).unwrap();
        let pool = HugePagePool { old };
        assert!(
            meminfo("HugePages_Free:") >= free + pages,
            "the host could not give {pages} more huge pages (memory too fragmented?)"
        );
        pool
    }
}

impl Drop for HugePagePool {
    fn drop(&mut self) {
        let _ = std::fs::write(NR_HUGEPAGES, self.old.to_string());
    }
}

/// Huge pages: too few in the pool is an error when the VM is built; enough, and guest RAM is a
/// hugetlb mapping whose pages the pool gives up (reserved at start, then in use).
#[test]
fn hugetlb_memory_comes_from_the_pool_and_a_short_pool_is_a_clear_error() {
    if !kvm_available() || !is_root() {
        return;
    }
    let _turn = HUGE_PAGES.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    // A pool short of what the guest needs (whatever the host keeps free already).
    let short_mib = (meminfo("HugePages_Free:") + 8) * 2;
    let output = kestrel()
        .args(["run", "--kernel", guests::HELLO, "--serial", "none"])
        .args(["--memory", &format!("{short_mib}M,hugepages=2M")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.code() == Some(1) && stderr.contains("not enough free 2M huge pages"), "{stderr}");

    let _pool = HugePagePool::grow(32);
    let taken_before = meminfo("HugePages_Total:") - meminfo("HugePages_Free:") + meminfo("HugePages_Rsvd:");
    let vm = run_hanging(dir.path(), "64M,hugepages=2M");
    let ram = guest_ram(vm.0.id(), 64);
    assert!(ram.header.contains("/memfd:kestrel-guest-ram"), "{ram:?}");
    assert_eq!(ram.kernel_page_kib, 2048, "{ram:?}");
    assert!(ram.flags.contains(&"ht".to_owned()), "a hugetlb mapping: {ram:?}");
    let taken = meminfo("HugePages_Total:") - meminfo("HugePages_Free:") + meminfo("HugePages_Rsvd:");
    assert_eq!(taken - taken_before, 32, "the guest's 32 pages are in use or reserved");
    assert!(meminfo("HugePages_Free:") < meminfo("HugePages_Total:"), "the guest touched some");
    drop(vm);

    // Bound to node 0, the pages are reserved from node 0's pool (the thread is bound while
    // the mapping reserves them) and the mapping is bound there.
    let bound = run_hanging(dir.path(), "64M,hugepages=2M,numa=0");
    let pid = bound.0.id();
    let ram = guest_ram(pid, 64);
    assert_eq!(ram.kernel_page_kib, 2048, "{ram:?}");
    let start = ram.header.split('-').next().unwrap().to_owned();
    let numa_maps = std::fs::read_to_string(format!("/proc/{pid}/numa_maps")).unwrap();
    let line =
        numa_maps.lines().find(|l| l.starts_with(&format!("{start} "))).expect("guest RAM in numa_maps");
    assert!(line.contains("bind:0") && line.contains("huge"), "{line}");
}

/// hello.c's COUNT_STEP.
const COUNT_STEP: u64 = 1 << 25;

fn counts(log: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete.lines().filter_map(|line| line.strip_prefix("count: ")?.parse().ok()).collect()
}

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

/// A `kestrel vmm` with its serial log.
struct Vmm(ApiVmm);

impl std::ops::Deref for Vmm {
    type Target = ApiVmm;
    fn deref(&self) -> &ApiVmm {
        &self.0
    }
}

impl Vmm {
    fn start(dir: &Path, name: &str) -> Vmm {
        Vmm(ApiVmm::start(dir, name, &[], 4 * HANG_LIMIT))
    }

    fn snapshot(&self, state: &Path, memory: &Path, kind: &str) {
        self.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
        let body = format!(
            r#"{{"snapshot_path": "{}", "mem_file_path": "{}", "snapshot_type": "{kind}"}}"#,
            state.display(),
            memory.display()
        );
        self.ok("PUT", "/snapshot/create", &body);
    }
}

/// Boots the counting guest on `from` memory, snapshots it, restores it on `onto` memory in a
/// fresh VMM (which must map a `onto_mapping` guest RAM) and checks it counts on; then a diff
/// snapshot of the restored guest holds only what it wrote since.
fn round_trip(from: &str, onto: &str, onto_mapping: &str, from_memfd: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (state, memory) = (dir.path().join("state"), dir.path().join("memory"));
    let first = Vmm::start(dir.path(), "first");
    let boot = format!(r#"{{"kernel_image_path": "{}", "boot_args": "exit=count"}}"#, guests::HELLO);
    first.ok("PUT", "/boot-source", &boot);
    let machine = format!(r#"{{"vcpu_count": 1, "mem_size_mib": 64, {from}}}"#);
    first.ok("PUT", "/machine-config", &machine);
    first.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    wait_for_counts(&first.log, 3);
    first.snapshot(&state, &memory, "Full");
    let last = *counts(&first.log).last().unwrap();
    if from_memfd {
        // The snapshot skipped the pages the memfd never held instead of reading (and so
        // allocating) all 64 MiB of them.
        let allocated = memfd_allocated_bytes(first.child.id());
        assert!(allocated < 16 << 20, "the memfd holds {allocated} bytes after a full snapshot");
    }
    drop(first);

    let second = Vmm::start(dir.path(), "second");
    let load = format!(
        r#"{{"snapshot_path": "{}", "mem_file_path": "{}", "track_dirty_pages": true, "resume_vm": true, {onto}}}"#,
        state.display(),
        memory.display()
    );
    second.ok("PUT", "/snapshot/load", &load);
    let after = wait_for_counts(&second.log, 2);
    assert_eq!(after[..2], [last + COUNT_STEP, last + 2 * COUNT_STEP], "the restored guest counts on");
    let ram = guest_ram(second.child.id(), 64);
    assert!(ram.header.contains(onto_mapping), "{ram:?}");
    if let Some(cpus) = onto.split("\"vcpu_affinity\": [[").nth(1).and_then(|rest| rest.split(']').next()) {
        // The restoring side's placement, not the snapshot's (which has none).
        assert_eq!(vcpu0_cpus(second.child.id()), cpus, "vcpu0's CPUs after the restore");
    }

    let diff = dir.path().join("diff");
    second.snapshot(&dir.path().join("state2"), &diff, "Diff");
    use std::os::unix::fs::MetadataExt;
    let diff_bytes = std::fs::metadata(&diff).unwrap().blocks() * 512;
    assert!(diff_bytes > 0 && diff_bytes < 1 << 20, "a diff of a counting guest took {diff_bytes} bytes");
}

#[test]
fn a_snapshot_restores_onto_memfd_memory() {
    if !kvm_available() {
        return;
    }
    round_trip(
        r#""x-kestrel": {"memory_backend": "memfd"}"#,
        r#""x-kestrel": {"memory_backend": "memfd", "vcpu_affinity": [[1]]}"#,
        "/memfd:kestrel-guest-ram",
        true,
    );
}

#[test]
fn a_snapshot_of_hugetlb_memory_restores_onto_hugetlb_memory() {
    if !kvm_available() || !is_root() {
        return;
    }
    let _turn = HUGE_PAGES.lock().unwrap_or_else(|e| e.into_inner());
    let _pool = HugePagePool::grow(64);
    round_trip(
        r#""huge_pages": "2M""#,
        r#""x-kestrel": {"huge_pages": "2M"}"#,
        "/memfd:kestrel-guest-ram",
        false,
    );
}

/// `Cpus_allowed_list` of the thread named vcpu0.
fn vcpu0_cpus(pid: u32) -> String {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("status")).ok())
        .find(|status| status.lines().any(|l| l.starts_with("Name:") && l.ends_with("fc_vcpu 0")))
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Cpus_allowed_list:"))?;
            Some(line.split_whitespace().nth(1)?.to_owned())
        })
        .expect("a vcpu0 thread")
}

/// The bytes the host has allocated to the VMM's guest RAM memfd (found among its descriptors).
fn memfd_allocated_bytes(pid: u32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
    let memfd = fds
        .filter_map(Result::ok)
        .find(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy().contains("kestrel-guest-ram"))
        })
        .expect("the guest RAM memfd among the VMM's descriptors");
    std::fs::metadata(memfd.path()).unwrap().blocks() * 512
}

/// The balloon guest touches 64 MiB, then hands exactly those pages to the balloon: on shared
/// memory the pages must leave the memfd (MADV_DONTNEED alone would leave them allocated).
fn inflating_frees_the_memfds_pages(memory: &str) {
    // (A balloon on hugetlb memory is refused: only whole huge pages could be freed.)
    use std::io::{BufReader, Write};
    use std::process::Stdio;

    const MIB: u64 = 1 << 20;
    let mut child = kestrel()
        .args(["run", "--kernel", guests::VIRTIO, "--memory", memory])
        .args(["--balloon", "size=64", "--cmdline", "test=balloon"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let watchdog = Watchdog::within(&child, HANG_LIMIT);
    let mut stdin = child.stdin.take().unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    common::wait_for_line(&mut reader, "balloon: touched");
    let touched = memfd_allocated_bytes(child.id());
    stdin.write_all(b"x").unwrap();
    let out = common::wait_for_line(&mut reader, "balloon: inflated");
    let inflated = memfd_allocated_bytes(child.id());
    stdin.write_all(b"x").unwrap();
    let out = out + &common::wait_for_line(&mut reader, "balloon: ok");
    let _ = child.wait();
    drop(watchdog);
    assert!(out.contains("balloon: inflated pages read as zero"), "{out}");
    assert!(touched >= 64 * MIB, "{memory}: the memfd holds {} MiB after touching 64 MiB", touched / MIB);
    assert_eq!(touched - inflated, 64 * MIB, "{memory}: the balloon's 64 MiB left the memfd");
}

#[test]
fn inflating_the_balloon_frees_memfd_memory() {
    if !kvm_available() {
        return;
    }
    inflating_frees_the_memfds_pages("256M,backend=memfd");
}
