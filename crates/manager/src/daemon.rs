//! `kestrel daemon`: takes the state directory (one daemon per directory: a lock held for the
//! process's life), sets up the store, brings the VMs the store knows back under watch, and
//! serves the API until SIGTERM or SIGINT. Stopping the daemon leaves every VM running.

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
    /// `--web`: the browser console over HTTPS (off when `None`).
    pub web: Option<crate::web::WebOptions>,
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
    #[error("the state directory {path} is in use by another kestrel daemon (it holds {path}/{lock})", lock = STATE_LOCK)]
    StateDirInUse { path: String },
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Web(#[from] crate::web::WebError),
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
    // Before anything reads or changes the state directory (the store, the VMMs, the pools'
    // and networks' files), and for as long as this process lives: one daemon per directory.
    let _state_lock = lock_state_dir(&paths.state_dir)?;
    create_private_dir(&paths.state_dir.join("vms"))?;
    let store = Arc::new(Store::open(
        &paths.store(),
        &[
            crate::vms::SCHEMA,
            crate::events::SCHEMA,
            crate::network::SCHEMA,
            crate::pool::SCHEMA,
            crate::web::tokens::SCHEMA,
        ],
    )?);
    let shared = Arc::new(Shared {
        paths: paths.clone(),
        // --- core ---
        events: crate::events::Events::new(store.clone()),
        vms: crate::vms::Vms::new(store.clone(), &paths, options.kestrel_binary.clone()),
        // --- end core ---
        consoles: crate::console::Consoles::new(&paths),
        networks: crate::network::Networks::new(store.clone(), &paths),
        pools: crate::pool::Pools::new(store.clone(), &paths.state_dir),
        web_sessions: crate::web::session::Sessions::new(),
        store,
    });
    let listener = bind(&paths.socket).await?;
    // The browser console's certificate and port, before any VM or network is touched: a
    // `--web` that cannot work stops the daemon here, not halfway through the autostarts.
    let web = match &options.web {
        Some(web) => Some(crate::web::prepare(web, &paths.state_dir).await?),
        None => None,
    };
    // pools: a previous daemon's temporary files go only now that this one holds the socket.
    shared.pools.after_bind();
    // --- core: the previous daemon's VMMs, then the networks and the autostart VMs ---
    // Active and autostart networks come back (a host reboot lost their bridges) and their
    // watchdog starts after the bind, so a second daemon never touches them, and before the
    // API serves, so a client's first request finds them up. The autostart VMs, whose cards
    // need the networks, start in the background. A failure is logged; the daemon serves all
    // the same.
    shared.vms.reconcile(&shared).await;
    if let Err(e) = shared.networks.start_autostart(&shared).await {
        tracing::error!("networks: {e}");
    }
    {
        let shared = shared.clone();
        tokio::spawn(async move { shared.vms.autostart(&shared).await });
    }
    // --- end core ---
    // Requests in flight get a moment to finish; event followers never do by themselves, so
    // the daemon stops at the latest GRACE after the signal (its VMs keep running either way).
    let (stopping, mut stop_seen) = tokio::sync::watch::channel(false);
    // The browser console stops with the socket's server: same signal, and the daemon waits for
    // both servers' requests in flight, bounded by the same grace.
    let web = web.map(|web| web.spawn(shared.clone(), stop_seen.clone()));
    tracing::info!("kestrel daemon: listening on {}", paths.socket.display());
    let serve = axum::serve(listener, router(shared)).with_graceful_shutdown(async move {
        termination().await;
        stopping.send_replace(true);
    });
    let served = async {
        let served = serve.await;
        if let Some(web) = web {
            let _ = web.await;
        }
        served
    };
    tokio::select! {
        served = served => served.map_err(DaemonError::Serve),
        _ = async {
            let _ = stop_seen.wait_for(|stop| *stop).await;
            tokio::time::sleep(GRACE).await;
        } => Ok(()),
    }
}

/// How long requests in flight may take to finish once the daemon is told to stop.
const GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// The lock file in the state directory that the running daemon holds.
pub const STATE_LOCK: &str = "kestrel.lock";

/// Takes the state directory's lock (`flock` on [`STATE_LOCK`], 0600), or fails with
/// [`DaemonError::StateDirInUse`] while another daemon holds it. The lock goes with the
/// returned file, so with this process: a killed daemon never leaves it held. The file is close-on-exec, so no VMM or dnsmasq inherits it.
fn lock_state_dir(dir: &std::path::Path) -> Result<std::fs::File, DaemonError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(STATE_LOCK);
    let error = |source| DaemonError::StateDir { path: path.display().to_string(), source };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(error)?;
    // SAFETY: flock on a descriptor this function owns; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } < 0 {
        let source = std::io::Error::last_os_error();
        if source.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(DaemonError::StateDirInUse { path: dir.display().to_string() });
        }
        return Err(error(source));
    }
    Ok(file)
}

fn create_private_dir(path: &std::path::Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| DaemonError::StateDir { path: path.display().to_string(), source })
}

/// Binds the API socket: a stale one (nobody listening) is replaced, a live one is refused,
/// and anything else at that path (a file, a directory) is left alone and refused.
/// The socket is 0660, so the daemon's group may use it and nobody else.
async fn bind(path: &std::path::Path) -> Result<tokio::net::UnixListener, DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    let listen_error = |source| DaemonError::Listen { path: path.display().to_string(), source };
    if let Some(parent) = path.parent() {
        // The socket's directory is searchable by all (0755): the socket's own mode and group
        // decide who may connect.
        if !parent.as_os_str().is_empty() && !parent.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().recursive(true).mode(0o755).create(parent).map_err(listen_error)?;
        }
    }
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        return Err(DaemonError::SocketInUse { path: path.display().to_string() });
    }
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if std::os::unix::fs::FileTypeExt::is_socket(&metadata.file_type()) => {
            std::fs::remove_file(path).map_err(listen_error)?
        }
        Ok(_) => {
            return Err(listen_error(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "something that is not a socket is there (it is left as it is)",
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(listen_error(e)),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(listen_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(listen_error)?;
    give_socket_to_group(path).map_err(listen_error)?;
    Ok(listener)
}

/// The group whose members may use the API socket, when it exists.
pub const SOCKET_GROUP: &str = "kestrel";

/// Hands the socket to group `kestrel` when that group exists (else it keeps the daemon's
/// group): with the 0660 mode, that group's members may use the API and nobody else.
fn give_socket_to_group(path: &std::path::Path) -> std::io::Result<()> {
    let name = std::ffi::CString::new(SOCKET_GROUP).map_err(std::io::Error::other)?;
    // SAFETY: getgrnam reads a NUL-terminated name and returns a pointer into static storage
    // (or null), read at once below before any other getgr* call of this thread.
    let group = unsafe { libc::getgrnam(name.as_ptr()) };
    if group.is_null() {
        return Ok(());
    }
    // SAFETY: non-null: a valid group record.
    let gid = unsafe { (*group).gr_gid };
    std::os::unix::fs::lchown(path, None, Some(gid))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        // A regular file (say, the store named by mistake) is refused and kept.
        std::fs::write(&path, b"precious").unwrap();
        assert!(matches!(bind(&path).await, Err(DaemonError::Listen { .. })));
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
        std::fs::remove_file(&path).unwrap();
        // A directory, too.
        std::fs::create_dir(&path).unwrap();
        assert!(matches!(bind(&path).await, Err(DaemonError::Listen { .. })));
        assert!(path.is_dir());
        std::fs::remove_dir(&path).unwrap();
        // A live socket is refused; a stale one (nobody listens) is replaced.
        let live = bind(&path).await.unwrap();
        assert!(matches!(bind(&path).await, Err(DaemonError::SocketInUse { .. })));
        drop(live);
        assert!(path.exists(), "a dropped listener leaves its socket file");
        let _again = bind(&path).await.unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o660);
    }

    #[test]
    fn one_daemon_holds_a_state_directory() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let held = lock_state_dir(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(STATE_LOCK)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // flock locks belong to the open file description: a second open (another daemon) is
        // refused even within one process.
        let error = lock_state_dir(dir.path()).unwrap_err();
        assert!(matches!(error, DaemonError::StateDirInUse { .. }), "{error}");
        assert!(error.to_string().contains("in use by another kestrel daemon"), "{error}");
        drop(held);
        lock_state_dir(dir.path()).unwrap();
    }
}
