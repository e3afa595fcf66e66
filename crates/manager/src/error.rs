//! The daemon's one error type, and its one mapping to an HTTP answer.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use model::manager::{ErrorBody, ErrorKind};

/// A failed request: its kind (which decides the status) and one line for the user.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ManagerError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ManagerError {
    pub fn new(kind: ErrorKind, message: impl std::fmt::Display) -> ManagerError {
        ManagerError { kind, message: message.to_string() }
    }
    pub fn invalid(message: impl std::fmt::Display) -> ManagerError {
        ManagerError::new(ErrorKind::Invalid, message)
    }
    pub fn not_found(message: impl std::fmt::Display) -> ManagerError {
        ManagerError::new(ErrorKind::NotFound, message)
    }
    pub fn conflict(message: impl std::fmt::Display) -> ManagerError {
        ManagerError::new(ErrorKind::Conflict, message)
    }
    pub fn unavailable(message: impl std::fmt::Display) -> ManagerError {
        ManagerError::new(ErrorKind::Unavailable, message)
    }
    pub fn internal(message: impl std::fmt::Display) -> ManagerError {
        ManagerError::new(ErrorKind::Internal, message)
    }
}

impl From<crate::store::StoreError> for ManagerError {
    fn from(error: crate::store::StoreError) -> ManagerError {
        // A full disk under the state directory is the host's problem, not the daemon's bug.
        let kind = if error.is_disk_full() { ErrorKind::Unavailable } else { ErrorKind::Internal };
        ManagerError::new(kind, error)
    }
}

impl From<model::manager::name::NameError> for ManagerError {
    fn from(error: model::manager::name::NameError) -> ManagerError {
        ManagerError::invalid(error)
    }
}

impl IntoResponse for ManagerError {
    fn into_response(self) -> Response {
        if self.kind == ErrorKind::Internal {
            tracing::error!("{}", self.message);
        }
        let status = StatusCode::from_u16(self.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(ErrorBody { error: self.message, kind: self.kind })).into_response()
    }
}

/// What every handler returns.
pub type ApiResult<T> = Result<T, ManagerError>;
