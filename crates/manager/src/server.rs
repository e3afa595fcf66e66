//! The daemon's REST API: one axum router over the Unix socket, made of each module's routes.
//!
//! Routes (bodies in `model::manager`; `docs/manager-api.yaml` describes them):
//! - VMs (`vms`): `GET|POST /v1/vms`, `GET|PUT|DELETE /v1/vms/{vm}`, `POST /v1/vms/{vm}/{start,
//!   shutdown,destroy,reboot,suspend,resume,save,restore}`, `GET /v1/vms/{vm}/stats`
//! - console (`console`): `GET /v1/vms/{vm}/console` (WebSocket), `GET /v1/vms/{vm}/console/log`
//! - events (`events`): `GET /v1/events` (`?follow=true&since=ID`; one JSON object per line)
//! - networks (`network`): `GET|POST /v1/networks`, `GET|DELETE /v1/networks/{net}`,
//!   `POST /v1/networks/{net}/{start,stop}`
//! - pools (`pool`): `GET|POST /v1/pools`, `GET|DELETE /v1/pools/{pool}`,
//!   `POST /v1/pools/{pool}/refresh`, `GET|POST /v1/pools/{pool}/volumes`,
//!   `GET|DELETE /v1/pools/{pool}/volumes/{vol}`, `POST /v1/pools/{pool}/volumes/{vol}/resize`,
//!   `PUT|GET /v1/pools/{pool}/volumes/{vol}/data` (`PUT …?format=raw|qcow2`: the body is the
//!   image, streamed; 201 + VolumeInfo)
//! - metrics (`metrics`): `GET /metrics` (Prometheus text format)
//! - web console tokens (`web::tokens`): `POST|DELETE /v1/web/tokens` (the browser console
//!   itself, `kestrel daemon --web`, serves this same router under `/api` over HTTPS: `web`)
//!
//! `{vm}` is a name or a UUID.

use std::sync::Arc;

use axum::Router;

use crate::paths::Paths;
use crate::store::Store;

/// Everything a handler reaches: one per daemon, shared by every request.
pub struct Shared {
    pub paths: Paths,
    pub store: Arc<Store>,
    pub events: crate::events::Events,
    pub vms: crate::vms::Vms,
    pub consoles: crate::console::Consoles,
    pub networks: crate::network::Networks,
    pub pools: crate::pool::Pools,
    /// The web console's sessions (in memory: a restarted daemon has none).
    pub web_sessions: crate::web::session::Sessions,
}

/// The router's state.
pub type AppState = Arc<Shared>;

/// The daemon's whole API.
pub fn router(state: AppState) -> Router {
    routes(state, true)
}

/// The API the web console serves under `/api`: the whole API but the login token routes, so a
/// session cannot mint tokens (`/api/v1/web/tokens` is no route at all there).
pub fn web_router(state: AppState) -> Router {
    routes(state, false)
}

fn routes(state: AppState, with_web_tokens: bool) -> Router {
    let mut routes = Router::new()
        // --- core ---
        .merge(crate::vms::routes())
        .merge(crate::events::routes())
        // --- console and metrics ---
        .merge(crate::console::routes())
        .merge(crate::metrics::routes())
        // --- networks ---
        .merge(crate::network::routes())
        // --- pools ---
        .merge(crate::pool::routes());
    // --- web console: its login tokens, minted on the socket only ---
    if with_web_tokens {
        routes = routes.merge(crate::web::tokens::routes());
    }
    routes
        // --- console and metrics: every request counted for `kestrel_api_requests_total` ---
        .layer(axum::middleware::from_fn(crate::metrics::count_requests))
        // --- end console and metrics ---
        .with_state(state)
}
