//! Virtio devices on the MMIO transport: where each one sits, how the guest learns of it, and its
//! KVM plumbing (an ioeventfd per queue, an irqfd for its interrupt pin).

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use devices::Bus;
use kvm_ioctls::{IoEventAddress, VmFd};
use virtio::mmio::{MmioTransport, QUEUE_NOTIFY_OFFSET};
use virtio::rng::Rng;
use virtio::VirtioDevice;
use vm_memory::GuestMemoryMmap;

use crate::config::VirtioConfig;
use crate::{kvm_err, Error, Result};

/// IOAPIC pins a device may use: from the first free one to the last of the 24.
const LAST_IRQ: u32 = 23;

/// Where one virtio-mmio device sits: its register window and its IOAPIC pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioSlot {
    pub base: u64,
    pub irq: u32,
}

/// Assigns windows and pins to `count` devices, in order.
pub fn mmio_slots(count: usize) -> Result<Vec<MmioSlot>> {
    let available = (LAST_IRQ - arch::layout::FIRST_DEVICE_IRQ + 1) as usize;
    if count > available {
        return Err(Error::TooManyDevices { requested: count, max: available });
    }
    Ok((0..count)
        .map(|index| MmioSlot {
            base: arch::layout::VIRTIO_MMIO_START + index as u64 * arch::layout::VIRTIO_MMIO_WINDOW,
            irq: arch::layout::FIRST_DEVICE_IRQ + index as u32,
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

/// Creates the device a configuration entry describes.
fn create_device(config: &VirtioConfig) -> Box<dyn VirtioDevice> {
    match config {
        VirtioConfig::Rng => Box::new(Rng::new()),
    }
}

/// Creates every configured device and attaches it to the MMIO bus at its slot.
pub fn attach_all(
    vm: &VmFd,
    mmio_bus: &Bus,
    memory: &GuestMemoryMmap,
    configs: &[VirtioConfig],
    slots: &[MmioSlot],
) -> Result<Vec<Arc<Mutex<MmioTransport>>>> {
    configs
        .iter()
        .zip(slots)
        .map(|(config, slot)| attach(vm, mmio_bus, memory, create_device(config), *slot))
        .collect()
}

fn attach(
    vm: &VmFd,
    mmio_bus: &Bus,
    memory: &GuestMemoryMmap,
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
        let slots = mmio_slots(2).unwrap();
        assert_eq!(slots, [MmioSlot { base: 0xC000_0000, irq: 5 }, MmioSlot { base: 0xC000_1000, irq: 6 }]);
        assert_eq!(
            mmio_cmdline(&slots),
            "virtio_mmio.device=4K@0xc0000000:5 virtio_mmio.device=4K@0xc0001000:6"
        );
        assert_eq!(mmio_slots(19).unwrap().last().unwrap().irq, 23);
        assert!(matches!(mmio_slots(20), Err(Error::TooManyDevices { requested: 20, max: 19 })));
        assert_eq!(mmio_cmdline(&[]), "");
    }
}
