//! The manager daemon's API bodies (`kestrel daemon`, spoken by the `kestrel vm|net|pool|vol` CLI
//! and any other client): VM definitions and their state, networks, storage pools and volumes,
//! events, and the error body. Routes are listed in `docs/manager-api.yaml`.

pub mod event;
pub mod name;
pub mod network;
pub mod pool;
pub mod vm;
pub mod web;

use serde::{Deserialize, Serialize};

/// The body of every error the daemon answers with (status 4xx/5xx).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One line a person can act on, e.g. `no VM named 'web'`.
    pub error: String,
    /// What kind of failure, for programs.
    pub kind: ErrorKind,
}

/// The kinds of failure a client may tell apart (each maps to one HTTP status).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// 400: the request or definition is malformed or invalid.
    Invalid,
    /// 404: no such VM, network, pool or volume.
    NotFound,
    /// 409: a name taken, an object in use, an operation not allowed in the current state.
    Conflict,
    /// 403: the caller may not do this.
    Forbidden,
    /// 401: the web console's caller has not logged in (or its session ended).
    Unauthorized,
    /// 408: the web console's client did not send its request's body in time.
    Timeout,
    /// 429: too many failed web console logins; try again in a minute.
    TooManyRequests,
    /// 503: a resource the host lacks (no space, no KVM, a tool missing).
    Unavailable,
    /// 500: the daemon failed (its log says more).
    Internal,
}

impl ErrorKind {
    /// The HTTP status code for this kind.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::Invalid => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::Forbidden => 403,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Timeout => 408,
            ErrorKind::TooManyRequests => 429,
            ErrorKind::Unavailable => 503,
            ErrorKind::Internal => 500,
        }
    }
}
