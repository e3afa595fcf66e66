//! `kestrel net …`: the daemon's networks from the command line.

use std::process::ExitCode;

use clap::Args;

#[derive(Args, Debug)]
pub struct NetArgs {}

pub fn run(_args: NetArgs) -> ExitCode {
    ExitCode::from(crate::exit_status::ERROR)
}
