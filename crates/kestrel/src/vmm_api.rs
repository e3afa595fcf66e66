//! `kestrel vmm --api-sock PATH`: an unconfigured VMM driven by its Firecracker-compatible API, and
//! `kestrel run --config FILE`, which reads the same descriptions from a file.
//!
//! The API serves on its own threads and turns each request into a typed request for the VMM's
//! controller, which runs on the main thread: before the start it waits for requests; once a VM is
//! built (a failure goes back to the client as a 400) the main thread runs it, and the VM's event
//! loop serves the controller beside the VM's own events (signals, console, vCPU ends).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use api::router::{RequestCounter, Router};
use model::config::{SerialConfig, VirtioTransport, VmConfig};
use model::control::{ControlError, VmmRequest, VmmResponse};
use model::resources::{ConfigFileError, VmResources};
use vmm::control::{ControlMessage, Controller, ControllerSettings, EngineError, Launcher, MetricsControl};

use crate::firecracker_cli::{self, StartupError};
use crate::metrics::{MetricsHandle, MetricsWriter};
use crate::{cli, exit_status, logging, report, write_last_metrics};

/// Why a `--config` file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileReadError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Invalid { path: PathBuf, source: ConfigFileError },
}

/// `kestrel run --config FILE`.
pub fn load_config_file(
    path: &Path,
    serial: SerialConfig,
    transport: VirtioTransport,
) -> Result<VmConfig, ConfigFileReadError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigFileReadError::Read { path: path.to_owned(), source })?;
    let invalid = |source| ConfigFileReadError::Invalid { path: path.to_owned(), source };
    let resources = VmResources::from_json(&text).map_err(invalid)?;
    let mut config = resources.to_vm_config(serial, transport).map_err(|e| invalid(e.into()))?;
    if let Some(mmds) = resources.mmds_config() {
        // No API to fill it: the cards answer from an empty store (404 for every path).
        config.attach_mmds(mmds, &model::mmds::MmdsStore::new(vmm::control::DEFAULT_MMDS_SIZE_LIMIT));
    }
    Ok(config)
}

pub fn run(args: cli::VmmArgs) -> ExitCode {
    run_with_statuses(args, |status| status)
}

/// [`run`], with the exit status passed through `statuses` (the binary started as `firecracker`
/// reports Firecracker's statuses).
pub fn run_with_statuses(mut args: cli::VmmArgs, statuses: fn(u8) -> u8) -> ExitCode {
    if let Some(status) = firecracker_cli::informational(&args.fc) {
        return status;
    }
    // Opened before any confinement; written as the process exits (see `ExitStatusFile`).
    let status_file = match args.exit_status_file.take().map(|path| ExitStatusFile::open(&path)).transpose() {
        Ok(file) => file,
        Err(e) => {
            report(format_args!("kestrel: error: {e}"));
            return ExitCode::from(exit_status::ERROR);
        }
    };
    let status = statuses(run_api(args));
    if let Some(file) = status_file {
        file.write(status);
    }
    ExitCode::from(status)
}

/// `--exit-status-file`: the status, in decimal, written once as the VMM exits, so a manager
/// that adopted the VMM (and cannot `waitid` for it) learns how it ended.
struct ExitStatusFile(std::fs::File);

impl ExitStatusFile {
    fn open(path: &Path) -> Result<ExitStatusFile, std::io::Error> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map(ExitStatusFile)
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))
    }

    fn write(mut self, status: u8) {
        use std::io::Write;
        if let Err(e) = writeln!(self.0, "{status}") {
            report(format_args!("kestrel: cannot write the exit status: {e}"));
        }
    }
}

fn run_api(mut args: cli::VmmArgs) -> u8 {
    log_jailer_start(&args);
    if args.fc.seccomp_filter.is_some() {
        report(format_args!("kestrel: error: {}", StartupError::SeccompFilter));
        return exit_status::ERROR;
    }
    if args.fc.no_seccomp {
        args.seccomp.setting = cli::SeccompSetting::Off;
    }
    if args.fc.enable_pci {
        args.transport = VirtioTransport::Pci;
    }
    logging::set_instance_id(&args.id);
    // The flags' and the config file's requests, read before anything starts.
    let startup = match firecracker_cli::startup_requests(&args.fc) {
        Ok(requests) => requests,
        Err(e) => {
            report(format_args!("kestrel: error: {e}"));
            return exit_status::ERROR;
        }
    };
    // Before any thread exists: binding sets the process umask for a moment.
    let listener = match (!args.fc.no_api).then(|| api::server::bind(&args.api_sock)).transpose() {
        Ok(listener) => listener,
        Err(e) => {
            report(format_args!("kestrel: error: {e}"));
            return exit_status::ERROR;
        }
    };
    // After the bind (which wants no other thread), before any thread of the VMM's own.
    if crate::start_seccomp(args.seccomp).is_err() {
        return exit_status::ERROR;
    }
    let (sender, receiver) = match vmm::control::channel() {
        Ok(channel) => channel,
        Err(e) => {
            report(format_args!("kestrel: error: cannot set up the control channel: {e}"));
            return exit_status::ERROR;
        }
    };
    let metrics = MetricsWriter::new();
    let settings = ControllerSettings {
        id: args.id,
        serial: args.serial,
        transport: args.transport,
        metrics: Some(Arc::new(MetricsHandle(metrics.clone())) as Arc<dyn MetricsControl>),
        logger: Some(Box::new(|request| -> Result<(), EngineError> {
            let settings = api::logger::LoggerSettings::open(request)?;
            Ok(logging::apply(settings)?)
        })),
        // Firecracker's default: the API's payload limit.
        mmds_size_limit: args.fc.mmds_size_limit.unwrap_or(args.fc.http_api_max_payload_size),
    };
    // Landlock: the VM's rules are applied on this (main) thread just before the VM is built or
    // restored; the API thread confines itself to nothing as it starts (see crate::landlock).
    let confinement = args.landlock.confinement();
    let options = vmm::builder::BuildOptions { boot_timer: args.fc.boot_timer };
    let launcher = confinement.launcher().with_build_options(options);
    let mut controller = Controller::new(settings, launcher, receiver);
    let sender = Arc::new(sender);
    if let Some(listener) = listener {
        let router = Router::new(sender.clone(), Some(metrics.clone() as Arc<dyn RequestCounter>));
        let limits =
            api::listener::Limits { max_body_bytes: args.fc.http_api_max_payload_size, ..Default::default() };
        if let Err(e) = start_api_thread(listener, router, confinement, limits) {
            report(format_args!("kestrel: error: cannot start the API thread: {e}"));
            return exit_status::ERROR;
        }
        tracing::info!("API listening on {}", args.api_sock.display());
    }
    // As Firecracker: the API serves while the flags' and the file's requests are made here
    // (its clients' requests wait for them), and the VM starts if the file configured one.
    for request in startup {
        let logger = matches!(request, VmmRequest::PutLogger(_));
        if let Err(e) = dispatch_here(&mut controller, request) {
            report(format_args!("kestrel: error: {e}"));
            return exit_status::ERROR;
        }
        if logger {
            // Firecracker's first line in its configured log.
            tracing::info!(
                "Running Firecracker v{} (Kestrel v{})",
                model::api::FIRECRACKER_VERSION,
                env!("CARGO_PKG_VERSION")
            );
        }
    }
    loop {
        if let Some(vm) = controller.launcher_mut().take_built() {
            metrics.attach_vm(vm.metrics());
            let outcome = vm.run_with(Some(&mut controller));
            write_last_metrics(&metrics);
            // With --no-api, the sender kept the control channel open until here.
            drop(sender);
            return status_for(outcome);
        }
        if !controller.wait_and_handle() {
            break;
        }
    }
    report(format_args!("kestrel: error: the API thread ended"));
    exit_status::ERROR
}

/// Answers `request` on this (the control) thread, as if the API had sent it.
fn dispatch_here<L: Launcher>(
    controller: &mut Controller<L>,
    request: VmmRequest,
) -> Result<VmmResponse, ControlError> {
    let (reply, answer) = std::sync::mpsc::channel();
    controller.handle_message(ControlMessage::Request(request, reply));
    answer.recv().map_err(|_| ControlError::VmmGone)?
}

/// The API's accepting thread, under the API's seccomp filter and Landlock rules.
fn start_api_thread(
    listener: std::os::unix::net::UnixListener,
    router: Router,
    confinement: crate::landlock::Confinement,
    limits: api::listener::Limits,
) -> std::io::Result<()> {
    let builder = std::thread::Builder::new().name("fc_api".into());
    jail::seccomp::spawn(jail::seccomp::ThreadRole::Api, builder, move || {
        // The main thread takes SIGINT/SIGTERM/SIGHUP once the VM runs; API threads never do.
        block_termination_signals();
        if let Err(e) = confinement.confine_api_thread() {
            // The main thread then reports that the API thread ended, and exits.
            report(format_args!("kestrel: error: the API thread: {e}"));
            return;
        }
        api::listener::serve_with(listener, Arc::new(router), limits);
    })
    .map(drop)
}

/// The exit status for how the VM ended, reported as `kestrel run` reports it.
pub(crate) fn status_for(outcome: vmm::Result<vmm::outcome::VmOutcome>) -> u8 {
    match outcome {
        Ok(outcome) => {
            if outcome != vmm::outcome::VmOutcome::PowerOff {
                report(format_args!("kestrel: {outcome}"));
            }
            exit_status::for_outcome(&outcome)
        }
        Err(e) => {
            report(format_args!("kestrel: error: {e}"));
            exit_status::ERROR
        }
    }
}

/// The time from `kestrel jailer`'s start to this VMM's, when the jailer passed its start times.
fn log_jailer_start(args: &cli::VmmArgs) {
    if let Some(start) = args.start_time_us {
        let now = jail::jailer::exec::monotonic_us();
        tracing::debug!(
            "started {} us after the jailer (jailer CPU time {} us)",
            now.saturating_sub(start),
            args.parent_cpu_time_us.unwrap_or(0)
        );
    }
}

/// Blocks the signals the VM's event loop handles in the calling thread (and the threads it
/// starts), so the kernel delivers them to the main thread.
fn block_termination_signals() {
    // SAFETY: sigset_t is plain data that sigemptyset initialises before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame; these calls only write to it and to
    // this thread's signal mask.
    unsafe {
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}
