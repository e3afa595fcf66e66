//! `kestrel jailer`: Firecracker's jailer, flag for flag. It builds the jail
//! `<chroot base>/<exec-file name>/<id>/root`, copies the exec file in, places the process in its
//! cgroups, sets rlimits, joins the network namespace, enters a fresh mount namespace rooted at
//! the jail (pivot_root), creates `/dev/kvm`, `/dev/net/tun` and `/dev/userfaultfd` there, closes
//! every inherited fd, optionally daemonizes and forks into a new PID namespace, drops to the
//! given uid/gid with no capabilities, and execs the VMM.

mod args;
mod chroot;
mod devices;
pub mod exec;
mod fds;
mod jaildir;
pub mod libs;
mod namespaces;
mod privileges;
mod rlimits;

use std::convert::Infallible;
use std::path::PathBuf;

pub use args::{validate_id, ArgsError, JailerConfig, RawJailerArgs, StartTimes, DEFAULT_CHROOT_BASE};
pub use rlimits::{ResourceLimits, RlimitError, DEFAULT_NO_FILE};

use crate::cgroup::{CgroupError, CgroupPlan, Hierarchies};

/// Why the jailer stopped before exec'ing the VMM. Every message is one line.
#[derive(Debug, thiserror::Error)]
pub enum JailerError {
    #[error(transparent)]
    Args(#[from] ArgsError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Rlimit(#[from] rlimits::RlimitError),
    #[error(
        "the jail {0} is already in use (it holds a previous run's files); pick another --id or remove it"
    )]
    JailInUse(PathBuf),
    #[error("cannot {what} {path}: {source}")]
    Path { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{0} is not a directory (a symlink, say); the jail must be made of real directories")]
    NotADirectory(PathBuf),
    #[error("{what} failed: {source}")]
    Sys { what: &'static str, source: std::io::Error },
    #[error(transparent)]
    Elf(#[from] libs::ElfError),
    #[error("capabilities remain after dropping them (effective {0:#x})")]
    CapabilitiesLeft(u64),
}

impl JailerError {
    fn sys(what: &'static str) -> JailerError {
        JailerError::Sys { what, source: std::io::Error::last_os_error() }
    }

    fn path(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> JailerError {
        JailerError::Path { what, path: path.into(), source }
    }
}

/// Jails this process and execs the VMM; returns only on failure. The process must be
/// single-threaded (it may fork into a new PID namespace). `hierarchies` are the host's cgroup
/// mounts ([`Hierarchies::detect`]).
pub fn run(config: &JailerConfig, hierarchies: &Hierarchies) -> Result<Infallible, JailerError> {
    // Everything that reads the host's files is planned before anything changes.
    let plan = CgroupPlan::new(
        config.cgroup_version,
        hierarchies,
        &config.parent_cgroup,
        &config.id,
        &config.cgroups,
    )?;
    let nodes = devices::host_nodes();
    let jail = chroot::prepare(config)?;
    let exec_name = config.exec_name();

    if let Some(netns) = &config.netns {
        namespaces::join_netns(netns)?;
    }
    config.resource_limits.install()?;
    if !config.cgroups.is_empty() {
        plan.apply(std::process::id())?;
    }
    // Opened on the host: the jail has no /dev/null.
    let dev_null = config.daemonize.then(fds::open_dev_null).transpose()?;

    chroot::pivot_into(&jail)?;
    devices::create(&nodes, config.uid, config.gid)?;
    if let Some(null) = dev_null {
        fds::daemonize(null)?;
    }
    fds::close_inherited()?;

    let mut times = config.start_times;
    if config.new_pid_ns {
        // The parent writes the child's pid beside the exec file and exits; the child goes on.
        namespaces::fork_into_new_pid_ns(&exec_name, &mut times)?;
    } else {
        // This process becomes the VMM: its pid goes where Firecracker's jailer writes it.
        namespaces::write_pid_file(&exec_name, std::process::id())?;
        times.parent_cpu_time_us = exec::cpu_time_us().saturating_sub(times.start_time_cpu_us);
    }
    privileges::drop_all(config.uid, config.gid)?;
    Err(exec::exec(config, &exec_name, &times))
}
