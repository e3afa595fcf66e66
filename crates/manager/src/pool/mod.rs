//! Storage pools: directories of raw and qcow2 volumes, kept through `crates/storage`.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use model::disk::ImageFormat;

use crate::error::{ApiResult, ManagerError};
use crate::server::AppState;
use crate::store::Store;

/// The store's tables for pools and volumes.
pub const SCHEMA: &str = "";

/// The pools the daemon keeps.
pub struct Pools {
    #[allow(dead_code)]
    store: Arc<Store>,
}

/// A volume as a VMM opens it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedVolume {
    pub path: PathBuf,
    pub format: ImageFormat,
}

impl Pools {
    pub fn new(store: Arc<Store>) -> Pools {
        Pools { store }
    }

    /// The file and format of a volume named `POOL/VOLUME` in a definition; an error names
    /// what is missing.
    pub fn resolve_volume(&self, reference: &str) -> ApiResult<ResolvedVolume> {
        Err(ManagerError::not_found(format!("no volume '{reference}' (pools are not implemented yet)")))
    }
}

/// `/v1/pools…`.
pub fn routes() -> Router<AppState> {
    Router::new()
}
