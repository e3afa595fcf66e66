//! The jailer's flags, checked: what `kestrel jailer` was asked to do.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::rlimits::{ResourceLimits, RlimitError};
use crate::cgroup::{check_parent, CgroupError, CgroupVersion, Setting};

/// Firecracker's default `--chroot-base-dir`.
pub const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";

/// Longest `--id` (Firecracker's limit).
const MAX_ID_LEN: usize = 64;

/// The flags as given (strings), before [`JailerConfig::new`] checks them.
#[derive(Debug, Clone, Default)]
pub struct RawJailerArgs {
    pub id: String,
    pub exec_file: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub chroot_base_dir: PathBuf,
    pub netns: Option<PathBuf>,
    pub daemonize: bool,
    pub new_pid_ns: bool,
    pub cgroups: Vec<String>,
    pub cgroup_version: String,
    pub parent_cgroup: Option<PathBuf>,
    pub resource_limits: Vec<String>,
    pub extra_args: Vec<OsString>,
}

/// When the jailer started, passed on to the VMM as Firecracker's jailer does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StartTimes {
    /// CLOCK_MONOTONIC at the jailer's start, µs.
    pub start_time_us: u64,
    /// The jailer's CPU time at its start, µs (0 in a new PID namespace's child).
    pub start_time_cpu_us: u64,
    /// The CPU time the jailer spent before the exec (or the fork), µs.
    pub parent_cpu_time_us: u64,
}

/// Why the flags cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    #[error("--id '{0}' must be 1 to 64 letters, digits and hyphens")]
    Id(String),
    #[error("--exec-file {path}: {source}")]
    ExecFile { path: PathBuf, source: std::io::Error },
    #[error("--exec-file {0} is not a regular file")]
    ExecNotFile(PathBuf),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Rlimit(#[from] RlimitError),
    #[error("--netns {path}: {source}")]
    Netns { path: PathBuf, source: std::io::Error },
}

/// What the jailer does, every flag checked.
#[derive(Debug, Clone)]
pub struct JailerConfig {
    pub id: String,
    /// The exec file, canonical.
    pub exec_file: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// `<chroot base>/<exec-file name>/<id>/root`.
    pub jail_root: PathBuf,
    pub netns: Option<PathBuf>,
    pub daemonize: bool,
    pub new_pid_ns: bool,
    pub cgroups: Vec<Setting>,
    pub cgroup_version: CgroupVersion,
    /// `--parent-cgroup`, by default the exec file's name (as Firecracker).
    pub parent_cgroup: PathBuf,
    pub resource_limits: ResourceLimits,
    /// The VMM's argv after the jailer's own (`--id`, times): `vmm` first for a Kestrel binary,
    /// then the flags after `--`.
    pub extra_args: Vec<OsString>,
    pub start_times: StartTimes,
}

/// `--id`: 1 to 64 ASCII letters, digits and hyphens (so it is safe as a path component).
pub fn validate_id(id: &str) -> Result<(), ArgsError> {
    let fine = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if fine {
        Ok(())
    } else {
        Err(ArgsError::Id(id.chars().take(80).collect()))
    }
}

impl JailerConfig {
    /// Checks the flags. `is_kestrel` tells whether the exec file is a Kestrel binary (then the
    /// `vmm` subcommand goes first in its argv).
    pub fn new(
        raw: RawJailerArgs,
        start_times: StartTimes,
        is_kestrel: impl Fn(&Path) -> bool,
    ) -> Result<JailerConfig, ArgsError> {
        validate_id(&raw.id)?;
        let exec_file = std::fs::canonicalize(&raw.exec_file)
            .map_err(|source| ArgsError::ExecFile { path: raw.exec_file.clone(), source })?;
        let metadata = std::fs::metadata(&exec_file)
            .map_err(|source| ArgsError::ExecFile { path: exec_file.clone(), source })?;
        if !metadata.is_file() {
            return Err(ArgsError::ExecNotFile(exec_file));
        }
        let exec_name = exec_file
            .file_name()
            .map(PathBuf::from)
            .ok_or_else(|| ArgsError::ExecNotFile(exec_file.clone()))?;
        let cgroup_version: CgroupVersion = raw.cgroup_version.parse()?;
        let cgroups = raw
            .cgroups
            .iter()
            .map(|c| Setting::parse(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(CgroupError::from)?;
        let parent_cgroup = raw.parent_cgroup.unwrap_or_else(|| exec_name.clone());
        check_parent(&parent_cgroup)?;
        let mut resource_limits = ResourceLimits::default();
        for limit in &raw.resource_limits {
            resource_limits.set(limit)?;
        }
        if let Some(netns) = &raw.netns {
            std::fs::metadata(netns).map_err(|source| ArgsError::Netns { path: netns.clone(), source })?;
        }
        let jail_root = raw.chroot_base_dir.join(&exec_name).join(&raw.id).join("root");
        let mut extra_args = Vec::with_capacity(raw.extra_args.len() + 1);
        if is_kestrel(&exec_file) {
            // A Kestrel binary named `firecracker` takes Firecracker's flags with no subcommand.
            if exec_name != Path::new("firecracker") {
                extra_args.push(OsString::from("vmm"));
            }
            // The jailed VMM is unprivileged, so its Landlock defaults to on; the jail already
            // bounds its files (only what was put in the jail is there), and clients write
            // snapshots and link drives anywhere inside it, as they do for Firecracker. Landlock
            // then still bans TCP and anything reached through a descriptor from outside.
            extra_args.extend(["--landlock-allow", "/"].map(OsString::from));
        }
        extra_args.extend(raw.extra_args);
        Ok(JailerConfig {
            id: raw.id,
            exec_file,
            uid: raw.uid,
            gid: raw.gid,
            jail_root,
            netns: raw.netns,
            daemonize: raw.daemonize,
            new_pid_ns: raw.new_pid_ns,
            cgroups,
            cgroup_version,
            parent_cgroup,
            resource_limits,
            extra_args,
            start_times,
        })
    }

    /// The exec file's name, which is also its path in the jail (at the root).
    pub fn exec_name(&self) -> PathBuf {
        self.exec_file.file_name().map(PathBuf::from).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids() {
        assert!(validate_id("vm-1").is_ok());
        assert!(validate_id(&"a".repeat(64)).is_ok());
        for bad in ["", "a/b", "..", "a.b", "a b", &"a".repeat(65)] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    fn raw(exec: &Path) -> RawJailerArgs {
        RawJailerArgs {
            id: "vm1".into(),
            exec_file: exec.into(),
            chroot_base_dir: "/srv/jailer".into(),
            cgroup_version: "1".into(),
            extra_args: vec!["--api-sock".into(), "/run/x".into()],
            ..RawJailerArgs::default()
        }
    }

    #[test]
    fn config() {
        let dir = tempfile::tempdir().unwrap();
        let exec = dir.path().join("kestrel");
        std::fs::write(&exec, b"").unwrap();
        let config = JailerConfig::new(raw(&exec), StartTimes::default(), |_| true).unwrap();
        assert_eq!(config.jail_root, Path::new("/srv/jailer/kestrel/vm1/root"));
        assert_eq!(config.extra_args, ["vmm", "--landlock-allow", "/", "--api-sock", "/run/x"]);
        assert_eq!(config.parent_cgroup, Path::new("kestrel"));
        assert_eq!(config.resource_limits, ResourceLimits::default());
        let not_kestrel = JailerConfig::new(raw(&exec), StartTimes::default(), |_| false).unwrap();
        assert_eq!(not_kestrel.extra_args, ["--api-sock", "/run/x"]);
        // Kestrel copied in as `firecracker` takes Firecracker's command line: no subcommand.
        let copy = dir.path().join("firecracker");
        std::fs::write(&copy, b"").unwrap();
        let as_firecracker = JailerConfig::new(raw(&copy), StartTimes::default(), |_| true).unwrap();
        assert_eq!(as_firecracker.extra_args, ["--landlock-allow", "/", "--api-sock", "/run/x"]);
        assert_eq!(as_firecracker.jail_root, Path::new("/srv/jailer/firecracker/vm1/root"));

        let errors = [
            RawJailerArgs { id: "../x".into(), ..raw(&exec) },
            RawJailerArgs { exec_file: dir.path().into(), ..raw(&exec) },
            RawJailerArgs { exec_file: dir.path().join("none"), ..raw(&exec) },
            RawJailerArgs { parent_cgroup: Some("a/../b".into()), ..raw(&exec) },
            RawJailerArgs { parent_cgroup: Some("/abs".into()), ..raw(&exec) },
            RawJailerArgs { cgroup_version: "3".into(), ..raw(&exec) },
            RawJailerArgs { cgroups: vec!["nonsense".into()], ..raw(&exec) },
            RawJailerArgs { resource_limits: vec!["stack=1".into()], ..raw(&exec) },
        ];
        for e in errors {
            let text = format!("{:?}", e);
            let error = JailerConfig::new(e, StartTimes::default(), |_| true).unwrap_err();
            assert!(!error.to_string().contains('\n'), "{text}: {error}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        #[test]
        fn ids_taken_are_path_components(id in ".{0,70}") {
            if validate_id(&id).is_ok() {
                prop_assert!(!id.contains('/') && id != "." && id != ".." && id.len() <= 64);
            }
        }
    }
}
