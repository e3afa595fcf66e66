//! The host's tools, run as child processes: `ip` (iproute2) for links, addresses and routes,
//! `nft` for the rules. Kestrel uses iproute2 rather than a netlink crate because it already
//! needs `nft` and `dnsmasq` as programs, `ip` is on every host, its `-json` output is stable,
//! and an admin debugging a network runs the very same commands.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use model::manager::network::Subnet;
use serde::Deserialize;

/// How long one tool run may take.
const TOOL_LIMIT: Duration = Duration::from_secs(20);
/// The most output a tool run may hand back (a host with many links stays far below).
const OUTPUT_LIMIT: usize = 16 << 20;
/// The most of a tool's error output kept (only its first line is reported).
const ERROR_LIMIT: u64 = 64 << 10;

/// A tool that failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("`{0}` is not installed (scripts/install-prerequisites installs it)")]
    Missing(&'static str),
    #[error("cannot run `{tool}`: {source}")]
    Spawn { tool: &'static str, source: std::io::Error },
    #[error("`{command}` failed: {message}")]
    Failed { command: String, message: String },
    #[error("`{0}` did not finish within 20 s")]
    Timeout(String),
    #[error("`{command}` printed what Kestrel cannot read: {message}")]
    Output { command: String, message: String },
}

impl HostError {
    /// Whether the tool said the device (or table) does not exist.
    pub fn is_absent(&self) -> bool {
        matches!(self, HostError::Failed { message, .. }
            if message.contains("does not exist") || message.contains("No such file or directory")
                || message.contains("Cannot find device"))
    }
}

/// The path of a tool (PATH, then the sbin directories a user's PATH may lack).
pub fn find_tool(name: &'static str) -> Result<PathBuf, HostError> {
    let from_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|dir| dir.join(name)).collect::<Vec<_>>())
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(|dir| PathBuf::from(dir).join(name)))
        .find(|candidate| candidate.is_file())
        .ok_or(HostError::Missing(name))
}

/// [`find_tool`] for tests, which name tools at run time: the path, or the bare name.
#[cfg(test)]
pub fn find_tool_path(name: &str) -> PathBuf {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .into_iter()
        .map(|dir| PathBuf::from(dir).join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| name.into())
}

/// Runs `tool args…` (with `input` on its stdin) to its end; its stdout when it succeeds.
///
/// The tool runs with `LC_ALL=C`, so its messages are the English ones that
/// [`HostError::is_absent`] and the permission check recognise, whatever the host's locale. The
/// whole run (writing its input, reading its output, waiting for its end) has [`TOOL_LIMIT`], and
/// at most [`OUTPUT_LIMIT`] bytes of its output are ever held.
pub async fn run(tool: &'static str, args: &[&str], input: Option<&[u8]>) -> Result<Vec<u8>, HostError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let path = find_tool(tool)?;
    let command_line = format!("{tool} {}", args.join(" "));
    let mut command = tokio::process::Command::new(path);
    command
        .args(args)
        .env("LC_ALL", "C")
        .stdin(if input.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|source| HostError::Spawn { tool, source })?;
    let stdin = child.stdin.take();
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(HostError::Spawn { tool, source: std::io::Error::other("no pipes") });
    };
    let spawn_error = |source| HostError::Spawn { tool, source };
    let run = async {
        let write = async {
            if let (Some(input), Some(mut stdin)) = (input, stdin) {
                stdin.write_all(input).await?;
                // Dropping `stdin` closes it: the tool sees the end of its input.
            }
            Ok::<_, std::io::Error>(())
        };
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut stdout = stdout.take(OUTPUT_LIMIT as u64 + 1);
        let mut stderr = stderr.take(ERROR_LIMIT);
        let read_out = stdout.read_to_end(&mut out);
        let read_err = stderr.read_to_end(&mut err);
        let (written, read_out, read_err) = tokio::join!(write, read_out, read_err);
        written.and(read_out).and(read_err)?;
        let status = if out.len() > OUTPUT_LIMIT {
            // Stop a tool that would print more: what it prints is not read any further.
            let _ = child.start_kill();
            None
        } else {
            Some(child.wait().await?)
        };
        Ok::<_, std::io::Error>((status, out, err))
    };
    let (status, stdout, stderr) = tokio::time::timeout(TOOL_LIMIT, run)
        .await
        .map_err(|_| HostError::Timeout(command_line.clone()))?
        .map_err(spawn_error)?;
    let Some(status) = status else {
        return Err(HostError::Output { command: command_line, message: "too long".into() });
    };
    if !status.success() {
        let message = String::from_utf8_lossy(&stderr);
        let message = message.trim().lines().next().unwrap_or("").chars().take(300).collect::<String>();
        return Err(HostError::Failed { command: command_line, message: format!("{message} ({status})") });
    }
    Ok(stdout)
}

/// `ip ARGS…`.
pub async fn ip(args: &[&str]) -> Result<Vec<u8>, HostError> {
    run("ip", args, None).await
}

/// A link as `ip -json -details link show` reports it (the parts Kestrel reads).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Link {
    pub ifname: String,
    #[serde(default)]
    pub flags: Vec<String>,
    #[serde(default)]
    pub master: Option<String>,
    #[serde(default)]
    pub linkinfo: Option<LinkInfo>,
    #[serde(default)]
    pub addr_info: Vec<AddrInfo>,
}

/// `linkinfo` of `ip -details`: the link's kind (`bridge`, `tun`, `veth`, …).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct LinkInfo {
    #[serde(default)]
    pub info_kind: Option<String>,
}

/// One address of a link (`addr_info` of `ip -json addr`).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct AddrInfo {
    #[serde(default)]
    pub family: String,
    #[serde(default)]
    pub local: Option<String>,
    #[serde(default)]
    pub prefixlen: Option<u8>,
}

impl Link {
    /// Whether the link is administratively up.
    pub fn is_up(&self) -> bool {
        self.flags.iter().any(|flag| flag == "UP")
    }
    /// The link's kind, when it has one (a physical device has none).
    pub fn kind(&self) -> Option<&str> {
        self.linkinfo.as_ref().and_then(|info| info.info_kind.as_deref())
    }
    /// Whether the link holds `address/prefix`.
    pub fn has_address(&self, address: Ipv4Addr, prefix: u8) -> bool {
        self.addr_info.iter().any(|info| {
            info.family == "inet"
                && info.local.as_deref() == Some(&address.to_string())
                && info.prefixlen == Some(prefix)
        })
    }
}

/// Every link of the host with its IPv4 addresses (two `ip -json` runs).
pub async fn links() -> Result<Vec<Link>, HostError> {
    let mut links: Vec<Link> =
        parse_json("ip -json -details link show", &ip(&["-json", "-details", "link", "show"]).await?)?;
    let addresses: Vec<Link> =
        parse_json("ip -json -4 addr show", &ip(&["-json", "-4", "addr", "show"]).await?)?;
    for link in &mut links {
        if let Some(with_addresses) = addresses.iter().find(|a| a.ifname == link.ifname) {
            link.addr_info = with_addresses.addr_info.clone();
        }
    }
    Ok(links)
}

/// One link, or `None` when it does not exist.
pub async fn link(name: &str) -> Result<Option<Link>, HostError> {
    match ip(&["-json", "-details", "link", "show", "dev", name]).await {
        Ok(out) => {
            let mut links: Vec<Link> = parse_json("ip -json link show", &out)?;
            let Some(mut link) = links.pop() else { return Ok(None) };
            let addresses: Vec<Link> =
                parse_json("ip -json addr show", &ip(&["-json", "-4", "addr", "show", "dev", name]).await?)?;
            link.addr_info = addresses.into_iter().flat_map(|a| a.addr_info).collect();
            Ok(Some(link))
        }
        Err(e) if e.is_absent() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deletes a link; one already gone is fine.
pub async fn delete_link(name: &str) -> Result<(), HostError> {
    match ip(&["link", "del", "dev", name]).await {
        Err(e) if !e.is_absent() => Err(e),
        _ => Ok(()),
    }
}

/// A route of the main table, as `ip -json -4 route show` reports it.
#[derive(Clone, Debug, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default)]
    pub dev: Option<String>,
}

impl Route {
    /// The destination as a subnet (`default` is none: it overlaps nothing in particular).
    pub fn subnet(&self) -> Option<Subnet> {
        if self.dst == "default" {
            return None;
        }
        Subnet::parse(&self.dst).or_else(|| self.dst.parse().ok().map(|a| Subnet::of(a, 32)))
    }
}

/// The host's IPv4 routes (main table).
pub async fn routes() -> Result<Vec<Route>, HostError> {
    parse_json("ip -json -4 route show", &ip(&["-json", "-4", "route", "show"]).await?)
}

/// Sets `net.ipv4.ip_forward` to 1 (never back to 0: other things on the host may need it).
pub fn enable_forwarding() -> std::io::Result<()> {
    let path = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(path)?.trim() == "1" {
        return Ok(());
    }
    std::fs::write(path, b"1\n")
}

fn parse_json<T: serde::de::DeserializeOwned>(command: &str, out: &[u8]) -> Result<T, HostError> {
    // `ip -json` prints nothing at all for an empty list on some versions.
    let out: &[u8] = if out.iter().all(u8::is_ascii_whitespace) { b"[]" } else { out };
    serde_json::from_slice(out)
        .map_err(|e| HostError::Output { command: command.into(), message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_json_reads_into_links_and_routes() {
        let links: Vec<Link> = parse_json(
            "t",
            br#"[{"ifindex":3,"ifname":"kb-x","flags":["BROADCAST","UP"],"master":null,"linkinfo":{"info_kind":"bridge","info_data":{"stp_state":0}}},{"ifname":"lo","flags":["LOOPBACK"]}]"#,
        )
        .unwrap();
        assert_eq!(links[0].kind(), Some("bridge"));
        assert!(links[0].is_up() && !links[1].is_up());
        let routes: Vec<Route> =
            parse_json("t", br#"[{"dst":"default","gateway":"10.0.0.1"},{"dst":"10.0.0.0/24","dev":"eth0"},{"dst":"10.1.2.3"}]"#)
                .unwrap();
        assert_eq!(routes[0].subnet(), None);
        assert_eq!(routes[1].subnet(), Subnet::parse("10.0.0.0/24"));
        assert_eq!(routes[2].subnet(), Subnet::parse("10.1.2.3/32"));
        assert!(parse_json::<Vec<Route>>("t", b"").unwrap().is_empty());
    }
}
