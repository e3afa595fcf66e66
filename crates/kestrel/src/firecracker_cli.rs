//! Firecracker's command line (v1.16.1): the flags `kestrel vmm` takes besides its own, and the
//! binary started under the name `firecracker` (a link or copy), which takes them with no
//! subcommand, so tools that run Firecracker by path (Kata Containers, flintlock, the SDKs) can run
//! Kestrel.
//!
//! Firecracker's own parser takes `--flag value` only; clap takes that and `--flag=value` too.
//! A flag Firecracker does not know, a flag given twice, `--no-api` without `--config-file` and
//! `--seccomp-filter` with `--no-seccomp` are usage errors, as there (under the name `firecracker`
//! with Firecracker's status for them, 153).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser};
use model::api::{ActionType, FullVmConfiguration, LogLevel, Logger, Metrics, FIRECRACKER_VERSION};
use model::control::VmmRequest;

use crate::{cli, report};

/// Firecracker's status for a command line it cannot parse.
pub const ARG_PARSING_STATUS: u8 = 153;

/// The binary's name that selects Firecracker's command line.
const FIRECRACKER_NAME: &str = "firecracker";

/// The command line of the binary started as `firecracker`: `kestrel vmm`'s flags, no subcommand.
#[derive(Parser, Debug)]
#[command(
    name = "firecracker",
    disable_version_flag = true,
    about = "Kestrel, started as `firecracker`: a VMM driven by Firecracker's API, with Firecracker's \
             command line.",
    after_help = "Examples:\n  \
        firecracker --api-sock /tmp/fc.sock\n  \
        firecracker --api-sock /tmp/fc.sock --config-file vm.json\n  \
        firecracker --no-api --config-file vm.json --log-path /tmp/fc.log --level Debug --show-level"
)]
pub struct FirecrackerCli {
    #[command(flatten)]
    pub vmm: cli::VmmArgs,
}

/// Firecracker's flags, as `kestrel vmm` and `firecracker` take them (`--api-sock`, `--id` and the
/// jailer's start times are in [`cli::VmmArgs`]).
#[derive(Args, Debug, Default)]
pub struct FirecrackerArgs {
    /// Configure the VM from a JSON file in Firecracker's `--config-file` shape (boot-source,
    /// machine-config, drives, network-interfaces, vsock, balloon, entropy, logger, metrics,
    /// mmds-config) and start it at once; the API, if any, then serves the running VM. Each
    /// section goes through the same request the API would make of it.
    /// Example: --config-file vm.json
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,

    /// No API socket: the VM comes from --config-file alone. Example: --no-api --config-file vm.json
    #[arg(long, requires = "config_file")]
    pub no_api: bool,

    /// Load this JSON file into the metadata store (MMDS) at the start. Example: --metadata md.json
    #[arg(long, value_name = "FILE")]
    pub metadata: Option<PathBuf>,

    /// Send the log to this file or named pipe, as `PUT /logger` does (a pipe is opened without
    /// waiting for a reader). Example: --log-path /tmp/fc.log
    #[arg(long, value_name = "PATH")]
    pub log_path: Option<PathBuf>,

    /// The log level: Off, Error, Warning, Info, Debug or Trace, in any case (Firecracker's
    /// default: Info). Example: --level Debug
    #[arg(long, value_name = "LEVEL", value_parser = parse_level)]
    pub level: Option<LogLevel>,

    /// Log only messages from this module and those below it. Example: --module vmm::vcpu
    #[arg(long, value_name = "MODULE")]
    pub module: Option<String>,

    /// Show each log line's level.
    #[arg(long)]
    pub show_level: bool,

    /// Show each log line's source file and line.
    #[arg(long)]
    pub show_log_origin: bool,

    /// Write metrics to this file or named pipe, as `PUT /metrics` does (Firecracker's JSON lines,
    /// every 60 seconds and on `FlushMetrics`). Example: --metrics-path /tmp/fc-metrics
    #[arg(long, value_name = "PATH")]
    pub metrics_path: Option<PathBuf>,

    /// Give the guest Firecracker's boot-timer device: the guest writes 123 to it when it has
    /// booted, and the VMM logs the time since the start (`Guest-boot-time = ...`).
    #[arg(long)]
    pub boot_timer: bool,

    /// The largest API request body, in bytes (Firecracker's default: 51200).
    /// Example: --http-api-max-payload-size 102400
    #[arg(long, value_name = "BYTES", default_value_t = api::http::MAX_BODY_BYTES)]
    pub http_api_max_payload_size: usize,

    /// The most bytes the metadata store may hold (default: --http-api-max-payload-size).
    /// Example: --mmds-size-limit 102400
    #[arg(long, value_name = "BYTES")]
    pub mmds_size_limit: Option<usize>,

    /// Virtio devices on PCI (as --transport pci).
    #[arg(long)]
    pub enable_pci: bool,

    /// Run without seccomp filters (as --seccomp off): for debugging only.
    #[arg(long, conflicts_with = "seccomp_filter")]
    pub no_seccomp: bool,

    /// Refused: Kestrel cannot load a filter file compiled by Firecracker's seccompiler-bin. Its
    /// threads are not Firecracker's (a worker per device besides vmm, api and vcpu threads) and
    /// make other system calls, so Firecracker's filters would stop them; Kestrel installs its own
    /// per-thread filters (--seccomp on, the default).
    #[arg(long, value_name = "FILE")]
    pub seccomp_filter: Option<PathBuf>,

    /// Print Firecracker's version (the first line, `Firecracker v1.16.1`, as Kata Containers
    /// reads it) and Kestrel's, and exit.
    #[arg(long)]
    pub version: bool,

    /// Print the snapshot data format version and exit.
    #[arg(long)]
    pub snapshot_version: bool,

    /// Refused: Kestrel's snapshots are not Firecracker's, so their format versions are not
    /// comparable with Firecracker's.
    #[arg(long, value_name = "FILE")]
    pub describe_snapshot: Option<PathBuf>,
}

fn parse_level(text: &str) -> Result<LogLevel, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|_| format!("'{text}' is not one of Off, Error, Warning, Info, Debug, Trace"))
}

/// Whether the binary was started under Firecracker's name.
pub fn started_as_firecracker(argv0: Option<&OsStr>) -> bool {
    argv0.and_then(|arg| Path::new(arg).file_name()).is_some_and(|name| name == FIRECRACKER_NAME)
}

/// `--version`'s text: Kata Containers takes the second word of the first line as the version.
pub fn version_text() -> String {
    format!("Firecracker v{FIRECRACKER_VERSION}\nKestrel v{}\n", env!("CARGO_PKG_VERSION"))
}

/// Why an `--id` is refused (Firecracker's rule, which its jailer's also is).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InstanceIdError {
    #[error("invalid --id: it has {0} bytes; it must have 1 to 64")]
    Length(usize),
    #[error("invalid --id: '{0}' at position {1}; only letters, digits and '-' are allowed")]
    Character(char, usize),
}

/// Firecracker's check of `--id`: 1 to 64 bytes of alphanumeric characters and hyphens.
pub fn validate_instance_id(id: &str) -> Result<(), InstanceIdError> {
    if id.is_empty() || id.len() > 64 {
        return Err(InstanceIdError::Length(id.len()));
    }
    match id.chars().enumerate().find(|(_, c)| !(*c == '-' || c.is_alphanumeric())) {
        Some((position, c)) => Err(InstanceIdError::Character(c, position)),
        None => Ok(()),
    }
}

/// Runs the binary started as `firecracker`.
pub fn run(args: Vec<OsString>) -> ExitCode {
    let cli = match FirecrackerCli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(ARG_PARSING_STATUS) } else { ExitCode::SUCCESS };
        }
    };
    if !cli.vmm.fc.version {
        if let Err(e) = validate_instance_id(&cli.vmm.id) {
            report(format_args!("firecracker: error: {e}"));
            return ExitCode::from(ARG_PARSING_STATUS);
        }
    }
    crate::logging::init(tracing::level_filters::LevelFilter::WARN);
    crate::vmm_api::run_with_statuses(cli.vmm, firecracker_status)
}

/// Firecracker's exit status for how the VM ended: a guest reboot ends Firecracker with 0, as a
/// power-off does (the Go SDK's `Machine.Wait` reports any other status as an error); the rest
/// keep Kestrel's statuses.
fn firecracker_status(status: u8) -> u8 {
    if status == crate::exit_status::RESET {
        crate::exit_status::POWER_OFF
    } else {
        status
    }
}

/// `--version`, `--snapshot-version` and `--describe-snapshot`, which print (or refuse) and exit
/// rather than start a VMM; `None` for a command line that starts one.
pub fn informational(args: &FirecrackerArgs) -> Option<ExitCode> {
    if args.version {
        print!("{}", version_text());
    } else if args.snapshot_version {
        println!("v{}", vmm::snapshot::FORMAT_VERSION);
    } else if args.describe_snapshot.is_some() {
        report(format_args!("kestrel: error: {}", StartupError::DescribeSnapshot));
        return Some(ExitCode::from(crate::exit_status::ERROR));
    } else {
        return None;
    }
    Some(ExitCode::SUCCESS)
}

/// Why the flags or the config file cannot start the VMM.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: invalid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: the {section} section: {source}")]
    Section { path: PathBuf, section: &'static str, source: serde_json::Error },
    #[error("--seccomp-filter is not supported: Kestrel cannot use filters compiled for Firecracker's threads; it installs its own per-thread filters (see --seccomp)")]
    SeccompFilter,
    #[error("--describe-snapshot is not supported: Kestrel's snapshot files are not Firecracker's")]
    DescribeSnapshot,
}

fn read(path: &Path) -> Result<String, StartupError> {
    std::fs::read_to_string(path).map_err(|source| StartupError::Read { path: path.to_owned(), source })
}

/// A section of the config file that `PUT /logger` or `PUT /metrics` takes.
fn section<T: serde::de::DeserializeOwned>(
    path: &Path,
    section: &'static str,
    value: serde_json::Value,
) -> Result<T, StartupError> {
    serde_json::from_value(value).map_err(|source| StartupError::Section {
        path: path.to_owned(),
        section,
        source,
    })
}

/// The requests the flags and the config file make of the controller at the start, in order:
/// the logger and metrics flags first (so the file's sections, later, win), then the file's
/// sections in Firecracker's order of application, the metadata, and `InstanceStart` when there
/// is a config file. Each goes through the controller exactly as the API's request would.
pub fn startup_requests(args: &FirecrackerArgs) -> Result<Vec<VmmRequest>, StartupError> {
    let mut requests = Vec::new();
    let wants_logger = args.log_path.is_some()
        || args.level.is_some()
        || args.module.is_some()
        || args.show_level
        || args.show_log_origin;
    if wants_logger {
        requests.push(VmmRequest::PutLogger(Logger {
            log_path: args.log_path.as_ref().map(|p| p.to_string_lossy().into_owned()),
            level: args.level,
            show_level: Some(args.show_level),
            show_log_origin: Some(args.show_log_origin),
            module: args.module.clone(),
        }));
    }
    if let Some(path) = &args.metrics_path {
        requests.push(VmmRequest::PutMetrics(Metrics { metrics_path: path.to_string_lossy().into_owned() }));
    }
    if let Some(path) = &args.config_file {
        let text = read(path)?;
        let file: FullVmConfiguration = serde_json::from_str(&text)
            .map_err(|source| StartupError::Json { path: path.clone(), source })?;
        config_file_requests(path, file, &mut requests)?;
    }
    if let Some(path) = &args.metadata {
        let text = read(path)?;
        let data = serde_json::from_str(&text)
            .map_err(|source| StartupError::Json { path: path.clone(), source })?;
        requests.push(VmmRequest::PutMmds(data));
    }
    if args.config_file.is_some() {
        requests.push(VmmRequest::Action(ActionType::InstanceStart));
    }
    Ok(requests)
}

/// The config file's sections as API requests.
fn config_file_requests(
    path: &Path,
    file: FullVmConfiguration,
    requests: &mut Vec<VmmRequest>,
) -> Result<(), StartupError> {
    if let Some(logger) = file.logger {
        requests.push(VmmRequest::PutLogger(section(path, "logger", logger)?));
    }
    if let Some(metrics) = file.metrics {
        requests.push(VmmRequest::PutMetrics(section(path, "metrics", metrics)?));
    }
    if let Some(machine) = file.machine_config {
        requests.push(VmmRequest::PutMachineConfig(machine));
    }
    if let Some(boot) = file.boot_source {
        requests.push(VmmRequest::PutBootSource(boot));
    }
    for drive in file.drives {
        requests.push(VmmRequest::PutDrive { id: drive.drive_id.clone(), drive: Box::new(drive) });
    }
    for interface in file.network_interfaces {
        requests.push(VmmRequest::PutNetworkInterface {
            id: interface.iface_id.clone(),
            interface: Box::new(interface),
        });
    }
    if let Some(vsock) = file.vsock {
        requests.push(VmmRequest::PutVsock(vsock));
    }
    if let Some(balloon) = file.balloon {
        requests.push(VmmRequest::PutBalloon(balloon));
    }
    if let Some(entropy) = file.entropy {
        requests.push(VmmRequest::PutEntropy(entropy));
    }
    if let Some(mmds) = file.mmds_config {
        requests.push(VmmRequest::PutMmdsConfig(mmds));
    }
    if let Some(template) = file.cpu_config {
        requests.push(VmmRequest::PutCpuConfig(template));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn a_reboot_ends_firecracker_with_0_and_other_statuses_stay() {
        use crate::exit_status::{ERROR, POWER_OFF, RESET, TRIPLE_FAULT};
        assert_eq!(firecracker_status(RESET), 0);
        for status in [POWER_OFF, ERROR, TRIPLE_FAULT, 143] {
            assert_eq!(firecracker_status(status), status);
        }
    }

    fn parse(args: &[&str]) -> Result<FirecrackerCli, clap::Error> {
        FirecrackerCli::try_parse_from(std::iter::once("firecracker").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_definition_is_consistent() {
        FirecrackerCli::command().debug_assert();
    }

    #[test]
    fn every_firecracker_flag_is_accepted() {
        // Firecracker v1.16.1's flags (src/firecracker/src/main.rs), each with a value if it takes one.
        let table: &[&[&str]] = &[
            &["--api-sock", "/tmp/x.sock"],
            &["--id", "vm-1"],
            &["--seccomp-filter", "/tmp/filter.bpf"],
            &["--no-seccomp"],
            &["--start-time-us", "1"],
            &["--start-time-cpu-us", "2"],
            &["--parent-cpu-time-us", "3"],
            &["--config-file", "/tmp/vm.json"],
            &["--metadata", "/tmp/md.json"],
            &["--no-api", "--config-file", "/tmp/vm.json"],
            &["--log-path", "/tmp/log"],
            &["--level", "Warning"],
            &["--module", "vmm"],
            &["--show-level"],
            &["--show-log-origin"],
            &["--metrics-path", "/tmp/metrics"],
            &["--boot-timer"],
            &["--version"],
            &["--snapshot-version"],
            &["--describe-snapshot", "/tmp/state"],
            &["--http-api-max-payload-size", "1000"],
            &["--mmds-size-limit", "2000"],
            &["--enable-pci"],
        ];
        for args in table {
            if let Err(e) = parse(args) {
                panic!("{args:?}: {e}");
            }
        }
        let all = parse(&[
            "--api-sock",
            "/tmp/a",
            "--id",
            "x",
            "--config-file",
            "/c",
            "--no-api",
            "--metadata",
            "/m",
            "--log-path",
            "/l",
            "--level",
            "debug",
            "--module",
            "api",
            "--show-level",
            "--show-log-origin",
            "--metrics-path",
            "/p",
            "--boot-timer",
            "--http-api-max-payload-size",
            "7",
            "--mmds-size-limit",
            "8",
            "--enable-pci",
            "--no-seccomp",
            "--start-time-us",
            "1",
        ])
        .unwrap()
        .vmm;
        assert_eq!(all.api_sock, PathBuf::from("/tmp/a"));
        assert_eq!(all.id, "x");
        let fc = &all.fc;
        assert_eq!(fc.config_file.as_deref(), Some(Path::new("/c")));
        assert!(
            fc.no_api
                && fc.show_level
                && fc.show_log_origin
                && fc.boot_timer
                && fc.enable_pci
                && fc.no_seccomp
        );
        assert_eq!(fc.level, Some(LogLevel::Debug));
        assert_eq!((fc.http_api_max_payload_size, fc.mmds_size_limit), (7, Some(8)));
    }

    #[test]
    fn defaults_are_firecracker_s() {
        let vmm = parse(&[]).unwrap().vmm;
        assert_eq!(vmm.api_sock, PathBuf::from("/run/firecracker.socket"));
        assert_eq!(vmm.id, "anonymous-instance");
        assert_eq!(vmm.fc.http_api_max_payload_size, 51200);
        assert_eq!(vmm.fc.mmds_size_limit, None);
    }

    #[test]
    fn bad_command_lines_are_refused() {
        for args in [
            &["--bogus"][..],
            &["--no-api"],
            &["--no-seccomp", "--seccomp-filter", "/f"],
            &["--level", "loud"],
            &["--api-sock"],
            &["--id", "a", "--id", "b"],
            &["run"],
            &["--http-api-max-payload-size", "-1"],
        ] {
            assert!(parse(args).is_err(), "{args:?} was accepted");
        }
    }

    #[test]
    fn levels_take_firecracker_s_names_in_any_case() {
        for (text, level) in [
            ("Off", LogLevel::Off),
            ("ERROR", LogLevel::Error),
            ("warning", LogLevel::Warning),
            ("Trace", LogLevel::Trace),
        ] {
            assert_eq!(parse_level(text), Ok(level));
        }
    }

    #[test]
    fn the_binary_name_selects_firecracker_s_command_line() {
        assert!(started_as_firecracker(Some(OsStr::new("/usr/bin/firecracker"))));
        assert!(started_as_firecracker(Some(OsStr::new("firecracker"))));
        assert!(!started_as_firecracker(Some(OsStr::new("/usr/bin/kestrel"))));
        assert!(!started_as_firecracker(Some(OsStr::new("firecracker-v1.16"))));
        assert!(!started_as_firecracker(None));
    }

    #[test]
    fn the_version_s_first_line_reads_as_kata_reads_it() {
        let text = version_text();
        let first = text.lines().next().unwrap();
        assert_eq!(first.split(' ').nth(1), Some("v1.16.1"));
        assert!(text.contains(env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn instance_ids_follow_firecracker_s_rule() {
        assert_eq!(validate_instance_id("vm-1"), Ok(()));
        assert_eq!(validate_instance_id(&"a".repeat(64)), Ok(()));
        assert_eq!(validate_instance_id(""), Err(InstanceIdError::Length(0)));
        assert_eq!(validate_instance_id(&"a".repeat(65)), Err(InstanceIdError::Length(65)));
        assert_eq!(validate_instance_id("vm_1"), Err(InstanceIdError::Character('_', 2)));
        assert_eq!(validate_instance_id("../x"), Err(InstanceIdError::Character('.', 0)));
    }

    #[test]
    fn the_config_file_becomes_the_api_s_requests() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("vm.json");
        std::fs::write(
            &config,
            r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
                "logger": {"log_path": "/tmp/l", "level": "Debug"}, "metrics": {"metrics_path": "/tmp/m"},
                "drives": [{"drive_id": "root", "path_on_host": "/d", "is_root_device": true, "is_read_only": false}],
                "mmds-config": {"network_interfaces": ["eth0"]},
                "cpu-config": {"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0, "modifiers": []}]}}"#,
        )
        .unwrap();
        let metadata = dir.path().join("md.json");
        std::fs::write(&metadata, r#"{"latest": {"meta-data": {"ami-id": "x"}}}"#).unwrap();
        let args = FirecrackerArgs {
            config_file: Some(config.clone()),
            metadata: Some(metadata),
            level: Some(LogLevel::Info),
            ..Default::default()
        };
        let names: Vec<String> = startup_requests(&args)
            .unwrap()
            .iter()
            .map(|r| format!("{r:?}").split(['(', ' ']).next().unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "PutLogger",
                "PutLogger",
                "PutMetrics",
                "PutMachineConfig",
                "PutBootSource",
                "PutDrive",
                "PutMmdsConfig",
                "PutCpuConfig",
                "PutMmds",
                "Action"
            ]
        );
        std::fs::write(&config, r#"{"logger": {"log_path": 3}}"#).unwrap();
        let error = startup_requests(&args).unwrap_err().to_string();
        assert!(error.contains("the logger section"), "{error}");
        std::fs::write(&config, r#"{"boot-source": "#).unwrap();
        assert!(startup_requests(&args).unwrap_err().to_string().contains("invalid JSON"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whatever a config file holds (JSON-ish text with the file's section names, or any
        /// bytes), it becomes requests or a clear error, never a panic.
        #[test]
        fn any_config_file_is_read_or_refused(
            sections in proptest::collection::vec(
                (
                    "(boot-source|machine-config|drives|network-interfaces|vsock|balloon|entropy|logger|metrics|mmds-config|cpu-config|x)",
                    "(\\{\\}|\\[\\]|null|1|\"a\"|\\{\"level\": \"Debug\"\\}|\\{\"metrics_path\": 3\\}|\\[\\{\"drive_id\": \"a\"\\}\\])",
                ),
                0..6,
            ),
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("vm.json");
            let body = sections.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect::<Vec<_>>().join(", ");
            for text in [format!("{{{body}}}").into_bytes(), noise.clone()] {
                std::fs::write(&path, &text).unwrap();
                let args = FirecrackerArgs { config_file: Some(path.clone()), ..Default::default() };
                if let Ok(requests) = startup_requests(&args) {
                    proptest::prop_assert!(matches!(
                        requests.last(),
                        Some(VmmRequest::Action(ActionType::InstanceStart))
                    ));
                }
            }
        }

        /// Any --id is accepted exactly when Firecracker's rule says so, without a panic.
        #[test]
        fn any_id_is_checked_by_firecracker_s_rule(id in "\\PC{0,70}") {
            let valid = (1..=64).contains(&id.len()) && id.chars().all(|c| c == '-' || c.is_alphanumeric());
            proptest::prop_assert_eq!(validate_instance_id(&id).is_ok(), valid);
        }
    }

    #[test]
    fn no_flags_no_requests() {
        assert!(startup_requests(&FirecrackerArgs {
            http_api_max_payload_size: 51200,
            ..Default::default()
        })
        .unwrap()
        .is_empty());
    }
}
