//! `kestrel net …`: the daemon's networks from the command line.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use hyper::Method;
use model::manager::network::{parse_range, NetworkDefinition, NetworkInfo, NetworkMode};

use crate::manager_client::{Client, ClientError};
use crate::{exit_status, report};

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    kestrel net define lab --address 10.77.0.1/24 --autostart\n  \
    kestrel net start lab\n  \
    kestrel net list\n  \
    kestrel net info lab --json\n\n\
    The daemon is found through KESTREL_SOCKET (default /run/kestrel/kestrel.sock).")]
pub struct NetArgs {
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
    /// Start a network: its bridge, nftables rules (table inet kestrel) and DHCP server.
    #[command(after_help = "Examples:\n  kestrel net start lab")]
    Start(NameArgs),
    /// Stop a network (refused while running VMs are plugged into it).
    #[command(after_help = "Examples:\n  kestrel net stop lab")]
    Stop(NameArgs),
    /// List the networks.
    #[command(after_help = "Examples:\n  kestrel net list\n  kestrel net list --json")]
    List(ListArgs),
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
    /// Print the network as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct NameArgs {
    /// The network's name. Example: lab
    name: String,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ListArgs {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
enum NetCliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Invalid(#[from] model::manager::network::NetworkError),
    #[error("cannot print: {0}")]
    Output(#[from] std::io::Error),
}

pub fn run(args: NetArgs) -> ExitCode {
    match execute(args.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(format_args!("kestrel: error: {e}"));
            ExitCode::from(exit_status::ERROR)
        }
    }
}

fn execute(command: NetCommand) -> Result<(), NetCliError> {
    let client = Client::new(None)?;
    let mut out = std::io::stdout().lock();
    match command {
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
            print_info(
                &mut out,
                &info,
                args.json,
                &format!("Network '{}' defined (bridge {}).", info.definition.name, info.bridge),
            )
        }
        NetCommand::Start(args) => {
            let info: NetworkInfo = client.request(Method::POST, &path(&args.name, "/start"), None::<&()>)?;
            print_info(
                &mut out,
                &info,
                args.json,
                &format!("Network '{}' started (bridge {}).", args.name, info.bridge),
            )
        }
        NetCommand::Stop(args) => {
            let info: NetworkInfo = client.request(Method::POST, &path(&args.name, "/stop"), None::<&()>)?;
            print_info(&mut out, &info, args.json, &format!("Network '{}' stopped.", args.name))
        }
        NetCommand::Undefine(args) => {
            client.request::<()>(Method::DELETE, &path(&args.name, ""), None::<&()>)?;
            if args.json {
                writeln!(out, "{{}}")?;
            } else {
                writeln!(out, "Network '{}' undefined.", args.name)?;
            }
            Ok(())
        }
        NetCommand::Info(args) => {
            let info: NetworkInfo = client.request(Method::GET, &path(&args.name, ""), None::<&()>)?;
            if args.json {
                return print_json(&mut out, &info);
            }
            print_details(&mut out, &info)
        }
        NetCommand::List(args) => {
            let networks: Vec<NetworkInfo> = client.request(Method::GET, "/v1/networks", None::<&()>)?;
            if args.json {
                return print_json(&mut out, &networks);
            }
            print_table(&mut out, &networks)
        }
    }
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

fn print_json(out: &mut impl Write, value: &impl serde::Serialize) -> Result<(), NetCliError> {
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    writeln!(out, "{text}")?;
    Ok(())
}

fn print_info(out: &mut impl Write, info: &NetworkInfo, json: bool, line: &str) -> Result<(), NetCliError> {
    if json {
        return print_json(out, info);
    }
    writeln!(out, "{line}")?;
    Ok(())
}

fn print_table(out: &mut impl Write, networks: &[NetworkInfo]) -> Result<(), NetCliError> {
    let rows: Vec<[String; 7]> = networks
        .iter()
        .map(|n| {
            [
                n.definition.name.clone(),
                if n.active { "active" } else { "inactive" }.into(),
                n.definition.mode.as_str().into(),
                n.definition.address.clone(),
                n.bridge.clone(),
                if n.definition.autostart { "yes" } else { "no" }.into(),
                n.ports.len().to_string(),
            ]
        })
        .collect();
    let header = ["NAME", "STATE", "MODE", "ADDRESS", "BRIDGE", "AUTOSTART", "PORTS"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> =
            row.iter().zip(widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        writeln!(out, "{}", cells.join("  ").trim_end())?;
    }
    Ok(())
}

fn print_details(out: &mut impl Write, info: &NetworkInfo) -> Result<(), NetCliError> {
    let d = &info.definition;
    writeln!(out, "Name:       {}", d.name)?;
    writeln!(out, "State:      {}", if info.active { "active" } else { "inactive" })?;
    writeln!(out, "Mode:       {}", d.mode.as_str())?;
    writeln!(out, "Address:    {} (subnet {})", d.address, info.subnet)?;
    writeln!(out, "Bridge:     {}", info.bridge)?;
    if let Some((start, end)) = info.dhcp_range {
        writeln!(out, "DHCP range: {start}-{end}")?;
    }
    if let Some(domain) = &d.domain {
        writeln!(out, "Domain:     {domain}")?;
    }
    writeln!(out, "Autostart:  {}", if d.autostart { "yes" } else { "no" })?;
    for port in &info.ports {
        let ip = port.ip.map(|ip| format!(" {ip}")).unwrap_or_default();
        writeln!(out, "Port:       {} card {} on {} ({}{ip})", port.vm, port.index, port.tap, port.mac)?;
    }
    for lease in &info.leases {
        let name = lease.hostname.as_deref().unwrap_or("-");
        writeln!(out, "Lease:      {} {} {name} until {}", lease.ip, lease.mac, lease.expires)?;
    }
    Ok(())
}
