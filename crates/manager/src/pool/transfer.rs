//! The client's side of a volume's upload and download (`kestrel vol import|download`): the
//! bytes are streamed between the user's file and the daemon's socket, never held whole, and a
//! callback hears how far it got (for a progress bar).

use std::path::Path;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::unix_http::{Answer, UnixHttpError};

/// Pieces read from the user's file.
const CHUNK: usize = 256 << 10;
/// The most of an error answer read.
const MAX_ERROR_BYTES: usize = 64 << 10;

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Http(#[from] UnixHttpError),
    #[error("{0}")]
    Local(std::io::Error),
}

fn http(socket: &Path) -> impl Fn(hyper::Error) -> TransferError + '_ {
    move |source| TransferError::Http(UnixHttpError::Http { path: socket.display().to_string(), source })
}

async fn connect(
    socket: &Path,
) -> Result<hyper::client::conn::http1::SendRequest<StreamBody<BoxedFrames>>, TransferError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| UnixHttpError::Connect { path: socket.display().to_string(), source })?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(http(socket))?;
    tokio::spawn(connection);
    Ok(sender)
}

type BoxedFrames = futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, std::io::Error>>;

/// Sends `file` (`length` bytes) as the body of `PUT uri`; `progress(bytes sent)` is called as it
/// goes. The answer is the daemon's (its status tells success).
pub async fn upload(
    socket: &Path,
    uri: &str,
    file: tokio::fs::File,
    length: u64,
    progress: impl Fn(u64) + Send + 'static,
) -> Result<Answer, TransferError> {
    let mut sender = connect(socket).await?;
    let frames = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buffer = vec![0u8; CHUNK];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(n) => {
                buffer.truncate(n);
                Some((Ok(Frame::data(Bytes::from(buffer))), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
    .scan(0u64, move |sent, frame| {
        if let Ok(frame) = &frame {
            if let Some(data) = frame.data_ref() {
                *sent += data.len() as u64;
                progress(*sent);
            }
        }
        std::future::ready(Some(frame))
    })
    .boxed();
    let request = Request::builder()
        .method(Method::PUT)
        .uri(uri)
        .header("host", "localhost")
        .header("content-type", "application/octet-stream")
        .header("content-length", length)
        .body(StreamBody::new(frames))
        .map_err(|source| UnixHttpError::Request { path: socket.display().to_string(), source })?;
    let response = sender.send_request(request).await.map_err(http(socket))?;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), MAX_ERROR_BYTES)
        .collect()
        .await
        .map_err(|_| UnixHttpError::TooLarge { path: socket.display().to_string() })?
        .to_bytes();
    Ok(Answer { status, body })
}

/// `GET uri` into `out`; `progress(bytes received, total if the daemon said)` is called as it
/// goes. On an error answer nothing is written and the answer's body comes back.
pub async fn download(
    socket: &Path,
    uri: &str,
    out: &mut tokio::fs::File,
    progress: impl Fn(u64, Option<u64>),
) -> Result<Answer, TransferError> {
    let mut sender = connect(socket).await?;
    let request = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header("host", "localhost")
        .body(StreamBody::new(futures_util::stream::empty().boxed()))
        .map_err(|source| UnixHttpError::Request { path: socket.display().to_string(), source })?;
    let response = sender.send_request(request).await.map_err(http(socket))?;
    let status = response.status();
    if !status.is_success() {
        let body = http_body_util::Limited::new(response.into_body(), MAX_ERROR_BYTES)
            .collect()
            .await
            .map_err(|_| UnixHttpError::TooLarge { path: socket.display().to_string() })?
            .to_bytes();
        return Ok(Answer { status, body });
    }
    let total = response
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = response.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(http(socket))?;
        if let Ok(data) = frame.into_data() {
            out.write_all(&data).await.map_err(TransferError::Local)?;
            received += data.len() as u64;
            progress(received, total);
        }
    }
    out.flush().await.map_err(TransferError::Local)?;
    if total.is_some_and(|total| total != received) {
        return Err(TransferError::Local(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the download broke off after {received} of {} bytes", total.unwrap_or_default()),
        )));
    }
    Ok(Answer { status, body: Bytes::new() })
}
