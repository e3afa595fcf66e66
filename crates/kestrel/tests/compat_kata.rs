//! Kata Containers' Firecracker driver (`src/runtime/virtcontainers/fc.go`) replayed against
//! Kestrel started as `firecracker`, on the virtio test guest: the same command lines, the same
//! files in the same places, the same requests in the same order, and at each step the check Kata
//! makes. What Kata does and this test does differently is said where it happens.
//!
//! The sequence (Kata, not jailed, with `debug = true` so the console goes to the VMM's stdout):
//! `firecracker --version` (semver >= 0.21.1); the jail-like directory `<vm>/root` with `run/`;
//! the kernel and image as `root/vmlinux` and `root/rootfs`; eight empty placeholder drives
//! `root/drive_0..7`; the log and metrics FIFOs opened for reading; `fcConfig.json` (Go's
//! `MarshalIndent` with tabs) holding boot-source, machine-config, vsock, logger, metrics and the
//! drives; `firecracker --api-sock root/run/firecracker.socket --config-file root/fcConfig.json`;
//! `GET /` every 10 ms until `Running`; `chmod 0640` of the hybrid vsock socket; the vCPU threads
//! by name; a hot-plug (`PATCH /drives/drive_0` with the same path, now naming the container's
//! image); the agent reached with `CONNECT <port>\n` → `OK <port>\n`; the unplug (the placeholder
//! back, `PATCH` again); `SIGTERM` and at most 15 s for the process to end.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::firecracker::{
    firecracker_in, open_files, signal_and_wait, vcpu_threads_as_kata_finds_them, version_as_kata_parses_it,
    wait_until_running, FifoReader, GoClient,
};
use common::kit::{kit_available, kit_cmdline, kit_path, one_boot_at_a_time, percent_encode, LINUX_LIMIT};
use common::{is_root, kvm_available, wait_for_child_line, Watchdog};

/// Kata's `fcDiskPoolSize`: placeholder drives attached before the start, patched later.
const POOL: usize = 8;
/// Kata's `fcStopSandboxTimeout`, seconds.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Kata's `fcKernelParams` after `GetKernelRootParams("ext4", ...)`, with `debug = true`'s console.
const KATA_PARAMS: &str = "root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4 \
    pci=off reboot=k panic=1 iommu=off net.ifnames=0 random.trust_cpu=on acpi=off console=ttyS0";

/// A disk image of `sectors` sectors starting with `text`.
fn image(path: &Path, text: &str, sectors: usize) {
    let mut bytes = vec![0u8; sectors * 512];
    bytes[..text.len()].copy_from_slice(text.as_bytes());
    std::fs::write(path, bytes).unwrap();
}

/// Kata's `fcConfig.json` as `json.MarshalIndent(fc.fcConfig, "", "\t")` writes it: the struct
/// fields in their Go order (`types.FcConfig`, the go-swagger models' fields alphabetical).
///
/// `paths` is where the VMM sees the jail root's files: the root itself, or `/` when jailed.
fn kata_config(paths: &Path, initrd: bool, kernel_params: &str, memory_mib: u32) -> String {
    let path = |name: &str| paths.join(name).to_str().unwrap().to_owned();
    let mut drives = vec![serde_json::json!({
        "drive_id": "rootfs", "is_read_only": true, "is_root_device": false, "path_on_host": path("rootfs"),
    })];
    for i in 0..POOL {
        let id = format!("drive_{i}");
        drives.push(serde_json::json!({
            "drive_id": id, "is_read_only": false, "is_root_device": false, "path_on_host": path(&id),
        }));
    }
    let mut boot_source = serde_json::json!({
        "boot_args": format!("{kernel_params} {KATA_PARAMS}"), "kernel_image_path": path("vmlinux"),
    });
    // The Linux test's kit boots from an initramfs (Kata's guest boots from its image).
    if initrd {
        boot_source["initrd_path"] = path("initrd").into();
    }
    let config = serde_json::json!({
        "boot-source": boot_source,
        "machine-config": { "mem_size_mib": memory_mib, "smt": false, "vcpu_count": 1 },
        "vsock": { "guest_cid": 3, "uds_path": path("kata.hvsock"), "vsock_id": "root" },
        "logger": { "level": "Error", "log_path": path("logs.fifo") },
        "metrics": { "metrics_path": path("metrics.fifo") },
        "drives": drives,
    });
    // Go indents with tabs, as this does; serde_json orders the keys alphabetically where Go keeps
    // the struct's order, which a JSON reader must not care about.
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    serde::Serialize::serialize(&config, &mut serializer).unwrap();
    String::from_utf8(out).unwrap()
}

/// Kata's sandbox on the host, up to the running VMM: the directories, files and FIFOs `fcInit`
/// and `StartVM` make, the VMM started from the config file, and the checks Kata makes until it
/// calls the VM ready.
struct Sandbox {
    dir: tempfile::TempDir,
    root: std::path::PathBuf,
    hvsock: std::path::PathBuf,
    child: std::process::Child,
    client: GoClient,
    logs: FifoReader,
    metrics: FifoReader,
}

impl Sandbox {
    /// Lays out the sandbox for `kernel` (and `initrd`, which Kata's own guests do not use: see
    /// the Linux test), writes `fcConfig.json` with `kernel_params`, starts `firecracker` and waits
    /// until Kata would carry on (state `Running`, the vsock socket there, the vCPU threads found).
    /// `before_start` runs once the vsock's socket path is known, before the VMM starts.
    fn start(
        kernel: &Path,
        initrd: Option<&Path>,
        kernel_params: &str,
        memory_mib: u32,
        limit: Duration,
        before_start: impl FnOnce(&Path),
    ) -> (Sandbox, Watchdog) {
        let dir = tempfile::tempdir().unwrap();
        let firecracker = firecracker_in(dir.path());

        // fcInit: the version check comes first.
        let version = version_as_kata_parses_it(&firecracker);
        assert!(version >= (0, 21, 1), "Kata refuses Firecracker older than 0.21.1; this says {version:?}");

        // setPaths: <chroot base>/<binary name>/<sandbox id (32 characters)>/root.
        let root = dir.path().join("vc/firecracker/0123456789abcdef0123456789abcdef/root");
        std::fs::create_dir_all(root.join("run")).unwrap();
        std::fs::set_permissions(root.join("run"), std::fs::Permissions::from_mode(0o750)).unwrap();
        // fcJailResource bind-mounts the kernel and the image into root/; links and copies stand
        // in for the mounts (the VMM sees the same bytes at the same paths).
        std::os::unix::fs::symlink(kernel, root.join("vmlinux")).unwrap();
        if let Some(initrd) = initrd {
            std::os::unix::fs::symlink(initrd, root.join("initrd")).unwrap();
        }
        image(&root.join("rootfs"), "kata guest image", 64);
        // createDiskPool: empty files (os.Create), attached as writable drives.
        for i in 0..POOL {
            std::fs::File::create(root.join(format!("drive_{i}"))).unwrap();
        }
        // fcListenToFifo: the FIFOs exist and have a reader before the VMM starts (Kata creates
        // them in <vm>/ and bind-mounts them into root/; the FIFO is the same either way).
        let logs = FifoReader::create(&root.join("logs.fifo"), 0o600);
        let metrics = FifoReader::create(&root.join("metrics.fifo"), 0o600);
        let hvsock = root.join("kata.hvsock");
        before_start(&hvsock);

        let config_path = root.join("fcConfig.json");
        std::fs::write(&config_path, kata_config(&root, initrd.is_some(), kernel_params, memory_mib))
            .unwrap();
        std::fs::set_permissions(&config_path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let socket = root.join("run/firecracker.socket");
        let child = Command::new(&firecracker)
            .arg("--api-sock")
            .arg(&socket)
            .arg("--config-file")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start firecracker");
        let watchdog = Watchdog::within(&child, limit);
        let pid = child.id();

        // waitVMMRunning: GET / every 10 ms until the state is Running (Kata allows 10 s).
        let mut client = GoClient::new(&socket);
        let info = wait_until_running(&mut client, Duration::from_secs(30));
        assert!(info["id"].is_string() && info["vmm_version"].is_string(), "{info}");
        // StartVM: the hybrid vsock socket exists by then and can be made group-readable.
        let socket_type = std::fs::metadata(&hvsock).expect("the hybrid vsock socket exists once Running");
        assert!(socket_type.file_type().is_socket());
        std::fs::set_permissions(&hvsock, std::fs::Permissions::from_mode(0o640)).unwrap();
        // The logger and metrics went to Kata's FIFOs.
        let files = open_files(pid);
        for fifo in ["logs.fifo", "metrics.fifo"] {
            assert!(files.iter().any(|f| f.ends_with(fifo)), "the VMM does not hold {fifo} open: {files:?}");
        }
        (Sandbox { dir, root, hvsock, child, client, logs, metrics }, watchdog)
    }

    /// GetThreadIDs: the tasks named "fc_vcpu N", which Kata moves into the sandbox's cgroup once
    /// the agent answers (so the guest has run by then, on a thread that has its name).
    fn check_vcpu_threads(&self) {
        let vcpus = vcpu_threads_as_kata_finds_them(self.child.id());
        assert_eq!(vcpus.keys().copied().collect::<Vec<_>>(), vec![0], "vCPU threads by name: {vcpus:?}");
    }

    /// hotplugBlockDevice(AddDevice): the container's image is bind-mounted over the placeholder
    /// and the drive patched with the same path. A rename stands in for the mount: the path now
    /// names another file, which the VMM must open afresh.
    fn hot_plug(&mut self, image: &Path) {
        let drive_0 = self.root.join("drive_0");
        std::fs::rename(image, &drive_0).unwrap();
        let patch = format!(r#"{{"drive_id":"drive_0","path_on_host":"{}"}}"#, drive_0.display());
        self.client.expect("PATCH", "/drives/drive_0", Some(&patch), 204);
    }

    /// hotplugBlockDevice(RemoveDevice): unmounted, so the path names the empty placeholder again.
    fn unplug(&mut self) {
        let drive_0 = self.root.join("drive_0");
        std::fs::File::create(&drive_0).unwrap();
        let patch = format!(r#"{{"drive_id":"drive_0","path_on_host":"{}"}}"#, drive_0.display());
        self.client.expect("PATCH", "/drives/drive_0", Some(&patch), 204);
    }

    /// The agent: Kata dials the hybrid vsock socket and sends `CONNECT <port>`; the answer's
    /// first line must start with "OK ".
    fn connect_agent(&self, port: u32) -> BufReader<UnixStream> {
        Sandbox::dial(&self.hvsock, port)
    }

    /// [`Sandbox::connect_agent`] on the socket at `hvsock`.
    fn dial(hvsock: &Path, port: u32) -> BufReader<UnixStream> {
        let mut agent = UnixStream::connect(hvsock).unwrap();
        agent.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        agent.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        let mut agent = BufReader::new(agent);
        let mut ok = String::new();
        agent.read_line(&mut ok).unwrap();
        assert!(ok.starts_with("OK ") && ok.ends_with('\n'), "the handshake answered {ok:?}");
        agent
    }

    /// StopVM: SIGTERM, then the process must be gone within fcStopSandboxTimeout; every metrics
    /// line Kata read (updateMetrics) must be one JSON object.
    fn stop(mut self, watchdog: Watchdog) {
        let status = signal_and_wait(&mut self.child, libc::SIGTERM, STOP_TIMEOUT);
        drop(watchdog);
        let mut stderr = String::new();
        self.child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        assert_eq!(status.code(), Some(128 + libc::SIGTERM), "stderr: {stderr}");
        for line in self.metrics.finish().lines() {
            let parsed: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert!(parsed.is_object(), "{line}");
        }
        drop(self.logs.finish());
        drop(self.dir);
    }
}

#[test]
fn kata_boots_from_its_config_file_hot_plugs_a_placeholder_drive_and_reaches_the_agent_over_hybrid_vsock() {
    if !kvm_available() {
        return;
    }
    // The guest's own connection (as the agent's log port would be): the host listens on
    // <uds>_<port>, the hybrid vsock convention.
    let mut echo = None;
    let listen = |hvsock: &Path| {
        let agent_log = UnixListener::bind(format!("{}_1234", hvsock.display())).unwrap();
        echo = Some(std::thread::spawn(move || {
            let (mut stream, _) = agent_log.accept().unwrap();
            let mut buffer = [0u8; 256];
            while let Ok(n @ 1..) = stream.read(&mut buffer) {
                stream.write_all(&buffer[..n]).unwrap();
            }
        }));
    };
    // The guest drives the first placeholder (device 1: the image is device 0) and the vsock
    // (device 9, after the nine drives), then holds so the VMM is still there to be stopped.
    let (mut sandbox, watchdog) = Sandbox::start(
        Path::new(guests::VIRTIO),
        None,
        "test=blk_swap,vsock devices=1,9 hold=1",
        128,
        Duration::from_secs(90),
        listen,
    );
    let mut child_stdout = sandbox.child.stdout.take().unwrap();
    let mut console = BufReader::new(&mut child_stdout);
    let seen = wait_for_child_line(&mut console, "blk_swap: waiting for a new disk", &mut sandbox.child);
    assert!(seen.contains("virtio: device 1 type 2"), "{seen}");
    assert!(seen.contains("blk_swap: capacity 0 sectors, empty\n"), "{seen}");

    let container = sandbox.dir.path().join("container.img");
    image(&container, "container rootfs", 32);
    sandbox.hot_plug(&container);
    let seen = wait_for_child_line(&mut console, "blk_swap: ok", &mut sandbox.child);
    assert!(seen.contains("blk_swap: capacity 32 sectors, sector 0 says container rootfs\n"), "{seen}");
    assert!(seen.contains("blk_swap: last sector 31 read, the one after IOERR\n"), "{seen}");

    let seen = wait_for_child_line(&mut console, "vsock: listening on 5678", &mut sandbox.child);
    assert!(seen.contains("vsock: guest cid 3\n"), "{seen}");
    let mut agent = sandbox.connect_agent(5678);
    sandbox.check_vcpu_threads();
    agent.get_mut().write_all(b"ttrpc hello").unwrap();
    let mut reply = Vec::new();
    agent.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"ttrpc hello");
    let seen = wait_for_child_line(&mut console, "virtio: holding", &mut sandbox.child);
    assert!(seen.contains("vsock: ok\n"), "{seen}");

    sandbox.unplug();
    sandbox.stop(watchdog);
    echo.take().unwrap().join().unwrap();
}

/// Kata with `jailer_path` set: the jailer (a link named `jailer`) builds the jail in Kata's
/// sandbox directory, already holding Kata's files, daemonizes, and execs `firecracker` with
/// `--config-file /fcConfig.json`; every path the VMM is given is inside the jail. Kata finds the
/// VMM's pid in `firecracker.pid` in the jail root, patches the placeholder with the jail path
/// `/drive_0`, and reaches the agent through `kata.hvsock` in the jail. The daemonized VMM's
/// console goes to /dev/null, so the guest only runs its vsock test (the hot-plug's effect in
/// the guest is the first test's).
#[test]
fn kata_runs_firecracker_through_the_jailer() {
    if !kvm_available() || !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A copy, not a link: the jailer (as Firecracker's) resolves the exec file and names the jail
    // after it, and Kata expects the jail under the name of its `path`, `firecracker`.
    let firecracker = dir.path().join("firecracker");
    std::fs::copy(env!("CARGO_BIN_EXE_kestrel"), &firecracker).unwrap();
    let jailer = dir.path().join("jailer");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kestrel"), &jailer).unwrap();
    let version = version_as_kata_parses_it(&firecracker);
    assert!(version >= (0, 21, 1), "{version:?}");

    let id = "fedcba9876543210fedcba9876543210";
    let base = dir.path().join("vc");
    let root = base.join("firecracker").join(id).join("root");
    std::fs::create_dir_all(root.join("run")).unwrap();
    // Bind mounts in Kata; inside a jail a link would lead out of it, so copies.
    std::fs::copy(guests::VIRTIO, root.join("vmlinux")).unwrap();
    image(&root.join("rootfs"), "kata guest image", 64);
    for i in 0..POOL {
        std::fs::File::create(root.join(format!("drive_{i}"))).unwrap();
    }
    let logs = FifoReader::create(&root.join("logs.fifo"), 0o600);
    let metrics = FifoReader::create(&root.join("metrics.fifo"), 0o600);
    let hvsock = root.join("kata.hvsock");
    let agent_log = UnixListener::bind(format!("{}_1234", hvsock.display())).unwrap();
    let echo = std::thread::spawn(move || {
        let (mut stream, _) = agent_log.accept().unwrap();
        let mut buffer = [0u8; 256];
        while let Ok(n @ 1..) = stream.read(&mut buffer) {
            stream.write_all(&buffer[..n]).unwrap();
        }
    });
    let config = kata_config(Path::new("/"), false, "test=vsock devices=9 hold=1", 128);
    std::fs::write(root.join("fcConfig.json"), config).unwrap();

    // fcInit, jailed: the jailer's command line, then Firecracker's after `--`.
    let mut jailer_process = Command::new(&jailer)
        .args(["--id", id, "--exec-file"])
        .arg(&firecracker)
        .args(["--uid", "0", "--gid", "0", "--chroot-base-dir"])
        .arg(&base)
        .args(["--daemonize", "--", "--config-file", "/fcConfig.json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the jailer");
    let mut client = GoClient::new(&root.join("run/firecracker.socket"));
    wait_until_running(&mut client, Duration::from_secs(30));
    // Kata does not wait for the jailer (Kestrel's, when it needs no fork to leave its session,
    // goes on as the VMM itself); it reads the VMM's pid from the jail.
    // The VMM's pid: firecracker.pid in the jail root (Kata retries for 5 s, then fails).
    let pid_text =
        std::fs::read_to_string(root.join("firecracker.pid")).expect("firecracker.pid in the jail root");
    let pid: u32 = pid_text.trim().parse().unwrap_or_else(|_| panic!("firecracker.pid holds {pid_text:?}"));
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim_end(), "firecracker", "the pid file names another process");
    std::fs::set_permissions(&hvsock, std::fs::Permissions::from_mode(0o640)).unwrap();

    // Hot-plug with the jail's path: the VMM opens /drive_0 inside its jail.
    let container = dir.path().join("container.img");
    image(&container, "container rootfs", 32);
    std::fs::rename(&container, root.join("drive_0")).unwrap();
    client.expect(
        "PATCH",
        "/drives/drive_0",
        Some(r#"{"drive_id":"drive_0","path_on_host":"/drive_0"}"#),
        204,
    );
    let config: serde_json::Value =
        serde_json::from_str(&client.expect("GET", "/vm/config", None, 200)).unwrap();
    let drive_0 = config["drives"].as_array().unwrap().iter().find(|d| d["drive_id"] == "drive_0").unwrap();
    assert_eq!(drive_0["path_on_host"], "/drive_0", "{config}");

    // The agent, through the jail's socket (Kata dials it from the host side of the jail). The
    // guest listens once its own connection is over: the echo thread ends when the guest closes
    // it, and the device's RST to the guest is queued before anything this dial makes.
    echo.join().unwrap();
    let mut agent = Sandbox::dial(&hvsock, 5678);
    let vcpus = vcpu_threads_as_kata_finds_them(pid);
    assert_eq!(vcpus.keys().copied().collect::<Vec<_>>(), vec![0], "{vcpus:?}");
    agent.get_mut().write_all(b"ttrpc hello").unwrap();
    let mut reply = Vec::new();
    agent.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"ttrpc hello");

    // StopVM: SIGTERM to the pid from the file, and the process gone within 15 s.
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) }, 0);
    let deadline = std::time::Instant::now() + STOP_TIMEOUT;
    // Gone, or a zombie nobody has reaped yet (the daemon is not this process's child).
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
    };
    while alive() {
        assert!(std::time::Instant::now() < deadline, "the jailed VMM did not exit within {STOP_TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop((logs.finish(), metrics.finish()));
    // Reaped here if the jailer went on as the VMM (it has exited either way by now).
    let _ = jailer_process.wait();
}

/// The one Linux ("tier 3") test of Kata's sequence: the kit's Linux boots from Kata's config
/// file, the agent (`vsock-test listen 1024`, Kata's agent port) is reached over hybrid vsock, and
/// the container's block device, hot-plugged into the placeholder `drive_0` (`/dev/vdb`), is
/// mounted by the guest. Differences from Kata: the kit boots from an initramfs (Kata's guest
/// from its image on `rootfs`, `root=/dev/vda1`), so `boot-source` has an `initrd_path`, and the
/// kit's command line for this host comes first; the agent's side is `vsock-test`, which answers
/// once it has read to the end of what the host sent.
#[test]
fn kata_on_linux_mounts_the_hot_plugged_drive_and_answers_the_agent_port() {
    let Some(kit) = kit_available() else { return };
    let Some(kit_rootfs) = kit_path("rootfs.ext4") else { return };
    let _serial = one_boot_at_a_time();
    // The guest: the agent listens; the disk's new size is waited for (bounded), then mounted
    // read-only and its marker file shown; then it idles until Kata stops the VM.
    let script = "vsock-test listen 1024 & \
        i=0; while [ \"$(cat /sys/block/vdb/size)\" = 0 ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; \
        mkdir -p /mnt && mount -t ext4 -o ro /dev/vdb /mnt && echo \"kata-linux: mounted $(cat /mnt/hello.txt)\"; \
        wait; echo kata-linux: agent done; sleep 1000";
    let params = format!("{} quiet kestrel.run={}", kit_cmdline(), percent_encode(script));
    let (mut sandbox, watchdog) = Sandbox::start(&kit.0, Some(&kit.1), &params, 256, LINUX_LIMIT, |_| {});
    let mut child_stdout = sandbox.child.stdout.take().unwrap();
    let mut console = BufReader::new(&mut child_stdout);
    wait_for_child_line(&mut console, "vsock-test: listening on 1024", &mut sandbox.child);

    // Kata reaches the agent first, then hot-plugs the container's rootfs.
    let mut agent = sandbox.connect_agent(1024);
    sandbox.check_vcpu_threads();
    agent.get_mut().write_all(b"CreateContainer").unwrap();
    let container = sandbox.dir.path().join("container.ext4");
    std::fs::copy(&kit_rootfs, &container).unwrap();
    sandbox.hot_plug(&container);
    let seen = wait_for_child_line(&mut console, "kata-linux: mounted", &mut sandbox.child);
    assert!(seen.contains("kata-linux: mounted hello from the kestrel rootfs"), "{seen}");

    agent.get_mut().shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    agent.read_to_string(&mut reply).unwrap();
    let sum: u64 = b"CreateContainer".iter().map(|&b| u64::from(b)).sum();
    assert_eq!(reply, format!("guest read 15 bytes, sum {sum}\n"));
    wait_for_child_line(&mut console, "kata-linux: agent done", &mut sandbox.child);

    sandbox.unplug();
    sandbox.stop(watchdog);
}
