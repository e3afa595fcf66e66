//! `kestrel pool …` and `kestrel vol …`: the daemon's storage pools from the command line.

use std::process::ExitCode;

use clap::Args;

#[derive(Args, Debug)]
pub struct PoolArgs {}

#[derive(Args, Debug)]
pub struct VolArgs {}

pub fn run_pool(_args: PoolArgs) -> ExitCode {
    ExitCode::from(crate::exit_status::ERROR)
}

pub fn run_vol(_args: VolArgs) -> ExitCode {
    ExitCode::from(crate::exit_status::ERROR)
}
