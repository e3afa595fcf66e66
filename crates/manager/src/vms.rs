//! VMs: definitions in the store, and their VMM processes (start, adopt, watch, stop).

use axum::Router;

use crate::server::AppState;

/// The store's tables for VMs.
pub const SCHEMA: &str = "";

/// The VMs the daemon keeps.
pub struct Vms {}

/// `/v1/vms…`.
pub fn routes() -> Router<AppState> {
    Router::new()
}
