//! VMs: definitions in the store, and their VMM processes (start, adopt, watch, stop).

use axum::Router;
use model::manager::vm::{VmInfo, VmSummary};

use crate::error::{ApiResult, ManagerError};
use crate::server::AppState;

/// The store's tables for VMs.
pub const SCHEMA: &str = "";

/// The VMs the daemon keeps.
pub struct Vms {}

impl Vms {
    /// Every defined VM, by name.
    pub fn list(&self) -> Vec<VmSummary> {
        Vec::new()
    }

    /// One VM, by name or UUID.
    pub fn info(&self, key: &str) -> ApiResult<VmInfo> {
        Err(ManagerError::not_found(format!("no VM named '{key}'")))
    }

    /// The names of the defined VMs whose definitions use the volume `POOL/VOLUME`.
    pub fn users_of_volume(&self, _reference: &str) -> Vec<String> {
        Vec::new()
    }

    /// The names of the defined VMs with a card on network `name`.
    pub fn users_of_network(&self, _name: &str) -> Vec<String> {
        Vec::new()
    }
}

/// `/v1/vms…`.
pub fn routes() -> Router<AppState> {
    Router::new()
}
