//! Metrics and logs end to end: `PUT /metrics`, `FlushMetrics` and `PUT /logger` on `kestrel
//! vmm` driving the `virtio` test guest's disk test, and `kestrel run --metrics-path`.

mod common;

use std::io::{BufReader, Read, Write};
use std::path::Path;
use std::process::Stdio;

use common::api::{assert_fault, request, spawn_vmm, start_vmm, vmm_command};
use common::{
    assert_status, kestrel, kvm_available, path_str, run_to_end, wait_for_line, wait_within, Watchdog,
};
use serde_json::Value;

/// Exit status of a guest that resets the machine.
const RESET: i32 = 3;
const ERROR: i32 = 1;

/// Every metrics line written to `path` so far, parsed.
fn metrics_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read the metrics file");
    text.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))).collect()
}

/// `group.counter` summed over `lines`: each line holds the counts since the one before.
fn total(lines: &[Value], group: &str, counter: &str) -> u64 {
    lines
        .iter()
        .map(|line| line[group][counter].as_u64().unwrap_or_else(|| panic!("no {group}.{counter} in {line}")))
        .sum()
}

/// The guest's `blk` test on a 64 KiB disk: it writes 4 sectors, reads them back and flushes
/// (counted), then asks for its ID (not a read), reads past the end and sends an unknown request
/// type (both refused). While the guest holds, the metrics must show exactly that, and the log
/// file the API's debug lines; the line written at exit holds only what came after the flush.
#[test]
fn metrics_count_what_the_guest_did_and_the_log_goes_where_put_logger_says() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (socket, disk) = (dir.path().join("api.sock"), dir.path().join("disk.img"));
    let (metrics, log) = (dir.path().join("metrics.json"), dir.path().join("kestrel.log"));
    std::fs::write(&disk, vec![0u8; 64 * 1024]).unwrap();
    let mut command = vmm_command(&socket);
    command.stdin(Stdio::piped());
    let mut child = spawn_vmm(command, &socket);
    let watchdog = Watchdog::new(&child);
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());

    let logger = format!(
        r#"{{"log_path": "{}", "level": "Debug", "show_level": true, "show_log_origin": true}}"#,
        path_str(&log)
    );
    assert_eq!(request(&socket, "PUT", "/logger", &logger).0, 204);
    let put_metrics = format!(r#"{{"metrics_path": "{}"}}"#, path_str(&metrics));
    assert_eq!(request(&socket, "PUT", "/metrics", &put_metrics).0, 204);
    assert_fault(
        request(&socket, "PUT", "/metrics", &put_metrics),
        "Reinitialization of metrics not allowed",
    );
    let flush = r#"{"action_type": "FlushMetrics"}"#;
    assert_fault(request(&socket, "PUT", "/actions", flush), "not supported before starting the microVM");
    let boot = format!(r#"{{"kernel_image_path": "{}", "boot_args": "test=blk hold=1"}}"#, guests::VIRTIO);
    assert_eq!(request(&socket, "PUT", "/boot-source", &boot).0, 204);
    let drive = format!(
        r#"{{"drive_id": "scratch", "path_on_host": "{}", "is_root_device": false, "is_read_only": false}}"#,
        path_str(&disk)
    );
    assert_eq!(request(&socket, "PUT", "/drives/scratch", &drive).0, 204);
    assert_eq!(request(&socket, "PUT", "/actions", r#"{"action_type": "InstanceStart"}"#).0, 204);
    let out = wait_for_line(&mut stdout, "virtio: holding");
    assert!(out.contains("blk: ok"), "{out}");

    assert_eq!(request(&socket, "PUT", "/actions", flush).0, 204);
    let lines = metrics_lines(&metrics);
    assert!(!lines.is_empty());
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(text.starts_with(r#"{"utc_timestamp_ms":"#), "Firecracker's order: {text}");
    for (counter, expected) in [
        ("read_count", 1),
        ("read_bytes", 4 * 512),
        ("write_count", 1),
        ("write_bytes", 4 * 512),
        ("flush_count", 1),
        ("invalid_reqs_count", 2),
        ("execute_fails", 0),
    ] {
        assert_eq!(total(&lines, "block_scratch", counter), expected, "block_scratch.{counter}");
        assert_eq!(total(&lines, "block", counter), expected, "block.{counter}");
    }
    // The guest's driver notifies through MMIO and prints through port writes.
    for exit in ["exit_io_out", "exit_mmio_read", "exit_mmio_write"] {
        assert!(total(&lines, "vcpu", exit) > 0, "vcpu.{exit} in {lines:?}");
        assert_eq!(total(&lines, "vcpu_0", exit), total(&lines, "vcpu", exit), "one vCPU: {exit}");
    }
    assert_eq!(total(&lines, "vcpu", "failures"), 0);
    assert_eq!(total(&lines, "put_api_requests", "drive_count"), 1);
    assert_eq!(total(&lines, "put_api_requests", "logger_count"), 1);
    assert_eq!(
        (
            total(&lines, "put_api_requests", "metrics_count"),
            total(&lines, "put_api_requests", "metrics_fails")
        ),
        (2, 1)
    );

    // The log: the API's debug lines, with level and origin, in the file and not on stderr.
    let logged = std::fs::read_to_string(&log).unwrap();
    let line =
        logged.lines().find(|l| l.contains("API: PUT /drives/scratch")).unwrap_or_else(|| panic!("{logged}"));
    assert!(line.contains("DEBUG") && line.contains("crates/api/src/"), "{line}");

    stdin.write_all(b"x").unwrap();
    drop(watchdog);
    child.stdout = Some(stdout.into_inner());
    let output = wait_within(child, common::HANG_LIMIT);
    assert_status(&output, RESET);
    assert!(!common::stderr(&output).contains("API: PUT"), "{}", common::stderr(&output));
    let after = metrics_lines(&metrics);
    assert_eq!(after.len(), lines.len() + 1, "one more line at exit");
    let last = after.last().unwrap();
    assert_eq!(last["block"]["read_bytes"], 0, "only counts since the flush: {last}");
    assert!(last["vcpu"]["exit_io_in"].as_u64().unwrap() > 0, "the guest polled the console: {last}");
}

#[test]
fn bad_logger_and_metrics_requests_are_400_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let mut child = start_vmm(&socket);
    let directory = path_str(dir.path());
    for (path, body, expected) in [
        ("/logger", r#"{"level": "Loud"}"#.to_owned(), "one of Error, Warning, Info, Debug, Trace, Off"),
        ("/logger", r#"{"level": "Info", "colour": true}"#.to_owned(), "unknown field `colour`"),
        ("/logger", format!(r#"{{"log_path": "{directory}"}}"#), "Cannot open the log file"),
        ("/logger", format!(r#"{{"log_path": "{directory}/no/log"}}"#), "No such file or directory"),
        ("/metrics", "{}".to_owned(), "missing field `metrics_path`"),
        ("/metrics", format!(r#"{{"metrics_path": "{directory}"}}"#), "Cannot open the metrics file"),
        ("/metrics", r#"{"metrics_path": 7}"#.to_owned(), "invalid type"),
    ] {
        assert_fault(request(&socket, "PUT", path, &body), expected);
    }
    // Neither failure used up the one PUT /metrics.
    let good = format!(r#"{{"metrics_path": "{directory}/metrics.json"}}"#);
    assert_eq!(request(&socket, "PUT", "/metrics", &good).0, 204);
    assert_eq!(request(&socket, "PUT", "/logger", r#"{"level": "warning"}"#).0, 204);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn kestrel_run_writes_metrics_at_exit() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = kestrel();
    let unwritable = dir.path().join("no/such/dir/metrics.json");
    command.args(["run", "--kernel", guests::HELLO, "--metrics-path", path_str(&unwritable)]);
    let output = run_to_end(command, b"");
    assert_status(&output, ERROR);
    assert!(common::stderr(&output).contains("Cannot open the metrics file"), "{}", common::stderr(&output));
    if !kvm_available() {
        return;
    }
    let metrics = dir.path().join("metrics.json");
    let mut command = kestrel();
    command.args(["run", "--kernel", guests::HELLO, "--cmdline", "loops=1000 exit=reset"]);
    command.args(["--metrics-path", path_str(&metrics)]);
    let output = run_to_end(command, b"");
    assert_status(&output, RESET);
    let lines = metrics_lines(&metrics);
    assert_eq!(lines.len(), 1);
    assert!(total(&lines, "vcpu", "exit_io_out") >= 1000, "{lines:?}");
    assert_eq!(total(&lines, "block", "read_bytes"), 0);
    let mut text = String::new();
    std::fs::File::open(&metrics).unwrap().read_to_string(&mut text).unwrap();
    assert!(text.ends_with("}\n"), "whole lines: {text}");
}
