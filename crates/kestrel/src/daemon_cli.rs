//! `kestrel daemon`: the manager daemon's command line.
//!
//! Who may use the daemon (also in `kestrel daemon --help`, from the `Daemon` command's doc in
//! cli.rs): its socket is 0660 and belongs to group `kestrel` when that group exists, and that
//! group is root-equivalent, because the root daemon opens whatever host paths, taps and pool
//! directories a client names. The daemon never creates the group (manager::daemon::SOCKET_GROUP).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::{exit_status, report};

/// `kestrel daemon`'s flags. Its socket's group (`kestrel`) is root-equivalent: see the module doc.
#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// Stay in the foreground (what systemd and tests want). Without it the daemon still runs in
    /// the foreground today; the flag is accepted for the systemd unit's sake.
    #[arg(long)]
    pub foreground: bool,

    /// Where the store, consoles and saved states live (default /var/lib/kestrel; the
    /// KESTREL_STATE_DIR environment variable too). Example: --state-dir /tmp/kestrel
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// The API's Unix socket (default /run/kestrel/kestrel.sock; KESTREL_SOCKET too).
    /// Example: --socket /tmp/kestrel.sock
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

pub fn run(args: DaemonArgs) -> ExitCode {
    let paths = manager::paths::Paths::resolve(args.state_dir, args.socket);
    let kestrel_binary = match std::env::current_exe() {
        Ok(path) => path,
        Err(e) => {
            report(format_args!("kestrel: error: cannot find the kestrel binary: {e}"));
            return ExitCode::from(exit_status::ERROR);
        }
    };
    match manager::daemon::run(manager::daemon::DaemonOptions { paths, kestrel_binary }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(format_args!("kestrel daemon: error: {e}"));
            ExitCode::from(exit_status::ERROR)
        }
    }
}
