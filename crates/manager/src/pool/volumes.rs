//! Volumes: create, clone, resize, delete, info, list, and refresh (the directory against the
//! store's records).

use std::fs::File;
use std::os::unix::fs::MetadataExt;

use model::disk::ImageFormat;
use model::manager::name::check_name;
use model::manager::pool::{PoolRefresh, SkippedFile, VolumeCreate, VolumeInfo, VolumeResize};
use storage::image::{CreateOptions, Format, Preallocation};
use storage::lock::{self, Access};
use storage::qcow2::{self, header, Qcow2Options};

use super::dir::{is_stale_temp, EntryKind, PoolDir};
use super::{image_error, io_error, qcow2_error, records, volume_io, Pools, UsersOf};
use crate::error::{ApiResult, ManagerError};

/// Sizes are whole 512-byte sectors (as qemu-img rounds them).
const SECTOR: u64 = 512;

fn round_size(size: u64) -> ApiResult<u64> {
    if size == 0 {
        return Err(ManagerError::invalid("a volume's size must be above 0"));
    }
    size.checked_next_multiple_of(SECTOR)
        .filter(|s| *s <= i64::MAX as u64)
        .ok_or_else(|| ManagerError::invalid(format!("{size} bytes is too large for a volume")))
}

pub(super) fn storage_format(format: ImageFormat) -> Format {
    match format {
        ImageFormat::Raw => Format::Raw,
        ImageFormat::Qcow2 => Format::Qcow2,
    }
}

/// What an image file says about itself: its virtual size and its backing file's name.
pub(super) fn describe(
    file: &File,
    format: ImageFormat,
    reference: &str,
) -> ApiResult<(u64, Option<String>)> {
    match format {
        ImageFormat::Raw => Ok((file.metadata().map_err(|e| volume_io(reference, e))?.len(), None)),
        ImageFormat::Qcow2 => {
            let h = header::read(file).map_err(|e| qcow2_error(reference, e))?;
            Ok((h.size, h.backing_file))
        }
    }
}

impl Pools {
    /// One volume.
    pub fn volume_info(&self, pool: &str, name: &str, users_of: UsersOf<'_>) -> ApiResult<VolumeInfo> {
        let (_, dir) = self.open_pool(pool)?;
        let format = self.volume_format(pool, name)?;
        self.describe_volume(&dir, pool, name, format, users_of)
    }

    fn describe_volume(
        &self,
        dir: &PoolDir,
        pool: &str,
        name: &str,
        format: ImageFormat,
        users_of: UsersOf<'_>,
    ) -> ApiResult<VolumeInfo> {
        let reference = format!("{pool}/{name}");
        let file = dir.open_file(name, false).map_err(|e| volume_io(&reference, e))?;
        let allocated_bytes = file.metadata().map_err(|e| volume_io(&reference, e))?.blocks() * 512;
        let (size_bytes, backing) = describe(&file, format, &reference)?;
        Ok(VolumeInfo {
            pool: pool.to_owned(),
            name: name.to_owned(),
            format,
            size_bytes,
            allocated_bytes,
            backing,
            used_by: users_of(&reference),
        })
    }

    /// The pool's volumes whose files are there, by name.
    pub fn volumes(&self, pool: &str, users_of: UsersOf<'_>) -> ApiResult<Vec<VolumeInfo>> {
        let (_, dir) = self.open_pool(pool)?;
        let mut volumes = Vec::new();
        for (name, format) in records::volumes(&self.store, pool)? {
            match self.describe_volume(&dir, pool, &name, format, users_of) {
                Ok(info) => volumes.push(info),
                // A file removed or replaced by hand is left out until a refresh sorts it out.
                Err(e) => tracing::debug!("pool {pool}: leaving {name} out of the list: {e}"),
            }
        }
        Ok(volumes)
    }

    /// Creates an empty volume (raw: sparse), or a thin clone of another volume of the pool.
    pub fn create_volume(&self, pool: &str, request: &VolumeCreate) -> ApiResult<VolumeInfo> {
        check_name(&request.name)?;
        let (_, dir) = self.open_pool(pool)?;
        let reference = format!("{pool}/{}", request.name);
        let _changing = self.changing();
        if dir.exists(&request.name).map_err(|e| volume_io(&reference, e))? {
            return Err(ManagerError::conflict(format!(
                "pool '{pool}' already has a file named '{}'",
                request.name
            )));
        }
        let (format, options) = match &request.clone_of {
            None => {
                let size =
                    request.size_bytes.ok_or_else(|| ManagerError::invalid("give the volume's size"))?;
                let options = CreateOptions {
                    format: storage_format(request.format),
                    size: Some(round_size(size)?),
                    backing: None,
                    cluster_size: None,
                    preallocation: Preallocation::Off,
                };
                (request.format, options)
            }
            // A clone is a qcow2 overlay whatever format was asked.
            Some(base) => (ImageFormat::Qcow2, self.clone_options(&dir, pool, base, request.size_bytes)?),
        };
        let (temp, file) = dir.create_temp().map_err(|e| io_error(&format!("pool '{pool}'"), e))?;
        // The image is made through a path to the very file just created (no name is looked up),
        // so a symlink planted in the pool meanwhile changes nothing.
        let made = storage::image::create(&PoolDir::fd_path(&file), &options)
            .map_err(|e| image_error(&reference, e))
            .and_then(|()| file.sync_all().map_err(|e| volume_io(&reference, e)));
        drop(file);
        self.publish(&dir, pool, &temp, &request.name, format, made)?;
        self.volume_info(pool, &request.name, &|_| Vec::new())
    }

    /// The options of a qcow2 overlay over `base` (a volume of the same pool, named relative to
    /// the pool's directory, so the pool may move).
    fn clone_options(
        &self,
        dir: &PoolDir,
        pool: &str,
        base: &str,
        size: Option<u64>,
    ) -> ApiResult<CreateOptions> {
        check_name(base)?;
        let base_reference = format!("{pool}/{base}");
        let base_format = self.volume_format(pool, base)?;
        let file = dir.open_file(base, false).map_err(|e| volume_io(&base_reference, e))?;
        // A base a running VM writes would give the clone a moving picture.
        lock::lock(&file, Access::Read).map_err(|e| {
            ManagerError::conflict(format!(
                "volume {base_reference} cannot be cloned while it is written: {e}"
            ))
        })?;
        let (base_size, _) = describe(&file, base_format, &base_reference)?;
        let size = match size {
            None => base_size,
            Some(size) if size < base_size => {
                return Err(ManagerError::invalid(format!(
                    "a clone cannot be smaller than its base ({base_size} bytes)"
                )))
            }
            Some(size) => round_size(size)?,
        };
        Ok(CreateOptions {
            format: Format::Qcow2,
            size: Some(size),
            backing: Some((base.to_owned(), storage_format(base_format))),
            cluster_size: None,
            preallocation: Preallocation::Off,
        })
    }

    /// Gives a finished temporary file its volume name and records it; when `made` failed, or
    /// the name is taken, the temporary file is removed and nothing is left behind.
    pub(super) fn publish(
        &self,
        dir: &PoolDir,
        pool: &str,
        temp: &str,
        name: &str,
        format: ImageFormat,
        made: ApiResult<()>,
    ) -> ApiResult<()> {
        let reference = format!("{pool}/{name}");
        let published = made.and_then(|()| {
            dir.publish(temp, name).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    ManagerError::conflict(format!("pool '{pool}' already has a file named '{name}'"))
                } else {
                    volume_io(&reference, e)
                }
            })
        });
        if let Err(error) = published {
            if let Err(e) = dir.remove(temp) {
                tracing::warn!("pool {pool}: cannot remove the temporary file {temp}: {e}");
            }
            return Err(error);
        }
        if let Err(error) = records::put_volume(&self.store, pool, name, format) {
            // Unrecorded, the file would come back only as a probed guess: take it away.
            let _ = dir.remove(name);
            return Err(error.into());
        }
        Ok(())
    }

    /// Resizes a volume: grows it, or shrinks it when asked to. Refused while a VM runs on it
    /// (the image lock tells).
    pub fn resize_volume(&self, pool: &str, name: &str, request: &VolumeResize) -> ApiResult<VolumeInfo> {
        let (_, dir) = self.open_pool(pool)?;
        let format = self.volume_format(pool, name)?;
        let reference = format!("{pool}/{name}");
        let new_size = round_size(request.size_bytes)?;
        let file = dir.open_file(name, true).map_err(|e| volume_io(&reference, e))?;
        lock::lock(&file, Access::Write)
            .map_err(|e| ManagerError::conflict(format!("volume {reference}: {e}")))?;
        let (current, _) = describe(&file, format, &reference)?;
        if new_size < current && !request.shrink {
            return Err(ManagerError::invalid(format!(
                "shrinking volume {reference} from {current} to {new_size} bytes drops data: ask for it (--shrink)"
            )));
        }
        match format {
            ImageFormat::Raw => {
                file.set_len(new_size).map_err(|e| volume_io(&reference, e))?;
                file.sync_all().map_err(|e| volume_io(&reference, e))?;
            }
            ImageFormat::Qcow2 => {
                // The chain is opened next to the volume, through the pool's descriptor; the
                // image itself is the file already open (and locked).
                let options = Qcow2Options { writable: true, direct: false, allow_backing: true };
                let disk = qcow2::open(file, &dir.through_fd(name), &options)
                    .map_err(|e| qcow2_error(&reference, e))?;
                disk.resize(new_size).map_err(|e| volume_io(&reference, e))?;
            }
        }
        self.volume_info(pool, name, &|_| Vec::new())
    }

    /// Deletes a volume. Refused while a defined VM uses it, while it is the base of a clone, or
    /// while a process (a running VM) holds it open.
    pub fn delete_volume(&self, pool: &str, name: &str, users_of: UsersOf<'_>) -> ApiResult<()> {
        let (_, dir) = self.open_pool(pool)?;
        self.volume_format(pool, name)?;
        let reference = format!("{pool}/{name}");
        let _changing = self.changing();
        let users = users_of(&reference);
        if !users.is_empty() {
            return Err(ManagerError::conflict(format!(
                "volume {reference} is used by the VM definition(s) {}",
                users.join(", ")
            )));
        }
        let clones = self.clones_of(&dir, pool, name)?;
        if !clones.is_empty() {
            return Err(ManagerError::conflict(format!(
                "volume {reference} is the base of the clone(s) {}: delete them first",
                clones.join(", ")
            )));
        }
        // Held across the removal: a VMM cannot open it meanwhile without seeing the lock.
        let _locked = match dir.open_file(name, true) {
            Ok(file) => {
                lock::lock(&file, Access::Write)
                    .map_err(|e| ManagerError::conflict(format!("volume {reference}: {e}")))?;
                Some(file)
            }
            // Gone already, or no longer a regular file: only the record and the entry remain.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => None,
            Err(e) => return Err(volume_io(&reference, e)),
        };
        match dir.remove(name) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(volume_io(&reference, e)),
        }
        dir.sync().map_err(|e| volume_io(&reference, e))?;
        records::delete_volume(&self.store, pool, name)?;
        Ok(())
    }

    /// The qcow2 volumes of the pool whose headers name `base` as their backing file.
    pub(super) fn clones_of(&self, dir: &PoolDir, pool: &str, base: &str) -> ApiResult<Vec<String>> {
        let mut clones = Vec::new();
        for (name, format) in records::volumes(&self.store, pool)? {
            if format != ImageFormat::Qcow2 || name == base {
                continue;
            }
            let Ok(file) = dir.open_file(&name, false) else { continue };
            if let Ok(h) = header::read(&file) {
                if h.backing_file.as_deref() == Some(base) {
                    clones.push(name);
                }
            }
        }
        Ok(clones)
    }

    /// Brings the store's records in line with the pool's directory: files added by hand become
    /// volumes (their format probed, once), records of files gone are dropped, and temporary
    /// files a dead daemon left are removed.
    pub fn refresh(&self, pool: &str) -> ApiResult<PoolRefresh> {
        let (_, dir) = self.open_pool(pool)?;
        let _changing = self.changing();
        let entries = dir.entries().map_err(|e| io_error(&format!("reading pool '{pool}'"), e))?;
        let known: std::collections::HashMap<String, ImageFormat> =
            records::volumes(&self.store, pool)?.into_iter().collect();
        let mut report = PoolRefresh::default();
        let mut files = std::collections::HashSet::new();
        let mut new = Vec::new();
        for (name, kind) in entries {
            if is_stale_temp(&name) {
                if let Err(e) = dir.remove(&name) {
                    tracing::warn!("pool {pool}: cannot remove the stale temporary file {name}: {e}");
                }
                continue;
            }
            if name.starts_with(super::dir::TEMP_PREFIX) {
                continue; // an upload of this daemon, in progress
            }
            let skip = |reason: &str| SkippedFile { name: name.clone(), reason: reason.to_owned() };
            if let Err(e) = check_name(&name) {
                report.skipped.push(skip(&e.to_string()));
                continue;
            }
            match kind {
                EntryKind::File => {}
                EntryKind::Symlink => {
                    report.skipped.push(skip("a symbolic link (a pool's volumes are its own files)"));
                    continue;
                }
                EntryKind::Other => {
                    report.skipped.push(skip("not a regular file"));
                    continue;
                }
            }
            files.insert(name.clone());
            if !known.contains_key(&name) {
                new.push(name);
            }
        }
        for name in known.keys() {
            if !files.contains(name) {
                records::delete_volume(&self.store, pool, name)?;
                report.removed.push(name.clone());
            }
        }
        for name in new {
            let lookup = |base: &str| match known.get(base) {
                Some(format) => files.contains(base).then_some(Some(*format)),
                None => files.contains(base).then_some(None),
            };
            match probe_new_volume(&dir, &name, lookup) {
                Ok(format) => {
                    records::put_volume(&self.store, pool, &name, format)?;
                    report.added.push(name);
                }
                Err(reason) => report.skipped.push(SkippedFile { name, reason }),
            }
        }
        report.added.sort();
        report.removed.sort();
        report.skipped.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(report)
    }
}

/// The format of a file put into the pool by hand (probed: the one time a pool guesses), or why
/// it is not taken: a qcow2 image must parse, and its backing file must be another file of the
/// pool with its format named.
fn probe_new_volume(
    dir: &PoolDir,
    name: &str,
    lookup: impl Fn(&str) -> Option<Option<ImageFormat>>,
) -> Result<ImageFormat, String> {
    let file = dir.open_file(name, false).map_err(|e| e.to_string())?;
    if !header::has_magic(&file).map_err(|e| e.to_string())? {
        return Ok(ImageFormat::Raw);
    }
    let h = header::read(&file).map_err(|e| format!("a damaged qcow2 image: {e}"))?;
    if let Some(backing) = &h.backing_file {
        check_backing(backing, h.backing_format.as_deref(), lookup)?;
    }
    Ok(ImageFormat::Qcow2)
}

/// Checks a qcow2 image's backing file name: it must be a volume of the same pool, named plainly
/// (no path), with its format named in the header (and, when `lookup` knows the base's format,
/// that one). `lookup` answers `None` for no such volume, `Some(None)` for one of unknown
/// format, `Some(Some(format))` otherwise.
pub(super) fn check_backing(
    backing: &str,
    backing_format: Option<&str>,
    lookup: impl Fn(&str) -> Option<Option<ImageFormat>>,
) -> Result<(), String> {
    let shown: String = backing.chars().take(100).collect();
    if check_name(backing).is_err() {
        return Err(format!("its backing file '{shown}' is not a volume of this pool"));
    }
    let Some(known) = lookup(backing) else {
        return Err(format!("its backing file '{shown}' is not a volume of this pool"));
    };
    let Some(named) = backing_format else {
        return Err(format!("its header does not name the format of its backing file '{shown}'"));
    };
    if let Some(format) = known {
        if named != records::format_name(format) {
            return Err(format!(
                "its header names its backing file '{shown}' {named}, but that volume is {}",
                records::format_name(format)
            ));
        }
    } else if !matches!(named, "raw" | "qcow2") {
        return Err(format!("its backing file's format '{named}' is neither raw nor qcow2"));
    }
    Ok(())
}
