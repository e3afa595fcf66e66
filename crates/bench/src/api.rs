//! `kestrel-bench api`: how long a request to the control API takes, from writing it to the Unix
//! socket to reading the last byte of the response. Each VMM serving Firecracker's API (`kestrel
//! vmm`, and Firecracker itself if given) starts unconfigured; the VMMs take turns request by
//! request, so machine noise hits them alike. Every response's status is checked.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;

use crate::http::parse_response;
use crate::measure::ScratchDir;
use crate::measure::Summary;
use crate::Error;

/// Untimed requests of each kind first, so that caches and allocators are warm.
const WARM_UP: usize = 100;
/// A VMM that takes longer than this to answer one request is broken, not slow.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Args, Debug)]
pub struct ApiArgs {
    /// Timed requests of each kind per VMM (at least 100).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(100..))]
    requests: u32,
    /// The kestrel binary [default: `kestrel` next to this binary, i.e. target/release/kestrel].
    #[arg(long, value_name = "PATH")]
    kestrel: Option<PathBuf>,
    /// Also time a Firecracker binary (started as `PATH --api-sock SOCKET`).
    #[arg(long, value_name = "PATH")]
    firecracker: Option<PathBuf>,
    /// Also write the results as Markdown to FILE.
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
}

/// One kind of request, and the status it must get.
struct Probe {
    label: &'static str,
    method: &'static str,
    path: &'static str,
    body: &'static str,
    status: u16,
    /// A new connection per request (connect, request, response, close), as `curl` does;
    /// otherwise one kept-alive connection, as SDK clients do.
    connect_each: bool,
}

impl Probe {
    fn request(&self) -> Vec<u8> {
        let Probe { method, path, body, .. } = self;
        let length = body.len();
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {length}\r\n\r\n{body}")
            .into_bytes()
    }
}

const PROBES: [Probe; 3] = [
    Probe { label: "GET /", method: "GET", path: "/", body: "", status: 200, connect_each: false },
    Probe {
        label: "PUT /machine-config",
        method: "PUT",
        path: "/machine-config",
        body: r#"{"vcpu_count": 2, "mem_size_mib": 256}"#,
        status: 204,
        connect_each: false,
    },
    Probe {
        label: "GET /, a new connection each",
        method: "GET",
        path: "/",
        body: "",
        status: 200,
        connect_each: true,
    },
];

/// A VMM serving the API on a socket in the scratch directory; killed on drop.
struct Server {
    name: &'static str,
    child: Child,
    socket: PathBuf,
    connection: UnixStream,
}

impl Server {
    fn start(name: &'static str, mut command: Command, socket: PathBuf) -> Result<Server, Error> {
        command.arg("--api-sock").arg(&socket);
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = command.spawn().map_err(|e| Error::Io(format!("{command:?}"), e))?;
        let deadline = Instant::now() + TIMEOUT;
        let connection = loop {
            match UnixStream::connect(&socket) {
                Ok(connection) => break connection,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::Io(format!("{name}'s API socket {}", socket.display()), e));
                }
            }
        };
        connection.set_read_timeout(Some(TIMEOUT)).map_err(|e| Error::Io("set_read_timeout".into(), e))?;
        Ok(Server { name, child, socket, connection })
    }

    /// Sends `request`, of `probe`'s kind; returns how long it took to get the whole response.
    fn time(&mut self, probe: &Probe, request: &[u8], buffer: &mut Vec<u8>) -> Result<Duration, Error> {
        let start = Instant::now();
        let status = if probe.connect_each {
            let mut connection = UnixStream::connect(&self.socket)
                .map_err(|e| Error::Io(format!("connecting to {}", self.name), e))?;
            connection
                .set_read_timeout(Some(TIMEOUT))
                .map_err(|e| Error::Io("set_read_timeout".into(), e))?;
            round_trip(&mut connection, request, buffer)?
        } else {
            round_trip(&mut self.connection, request, buffer)?
        };
        let elapsed = start.elapsed();
        if status != probe.status {
            return Err(Error::Bench(format!(
                "{}: {} answered {status}, not {}: {}",
                self.name,
                probe.label,
                probe.status,
                String::from_utf8_lossy(buffer)
            )));
        }
        Ok(elapsed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `request` and reads one response (its head, then Content-Length bytes) into `buffer`;
/// returns the response's status.
fn round_trip(stream: &mut UnixStream, request: &[u8], buffer: &mut Vec<u8>) -> Result<u16, Error> {
    let io = |e| Error::Io("an API request".into(), e);
    stream.write_all(request).map_err(io)?;
    buffer.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).map_err(io)?;
        if n == 0 {
            return Err(Error::Bench(format!(
                "the connection closed mid-response: {}",
                String::from_utf8_lossy(buffer)
            )));
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some((status, _, _)) = parse_response(buffer)? {
            return Ok(status);
        }
    }
}

/// Median, 99th percentile (nearest rank), minimum and maximum, in µs.
struct Latency {
    summary: Summary,
    p99: f64,
}

impl Latency {
    fn of(samples: &[Duration]) -> Latency {
        let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        us.sort_by(f64::total_cmp);
        let rank = (us.len() * 99).div_ceil(100);
        Latency { summary: Summary::of(&us), p99: us[rank - 1] }
    }
}

pub fn bench(args: &ApiArgs) -> Result<(), Error> {
    let kestrel = crate::kestrel_binary(args.kestrel.as_deref())?;
    let scratch = ScratchDir::new()?;
    let mut kestrel_vmm = Command::new(&kestrel);
    kestrel_vmm.arg("vmm");
    let mut servers = vec![Server::start("Kestrel", kestrel_vmm, scratch.0.join("kestrel.sock"))?];
    if let Some(firecracker) = &args.firecracker {
        servers.push(Server::start("Firecracker", Command::new(firecracker), scratch.0.join("fc.sock"))?);
    }
    eprintln!("kestrel: {}", kestrel.display());
    if let Some(firecracker) = &args.firecracker {
        eprintln!("firecracker: {}", firecracker.display());
    }

    let requests = args.requests as usize;
    let mut buffer = Vec::new();
    let mut rows = Vec::new();
    for probe in &PROBES {
        let request = probe.request();
        for _ in 0..WARM_UP {
            for server in &mut servers {
                server.time(probe, &request, &mut buffer)?;
            }
        }
        let mut samples = vec![Vec::with_capacity(requests); servers.len()];
        for i in 0..requests {
            // Alternate which VMM goes first, so neither always follows the other.
            for turn in 0..servers.len() {
                let index = (i + turn) % servers.len();
                samples[index].push(servers[index].time(probe, &request, &mut buffer)?);
            }
        }
        rows.push((probe.label, samples.iter().map(|s| Latency::of(s)).collect()));
    }

    let names: Vec<&str> = servers.iter().map(|s| s.name).collect();
    let text = render(args.requests, &names, &rows);
    println!("{text}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &text).map_err(|e| Error::Io(path.display().to_string(), e))?;
    }
    Ok(())
}

/// One table row per kind of request, one column group per VMM.
fn render(requests: u32, names: &[&str], rows: &[(&str, Vec<Latency>)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "API round trips over the Unix socket, µs: median, 99th percentile and range of {requests} \
         requests each after {WARM_UP} untimed; the VMMs take turns.\n"
    );
    let _ = write!(out, "| request |");
    for name in names {
        let _ = write!(out, " {name} median | {name} p99 | {name} min–max |");
    }
    let _ = write!(out, "\n|---|");
    for _ in names {
        let _ = write!(out, "---:|---:|---:|");
    }
    for (label, latencies) in rows {
        let _ = write!(out, "\n| {label} |");
        for latency in latencies {
            let s = latency.summary;
            let _ = write!(out, " {:.1} | {:.1} | {:.1}–{:.1} |", s.median, latency.p99, s.min, s.max);
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_is_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=200).map(Duration::from_micros).collect();
        let latency = Latency::of(&samples);
        assert_eq!((latency.summary.median, latency.p99), (100.5, 198.0));
    }
}
