//! The daemon's VMs through its API: define, list, info, start, destroy, undefine; refusals that
//! leave the store unchanged; the watcher (reboot, crash, restart policy); save and restore.

mod common;

use common::daemon::Daemon;
use common::vms::{call, events, expect, hello, running_hang, vmm_pids, wait_for_vm, wait_for_vmms};

#[test]
fn define_start_destroy_undefine() {
    if !common::kvm_available() {
        return;
    }
    let daemon = Daemon::start();
    let defined = expect(&daemon, "POST", "/v1/vms", &hello("web", "exit=hang"), 201);
    assert_eq!(defined["state"], "stopped");
    let uuid = defined["uuid"].as_str().unwrap().to_owned();
    assert_eq!(uuid.len(), 36, "{defined}");

    let list = expect(&daemon, "GET", "/v1/vms", "", 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "web");
    // By UUID too.
    assert_eq!(expect(&daemon, "GET", &format!("/v1/vms/{uuid}"), "", 200)["name"], "web");

    let started = expect(&daemon, "POST", "/v1/vms/web/start", "", 200);
    assert_eq!(started["state"], "running", "{started}");
    let pid = started["pid"].as_u64().unwrap() as u32;
    assert_eq!(vmm_pids(&daemon.state_dir), [pid]);
    // The guest runs: its console says so in the log the daemon keeps.
    wait_for_vm(&daemon, "web", "printing", |_| {
        std::fs::read_to_string(started["console_log"].as_str().unwrap())
            .unwrap_or_default()
            .contains("exit: hang")
    });

    // A second start, and an undefine, are refused while it runs.
    let again = expect(&daemon, "POST", "/v1/vms/web/start", "", 409);
    assert!(again["error"].as_str().unwrap().contains("already running"), "{again}");
    let refused = expect(&daemon, "DELETE", "/v1/vms/web", "", 409);
    assert!(refused["error"].as_str().unwrap().contains("stop it"), "{refused}");

    let destroyed = expect(&daemon, "POST", "/v1/vms/web/destroy", "", 200);
    assert_eq!(destroyed["state"], "stopped");
    assert_eq!(destroyed["last_exit"]["outcome"], "destroyed");
    wait_for_vmms(&daemon.state_dir, 0);

    expect(&daemon, "DELETE", "/v1/vms/web", "", 204);
    assert_eq!(expect(&daemon, "GET", "/v1/vms", "", 200), serde_json::json!([]));
    expect(&daemon, "GET", "/v1/vms/web", "", 404);
    assert!(!daemon.state_dir.join("vms").join(&uuid).exists(), "the VM's directory goes with it");

    let kinds: Vec<String> = events(&daemon).into_iter().map(|(kind, _, _)| kind).collect();
    assert_eq!(kinds, ["defined", "started", "stopped", "undefined"]);
}

#[test]
fn refused_definitions_leave_the_store_unchanged() {
    let daemon = Daemon::start();
    expect(&daemon, "POST", "/v1/vms", &hello("web", "exit=hang"), 201);
    let before = expect(&daemon, "GET", "/v1/vms", "", 200);

    let duplicate = expect(&daemon, "POST", "/v1/vms", &hello("web", "exit=poweroff"), 409);
    assert!(duplicate["error"].as_str().unwrap().contains("already defined"), "{duplicate}");
    assert_eq!(duplicate["kind"], "conflict");

    let missing = r#"{"name": "other", "kernel": "/nonexistent/vmlinux"}"#;
    let error = expect(&daemon, "POST", "/v1/vms", missing, 400);
    assert!(error["error"].as_str().unwrap().contains("/nonexistent/vmlinux"), "{error}");

    for (body, expected) in [
        ("{", "not valid"),
        (r#"{"name": "x"}"#, "kernel"),
        (r#"{"name": "../x", "kernel": "/k"}"#, "may only hold"),
        (r#"{"name": "x", "kernel": "/k", "cpus": 0}"#, "cpus"),
        (r#"{"name": "0e5f3c1a-8f3e-4c8e-9d7a-1b2c3d4e5f60", "kernel": "/k"}"#, "is a UUID"),
        (r#"{"name": "x", "kernel": "/k", "surprise": 1}"#, "unknown field"),
        (r#"{"name": "x", "kernel": "/k", "disks": [{}]}"#, "exactly one of"),
        (r#"{"name": "x", "kernel": "/k", "nics": [{"tap": "t", "mac": "ff:ff:ff:ff:ff:ff"}]}"#, "multicast"),
    ] {
        let error = expect(&daemon, "POST", "/v1/vms", body, 400);
        assert!(error["error"].as_str().unwrap().contains(expected), "{body}: {error}");
    }
    // An edit that would take another VM's name.
    expect(&daemon, "POST", "/v1/vms", &hello("db", "exit=hang"), 201);
    let rename = expect(&daemon, "PUT", "/v1/vms/db", &hello("web", "exit=hang"), 409);
    assert!(rename["error"].as_str().unwrap().contains("already defined"), "{rename}");
    expect(&daemon, "DELETE", "/v1/vms/db", "", 204);

    assert_eq!(expect(&daemon, "GET", "/v1/vms", "", 200), before);
}

#[test]
fn an_edit_keeps_the_uuid_and_assigned_macs_and_may_rename() {
    let daemon = Daemon::start();
    let body = serde_json::json!({
        "name": "web", "kernel": guests::HELLO, "nics": [{"tap": "ktap0"}], "disks": [{"path": "/dev/null"}]
    });
    let defined = expect(&daemon, "POST", "/v1/vms", &body.to_string(), 201);
    let mac = defined["definition"]["nics"][0]["mac"].as_str().unwrap().to_owned();
    assert!(mac.starts_with("52:54:00:"), "{defined}");
    assert_eq!(defined["definition"]["disks"][0]["id"], "disk0");
    let mut renamed = body.clone();
    renamed["name"] = "www".into();
    renamed["cpus"] = 2.into();
    let edited = expect(&daemon, "PUT", "/v1/vms/web", &renamed.to_string(), 200);
    assert_eq!((edited["uuid"].clone(), edited["cpus"].clone()), (defined["uuid"].clone(), 2.into()));
    assert_eq!(edited["definition"]["nics"][0]["mac"], mac.as_str());
    expect(&daemon, "GET", "/v1/vms/web", "", 404);

    // MACs are unique across VMs: another VM may not be given this one.
    let twin = serde_json::json!({
        "name": "twin", "kernel": guests::HELLO, "nics": [{"tap": "ktap1", "mac": mac.to_uppercase()}]
    });
    let refused = expect(&daemon, "POST", "/v1/vms", &twin.to_string(), 409);
    assert!(refused["error"].as_str().unwrap().contains("already on VM 'www'"), "{refused}");
    // Once the first VM is gone, its MAC is free.
    expect(&daemon, "DELETE", "/v1/vms/www", "", 204);
    expect(&daemon, "POST", "/v1/vms", &twin.to_string(), 201);
}

#[test]
fn a_reset_restarts_the_vm_and_a_power_off_stops_it() {
    if !common::kvm_available() {
        return;
    }
    let daemon = Daemon::start();
    expect(&daemon, "POST", "/v1/vms", &hello("resets", "exit=reset"), 201);
    expect(&daemon, "POST", "/v1/vms/resets/start", "", 200);
    // The guest resets at once, each time: the watcher starts it again, up to its back-off.
    let info = wait_for_vm(&daemon, "resets", "left crashed after its restarts", |info| {
        info["state"] == "crashed"
            && info["last_exit"]["outcome"].as_str().unwrap_or("").contains("left crashed")
    });
    assert_eq!(info["last_exit"]["status"], 3, "{info}");
    let rebooted =
        events(&daemon).iter().filter(|(kind, object, _)| kind == "rebooted" && object == "resets").count();
    assert_eq!(rebooted, 5, "restarted 5 times within the minute, then left");
    // Each run is told before its end, though the guest resets at once.
    let kinds: Vec<String> = events(&daemon)
        .into_iter()
        .filter(|(_, object, _)| object == "resets")
        .map(|(kind, _, _)| kind)
        .collect();
    let mut expected = vec!["defined".to_owned(), "started".to_owned()];
    for _ in 0..5 {
        expected.extend(["stopped".to_owned(), "rebooted".to_owned()]);
    }
    expected.push("crashed".to_owned());
    assert_eq!(kinds, expected);
    wait_for_vmms(&daemon.state_dir, 0);

    expect(&daemon, "POST", "/v1/vms", &hello("off", "exit=poweroff"), 201);
    expect(&daemon, "POST", "/v1/vms/off/start", "", 200);
    let info = wait_for_vm(&daemon, "off", "stopped", |info| info["state"] == "stopped");
    assert_eq!(
        (info["last_exit"]["status"].clone(), info["last_exit"]["outcome"].clone()),
        (0.into(), "power-off".into())
    );
}

#[test]
fn a_crash_is_recorded_with_its_status_and_console_and_restarted_by_policy() {
    if !common::kvm_available() {
        return;
    }
    let daemon = Daemon::start();
    expect(&daemon, "POST", "/v1/vms", &hello("crashy", "exit=triple-fault"), 201);
    expect(&daemon, "POST", "/v1/vms/crashy/start", "", 200);
    let info = wait_for_vm(&daemon, "crashy", "crashed", |info| info["state"] == "crashed");
    let exit = &info["last_exit"];
    assert_eq!(exit["status"], 4, "{info}");
    assert!(exit["outcome"].as_str().unwrap().contains("triple fault"), "{info}");
    let tail: Vec<&str> =
        exit["console_tail"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert!(tail.iter().any(|l| l.contains("exit: triple-fault")), "{tail:?}");
    assert!(events(&daemon).iter().any(|(kind, object, _)| kind == "crashed" && object == "crashy"));

    // With on_crash = restart it is started again (then left crashed by the back-off).
    let mut body: serde_json::Value = serde_json::from_str(&hello("crashy", "exit=triple-fault")).unwrap();
    body["on_crash"] = "restart".into();
    expect(&daemon, "PUT", "/v1/vms/crashy", &body.to_string(), 200);
    expect(&daemon, "POST", "/v1/vms/crashy/start", "", 200);
    wait_for_vm(&daemon, "crashy", "left crashed", |info| {
        info["state"] == "crashed"
            && info["last_exit"]["outcome"].as_str().unwrap_or("").contains("left crashed")
    });
    let restarts = events(&daemon)
        .iter()
        .filter(|(kind, object, detail)| kind == "started" && object == "crashy" && detail == "after a crash")
        .count();
    assert_eq!(restarts, 5, "restarted 5 times within the minute (the back-off), then left");
    wait_for_vmms(&daemon.state_dir, 0);
}

#[test]
fn save_and_restore_a_running_vm() {
    if !common::kvm_available() {
        return;
    }
    let daemon = Daemon::start();
    running_hang(&daemon, "keep");
    let paused = expect(&daemon, "POST", "/v1/vms/keep/suspend", "", 200);
    assert_eq!(paused["state"], "paused");
    expect(&daemon, "POST", "/v1/vms/keep/resume", "", 200);
    let saved = expect(&daemon, "POST", "/v1/vms/keep/save", "", 200);
    assert_eq!(saved["state"], "saved", "{saved}");
    wait_for_vmms(&daemon.state_dir, 0);
    let uuid = saved["uuid"].as_str().unwrap();
    let saved_dir = daemon.state_dir.join("vms").join(uuid).join("saved");
    assert!(saved_dir.join("state").is_file() && saved_dir.join("memory").is_file());

    let restored = expect(&daemon, "POST", "/v1/vms/keep/restore", "", 200);
    assert_eq!(restored["state"], "running", "{restored}");
    assert_eq!(vmm_pids(&daemon.state_dir).len(), 1);
    assert!(!saved_dir.join("state").exists(), "the saved files are removed once restored");
    // It runs on (not a fresh boot: the console has one banner).
    let info = expect(&daemon, "GET", "/v1/vms/keep", "", 200);
    let console = std::fs::read_to_string(info["console_log"].as_str().unwrap()).unwrap();
    assert_eq!(console.matches("Hello from the Kestrel test guest").count(), 1, "{console}");
    let kinds: Vec<String> = events(&daemon).into_iter().map(|(kind, _, _)| kind).collect();
    assert!(
        kinds.ends_with(&["paused".into(), "resumed".into(), "saved".into(), "restored".into()]),
        "{kinds:?}"
    );

    // Save again after the restore: the running VMM may still write its saved-state directory
    // (Landlock allowed the directory it was given, so the daemon empties it, never replaces it).
    let again = expect(&daemon, "POST", "/v1/vms/keep/save", "", 200);
    assert_eq!(again["state"], "saved", "{again}");
    wait_for_vmms(&daemon.state_dir, 0);
    assert!(saved_dir.join("state").is_file() && saved_dir.join("memory").is_file());
    let restored = expect(&daemon, "POST", "/v1/vms/keep/restore", "", 200);
    assert_eq!(restored["state"], "running", "{restored}");
    expect(&daemon, "POST", "/v1/vms/keep/destroy", "", 200);
}

#[test]
fn a_disk_in_use_by_another_running_vm_is_a_conflict() {
    if !common::kvm_available() {
        return;
    }
    let daemon = Daemon::start();
    let disk = daemon.dir.path().join("shared.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    for name in ["one", "two"] {
        let mut body: serde_json::Value = serde_json::from_str(&hello(name, "exit=hang")).unwrap();
        body["disks"] = serde_json::json!([{ "path": disk }]);
        expect(&daemon, "POST", "/v1/vms", &body.to_string(), 201);
    }
    expect(&daemon, "POST", "/v1/vms/one/start", "", 200);
    let (status, error) = call(&daemon, "POST", "/v1/vms/two/start", "");
    assert_eq!(status, 409, "{error}");
    assert!(error["error"].as_str().unwrap().contains("in use"), "{error}");
    assert_eq!(expect(&daemon, "GET", "/v1/vms/two", "", 200)["state"], "stopped");
    assert_eq!(vmm_pids(&daemon.state_dir).len(), 1, "the refused VM's VMM is gone");
    expect(&daemon, "POST", "/v1/vms/one/destroy", "", 200);
}

#[test]
fn a_shutdown_the_guest_ignores_times_out_and_force_destroys() {
    if !common::kvm_available() {
        return;
    }
    let daemon = Daemon::start();
    running_hang(&daemon, "stubborn");
    // The hello guest has no ACPI: the power button changes nothing.
    let (status, error) = call(&daemon, "POST", "/v1/vms/stubborn/shutdown", r#"{"timeout_secs": 1}"#);
    assert_eq!(status, 409, "{error}");
    assert_eq!(expect(&daemon, "GET", "/v1/vms/stubborn", "", 200)["state"], "running");
    let forced =
        expect(&daemon, "POST", "/v1/vms/stubborn/shutdown", r#"{"timeout_secs": 1, "force": true}"#, 200);
    assert_eq!(forced["state"], "stopped", "{forced}");
    wait_for_vmms(&daemon.state_dir, 0);
}

#[test]
fn reboot_presses_ctrl_alt_del_and_the_vm_comes_back() {
    if !common::kvm_available() {
        return;
    }
    let daemon = Daemon::start();
    expect(&daemon, "POST", "/v1/vms", &hello("kbd", "exit=ctrl-alt-del"), 201);
    let first = expect(&daemon, "POST", "/v1/vms/kbd/start", "", 200)["pid"].as_u64().unwrap();
    let console = daemon
        .state_dir
        .join("vms")
        .join(expect(&daemon, "GET", "/v1/vms/kbd", "", 200)["uuid"].as_str().unwrap())
        .join("console.log");
    wait_for_vm(&daemon, "kbd", "waiting for a key", |_| {
        std::fs::read_to_string(&console).unwrap_or_default().contains("keyboard: waiting")
    });
    expect(&daemon, "POST", "/v1/vms/kbd/reboot", "", 200);
    let info = wait_for_vm(&daemon, "kbd", "running again", |info| {
        info["state"] == "running" && info["pid"].as_u64().is_some_and(|pid| pid != first)
    });
    assert_eq!(info["last_exit"]["outcome"], "reset", "{info}");
    let log = std::fs::read_to_string(&console).unwrap();
    assert!(log.contains("keyboard: ctrl-alt-del, rebooting"), "{log}");
    assert!(events(&daemon).iter().any(|(kind, object, _)| kind == "rebooted" && object == "kbd"));
    // Reboots the user asks for are not held against the crash back-off (5 a minute).
    let mut pid = info["pid"].as_u64().unwrap();
    for round in 0..6 {
        wait_for_vm(&daemon, "kbd", "waiting for a key", |_| {
            let log = std::fs::read_to_string(&console).unwrap_or_default();
            log.matches("keyboard: waiting").count() == round + 2
        });
        expect(&daemon, "POST", "/v1/vms/kbd/reboot", "", 200);
        let info = wait_for_vm(&daemon, "kbd", "running again", |info| {
            info["state"] == "running" && info["pid"].as_u64().is_some_and(|p| p != pid)
        });
        pid = info["pid"].as_u64().unwrap();
    }
    expect(&daemon, "POST", "/v1/vms/kbd/destroy", "", 200);
    wait_for_vmms(&daemon.state_dir, 0);
}

#[test]
fn concurrent_starts_make_one_vmm() {
    if !common::kvm_available() {
        return;
    }
    let daemon = Daemon::start();
    expect(&daemon, "POST", "/v1/vms", &hello("once", "exit=hang"), 201);
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let starts: Vec<_> =
            (0..4).map(|_| scope.spawn(|| call(&daemon, "POST", "/v1/vms/once/start", "").0)).collect();
        starts.into_iter().map(|s| s.join().unwrap()).collect()
    });
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 3, "{statuses:?}");
    assert_eq!(vmm_pids(&daemon.state_dir).len(), 1);
    expect(&daemon, "POST", "/v1/vms/once/destroy", "", 200);
}

#[test]
fn a_kernel_gone_by_the_start_is_named() {
    if !common::kvm_available() {
        return;
    }
    let daemon = Daemon::start();
    let kernel = daemon.dir.path().join("vmlinux");
    std::fs::copy(guests::HELLO, &kernel).unwrap();
    let body = serde_json::json!({ "name": "gone", "kernel": kernel, "cmdline": "exit=hang" });
    expect(&daemon, "POST", "/v1/vms", &body.to_string(), 201);
    std::fs::remove_file(&kernel).unwrap();
    let error = expect(&daemon, "POST", "/v1/vms/gone/start", "", 400);
    assert!(error["error"].as_str().unwrap().contains(kernel.to_str().unwrap()), "{error}");
    assert_eq!(expect(&daemon, "GET", "/v1/vms/gone", "", 200)["state"], "stopped");
    assert!(vmm_pids(&daemon.state_dir).is_empty());
}

/// Defines `name`: the hello guest that hangs, started with the daemon.
fn define_autostart_hang(daemon: &Daemon, name: &str) {
    let mut body: serde_json::Value = serde_json::from_str(&hello(name, "exit=hang")).unwrap();
    body["autostart"] = true.into();
    expect(daemon, "POST", "/v1/vms", &body.to_string(), 201);
}

#[test]
fn autostart_vms_start_with_the_daemon_and_events_can_be_followed() {
    if !common::kvm_available() {
        return;
    }
    use std::io::{BufRead, BufReader, Write};
    let mut daemon = Daemon::start();
    define_autostart_hang(&daemon, "auto");
    let last = events(&daemon).len();
    daemon.kill();
    daemon.restart();

    // Follow from the last event seen: the autostart's `started` arrives (stored or live).
    let mut stream = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    write!(stream, "GET /v1/events?follow=true&since={last} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut reader = BufReader::new(stream);
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended: {seen}");
        seen.push_str(&line);
        if line.contains(r#""kind":"started""#) && line.contains(r#""object":"auto""#) {
            break;
        }
    }
    let info = wait_for_vm(&daemon, "auto", "running", |info| info["state"] == "running");
    assert_eq!(vmm_pids(&daemon.state_dir), [info["pid"].as_u64().unwrap() as u32]);
    expect(&daemon, "POST", "/v1/vms/auto/destroy", "", 200);
}

#[test]
fn a_web_console_that_cannot_listen_stops_the_daemon_before_any_vm_starts() {
    if !common::kvm_available() {
        return;
    }
    let mut daemon = Daemon::start();
    define_autostart_hang(&daemon, "auto");
    daemon.kill();

    // The console's port is taken: the daemon must stop before its autostart, not after.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let command = daemon.daemon_command(&["--web", &format!("127.0.0.1:{port}")]);
    let output = common::run_to_end(command, b"");
    assert!(!output.status.success(), "the daemon ran with its console's port taken");
    let stderr = common::stderr(&output);
    assert!(stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")), "{stderr}");
    assert!(vmm_pids(&daemon.state_dir).is_empty(), "a VM started before the failure: {stderr}");

    drop(taken);
}
