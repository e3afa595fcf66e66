//! `kestrel vm …` and `kestrel completions`: the daemon's VMs from the command line. Every
//! command is one or two requests to the daemon's API (`manager::server` lists the routes);
//! output is a human table or `--json` (the API's body), errors one line and exit status 1.

mod console;
pub mod definition;
mod edit;
mod show;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Subcommand};
use hyper::Method;
use model::manager::vm::{ShutdownRequest, VmInfo, VmStats, VmSummary};

use crate::manager_client::{Client, ClientError};
use crate::table::{self, OutputArgs};
use definition::{DefinitionError, DefinitionFlags};

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    kestrel vm define web --kernel /srv/vmlinux --memory 512M --disk volume=default/web.qcow2\n  \
    kestrel vm start web && kestrel vm console web\n  \
    kestrel vm list --all --json\n\n\
    The daemon is found at --socket, else $KESTREL_SOCKET, else /run/kestrel/kestrel.sock.\n\
    Exit status: 0 done, 1 the daemon refused or could not be reached (one line on stderr), 2 usage error.")]
pub struct VmArgs {
    /// The daemon's API socket (default: $KESTREL_SOCKET, else /run/kestrel/kestrel.sock).
    /// Example: --socket /tmp/kestrel.sock
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    #[command(flatten)]
    pub output: OutputArgs,

    #[command(subcommand)]
    pub command: VmCommand,
}

/// The VM name or UUID every command but `define` and `list` takes.
#[derive(Args, Debug)]
pub struct VmName {
    /// The VM's name or UUID.
    #[arg(value_name = "NAME")]
    pub vm: String,
}

#[derive(Subcommand, Debug)]
pub enum VmCommand {
    /// Define a VM from `kestrel run`'s flags or a TOML/JSON file (it does not start it).
    #[command(after_help = "Examples:\n  \
        kestrel vm define web --kernel /srv/vmlinux --initrd /srv/initrd.cpio --cpus 2 --memory 1G\n  \
        kestrel vm define web --kernel /srv/vmlinux --disk volume=default/web.qcow2 --net network=default --autostart\n  \
        kestrel vm define --file web.toml\n  \
        kestrel vm dump web | sed s/web/web2/ > web2.toml && kestrel vm define --file web2.toml")]
    Define {
        /// The new VM's name (letters, digits, '.', '_', '-'); optional with --file.
        #[arg(value_name = "NAME")]
        name: Option<String>,
        #[command(flatten)]
        flags: DefinitionFlags,
    },
    /// Remove a stopped VM's definition (its console log and saved state go with it).
    #[command(after_help = "Example:\n  kestrel vm undefine web")]
    Undefine(VmName),
    /// Change a VM's definition: from a file, or in $EDITOR as TOML. The daemon checks it; it
    /// applies at the next start.
    #[command(after_help = "Examples:\n  \
        kestrel vm edit web\n  \
        kestrel vm edit web --file web.toml\n\n\
        If the daemon refuses the edited definition, the file is kept and its path printed.")]
    Edit {
        #[command(flatten)]
        vm: VmName,
        /// The new definition (TOML or JSON by extension, - for JSON on stdin) instead of an editor.
        /// Example: --file web.toml
        #[arg(long, value_name = "DEF.toml|DEF.json|-")]
        file: Option<PathBuf>,
    },
    /// Start a defined VM (a saved one resumes where it was saved).
    #[command(after_help = "Example:\n  kestrel vm start web")]
    Start(VmName),
    /// Ask the guest to power off (the ACPI power button) and wait for it.
    #[command(after_help = "Examples:\n  \
        kestrel vm shutdown web\n  \
        kestrel vm shutdown web --timeout 30 --force")]
    Shutdown {
        #[command(flatten)]
        vm: VmName,
        /// Seconds to wait for the guest to power off (the daemon's default: 60).
        /// Example: --timeout 30
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
        /// Destroy the VM if it has not powered off in time. Example: --force
        #[arg(long)]
        force: bool,
    },
    /// Stop a VM at once (kill its VMM), like pulling the plug.
    #[command(after_help = "Example:\n  kestrel vm destroy web")]
    Destroy(VmName),
    /// Reboot a VM (Ctrl-Alt-Del to the guest).
    #[command(after_help = "Example:\n  kestrel vm reboot web")]
    Reboot(VmName),
    /// Pause a running VM's vCPUs.
    #[command(after_help = "Example:\n  kestrel vm suspend web")]
    Suspend(VmName),
    /// Resume a suspended VM.
    #[command(after_help = "Example:\n  kestrel vm resume web")]
    Resume(VmName),
    /// Save a running VM's memory and device state and stop it; `start` or `restore` resumes it.
    #[command(after_help = "Example:\n  kestrel vm save web && kestrel vm restore web")]
    Save(VmName),
    /// Resume a saved VM from its saved state.
    #[command(after_help = "Example:\n  kestrel vm restore web")]
    Restore(VmName),
    /// Show everything about one VM.
    #[command(after_help = "Examples:\n  kestrel vm info web\n  kestrel vm info web --json")]
    Info(VmName),
    /// List the running VMs (with --all, every defined VM).
    #[command(after_help = "Examples:\n  kestrel vm list\n  kestrel vm list --all --json")]
    List {
        /// Every defined VM, not only the running ones. Example: --all
        #[arg(long)]
        all: bool,
    },
    /// Show a VM's counters (vCPU exits, disk and network I/O, …) since its VMM started.
    #[command(after_help = "Example:\n  kestrel vm stats web")]
    Stats(VmName),
    /// Print the daemon's events (started, stopped, crashed, …), one line each.
    #[command(after_help = "Examples:\n  \
        kestrel vm events\n  \
        kestrel vm events --follow --since 120\n  \
        kestrel vm events --follow --json | jq .kind")]
    Events {
        /// Keep printing new events as they happen (until interrupted). Example: --follow
        #[arg(long)]
        follow: bool,
        /// Only events after this ID (each line starts with its ID). Example: --since 120
        #[arg(long, value_name = "ID")]
        since: Option<u64>,
    },
    /// Attach to a VM's serial console (many viewers may attach; detach with Ctrl-]).
    #[command(after_help = "Examples:\n  \
        kestrel vm console web\n  \
        kestrel vm console web --scrollback 0\n  \
        echo root | kestrel vm console web\n\n\
        Shows the end of the console log first, then what the guest prints; what you type goes\n\
        to the guest. Ctrl-] detaches (the VM keeps running). With stdin not a terminal, the input\n\
        is sent and the output followed until it has been quiet for 2 s.")]
    Console {
        #[command(flatten)]
        vm: VmName,
        /// Bytes of the console log to show first. Example: --scrollback 65536
        #[arg(long, value_name = "BYTES", default_value_t = console::DEFAULT_SCROLLBACK)]
        scrollback: u64,
    },
    /// Print a VM's definition as TOML, to edit and define again.
    #[command(after_help = "Examples:\n  kestrel vm dump web > web.toml\n  kestrel vm dump web --json")]
    Dump(VmName),
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    #[arg(value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

/// Why a `kestrel vm` command failed (printed as `kestrel: error: …`).
#[derive(Debug, thiserror::Error)]
pub enum VmCliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    #[error(transparent)]
    Edit(#[from] edit::EditError),
    #[error(transparent)]
    Console(#[from] console::ConsoleError),
}

pub fn run(args: VmArgs) -> ExitCode {
    match run_command(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crate::report(format_args!("kestrel: error: {}", definition::one_line(&e.to_string())));
            ExitCode::from(crate::exit_status::ERROR)
        }
    }
}

/// `kestrel completions SHELL`.
pub fn completions(args: CompletionsArgs) -> ExitCode {
    let mut command = crate::cli::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "kestrel", &mut script);
    table::print(&String::from_utf8_lossy(&script));
    ExitCode::SUCCESS
}

/// The API path of a VM (`/v1/vms/NAME`), its key escaped so that no name can reach another
/// route.
pub fn vm_path(key: &str, tail: &str) -> String {
    let mut path = String::from("/v1/vms/");
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            path.push(byte as char);
        } else {
            path.push_str(&format!("%{byte:02X}"));
        }
    }
    path.push_str(tail);
    path
}

/// How long `shutdown` waits for the daemon's answer beyond the guest's own time.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(30);
/// The daemon's default graceful-shutdown wait (ShutdownRequest's).
const DEFAULT_SHUTDOWN_SECS: u64 = 60;

fn run_command(args: VmArgs) -> Result<(), VmCliError> {
    let json = args.output.json;
    let client = Client::new(args.socket)?;
    let none = None::<&()>;
    match args.command {
        VmCommand::Define { name, flags } => {
            let definition = flags.into_definition(name)?;
            let info: VmInfo = client.request(Method::POST, "/v1/vms", Some(&definition))?;
            table::emit(json, &info, |i| format!("defined {} ({})\n", i.summary.name, i.summary.uuid));
        }
        VmCommand::Undefine(VmName { vm }) => {
            client.request::<()>(Method::DELETE, &vm_path(&vm, ""), none)?;
            table::emit(json, &serde_json::json!({ "undefined": vm }), |_| format!("undefined {vm}\n"));
        }
        VmCommand::Edit { vm: VmName { vm }, file } => {
            let info = match file {
                Some(file) => {
                    let definition = definition::load_file(&file)?;
                    client.request(Method::PUT, &vm_path(&vm, ""), Some(&definition))?
                }
                None => match edit::in_editor(&client, &vm)? {
                    Some(info) => info,
                    None => {
                        table::emit(json, &serde_json::json!({ "changed": false }), |_| {
                            format!("{vm}: no change\n")
                        });
                        return Ok(());
                    }
                },
            };
            table::emit(json, &info, |i| {
                format!("{}: definition changed (applies at the next start)\n", i.summary.name)
            });
        }
        VmCommand::Start(VmName { vm }) => lifecycle(&client, json, &vm, "start", none)?,
        VmCommand::Destroy(VmName { vm }) => lifecycle(&client, json, &vm, "destroy", none)?,
        VmCommand::Reboot(VmName { vm }) => lifecycle(&client, json, &vm, "reboot", none)?,
        VmCommand::Suspend(VmName { vm }) => lifecycle(&client, json, &vm, "suspend", none)?,
        VmCommand::Resume(VmName { vm }) => lifecycle(&client, json, &vm, "resume", none)?,
        VmCommand::Save(VmName { vm }) => snapshot_action(&client, json, &vm, "save")?,
        VmCommand::Restore(VmName { vm }) => snapshot_action(&client, json, &vm, "restore")?,
        VmCommand::Shutdown { vm: VmName { vm }, timeout, force } => {
            let request = ShutdownRequest { timeout_secs: timeout, force };
            let wait = Duration::from_secs(timeout.unwrap_or(DEFAULT_SHUTDOWN_SECS)) + SHUTDOWN_MARGIN;
            let info: VmInfo =
                client.request_within(Method::POST, &vm_path(&vm, "/shutdown"), Some(&request), wait)?;
            table::emit(json, &info, show::state_line);
        }
        VmCommand::Info(VmName { vm }) => {
            let info: VmInfo = client.request(Method::GET, &vm_path(&vm, ""), none)?;
            table::emit(json, &info, show::info);
        }
        VmCommand::List { all } => {
            let mut vms: Vec<VmSummary> = client.request(Method::GET, "/v1/vms", none)?;
            if !all {
                vms.retain(|vm| vm.state.is_active());
            }
            table::emit(json, &vms, |vms| show::list(vms));
        }
        VmCommand::Stats(VmName { vm }) => {
            let stats: VmStats = client.request(Method::GET, &vm_path(&vm, "/stats"), none)?;
            table::emit(json, &stats, show::stats);
        }
        VmCommand::Events { follow, since } => show::events(&client, json, follow, since)?,
        VmCommand::Console { vm: VmName { vm }, scrollback } => console::attach(&client, &vm, scrollback)?,
        VmCommand::Dump(VmName { vm }) => {
            let info: VmInfo = client.request(Method::GET, &vm_path(&vm, ""), none)?;
            if json {
                table::print(&table::json_text(&info.definition));
            } else {
                table::print(&definition::to_toml(&info.definition)?);
            }
        }
    }
    Ok(())
}

/// `POST /v1/vms/{vm}/{action}`, answered with the VM's new state.
fn lifecycle(
    client: &Client,
    json: bool,
    vm: &str,
    action: &str,
    body: Option<&()>,
) -> Result<(), VmCliError> {
    let info: VmInfo = client.request(Method::POST, &vm_path(vm, &format!("/{action}")), body)?;
    table::emit(json, &info, show::state_line);
    Ok(())
}

/// Time the CLI gives the daemon beyond its own snapshot limit (pausing, starting the VMM,
/// configuring it, ending it: each bounded by the daemon in seconds).
const SNAPSHOT_MARGIN: Duration = Duration::from_secs(90);

/// `save` and `restore`: they take as long as the guest's memory takes to write or read, so the
/// CLI waits longer than the daemon would (the daemon's limit grows with the memory size), and
/// never reports "unreachable" while the daemon is still at it.
fn snapshot_action(client: &Client, json: bool, vm: &str, action: &str) -> Result<(), VmCliError> {
    let current: VmInfo = client.request(Method::GET, &vm_path(vm, ""), None::<&()>)?;
    let wait = manager::vms::snapshot_limit(current.summary.memory_mib) + SNAPSHOT_MARGIN;
    let info: VmInfo =
        client.request_within(Method::POST, &vm_path(vm, &format!("/{action}")), None::<&()>, wait)?;
    table::emit(json, &info, show::state_line);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_paths_escape_what_could_leave_the_vm() {
        assert_eq!(vm_path("web-1", "/start"), "/v1/vms/web-1/start");
        assert_eq!(vm_path("../x", ""), "/v1/vms/..%2Fx");
        assert_eq!(vm_path("a b?c#", "/stats"), "/v1/vms/a%20b%3Fc%23/stats");
    }
}
