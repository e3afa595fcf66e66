//! The virtio-mmio transport (virtio 1.2 section 4.2, register layout version 2): one 4 KiB
//! window per device, declared to the guest on the kernel command line
//! (`virtio_mmio.device=4K@<base>:<irq>`), notifications through an ioeventfd on QueueNotify and
//! interrupts through an irqfd on an IOAPIC pin.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use devices::BusDevice;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device::{ActivateContext, Interrupt, InterruptCause, VirtioDevice, VIRTIO_F_VERSION_1};

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

// Device status bits.
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_DEVICE_NEEDS_RESET: u32 = 0x40;

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

/// One virtio device behind virtio-mmio registers.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    memory: GuestMemoryMmap,
    interrupt: Arc<MmioInterrupt>,
    /// The queues as the driver configures them; copies go to the device on activation.
    queues: Vec<Queue>,
    queue_events: Vec<EventFd>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    active: bool,
}

impl MmioTransport {
    pub fn new(device: Box<dyn VirtioDevice>, memory: GuestMemoryMmap) -> io::Result<MmioTransport> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&size| Queue::new(size).map_err(|e| io::Error::other(format!("queue size {size}: {e:?}"))))
            .collect::<io::Result<Vec<_>>>()?;
        let queue_events =
            queues.iter().map(|_| EventFd::new(EFD_NONBLOCK)).collect::<io::Result<Vec<_>>>()?;
        let interrupt =
            Arc::new(MmioInterrupt { status: AtomicU32::new(0), line: EventFd::new(EFD_NONBLOCK)? });
        Ok(MmioTransport {
            device,
            memory,
            interrupt,
            queues,
            queue_events,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            active: false,
        })
    }

    /// One event per queue, for the VMM to bind as ioeventfds on QueueNotify.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The interrupt line, for the VMM to bind as an irqfd.
    pub fn interrupt_event(&self) -> &EventFd {
        &self.interrupt.line
    }

    /// The device's virtio ID.
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        if self.active {
            // The driver may not change queues while the device runs (virtio 1.2, 4.2.2.2).
            return None;
        }
        self.queues.get_mut(self.queue_select as usize)
    }

    fn features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_select as usize);
        match offset {
            REG_MAGIC => MAGIC_VALUE,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_select {
                0 => self.features() as u32,
                1 => (self.features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status.load(Ordering::SeqCst),
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_select = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_select = value,
            REG_DRIVER_FEATURES => self.set_driver_features(value),
            REG_QUEUE_SEL => self.queue_select = value,
            REG_QUEUE_NUM => self.with_queue(|q| q.set_size(value as u16)),
            REG_QUEUE_READY => self.with_queue(|q| q.set_ready(value == 1)),
            REG_QUEUE_DESC_LOW => self.with_queue(|q| q.set_desc_table_address(Some(value), None)),
            REG_QUEUE_DESC_HIGH => self.with_queue(|q| q.set_desc_table_address(None, Some(value))),
            REG_QUEUE_DRIVER_LOW => self.with_queue(|q| q.set_avail_ring_address(Some(value), None)),
            REG_QUEUE_DRIVER_HIGH => self.with_queue(|q| q.set_avail_ring_address(None, Some(value))),
            REG_QUEUE_DEVICE_LOW => self.with_queue(|q| q.set_used_ring_address(Some(value), None)),
            REG_QUEUE_DEVICE_HIGH => self.with_queue(|q| q.set_used_ring_address(None, Some(value))),
            REG_QUEUE_NOTIFY => self.notify(value),
            REG_INTERRUPT_ACK => {
                self.interrupt.status.fetch_and(!value, Ordering::SeqCst);
            }
            REG_STATUS => self.set_status(value),
            _ => tracing::debug!("virtio-mmio: write to read-only or unknown register {offset:#x}"),
        }
    }

    fn with_queue(&mut self, change: impl FnOnce(&mut Queue)) {
        if let Some(queue) = self.selected_queue() {
            change(queue);
        }
    }

    fn set_driver_features(&mut self, value: u32) {
        if self.status & STATUS_FEATURES_OK != 0 {
            return;
        }
        let (mask, shift) = match self.driver_features_select {
            0 => (0xffff_ffffu64, 0),
            1 => (0xffff_ffff_0000_0000u64, 32),
            _ => return,
        };
        self.driver_features = (self.driver_features & !mask) | (u64::from(value) << shift);
    }

    /// The path taken when no ioeventfd caught the write (KVM binds one per queue in normal runs).
    fn notify(&mut self, queue: u32) {
        if let Some(event) = self.queue_events.get(queue as usize) {
            if let Err(e) = event.write(1) {
                tracing::error!("virtio-mmio: cannot notify queue {queue}: {e}");
            }
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value;
        let setting = value & !self.status;
        if setting & STATUS_FEATURES_OK != 0 && !self.features_acceptable() {
            // The driver must read the status back and give up (virtio 1.2, 3.1.1).
            value &= !STATUS_FEATURES_OK;
        }
        self.status = value;
        if setting & STATUS_DRIVER_OK != 0 && !self.active {
            self.activate();
        }
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.features();
        self.driver_features & !offered == 0 && self.driver_features & VIRTIO_F_VERSION_1 != 0
    }

    fn activate(&mut self) {
        if self.status & STATUS_FEATURES_OK == 0 {
            return self.fail("the driver set DRIVER_OK without FEATURES_OK");
        }
        if let Some(index) = self.queues.iter().position(|q| q.ready() && !q.is_valid(&self.memory)) {
            return self.fail(&format!("queue {index} lies outside guest memory or is misaligned"));
        }
        let queues = self.queues.iter().map(|q| Queue::try_from(q.state()));
        let queues = match queues.collect::<Result<Vec<_>, _>>() {
            Ok(queues) => queues,
            Err(e) => return self.fail(&format!("invalid queue: {e:?}")),
        };
        let queue_events =
            match self.queue_events.iter().map(EventFd::try_clone).collect::<io::Result<Vec<_>>>() {
                Ok(events) => events,
                Err(e) => return self.fail(&format!("cannot share the queue events: {e}")),
            };
        let context = ActivateContext {
            memory: self.memory.clone(),
            queues,
            queue_events,
            interrupt: self.interrupt.clone(),
            acked_features: self.driver_features,
        };
        match self.device.activate(context) {
            Ok(()) => self.active = true,
            Err(e) => self.fail(&e.to_string()),
        }
    }

    /// Tells the driver the device cannot go on until it is reset.
    fn fail(&mut self, reason: &str) {
        tracing::warn!("virtio-mmio device {}: {reason}", self.device.device_type());
        self.status |= STATUS_DEVICE_NEEDS_RESET;
        if let Err(e) = self.interrupt.trigger(InterruptCause::Config) {
            tracing::error!("virtio-mmio: cannot interrupt the guest: {e}");
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        self.active = false;
        for queue in &mut self.queues {
            queue.reset();
        }
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt.status.store(0, Ordering::SeqCst);
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
        } else if data.len() == 4 {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        } else {
            // Registers are 32 bits wide; other accesses are invalid (virtio 1.2, 4.2.2.2).
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
        } else if let Ok(bytes) = <[u8; 4]>::try_from(data) {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    use super::*;
    use crate::rng::Rng;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn read(transport: &mut MmioTransport, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        transport.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write(transport: &mut MmioTransport, offset: u64, value: u32) {
        transport.write(offset, &value.to_le_bytes());
    }

    /// Waits (bounded) for the interrupt line, as the guest would for its IRQ.
    fn wait_for_interrupt(transport: &MmioTransport) {
        let mut poll =
            libc::pollfd { fd: transport.interrupt_event().as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, and its count.
        let ready = unsafe { libc::poll(&mut poll, 1, 10_000) };
        assert_eq!(ready, 1, "no interrupt within 10 s");
        transport.interrupt_event().read().unwrap();
    }

    /// Brings the device up the way Linux's virtio_mmio driver does.
    fn driver_init(
        transport: &mut MmioTransport,
        mock: &MockSplitQueue<GuestMemoryMmap>,
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
        let mut transport = MmioTransport::new(Box::new(Rng::new()), memory.clone()).unwrap();
        // Rings placed past the end of guest memory.
        driver_init_with_rings(&mut transport, 0xF000_0000);
        assert_ne!(read(&mut transport, REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
        assert_eq!(read(&mut transport, REG_INTERRUPT_STATUS), INTERRUPT_CONFIG_CHANGE);
    }

    fn driver_init_with_rings(transport: &mut MmioTransport, base: u32) {
        write(transport, REG_STATUS, 1 | 2);
        write(transport, REG_DRIVER_FEATURES_SEL, 1);
        write(transport, REG_DRIVER_FEATURES, 1);
        write(transport, REG_STATUS, 1 | 2 | 8);
        write(transport, REG_QUEUE_NUM, 16);
        write(transport, REG_QUEUE_DESC_LOW, base);
        write(transport, REG_QUEUE_DRIVER_LOW, base + 0x1000);
        write(transport, REG_QUEUE_DEVICE_LOW, base + 0x2000);
        write(transport, REG_QUEUE_READY, 1);
        write(transport, REG_STATUS, 1 | 2 | 8 | 4);
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
}
