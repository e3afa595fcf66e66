//! What the control API changes in a running VM's devices: the keyboard types Ctrl+Alt+Del, the
//! ACPI power button is pressed, the balloon takes a new target or statistics interval and reports, a disk gets a new backing file.
//!
//! Each call reaches the device through the handle the VMM kept when it built it, from the API's
//! thread while the guest runs, and returns once the device has taken the change; the guest
//! follows at its own pace, told by an interrupt.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use devices::acpi::{Ged, GedError};
use devices::legacy::{I8042Error, I8042};
use virtio::balloon::{BalloonControl, BalloonError, BalloonReport};
use virtio::block::BlockControl;
use virtio::net::NetControl;
use virtio::rate_limiter::RateLimitError;

use storage::open::{DiskSpec, ImageLock};

use crate::disks::{open_backend, rate_limit, DiskOpenError};

use crate::builder::DeviceHandles;
use crate::config::{BlockConfig, VirtioConfig, VmConfig};
use crate::control::{DriveUpdate, NetUpdate};

/// Why a device could not take a change.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot type Ctrl+Alt+Del: {0}")]
    Keyboard(I8042Error),
    #[error("cannot press the power button: {0}")]
    PowerButton(GedError),
    #[error("the VM has no balloon device")]
    NoBalloon,
    #[error("{0}")]
    Balloon(BalloonError),
    #[error("the VM has no disk {index} (it has {count})")]
    NoDisk { index: usize, count: usize },
    #[error("{}", source.describe(path))]
    Disk { path: PathBuf, source: DiskOpenError },
    #[error("cannot change the disk's rate limiter: {0}")]
    RateLimiter(#[from] RateLimitError),
    #[error("the VM has no network interface {index} (it has {count})")]
    NoNet { index: usize, count: usize },
    #[error("cannot change the network interface's rate limiters: {0}")]
    NetRateLimiter(RateLimitError),
}

/// Handles on the devices the API changes; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct DeviceControls {
    i8042: Arc<Mutex<I8042>>,
    ged: Arc<Mutex<Ged>>,
    balloon: Option<BalloonControl>,
    disks: Vec<BlockControl>,
    /// Each network card's rate limiters, in the configuration's order of cards.
    nets: Vec<NetControl>,
    /// Each disk's image lock, replaced with the disk's file.
    disk_locks: Arc<Mutex<Vec<ImageLock>>>,
    /// The VM's configuration, which a snapshot saves: a disk's new file goes into it.
    config: Arc<Mutex<VmConfig>>,
}

impl DeviceControls {
    pub(crate) fn new(devices: &DeviceHandles, config: Arc<Mutex<VmConfig>>) -> DeviceControls {
        DeviceControls {
            i8042: devices.i8042.clone(),
            ged: devices.ged.clone(),
            balloon: devices.virtio.balloon.clone(),
            disks: devices.virtio.disks.clone(),
            nets: devices.virtio.nets.clone(),
            disk_locks: Arc::new(Mutex::new(devices.virtio.disk_locks.clone())),
            config,
        }
    }

    fn balloon(&self) -> Result<&BalloonControl, ControlError> {
        self.balloon.as_ref().ok_or(ControlError::NoBalloon)
    }

    /// Asks the guest's balloon driver to grow or shrink the balloon to `target_mib`.
    pub fn set_balloon_target(&self, target_mib: u32) -> Result<(), ControlError> {
        self.balloon()?.set_target_mib(target_mib).map_err(ControlError::Balloon)
    }

    /// Asks the guest for memory statistics every `seconds` from now on (statistics cannot be
    /// turned on or off while it runs).
    pub fn set_balloon_stats_interval(&self, seconds: u16) -> Result<(), ControlError> {
        self.balloon()?.set_stats_interval(seconds).map_err(ControlError::Balloon)
    }

    /// The balloon's sizes and the guest's latest statistics (fails without statistics).
    pub fn balloon_report(&self) -> Result<BalloonReport, ControlError> {
        self.balloon()?.report().map_err(ControlError::Balloon)
    }

    /// Types Ctrl+Alt+Del on the guest's keyboard (the i8042's output buffer, IRQ 1). A Linux
    /// guest with the i8042 and atkbd drivers reboots; the VM then ends as a reset.
    pub fn send_ctrl_alt_del(&self) -> Result<(), ControlError> {
        // A poisoned lock means a vCPU thread panicked mid-access; the registers are still whole.
        let mut i8042 = self.i8042.lock().unwrap_or_else(PoisonError::into_inner);
        i8042.send_ctrl_alt_del().map_err(ControlError::Keyboard)
    }

    /// Presses the ACPI power button (the generic event device's event and interrupt). A guest
    /// with ACPI and something listening to the button (acpid, systemd-logind) powers off; the
    /// VM then ends as a power-off. Pressed while paused, the press is delivered on resume.
    pub fn press_power_button(&self) -> Result<(), ControlError> {
        // A poisoned lock means a vCPU thread panicked mid-access; the register is still whole.
        let mut ged = self.ged.lock().unwrap_or_else(PoisonError::into_inner);
        ged.press_power_button().map_err(ControlError::PowerButton)
    }

    /// `PATCH /drives`: gives disk `update.index` (counted in the configuration's order of disks)
    /// its new rate limiter, then its new file, opened as the disk was (format, read-only or not,
    /// cache mode). The guest's driver is told its capacity changed; requests under way finish
    /// on the old file. The VM's configuration records what the disk took, for a snapshot and
    /// `GET /vm/config`.
    pub fn update_disk(&self, update: &DriveUpdate) -> Result<(), ControlError> {
        let index = update.index;
        let disk = self.disks.get(index).ok_or(ControlError::NoDisk { index, count: self.disks.len() })?;
        if update.rate_limiter.is_some() {
            // The limiter as the disk is configured after the update (the model merged the PATCH
            // into the drive's limiter: a bucket it leaves out keeps its setting, as in
            // Firecracker).
            let limiter = update.disk.rate_limiter;
            disk.update_rate_limiter(limiter.as_ref().map(rate_limit))?;
            // Recorded now: if the new file below cannot be opened, the disk keeps this limiter.
            self.record(index, |block| block.rate_limiter = limiter);
        }
        if let Some(path) = &update.path {
            let failed = |source| ControlError::Disk { path: path.clone(), source };
            // Opened as the disk is: its format, cache mode and backing rule, and read-only as
            // the device is (the guest was told so when it started).
            let spec = DiskSpec { read_only: disk.read_only(), ..DiskSpec::of(&update.disk) };
            // One update at a time (the controller runs one long operation at once); the lock on
            // the list is held across the open so the held image lock cannot change meanwhile.
            let mut locks = self.disk_locks.lock().unwrap_or_else(PoisonError::into_inner);
            let opened = open_backend(path, &spec, locks.get(index)).map_err(failed)?;
            disk.replace(opened.backend).map_err(|e| failed(e.into()))?;
            if let Some(held) = locks.get_mut(index) {
                *held = opened.lock;
            }
        }
        self.record(index, |block| *block = update.disk.clone());
        Ok(())
    }

    /// `PATCH /network-interfaces`: card `update.index` (counted in the configuration's order of
    /// cards) takes the limiters the PATCH names (merged by the model: a bucket it leaves out
    /// keeps its setting); their buckets start full, and a limiter the PATCH leaves out keeps its
    /// budget. The VM's configuration records them, for a snapshot.
    pub fn update_net(&self, update: &NetUpdate) -> Result<(), ControlError> {
        let index = update.index;
        let net = self.nets.get(index).ok_or(ControlError::NoNet { index, count: self.nets.len() })?;
        let (rx, tx) = (update.rx_rate_limiter, update.tx_rate_limiter);
        net.update_rate_limiters(rx.as_ref().map(rate_limit), tx.as_ref().map(rate_limit))
            .map_err(ControlError::NetRateLimiter)?;
        let mut config = self.config.lock().unwrap_or_else(PoisonError::into_inner);
        let mut nets = config.virtio.iter_mut().filter_map(|device| match device {
            VirtioConfig::Net(net) => Some(net),
            _ => None,
        });
        if let Some(net) = nets.nth(index) {
            net.rx_rate_limiter = rx.or(net.rx_rate_limiter);
            net.tx_rate_limiter = tx.or(net.tx_rate_limiter);
        }
        Ok(())
    }

    /// Changes disk `index` in the VM's configuration with `change`.
    fn record(&self, index: usize, change: impl FnOnce(&mut BlockConfig)) {
        let mut config = self.config.lock().unwrap_or_else(PoisonError::into_inner);
        let mut disks = config.virtio.iter_mut().filter_map(|device| match device {
            VirtioConfig::Block(block) => Some(block),
            _ => None,
        });
        if let Some(block) = disks.nth(index) {
            change(block);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;
    use crate::config::{BlockConfig, RateLimiterConfig, TokenBucket};
    use crate::disks::open_block;
    use crate::snapshot::testing::{sample_config, NoInterrupts};

    /// Controls over the one disk `disk` configures, and its device.
    fn controls_over(disk: &BlockConfig) -> (DeviceControls, virtio::block::Block) {
        let (block, lock) = open_block(disk).unwrap();
        let i8042 = I8042::new(EventFd::new(EFD_NONBLOCK).unwrap(), Arc::new(NoInterrupts));
        let config = VmConfig { virtio: vec![VirtioConfig::Block(disk.clone())], ..sample_config() };
        let controls = DeviceControls {
            i8042: Arc::new(Mutex::new(i8042)),
            ged: Arc::new(Mutex::new(Ged::new(Arc::new(NoInterrupts)))),
            balloon: None,
            disks: vec![block.control()],
            nets: Vec::new(),
            disk_locks: Arc::new(Mutex::new(vec![lock])),
            config: Arc::new(Mutex::new(config)),
        };
        (controls, block)
    }

    fn configured_disk(controls: &DeviceControls) -> BlockConfig {
        match &controls.config.lock().unwrap().virtio[0] {
            VirtioConfig::Block(block) => block.clone(),
            other => panic!("{other:?}"),
        }
    }

    fn image(dir: &Path) -> BlockConfig {
        let path = dir.join("disk.img");
        std::fs::File::create(&path).unwrap().set_len(1 << 20).unwrap();
        BlockConfig::new(path)
    }

    #[test]
    fn a_patched_limiter_reaches_the_device_and_the_vm_config_even_if_the_new_file_fails() {
        let dir = tempfile::tempdir().unwrap();
        let disk = image(dir.path());
        let (controls, block) = controls_over(&disk);
        assert_eq!(block.control().rate_limit(), Default::default(), "no limit configured");

        let limiter = RateLimiterConfig { bandwidth: None, ops: Some(TokenBucket::per_second(200)) };
        let limited = BlockConfig { rate_limiter: Some(limiter), ..disk.clone() };
        let update = DriveUpdate { index: 0, path: None, rate_limiter: Some(limiter), disk: limited.clone() };
        controls.update_disk(&update).unwrap();
        assert_eq!(block.control().rate_limit(), rate_limit(&limiter));
        assert_eq!(configured_disk(&controls), limited);

        // Lifted (a limiter without buckets), with a new file that cannot be opened: the limiter
        // is changed and recorded, the file is not.
        let missing = dir.path().join("missing.img");
        let lifted = RateLimiterConfig::default();
        let update = DriveUpdate {
            index: 0,
            path: Some(missing.clone()),
            rate_limiter: Some(lifted),
            disk: BlockConfig { path: missing, rate_limiter: Some(lifted), ..disk.clone() },
        };
        assert!(matches!(controls.update_disk(&update), Err(ControlError::Disk { .. })));
        assert_eq!(block.control().rate_limit(), Default::default());
        assert_eq!(configured_disk(&controls), BlockConfig { rate_limiter: Some(lifted), ..disk });
    }

    #[test]
    fn a_patched_net_limiter_reaches_the_card_and_the_vm_config_and_the_other_keeps_its_own() {
        use crate::config::NetConfig;
        use virtio::net::NetLimiters;

        let tx = RateLimiterConfig { bandwidth: Some(TokenBucket::per_second(1 << 20)), ops: None };
        let limiters = NetLimiters::new(Default::default(), rate_limit(&tx)).unwrap();
        let card = NetConfig { tx_rate_limiter: Some(tx), ..NetConfig::new(Some("tap0".into())) };
        let i8042 = I8042::new(EventFd::new(EFD_NONBLOCK).unwrap(), Arc::new(NoInterrupts));
        let config =
            VmConfig { virtio: vec![VirtioConfig::Rng, VirtioConfig::Net(card.clone())], ..sample_config() };
        let controls = DeviceControls {
            i8042: Arc::new(Mutex::new(i8042)),
            ged: Arc::new(Mutex::new(Ged::new(Arc::new(NoInterrupts)))),
            balloon: None,
            disks: Vec::new(),
            nets: vec![limiters.control()],
            disk_locks: Arc::new(Mutex::new(Vec::new())),
            config: Arc::new(Mutex::new(config)),
        };
        let rx = RateLimiterConfig { bandwidth: None, ops: Some(TokenBucket::per_second(100)) };
        let patched = NetConfig { rx_rate_limiter: Some(rx), ..card.clone() };
        let update =
            NetUpdate { index: 0, rx_rate_limiter: Some(rx), tx_rate_limiter: None, net: patched.clone() };
        controls.update_net(&update).unwrap();
        assert_eq!(limiters.control().rate_limits(), (rate_limit(&rx), rate_limit(&tx)));
        assert_eq!(controls.config.lock().unwrap().virtio[1], VirtioConfig::Net(patched));

        let absurd = RateLimiterConfig {
            bandwidth: None,
            ops: Some(TokenBucket { size: 1, one_time_burst: None, refill_time: u64::MAX }),
        };
        let update =
            NetUpdate { index: 0, rx_rate_limiter: None, tx_rate_limiter: Some(absurd), net: card.clone() };
        assert!(matches!(controls.update_net(&update), Err(ControlError::NetRateLimiter(_))));
        assert_eq!(
            limiters.control().rate_limits(),
            (rate_limit(&rx), rate_limit(&tx)),
            "a refusal changes nothing"
        );
        let update = NetUpdate { index: 1, rx_rate_limiter: None, tx_rate_limiter: None, net: card };
        assert!(matches!(controls.update_net(&update), Err(ControlError::NoNet { index: 1, count: 1 })));
    }
}
