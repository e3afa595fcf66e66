//! The CLI's side of the daemon's API: one blocking request per call, over the Unix socket the
//! daemon listens on (`--socket`, else `KESTREL_SOCKET`, else the default).
#![allow(dead_code)] // until the vm/net/pool commands use every part

use std::path::PathBuf;
use std::time::Duration;

use hyper::{Method, StatusCode};
use model::manager::ErrorBody;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// How long a plain request may take (long operations such as a graceful shutdown say their
/// own limit with [`Client::request_within`]).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a command failed to get its answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the Kestrel daemon at {socket} (is `kestrel daemon` running? KESTREL_SOCKET names another socket): {source}")]
    Unreachable { socket: String, source: manager::unix_http::UnixHttpError },
    #[error("{0}")]
    Daemon(String),
    #[error("the daemon's answer is not what was expected: {0}")]
    BadAnswer(String),
    #[error("cannot start the client's runtime: {0}")]
    Runtime(std::io::Error),
}

/// A connection-less client: each request opens its own connection.
pub struct Client {
    socket: PathBuf,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    /// The client for the daemon at `socket` (or the environment's, or the default).
    pub fn new(socket: Option<PathBuf>) -> Result<Client, ClientError> {
        let paths = manager::paths::Paths::resolve(None, socket);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ClientError::Runtime)?;
        Ok(Client { socket: paths.socket, runtime })
    }

    /// The daemon's socket.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// The client's runtime, for streaming commands (events, console) that need more than one
    /// request and answer.
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }

    /// Sends `body` (as JSON) and decodes a 2xx answer's JSON; an error answer becomes its
    /// one-line message.
    pub fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        self.request_within(method, path, body, REQUEST_TIMEOUT)
    }

    /// [`Client::request`] with its own time limit.
    pub fn request_within<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let body =
            body.map(serde_json::to_vec).transpose().map_err(|e| ClientError::BadAnswer(e.to_string()))?;
        let answer = self
            .runtime
            .block_on(manager::unix_http::request(&self.socket, method, path, body, timeout))
            .map_err(|source| ClientError::Unreachable {
                socket: self.socket.display().to_string(),
                source,
            })?;
        if !answer.status.is_success() {
            return Err(error_of(answer.status, &answer.body));
        }
        // An empty success answers `()` as `null`.
        let body: &[u8] = if answer.body.is_empty() { b"null" } else { &answer.body };
        serde_json::from_slice(body).map_err(|e| ClientError::BadAnswer(e.to_string()))
    }
}

/// The daemon's error body's message, or the status when the body is not one.
fn error_of(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(error) => ClientError::Daemon(error.error),
        Err(_) => ClientError::Daemon(format!(
            "the daemon answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )),
    }
}
