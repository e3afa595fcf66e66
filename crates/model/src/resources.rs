//! The configuration a VM's API requests build up before `InstanceStart`, each request validated as
//! it arrives, and its translation into the engine's [`VmConfig`]. The `--config` file (Firecracker's
//! `--config-file`) goes through the same checks.

use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::Duration;

use crate::api::{
    Balloon, BootSource, CacheType, Drive, EntropyDevice, FullVmConfiguration, HostExtensions, HugePages,
    MachineConfiguration, MmdsConfig, NetworkInterface, PartialDrive, PartialNetworkInterface, Vsock,
};
use crate::config::{
    BalloonConfig, BlockConfig, MacAddress, NetConfig, SerialConfig, VirtioConfig, VirtioTransport, VmConfig,
    VsockConfig, DEFAULT_CMDLINE, DISK_ID_MAX_BYTES, TAP_NAME_MAX_BYTES, VSOCK_MAX_CID, VSOCK_MIN_CID,
};
use crate::disk::CacheMode;
pub use crate::error::ConfigError;
use crate::rate_limiter::RateLimiterConfig;

/// The most vCPUs Kestrel gives a guest (Firecracker's limit is 32).
pub const MAX_VCPUS: u8 = crate::config::MAX_VCPUS;
/// The least guest memory Kestrel boots with.
pub const MIN_MEMORY_MIB: u64 = 16;
/// The longest kernel command line the boot protocol allows.
pub const MAX_CMDLINE_BYTES: usize = 2047;
/// The longest device ID (drive or interface) accepted in a path or body.
pub const MAX_ID_BYTES: usize = 64;

/// Why a `--config` file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("invalid configuration: {0}")]
    Json(serde_json::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Everything configured so far, as the requests gave it (so `GET /vm/config` returns it as is).
#[derive(Clone, Debug, Default)]
pub struct VmResources {
    boot_source: Option<BootSource>,
    machine_config: MachineConfiguration,
    drives: Vec<Drive>,
    network_interfaces: Vec<NetworkInterface>,
    vsock: Option<Vsock>,
    balloon: Option<Balloon>,
    entropy: Option<EntropyDevice>,
    mmds_config: Option<MmdsConfig>,
}

fn check_id(id: &str) -> Result<(), ConfigError> {
    let valid = !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(ConfigError::InvalidId(id.chars().take(MAX_ID_BYTES).collect()))
    }
}

/// A tap's name as the kernel takes it for an interface (`PUT /network-interfaces`'
/// `host_dev_name`, a snapshot load's `network_overrides`).
pub fn check_tap_name(name: &str) -> Result<(), ConfigError> {
    let forbidden = |c: char| matches!(c, '/' | ':' | '%') || c.is_whitespace() || c.is_control();
    if name.is_empty()
        || name.len() > TAP_NAME_MAX_BYTES
        || name == "."
        || name == ".."
        || name.chars().any(forbidden)
    {
        return Err(ConfigError::InvalidTapName(name.chars().take(64).collect()));
    }
    Ok(())
}

fn check_path_id(path_id: &str, body_id: &str) -> Result<(), ConfigError> {
    check_id(path_id)?;
    if path_id != body_id {
        return Err(ConfigError::IdMismatch { path: path_id.to_owned(), body: body_id.to_owned() });
    }
    Ok(())
}

fn check_file(what: &'static str, field: &'static str, path: &str) -> Result<(), ConfigError> {
    if path.is_empty() {
        return Err(ConfigError::EmptyPath { field });
    }
    let error = |reason: String| ConfigError::FileOpen { what, path: path.to_owned(), reason };
    // Opening a FIFO waits for a writer, and every other API request would wait behind it: the
    // open does not block, and the type is checked on the open file, so the path cannot be
    // swapped for a FIFO in between.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| error(e.to_string()))?;
    let file_type = file.metadata().map_err(|e| error(e.to_string()))?.file_type();
    let disk = what == "drive";
    if file_type.is_file() || (disk && file_type.is_block_device()) {
        return Ok(());
    }
    let kind = if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_dir() {
        "a directory"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "a block device"
    };
    let expected = if disk { "a regular file or a block device" } else { "a regular file" };
    Err(error(format!("it is {kind}, not {expected}")))
}

fn reject_rate_limiter(value: &Option<serde_json::Value>, field: &str) -> Result<(), ConfigError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(_) => Err(ConfigError::Unsupported(field.to_owned())),
    }
}

/// A drive's cache mode from Firecracker's `cache_type` and Kestrel's `x-kestrel` `cache`: either
/// alone says it, both must agree, neither is Kestrel's default (see [`CacheMode`]).
fn cache_mode(cache_type: Option<CacheType>, cache: Option<CacheMode>) -> Result<CacheMode, ConfigError> {
    let name = |c: CacheType| match c {
        CacheType::Unsafe => "Unsafe",
        CacheType::Writeback => "Writeback",
    };
    let mode_name = |m: CacheMode| match m {
        CacheMode::Writeback => "writeback",
        CacheMode::None => "none",
        CacheMode::Unsafe => "unsafe",
    };
    match (cache_type, cache) {
        (None, None) => Ok(CacheMode::default()),
        (Some(CacheType::Unsafe), None) => Ok(CacheMode::Unsafe),
        (Some(CacheType::Writeback), None) => Ok(CacheMode::Writeback),
        (None, Some(mode)) => Ok(mode),
        (Some(CacheType::Unsafe), Some(CacheMode::Unsafe)) => Ok(CacheMode::Unsafe),
        (Some(CacheType::Writeback), Some(mode @ (CacheMode::Writeback | CacheMode::None))) => Ok(mode),
        (Some(given), Some(mode)) => {
            Err(ConfigError::ConflictingCache { cache_type: name(given), cache: mode_name(mode) })
        }
    }
}

/// The engine's disk for an API drive, checked; the drive ID is the serial the guest reads, as
/// with Firecracker.
fn drive_config(drive: &Drive) -> Result<BlockConfig, ConfigError> {
    let kestrel = drive.kestrel.clone().unwrap_or_default();
    let defaults = BlockConfig::new(drive.path_on_host.clone().unwrap_or_default());
    let config = BlockConfig {
        read_only: drive.is_read_only.unwrap_or(false),
        id: Some(truncate(&drive.drive_id, DISK_ID_MAX_BYTES)),
        format: kestrel.format.unwrap_or(defaults.format),
        cache: cache_mode(drive.cache_type, kestrel.cache)?,
        allow_backing: kestrel.allow_backing.unwrap_or(defaults.allow_backing),
        num_queues: kestrel.num_queues.unwrap_or(defaults.num_queues),
        poll_us: kestrel.poll_us,
        io_engine: drive.io_engine.unwrap_or(defaults.io_engine),
        rate_limiter: drive.rate_limiter,
        ..defaults
    };
    config.validate()?;
    Ok(config)
}

/// The engine's card for an API network interface, checked (the tap's name is checked by
/// [`VmResources::put_network_interface`]).
fn net_config(iface: &NetworkInterface) -> Result<NetConfig, ConfigError> {
    let config = NetConfig {
        mac: iface.guest_mac.as_deref().map(str::parse).transpose().map_err(ConfigError::InvalidMac)?,
        id: Some(iface.iface_id.clone()),
        rx_rate_limiter: iface.rx_rate_limiter,
        tx_rate_limiter: iface.tx_rate_limiter,
        // Empty only for a restored card whose tap the kernel named (`kestrelN`): no name to
        // ask for (`put_network_interface` refuses an empty one).
        ..NetConfig::new(Some(iface.host_dev_name.clone()).filter(|name| !name.is_empty()))
    };
    config.validate()?;
    Ok(config)
}

/// A checked `PATCH /network-interfaces/{iface_id}`: which of the VM's cards, and its limiters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetUpdate {
    /// The card, counted in the VM's order of cards.
    pub index: usize,
    /// The card's new receive limiter (the PATCH merged into the current one); `None`: the PATCH
    /// leaves it as it is.
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// The card's new transmit limiter, likewise.
    pub tx_rate_limiter: Option<RateLimiterConfig>,
    /// The card as it is configured after the update.
    pub net: NetConfig,
}

/// A checked `PATCH /drives/{drive_id}`: which of the VM's disks, and what changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveUpdate {
    /// The disk, counted in the VM's order of disks.
    pub index: usize,
    /// The file the disk is to use now, opened as `disk` says (the drive keeps its format, cache
    /// mode and backing-file rule); `None` keeps the file.
    pub path: Option<PathBuf>,
    /// The disk's new rate limiter; `None` keeps the current one.
    pub rate_limiter: Option<RateLimiterConfig>,
    /// The disk as it is configured after the update.
    pub disk: BlockConfig,
}

impl VmResources {
    /// `PUT /boot-source`: the kernel and initrd must be readable now, as Firecracker checks.
    pub fn set_boot_source(&mut self, boot: BootSource) -> Result<(), ConfigError> {
        check_file("kernel", "kernel_image_path", &boot.kernel_image_path)?;
        if let Some(initrd) = &boot.initrd_path {
            check_file("initrd", "initrd_path", initrd)?;
        }
        if let Some(args) = &boot.boot_args {
            if args.len() > MAX_CMDLINE_BYTES {
                return Err(ConfigError::CmdlineTooLong(args.len()));
            }
            if args.contains(['\0', '\n', '\r']) {
                return Err(ConfigError::CmdlineInvalid);
            }
        }
        self.boot_source = Some(boot);
        Ok(())
    }

    /// `PUT /machine-config`.
    pub fn set_machine_config(&mut self, config: MachineConfiguration) -> Result<(), ConfigError> {
        let vcpus = config.vcpu_count;
        if vcpus == 0 || vcpus > MAX_VCPUS || (config.smt && vcpus > 1 && vcpus & 1 == 1) {
            return Err(ConfigError::InvalidVcpuCount(vcpus));
        }
        if config.mem_size_mib < MIN_MEMORY_MIB || config.mem_size_mib.checked_mul(1 << 20).is_none() {
            return Err(ConfigError::InvalidMemorySize(config.mem_size_mib));
        }
        if config.cpu_template.as_deref().is_some_and(|t| t != "None") {
            return Err(ConfigError::Unsupported("cpu_template".into()));
        }
        // Kestrel's additions are checked as they come, against this request's vCPUs and memory.
        let host = config.host_resources()?;
        host.cpus.validate(vcpus)?;
        host.memory.validate(config.mem_size_mib << 20)?;
        if let Some(balloon) = &self.balloon {
            check_balloon_memory(&host.memory)?;
            if u64::from(balloon.amount_mib) > config.mem_size_mib {
                return Err(ConfigError::BalloonTooLarge {
                    amount: balloon.amount_mib,
                    memory: config.mem_size_mib,
                });
            }
        }
        self.machine_config =
            MachineConfiguration { huge_pages: config.huge_pages.or(Some(HugePages::None)), ..config };
        Ok(())
    }

    pub fn machine_config(&self) -> &MachineConfiguration {
        &self.machine_config
    }

    /// `PUT /drives/{drive_id}`: adds the drive, or replaces the one with that ID.
    pub fn put_drive(&mut self, path_id: &str, drive: Drive) -> Result<(), ConfigError> {
        check_path_id(path_id, &drive.drive_id)?;
        if drive.socket.is_some() {
            return Err(ConfigError::Unsupported("vhost-user-block (socket)".into()));
        }
        let (Some(_), Some(path)) = (drive.is_read_only, &drive.path_on_host) else {
            return Err(ConfigError::MissingDriveField);
        };
        check_file("drive", "path_on_host", path)?;
        if drive.partuuid.is_some() {
            return Err(ConfigError::Unsupported("partuuid".into()));
        }
        drive_config(&drive)?;
        if drive.is_root_device
            && self.drives.iter().any(|d| d.is_root_device && d.drive_id != drive.drive_id)
        {
            return Err(ConfigError::RootBlockDeviceAlreadyAdded);
        }
        match self.drives.iter_mut().find(|d| d.drive_id == drive.drive_id) {
            Some(existing) => *existing = drive,
            None => self.drives.push(drive),
        }
        Ok(())
    }

    /// The drives in the order the VM gets them: the root drive first, then the others in the
    /// order they were added.
    fn drives_in_vm_order(&self) -> impl Iterator<Item = &Drive> {
        let root = self.drives.iter().find(|d| d.is_root_device);
        root.into_iter().chain(self.drives.iter().filter(|d| !d.is_root_device))
    }

    /// Checks a `PATCH /drives/{drive_id}` (after start): which of the VM's disks it is, the file
    /// it is to use now and its rate limiter. The drive keeps its format: a qcow2 drive's new file
    /// is opened as qcow2.
    pub fn check_drive_update(
        &self,
        path_id: &str,
        update: &PartialDrive,
    ) -> Result<DriveUpdate, ConfigError> {
        check_path_id(path_id, &update.drive_id)?;
        if update.path_on_host.is_none() && update.rate_limiter.is_none() {
            return Err(ConfigError::MissingPath);
        }
        let (index, drive) = self
            .drives_in_vm_order()
            .enumerate()
            .find(|(_, d)| d.drive_id == update.drive_id)
            .ok_or_else(|| ConfigError::UnknownDrive(update.drive_id.clone()))?;
        if let Some(path) = &update.path_on_host {
            check_file("drive", "path_on_host", path)?;
        }
        let mut updated = drive.clone();
        apply_drive_update(&mut updated, update);
        Ok(DriveUpdate {
            index,
            path: update.path_on_host.as_ref().map(PathBuf::from),
            rate_limiter: update.rate_limiter.and(updated.rate_limiter),
            disk: drive_config(&updated)?,
        })
    }

    /// Records what a running VM's drive took from a `PATCH /drives`, for `GET /vm/config`.
    pub fn record_drive_update(&mut self, update: &PartialDrive) {
        if let Some(drive) = self.drives.iter_mut().find(|d| d.drive_id == update.drive_id) {
            apply_drive_update(drive, update);
        }
    }

    /// `PUT /network-interfaces/{iface_id}`: adds the interface, or replaces the one with that ID.
    pub fn put_network_interface(
        &mut self,
        path_id: &str,
        iface: NetworkInterface,
    ) -> Result<(), ConfigError> {
        check_path_id(path_id, &iface.iface_id)?;
        let name = &iface.host_dev_name;
        check_tap_name(name)?;
        if let Some(mac) = &iface.guest_mac {
            mac.parse::<MacAddress>().map_err(ConfigError::InvalidMac)?;
        }
        if iface.mtu.is_some() {
            return Err(ConfigError::Unsupported("mtu".into()));
        }
        net_config(&iface)?;
        let others = || self.network_interfaces.iter().filter(|i| i.iface_id != iface.iface_id);
        if others().any(|i| &i.host_dev_name == name) {
            return Err(ConfigError::HostDeviceNameInUse(name.clone()));
        }
        if let Some(mac) = &iface.guest_mac {
            if others().any(|i| i.guest_mac.as_ref().is_some_and(|m| m.eq_ignore_ascii_case(mac))) {
                return Err(ConfigError::GuestMacInUse(mac.clone()));
            }
        }
        match self.network_interfaces.iter_mut().find(|i| i.iface_id == iface.iface_id) {
            Some(existing) => *existing = iface,
            None => self.network_interfaces.push(iface),
        }
        Ok(())
    }

    /// Checks a `PATCH /network-interfaces/{iface_id}` (after start): which of the VM's cards it
    /// is, and its limiters after the update. Like Firecracker, an update with neither limiter is
    /// accepted and changes nothing.
    pub fn check_net_update(
        &self,
        path_id: &str,
        update: &PartialNetworkInterface,
    ) -> Result<NetUpdate, ConfigError> {
        check_path_id(path_id, &update.iface_id)?;
        let (index, iface) = self
            .network_interfaces
            .iter()
            .enumerate()
            .find(|(_, i)| i.iface_id == update.iface_id)
            .ok_or_else(|| ConfigError::UnknownInterface(update.iface_id.clone()))?;
        let mut updated = iface.clone();
        apply_net_update(&mut updated, update);
        let net = net_config(&updated)?;
        Ok(NetUpdate {
            index,
            rx_rate_limiter: update.rx_rate_limiter.and(net.rx_rate_limiter),
            tx_rate_limiter: update.tx_rate_limiter.and(net.tx_rate_limiter),
            net,
        })
    }

    /// Records what a running VM's card took from a `PATCH /network-interfaces`, for
    /// `GET /vm/config`.
    pub fn record_net_update(&mut self, update: &PartialNetworkInterface) {
        if let Some(iface) = self.network_interfaces.iter_mut().find(|i| i.iface_id == update.iface_id) {
            apply_net_update(iface, update);
        }
    }

    /// `PUT /vsock`.
    pub fn set_vsock(&mut self, vsock: Vsock) -> Result<(), ConfigError> {
        if !(VSOCK_MIN_CID..=VSOCK_MAX_CID).contains(&u64::from(vsock.guest_cid)) {
            return Err(ConfigError::InvalidCid(vsock.guest_cid.into()));
        }
        if vsock.uds_path.is_empty() {
            return Err(ConfigError::EmptyPath { field: "uds_path" });
        }
        self.vsock = Some(vsock);
        Ok(())
    }

    /// `PUT /balloon`.
    pub fn set_balloon(&mut self, balloon: Balloon) -> Result<(), ConfigError> {
        if balloon.free_page_hinting {
            return Err(ConfigError::Unsupported("free_page_hinting".into()));
        }
        // As Firecracker does: refused now rather than at InstanceStart.
        check_balloon_memory(&self.machine_config.host_resources()?.memory)?;
        let memory = self.machine_config.mem_size_mib;
        if u64::from(balloon.amount_mib) > memory {
            return Err(ConfigError::BalloonTooLarge { amount: balloon.amount_mib, memory });
        }
        self.balloon = Some(balloon);
        Ok(())
    }

    pub fn balloon(&self) -> Option<&Balloon> {
        self.balloon.as_ref()
    }

    /// Records the target a running VM's balloon took (`PATCH /balloon`), for `GET /balloon`.
    pub fn record_balloon_target(&mut self, amount_mib: u32) {
        if let Some(balloon) = &mut self.balloon {
            balloon.amount_mib = amount_mib;
        }
    }

    /// Records the statistics interval a running VM's balloon took (`PATCH /balloon/statistics`).
    pub fn record_balloon_stats_interval(&mut self, seconds: u16) {
        if let Some(balloon) = &mut self.balloon {
            balloon.stats_polling_interval_s = seconds;
        }
    }

    /// `PUT /entropy`.
    pub fn set_entropy(&mut self, entropy: EntropyDevice) -> Result<(), ConfigError> {
        reject_rate_limiter(&entropy.rate_limiter, "rate_limiter")?;
        self.entropy = Some(entropy);
        Ok(())
    }

    /// `PUT /mmds/config`: the interfaces must be configured already (Firecracker's rule), and the
    /// address link-local.
    pub fn set_mmds_config(&mut self, config: MmdsConfig) -> Result<(), ConfigError> {
        if config.network_interfaces.is_empty() {
            return Err(ConfigError::MmdsNoInterfaces);
        }
        if config.ipv4_address.is_some_and(|address| !crate::mmds::valid_mmds_address(address)) {
            return Err(ConfigError::MmdsAddress);
        }
        let known = |id: &String| self.network_interfaces.iter().any(|i| &i.iface_id == id);
        if !config.network_interfaces.iter().all(known) {
            return Err(ConfigError::MmdsUnknownInterface);
        }
        self.mmds_config = Some(config);
        Ok(())
    }

    /// The MMDS configuration, if `PUT /mmds/config` gave one.
    pub fn mmds_config(&self) -> Option<&MmdsConfig> {
        self.mmds_config.as_ref()
    }

    /// What `GET /vm/config` returns. Each drive shows the cache type and I/O engine it has, as
    /// Firecracker's does, also where the request left them out.
    pub fn export(&self) -> FullVmConfiguration {
        FullVmConfiguration {
            boot_source: self.boot_source.clone(),
            machine_config: Some(self.machine_config.clone()),
            drives: self.drives.iter().map(exported_drive).collect(),
            network_interfaces: self.network_interfaces.clone(),
            vsock: self.vsock.clone(),
            balloon: self.balloon.clone(),
            entropy: self.entropy.clone(),
            mmds_config: self.mmds_config.clone(),
            ..FullVmConfiguration::default()
        }
    }

    /// The devices of a VM restored from a snapshot, as the API names them, so that requests to
    /// the running VM (`PATCH /drives`, `PATCH /network-interfaces`, `PATCH /balloon`) find
    /// them by ID, as after `InstanceStart`. Each drive, card and balloon is what `config`
    /// (the restored VM's, after its drive overrides) has; the disks and cards keep the VM's
    /// order. A drive whose ID was longer than the 20 bytes a disk's serial keeps is known by
    /// those 20 bytes; a device saved without an ID (a command-line VM) gets `drive<N>` or its
    /// tap's name.
    pub fn restored(config: &VmConfig, host: Option<HostExtensions>) -> VmResources {
        let mut resources = VmResources::default();
        let root = config.cmdline.split_whitespace().any(|word| word == "root=/dev/vda");
        resources.boot_source = Some(restored_boot_source(config));
        let mut disks = 0;
        for device in &config.virtio {
            match device {
                VirtioConfig::Block(disk) => {
                    resources.drives.push(restored_drive(disk, disks, root && disks == 0));
                    disks += 1;
                }
                VirtioConfig::Net(net) => {
                    let index = resources.network_interfaces.len();
                    let interface = restored_interface(net, index);
                    if let Some(mmds) = &net.mmds {
                        // Cards saved serving MMDS share one configuration (one PUT /mmds/config).
                        let config = resources.mmds_config.get_or_insert_with(|| MmdsConfig {
                            version: mmds.version,
                            network_interfaces: Vec::new(),
                            ipv4_address: Some(mmds.address),
                            imds_compat: mmds.imds_compat,
                        });
                        config.network_interfaces.push(interface.iface_id.clone());
                    }
                    resources.network_interfaces.push(interface);
                }
                VirtioConfig::Balloon(balloon) => {
                    resources.balloon = Some(Balloon {
                        amount_mib: balloon.target_mib,
                        deflate_on_oom: balloon.deflate_on_oom,
                        stats_polling_interval_s: balloon
                            .stats_interval
                            .map_or(0, |i| u16::try_from(i.as_secs()).unwrap_or(u16::MAX)),
                        free_page_hinting: false,
                        free_page_reporting: balloon.free_page_reporting,
                    })
                }
                VirtioConfig::Rng => resources.entropy = Some(EntropyDevice::default()),
                VirtioConfig::Vsock(vsock) => {
                    resources.vsock = Some(Vsock {
                        guest_cid: u32::try_from(vsock.cid).unwrap_or(u32::MAX),
                        uds_path: vsock.uds_path.to_string_lossy().into_owned(),
                        vsock_id: None,
                    })
                }
            }
        }
        // SMT and CPU templates are not offered (always off, `None`), so they were as here; huge
        // pages and the other host choices are the load's (`x-kestrel`), not the snapshot's.
        resources.machine_config = MachineConfiguration {
            vcpu_count: config.vcpus,
            mem_size_mib: config.memory_bytes >> 20,
            track_dirty_pages: config.track_dirty_pages,
            kestrel: host.map(Box::new),
            ..MachineConfiguration::default()
        };
        resources
    }

    /// A `--config` file's text (Firecracker's `--config-file` JSON).
    pub fn from_json(text: &str) -> Result<VmResources, ConfigFileError> {
        let file: FullVmConfiguration = serde_json::from_str(text).map_err(ConfigFileError::Json)?;
        Ok(VmResources::from_file(file)?)
    }

    /// A `--config` file's contents, each section checked as its request would be.
    pub fn from_file(file: FullVmConfiguration) -> Result<VmResources, ConfigError> {
        for (present, name) in [
            (file.logger.is_some(), "the logger section"),
            (file.metrics.is_some(), "the metrics section"),
            (file.cpu_config.is_some(), "the cpu-config section"),
        ] {
            if present {
                return Err(ConfigError::Unsupported(name.into()));
            }
        }
        let mut resources = VmResources::default();
        if let Some(machine) = file.machine_config {
            resources.set_machine_config(machine)?;
        }
        if let Some(boot) = file.boot_source {
            resources.set_boot_source(boot)?;
        }
        for drive in file.drives {
            let id = drive.drive_id.clone();
            resources.put_drive(&id, drive)?;
        }
        for iface in file.network_interfaces {
            let id = iface.iface_id.clone();
            resources.put_network_interface(&id, iface)?;
        }
        if let Some(vsock) = file.vsock {
            resources.set_vsock(vsock)?;
        }
        if let Some(balloon) = file.balloon {
            resources.set_balloon(balloon)?;
        }
        if let Some(entropy) = file.entropy {
            resources.set_entropy(entropy)?;
        }
        if let Some(mmds) = file.mmds_config {
            resources.set_mmds_config(mmds)?;
        }
        Ok(resources)
    }

    /// The engine's configuration: the root drive first (`/dev/vda`, named on the command line as
    /// Firecracker does with `root=/dev/vda ro|rw`), then the other drives in the order they were
    /// added, then network interfaces, entropy, balloon and vsock.
    pub fn to_vm_config(
        &self,
        serial: SerialConfig,
        transport: VirtioTransport,
    ) -> Result<VmConfig, ConfigError> {
        let boot = self.boot_source.as_ref().ok_or(ConfigError::MissingKernel)?;
        let mut cmdline = boot.boot_args.clone().unwrap_or_else(|| DEFAULT_CMDLINE.to_owned());
        let root = self.drives.iter().find(|d| d.is_root_device);
        if let Some(root) = root {
            cmdline.push_str(if root.is_read_only == Some(true) {
                " root=/dev/vda ro"
            } else {
                " root=/dev/vda rw"
            });
        }
        if cmdline.len() > MAX_CMDLINE_BYTES {
            return Err(ConfigError::CmdlineTooLong(cmdline.len()));
        }
        let mut virtio: Vec<VirtioConfig> = self
            .drives_in_vm_order()
            .map(|d| drive_config(d).map(VirtioConfig::Block))
            .collect::<Result<_, _>>()?;
        for iface in &self.network_interfaces {
            virtio.push(VirtioConfig::Net(net_config(iface)?));
        }
        if self.entropy.is_some() {
            virtio.push(VirtioConfig::Rng);
        }
        if let Some(b) = &self.balloon {
            virtio.push(VirtioConfig::Balloon(BalloonConfig {
                target_mib: b.amount_mib,
                stats_interval: (b.stats_polling_interval_s > 0)
                    .then(|| Duration::from_secs(b.stats_polling_interval_s.into())),
                free_page_reporting: b.free_page_reporting,
                deflate_on_oom: b.deflate_on_oom,
            }));
        }
        if let Some(v) = &self.vsock {
            virtio.push(VirtioConfig::Vsock(VsockConfig {
                cid: v.guest_cid.into(),
                uds_path: PathBuf::from(&v.uds_path),
            }));
        }
        let config = VmConfig {
            kernel: PathBuf::from(&boot.kernel_image_path),
            initrd: boot.initrd_path.as_ref().map(PathBuf::from),
            cmdline,
            vcpus: self.machine_config.vcpu_count,
            memory_bytes: self.machine_config.mem_size_mib << 20,
            serial,
            virtio,
            transport,
            track_dirty_pages: self.machine_config.track_dirty_pages,
            host: self.machine_config.host_resources()?,
        };
        config.validate()?;
        Ok(config)
    }
}

/// Whether guest RAM of these options can give a balloon's pages back (see
/// [`VmConfig::validate`], which checks the same when the VM is built).
fn check_balloon_memory(memory: &crate::host::MemoryOptions) -> Result<(), ConfigError> {
    if memory.mlock {
        return Err(ConfigError::MlockWithBalloon);
    }
    if matches!(memory.backend, crate::host::RamBackend::HugeTlb(_)) {
        return Err(ConfigError::BalloonWithHugePages);
    }
    Ok(())
}

/// The boot source a restored VM was booted from, as `PUT /boot-source` gave it: the command
/// line without the `root=/dev/vda ro|rw` the root drive added to it.
fn restored_boot_source(config: &VmConfig) -> BootSource {
    let cmdline = &config.cmdline;
    let boot_args = [" root=/dev/vda ro", " root=/dev/vda rw"]
        .iter()
        .find_map(|suffix| cmdline.strip_suffix(suffix))
        .unwrap_or(cmdline);
    BootSource {
        kernel_image_path: config.kernel.to_string_lossy().into_owned(),
        initrd_path: config.initrd.as_ref().map(|path| path.to_string_lossy().into_owned()),
        boot_args: Some(boot_args.to_owned()),
    }
}

/// The API drive of a restored VM's disk `index`: every option the disk has, so that
/// [`drive_config`] gives the disk back; `x-kestrel` holds only the options that are not the
/// defaults (as a drive configured without them shows).
fn restored_drive(disk: &BlockConfig, index: usize, root: bool) -> Drive {
    let defaults = BlockConfig::new(&disk.path);
    let kestrel = crate::api::KestrelDrive {
        format: (disk.format != defaults.format).then_some(disk.format),
        // `none` has no `cache_type` of its own.
        cache: (disk.cache == CacheMode::None).then_some(disk.cache),
        allow_backing: (disk.allow_backing != defaults.allow_backing).then_some(disk.allow_backing),
        num_queues: (disk.num_queues != defaults.num_queues).then_some(disk.num_queues),
        poll_us: disk.poll_us,
    };
    Drive {
        drive_id: disk.id.clone().unwrap_or_else(|| format!("drive{index}")),
        is_root_device: root,
        partuuid: None,
        cache_type: Some(match disk.cache {
            CacheMode::Unsafe => CacheType::Unsafe,
            CacheMode::Writeback | CacheMode::None => CacheType::Writeback,
        }),
        is_read_only: Some(disk.read_only),
        path_on_host: Some(disk.path.to_string_lossy().into_owned()),
        rate_limiter: disk.rate_limiter,
        io_engine: Some(disk.io_engine),
        socket: None,
        kestrel: (kestrel != crate::api::KestrelDrive::default()).then_some(kestrel),
    }
}

/// The API network interface of a restored VM's card `index`.
fn restored_interface(net: &NetConfig, index: usize) -> NetworkInterface {
    NetworkInterface {
        iface_id: net.id.clone().or_else(|| net.tap.clone()).unwrap_or_else(|| format!("net{index}")),
        // Empty for a card whose tap was named by the kernel (see `net_config`).
        host_dev_name: net.tap.clone().unwrap_or_default(),
        guest_mac: net.mac.map(|mac| mac.to_string()),
        mtu: None,
        rx_rate_limiter: net.rx_rate_limiter,
        tx_rate_limiter: net.tx_rate_limiter,
    }
}

/// A `PATCH /drives` applied to a drive. As in Firecracker, a rate limiter's bucket the patch
/// leaves out keeps its setting (a bucket of size 0 is how a client removes one).
fn apply_drive_update(drive: &mut Drive, update: &PartialDrive) {
    if let Some(path) = &update.path_on_host {
        drive.path_on_host = Some(path.clone());
    }
    if let Some(limiter) = update.rate_limiter {
        drive.rate_limiter = Some(RateLimiterConfig::merged(drive.rate_limiter, limiter));
    }
}

/// A `PATCH /network-interfaces` applied to an interface, merged as a drive's limiter is.
fn apply_net_update(iface: &mut NetworkInterface, update: &PartialNetworkInterface) {
    if let Some(limiter) = update.rx_rate_limiter {
        iface.rx_rate_limiter = Some(RateLimiterConfig::merged(iface.rx_rate_limiter, limiter));
    }
    if let Some(limiter) = update.tx_rate_limiter {
        iface.tx_rate_limiter = Some(RateLimiterConfig::merged(iface.tx_rate_limiter, limiter));
    }
}

/// A drive as `GET /vm/config` shows it: Firecracker's fields filled in with what the drive has.
fn exported_drive(drive: &Drive) -> Drive {
    let mut shown = drive.clone();
    if let Ok(config) = drive_config(drive) {
        shown.cache_type = Some(match config.cache {
            CacheMode::Unsafe => CacheType::Unsafe,
            CacheMode::Writeback | CacheMode::None => CacheType::Writeback,
        });
        shown.io_engine = Some(config.io_engine);
    }
    shown
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::IoEngine;
    use crate::disk::ImageFormat;
    use crate::rate_limiter::TokenBucket;

    /// Host files named by a client are opened without blocking and checked on the open file:
    /// a FIFO (which would block the open), a directory or a character device is refused with a
    /// message naming what it is; a disk may also be a block device, a kernel may not.
    #[test]
    fn host_files_must_be_regular_files_or_disks() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let regular = dir.path().join("regular");
        std::fs::write(&regular, b"x").unwrap();
        let cases = [
            ("kernel", fifo.to_str().unwrap(), Some("it is a FIFO, not a regular file")),
            ("drive", fifo.to_str().unwrap(), Some("it is a FIFO, not a regular file or a block device")),
            ("kernel", dir.path().to_str().unwrap(), Some("it is a directory")),
            ("drive", "/dev/null", Some("it is a character device")),
            ("kernel", "/nonexistent/k", Some("No such file")),
            ("kernel", regular.to_str().unwrap(), None),
            ("drive", regular.to_str().unwrap(), None),
        ];
        for (what, path, expected) in cases {
            let result = check_file(what, "field", path);
            match expected {
                None => assert!(result.is_ok(), "{what} {path}: {result:?}"),
                Some(text) => {
                    let message = result.expect_err(path).to_string();
                    assert!(message.contains(text), "{what} {path}: {message}");
                }
            }
        }
    }

    #[test]
    fn a_firecracker_config_file_maps_to_a_vm_config() {
        let kernel = tempfile::NamedTempFile::new().unwrap();
        let path = kernel.path().display();
        let text = format!(
            r#"{{
              "boot-source": {{ "kernel_image_path": "{path}", "boot_args": "console=ttyS0 reboot=k panic=1 pci=off" }},
              "drives": [{{ "drive_id": "rootfs", "path_on_host": "{path}", "is_root_device": true, "is_read_only": true }}],
              "machine-config": {{ "vcpu_count": 2, "mem_size_mib": 1024, "smt": false }},
              "network-interfaces": [{{ "iface_id": "eth0", "host_dev_name": "tap0" }}],
              "entropy": {{}}
            }}"#
        );
        let file: FullVmConfiguration = serde_json::from_str(&text).unwrap();
        let resources = VmResources::from_file(file.clone()).unwrap();
        let config = resources.to_vm_config(SerialConfig::None, VirtioTransport::Pci).unwrap();
        assert_eq!((config.vcpus, config.memory_bytes, config.transport), (2, 1 << 30, VirtioTransport::Pci));
        assert!(config.cmdline.ends_with("pci=off root=/dev/vda ro"));
        assert_eq!(config.virtio.len(), 3);
        let exported = resources.export();
        assert_eq!(exported.boot_source, file.boot_source);
        // Firecracker's GET /vm/config shows each drive's cache type and engine, given or not
        // (Kestrel's default engine is Async).
        let shown = Drive {
            cache_type: Some(CacheType::Writeback),
            io_engine: Some(IoEngine::Async),
            ..file.drives[0].clone()
        };
        assert_eq!(exported.drives, [shown]);
        assert_eq!(exported.machine_config.and_then(|m| m.huge_pages), Some(HugePages::None));
    }

    #[test]
    fn config_file_errors() {
        let unknown = serde_json::from_str::<FullVmConfiguration>(r#"{"boot_source": {}}"#).unwrap_err();
        assert!(unknown.to_string().contains("unknown field `boot_source`"));
        let logger: FullVmConfiguration = serde_json::from_str(r#"{"logger": {"level": "Info"}}"#).unwrap();
        assert_eq!(
            VmResources::from_file(logger).unwrap_err(),
            ConfigError::Unsupported("the logger section".into())
        );
        let empty = VmResources::from_file(FullVmConfiguration::default()).unwrap();
        assert_eq!(
            empty.to_vm_config(SerialConfig::None, VirtioTransport::Mmio).unwrap_err(),
            ConfigError::MissingKernel
        );
    }

    /// A VM restored with a card serving MMDS shows its MMDS configuration in GET /vm/config.
    #[test]
    fn a_restored_card_serving_mmds_shows_in_the_mmds_config() {
        let kernel = tempfile::NamedTempFile::new().unwrap();
        let text = format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}},
                "network-interfaces": [{{"iface_id": "a", "host_dev_name": "tap0"}}, {{"iface_id": "b", "host_dev_name": "tap1"}}],
                "mmds-config": {{"version": "V2", "network_interfaces": ["b"], "ipv4_address": "169.254.1.1"}}}}"#,
            kernel.path().display()
        );
        let resources = VmResources::from_json(&text).unwrap();
        let mut config = resources.to_vm_config(SerialConfig::None, VirtioTransport::Mmio).unwrap();
        config.attach_mmds(resources.mmds_config().unwrap(), &crate::mmds::MmdsStore::default());
        let restored = VmResources::restored(&config, None);
        let expected = MmdsConfig {
            version: crate::api::MmdsVersion::V2,
            network_interfaces: vec!["b".into()],
            ipv4_address: Some("169.254.1.1".parse().unwrap()),
            imds_compat: false,
        };
        assert_eq!(restored.export().mmds_config, Some(expected));
    }

    #[test]
    fn a_config_files_mmds_section_is_checked_and_reaches_the_named_cards() {
        let kernel = tempfile::NamedTempFile::new().unwrap();
        let text = |mmds: &str| {
            format!(
                r#"{{"boot-source": {{"kernel_image_path": "{}"}},
                    "network-interfaces": [{{"iface_id": "eth0", "host_dev_name": "tap0"}}],
                    "mmds-config": {mmds}}}"#,
                kernel.path().display()
            )
        };
        let resources =
            VmResources::from_json(&text(r#"{"version": "V2", "network_interfaces": ["eth0"]}"#)).unwrap();
        let mmds = resources.mmds_config().unwrap().clone();
        assert_eq!(resources.export().mmds_config.as_ref(), Some(&mmds));
        let mut config = resources.to_vm_config(SerialConfig::None, VirtioTransport::Mmio).unwrap();
        let store = crate::mmds::MmdsStore::new(100);
        config.attach_mmds(&mmds, &store);
        let VirtioConfig::Net(net) = &config.virtio[0] else { panic!() };
        let attached = net.mmds.as_ref().unwrap();
        assert_eq!(attached.address, crate::mmds::DEFAULT_MMDS_ADDRESS);
        assert!(attached.store.is_same(&store));
        let error = VmResources::from_json(&text(r#"{"network_interfaces": ["eth9"]}"#)).unwrap_err();
        assert!(
            error.to_string().contains("does not correspond to any existing network interface"),
            "{error}"
        );
    }

    /// Placement and memory options in machine-config's `x-kestrel` reach the VM's host
    /// resources; what contradicts itself is refused when it is PUT.
    #[test]
    fn machine_config_extensions_reach_the_vm_config() {
        use crate::host::{CpuSet, HugePageSize, RamBackend};
        let machine = |text: &str| serde_json::from_str::<MachineConfiguration>(text);
        let mut resources = VmResources::default();
        let kernel = tempfile::NamedTempFile::new().unwrap();
        let boot = format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.path().display());
        resources.set_boot_source(serde_json::from_str(&boot).unwrap()).unwrap();
        let good = machine(
            r#"{"vcpu_count": 2, "mem_size_mib": 64, "huge_pages": "2M", "x-kestrel": {
                "vcpu_affinity": [[0], [1]], "vmm_affinity": [1], "vcpu_realtime_priority": 10,
                "mlock": true, "numa_node": 0}}"#,
        )
        .unwrap();
        resources.set_machine_config(good.clone()).unwrap();
        assert_eq!(resources.machine_config(), &good, "GET /machine-config shows what was PUT");
        let config = resources.to_vm_config(SerialConfig::None, VirtioTransport::Mmio).unwrap();
        let cpus = &config.host.cpus;
        assert_eq!(cpus.vcpu_affinity, [CpuSet::parse("0").unwrap(), CpuSet::parse("1").unwrap()]);
        assert_eq!(
            (cpus.vmm_affinity.clone(), cpus.vcpu_realtime_priority),
            (CpuSet::parse("1").ok(), Some(10))
        );
        let memory = &config.host.memory;
        assert_eq!(memory.backend, RamBackend::HugeTlb(HugePageSize::TwoMiB));
        assert!(memory.mlock && !memory.thp && memory.numa_node == Some(0));

        let cases = [
            (
                r#"{"vcpu_count": 1, "mem_size_mib": 64, "x-kestrel": {"vcpu_affinity": [[0], [1]]}}"#,
                "2 CPU sets for 1 vCPUs",
            ),
            (
                r#"{"vcpu_count": 1, "mem_size_mib": 65, "x-kestrel": {"huge_pages": "2M"}}"#,
                "not a multiple of the 2M",
            ),
            (
                r#"{"vcpu_count": 1, "mem_size_mib": 64, "huge_pages": "2M", "x-kestrel": {"huge_pages": "1G"}}"#,
                "disagree",
            ),
            (
                r#"{"vcpu_count": 1, "mem_size_mib": 64, "x-kestrel": {"memory_backend": "memfd", "ksm": true}}"#,
                "ksm merges only",
            ),
            (
                r#"{"vcpu_count": 1, "mem_size_mib": 64, "x-kestrel": {"vcpu_realtime_priority": 0}}"#,
                "1 to 99",
            ),
        ];
        for (text, expected) in cases {
            let message = resources.set_machine_config(machine(text).unwrap()).unwrap_err().to_string();
            assert!(message.contains(expected), "{text}: {message}");
        }
        for bad in [
            r#"{"vcpu_count": 1, "mem_size_mib": 64, "x-kestrel": {"pinning": 1}}"#,
            r#"{"vcpu_count": 1, "mem_size_mib": 64, "x-kestrel": {"vcpu_affinity": [[]]}}"#,
            r#"{"vcpu_count": 1, "mem_size_mib": 64, "x-kestrel": {"huge_pages": "4M"}}"#,
        ] {
            assert!(machine(bad).is_err(), "{bad}");
        }
    }

    /// A restored VM's disks and cards, as the API names them, give back the engine's devices
    /// they were made from (every option kept), in the VM's order.
    #[test]
    fn restored_devices_keep_every_option() {
        let limiter: RateLimiterConfig =
            serde_json::from_str(r#"{"ops": {"size": 5, "refill_time": 10}}"#).unwrap();
        let disk = BlockConfig {
            read_only: true,
            id: Some("data".into()),
            format: ImageFormat::Qcow2,
            cache: CacheMode::None,
            allow_backing: false,
            num_queues: 4,
            io_engine: IoEngine::Sync,
            rate_limiter: Some(limiter),
            poll_us: Some(50),
            ..BlockConfig::new("/images/data.qcow2")
        };
        let net = NetConfig {
            mac: Some("52:54:00:00:00:01".parse().unwrap()),
            id: Some("eth0".into()),
            tx_rate_limiter: Some(limiter),
            ..NetConfig::new(Some("tap0".into()))
        };
        let config = VmConfig {
            kernel: "/k".into(),
            initrd: None,
            cmdline: DEFAULT_CMDLINE.into(),
            vcpus: 2,
            memory_bytes: 64 << 20,
            serial: SerialConfig::None,
            virtio: vec![
                VirtioConfig::Block(BlockConfig { id: Some("root".into()), ..BlockConfig::new("/r") }),
                VirtioConfig::Net(net.clone()),
                VirtioConfig::Block(disk.clone()),
            ],
            transport: VirtioTransport::Mmio,
            track_dirty_pages: false,
            host: Default::default(),
        };
        let resources = VmResources::restored(&config, None);
        let drives: Vec<_> = resources.drives_in_vm_order().map(|d| drive_config(d).unwrap()).collect();
        assert_eq!(drives[1], disk);
        assert_eq!(drives[0].id.as_deref(), Some("root"));
        assert!(!resources.drives[0].is_root_device, "no root= on the command line");
        assert_eq!(net_config(&resources.network_interfaces[0]).unwrap(), net);
        assert_eq!(resources.machine_config().vcpu_count, 2);
    }

    /// A restored VM's configuration reads as the requests that built it: the boot source's
    /// arguments without the root drive's `root=`, a drive of default options without
    /// `x-kestrel`, the load's host choices; and it builds the same VM again.
    #[test]
    fn a_restored_configuration_reads_as_the_requests_gave_it() {
        let config = VmConfig {
            kernel: "/k".into(),
            initrd: Some("/i".into()),
            cmdline: "console=ttyS0 root=/dev/vda ro".into(),
            vcpus: 2,
            memory_bytes: 256 << 20,
            serial: SerialConfig::None,
            virtio: vec![VirtioConfig::Block(BlockConfig {
                id: Some("rootfs".into()),
                read_only: true,
                ..BlockConfig::new("/r")
            })],
            transport: VirtioTransport::Mmio,
            track_dirty_pages: true,
            host: Default::default(),
        };
        let host = HostExtensions { vcpu_realtime_priority: Some(5), ..HostExtensions::default() };
        let resources = VmResources::restored(&config, Some(host.clone()));
        let exported = resources.export();
        let boot = exported.boot_source.as_ref().unwrap();
        assert_eq!(boot.boot_args.as_deref(), Some("console=ttyS0"));
        assert_eq!(boot.initrd_path.as_deref(), Some("/i"));
        assert_eq!(exported.drives[0].kestrel, None);
        assert!(exported.drives[0].is_root_device);
        assert_eq!(exported.drives[0].cache_type, Some(CacheType::Writeback));
        let machine = exported.machine_config.as_ref().unwrap();
        assert_eq!((machine.vcpu_count, machine.mem_size_mib, machine.track_dirty_pages), (2, 256, true));
        assert_eq!(machine.kestrel.as_deref(), Some(&host));
        let rebuilt = resources.to_vm_config(SerialConfig::None, VirtioTransport::Mmio).unwrap();
        assert_eq!(rebuilt.cmdline, config.cmdline);
        assert_eq!(rebuilt.virtio, config.virtio);
    }

    /// A balloon cannot give back locked or hugetlb memory: the two are refused together when
    /// the second is PUT, whichever comes first.
    #[test]
    fn a_balloon_is_refused_beside_locked_or_huge_page_memory() {
        let machine = |text: &str| serde_json::from_str::<MachineConfiguration>(text).unwrap();
        let balloon: Balloon = serde_json::from_str(r#"{"amount_mib": 0, "deflate_on_oom": false}"#).unwrap();
        let huge = r#"{"vcpu_count": 1, "mem_size_mib": 64, "huge_pages": "2M"}"#;
        let locked = r#"{"vcpu_count": 1, "mem_size_mib": 64, "x-kestrel": {"mlock": true}}"#;
        for (text, expected) in [(huge, "a balloon cannot be used with huge pages"), (locked, "mlock keeps")]
        {
            let mut resources = VmResources::default();
            resources.set_machine_config(machine(text)).unwrap();
            let message = resources.set_balloon(balloon.clone()).unwrap_err().to_string();
            assert!(message.contains(expected), "{message}");

            let mut resources = VmResources::default();
            resources.set_balloon(balloon.clone()).unwrap();
            let message = resources.set_machine_config(machine(text)).unwrap_err().to_string();
            assert!(message.contains(expected), "{message}");
            assert_eq!(resources.machine_config(), &MachineConfiguration::default(), "left as it was");
        }
    }

    /// As in Firecracker, a PATCH that names one bucket keeps the other.
    #[test]
    fn a_rate_limiter_patch_keeps_the_buckets_it_leaves_out() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let path = file.path().to_str().unwrap();
        let mut resources = VmResources::default();
        let drive = format!(
            r#"{{"drive_id": "d", "path_on_host": "{path}", "is_root_device": false, "is_read_only": false,
                "rate_limiter": {{"bandwidth": {{"size": 1000, "refill_time": 100}}, "ops": {{"size": 10, "refill_time": 1000}}}}}}"#
        );
        resources.put_drive("d", serde_json::from_str(&drive).unwrap()).unwrap();
        let patch: PartialDrive = serde_json::from_str(
            r#"{"drive_id": "d", "rate_limiter": {"ops": {"size": 50, "refill_time": 1000}}}"#,
        )
        .unwrap();
        let checked = resources.check_drive_update("d", &patch).unwrap();
        let limiter = checked.rate_limiter.unwrap();
        assert_eq!(limiter.bandwidth.map(|b| (b.size, b.refill_time)), Some((1000, 100)), "kept");
        assert_eq!(limiter.ops.map(|b| (b.size, b.refill_time)), Some((50, 1000)), "replaced");
        assert_eq!(checked.disk.rate_limiter, Some(limiter));
        resources.record_drive_update(&patch);
        assert_eq!(resources.export().drives[0].rate_limiter, Some(limiter));
    }

    #[test]
    fn a_drive_update_names_the_vms_disk_in_its_order() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let path = file.path().to_str().unwrap().to_owned();
        let mut resources = VmResources::default();
        for (id, root) in [("data", false), ("rootfs", true), ("logs", false)] {
            let drive = format!(
                r#"{{"drive_id": "{id}", "path_on_host": "{path}", "is_root_device": {root}, "is_read_only": false}}"#
            );
            resources.put_drive(id, serde_json::from_str(&drive).unwrap()).unwrap();
        }
        let update = |id: &str, body: &str| {
            resources.check_drive_update(id, &serde_json::from_str::<PartialDrive>(body).unwrap())
        };
        let new_path = format!(r#", "path_on_host": "{path}""#);
        for (id, index) in [("rootfs", 0), ("data", 1), ("logs", 2)] {
            let body = format!(r#"{{"drive_id": "{id}"{new_path}}}"#);
            let checked = update(id, &body).unwrap();
            assert_eq!(
                (checked.index, checked.path, checked.rate_limiter),
                (index, Some(PathBuf::from(&path)), None)
            );
        }
        let errors = [
            ("data", r#"{"drive_id": "logs"}"#.to_owned(), "does not match"),
            ("data", r#"{"drive_id": "data"}"#.to_owned(), "path_on_host or rate_limiter is required"),
            (
                "data",
                format!(
                    r#"{{"drive_id": "data"{new_path}, "rate_limiter": {{"ops": {{"size": 1, "refill_time": 0}}}}}}"#
                ),
                "Invalid rate_limiter.ops: refill_time must not be 0",
            ),
            ("nope", format!(r#"{{"drive_id": "nope"{new_path}}}"#), "no drive nope is configured"),
            (
                "data",
                r#"{"drive_id": "data", "path_on_host": "/nonexistent"}"#.to_owned(),
                "cannot be opened",
            ),
        ];
        for (id, body, expected) in errors {
            let message = update(id, &body).unwrap_err().to_string();
            assert!(message.contains(expected), "{body}: {message}");
        }
        // A null rate limiter is no rate limiter.
        let body = format!(r#"{{"drive_id": "data"{new_path}, "rate_limiter": null}}"#);
        assert!(update("data", &body).is_ok());
        // A rate limiter alone changes only the limiter.
        let body =
            r#"{"drive_id": "data", "rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}}"#;
        let checked = update("data", body).unwrap();
        assert_eq!(checked.path, None);
        assert_eq!(checked.disk.rate_limiter.and_then(|l| l.bandwidth).map(|b| b.size), Some(1000));

        let patch: PartialDrive =
            serde_json::from_str(r#"{"drive_id": "logs", "path_on_host": "/elsewhere"}"#).unwrap();
        resources.record_drive_update(&patch);
        let exported = resources.export();
        assert_eq!(exported.drives[2].path_on_host.as_deref(), Some("/elsewhere"));
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let boot = BootSource {
            kernel_image_path: fifo.to_str().unwrap().into(),
            initrd_path: None,
            boot_args: None,
        };
        let error = VmResources::default().set_boot_source(boot).unwrap_err();
        assert!(error.to_string().ends_with("fifo: it is a FIFO, not a regular file"), "{error}");
    }

    #[test]
    fn one_root_drive_and_unique_taps() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let path = file.path().to_str().unwrap().to_owned();
        let drive = |id: &str, root| Drive {
            drive_id: id.into(),
            is_root_device: root,
            partuuid: None,
            cache_type: None,
            is_read_only: Some(false),
            path_on_host: Some(path.clone()),
            rate_limiter: None,
            io_engine: None,
            socket: None,
            kestrel: None,
        };
        let mut resources = VmResources::default();
        resources.put_drive("a", drive("a", true)).unwrap();
        resources.put_drive("a", drive("a", true)).unwrap();
        assert_eq!(resources.put_drive("b", drive("b", true)), Err(ConfigError::RootBlockDeviceAlreadyAdded));
        let iface = |id: &str| NetworkInterface {
            iface_id: id.into(),
            host_dev_name: "tap0".into(),
            guest_mac: None,
            mtu: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        };
        resources.put_network_interface("e0", iface("e0")).unwrap();
        assert_eq!(
            resources.put_network_interface("e1", iface("e1")),
            Err(ConfigError::HostDeviceNameInUse("tap0".into()))
        );
        assert_eq!(truncate("ééé", 5), "éé");
    }

    fn put(resources: &mut VmResources, path: &str, extra: &str) -> Result<(), ConfigError> {
        let body = format!(
            r#"{{"drive_id": "d", "path_on_host": "{path}", "is_root_device": false, "is_read_only": false{extra}}}"#
        );
        let drive: Drive =
            serde_json::from_str(&body).map_err(|e| ConfigError::Unsupported(e.to_string()))?;
        resources.put_drive("d", drive)
    }

    fn boot(resources: &mut VmResources, path: &str) {
        let boot = BootSource { kernel_image_path: path.into(), initrd_path: None, boot_args: None };
        resources.set_boot_source(boot).unwrap();
    }

    fn only_disk(resources: &VmResources) -> BlockConfig {
        let config = resources.to_vm_config(SerialConfig::None, VirtioTransport::Mmio).unwrap();
        match &config.virtio[..] {
            [VirtioConfig::Block(disk)] => disk.clone(),
            other => panic!("{other:?}"),
        }
    }

    /// Firecracker's drive fields and Kestrel's `x-kestrel` ones reach the engine's disk; a drive
    /// that gives none of them gets the defaults.
    #[test]
    fn a_drives_options_reach_the_vms_disk() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let path = file.path().to_str().unwrap();
        let mut resources = VmResources::default();
        boot(&mut resources, path);
        put(&mut resources, path, "").unwrap();
        assert_eq!(only_disk(&resources), BlockConfig { id: Some("d".into()), ..BlockConfig::new(path) });

        let extra = r#", "cache_type": "Writeback", "io_engine": "Async",
            "rate_limiter": {"bandwidth": {"size": 1048576, "one_time_burst": 0, "refill_time": 1000}, "ops": null},
            "x-kestrel": {"format": "qcow2", "cache": "none", "allow_backing": false, "num_queues": 4, "poll_us": 50}"#;
        put(&mut resources, path, extra).unwrap();
        let disk = only_disk(&resources);
        assert_eq!(
            (disk.format, disk.cache, disk.allow_backing, disk.num_queues, disk.io_engine),
            (ImageFormat::Qcow2, CacheMode::None, false, 4, IoEngine::Async)
        );
        assert_eq!(disk.poll_us, Some(50));
        let bandwidth = disk.rate_limiter.and_then(|l| l.bandwidth).unwrap();
        assert_eq!((bandwidth.size, bandwidth.refill_time), (1 << 20, 1000));
        // GET /vm/config gives the body back, x-kestrel included.
        let exported = serde_json::to_value(&resources.export().drives[0]).unwrap();
        assert_eq!(exported["x-kestrel"]["format"], "qcow2");
        assert_eq!(exported["x-kestrel"]["poll_us"], 50);
        assert_eq!(exported["rate_limiter"]["bandwidth"]["size"], 1048576);

        put(&mut resources, path, r#", "cache_type": "Unsafe""#).unwrap();
        assert_eq!(only_disk(&resources).cache, CacheMode::Unsafe);
    }

    #[test]
    fn bad_drive_options_are_refused_with_their_names() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let path = file.path().to_str().unwrap();
        let mut resources = VmResources::default();
        for (extra, expected) in [
            (
                r#", "cache_type": "Unsafe", "x-kestrel": {"cache": "none"}"#,
                "cache_type Unsafe and x-kestrel cache none disagree",
            ),
            (r#", "cache_type": "Writeback", "x-kestrel": {"cache": "unsafe"}"#, "disagree"),
            (r#", "x-kestrel": {"num_queues": 0}"#, "num_queues must be 1 to 16, got 0"),
            (r#", "x-kestrel": {"num_queues": 65536}"#, "invalid value"),
            (r#", "x-kestrel": {"poll_us": 1001}"#, "poll_us must be at most 1000 (µs), got 1001"),
            (r#", "x-kestrel": {"poll_us": -1}"#, "invalid value"),
            (r#", "x-kestrel": {"format": "vmdk"}"#, "unknown variant `vmdk`"),
            (r#", "x-kestrel": {"cache": "directsync"}"#, "unknown variant `directsync`"),
            (r#", "x-kestrel": {"formats": "raw"}"#, "unknown field `formats`"),
            (r#", "io_engine": "Uring""#, "unknown variant `Uring`"),
            (r#", "cache_type": "None""#, "unknown variant `None`"),
            (
                r#", "rate_limiter": {"bandwidth": {"size": 10, "refill_time": 0}}"#,
                "refill_time must not be 0",
            ),
            (r#", "rate_limiter": {"bandwidth": {"size": -1, "refill_time": 1}}"#, "invalid value"),
            (r#", "rate_limiter": {"iops": {}}"#, "unknown field `iops`"),
        ] {
            let message = put(&mut resources, path, extra).unwrap_err().to_string();
            assert!(message.contains(expected), "{extra}: {message}");
        }
        assert!(resources.export().drives.is_empty(), "a refused drive is not kept");
    }

    /// A `--config` file from before the disk options still loads, with the defaults.
    #[test]
    fn an_older_config_file_loads_with_the_defaults() {
        let kernel = tempfile::NamedTempFile::new().unwrap();
        let path = kernel.path().display();
        let text = format!(
            r#"{{"boot-source": {{"kernel_image_path": "{path}"}},
                "drives": [{{"drive_id": "rootfs", "path_on_host": "{path}", "is_root_device": true, "is_read_only": false}}]}}"#
        );
        let resources = VmResources::from_json(&text).unwrap();
        let disk = only_disk(&resources);
        assert_eq!(disk, BlockConfig { id: Some("rootfs".into()), ..BlockConfig::new(kernel.path()) });
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Whatever placement and memory options a client sends in machine-config's x-kestrel,
        /// they are taken or refused (no panic), and what is taken makes a configuration
        /// `VmConfig::validate` accepts.
        #[test]
        fn any_machine_config_extensions_are_taken_or_refused(
            vcpus in 1u8..5,
            mib in proptest::prelude::prop_oneof![proptest::prelude::Just(64u64), 16u64..4096],
            affinity in "(\\[\\[0\\]\\]|\\[\\[0\\],\\[1\\]\\]|\\[\\[\\]\\]|\\[\\[9000\\]\\]|\\[\\]|null|1)",
            others in "(\\[1,2\\]|\\[\\]|null|\\[-1\\])",
            priority in proptest::prelude::prop_oneof![0i64..120, proptest::prelude::any::<i64>()],
            backend in "(\"anonymous\"|\"anon\"|\"memfd\"|\"hugetlb\"|null)",
            huge in "(\"2M\"|\"1G\"|\"4M\"|null)",
            top_huge in "(\"None\"|\"2M\"|\"1G\"|null)",
            flags in proptest::collection::vec(proptest::prelude::any::<bool>(), 3),
            node in proptest::prelude::prop_oneof![0i64..4, proptest::prelude::any::<i64>()],
        ) {
            let body = format!(
                r#"{{"vcpu_count": {vcpus}, "mem_size_mib": {mib}, "huge_pages": {top_huge}, "x-kestrel": {{
                    "vcpu_affinity": {affinity}, "vmm_affinity": {others}, "vcpu_realtime_priority": {priority},
                    "memory_backend": {backend}, "huge_pages": {huge}, "thp": {}, "ksm": {}, "mlock": {},
                    "numa_node": {node}}}}}"#,
                flags[0], flags[1], flags[2]
            );
            let file = tempfile::NamedTempFile::new().unwrap();
            let mut resources = VmResources::default();
            boot(&mut resources, file.path().to_str().unwrap());
            if let Ok(machine) = serde_json::from_str::<MachineConfiguration>(&body) {
                if resources.set_machine_config(machine).is_ok() {
                    let config = resources.to_vm_config(SerialConfig::None, VirtioTransport::Mmio);
                    proptest::prop_assert!(config.is_ok(), "{body}: {config:?}");
                }
            }
        }

        /// Whatever disk options a client sends, the drive is taken or refused with an error (no
        /// panic), and a drive taken makes a configuration the engine's checks accept.
        #[test]
        fn any_drive_options_are_taken_or_refused(
            cache_type in "(null|\"Unsafe\"|\"Writeback\"|\"None\"|1)",
            io_engine in "(null|\"Sync\"|\"Async\"|\"x\")",
            size in proptest::prelude::any::<u64>(),
            refill_time in proptest::prelude::prop_oneof![proptest::prelude::Just(0u64), 0u64..100_000_000, proptest::prelude::any::<u64>()],
            burst in proptest::option::of(proptest::prelude::any::<u64>()),
            format in "(null|\"raw\"|\"qcow2\"|\"vmdk\")",
            cache in "(null|\"writeback\"|\"none\"|\"unsafe\"|\"\")",
            queues in proptest::prelude::any::<i32>(),
            backing in "(null|true|false|0)",
            poll in proptest::prelude::prop_oneof![0i64..2000, proptest::prelude::any::<i64>()],
        ) {
            let file = tempfile::NamedTempFile::new().unwrap();
            let path = file.path().to_str().unwrap();
            let burst = burst.map_or("null".to_owned(), |b| b.to_string());
            let extra = format!(
                r#", "cache_type": {cache_type}, "io_engine": {io_engine},
                "rate_limiter": {{"bandwidth": {{"size": {size}, "one_time_burst": {burst}, "refill_time": {refill_time}}}}},
                "x-kestrel": {{"format": {format}, "cache": {cache}, "num_queues": {queues}, "allow_backing": {backing}, "poll_us": {poll}}}"#
            );
            let mut resources = VmResources::default();
            boot(&mut resources, path);
            if put(&mut resources, path, &extra).is_ok() {
                only_disk(&resources);
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Whatever limiters a client sends for a network interface, on PUT or on PATCH, they are
        /// taken or refused with an error (no panic); what is taken makes a card the engine's
        /// checks accept, and a PATCH's merged limiters are what the card then has.
        #[test]
        fn any_network_interface_limiters_are_taken_or_refused(
            put_limiter in limiter_text(),
            patch_limiter in limiter_text(),
            which in "(rx|tx)",
        ) {
            let mut resources = VmResources::default();
            let body = format!(
                r#"{{"iface_id": "eth0", "host_dev_name": "tap0", "{which}_rate_limiter": {put_limiter}}}"#
            );
            let Ok(iface) = serde_json::from_str::<NetworkInterface>(&body) else { return Ok(()) };
            if resources.put_network_interface("eth0", iface).is_err() {
                return Ok(());
            }
            let card = net_config(&resources.network_interfaces[0]).unwrap();
            proptest::prop_assert!(card.validate().is_ok(), "{body}");
            let patch = format!(r#"{{"iface_id": "eth0", "{which}_rate_limiter": {patch_limiter}}}"#);
            let Ok(patch) = serde_json::from_str::<PartialNetworkInterface>(&patch) else { return Ok(()) };
            if let Ok(update) = resources.check_net_update("eth0", &patch) {
                proptest::prop_assert!(update.net.validate().is_ok());
                resources.record_net_update(&patch);
                let shown = &resources.export().network_interfaces[0];
                let (now, updated) = match which.as_str() {
                    "rx" => (shown.rx_rate_limiter, update.rx_rate_limiter),
                    _ => (shown.tx_rate_limiter, update.tx_rate_limiter),
                };
                if patch.rx_rate_limiter.is_some() || patch.tx_rate_limiter.is_some() {
                    proptest::prop_assert_eq!(now, updated);
                }
            }
        }
    }

    /// A rate limiter as a client might spell it: buckets of any numbers, missing or null parts,
    /// and things that are no limiter.
    fn limiter_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let number = prop_oneof![
            Just("0".to_owned()),
            (0u64..100_000).prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            Just("-1".to_owned()),
            Just("null".to_owned())
        ];
        let bucket = prop_oneof![
            Just("null".to_owned()),
            Just("[]".to_owned()),
            (number.clone(), number.clone(), number).prop_map(|(size, burst, refill)| {
                format!(r#"{{"size": {size}, "one_time_burst": {burst}, "refill_time": {refill}}}"#)
            }),
        ];
        prop_oneof![
            Just("null".to_owned()),
            Just("{}".to_owned()),
            Just("[null, null]".to_owned()),
            (bucket.clone(), bucket).prop_map(|(b, o)| format!(r#"{{"bandwidth": {b}, "ops": {o}}}"#)),
        ]
    }

    /// A network interface's limiters go from the request to the engine's card and back out of
    /// `GET /vm/config`; a PATCH merges into them as Firecracker does (a limiter or bucket it
    /// leaves out keeps its setting), and bad limiters are refused naming the field.
    #[test]
    fn network_interface_rate_limiters_and_their_patch() {
        let mut resources = VmResources::default();
        let body = r#"{"iface_id": "eth0", "host_dev_name": "tap0",
            "rx_rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}},
            "tx_rate_limiter": {"bandwidth": {"size": 2000, "one_time_burst": 5, "refill_time": 10}, "ops": {"size": 7, "refill_time": 1000}}}"#;
        let iface: NetworkInterface = serde_json::from_str(body).unwrap();
        resources.put_network_interface("eth0", iface).unwrap();
        let bucket = |size, one_time_burst, refill_time| TokenBucket { size, one_time_burst, refill_time };
        let rx = RateLimiterConfig { bandwidth: Some(bucket(1000, None, 100)), ops: None };
        let tx = RateLimiterConfig {
            bandwidth: Some(bucket(2000, Some(5), 10)),
            ops: Some(bucket(7, None, 1000)),
        };
        let exported = serde_json::to_value(resources.export()).unwrap();
        let shown = &exported["network-interfaces"][0];
        assert_eq!(shown["rx_rate_limiter"]["bandwidth"]["size"], 1000);
        assert_eq!(shown["tx_rate_limiter"]["ops"]["size"], 7);

        let patch: PartialNetworkInterface = serde_json::from_str(
            r#"{"iface_id": "eth0", "tx_rate_limiter": {"bandwidth": {"size": 0, "refill_time": 0}}}"#,
        )
        .unwrap();
        let checked = resources.check_net_update("eth0", &patch).unwrap();
        let lifted = RateLimiterConfig { bandwidth: Some(bucket(0, None, 0)), ops: tx.ops };
        assert_eq!(checked.index, 0);
        assert_eq!(checked.rx_rate_limiter, None, "the PATCH leaves rx alone");
        assert_eq!(checked.tx_rate_limiter, Some(lifted));
        assert_eq!((checked.net.rx_rate_limiter, checked.net.tx_rate_limiter), (Some(rx), Some(lifted)));
        resources.record_net_update(&patch);
        let exported = resources.export();
        assert_eq!(exported.network_interfaces[0].tx_rate_limiter, Some(lifted));
        assert_eq!(exported.network_interfaces[0].rx_rate_limiter, Some(rx));

        for (id, body, expected) in [
            ("eth1", r#"{"iface_id": "eth1"}"#, "no network interface eth1"),
            ("eth0", r#"{"iface_id": "eth1"}"#, "does not match"),
            (
                "eth0",
                r#"{"iface_id": "eth0", "rx_rate_limiter": {"ops": {"size": 1, "refill_time": 0}}}"#,
                "Invalid rx_rate_limiter.ops: refill_time must not be 0",
            ),
        ] {
            let patch: PartialNetworkInterface = serde_json::from_str(body).unwrap();
            let message = resources.check_net_update(id, &patch).unwrap_err().to_string();
            assert!(message.contains(expected), "{body}: {message}");
        }
        let typo = r#"{"iface_id": "eth0", "tx_rate_limiter": {"bandwith": {"size": 1, "refill_time": 1}}}"#;
        assert!(serde_json::from_str::<PartialNetworkInterface>(typo).is_err());
        let bad = r#"{"iface_id": "eth1", "host_dev_name": "tap1", "tx_rate_limiter": {"bandwidth": {"size": 1, "refill_time": 99999999999}}}"#;
        let error = resources.put_network_interface("eth1", serde_json::from_str(bad).unwrap()).unwrap_err();
        assert!(
            error.to_string().contains("Invalid tx_rate_limiter.bandwidth: refill_time is longer"),
            "{error}"
        );
    }
}
