//! `--virtio`: virtio device throughput, driven from inside the `virtio` test guest by its
//! benchmark tests (`guests/c/test_bench_{blk,vsock,net}.c`), which time themselves with the TSC.
//!
//! - virtio-blk: sequential 128 KiB and random 4 KiB reads and writes at queue depth 1 and 32
//!   against a 64 MiB image, interleaved with fio doing the same access pattern on the same file
//!   with the same kind of I/O as Kestrel's backend (buffered `pread`/`pwrite`, page cache warm,
//!   no fsync), so the ratio shows what the virtio path costs over the host's own I/O.
//! - storage formats (`formats.rs`), in the same loop: the blk workloads on qcow2 (fully allocated
//!   and a fresh thin overlay), `qemu-img bench` on the same qcow2 file, a GET_ID floor (a request
//!   with no disk I/O) and the time to make 100 thin clones.
//! - virtio-vsock: 64 MiB host → guest and guest → host through the device's Unix socket.
//! - virtio-net: 1514- and 60-byte frames sent by the guest onto a tap inside a network namespace
//!   of this run's own (root only; nothing in it routes anywhere); the host checks that the tap
//!   received every frame.
//! - Exits per request: `perf stat` of KVM's tracepoints over a run with N requests and one with
//!   none; (count(N) − count(0)) / N. `kvm:kvm_userspace_exit` is one return of KVM_RUN to the
//!   VMM; `kvm:kvm_mmio` + `kvm:kvm_fast_mmio` + `kvm:kvm_pio` count the guest's MMIO and port
//!   accesses that exited, including notifications an ioeventfd caught in the kernel (which never
//!   reach userspace). `kvm:kvm_exit` itself would count every exit, but it reads 0 on the
//!   development host's kernel, so it is not used.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::formats::{Formats, FormatsReport};
use crate::measure::{ScratchDir, Summary};
use crate::Error;

/// The disk image the guest and fio use.
const DISK_BYTES: u64 = 64 << 20;
/// Guest RAM: the guest's bulk buffers start at 64 MiB (guests/c/bench.h).
const MEMORY: &str = "128M";
/// Kestrel's exit status when the guest resets.
const RESET_STATUS: i32 = 3;
/// A run that takes longer than this is killed and the benchmark fails.
const HANG_LIMIT: Duration = Duration::from_secs(120);
const VSOCK_BYTES: u64 = 64 << 20;
const NET_FRAMES: u64 = 20_000;
const TAP: &str = "kbench0";
/// What `perf stat` counts in the exit runs.
const PERF_EVENTS: &str = "kvm:kvm_userspace_exit,kvm:kvm_mmio,kvm:kvm_fast_mmio,kvm:kvm_pio";

/// One virtio-blk workload.
#[derive(Clone, Copy)]
pub(crate) struct BlkWorkload {
    pub mode: &'static str,
    pub bs: u64,
    pub qd: u64,
    /// Requests in the guest's run.
    pub count: u64,
    /// Bytes fio moves (more than the guest: fio's runtime has millisecond resolution).
    pub host_bytes: u64,
}

impl BlkWorkload {
    pub fn sequential(&self) -> bool {
        self.mode.starts_with("seq")
    }

    pub fn label(&self) -> String {
        let size = if self.bs >= 1024 { format!("{} KiB", self.bs / 1024) } else { format!("{} B", self.bs) };
        let unit = if self.sequential() { "MB/s" } else { "kIOPS" };
        format!("blk {} {size} qd{} ({unit})", self.mode, self.qd)
    }

    fn cmdline(&self, count: u64) -> String {
        format!(
            "test=bench_blk blk.mode={} blk.bs={} blk.qd={} blk.count={count}",
            self.mode, self.bs, self.qd
        )
    }

    /// MB/s for sequential workloads, thousands of requests per second for random ones.
    pub fn figure(&self, bytes: u64, seconds: f64) -> f64 {
        if self.sequential() {
            bytes as f64 / seconds / 1e6
        } else {
            bytes as f64 / self.bs as f64 / seconds / 1e3
        }
    }
}

pub(crate) const BLK: &[BlkWorkload] = &[
    BlkWorkload { mode: "seqread", bs: 128 << 10, qd: 1, count: 512, host_bytes: 1 << 30 },
    BlkWorkload { mode: "seqread", bs: 128 << 10, qd: 32, count: 512, host_bytes: 1 << 30 },
    BlkWorkload { mode: "seqwrite", bs: 128 << 10, qd: 1, count: 512, host_bytes: 1 << 30 },
    BlkWorkload { mode: "seqwrite", bs: 128 << 10, qd: 32, count: 512, host_bytes: 1 << 30 },
    BlkWorkload { mode: "randread", bs: 4 << 10, qd: 1, count: 4096, host_bytes: 256 << 20 },
    BlkWorkload { mode: "randread", bs: 4 << 10, qd: 32, count: 4096, host_bytes: 256 << 20 },
    BlkWorkload { mode: "randwrite", bs: 4 << 10, qd: 1, count: 4096, host_bytes: 256 << 20 },
    BlkWorkload { mode: "randwrite", bs: 4 << 10, qd: 32, count: 4096, host_bytes: 256 << 20 },
];

/// Exits per request, from perf's kvm tracepoints.
#[derive(Clone, Copy, Debug)]
pub struct Exits {
    /// Returns of KVM_RUN to the VMM.
    pub userspace: f64,
    /// MMIO and port-I/O exits, whether KVM handled them (ioeventfd) or the VMM did.
    pub io: f64,
}

/// One row of the virtio table.
pub struct VirtioRow {
    pub label: String,
    pub kestrel: Summary,
    /// fio on the host, for the block rows.
    pub host: Option<Summary>,
    /// What one "request" is in the exit columns.
    pub per: &'static str,
    pub exits: Option<Exits>,
}

/// The virtio part's results and what it could not measure.
pub struct VirtioReport {
    pub rows: Vec<VirtioRow>,
    pub tsc_khz: u32,
    pub notes: Vec<String>,
    /// Raw against qcow2, QEMU and the floor (see `formats.rs`).
    pub formats: FormatsReport,
}

/// The rate of the guest's TSC: what KVM gives a new vCPU.
fn tsc_khz() -> Result<u32, Error> {
    let kvm = kvm_ioctls::Kvm::new().map_err(|e| Error::Kvm("open /dev/kvm", e))?;
    let vm = kvm.create_vm().map_err(|e| Error::Kvm("KVM_CREATE_VM", e))?;
    let vcpu = vm.create_vcpu(0).map_err(|e| Error::Kvm("KVM_CREATE_VCPU", e))?;
    vcpu.get_tsc_khz().map_err(|e| Error::Kvm("KVM_GET_TSC_KHZ", e))
}

pub(crate) fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Kills a child that outlives the hang limit.
struct Watchdog(Arc<AtomicBool>);

impl Watchdog {
    fn new(child: &Child) -> Watchdog {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let pid = child.id() as libc::pid_t;
        std::thread::spawn(move || {
            let start = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                if start.elapsed() > HANG_LIMIT {
                    // SAFETY: kill only sends a signal; the pid is our own child, not yet reaped
                    // (the flag is set before it is waited for).
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Watchdog(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Runs `command` (stdin /dev/null), lets `host` read the console up to where it must act and
/// act, then collects the rest; checks the guest reset after `<test>: ok`. Returns the console.
fn run_guest(
    mut command: Command,
    test: &str,
    host: impl FnOnce(&mut BufReader<ChildStdout>, &mut String) -> Result<(), Error>,
) -> Result<String, Error> {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|e| Error::Io(format!("{command:?}"), e))?;
    let watchdog = Watchdog::new(&child);
    let mut console = BufReader::new(child.stdout.take().ok_or_else(|| Error::Bench("no stdout".into()))?);
    let mut stderr_pipe = child.stderr.take().ok_or_else(|| Error::Bench("no stderr".into()))?;
    let mut out = String::new();
    let hosted = host(&mut console, &mut out);
    let _ = console.read_to_string(&mut out);
    let mut stderr = String::new();
    let _ = stderr_pipe.read_to_string(&mut stderr);
    let status = child.wait().map_err(|e| Error::Io("waiting for kestrel".into(), e))?;
    drop(watchdog);
    let ok = format!("{test}: ok");
    if hosted.is_err() || status.code() != Some(RESET_STATUS) || !out.lines().any(|l| l == ok) {
        return Err(Error::Bench(format!(
            "{command:?}: status {status}, host side {:?}\nstdout:\n{out}\nstderr:\n{stderr}",
            hosted.err().map(|e| e.to_string())
        )));
    }
    Ok(out)
}

/// Reads console lines into `out` until one starts with `prefix`.
fn wait_for_line(console: &mut BufReader<ChildStdout>, out: &mut String, prefix: &str) -> Result<(), Error> {
    loop {
        let mut line = String::new();
        let n = console.read_line(&mut line).map_err(|e| Error::Io("reading the console".into(), e))?;
        out.push_str(&line);
        if n == 0 {
            return Err(Error::Bench(format!("the guest never printed {prefix:?}")));
        }
        if line.starts_with(prefix) {
            return Ok(());
        }
    }
}

/// The number after `word` in the line that starts with `prefix` and has `word`: `... bytes 123 cycles 456`.
fn field(out: &str, prefix: &str, word: &str) -> Result<u64, Error> {
    let line = out
        .lines()
        .find(|l| l.starts_with(prefix) && l.split_whitespace().any(|w| w == word))
        .ok_or_else(|| Error::Bench(format!("no {prefix:?} line with {word} in:\n{out}")))?;
    let mut words = line.split_whitespace();
    words
        .by_ref()
        .find(|&w| w == word)
        .and_then(|_| words.next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Bench(format!("no {word} in {line:?}")))
}

/// How a guest run is started: Kestrel's arguments, and an optional wrapper (the netns).
struct Launcher<'a> {
    kestrel: &'a Path,
    netns: Option<&'a str>,
}

impl Launcher<'_> {
    /// `kestrel run` of the virtio guest with `devices`, optionally under `perf stat` into `perf_out`.
    fn command(&self, devices: &[String], cmdline: &str, perf_out: Option<&Path>) -> Command {
        let mut args: Vec<String> = Vec::new();
        if let Some(path) = perf_out {
            args.extend(["perf", "stat", "-x,", "-e", PERF_EVENTS, "-o"].map(String::from));
            args.push(path.display().to_string());
            args.push("--".into());
        }
        if let Some(ns) = self.netns {
            args.extend(["ip", "netns", "exec", ns].map(String::from));
        }
        args.push(self.kestrel.display().to_string());
        args.extend(
            ["run", "--kernel", guests::VIRTIO, "--memory", MEMORY, "--serial", "stdio"].map(String::from),
        );
        args.extend(devices.iter().cloned());
        args.push("--cmdline".into());
        args.push(cmdline.into());
        let mut command = Command::new(&args[0]);
        command.args(&args[1..]);
        command
    }
}

/// (userspace exits, MMIO + port-I/O exits) from a `perf stat -x,` output file.
fn perf_counts(path: &Path) -> Result<(u64, u64), Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io(path.display().to_string(), e))?;
    let count = |event: &str| {
        text.lines()
            .find(|l| l.split(',').nth(2) == Some(event))
            .and_then(|l| l.split(',').next()?.parse::<u64>().ok())
            .ok_or_else(|| Error::Bench(format!("no {event} count in perf output:\n{text}")))
    };
    let io = count("kvm:kvm_mmio")? + count("kvm:kvm_fast_mmio")? + count("kvm:kvm_pio")?;
    Ok((count("kvm:kvm_userspace_exit")?, io))
}

/// Exits per request: the median over three (N, 0) pairs of perf-counted runs. `run` launches one
/// guest run with `requests` requests under perf (writing to the path) and returns the requests.
fn exits_per_request(
    scratch: &Path,
    requests: u64,
    mut run: impl FnMut(u64, &Path) -> Result<(), Error>,
) -> Result<Exits, Error> {
    let path = scratch.join("perf.txt");
    let mut userspace = Vec::new();
    let mut io = Vec::new();
    for _ in 0..3 {
        run(requests, &path)?;
        let (user_n, io_n) = perf_counts(&path)?;
        run(0, &path)?;
        let (user_0, io_0) = perf_counts(&path)?;
        userspace.push((user_n as f64 - user_0 as f64) / requests as f64);
        io.push((io_n as f64 - io_0 as f64) / requests as f64);
    }
    Ok(Exits { userspace: Summary::of(&userspace).median, io: Summary::of(&io).median })
}

/// fio on the host: `workload` on `disk`, buffered, page cache left warm. Returns the figure.
fn fio(disk: &Path, workload: &BlkWorkload) -> Result<f64, Error> {
    let rw = match workload.mode {
        "seqread" => "read",
        "seqwrite" => "write",
        other => other,
    };
    // Kestrel's backend does one synchronous pread/pwrite per request on one worker thread; psync
    // is that. At queue depth 32, io_uring keeps 32 buffered requests in flight.
    let engine = if workload.qd == 1 { "psync" } else { "io_uring" };
    let output = Command::new("fio")
        .args([
            "--name=kestrel-bench",
            &format!("--filename={}", disk.display()),
            &format!("--rw={rw}"),
            &format!("--bs={}", workload.bs),
            &format!("--size={DISK_BYTES}"),
            &format!("--io_size={}", workload.host_bytes),
            &format!("--ioengine={engine}"),
            &format!("--iodepth={}", workload.qd),
            "--direct=0",
            "--invalidate=0",
            "--fallocate=none",
            "--randrepeat=1",
            "--output-format=json",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Io("running fio".into(), e))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(Error::Bench(format!("fio failed: {}", String::from_utf8_lossy(&output.stderr))));
    }
    let section = if rw.contains("write") { "\"write\" : {" } else { "\"read\" : {" };
    let after =
        text.find(section).map(|at| &text[at..]).ok_or_else(|| Error::Bench(format!("fio: {text}")))?;
    let number = |key: &str| -> Result<f64, Error> {
        let at = after.find(key).ok_or_else(|| Error::Bench(format!("fio output without {key}")))?;
        let rest = after[at + key.len()..].trim_start_matches([' ', ':']);
        let end = rest.find([',', '\n']).unwrap_or(rest.len());
        rest[..end].trim().parse().map_err(|_| Error::Bench(format!("fio: bad {key}")))
    };
    let bytes = number("\"io_bytes\"")?;
    let runtime_ms = number("\"runtime\"")?;
    if runtime_ms <= 0.0 || bytes as u64 != workload.host_bytes {
        return Err(Error::Bench(format!("fio moved {bytes} bytes in {runtime_ms} ms")));
    }
    Ok(workload.figure(bytes as u64, runtime_ms / 1000.0))
}

/// Writes the disk image: pseudo-random bytes, so no filesystem can keep it sparse.
fn make_disk(path: &Path) -> Result<(), Error> {
    let mut file = File::create(path).map_err(|e| Error::Io(path.display().to_string(), e))?;
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..DISK_BYTES / chunk.len() as u64 {
        for word in chunk.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        file.write_all(&chunk).map_err(|e| Error::Io(path.display().to_string(), e))?;
    }
    Ok(())
}

/// A private network namespace with the tap `TAP` (10.232.0.1/24) in it, deleted on drop.
struct NetNamespace(String);

impl NetNamespace {
    fn new() -> Result<NetNamespace, Error> {
        let name = format!("kestrel-bench-{}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = NetNamespace(name);
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.ip(&["tuntap", "add", "dev", TAP, "mode", "tap"])?;
        ns.ip(&["addr", "add", "10.232.0.1/24", "dev", TAP])?;
        ns.ip(&["link", "set", TAP, "up"])?;
        Ok(ns)
    }

    fn ip(&self, args: &[&str]) -> Result<(), Error> {
        ip(&[&["-n", &self.0], args].concat())
    }

    /// Frames the host kernel has received on the tap.
    fn tap_rx_packets(&self) -> Result<u64, Error> {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.0, "cat", &format!("/sys/class/net/{TAP}/statistics/rx_packets")])
            .output()
            .map_err(|e| Error::Io("ip netns exec".into(), e))?;
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .map_err(|_| Error::Bench("cannot read the tap's rx_packets".into()))
    }
}

impl Drop for NetNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["-n", &self.0, "link", "del", TAP]).stderr(Stdio::null()).status();
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) -> Result<(), Error> {
    let output = Command::new("ip").args(args).output().map_err(|e| Error::Io("running ip".into(), e))?;
    if !output.status.success() {
        return Err(Error::Bench(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

/// Why virtio-net cannot be measured here, if it cannot.
fn net_unavailable() -> Option<String> {
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("virtio-net skipped: network namespaces and taps need root".into());
    }
    if let Err(e) = File::open("/dev/net/tun") {
        return Some(format!("virtio-net skipped: /dev/net/tun: {e}"));
    }
    None
}

/// The host side of a vsock run, in the direction the guest is told.
fn vsock_run(
    launcher: &Launcher,
    scratch: &Path,
    to_host: bool,
    bytes: u64,
    perf_out: Option<&Path>,
) -> Result<String, Error> {
    let uds = scratch.join("v.sock");
    let devices = vec!["--vsock".into(), format!("cid=3,uds={}", uds.display())];
    let dir = if to_host { "tx" } else { "rx" };
    let cmdline = format!("test=bench_vsock vsock.dir={dir} vsock.bytes={bytes}");
    let command = launcher.command(&devices, &cmdline, perf_out);
    if to_host {
        let port_path = PathBuf::from(format!("{}_1235", uds.display()));
        let _ = std::fs::remove_file(&port_path);
        let listener =
            UnixListener::bind(&port_path).map_err(|e| Error::Io(port_path.display().to_string(), e))?;
        let reader = std::thread::spawn(move || -> std::io::Result<u64> {
            let (mut stream, _) = listener.accept()?;
            let mut buffer = vec![0u8; 256 << 10];
            let mut total = 0u64;
            loop {
                match stream.read(&mut buffer)? {
                    0 => return Ok(total),
                    n => total += n as u64,
                }
            }
        });
        let out = run_guest(command, "bench_vsock", |_, _| Ok(()))?;
        let got = reader.join().map_err(|_| Error::Bench("the vsock reader panicked".into()))?;
        let got = got.map_err(|e| Error::Io("reading from the guest over vsock".into(), e))?;
        if got != bytes {
            return Err(Error::Bench(format!("the host got {got} of {bytes} bytes from the guest")));
        }
        Ok(out)
    } else {
        run_guest(command, "bench_vsock", |console, out| {
            wait_for_line(console, out, "bench_vsock: listening on 5679")?;
            let io = |e| Error::Io("vsock host side".into(), e);
            let mut stream = UnixStream::connect(&uds).map_err(io)?;
            stream.set_read_timeout(Some(HANG_LIMIT)).map_err(io)?;
            stream.write_all(b"CONNECT 5679\n").map_err(io)?;
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while byte[0] != b'\n' {
                stream.read_exact(&mut byte).map_err(io)?;
                line.push(byte[0]);
            }
            if !line.starts_with(b"OK ") {
                return Err(Error::Bench(format!(
                    "vsock CONNECT answered {:?}",
                    String::from_utf8_lossy(&line)
                )));
            }
            let buffer = vec![0x5Au8; 256 << 10];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(buffer.len() as u64) as usize;
                stream.write_all(&buffer[..n]).map_err(io)?;
                left -= n as u64;
            }
            // The guest shuts the connection down once it has everything.
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).map_err(io)?;
            Ok(())
        })
    }
}

/// Seconds from TSC cycles.
fn seconds(cycles: u64, tsc_khz: u32) -> f64 {
    cycles as f64 / (f64::from(tsc_khz) * 1000.0)
}

/// The whole virtio part: `runs` timed runs of each workload, fio interleaved with the block ones.
pub fn bench(kestrel: &Path, runs: usize) -> Result<VirtioReport, Error> {
    let tsc_khz = tsc_khz()?;
    let scratch = ScratchDir::new()?;
    let disk = scratch.0.join("disk.img");
    make_disk(&disk)?;
    let mut notes = Vec::new();
    let have_fio = have("fio");
    if !have_fio {
        notes.push("fio is not installed: no host baseline for virtio-blk".to_owned());
    }
    let have_perf = Command::new("perf")
        .args(["stat", "-e", PERF_EVENTS, "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_perf {
        notes.push("perf with the kvm tracepoints is not available: no exit counts".to_owned());
    }
    let launcher = Launcher { kestrel, netns: None };
    let disk_arg = vec!["--disk".to_owned(), format!("path={}", disk.display())];

    let blk_run = |w: &BlkWorkload, count: u64, perf_out: Option<&Path>| -> Result<String, Error> {
        run_guest(launcher.command(&disk_arg, &w.cmdline(count), perf_out), "bench_blk", |_, _| Ok(()))
    };
    // The guest's figure for `w` on the disk `--disk <disk>`.
    let blk_guest_on = |disk: &str, w: &BlkWorkload| -> Result<f64, Error> {
        let devices = ["--disk".to_owned(), disk.to_owned()];
        let out =
            run_guest(launcher.command(&devices, &w.cmdline(w.count), None), "bench_blk", |_, _| Ok(()))?;
        let bytes = field(&out, "bench_blk:", "bytes")?;
        Ok(w.figure(bytes, seconds(field(&out, "bench_blk:", "cycles")?, tsc_khz)))
    };
    let raw_disk = disk_arg[1].clone();
    let blk_guest = |w: &BlkWorkload| blk_guest_on(&raw_disk, w);
    let mut formats = Formats::prepare(kestrel, &scratch.0, &disk, BLK.len(), &blk_guest_on)?;
    let vsock_guest = |to_host: bool| -> Result<f64, Error> {
        let out = vsock_run(&launcher, &scratch.0, to_host, VSOCK_BYTES, None)?;
        let bytes = field(&out, "bench_vsock:", "bytes")?;
        Ok(bytes as f64 / seconds(field(&out, "bench_vsock:", "cycles")?, tsc_khz) / 1e6)
    };

    // Untimed: the page cache (binaries, guest, image) and fio's first start.
    eprintln!("virtio: warming up");
    for w in BLK {
        blk_guest(w)?;
        if have_fio {
            fio(&disk, w)?;
        }
    }
    let mut guest = vec![Vec::new(); BLK.len()];
    let mut host = vec![Vec::new(); BLK.len()];
    let mut vsock = [Vec::new(), Vec::new()];
    for run in 0..runs {
        eprint!("\rvirtio-blk and vsock run {}/{runs}", run + 1);
        for (i, w) in BLK.iter().enumerate() {
            // Alternate which goes first.
            if run % 2 == 0 || !have_fio {
                guest[i].push(blk_guest(w)?);
                if have_fio {
                    host[i].push(fio(&disk, w)?);
                }
            } else {
                host[i].push(fio(&disk, w)?);
                guest[i].push(blk_guest(w)?);
            }
            formats.sample(i, w, &blk_guest_on)?;
        }
        formats.sample_floor_and_clones(&raw_disk, &blk_guest_on)?;
        for (i, to_host) in [false, true].into_iter().enumerate() {
            vsock[i].push(vsock_guest(to_host)?);
        }
    }
    eprintln!();

    let mut rows = Vec::new();
    for (i, w) in BLK.iter().enumerate() {
        let exits = if have_perf {
            Some(exits_per_request(&scratch.0, w.count, |count, path| {
                blk_run(w, count, Some(path)).map(drop)
            })?)
        } else {
            None
        };
        rows.push(VirtioRow {
            label: w.label(),
            kestrel: Summary::of(&guest[i]),
            host: have_fio.then(|| Summary::of(&host[i])),
            per: "request",
            exits,
        });
    }
    for (i, (to_host, label)) in
        [(false, "vsock host → guest, 64 MiB (MB/s)"), (true, "vsock guest → host, 64 MiB (MB/s)")]
            .into_iter()
            .enumerate()
    {
        let exits = if have_perf {
            // Per 64 KiB of payload, the size of the packets both ways.
            let packets = VSOCK_BYTES / (64 << 10);
            Some(exits_per_request(&scratch.0, packets, |packets, path| {
                vsock_run(&launcher, &scratch.0, to_host, packets * (64 << 10), Some(path)).map(drop)
            })?)
        } else {
            None
        };
        rows.push(VirtioRow {
            label: label.to_owned(),
            kestrel: Summary::of(&vsock[i]),
            host: None,
            per: "64 KiB",
            exits,
        });
    }

    match net_unavailable() {
        Some(reason) => notes.push(reason),
        None => rows.extend(net_rows(kestrel, runs, tsc_khz, have_perf, &scratch.0)?),
    }
    let formats = formats.report(BLK, &guest, &host);
    Ok(VirtioReport { rows, tsc_khz, notes, formats })
}

/// virtio-net transmit: 1514- and 60-byte frames, in a network namespace of this run's own.
fn net_rows(
    kestrel: &Path,
    runs: usize,
    tsc_khz: u32,
    have_perf: bool,
    scratch: &Path,
) -> Result<Vec<VirtioRow>, Error> {
    let ns = NetNamespace::new()?;
    let launcher = Launcher { kestrel, netns: Some(&ns.0) };
    let devices = vec!["--net".to_owned(), format!("tap={TAP},mac=52:54:00:4b:53:02")];
    let run = |len: u64, frames: u64, perf_out: Option<&Path>| -> Result<String, Error> {
        let before = ns.tap_rx_packets()?;
        let cmdline = format!("test=bench_net net.frames={frames} net.len={len} net.qd=32");
        let out = run_guest(launcher.command(&devices, &cmdline, perf_out), "bench_net", |_, _| Ok(()))?;
        // The guest sends nothing else (it does not even answer ARP), so the count is exact.
        let got = ns.tap_rx_packets()? - before;
        if got != frames {
            return Err(Error::Bench(format!("the tap received {got} of {frames} frames")));
        }
        Ok(out)
    };
    let mut rows = Vec::new();
    for len in [1514u64, 60] {
        run(len, NET_FRAMES, None)?; // untimed
        let mut mbps = Vec::new();
        let mut kfps = Vec::new();
        for i in 0..runs {
            eprint!("\rvirtio-net {len}-byte frames run {}/{runs}", i + 1);
            let out = run(len, NET_FRAMES, None)?;
            let secs = seconds(field(&out, "bench_net:", "cycles")?, tsc_khz);
            mbps.push(field(&out, "bench_net:", "bytes")? as f64 / secs / 1e6);
            kfps.push(NET_FRAMES as f64 / secs / 1e3);
        }
        eprintln!();
        let exits = if have_perf {
            Some(exits_per_request(scratch, NET_FRAMES, |frames, path| {
                run(len, frames, Some(path)).map(drop)
            })?)
        } else {
            None
        };
        rows.push(VirtioRow {
            label: format!("net tx {len}-byte frames, qd32 (kframes/s)"),
            kestrel: Summary::of(&kfps),
            host: None,
            per: "frame",
            exits,
        });
        rows.push(VirtioRow {
            label: format!("net tx {len}-byte frames, qd32 (MB/s)"),
            kestrel: Summary::of(&mbps),
            host: None,
            per: "frame",
            exits: None,
        });
    }
    Ok(rows)
}
