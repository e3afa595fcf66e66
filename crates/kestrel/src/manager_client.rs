//! The CLI's side of the daemon's API: one blocking request per call, over the Unix socket the
//! daemon listens on (`--socket`, else `KESTREL_SOCKET`, else the default).
#![allow(dead_code)] // until the vm/net/pool commands use every part
//!
//! Besides one-shot requests, two streams: [`Client::stream_lines`] (a response read line by line
//! as it arrives: `GET /v1/events?follow=true`) and [`Client::websocket`] (the console).

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
    #[error("the daemon sent a line longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong,
    #[error("the connection to the daemon failed: {0}")]
    Stream(String),
}

/// The longest line [`Client::stream_lines`] accepts (an event is a few hundred bytes).
pub const MAX_LINE_BYTES: usize = 1 << 20;

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

impl Client {
    /// Sends a GET whose answer is a stream of lines and calls `on_line` with each whole line
    /// (without its newline) as it arrives, until the daemon ends the answer or `on_line` returns
    /// `false`. No overall time limit: a followed stream lasts as long as the caller wants.
    pub fn stream_lines(&self, path: &str, on_line: impl FnMut(&[u8]) -> bool) -> Result<(), ClientError> {
        self.runtime.block_on(self.stream_lines_async(path, on_line))
    }

    async fn stream_lines_async(
        &self,
        path: &str,
        mut on_line: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), ClientError> {
        use http_body_util::BodyExt;
        let unreachable =
            |source| ClientError::Unreachable { socket: self.socket.display().to_string(), source };
        let shown = self.socket.display().to_string();
        let stream = tokio::net::UnixStream::connect(&self.socket).await.map_err(|source| {
            unreachable(manager::unix_http::UnixHttpError::Connect { path: shown.clone(), source })
        })?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(
                |source| unreachable(manager::unix_http::UnixHttpError::Http { path: shown.clone(), source }),
            )?;
        let driver = tokio::spawn(connection);
        let request = hyper::Request::builder()
            .method(Method::GET)
            .uri(path)
            .header("host", "localhost")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| ClientError::BadAnswer(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(|e| ClientError::Stream(e.to_string()))?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let limited = http_body_util::Limited::new(body, 64 << 10);
            let bytes = limited.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            driver.abort();
            return Err(error_of(status, &bytes));
        }
        let mut pending: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Stream(e.to_string()))?;
            let Ok(data) = frame.into_data() else { continue };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let keep_going = on_line(&pending[..end]);
                pending.drain(..=end);
                if !keep_going {
                    driver.abort();
                    return Ok(());
                }
            }
            if pending.len() > MAX_LINE_BYTES {
                driver.abort();
                return Err(ClientError::LineTooLong);
            }
        }
        if !pending.is_empty() {
            on_line(&pending);
        }
        driver.abort();
        Ok(())
    }

    /// Opens a WebSocket to `path` (the console) over the daemon's socket. An answer other than
    /// the upgrade (an unknown VM's 404) becomes its one-line message.
    pub async fn websocket(
        &self,
        path: &str,
    ) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::UnixStream>, ClientError> {
        let shown = self.socket.display().to_string();
        let stream = tokio::net::UnixStream::connect(&self.socket).await.map_err(|source| {
            ClientError::Unreachable {
                socket: shown.clone(),
                source: manager::unix_http::UnixHttpError::Connect { path: shown.clone(), source },
            }
        })?;
        let uri = format!("ws://localhost{path}");
        match tokio_tungstenite::client_async(uri, stream).await {
            Ok((socket, _)) => Ok(socket),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let body = response.body().clone().unwrap_or_default();
                Err(error_of(response.status(), &body))
            }
            Err(e) => Err(ClientError::Stream(e.to_string())),
        }
    }
}

/// The daemon's error body's message, or the status when the body is not one.
fn error_of(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(error) => ClientError::Daemon(error.error),
        Err(_) if body.is_empty() => ClientError::Daemon(format!("the daemon answered {status}")),
        Err(_) => ClientError::Daemon(format!(
            "the daemon answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )),
    }
}
