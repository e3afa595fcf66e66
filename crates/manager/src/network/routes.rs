//! `/v1/networks…`: define, list, inspect, start, stop and undefine networks.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use model::manager::event::EventKind;
use model::manager::network::{NetworkDefinition, NetworkInfo};

use crate::error::{ApiResult, ManagerError};
use crate::server::AppState;

/// `/v1/networks…`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/networks", get(list).post(define))
        .route("/v1/networks/{net}", get(info).delete(undefine))
        .route("/v1/networks/{net}/start", post(start))
        .route("/v1/networks/{net}/stop", post(stop))
}

async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<NetworkInfo>>> {
    Ok(Json(state.networks.list()?))
}

async fn define(State(state): State<AppState>, body: Bytes) -> ApiResult<(StatusCode, Json<NetworkInfo>)> {
    let definition: NetworkDefinition = serde_json::from_slice(&body)
        .map_err(|e| ManagerError::invalid(format!("a network definition: {e}")))?;
    let info = state.networks.define(definition).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn info(State(state): State<AppState>, Path(net): Path<String>) -> ApiResult<Json<NetworkInfo>> {
    Ok(Json(state.networks.info(&net)?))
}

async fn undefine(State(state): State<AppState>, Path(net): Path<String>) -> ApiResult<StatusCode> {
    let users = state.vms.users_of_network(&net)?;
    let was_active = state.networks.info(&net)?.active;
    state.networks.undefine(&net, users).await?;
    if was_active {
        state.events.emit(EventKind::NetworkStopped, &net, Some("undefined".into()));
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn start(State(state): State<AppState>, Path(net): Path<String>) -> ApiResult<Json<NetworkInfo>> {
    let info = state.networks.start(&net).await?;
    state.events.emit(EventKind::NetworkStarted, &net, Some(info.bridge.clone()));
    Ok(Json(info))
}

async fn stop(State(state): State<AppState>, Path(net): Path<String>) -> ApiResult<Json<NetworkInfo>> {
    let info = state.networks.stop(&net).await?;
    state.events.emit(EventKind::NetworkStopped, &net, None);
    Ok(Json(info))
}
