//! The browser console: `kestrel daemon --web ADDR:PORT` serves a single-page UI (embedded in the
//! binary) and, behind a login, the daemon's own API under `/api` over HTTPS.

// --- web: ui (the embedded single-page app) ---
pub mod assets;
// --- end web: ui ---

// --- web: server (TLS, login, sessions, CSRF and Origin checks) ---
//
// - `tls`: the certificate (given, or generated once into `<state>/web`) and rustls' config.
// - `listener`: the TLS accept loop and hyper's HTTP/1.1 server per connection.
// - `routes`: the router (UI, `/auth/*`, `/api/*`) and the security headers.
// - `auth`: the checks in front of `/api` (session cookie, CSRF header, Origin).
// - `session`: in-memory sessions and the failed-login throttle.
// - `tokens`: login tokens (hashes in the store) and their socket routes.
pub mod auth;
pub mod listener;
pub mod routes;
pub mod session;
pub mod tls;
pub mod tokens;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// What `kestrel daemon --web` asked.
#[derive(Clone, Debug)]
pub struct WebOptions {
    pub addr: SocketAddr,
    /// `--web-cert` and `--web-key`: the user's certificate chain and key (PEM).
    pub certificate: Option<(PathBuf, PathBuf)>,
}

/// Why the console could not start (the daemon does not start either: it was asked for it).
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("the web console: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("the web console cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// A `--web` value that is neither `ADDR:PORT` nor a port.
#[derive(Debug, thiserror::Error)]
#[error("'{0}' is not ADDR:PORT (e.g. 127.0.0.1:8443, [::1]:8443) or a port (0 to 65535)")]
pub struct AddrError(String);

/// A `--web` value: `ADDR:PORT` (`[::1]:8443` for IPv6), or only a port (`:8443`, `8443`) on
/// 127.0.0.1.
pub fn parse_addr(text: &str) -> Result<SocketAddr, AddrError> {
    let port_only = text.strip_prefix(':').unwrap_or(text);
    if !port_only.is_empty() && port_only.bytes().all(|b| b.is_ascii_digit()) {
        let port = port_only.parse::<u16>().map_err(|_| AddrError(text.to_owned()))?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    text.parse::<SocketAddr>().map_err(|_| AddrError(text.to_owned()))
}

/// The console's certificate loaded and its port bound, not yet serving: the daemon makes it
/// right after its socket's bind, so a `--web` that cannot work (a port in use, an unreadable
/// certificate) stops the daemon before it touches any VM or network.
pub struct Prepared {
    listener: tokio::net::TcpListener,
    config: std::sync::Arc<rustls::ServerConfig>,
    pub addr: SocketAddr,
}

/// Loads (or makes) the certificate, binds the port and logs the address and the certificate's
/// fingerprint.
pub async fn prepare(options: &WebOptions, state_dir: &Path) -> Result<Prepared, WebError> {
    let certificate = match &options.certificate {
        Some((cert, key)) => {
            tls::warn_if_readable_by_others(key);
            tls::load(cert, key)?
        }
        None => tls::load_or_generate(state_dir, options.addr.ip())?,
    };
    let fingerprint = certificate.fingerprint.clone();
    let config = tls::server_config(certificate)?;
    let listen_error = |source| WebError::Listen { addr: options.addr, source };
    let listener = tokio::net::TcpListener::bind(options.addr).await.map_err(listen_error)?;
    let addr = listener.local_addr().map_err(listen_error)?;
    if !addr.ip().is_loopback() {
        tracing::warn!(
            "web console: listening on {addr}, reachable from other hosts; anyone with a token there gets root-equivalent control of this host's VMs"
        );
    }
    tracing::info!("kestrel daemon: web console at https://{addr}/ (certificate SHA-256 {fingerprint})");
    Ok(Prepared { listener, config, addr })
}

impl Prepared {
    /// Serves the console in a task until `stopping` turns true; the task ends when every
    /// connection has (the daemon bounds that wait by its grace period).
    pub fn spawn(
        self,
        shared: crate::server::AppState,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(listener::serve(self.listener, self.config, routes::router(shared), stopping))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn web_addresses_default_to_loopback() {
        use super::parse_addr;
        assert_eq!(parse_addr("8443").unwrap().to_string(), "127.0.0.1:8443");
        assert_eq!(parse_addr(":8443").unwrap().to_string(), "127.0.0.1:8443");
        assert_eq!(parse_addr("0.0.0.0:443").unwrap().to_string(), "0.0.0.0:443");
        assert_eq!(parse_addr("[::1]:0").unwrap().to_string(), "[::1]:0");
        assert!(parse_addr("70000").is_err());
        assert!(parse_addr("localhost:8443").is_err());
        assert!(parse_addr("").is_err());
    }
}
// --- end web: server ---
