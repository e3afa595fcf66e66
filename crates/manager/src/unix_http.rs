//! HTTP/1.1 requests over a Unix socket (hyper's client): the daemon's calls to each VMM's API
//! and the CLI's calls to the daemon.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// The most of a response body read (the daemon's and the VMM's answers are far smaller).
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum UnixHttpError {
    #[error("cannot connect to {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Http { path: String, source: hyper::Error },
    #[error("{path}: the request is malformed: {source}")]
    Request { path: String, source: hyper::http::Error },
    #[error("{path}: no answer within {0:?}", timeout)]
    Timeout { path: String, timeout: Duration },
    #[error("{path}: the answer is larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge { path: String },
    #[error("{path}: the answer's body cannot be read: {source}")]
    Body { path: String, source: Box<dyn std::error::Error + Send + Sync> },
}

/// Why a [`http_body_util::Limited`] body could not be read: `TooLarge` only for the length
/// limit; a connection or framing error is what it is.
pub fn body_error(path: &str, error: Box<dyn std::error::Error + Send + Sync>) -> UnixHttpError {
    if error.is::<http_body_util::LengthLimitError>() {
        return UnixHttpError::TooLarge { path: path.to_owned() };
    }
    match error.downcast::<hyper::Error>() {
        Ok(source) => UnixHttpError::Http { path: path.to_owned(), source: *source },
        Err(source) => UnixHttpError::Body { path: path.to_owned(), source },
    }
}

/// An answer: the status and the whole body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Sends one request (one connection) to the server on `socket` and reads the whole answer,
/// within `timeout`.
pub async fn request(
    socket: &Path,
    method: Method,
    uri_path: &str,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Answer, UnixHttpError> {
    let path = socket.display().to_string();
    let work = async {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| UnixHttpError::Connect { path: path.clone(), source })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UnixHttpError::Http { path: path.clone(), source })?;
        let driver = tokio::spawn(connection);
        let mut builder = Request::builder().method(method).uri(uri_path).header("host", "localhost");
        if body.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|source| UnixHttpError::Request { path: path.clone(), source })?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|source| UnixHttpError::Http { path: path.clone(), source })?;
        let status = response.status();
        let limited = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BYTES);
        let body = limited.collect().await.map_err(|e| body_error(&path, e))?.to_bytes();
        driver.abort();
        Ok(Answer { status, body })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| UnixHttpError::Timeout { path: path.clone(), timeout })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_length_limit_is_too_large() {
        let body = http_body_util::Limited::new(Full::new(Bytes::from_static(b"0123456789")), 4);
        let too_large = body.collect().await.unwrap_err();
        assert!(matches!(body_error("s", too_large), UnixHttpError::TooLarge { .. }));
        let other: Box<dyn std::error::Error + Send + Sync> = "connection reset".into();
        assert!(matches!(body_error("s", other), UnixHttpError::Body { .. }));
    }
}
