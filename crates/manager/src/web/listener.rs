//! The HTTPS listener: TLS (rustls) on each accepted TCP connection, then hyper's HTTP/1.1 server
//! (with upgrades, for the console's WebSocket) over the axum router.
//!
//! Hostile or broken clients cost little and hurt nobody else: each connection is its own task,
//! the handshake has [`HANDSHAKE_TIMEOUT`] (a client that sends nothing, or plain HTTP, is
//! dropped), a request's headers must arrive within [`HEADER_TIMEOUT`], and at most
//! [`MAX_CONNECTIONS`] are served at once (more are closed at accept).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request's headers may take to arrive.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// The most connections served at once (a browser opens a few; a console tab one more).
pub const MAX_CONNECTIONS: usize = 256;

/// The client's address, in every request's extensions (the login handler logs it).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub std::net::SocketAddr);

/// Serves `app` on `listener` until `stopping` turns true; then each connection finishes its
/// request in flight, and this returns once every connection has ended (a console WebSocket or
/// an events stream never does by itself: the daemon's grace period bounds the wait).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    stopping: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut full_logged = false;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped(stopping.clone()) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, most likely: wait a little instead of spinning.
                tracing::warn!("web console: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if !std::mem::replace(&mut full_logged, true) {
                tracing::warn!("web console: {MAX_CONNECTIONS} connections open; refusing more");
            }
            continue;
        };
        full_logged = false;
        let _ = stream.set_nodelay(true);
        let (acceptor, app, stop) = (acceptor.clone(), app.clone(), stopping.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!("web console: TLS handshake with {peer} failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!("web console: TLS handshake with {peer} timed out");
                    return;
                }
            };
            let service =
                hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(Peer(peer));
                    app.clone().oneshot(request)
                });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(Held { io: tls, _slot: slot }), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!("web console: connection with {peer}: {e}");
                    }
                }
                _ = stopped(stop) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    // Every connection holds a slot until it ends: all slots back means all connections done.
    let _ = slots.acquire_many(MAX_CONNECTIONS as u32).await;
}

/// A connection's stream with its slot: an upgraded connection (a console WebSocket) takes the
/// stream over from hyper, and its slot with it, so WebSockets count against the limit as long
/// as they live.
struct Held<T> {
    io: T,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl<T: AsyncRead + Unpin> AsyncRead for Held<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Held<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Resolves once `stopping` is true (or its sender is gone).
async fn stopped(mut stopping: watch::Receiver<bool>) {
    // The guard `wait_for` answers is dropped at once: it must not live across an await.
    let _ = stopping.wait_for(|stop| *stop).await;
}
