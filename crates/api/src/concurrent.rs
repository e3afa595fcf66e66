//! Serving the router with connections answered side by side (the router holds no lock, so one
//! client's long request, such as a snapshot, does not hold up another's `GET /`). Interim: the
//! listener with per-request deadlines replaces this loop.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::http::{read_request, HttpError, Response};
use crate::router::Router;
use crate::server::MAX_CONNECTIONS;

/// Serves the API on `listener` until the process exits: one thread per connection (at most
/// [`MAX_CONNECTIONS`]), each connection's requests answered in order.
pub fn serve_router(listener: UnixListener, router: Arc<Router>) {
    let connections = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            connections.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("API: too many connections; closing a new one");
            continue;
        }
        let (router, connections) = (router.clone(), connections.clone());
        let spawned = std::thread::Builder::new().name("kestrel-api-conn".into()).spawn(move || {
            serve_connection(stream, &router);
            connections.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            tracing::warn!("API: cannot start a connection thread");
        }
    }
}

fn serve_connection(mut stream: UnixStream, router: &Router) {
    let mut buffer = Vec::new();
    loop {
        // Waiting for a request has no time limit (clients keep connections open); once it has
        // started, the rest must arrive within the transport's timeout.
        let _ = stream.set_read_timeout(None);
        let (response, close) = match read_request(&mut stream, &mut buffer) {
            Ok(request) => {
                tracing::debug!("API: {} {}", request.method.as_str(), request.path);
                (router.handle(&request), request.close)
            }
            Err(HttpError::Closed | HttpError::Io(_)) => return,
            Err(e) => (Response::bad_request(&e.to_string()), true),
        };
        if stream.write_all(&response.to_bytes(close)).is_err() || close {
            return;
        }
    }
}
