//! The cgroup hierarchies mounted on the host, from `/proc/self/mountinfo`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The cgroup mounts: each v1 controller's mount point, and the cgroup2 mount.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hierarchies {
    /// v1 controller name (`memory`, `cpu`, ...) → its hierarchy's mount point.
    pub v1: BTreeMap<String, PathBuf>,
    /// The unified (cgroup2) mount point, if any.
    pub v2: Option<PathBuf>,
}

/// A mountinfo line Kestrel cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mountinfo line {line} is malformed")]
pub struct MountinfoError {
    pub line: usize,
}

/// Longest mountinfo text read (a host with many mounts still fits).
const MAX_MOUNTINFO: u64 = 16 << 20;

impl Hierarchies {
    /// The host's hierarchies, read from `/proc/self/mountinfo`.
    pub fn detect() -> Result<Hierarchies, super::CgroupError> {
        Self::from_file(Path::new("/proc/self/mountinfo"))
    }

    /// The hierarchies listed in a mountinfo file.
    pub fn from_file(path: &Path) -> Result<Hierarchies, super::CgroupError> {
        use std::io::Read;
        let failed = |source| super::CgroupError::Read { path: path.to_owned(), source };
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(failed)?
            .take(MAX_MOUNTINFO)
            .read_to_string(&mut text)
            .map_err(failed)?;
        Ok(parse_mountinfo(&text)?)
    }
}

/// Parses mountinfo text (proc(5)): `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [TAGS...] - TYPE
/// SOURCE SUPEROPTIONS`. For `cgroup` mounts the super options name the controllers; the first
/// mount of each controller (and of cgroup2) wins, as later ones are usually bind mounts.
pub fn parse_mountinfo(text: &str) -> Result<Hierarchies, MountinfoError> {
    let mut found = Hierarchies::default();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || MountinfoError { line: index + 1 };
        let fields: Vec<&str> = line.split(' ').collect();
        let separator = fields.iter().position(|f| *f == "-").ok_or_else(bad)?;
        if separator < 6 || fields.len() < separator + 4 {
            return Err(bad());
        }
        let mount_point = PathBuf::from(unescape(fields[4]));
        match fields[separator + 1] {
            "cgroup2" => {
                found.v2.get_or_insert(mount_point);
            }
            "cgroup" => {
                for option in fields[separator + 3].split(',') {
                    if matches!(option, "rw" | "ro") || option.contains('=') || option.is_empty() {
                        continue;
                    }
                    found.v1.entry(option.to_owned()).or_insert_with(|| mount_point.clone());
                }
            }
            _ => {}
        }
    }
    Ok(found)
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                let value =
                    (u32::from(d[0] - b'0') << 6) | (u32::from(d[1] - b'0') << 3) | u32::from(d[2] - b'0');
                out.push(value as u8);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 31 0:38 / /mnt/my\\040cg rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_host() {
        let h = parse_mountinfo(HYBRID).unwrap();
        assert_eq!(h.v1.get("cpu"), Some(&PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")));
        assert_eq!(h.v1.get("cpuacct"), Some(&PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")));
        assert_eq!(h.v1.get("memory"), Some(&PathBuf::from("/sys/fs/cgroup/memory")));
        assert!(!h.v1.contains_key("name=systemd") && !h.v1.contains_key("rw"));
        assert_eq!(h.v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(unescape("/mnt/my\\040cg"), "/mnt/my cg");
        assert!(parse_mountinfo("1 2 3\n").is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        #[test]
        fn never_panics(text in "([0-9a-z/ ,=:\\\\-]{0,40}\n){0,6}") {
            let _ = parse_mountinfo(&text);
        }
    }
}
