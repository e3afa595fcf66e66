//! `kestrel vmm --api-sock PATH`: an unconfigured VMM driven by its Firecracker-compatible API, and
//! `kestrel run --config FILE`, which reads the same descriptions from a file.
//!
//! The API serves on its own threads; `InstanceStart` hands the finished configuration to the main
//! thread, which builds the VM (a failure goes back to the client as a 400) and runs it there, so
//! the VM's termination-signal handling works as for `kestrel run` while the API keeps answering.

use std::path::Path;
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use api::resources::VmResources;
use api::server::{Api, Launch, Starter};
use vmm::config::{SerialConfig, VirtioTransport, VmConfig};
use vmm::vm::VmHandle;

use crate::{cli, exit_for, exit_status, logging, report, write_last_metrics};

/// A start request from the API thread, and where to send the built VM's handle (or why it could
/// not be built).
type StartRequest = (Launch, mpsc::Sender<Result<VmHandle, String>>);

/// `kestrel run --config FILE`.
pub fn load_config_file(
    path: &Path,
    serial: SerialConfig,
    transport: VirtioTransport,
) -> Result<VmConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let resources = VmResources::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    resources.to_vm_config(serial, transport).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn run(args: cli::VmmArgs) -> ExitCode {
    // Before any thread exists: binding sets the process umask for a moment.
    let listener = match api::server::bind(&args.api_sock) {
        Ok(listener) => listener,
        Err(e) => {
            report(format_args!("kestrel: error: {e}"));
            return ExitCode::from(exit_status::ERROR);
        }
    };
    let (start_tx, start_rx) = mpsc::channel::<StartRequest>();
    let start_tx = Mutex::new(start_tx);
    let starter: Starter = Box::new(move |launch| {
        let (reply_tx, reply_rx) = mpsc::channel();
        let sent = start_tx.lock().map_err(|_| "the VMM is gone".to_owned())?.send((launch, reply_tx));
        sent.map_err(|_| "the VMM is gone".to_owned())?;
        let handle = reply_rx.recv().map_err(|_| "the VMM is gone".to_owned())??;
        Ok(Box::new(handle) as Box<dyn api::server::VmControl>)
    });
    let mut api = Api::new(args.id, args.serial, args.transport, starter);
    api.set_logger_control(Box::new(logging::apply));
    let metrics = api.metrics();
    let api = Arc::new(Mutex::new(api));
    let spawned = std::thread::Builder::new().name("kestrel-api".into()).spawn(move || {
        // The main thread takes SIGINT/SIGTERM/SIGHUP once the VM runs; API threads never do.
        block_termination_signals();
        api::listener::serve(listener, api);
    });
    if let Err(e) = spawned {
        report(format_args!("kestrel: error: cannot start the API thread: {e}"));
        return ExitCode::from(exit_status::ERROR);
    }
    tracing::info!("API listening on {}", args.api_sock.display());
    while let Ok((launch, reply)) = start_rx.recv() {
        match launch_vm(&launch) {
            Ok(vm) => {
                metrics.attach_vm(vm.metrics());
                // The API pauses, resumes and snapshots the VM through its handle while this
                // thread runs it.
                let _ = reply.send(Ok(vm.handle()));
                let outcome = vm.run();
                write_last_metrics(&metrics);
                return exit_for(outcome);
            }
            Err(e) => {
                tracing::warn!("starting the VM failed: {e}");
                let _ = reply.send(Err(e.to_string()));
            }
        }
    }
    report(format_args!("kestrel: error: the API thread ended"));
    ExitCode::from(exit_status::ERROR)
}

/// Builds the VM a launch asks for; a restored VM that is not to resume is paused before it runs.
fn launch_vm(launch: &Launch) -> vmm::Result<vmm::vm::Vm> {
    match launch {
        Launch::Boot(config) => vmm::builder::build(config),
        Launch::Restore { state_path, memory_path, options, resume } => {
            let vm = vmm::builder::restore(state_path, memory_path, options)?;
            if !resume {
                // Before `run`, a pause holds the vCPUs before they first enter the guest.
                vm.handle().pause()?;
            }
            Ok(vm)
        }
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
