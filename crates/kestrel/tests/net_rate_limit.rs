//! Tier 2: a network card's rate limiters hold the CPL3 bench guest (guests/c/test_bench_net.c) to
//! the rates set with `--net ...,tx_bw=` / `rx_bw=`, and `PATCH /network-interfaces` changes them
//! while it runs.
//!
//! The card's tap lives in a network namespace of the test's own (root only; nothing in it routes
//! anywhere). For transmit the guest sends the frames, which the host kernel drops on the tap; for
//! receive a thread of the test, in the namespace, writes them onto the tap through a packet
//! socket, all at once: the tap's queue is made long enough to hold them all, so that the limiter
//! alone sets the pace, and the guest checks that every frame arrives whole and in order.
//!
//! The times are the guest's own (TSC cycles), as in blk_rate_limit.rs. A bucket starts full (one
//! second's worth), and the limiter counts each frame with its 12-byte virtio-net header, so `n`
//! frames of `len` bytes take `(n * (len + 12) - rate) / rate` seconds.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use common::netns::NetNamespace;
use common::*;

const TAP: &str = "ktap-limit";
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x4b, 0x53, 0x03];
const GUEST_MAC_TEXT: &str = "52:54:00:4b:53:03";
/// The bench guest's EtherType (IEEE local experimental): no host protocol takes it.
const ETHERTYPE: u16 = 0x88B5;
const FRAME_LEN: usize = 1514;
const HEADER_LEN: usize = 12;
/// 1 MiB a second, and 3 MiB of frames: the first MiB at once (the full bucket), the rest in 2 s.
const RATE: u64 = 1 << 20;
const FRAMES: u64 = 3 * RATE / (FRAME_LEN + HEADER_LEN) as u64;

/// The rate of the guest's TSC: what KVM gives a new vCPU.
fn tsc_khz() -> u32 {
    let kvm = kvm_ioctls::Kvm::new().expect("open /dev/kvm");
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    vcpu.get_tsc_khz().expect("KVM_GET_TSC_KHZ")
}

/// The seconds the limit allows `FRAMES` frames.
fn expected_seconds() -> f64 {
    let bytes = FRAMES * (FRAME_LEN + HEADER_LEN) as u64;
    (bytes - RATE) as f64 / RATE as f64
}

/// The namespace with the card's tap, its queue long enough for every frame the test sends.
fn namespace() -> Option<NetNamespace> {
    let namespace = NetNamespace::with_tap(TAP, "10.233.0.1/24")?;
    namespace.ip(&["link", "set", TAP, "txqueuelen", "10000"]);
    Some(namespace)
}

/// The guest's figure from its `bench_net: <direction>` line, in seconds.
fn guest_seconds(out: &str, direction: &str) -> f64 {
    let prefix = format!("bench_net: {direction} ");
    let line = out.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("{out}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let cycles: u64 = words
        .iter()
        .position(|&w| w == "cycles")
        .and_then(|i| words.get(i + 1)?.parse().ok())
        .unwrap_or_else(|| panic!("no cycles in {line:?}"));
    let seconds = cycles as f64 / (f64::from(tsc_khz()) * 1000.0);
    eprintln!("{line}: {seconds:.3} s, the limit says {:.3} s", expected_seconds());
    seconds
}

/// Never more than 5 % faster than the limit allows; not much slower (the bound is looser, as in
/// blk_rate_limit.rs: a loaded 2-core host slows the guest itself, but a limiter that lost its
/// timer would take seconds more).
fn assert_held_to_the_limit(seconds: f64, what: &str) {
    let expected = expected_seconds();
    assert!(
        seconds >= expected * 0.95 && seconds <= expected * 1.5,
        "{what}: the guest took {seconds:.3} s, the limit says {expected:.3} s"
    );
}

/// One limited guest at a time: two at once on a 2-core host slow each other below the limits.
fn one_guest_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static GUEST: std::sync::Mutex<()> = std::sync::Mutex::new(());
    GUEST.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `kestrel run` of the bench guest with the card `net_options` and the guest's `params`.
fn bench_command(net_options: &str, params: &str) -> std::process::Command {
    let net = format!("tap={TAP},mac={GUEST_MAC_TEXT},{net_options}");
    let cmdline = format!("test=bench_net {params}");
    let mut command = kestrel();
    command.args(["run", "--kernel", guests::VIRTIO, "--memory", "128M", "--serial", "stdio"]);
    command.args(["--net", &net, "--cmdline", &cmdline]);
    command
}

/// A packet socket on the tap, in the namespace of the calling thread.
struct TapWriter {
    socket: OwnedFd,
    address: libc::sockaddr_ll,
}

impl TapWriter {
    /// Waits (20 s at most) for Kestrel to attach to the tap (its carrier comes up then: frames
    /// sent before would be dropped), then opens a socket that writes frames onto it.
    fn attached() -> TapWriter {
        // SAFETY: socket takes no pointers; the descriptor is owned from here on.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(raw >= 0, "packet socket: {}", std::io::Error::last_os_error());
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ifreq is plain data, for which all zeroes is a valid value.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (slot, &byte) in request.ifr_name.iter_mut().zip(TAP.as_bytes()) {
            *slot = byte as libc::c_char;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // SAFETY: SIOCGIFFLAGS reads the name from and writes the flags into the one ifreq,
            // which lives across the call.
            let result = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) };
            assert_eq!(result, 0, "SIOCGIFFLAGS {TAP}: {}", std::io::Error::last_os_error());
            // SAFETY: SIOCGIFFLAGS filled in the flags member of the union.
            let flags = i32::from(unsafe { request.ifr_ifru.ifru_flags });
            if flags & libc::IFF_RUNNING != 0 {
                break;
            }
            assert!(Instant::now() < deadline, "Kestrel never attached to the tap");
            std::thread::sleep(Duration::from_millis(5));
        }
        let name = std::ffi::CString::new(TAP).unwrap();
        // SAFETY: if_nametoindex reads the NUL-terminated name, which lives across the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(index, 0, "if_nametoindex {TAP}: {}", std::io::Error::last_os_error());
        // SAFETY: sockaddr_ll is plain data, for which all zeroes is a valid value.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = ETHERTYPE.to_be();
        address.sll_ifindex = index as i32;
        address.sll_halen = 6;
        address.sll_addr[..6].copy_from_slice(&GUEST_MAC);
        TapWriter { socket, address }
    }

    /// Writes test frame `seq` (see test_bench_net.c) onto the tap, towards the guest.
    fn send(&self, seq: u32) {
        let mut frame = vec![0u8; FRAME_LEN];
        frame[..6].copy_from_slice(&GUEST_MAC);
        frame[6..12].copy_from_slice(&[0x02, 0x4b, 0x53, 0, 0, 0x03]);
        frame[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
        frame[14..18].copy_from_slice(&seq.to_be_bytes());
        for (i, byte) in frame.iter_mut().enumerate().skip(18) {
            *byte = (i as u32).wrapping_mul(7).wrapping_add(seq) as u8;
        }
        // SAFETY: sendto reads the frame and the address, both alive across the call.
        let sent = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&self.address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(sent, frame.len() as isize, "sendto: {}", std::io::Error::last_os_error());
    }
}

#[test]
fn a_tx_bandwidth_limit_holds_the_guest_to_its_byte_rate() {
    if !kvm_available() {
        return;
    }
    let Some(namespace) = namespace() else { return };
    let _one = one_guest_at_a_time();
    let command = bench_command("tx_bw=1M", &format!("net.frames={FRAMES} net.len={FRAME_LEN} net.qd=32"));
    let output = run_to_end_within(namespace.wrap(&command), b"", Duration::from_secs(30));
    assert_status(&output, 3);
    let seconds = guest_seconds(&stdout(&output), "tx");
    assert_held_to_the_limit(seconds, "frames sent at tx_bw=1M");
}

#[test]
fn an_rx_bandwidth_limit_holds_the_guest_to_its_byte_rate_and_loses_nothing() {
    if !kvm_available() {
        return;
    }
    let Some(namespace) = namespace() else { return };
    let _one = one_guest_at_a_time();
    let params = format!("net.mode=rx net.frames={FRAMES} net.len={FRAME_LEN} net.qd=64");
    let mut command = namespace.wrap(&bench_command("rx_bw=1M", &params));
    let child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start kestrel");
    std::thread::scope(|scope| {
        scope.spawn(|| {
            namespace.enter_on_this_thread();
            let writer = TapWriter::attached();
            for seq in 0..FRAMES as u32 {
                writer.send(seq);
            }
        });
    });
    let output = wait_within(child, Duration::from_secs(30));
    assert_status(&output, 3);
    // The guest checked every frame: whole, in order, none missing.
    let seconds = guest_seconds(&stdout(&output), "rx");
    assert_held_to_the_limit(seconds, "frames received at rx_bw=1M");
}

/// `PATCH /network-interfaces/{id}` with a `tx_rate_limiter` on a running VM: the card starts at
/// one frame per 10 s, so the guest's 20 frames would take over 3 minutes; the PATCH lifts the
/// limit to one frame per 150 ms (which keeps the guest running long enough for the VMM to answer
/// the PATCH and a GET) and the guest is done within seconds. The worker, waiting for the old
/// limit's timer, must look again at once. `GET /vm/config` shows the new limiter, and the
/// receive limiter the PATCH left out is kept.
#[test]
fn a_patch_changes_the_limit_of_a_running_card() {
    use common::api::{request, spawn_vmm, vmm_command};
    use std::io::Read;

    if !kvm_available() {
        return;
    }
    let Some(namespace) = namespace() else { return };
    let _one = one_guest_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let mut command = namespace.wrap(&vmm_command(&socket));
    command.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped());
    command.stderr(std::process::Stdio::piped());
    let mut child = spawn_vmm(command, &socket);
    let watchdog = Watchdog::new(&child);
    let boot = format!(
        r#"{{"kernel_image_path": "{}", "boot_args": "test=bench_net net.frames=20 net.len=60 net.qd=1"}}"#,
        guests::VIRTIO
    );
    assert_eq!(request(&socket, "PUT", "/boot-source", &boot).0, 204);
    let machine = r#"{"vcpu_count": 1, "mem_size_mib": 128}"#;
    assert_eq!(request(&socket, "PUT", "/machine-config", machine).0, 204);
    let net = format!(
        r#"{{"iface_id": "eth0", "host_dev_name": "{TAP}", "guest_mac": "{GUEST_MAC_TEXT}",
            "rx_rate_limiter": {{"bandwidth": {{"size": 1048576, "refill_time": 1000}}}},
            "tx_rate_limiter": {{"ops": {{"size": 1, "refill_time": 10000}}}}}}"#
    );
    let (status, body) = request(&socket, "PUT", "/network-interfaces/eth0", &net);
    assert_eq!(status, 204, "{body}");
    let metrics = dir.path().join("metrics.json");
    let put_metrics = format!(r#"{{"metrics_path": "{}"}}"#, path_str(&metrics));
    assert_eq!(request(&socket, "PUT", "/metrics", &put_metrics).0, 204);
    assert_eq!(request(&socket, "PUT", "/actions", r#"{"action_type": "InstanceStart"}"#).0, 204);

    // The PATCH must find the guest held back: wait until the card says it throttled.
    common::api::wait_for_metric(&socket, &metrics, "net", "tx_rate_limiter_throttled");
    let patched = Instant::now();
    let lifted = r#"{"iface_id": "eth0", "tx_rate_limiter": {"ops": {"size": 1, "refill_time": 150}}}"#;
    let (status, body) = request(&socket, "PATCH", "/network-interfaces/eth0", lifted);
    assert_eq!(status, 204, "{body}");
    let (status, config) = request(&socket, "GET", "/vm/config", "");
    assert_eq!(status, 200);
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let card = &config["network-interfaces"][0];
    assert_eq!(card["tx_rate_limiter"]["ops"]["refill_time"], 150, "{config}");
    assert_eq!(card["rx_rate_limiter"]["bandwidth"]["size"], 1048576, "{config}");

    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let took = patched.elapsed();
    drop(watchdog);
    let output = wait_with_limit(child);
    assert_eq!(output.status.code(), Some(3), "stdout: {out}\nstderr: {}", stderr(&output));
    assert!(out.contains("bench_net: tx frames 20 bytes 1200"), "{out}");
    // ~3 s under the new limit; a worker that waited for the old limit's timer first would take
    // 10 s more, and the old limit over 3 minutes.
    assert!(took < Duration::from_secs(8), "the guest took {took:?} after the limit was lifted");
}

/// `PATCH /network-interfaces` on a VM restored from a snapshot finds its card (as Firecracker
/// allows): the card is known by the ID it was configured with, and `GET /vm/config` shows the
/// new limiter beside the one the PATCH left out.
#[test]
fn a_restored_vms_card_can_be_patched() {
    use common::api::{request, spawn_vmm, vmm_command};

    if !kvm_available() {
        return;
    }
    let Some(namespace) = namespace() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (state, memory) = (dir.path().join("state"), dir.path().join("memory"));
    let start = |name: &str| {
        let socket = dir.path().join(format!("{name}.sock"));
        let mut command = vmm_command(&socket);
        command.args(["--serial", "none"]);
        let mut wrapped = namespace.wrap(&command);
        wrapped.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
        (Killed(spawn_vmm(wrapped, &socket)), socket)
    };
    let ok = |socket: &std::path::Path, method: &str, path: &str, body: &str| {
        let (status, reply) = request(socket, method, path, body);
        assert_eq!(status, 204, "{method} {path}: {reply}");
    };

    let (first, socket) = start("first");
    let boot = format!(r#"{{"kernel_image_path": "{}", "boot_args": "exit=hang"}}"#, guests::HELLO);
    ok(&socket, "PUT", "/boot-source", &boot);
    ok(&socket, "PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 64}"#);
    let net = format!(
        r#"{{"iface_id": "eth0", "host_dev_name": "{TAP}", "guest_mac": "{GUEST_MAC_TEXT}",
            "rx_rate_limiter": {{"bandwidth": {{"size": 1048576, "refill_time": 1000}}}}}}"#
    );
    ok(&socket, "PUT", "/network-interfaces/eth0", &net);
    ok(&socket, "PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    ok(&socket, "PATCH", "/vm", r#"{"state": "Paused"}"#);
    let create = format!(
        r#"{{"snapshot_path": "{}", "mem_file_path": "{}", "snapshot_type": "Full"}}"#,
        state.display(),
        memory.display()
    );
    ok(&socket, "PUT", "/snapshot/create", &create);
    // The tap is free for the restored VM once this one is gone.
    drop(first);

    let (_second, socket) = start("second");
    let load = format!(
        r#"{{"snapshot_path": "{}", "mem_file_path": "{}", "resume_vm": true}}"#,
        state.display(),
        memory.display()
    );
    ok(&socket, "PUT", "/snapshot/load", &load);
    let limit = r#"{"iface_id": "eth0", "tx_rate_limiter": {"ops": {"size": 100, "refill_time": 1000}}}"#;
    ok(&socket, "PATCH", "/network-interfaces/eth0", limit);
    let (status, config) = request(&socket, "GET", "/vm/config", "");
    assert_eq!(status, 200, "{config}");
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let card = &config["network-interfaces"][0];
    assert_eq!(card["iface_id"], "eth0", "{config}");
    assert_eq!(card["host_dev_name"], TAP, "{config}");
    assert_eq!(card["tx_rate_limiter"]["ops"]["size"], 100, "{config}");
    assert_eq!(card["rx_rate_limiter"]["bandwidth"]["size"], 1048576, "{config}");
    let (status, reply) = request(&socket, "PATCH", "/network-interfaces/eth1", r#"{"iface_id": "eth1"}"#);
    assert_eq!(status, 400, "an unknown card is still refused: {reply}");
}

/// A VMM that never ends by itself (its guest spins), killed when dropped, also by a failing
/// assertion.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
