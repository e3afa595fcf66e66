//! The HTTPS listener: TLS (rustls) on each accepted TCP connection, then hyper's HTTP/1.1 server
//! (with upgrades, for the console's WebSocket) over the axum router.
//!
//! Hostile or broken clients cost little and hurt nobody else: each connection is its own task,
//! the handshake has [`HANDSHAKE_TIMEOUT`] (a client that sends nothing, or plain HTTP, is
//! dropped), a request's headers must arrive within [`HEADER_TIMEOUT`], and at most
//! [`MAX_CONNECTIONS`] are served at once (more are closed at accept).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request's headers may take to arrive.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// The most connections served at once (a browser opens a few; a console tab one more).
pub const MAX_CONNECTIONS: usize = 256;

/// Serves `app` on `listener` until `stopping` turns true; then each connection finishes its
/// request in flight (the daemon's grace period bounds that).
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
            _ = stopped(stopping.clone()) => return,
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
            let _slot = slot;
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
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
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
}

/// Resolves once `stopping` is true (or its sender is gone).
async fn stopped(mut stopping: watch::Receiver<bool>) {
    // The guard `wait_for` answers is dropped at once: it must not live across an await.
    let _ = stopping.wait_for(|stop| *stop).await;
}
