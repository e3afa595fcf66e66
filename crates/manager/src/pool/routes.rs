//! `/v1/pools…`: the pool API (see `server.rs` for the whole route table).
//!
//! - `GET|POST /v1/pools`, `GET|DELETE /v1/pools/{pool}`, `POST /v1/pools/{pool}/refresh`
//! - `GET|POST /v1/pools/{pool}/volumes`, `GET|DELETE /v1/pools/{pool}/volumes/{vol}`,
//!   `POST /v1/pools/{pool}/volumes/{vol}/resize`
//! - `PUT /v1/pools/{pool}/volumes/{vol}/data?format=raw|qcow2` (the body is the image; answers
//!   201 + VolumeInfo), `GET /v1/pools/{pool}/volumes/{vol}/data` (the image file's bytes)

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use model::manager::event::EventKind;
use model::manager::pool::{
    PoolDefinition, PoolInfo, PoolRefresh, VolumeCreate, VolumeInfo, VolumeResize, VolumeUpload,
};

use super::data::{self, blocking};
use crate::error::{ApiResult, ManagerError};
use crate::server::AppState;

/// `/v1/pools…`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/pools", get(list_pools).post(define_pool))
        .route("/v1/pools/{pool}", get(pool_info).delete(undefine_pool))
        .route("/v1/pools/{pool}/refresh", post(refresh_pool))
        .route("/v1/pools/{pool}/volumes", get(list_volumes).post(create_volume))
        .route("/v1/pools/{pool}/volumes/{vol}", get(volume_info).delete(delete_volume))
        .route("/v1/pools/{pool}/volumes/{vol}/resize", post(resize_volume))
        .route("/v1/pools/{pool}/volumes/{vol}/data", get(download).put(upload))
}

fn body<T>(json: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    json.map(|Json(value)| value).map_err(|e| ManagerError::invalid(e.body_text()))
}

async fn list_pools(State(state): State<AppState>) -> ApiResult<Json<Vec<PoolInfo>>> {
    blocking(move || state.pools.list()).await.map(Json)
}

async fn define_pool(
    State(state): State<AppState>,
    definition: Result<Json<PoolDefinition>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<PoolInfo>)> {
    let definition = body(definition)?;
    blocking(move || state.pools.define(&definition)).await.map(|info| (StatusCode::CREATED, Json(info)))
}

async fn pool_info(State(state): State<AppState>, Path(pool): Path<String>) -> ApiResult<Json<PoolInfo>> {
    blocking(move || state.pools.info(&pool)).await.map(Json)
}

async fn undefine_pool(State(state): State<AppState>, Path(pool): Path<String>) -> ApiResult<StatusCode> {
    blocking(move || with_users(&state, |users| state.pools.undefine(&pool, users))).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn refresh_pool(
    State(state): State<AppState>,
    Path(pool): Path<String>,
) -> ApiResult<Json<PoolRefresh>> {
    blocking(move || state.pools.refresh(&pool)).await.map(Json)
}

async fn list_volumes(
    State(state): State<AppState>,
    Path(pool): Path<String>,
) -> ApiResult<Json<Vec<VolumeInfo>>> {
    blocking(move || with_users(&state, |users| state.pools.volumes(&pool, users))).await.map(Json)
}

async fn create_volume(
    State(state): State<AppState>,
    Path(pool): Path<String>,
    request: Result<Json<VolumeCreate>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<VolumeInfo>)> {
    let request = body(request)?;
    blocking(move || {
        let info = state.pools.create_volume(&pool, &request)?;
        let detail = request.clone_of.as_ref().map(|base| format!("a clone of {base}"));
        state.events.emit(EventKind::VolumeCreated, &format!("{pool}/{}", request.name), detail);
        Ok(info)
    })
    .await
    .map(|info| (StatusCode::CREATED, Json(info)))
}

async fn volume_info(
    State(state): State<AppState>,
    Path((pool, vol)): Path<(String, String)>,
) -> ApiResult<Json<VolumeInfo>> {
    blocking(move || with_users(&state, |users| state.pools.volume_info(&pool, &vol, users))).await.map(Json)
}

async fn delete_volume(
    State(state): State<AppState>,
    Path((pool, vol)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    blocking(move || {
        with_users(&state, |users| state.pools.delete_volume(&pool, &vol, users))?;
        state.events.emit(EventKind::VolumeDeleted, &format!("{pool}/{vol}"), None);
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn resize_volume(
    State(state): State<AppState>,
    Path((pool, vol)): Path<(String, String)>,
    request: Result<Json<VolumeResize>, JsonRejection>,
) -> ApiResult<Json<VolumeInfo>> {
    let request = body(request)?;
    blocking(move || state.pools.resize_volume(&pool, &vol, &request)).await.map(Json)
}

async fn upload(
    State(state): State<AppState>,
    Path((pool, vol)): Path<(String, String)>,
    query: Result<Query<VolumeUpload>, QueryRejection>,
    request: Body,
) -> ApiResult<(StatusCode, Json<VolumeInfo>)> {
    let query = match query {
        Ok(Query(query)) => query,
        Err(e) => {
            data::drain(request).await;
            return Err(ManagerError::invalid(format!(
                "{} (say ?format=raw or ?format=qcow2)",
                e.body_text()
            )));
        }
    };
    let info = data::upload(state, pool, vol, query.format, request).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn download(
    State(state): State<AppState>,
    Path((pool, vol)): Path<(String, String)>,
) -> ApiResult<Response> {
    data::download(state, pool, vol).await
}

/// Runs `work` with the store's answer to "which VMs use this volume". A store that cannot say
/// counts as a user (so nothing is deleted on it), and its error (503) is the answer.
fn with_users<T>(state: &AppState, work: impl FnOnce(super::UsersOf<'_>) -> ApiResult<T>) -> ApiResult<T> {
    let failed = std::cell::Cell::new(None);
    let users_of = |reference: &str| {
        state.vms.users_of_volume(reference).unwrap_or_else(|error| {
            failed.set(Some(error));
            vec!["(unknown: the store cannot say)".to_owned()]
        })
    };
    let result = work(&users_of);
    failed.into_inner().map_or(result, Err)
}
