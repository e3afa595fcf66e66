//! `kestrel net …`: the daemon's networks from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use hyper::Method;
use model::manager::network::{parse_range, NetworkDefinition, NetworkInfo, NetworkMode};

use crate::manager_client::{Client, ClientError};
use crate::table::{self, KeyValues, OutputArgs, Table};
use crate::{exit_status, report};

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    kestrel net define lab --address 10.77.0.1/24 --autostart\n  \
    kestrel net start lab\n  \
    kestrel net list\n  \
    kestrel net info lab --json\n  \
    kestrel net --socket /tmp/kestrel.sock list\n\n\
    The daemon is found at --socket, else $KESTREL_SOCKET, else /run/kestrel/kestrel.sock.")]
pub struct NetArgs {
    /// The daemon's API socket (default: $KESTREL_SOCKET, else /run/kestrel/kestrel.sock).
    /// Example: --socket /tmp/kestrel.sock
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,

    #[command(flatten)]
    output: OutputArgs,

    #[command(subcommand)]
    command: NetCommand,
}

#[derive(Subcommand, Debug)]
enum NetCommand {
    /// Define a network: a bridge with the host's address, DHCP and DNS for the guests, and NAT
    /// to the host's uplink (or no way out with --isolated). It is not started.
    #[command(after_help = "Examples:\n  \
        kestrel net define lab --address 10.77.0.1/24\n  \
        kestrel net define dmz --address 192.168.50.1/24 --dhcp-range 192.168.50.100-192.168.50.199 --autostart\n  \
        kestrel net define backplane --address 10.78.0.1/24 --isolated --domain backplane.internal")]
    Define(DefineArgs),
    /// Start a network: its bridge, nftables rules (the daemon's table inet kestrel_<hash>) and
    /// DHCP server.
    #[command(after_help = "Examples:\n  kestrel net start lab")]
    Start(NameArgs),
    /// Stop a network (refused while running VMs are plugged into it).
    #[command(after_help = "Examples:\n  kestrel net stop lab")]
    Stop(NameArgs),
    /// List the networks.
    #[command(after_help = "Examples:\n  kestrel net list\n  kestrel net list --json")]
    List,
    /// Show a network: its definition, bridge, plugged cards and DHCP leases.
    #[command(after_help = "Examples:\n  kestrel net info lab\n  kestrel net info lab --json")]
    Info(NameArgs),
    /// Undefine a network (stopping it first; refused while VMs are defined with a card on it).
    #[command(after_help = "Examples:\n  kestrel net undefine lab")]
    Undefine(NameArgs),
}

#[derive(Args, Debug)]
struct DefineArgs {
    /// The network's name. Example: lab
    name: String,
    /// The host's address on the bridge, with the prefix (/8 to /30). Example: --address 10.77.0.1/24
    #[arg(long, value_name = "ADDRESS/PREFIX")]
    address: String,
    /// Guests reach each other and the host only: no NAT, no forwarding.
    #[arg(long)]
    isolated: bool,
    /// The addresses DHCP hands out (default: the half of the subnet without the host's address).
    /// Example: --dhcp-range 10.77.0.100-10.77.0.199
    #[arg(long, value_name = "START-END")]
    dhcp_range: Option<String>,
    /// Start the network whenever the daemon starts.
    #[arg(long)]
    autostart: bool,
    /// The DNS domain of the guests' names, answered by the network's DNS server.
    /// Example: --domain lab.internal
    #[arg(long, value_name = "DOMAIN")]
    domain: Option<String>,
}

#[derive(Args, Debug)]
struct NameArgs {
    /// The network's name. Example: lab
    name: String,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
enum NetCliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Invalid(#[from] model::manager::network::NetworkError),
}

pub fn run(args: NetArgs) -> ExitCode {
    match execute(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(format_args!("kestrel: error: {e}"));
            ExitCode::from(exit_status::ERROR)
        }
    }
}

fn execute(args: NetArgs) -> Result<(), NetCliError> {
    let client = Client::new(args.socket)?;
    let json = args.output.json;
    match args.command {
        NetCommand::Define(args) => {
            let definition = NetworkDefinition {
                name: args.name,
                address: args.address,
                mode: if args.isolated { NetworkMode::Isolated } else { NetworkMode::Nat },
                dhcp_range: args.dhcp_range.as_deref().map(parse_range).transpose()?,
                autostart: args.autostart,
                domain: args.domain,
            };
            // Checked here too, so a mistake is told without a round trip.
            definition.validate()?;
            let info: NetworkInfo = client.request(Method::POST, "/v1/networks", Some(&definition))?;
            table::emit(json, &info, |i| {
                format!("network '{}' defined (bridge {})\n", i.definition.name, i.bridge)
            });
        }
        NetCommand::Start(args) => {
            let info: NetworkInfo = client.request(Method::POST, &path(&args.name, "/start"), None::<&()>)?;
            table::emit(json, &info, |i| format!("network '{}' started (bridge {})\n", args.name, i.bridge));
        }
        NetCommand::Stop(args) => {
            let info: NetworkInfo = client.request(Method::POST, &path(&args.name, "/stop"), None::<&()>)?;
            table::emit(json, &info, |_| format!("network '{}' stopped\n", args.name));
        }
        NetCommand::Undefine(args) => {
            client.request::<()>(Method::DELETE, &path(&args.name, ""), None::<&()>)?;
            let answer = serde_json::json!({ "undefined": args.name });
            table::emit(json, &answer, |_| format!("network '{}' undefined\n", args.name));
        }
        NetCommand::Info(args) => {
            let info: NetworkInfo = client.request(Method::GET, &path(&args.name, ""), None::<&()>)?;
            table::emit(json, &info, details);
        }
        NetCommand::List => {
            let networks: Vec<NetworkInfo> = client.request(Method::GET, "/v1/networks", None::<&()>)?;
            table::emit(json, &networks, |networks| list_table(networks));
        }
    }
    Ok(())
}

/// `/v1/networks/NAME…`; the name is checked first so it cannot reshape the path.
fn path(name: &str, tail: &str) -> String {
    match model::manager::name::check_name(name) {
        Ok(()) => format!("/v1/networks/{name}{tail}"),
        // The daemon answers this with its own error (no such network).
        Err(_) => {
            format!("/v1/networks/{}{tail}", name.bytes().map(|b| format!("%{b:02X}")).collect::<String>())
        }
    }
}

/// `kestrel net list`: one line per network.
fn list_table(networks: &[NetworkInfo]) -> String {
    let mut table = Table::new(["NAME", "STATE", "MODE", "ADDRESS", "BRIDGE", "AUTOSTART", "PORTS"]);
    for n in networks {
        table.row([
            n.definition.name.clone(),
            if n.active { "active" } else { "inactive" }.into(),
            n.definition.mode.as_str().into(),
            n.definition.address.clone(),
            n.bridge.clone(),
            if n.definition.autostart { "yes" } else { "no" }.into(),
            n.ports.len().to_string(),
        ]);
    }
    table.render()
}

/// `kestrel net info`: the network, then its plugged cards and leases.
fn details(info: &NetworkInfo) -> String {
    let d = &info.definition;
    let mut block = KeyValues::new();
    block
        .add("Name", &d.name)
        .add("State", if info.active { "active" } else { "inactive" })
        .add("Mode", d.mode.as_str())
        .add("Address", format!("{} (subnet {})", d.address, info.subnet))
        .add("Bridge", &info.bridge)
        .add_some("DHCP range", info.dhcp_range.map(|(start, end)| format!("{start}-{end}")))
        .add_some("Domain", d.domain.as_ref())
        .add("Autostart", if d.autostart { "yes" } else { "no" });
    for port in &info.ports {
        let ip = port.ip.map(|ip| format!(" {ip}")).unwrap_or_default();
        block.add("Port", format!("{} card {} on {} ({}{ip})", port.vm, port.index, port.tap, port.mac));
    }
    for lease in &info.leases {
        let name = lease.hostname.as_deref().unwrap_or("-");
        block.add("Lease", format!("{} {} {name} until {}", lease.ip, lease.mac, lease.expires));
    }
    block.render()
}
