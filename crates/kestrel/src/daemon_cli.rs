//! `kestrel daemon`: the manager daemon's command line, and `kestrel daemon web-token`.
//!
//! Who may use the daemon (also in `kestrel daemon --help`, from the `Daemon` command's doc in
//! cli.rs): its socket is 0660 and belongs to group `kestrel` when that group exists, and that
//! group is root-equivalent, because the root daemon opens whatever host paths, taps and pool
//! directories a client names. The daemon never creates the group (manager::daemon::SOCKET_GROUP).
//! The same holds for whoever logs in to the browser console (`--web`): a login token is made
//! only over the socket, by its users.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use hyper::Method;
use model::manager::web::{WebToken, WebTokensRevoked};

use crate::manager_client::{Client, ClientError};
use crate::table::{self, OutputArgs};
use crate::{exit_status, report};

/// `kestrel daemon`'s flags. Its socket's group (`kestrel`) is root-equivalent: see the module doc.
// `args_conflicts_with_subcommands`: `kestrel daemon --foreground …` runs the daemon, while
// `kestrel daemon web-token` is a client command with flags of its own.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DaemonArgs {
    #[command(subcommand)]
    pub command: Option<DaemonCommand>,

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

    /// Serve the browser console over HTTPS on ADDR:PORT (off by default). A port alone
    /// (`8443` or `:8443`) binds 127.0.0.1; another address must be named and is logged as a
    /// warning, since whoever logs in controls the host's VMs. Port 0 picks a free port (the log
    /// says which). Log in with a token from `kestrel daemon web-token`.
    /// Example: --web 127.0.0.1:8443
    #[arg(long, value_name = "ADDR:PORT", value_parser = manager::web::parse_addr)]
    pub web: Option<SocketAddr>,

    /// The console's certificate chain (PEM, leaf first), with --web-key. Without them the
    /// daemon makes a self-signed one on its first start (<state-dir>/web/cert.pem) and keeps it.
    /// Example: --web-cert /etc/kestrel/cert.pem
    #[arg(long, value_name = "PEM", requires_all = ["web", "web_key"])]
    pub web_cert: Option<PathBuf>,

    /// The private key of --web-cert (PEM). Example: --web-key /etc/kestrel/key.pem
    #[arg(long, value_name = "PEM", requires_all = ["web", "web_cert"])]
    pub web_key: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum DaemonCommand {
    /// Make a login token for the browser console (`--web`), printed once: the daemon keeps only
    /// its hash. `--revoke-all` forgets every token and logs every browser out.
    #[command(after_help = "Examples:\n  \
        kestrel daemon web-token\n  \
        kestrel daemon web-token --json\n  \
        kestrel daemon web-token --revoke-all")]
    WebToken(WebTokenArgs),
}

#[derive(Args, Debug)]
pub struct WebTokenArgs {
    /// Forget every token and end every web session instead of making a token.
    #[arg(long)]
    revoke_all: bool,

    /// The daemon's API socket (default: $KESTREL_SOCKET, else /run/kestrel/kestrel.sock).
    /// Example: --socket /tmp/kestrel.sock
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,

    #[command(flatten)]
    output: OutputArgs,
}

pub fn run(args: DaemonArgs) -> ExitCode {
    if let Some(DaemonCommand::WebToken(args)) = args.command {
        return web_token(args);
    }
    let paths = manager::paths::Paths::resolve(args.state_dir, args.socket);
    let kestrel_binary = match std::env::current_exe() {
        Ok(path) => path,
        Err(e) => {
            report(format_args!("kestrel: error: cannot find the kestrel binary: {e}"));
            return ExitCode::from(exit_status::ERROR);
        }
    };
    let web =
        args.web.map(|addr| manager::web::WebOptions { addr, certificate: args.web_cert.zip(args.web_key) });
    match manager::daemon::run(manager::daemon::DaemonOptions { paths, kestrel_binary, web }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(format_args!("kestrel daemon: error: {e}"));
            ExitCode::from(exit_status::ERROR)
        }
    }
}

fn web_token(args: WebTokenArgs) -> ExitCode {
    match web_token_request(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(format_args!("kestrel: error: {e}"));
            ExitCode::from(exit_status::ERROR)
        }
    }
}

fn web_token_request(args: &WebTokenArgs) -> Result<(), ClientError> {
    let client = Client::new(args.socket.clone())?;
    let none: Option<&()> = None;
    if args.revoke_all {
        let revoked: WebTokensRevoked = client.request(Method::DELETE, "/v1/web/tokens", none)?;
        table::emit(args.output.json, &revoked, |r| {
            format!("{} tokens revoked, {} web sessions ended\n", r.tokens, r.sessions)
        });
    } else {
        let made: WebToken = client.request(Method::POST, "/v1/web/tokens", none)?;
        table::emit(args.output.json, &made, |t| format!("{}\n", t.token));
    }
    Ok(())
}
