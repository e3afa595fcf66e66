//! What a restore checks of a decoded state before any of it reaches a device or KVM, beyond
//! what each device's own restore checks: the host files it names (disks) and that its parts
//! agree with each other. A state file is hostile input: its CRC can be recomputed by whoever
//! edits it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use storage::open::{open_disk, DiskSpec, OpenError};
use virtio::snapshot::VirtioSnapshot;

use super::memory_file::layout_of;
use super::{SnapshotError, VmState};
use crate::config::{BlockConfig, CacheMode, VirtioConfig, VirtioTransport, VmConfig};

/// Why a disk named by a snapshot (or by an override of it) cannot be the guest's disk.
#[derive(Debug, thiserror::Error)]
pub enum DiskProblem {
    #[error("{0}")]
    Open(OpenError),
    #[error(
        "it has {found} sectors of 512 bytes; the guest's disk had {expected} when the snapshot was taken"
    )]
    WrongSize { found: u64, expected: u64 },
    #[error("the snapshot does not record its size (an older state), so the path it names is not trusted: name the file with drive_overrides")]
    Unconfirmed,
}

impl DiskProblem {
    /// The problem with the disk at `path`, naming the path once (the storage crate's errors
    /// name it already).
    pub fn describe(&self, path: &Path) -> String {
        match self {
            DiskProblem::Open(error) => error.to_string(),
            other => format!("{}: {other}", path.display()),
        }
    }
}

/// Checks that `disk` can serve as the guest's disk of `expected` sectors (when known): opened
/// as the disk will be (its format: a qcow2 image's capacity is not its file's length), through
/// the storage crate's factory, so a FIFO cannot stall the restore (and the API with it), only a
/// regular file or a block device is taken, and an image another VM writes is refused; of the
/// capacity the guest saw, so that a mistaken path (`/etc/passwd`) does not become its disk.
pub fn check_disk(disk: &BlockConfig, expected: Option<u64>) -> Result<(), DiskProblem> {
    // Read-only, through the page cache: only the capacity is read here, and the lock is let go
    // before the device opens the image as the configuration says.
    let spec = DiskSpec { read_only: true, cache: CacheMode::Writeback, ..DiskSpec::of(disk) };
    let found = open_disk(&disk.path, &spec).map_err(DiskProblem::Open)?.size / 512;
    match expected {
        Some(expected) if expected != found => Err(DiskProblem::WrongSize { found, expected }),
        _ => Ok(()),
    }
}

/// A disk's name in errors: its drive ID, else its file's name.
fn drive_name(id: Option<&str>, path: &Path) -> String {
    id.map(str::to_owned)
        .unwrap_or_else(|| path.file_name().unwrap_or(path.as_os_str()).to_string_lossy().into_owned())
}

/// Puts the client's paths (drive ID → host path) in place of the saved ones, then checks every
/// disk's file against the capacity the state recorded. An override naming no disk of the
/// snapshot is an error: the client meant some disk, and it would silently keep its saved path.
pub fn apply_drive_paths(
    config: &mut VmConfig,
    disk_sectors: &[u64],
    overrides: &BTreeMap<String, PathBuf>,
) -> Result<(), SnapshotError> {
    let mut disks: Vec<_> = config
        .virtio
        .iter_mut()
        .filter_map(|device| match device {
            VirtioConfig::Block(disk) => Some(disk),
            _ => None,
        })
        .collect();
    for id in overrides.keys() {
        if !disks.iter().any(|disk| disk.id.as_deref() == Some(id.as_str())) {
            return Err(SnapshotError::UnknownDrive(id.clone()));
        }
    }
    if !disk_sectors.is_empty() && disk_sectors.len() != disks.len() {
        return Err(SnapshotError::Invalid("disk capacities (not one per disk)"));
    }
    for (index, disk) in disks.iter_mut().enumerate() {
        let overridden = disk.id.as_ref().and_then(|id| overrides.get(id));
        if let Some(path) = overridden {
            disk.path = path.clone();
        }
        let expected = disk_sectors.get(index).copied();
        // Without a recorded size nothing vouches for a path the state file names: only the
        // client's own path is taken then.
        let checked = if expected.is_none() && overridden.is_none() {
            Err(DiskProblem::Unconfirmed)
        } else {
            check_disk(disk, expected)
        };
        checked.map_err(|problem| SnapshotError::Disk {
            drive: drive_name(disk.id.as_deref(), &disk.path),
            path: disk.path.clone(),
            problem,
        })?;
    }
    Ok(())
}

/// Puts the client's taps (interface ID → tap name, Firecracker's `network_overrides`) in place
/// of the saved ones. An override naming no card of the snapshot is an error, as in Firecracker
/// (the card would silently keep its saved tap). The names themselves are checked by the
/// configuration's validation after this, and the tap when it is opened.
pub fn apply_tap_names(
    config: &mut VmConfig,
    overrides: &BTreeMap<String, String>,
) -> Result<(), SnapshotError> {
    for (id, tap) in overrides {
        let card = config.virtio.iter_mut().find_map(|device| match device {
            VirtioConfig::Net(net) if net.id.as_deref() == Some(id.as_str()) => Some(net),
            _ => None,
        });
        card.ok_or_else(|| SnapshotError::UnknownNetworkDevice(id.clone()))?.tap = Some(tap.clone());
    }
    Ok(())
}

/// Checks that the state's devices are the configuration's, on its transport: a device list
/// that disagrees would hand one device's state to another.
pub fn check_devices(state: &VmState, config: &VmConfig) -> Result<(), SnapshotError> {
    if state.virtio.len() != config.virtio.len() {
        return Err(SnapshotError::Invalid("device list (it does not match the configuration)"));
    }
    let on_transport = |saved: &VirtioSnapshot| {
        matches!(
            (saved, config.transport),
            (VirtioSnapshot::Mmio(_), VirtioTransport::Mmio) | (VirtioSnapshot::Pci(_), VirtioTransport::Pci)
        )
    };
    if !state.virtio.iter().all(on_transport) {
        return Err(SnapshotError::Invalid("device list (a device is not on the configuration's transport)"));
    }
    Ok(())
}

/// Checks that the saved regions are the ones the configuration's memory size has: a state file
/// names where guest RAM goes, and a forged one must not map it over the MMIO gap, nor make the
/// VMM allocate for terabytes of regions.
pub fn check_memory_layout(state: &VmState, config: &VmConfig) -> Result<(), SnapshotError> {
    let expected =
        layout_of(arch::ram_regions(config.memory_bytes).iter().map(|&(start, size)| (start.0, size as u64)));
    if state.memory != expected {
        return Err(SnapshotError::Invalid("memory layout (it does not match the memory size)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::config::BlockConfig;
    use crate::snapshot::testing::{sample_config, sample_state};

    fn image(dir: &Path, name: &str, sectors: u64) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, vec![0u8; (sectors * 512) as usize]).unwrap();
        path
    }

    #[test]
    fn a_fifo_is_refused_at_once_and_a_wrong_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let started = Instant::now();
        let check = |path: &Path, expected| check_disk(&BlockConfig::new(path), expected);
        let not_a_disk = |result: Result<(), DiskProblem>| {
            matches!(result, Err(DiskProblem::Open(OpenError::NotADisk { .. })))
        };
        // Without the non-blocking open this would wait for a writer for ever.
        assert!(not_a_disk(check(&fifo, Some(8))));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(not_a_disk(check(dir.path(), None)));
        assert!(not_a_disk(check(Path::new("/dev/null"), None)));
        let passwd = dir.path().join("passwd");
        std::fs::write(&passwd, b"root:x:0:0:root:/root:/bin/bash\n").unwrap();
        assert!(matches!(
            check(&passwd, Some(2048)),
            Err(DiskProblem::WrongSize { found: 0, expected: 2048 })
        ));
        let disk = image(dir.path(), "disk", 2048);
        assert!(check(&disk, Some(2048)).is_ok());
        assert!(matches!(check(&disk, Some(2047)), Err(DiskProblem::WrongSize { .. })));
        assert!(matches!(
            check(&dir.path().join("none"), None),
            Err(DiskProblem::Open(OpenError::Open { .. }))
        ));
        // An image another VM writes is refused, with the lock's message.
        let writer = open_disk(&disk, &DiskSpec::of(&BlockConfig::new(&disk))).unwrap();
        let error = check(&disk, Some(2048)).unwrap_err().to_string();
        assert!(error.contains("the image is in use"), "{error}");
        drop(writer);
    }

    #[test]
    fn tap_overrides_replace_saved_taps_and_unknown_cards_are_refused() {
        let mut config = sample_config();
        apply_tap_names(&mut config, &BTreeMap::from([("eth0".to_owned(), "tap7".to_owned())])).unwrap();
        let taps: Vec<_> = config
            .virtio
            .iter()
            .filter_map(|device| match device {
                VirtioConfig::Net(net) => Some(net.tap.as_deref()),
                _ => None,
            })
            .collect();
        assert_eq!(taps, [Some("tap7")]);
        let error = apply_tap_names(&mut config, &BTreeMap::from([("eth1".to_owned(), "tap8".to_owned())]))
            .unwrap_err();
        assert!(matches!(&error, SnapshotError::UnknownNetworkDevice(id) if id == "eth1"), "{error}");
        assert!(error.to_string().starts_with("Unknown Network Device"), "{error}");
    }

    #[test]
    fn overrides_replace_saved_paths_and_unknown_drives_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let disk = image(dir.path(), "disk", 2048);
        let mut config = sample_config();
        let overrides = BTreeMap::from([("rootfs".to_owned(), disk.clone())]);
        apply_drive_paths(&mut config, &[2048], &overrides).unwrap();
        assert!(matches!(&config.virtio[1], VirtioConfig::Block(BlockConfig { path, .. }) if *path == disk));

        // The saved path (which does not exist here) is checked when there is no override.
        let error = apply_drive_paths(&mut sample_config(), &[2048], &BTreeMap::new()).unwrap_err();
        assert!(
            matches!(&error, SnapshotError::Disk { drive, problem: DiskProblem::Open(_), .. } if drive == "rootfs")
        );

        let unknown = BTreeMap::from([("data".to_owned(), disk.clone())]);
        let error = apply_drive_paths(&mut sample_config(), &[2048], &unknown).unwrap_err();
        assert!(matches!(&error, SnapshotError::UnknownDrive(id) if id == "data"), "{error}");

        let error = apply_drive_paths(&mut sample_config(), &[2048, 1], &overrides).unwrap_err();
        assert!(matches!(error, SnapshotError::Invalid(_)), "{error}");
        let small = image(dir.path(), "small", 4);
        let error =
            apply_drive_paths(&mut sample_config(), &[2048], &BTreeMap::from([("rootfs".to_owned(), small)]))
                .unwrap_err();
        assert!(error.to_string().contains("4 sectors"), "{error}");

        // An older state records no sizes: a path it names is not taken on its word (a forged
        // one could name any host file), the client's override is.
        let error = apply_drive_paths(&mut sample_config(), &[], &BTreeMap::new()).unwrap_err();
        assert!(matches!(&error, SnapshotError::Disk { problem: DiskProblem::Unconfirmed, .. }), "{error}");
        apply_drive_paths(&mut sample_config(), &[], &overrides).unwrap();
    }

    #[test]
    fn devices_must_be_the_configurations() {
        let state = sample_state();
        check_devices(&state, &state.config).unwrap();
        let mut pci = state.config.clone();
        pci.transport = VirtioTransport::Pci;
        assert!(check_devices(&state, &pci).is_err());
        let mut fewer = state.config.clone();
        fewer.virtio.pop();
        assert!(check_devices(&state, &fewer).is_err());
    }
}
