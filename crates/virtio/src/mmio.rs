//! The virtio-mmio transport (virtio 1.2 section 4.2, register layout version 2): one 4 KiB
//! window per device, declared to the guest on the kernel command line
//! (`virtio_mmio.device=4K@<base>:<irq>`), notifications through an ioeventfd on QueueNotify and
//! interrupts through an irqfd on an IOAPIC pin.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::GuestRam;
use devices::BusDevice;
use serde::{Deserialize, Serialize};
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device::{device_type, Interrupt, InterruptCause, VirtioDevice};
use crate::snapshot::{RestoreError, SnapshotTransport, VirtioSnapshot};
use crate::transport::{Ring, TransportSnapshot, TransportState};

/// Size of each device's register window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of QueueNotify, where the VMM binds each queue's ioeventfd (datamatch = queue index).
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = u32::from_le_bytes(*b"KSTL");

// Register offsets.
const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = QUEUE_NOTIFY_OFFSET;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;

// Interrupt status bits.
const INTERRUPT_USED_BUFFER: u32 = 1;
const INTERRUPT_CONFIG_CHANGE: u32 = 2;

/// The MMIO transport's interrupt: a status register the driver reads and acknowledges, and a
/// line (an eventfd the VMM binds to an IOAPIC pin with KVM_IRQFD).
pub struct MmioInterrupt {
    status: AtomicU32,
    line: EventFd,
}

impl Interrupt for MmioInterrupt {
    fn trigger(&self, cause: InterruptCause) -> io::Result<()> {
        let bit = match cause {
            InterruptCause::Queue(_) => INTERRUPT_USED_BUFFER,
            InterruptCause::Config => INTERRUPT_CONFIG_CHANGE,
        };
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.line.write(1)
    }
}

impl MmioInterrupt {
    /// Raises the line again if the driver has not acknowledged every cause yet. KVM drops an
    /// irqfd signal while the guest has the IOAPIC pin masked; the VMM calls this when the pin is
    /// unmasked, so an interrupt raised in between is not lost.
    pub fn resend_if_pending(&self) -> io::Result<()> {
        if self.status.load(Ordering::SeqCst) != 0 {
            self.line.write(1)?;
        }
        Ok(())
    }
}

/// A virtio-mmio device as a snapshot keeps it: the transport, the device's queues, and the
/// interrupt causes the driver has not acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioSnapshot {
    pub(crate) transport: TransportSnapshot,
    pub(crate) interrupt_status: u32,
}

/// One virtio device behind virtio-mmio registers.
pub struct MmioTransport {
    state: TransportState,
    interrupt: Arc<MmioInterrupt>,
}

impl MmioTransport {
    pub fn new(device: Box<dyn VirtioDevice>, memory: GuestRam) -> io::Result<MmioTransport> {
        let interrupt =
            Arc::new(MmioInterrupt { status: AtomicU32::new(0), line: EventFd::new(EFD_NONBLOCK)? });
        let state = TransportState::new("virtio-mmio", device, memory, interrupt.clone())?;
        Ok(MmioTransport { state, interrupt })
    }

    /// One event per queue, for the VMM to bind as ioeventfds on QueueNotify.
    pub fn queue_events(&self) -> &[EventFd] {
        self.state.queue_events()
    }

    /// The interrupt line, for the VMM to bind as an irqfd.
    pub fn interrupt_event(&self) -> &EventFd {
        &self.interrupt.line
    }

    /// The interrupt itself, for the VMM to resend it when the guest unmasks the pin.
    pub fn interrupt(&self) -> Arc<MmioInterrupt> {
        self.interrupt.clone()
    }

    /// The device's virtio ID.
    pub fn device_type(&self) -> u32 {
        self.state.device().device_type()
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.state.selected_queue();
        match offset {
            REG_MAGIC => MAGIC_VALUE,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => self.state.device_features_word(),
            REG_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status.load(Ordering::SeqCst),
            REG_STATUS => self.state.status(),
            // Bumped by every configuration-change interrupt (see `CountingInterrupt`).
            REG_CONFIG_GENERATION => self.state.config_generation(),
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        let state = &mut self.state;
        match offset {
            REG_DEVICE_FEATURES_SEL => state.device_features_select = value,
            REG_DRIVER_FEATURES_SEL => state.driver_features_select = value,
            REG_DRIVER_FEATURES => state.set_driver_features_word(value),
            REG_QUEUE_SEL => state.queue_select = value,
            // A size that does not fit 16 bits is invalid: 0 makes activation refuse the queue.
            REG_QUEUE_NUM => state.set_selected_queue_size(u16::try_from(value).unwrap_or(0)),
            REG_QUEUE_READY => state.with_selected_queue(|q| q.set_ready(value == 1)),
            REG_QUEUE_DESC_LOW => state.set_selected_queue_ring(Ring::Descriptors, Some(value), None),
            REG_QUEUE_DESC_HIGH => state.set_selected_queue_ring(Ring::Descriptors, None, Some(value)),
            REG_QUEUE_DRIVER_LOW => state.set_selected_queue_ring(Ring::Driver, Some(value), None),
            REG_QUEUE_DRIVER_HIGH => state.set_selected_queue_ring(Ring::Driver, None, Some(value)),
            REG_QUEUE_DEVICE_LOW => state.set_selected_queue_ring(Ring::Device, Some(value), None),
            REG_QUEUE_DEVICE_HIGH => state.set_selected_queue_ring(Ring::Device, None, Some(value)),
            REG_QUEUE_NOTIFY => state.notify(value),
            REG_INTERRUPT_ACK => {
                self.interrupt.status.fetch_and(!value, Ordering::SeqCst);
            }
            REG_STATUS => {
                if state.set_status(value) {
                    self.interrupt.status.store(0, Ordering::SeqCst);
                }
            }
            _ => tracing::debug!("virtio-mmio: write to read-only or unknown register {offset:#x}"),
        }
    }
}

impl SnapshotTransport for MmioTransport {
    fn hold(&mut self) -> io::Result<VirtioSnapshot> {
        let transport = self.state.hold()?;
        let interrupt_status = self.interrupt.status.load(Ordering::SeqCst);
        Ok(VirtioSnapshot::Mmio(MmioSnapshot { transport, interrupt_status }))
    }

    fn release(&mut self) {
        self.state.release();
    }

    /// Pending interrupt causes (used buffer, configuration change: no other bits) are raised
    /// again when the guest's IOAPIC pin is restored (the VMM's unmask hook resends them).
    fn restore(&mut self, saved: &VirtioSnapshot) -> Result<(), RestoreError> {
        let VirtioSnapshot::Mmio(saved) = saved else {
            return Err(RestoreError::Transport { saved: "virtio-pci", expected: "virtio-mmio" });
        };
        if saved.interrupt_status & !(INTERRUPT_USED_BUFFER | INTERRUPT_CONFIG_CHANGE) != 0 {
            return Err(RestoreError::Value {
                device: device_type::name(self.device_type()),
                source: devices::RestoreError::value(
                    "virtio-mmio",
                    "interrupt status",
                    saved.interrupt_status,
                    "has bits other than used buffer and configuration change",
                ),
            });
        }
        // First: a device that starts again may raise causes of its own (vsock's transport reset),
        // which must not be overwritten.
        self.interrupt.status.store(saved.interrupt_status, Ordering::SeqCst);
        self.state.restore(&saved.transport)
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.state.device().read_config(offset - CONFIG_SPACE, data);
        } else if data.len() == 4 {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        } else {
            // Registers are 32 bits wide; other accesses are invalid (virtio 1.2, 4.2.2.2).
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.state.device_mut().write_config(offset - CONFIG_SPACE, data);
        } else if let Ok(bytes) = <[u8; 4]>::try_from(data) {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
#[path = "mmio_restore_tests.rs"]
mod restore_tests;

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    use super::*;
    use crate::rng::Rng;
    use crate::transport::{STATUS_DEVICE_NEEDS_RESET, STATUS_FEATURES_OK};

    pub(super) fn memory() -> GuestRam {
        GuestRam::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    pub(super) fn read(transport: &mut MmioTransport, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        transport.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    pub(super) fn write(transport: &mut MmioTransport, offset: u64, value: u32) {
        transport.write(offset, &value.to_le_bytes());
    }

    /// Waits (bounded) for the interrupt line, as the guest would for its IRQ.
    pub(super) fn wait_for_interrupt(transport: &MmioTransport) {
        let mut poll =
            libc::pollfd { fd: transport.interrupt_event().as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, and its count.
        let ready = unsafe { libc::poll(&mut poll, 1, 10_000) };
        assert_eq!(ready, 1, "no interrupt within 10 s");
        transport.interrupt_event().read().unwrap();
    }

    /// Brings the device up the way Linux's virtio_mmio driver does.
    pub(super) fn driver_init(
        transport: &mut MmioTransport,
        mock: &MockSplitQueue<GuestRam>,
        features_high: u32,
    ) -> u32 {
        write(transport, REG_STATUS, 1);
        write(transport, REG_STATUS, 1 | 2);
        write(transport, REG_DEVICE_FEATURES_SEL, 1);
        let offered_high = read(transport, REG_DEVICE_FEATURES);
        write(transport, REG_DRIVER_FEATURES_SEL, 1);
        write(transport, REG_DRIVER_FEATURES, features_high);
        write(transport, REG_STATUS, 1 | 2 | 8);
        if read(transport, REG_STATUS) & 8 == 0 {
            return offered_high;
        }
        write(transport, REG_QUEUE_SEL, 0);
        assert_eq!(read(transport, REG_QUEUE_NUM_MAX), 256);
        write(transport, REG_QUEUE_NUM, 16);
        let split = |a: GuestAddress| (a.0 as u32, (a.0 >> 32) as u32);
        let (desc, avail, used) =
            (split(mock.desc_table_addr()), split(mock.avail_addr()), split(mock.used_addr()));
        write(transport, REG_QUEUE_DESC_LOW, desc.0);
        write(transport, REG_QUEUE_DESC_HIGH, desc.1);
        write(transport, REG_QUEUE_DRIVER_LOW, avail.0);
        write(transport, REG_QUEUE_DRIVER_HIGH, avail.1);
        write(transport, REG_QUEUE_DEVICE_LOW, used.0);
        write(transport, REG_QUEUE_DEVICE_HIGH, used.1);
        write(transport, REG_QUEUE_READY, 1);
        write(transport, REG_STATUS, 1 | 2 | 8 | 4);
        offered_high
    }

    #[test]
    fn a_pending_interrupt_is_resent_and_an_acknowledged_one_is_not() {
        let transport = MmioTransport::new(Box::new(Rng::new()), memory()).unwrap();
        let interrupt = transport.interrupt();
        interrupt.resend_if_pending().unwrap();
        assert!(transport.interrupt_event().read().is_err(), "nothing pending, nothing sent");
        interrupt.trigger(InterruptCause::Queue(0)).unwrap();
        transport.interrupt_event().read().unwrap();
        interrupt.resend_if_pending().unwrap();
        assert_eq!(transport.interrupt_event().read().unwrap(), 1, "still pending: sent again");
    }

    #[test]
    fn identifies_itself() {
        let mut transport = MmioTransport::new(Box::new(Rng::new()), memory()).unwrap();
        assert_eq!(read(&mut transport, REG_MAGIC), 0x7472_6976);
        assert_eq!(read(&mut transport, REG_VERSION), 2);
        assert_eq!(read(&mut transport, REG_DEVICE_ID), 4);
        let mut narrow = [0xffu8; 2];
        transport.read(REG_MAGIC, &mut narrow);
        assert_eq!(narrow, [0, 0], "registers answer 32-bit accesses only");
    }

    #[test]
    fn rng_serves_a_request_end_to_end() {
        let memory = memory();
        let mock = MockSplitQueue::create(&memory, GuestAddress(0x1000), 16);
        let mut transport = MmioTransport::new(Box::new(Rng::new()), memory.clone()).unwrap();
        let offered_high = driver_init(&mut transport, &mock, 1);
        assert_eq!(offered_high & 1, 1, "VIRTIO_F_VERSION_1 offered");
        assert_eq!(read(&mut transport, REG_STATUS), 1 | 2 | 8 | 4);

        let buffer = RawDescriptor::from(Descriptor::new(0x8000, 32, 2, 0));
        mock.add_desc_chains(&[buffer], 0).unwrap();
        write(&mut transport, REG_QUEUE_NOTIFY, 0);
        wait_for_interrupt(&transport);
        assert_eq!(read(&mut transport, REG_INTERRUPT_STATUS), INTERRUPT_USED_BUFFER);
        write(&mut transport, REG_INTERRUPT_ACK, INTERRUPT_USED_BUFFER);
        assert_eq!(read(&mut transport, REG_INTERRUPT_STATUS), 0);
        let used_len: u32 = memory.read_obj(mock.used_addr().unchecked_add(8)).unwrap();
        assert_eq!(used_len, 32);
        let mut bytes = [0u8; 32];
        memory.read_slice(&mut bytes, GuestAddress(0x8000)).unwrap();
        assert_ne!(bytes, [0u8; 32]);

        write(&mut transport, REG_STATUS, 0);
        assert_eq!(read(&mut transport, REG_STATUS), 0, "reset");
        assert_eq!(read(&mut transport, REG_QUEUE_READY), 0);
    }

    /// The used ring's index of `mock`'s queue.
    pub(super) fn used_index(memory: &GuestRam, mock: &MockSplitQueue<GuestRam>) -> u16 {
        memory.read_obj(mock.used_addr().unchecked_add(2)).unwrap()
    }

    #[test]
    fn a_reset_stops_the_worker_and_the_next_activation_serves_the_new_ring() {
        let memory = memory();
        let old = MockSplitQueue::create(&memory, GuestAddress(0x1000), 16);
        let mut transport = MmioTransport::new(Box::new(Rng::new()), memory.clone()).unwrap();
        driver_init(&mut transport, &old, 1);
        old.add_desc_chains(&[RawDescriptor::from(Descriptor::new(0x8000, 32, 2, 0))], 0).unwrap();
        write(&mut transport, REG_QUEUE_NOTIFY, 0);
        wait_for_interrupt(&transport);
        assert_eq!(used_index(&memory, &old), 1);

        // The reset returns once the worker is joined: a request on the old ring, notified straight
        // through the queue's event, finds no one to serve it.
        write(&mut transport, REG_STATUS, 0);
        old.add_desc_chains(&[RawDescriptor::from(Descriptor::new(0x8000, 32, 2, 0))], 1).unwrap();
        transport.queue_events()[0].write(1).unwrap();
        assert_eq!(used_index(&memory, &old), 1, "the stopped worker served the old ring");

        // The driver starts over on a new ring that already holds a request: the count the event
        // kept from before is the only wake-up, and it serves the new ring, not the old one.
        let new = MockSplitQueue::create(&memory, GuestAddress(0x4000), 16);
        new.add_desc_chains(&[RawDescriptor::from(Descriptor::new(0x9000, 16, 2, 0))], 0).unwrap();
        driver_init(&mut transport, &new, 1);
        assert_eq!(read(&mut transport, REG_STATUS), 1 | 2 | 8 | 4);
        wait_for_interrupt(&transport);
        assert_eq!(used_index(&memory, &new), 1);
        let used_len: u32 = memory.read_obj(new.used_addr().unchecked_add(8)).unwrap();
        assert_eq!(used_len, 16);
        assert_eq!(used_index(&memory, &old), 1, "the old ring stays unserved");
    }

    #[test]
    fn a_driver_without_virtio_1_is_refused() {
        let memory = memory();
        let mock = MockSplitQueue::create(&memory, GuestAddress(0x1000), 16);
        let mut transport = MmioTransport::new(Box::new(Rng::new()), memory.clone()).unwrap();
        driver_init(&mut transport, &mock, 0);
        assert_eq!(read(&mut transport, REG_STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn a_queue_outside_memory_marks_the_device_broken() {
        let memory = memory();
        let rng = Rng::new();
        let metrics = rng.metrics();
        let mut transport = MmioTransport::new(Box::new(rng), memory.clone()).unwrap();
        // Rings placed past the end of guest memory.
        driver_init_with_rings(&mut transport, 0xF000_0000);
        assert_ne!(read(&mut transport, REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
        assert_eq!(read(&mut transport, REG_INTERRUPT_STATUS), INTERRUPT_CONFIG_CHANGE);
        assert_eq!(metrics.take().get("activate_fails"), Some(1), "the device counts the failure");
    }

    pub(super) fn driver_init_with_rings(transport: &mut MmioTransport, base: u32) {
        driver_init_with_queue(transport, 16, base);
    }

    fn driver_init_with_queue(transport: &mut MmioTransport, size: u32, base: u32) {
        write(transport, REG_STATUS, 1 | 2);
        write(transport, REG_DRIVER_FEATURES_SEL, 1);
        write(transport, REG_DRIVER_FEATURES, 1);
        write(transport, REG_STATUS, 1 | 2 | 8);
        write(transport, REG_QUEUE_NUM, size);
        write(transport, REG_QUEUE_DESC_LOW, base);
        write(transport, REG_QUEUE_DRIVER_LOW, base + 0x1000);
        write(transport, REG_QUEUE_DEVICE_LOW, base + 0x2000);
        write(transport, REG_QUEUE_READY, 1);
        write(transport, REG_STATUS, 1 | 2 | 8 | 4);
    }

    #[test]
    fn a_misaligned_ring_or_a_bad_size_is_refused_not_ignored() {
        // virtio-queue drops such values silently; the device must not then run on stale rings.
        for (size, base) in [(16, 0x8008), (3, 0x8000), (512, 0x8000), (0, 0x8000), (0x1_0010, 0x8000)] {
            let mut transport = MmioTransport::new(Box::new(Rng::new()), memory()).unwrap();
            driver_init_with_queue(&mut transport, size, base);
            let status = read(&mut transport, REG_STATUS);
            assert_ne!(status & STATUS_DEVICE_NEEDS_RESET, 0, "size {size} at {base:#x}: status {status:#x}");
        }
        let mut transport = MmioTransport::new(Box::new(Rng::new()), memory()).unwrap();
        driver_init_with_queue(&mut transport, 16, 0x8000);
        assert_eq!(read(&mut transport, REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0, "a valid queue starts");
    }

    #[test]
    fn any_access_is_harmless() {
        let mut transport = MmioTransport::new(Box::new(Rng::new()), memory()).unwrap();
        for offset in (0..0x200).step_by(2) {
            for len in [1usize, 2, 4, 8] {
                let mut data = vec![0u8; len];
                transport.read(offset, &mut data);
                transport.write(offset, &vec![0xffu8; len]);
            }
        }
        write(&mut transport, REG_QUEUE_SEL, 99);
        assert_eq!(read(&mut transport, REG_QUEUE_NUM_MAX), 0);
        write(&mut transport, REG_QUEUE_NOTIFY, 99);
    }

    #[test]
    fn a_config_change_bumps_the_generation() {
        let mut transport = MmioTransport::new(Box::new(Rng::new()), memory()).unwrap();
        assert_eq!(read(&mut transport, REG_CONFIG_GENERATION), 0);
        // Through the interrupt the device gets.
        let interrupt = transport.state.interrupt().clone();
        interrupt.trigger(InterruptCause::Queue(0)).unwrap();
        assert_eq!(read(&mut transport, REG_CONFIG_GENERATION), 0, "used buffers change no config");
        interrupt.trigger(InterruptCause::Config).unwrap();
        assert_eq!(read(&mut transport, REG_CONFIG_GENERATION), 1);
        assert_eq!(
            read(&mut transport, REG_INTERRUPT_STATUS),
            INTERRUPT_USED_BUFFER | INTERRUPT_CONFIG_CHANGE
        );
    }
}
