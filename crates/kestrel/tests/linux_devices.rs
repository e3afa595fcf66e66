//! Tier 3: the kit's Linux drives every virtio device Kestrel has, with its real drivers, in one
//! boot per transport (`--transport mmio` and `--transport pci`):
//!
//! - virtio-blk: mounts a copy of the kit's ext4 image, writes a file and unmounts (the host then
//!   finds the file with `debugfs` and checks the image with `e2fsck`); a second, read-only disk
//!   is marked read-only, mounts read-only, refuses a raw write and stays unchanged;
//! - virtio-rng: reads `/dev/hwrng` with `virtio_rng` as the current source;
//! - virtio-net: pings the host's end of a tap in a network namespace of the test's own
//!   (`common/netns.rs`: the traffic never leaves it);
//! - virtio-balloon: the driver inflates the balloon to `--balloon size=` and `MemTotal` is that
//!   much lower than after the driver is unbound (which deflates it);
//! - virtio-vsock: `/bin/vsock-test` (kit/vsock-test.c) exchanges 512 KiB each way with host
//!   processes, enough to run through both sides' credit windows several times;
//!
//! and every device sits on the transport asked for (sysfs), with MSI-X interrupts on PCI.
//!
//! Needs the kit, root and /dev/net/tun (the tap), `debugfs` and `e2fsck`; without them the tests
//! skip, except on CI (CI=true), where they fail.

mod common;

use std::io::{BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Stdio;
use std::thread;
use std::time::Instant;

use common::kit::*;
use common::netns::NetNamespace;
use common::*;

const POWER_OFF: i32 = 0;
const MAC: &str = "52:54:00:4b:53:03";
const TAP: &str = "ktap-all";
const HOST_IP: &str = "10.231.3.1";
const GUEST_IP: &str = "10.231.3.2";
/// The balloon's target; the guest has `linux_script_command`'s 256M.
const BALLOON_MIB: u64 = 32;
/// What the guest writes to the ext4 disk.
const MARKER: &str = "written-by-the-guest-6d1c";
/// Bytes sent each way over vsock: several times both sides' receive buffers (Kestrel's 128 KiB,
/// Linux's 256 KiB), so each direction waits for credit updates.
const VSOCK_BYTES: usize = 512 * 1024;
const GUEST_LISTEN_PORT: u32 = 5000;
const HOST_LISTEN_PORT: u32 = 6000;

#[test]
fn linux_uses_every_virtio_device_over_mmio() {
    linux_uses_every_virtio_device("mmio");
}

#[test]
fn linux_uses_every_virtio_device_over_pci() {
    linux_uses_every_virtio_device("pci");
}

/// The guest's script: each step prints what the host checks, and `set -e` ends it at the first
/// failed command (the test then sees a non-zero `command exited`). Terse, because it has to fit
/// on the kernel command line (2047 bytes) percent-encoded, beside the MMIO devices' parameters.
fn script() -> String {
    format!(
        r#"set -e
for d in /sys/bus/virtio/devices/*;do echo device $(cat $d/device) $(readlink -f $d);done
echo serials $(cat /sys/block/vda/serial) $(cat /sys/block/vdb/serial)
mount /dev/vda /mnt
echo rw: $(cat /mnt/hello.txt)
echo {MARKER} >/mnt/new.txt
umount /mnt
echo ro flag: $(cat /sys/block/vdb/ro)
mount -o ro /dev/vdb /mnt
echo ro: $(cat /mnt/hello.txt)
umount /mnt
dd if=/dev/zero of=/dev/vdb count=1 conv=fsync 2>/dev/null||echo raw write refused
echo rng $(cat /sys/class/misc/hw_random/rng_current) $(head -c16 /dev/hwrng|od -An -tx1)
ip link show eth0
ip addr add {GUEST_IP}/24 dev eth0
ip link set eth0 up
ping -c3 -W5 {HOST_IP}
m(){{ grep MemTotal /proc/meminfo;}}
while [ "$(m)" != "$l" ];do l=$(m);sleep .5;done
echo balloon inflated $(m)
b=/sys/bus/virtio/drivers/virtio_balloon
basename $b/virtio* >$b/unbind
echo balloon unbound $(m)
vsock-test listen {GUEST_LISTEN_PORT}
vsock-test connect {HOST_LISTEN_PORT} {VSOCK_BYTES}
cat /proc/interrupts
grep -h -e PCI_ID -e DRIVER /sys/bus/pci/devices/*/uevent||true
"#
    )
}

fn linux_uses_every_virtio_device(transport: &str) {
    let Some(kit) = kit_available() else { return };
    let Some(rootfs) = kit_path("rootfs.ext4") else { return };
    let (Some(debugfs), Some(e2fsck)) = (host_tool("debugfs"), host_tool("e2fsck")) else { return };
    let Some(namespace) = NetNamespace::with_tap(TAP, &format!("{HOST_IP}/24")) else { return };
    let _serial = one_boot_at_a_time();
    eprintln!("tier 3: Linux (kit) uses blk, rng, net, balloon and vsock over {transport}");

    // Copies: the cached image is shared by every test and must never change.
    let dir = tempfile::tempdir().unwrap();
    let writable = dir.path().join("rw.ext4");
    let read_only = dir.path().join("ro.ext4");
    std::fs::copy(&rootfs, &writable).unwrap();
    std::fs::copy(&rootfs, &read_only).unwrap();

    // vsock, guest → host: whoever listens on <uds>_6000 gets the guest's connections to port 6000.
    let uds = dir.path().join("v.sock");
    let (data, sum) = vsock_pattern(VSOCK_BYTES);
    let listener = UnixListener::bind(format!("{}_{HOST_LISTEN_PORT}", uds.display())).unwrap();
    let host_server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut received = Vec::new();
        stream.read_to_end(&mut received).unwrap();
        let received_sum: u64 = received.iter().map(|&b| u64::from(b)).sum();
        stream
            .write_all(format!("host read {} bytes, sum {received_sum}\n", received.len()).as_bytes())
            .unwrap();
    });

    let mut command = linux_script_command(&kit, &script());
    command.args(["--transport", transport, "--rng"]);
    command.args(["--disk", &format!("path={},id=kestrel-rw", path_str(&writable))]);
    command.args(["--disk", &format!("path={},readonly=on,id=kestrel-ro", path_str(&read_only))]);
    command.args(["--net", &format!("tap={TAP},mac={MAC}")]);
    command.args(["--balloon", &format!("size={BALLOON_MIB}")]);
    command.args(["--vsock", &format!("cid=3,uds={}", uds.display())]);
    let started = Instant::now();
    let mut child = namespace
        .wrap(&command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let watchdog = Watchdog::within(&child, LINUX_LIMIT);
    let mut console = BufReader::new(child.stdout.take().unwrap());
    let mut out = wait_for_line(&mut console, &format!("vsock-test: listening on {GUEST_LISTEN_PORT}"));

    // vsock, host → guest, Firecracker-style: CONNECT through the device's socket, then the bytes.
    let mut stream = UnixStream::connect(&uds).unwrap();
    stream.set_read_timeout(Some(LINUX_LIMIT)).unwrap();
    stream.write_all(format!("CONNECT {GUEST_LISTEN_PORT}\n").as_bytes()).unwrap();
    let mut ok = Vec::new();
    let mut byte = [0u8];
    while stream.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        ok.push(byte[0]);
    }
    let ok = String::from_utf8(ok).unwrap();
    let host_port: u32 =
        ok.strip_prefix("OK ").and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{ok:?}"));
    assert!(host_port >= 1 << 30, "{ok}");
    stream.write_all(&data).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, format!("guest read {VSOCK_BYTES} bytes, sum {sum}\n"));

    console.read_to_string(&mut out).unwrap();
    let status = child.wait().unwrap();
    drop(watchdog);
    eprintln!("tier 3: booted, used every device and powered off in {:.1?}", started.elapsed());
    host_server.join().unwrap();
    assert_eq!(status.code(), Some(POWER_OFF), "{out}");
    let lines = guest_lines(&out);
    let has = |expected: &str| lines.iter().any(|l| l == expected);
    let value = |prefix: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line:\n{out}"))
    };
    assert!(has("kestrel-kit: command exited 0"), "{out}");

    // Every device is on the transport asked for: blk twice, net, rng, balloon, vsock.
    let on_transport = match transport {
        "pci" => "/sys/devices/pci0000:00/",
        _ => "/sys/devices/virtio-mmio-cmdline/virtio-mmio.",
    };
    for device_type in ["0x0001", "0x0002", "0x0004", "0x0005", "0x0013"] {
        let prefix = format!("device {device_type} ");
        let at: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix(&prefix)).collect();
        assert_eq!(
            at.len(),
            if device_type == "0x0002" { 2 } else { 1 },
            "devices of type {device_type}:\n{out}"
        );
        assert!(
            at.iter().all(|path| path.starts_with(on_transport)),
            "{device_type} not on {transport}:\n{out}"
        );
    }

    // blk: the host finds the guest's file; the read-only disk was seen as such and did not change.
    for expected in [
        "serials kestrel-rw kestrel-ro",
        "rw: hello from the kestrel rootfs",
        "ro flag: 1",
        "ro: hello from the kestrel rootfs",
        "raw write refused",
    ] {
        assert!(has(expected), "no {expected:?} line:\n{out}");
    }
    let written = run_tool(&debugfs, &["-R", "cat /new.txt", path_str(&writable)]);
    assert_eq!(written.trim(), MARKER, "the file the guest wrote, read on the host with debugfs");
    run_tool(&e2fsck, &["-fn", path_str(&writable)]);
    assert!(
        std::fs::read(&read_only).unwrap() == std::fs::read(&rootfs).unwrap(),
        "the read-only disk changed"
    );

    // rng: 16 bytes from the virtio source ("rng <current source> <16 bytes in hex>"), not all zero.
    let rng: Vec<&str> = value("rng ").split_whitespace().collect();
    assert!(rng[0].starts_with("virtio_rng"), "the current hwrng is not virtio's:\n{out}");
    let entropy = &rng[1..];
    assert!(
        entropy.len() == 16 && entropy.iter().all(|w| w.len() == 2 && u8::from_str_radix(w, 16).is_ok()),
        "no 16 bytes from /dev/hwrng:\n{out}"
    );
    assert!(entropy.iter().any(|w| *w != "00"), "/dev/hwrng gave zeros:\n{out}");

    // net: the MAC given with --net, and the host answered every ping.
    assert!(lines.iter().any(|l| l.starts_with(&format!("link/ether {MAC} "))), "{out}");
    assert!(lines.iter().any(|l| l.starts_with("3 packets transmitted, 3 packets received")), "{out}");

    // balloon: unbinding the driver deflates it, giving back exactly the pages it had taken.
    // The guest waits for MemTotal to settle after boot, when the driver has inflated the balloon.
    let mem_total = |prefix: &str| -> u64 {
        let value = value(prefix); // "MemTotal: <n> kB"
        let words: Vec<&str> = value.split_whitespace().collect();
        match words[..] {
            ["MemTotal:", kib, "kB"] => kib.parse().unwrap_or_else(|_| panic!("{value:?}")),
            _ => panic!("{value:?} is not a MemTotal line:\n{out}"),
        }
    };
    let inflated = mem_total("balloon inflated ");
    let unbound = mem_total("balloon unbound ");
    assert_eq!(
        unbound.checked_sub(inflated),
        Some(BALLOON_MIB * 1024),
        "MemTotal {inflated} kB with the balloon, {unbound} kB after unbinding its driver:\n{out}"
    );

    // vsock: the host's side of the guest's connection got every byte.
    let expected = format!("vsock-test: host replied: host read {VSOCK_BYTES} bytes, sum {sum}");
    assert!(has(&expected), "no {expected:?}:\n{out}");

    // PCI bus 0: the host bridge, and on PCI the six virtio functions, bound to virtio-pci.
    let count = |expected: &str| lines.iter().filter(|l| *l == expected).count();
    assert_eq!(count("PCI_ID=8086:0D57"), 1, "host bridge:\n{out}");
    let virtio_functions = lines.iter().filter(|l| l.starts_with("PCI_ID=1AF4:")).count();
    if transport == "pci" {
        for (id, functions) in [("1041", 1), ("1042", 2), ("1044", 1), ("1045", 1), ("1053", 1)] {
            assert_eq!(count(&format!("PCI_ID=1AF4:{id}")), functions, "PCI functions 1AF4:{id}:\n{out}");
        }
        assert_eq!(count("DRIVER=virtio-pci"), 6, "functions bound to virtio-pci:\n{out}");
    } else {
        assert_eq!(virtio_functions, 0, "virtio functions on PCI with --transport mmio:\n{out}");
    }

    // Interrupts: one per device still bound (the balloon's went with its driver). On PCI they are
    // MSI-X vectors, a configuration vector per device and one per queue, and the queues that
    // must have been used fired: rng's, blk's, net's receive queue and vsock's. On MMIO each
    // device has its IOAPIC line, and each fired.
    // /proc/interrupts: "<irq>: <count on CPU0> <chip> <hwirq>-edge virtio<N>[-<queue>]".
    let is_interrupt = |l: &str| l.split_once(':').is_some_and(|(irq, _)| irq.parse::<u32>().is_ok());
    let virtio_interrupts: Vec<&String> =
        lines.iter().filter(|l| is_interrupt(l) && l.contains(" virtio")).collect();
    let has_fired = |l: &str| l.split_whitespace().nth(1).and_then(|c| c.parse::<u64>().ok()) > Some(0);
    if transport == "pci" {
        assert!(virtio_interrupts.iter().all(|l| l.contains("PCI-MSI")), "{out}");
        assert_eq!(virtio_interrupts.iter().filter(|l| l.ends_with("-config")).count(), 5, "{out}");
        for queue in ["-input", "-req.0", "-input.0", "-rx"] {
            assert!(
                virtio_interrupts.iter().any(|l| l.ends_with(queue) && has_fired(l)),
                "no MSI-X vector of a virtio*{queue} queue fired:\n{out}"
            );
        }
    } else {
        assert_eq!(virtio_interrupts.len(), 5, "virtio interrupts:\n{out}");
        assert!(virtio_interrupts.iter().all(|l| l.contains("IO-APIC") && has_fired(l)), "{out}");
    }
}

/// The pattern `vsock-test` sends (byte i is i * 7 mod 256) and its byte sum.
fn vsock_pattern(count: usize) -> (Vec<u8>, u64) {
    let bytes: Vec<u8> = (0..count).map(|i| (i * 7) as u8).collect();
    let sum = bytes.iter().map(|&b| u64::from(b)).sum();
    (bytes, sum)
}

/// The console's lines after `/init` started, trimmed (the guest tty ends them with CR LF).
fn guest_lines(out: &str) -> Vec<String> {
    let start =
        out.find("kestrel-kit: init started").unwrap_or_else(|| panic!("/init never started:\n{out}"));
    out[start..].lines().skip(1).map(|l| l.trim().to_owned()).collect()
}
