//! What a user asks for: the description of one VM, independent of how it was given (flags, API, file).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::error::ConfigError;
pub use crate::host::{
    CpuPlacement, CpuSet, HostResources, HugePageSize, MemoryOptions, PlacementError, RamBackend,
};

/// Where the guest's COM1 output goes (and whether the host's stdin feeds its input).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SerialConfig {
    /// Output to stdout; stdin is forwarded to the guest (raw mode when it is a terminal).
    Stdio,
    /// Output appended to a file; the guest gets no input.
    File(PathBuf),
    /// Output discarded; the guest gets no input.
    None,
}

/// The command line used when the user gives none: a serial console and a reboot that ends the VM.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// Everything needed to build and boot one VM.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmConfig {
    /// Kernel image: ELF vmlinux (64-bit or PVH entry) or bzImage.
    pub kernel: PathBuf,
    /// Optional initial ramdisk, loaded at the top of low memory.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Number of vCPUs (1..=arch::layout::MAX_VCPUS).
    pub vcpus: u8,
    /// Guest RAM in bytes.
    pub memory_bytes: u64,
    /// Serial console wiring.
    pub serial: SerialConfig,
    /// Virtio devices, in the order the guest finds them.
    pub virtio: Vec<VirtioConfig>,
    /// How the virtio devices reach the guest.
    pub transport: VirtioTransport,
    /// KVM logs the pages the guest writes, so that diff snapshots are possible (it costs a little
    /// on every first write to a page after each snapshot).
    pub track_dirty_pages: bool,
    /// Host-side choices (CPU placement, what backs guest RAM). Not part of the guest's machine,
    /// so not saved in a snapshot: a restore takes them from its own side.
    #[serde(skip)]
    pub host: HostResources,
}

impl VmConfig {
    /// Makes the cards `mmds` names answer for the metadata service, with `store`'s contents.
    pub fn attach_mmds(&mut self, mmds: &crate::api::MmdsConfig, store: &crate::mmds::MmdsStore) {
        for device in &mut self.virtio {
            if let VirtioConfig::Net(net) = device {
                let named = net.id.as_ref().is_some_and(|id| mmds.network_interfaces.contains(id));
                net.mmds = named.then(|| crate::mmds::NetMmds {
                    address: mmds.ipv4_address.unwrap_or(crate::mmds::DEFAULT_MMDS_ADDRESS),
                    version: mmds.version,
                    imds_compat: mmds.imds_compat,
                    store: store.clone(),
                });
            }
        }
    }
}

/// The most vCPUs a VM can have (the MP table's and ACPI's limit in Kestrel's layout).
pub const MAX_VCPUS: u8 = 254;
/// The least guest RAM Kestrel builds a VM with.
pub const MIN_MEMORY_BYTES: u64 = 16 << 20;
/// The longest kernel command line, without its NUL, that the boot protocol takes.
pub const MAX_CMDLINE_BYTES: usize = 2047;
/// Guest RAM comes in whole pages of this size.
const PAGE_BYTES: u64 = 4096;

impl VmConfig {
    /// The checks every configuration passes before the engine sees it, whatever it came from:
    /// the command line's flags, an API configuration or `--config` file, or a snapshot's saved
    /// configuration (a hostile file must not reach the builder with values it cannot take).
    /// Host resources (files, taps, sockets, the host's RAM) are checked when they are opened.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kernel.as_os_str().is_empty() {
            return Err(ConfigError::EmptyKernelPath);
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::VcpusOutOfRange { requested: self.vcpus, max: MAX_VCPUS });
        }
        if self.memory_bytes < MIN_MEMORY_BYTES {
            return Err(ConfigError::MemoryTooSmall {
                requested: self.memory_bytes,
                minimum: MIN_MEMORY_BYTES,
            });
        }
        if !self.memory_bytes.is_multiple_of(PAGE_BYTES) {
            return Err(ConfigError::MemoryNotPageAligned(self.memory_bytes));
        }
        if self.cmdline.len() > MAX_CMDLINE_BYTES {
            return Err(ConfigError::CommandLineTooLong { len: self.cmdline.len(), max: MAX_CMDLINE_BYTES });
        }
        if self.cmdline.chars().any(char::is_control) {
            return Err(ConfigError::CommandLineControlCharacter);
        }
        self.host.cpus.validate(self.vcpus)?;
        self.host.memory.validate(self.memory_bytes)?;
        // Locked memory cannot be given back: the balloon's discards would fail on every page.
        let balloon = self.virtio.iter().any(|d| matches!(d, VirtioConfig::Balloon(_)));
        if balloon && self.host.memory.mlock {
            return Err(ConfigError::MlockWithBalloon);
        }
        if balloon && matches!(self.host.memory.backend, RamBackend::HugeTlb(_)) {
            return Err(ConfigError::BalloonWithHugePages);
        }
        self.virtio.iter().try_for_each(|device| device.validate(self.memory_bytes))
    }
}

impl VirtioConfig {
    /// One device's checks; `memory_bytes` is the guest's RAM.
    fn validate(&self, memory_bytes: u64) -> Result<(), ConfigError> {
        match self {
            VirtioConfig::Rng => {}
            VirtioConfig::Block(disk) => disk.validate()?,
            VirtioConfig::Net(net) => net.validate()?,
            VirtioConfig::Balloon(balloon) => {
                let memory_mib = memory_bytes >> 20;
                if u64::from(balloon.target_mib) > memory_mib {
                    return Err(ConfigError::BalloonTargetTooLarge {
                        target_mib: balloon.target_mib,
                        memory_mib,
                    });
                }
            }
            VirtioConfig::Vsock(vsock) => {
                if !(VSOCK_MIN_CID..=VSOCK_MAX_CID).contains(&vsock.cid) {
                    return Err(ConfigError::InvalidCid(vsock.cid));
                }
                if vsock.uds_path.as_os_str().is_empty() {
                    return Err(ConfigError::EmptyPath { field: "uds_path" });
                }
            }
        }
        Ok(())
    }
}

/// How virtio devices reach the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum VirtioTransport {
    /// virtio-mmio windows declared on the kernel command line: what microVM kernels expect, and
    /// the cheapest to set up.
    #[default]
    Mmio,
    /// virtio-pci (modern) on PCI bus 0 with MSI-X: what stock distribution kernels expect.
    Pci,
}

/// One virtio device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VirtioConfig {
    /// An entropy source fed from the host's getrandom.
    Rng,
    /// A disk (virtio-blk) over an image file (raw or qcow2) or a host block device.
    Block(BlockConfig),
    /// A network card (virtio-net) on a host tap device.
    Net(NetConfig),
    /// A memory balloon (virtio-balloon): the host asks the guest for memory back.
    Balloon(BalloonConfig),
    /// Stream sockets between the guest and host processes (virtio-vsock).
    Vsock(VsockConfig),
}

/// The least guest context ID a vsock device may have (0 to 2 are reserved: hypervisor, local, host).
pub const VSOCK_MIN_CID: u64 = 3;
/// The greatest guest context ID (`u32::MAX` is reserved as "any").
pub const VSOCK_MAX_CID: u64 = u32::MAX as u64 - 1;

/// A virtio-vsock device; host processes reach it through Unix sockets, Firecracker-style.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockConfig {
    /// The guest's context ID, 3 to 4294967294.
    pub cid: u64,
    /// The Unix socket host processes connect to (`CONNECT <port>\n`); guest connections to
    /// host port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
}

pub use crate::mac::{MacAddress, MacError};

/// The longest tap name Linux takes (`IFNAMSIZ - 1`).
pub const TAP_NAME_MAX_BYTES: usize = 15;

/// A virtio-net card on a tap device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// The tap to create, or to attach to if it exists; `None` creates one with a free
    /// `kestrelN` name.
    pub tap: Option<String>,
    /// The card's address; by default a random locally administered one.
    pub mac: Option<MacAddress>,
    /// The card's name in the metrics (`net_<id>`; the API's interface ID); by default the tap's
    /// name.
    pub id: Option<String>,
    /// Limits on what the guest receives (frames from the tap into the guest); `None` limits
    /// nothing.
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Limits on what the guest sends.
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
    /// The card answers the guest's frames to the metadata service itself (`PUT /mmds/config`).
    /// A snapshot saves the address, version and IMDS mode, not the store (the VMM's, as in
    /// Firecracker): a restore gives the card the restoring VMM's store.
    #[serde(default)]
    pub mmds: Option<crate::mmds::NetMmds>,
}

impl NetConfig {
    /// A card on `tap` (`None`: a new `kestrelN`) with every option at its default.
    pub fn new(tap: Option<String>) -> NetConfig {
        NetConfig { tap, mac: None, id: None, rx_rate_limiter: None, tx_rate_limiter: None, mmds: None }
    }

    /// The card's checks (the tap itself is checked when it is opened).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(tap) = self.tap.as_ref().filter(|t| t.is_empty() || t.len() > TAP_NAME_MAX_BYTES) {
            return Err(ConfigError::InvalidTapName(tap.chars().take(64).collect()));
        }
        if let Some(limiter) = &self.rx_rate_limiter {
            limiter.validate_named(["rx_rate_limiter.bandwidth", "rx_rate_limiter.ops"])?;
        }
        if self.mmds.as_ref().is_some_and(|mmds| !crate::mmds::valid_mmds_address(mmds.address)) {
            return Err(ConfigError::MmdsAddress);
        }
        if let Some(limiter) = &self.tx_rate_limiter {
            limiter.validate_named(["tx_rate_limiter.bandwidth", "tx_rate_limiter.ops"])?;
        }
        Ok(())
    }
}

pub use crate::rate_limiter::{RateLimiterConfig, TokenBucket};

pub use crate::disk::{
    BlockConfig, CacheMode, ImageFormat, IoEngine, DISK_ID_MAX_BYTES, MAX_DISK_QUEUES, MAX_POLL_US,
};

/// A virtio-balloon device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonConfig {
    /// The balloon size asked of the guest at boot, in MiB (at most the guest's RAM).
    pub target_mib: u32,
    /// How often the guest is asked for memory statistics; `None` offers no stats queue.
    pub stats_interval: Option<std::time::Duration>,
    /// The guest reports the pages it frees, and the host gives them back to its kernel.
    pub free_page_reporting: bool,
    /// The guest may take pages back from the balloon instead of running out of memory.
    pub deflate_on_oom: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        VmConfig {
            kernel: "/k".into(),
            initrd: None,
            cmdline: DEFAULT_CMDLINE.into(),
            vcpus: 1,
            memory_bytes: 64 << 20,
            serial: SerialConfig::None,
            virtio: vec![VirtioConfig::Rng],
            transport: VirtioTransport::Mmio,
            track_dirty_pages: false,
            host: HostResources::default(),
        }
    }

    #[test]
    fn validate_takes_a_sane_config_and_names_what_is_wrong_in_others() {
        assert_eq!(config().validate(), Ok(()));
        type Change = Box<dyn Fn(&mut VmConfig)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|c| c.kernel = "".into()), "kernel path is empty"),
            (Box::new(|c| c.vcpus = 0), "between 1 and 254, got 0"),
            (Box::new(|c| c.vcpus = 255), "between 1 and 254, got 255"),
            (Box::new(|c| c.memory_bytes = 1 << 20), "below the minimum"),
            (Box::new(|c| c.memory_bytes = (64 << 20) + 1), "multiple of 4 KiB"),
            (Box::new(|c| c.cmdline = "x".repeat(2048)), "longer than the 2047 bytes"),
            (Box::new(|c| c.cmdline = "console=ttyS0\u{7}".into()), "invalid kernel command line"),
            (
                Box::new(|c| {
                    c.virtio.push(VirtioConfig::Vsock(VsockConfig { cid: 2, uds_path: "/v".into() }))
                }),
                "the CID must be 3 to 4294967294",
            ),
            (
                Box::new(|c| {
                    c.virtio.push(VirtioConfig::Block(BlockConfig {
                        id: Some("x".repeat(21)),
                        ..BlockConfig::new("/d")
                    }))
                }),
                "longer than 20 bytes",
            ),
            (
                Box::new(|c| c.virtio.push(VirtioConfig::Net(NetConfig::new(Some("t".repeat(16)))))),
                "Invalid host_dev_name",
            ),
            (
                Box::new(|c| {
                    let zero_refill = TokenBucket { size: 1, one_time_burst: None, refill_time: 0 };
                    c.virtio.push(VirtioConfig::Net(NetConfig {
                        tx_rate_limiter: Some(RateLimiterConfig { bandwidth: None, ops: Some(zero_refill) }),
                        ..NetConfig::new(None)
                    }))
                }),
                "Invalid tx_rate_limiter.ops: refill_time must not be 0",
            ),
            (
                Box::new(|c| {
                    c.virtio.push(VirtioConfig::Balloon(BalloonConfig {
                        target_mib: 65,
                        stats_interval: None,
                        free_page_reporting: false,
                        deflate_on_oom: false,
                    }))
                }),
                "larger than the guest's 64 MiB of RAM",
            ),
            (
                Box::new(|c| {
                    c.host.memory.mlock = true;
                    c.virtio.push(VirtioConfig::Balloon(BalloonConfig {
                        target_mib: 0,
                        stats_interval: None,
                        free_page_reporting: false,
                        deflate_on_oom: false,
                    }))
                }),
                "mlock keeps guest RAM resident",
            ),
            (
                Box::new(|c| {
                    c.host.memory.backend = RamBackend::HugeTlb(HugePageSize::TwoMiB);
                    c.virtio.push(VirtioConfig::Balloon(BalloonConfig {
                        target_mib: 0,
                        stats_interval: None,
                        free_page_reporting: true,
                        deflate_on_oom: false,
                    }))
                }),
                "a balloon cannot be used with huge pages",
            ),
            (Box::new(|c| c.host.memory.backend = RamBackend::HugeTlb(HugePageSize::OneGiB)), "1G huge page"),
        ];
        for (change, expected) in cases {
            let mut bad = config();
            change(&mut bad);
            let message = bad.validate().unwrap_err().to_string();
            assert!(message.contains(expected), "{expected}: {message}");
        }
    }
}
