//! cgroup placement of a jailed VMM: v1 (one hierarchy per controller) and v2 (the unified
//! hierarchy), found from `/proc/self/mountinfo`.
//!
//! A placement is planned first ([`CgroupPlan::new`]: every setting checked, every disk path
//! resolved, every controller's mount found) and applied second ([`CgroupPlan::apply`]: create
//! the groups, write the values, move the process in), so bad input fails before anything on
//! the host changes. The roots are parameters: tests run v2 against a directory tree that
//! imitates cgroup2's files.

mod device;
mod mounts;
mod setting;
mod v1;
mod v2;

use std::path::{Path, PathBuf};

pub use device::resolve_device_paths;
pub use mounts::{parse_mountinfo, Hierarchies, MountinfoError};
pub use setting::{Setting, SettingError};

/// Which cgroup interface to place the VMM with (`--cgroup-version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl std::str::FromStr for CgroupVersion {
    type Err = CgroupError;

    fn from_str(text: &str) -> Result<Self, CgroupError> {
        match text {
            "1" => Ok(CgroupVersion::V1),
            "2" => Ok(CgroupVersion::V2),
            _ => Err(CgroupError::Version(text.chars().take(32).collect())),
        }
    }
}

/// Why a cgroup placement cannot be planned or applied.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("--cgroup-version must be 1 or 2, not '{0}'")]
    Version(String),
    #[error(transparent)]
    Setting(#[from] SettingError),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Mountinfo(#[from] MountinfoError),
    #[error("no cgroup v1 hierarchy with the '{0}' controller is mounted")]
    NoV1Controller(String),
    #[error("no cgroup2 hierarchy is mounted")]
    NoV2Mount,
    #[error("the cgroup2 hierarchy at {root} does not offer the '{controller}' controller")]
    NoV2Controller { root: PathBuf, controller: String },
    #[error("--parent-cgroup '{0}' must be a relative path without '.' or '..' components")]
    Parent(String),
    #[error("cannot resolve the disk {path} in '{setting}': {source}")]
    Disk { path: PathBuf, setting: String, source: std::io::Error },
    #[error("{path} is on no block device, so '{setting}' cannot name it")]
    NoBlockDevice { path: PathBuf, setting: String },
    #[error("cannot create the cgroup {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("the kernel refused '{value}' in {path}: {source}")]
    Write { path: PathBuf, value: String, source: std::io::Error },
}

/// One cgroup directory of the plan and the values written into it, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedGroup {
    /// The mount point of the hierarchy the group is in.
    pub root: PathBuf,
    /// The group's path below `root` (`<parent>/<id>`).
    pub relative: PathBuf,
    /// `(file, value)` pairs, values with disk paths already turned into MAJ:MIN.
    pub values: Vec<(String, String)>,
    /// cpuset v1 groups copy `cpuset.cpus`/`cpuset.mems` from their parent when empty.
    pub cpuset: bool,
}

impl PlannedGroup {
    /// The group's directory.
    pub fn dir(&self) -> PathBuf {
        self.root.join(&self.relative)
    }
}

/// Where and how a VMM is placed: the groups to create, and the interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPlan {
    pub version: CgroupVersion,
    pub groups: Vec<PlannedGroup>,
}

impl CgroupPlan {
    /// Plans `<parent>/<id>` in each hierarchy the settings need. `parent` must be relative with
    /// no `.`/`..` (checked here); `id` is the jail's already-validated ID.
    pub fn new(
        version: CgroupVersion,
        hierarchies: &Hierarchies,
        parent: &Path,
        id: &str,
        settings: &[Setting],
    ) -> Result<CgroupPlan, CgroupError> {
        check_parent(parent)?;
        if settings.is_empty() {
            // Nothing to write: the VMM stays where it is, and no hierarchy need exist.
            return Ok(CgroupPlan { version, groups: Vec::new() });
        }
        let relative = parent.join(id);
        let settings = settings
            .iter()
            .map(|s| resolve_device_paths(s).map(|value| (s.clone(), value)))
            .collect::<Result<Vec<_>, _>>()?;
        let groups = match version {
            CgroupVersion::V1 => v1::plan(hierarchies, &relative, &settings)?,
            CgroupVersion::V2 => v2::plan(hierarchies, &relative, &settings)?,
        };
        Ok(CgroupPlan { version, groups })
    }

    /// Creates the groups, writes the values, then moves process `pid` into every group.
    pub fn apply(&self, pid: u32) -> Result<(), CgroupError> {
        match self.version {
            CgroupVersion::V1 => v1::apply(&self.groups, pid),
            CgroupVersion::V2 => v2::apply(&self.groups, pid),
        }
    }
}

/// `--parent-cgroup`: relative, with only normal components.
pub fn check_parent(parent: &Path) -> Result<(), CgroupError> {
    use std::path::Component;
    let fine =
        parent.components().all(|c| matches!(c, Component::Normal(_))) && parent.as_os_str().len() <= 4096;
    if fine {
        Ok(())
    } else {
        Err(CgroupError::Parent(parent.display().to_string().chars().take(256).collect()))
    }
}

/// Creates `root/relative` one level at a time, calling `created` for each directory this call
/// made (top-down), so v1 cpuset groups can be filled from their parents.
fn create_levels(
    root: &Path,
    relative: &Path,
    mut created: impl FnMut(&Path, &Path) -> Result<(), CgroupError>,
) -> Result<(), CgroupError> {
    let mut dir = root.to_path_buf();
    for component in relative.components() {
        let parent = dir.clone();
        dir.push(component);
        match std::fs::create_dir(&dir) {
            Ok(()) => created(&parent, &dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(source) => return Err(CgroupError::Create { path: dir, source }),
        }
    }
    Ok(())
}

/// Writes `value` to the cgroup file `path` in one `write` (cgroup files take one value per
/// write; the kernel's refusal comes back as the write's error).
fn write_value(path: &Path, value: &str) -> Result<(), CgroupError> {
    use std::io::Write;
    let refused = |source| CgroupError::Write { path: path.to_owned(), value: value.to_owned(), source };
    let mut file = std::fs::OpenOptions::new().write(true).open(path).map_err(refused)?;
    file.write_all(value.as_bytes()).map_err(refused)
}

/// Reads a small cgroup file (bounded: these are a line or a few).
fn read_value(path: &Path) -> Result<String, CgroupError> {
    use std::io::Read;
    let failed = |source| CgroupError::Read { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(failed)?;
    let mut text = String::new();
    file.take(1 << 20).read_to_string(&mut text).map_err(failed)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lays out files as the kernel would (a plain directory tree cannot create them itself).
    fn touch(root: &Path, files: &[(&str, &str)]) {
        for (file, content) in files {
            let path = root.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
    }

    fn settings(texts: &[&str]) -> Vec<Setting> {
        texts.iter().map(|t| Setting::parse(t).unwrap()).collect()
    }

    #[test]
    fn v2_enables_controllers_down_the_tree_then_writes_and_joins() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(
            root,
            &[
                ("cgroup.controllers", "cpuset cpu io memory pids\n"),
                ("cgroup.subtree_control", "cpu\n"),
                ("vms/cgroup.subtree_control", ""),
                ("vms/vm1/memory.max", "max\n"),
                ("vms/vm1/cpu.max", "max 100000\n"),
                ("vms/vm1/cgroup.procs", ""),
            ],
        );
        let hierarchies = Hierarchies { v1: Default::default(), v2: Some(root.to_owned()) };
        let wanted = settings(&["memory.max=67108864", "cpu.max=50000 100000"]);
        let plan =
            CgroupPlan::new(CgroupVersion::V2, &hierarchies, Path::new("vms"), "vm1", &wanted).unwrap();
        assert_eq!(plan.groups.len(), 1);
        assert_eq!(plan.groups[0].dir(), root.join("vms/vm1"));
        plan.apply(4242).unwrap();
        let read = |f: &str| std::fs::read_to_string(root.join(f)).unwrap();
        // cpu was enabled at the root already; memory is written (the fake file keeps the last write).
        assert_eq!(read("cgroup.subtree_control"), "+memory");
        assert_eq!(read("vms/cgroup.subtree_control"), "+memory");
        assert_eq!(read("vms/vm1/memory.max"), "67108864");
        assert_eq!(read("vms/vm1/cpu.max"), "50000 100000");
        assert_eq!(read("vms/vm1/cgroup.procs"), "4242");

        // A controller the hierarchy does not offer, and no cgroup2 at all.
        let hugetlb = settings(&["rdma.max=mlx4_0 hca_handle=2"]);
        let error =
            CgroupPlan::new(CgroupVersion::V2, &hierarchies, Path::new("vms"), "vm1", &hugetlb).unwrap_err();
        assert!(matches!(error, CgroupError::NoV2Controller { .. }), "{error}");
        let none = Hierarchies::default();
        assert!(matches!(
            CgroupPlan::new(CgroupVersion::V2, &none, Path::new("vms"), "vm1", &wanted),
            Err(CgroupError::NoV2Mount)
        ));
    }

    #[test]
    fn v1_groups_per_hierarchy_and_cpuset_inherits() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(
            root,
            &[
                ("cpuset/cpuset.cpus", "0-1\n"),
                ("cpuset/cpuset.mems", "0\n"),
                ("cpu,cpuacct/x", ""),
                ("memory/x", ""),
            ],
        );
        let mut hierarchies = Hierarchies::default();
        for (controller, mount) in
            [("cpuset", "cpuset"), ("cpu", "cpu,cpuacct"), ("cpuacct", "cpu,cpuacct"), ("memory", "memory")]
        {
            hierarchies.v1.insert(controller.into(), root.join(mount));
        }
        let wanted = settings(&["cpu.shares=512", "cpuacct.usage=0", "memory.limit_in_bytes=1048576"]);
        let plan =
            CgroupPlan::new(CgroupVersion::V1, &hierarchies, Path::new("kestrel"), "vm1", &wanted).unwrap();
        // cpu and cpuacct share their hierarchy's one group.
        assert_eq!(plan.groups.len(), 2);
        assert_eq!(plan.groups[0].values.len(), 2);
        let bad = settings(&["net_cls.classid=1"]);
        assert!(matches!(
            CgroupPlan::new(CgroupVersion::V1, &hierarchies, Path::new("kestrel"), "vm1", &bad),
            Err(CgroupError::NoV1Controller(c)) if c == "net_cls"
        ));
        for parent in ["../up", "/abs", "./a", "a/.."] {
            assert!(matches!(
                CgroupPlan::new(CgroupVersion::V1, &hierarchies, Path::new(parent), "vm1", &wanted),
                Err(CgroupError::Parent(_))
            ));
        }
        // cpuset: a new group's empty cpus and mems come from its parent (a fake tree's new
        // directories have no files, so they are laid out first, empty, as the kernel makes them).
        touch(root, &[("cpuset/kestrel/cpuset.cpus", ""), ("cpuset/kestrel/cpuset.mems", "")]);
        v1::inherit_cpuset(&root.join("cpuset"), &root.join("cpuset/kestrel")).unwrap();
        assert_eq!(std::fs::read_to_string(root.join("cpuset/kestrel/cpuset.cpus")).unwrap(), "0-1");
        assert_eq!(std::fs::read_to_string(root.join("cpuset/kestrel/cpuset.mems")).unwrap(), "0");
    }
}
