//! Storage pools: directories of raw and qcow2 volumes, kept through `crates/storage`.
//!
//! - `records.rs`: the store's tables (pools, and each volume's recorded format).
//! - `dir.rs`: a pool's directory through its descriptor (`openat` + `O_NOFOLLOW`).
//! - `volumes.rs`: create, clone, resize, delete, info, list, refresh.
//! - `data.rs`: upload (checked before it becomes a volume) and download, streamed.
//! - `routes.rs`: `/v1/pools…`.
//! - `transfer.rs`: the client's side of upload and download (for the CLI).
//!
//! Undefining a pool forgets it; the files stay, and so does the record of their formats (kept by
//! the directory's path), so defining the pool again gets them back as they were, never
//! re-probed. It is refused while a defined VM uses one of its volumes.
//!
//! Who may write a pool's directory may swap a volume for a symlink to a host disk between the
//! daemon's check and the VMM's open, so a pool's directory must be owned by root (or the
//! daemon's user) and writable by no one else (see `PoolDir::open`); the VMM should open the
//! path it is given with O_NOFOLLOW all the same. System directories and the daemon's own state
//! directory (but its `pools/` folder) are refused as pools outright.

mod data;
mod dir;
mod records;
mod routes;
pub mod transfer;
mod volumes;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use model::disk::ImageFormat;
use model::manager::name::check_name;
use model::manager::pool::{PoolDefinition, PoolInfo, VolumeRef};

use crate::error::{ApiResult, ManagerError};
use crate::store::Store;
pub use dir::PoolDir;
pub use routes::routes;

/// The store's tables for pools and volumes.
pub const SCHEMA: &str = records::SCHEMA;

/// The pools the daemon keeps.
pub struct Pools {
    store: Arc<Store>,
    /// Held by every change to a pool's set of volumes (create, clone, publish an upload, delete,
    /// refresh), so that a base is not deleted while a clone of it is made, nor a name taken
    /// twice. Each holder does short file work only (no streaming, no whole-image checks).
    changes: Mutex<()>,
    /// The daemon's state directory (canonical): no pool may be in it but under its `pools/`.
    state_dir: PathBuf,
}

/// Directories no pool may be or be under: the daemon (root) would read, write and delete the
/// host's own files there on behalf of any member of the socket's group.
const SYSTEM_DIRS: &[&str] =
    &["/etc", "/boot", "/proc", "/sys", "/dev", "/root", "/usr", "/bin", "/sbin", "/run"];

/// A volume as a VMM opens it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedVolume {
    pub path: PathBuf,
    pub format: ImageFormat,
}

/// Who uses a volume: the names of the defined VMs whose definitions name `POOL/VOLUME`
/// (`Vms::users_of_volume` in the daemon; a fake in tests).
pub type UsersOf<'a> = &'a dyn Fn(&str) -> Vec<String>;

impl Pools {
    /// The pools of `store`, for the daemon whose state directory is `state_dir`.
    pub fn new(store: Arc<Store>, state_dir: &Path) -> Pools {
        let state_dir = state_dir.canonicalize().unwrap_or_else(|_| state_dir.to_owned());
        Pools { store, changes: Mutex::new(()), state_dir }
    }

    /// Removes the temporary files a previous daemon left in the pools (an upload or a create
    /// it died in the middle of). Called once this daemon holds its socket: a second daemon,
    /// refused at the bind, must not remove the running one's uploads.
    pub fn after_bind(&self) {
        self.remove_stale_temporaries();
    }

    fn remove_stale_temporaries(&self) {
        let Ok(all) = records::pools(&self.store) else { return };
        for (name, path) in all {
            let Ok(dir) = PoolDir::open(Path::new(&path)) else { continue };
            for (entry, _) in dir.entries().unwrap_or_default() {
                if dir::is_stale_temp(&entry) {
                    match dir.remove(&entry) {
                        Ok(()) => {
                            tracing::info!("pool {name}: removed {entry}, left by a daemon that stopped")
                        }
                        Err(e) => tracing::warn!("pool {name}: cannot remove {entry}: {e}"),
                    }
                }
            }
        }
    }

    fn changing(&self) -> MutexGuard<'_, ()> {
        self.changes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The file and format of a volume named `POOL/VOLUME` in a definition; an error names
    /// what is missing. The file must be a regular file in the pool's directory (not a symlink).
    pub fn resolve_volume(&self, reference: &str) -> ApiResult<ResolvedVolume> {
        let reference = VolumeRef::parse(reference).map_err(ManagerError::invalid)?;
        let (path, dir) = self.open_pool(reference.pool)?;
        let format = self.volume_format(reference.pool, reference.volume)?;
        dir.open_file(reference.volume, false).map_err(|e| volume_io(&reference.to_string(), e))?;
        Ok(ResolvedVolume { path: path.join(reference.volume), format })
    }

    /// [`Pools::resolve_volume`] for a VM about to start: a `writable` use of a volume that is
    /// the base of clones is refused (409), since writing it would silently change every
    /// clone's contents.
    pub fn resolve_volume_for(&self, reference: &str, writable: bool) -> ApiResult<ResolvedVolume> {
        let resolved = self.resolve_volume(reference)?;
        if writable {
            let parsed = VolumeRef::parse(reference).map_err(ManagerError::invalid)?;
            let (_, dir) = self.open_pool(parsed.pool)?;
            let _changing = self.changing();
            let clones = self.clones_of(&dir, parsed.pool, parsed.volume)?;
            if !clones.is_empty() {
                return Err(ManagerError::conflict(format!(
                    "volume {reference} is the base of the clone(s) {}: a VM may use it only read-only \
                     (writing it would corrupt them)",
                    clones.join(", ")
                )));
            }
        }
        Ok(resolved)
    }

    /// Defines a pool: creates its directory (0700) when missing, uses an existing one as it is,
    /// and takes in the images already there (as `refresh` does).
    pub fn define(&self, definition: &PoolDefinition) -> ApiResult<PoolInfo> {
        check_name(&definition.name)?;
        let path = &definition.path;
        if !path.is_absolute() {
            return Err(ManagerError::invalid(format!(
                "the pool's directory must be an absolute path, not '{}'",
                path.display()
            )));
        }
        if path.to_str().is_none() {
            return Err(ManagerError::invalid("the pool's directory must be a UTF-8 path"));
        }
        if path.components().any(|c| c == std::path::Component::ParentDir) {
            return Err(ManagerError::invalid("the pool's directory must not contain '..'"));
        }
        // Before anything is created, and again once symlinks are resolved.
        self.check_location(path)?;
        if records::pool_path(&self.store, &definition.name)?.is_some() {
            return Err(ManagerError::conflict(format!("a pool named '{}' exists", definition.name)));
        }
        create_private_dir(path)?;
        // One directory, one pool, however it was spelled.
        let canonical = path
            .canonicalize()
            .map_err(|e| ManagerError::invalid(format!("the pool's directory {}: {e}", path.display())))?;
        if !canonical.is_dir() {
            return Err(ManagerError::invalid(format!("{} is not a directory", canonical.display())));
        }
        self.check_location(&canonical)?;
        // Owned by root (or this daemon's user) and writable by no one else.
        PoolDir::open(&canonical).map_err(|e| {
            ManagerError::invalid(format!("the pool's directory {}: {e}", canonical.display()))
        })?;
        let text =
            canonical.to_str().ok_or_else(|| ManagerError::invalid("the pool's directory must be UTF-8"))?;
        match records::insert_pool(&self.store, &definition.name, text)? {
            records::Insert::Done => {}
            records::Insert::NameTaken => {
                return Err(ManagerError::conflict(format!("a pool named '{}' exists", definition.name)))
            }
            records::Insert::PathTaken(other) => {
                return Err(ManagerError::conflict(format!(
                    "{text} is already the directory of pool '{other}'"
                )))
            }
        }
        self.refresh(&definition.name)?;
        self.info(&definition.name)
    }

    /// Forgets a pool and its volumes' records; the directory and its files stay. Refused while
    /// a defined VM uses one of its volumes.
    pub fn undefine(&self, name: &str, users_of: UsersOf<'_>) -> ApiResult<()> {
        check_name(name)?;
        let _changing = self.changing();
        if records::pool_path(&self.store, name)?.is_none() {
            return Err(no_pool(name));
        }
        let mut in_use = Vec::new();
        for (volume, _) in records::volumes(&self.store, name)? {
            let users = users_of(&format!("{name}/{volume}"));
            if !users.is_empty() {
                in_use.push(format!("{volume} (by {})", users.join(", ")));
            }
        }
        if !in_use.is_empty() {
            return Err(ManagerError::conflict(format!(
                "pool '{name}' has volumes that defined VMs use: {}",
                in_use.join("; ")
            )));
        }
        records::delete_pool(&self.store, name)?;
        Ok(())
    }

    /// One pool.
    pub fn info(&self, name: &str) -> ApiResult<PoolInfo> {
        check_name(name)?;
        let path = records::pool_path(&self.store, name)?.ok_or_else(|| no_pool(name))?;
        self.info_of(name, &path)
    }

    fn info_of(&self, name: &str, path: &str) -> ApiResult<PoolInfo> {
        // A pool whose directory is gone is still listed (with no space), so it can be undefined.
        let (capacity_bytes, available_bytes) =
            PoolDir::open(Path::new(path)).and_then(|dir| dir.space()).unwrap_or((0, 0));
        Ok(PoolInfo {
            definition: PoolDefinition { name: name.to_owned(), path: path.into() },
            capacity_bytes,
            available_bytes,
            volumes: records::volume_count(&self.store, name)?,
        })
    }

    /// Every pool, by name.
    pub fn list(&self) -> ApiResult<Vec<PoolInfo>> {
        records::pools(&self.store)?.into_iter().map(|(name, path)| self.info_of(&name, &path)).collect()
    }

    /// The pool's directory, opened.
    fn open_pool(&self, name: &str) -> ApiResult<(PathBuf, PoolDir)> {
        check_name(name)?;
        let path = PathBuf::from(records::pool_path(&self.store, name)?.ok_or_else(|| no_pool(name))?);
        let dir = PoolDir::open(&path).map_err(|e| {
            ManagerError::unavailable(format!("the directory of pool '{name}' ({}): {e}", path.display()))
        })?;
        Ok((path, dir))
    }

    /// A volume's recorded format (404 when the pool has no such volume).
    fn volume_format(&self, pool: &str, volume: &str) -> ApiResult<ImageFormat> {
        check_name(volume)?;
        records::volume_format(&self.store, pool, volume)?.ok_or_else(|| no_volume(pool, volume))
    }
}

impl Pools {
    /// Refuses a pool directory that is or is under a system directory, or in the daemon's
    /// state directory (but under its `pools/` folder).
    fn check_location(&self, path: &Path) -> ApiResult<()> {
        let refuse = |why: &str| {
            Err(ManagerError::invalid(format!("{} cannot be a pool's directory: {why}", path.display())))
        };
        if path.parent().is_none() {
            return refuse("it is the root directory");
        }
        let first = path.components().nth(1).and_then(|c| c.as_os_str().to_str()).unwrap_or_default();
        if SYSTEM_DIRS.iter().any(|dir| path.starts_with(dir)) || first.starts_with("lib") {
            return refuse("it is a system directory (or under one)");
        }
        if path.starts_with(&self.state_dir) && !path.starts_with(self.state_dir.join("pools")) {
            return refuse(&format!(
                "it is in the daemon's state directory (only {} may hold pools)",
                self.state_dir.join("pools").display()
            ));
        }
        Ok(())
    }
}

fn create_private_dir(path: &Path) -> ApiResult<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) => Err(io_error(&format!("creating {}", path.display()), e)),
    }
}

fn no_pool(name: &str) -> ManagerError {
    ManagerError::not_found(format!("no pool named '{name}'"))
}

fn no_volume(pool: &str, volume: &str) -> ManagerError {
    ManagerError::not_found(format!(
        "no volume '{volume}' in pool '{pool}' (a file put there by hand appears after `kestrel pool refresh {pool}`)"
    ))
}

/// A file operation's failure, by what the host lacks or what the caller did.
fn io_error(context: &str, error: std::io::Error) -> ManagerError {
    use std::io::ErrorKind;
    let message = format!("{context}: {error}");
    match error.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
            return ManagerError::unavailable(format!("{context}: the pool's filesystem is full ({error})"))
        }
        Some(libc::EFBIG) => return ManagerError::invalid(message),
        _ => {}
    }
    match error.kind() {
        ErrorKind::NotFound => ManagerError::not_found(message),
        ErrorKind::InvalidInput => ManagerError::invalid(message),
        ErrorKind::AlreadyExists => ManagerError::conflict(message),
        ErrorKind::PermissionDenied => ManagerError::new(model::manager::ErrorKind::Forbidden, message),
        _ => ManagerError::internal(message),
    }
}

/// [`io_error`] about the volume `reference` (`POOL/VOLUME`).
fn volume_io(reference: &str, error: std::io::Error) -> ManagerError {
    if error.kind() == std::io::ErrorKind::NotFound {
        return ManagerError::not_found(format!(
            "volume {reference}: its file is gone (`kestrel pool refresh` forgets it)"
        ));
    }
    io_error(&format!("volume {reference}"), error)
}

/// A storage operation's failure: an image in use is a conflict, a full disk the host's lack,
/// a damaged or unusable image the caller's.
fn image_error(reference: &str, error: storage::image::ImageError) -> ManagerError {
    use storage::image::ImageError;
    match error {
        ImageError::Lock { source, .. } => ManagerError::conflict(format!("volume {reference}: {source}")),
        ImageError::Io { source, .. } => volume_io(reference, source),
        ImageError::Usage(message) | ImageError::Unsupported(message) => {
            ManagerError::invalid(format!("volume {reference}: {message}"))
        }
        ImageError::Qcow2 { source, .. } => qcow2_error(reference, source),
        ImageError::Check { source, .. } => ManagerError::invalid(format!("volume {reference}: {source}")),
    }
}

fn qcow2_error(reference: &str, error: storage::qcow2::Qcow2Error) -> ManagerError {
    use storage::qcow2::Qcow2Error;
    match error {
        Qcow2Error::Io { source, .. } | Qcow2Error::Imago(source) if is_full(&source) => {
            ManagerError::unavailable(format!("volume {reference}: the pool's filesystem is full ({source})"))
        }
        Qcow2Error::BackingLock { .. } => ManagerError::conflict(format!("volume {reference}: {error}")),
        other => ManagerError::invalid(format!("volume {reference}: {other}")),
    }
}

fn is_full(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

#[cfg(test)]
mod tests;
