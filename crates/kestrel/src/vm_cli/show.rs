//! How `kestrel vm` shows the daemon's answers to people: tables, key/value blocks, event lines.

use model::manager::event::Event;
use model::manager::vm::{VmInfo, VmState, VmStats, VmSummary};

use super::VmCliError;
use crate::manager_client::Client;
use crate::table::{self, or_dash, KeyValues, Table};

/// A state in the words the tables use (`shutting-down`, not `ShuttingDown`).
pub fn state_name(state: VmState) -> &'static str {
    match state {
        VmState::Stopped => "stopped",
        VmState::Starting => "starting",
        VmState::Running => "running",
        VmState::Paused => "paused",
        VmState::ShuttingDown => "shutting-down",
        VmState::Crashed => "crashed",
        VmState::Saved => "saved",
    }
}

/// After a lifecycle command: `web: running (pid 4242)`.
pub fn state_line(info: &VmInfo) -> String {
    let summary = &info.summary;
    match summary.pid {
        Some(pid) => format!("{}: {} (pid {pid})\n", summary.name, state_name(summary.state)),
        None => format!("{}: {}\n", summary.name, state_name(summary.state)),
    }
}

/// `kestrel vm list`.
pub fn list(vms: &[VmSummary]) -> String {
    let mut table = Table::new(["NAME", "STATE", "PID", "CPUS", "MEMORY", "AUTOSTART", "UUID"]);
    for vm in vms {
        table.row([
            vm.name.clone(),
            state_name(vm.state).to_owned(),
            or_dash(vm.pid),
            vm.cpus.to_string(),
            format!("{} MiB", vm.memory_mib),
            if vm.autostart { "yes" } else { "no" }.to_owned(),
            vm.uuid.clone(),
        ]);
    }
    table.render()
}

/// `kestrel vm info`.
pub fn info(info: &VmInfo) -> String {
    let (summary, definition) = (&info.summary, &info.definition);
    let mut kv = KeyValues::new();
    kv.add("name", &summary.name)
        .add("uuid", &summary.uuid)
        .add("state", state_name(summary.state))
        .add_some("pid", summary.pid)
        .add_some("started", info.started_at.map(|s| utc(s.saturating_mul(1000))))
        .add("cpus", summary.cpus)
        .add("memory", format!("{} MiB", summary.memory_mib))
        .add("autostart", if summary.autostart { "yes" } else { "no" })
        .add("on crash", format!("{:?}", definition.on_crash).to_lowercase())
        .add("transport", format!("{:?}", definition.transport).to_lowercase())
        .add("kernel", definition.kernel.display())
        .add_some("initrd", definition.initrd.as_ref().map(|p| p.display().to_string()))
        .add_some("cmdline", definition.cmdline.as_ref());
    for (i, disk) in definition.disks.iter().enumerate() {
        let source = match (&disk.volume, &disk.path) {
            (Some(volume), _) => format!("volume {volume}"),
            (None, Some(path)) => path.display().to_string(),
            (None, None) => "-".to_owned(),
        };
        let readonly = if disk.readonly { " (read-only)" } else { "" };
        kv.add(format!("disk {i}"), format!("{source}{readonly}"));
    }
    for (i, nic) in definition.nics.iter().enumerate() {
        let mut text = match (&nic.network, &nic.tap) {
            (Some(network), _) => format!("network {network}"),
            (None, Some(tap)) => format!("tap {tap}"),
            (None, None) => "-".to_owned(),
        };
        if let Some(mac) = &nic.mac {
            text.push_str(&format!(" mac {mac}"));
        }
        if let Some(ip) = &nic.ip {
            text.push_str(&format!(" ip {ip}"));
        }
        if let Some(tap) = info.taps.get(i) {
            text.push_str(&format!(" (host tap {tap})"));
        }
        kv.add(format!("nic {i}"), text);
    }
    kv.add_some("vsock cid", definition.vsock.as_ref().map(|v| v.cid));
    if definition.rng {
        kv.add("rng", "yes");
    }
    kv.add_some("balloon", definition.balloon.as_ref().map(|b| format!("{} MiB", b.size_mib)));
    kv.add("console log", info.console_log.display());
    if let Some(exit) = &info.last_exit {
        let how = match (exit.status, exit.signal) {
            (_, Some(signal)) => format!(", signal {signal}"),
            (Some(status), None) => format!(", status {status}"),
            (None, None) => String::new(),
        };
        kv.add("last exit", format!("{} at {}{how}", exit.outcome, utc(exit.at.saturating_mul(1000))));
        for line in &exit.console_tail {
            kv.add("  console", line);
        }
    }
    kv.render()
}

/// `kestrel vm stats`.
pub fn stats(stats: &VmStats) -> String {
    let mut kv = KeyValues::new();
    kv.add("name", &stats.name)
        .add("state", stats.state.map_or("-", state_name))
        .add_some("uptime", stats.uptime_secs.map(|s| format!("{s} s")))
        .add_some("cpu time", stats.cpu_time_us.map(|us| format!("{:.3} s", us as f64 / 1e6)))
        .add_some(
            "memory (RSS)",
            stats.memory_rss_bytes.map(|b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64)),
        );
    let mut out = kv.render();
    let mut table = Table::new(["GROUP", "COUNTER", "VALUE"]);
    for (group, counters) in &stats.counters {
        for (name, value) in counters {
            table.row([group.as_str(), name.as_str(), &value.to_string()]);
        }
    }
    if !table.is_empty() {
        out.push('\n');
        out.push_str(&table.render());
    }
    out
}

/// One event as a line: `ID  TIME  KIND  OBJECT  DETAIL`.
pub fn event_line(event: &Event) -> String {
    let kind = serde_json::to_value(event.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{:?}", event.kind));
    let mut line = format!("{:>6}  {}  {:<18}  {}", event.id, utc(event.at_ms), kind, event.object);
    if let Some(detail) = &event.detail {
        line.push_str("  ");
        line.push_str(detail);
    }
    // One line whatever the detail holds.
    line.retain(|c| !c.is_control());
    line.push('\n');
    line
}

/// `kestrel vm events`: the daemon's lines as they come; `--json` passes them through.
pub fn events(client: &Client, json: bool, follow: bool, since: Option<u64>) -> Result<(), VmCliError> {
    let mut path = format!("/v1/events?follow={follow}");
    if let Some(since) = since {
        path.push_str(&format!("&since={since}"));
    }
    client.stream_lines(&path, |line| {
        if line.iter().all(u8::is_ascii_whitespace) {
            return true;
        }
        if json {
            let mut text = String::from_utf8_lossy(line).into_owned();
            text.push('\n');
            table::print(&text);
        } else {
            match serde_json::from_slice::<Event>(line) {
                Ok(event) => table::print(&event_line(&event)),
                Err(_) => table::print(&format!("{}\n", String::from_utf8_lossy(line))),
            }
        }
        true
    })?;
    Ok(())
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS UTC` (no time zone database needed).
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rest / 3600, rest % 3600 / 60, rest % 60)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::manager::event::EventKind;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_796_330_096_000), "2026-12-03 20:34:56 UTC");
        // Far future: no overflow.
        let _ = utc(u64::MAX);
    }

    #[test]
    fn list_has_a_row_per_vm_under_its_header() {
        let vm = |name: &str, state, pid| VmSummary {
            name: name.into(),
            uuid: format!("{name}-uuid"),
            state,
            pid,
            cpus: 1,
            memory_mib: 256,
            autostart: false,
        };
        let text = list(&[vm("web", VmState::Running, Some(42)), vm("db", VmState::ShuttingDown, None)]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAME  STATE          PID"), "{text}");
        assert!(lines[1].starts_with("web   running        42 "), "{text}");
        assert!(lines[2].starts_with("db    shutting-down  -  "), "{text}");
    }

    #[test]
    fn an_event_is_one_line() {
        let event = Event {
            id: 7,
            at_ms: 0,
            kind: EventKind::ShutdownRequested,
            object: "web".into(),
            detail: Some("status 3\nnext".into()),
        };
        let line = event_line(&event);
        assert_eq!(line, "     7  1970-01-01 00:00:00 UTC  shutdown_requested  web  status 3next\n");
    }
}
