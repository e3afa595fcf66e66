//! cgroup v1: one hierarchy per controller; the VMM goes into `<mount>/<parent>/<id>` of each
//! controller a setting names.

use std::path::Path;

use super::{create_levels, read_value, write_value, CgroupError, Hierarchies, PlannedGroup, Setting};

pub(super) fn plan(
    hierarchies: &Hierarchies,
    relative: &Path,
    settings: &[(Setting, String)],
) -> Result<Vec<PlannedGroup>, CgroupError> {
    let mut groups: Vec<PlannedGroup> = Vec::new();
    for (setting, value) in settings {
        let controller = setting.controller();
        let root = hierarchies
            .v1
            .get(controller)
            .ok_or_else(|| CgroupError::NoV1Controller(controller.to_owned()))?;
        // Co-mounted controllers (cpu,cpuacct) share one group.
        let group = match groups.iter_mut().position(|g| &g.root == root) {
            Some(i) => &mut groups[i],
            None => {
                groups.push(PlannedGroup {
                    root: root.clone(),
                    relative: relative.to_path_buf(),
                    values: Vec::new(),
                    cpuset: false,
                });
                groups.last_mut().expect("just pushed")
            }
        };
        group.cpuset |= controller == "cpuset";
        group.values.push((setting.file.clone(), value.clone()));
    }
    Ok(groups)
}

pub(super) fn apply(groups: &[PlannedGroup], pid: u32) -> Result<(), CgroupError> {
    for group in groups {
        create_levels(&group.root, &group.relative, |parent, dir| {
            if group.cpuset {
                inherit_cpuset(parent, dir)?;
            }
            Ok(())
        })?;
        let dir = group.dir();
        for (file, value) in &group.values {
            write_value(&dir.join(file), value)?;
        }
    }
    // Values first, then the moves: a cpuset group takes no task before it has CPUs and nodes.
    for group in groups {
        write_value(&group.dir().join("cgroup.procs"), &pid.to_string())?;
    }
    Ok(())
}

/// A new v1 cpuset group starts with no CPUs and no memory nodes and takes no task; give it its
/// parent's, as Firecracker's jailer does.
pub(super) fn inherit_cpuset(parent: &Path, dir: &Path) -> Result<(), CgroupError> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        if read_value(&dir.join(file))?.trim().is_empty() {
            let value = read_value(&parent.join(file))?;
            write_value(&dir.join(file), value.trim())?;
        }
    }
    Ok(())
}
