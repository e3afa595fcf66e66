//! `GET /metrics` in Prometheus text format, and the per-VM counters behind `GET
//! /v1/vms/{vm}/stats`, both from the VMMs' metrics files.
//!
//! Each running VMM appends one JSON line in Firecracker's format to its metrics file
//! (`Paths::vmm_metrics`) on every flush, each counter the count since the previous line. The
//! daemon sums the lines of the VMM's current run (those stamped at or after its start), reading
//! only what was appended since the last scrape, and asks every running VMM for a fresh line
//! first (`PUT /actions FlushMetrics`, all at once, each within [`FLUSH_LIMIT`]).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path as UrlPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper::Method;
use model::manager::vm::{VmState, VmStats, VmSummary};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::error::ApiResult;
use crate::server::{AppState, Shared};

/// How long a VMM may take to write a fresh metrics line (a scrape never waits longer).
pub const FLUSH_LIMIT: Duration = Duration::from_secs(1);
/// The longest metrics line read (a line is a few KiB); a longer one is skipped.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// The most groups, and counters per group, kept from a VMM's lines.
pub const MAX_GROUPS: usize = 256;
pub const MAX_COUNTERS: usize = 256;
/// The most of a metrics file read per scrape (the rest waits for the next one).
const MAX_READ: u64 = 16 << 20;

/// Counters by group and name.
pub type Sums = BTreeMap<String, BTreeMap<String, u64>>;

/// API requests the daemon answered (counted by [`count_requests`]).
static API_REQUESTS: AtomicU64 = AtomicU64::new(0);

/// Middleware counting every API request (`kestrel_api_requests_total`).
pub async fn count_requests(request: Request, next: Next) -> Response {
    API_REQUESTS.fetch_add(1, Ordering::Relaxed);
    next.run(request).await
}

/// Adds one metrics line's counters to `sums`. Returns the line's `utc_timestamp_ms`, or `None`
/// for a line that is not a JSON object (skipped). Values that are not whole numbers are
/// ignored; sums saturate; at most [`MAX_GROUPS`] × [`MAX_COUNTERS`] names are kept.
pub fn add_line(sums: &mut Sums, line: &[u8], since_ms: u64) -> Option<u64> {
    if line.len() > MAX_LINE_BYTES {
        return None;
    }
    let serde_json::Value::Object(object) = serde_json::from_slice(line).ok()? else { return None };
    let stamp = object.get("utc_timestamp_ms").and_then(serde_json::Value::as_u64).unwrap_or(0);
    if stamp < since_ms {
        return Some(stamp);
    }
    for (group, counters) in &object {
        let serde_json::Value::Object(counters) = counters else { continue };
        if !sums.contains_key(group) && sums.len() >= MAX_GROUPS {
            continue;
        }
        let sum = sums.entry(group.clone()).or_default();
        for (name, value) in counters {
            let Some(value) = value.as_u64() else { continue };
            if !sum.contains_key(name) && sum.len() >= MAX_COUNTERS {
                continue;
            }
            let total = sum.entry(name.clone()).or_insert(0);
            *total = total.saturating_add(value);
        }
    }
    Some(stamp)
}

/// What has been read of one VMM's metrics file.
#[derive(Default)]
struct Reading {
    /// The run the sums are of (its start, Unix ms).
    since_ms: u64,
    offset: u64,
    sums: Sums,
}

/// Readings by metrics file: each scrape reads only what was appended.
fn readings() -> &'static Mutex<HashMap<PathBuf, Reading>> {
    static READINGS: OnceLock<Mutex<HashMap<PathBuf, Reading>>> = OnceLock::new();
    READINGS.get_or_init(Default::default)
}

/// The sums of the run that started at `since_ms` in metrics file `path`.
pub fn sums_of(path: &Path, since_ms: u64) -> Sums {
    let mut readings = readings().lock().unwrap_or_else(|e| e.into_inner());
    let reading = readings.entry(path.to_owned()).or_default();
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if reading.since_ms == 0 {
        // Made by `cap_metrics` before any scrape (its sums are of this run: the file is
        // emptied at each start), or new.
        reading.since_ms = since_ms;
    }
    if reading.since_ms != since_ms || len < reading.offset {
        // Another run, or the file was replaced: start over.
        *reading = Reading { since_ms, ..Reading::default() };
    }
    if len > reading.offset {
        reading.offset = read_lines(path, reading.offset, &mut reading.sums, since_ms);
    }
    reading.sums.clone()
}

/// A metrics file longer than this is cut by [`cap_metrics`].
pub const METRICS_CAP: u64 = 4 << 20;

/// Cuts the metrics file `path` once it is longer than [`METRICS_CAP`]: what the daemon has
/// read (and summed) goes, so the totals carry on; the unread rest moves to the front. A file
/// nobody has read since this daemon started (no scrape) is read first. Whether it cut.
///
/// The VMM appends with `O_APPEND`, so its next line lands at the new end; a line appended
/// between the copy and the truncation is lost (the same small window as the console log's
/// cap, see `console::cap_log`): its counts are missing from the totals.
pub fn cap_metrics(path: &Path) -> std::io::Result<bool> {
    cap_metrics_at(path, METRICS_CAP)
}

fn cap_metrics_at(path: &Path, cap: u64) -> std::io::Result<bool> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let mut readings = readings().lock().unwrap_or_else(|e| e.into_inner());
    let len = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => meta.len(),
        _ => return Ok(false),
    };
    if len <= cap {
        return Ok(false);
    }
    let reading = readings.entry(path.to_owned()).or_default();
    // Sum everything whole first (bounded per read), so nothing is cut unread.
    while reading.offset < len {
        let next = read_lines(path, reading.offset, &mut reading.sums, reading.since_ms);
        if next == reading.offset {
            break;
        }
        reading.offset = next;
    }
    let file =
        std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOFOLLOW).open(path)?;
    let len = file.metadata()?.len();
    let unread = len.saturating_sub(reading.offset).min(MAX_LINE_BYTES as u64);
    let mut tail = vec![0u8; unread as usize];
    file.read_exact_at(&mut tail, len - unread)?;
    file.write_all_at(&tail, 0)?;
    file.set_len(unread)?;
    reading.offset = 0;
    Ok(true)
}

/// Forgets what was read of the metrics file `path` (its VM is gone).
pub fn forget(path: &Path) {
    readings().lock().unwrap_or_else(|e| e.into_inner()).remove(path);
}

/// Adds the whole lines of `path` from `offset` on; the offset after the last whole line.
fn read_lines(path: &Path, offset: u64, sums: &mut Sums, since_ms: u64) -> u64 {
    let Ok(mut file) = std::fs::File::open(path) else { return offset };
    if file.seek(SeekFrom::Start(offset)).is_err() {
        return offset;
    }
    let mut bytes = Vec::new();
    if file.take(MAX_READ).read_to_end(&mut bytes).is_err() {
        return offset;
    }
    let mut consumed = 0;
    while let Some(end) = bytes[consumed..].iter().position(|&b| b == b'\n') {
        add_line(sums, &bytes[consumed..consumed + end], since_ms);
        consumed += end + 1;
    }
    // A line without its end yet waits for the next scrape, unless it can never be whole.
    if bytes.len() - consumed > MAX_LINE_BYTES {
        consumed = bytes.len();
    }
    offset + consumed as u64
}

/// Asks a VMM to write a fresh metrics line; a VMM that does not answer in time is skipped.
async fn flush(socket: PathBuf) {
    let body = br#"{"action_type": "FlushMetrics"}"#.to_vec();
    let _ = crate::unix_http::request(&socket, Method::PUT, "/actions", Some(body), FLUSH_LIMIT).await;
}

/// Whether a VM in this state has a VMM that can flush.
fn flushable(state: VmState) -> bool {
    matches!(state, VmState::Running | VmState::Paused | VmState::ShuttingDown)
}

/// The balloon's target and actual size (MiB) from a VMM with a balloon, if it says.
async fn balloon(socket: &Path) -> (Option<u64>, Option<u64>) {
    let get = |path: &'static str| crate::unix_http::request(socket, Method::GET, path, None, FLUSH_LIMIT);
    let field = |body: &[u8], name: &str| {
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get(name).and_then(|x| x.as_u64()))
    };
    if let Ok(answer) = get("/balloon/statistics").await {
        if answer.status.is_success() {
            return (field(&answer.body, "target_mib"), field(&answer.body, "actual_mib"));
        }
    }
    match get("/balloon").await {
        Ok(answer) if answer.status.is_success() => (field(&answer.body, "amount_mib"), None),
        _ => (None, None),
    }
}

/// One VM as a scrape sees it.
struct VmSample {
    summary: VmSummary,
    uptime_secs: Option<u64>,
    sums: Sums,
    balloon: (Option<u64>, Option<u64>),
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Flushes (in parallel) and reads one VM.
async fn sample(state: &Shared, summary: VmSummary) -> VmSample {
    let uuid = summary.uuid.clone();
    // A VM that does not run has no counters: no lookup beyond the list's line (a scrape of a
    // thousand stopped VMs stays one SELECT).
    let info = if summary.state.is_active() { state.vms.info(&uuid).ok() } else { None };
    let started_at = info.as_ref().and_then(|i| i.started_at).filter(|_| summary.state.is_active());
    let mut balloon_sizes = (None, None);
    if flushable(summary.state) {
        let socket = state.paths.vmm_socket(&uuid);
        flush(socket.clone()).await;
        if info.as_ref().is_some_and(|i| i.definition.balloon.is_some()) {
            balloon_sizes = balloon(&socket).await;
        }
    }
    let sums = match started_at {
        Some(started) => {
            let path = state.paths.vmm_metrics(&uuid);
            tokio::task::spawn_blocking(move || sums_of(&path, started.saturating_mul(1000)))
                .await
                .unwrap_or_default()
        }
        None => Sums::new(),
    };
    VmSample {
        uptime_secs: started_at.map(|s| now_secs().saturating_sub(s)),
        summary,
        sums,
        balloon: balloon_sizes,
    }
}

/// `GET /v1/vms/{vm}/stats`: the VM's counters since its VMM started.
pub async fn vm_stats(state: &Shared, key: &str) -> ApiResult<VmStats> {
    let info = state.vms.info(key)?;
    // The VMM process's own cost on the host, while it runs (the console's live graphs).
    let usage = match info.summary.pid.filter(|_| info.summary.state.is_active()) {
        Some(pid) => {
            tokio::task::spawn_blocking(move || crate::vms::usage::of_process(pid)).await.unwrap_or_default()
        }
        None => crate::vms::usage::Usage::default(),
    };
    let sample = sample(state, info.summary).await;
    Ok(VmStats {
        name: sample.summary.name,
        state: Some(sample.summary.state),
        uptime_secs: sample.uptime_secs,
        counters: sample.sums,
        cpu_time_us: usage.cpu_time_us,
        memory_rss_bytes: usage.memory_rss_bytes,
    })
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VmLabels {
    name: String,
    uuid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    name: String,
    uuid: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExitLabels {
    name: String,
    uuid: String,
    reason: String,
}

const STATES: [(VmState, &str); 7] = [
    (VmState::Stopped, "stopped"),
    (VmState::Starting, "starting"),
    (VmState::Running, "running"),
    (VmState::Paused, "paused"),
    (VmState::ShuttingDown, "shutting_down"),
    (VmState::Crashed, "crashed"),
    (VmState::Saved, "saved"),
];

/// Counters taken from the VMMs' groups: (metric, help, group, counter).
const VM_COUNTERS: [(&str, &str, &str, &str); 8] = [
    ("kestrel_vm_block_read_bytes", "Bytes the guest read from its disks", "block", "read_bytes"),
    ("kestrel_vm_block_write_bytes", "Bytes the guest wrote to its disks", "block", "write_bytes"),
    ("kestrel_vm_block_read_ops", "Read requests of the guest's disks", "block", "read_count"),
    ("kestrel_vm_block_write_ops", "Write requests of the guest's disks", "block", "write_count"),
    ("kestrel_vm_net_rx_bytes", "Bytes the guest's cards received", "net", "rx_bytes_count"),
    ("kestrel_vm_net_tx_bytes", "Bytes the guest's cards sent", "net", "tx_bytes_count"),
    ("kestrel_vm_net_rx_packets", "Frames the guest's cards received", "net", "rx_packets_count"),
    ("kestrel_vm_net_tx_packets", "Frames the guest's cards sent", "net", "tx_packets_count"),
];

/// The vCPU exits counted, by reason.
const EXITS: [(&str, &str); 4] = [
    ("exit_io_in", "io_in"),
    ("exit_io_out", "io_out"),
    ("exit_mmio_read", "mmio_read"),
    ("exit_mmio_write", "mmio_write"),
];

/// The Prometheus text for these samples and the daemon's own numbers.
fn render(samples: &[VmSample], api_requests: u64) -> String {
    let mut registry = Registry::default();
    let states = Family::<StateLabels, Gauge>::default();
    let uptime = Family::<VmLabels, Gauge>::default();
    let exits = Family::<ExitLabels, Counter>::default();
    let counters: Vec<Family<VmLabels, Counter>> = VM_COUNTERS.iter().map(|_| Family::default()).collect();
    let balloon_target = Family::<VmLabels, Gauge>::default();
    let balloon_actual = Family::<VmLabels, Gauge>::default();
    let (defined, running) = (Gauge::<i64>::default(), Gauge::<i64>::default());
    let requests = Counter::<u64>::default();

    defined.set(samples.len() as i64);
    running.set(samples.iter().filter(|s| s.summary.state.is_active()).count() as i64);
    requests.inc_by(api_requests);
    let gauge_value = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    for sample in samples {
        let vm = VmLabels { name: sample.summary.name.clone(), uuid: sample.summary.uuid.clone() };
        for (state, word) in STATES {
            let labels = StateLabels { name: vm.name.clone(), uuid: vm.uuid.clone(), state: word.to_owned() };
            states.get_or_create(&labels).set(i64::from(sample.summary.state == state));
        }
        if let Some(secs) = sample.uptime_secs {
            uptime.get_or_create(&vm).set(gauge_value(secs));
        }
        if !sample.summary.state.is_active() {
            continue;
        }
        let count =
            |group: &str, name: &str| sample.sums.get(group).and_then(|g| g.get(name)).copied().unwrap_or(0);
        for (counter, reason) in EXITS {
            let labels =
                ExitLabels { name: vm.name.clone(), uuid: vm.uuid.clone(), reason: reason.to_owned() };
            exits.get_or_create(&labels).inc_by(count("vcpu", counter));
        }
        for (family, (_, _, group, name)) in counters.iter().zip(VM_COUNTERS) {
            family.get_or_create(&vm).inc_by(count(group, name));
        }
        if let Some(target) = sample.balloon.0 {
            balloon_target.get_or_create(&vm).set(gauge_value(target));
        }
        if let Some(actual) = sample.balloon.1 {
            balloon_actual.get_or_create(&vm).set(gauge_value(actual));
        }
    }

    registry.register("kestrel_vms_defined", "VMs the daemon keeps", defined);
    registry.register("kestrel_vms_running", "VMs with a VMM process", running);
    registry.register("kestrel_api_requests", "API requests the daemon answered", requests);
    registry.register("kestrel_vm_state", "1 for the VM's current state, 0 for the others", states);
    registry.register("kestrel_vm_uptime_seconds", "Seconds since the VM's VMM started", uptime);
    registry.register("kestrel_vm_vcpu_exits", "vCPU exits to the VMM, by reason", exits);
    for (family, (metric, help, _, _)) in counters.into_iter().zip(VM_COUNTERS) {
        registry.register(metric, help, family);
    }
    registry.register(
        "kestrel_vm_balloon_target_mib",
        "The balloon size asked of the guest.",
        balloon_target,
    );
    registry.register("kestrel_vm_balloon_actual_mib", "The balloon size the guest reached", balloon_actual);
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

/// `GET /metrics`.
async fn metrics(State(state): State<AppState>) -> Response {
    let vms = state.vms.list();
    let samples = futures_util::future::join_all(vms.into_iter().map(|vm| sample(&state, vm))).await;
    let text = render(&samples, API_REQUESTS.load(Ordering::Relaxed));
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
        .into_response()
}

async fn stats(State(state): State<AppState>, UrlPath(vm): UrlPath<String>) -> ApiResult<Json<VmStats>> {
    vm_stats(&state, &vm).await.map(Json)
}

/// `GET /metrics`, `GET /v1/vms/{vm}/stats`.
pub fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics)).route("/v1/vms/{vm}/stats", get(stats))
}

/// Checks Prometheus/OpenMetrics text: every line a comment or `name{labels} value`, names and
/// label names of the allowed characters, values numbers, ending with `# EOF`. For the tests
/// here and the daemon's.
pub fn check_exposition(text: &str) -> Result<usize, String> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    let mut samples = 0;
    let mut saw_eof = false;
    for line in text.lines() {
        if saw_eof {
            return Err(format!("text after # EOF: {line}"));
        }
        if line == "# EOF" {
            saw_eof = true;
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            let (kind, name) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            if !matches!(kind, "HELP" | "TYPE" | "UNIT") || !name_ok(name) {
                return Err(format!("bad comment line: {line}"));
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| format!("no value: {line}"))?;
        value.parse::<f64>().map_err(|_| format!("bad value: {line}"))?;
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').ok_or_else(|| format!("unclosed labels: {line}"))?;
                for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                    let (label, quoted) = pair.split_once('=').ok_or_else(|| format!("bad label: {line}"))?;
                    if !name_ok(label) || !quoted.starts_with('"') {
                        return Err(format!("bad label: {line}"));
                    }
                }
                name
            }
            None => series,
        };
        if !name_ok(name) {
            return Err(format!("bad metric name: {line}"));
        }
        samples += 1;
    }
    if !saw_eof {
        return Err("no # EOF".into());
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    #[test]
    fn lines_of_this_run_are_summed_and_older_ones_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.json");
        let mut file = std::fs::File::create(&path).unwrap();
        writeln!(file, r#"{{"utc_timestamp_ms":500,"block":{{"read_bytes":1000}}}}"#).unwrap();
        writeln!(file, r#"{{"utc_timestamp_ms":2000,"block":{{"read_bytes":5,"write_count":1}},"vcpu":{{"exit_io_out":7}}}}"#).unwrap();
        write!(file, r#"{{"utc_timestamp_ms":3000,"block":{{"read_bytes":"#).unwrap();
        let sums = sums_of(&path, 1000);
        assert_eq!(sums["block"]["read_bytes"], 5, "the line before the run's start is not counted");
        assert_eq!(sums["vcpu"]["exit_io_out"], 7);
        // The half-written line is read once it is whole, and only the new bytes are read.
        writeln!(file, "10}}}}").unwrap();
        writeln!(file, "not json").unwrap();
        let sums = sums_of(&path, 1000);
        assert_eq!(sums["block"]["read_bytes"], 15);
        assert_eq!(sums["block"]["write_count"], 1);
        // A new run starts over.
        assert_eq!(sums_of(&path, 2500)["block"]["read_bytes"], 10);
    }

    #[test]
    fn a_capped_file_keeps_its_totals_and_only_the_unread_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.json");
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        let line = r#"{"utc_timestamp_ms":2000,"block":{"read_bytes":1}}"#;
        for _ in 0..100 {
            writeln!(file, "{line}").unwrap();
        }
        assert_eq!(sums_of(&path, 1000)["block"]["read_bytes"], 100);
        for _ in 0..10 {
            writeln!(file, "{line}").unwrap();
        }
        write!(file, r#"{{"utc_timestamp_ms":2000,"#).unwrap();
        assert!(cap_metrics_at(&path, 1000).unwrap());
        // Only the half-written line is left; what was read (and what was not) is summed.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), r#"{"utc_timestamp_ms":2000,"#);
        writeln!(file, r#""block":{{"read_bytes":5}}}}"#).unwrap();
        assert_eq!(sums_of(&path, 1000)["block"]["read_bytes"], 115);
        assert!(!cap_metrics_at(&path, 1000).unwrap(), "short now");
        forget(&path);
        assert_eq!(sums_of(&path, 1000)["block"]["read_bytes"], 5, "forgotten: read afresh");
    }

    #[test]
    fn hostile_lines_are_bounded() {
        let mut sums = Sums::new();
        let mut line = String::from(r#"{"utc_timestamp_ms":1"#);
        for g in 0..(MAX_GROUPS + 10) {
            line.push_str(&format!(r#","g{g}":{{"c":18446744073709551615}}"#));
        }
        line.push('}');
        add_line(&mut sums, line.as_bytes(), 0);
        add_line(&mut sums, line.as_bytes(), 0);
        assert_eq!(sums.len(), MAX_GROUPS);
        assert_eq!(sums["g0"]["c"], u64::MAX, "sums saturate");
        assert_eq!(add_line(&mut sums, b"[1,2]", 0), None);
        assert_eq!(add_line(&mut sums, &vec![b' '; MAX_LINE_BYTES + 1], 0), None);
    }

    fn summary(name: &str, state: VmState) -> VmSummary {
        VmSummary {
            name: name.into(),
            uuid: format!("{name}-uuid"),
            state,
            pid: None,
            cpus: 1,
            memory_mib: 256,
            autostart: false,
        }
    }

    #[test]
    fn the_exposition_holds_each_vm_and_parses() {
        let mut sums = Sums::new();
        add_line(
            &mut sums,
            br#"{"utc_timestamp_ms":1,"block":{"read_bytes":4096,"read_count":2},"net":{"tx_packets_count":3},"vcpu":{"exit_mmio_write":9}}"#,
            0,
        );
        let samples = [
            VmSample {
                summary: summary("web", VmState::Running),
                uptime_secs: Some(12),
                sums,
                balloon: (Some(64), Some(60)),
            },
            VmSample {
                summary: summary("db", VmState::Stopped),
                uptime_secs: None,
                sums: Sums::new(),
                balloon: (None, None),
            },
        ];
        let text = render(&samples, 42);
        check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        for expected in [
            r#"kestrel_vm_block_read_bytes_total{name="web",uuid="web-uuid"} 4096"#,
            r#"kestrel_vm_block_read_ops_total{name="web",uuid="web-uuid"} 2"#,
            r#"kestrel_vm_net_tx_packets_total{name="web",uuid="web-uuid"} 3"#,
            r#"kestrel_vm_vcpu_exits_total{name="web",uuid="web-uuid",reason="mmio_write"} 9"#,
            r#"kestrel_vm_state{name="web",uuid="web-uuid",state="running"} 1"#,
            r#"kestrel_vm_state{name="db",uuid="db-uuid",state="stopped"} 1"#,
            r#"kestrel_vm_state{name="db",uuid="db-uuid",state="running"} 0"#,
            r#"kestrel_vm_uptime_seconds{name="web",uuid="web-uuid"} 12"#,
            r#"kestrel_vm_balloon_target_mib{name="web",uuid="web-uuid"} 64"#,
            "kestrel_vms_defined 2",
            "kestrel_vms_running 1",
            "kestrel_api_requests_total 42",
        ] {
            assert!(text.lines().any(|l| l == expected), "missing {expected}:\n{text}");
        }
        assert!(
            !text.contains(r#"kestrel_vm_block_read_bytes_total{name="db""#),
            "a stopped VM has no I/O counters"
        );
    }

    #[test]
    fn the_checker_refuses_broken_text() {
        assert!(check_exposition("a 1\n# EOF\n").is_ok());
        for bad in ["a 1\n", "a x\n# EOF\n", "1a 1\n# EOF\n", "a{b=\"c\" 1\n# EOF\n", "# EOF\na 1\n"] {
            assert!(check_exposition(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn any_line_is_summed_without_panic(line in proptest::collection::vec(any::<u8>(), 0..512), json in "\\{\"[a-z]{1,3}\": ?\\{(\"[a-z]{1,3}\": ?[0-9]{1,20},?){0,4}\\}\\}") {
            let mut sums = Sums::new();
            add_line(&mut sums, &line, 0);
            add_line(&mut sums, json.as_bytes(), 0);
            prop_assert!(sums.len() <= MAX_GROUPS);
        }
    }
}
