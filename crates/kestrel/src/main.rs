//! The `kestrel` command: one binary, one subcommand per job.

#[cfg(test)]
mod api_tests;
mod cli;
mod daemon_cli;
mod device_options;
mod exit_status;
mod firecracker_cli;
mod image_cli;
mod jailer_cli;
mod landlock;
mod logging;
mod manager_client;
mod metrics;
mod net_cli;
mod placement_options;
mod pool_cli;
mod size;
mod table;
mod vm_cli;
mod vmm_api;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use metrics::MetricsWriter;

fn main() -> ExitCode {
    // No exit path may leave the user's terminal in raw mode, not even a bug.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // The message first: a thread whose seccomp filter does not allow the terminal ioctl
        // (a device worker, a vCPU) stops with status 159 at the restore, and the panic must
        // still have been reported.
        default_hook(info);
        vmm::console::restore_terminal();
    }));

    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if firecracker_cli::started_as_firecracker(args.first().map(|arg| arg.as_os_str())) {
        return firecracker_cli::run(args);
    }
    let cli = cli::Cli::parse_from(jailer_cli::args_with_subcommand(args.into_iter()));
    logging::init(cli.log_level);
    match cli.command {
        cli::Command::Run(args) => run(args),
        cli::Command::Vmm(args) => vmm_api::run(args),
        cli::Command::Image(args) => image_cli::run(args),
        cli::Command::Jailer(args) => jailer_cli::run(args),
        cli::Command::Daemon(args) => daemon_cli::run(args),
        cli::Command::Vm(args) => vm_cli::run(args),
        cli::Command::Completions(args) => vm_cli::completions(args),
        cli::Command::Net(args) => net_cli::run(args),
        cli::Command::Pool(args) => pool_cli::run_pool(args),
        cli::Command::Vol(args) => pool_cli::run_vol(args),
    }
}

fn run(mut args: cli::RunArgs) -> ExitCode {
    if let Err(status) = start_seccomp(args.seccomp) {
        return status;
    }
    let metrics_path = args.metrics_path.take();
    let confinement = args.landlock.confinement().with_output(metrics_path.as_deref());
    let config = match args.config.take() {
        Some(path) => match vmm_api::load_config_file(&path, args.serial.clone(), args.transport) {
            Ok(config) => config,
            Err(e) => {
                report(format_args!("kestrel: error: {e}"));
                return ExitCode::from(exit_status::ERROR);
            }
        },
        None => args.into_config(),
    };
    if let Err(e) = config.validate() {
        report(format_args!("kestrel: error: {e}"));
        return ExitCode::from(exit_status::ERROR);
    }
    run_config(&config, metrics_path.as_deref(), &confinement)
}

/// Builds and runs a VM, and turns how it ended into the process's exit status. With a metrics
/// path, the VM's metrics go there periodically and once more at the end.
fn run_config(
    config: &vmm::config::VmConfig,
    metrics_path: Option<&Path>,
    confinement: &landlock::Confinement,
) -> ExitCode {
    // Before the metrics thread and the VM's threads start, so that they are all confined.
    if let Err(e) = confinement.confine(config, vmm::control::BuildOrigin::Boot) {
        report(format_args!("kestrel: error: {e}"));
        return ExitCode::from(exit_status::ERROR);
    }
    let metrics = MetricsWriter::new();
    if let Some(path) = metrics_path {
        if let Err(e) = metrics.init(path) {
            report(format_args!("kestrel: error: {e}"));
            return ExitCode::from(exit_status::ERROR);
        }
    }
    let outcome = vmm::builder::build(config).and_then(|vm| {
        metrics.attach_vm(vm.metrics());
        vm.run()
    });
    write_last_metrics(&metrics);
    exit_for(outcome)
}

/// The metrics line written as the VMM exits, with the counts since the previous one.
fn write_last_metrics(metrics: &MetricsWriter) {
    if let Err(e) = metrics.flush() {
        tracing::warn!("{e}");
    }
}

/// The one mapping from outcome to exit status lives in `vmm_api::status_for`.
fn exit_for(outcome: vmm::Result<vmm::outcome::VmOutcome>) -> ExitCode {
    ExitCode::from(vmm_api::status_for(outcome))
}

/// Sets the process's seccomp mode (before the VMM starts any thread of its own). With filters
/// off it says so loudly: that is for debugging only.
fn start_seccomp(args: cli::SeccompArgs) -> Result<(), ExitCode> {
    let mode = match args.setting {
        cli::SeccompSetting::On => jail::seccomp::Mode::Enforce,
        cli::SeccompSetting::Off => {
            tracing::warn!(
                "SECCOMP IS OFF (--seccomp off): the VMM's threads run without filters; for debugging only"
            );
            jail::seccomp::Mode::Off
        }
    };
    jail::seccomp::set_mode(mode).map_err(|e| {
        report(format_args!("kestrel: error: {e}"));
        ExitCode::from(exit_status::ERROR)
    })
}

/// One line on stderr. A closed stderr (the reader went away) must not turn into a panic: the exit
/// status still tells the outcome.
fn report(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "{line}");
}
