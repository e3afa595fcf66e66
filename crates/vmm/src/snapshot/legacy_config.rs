//! The configuration as older `config` sections encoded it, read and brought up to today's
//! [`VmConfig`]. Postcard is not self-describing, so each old shape is spelled out here, field
//! for field and variant for variant in the order it had.

use std::path::PathBuf;

use serde::Deserialize;

use crate::config::{
    BalloonConfig, BlockConfig, MacAddress, NetConfig, SerialConfig, VirtioConfig, VirtioTransport, VmConfig,
    VsockConfig,
};

/// `VmConfig` in `config` sections 1 and 2: its disks had no options.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct VmConfigV2 {
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    cmdline: String,
    vcpus: u8,
    memory_bytes: u64,
    serial: SerialConfig,
    virtio: Vec<VirtioConfigV2>,
    transport: VirtioTransport,
    track_dirty_pages: bool,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
enum VirtioConfigV2 {
    Rng,
    Block(BlockConfigV2),
    Net(NetConfigV3),
    Balloon(BalloonConfig),
    Vsock(VsockConfig),
}

/// A disk before formats, cache modes, queues and rate limiters: a writeback raw image.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct BlockConfigV2 {
    path: PathBuf,
    read_only: bool,
    id: Option<String>,
}

impl From<VmConfigV2> for VmConfig {
    fn from(old: VmConfigV2) -> VmConfig {
        let virtio = old
            .virtio
            .into_iter()
            .map(|device| match device {
                VirtioConfigV2::Rng => VirtioConfig::Rng,
                VirtioConfigV2::Block(disk) => VirtioConfig::Block(BlockConfig {
                    read_only: disk.read_only,
                    id: disk.id,
                    ..BlockConfig::new(disk.path)
                }),
                VirtioConfigV2::Net(net) => VirtioConfig::Net(net.into()),
                VirtioConfigV2::Balloon(balloon) => VirtioConfig::Balloon(balloon),
                VirtioConfigV2::Vsock(vsock) => VirtioConfig::Vsock(vsock),
            })
            .collect();
        VmConfig {
            kernel: old.kernel,
            initrd: old.initrd,
            cmdline: old.cmdline,
            vcpus: old.vcpus,
            memory_bytes: old.memory_bytes,
            serial: old.serial,
            virtio,
            transport: old.transport,
            track_dirty_pages: old.track_dirty_pages,
            host: Default::default(),
        }
    }
}

/// Today's configuration in the old shape (the disks' options dropped), to make old sections in
/// tests.
#[cfg(test)]
pub(super) fn downgrade(config: &VmConfig) -> VmConfigV2 {
    let virtio = config
        .virtio
        .iter()
        .map(|device| match device.clone() {
            VirtioConfig::Rng => VirtioConfigV2::Rng,
            VirtioConfig::Block(disk) => VirtioConfigV2::Block(BlockConfigV2 {
                path: disk.path,
                read_only: disk.read_only,
                id: disk.id,
            }),
            VirtioConfig::Net(net) => VirtioConfigV2::Net(NetConfigV3::from(&net)),
            VirtioConfig::Balloon(balloon) => VirtioConfigV2::Balloon(balloon),
            VirtioConfig::Vsock(vsock) => VirtioConfigV2::Vsock(vsock),
        })
        .collect();
    VmConfigV2 {
        kernel: config.kernel.clone(),
        initrd: config.initrd.clone(),
        cmdline: config.cmdline.clone(),
        vcpus: config.vcpus,
        memory_bytes: config.memory_bytes,
        serial: config.serial.clone(),
        virtio,
        transport: config.transport,
        track_dirty_pages: config.track_dirty_pages,
    }
}

/// `VmConfig` in `config` section 3: its network cards had no rate limiters.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct VmConfigV3 {
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    cmdline: String,
    vcpus: u8,
    memory_bytes: u64,
    serial: SerialConfig,
    virtio: Vec<VirtioConfigV3>,
    transport: VirtioTransport,
    track_dirty_pages: bool,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
enum VirtioConfigV3 {
    Rng,
    Block(BlockConfig),
    Net(NetConfigV3),
    Balloon(BalloonConfig),
    Vsock(VsockConfig),
}

/// A network card before rate limiters (sections 1 to 3).
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct NetConfigV3 {
    tap: Option<String>,
    mac: Option<MacAddress>,
    id: Option<String>,
}

impl From<NetConfigV3> for NetConfig {
    /// A card of an older state limits nothing, as it did.
    fn from(old: NetConfigV3) -> NetConfig {
        NetConfig { mac: old.mac, id: old.id, ..NetConfig::new(old.tap) }
    }
}

#[cfg(test)]
impl From<&NetConfig> for NetConfigV3 {
    fn from(net: &NetConfig) -> NetConfigV3 {
        NetConfigV3 { tap: net.tap.clone(), mac: net.mac, id: net.id.clone() }
    }
}

impl From<VmConfigV3> for VmConfig {
    fn from(old: VmConfigV3) -> VmConfig {
        let virtio = old
            .virtio
            .into_iter()
            .map(|device| match device {
                VirtioConfigV3::Rng => VirtioConfig::Rng,
                VirtioConfigV3::Block(disk) => VirtioConfig::Block(disk),
                VirtioConfigV3::Net(net) => VirtioConfig::Net(net.into()),
                VirtioConfigV3::Balloon(balloon) => VirtioConfig::Balloon(balloon),
                VirtioConfigV3::Vsock(vsock) => VirtioConfig::Vsock(vsock),
            })
            .collect();
        VmConfig {
            kernel: old.kernel,
            initrd: old.initrd,
            cmdline: old.cmdline,
            vcpus: old.vcpus,
            memory_bytes: old.memory_bytes,
            serial: old.serial,
            virtio,
            transport: old.transport,
            track_dirty_pages: old.track_dirty_pages,
            host: Default::default(),
        }
    }
}

/// Today's configuration in section 3's shape (the cards' rate limiters dropped), to make old
/// sections in tests.
#[cfg(test)]
pub(super) fn downgrade_v3(config: &VmConfig) -> VmConfigV3 {
    let virtio = config
        .virtio
        .iter()
        .map(|device| match device.clone() {
            VirtioConfig::Rng => VirtioConfigV3::Rng,
            VirtioConfig::Block(disk) => VirtioConfigV3::Block(disk),
            VirtioConfig::Net(net) => VirtioConfigV3::Net(NetConfigV3::from(&net)),
            VirtioConfig::Balloon(balloon) => VirtioConfigV3::Balloon(balloon),
            VirtioConfig::Vsock(vsock) => VirtioConfigV3::Vsock(vsock),
        })
        .collect();
    VmConfigV3 {
        kernel: config.kernel.clone(),
        initrd: config.initrd.clone(),
        cmdline: config.cmdline.clone(),
        vcpus: config.vcpus,
        memory_bytes: config.memory_bytes,
        serial: config.serial.clone(),
        virtio,
        transport: config.transport,
        track_dirty_pages: config.track_dirty_pages,
    }
}

/// `VmConfig` in `config` section 4: its network cards had no MMDS.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct VmConfigV4 {
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    cmdline: String,
    vcpus: u8,
    memory_bytes: u64,
    serial: SerialConfig,
    virtio: Vec<VirtioConfigV4>,
    transport: VirtioTransport,
    track_dirty_pages: bool,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
enum VirtioConfigV4 {
    Rng,
    Block(BlockConfig),
    Net(NetConfigV4),
    Balloon(BalloonConfig),
    Vsock(VsockConfig),
}

/// A network card with rate limiters, before MMDS (section 4).
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct NetConfigV4 {
    tap: Option<String>,
    mac: Option<MacAddress>,
    id: Option<String>,
    rx_rate_limiter: Option<crate::config::RateLimiterConfig>,
    tx_rate_limiter: Option<crate::config::RateLimiterConfig>,
}

impl From<VmConfigV4> for VmConfig {
    /// A card of an older state does not serve MMDS, as it did not.
    fn from(old: VmConfigV4) -> VmConfig {
        let virtio = old
            .virtio
            .into_iter()
            .map(|device| match device {
                VirtioConfigV4::Rng => VirtioConfig::Rng,
                VirtioConfigV4::Block(disk) => VirtioConfig::Block(disk),
                VirtioConfigV4::Net(net) => VirtioConfig::Net(NetConfig {
                    mac: net.mac,
                    id: net.id,
                    rx_rate_limiter: net.rx_rate_limiter,
                    tx_rate_limiter: net.tx_rate_limiter,
                    ..NetConfig::new(net.tap)
                }),
                VirtioConfigV4::Balloon(balloon) => VirtioConfig::Balloon(balloon),
                VirtioConfigV4::Vsock(vsock) => VirtioConfig::Vsock(vsock),
            })
            .collect();
        VmConfig {
            kernel: old.kernel,
            initrd: old.initrd,
            cmdline: old.cmdline,
            vcpus: old.vcpus,
            memory_bytes: old.memory_bytes,
            serial: old.serial,
            virtio,
            transport: old.transport,
            track_dirty_pages: old.track_dirty_pages,
            host: Default::default(),
        }
    }
}

/// Today's configuration in section 4's shape (the cards' MMDS dropped), to make old sections in
/// tests.
#[cfg(test)]
pub(super) fn downgrade_v4(config: &VmConfig) -> VmConfigV4 {
    let virtio = config
        .virtio
        .iter()
        .map(|device| match device.clone() {
            VirtioConfig::Rng => VirtioConfigV4::Rng,
            VirtioConfig::Block(disk) => VirtioConfigV4::Block(disk),
            VirtioConfig::Net(net) => VirtioConfigV4::Net(NetConfigV4 {
                tap: net.tap,
                mac: net.mac,
                id: net.id,
                rx_rate_limiter: net.rx_rate_limiter,
                tx_rate_limiter: net.tx_rate_limiter,
            }),
            VirtioConfig::Balloon(balloon) => VirtioConfigV4::Balloon(balloon),
            VirtioConfig::Vsock(vsock) => VirtioConfigV4::Vsock(vsock),
        })
        .collect();
    VmConfigV4 {
        kernel: config.kernel.clone(),
        initrd: config.initrd.clone(),
        cmdline: config.cmdline.clone(),
        vcpus: config.vcpus,
        memory_bytes: config.memory_bytes,
        serial: config.serial.clone(),
        virtio,
        transport: config.transport,
        track_dirty_pages: config.track_dirty_pages,
    }
}
