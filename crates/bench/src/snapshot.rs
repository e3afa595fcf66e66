//! `--snapshot`: snapshot and restore latencies of `kestrel vmm`, driven through its API socket by
//! the small HTTP/1.1 client below (no curl), with the counting test guest: `hello` with
//! `exit=count touch_mib=N` counts in memory at CPL3 and, before each line it prints (every 2^25
//! counts), writes one byte into each 4 KiB page of N MiB from 32 MiB. 1 vCPU, 128 MiB and 1 GiB
//! of RAM, N about 1 % of it. Each run:
//!
//! - boots the guest, lets it print two lines, pauses it and times a full `PUT /snapshot/create`
//!   (request → response), and takes the memory file's allocated size (`st_blocks` × 512);
//! - spawns a fresh `kestrel vmm`, polls its socket until it accepts a connection, and times
//!   `PUT /snapshot/load` with `resume_vm` on that connection: spawn → socket, the load alone,
//!   spawn → load answered (Kestrel starts the vCPU threads right after its reply), and spawn →
//!   the restored guest's first new line (an upper bound: up to one count step later), which must
//!   be the count after the last one the original printed;
//! - once the restored guest printed a second line (so it wrote its N MiB since the restore),
//!   pauses it and times a `Diff` snapshot into a new file, and takes that file's allocated size.
//!
//! API request latency has its own benchmark, `kestrel-bench api` (`api.rs`).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::http::parse_response;
use crate::measure::ScratchDir;
use crate::{ms, Error};

/// Guest RAM of the two guests, MiB.
const SIZES_MIB: [u64; 2] = [128, 1024];
/// hello.c's COUNT_STEP.
const COUNT_STEP: u64 = 1 << 25;
/// Waiting longer than this for the socket, a response or a guest line fails the benchmark.
const HANG_LIMIT: Duration = Duration::from_secs(60);
const PAUSE: &str = r#"{"state": "Paused"}"#;

/// Every sample for one guest size: times in ms, sizes in bytes.
#[derive(Default)]
pub struct SizeSamples {
    pub mib: u64,
    /// The guest's `touch_mib`: what it writes before each line.
    pub touch_mib: u64,
    pub full_create_ms: Vec<f64>,
    pub full_bytes: Vec<f64>,
    pub socket_ms: Vec<f64>,
    pub load_ms: Vec<f64>,
    pub loaded_ms: Vec<f64>,
    pub first_line_ms: Vec<f64>,
    pub diff_create_ms: Vec<f64>,
    pub diff_bytes: Vec<f64>,
}

impl SizeSamples {
    /// No samples yet for a guest of `mib` MiB, which writes 1 % of its RAM (whole MiB, at least one).
    fn new(mib: u64) -> SizeSamples {
        SizeSamples { mib, touch_mib: (mib / 100).max(1), ..SizeSamples::default() }
    }
}

/// The snapshot part's samples.
pub struct SnapshotReport {
    pub sizes: Vec<SizeSamples>,
}

/// One kept-alive HTTP/1.1 connection to an API socket.
struct Client {
    stream: UnixStream,
    /// Bytes read past the last response (none, as requests are not pipelined).
    buffer: Vec<u8>,
}

impl Client {
    fn new(stream: UnixStream) -> Result<Client, Error> {
        stream.set_read_timeout(Some(HANG_LIMIT)).map_err(|e| Error::Io("API socket".into(), e))?;
        Ok(Client { stream, buffer: Vec::new() })
    }

    /// Sends one request and reads the whole response: its status and body.
    fn request(&mut self, method: &str, path: &str, body: &str) -> Result<(u16, String), Error> {
        let io = |e| Error::Io(format!("{method} {path}"), e);
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.write_all(request.as_bytes()).map_err(io)?;
        loop {
            if let Some((status, reply, used)) = parse_response(&self.buffer)? {
                self.buffer.drain(..used);
                return Ok((status, reply));
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk).map_err(io)? {
                0 => return Err(Error::Bench(format!("{method} {path}: the VMM closed the connection"))),
                n => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// A request that must be answered with 204 No Content.
    fn ok(&mut self, method: &str, path: &str, body: &str) -> Result<(), Error> {
        match self.request(method, path, body)? {
            (204, _) => Ok(()),
            (status, reply) => Err(Error::Bench(format!("{method} {path} {body}: {status} {reply}"))),
        }
    }
}

/// A `kestrel vmm` process whose serial console (its stdout) a thread reads line by line, each
/// line stamped with when it arrived (a line cut off by the process's end has no `\n`). Killed
/// when dropped.
struct Vmm {
    child: Child,
    socket: PathBuf,
    lines: mpsc::Receiver<(Instant, String)>,
    /// The last whole `count: N` line read so far.
    last_count: Option<u64>,
}

impl Vmm {
    fn spawn(kestrel: &Path, socket: PathBuf) -> Result<Vmm, Error> {
        let (sender, lines) = mpsc::channel();
        // stderr is left to the benchmark's: Kestrel logs only warnings and errors by default.
        let child = Command::new(kestrel)
            .arg("vmm")
            .arg("--api-sock")
            .arg(&socket)
            .args(["--serial", "stdio"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Io(format!("starting {}", kestrel.display()), e))?;
        let mut vmm = Vmm { child, socket, lines, last_count: None };
        let mut console =
            BufReader::new(vmm.child.stdout.take().ok_or_else(|| Error::Bench("no stdout pipe".into()))?);
        std::thread::spawn(move || loop {
            let mut line = String::new();
            match console.read_line(&mut line) {
                Ok(n) if n > 0 && sender.send((Instant::now(), line)).is_ok() => {}
                _ => return,
            }
        });
        Ok(vmm)
    }

    /// Connects to the API socket as soon as it accepts connections (polled every 100 µs).
    fn connect(&self) -> Result<Client, Error> {
        let deadline = Instant::now() + HANG_LIMIT;
        loop {
            match UnixStream::connect(&self.socket) {
                Ok(stream) => return Client::new(stream),
                Err(e) if Instant::now() > deadline => {
                    return Err(Error::Io(format!("connecting to {}", self.socket.display()), e))
                }
                Err(_) => std::thread::sleep(Duration::from_micros(100)),
            }
        }
    }

    /// The next console line (cut off, without its `\n`, when the process ended in it).
    fn next_line(&mut self) -> Result<(Instant, String), Error> {
        let (at, line) = self
            .lines
            .recv_timeout(HANG_LIMIT)
            .map_err(|_| Error::Bench(format!("no console line from the guest within {HANG_LIMIT:?}")))?;
        self.last_count = count_of(&line).or(self.last_count);
        Ok((at, line))
    }

    /// The next `count: N` line: when it arrived, and N.
    fn next_count(&mut self) -> Result<(Instant, u64), Error> {
        loop {
            let (at, line) = self.next_line()?;
            if let Some(count) = count_of(&line) {
                return Ok((at, count));
            }
        }
    }

    /// The next line that starts with `prefix`, without its `\n`.
    fn line_starting(&mut self, prefix: &str) -> Result<String, Error> {
        loop {
            let (_, line) = self.next_line()?;
            if line.starts_with(prefix) {
                return Ok(line.trim_end().to_owned());
            }
        }
    }

    /// Kills the process; returns the last count it printed in full, and whether it was cut off in
    /// the middle of the next line.
    fn kill(mut self) -> Result<(u64, bool), Error> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The reader stops at the end of the pipe, which the process's death closes.
        let mut cut = false;
        while let Ok((_, line)) = self.next_line() {
            cut = !line.ends_with('\n');
        }
        let last = self.last_count.ok_or_else(|| Error::Bench("the guest printed no count".into()))?;
        Ok((last, cut))
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// N of a whole `count: N` line.
fn count_of(line: &str) -> Option<u64> {
    line.strip_suffix('\n')?.strip_prefix("count: ")?.parse().ok()
}

fn create_body(state: &Path, memory: &Path, kind: &str) -> String {
    format!(
        r#"{{"snapshot_path": "{}", "mem_file_path": "{}", "snapshot_type": "{kind}"}}"#,
        state.display(),
        memory.display()
    )
}

/// The blocks `memory` takes on disk, in bytes, after checking it spans the guest's RAM.
fn allocated(memory: &Path, mib: u64) -> Result<u64, Error> {
    let meta = std::fs::metadata(memory).map_err(|e| Error::Io(memory.display().to_string(), e))?;
    if meta.len() != mib << 20 {
        return Err(Error::Bench(format!(
            "{} is {} bytes for a {mib} MiB guest",
            memory.display(),
            meta.len()
        )));
    }
    Ok(meta.blocks() * 512)
}

/// One run with a guest of `s.mib` MiB in `dir`: boot, full snapshot, restore, diff snapshot.
fn run(kestrel: &Path, dir: &Path, s: &mut SizeSamples) -> Result<(), Error> {
    let (state, memory) = (dir.join("state"), dir.join("memory"));
    let mut original = Vmm::spawn(kestrel, dir.join("original.sock"))?;
    let mut api = original.connect()?;
    let boot = format!(
        r#"{{"kernel_image_path": "{}", "boot_args": "exit=count touch_mib={}"}}"#,
        guests::HELLO,
        s.touch_mib
    );
    api.ok("PUT", "/boot-source", &boot)?;
    api.ok("PUT", "/machine-config", &format!(r#"{{"vcpu_count": 1, "mem_size_mib": {}}}"#, s.mib))?;
    api.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#)?;
    // The guest clips what does not fit in its RAM; the table must say what it wrote.
    let touching = original.line_starting("count: touching")?;
    if touching != format!("count: touching {} KiB from 32 MiB", s.touch_mib << 10) {
        return Err(Error::Bench(format!("touch_mib={}: the guest says {touching:?}", s.touch_mib)));
    }
    original.next_count()?;
    original.next_count()?;
    // Paused right after a line, the guest is rarely in the middle of the next one.
    api.ok("PATCH", "/vm", PAUSE)?;
    let start = Instant::now();
    api.ok("PUT", "/snapshot/create", &create_body(&state, &memory, "Full"))?;
    s.full_create_ms.push(ms(start.elapsed()));
    s.full_bytes.push(allocated(&memory, s.mib)? as f64);
    let (last, cut) = original.kill()?;

    let spawned = Instant::now();
    let mut restored = Vmm::spawn(kestrel, dir.join("restored.sock"))?;
    let mut api = restored.connect()?;
    let connected = Instant::now();
    let load = format!(
        r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "File", "backend_path": "{}"}},
            "track_dirty_pages": true, "resume_vm": true}}"#,
        state.display(),
        memory.display()
    );
    api.ok("PUT", "/snapshot/load", &load)?;
    let loaded = Instant::now();
    let (first_at, first) = restored.next_count()?;
    // A line the original was cut off in comes first, without its `count: `.
    let expected = last + if cut { 2 * COUNT_STEP } else { COUNT_STEP };
    if first != expected {
        return Err(Error::Bench(format!(
            "the restored guest printed count {first}, not {expected}: it did not go on from its snapshot"
        )));
    }
    s.socket_ms.push(ms(connected - spawned));
    s.load_ms.push(ms(loaded - connected));
    s.loaded_ms.push(ms(loaded - spawned));
    s.first_line_ms.push(ms(first_at - spawned));

    // After a second line, every touched page has been written since the restore.
    restored.next_count()?;
    api.ok("PATCH", "/vm", PAUSE)?;
    let diff = dir.join("diff");
    let start = Instant::now();
    api.ok("PUT", "/snapshot/create", &create_body(&dir.join("diff-state"), &diff, "Diff"))?;
    s.diff_create_ms.push(ms(start.elapsed()));
    s.diff_bytes.push(allocated(&diff, s.mib)? as f64);
    Ok(())
}

/// The whole snapshot part: `runs` runs of each guest size.
pub fn bench(kestrel: &Path, runs: usize) -> Result<SnapshotReport, Error> {
    let scratch = ScratchDir::new()?;
    let mut sizes: Vec<SizeSamples> = SIZES_MIB.into_iter().map(SizeSamples::new).collect();
    // Run 0 is untimed: it brings the binaries and the guest into the page cache.
    for run_index in 0..=runs {
        eprint!("\rsnapshot run {run_index}/{runs}");
        for size in &mut sizes {
            let dir = scratch.0.join(format!("{}-{run_index}", size.mib));
            std::fs::create_dir(&dir).map_err(|e| Error::Io(dir.display().to_string(), e))?;
            let mut warm_up = SizeSamples::new(size.mib);
            run(kestrel, &dir, if run_index == 0 { &mut warm_up } else { size })?;
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    eprintln!();
    Ok(SnapshotReport { sizes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_count_lines_count() {
        assert_eq!(count_of("count: 33554432\n"), Some(33_554_432));
        assert_eq!(count_of("count: 335"), None);
        assert_eq!(count_of("count: start\n"), None);
        assert_eq!(count_of("4432\n"), None);
    }
}
