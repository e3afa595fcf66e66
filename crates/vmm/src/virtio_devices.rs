//! Virtio devices on the MMIO transport: where each one sits, how the guest learns of it, and its
//! KVM plumbing (an ioeventfd per queue, an irqfd for its interrupt pin).

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use devices::Bus;
use kvm_ioctls::{IoEventAddress, VmFd};
use storage::open::ImageLock;
use virtio::balloon::{Balloon, BalloonControl, BalloonSettings};
use virtio::block::BlockControl;
use virtio::mmio::{MmioTransport, QUEUE_NOTIFY_OFFSET};
use virtio::net::{Net, NetControl, NetLimiters, Tap};
use virtio::rng::Rng;
use virtio::vsock::Vsock;
use virtio::GuestRam;
use virtio::VirtioDevice;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::config::{BalloonConfig, BlockConfig, NetConfig, VirtioConfig};
use crate::irqchip::KvmMsiSink;
use crate::metrics::DeviceMetrics;
use crate::{kvm_err, Error, Result};

/// The IOAPIC pins virtio-mmio devices get, in order: ISA lines no emulated device uses. Not 8,
/// which Linux's rtc-cmos claims without sharing, and not 13 (the legacy FPU error line); not
/// 16-23, which a guest that learns its interrupts from the MP table cannot route to a platform
/// device. More devices than this need the PCI transport.
const DEVICE_IRQS: [u32; 10] = [5, 6, 7, 9, 10, 11, 12, 14, 15, 3];

/// Where one virtio-mmio device sits: its register window and its IOAPIC pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioSlot {
    pub base: u64,
    pub irq: u32,
}

/// Assigns windows and pins to `count` devices, in order, from window `first_window` on (the
/// windows before it hold another device: the boot timer).
pub fn mmio_slots(count: usize, first_window: usize) -> Result<Vec<MmioSlot>> {
    if count > DEVICE_IRQS.len() {
        return Err(Error::TooManyDevices { requested: count, max: DEVICE_IRQS.len() });
    }
    Ok((0..count)
        .map(|index| MmioSlot {
            base: arch::layout::VIRTIO_MMIO_START
                + (first_window + index) as u64 * arch::layout::VIRTIO_MMIO_WINDOW,
            irq: DEVICE_IRQS[index],
        })
        .collect())
}

/// The kernel command-line words that tell Linux where the devices are.
pub fn mmio_cmdline(slots: &[MmioSlot]) -> String {
    slots
        .iter()
        .map(|slot| format!("virtio_mmio.device=4K@{:#x}:{}", slot.base, slot.irq))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Host-side handles on devices the VMM drives while the guest runs.
#[derive(Default)]
pub struct VirtioControls {
    /// The balloon's target and reports (there is at most one balloon).
    pub balloon: Option<BalloonControl>,
    /// Each disk's backing file, in the order of the configuration's disks.
    pub disks: Vec<BlockControl>,
    /// Each disk's image lock, in the same order (a disk given its own image again keeps it).
    pub disk_locks: Vec<ImageLock>,
    /// Each network card's rate limiters, in the order of the configuration's cards.
    pub nets: Vec<NetControl>,
    /// What each device counts.
    pub metrics: DeviceMetrics,
}

/// Creates the device a configuration entry describes; devices with a host-side handle leave it
/// in `controls`.
pub(crate) fn create_device(
    config: &VirtioConfig,
    memory: &GuestRam,
    controls: &mut VirtioControls,
) -> Result<Box<dyn VirtioDevice>> {
    Ok(match config {
        VirtioConfig::Rng => {
            let rng = Rng::new();
            controls.metrics.add_entropy(rng.metrics());
            Box::new(rng)
        }
        VirtioConfig::Block(disk) => {
            let (block, lock) = crate::disks::open_block(disk)
                .map_err(|source| Error::Disk { path: disk.path.clone(), source })?;
            controls.metrics.add_block(&disk_key(disk), block.metrics());
            controls.disks.push(block.control());
            controls.disk_locks.push(lock);
            Box::new(block)
        }
        VirtioConfig::Net(config) => {
            let (net, tap_name) = create_net(config)?;
            controls.metrics.add_net(config.id.as_deref().unwrap_or(&tap_name), net.metrics());
            controls.nets.push(net.control());
            Box::new(net)
        }
        VirtioConfig::Balloon(balloon) => {
            let balloon = create_balloon(balloon, memory)?;
            controls.balloon = Some(balloon.control());
            controls.metrics.add_balloon(balloon.metrics());
            Box::new(balloon)
        }
        VirtioConfig::Vsock(vsock) => {
            let vsock = Vsock::new(vsock.cid, &vsock.uds_path).map_err(Error::Vsock)?;
            controls.metrics.add_vsock(vsock.metrics());
            Box::new(vsock)
        }
    })
}

/// A disk's name in the metrics: its ID (the API's drive ID), else its file's name.
fn disk_key(disk: &BlockConfig) -> String {
    disk.id.clone().unwrap_or_else(|| {
        let name = disk.path.file_name().unwrap_or(disk.path.as_os_str());
        name.to_string_lossy().into_owned()
    })
}

fn create_balloon(config: &BalloonConfig, memory: &GuestRam) -> Result<Balloon> {
    let settings = BalloonSettings {
        target_mib: config.target_mib,
        stats_interval: config.stats_interval,
        free_page_reporting: config.free_page_reporting,
        deflate_on_oom: config.deflate_on_oom,
    };
    let ram_bytes = memory.iter().map(GuestMemoryRegion::len).sum();
    Balloon::new(&settings, ram_bytes).map_err(Error::Balloon)
}

/// Opens the card's tap and gives the card its address (a random one unless the user chose);
/// returns the card and the tap's name.
fn create_net(config: &NetConfig) -> Result<(Net, String)> {
    let limit = |limiter: &Option<crate::config::RateLimiterConfig>| {
        limiter.as_ref().map(crate::disks::rate_limit).unwrap_or_default()
    };
    let limiters = NetLimiters::new(limit(&config.rx_rate_limiter), limit(&config.tx_rate_limiter))
        .map_err(Error::NetRateLimiter)?;
    let tap = Tap::open(config.tap.as_deref()).map_err(|source| Error::Tap {
        tap: config.tap.clone().unwrap_or_else(|| "kestrelN (automatic name)".to_owned()),
        source,
    })?;
    let mac = match config.mac {
        Some(mac) => mac,
        None => virtio::net::random_local_mac().map_err(Error::RandomMac)?,
    };
    // The user needs the name to configure the host side of an automatic tap.
    tracing::info!("virtio-net: tap {}, MAC {mac}", tap.name());
    let tap_name = tap.name().to_owned();
    let mut net = Net::new(tap, mac, limiters);
    if let Some(mmds) = &config.mmds {
        tracing::info!("virtio-net: {tap_name} answers for MMDS at {}", mmds.address);
        net.set_mmds(mmds.clone());
    }
    Ok((net, tap_name))
}

/// Creates every configured device and attaches it to the MMIO bus at its slot.
pub fn attach_all(
    vm: &VmFd,
    mmio_bus: &Bus,
    msi_sink: &KvmMsiSink,
    memory: &GuestRam,
    configs: &[VirtioConfig],
    slots: &[MmioSlot],
    controls: &mut VirtioControls,
) -> Result<Vec<Arc<Mutex<MmioTransport>>>> {
    configs
        .iter()
        .zip(slots)
        .map(|(config, slot)| {
            attach(vm, mmio_bus, msi_sink, memory, create_device(config, memory, controls)?, *slot)
        })
        .collect()
}

fn attach(
    vm: &VmFd,
    mmio_bus: &Bus,
    msi_sink: &KvmMsiSink,
    memory: &GuestRam,
    device: Box<dyn VirtioDevice>,
    slot: MmioSlot,
) -> Result<Arc<Mutex<MmioTransport>>> {
    let device_error = |reason: String| Error::Device { name: "virtio-mmio", reason };
    let transport = MmioTransport::new(device, memory.clone()).map_err(|e| device_error(e.to_string()))?;
    for (index, event) in transport.queue_events().iter().enumerate() {
        let address = IoEventAddress::Mmio(slot.base + QUEUE_NOTIFY_OFFSET);
        vm.register_ioevent(event, &address, index as u32).map_err(kvm_err("KVM_IOEVENTFD"))?;
    }
    vm.register_irqfd(transport.interrupt_event(), slot.irq).map_err(kvm_err("KVM_IRQFD"))?;
    let interrupt = transport.interrupt();
    msi_sink.on_unmask(slot.irq as usize, Box::new(move || interrupt.resend_if_pending()));
    tracing::debug!(
        "virtio-mmio device {} at {:#x}, IRQ {} (irqfd {})",
        transport.device_type(),
        slot.base,
        slot.irq,
        transport.interrupt_event().as_raw_fd()
    );
    let transport = Arc::new(Mutex::new(transport));
    mmio_bus
        .insert(transport.clone(), slot.base, arch::layout::VIRTIO_MMIO_WINDOW)
        .map_err(|e| device_error(e.to_string()))?;
    Ok(transport)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_each_other_and_run_out_with_the_pins() {
        let slots = mmio_slots(2, 0).unwrap();
        assert_eq!(slots, [MmioSlot { base: 0xC000_0000, irq: 5 }, MmioSlot { base: 0xC000_1000, irq: 6 }]);
        assert_eq!(
            mmio_cmdline(&slots),
            "virtio_mmio.device=4K@0xc0000000:5 virtio_mmio.device=4K@0xc0001000:6"
        );
        let shifted = mmio_slots(2, 1).unwrap();
        assert_eq!(shifted[0].base, slots[1].base, "after the boot timer's window");
        assert_eq!(shifted[0].irq, slots[0].irq);
        let irqs: Vec<u32> = mmio_slots(10, 0).unwrap().iter().map(|s| s.irq).collect();
        assert!(!irqs.contains(&8) && irqs.iter().all(|&irq| irq < 16 && irq != 4), "{irqs:?}");
        assert!(matches!(mmio_slots(11, 0), Err(Error::TooManyDevices { requested: 11, max: 10 })));
        assert_eq!(mmio_cmdline(&[]), "");
    }
}
