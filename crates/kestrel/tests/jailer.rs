//! `kestrel jailer`: the jail Firecracker's jailer would build, and a VMM in it that is confined
//! as asked — its uid/gid, no capabilities, the jail as its root, no inherited fds, rlimits, PID
//! and network namespaces, cgroups (v1 here: the host's controllers are v1; v2 is tested in the
//! `jail` crate against a fake tree) — running guests with a disk and snapshots inside the jail,
//! a cgroup memory limit that holds, and a one-line error with status 1 for each bad input.
//!
//! Every test needs root (on CI it fails without) and uses its own --id, chroot base and parent
//! cgroup, removed when it ends.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::api::{request, spawn_vmm};
use common::netns::NetNamespace;
use common::{is_root, kvm_available, wait_with_limit, HANG_LIMIT};

const UID: u32 = 4321;
const GID: u32 = 4322;
/// The exit status of a guest reset.
const RESET: i32 = 3;
/// hello.c's COUNT_STEP.
const COUNT_STEP: u64 = 1 << 25;

fn ready() -> bool {
    is_root() && kvm_available()
}

/// The v1 controllers the tests place VMMs with.
const CONTROLLERS: &[&str] = &["memory", "cpu", "pids", "blkio"];

/// One jailed VMM: its chroot base, its pid, and the cgroups to remove when it is gone.
struct Jailed {
    base: tempfile::TempDir,
    id: String,
    /// The jailer's process (the VMM itself unless --new-pid-ns, where the jailer exits).
    child: Option<Child>,
    pid: i32,
    parent_cgroup: String,
}

impl Jailed {
    fn root_of(base: &Path, id: &str) -> PathBuf {
        base.join("kestrel").join(id).join("root")
    }

    fn root(&self) -> PathBuf {
        Self::root_of(self.base.path(), &self.id)
    }

    fn socket(&self) -> PathBuf {
        self.root().join("run/api.sock")
    }

    /// The jailer command for `id` under `base`, with more jailer flags and the VMM's API socket
    /// at /run/api.sock and its serial console in /serial.log.
    fn command(base: &Path, id: &str, parent_cgroup: &str, jailer_flags: &[&str]) -> Command {
        let mut command = common::kestrel();
        command
            .args(["jailer", "--id", id, "--exec-file", env!("CARGO_BIN_EXE_kestrel")])
            .args(["--uid", &UID.to_string(), "--gid", &GID.to_string()])
            .arg("--chroot-base-dir")
            .arg(base)
            .args(["--parent-cgroup", parent_cgroup])
            .args(jailer_flags)
            .args(["--", "--api-sock", "/run/api.sock", "--serial", "file:/serial.log"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Starts a jailed VMM and waits for its API socket. `prepare` fills the jail's root before
    /// the start (clients link kernels and disks in first).
    fn start(name: &str, jailer_flags: &[&str], prepare: impl FnOnce(&Path)) -> Jailed {
        let base = tempfile::tempdir().unwrap();
        let id = format!("{name}-{}", std::process::id());
        let parent_cgroup = format!("kestrel-test-{id}");
        let root = Self::root_of(base.path(), &id);
        std::fs::create_dir_all(&root).unwrap();
        prepare(&root);
        let command = Self::command(base.path(), &id, &parent_cgroup, jailer_flags);
        let child = spawn_vmm(command, &root.join("run/api.sock"));
        let pid = child.id() as i32;
        Jailed { base, id, child: Some(child), pid, parent_cgroup }
    }

    fn put(&self, path: &str, body: &str) {
        let (status, reply) = request(&self.socket(), "PUT", path, body);
        assert_eq!(status, 204, "PUT {path}: {reply}");
    }

    fn patch(&self, path: &str, body: &str) {
        let (status, reply) = request(&self.socket(), "PATCH", path, body);
        assert_eq!(status, 204, "PATCH {path}: {reply}");
    }

    fn status(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap()
    }

    fn cgroup_dir(&self, controller: &str) -> PathBuf {
        Path::new("/sys/fs/cgroup").join(controller).join(&self.parent_cgroup).join(&self.id)
    }

    fn serial(&self) -> String {
        std::fs::read_to_string(self.root().join("serial.log")).unwrap_or_default()
    }

    /// Waits until the guest's serial log holds a line starting with `prefix`, `n` times.
    fn wait_for_serial(&self, prefix: &str, n: usize) -> String {
        let deadline = Instant::now() + 2 * HANG_LIMIT;
        loop {
            let text = self.serial();
            if text.lines().filter(|l| l.starts_with(prefix)).count() >= n {
                return text;
            }
            assert!(Instant::now() < deadline, "no {n} lines {prefix:?} in the serial log:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the VMM to end on its own (it is the jailer's child process).
    fn wait(&mut self) -> Output {
        wait_with_limit(self.child.take().expect("the jailer's child"))
    }
}

impl Drop for Jailed {
    fn drop(&mut self) {
        kill_and_wait(self.pid, self.child.take());
        for controller in CONTROLLERS {
            let group = self.cgroup_dir(controller);
            let _ = std::fs::remove_dir(&group);
            let _ = std::fs::remove_dir(group.parent().unwrap());
        }
    }
}

/// Kills `pid` and waits until it is gone: through `child` when it is ours, else through a
/// pidfd (a VMM in a new PID namespace is the jailer's orphan).
fn kill_and_wait(pid: i32, child: Option<Child>) {
    if let Some(mut child) = child {
        let _ = child.kill();
        let _ = child.wait();
        return;
    }
    // SAFETY: pidfd_open takes a pid and flags.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return; // already gone
    }
    // SAFETY: pidfd_open returned a new fd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: pidfd_send_signal on the pidfd just opened.
    unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), libc::SIGKILL, 0usize, 0u32) };
    let mut poll = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one pollfd that lives across the call; the pidfd turns readable when the process exits.
    unsafe { libc::poll(&mut poll, 1, HANG_LIMIT.as_millis() as i32) };
}

/// The value of a `Key:` line of /proc/PID/status.
fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key} in:\n{status}"))
        .trim()
}

/// Copies a file into the jail, owned by the jailed user (a disk the VMM writes, say).
fn copy_in(from: &Path, root: &Path, name: &str) -> PathBuf {
    let to = root.join(name);
    std::fs::copy(from, &to).unwrap();
    std::os::unix::fs::chown(&to, Some(UID), Some(GID)).unwrap();
    to
}

fn boot_hello(jail: &Jailed, boot_args: &str, mem_mib: u32) {
    jail.put("/boot-source", &format!(r#"{{"kernel_image_path": "/hello", "boot_args": "{boot_args}"}}"#));
    jail.put("/machine-config", &format!(r#"{{"vcpu_count": 1, "mem_size_mib": {mem_mib}}}"#));
    jail.put("/actions", r#"{"action_type": "InstanceStart"}"#);
}

#[test]
fn the_jail_holds_only_the_vmm_and_its_devices_and_the_running_vmm_is_confined() {
    if !ready() {
        return;
    }
    // A descriptor the jailer inherits (not close-on-exec): the VMM must not have it.
    let marker = tempfile::NamedTempFile::new().unwrap();
    let marker_path = std::fs::canonicalize(marker.path()).unwrap();
    // SAFETY: dup of an open fd; the copy, without FD_CLOEXEC, is owned by `_leaked` below.
    let leaked_fd = unsafe { libc::dup(marker.as_file().as_raw_fd()) };
    assert!(leaked_fd > 2);
    // SAFETY: dup returned a new fd that nothing else owns.
    let _leaked = unsafe { OwnedFd::from_raw_fd(leaked_fd) };

    let flags = [
        "--cgroup",
        "memory.limit_in_bytes=268435456",
        "--cgroup",
        "cpu.shares=512",
        "--cgroup",
        "pids.max=64",
        "--resource-limit",
        "no-file=1000",
        "--resource-limit",
        "fsize=2000000000",
    ];
    // A per-disk I/O limit names the disk by path (Kestrel's extension): its device's numbers are
    // written.
    let disk = tempfile::NamedTempFile::new().unwrap();
    let disk_device = std::fs::metadata(disk.path()).unwrap().dev();
    let blkio = format!("blkio.throttle.read_bps_device={} 1048576", disk.path().display());
    let flags = [&flags[..], &["--cgroup", &blkio]].concat();
    let jail = Jailed::start("confined", &flags, |root| {
        copy_in(Path::new(guests::HELLO), root, "hello");
    });
    boot_hello(&jail, "exit=count", 64);
    jail.wait_for_serial("count: ", 2);
    let root = jail.root();

    // The layout: the exec file copied in, /run for the socket, and exactly the three devices.
    let exec = std::fs::metadata(root.join("kestrel")).unwrap();
    assert!(exec.is_file());
    assert_eq!(exec.len(), std::fs::metadata(env!("CARGO_BIN_EXE_kestrel")).unwrap().len());
    let run = std::fs::metadata(root.join("run")).unwrap();
    assert_eq!((run.uid(), run.gid(), run.permissions().mode() & 0o777), (UID, GID, 0o700));
    // Without a new PID namespace the jailer becomes the VMM: its pid is in the pid file all the
    // same, as Firecracker's jailer writes it (Kata Containers reads it).
    assert_eq!(std::fs::read_to_string(root.join("kestrel.pid")).unwrap(), jail.pid.to_string());
    let userfaultfd = std::fs::metadata("/dev/userfaultfd").unwrap().rdev();
    let mut devices = Vec::new();
    for entry in walk(&root.join("dev")) {
        let metadata = std::fs::symlink_metadata(&entry).unwrap();
        let name = entry.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
        assert_eq!((metadata.uid(), metadata.gid()), (UID, GID), "{name}");
        if metadata.file_type().is_char_device() {
            assert_eq!(metadata.permissions().mode() & 0o777, 0o600, "{name}");
            devices.push((name, libc::major(metadata.rdev()), libc::minor(metadata.rdev())));
        } else {
            assert!(metadata.is_dir(), "{name} is neither a device nor a directory");
        }
    }
    devices.sort();
    let expected = [
        ("dev/kvm".to_owned(), 10, 232),
        ("dev/net/tun".to_owned(), 10, 200),
        ("dev/userfaultfd".to_owned(), libc::major(userfaultfd), libc::minor(userfaultfd)),
    ];
    assert_eq!(devices, expected);

    // The VMM: the given ids, no capabilities, no new namespaces but the mount one.
    let status = jail.status();
    assert_eq!(status_field(&status, "Uid"), format!("{UID}\t{UID}\t{UID}\t{UID}"));
    assert_eq!(status_field(&status, "Gid"), format!("{GID}\t{GID}\t{GID}\t{GID}"));
    assert_eq!(status_field(&status, "Groups"), "");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(&status, caps), "0000000000000000", "{caps}");
    }
    // Its root is the jail: the same directory, and nothing of the host in it.
    let proc_root = PathBuf::from(format!("/proc/{}/root", jail.pid));
    let (seen, jail_dir) = (std::fs::metadata(&proc_root).unwrap(), std::fs::metadata(&root).unwrap());
    assert_eq!((seen.dev(), seen.ino()), (jail_dir.dev(), jail_dir.ino()));
    for host_path in ["etc/shadow", "etc", "proc", "sys", "home", "old_root", "tmp"] {
        assert!(!proc_root.join(host_path).exists(), "/{host_path} is visible in the jail");
    }
    let own_ns = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    assert_ne!(std::fs::read_link(format!("/proc/{}/ns/mnt", jail.pid)).unwrap(), own_ns);
    // Only its own descriptors: none leads to the file the jailer inherited.
    for fd in std::fs::read_dir(format!("/proc/{}/fd", jail.pid)).unwrap() {
        let target = std::fs::read_link(fd.unwrap().path()).unwrap_or_default();
        assert_ne!(target, marker_path, "the VMM holds the jailer's inherited fd");
    }
    // The rlimits.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", jail.pid)).unwrap();
    let limit = |name: &str| {
        let line = limits.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{limits}"));
        line[name.len()..].split_whitespace().take(2).collect::<Vec<_>>().join(" ")
    };
    assert_eq!(limit("Max open files"), "1000 1000");
    assert_eq!(limit("Max file size"), "2000000000 2000000000");
    // The cgroups, with the values written.
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", jail.pid)).unwrap();
    for controller in CONTROLLERS {
        let line = format!(":{controller}:/{}/{}", jail.parent_cgroup, jail.id);
        assert!(cgroups.lines().any(|l| l.ends_with(&line)), "no {line} in:\n{cgroups}");
    }
    let read = |controller: &str, file: &str| {
        std::fs::read_to_string(jail.cgroup_dir(controller).join(file)).unwrap().trim().to_owned()
    };
    assert_eq!(read("memory", "memory.limit_in_bytes"), "268435456");
    assert_eq!(read("cpu", "cpu.shares"), "512");
    assert_eq!(read("pids", "pids.max"), "64");
    let (major, minor) = (libc::major(disk_device), libc::minor(disk_device));
    assert_eq!(read("blkio", "blkio.throttle.read_bps_device"), format!("{major}:{minor} 1048576"));
}

/// cgroup v2 for real: this host's cgroup2 hierarchy offers only hugetlb (its other controllers
/// are v1's), which is enough to see the controller enabled down the tree, the values written
/// and the VMM placed.
#[test]
fn cgroup_v2_placement_on_the_hosts_unified_hierarchy() {
    if !ready() {
        return;
    }
    let hierarchies = jail::cgroup::Hierarchies::detect().unwrap();
    let unified = hierarchies.v2.as_deref().expect("a cgroup2 mount");
    let controllers = std::fs::read_to_string(unified.join("cgroup.controllers")).unwrap_or_default();
    if !controllers.split_whitespace().any(|c| c == "hugetlb") {
        let message = format!("no hugetlb controller in the cgroup2 hierarchy at {}", unified.display());
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
        eprintln!("skipping: {message}");
        return;
    }
    let flags = [
        "--cgroup-version",
        "2",
        "--cgroup",
        "hugetlb.2MB.max=4194304",
        "--cgroup",
        "cgroup.max.descendants=0",
    ];
    let jail = Jailed::start("v2", &flags, |_| {});
    let group = unified.join(&jail.parent_cgroup).join(&jail.id);
    let _cleanup = RemoveOnDrop(vec![group.clone(), group.parent().unwrap().to_owned()]);
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", jail.pid)).unwrap();
    let line = format!("0::/{}/{}", jail.parent_cgroup, jail.id);
    assert!(cgroups.lines().any(|l| l == line), "no {line} in:\n{cgroups}");
    let read = |dir: &Path, file: &str| std::fs::read_to_string(dir.join(file)).unwrap().trim().to_owned();
    assert_eq!(read(&group, "hugetlb.2MB.max"), "4194304");
    assert_eq!(read(&group, "cgroup.max.descendants"), "0");
    for ancestor in [unified, group.parent().unwrap()] {
        assert!(
            read(ancestor, "cgroup.subtree_control").split_whitespace().any(|c| c == "hugetlb"),
            "{ancestor:?}"
        );
    }
    drop(jail);
}

/// Removes cgroup directories (leaf first) when dropped, after the VMM in them is gone.
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Every path below `dir`, depth first.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        found.push(path.clone());
        if std::fs::symlink_metadata(&path).unwrap().is_dir() {
            found.extend(walk(&path));
        }
    }
    found
}

#[test]
fn new_pid_ns_daemonize_and_netns() {
    if !ready() {
        return;
    }
    let Some(netns) = NetNamespace::with_tap("kj0", "10.233.0.1/24") else { return };
    let netns_path = Path::new("/var/run/netns").join(netns.name());
    let netns_arg = netns_path.to_str().unwrap().to_owned();
    let flags = ["--new-pid-ns", "--daemonize", "--netns", &netns_arg];
    let mut jail = Jailed::start("pidns", &flags, |root| {
        copy_in(Path::new(guests::HELLO), root, "hello");
    });
    // The jailer wrote the VMM's host pid beside the exec file and exited 0.
    let jailer_pid = jail.pid;
    let jailer = jail.wait();
    common::assert_status(&jailer, 0);
    let pid_file = jail.root().join("kestrel.pid");
    let pid_text = std::fs::read_to_string(&pid_file).unwrap();
    jail.pid = pid_text.parse().unwrap_or_else(|_| panic!("pid file holds {pid_text:?}"));
    assert!(jail.pid > 1 && jail.pid != jailer_pid, "pid file holds {pid_text:?}");
    boot_hello(&jail, "exit=count", 32);
    jail.wait_for_serial("count: ", 1);

    let status = jail.status();
    let nspid: Vec<&str> = status_field(&status, "NSpid").split_whitespace().collect();
    assert_eq!(nspid, [jail.pid.to_string().as_str(), "1"], "the VMM is PID 1 of its own namespace");
    let net_ns = std::fs::metadata(format!("/proc/{}/ns/net", jail.pid)).unwrap();
    let wanted = std::fs::metadata(&netns_path).unwrap();
    assert_eq!((net_ns.dev(), net_ns.ino()), (wanted.dev(), wanted.ino()), "not in the --netns namespace");
    // Daemonized: the session the jailer made (setsid before the fork, as Firecracker's), no
    // controlling terminal, stdio on /dev/null.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", jail.pid)).unwrap();
    let fields: Vec<i64> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .skip(1)
        .take(4)
        .map(|f| f.parse().unwrap())
        .collect();
    let (session, tty) = (fields[2], fields[3]);
    assert_eq!(session, i64::from(jailer_pid), "the VMM is not in the jailer's new session");
    assert_eq!(tty, 0, "the VMM has a controlling terminal");
    for fd in 0..=2 {
        assert_eq!(
            std::fs::read_link(format!("/proc/{}/fd/{fd}", jail.pid)).unwrap(),
            Path::new("/dev/null")
        );
    }
}

/// A jailer that leads its process group (a shell's job) cannot setsid: it forks, the parent
/// exits 0, and the VMM goes on in a session of its own.
#[test]
fn daemonize_from_a_process_group_leader() {
    if !ready() {
        return;
    }
    use std::os::unix::process::CommandExt;
    let base = tempfile::tempdir().unwrap();
    let id = format!("leader-{}", std::process::id());
    let parent = format!("kestrel-test-{id}");
    let mut command = Jailed::command(base.path(), &id, &parent, &["--daemonize"]);
    command.process_group(0);
    let socket = Jailed::root_of(base.path(), &id).join("run/api.sock");
    let jailer = spawn_vmm(command, &socket);
    let jailer_pid = jailer.id() as i32;
    let mut jail = Jailed { base, id, child: Some(jailer), pid: 0, parent_cgroup: parent };
    common::assert_status(&jail.wait(), 0);
    // The VMM is the one process whose command line names this jail's id.
    let wanted = format!("vmm\0--id\0{}\0", jail.id);
    jail.pid = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(wanted.len()).any(|w| w == wanted.as_bytes()))
        })
        .expect("the daemonized VMM");
    assert_ne!(jail.pid, jailer_pid);
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", jail.pid)).unwrap();
    let session: i32 =
        stat[stat.rfind(')').unwrap() + 2..].split_whitespace().nth(3).unwrap().parse().unwrap();
    assert_eq!(session, jail.pid, "the VMM leads a session of its own");
    let (status, _) = request(&jail.socket(), "GET", "/", "");
    assert_eq!(status, 200);
}

#[test]
fn a_guest_in_the_jail_uses_its_disk() {
    if !ready() {
        return;
    }
    const FILL: u8 = 0xEE;
    let source = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(source.path(), vec![FILL; 64 * 1024]).unwrap();
    let mut jail = Jailed::start("disk", &[], |root| {
        copy_in(Path::new(guests::VIRTIO), root, "virtio");
        copy_in(source.path(), root, "disk.img");
    });
    jail.put("/boot-source", r#"{"kernel_image_path": "/virtio", "boot_args": "test=blk"}"#);
    jail.put("/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 32}"#);
    jail.put(
        "/drives/disk",
        r#"{"drive_id": "disk", "path_on_host": "/disk.img", "is_root_device": false, "is_read_only": false}"#,
    );
    jail.put("/actions", r#"{"action_type": "InstanceStart"}"#);
    let output = jail.wait();
    common::assert_status(&output, RESET);
    let serial = jail.serial();
    for line in
        ["blk: capacity 128 sectors", "blk: wrote and read back sectors 2-5", "blk: ok", "virtio: done"]
    {
        assert!(serial.lines().any(|l| l == line), "no {line:?} in:\n{serial}");
    }
    let written = std::fs::read(jail.root().join("disk.img")).unwrap();
    let pattern = |offset: usize| ((offset / 512) * 31 + (offset % 512) * 7 + 3) as u8;
    for (offset, &byte) in written.iter().enumerate() {
        let expected = if (2 * 512..6 * 512).contains(&offset) { pattern(offset) } else { FILL };
        assert_eq!(byte, expected, "byte {offset} of the disk");
    }
}

#[test]
fn a_snapshot_taken_in_one_jail_restores_in_another() {
    if !ready() {
        return;
    }
    let first = Jailed::start("snap-a", &[], |root| {
        copy_in(Path::new(guests::HELLO), root, "hello");
    });
    boot_hello(&first, "exit=count", 32);
    first.wait_for_serial("count: ", 2);
    first.patch("/vm", r#"{"state": "Paused"}"#);
    first.put(
        "/snapshot/create",
        r#"{"snapshot_path": "/state", "mem_file_path": "/memory", "snapshot_type": "Full"}"#,
    );
    let state = std::fs::metadata(first.root().join("state")).unwrap();
    assert_eq!((state.uid(), state.permissions().mode() & 0o777), (UID, 0o600), "the state file");
    let last = counts(&first.serial()).last().copied().unwrap();

    let second = Jailed::start("snap-b", &[], |root| {
        copy_in(&first.root().join("state"), root, "state");
        copy_in(&first.root().join("memory"), root, "memory");
    });
    drop(first);
    second.put(
        "/snapshot/load",
        r#"{"snapshot_path": "/state", "mem_backend": {"backend_type": "File", "backend_path": "/memory"},
            "resume_vm": true}"#,
    );
    let text = second.wait_for_serial("count: ", 2);
    assert_eq!(counts(&text)[..2], [last + COUNT_STEP, last + 2 * COUNT_STEP], "{text}");
}

fn counts(serial: &str) -> Vec<u64> {
    serial.lines().filter_map(|l| l.strip_prefix("count: ")?.parse().ok()).collect()
}

#[test]
fn a_cgroup_memory_limit_holds_the_vmm() {
    if !ready() {
        return;
    }
    const LIMIT: u64 = 64 << 20;
    let limit = format!("memory.limit_in_bytes={LIMIT}");
    let mut jail = Jailed::start("memlimit", &["--cgroup", &limit], |root| {
        copy_in(Path::new(guests::HELLO), root, "hello");
    });
    // The guest writes 200 MiB over and over: more than the VMM may hold.
    boot_hello(&jail, "exit=count touch_mib=200", 256);
    let output = jail.wait();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(output.status.signal(), Some(libc::SIGKILL), "the VMM was not OOM-killed: {output:?}");
    let read = |file: &str| std::fs::read_to_string(jail.cgroup_dir("memory").join(file)).unwrap();
    let number = |file: &str| read(file).trim().parse::<u64>().unwrap();
    assert!(number("memory.failcnt") > 0, "the limit was never hit");
    assert!(number("memory.max_usage_in_bytes") <= LIMIT, "usage went past the limit");
    let oom_kills = read("memory.oom_control")
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.parse::<u64>().ok())
        .unwrap();
    assert!(oom_kills >= 1, "{}", read("memory.oom_control"));
}

/// Runs the jailer with `flags` (and the exec file, ids and base unless `flags` gives them) and
/// expects status 1 and one line on stderr that contains `expected`.
#[track_caller]
fn assert_refused(base: &Path, id: &str, flags: &[&str], expected: &str) {
    let mut command = common::kestrel();
    command.args(["jailer", "--id", id, "--uid", "1", "--gid", "1", "--chroot-base-dir"]).arg(base);
    if !flags.contains(&"--exec-file") {
        command.args(["--exec-file", env!("CARGO_BIN_EXE_kestrel")]);
    }
    command.args(flags).args(["--", "--api-sock", "/run/api.sock"]);
    let output = common::run_to_end(command, b"");
    common::assert_status(&output, 1);
    let stderr = common::stderr(&output);
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(
        stderr.starts_with("kestrel jailer: error: ") && stderr.contains(expected),
        "{stderr:?} lacks {expected:?}"
    );
}

#[track_caller]
fn assert_status_and_stderr(output: &Output, status: i32, expected: &str) {
    common::assert_status(output, status);
    let stderr = common::stderr(output);
    assert!(stderr.contains(expected), "{stderr:?} lacks {expected:?}");
}

#[test]
fn bad_input_is_one_line_and_status_1() {
    if !is_root() {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let base = base.path();
    let parent = format!("kestrel-test-bad-{}", std::process::id());
    let id = "bad";
    assert_refused(base, "a/../b", &[], "--id 'a/../b'");
    assert_refused(base, &"a".repeat(65), &[], "1 to 64");
    assert_refused(base, id, &["--exec-file", "/"], "is not a regular file");
    assert_refused(base, id, &["--exec-file", "/no/such/kestrel"], "No such file");
    assert_refused(base, id, &["--parent-cgroup", "../escape"], "--parent-cgroup '../escape'");
    assert_refused(base, id, &["--cgroup", "nosuch.knob=1"], "'nosuch' controller");
    assert_refused(base, id, &["--cgroup", "memory.limit_in_bytes"], "is not FILE=VALUE");
    assert_refused(base, id, &["--cgroup-version", "3"], "must be 1 or 2");
    // cgroup2 here has no memory controller (a hybrid host); a pure-v2 host would take it.
    assert_refused(base, id, &["--cgroup-version", "2", "--cgroup", "memory.max=1"], "'memory' controller");
    assert_refused(base, id, &["--resource-limit", "stack=1"], "stack=1");
    assert_refused(base, id, &["--netns", "/no/such/netns"], "--netns");
    assert_refused(
        base,
        id,
        &["--cgroup", "blkio.throttle.read_bps_device=/no/such/disk 1"],
        "cannot resolve the disk /no/such/disk",
    );
    // A value the kernel refuses (what was created for it is removed below).
    assert_refused(
        base,
        "refused",
        &["--parent-cgroup", &parent, "--cgroup", "memory.limit_in_bytes=lots"],
        "the kernel refused 'lots'",
    );
    let group = Path::new("/sys/fs/cgroup/memory").join(&parent);
    let _ = std::fs::remove_dir(group.join("refused"));
    let _ = std::fs::remove_dir(&group);
    // A jail path through a symlink (to a host directory) is refused, and nothing is created there.
    let planted = base.join("kestrel/planted");
    std::fs::create_dir_all(&planted).unwrap();
    let target = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(target.path(), planted.join("root")).unwrap();
    assert_refused(base, "planted", &[], "is not a directory");
    assert_eq!(std::fs::read_dir(target.path()).unwrap().count(), 0);
    // Started as `jailer` (a link to kestrel), it is the jailer.
    let link = base.join("jailer");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kestrel"), &link).unwrap();
    let output = common::run_to_end(Command::new(&link), b"");
    assert_status_and_stderr(&output, 2, "--id <ID>");
    // A jail already in use: "refused" got its exec file copied in before the cgroup failed.
    assert_refused(base, "refused", &[], "already in use");
}

/// vCPU pinning and `vmm_affinity` work in a jail, which has no `/proc` or `/sys`: the CPUs come
/// from the kernel (`sched_getaffinity`) and the threads to move from Kestrel's own list.
#[test]
fn a_jailed_vmm_pins_its_vcpu_and_keeps_its_other_threads_apart() {
    if !ready() {
        return;
    }
    let jail = Jailed::start("pin", &[], |root| {
        copy_in(Path::new(guests::HELLO), root, "hello");
    });
    jail.put("/boot-source", r#"{"kernel_image_path": "/hello", "boot_args": "exit=count"}"#);
    jail.put(
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 32, "x-kestrel": {"vcpu_affinity": [[1]], "vmm_affinity": [0]}}"#,
    );
    jail.put("/actions", r#"{"action_type": "InstanceStart"}"#);
    jail.wait_for_serial("count: ", 1);
    let mut seen = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{}/task", jail.pid)).unwrap().flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
        let name = status_field(&status, "Name").to_owned();
        if name.starts_with("kvm-") {
            continue; // KVM's kernel workers, which user space does not place
        }
        seen.push((name, status_field(&status, "Cpus_allowed_list").to_owned()));
    }
    assert!(seen.iter().any(|(name, _)| name == "fc_vcpu 0"), "{seen:?}");
    for (name, cpus) in &seen {
        let expected = if name == "fc_vcpu 0" { "1" } else { "0" };
        assert_eq!(cpus, expected, "thread {name}: {seen:?}");
    }
}

/// The jailer itself sets no-new-privileges before its exec: a jailed VMM has it even with its
/// own seccomp filters off.
#[test]
fn the_jailed_vmm_cannot_gain_privileges_even_without_seccomp() {
    if !ready() {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let id = format!("nnp-{}", std::process::id());
    let parent = format!("kestrel-test-{id}");
    let root = Jailed::root_of(base.path(), &id);
    std::fs::create_dir_all(&root).unwrap();
    let mut command = Jailed::command(base.path(), &id, &parent, &[]);
    command.arg("--seccomp").arg("off");
    let child = spawn_vmm(command, &root.join("run/api.sock"));
    let pid = child.id() as i32;
    let jail = Jailed { base, id, child: Some(child), pid, parent_cgroup: parent };
    let status = jail.status();
    assert_eq!(status_field(&status, "Seccomp"), "0", "the VMM's own filters are off");
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
}
