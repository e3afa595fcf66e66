//! The metrics Kestrel writes, in Firecracker's format: once `PUT /metrics` (or `kestrel run
//! --metrics-path`) names a file or named pipe, one JSON object per line, written on
//! `FlushMetrics`, every [`FLUSH_PERIOD`] and when the VMM exits. Each line holds
//! `utc_timestamp_ms`, then one object per group of counters, each counter the count since the
//! previous line (Firecracker's `SharedIncMetric`):
//!
//! ```json
//! {"utc_timestamp_ms":1700000000000,"api_server":{...},"get_api_requests":{...},
//!  "put_api_requests":{...},"patch_api_requests":{...},"logger":{...},"vcpu_0":{...},
//!  "vcpu":{...},"block_rootfs":{...},"block":{...},"net":{...},"vsock":{...},
//!  "entropy":{...},"balloon":{...}}
//! ```
//!
//! The API's own groups are here (the router counts each answered request through
//! [`RequestCounter`]); the VM's come from [`vmm::metrics::VmMetrics`]. The writer lives with the
//! binary: it joins the API's counters and the engine's, which know nothing of each other.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex, OnceLock, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use virtio::counter_group;
use virtio::metrics::{Counter, Counts};
use vmm::metrics::VmMetrics;

use api::http::{Method, Request};
use api::router::RequestCounter;
use vmm::control::{EngineError, MetricsControl};

/// How often the metrics are written without being asked, as Firecracker does.
pub const FLUSH_PERIOD: Duration = Duration::from_secs(60);

/// How long a line half written to a full named pipe may wait for room for the rest; a line that
/// finds no room at all is dropped at once (and counted in `logger.missed_metrics_count`).
const LINE_COMPLETION_LIMIT: Duration = Duration::from_secs(1);

counter_group! {
    /// Every API request (Kestrel's; Firecracker's group of this name holds start-up times).
    pub struct ApiServerMetrics {
        request_count,
        /// Requests answered with an error.
        request_fails,
    }
}

counter_group! {
    /// GET requests, by Firecracker's names.
    pub struct GetRequestsMetrics {
        instance_info_count,
        machine_cfg_count,
        vmm_version_count,
    }
}

counter_group! {
    /// PUT requests and those answered with an error, by Firecracker's names.
    pub struct PutRequestsMetrics {
        actions_count,
        actions_fails,
        boot_source_count,
        boot_source_fails,
        drive_count,
        drive_fails,
        logger_count,
        logger_fails,
        machine_cfg_count,
        machine_cfg_fails,
        metrics_count,
        metrics_fails,
        network_count,
        network_fails,
        vsock_count,
        vsock_fails,
    }
}

counter_group! {
    /// PATCH requests and those answered with an error, by Firecracker's names.
    pub struct PatchRequestsMetrics {
        drive_count,
        drive_fails,
        network_count,
        network_fails,
        machine_cfg_count,
        machine_cfg_fails,
    }
}

counter_group! {
    /// The metrics' own health (Firecracker's `logger` group).
    pub struct LoggerMetrics {
        /// Lines that could not be written (a full pipe, a failing disk).
        missed_metrics_count,
    }
}

/// What the API counts.
#[derive(Debug, Default)]
pub struct ApiMetrics {
    pub server: ApiServerMetrics,
    pub get: GetRequestsMetrics,
    pub put: PutRequestsMetrics,
    pub patch: PatchRequestsMetrics,
}

impl ApiMetrics {
    /// Counts one answered request; `status` is the answer's.
    pub fn count(&self, request: &Request, status: u16) {
        let failed = status >= 400;
        self.server.request_count.inc();
        if failed {
            self.server.request_fails.inc();
        }
        if let Some((count, fails)) = self.counters(request) {
            count.inc();
            if let Some(fails) = fails.filter(|_| failed) {
                fails.inc();
            }
        }
    }

    /// The request's own counter and failure counter, for the requests Firecracker counts.
    fn counters(&self, request: &Request) -> Option<(&Counter, Option<&Counter>)> {
        let (get, put, patch) = (&self.get, &self.put, &self.patch);
        Some(match (request.method, &request.segments()[..]) {
            (Method::Get, []) => (&get.instance_info_count, None),
            (Method::Get, ["machine-config"]) => (&get.machine_cfg_count, None),
            (Method::Get, ["version"]) => (&get.vmm_version_count, None),
            (Method::Put, ["actions"]) => (&put.actions_count, Some(&put.actions_fails)),
            (Method::Put, ["boot-source"]) => (&put.boot_source_count, Some(&put.boot_source_fails)),
            (Method::Put, ["drives", _]) => (&put.drive_count, Some(&put.drive_fails)),
            (Method::Put, ["logger"]) => (&put.logger_count, Some(&put.logger_fails)),
            (Method::Put, ["machine-config"]) => (&put.machine_cfg_count, Some(&put.machine_cfg_fails)),
            (Method::Put, ["metrics"]) => (&put.metrics_count, Some(&put.metrics_fails)),
            (Method::Put, ["network-interfaces", _]) => (&put.network_count, Some(&put.network_fails)),
            (Method::Put, ["vsock"]) => (&put.vsock_count, Some(&put.vsock_fails)),
            (Method::Patch, ["drives", _]) => (&patch.drive_count, Some(&patch.drive_fails)),
            (Method::Patch, ["network-interfaces", _]) => (&patch.network_count, Some(&patch.network_fails)),
            (Method::Patch, ["machine-config"]) => (&patch.machine_cfg_count, Some(&patch.machine_cfg_fails)),
            _ => return None,
        })
    }
}

/// Why metrics cannot be set up or written.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Firecracker's message.
    #[error("Reinitialization of metrics not allowed.")]
    AlreadyInitialized,
    #[error("Cannot open the metrics file {path:?}: {source}")]
    Open { path: String, source: io::Error },
    #[error("Cannot start the periodic metrics writer: {0}")]
    Thread(io::Error),
    #[error("Failed to write metrics: {0}")]
    Write(io::Error),
}

/// The process's metrics: the counters of the API and of the VM once it runs, and where their
/// lines go (set once).
#[derive(Default)]
pub struct MetricsWriter {
    api: ApiMetrics,
    health: LoggerMetrics,
    /// The running VM's counters; before it starts, a VM without devices (all zeros).
    vm: Mutex<Arc<VmMetrics>>,
    destination: OnceLock<Mutex<File>>,
    /// Held so that the periodic writer ends when this writer is dropped (its receiver then
    /// reports the sender gone).
    periodic_stop: OnceLock<mpsc::Sender<()>>,
}

impl MetricsWriter {
    pub fn new() -> Arc<MetricsWriter> {
        Arc::default()
    }

    /// Writes the VM's counters from now on.
    pub fn attach_vm(&self, vm: Arc<VmMetrics>) {
        *self.vm.lock().unwrap_or_else(PoisonError::into_inner) = vm;
    }

    /// Sends the metrics to `path` (see [`api::sink::open_for_append`]) and starts writing
    /// them every [`FLUSH_PERIOD`]. Only once per process, as with Firecracker.
    pub fn init(self: &Arc<Self>, path: &Path) -> Result<(), MetricsError> {
        self.init_with_period(path, FLUSH_PERIOD).map(drop)
    }

    /// [`MetricsWriter::init`] with another period; returns the periodic writer's thread.
    fn init_with_period(
        self: &Arc<Self>,
        path: &Path,
        period: Duration,
    ) -> Result<JoinHandle<()>, MetricsError> {
        if self.destination.get().is_some() {
            return Err(MetricsError::AlreadyInitialized);
        }
        let file = api::sink::open_for_append(path)
            .map_err(|source| MetricsError::Open { path: path.display().to_string(), source })?;
        // The API handles requests one at a time, so no other init can come between the check
        // and the set; should one, it loses cleanly.
        self.destination.set(Mutex::new(file)).map_err(|_| MetricsError::AlreadyInitialized)?;
        let (stop, stopped) = mpsc::channel();
        let _ = self.periodic_stop.set(stop);
        let writer = Arc::downgrade(self);
        let builder = std::thread::Builder::new().name("kestrel-metrics".into());
        jail::seccomp::spawn(jail::seccomp::ThreadRole::Metrics, builder, move || {
            write_periodically(&writer, &stopped, period)
        })
        .map_err(MetricsError::Thread)
    }

    /// Writes one line of metrics, if they have a destination (else does nothing and the
    /// counts carry on to the first line, as with Firecracker).
    pub fn flush(&self) -> Result<(), MetricsError> {
        let Some(destination) = self.destination.get() else { return Ok(()) };
        // One writer at a time: the lock also makes each take of the counters whole.
        let mut file = destination.lock().unwrap_or_else(PoisonError::into_inner);
        let line = self.line();
        write_line(&mut file, &line).map_err(|e| {
            self.health.missed_metrics_count.inc();
            MetricsError::Write(e)
        })
    }

    /// Every group's counts since the previous line, as one JSON line.
    fn line(&self) -> Vec<u8> {
        let mut groups = vec![
            ("api_server".to_owned(), self.api.server.take()),
            ("get_api_requests".to_owned(), self.api.get.take()),
            ("put_api_requests".to_owned(), self.api.put.take()),
            ("patch_api_requests".to_owned(), self.api.patch.take()),
            ("logger".to_owned(), self.health.take()),
        ];
        let vm = self.vm.lock().unwrap_or_else(PoisonError::into_inner).clone();
        groups.extend(vm.take());
        let timestamp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let line = Line { utc_timestamp_ms: timestamp.as_millis() as u64, groups };
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}

/// The periodic writer's thread body: a line every `period` until the writer is gone.
fn write_periodically(writer: &Weak<MetricsWriter>, stopped: &mpsc::Receiver<()>, period: Duration) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(period) {
        let Some(writer) = writer.upgrade() else { return };
        if let Err(e) = writer.flush() {
            tracing::warn!("periodic metrics: {e}");
        }
    }
}

/// One metrics line: the timestamp first, then the groups in order.
struct Line {
    utc_timestamp_ms: u64,
    groups: Vec<(String, Counts)>,
}

impl Serialize for Line {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1 + self.groups.len()))?;
        map.serialize_entry("utc_timestamp_ms", &self.utc_timestamp_ms)?;
        for (name, counts) in &self.groups {
            map.serialize_entry(name, counts)?;
        }
        map.end()
    }
}

impl RequestCounter for MetricsWriter {
    fn count(&self, request: &Request, status: u16) {
        self.api.count(request, status);
    }
}

/// The writer as the VMM's controller reaches it (`PUT /metrics`, `FlushMetrics`).
pub struct MetricsHandle(pub Arc<MetricsWriter>);

impl MetricsControl for MetricsHandle {
    fn init(&self, path: &Path) -> Result<(), EngineError> {
        Ok(self.0.init(path)?)
    }

    fn flush(&self) -> Result<(), EngineError> {
        Ok(self.0.flush()?)
    }
}

/// Writes a whole line to a non-blocking destination. A line that finds no room is dropped (an
/// error); one that found room for a part waits, bounded, for room for the rest, so that a slow
/// reader of a pipe gets whole lines.
fn write_line(file: &mut File, line: &[u8]) -> io::Result<()> {
    let mut written = 0;
    let deadline = Instant::now() + LINE_COMPLETION_LIMIT;
    while written < line.len() {
        match file.write(&line[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(count) => written += count,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && written > 0 => wait_writable(file, deadline)?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Waits until `file` takes writes again, or fails once `deadline` has passed.
fn wait_writable(file: &File, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    let mut poll = libc::pollfd { fd: file.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
    // SAFETY: one valid pollfd and its count; poll only writes `revents`.
    let ready = unsafe { libc::poll(&mut poll, 1, left.as_millis().min(i32::MAX as u128) as i32) };
    match ready {
        1.. => Ok(()),
        0 => Err(io::ErrorKind::TimedOut.into()),
        _ => Err(io::Error::last_os_error()),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// Makes a named pipe at `path`.
    fn make_fifo(path: &Path) {
        let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates the file.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    }

    fn request(method: Method, path: &str) -> Request {
        Request { method, path: path.into(), body: Vec::new(), close: false }
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(path).unwrap();
        text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
    }

    #[test]
    fn nothing_is_written_or_taken_before_a_destination_is_set() {
        let writer = MetricsWriter::new();
        writer.api.count(&request(Method::Get, "/"), 200);
        writer.flush().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.json");
        writer.init(&path).unwrap();
        writer.flush().unwrap();
        let lines = lines(&path);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["get_api_requests"]["instance_info_count"], 1, "counted before, kept");
    }

    #[test]
    fn a_line_is_firecrackers_shape_with_deltas_since_the_previous_one() {
        let writer = MetricsWriter::new();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.json");
        std::fs::write(&path, "").unwrap();
        writer.init(&path).unwrap();
        let api = &writer.api;
        api.count(&request(Method::Put, "/drives/rootfs"), 204);
        api.count(&request(Method::Put, "/drives/data"), 400);
        api.count(&request(Method::Patch, "/machine-config/"), 204);
        api.count(&request(Method::Get, "/version"), 200);
        api.count(&request(Method::Get, "/nowhere"), 400);
        writer.flush().unwrap();
        writer.flush().unwrap();

        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(r#"{"utc_timestamp_ms":"#), "the timestamp comes first: {text}");
        let lines = lines(&path);
        assert_eq!(lines.len(), 2);
        let first = &lines[0];
        let now_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as u64;
        assert!(now_ms - first["utc_timestamp_ms"].as_u64().unwrap() < 60_000);
        assert_eq!(first["api_server"]["request_count"], 5);
        assert_eq!(first["api_server"]["request_fails"], 2);
        assert_eq!(first["put_api_requests"]["drive_count"], 2);
        assert_eq!(first["put_api_requests"]["drive_fails"], 1);
        assert_eq!(first["patch_api_requests"]["machine_cfg_count"], 1);
        assert_eq!(first["get_api_requests"]["vmm_version_count"], 1);
        for group in ["logger", "vcpu", "block", "net", "vsock", "entropy", "balloon"] {
            assert!(first[group].is_object(), "group {group} in {first}");
        }
        assert_eq!(lines[1]["put_api_requests"]["drive_count"], 0, "a delta, not a total");
        assert_eq!(lines[1]["api_server"]["request_count"], 0);
    }

    #[test]
    fn only_one_destination_per_process() {
        let writer = MetricsWriter::new();
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/dir/metrics");
        let error = writer.init(&missing).unwrap_err().to_string();
        assert!(
            error.starts_with("Cannot open the metrics file") && error.contains("No such file"),
            "{error}"
        );
        writer.init(&dir.path().join("metrics")).unwrap();
        let again = writer.init(&dir.path().join("other")).unwrap_err();
        assert_eq!(again.to_string(), "Reinitialization of metrics not allowed.");
    }

    #[test]
    fn lines_are_written_periodically_until_the_writer_is_dropped() {
        let writer = MetricsWriter::new();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics");
        let thread = writer.init_with_period(&path, Duration::from_millis(5)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::read_to_string(&path).unwrap().lines().count() < 2 {
            assert!(Instant::now() < deadline, "no periodic lines");
            std::thread::yield_now();
        }
        drop(writer);
        thread.join().unwrap();
        let count = std::fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!(lines(&path).len(), count, "every line is whole JSON");
    }

    #[test]
    fn a_full_pipe_loses_the_line_and_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fifo");
        make_fifo(&path);
        let writer = MetricsWriter::new();
        writer.init(&path).unwrap();
        // Nobody reads: the pipe fills, and then a whole line is refused.
        let error = (0..1000).find_map(|_| writer.flush().err()).expect("the pipe never filled");
        assert!(matches!(error, MetricsError::Write(_)), "{error}");
        assert_eq!(writer.health.take().get("missed_metrics_count"), Some(1));
    }

    #[test]
    fn a_line_longer_than_the_pipe_is_finished_as_the_reader_drains_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fifo");
        make_fifo(&path);
        let mut pipe = api::sink::open_for_append(&path).unwrap();
        let line: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut reader = File::open(&path).unwrap();
        let expected = line.len();
        let drained = std::thread::spawn(move || {
            let mut bytes = vec![0u8; expected];
            reader.read_exact(&mut bytes).unwrap();
            bytes
        });
        // The empty pipe takes a first part at once; the rest waits for the reader.
        write_line(&mut pipe, &line).unwrap();
        assert!(drained.join().unwrap() == line, "the line arrives whole and in order");
    }
}
