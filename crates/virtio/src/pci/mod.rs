//! The virtio-pci transport, modern interface only (virtio 1.2, section 4.1): a PCI function with
//! vendor 0x1AF4, device 0x1040 + the device type, revision 1, whose structures all sit in BAR 0
//! (see [`layout`]) and which interrupts through MSI-X.
//!
//! Subsystem vendor and device repeat the vendor and device IDs. The class code follows the device
//! (network controller, SCSI-class storage like QEMU's virtio-blk, "other" for the rest). There is
//! no INTx pin: Linux uses MSI-X, and a queue whose vector is `NO_VECTOR` just never interrupts.
//! There is no legacy interface and no `VIRTIO_PCI_CAP_PCI_CFG` window.

mod common_config;
mod interrupt;
pub mod layout;
#[cfg(test)]
mod tests;

use std::io;
use std::sync::{Arc, Mutex};

use crate::GuestRam;
use devices::pci::msix::{Msix, MsixDelivery, MsixSnapshot};
use devices::pci::{ConfigSpace, PciDevice, PciError, PciIds};
use vmm_sys_util::eventfd::EventFd;

use crate::device::{device_type, GuestErrorLog, VirtioDevice};
use crate::snapshot::{RestoreError, SnapshotTransport, VirtioSnapshot};
use crate::transport::{TransportSnapshot, TransportState};
use interrupt::PciInterrupt;
pub use interrupt::NO_VECTOR;
use layout::{BAR_INDEX, DEVICE_CONFIG, ISR, MSIX_PBA, MSIX_TABLE, NOTIFY, NOTIFY_OFF_MULTIPLIER};

/// The guest places BAR 0, and with it the notification addresses KVM may refuse (one already
/// taken): once per queue per BAR move, so limited.
static NOTIFY_BIND_ERRORS: GuestErrorLog = GuestErrorLog::site("virtio-pci notification bindings");

const VIRTIO_VENDOR_ID: u16 = 0x1af4;
/// Modern devices are 0x1040 + their virtio device type.
const MODERN_DEVICE_ID_BASE: u16 = 0x1040;
/// MSI-X message control: enable and function mask (PCI 3.0, 6.8.2.3).
const MSIX_CONTROL_ENABLE: u16 = 1 << 15;
const MSIX_CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Device types a modern PCI device ID can express (0x1040–0x107F).
const MAX_DEVICE_TYPE: u32 = 0x3f;

/// Binds a queue's notification event to a guest-physical address. The VMM registers it as a KVM
/// ioeventfd, so the driver's write wakes the device's worker without an exit to userspace.
pub trait NotifyBinder: Send + Sync {
    fn bind(&self, event: &EventFd, address: u64) -> io::Result<()>;
    fn unbind(&self, event: &EventFd, address: u64) -> io::Result<()>;
}

/// Why a device cannot be put behind the PCI transport.
#[derive(Debug, thiserror::Error)]
pub enum PciTransportError {
    #[error("virtio device type {0} has no modern PCI device ID")]
    DeviceType(u32),
    #[error("{0} queues are more than the transport's {max}", max = layout::MAX_QUEUES)]
    TooManyQueues(usize),
    #[error("cannot build the configuration space: {0}")]
    Config(#[from] PciError),
    #[error("cannot create the queue events: {0}")]
    Io(#[from] io::Error),
}

/// A virtio-pci device as a snapshot keeps it: the transport and queues, the configuration space
/// (BAR addresses, command register, capabilities' writable parts), the MSI-X table and the
/// vectors the driver chose.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PciSnapshot {
    pub(crate) transport: TransportSnapshot,
    pub(crate) config_space: Vec<u8>,
    pub(crate) msix: MsixSnapshot,
    pub(crate) config_vector: u16,
    pub(crate) queue_vectors: Vec<u16>,
    pub(crate) isr: u8,
}

/// One virtio device behind virtio-pci.
pub struct PciTransport {
    state: TransportState,
    config: ConfigSpace,
    interrupt: Arc<PciInterrupt>,
    /// Offset of the MSI-X capability in configuration space.
    msix_capability: usize,
    notify_binder: Arc<dyn NotifyBinder>,
    /// BAR 0's address while the queue events are bound to its notification addresses.
    bound_at: Option<u64>,
}

impl PciTransport {
    /// How many MSI-X vectors a device gets: one per queue and one for configuration changes.
    pub fn msix_vectors(device: &dyn VirtioDevice) -> u16 {
        let wanted = device.queue_max_sizes().len().saturating_add(1);
        u16::try_from(wanted).unwrap_or(u16::MAX).min(layout::MAX_MSIX_VECTORS)
    }

    /// Puts `device` behind the transport with BAR 0 at `bar_address` (decoding off until the
    /// guest enables it). `msix_delivery` must serve [`PciTransport::msix_vectors`] vectors.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        memory: GuestRam,
        bar_address: u32,
        msix_delivery: Arc<dyn MsixDelivery>,
        notify_binder: Arc<dyn NotifyBinder>,
    ) -> Result<PciTransport, PciTransportError> {
        let device_type = device.device_type();
        if device_type > MAX_DEVICE_TYPE {
            return Err(PciTransportError::DeviceType(device_type));
        }
        let queues = device.queue_max_sizes().len();
        if queues > layout::MAX_QUEUES {
            return Err(PciTransportError::TooManyQueues(queues));
        }
        let msix =
            Arc::new(Mutex::new(Msix::new(PciTransport::msix_vectors(device.as_ref()), msix_delivery)));
        let interrupt = Arc::new(PciInterrupt::new(msix, queues));
        let mut config = ConfigSpace::new(ids(device_type));
        let msix_capability = layout::add_capabilities(&mut config, &interrupt.msix())?;
        config.set_bar_address(BAR_INDEX, bar_address);
        let state = TransportState::new("virtio-pci", device, memory, interrupt.clone())?;
        Ok(PciTransport { state, config, interrupt, msix_capability, notify_binder, bound_at: None })
    }

    /// The device's virtio ID.
    pub fn device_type(&self) -> u32 {
        self.state.device().device_type()
    }

    /// Moves the queue events' ioeventfds to BAR 0's new place (or removes them).
    fn rebind_notifications(&mut self, bar_address: Option<u64>) {
        if bar_address == self.bound_at {
            return;
        }
        let notify_address = |base: u64, queue: usize| base + NOTIFY + queue as u64 * NOTIFY_OFF_MULTIPLIER;
        for (queue, event) in self.state.queue_events().iter().enumerate() {
            if let Some(old) = self.bound_at {
                if let Err(e) = self.notify_binder.unbind(event, notify_address(old, queue)) {
                    NOTIFY_BIND_ERRORS
                        .log(format_args!("virtio-pci: cannot unbind queue {queue}'s notification: {e}"));
                }
            }
            if let Some(new) = bar_address {
                // Without the binding, notifications still arrive through write_bar.
                if let Err(e) = self.notify_binder.bind(event, notify_address(new, queue)) {
                    NOTIFY_BIND_ERRORS
                        .log(format_args!("virtio-pci: cannot bind queue {queue}'s notification: {e}"));
                }
            }
        }
        self.bound_at = bar_address;
    }
}

/// The header identity of a device type.
fn ids(device_type: u32) -> PciIds {
    let device_id = MODERN_DEVICE_ID_BASE + device_type as u16;
    let class_code = match device_type {
        device_type::NET => 0x02_0000,   // network controller, Ethernet
        device_type::BLOCK => 0x01_0000, // mass storage, SCSI
        _ => 0xff_0000,                  // no class defined
    };
    PciIds {
        vendor_id: VIRTIO_VENDOR_ID,
        device_id,
        revision_id: 1,
        class_code,
        subsystem_vendor_id: VIRTIO_VENDOR_ID,
        subsystem_id: device_id,
    }
}

/// The structures of BAR 0, by the offset they start at.
enum Region {
    Common,
    Isr,
    DeviceConfig,
    Notify,
    MsixTable,
    MsixPba,
}

/// The structure `offset` (within BAR 0) falls in, and the offset within it.
fn region(offset: u64) -> Option<(Region, u64)> {
    let (region, base) = match offset {
        o if o < ISR => (Region::Common, 0),
        o if o < DEVICE_CONFIG => (Region::Isr, ISR),
        o if o < NOTIFY => (Region::DeviceConfig, DEVICE_CONFIG),
        o if o < MSIX_TABLE => (Region::Notify, NOTIFY),
        o if o < MSIX_PBA => (Region::MsixTable, MSIX_TABLE),
        o if o < u64::from(layout::BAR_SIZE) => (Region::MsixPba, MSIX_PBA),
        _ => return None,
    };
    Some((region, offset - base))
}

impl SnapshotTransport for PciTransport {
    fn hold(&mut self) -> io::Result<VirtioSnapshot> {
        let transport = self.state.hold()?;
        let (config_vector, queue_vectors, isr) = self.interrupt.snapshot();
        Ok(VirtioSnapshot::Pci(PciSnapshot {
            transport,
            config_space: self.config.snapshot(),
            msix: self.interrupt.msix().snapshot(),
            config_vector,
            queue_vectors,
            isr,
        }))
    }

    fn release(&mut self) {
        self.state.release();
    }

    /// The BARs move to their saved addresses when the VMM has the PCI root sync them after this.
    /// The MSI-X enable and function-mask bits must agree with the saved capability's message
    /// control register, which is where the guest wrote them.
    fn restore(&mut self, saved: &VirtioSnapshot) -> Result<(), RestoreError> {
        let VirtioSnapshot::Pci(saved) = saved else {
            return Err(RestoreError::Transport { saved: "virtio-mmio", expected: "virtio-pci" });
        };
        let device = device_type::name(self.device_type());
        let invalid = |source| RestoreError::Value { device: device.clone(), source };
        self.config.restore(&saved.config_space).map_err(invalid)?;
        self.interrupt.msix().restore(&saved.msix).map_err(invalid)?;
        let control = self.config.u16_at(self.msix_capability + 2);
        let msix = self.interrupt.msix();
        let expected = (msix.enabled(), msix.function_masked());
        drop(msix);
        if (control & MSIX_CONTROL_ENABLE != 0, control & MSIX_CONTROL_FUNCTION_MASK != 0) != expected {
            return Err(invalid(devices::RestoreError::value(
                "MSI-X",
                "message control",
                control,
                "disagrees with the saved enable and function-mask bits",
            )));
        }
        self.interrupt.restore(saved.config_vector, &saved.queue_vectors, saved.isr).map_err(invalid)?;
        self.state.restore(&saved.transport)
    }
}

impl PciDevice for PciTransport {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        let control = self.msix_capability + 2;
        let written = offset..offset.saturating_add(data.len());
        if written.start < control + 2 && control < written.end {
            let value = self.config.u16_at(control);
            self.interrupt.msix().set_control(value);
        }
    }

    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some((region, at)) = region(offset).filter(|_| bar == BAR_INDEX) else { return };
        match region {
            Region::Common => self.read_common(at, data),
            Region::Isr if at == 0 => {
                if let Some(first) = data.first_mut() {
                    *first = self.interrupt.take_isr();
                }
            }
            Region::Isr | Region::Notify => {}
            Region::DeviceConfig => self.state.device().read_config(at, data),
            Region::MsixTable => self.interrupt.msix().read_table(at, data),
            Region::MsixPba => self.interrupt.msix().read_pba(at, data),
        }
    }

    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        let Some((region, at)) = region(offset).filter(|_| bar == BAR_INDEX) else { return };
        match region {
            Region::Common => self.write_common(at, data),
            Region::DeviceConfig => self.state.device_mut().write_config(at, data),
            Region::Notify if at % NOTIFY_OFF_MULTIPLIER == 0 => {
                self.state.notify((at / NOTIFY_OFF_MULTIPLIER) as u32);
            }
            Region::MsixTable => self.interrupt.msix().write_table(at, data),
            Region::Isr | Region::Notify | Region::MsixPba => {}
        }
    }

    fn bar_moved(&mut self, bar: usize, address: Option<u64>) {
        if bar == BAR_INDEX {
            self.rebind_notifications(address);
        }
    }
}
