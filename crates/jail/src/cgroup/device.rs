//! Kestrel's extension for per-disk I/O limits: an `io.*`/`blkio.*` value may name a disk by path
//! (`io.max=/var/lib/vm/disk.img rbps=1048576`) instead of by `MAJ:MIN`; the path becomes the
//! whole-disk device that holds it (a block device is itself; a regular file is the device of
//! its filesystem; a partition is its disk, as the io controller only takes disks).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{CgroupError, Setting};

/// The value to write for `setting`: unchanged, or with a leading disk path replaced by the
/// `MAJ:MIN` of the disk that holds it.
pub fn resolve_device_paths(setting: &Setting) -> Result<String, CgroupError> {
    if !matches!(setting.controller(), "io" | "blkio") || !setting.value.starts_with('/') {
        return Ok(setting.value.clone());
    }
    let (path, rest) = match setting.value.split_once(' ') {
        Some((path, rest)) => (path, Some(rest)),
        None => (setting.value.as_str(), None),
    };
    let path = PathBuf::from(path);
    let described = setting_text(setting);
    let metadata = std::fs::metadata(&path).map_err(|source| CgroupError::Disk {
        path: path.clone(),
        setting: described.clone(),
        source,
    })?;
    let device = if metadata.file_type().is_block_device() { metadata.rdev() } else { metadata.dev() };
    let (major, minor) = (libc::major(device), libc::minor(device));
    if major == 0 {
        // Anonymous devices (tmpfs, overlayfs): no block device the io controller could limit.
        return Err(CgroupError::NoBlockDevice { path, setting: described });
    }
    let (major, minor) = whole_disk(Path::new("/sys/dev/block"), major, minor);
    Ok(match rest {
        Some(rest) => format!("{major}:{minor} {rest}"),
        None => format!("{major}:{minor}"),
    })
}

fn setting_text(setting: &Setting) -> String {
    format!("{}={}", setting.file, setting.value).chars().take(256).collect()
}

/// The disk a partition belongs to (`/sys/dev/block/M:m/partition` exists for partitions, and
/// the disk's `dev` is one directory up); a disk is itself.
fn whole_disk(sys_block: &Path, major: u32, minor: u32) -> (u32, u32) {
    let node = sys_block.join(format!("{major}:{minor}"));
    if !node.join("partition").exists() {
        return (major, minor);
    }
    let parent = std::fs::canonicalize(&node).ok().and_then(|p| p.parent().map(|p| p.join("dev")));
    parent
        .and_then(|dev| std::fs::read_to_string(dev).ok())
        .and_then(|text| {
            let (a, b) = text.trim().split_once(':')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .unwrap_or((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_device_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        std::fs::write(&file, b"x").unwrap();
        let dev = std::fs::metadata(&file).unwrap().dev();
        let (major, minor) = whole_disk(Path::new("/sys/dev/block"), libc::major(dev), libc::minor(dev));
        let setting = Setting::parse(&format!("io.max={} rbps=1048576", file.display())).unwrap();
        if major != 0 {
            assert_eq!(resolve_device_paths(&setting).unwrap(), format!("{major}:{minor} rbps=1048576"));
        }
        let missing = Setting::parse("blkio.throttle.read_bps_device=/no/such/disk 1").unwrap();
        assert!(matches!(resolve_device_paths(&missing), Err(CgroupError::Disk { .. })));
        let plain = Setting::parse("io.max=8:0 rbps=1").unwrap();
        assert_eq!(resolve_device_paths(&plain).unwrap(), "8:0 rbps=1");
        let memory = Setting::parse("memory.max=/x").unwrap();
        assert_eq!(resolve_device_paths(&memory).unwrap(), "/x");
    }
}
