//! The event log: every change to a VM, network or pool is stored (with an increasing ID) and
//! broadcast to `GET /v1/events` followers.

use axum::Router;
use model::manager::event::EventKind;

use crate::server::AppState;

/// The store's tables for events.
pub const SCHEMA: &str = "";

/// The event log and its followers.
pub struct Events {}

impl Events {
    /// Records an event about `object` (a VM, network or pool name) and tells the followers.
    /// Never fails the caller's request: an event that cannot be stored is logged.
    pub fn emit(&self, _kind: EventKind, _object: &str, _detail: Option<String>) {}
}

/// `GET /v1/events`.
pub fn routes() -> Router<AppState> {
    Router::new()
}
