//! Storage pools: directories of raw and qcow2 volumes, kept through `crates/storage`.

use axum::Router;

use crate::server::AppState;

/// The store's tables for pools and volumes.
pub const SCHEMA: &str = "";

/// The pools the daemon keeps.
pub struct Pools {}

/// `/v1/pools…`.
pub fn routes() -> Router<AppState> {
    Router::new()
}
