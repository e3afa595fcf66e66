//! Networks (`kestrel net …`): a bridge, NAT to the host's uplink or isolated, DHCP and DNS.
//! (Owned by the networks work; the shapes here are the first draft.)

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// `kestrel net define` / `POST /v1/networks`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkDefinition {
    pub name: String,
    /// The host's address on the bridge and the prefix, e.g. `10.77.0.1/24`.
    pub address: String,
    #[serde(default)]
    pub mode: NetworkMode,
    /// DHCP range start and end (default: the upper half of the subnet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp_range: Option<(Ipv4Addr, Ipv4Addr)>,
    #[serde(default)]
    pub autostart: bool,
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

/// `GET /v1/networks/{net}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub definition: NetworkDefinition,
    pub active: bool,
    pub bridge: String,
}
