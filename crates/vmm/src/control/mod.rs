//! The VMM's control thread: the API's requests, typed ([`model::control::VmmRequest`]), arrive
//! over a channel plus an eventfd ([`channel`]) and are answered by the [`Controller`], which owns
//! the pre-boot configuration, builds or restores the VM through a [`Launcher`], and drives the
//! running VM through [`VmControl`].
//!
//! The controller runs on the process's main thread: before the start it waits on the channel;
//! once the VM runs, the VM's event loop watches the channel's eventfd beside its own events
//! (signals, stdin, vCPU ends). Long operations (a snapshot) run on a thread of their own and
//! report back through the same channel, so the loop keeps answering other clients meanwhile.

mod channel;
mod controller;
mod engine;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use channel::{channel, ControlMessage, ControlReceiver, ControlSender, Received, Reply};
pub use controller::{Controller, ControllerSettings, Pending, DEFAULT_MMDS_SIZE_LIMIT};
pub use engine::{BeforeBuild, BuildOrigin, KvmLauncher};
use model::api::BalloonStats;
use model::config::VmConfig;
pub use model::resources::{DriveUpdate, NetUpdate};

use crate::builder::RestoreOptions;
use crate::snapshot::SnapshotRequest;

/// An engine failure, kept as an error value up to the control plane's edge (where it becomes
/// the client's `fault_message`).
pub type EngineError = Box<dyn std::error::Error + Send + Sync>;

/// What `InstanceStart` or `PUT /snapshot/load` asks the engine to build.
#[derive(Clone, Debug)]
pub enum Launch {
    /// Boot a VM from a complete configuration.
    Boot(VmConfig),
    /// Restore a VM from a snapshot; it stays paused unless `resume`. The launcher leaves the
    /// restored VM's configuration in `restored`.
    Restore {
        state_path: PathBuf,
        memory_path: PathBuf,
        options: RestoreOptions,
        resume: bool,
        restored: RestoredConfig,
    },
}

/// Where a launcher leaves the configuration of the VM it restored (the state file's, with the
/// restore's options): the controller takes the devices from it, so that requests to the
/// restored VM find them by ID. A slot rather than a return value, so that launchers that wrap
/// another (Landlock's) pass it through untouched.
#[derive(Clone, Debug, Default)]
pub struct RestoredConfig(Arc<std::sync::OnceLock<VmConfig>>);

impl RestoredConfig {
    /// Records the restored configuration (the first one recorded stays).
    pub fn set(&self, config: &VmConfig) {
        let _ = self.0.set(config.clone());
    }

    /// The restored configuration, once a launcher recorded it.
    pub fn get(&self) -> Option<&VmConfig> {
        self.0.get()
    }
}

/// Builds VMs for the controller: the real one ([`KvmLauncher`]) hands the built VM to the main
/// thread to run; test doubles record what they were asked.
pub trait Launcher {
    /// Builds (and, for a restore, pauses or not) the VM; returns its control.
    fn launch(&mut self, launch: Launch) -> Result<Arc<dyn VmControl>, EngineError>;
}

/// What the controller does to a running VM. Shared with the snapshot thread, hence `Sync`.
pub trait VmControl: Send + Sync {
    /// Returns once the vCPUs are paused; pausing a paused VM succeeds.
    fn pause(&self) -> Result<(), EngineError>;
    /// Resuming a running VM succeeds.
    fn resume(&self) -> Result<(), EngineError>;
    /// Writes a snapshot of the paused VM (called off the event loop).
    fn snapshot(&self, request: &SnapshotRequest) -> Result<(), EngineError>;
    /// `SendCtrlAltDel`: types Ctrl+Alt+Del on the guest's keyboard.
    fn send_ctrl_alt_del(&self) -> Result<(), EngineError>;
    /// `SendPowerButton`: presses the ACPI power button.
    fn send_power_button(&self) -> Result<(), EngineError>;
    /// `PATCH /balloon`: gives the balloon a new target.
    fn update_balloon(&self, amount_mib: u32) -> Result<(), EngineError>;
    /// `GET /balloon/statistics`: fails if the balloon has no statistics.
    fn balloon_statistics(&self) -> Result<BalloonStats, EngineError>;
    /// `PATCH /balloon/statistics`: a new interval (statistics cannot be turned on or off).
    fn update_balloon_stats_interval(&self, seconds: u16) -> Result<(), EngineError>;
    /// `PATCH /drives/{drive_id}`: disk `update.index` (in the order of the VM configuration's
    /// disks) takes the new file (opened as `update.disk` says) and rate limiter it names.
    fn update_drive(&self, update: &DriveUpdate) -> Result<(), EngineError>;
    /// `PATCH /network-interfaces/{iface_id}`: card `update.index` (in the order of the VM
    /// configuration's cards) takes the rate limiters the update names.
    fn update_net(&self, update: &NetUpdate) -> Result<(), EngineError>;
    /// Why the VMM cannot reach `path` for `usage` when the reason is its own confinement
    /// (Landlock), worded for the client (which flag allows it); `None` when the confinement
    /// allows it or there is none. Asked only after an open of `path` failed.
    fn confinement_refusal(&self, _path: &Path, _usage: PathUse) -> Option<ConfinementRefusal> {
        None
    }
}

/// The VMM's own confinement (Landlock), not the file, keeps it from a path; worded with the
/// flag that lets the path through.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} is outside the VMM's Landlock rules; start it with --landlock-allow {} (or --landlock off)", path.display(), allow.display())]
pub struct ConfinementRefusal {
    /// The path refused.
    pub path: PathBuf,
    /// What `--landlock-allow` is to name: the path, or the directory a file is created in.
    pub allow: PathBuf,
}

/// What the VMM does with a path an API request names after the start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathUse {
    Read,
    ReadWrite,
    /// Create a file there (a snapshot's files).
    Create,
}

/// `PUT /metrics` and `FlushMetrics`: the process's metrics writer, which lives with the binary.
pub trait MetricsControl: Send + Sync {
    /// Sends the metrics to `path` from now on (once per process).
    fn init(&self, path: &Path) -> Result<(), EngineError>;
    /// Writes one line now.
    fn flush(&self) -> Result<(), EngineError>;
}

/// Applies `PUT /logger` to the process's log output; the binary owns the log subscriber.
pub type LoggerHook = Box<dyn FnMut(model::api::Logger) -> Result<(), EngineError> + Send>;
