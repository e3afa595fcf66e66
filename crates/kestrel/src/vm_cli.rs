//! `kestrel vm …` and `kestrel completions`: the daemon's VMs from the command line.

use std::process::ExitCode;

use clap::Args;

#[derive(Args, Debug)]
pub struct VmArgs {}

#[derive(Args, Debug)]
pub struct CompletionsArgs {}

pub fn run(_args: VmArgs) -> ExitCode {
    ExitCode::from(crate::exit_status::ERROR)
}

pub fn completions(_args: CompletionsArgs) -> ExitCode {
    ExitCode::from(crate::exit_status::ERROR)
}
