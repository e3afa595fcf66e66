//! Networks (`kestrel net …`): a bridge, NAT to the host's uplink or isolated, DHCP and DNS.
//!
//! [`NetworkDefinition::validate`] is the one check of a definition: the daemon calls it on
//! `POST /v1/networks` and again on every definition it reads back from its store.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The shortest prefix a network may have (a /8 is already 16 M addresses).
pub const MIN_PREFIX: u8 = 8;
/// The longest prefix: a /30 leaves the host one address and the guests one.
pub const MAX_PREFIX: u8 = 30;
/// The longest DNS domain (RFC 1035).
pub const MAX_DOMAIN_BYTES: usize = 253;

/// `kestrel net define` / `POST /v1/networks`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkDefinition {
    pub name: String,
    /// The host's address on the bridge and the prefix, e.g. `10.77.0.1/24`.
    pub address: String,
    #[serde(default)]
    pub mode: NetworkMode,
    /// DHCP range start and end (default: the half of the subnet without the host's address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp_range: Option<(Ipv4Addr, Ipv4Addr)>,
    /// Start the network when the daemon starts.
    #[serde(default)]
    pub autostart: bool,
    /// The DNS domain of the guests' names (`web.<domain>`), answered by the network's own DNS
    /// server and never forwarded upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

/// Whether guests reach beyond the host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Masqueraded to the host's uplink.
    #[default]
    Nat,
    /// Guests reach each other and the host only.
    Isolated,
}

impl NetworkMode {
    /// The word the CLI and the API use.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Nat => "nat",
            NetworkMode::Isolated => "isolated",
        }
    }
}

/// `GET /v1/networks/{net}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub definition: NetworkDefinition,
    /// Whether its bridge, rules and DHCP server are up (or being kept up).
    pub active: bool,
    /// The host's bridge device.
    pub bridge: String,
    /// The subnet, e.g. `10.77.0.0/24`.
    #[serde(default)]
    pub subnet: String,
    /// The DHCP range in force (the given one or the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp_range: Option<(Ipv4Addr, Ipv4Addr)>,
    /// The VMs' cards plugged into it now.
    #[serde(default)]
    pub ports: Vec<NetworkPort>,
    /// The DHCP server's leases.
    #[serde(default)]
    pub leases: Vec<Lease>,
}

/// A VM's card plugged into a network: its tap on the bridge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPort {
    pub vm: String,
    pub vm_uuid: String,
    /// The card's position in the VM's definition.
    pub index: usize,
    pub tap: String,
    pub mac: String,
    /// The address reserved for the card, when its definition fixes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
}

/// One DHCP lease, as the network's DHCP server recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// When it expires, Unix seconds (0: never).
    pub expires: u64,
    pub mac: String,
    pub ip: Ipv4Addr,
    /// The name the guest gave, when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// Why a network definition (or a card's address on it) is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Name(#[from] super::name::NameError),
    #[error("the address '{0}' is not an IPv4 address with a prefix, such as 10.77.0.1/24")]
    Address(String),
    #[error("the prefix /{0} is outside /{MIN_PREFIX} to /{MAX_PREFIX}")]
    Prefix(u8),
    #[error(
        "the host's address {address} is the subnet's {which} address; pick another, such as {suggestion}"
    )]
    HostAddress { address: Ipv4Addr, which: &'static str, suggestion: Ipv4Addr },
    #[error(
        "the DHCP range {start}-{end} is not inside the subnet {subnet} (without its first and last address)"
    )]
    RangeOutside { start: Ipv4Addr, end: Ipv4Addr, subnet: Subnet },
    #[error("the DHCP range {start}-{end} ends before it starts")]
    RangeOrder { start: Ipv4Addr, end: Ipv4Addr },
    #[error("the DHCP range {start}-{end} holds the host's address {host}")]
    RangeHoldsHost { start: Ipv4Addr, end: Ipv4Addr, host: Ipv4Addr },
    #[error("'{0}' is not a DHCP range such as 10.77.0.100-10.77.0.200")]
    RangeSyntax(String),
    #[error("the domain '{0}' is not a DNS name (labels of letters, digits and '-', dot-separated)")]
    Domain(String),
    #[error("'{0}' is not a MAC address such as 52:54:00:12:34:56")]
    MacSyntax(String),
    #[error("the MAC address {0} is a multicast address; a card needs a unicast one")]
    MacMulticast(String),
    #[error("the address {ip} is not inside the network's subnet {subnet}")]
    IpOutside { ip: Ipv4Addr, subnet: Subnet },
    #[error("the address {ip} is the network's own ({which}); pick another")]
    IpReserved { ip: Ipv4Addr, which: &'static str },
    #[error(
        "the address {ip} is inside the DHCP range {start}-{end}, which DHCP hands out to other guests; pick one outside it"
    )]
    IpInRange { ip: Ipv4Addr, start: Ipv4Addr, end: Ipv4Addr },
    #[error("the subnet {subnet} is {what}, which cannot carry a network's traffic")]
    SpecialSubnet { subnet: Subnet, what: &'static str },
}

/// The address blocks a network's subnet may not touch: nothing routes them to a bridge.
const SPECIAL_SUBNETS: [(Ipv4Addr, u8, &str); 5] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8, "in 0.0.0.0/8 (\"this network\")"),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "in the loopback block 127.0.0.0/8"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "in the link-local block 169.254.0.0/16"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "in the multicast block 224.0.0.0/4"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "in the reserved block 240.0.0.0/4"),
];

/// An IPv4 subnet: its first address and prefix length (8 to 30 once validated).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    /// The subnet holding `address` with `prefix` bits (0 to 32).
    pub fn of(address: Ipv4Addr, prefix: u8) -> Subnet {
        let prefix = prefix.min(32);
        Subnet { network: Ipv4Addr::from(u32::from(address) & mask_bits(prefix)), prefix }
    }

    /// The netmask, e.g. 255.255.255.0.
    pub fn netmask(self) -> Ipv4Addr {
        Ipv4Addr::from(mask_bits(self.prefix))
    }

    /// The last (broadcast) address.
    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask_bits(self.prefix))
    }

    /// Whether `address` is in the subnet.
    pub fn contains(self, address: Ipv4Addr) -> bool {
        u32::from(address) & mask_bits(self.prefix) == u32::from(self.network)
    }

    /// Whether the two subnets share an address.
    pub fn overlaps(self, other: Subnet) -> bool {
        let shorter = self.prefix.min(other.prefix);
        u32::from(self.network) & mask_bits(shorter) == u32::from(other.network) & mask_bits(shorter)
    }

    /// Parses `A.B.C.D/N` (any prefix 0 to 32; the host bits are cleared).
    pub fn parse(text: &str) -> Option<Subnet> {
        let (address, prefix) = parse_cidr(text)?;
        Some(Subnet::of(address, prefix))
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn mask_bits(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

/// `A.B.C.D/N` → the address and N (0 to 32); `None` for anything else.
pub fn parse_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (address, prefix) = text.split_once('/')?;
    let address: Ipv4Addr = address.parse().ok()?;
    // Digits only: `u8::from_str` would take a leading '+'.
    if prefix.is_empty() || prefix.len() > 2 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let prefix: u8 = prefix.parse().ok()?;
    (prefix <= 32).then_some((address, prefix))
}

/// `A-B` as the CLI's `--dhcp-range` takes it.
pub fn parse_range(text: &str) -> Result<(Ipv4Addr, Ipv4Addr), NetworkError> {
    let syntax = || NetworkError::RangeSyntax(text.chars().take(64).collect());
    let (start, end) = text.split_once('-').ok_or_else(syntax)?;
    Ok((start.trim().parse().map_err(|_| syntax())?, end.trim().parse().map_err(|_| syntax())?))
}

/// A definition that passed [`NetworkDefinition::validate`], with what follows from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetworkPlan {
    /// The host's address on the bridge.
    pub host: Ipv4Addr,
    pub subnet: Subnet,
    /// The DHCP range in force.
    pub dhcp_range: (Ipv4Addr, Ipv4Addr),
}

impl NetworkPlan {
    /// Checks a card's fixed address: inside the subnet, neither the subnet's first or last
    /// address nor the host's, and outside the DHCP range (libvirt's rule: dnsmasq may have
    /// leased an address of the range to another guest while the card's VM was stopped).
    pub fn check_guest_ip(&self, ip: Ipv4Addr) -> Result<(), NetworkError> {
        if !self.subnet.contains(ip) {
            return Err(NetworkError::IpOutside { ip, subnet: self.subnet });
        }
        let (start, end) = self.dhcp_range;
        if (u32::from(start)..=u32::from(end)).contains(&u32::from(ip)) {
            return Err(NetworkError::IpInRange { ip, start, end });
        }
        let which = if ip == self.host {
            "the host's address on the bridge"
        } else if ip == self.subnet.network {
            "the subnet's first address"
        } else if ip == self.subnet.broadcast() {
            "the broadcast address"
        } else {
            return Ok(());
        };
        Err(NetworkError::IpReserved { ip, which })
    }
}

impl NetworkDefinition {
    /// Checks the definition: the name, the address (`A.B.C.D/N`, N from 8 to 30, the host
    /// neither the subnet's first nor its last address, the subnet in none of the loopback,
    /// link-local, multicast, 0.0.0.0/8 and 240.0.0.0/4 blocks), the DHCP range (inside the subnet,
    /// ordered, without the host's address) and the domain.
    pub fn validate(&self) -> Result<NetworkPlan, NetworkError> {
        super::name::check_name(&self.name)?;
        let (host, prefix) = parse_cidr(&self.address)
            .ok_or_else(|| NetworkError::Address(self.address.chars().take(64).collect()))?;
        if !(MIN_PREFIX..=MAX_PREFIX).contains(&prefix) {
            return Err(NetworkError::Prefix(prefix));
        }
        let subnet = Subnet::of(host, prefix);
        if let Some((_, _, what)) =
            SPECIAL_SUBNETS.iter().find(|(network, prefix, _)| subnet.overlaps(Subnet::of(*network, *prefix)))
        {
            return Err(NetworkError::SpecialSubnet { subnet, what });
        }
        let first = u32::from(subnet.network) + 1;
        let last = u32::from(subnet.broadcast()) - 1;
        if host == subnet.network || host == subnet.broadcast() {
            let which = if host == subnet.network { "first" } else { "last (broadcast)" };
            return Err(NetworkError::HostAddress {
                address: host,
                which,
                suggestion: Ipv4Addr::from(first),
            });
        }
        let dhcp_range = match self.dhcp_range {
            Some((start, end)) => {
                let (s, e) = (u32::from(start), u32::from(end));
                if s < first || e > last || !subnet.contains(start) || !subnet.contains(end) {
                    return Err(NetworkError::RangeOutside { start, end, subnet });
                }
                if s > e {
                    return Err(NetworkError::RangeOrder { start, end });
                }
                if (s..=e).contains(&u32::from(host)) {
                    return Err(NetworkError::RangeHoldsHost { start, end, host });
                }
                (start, end)
            }
            None => default_range(subnet, host),
        };
        if let Some(domain) = &self.domain {
            check_domain(domain)?;
        }
        Ok(NetworkPlan { host, subnet, dhcp_range })
    }
}

/// The half of the subnet (without its first and last address) that does not hold the host.
fn default_range(subnet: Subnet, host: Ipv4Addr) -> (Ipv4Addr, Ipv4Addr) {
    let network = u32::from(subnet.network);
    // The subnet holds 2^(32 - prefix) addresses (prefix 8 to 30 here, so no overflow).
    let half = 1u32 << (31 - u32::from(subnet.prefix));
    let upper = (network + half, network + 2 * half - 2);
    let lower = (network + 1, network + half - 1);
    let (start, end) = if (upper.0..=upper.1).contains(&u32::from(host)) { lower } else { upper };
    (Ipv4Addr::from(start), Ipv4Addr::from(end))
}

/// A DNS domain: dot-separated labels of 1 to 63 letters, digits and '-' (not at either end).
pub fn check_domain(domain: &str) -> Result<(), NetworkError> {
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if domain.is_empty() || domain.len() > MAX_DOMAIN_BYTES || !domain.split('.').all(label_ok) {
        return Err(NetworkError::Domain(domain.chars().take(64).collect()));
    }
    Ok(())
}

/// Parses a unicast MAC address `aa:bb:cc:dd:ee:ff` (either case) into its bytes.
pub fn parse_mac(text: &str) -> Result<[u8; 6], NetworkError> {
    let syntax = || NetworkError::MacSyntax(text.chars().take(32).collect());
    let mut bytes = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut bytes {
        let part = parts.next().ok_or_else(syntax)?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(syntax());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| syntax())?;
    }
    if parts.next().is_some() {
        return Err(syntax());
    }
    if bytes[0] & 1 == 1 {
        return Err(NetworkError::MacMulticast(format_mac(bytes)));
    }
    Ok(bytes)
}

/// `aa:bb:cc:dd:ee:ff`, lowercase.
pub fn format_mac(bytes: [u8; 6]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn definition(address: &str, range: Option<(&str, &str)>) -> NetworkDefinition {
        NetworkDefinition {
            name: "net".into(),
            address: address.into(),
            mode: NetworkMode::Nat,
            dhcp_range: range.map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap())),
            autostart: false,
            domain: None,
        }
    }

    #[test]
    fn a_plain_network_gets_the_upper_half_for_dhcp() {
        let plan = definition("10.77.0.1/24", None).validate().unwrap();
        assert_eq!(plan.subnet.to_string(), "10.77.0.0/24");
        assert_eq!(plan.dhcp_range, ("10.77.0.128".parse().unwrap(), "10.77.0.254".parse().unwrap()));
        let plan = definition("10.77.0.200/24", None).validate().unwrap();
        assert_eq!(plan.dhcp_range, ("10.77.0.1".parse().unwrap(), "10.77.0.127".parse().unwrap()));
        let plan = definition("10.77.0.1/30", None).validate().unwrap();
        assert_eq!(plan.dhcp_range, ("10.77.0.2".parse().unwrap(), "10.77.0.2".parse().unwrap()));
    }

    #[test]
    fn bad_definitions_say_what_is_wrong() {
        assert!(matches!(definition("10.77.0.1", None).validate(), Err(NetworkError::Address(_))));
        assert!(matches!(definition("10.77.0.1/+24", None).validate(), Err(NetworkError::Address(_))));
        assert!(matches!(definition("10.77.0.300/24", None).validate(), Err(NetworkError::Address(_))));
        assert!(matches!(definition("10.77.0.1/31", None).validate(), Err(NetworkError::Prefix(31))));
        assert!(matches!(definition("10.0.0.1/7", None).validate(), Err(NetworkError::Prefix(7))));
        assert!(matches!(definition("10.77.0.0/24", None).validate(), Err(NetworkError::HostAddress { .. })));
        assert!(matches!(
            definition("10.77.0.255/24", None).validate(),
            Err(NetworkError::HostAddress { .. })
        ));
        let outside = definition("10.77.0.1/24", Some(("10.77.0.10", "10.77.1.10")));
        assert!(matches!(outside.validate(), Err(NetworkError::RangeOutside { .. })));
        let backwards = definition("10.77.0.1/24", Some(("10.77.0.20", "10.77.0.10")));
        assert!(matches!(backwards.validate(), Err(NetworkError::RangeOrder { .. })));
        let host = definition("10.77.0.1/24", Some(("10.77.0.1", "10.77.0.10")));
        assert!(matches!(host.validate(), Err(NetworkError::RangeHoldsHost { .. })));
        let mut bad_name = definition("10.77.0.1/24", None);
        bad_name.name = "../x".into();
        assert!(matches!(bad_name.validate(), Err(NetworkError::Name(_))));
        let mut bad_domain = definition("10.77.0.1/24", None);
        bad_domain.domain = Some("-x.lan".into());
        assert!(matches!(bad_domain.validate(), Err(NetworkError::Domain(_))));
    }

    #[test]
    fn subnets_overlap_when_they_share_an_address() {
        let a = Subnet::parse("10.0.0.0/8").unwrap();
        let b = Subnet::parse("10.77.0.0/24").unwrap();
        let c = Subnet::parse("10.78.0.0/24").unwrap();
        assert!(a.overlaps(b) && b.overlaps(a));
        assert!(!b.overlaps(c));
    }

    #[test]
    fn guest_addresses_stay_off_the_networks_own() {
        let plan = definition("10.77.0.1/24", None).validate().unwrap();
        assert_eq!(plan.check_guest_ip("10.77.0.5".parse().unwrap()), Ok(()));
        assert_eq!(plan.check_guest_ip("10.77.0.127".parse().unwrap()), Ok(()));
        for bad in ["10.77.0.1", "10.77.0.0", "10.77.0.255", "10.78.0.5"] {
            assert!(plan.check_guest_ip(bad.parse().unwrap()).is_err(), "{bad}");
        }
        // The DHCP range (here .128-.254) is DHCP's to hand out.
        for in_range in ["10.77.0.128", "10.77.0.150", "10.77.0.254"] {
            assert!(
                matches!(plan.check_guest_ip(in_range.parse().unwrap()), Err(NetworkError::IpInRange { .. })),
                "{in_range}"
            );
        }
    }

    #[test]
    fn subnets_that_cannot_carry_traffic_are_refused() {
        for bad in [
            "127.5.0.1/16",
            "224.1.0.1/24",
            "169.254.1.1/16",
            "0.1.0.1/16",
            "240.0.0.1/24",
            "255.0.0.1/8",
            "239.255.0.1/24",
        ] {
            assert!(
                matches!(definition(bad, None).validate(), Err(NetworkError::SpecialSubnet { .. })),
                "{bad}"
            );
        }
        for good in [
            "10.0.0.1/8",
            "126.255.255.1/24",
            "128.0.0.1/24",
            "169.253.0.1/16",
            "223.255.255.1/24",
            "192.168.1.1/24",
        ] {
            assert!(definition(good, None).validate().is_ok(), "{good}");
        }
    }

    #[test]
    fn macs_parse_and_print_back() {
        assert_eq!(parse_mac("52:54:00:AB:cd:ef").map(format_mac), Ok("52:54:00:ab:cd:ef".into()));
        for bad in ["", "52:54:00:ab:cd", "52:54:00:ab:cd:ef:00", "5:54:00:ab:cd:ef", "zz:54:00:ab:cd:ef"] {
            assert!(matches!(parse_mac(bad), Err(NetworkError::MacSyntax(_))), "{bad}");
        }
        assert!(matches!(parse_mac("01:00:5e:00:00:01"), Err(NetworkError::MacMulticast(_))));
    }

    #[test]
    fn a_definition_reads_back_from_json() {
        let text = r#"{"name":"lab","address":"10.9.0.1/24","mode":"isolated","dhcp_range":["10.9.0.10","10.9.0.20"]}"#;
        let definition: NetworkDefinition = serde_json::from_str(text).unwrap();
        assert_eq!(definition.mode, NetworkMode::Isolated);
        assert!(definition.validate().is_ok());
        assert!(serde_json::from_str::<NetworkDefinition>(r#"{"name":"x","address":"1","bogus":1}"#).is_err());
    }

    proptest! {
        #[test]
        fn a_validated_plan_keeps_its_promises(
            a in any::<u32>(), prefix in 0u8..40, start in any::<u32>(), end in any::<u32>(),
            with_range in any::<bool>(),
        ) {
            let address = format!("{}/{}", Ipv4Addr::from(a), prefix);
            let range = with_range.then(|| (Ipv4Addr::from(start), Ipv4Addr::from(end)));
            let definition = NetworkDefinition {
                name: "n".into(), address, mode: NetworkMode::Nat, dhcp_range: range,
                autostart: false, domain: None,
            };
            if let Ok(plan) = definition.validate() {
                prop_assert!((MIN_PREFIX..=MAX_PREFIX).contains(&plan.subnet.prefix));
                let (s, e) = plan.dhcp_range;
                prop_assert!(u32::from(s) <= u32::from(e));
                for ip in [s, e] {
                    prop_assert!(plan.subnet.contains(ip));
                    prop_assert!(ip != plan.subnet.network && ip != plan.subnet.broadcast());
                    let in_range = matches!(plan.check_guest_ip(ip), Err(NetworkError::IpInRange { .. }));
                    prop_assert!(in_range);
                }
                prop_assert!(!(u32::from(s)..=u32::from(e)).contains(&u32::from(plan.host)));
                let first_octet = plan.subnet.network.octets()[0];
                prop_assert!(first_octet != 0 && first_octet != 127 && first_octet < 224);
                prop_assert!(!Subnet::parse("169.254.0.0/16").unwrap().overlaps(plan.subnet));
            }
        }

        #[test]
        fn special_blocks_are_always_refused(a in any::<u32>(), prefix in MIN_PREFIX..=MAX_PREFIX) {
            let address = Ipv4Addr::from(a);
            let octets = address.octets();
            let special = octets[0] == 0 || octets[0] == 127 || octets[0] >= 224
                || (octets[0] == 169 && octets[1] == 254);
            let definition = NetworkDefinition {
                name: "n".into(), address: format!("{address}/{prefix}"), mode: NetworkMode::Nat,
                dhcp_range: None, autostart: false, domain: None,
            };
            if special {
                let refused = matches!(definition.validate(), Err(NetworkError::SpecialSubnet { .. }));
                prop_assert!(refused);
            }
        }

        #[test]
        fn text_parsers_never_panic(text in "\\PC{0,40}") {
            let _ = parse_cidr(&text);
            let _ = parse_range(&text);
            let _ = check_domain(&text);
            if let Ok(bytes) = parse_mac(&text) {
                prop_assert_eq!(parse_mac(&format_mac(bytes)), Ok(bytes));
            }
        }

        #[test]
        fn cidr_text_round_trips(a in any::<u32>(), prefix in 0u8..=32) {
            let text = format!("{}/{}", Ipv4Addr::from(a), prefix);
            prop_assert_eq!(parse_cidr(&text), Some((Ipv4Addr::from(a), prefix)));
        }
    }
}
