//! Tier 2: virtio devices, driven from inside the guest by the `virtio` test guest's own driver
//! (guests/c/virtio.c) and its device tests (guests/c/test_*.c).
//!
//! Every device test runs on both transports: `on_both_transports!` turns a test function taking a
//! [`Transport`] into the tests `<function>::mmio` and `<function>::pci`.

mod common;

use common::*;

/// The guest resets the machine when its tests are done (README: exit statuses).
const RESET: i32 = 3;
const USAGE_ERROR: i32 = 2;

/// How the virtio devices reach the guest (`kestrel run --transport`).
#[derive(Clone, Copy, Debug)]
enum Transport {
    /// virtio-mmio: the guest's driver finds the devices in `virtio_mmio.device=` on its command line.
    Mmio,
    /// virtio-pci: the guest's driver finds the devices on PCI bus 0 through ports 0xCF8/0xCFC,
    /// follows their capabilities into BAR 0, and notifies through the ioeventfd.
    Pci,
}

impl Transport {
    /// `--transport <name>`, to put before the devices.
    fn args(self) -> [&'static str; 2] {
        match self {
            Transport::Mmio => ["--transport", "mmio"],
            Transport::Pci => ["--transport", "pci"],
        }
    }

    /// The line in which the guest reports its `index`th device (the VMM places them in
    /// command-line order: MMIO windows 4 KiB apart from 0xc0000000; PCI slots from 1, after the
    /// host bridge).
    fn device_line(self, index: u32, device_type: u32) -> String {
        let address = match self {
            Transport::Mmio => format!("mmio {:#x}", 0xc000_0000u32 + index * 0x1000),
            Transport::Pci => format!("pci 00:{:02x}.0", index + 1),
        };
        format!("virtio: device {index} type {device_type} at {address}")
    }
}

/// `on_both_transports!(test_fn, ...)`: for each `test_fn(Transport)`, a module of the same name
/// with the tests `mmio` and `pci`.
macro_rules! on_both_transports {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[test]
            fn mmio() {
                super::$test(super::Transport::Mmio)
            }

            #[test]
            fn pci() {
                super::$test(super::Transport::Pci)
            }
        }
    )*};
}

on_both_transports!(
    the_guest_finds_the_rng_and_reads_entropy_from_it,
    without_devices_the_guest_finds_none_and_a_requested_test_fails,
    the_guest_writes_and_reads_a_disk_and_cannot_write_a_read_only_one,
    inflating_the_balloon_gives_the_guests_memory_back_to_the_host,
    the_guest_exchanges_data_with_host_processes_over_vsock_both_ways,
    the_guest_resolves_and_pings_the_host_through_a_tap,
);

/// `kestrel run` of the `virtio` guest on `transport` with the given extra arguments, stdin closed.
fn run_virtio_guest(transport: Transport, args: &[&str]) -> std::process::Output {
    run_guest(guests::VIRTIO, &[&transport.args()[..], args].concat())
}

/// Asserts that every line of `expected` is a line of the guest's output.
#[track_caller]
fn assert_lines(out: &str, expected: &[&str]) {
    for line in expected {
        assert!(out.lines().any(|l| l == *line), "no line {line:?} in:\n{out}");
    }
}

fn the_guest_finds_the_rng_and_reads_entropy_from_it(transport: Transport) {
    if !kvm_available() {
        return;
    }
    let output = run_virtio_guest(transport, &["--rng", "--cmdline", "test=rng"]);
    assert_status(&output, RESET);
    let out = stdout(&output);
    assert_lines(
        &out,
        &["virtio: 1 devices", &transport.device_line(0, 4), "rng: 2 x 64 bytes", "rng: ok", "virtio: done"],
    );
    assert!(!out.contains("FAILED"), "{out}");
}

fn without_devices_the_guest_finds_none_and_a_requested_test_fails(transport: Transport) {
    if !kvm_available() {
        return;
    }
    let output = run_virtio_guest(transport, &["--cmdline", "test=rng"]);
    assert_status(&output, RESET);
    let out = stdout(&output);
    assert!(out.lines().any(|l| l == "virtio: 0 devices"), "{out}");
    assert!(out.lines().any(|l| l == "rng: FAILED no device of type 4"), "{out}");
    assert!(out.lines().any(|l| l == "virtio: done"), "{out}");
}

/// `--rng` is a plain switch today, which clap refuses to see twice (no KVM needed to check that);
/// should it ever add one device per use, the guest must find and test both.
#[test]
fn rng_given_twice_is_refused_or_gives_two_devices() {
    let output = run_guest(guests::VIRTIO, &["--rng", "--rng", "--cmdline", "test=rng"]);
    if output.status.code() == Some(USAGE_ERROR) {
        let err = stderr(&output);
        assert!(err.contains("'--rng' cannot be used multiple times"), "{err}");
        assert!(output.stdout.is_empty(), "the guest ran: {}", stdout(&output));
        return;
    }
    if !kvm_available() {
        return;
    }
    assert_status(&output, RESET);
    let out = stdout(&output);
    assert!(out.lines().any(|l| l == "virtio: 2 devices"), "{out}");
    assert!(out.lines().any(|l| l == Transport::Mmio.device_line(1, 4)), "{out}");
    assert_eq!(out.lines().filter(|&l| l == "rng: ok").count(), 2, "{out}");
}

/// The guest's `blk` test on a writable and a read-only disk; the host then finds the guest's
/// pattern in exactly sectors 2-5 of the first and the second unchanged.
fn the_guest_writes_and_reads_a_disk_and_cannot_write_a_read_only_one(transport: Transport) {
    if !kvm_available() {
        return;
    }
    const FILL: u8 = 0xEE;
    const DISK_BYTES: usize = 64 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let writable = dir.path().join("rw.img");
    let read_only = dir.path().join("ro.img");
    std::fs::write(&writable, vec![FILL; DISK_BYTES]).unwrap();
    std::fs::write(&read_only, vec![FILL; DISK_BYTES]).unwrap();
    let output = run_virtio_guest(
        transport,
        &[
            "--disk",
            &format!("path={},id=kestrel-blk-test", path_str(&writable)),
            "--disk",
            &format!("path={},readonly=on", path_str(&read_only)),
            "--cmdline",
            "test=blk",
        ],
    );
    assert_status(&output, RESET);
    let out = stdout(&output);
    assert_lines(
        &out,
        &[
            "virtio: 2 devices",
            &transport.device_line(0, 2),
            "blk: capacity 128 sectors",
            "blk: wrote and read back sectors 2-5",
            "blk: id kestrel-blk-test",
            &transport.device_line(1, 2),
            "blk: read-only, a write fails with IOERR",
            "blk: id ro.img",
            "virtio: done",
        ],
    );
    for on_both_disks in ["blk: flush ok", "blk: past the end IOERR, unknown type UNSUPP", "blk: ok"] {
        assert_eq!(out.lines().filter(|&l| l == on_both_disks).count(), 2, "{on_both_disks:?} in:\n{out}");
    }
    assert!(!out.contains("FAILED"), "{out}");

    let written = std::fs::read(&writable).unwrap();
    let pattern = |offset: usize| ((offset / 512) * 31 + (offset % 512) * 7 + 3) as u8;
    for (offset, &byte) in written.iter().enumerate() {
        let expected = if (2 * 512..6 * 512).contains(&offset) { pattern(offset) } else { FILL };
        assert_eq!(byte, expected, "byte {offset} of the writable disk");
    }
    assert!(std::fs::read(&read_only).unwrap().iter().all(|&b| b == FILL), "the read-only disk changed");
}

/// The kestrel process's resident memory (VmRSS), in bytes.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kib * 1024
}

/// The guest touches 64 MiB, then hands exactly those pages to the balloon: the host's memory use
/// must fall by about as much. The guest parks after each step until the test sends a byte, so
/// the samples are taken at the right moments.
fn inflating_the_balloon_gives_the_guests_memory_back_to_the_host(transport: Transport) {
    use std::io::{BufReader, Read, Write};
    use std::process::Stdio;

    if !kvm_available() {
        return;
    }
    const MIB: u64 = 1 << 20;
    let mut child = kestrel()
        .args(["run", "--kernel", guests::VIRTIO, "--memory", "256M"])
        .args(transport.args())
        .args(["--balloon", "size=64"])
        .args(["--cmdline", "test=balloon"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kestrel");
    let watchdog = Watchdog::new(&child);
    let mut stdin = child.stdin.take().expect("stdin");
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));

    let mut out = wait_for_line(&mut reader, "balloon: touched");
    let touched = resident_bytes(child.id());
    stdin.write_all(b"x").expect("write stdin");
    out += &wait_for_line(&mut reader, "balloon: inflated");
    let inflated = resident_bytes(child.id());
    stdin.write_all(b"x").expect("write stdin");
    reader.read_to_string(&mut out).expect("read guest output");
    let status = child.wait().expect("wait for kestrel");
    drop(watchdog);

    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("read stderr");
    assert_eq!(status.code(), Some(RESET), "stdout:\n{out}\nstderr:\n{stderr}");
    assert_lines(
        &out,
        &[
            &transport.device_line(0, 5),
            "balloon: target 16384 pages",
            "balloon: touched 16384 pages",
            "balloon: inflated 16384 pages",
            "balloon: inflated pages read as zero",
            "balloon: deflated 16384 pages",
            "balloon: ok",
        ],
    );
    assert!(touched >= 64 * MIB, "RSS {} MiB after touching 64 MiB", touched / MIB);
    // Most of the 64 MiB goes; a little slack for whatever else the VMM allocates meanwhile.
    assert!(
        touched.saturating_sub(inflated) >= 56 * MIB,
        "RSS went from {} MiB to only {} MiB",
        touched / MIB,
        inflated / MIB
    );
}

#[test]
fn a_balloon_larger_than_guest_memory_is_refused() {
    if !kvm_available() {
        return;
    }
    let output = run_guest(guests::VIRTIO, &["--memory", "64M", "--balloon", "size=65"]);
    assert_status(&output, 1);
    let err = stderr(&output);
    assert!(err.contains("a balloon of 65 MiB is larger than the guest's 64 MiB of RAM"), "{err}");
}

/// The `vsock` device test: the guest connects to host port 1234 (this test listens on
/// `<uds>_1234` and echoes), then a host process connects to the guest's port 5678 through the
/// device's socket (`CONNECT 5678`) and gets its bytes echoed.
fn the_guest_exchanges_data_with_host_processes_over_vsock_both_ways(transport: Transport) {
    use std::io::{BufReader, Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};

    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
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
        .args(["run", "--kernel", guests::VIRTIO, "--cmdline", "test=vsock"])
        .args(transport.args())
        .args(["--vsock", &format!("cid=42,uds={}", uds.display())])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let watchdog = Watchdog::new(&child);
    let mut console = BufReader::new(child.stdout.take().unwrap());
    let mut out = wait_for_line(&mut console, "vsock: listening on 5678");

    let mut host = UnixStream::connect(&uds).unwrap();
    host.set_read_timeout(Some(HANG_LIMIT)).unwrap();
    host.write_all(b"CONNECT 5678\n").unwrap();
    let mut ok = [0u8; 14]; // "OK 1073741824\n": the device's first port
    host.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"OK 1073741824\n");
    host.write_all(b"hello guest").unwrap();
    let mut reply = Vec::new();
    host.read_to_end(&mut reply).unwrap(); // the guest echoes, then closes
    assert_eq!(reply, b"hello guest");

    console.read_to_string(&mut out).unwrap();
    let status = child.wait().unwrap();
    drop(watchdog);
    assert_eq!(status.code(), Some(RESET), "{out}");
    assert_lines(
        &out,
        &[
            &transport.device_line(0, 19),
            "vsock: guest cid 42",
            "vsock: echo from host port 1234",
            "vsock: echoed 11 bytes to host port 1073741824",
            "vsock: ok",
            "virtio: done",
        ],
    );
    echo.join().unwrap();
}

/// The guest's hand-built ARP request and ICMP echo reach the host kernel through a tap, in a
/// network namespace of this test's own (the tap is 10.231.0.1/24 there), and the replies come
/// back to it.
fn the_guest_resolves_and_pings_the_host_through_a_tap(transport: Transport) {
    if !kvm_available() {
        return;
    }
    let Some(namespace) = common::netns::NetNamespace::with_tap("ktap-guest", "10.231.0.1/24") else {
        return;
    };
    namespace.ip(&["link", "set", "ktap-guest", "address", "02:4b:53:00:00:01"]);
    let mut command = kestrel();
    command.args(["run", "--kernel", guests::VIRTIO, "--cmdline", "test=net"]);
    command.args(transport.args());
    command.args(["--net", "tap=ktap-guest,mac=52:54:00:4b:53:02"]);
    let output = run_to_end(namespace.wrap(&command), b"");
    assert_status(&output, RESET);
    let out = stdout(&output);
    assert_lines(
        &out,
        &[
            &transport.device_line(0, 1),
            "net: mac 52:54:00:4b:53:02",
            "net: arp reply from 10.231.0.1 is 02:4b:53:00:00:01",
            "net: echo reply from 10.231.0.1, 32 bytes of payload",
            "net: ok",
            "virtio: done",
        ],
    );
}
