//! `GET /metrics` in Prometheus text format, and the per-VM counters behind `GET
//! /v1/vms/{vm}/stats`, both from the VMMs' metrics files.

use axum::Router;

use crate::server::AppState;

/// `GET /metrics`.
pub fn routes() -> Router<AppState> {
    Router::new()
}
