//! The jail's `/dev`: `/dev/kvm`, `/dev/net/tun` and `/dev/userfaultfd`, nothing else, owned by
//! the jailed uid/gid; and `/run` for the API socket's default path.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::JailerError;

/// A character device to recreate in the jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Node {
    pub path: &'static str,
    pub major: u32,
    pub minor: u32,
}

/// The nodes and their numbers as the host has them. /dev/kvm (10:232) and /dev/net/tun
/// (10:200) have fixed numbers; /dev/userfaultfd's minor is dynamic, so it is read from the host
/// (and skipped if the host has none).
pub(super) fn host_nodes() -> Vec<Node> {
    let mut nodes = vec![
        Node { path: "/dev/kvm", major: 10, minor: 232 },
        Node { path: "/dev/net/tun", major: 10, minor: 200 },
    ];
    if let Some((major, minor)) = char_device_numbers(Path::new("/dev/userfaultfd")) {
        nodes.push(Node { path: "/dev/userfaultfd", major, minor });
    }
    nodes
}

fn char_device_numbers(path: &Path) -> Option<(u32, u32)> {
    let metadata = std::fs::metadata(path).ok()?;
    metadata
        .file_type()
        .is_char_device()
        .then(|| (libc::major(metadata.rdev()), libc::minor(metadata.rdev())))
}

/// Inside the jail (after pivot_root): `/`, `/dev`, `/dev/net` and `/run` owned by uid/gid with
/// mode 0700, then the nodes, 0600 and owned by uid/gid.
pub(super) fn create(nodes: &[Node], uid: u32, gid: u32) -> Result<(), JailerError> {
    for dir in ["/", "/dev", "/dev/net", "/run"] {
        own_dir(Path::new(dir), uid, gid)?;
    }
    for node in nodes {
        let path = std::ffi::CString::new(node.path).expect("no NUL in the literal paths");
        // SAFETY: path is NUL-terminated and lives across the calls.
        if unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(node.major, node.minor)) }
            != 0
        {
            return Err(JailerError::path("mknod", node.path, std::io::Error::last_os_error()));
        }
        chown(Path::new(node.path), uid, gid)?;
    }
    Ok(())
}

fn own_dir(dir: &Path, uid: u32, gid: u32) -> Result<(), JailerError> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(JailerError::path("create", dir, e)),
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| JailerError::path("chmod", dir, e))?;
    chown(dir, uid, gid)
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), JailerError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|e| JailerError::path("chown", path, e))
}
