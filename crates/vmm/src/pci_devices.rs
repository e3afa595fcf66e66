//! PCI bus 0 and the virtio devices on it: the host bridge and both configuration mechanisms
//! (ports 0xCF8–0xCFF, ECAM), and for each device a BAR from the 32-bit PCI window, KVM MSI-X
//! vectors (a GSI route and an irqfd each) and ioeventfds on its notification addresses.
//!
//! Every VM has the bus, as every PC does, so Linux's PCI probe succeeds at once even without PCI
//! devices. Linux finds it through type-1 configuration cycles: without ACPI there is no MCFG
//! table to declare ECAM, so the ECAM window is there for ACPI guests to come.

use std::sync::{Arc, Mutex};

use devices::pci::{
    MmioAllocator, PciConfigIo, PciConfigMmio, PciRoot, CONFIG_IO_PORT, CONFIG_IO_PORT_COUNT,
};
use devices::Bus;
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use virtio::pci::{layout, NotifyBinder, PciTransport};
use virtio::GuestRam;
use vmm_sys_util::eventfd::EventFd;

use crate::config::VirtioConfig;
use crate::irqchip::{GsiRouting, KvmMsixVectors};
use crate::virtio_devices::{create_device, VirtioControls};
use crate::{Error, Result};

/// The PCI bus of a VM, ready for devices.
pub struct PciBus {
    root: Arc<Mutex<PciRoot>>,
    bar_allocator: MmioAllocator,
}

impl PciBus {
    /// Creates bus 0 with its host bridge and puts its configuration mechanisms on the buses.
    pub fn create(pio_bus: &Bus, mmio_bus: &Arc<Bus>) -> Result<PciBus> {
        let device_error =
            |e: devices::BusError| Error::Device { name: "PCI host bridge", reason: e.to_string() };
        let root = Arc::new(Mutex::new(PciRoot::new(mmio_bus)));
        pio_bus
            .insert(
                Arc::new(Mutex::new(PciConfigIo::new(root.clone()))),
                CONFIG_IO_PORT,
                CONFIG_IO_PORT_COUNT,
            )
            .map_err(device_error)?;
        mmio_bus
            .insert(
                Arc::new(Mutex::new(PciConfigMmio::new(root.clone()))),
                arch::layout::PCI_ECAM_START,
                arch::layout::PCI_ECAM_SIZE,
            )
            .map_err(device_error)?;
        let bar_allocator = MmioAllocator::new(arch::layout::PCI_MMIO_START, arch::layout::IOAPIC_START);
        Ok(PciBus { root, bar_allocator })
    }

    /// Creates every configured device and puts it on the bus behind the virtio-pci transport.
    pub fn attach_virtio(
        &mut self,
        vm: &Arc<VmFd>,
        routing: &Arc<GsiRouting>,
        memory: &GuestRam,
        configs: &[VirtioConfig],
        controls: &mut VirtioControls,
    ) -> Result<Vec<Arc<Mutex<PciTransport>>>> {
        let device_error = |reason: String| Error::Device { name: "virtio-pci", reason };
        let notify_binder: Arc<dyn NotifyBinder> = Arc::new(KvmNotifyBinder(vm.clone()));
        let mut transports = Vec::with_capacity(configs.len());
        for config in configs {
            let device = create_device(config, memory, controls)?;
            let vectors = Arc::new(KvmMsixVectors::new(
                vm,
                routing.clone(),
                PciTransport::msix_vectors(device.as_ref()),
            )?);
            let bar = self
                .bar_allocator
                .allocate(u64::from(layout::BAR_SIZE))
                .ok_or_else(|| device_error("no room left in the PCI BAR window".into()))?;
            let transport =
                PciTransport::new(device, memory.clone(), bar as u32, vectors, notify_binder.clone())
                    .map_err(|e| device_error(e.to_string()))?;
            let device_type = transport.device_type();
            let transport = Arc::new(Mutex::new(transport));
            let slot = self
                .root
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .add_device(transport.clone())
                .map_err(|e| device_error(e.to_string()))?;
            tracing::debug!("virtio-pci device {device_type} at 00:{slot:02x}.0, BAR 0 at {bar:#x}");
            transports.push(transport);
        }
        Ok(transports)
    }

    /// Maps every device's BARs where its configuration space says, after a restore.
    pub fn sync_all_bars(&self) {
        self.root.lock().unwrap_or_else(|e| e.into_inner()).sync_all_bars();
    }
}

/// Binds queue notifications as KVM ioeventfds. Each queue has its own address, so any write there
/// (Linux writes the queue index as 16 bits) signals the event: no length or datamatch.
struct KvmNotifyBinder(Arc<VmFd>);

impl NotifyBinder for KvmNotifyBinder {
    fn bind(&self, event: &EventFd, address: u64) -> std::io::Result<()> {
        self.0
            .register_ioevent(event, &IoEventAddress::Mmio(address), NoDatamatch)
            .map_err(std::io::Error::from)
    }

    fn unbind(&self, event: &EventFd, address: u64) -> std::io::Result<()> {
        self.0
            .unregister_ioevent(event, &IoEventAddress::Mmio(address), NoDatamatch)
            .map_err(std::io::Error::from)
    }
}
