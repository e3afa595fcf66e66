//! cgroup v2: one unified hierarchy; each controller a setting needs is enabled in every
//! ancestor's `cgroup.subtree_control` down to `<parent>`, then the VMM goes into
//! `<unified>/<parent>/<id>`.

use std::path::{Path, PathBuf};

use super::{create_levels, read_value, write_value, CgroupError, Hierarchies, PlannedGroup, Setting};

pub(super) fn plan(
    hierarchies: &Hierarchies,
    relative: &Path,
    settings: &[(Setting, String)],
) -> Result<Vec<PlannedGroup>, CgroupError> {
    let root = hierarchies.v2.clone().ok_or(CgroupError::NoV2Mount)?;
    let available = read_value(&root.join("cgroup.controllers"))?;
    for (setting, _) in settings {
        let controller = setting.controller();
        // `cgroup.*` files are the core's, present in every group.
        if controller != "cgroup" && !available.split_whitespace().any(|c| c == controller) {
            return Err(CgroupError::NoV2Controller { root, controller: controller.to_owned() });
        }
    }
    let values = settings.iter().map(|(s, v)| (s.file.clone(), v.clone())).collect();
    Ok(vec![PlannedGroup { root, relative: relative.to_path_buf(), values, cpuset: false }])
}

pub(super) fn apply(groups: &[PlannedGroup], pid: u32) -> Result<(), CgroupError> {
    for group in groups {
        let mut controllers: Vec<&str> = group
            .values
            .iter()
            .map(|(file, _)| file.split('.').next().unwrap_or_default())
            .filter(|c| *c != "cgroup")
            .collect();
        controllers.sort_unstable();
        controllers.dedup();
        // Every ancestor of the leaf, from the root down, delegates the controllers.
        let mut ancestor: PathBuf = group.root.clone();
        enable(&ancestor, &controllers)?;
        let parent = group.relative.parent().unwrap_or(Path::new(""));
        for component in parent.components() {
            create_levels(&ancestor, Path::new(&component), |_, _| Ok(()))?;
            ancestor.push(component);
            enable(&ancestor, &controllers)?;
        }
        create_levels(&group.root, &group.relative, |_, _| Ok(()))?;
        let dir = group.dir();
        for (file, value) in &group.values {
            write_value(&dir.join(file), value)?;
        }
        write_value(&dir.join("cgroup.procs"), &pid.to_string())?;
    }
    Ok(())
}

/// Enables the controllers for `dir`'s children (those not enabled yet, one write each, so the
/// kernel's refusal names the controller).
fn enable(dir: &Path, controllers: &[&str]) -> Result<(), CgroupError> {
    let control = dir.join("cgroup.subtree_control");
    let enabled = read_value(&control)?;
    for controller in controllers {
        if !enabled.split_whitespace().any(|c| c == *controller) {
            write_value(&control, &format!("+{controller}"))?;
        }
    }
    Ok(())
}
