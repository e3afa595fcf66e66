//! Kestrel's own nftables table, `inet kestrel_<hash of the state dir>` (see
//! [`super::names::table`]): every active network's forwarding and NAT rules, written whole and
//! atomically (`nft -f -`), so other firewall managers' tables are never touched and a reload of
//! theirs leaves Kestrel's alone. Each daemon (one per state dir) has a table of its own, so two
//! daemons in one network namespace never rewrite each other's rules. A watchdog compares the
//! table with what was written and writes it again when someone changed or deleted it.

use model::manager::network::{NetworkMode, Subnet};
use serde_json::Value;

use super::host::{run, HostError};

/// The table's family.
pub const FAMILY: &str = "inet";

/// What the rules need to know of one active network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkRules {
    pub bridge: String,
    pub subnet: Subnet,
    pub mode: NetworkMode,
}

/// The nft script that replaces the table with the rules of `networks` (or deletes it when
/// there are none). Creating the table first makes the deletion valid whether or not it exists,
/// and the whole script is one transaction.
pub fn script(table: &str, networks: &[NetworkRules]) -> String {
    let mut out = format!("table {FAMILY} {table} {{}}\ndelete table {FAMILY} {table}\n");
    if networks.is_empty() {
        return out;
    }
    out.push_str(&format!("table {FAMILY} {table} {{\n"));
    // Filtering: traffic from and to the bridges only; everything else is other tables' business.
    // Three passes, so that no network's `accept` lets through what another's `reject` keeps out
    // (a NAT network's guests must not open connections into an isolated network).
    out.push_str("\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n");
    for network in networks {
        let bridge = &network.bridge;
        out.push_str(&format!("\t\tiifname \"{bridge}\" oifname \"{bridge}\" accept\n"));
    }
    // Into a network: only answers to what its guests started (NAT); nothing new, from anywhere.
    for network in networks {
        let (bridge, subnet) = (&network.bridge, network.subnet);
        if network.mode == NetworkMode::Nat {
            out.push_str(&format!(
                "\t\toifname \"{bridge}\" ip daddr {subnet} ct state established,related accept\n"
            ));
        }
        out.push_str(&format!("\t\toifname \"{bridge}\" reject\n"));
    }
    // Out of a network: NAT guests with their own addresses only (no spoofing); isolated, nothing.
    for network in networks {
        let (bridge, subnet) = (&network.bridge, network.subnet);
        if network.mode == NetworkMode::Nat {
            out.push_str(&format!("\t\tiifname \"{bridge}\" ip saddr {subnet} accept\n"));
        }
        out.push_str(&format!("\t\tiifname \"{bridge}\" reject\n"));
    }
    out.push_str("\t}\n");
    out.push_str("\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n");
    for network in networks.iter().filter(|n| n.mode == NetworkMode::Nat) {
        let (bridge, subnet) = (&network.bridge, network.subnet);
        // Multicast and broadcast stay local, as libvirt leaves them.
        out.push_str(&format!(
            "\t\tip saddr {subnet} ip daddr != {{ {subnet}, 224.0.0.0/24, 255.255.255.255 }} oifname != \"{bridge}\" masquerade\n"
        ));
    }
    out.push_str("\t}\n}\n");
    out
}

/// Writes the table named `table` for `networks`; the fingerprint of what the kernel then holds.
pub async fn apply(table: &str, networks: &[NetworkRules]) -> Result<Option<String>, HostError> {
    run("nft", &["-f", "-"], Some(script(table, networks).as_bytes())).await?;
    fingerprint(table).await
}

/// The table as the kernel holds it now, without handles (which change on every write), or
/// `None` when there is no table.
pub async fn fingerprint(table: &str) -> Result<Option<String>, HostError> {
    match run("nft", &["-j", "list", "table", FAMILY, table], None).await {
        Ok(out) => {
            let value: Value = serde_json::from_slice(&out).map_err(|e| HostError::Output {
                command: format!("nft -j list table {FAMILY} {table}"),
                message: e.to_string(),
            })?;
            Ok(Some(without_handles(value).to_string()))
        }
        Err(e) if e.is_absent() => Ok(None),
        Err(e) => Err(e),
    }
}

/// The listing without `handle` fields and the `metainfo` object (which names nft's version).
fn without_handles(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(key, _)| key != "handle" && key != "metainfo")
                .map(|(key, value)| (key, without_handles(value)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .filter(|item| !item.as_object().is_some_and(|o| o.contains_key("metainfo")))
                .map(without_handles)
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat_networks_masquerade_and_isolated_ones_only_reject() {
        let nat = NetworkRules {
            bridge: "kb-a".into(),
            subnet: Subnet::parse("10.1.0.0/24").unwrap(),
            mode: NetworkMode::Nat,
        };
        let isolated = NetworkRules {
            bridge: "kb-b".into(),
            subnet: Subnet::parse("10.2.0.0/24").unwrap(),
            mode: NetworkMode::Isolated,
        };
        let text = script("kestrel_0123abcd", &[nat, isolated]);
        assert!(text.starts_with("table inet kestrel_0123abcd {}\n"), "{text}");
        assert!(text.contains("ip saddr 10.1.0.0/24 ip daddr != { 10.1.0.0/24"), "{text}");
        assert!(!text.contains("ip saddr 10.2.0.0/24"), "{text}");
        assert!(text.contains("iifname \"kb-b\" reject"), "{text}");
        // The isolated network's refusal comes before the NAT network's way out.
        let refusal = text.find("oifname \"kb-b\" reject").unwrap();
        let way_out = text.find("iifname \"kb-a\" ip saddr 10.1.0.0/24 accept").unwrap();
        assert!(refusal < way_out, "{text}");
        assert_eq!(
            script("kestrel_0123abcd", &[]),
            "table inet kestrel_0123abcd {}\ndelete table inet kestrel_0123abcd\n"
        );
    }

    #[test]
    fn fingerprints_ignore_handles() {
        let a = serde_json::json!({"nftables": [{"metainfo": {"version": "1"}}, {"rule": {"handle": 3, "expr": [1]}}]});
        let b = serde_json::json!({"nftables": [{"metainfo": {"version": "2"}}, {"rule": {"handle": 9, "expr": [1]}}]});
        assert_eq!(without_handles(a), without_handles(b));
    }
}
