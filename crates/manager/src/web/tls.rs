//! The console's certificate and the rustls server configuration (the `ring` provider).
//!
//! Without `--web-cert/--web-key` the daemon makes a self-signed certificate on its first start
//! (`<state>/web/cert.pem` and `key.pem`, 0600 in a 0700 directory) and reuses it afterwards, so
//! a browser's exception and the fingerprint the log prints stay valid across restarts. Delete
//! both files to get a new one (e.g. after binding another address).

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// Why the console's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Pem { path: String, source: rustls::pki_types::pem::Error },
    #[error("{path} holds no certificate")]
    NoCertificate { path: String },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("cannot make the console's certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the console's certificate or key is refused: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A certificate chain, its key, and the leaf's SHA-256 fingerprint (`AA:BB:…`).
pub struct Certificate {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub fingerprint: String,
}

/// The SHA-256 of a DER certificate as browsers show it: upper-case hex pairs joined by `:`.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

fn pem(path: &Path) -> impl Fn(rustls::pki_types::pem::Error) -> TlsError + '_ {
    move |source| TlsError::Pem { path: path.display().to_string(), source }
}

fn write_error(path: &Path) -> impl Fn(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Write { path: path.display().to_string(), source }
}

/// Reads a PEM certificate chain (leaf first) and its PEM private key.
pub fn load(cert: &Path, key: &Path) -> Result<Certificate, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(pem(cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem(cert))?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate { path: cert.display().to_string() });
    };
    let fingerprint = fingerprint(leaf);
    let key = PrivateKeyDer::from_pem_file(key).map_err(pem(key))?;
    Ok(Certificate { chain, key, fingerprint })
}

/// The generated certificate's files under `state_dir`.
pub fn generated_paths(state_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = state_dir.join("web");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// The certificate in `<state_dir>/web`, made first if it is not there.
pub fn load_or_generate(state_dir: &Path, bind: IpAddr) -> Result<Certificate, TlsError> {
    let (cert, key) = generated_paths(state_dir);
    let dir = state_dir.join("web");
    private_dir(&dir).map_err(write_error(&dir))?;
    if cert.exists() && key.exists() {
        warn_if_readable_by_others(&key);
        return load(&cert, &key);
    }
    let (cert_pem, key_pem) = generate(&subject_names(bind))?;
    // The key first: a daemon killed between the two writes leaves no certificate, so the next
    // start makes a new pair instead of pairing a certificate with another key.
    write_private(&key, key_pem.as_bytes()).map_err(write_error(&key))?;
    write_private(&cert, cert_pem.as_bytes()).map_err(write_error(&cert))?;
    tracing::info!("web console: made a self-signed certificate in {}", dir.display());
    load(&cert, &key)
}

/// Makes `dir` (0700) or checks the one there: a real directory (a symlink is refused, so the
/// key is never written through it elsewhere), put back to 0700 if its mode drifted.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::symlink_metadata(dir) {
        Ok(metadata) if metadata.file_type().is_symlink() || !metadata.is_dir() => {
            Err(std::io::Error::other("it is not a directory (a symlink or a file is refused)"))
        }
        Ok(metadata) if metadata.permissions().mode() & 0o777 != 0o700 => {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
        }
        Err(e) => Err(e),
    }
}

/// A private key others may read is logged loudly (it is the user's file, or was made 0600 and
/// changed since: left as it is, but said).
pub fn warn_if_readable_by_others(key: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(metadata) = std::fs::metadata(key) {
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "web console: the private key {} is readable by others (mode {mode:o}); chmod 600 it",
                key.display()
            );
        }
    }
}

/// The names a generated certificate holds: the loopback names, the bound address when it is a
/// specific one, and the host's name.
fn subject_names(bind: IpAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    if !bind.is_unspecified() && !bind.is_loopback() {
        names.push(bind.to_string());
    }
    if let Some(host) = host_name().filter(|h| !names.contains(h)) {
        names.push(host);
    }
    names
}

fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    // Only a name rcgen takes as a DNS name (letters, digits, '-', '.').
    let plain = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    plain.then(|| name.to_owned())
}

/// A self-signed certificate for `names` (an ECDSA P-256 key): PEM certificate and PEM key.
fn generate(names: &[String]) -> Result<(String, String), TlsError> {
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "Kestrel web console");
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes `bytes` to `path` (0600) through a temporary file renamed over it.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = path.with_extension("pem.tmp");
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

/// The server configuration: TLS 1.2 and 1.3 with rustls' safe defaults on `ring`, HTTP/1.1.
pub fn server_config(certificate: Certificate) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certificate.chain, certificate.key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_generated_certificate_is_private_reused_and_usable() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_generate(dir.path(), "127.0.0.1".parse().unwrap()).unwrap();
        let (cert, key) = generated_paths(dir.path());
        for path in [&cert, &key] {
            assert_eq!(
                std::fs::metadata(path).unwrap().permissions().mode() & 0o777,
                0o600,
                "{}",
                path.display()
            );
        }
        let web_dir = dir.path().join("web");
        assert_eq!(std::fs::metadata(web_dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(first.fingerprint.len(), 32 * 3 - 1);
        let again = load_or_generate(dir.path(), "127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(first.fingerprint, again.fingerprint, "reused, not made again");
        server_config(again).unwrap();
    }

    #[test]
    fn the_web_directory_is_private_and_never_a_symlink() {
        let state = tempfile::tempdir().unwrap();
        let web = state.path().join("web");
        // A directory whose mode drifted is put back to 0700.
        std::fs::create_dir(&web).unwrap();
        std::fs::set_permissions(&web, std::fs::Permissions::from_mode(0o755)).unwrap();
        load_or_generate(state.path(), IpAddr::from([127, 0, 0, 1])).unwrap();
        assert_eq!(std::fs::metadata(&web).unwrap().permissions().mode() & 0o777, 0o700);
        // A symlink in its place is refused, and nothing is written where it points.
        let elsewhere = tempfile::tempdir().unwrap();
        let other_state = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), other_state.path().join("web")).unwrap();
        assert!(load_or_generate(other_state.path(), IpAddr::from([127, 0, 0, 1])).is_err());
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_names_include_a_specific_bind_address_only() {
        assert!(subject_names("0.0.0.0".parse().unwrap()).iter().all(|n| n != "0.0.0.0"));
        assert!(subject_names("192.0.2.7".parse().unwrap()).contains(&"192.0.2.7".to_owned()));
        let names = subject_names("127.0.0.1".parse().unwrap());
        assert_eq!(&names[..3], ["localhost", "127.0.0.1", "::1"]);
    }

    #[test]
    fn a_pem_without_a_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here\n").unwrap();
        assert!(matches!(load(&empty, &empty), Err(TlsError::NoCertificate { .. })));
    }
}
