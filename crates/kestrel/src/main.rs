//! The `kestrel` command: one binary, one subcommand per job.

mod cli;
mod device_options;
mod exit_status;
mod size;
mod vmm_api;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use tracing::level_filters::LevelFilter;

fn main() -> ExitCode {
    // No exit path may leave the user's terminal in raw mode, not even a bug.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        vmm::console::restore_terminal();
        default_hook(info);
    }));

    let cli = cli::Cli::parse();
    init_logging(cli.log_level);
    match cli.command {
        cli::Command::Run(args) => run(args),
        cli::Command::Vmm(args) => vmm_api::run(args),
    }
}

fn run(mut args: cli::RunArgs) -> ExitCode {
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
    run_config(&config)
}

/// Builds and runs a VM, and turns how it ended into the process's exit status.
fn run_config(config: &vmm::config::VmConfig) -> ExitCode {
    let outcome = vmm::builder::build(config).and_then(|vm| vm.run());
    exit_for(outcome)
}

fn exit_for(outcome: vmm::Result<vmm::outcome::VmOutcome>) -> ExitCode {
    match outcome {
        Ok(outcome) => {
            if outcome != vmm::outcome::VmOutcome::PowerOff {
                report(format_args!("kestrel: {outcome}"));
            }
            ExitCode::from(exit_status::for_outcome(&outcome))
        }
        Err(e) => {
            report(format_args!("kestrel: error: {e}"));
            ExitCode::from(exit_status::ERROR)
        }
    }
}

/// One line on stderr. A closed stderr (the reader went away) must not turn into a panic: the exit
/// status still tells the outcome.
fn report(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Stderr for log lines, best effort: a failed write is dropped instead of reported, because
/// tracing-subscriber reports it with `eprintln!`, which panics when stderr is a closed pipe.
struct BestEffortStderr;

impl Write for BestEffortStderr {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        Ok(std::io::stderr().write(buffer).unwrap_or(buffer.len()))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

fn init_logging(level: LevelFilter) {
    // KESTREL_LOG (a level name) overrides the flag, for runs started by other programs.
    let level = std::env::var("KESTREL_LOG").ok().and_then(|l| l.parse().ok()).unwrap_or(level);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(|| BestEffortStderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .init();
}
