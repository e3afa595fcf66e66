//! The real engine behind the controller: [`KvmLauncher`] builds or restores a VM with the
//! [`crate::builder`] and keeps it for the main thread to run; [`VmHandle`] is the running VM's
//! [`VmControl`].

use std::sync::Arc;

use model::api::BalloonStats;
use model::config::VmConfig;

use super::{DriveUpdate, EngineError, Launch, Launcher, NetUpdate, VmControl};
use crate::snapshot::SnapshotRequest;
use crate::vm::{Vm, VmHandle};

/// Builds VMs on `/dev/kvm`. The VM it built waits in [`KvmLauncher::take_built`] for the main
/// thread, which runs it (its event loop then serves the controller).
#[derive(Default)]
pub struct KvmLauncher {
    built: Option<Vm>,
    before_build: Option<BeforeBuild>,
    /// What each boot adds to the configured machine (`--boot-timer`).
    options: crate::builder::BuildOptions,
}

/// Called on the launching (main) thread with the configuration of the VM about to be built or
/// restored, before the VM's first thread starts; an error cancels the launch. The binary
/// confines the process here (Landlock), so that every thread of the VM inherits it.
pub type BeforeBuild = Box<dyn FnMut(&VmConfig, BuildOrigin) -> Result<(), EngineError>>;

/// Where the configuration handed to [`BeforeBuild`] comes from, which says which of its paths
/// the VMM opens and how far they are trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildOrigin {
    /// The client's configuration: the VM boots from its kernel (and initrd).
    Boot,
    /// A snapshot's state file (untrusted) with the client's restore options: the kernel and
    /// initrd are never opened; every disk path passed the restore's checks (a regular file or
    /// block device of the saved capacity); the vsock socket path may be the state file's.
    Restore,
}

impl KvmLauncher {
    /// A launcher that calls `hook` before it builds or restores each VM.
    pub fn with_before_build(hook: BeforeBuild) -> KvmLauncher {
        KvmLauncher { built: None, before_build: Some(hook), options: Default::default() }
    }

    fn before_build(&mut self, config: &VmConfig, origin: BuildOrigin) -> Result<(), EngineError> {
        match &mut self.before_build {
            Some(hook) => hook(config, origin),
            None => Ok(()),
        }
    }

    /// Boots build their VMs with `options`.
    pub fn with_build_options(mut self, options: crate::builder::BuildOptions) -> KvmLauncher {
        self.options = options;
        self
    }

    /// The VM the last successful launch built, once.
    pub fn take_built(&mut self) -> Option<Vm> {
        self.built.take()
    }
}

impl Launcher for KvmLauncher {
    fn launch(&mut self, launch: Launch) -> Result<Arc<dyn VmControl>, EngineError> {
        let vm = match launch {
            Launch::Boot(config) => {
                self.before_build(&config, BuildOrigin::Boot)?;
                crate::builder::build_with(&config, self.options)?
            }
            Launch::Restore { state_path, memory_path, options, resume, restored } => {
                // The state file is read and checked, and the memory file mapped, before the
                // hook confines the process: the rules depend on the configuration inside it.
                // That parsing is unconfined by design, and hardened as hostile input instead.
                let prepared = crate::builder::prepare_restore(&state_path, &memory_path, &options)?;
                self.before_build(prepared.config(), BuildOrigin::Restore)?;
                let config = prepared.config().clone();
                let vm = prepared.finish()?;
                restored.set(&config);
                if !resume {
                    // Before `run`, a pause holds the vCPUs before they first enter the guest.
                    vm.handle().pause()?;
                }
                vm
            }
        };
        let handle = vm.handle();
        self.built = Some(vm);
        Ok(Arc::new(handle))
    }
}

impl VmControl for VmHandle {
    fn pause(&self) -> Result<(), EngineError> {
        Ok(VmHandle::pause(self)?)
    }

    fn resume(&self) -> Result<(), EngineError> {
        VmHandle::resume(self);
        Ok(())
    }

    fn snapshot(&self, request: &SnapshotRequest) -> Result<(), EngineError> {
        let report = VmHandle::snapshot(self, request)?;
        tracing::info!(
            "snapshot written in {:?}: {} bytes of state, {} bytes of memory",
            report.duration,
            report.state_bytes,
            report.memory_bytes_written
        );
        Ok(())
    }

    fn send_ctrl_alt_del(&self) -> Result<(), EngineError> {
        Ok(self.devices().send_ctrl_alt_del()?)
    }

    fn send_power_button(&self) -> Result<(), EngineError> {
        Ok(self.devices().press_power_button()?)
    }

    fn update_balloon(&self, amount_mib: u32) -> Result<(), EngineError> {
        Ok(self.devices().set_balloon_target(amount_mib)?)
    }

    fn balloon_statistics(&self) -> Result<BalloonStats, EngineError> {
        let report = self.devices().balloon_report()?;
        let stats = report.stats;
        Ok(BalloonStats {
            target_pages: report.target_pages,
            actual_pages: report.actual_pages,
            target_mib: report.target_mib,
            actual_mib: report.actual_mib,
            swap_in: stats.swap_in,
            swap_out: stats.swap_out,
            major_faults: stats.major_faults,
            minor_faults: stats.minor_faults,
            free_memory: stats.free_memory,
            total_memory: stats.total_memory,
            available_memory: stats.available_memory,
            disk_caches: stats.disk_caches,
            hugetlb_allocations: stats.hugetlb_allocations,
            hugetlb_failures: stats.hugetlb_failures,
            oom_kill: stats.oom_kills,
            alloc_stall: stats.alloc_stalls,
            async_scan: stats.async_scan,
            direct_scan: stats.direct_scan,
            async_reclaim: stats.async_reclaim,
            direct_reclaim: stats.direct_reclaim,
        })
    }

    fn update_balloon_stats_interval(&self, seconds: u16) -> Result<(), EngineError> {
        Ok(self.devices().set_balloon_stats_interval(seconds)?)
    }

    fn update_drive(&self, update: &DriveUpdate) -> Result<(), EngineError> {
        Ok(self.devices().update_disk(update)?)
    }

    fn update_net(&self, update: &NetUpdate) -> Result<(), EngineError> {
        Ok(self.devices().update_net(update)?)
    }
}
