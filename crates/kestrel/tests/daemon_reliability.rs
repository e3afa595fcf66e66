//! The daemon dies and comes back: VMs keep running and are adopted, never started twice;
//! SIGKILLs at random points leave a consistent store and no stray VMM; many cycles leak
//! nothing; a full disk under the state directory is a clear error that changes nothing.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::vms::{call, events, expect, hello, running_hang, vmm_pids, wait_for_vm, wait_for_vmms};

/// A request that may fail (the daemon is being killed): the status, if an answer came.
fn try_request(socket: &Path, method: &str, path: &str, body: &str) -> Option<u16> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    std::str::from_utf8(answer.get(9..12)?).ok()?.parse().ok()
}

/// A small xorshift generator: random kill points without a dependency.
struct Random(u64);

impl Random {
    fn seeded() -> Random {
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        eprintln!("random seed {seed}");
        Random(seed | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The store agrees with the processes: every VM listed once, each active one with exactly one
/// live VMM (its recorded PID), and no VMM nobody accounts for.
#[track_caller]
fn assert_consistent(daemon: &Daemon) {
    let list = expect(daemon, "GET", "/v1/vms", "", 200);
    let list = list.as_array().unwrap();
    let names: HashSet<&str> = list.iter().map(|vm| vm["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), list.len(), "a VM listed twice: {list:?}");
    let mut expected = Vec::new();
    for vm in list {
        match vm["state"].as_str().unwrap() {
            "running" | "paused" => {
                expected.push(vm["pid"].as_u64().unwrap_or_else(|| panic!("no pid: {vm}")) as u32)
            }
            "stopped" | "crashed" | "saved" => assert!(vm["pid"].is_null(), "{vm}"),
            other => panic!("VM in state {other} with no request in flight: {vm}"),
        }
    }
    expected.sort_unstable();
    assert_eq!(vmm_pids(&daemon.state_dir), expected, "the VMMs are exactly the running VMs': {list:?}");
}

#[test]
fn vms_outlive_a_killed_daemon_and_are_adopted_not_restarted() {
    if !common::kvm_available() {
        return;
    }
    let mut daemon = Daemon::start();
    let a = running_hang(&daemon, "a")["pid"].as_u64().unwrap() as u32;
    let b = running_hang(&daemon, "b")["pid"].as_u64().unwrap() as u32;
    let c = running_hang(&daemon, "c")["pid"].as_u64().unwrap() as u32;
    daemon.kill();
    assert_eq!(vmm_pids(&daemon.state_dir), {
        let mut p = vec![a, b, c];
        p.sort_unstable();
        p
    });
    // While the daemon is away, b's VMM is stopped by a signal (it writes its status) and c's
    // is SIGKILLed (it cannot).
    // SAFETY: kill has no memory-safety preconditions; b and c are live VMMs we started.
    unsafe {
        libc::kill(b as i32, libc::SIGTERM);
        libc::kill(c as i32, libc::SIGKILL);
    }
    wait_for_vmms(&daemon.state_dir, 1);
    daemon.restart();

    let info = expect(&daemon, "GET", "/v1/vms/a", "", 200);
    assert_eq!(
        (info["state"].as_str(), info["pid"].as_u64()),
        (Some("running"), Some(u64::from(a))),
        "{info}"
    );
    let b_info = expect(&daemon, "GET", "/v1/vms/b", "", 200);
    assert_eq!(b_info["state"], "crashed", "{b_info}");
    assert_eq!(
        b_info["last_exit"]["status"],
        128 + libc::SIGTERM,
        "from the VMM's exit-status file: {b_info}"
    );
    let c_info = expect(&daemon, "GET", "/v1/vms/c", "", 200);
    assert_eq!(c_info["state"], "crashed", "{c_info}");
    assert!(c_info["last_exit"]["outcome"].as_str().unwrap().contains("status unknown"), "{c_info}");
    assert_eq!(vmm_pids(&daemon.state_dir), [a], "nothing started twice");
    assert!(events(&daemon).iter().any(|(kind, object, _)| kind == "adopted" && object == "a"));
    assert_consistent(&daemon);

    // The adopted VMM is watched: its end is seen (status from its file: it is not our child).
    // SAFETY: as above; a is the adopted VMM.
    unsafe { libc::kill(a as i32, libc::SIGTERM) };
    let info = wait_for_vm(&daemon, "a", "crashed", |info| info["state"] == "crashed");
    assert_eq!(info["last_exit"]["status"], 128 + libc::SIGTERM, "{info}");

    // An adopted VM can be destroyed.
    let d = running_hang(&daemon, "d")["pid"].as_u64().unwrap();
    daemon.kill();
    daemon.restart();
    assert_eq!(expect(&daemon, "GET", "/v1/vms/d", "", 200)["pid"].as_u64(), Some(d));
    let destroyed = expect(&daemon, "POST", "/v1/vms/d/destroy", "", 200);
    assert_eq!(
        (destroyed["state"].as_str(), destroyed["last_exit"]["outcome"].as_str()),
        (Some("stopped"), Some("destroyed"))
    );
    wait_for_vmms(&daemon.state_dir, 0);
}

/// Kills a VMM the test found (the daemon is away) and waits until none is left.
fn kill_vmm(daemon: &Daemon, pid: u32) {
    // SAFETY: kill has no memory-safety preconditions; pid is a live VMM of this test.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_for_vmms(&daemon.state_dir, 0);
}

#[test]
fn a_daemon_killed_mid_save_finds_the_vm_saved() {
    if !common::kvm_available() {
        return;
    }
    let mut daemon = Daemon::start();
    let info = running_hang(&daemon, "keep");
    let (uuid, pid) = (info["uuid"].as_str().unwrap().to_owned(), info["pid"].as_u64().unwrap() as u32);
    wait_for_vm(&daemon, "keep", "printing", |_| {
        std::fs::read_to_string(info["console_log"].as_str().unwrap())
            .unwrap_or_default()
            .contains("exit: hang")
    });
    daemon.kill();
    // What the daemon's save did up to its SIGKILL: pause, snapshot, write the intent down.
    let vm_dir = daemon.state_dir.join("vms").join(&uuid);
    let socket = vm_dir.join("vmm.sock");
    let saved = vm_dir.join("saved");
    let (status, text) = common::api::request(&socket, "PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(status, 204, "{text}");
    let create = serde_json::json!({
        "snapshot_path": saved.join("state"), "mem_file_path": saved.join("memory"), "snapshot_type": "Full"
    });
    let (status, text) = common::api::request(&socket, "PUT", "/snapshot/create", &create.to_string());
    assert_eq!(status, 204, "{text}");
    let store = rusqlite::Connection::open(daemon.state_dir.join("kestrel.db")).unwrap();
    store.execute("INSERT INTO vm_intents (vm_uuid, intent) VALUES (?1, 'save')", [&uuid]).unwrap();
    drop(store);
    kill_vmm(&daemon, pid);

    daemon.restart();
    let info = expect(&daemon, "GET", "/v1/vms/keep", "", 200);
    assert_eq!(info["state"], "saved", "the completed save is kept: {info}");
    let restored = expect(&daemon, "POST", "/v1/vms/keep/restore", "", 200);
    assert_eq!(restored["state"], "running", "{restored}");
    let console = std::fs::read_to_string(info["console_log"].as_str().unwrap()).unwrap();
    assert_eq!(
        console.matches("Hello from the Kestrel test guest").count(),
        1,
        "not booted again: {console}"
    );
    expect(&daemon, "POST", "/v1/vms/keep/destroy", "", 200);
    wait_for_vmms(&daemon.state_dir, 0);
}

#[test]
fn a_reset_while_the_daemon_was_away_is_restarted_by_policy() {
    if !common::kvm_available() {
        return;
    }
    let mut daemon = Daemon::start();
    let info = running_hang(&daemon, "again");
    let (uuid, pid) = (info["uuid"].as_str().unwrap().to_owned(), info["pid"].as_u64().unwrap() as u32);
    daemon.kill();
    // The guest reset while no daemon watched: its VMM ended with status 3 (a reset).
    kill_vmm(&daemon, pid);
    std::fs::write(daemon.state_dir.join("vms").join(&uuid).join("exit-status"), "3\n").unwrap();
    daemon.restart();
    let info = wait_for_vm(&daemon, "again", "running again", |info| {
        info["state"] == "running" && info["pid"].as_u64().is_some_and(|p| p != u64::from(pid))
    });
    assert_eq!(info["last_exit"]["outcome"], "reset", "{info}");
    let kinds: Vec<(String, String)> = events(&daemon)
        .into_iter()
        .filter(|e| e.1 == "again")
        .map(|(kind, _, detail)| (kind, detail))
        .collect();
    assert!(
        kinds.ends_with(&[("stopped".into(), "reset".into()), ("started".into(), String::new())]),
        "{kinds:?}"
    );
    assert_eq!(vmm_pids(&daemon.state_dir).len(), 1);
    expect(&daemon, "POST", "/v1/vms/again/destroy", "", 200);
    wait_for_vmms(&daemon.state_dir, 0);
}

/// Where in a VM's define → start → shutdown → start sequence a SIGKILL lands (Shutdown: after
/// the first start answered, so during the shutdown or the start after it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Phase {
    Define,
    Start,
    Shutdown,
}

/// The VM's state word, if the daemon answers and knows it.
fn state_of(socket: &Path, name: &str) -> Option<String> {
    let (status, text) = common::api::request(socket, "GET", &format!("/v1/vms/{name}"), "");
    let info: serde_json::Value = serde_json::from_str(&text).ok()?;
    (status == 200).then(|| info["state"].as_str().map(str::to_owned)).flatten()
}

/// Waits (bounded) until the VM is in `state`; whether it was seen there.
fn wait_for_state(socket: &Path, name: &str, state: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match state_of(socket, name).as_deref() {
            Some(now) if now == state => return true,
            // Past it (the step was quicker than the polls): a miss.
            Some("running") if state == "starting" => return false,
            _ => std::thread::yield_now(),
        }
    }
    false
}

#[test]
fn sigkills_at_random_points_leave_a_consistent_store() {
    if !common::kvm_available() {
        return;
    }
    const ROUNDS: usize = 45;
    let mut daemon = Daemon::start();
    let mut random = Random::seeded();
    let started = Instant::now();
    let mut hits: std::collections::HashMap<Phase, usize> = Default::default();
    for round in 0..ROUNDS {
        let phase = [Phase::Define, Phase::Start, Phase::Shutdown][round % 3];
        let name = format!("r{round}");
        let socket = daemon.socket.clone();
        let definition = hello(&name, "exit=hang");
        let worker_name = name.clone();
        let work = std::thread::spawn(move || {
            let name = worker_name;
            let _ = try_request(&socket, "POST", "/v1/vms", &definition);
            let _ = try_request(&socket, "POST", &format!("/v1/vms/{name}/start"), "");
            // The hello guest has no ACPI: the forced shutdown destroys it.
            let _ = try_request(
                &socket,
                "POST",
                &format!("/v1/vms/{name}/shutdown"),
                r#"{"timeout_secs": 1, "force": true}"#,
            );
            let _ = try_request(&socket, "POST", &format!("/v1/vms/{name}/start"), "");
        });
        // Wait for the phase, then kill a small random time into it.
        let hit = match phase {
            Phase::Define => true,
            Phase::Start => wait_for_state(&daemon.socket, &name, "starting"),
            // Running: the start answered, the shutdown request follows at once.
            Phase::Shutdown => wait_for_state(&daemon.socket, &name, "running"),
        };
        let within = match phase {
            Phase::Define => 2_000,
            Phase::Start => 20_000,
            Phase::Shutdown => 20_000,
        };
        std::thread::sleep(Duration::from_micros(random.below(within)));
        daemon.kill();
        work.join().unwrap();
        daemon.restart();
        assert_consistent(&daemon);
        // A kill in the define left no VM, or one that never started.
        let hit = hit
            && (phase != Phase::Define
                || call(&daemon, "GET", &format!("/v1/vms/{name}"), "").1["started_at"].is_null());
        *hits.entry(phase).or_default() += usize::from(hit);
        // Everything still works afterwards; the round's VM goes.
        if let Some(state) = state_of(&daemon.socket, &name) {
            if state != "stopped" && state != "crashed" {
                expect(&daemon, "POST", &format!("/v1/vms/{name}/destroy"), "", 200);
            }
            expect(&daemon, "DELETE", &format!("/v1/vms/{name}"), "", 204);
        }
        wait_for_vmms(&daemon.state_dir, 0);
    }
    let log = daemon.log();
    eprintln!(
        "{ROUNDS} kills in {:?}: phases hit {hits:?}; {} adoptions, {} unstarted VMMs killed, {} stray VMMs killed",
        started.elapsed(),
        log.matches("adopted").count(),
        log.matches("never started the guest").count(),
        log.matches("no VM of the store runs it").count()
    );
    for phase in [Phase::Define, Phase::Start, Phase::Shutdown] {
        let hit = hits.get(&phase).copied().unwrap_or(0);
        assert!(hit >= ROUNDS / 3 / 3, "the kill landed in {phase:?} only {hit} times: {hits:?}");
    }
}

/// Open descriptors and threads of a process.
fn resources(pid: u32) -> (usize, usize) {
    let count = |dir: &str| std::fs::read_dir(format!("/proc/{pid}/{dir}")).unwrap().count();
    (count("fd"), count("task"))
}

/// The files under a directory (recursively), but the store's.
fn files_under(dir: &Path) -> BTreeMap<String, u64> {
    let mut found = BTreeMap::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path.clone());
            }
            if !entry.file_name().to_string_lossy().starts_with("kestrel.db") {
                found.insert(path.display().to_string(), 0);
            }
        }
    }
    found
}

#[test]
fn two_hundred_cycles_leak_no_descriptor_thread_file_or_process() {
    if !common::kvm_available() {
        return;
    }
    let daemon = Daemon::start();
    let pid = daemon.pid().unwrap();
    let cycle = |i: usize| {
        let name = format!("cycle{}", i % 3);
        running_hang(&daemon, &name);
        expect(&daemon, "POST", &format!("/v1/vms/{name}/destroy"), "", 200);
        expect(&daemon, "DELETE", &format!("/v1/vms/{name}"), "", 204);
    };
    for i in 0..3 {
        cycle(i);
    }
    let before = resources(pid);
    let files_before = files_under(&daemon.state_dir);
    let started = Instant::now();
    for i in 0..200 {
        cycle(i);
    }
    eprintln!("200 cycles in {:?}", started.elapsed());
    // Descriptors of finished requests close as their tasks end: wait for them, bounded.
    let deadline = Instant::now() + Duration::from_secs(15);
    while resources(pid).0 > before.0 || resources(pid).1 > before.1 {
        assert!(Instant::now() < deadline, "leaked: before {before:?}, after {:?}", resources(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(files_under(&daemon.state_dir), files_before);
    assert!(vmm_pids(&daemon.state_dir).is_empty());
    assert_eq!(expect(&daemon, "GET", "/v1/vms", "", 200), serde_json::json!([]));
}

/// A tmpfs mounted for the test, detached at the end.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let path = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: umount2 reads a NUL-terminated path.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
}

#[test]
fn a_full_state_directory_is_a_clear_error_and_changes_nothing() {
    if !common::is_root() {
        return;
    }
    let mut daemon = Daemon::start();
    daemon.kill();
    std::fs::remove_dir_all(&daemon.state_dir).unwrap();
    std::fs::create_dir(&daemon.state_dir).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs"])
        .arg(&daemon.state_dir)
        .status()
        .unwrap();
    assert!(status.success());
    let _mount = Mount(daemon.state_dir.clone());
    daemon.restart();
    expect(&daemon, "POST", "/v1/vms", &hello("before", "exit=hang"), 201);
    let before = expect(&daemon, "GET", "/v1/vms", "", 200);

    // Fill the disk.
    let filler = daemon.state_dir.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let block = vec![0xa5u8; 64 << 10];
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();

    let mut refused = Vec::new();
    for i in 0..5 {
        let name = format!("full{i}");
        let (status, error) = call(&daemon, "POST", "/v1/vms", &hello(&name, "exit=hang"));
        if status == 201 {
            continue;
        }
        assert_eq!(status, 503, "{error}");
        assert_eq!(error["kind"], "unavailable");
        assert!(error["error"].as_str().unwrap().contains("full"), "{error}");
        refused.push(name);
    }
    assert!(!refused.is_empty(), "a full disk refused no definition");
    let during = expect(&daemon, "GET", "/v1/vms", "", 200);
    let listed: Vec<&str> =
        during.as_array().unwrap().iter().map(|vm| vm["name"].as_str().unwrap()).collect();
    assert!(listed.contains(&"before"), "{listed:?}");
    for name in &refused {
        assert!(!listed.contains(&name.as_str()), "{name} was refused yet stored: {listed:?}");
    }
    assert_eq!(listed.len(), before.as_array().unwrap().len() + 5 - refused.len());

    // With room again, the daemon goes on, and what it said it refused is not there.
    drop(file);
    std::fs::remove_file(&filler).unwrap();
    expect(&daemon, "POST", "/v1/vms", &hello("after", "exit=hang"), 201);
    let after = expect(&daemon, "GET", "/v1/vms", "", 200);
    assert_eq!(after.as_array().unwrap().len(), during.as_array().unwrap().len() + 1);
    daemon.kill();
}

#[test]
fn sigterm_stops_the_daemon_despite_followers_and_leaves_vms_running() {
    if !common::kvm_available() {
        return;
    }
    let mut daemon = Daemon::start();
    let pid = running_hang(&daemon, "stays")["pid"].as_u64().unwrap() as u32;
    // A follower that never hangs up.
    let mut follower = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    follower.write_all(b"GET /v1/events?follow=true HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut head = [0u8; 12];
    follower.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");

    let daemon_pid = daemon.pid().unwrap();
    // SAFETY: kill has no memory-safety preconditions; the daemon is our unreaped child.
    unsafe { libc::kill(daemon_pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{daemon_pid}/stat")).unwrap_or_default();
        if stat.rsplit_once(')').is_none_or(|(_, rest)| rest.trim_start().starts_with('Z')) {
            break;
        }
        assert!(Instant::now() < deadline, "the daemon did not stop after SIGTERM:\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.kill();
    assert_eq!(vmm_pids(&daemon.state_dir), [pid], "the VM runs on without its daemon");
    daemon.restart();
    assert_eq!(expect(&daemon, "GET", "/v1/vms/stays", "", 200)["pid"].as_u64(), Some(u64::from(pid)));
    expect(&daemon, "POST", "/v1/vms/stays/destroy", "", 200);
}

/// Sends `signal` to a VMM the test started through the daemon.
fn signal_vmm(pid: u32, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; `pid` is a live VMM of this test.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0, "kill {pid} {signal}");
}

#[test]
fn an_unresponsive_vmm_is_adopted_as_recorded_and_never_killed() {
    if !common::kvm_available() {
        return;
    }
    let mut daemon = Daemon::start();
    let pid = running_hang(&daemon, "frozen")["pid"].as_u64().unwrap() as u32;
    daemon.kill();
    // Its API cannot answer (as when it is busy writing a large snapshot): the new daemon must
    // not take that for a VMM whose guest never started.
    signal_vmm(pid, libc::SIGSTOP);
    daemon.restart();
    let info = expect(&daemon, "GET", "/v1/vms/frozen", "", 200);
    assert_eq!(
        (info["state"].as_str(), info["pid"].as_u64()),
        (Some("running"), Some(u64::from(pid))),
        "{info}\n{}",
        daemon.log()
    );
    assert_eq!(vmm_pids(&daemon.state_dir), [pid], "the VMM lives on");
    assert!(daemon.log().contains("unresponsive"), "{}", daemon.log());
    assert!(events(&daemon).iter().any(|(kind, object, _)| kind == "adopted" && object == "frozen"));
    // It is watched like any adopted VMM.
    signal_vmm(pid, libc::SIGCONT);
    let destroyed = expect(&daemon, "POST", "/v1/vms/frozen/destroy", "", 200);
    assert_eq!(
        (destroyed["state"].as_str(), destroyed["last_exit"]["outcome"].as_str()),
        (Some("stopped"), Some("destroyed"))
    );
    wait_for_vmms(&daemon.state_dir, 0);
}

#[test]
fn a_second_daemon_on_the_same_state_directory_exits_and_changes_nothing() {
    if !common::kvm_available() {
        return;
    }
    let daemon = Daemon::start();
    let pid = running_hang(&daemon, "kept")["pid"].as_u64().unwrap() as u32;
    let events_before = events(&daemon);
    let other_socket = daemon.dir.path().join("other.sock");
    let mut second = common::kestrel();
    second
        .args(["daemon", "--foreground", "--state-dir"])
        .arg(&daemon.state_dir)
        .arg("--socket")
        .arg(&other_socket);
    let output = common::run_to_end(second, b"");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = common::stderr(&output);
    assert!(stderr.contains("is in use by another kestrel daemon"), "{stderr}");
    assert!(!other_socket.exists(), "the second daemon never listened");
    // The first daemon and its VM saw nothing of it.
    assert_eq!(vmm_pids(&daemon.state_dir), [pid]);
    let info = expect(&daemon, "GET", "/v1/vms/kept", "", 200);
    assert_eq!((info["state"].as_str(), info["pid"].as_u64()), (Some("running"), Some(u64::from(pid))));
    assert_eq!(events(&daemon), events_before, "no adoption, stop or kill was recorded");
    assert!(!daemon.log().contains("killing"), "{}", daemon.log());
    expect(&daemon, "POST", "/v1/vms/kept/destroy", "", 200);
}

#[test]
fn a_file_at_the_socket_path_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_socket = dir.path().join("kestrel.db");
    std::fs::write(&not_a_socket, b"someone's data").unwrap();
    let mut daemon = common::kestrel();
    daemon
        .args(["daemon", "--foreground", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("--socket")
        .arg(&not_a_socket);
    let output = common::run_to_end(daemon, b"");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(common::stderr(&output).contains("not a socket"), "{}", common::stderr(&output));
    assert_eq!(std::fs::read(&not_a_socket).unwrap(), b"someone's data");
}

#[test]
fn a_row_that_cannot_be_read_hides_no_vm_and_its_vmm_is_neither_swept_nor_orphaned() {
    if !common::kvm_available() {
        return;
    }
    let mut daemon = Daemon::start();
    let a = running_hang(&daemon, "a")["pid"].as_u64().unwrap() as u32;
    let b_info = running_hang(&daemon, "b");
    let b = b_info["pid"].as_u64().unwrap() as u32;
    let b_uuid = b_info["uuid"].as_str().unwrap().to_owned();
    daemon.kill();
    // b's definition no longer decodes (still JSON, so `vm list` reads its row).
    let store = manager::store::Store::open(&daemon.state_dir.join("kestrel.db"), &[]).unwrap();
    let definition: String = store
        .lock()
        .query_row("SELECT definition FROM vms WHERE uuid = ?1", (&b_uuid,), |row| row.get(0))
        .unwrap();
    store
        .lock()
        .execute(r#"UPDATE vms SET definition = '{"cpus": 1, "memory_mib": 32}' WHERE uuid = ?1"#, (&b_uuid,))
        .unwrap();
    daemon.restart();
    let info = expect(&daemon, "GET", "/v1/vms/a", "", 200);
    assert_eq!(
        (info["state"].as_str(), info["pid"].as_u64()),
        (Some("running"), Some(u64::from(a))),
        "{info}"
    );
    let mut both = vec![a, b];
    both.sort_unstable();
    assert_eq!(vmm_pids(&daemon.state_dir), both, "b's VMM is left alone:\n{}", daemon.log());
    assert!(daemon.log().contains(&format!("VM {b_uuid}: its record cannot be read")), "{}", daemon.log());

    // Mended while the daemon runs, b is recorded running with no watcher: destroying it kills
    // its VMM (the recorded PID and start time) rather than leaving it running unseen.
    store.lock().execute("UPDATE vms SET definition = ?2 WHERE uuid = ?1", (&b_uuid, &definition)).unwrap();
    let destroyed = expect(&daemon, "POST", "/v1/vms/b/destroy", "", 200);
    assert_eq!(
        (destroyed["state"].as_str(), destroyed["last_exit"]["outcome"].as_str()),
        (Some("stopped"), Some("destroyed")),
        "{destroyed}"
    );
    assert_eq!(vmm_pids(&daemon.state_dir), [a], "b's VMM is gone");
    assert_consistent(&daemon);
    expect(&daemon, "DELETE", "/v1/vms/b", "", 204);
    expect(&daemon, "POST", "/v1/vms/a/destroy", "", 200);
    wait_for_vmms(&daemon.state_dir, 0);
}
