//! `/v1/vms…`: the handlers, each a thin call into [`super::Vms`]. Bodies are read as bytes
//! and parsed here, so a malformed one is a 400 with the daemon's error body.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use model::manager::vm::{ShutdownRequest, VmDefinition, VmInfo, VmSummary};
use serde::de::DeserializeOwned;

use crate::error::{ApiResult, ManagerError};
use crate::server::AppState;

/// `/v1/vms…`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/vms", get(list).post(define))
        .route("/v1/vms/{vm}", get(info).put(edit).delete(undefine))
        .route("/v1/vms/{vm}/start", post(start))
        .route("/v1/vms/{vm}/shutdown", post(shutdown))
        .route("/v1/vms/{vm}/destroy", post(destroy))
        .route("/v1/vms/{vm}/reboot", post(reboot))
        .route("/v1/vms/{vm}/suspend", post(suspend))
        .route("/v1/vms/{vm}/resume", post(resume))
        .route("/v1/vms/{vm}/save", post(save))
        .route("/v1/vms/{vm}/restore", post(restore))
}

/// Runs a request's work as its own task: a client that hangs up mid-way does not cancel a
/// start or a shutdown half done.
async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = ApiResult<T>> + Send + 'static,
) -> ApiResult<T> {
    tokio::spawn(work).await.map_err(|e| ManagerError::internal(format!("the request's task failed: {e}")))?
}

/// A JSON body; an empty one is `T`'s default when `empty` is given.
fn body<T: DeserializeOwned>(bytes: &[u8], empty: Option<T>) -> ApiResult<T> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        if let Some(value) = empty {
            return Ok(value);
        }
    }
    serde_json::from_slice(bytes).map_err(|e| ManagerError::invalid(format!("the body is not valid: {e}")))
}

async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<VmSummary>>> {
    Ok(Json(state.vms.try_list()?))
}

async fn define(State(state): State<AppState>, bytes: Bytes) -> ApiResult<(StatusCode, Json<VmInfo>)> {
    let definition: VmDefinition = body(&bytes, None)?;
    Ok((
        StatusCode::CREATED,
        Json(detached(async move { state.vms.define(&state, definition).await }).await?),
    ))
}

async fn info(State(state): State<AppState>, Path(vm): Path<String>) -> ApiResult<Json<VmInfo>> {
    Ok(Json(state.vms.info(&vm)?))
}

async fn edit(
    State(state): State<AppState>,
    Path(vm): Path<String>,
    bytes: Bytes,
) -> ApiResult<Json<VmInfo>> {
    let definition: VmDefinition = body(&bytes, None)?;
    Ok(Json(detached(async move { state.vms.edit(&state, &vm, definition).await }).await?))
}

async fn undefine(State(state): State<AppState>, Path(vm): Path<String>) -> ApiResult<StatusCode> {
    detached(async move { state.vms.undefine(&state, &vm).await }).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn start(State(state): State<AppState>, Path(vm): Path<String>) -> ApiResult<Json<VmInfo>> {
    Ok(Json(detached(async move { state.vms.start(&state, &vm).await }).await?))
}

async fn shutdown(
    State(state): State<AppState>,
    Path(vm): Path<String>,
    bytes: Bytes,
) -> ApiResult<Json<VmInfo>> {
    let request: ShutdownRequest = body(&bytes, Some(ShutdownRequest::default()))?;
    Ok(Json(detached(async move { state.vms.shutdown(&state, &vm, request).await }).await?))
}

async fn destroy(State(state): State<AppState>, Path(vm): Path<String>) -> ApiResult<Json<VmInfo>> {
    Ok(Json(detached(async move { state.vms.destroy(&state, &vm).await }).await?))
}

async fn reboot(State(state): State<AppState>, Path(vm): Path<String>) -> ApiResult<Json<VmInfo>> {
    Ok(Json(detached(async move { state.vms.reboot(&state, &vm).await }).await?))
}

async fn suspend(State(state): State<AppState>, Path(vm): Path<String>) -> ApiResult<Json<VmInfo>> {
    Ok(Json(detached(async move { state.vms.set_paused(&state, &vm, true).await }).await?))
}

async fn resume(State(state): State<AppState>, Path(vm): Path<String>) -> ApiResult<Json<VmInfo>> {
    Ok(Json(detached(async move { state.vms.set_paused(&state, &vm, false).await }).await?))
}

async fn save(State(state): State<AppState>, Path(vm): Path<String>) -> ApiResult<Json<VmInfo>> {
    Ok(Json(detached(async move { state.vms.save(&state, &vm).await }).await?))
}

async fn restore(State(state): State<AppState>, Path(vm): Path<String>) -> ApiResult<Json<VmInfo>> {
    Ok(Json(detached(async move { state.vms.restore(&state, &vm).await }).await?))
}
