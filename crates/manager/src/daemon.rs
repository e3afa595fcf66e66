//! `kestrel daemon`: sets up the state directory and the store, brings the VMs the store knows
//! back under watch, and serves the API until SIGTERM or SIGINT. Stopping the daemon leaves
//! every VM running.

use std::path::PathBuf;
use std::sync::Arc;

use crate::paths::Paths;
use crate::server::{router, Shared};
use crate::store::{Store, StoreError};

/// What `kestrel daemon` was asked.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    pub paths: Paths,
    /// The `kestrel` binary started for each VM (`kestrel vmm`); by default this process's own.
    pub kestrel_binary: PathBuf,
}

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create {path}: {source}")]
    StateDir { path: String, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {path}: {source}")]
    Listen { path: String, source: std::io::Error },
    #[error("{path} is in use by a running daemon")]
    SocketInUse { path: String },
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the API server failed: {0}")]
    Serve(std::io::Error),
}

/// Runs the daemon in the foreground until SIGTERM or SIGINT.
pub fn run(options: DaemonOptions) -> Result<(), DaemonError> {
    // Files the daemon creates are the owner's only, whatever umask it was started with.
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0o077) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("kestrel-daemon")
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    runtime.block_on(serve(options))
}

async fn serve(options: DaemonOptions) -> Result<(), DaemonError> {
    let paths = options.paths.clone();
    create_private_dir(&paths.state_dir)?;
    create_private_dir(&paths.state_dir.join("vms"))?;
    let store = Arc::new(Store::open(
        &paths.store(),
        &[crate::vms::SCHEMA, crate::events::SCHEMA, crate::network::SCHEMA, crate::pool::SCHEMA],
    )?);
    let shared = Arc::new(Shared {
        paths: paths.clone(),
        events: crate::events::Events {},
        vms: crate::vms::Vms {},
        consoles: crate::console::Consoles::new(&paths),
        networks: crate::network::Networks::new(store.clone(), &paths),
        pools: crate::pool::Pools::new(store.clone()),
        store,
    });
    let listener = bind(&paths.socket).await?;
    tracing::info!("kestrel daemon: listening on {}", paths.socket.display());
    axum::serve(listener, router(shared))
        .with_graceful_shutdown(termination())
        .await
        .map_err(DaemonError::Serve)
}

fn create_private_dir(path: &std::path::Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| DaemonError::StateDir { path: path.display().to_string(), source })
}

/// Binds the API socket: a stale one (nobody listening) is replaced, a live one is refused.
/// The socket is 0660, so the daemon's group may use it and nobody else.
async fn bind(path: &std::path::Path) -> Result<tokio::net::UnixListener, DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    let listen_error = |source| DaemonError::Listen { path: path.display().to_string(), source };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(listen_error)?;
    }
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        return Err(DaemonError::SocketInUse { path: path.display().to_string() });
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(listen_error(e)),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(listen_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(listen_error)?;
    Ok(listener)
}

/// Resolves on SIGTERM or SIGINT.
async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("kestrel daemon: stopping (the VMs keep running)");
}
