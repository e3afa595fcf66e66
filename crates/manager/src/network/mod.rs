//! Networks: a bridge each, taps for the VMs' cards, NAT in an nftables table of Kestrel's own,
//! DHCP and DNS from dnsmasq.

use axum::Router;

use crate::server::AppState;

/// The store's tables for networks.
pub const SCHEMA: &str = "";

/// The networks the daemon keeps.
pub struct Networks {}

/// `/v1/networks…`.
pub fn routes() -> Router<AppState> {
    Router::new()
}
