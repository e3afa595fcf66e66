//! The daemon's `GET /metrics` (Prometheus text) and `kestrel vm stats`.
//!
//! `mod needs_core_routes` needs the daemon's VM routes (define, start: the VMM writing its
//! metrics file) from the core work, and /dev/kvm.

mod common;

use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::*;
use manager::metrics::check_exposition;

#[test]
fn an_empty_daemon_serves_parsable_metrics_that_count_its_requests() {
    let daemon = Daemon::start();
    let (status, first) = api::request(&daemon.socket, "GET", "/metrics", "");
    assert_eq!(status, 200);
    check_exposition(&first).unwrap_or_else(|e| panic!("{e}:\n{first}"));
    assert!(first.lines().any(|l| l == "kestrel_vms_defined 0"), "{first}");
    let requests = |text: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix("kestrel_api_requests_total "))
            .and_then(|v| v.parse().ok())
            .expect("kestrel_api_requests_total")
    };
    let (_, second) = api::request(&daemon.socket, "GET", "/metrics", "");
    assert!(requests(&second) > requests(&first), "{first}\n{second}");
}

/// Needs the daemon's VM routes (define, start) from the core work, and /dev/kvm.
mod needs_core_routes {
    use super::*;

    #[test]
    fn a_running_vms_counters_appear_under_its_name() {
        if !kvm_available() {
            return;
        }
        let daemon = Daemon::start();
        daemon.cli_ok(&[
            "vm",
            "define",
            "web",
            "--kernel",
            guests::HELLO,
            "--cmdline",
            "exit=hang",
            "--memory",
            "64M",
        ]);
        daemon.cli_ok(&["vm", "define", "idle", "--kernel", guests::HELLO]);
        daemon.cli_ok(&["vm", "start", "web"]);
        // The guest writes its boot lines to COM1 (port I/O exits) before it spins.
        let deadline = Instant::now() + HANG_LIMIT;
        let text = loop {
            let (status, text) = api::request(&daemon.socket, "GET", "/metrics", "");
            assert_eq!(status, 200);
            let io_out = text.lines().find_map(|l| {
                l.strip_prefix("kestrel_vm_vcpu_exits_total{name=\"web\",")
                    .filter(|rest| rest.contains("reason=\"io_out\""))
                    .and_then(|rest| rest.rsplit(' ').next())
                    .and_then(|v| v.parse::<u64>().ok())
            });
            if io_out.is_some_and(|n| n > 0) {
                break text;
            }
            assert!(Instant::now() < deadline, "no io_out exits for web:\n{text}");
            std::thread::sleep(Duration::from_millis(100));
        };
        check_exposition(&text).unwrap_or_else(|e| panic!("{e}:\n{text}"));
        assert!(
            text.lines().any(|l| l.starts_with("kestrel_vm_state{name=\"web\"")
                && l.contains("state=\"running\"")
                && l.ends_with(" 1")),
            "{text}"
        );
        assert!(
            text.lines().any(|l| l.starts_with("kestrel_vm_state{name=\"idle\"")
                && l.contains("state=\"stopped\"")
                && l.ends_with(" 1")),
            "{text}"
        );
        assert!(text.lines().any(|l| l == "kestrel_vms_running 1"), "{text}");

        let stats: serde_json::Value =
            serde_json::from_str(&daemon.cli_ok(&["vm", "stats", "web", "--json"])).unwrap();
        assert_eq!(stats["name"], "web");
        assert!(stats["counters"]["vcpu"]["exit_io_out"].as_u64().unwrap_or(0) > 0, "{stats}");
        let human = daemon.cli_ok(&["vm", "stats", "web"]);
        assert!(human.lines().any(|l| l.starts_with("vcpu") && l.contains("exit_io_out")), "{human}");
        daemon.cli_ok(&["vm", "destroy", "web"]);
    }
}
