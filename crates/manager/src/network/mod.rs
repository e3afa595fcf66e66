//! Networks: a bridge each, taps for the VMs' cards, NAT in an nftables table of Kestrel's own,
//! DHCP and DNS from dnsmasq.

use std::sync::Arc;

use axum::Router;
use model::manager::vm::NicDefinition;

use crate::error::{ApiResult, ManagerError};
use crate::paths::Paths;
use crate::server::AppState;
use crate::store::Store;

/// The store's tables for networks.
pub const SCHEMA: &str = "";

/// The networks the daemon keeps.
pub struct Networks {
    #[allow(dead_code)]
    store: Arc<Store>,
    #[allow(dead_code)]
    paths: Paths,
}

/// A card plugged into its network for one run of a VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluggedNic {
    /// The tap the VMM attaches to (`host_dev_name`).
    pub tap: String,
}

impl Networks {
    pub fn new(store: Arc<Store>, paths: &Paths) -> Networks {
        Networks { store, paths: paths.clone() }
    }

    /// Brings up the networks marked autostart (and re-creates the bridges, rules and DHCP
    /// servers of those that were active before the daemon or the host restarted).
    pub async fn start_autostart(&self) -> ApiResult<()> {
        Ok(())
    }

    /// Checks a card of a definition being defined or edited: its network exists, its fixed
    /// address is inside the network and not reserved by another VM's card.
    pub fn check_nic(&self, _vm_uuid: &str, nic: &NicDefinition) -> ApiResult<()> {
        match &nic.network {
            Some(network) => Err(ManagerError::not_found(format!("no network named '{network}'"))),
            None => Ok(()),
        }
    }

    /// Makes the tap for card `index` of a VM about to start, plugs it into the card's network
    /// (which must be active) and registers its MAC (and fixed address) with the network's DHCP
    /// server. The tap's name depends only on the VM's UUID and `index`, so a restarted daemon
    /// finds it again.
    pub async fn plug(
        &self,
        _vm_uuid: &str,
        _vm_name: &str,
        _index: usize,
        _nic: &NicDefinition,
    ) -> ApiResult<PluggedNic> {
        Err(ManagerError::unavailable("networks are not implemented yet"))
    }

    /// Removes the taps made for a VM (after its VMM ended). Idempotent.
    pub async fn unplug_vm(&self, _vm_uuid: &str) {}
}

/// `/v1/networks…`.
pub fn routes() -> Router<AppState> {
    Router::new()
}
