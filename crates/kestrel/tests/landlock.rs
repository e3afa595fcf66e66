//! Tier 2: Landlock for unprivileged VMMs. `kestrel run` and `kestrel vmm` run as uid/gid 65534
//! (`setpriv`), booting the virtio test guest with a raw disk or a qcow2 overlay over a raw base.
//! The debug build's probe (`KESTREL_LANDLOCK_TEST_PROBE`) has the VMM's main thread open paths
//! once the rules are applied and say which it may: host files are denied, the configured disk and
//! its backing file are allowed. Through the API, a `PATCH /drives` or a snapshot outside the
//! rules gets an error that names Landlock, and inside `--landlock-allow` both work. The API
//! threads are confined from the start; a disk that is a directory is refused rather than granted
//! as a tree; `others=` placement works under the rules.
//!
//! /dev/kvm is root's alone (0600) on this host, so the unprivileged VMM is given one capability,
//! `CAP_DAC_OVERRIDE` (ambient), to open it; that also lets it past every file's mode, which makes
//! the test stronger: only Landlock can then refuse `/etc/shadow`, and `--landlock off` shows it
//! does not.

mod common;

use std::io::BufReader;
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::api::{assert_fault, request, spawn_vmm};
use common::*;

/// The guest resets the machine when its tests are done (README: exit statuses).
const RESET: i32 = 3;
const NOBODY: u32 = 65534;
const DISK_BYTES: usize = 64 * 1024;

/// `kestrel` as uid/gid 65534 with no groups and only `CAP_DAC_OVERRIDE` (for /dev/kvm).
fn kestrel_unprivileged() -> Command {
    let mut command = Command::new("setpriv");
    command
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=+dac_override",
            "--ambient-caps=+dac_override",
        ])
        .arg(env!("CARGO_BIN_EXE_kestrel"));
    command
}

/// A temporary directory owned by the unprivileged user, so the files it creates are its own.
fn nobody_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    dir
}

fn raw_disk(path: &Path) -> PathBuf {
    std::fs::write(path, vec![0xEE; DISK_BYTES]).unwrap();
    chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
    path.to_owned()
}

/// A qcow2 overlay at `path` over the raw image `base` (named relative to the overlay).
fn overlay(path: &Path, base: &Path) -> PathBuf {
    let options = storage::image::CreateOptions {
        format: storage::image::Format::Qcow2,
        size: None,
        backing: Some((base.file_name().unwrap().to_str().unwrap().into(), storage::image::Format::Raw)),
        cluster_size: None,
        preallocation: storage::image::Preallocation::Off,
    };
    storage::image::create(path, &options).unwrap();
    chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
    path.to_owned()
}

/// What the probe said of `path`: `allowed`, `denied` or `error (...)`.
#[track_caller]
fn probe_verdict(output: &Output, path: &Path) -> String {
    let prefix = format!("kestrel: landlock probe {}: ", path.display());
    let err = stderr(output);
    err.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no probe line for {} in:\n{err}", path.display()))
        .to_owned()
}

fn probe_list(paths: &[&Path]) -> String {
    paths.iter().map(|path| path.display().to_string()).collect::<Vec<_>>().join(",")
}

/// `kestrel run` of the guest's `blk` test on `disk` (a `--disk` value), probing `probe`.
fn run_blk(mut command: Command, disk: &str, probe: &[&Path], extra: &[&str]) -> Output {
    command
        .args(["run", "--kernel", guests::VIRTIO, "--disk", disk, "--cmdline", "test=blk"])
        .args(extra)
        .env("KESTREL_LANDLOCK_TEST_PROBE", probe_list(probe));
    let output = run_to_end(command, b"");
    assert_status(&output, RESET);
    let out = stdout(&output);
    assert!(out.lines().any(|l| l == "blk: ok"), "the disk did not work:\n{out}\n{}", stderr(&output));
    output
}

#[test]
fn an_unprivileged_run_reaches_its_disk_and_no_host_file() {
    if !kvm_available() || !is_root() {
        return;
    }
    let dir = nobody_dir();
    let disk = raw_disk(&dir.path().join("disk.img"));
    let (hostname, shadow) = (Path::new("/etc/hostname"), Path::new("/etc/shadow"));
    let output =
        run_blk(kestrel_unprivileged(), &format!("path={}", disk.display()), &[hostname, shadow, &disk], &[]);
    assert_eq!(probe_verdict(&output, hostname), "denied");
    assert_eq!(probe_verdict(&output, shadow), "denied");
    assert_eq!(probe_verdict(&output, &disk), "allowed");
}

/// The serial output and metrics files are created before the rules apply, so the rules name
/// them and not their directory: a file beside them stays out of reach.
#[test]
fn serial_and_metrics_files_are_written_and_their_neighbours_stay_out_of_reach() {
    if !kvm_available() || !is_root() {
        return;
    }
    let dir = nobody_dir();
    let disk = raw_disk(&dir.path().join("disk.img"));
    let neighbour = raw_disk(&dir.path().join("neighbour.img"));
    let console = dir.path().join("console.log");
    let metrics = dir.path().join("metrics.json");
    let mut command = kestrel_unprivileged();
    command
        .args(["run", "--kernel", guests::VIRTIO, "--cmdline", "test=blk"])
        .arg("--disk")
        .arg(format!("path={}", disk.display()))
        .arg("--serial")
        .arg(format!("file:{}", console.display()))
        .arg("--metrics-path")
        .arg(&metrics)
        .env("KESTREL_LANDLOCK_TEST_PROBE", probe_list(&[&neighbour, &console]));
    let output = run_to_end(command, b"");
    assert_status(&output, RESET);
    let text = std::fs::read_to_string(&console).unwrap();
    assert!(text.lines().any(|l| l == "blk: ok"), "{text}\n{}", stderr(&output));
    assert_eq!(probe_verdict(&output, &neighbour), "denied");
    assert_eq!(probe_verdict(&output, &console), "allowed");
    // The metrics file, opened after the rules apply, got the VM's last line.
    let metrics = std::fs::read_to_string(&metrics).unwrap();
    assert!(metrics.contains("\"block\""), "{metrics}");
}

#[test]
fn a_qcow2_overlay_reaches_its_backing_file_and_not_its_neighbours() {
    if !kvm_available() || !is_root() {
        return;
    }
    let dir = nobody_dir();
    let base = raw_disk(&dir.path().join("base.img"));
    let top = overlay(&dir.path().join("top.qcow2"), &base);
    let neighbour = raw_disk(&dir.path().join("neighbour.img"));
    let output = run_blk(
        kestrel_unprivileged(),
        &format!("path={},format=qcow2", top.display()),
        &[&base, &neighbour],
        &[],
    );
    assert_eq!(probe_verdict(&output, &base), "allowed");
    assert_eq!(probe_verdict(&output, &neighbour), "denied");
    // The guest's writes went to the overlay; the base is as it was.
    assert_eq!(std::fs::read(&base).unwrap(), vec![0xEE; DISK_BYTES]);
}

#[test]
fn landlock_off_or_auto_as_root_confines_nothing() {
    if !kvm_available() || !is_root() {
        return;
    }
    let dir = nobody_dir();
    let disk = raw_disk(&dir.path().join("disk.img"));
    let spec = format!("path={}", disk.display());
    let shadow = Path::new("/etc/shadow");
    let off = run_blk(kestrel_unprivileged(), &spec, &[shadow], &["--landlock", "off"]);
    assert_eq!(probe_verdict(&off, shadow), "allowed");
    // As root, auto leaves the confinement to `kestrel jailer`.
    let root = run_blk(kestrel(), &spec, &[shadow], &[]);
    assert_eq!(probe_verdict(&root, shadow), "allowed");
    // `on` confines root too.
    let on = run_blk(kestrel(), &spec, &[shadow], &["--landlock", "on"]);
    assert_eq!(probe_verdict(&on, shadow), "denied");
}

#[test]
fn the_api_names_landlock_for_paths_outside_the_rules_and_a_restore_is_confined() {
    if !kvm_available() || !is_root() {
        return;
    }
    let dir = nobody_dir();
    let (allowed, outside) = (dir.path().join("allowed"), dir.path().join("outside"));
    for sub in [&allowed, &outside] {
        std::fs::create_dir(sub).unwrap();
        chown(sub, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let disk = raw_disk(&dir.path().join("disk.img"));
    let spare_allowed = raw_disk(&allowed.join("spare.img"));
    let spare_outside = raw_disk(&outside.join("spare.img"));
    let socket = dir.path().join("api.sock");

    let mut command = kestrel_unprivileged();
    command
        .arg("vmm")
        .arg("--api-sock")
        .arg(&socket)
        .arg("--landlock-allow")
        .arg(&allowed)
        .env("KESTREL_LANDLOCK_TEST_PROBE", probe_list(&[Path::new("/etc/hostname"), &disk, &spare_outside]))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_vmm(command, &socket);
    let watchdog = Watchdog::new(&child);
    let ok = |method: &str, path: &str, body: &str| {
        let (status, reply) = request(&socket, method, path, body);
        assert_eq!(status, 204, "{method} {path}: {reply}");
    };
    ok(
        "PUT",
        "/boot-source",
        &format!(r#"{{"kernel_image_path": "{}", "boot_args": "hold=1"}}"#, guests::VIRTIO),
    );
    ok("PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 32}"#);
    let drive = format!(
        r#"{{"drive_id": "data", "path_on_host": "{}", "is_root_device": false, "is_read_only": false}}"#,
        disk.display()
    );
    ok("PUT", "/drives/data", &drive);
    ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    wait_for_line(&mut reader, "virtio: holding");

    // A drive update to a file outside the rules is refused by name; inside them it works.
    let update = |path: &Path| format!(r#"{{"drive_id": "data", "path_on_host": "{}"}}"#, path.display());
    let refused = request(&socket, "PATCH", "/drives/data", &update(&spare_outside));
    assert_fault(refused.clone(), "is outside the VMM's Landlock rules");
    assert_fault(refused, &format!("--landlock-allow {}", spare_outside.display()));
    ok("PATCH", "/drives/data", &update(&spare_allowed));

    // A snapshot into the allowed directory is written; into another, refused by name.
    ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let snapshot = |dir: &Path| {
        format!(
            r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
            dir.join("state").display(),
            dir.join("memory").display()
        )
    };
    ok("PUT", "/snapshot/create", &snapshot(&allowed));
    assert!(allowed.join("state").is_file() && allowed.join("memory").is_file());
    let refused = request(&socket, "PUT", "/snapshot/create", &snapshot(&outside));
    assert_fault(refused.clone(), "is outside the VMM's Landlock rules");
    assert_fault(refused, &format!("--landlock-allow {}", outside.display()));
    assert!(!outside.join("state").exists());

    drop(watchdog);
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(probe_verdict(&output, Path::new("/etc/hostname")), "denied");
    assert_eq!(probe_verdict(&output, &disk), "allowed");
    assert_eq!(probe_verdict(&output, &spare_outside), "denied");

    // A restore in a fresh unprivileged VMM is confined too, to the files of the state's VM.
    let socket = dir.path().join("api2.sock");
    let probe = [Path::new("/etc/hostname"), &spare_allowed, &disk, Path::new(guests::VIRTIO)];
    let mut command = kestrel_unprivileged();
    command
        .arg("vmm")
        .arg("--api-sock")
        .arg(&socket)
        .env("KESTREL_LANDLOCK_TEST_PROBE", probe_list(&probe))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_vmm(command, &socket);
    let watchdog = Watchdog::new(&child);
    let load = format!(
        r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "File", "backend_path": "{}"}}}}"#,
        allowed.join("state").display(),
        allowed.join("memory").display()
    );
    let (status, reply) = request(&socket, "PUT", "/snapshot/load", &load);
    assert_eq!(status, 204, "{reply}");
    drop(watchdog);
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(probe_verdict(&output, Path::new("/etc/hostname")), "denied");
    // The drive's file since the PATCH, not the one it booted with.
    assert_eq!(probe_verdict(&output, &spare_allowed), "allowed");
    assert_eq!(probe_verdict(&output, &disk), "denied");
    // A restore never opens the kernel the state file names, so the rules do not name it.
    assert_eq!(probe_verdict(&output, Path::new(guests::VIRTIO)), "denied");
}

/// The vsock device binds its socket (replacing a stale one) and connects to the host's
/// `PATH_PORT` sockets in the socket's directory under the rules, which grant nothing else there
/// (`--landlock on` confines root as well).
#[test]
fn vsock_works_under_landlock() {
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};

    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    // A stale socket where the device listens (a VMM killed before it cleaned up), which the
    // device replaces; and a file beside it, which the rules keep out of reach.
    drop(UnixListener::bind(&uds).unwrap());
    let neighbour = dir.path().join("neighbour.img");
    std::fs::write(&neighbour, b"private").unwrap();
    let listener = UnixListener::bind(format!("{}_1234", uds.display())).unwrap();
    let echo = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buffer = [0u8; 256];
        loop {
            match stream.read(&mut buffer).unwrap() {
                0 => return,
                n => stream.write_all(&buffer[..n]).unwrap(),
            }
        }
    });
    let mut child = kestrel()
        .args(["run", "--landlock", "on", "--kernel", guests::VIRTIO, "--cmdline", "test=vsock"])
        .args(["--vsock", &format!("cid=42,uds={}", uds.display())])
        .env("KESTREL_LANDLOCK_TEST_PROBE", format!("/etc/hostname,{}", neighbour.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let watchdog = Watchdog::new(&child);
    let mut console = BufReader::new(child.stdout.take().unwrap());
    let mut out = wait_for_line(&mut console, "vsock: listening on 5678");
    let mut host = UnixStream::connect(&uds).unwrap();
    host.set_read_timeout(Some(HANG_LIMIT)).unwrap();
    host.write_all(b"CONNECT 5678\n").unwrap();
    let mut ok = [0u8; 14];
    host.read_exact(&mut ok).unwrap();
    host.write_all(b"hello guest").unwrap();
    let mut reply = Vec::new();
    host.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"hello guest");
    console.read_to_string(&mut out).unwrap();
    let mut stderr_text = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr_text).unwrap();
    let status = child.wait().unwrap();
    drop(watchdog);
    assert_eq!(status.code(), Some(RESET), "{out}\n{stderr_text}");
    assert!(out.lines().any(|l| l == "vsock: ok"), "{out}");
    assert!(stderr_text.contains("landlock probe /etc/hostname: denied"), "{stderr_text}");
    // The socket's directory grants the socket alone, not the files beside it.
    let verdict = format!("landlock probe {}: denied", neighbour.display());
    assert!(stderr_text.contains(&verdict), "{stderr_text}");
    echo.join().unwrap();
}

/// A tap is reached through /dev/net/tun under the rules (in a namespace of its own, where the
/// guest finds the host at 10.231.0.1 as in tests/virtio.rs).
#[test]
fn a_tap_works_under_landlock() {
    if !kvm_available() {
        return;
    }
    let Some(namespace) = common::netns::NetNamespace::with_tap("ktap-ll", "10.231.0.1/24") else {
        return;
    };
    namespace.ip(&["link", "set", "ktap-ll", "address", "02:4b:53:00:00:01"]);
    let mut command = kestrel();
    command.args(["run", "--landlock", "on", "--kernel", guests::VIRTIO, "--cmdline", "test=net"]);
    command.args(["--net", "tap=ktap-ll,mac=52:54:00:4b:53:02"]);
    let output = run_to_end(namespace.wrap(&command), b"");
    assert_status(&output, RESET);
    let out = stdout(&output);
    assert!(out.lines().any(|l| l == "net: ok"), "{out}\n{}", stderr(&output));
}

/// A disk path that is a directory (or a link to one) would turn the disk's rule into a grant on
/// the whole tree: the rules are refused with a clear error instead, before the VM starts.
#[test]
fn a_disk_that_is_a_directory_is_refused_not_widened() {
    if !kvm_available() || !is_root() {
        return;
    }
    let dir = nobody_dir();
    let link = dir.path().join("disk.img");
    std::os::unix::fs::symlink("/etc", &link).unwrap();
    for path in [dir.path(), link.as_path()] {
        let mut command = kestrel_unprivileged();
        command.args(["run", "--kernel", guests::VIRTIO, "--cmdline", "test=blk"]);
        command.arg("--disk").arg(format!("path={}", path.display()));
        command.env("KESTREL_LANDLOCK_TEST_PROBE", "/etc/hostname");
        let output = run_to_end(command, b"");
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{err}");
        let expected = format!("{} is a directory; a file was expected there", path.display());
        assert!(err.contains(&expected), "{err}");
        // The rules were never applied (so the probe never ran), let alone with /etc in them.
        assert!(!err.contains("landlock probe"), "{err}");
    }
}

/// `kestrel vmm`'s API threads confine themselves as they start (an empty ruleset): before any
/// VM exists, the API thread can open nothing. (With seccomp on, the API role's filter has no
/// `openat` at all, so the Landlock layer is for `--seccomp off`.)
#[test]
fn the_api_threads_are_confined_from_the_start() {
    if !kvm_available() || !is_root() {
        return;
    }
    let dir = nobody_dir();
    let socket = dir.path().join("api.sock");
    let readable = raw_disk(&dir.path().join("mine.img"));
    let mut command = kestrel_unprivileged();
    command
        .arg("vmm")
        .arg("--api-sock")
        .arg(&socket)
        .args(["--seccomp", "off"])
        .env("KESTREL_LANDLOCK_TEST_PROBE_API", probe_list(&[Path::new("/etc/hostname"), &readable]))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_vmm(command, &socket);
    let watchdog = Watchdog::new(&child);
    // An answer comes from a connection thread the API thread started after its probe.
    let (status, reply) = request(&socket, "GET", "/", "");
    assert_eq!(status, 200, "{reply}");
    drop(watchdog);
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(probe_verdict(&output, Path::new("/etc/hostname")), "denied");
    // Even a file of the VMM's own user, in reach of any VM rule: the API thread needs none.
    assert_eq!(probe_verdict(&output, &readable), "denied");
}

/// `--cpus ...,others=CPUS` moves the VMM's other threads after the rules apply, listing them in
/// /proc/self/task: under Landlock (an unprivileged VMM) that works, and they land on their CPUs.
#[test]
fn an_unprivileged_vmm_keeps_its_other_threads_apart() {
    if !kvm_available() || !is_root() {
        return;
    }
    let mut command = kestrel_unprivileged();
    command
        .args(["run", "--kernel", guests::HELLO, "--cmdline", "exit=hang", "--cpus", "2,pin=1:0,others=0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let watchdog = Watchdog::new(&child);
    let mut console = BufReader::new(child.stdout.take().unwrap());
    // The guest runs: the placement was applied (its failure stops the VMM before this).
    let out = wait_for_line(&mut console, "exit: hang");
    let pid = child.id();
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(entry.unwrap().path().join("status")).unwrap();
        let field = |name: &str| {
            status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned()).unwrap_or_default()
        };
        seen.push((field("Name:"), field("Cpus_allowed_list:")));
    }
    drop(watchdog);
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    let others: Vec<_> =
        seen.iter().filter(|(name, _)| !name.starts_with("fc_vcpu") && !name.starts_with("kvm-")).collect();
    assert!(!others.is_empty(), "{seen:?}");
    for (name, cpus) in &others {
        assert_eq!(cpus, "0", "{name} in {seen:?}\n{out}\n{}", stderr(&output));
    }
    assert!(seen.iter().any(|(name, cpus)| name == "fc_vcpu 0" && cpus == "1"), "{seen:?}");
}

/// Every thread the VMM starts after the rules apply (vCPUs, device workers; they are started by
/// the seccomp spawner thread, which joins the main thread's domain) is held to them: each probes
/// a host file and the disk as it starts, under seccomp and without it.
#[test]
fn the_vmms_threads_share_the_main_threads_rules() {
    if !kvm_available() || !is_root() {
        return;
    }
    let dir = nobody_dir();
    let disk = raw_disk(&dir.path().join("disk.img"));
    let hostname = Path::new("/etc/hostname");
    for seccomp in ["on", "off"] {
        let mut command = kestrel_unprivileged();
        command.env("KESTREL_LANDLOCK_TEST_PROBE_THREADS", probe_list(&[hostname, &disk]));
        let disk_option = format!("path={}", disk.display());
        let output = run_blk(command, &disk_option, &[], &["--seccomp", seccomp]);
        let err = stderr(&output);
        for role in ["vcpu", "block"] {
            let verdict = |path: &Path| {
                let prefix = format!("kestrel: landlock probe ({role}) {}: ", path.display());
                err.lines()
                    .find_map(|line| line.strip_prefix(&prefix))
                    .unwrap_or_else(|| {
                        panic!("no {role} probe of {} (seccomp {seccomp}) in:\n{err}", path.display())
                    })
                    .to_owned()
            };
            assert_eq!(verdict(hostname), "denied", "{role} thread, seccomp {seccomp}");
            assert_eq!(verdict(&disk), "allowed", "{role} thread, seccomp {seccomp}");
        }
    }
}
