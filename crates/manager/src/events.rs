//! The event log: every change to a VM, network or pool is stored (with an increasing ID) and
//! broadcast to `GET /v1/events` followers.

use axum::Router;

use crate::server::AppState;

/// The store's tables for events.
pub const SCHEMA: &str = "";

/// The event log and its followers.
pub struct Events {}

/// `GET /v1/events`.
pub fn routes() -> Router<AppState> {
    Router::new()
}
