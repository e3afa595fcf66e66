//! Kestrel started as `firecracker` (a link named so): Firecracker v1.16.1's command line, as Kata
//! Containers, flintlock and the SDKs use it.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::api::{assert_fault, request, spawn_vmm};
use common::{kvm_available, stderr, stdout, wait_for_child_line, wait_with_limit, Watchdog};

/// A temporary directory holding a `firecracker` link to the built binary.
struct Firecracker {
    dir: tempfile::TempDir,
}

impl Firecracker {
    fn new() -> Firecracker {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kestrel"), dir.path().join("firecracker")).unwrap();
        Firecracker { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `firecracker ARGS`, stdin closed, stdout and stderr piped.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(self.path("firecracker"));
        command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        wait_with_limit(self.command(args).spawn().expect("start firecracker"))
    }

    /// A config file for the hello guest, leaving the way `exit` says, plus `extra` sections.
    fn config(&self, exit: &str, extra: &str) -> PathBuf {
        let path = self.path("vm.json");
        let text = format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "exit={exit}"}},
                "machine-config": {{"vcpu_count": 1, "mem_size_mib": 32}}{extra}}}"#,
            guests::HELLO
        );
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn str_of(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn version_reads_as_kata_reads_it() {
    let fc = Firecracker::new();
    let output = fc.run(&["--version"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    // Kata Containers: strings.Split(firstLine, " ")[1], without its "v", must be a semver.
    let first = text.lines().next().unwrap();
    assert_eq!(first.split(' ').nth(1), Some("v1.16.1"), "{text}");
    assert!(text.contains(&format!("Kestrel v{}", env!("CARGO_PKG_VERSION"))), "{text}");
    // `kestrel vmm` takes the flag too.
    let output = common::kestrel().args(["vmm", "--version"]).output().unwrap();
    assert_eq!(stdout(&output), text);
}

#[test]
fn bad_command_lines_are_refused_with_firecracker_s_status() {
    let fc = Firecracker::new();
    for (args, expected) in [
        (&["--bogus"][..], "--bogus"),
        (&["--no-api"], "--config-file"),
        (&["--no-seccomp", "--seccomp-filter", "/f"], "cannot be used with"),
        (&["--level", "loud"], "Warning"),
        (&["--id", "vm_1"], "invalid --id"),
        (&["--id", &"a".repeat(65)], "1 to 64"),
        (&["--api-sock", "/tmp/x", "--api-sock", "/tmp/y"], "multiple times"),
    ] {
        let output = fc.run(args);
        assert_eq!(output.status.code(), Some(153), "{args:?}: {}", stderr(&output));
        assert!(stderr(&output).contains(expected), "{args:?}: {}", stderr(&output));
    }
    // Flags Kestrel cannot honour say why.
    let output = fc.run(&["--seccomp-filter", "/f", "--api-sock", str_of(&fc.path("s"))]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("--seccomp-filter is not supported"), "{}", stderr(&output));
}

#[test]
fn no_api_boots_the_config_file_s_vm_and_writes_its_metrics() {
    if !kvm_available() {
        return;
    }
    let fc = Firecracker::new();
    let metrics = fc.path("metrics.json");
    let config = fc.config("poweroff", "");
    let output = fc.run(&["--no-api", "--config-file", str_of(&config), "--metrics-path", str_of(&metrics)]);
    assert!(output.status.success(), "{}\n{}", stdout(&output), stderr(&output));
    assert!(stdout(&output).contains("exit: poweroff"), "{}", stdout(&output));
    assert!(!fc.path("run").exists(), "no API socket");
    let text = std::fs::read_to_string(&metrics).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(last["utc_timestamp_ms"].as_u64().unwrap() > 0, "{text}");
    assert!(last["vcpu"].is_object(), "{text}");
}

#[test]
fn a_bad_config_file_stops_the_start() {
    let fc = Firecracker::new();
    let config = fc.path("bad.json");
    std::fs::write(&config, r#"{"boot-source": {"kernel_image_path": "/none"}, "machine-config": {"vcpu_count": 0, "mem_size_mib": 32}}"#).unwrap();
    let output = fc.run(&["--no-api", "--config-file", str_of(&config)]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("vCPU number"), "{}", stderr(&output));
    std::fs::write(&config, r#"{"logger": {"level": "loud"}}"#).unwrap();
    let output = fc.run(&["--no-api", "--config-file", str_of(&config)]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("the logger section"), "{}", stderr(&output));
}

/// The tasks of `pid` by name.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .map(|comm| comm.trim_end().to_owned())
        .collect()
}

#[test]
fn config_file_with_api_serves_the_running_vm_on_firecracker_s_threads() {
    if !kvm_available() {
        return;
    }
    let fc = Firecracker::new();
    let socket = fc.path("api.sock");
    let log = fc.path("fc.log");
    let config =
        fc.config("hang", &format!(r#", "logger": {{"log_path": "{}", "level": "Info"}}"#, str_of(&log)));
    let command =
        fc.command(&["--api-sock", str_of(&socket), "--config-file", str_of(&config), "--id", "fc-test-7"]);
    let mut child = spawn_vmm(command, &socket);
    let watchdog = Watchdog::new(&child);
    let mut console = BufReader::new(child.stdout.take().unwrap());
    wait_for_child_line(&mut console, "exit: hang", &mut child);
    let (status, info) = request(&socket, "GET", "/", "");
    assert_eq!(status, 200, "{info}");
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["state"], "Running");
    assert_eq!(info["app_name"], "Firecracker");
    assert_eq!(info["id"], "fc-test-7");
    assert_eq!(info["vmm_version"], "1.16.1");
    assert_eq!(info["x-kestrel"]["kestrel_version"], env!("CARGO_PKG_VERSION"));
    // Kata Containers finds the vCPU threads by these names.
    let names = thread_names(child.id());
    assert!(names.iter().any(|n| n == "fc_vcpu 0"), "{names:?}");
    assert!(names.iter().any(|n| n == "fc_api"), "{names:?}");
    // The file's logger section was applied: Firecracker's format, with the instance ID.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("[fc-test-7:main] Running Firecracker v1.16.1"), "{text}");
    child.kill().unwrap();
    child.wait().unwrap();
    drop(watchdog);
}

fn make_fifo(path: &Path) {
    let c_path = std::ffi::CString::new(str_of(path)).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates the file.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
}

/// A line in Firecracker's log format: `<date>T<time>.<nanoseconds> [<rest>`.
fn is_firecracker_line(line: &str) -> bool {
    let Some((time, rest)) = line.split_once(' ') else { return false };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let Some((date, clock)) = time.split_once('T') else { return false };
    let Some((hms, nanos)) = clock.split_once('.') else { return false };
    date.split('-').all(digits)
        && hms.split(':').all(digits)
        && nanos.len() == 9
        && digits(nanos)
        && rest.starts_with('[')
}

#[test]
fn the_log_goes_to_a_fifo_in_firecracker_s_format() {
    let fc = Firecracker::new();
    let fifo = fc.path("log.fifo");
    make_fifo(&fifo);
    let socket = fc.path("api.sock");
    // No reader yet: opening the pipe must not wait for one (the API answers below).
    let command = fc.command(&[
        "--api-sock",
        str_of(&socket),
        "--log-path",
        str_of(&fifo),
        "--level",
        "debug",
        "--show-level",
        "--show-log-origin",
        "--id",
        "fc-log",
    ]);
    let mut child = spawn_vmm(command, &socket);
    let watchdog = Watchdog::new(&child);
    assert_eq!(request(&socket, "GET", "/", "").0, 200);
    // Now a reader: the opening line is in the pipe, and each request logs a debug line.
    let (lines, received) = mpsc::channel();
    let reader_path = fifo.clone();
    std::thread::spawn(move || {
        let reader = BufReader::new(std::fs::File::open(reader_path).unwrap());
        for line in reader.lines() {
            if lines.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let first = loop {
        let line = received
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("{seen:?}"));
        if line.contains("Running Firecracker") {
            break line;
        }
        seen.push(line);
    };
    assert!(is_firecracker_line(&first), "{first}");
    let fields = first.split_once(" [").unwrap().1;
    assert!(fields.starts_with("fc-log:main:INFO:crates/kestrel/src/vmm_api.rs:"), "{first}");
    // Debug level reaches the pipe: the API logs each request.
    assert_eq!(request(&socket, "GET", "/machine-config", "").0, 200);
    let api_line = loop {
        let line = received
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("{seen:?}"));
        if line.contains("GET /machine-config") {
            break line;
        }
        seen.push(line);
    };
    assert!(is_firecracker_line(&api_line) && api_line.contains(":DEBUG:"), "{api_line}");
    child.kill().unwrap();
    child.wait().unwrap();
    drop(watchdog);
}

#[test]
fn the_api_payload_limit_is_the_flag_s() {
    let fc = Firecracker::new();
    let socket = fc.path("api.sock");
    let command = fc.command(&["--api-sock", str_of(&socket), "--http-api-max-payload-size", "64"]);
    let mut child = spawn_vmm(command, &socket);
    let watchdog = Watchdog::new(&child);
    let body = r#"{"vcpu_count": 1, "mem_size_mib": 64, "smt": false, "track_dirty_pages": false}"#;
    assert!(body.len() > 64);
    assert_fault(request(&socket, "PUT", "/machine-config", body), "larger than the limit of 64");
    assert_eq!(request(&socket, "PUT", "/machine-config", r#"{"vcpu_count": 1, "mem_size_mib": 64}"#).0, 204);
    child.kill().unwrap();
    child.wait().unwrap();
    drop(watchdog);
}

#[test]
fn the_boot_timer_logs_the_guest_s_boot_time() {
    if !kvm_available() {
        return;
    }
    let fc = Firecracker::new();
    let config = fc.config("boot-timer", "");
    let log = fc.path("fc.log");
    let run = |extra: &[&str]| {
        let mut args =
            vec!["--no-api", "--config-file", str_of(&config), "--id", "fc-boot", "--log-path", str_of(&log)];
        args.extend_from_slice(extra);
        let output = fc.run(&args);
        assert!(output.status.success(), "{}\n{}", stdout(&output), stderr(&output));
        assert!(stdout(&output).contains("exit: boot-timer, poweroff"), "{}", stdout(&output));
        std::fs::read_to_string(&log).unwrap()
    };
    // Without the flag, nothing is there to take the guest's signal.
    let text = run(&[]);
    assert!(!text.contains("Guest-boot-time"), "{text}");
    std::fs::remove_file(&log).unwrap();
    let text = run(&["--boot-timer"]);
    let line = text.lines().find(|l| l.contains("Guest-boot-time = ")).unwrap_or_else(|| panic!("{text}"));
    // Logged by the vCPU that wrote the signal, in Firecracker's words.
    assert!(line.contains("[fc-boot:fc_vcpu 0] Guest-boot-time = "), "{line}");
    assert!(line.contains(" us ") && line.contains(" CPU ms"), "{line}");
}
