//! The API socket: created owner-only, served one thread per connection.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::http::{read_request, HttpError, Request, Response};
use crate::router::Router;

/// At most this many connections are served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 64;

/// Why the API socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("API socket {0} is in use by a running process")]
    InUse(PathBuf),
    #[error("API socket path {0} exists and is not a socket")]
    NotASocket(PathBuf),
    #[error("cannot replace the stale API socket {path}: {source}")]
    RemoveStale { path: PathBuf, source: std::io::Error },
    #[error("cannot create the API socket {path}: {source}")]
    Bind { path: PathBuf, source: std::io::Error },
}

/// Creates the API socket with owner-only permissions (0600). A stale socket left by an earlier
/// run is replaced; a live one, or any other file, is an error. Sets the process umask while
/// binding, so call it before other threads create files.
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ServerError::NotASocket(path.to_owned()));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(ServerError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path)
            .map_err(|source| ServerError::RemoveStale { path: path.to_owned(), source })?;
    }
    // SAFETY: umask only changes the process's file-creation mask; it cannot fail.
    let old_mask = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old_mask) };
    let listener = listener.map_err(|source| ServerError::Bind { path: path.to_owned(), source })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|source| ServerError::Bind { path: path.to_owned(), source })?;
    Ok(listener)
}

/// The router behind [`serve`]'s lock: an adapter until the listener serves a shared handler.
/// [`serve`] holds the lock for a whole request, so requests through it are answered one at a
/// time; [`crate::concurrent::serve_router`] serves them side by side.
pub struct Api {
    router: Router,
}

impl Api {
    /// `router` served through [`serve`].
    pub fn new(router: Router) -> Api {
        Api { router }
    }

    /// Answers one request through the router.
    pub fn handle(&mut self, request: &Request) -> Response {
        self.router.handle(request)
    }
}

/// Serves the API on `listener` until the process exits: one thread per connection (at most
/// [`MAX_CONNECTIONS`]), requests answered in order, the state shared under a lock.
pub fn serve(listener: UnixListener, api: Arc<Mutex<Api>>) {
    let connections = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            connections.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("API: too many connections; closing a new one");
            continue;
        }
        let (api, connections) = (api.clone(), connections.clone());
        let spawned = std::thread::Builder::new().name("kestrel-api-conn".into()).spawn(move || {
            serve_connection(stream, &api);
            connections.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            tracing::warn!("API: cannot start a connection thread");
        }
    }
}

fn serve_connection(mut stream: UnixStream, api: &Mutex<Api>) {
    let mut buffer = Vec::new();
    loop {
        // Waiting for a request has no time limit (clients keep connections open); once it has
        // started, the rest must arrive within the transport's timeout.
        let _ = stream.set_read_timeout(None);
        let (response, close) = match read_request(&mut stream, &mut buffer) {
            Ok(request) => {
                tracing::debug!("API: {} {}", request.method.as_str(), request.path);
                let response = match api.lock() {
                    Ok(mut api) => api.handle(&request),
                    Err(_) => Response::error(500, "the API state is unavailable"),
                };
                (response, request.close)
            }
            Err(HttpError::Closed | HttpError::Io(_)) => return,
            Err(e) => (Response::bad_request(&e.to_string()), true),
        };
        if stream.write_all(&response.to_bytes(close)).is_err() || close {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_is_owner_only_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(bind(&path), Err(ServerError::InUse(_))));
        drop(listener);
        bind(&path).unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(bind(&file), Err(ServerError::NotASocket(_))));
    }
}
