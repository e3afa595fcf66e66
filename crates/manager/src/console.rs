//! Serial consoles: many viewers of one VM's console over WebSocket, fed from the console log
//! file (the scrollback, which outlives the daemon), input written to the VMM's FIFO.

use axum::Router;

use crate::server::AppState;

/// The consoles being watched.
pub struct Consoles {}

/// `GET /v1/vms/{vm}/console`, `GET /v1/vms/{vm}/console/log`.
pub fn routes() -> Router<AppState> {
    Router::new()
}
