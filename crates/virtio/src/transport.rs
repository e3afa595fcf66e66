//! What every transport does the same way (virtio 1.2, sections 2 and 3): feature negotiation
//! through 32-bit windows, the queues as the driver sets them up, the device status with its
//! FEATURES_OK check, activation on DRIVER_OK, and reset. The MMIO and PCI transports differ only in
//! where these registers sit and how the device interrupts.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::GuestRam;
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device::{
    device_type, ActivateContext, GuestErrorLog, Interrupt, InterruptCause, VirtioDevice, VIRTIO_F_VERSION_1,
};

// Device status bits.
const STATUS_DRIVER_OK: u32 = 4;
pub(crate) const STATUS_FEATURES_OK: u32 = 8;
pub(crate) const STATUS_DEVICE_NEEDS_RESET: u32 = 0x40;

/// The three rings of a split virtqueue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ring {
    Descriptors,
    Driver,
    Device,
}

/// What the driver last wrote into one queue's size and ring-address registers, valid or not.
/// virtio-queue's setters ignore an invalid value (a size that is not a power of two, a misaligned
/// ring), leaving the old one in place, so the transport keeps the raw values and refuses to start
/// a device whose queue was set up wrongly instead of letting it read rings at stale addresses.
#[derive(Clone, Copy, Debug)]
struct QueueRegisters {
    size: u16,
    rings: [u64; 3],
}

impl QueueRegisters {
    fn reset(max_size: u16) -> QueueRegisters {
        QueueRegisters { size: max_size, rings: [0; 3] }
    }
}

/// A queue as a snapshot keeps it: virtio-queue's `QueueState`, field for field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedQueue {
    max_size: u16,
    next_avail: u16,
    next_used: u16,
    event_idx_enabled: bool,
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

impl From<QueueState> for SavedQueue {
    fn from(q: QueueState) -> SavedQueue {
        SavedQueue {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl From<SavedQueue> for QueueState {
    fn from(q: SavedQueue) -> QueueState {
        QueueState {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

/// What a transport and its running device's queues hold, as a snapshot keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportSnapshot {
    device_type: u32,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
    /// What the driver wrote into each queue's registers: size, ring addresses, ready.
    queue_registers: Vec<(u16, [u64; 3], bool)>,
    /// The running device's queues with their positions; empty when the device is not running.
    device_queues: Vec<SavedQueue>,
    /// The device's own state ([`VirtioDevice::snapshot_state`]).
    device_state: Vec<u8>,
}

/// The transport's interrupt as the device gets it: counts configuration changes (the driver's
/// config generation, so that it can tell a multi-word field changed while it read it), then
/// interrupts the way the transport does.
pub(crate) struct CountingInterrupt {
    inner: Arc<dyn Interrupt>,
    config_generation: AtomicU32,
}

impl Interrupt for CountingInterrupt {
    fn trigger(&self, cause: InterruptCause) -> io::Result<()> {
        if cause == InterruptCause::Config {
            self.config_generation.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.trigger(cause)
    }
}

/// A device and the transport-independent state its driver builds up.
pub(crate) struct TransportState {
    device: Box<dyn VirtioDevice>,
    memory: GuestRam,
    interrupt: Arc<CountingInterrupt>,
    /// What the guest does wrong, for this device's transport and worker alike.
    guest_errors: Arc<GuestErrorLog>,
    /// The queues as the driver configures them; copies go to the device on activation.
    queues: Vec<Queue>,
    queue_registers: Vec<QueueRegisters>,
    queue_events: Vec<EventFd>,
    pub(crate) queue_select: u32,
    pub(crate) device_features_select: u32,
    pub(crate) driver_features_select: u32,
    driver_features: u64,
    status: u32,
    active: bool,
}

impl TransportState {
    /// `name` ("virtio-mmio" or "virtio-pci") goes into the device's log lines.
    pub(crate) fn new(
        name: &'static str,
        device: Box<dyn VirtioDevice>,
        memory: GuestRam,
        interrupt: Arc<dyn Interrupt>,
    ) -> io::Result<TransportState> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&size| Queue::new(size).map_err(|e| io::Error::other(format!("queue size {size}: {e:?}"))))
            .collect::<io::Result<Vec<_>>>()?;
        let queue_events =
            queues.iter().map(|_| EventFd::new(EFD_NONBLOCK)).collect::<io::Result<Vec<_>>>()?;
        let queue_registers = queues.iter().map(|q| QueueRegisters::reset(q.max_size())).collect();
        let guest_errors =
            Arc::new(GuestErrorLog::new(format!("{} ({name})", device_type::name(device.device_type()))));
        Ok(TransportState {
            device,
            memory,
            interrupt: Arc::new(CountingInterrupt { inner: interrupt, config_generation: AtomicU32::new(0) }),
            guest_errors,
            queues,
            queue_registers,
            queue_events,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            active: false,
        })
    }

    pub(crate) fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    pub(crate) fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    /// One event per queue, signalled when the driver notifies it.
    pub(crate) fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    pub(crate) fn queue_count(&self) -> usize {
        self.queues.len()
    }

    pub(crate) fn status(&self) -> u32 {
        self.status
    }

    /// The interrupt the device gets, which counts configuration changes.
    #[cfg(test)]
    pub(crate) fn interrupt(&self) -> &Arc<CountingInterrupt> {
        &self.interrupt
    }

    /// How many configuration changes the device has signalled: the driver's config generation.
    pub(crate) fn config_generation(&self) -> u32 {
        self.interrupt.config_generation.load(Ordering::SeqCst)
    }

    fn features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    /// The 32 feature bits `device_features_select` picks.
    pub(crate) fn device_features_word(&self) -> u32 {
        feature_word(self.features(), self.device_features_select)
    }

    /// The 32 accepted feature bits `driver_features_select` picks.
    pub(crate) fn driver_features_word(&self) -> u32 {
        feature_word(self.driver_features, self.driver_features_select)
    }

    /// The driver accepts features, 32 bits at a time, until it sets FEATURES_OK.
    pub(crate) fn set_driver_features_word(&mut self, value: u32) {
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

    /// The queue `queue_select` picks, if it exists.
    pub(crate) fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_select as usize)
    }

    /// Changes the selected queue, unless the device runs: the driver may not change queues then
    /// (virtio 1.2, 4.2.2.2 and 4.1.4.3.2).
    pub(crate) fn with_selected_queue(&mut self, change: impl FnOnce(&mut Queue)) {
        if let Some((queue, _)) = self.selected_queue_and_registers() {
            change(queue);
        }
    }

    fn selected_queue_and_registers(&mut self) -> Option<(&mut Queue, &mut QueueRegisters)> {
        if self.active {
            return None;
        }
        let index = self.queue_select as usize;
        Some((self.queues.get_mut(index)?, self.queue_registers.get_mut(index)?))
    }

    /// The driver writes the selected queue's size.
    pub(crate) fn set_selected_queue_size(&mut self, size: u16) {
        if let Some((queue, registers)) = self.selected_queue_and_registers() {
            registers.size = size;
            queue.set_size(size);
        }
    }

    /// The driver writes the selected queue's ring address, or one 32-bit half of it.
    pub(crate) fn set_selected_queue_ring(&mut self, ring: Ring, low: Option<u32>, high: Option<u32>) {
        if let Some((queue, registers)) = self.selected_queue_and_registers() {
            let address = &mut registers.rings[ring as usize];
            if let Some(low) = low {
                *address = (*address & !0xffff_ffff) | u64::from(low);
            }
            if let Some(high) = high {
                *address = (*address & 0xffff_ffff) | (u64::from(high) << 32);
            }
            match ring {
                Ring::Descriptors => queue.set_desc_table_address(low, high),
                Ring::Driver => queue.set_avail_ring_address(low, high),
                Ring::Device => queue.set_used_ring_address(low, high),
            }
        }
    }

    /// The path taken when no ioeventfd caught the driver's notification.
    pub(crate) fn notify(&self, queue: u32) {
        if let Some(event) = self.queue_events.get(queue as usize) {
            if let Err(e) = event.write(1) {
                // Once per guest notification: limited, whoever's fault it is.
                self.guest_errors.log(format_args!("cannot notify queue {queue}: {e}"));
            }
        }
    }

    /// The driver wrote the device status. Returns true when that was a reset (status 0), after
    /// which the transport resets its own registers too.
    pub(crate) fn set_status(&mut self, value: u32) -> bool {
        if value == 0 {
            self.reset();
            return true;
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
        false
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.features();
        self.driver_features & !offered == 0 && self.driver_features & VIRTIO_F_VERSION_1 != 0
    }

    fn activate(&mut self) {
        if let Err((cause, reason)) = self.try_activate() {
            self.device.activation_failed();
            self.fail(cause, &reason);
        }
    }

    fn try_activate(&mut self) -> Result<(), (Cause, String)> {
        if self.status & STATUS_FEATURES_OK == 0 {
            return Err((Cause::Guest, "the driver set DRIVER_OK without FEATURES_OK".into()));
        }
        let queues = (0..self.queues.len()).map(|index| self.queue_for_device(index));
        let queues = queues.collect::<Result<Vec<_>, _>>().map_err(|reason| (Cause::Guest, reason))?;
        self.start_device(queues, false)
    }

    /// Hands the queues to the device, which starts serving them.
    fn start_device(&mut self, queues: Vec<Queue>, restored: bool) -> Result<(), (Cause, String)> {
        let queue_events = self
            .queue_events
            .iter()
            .map(EventFd::try_clone)
            .collect::<io::Result<Vec<_>>>()
            .map_err(|e| (Cause::Host, format!("cannot share the queue events: {e}")))?;
        let context = ActivateContext {
            memory: self.memory.clone(),
            queues,
            queue_events,
            interrupt: self.interrupt.clone(),
            acked_features: self.driver_features,
            guest_errors: self.guest_errors.clone(),
            restored,
        };
        self.device.activate(context).map_err(|e| {
            let cause = if e.is_guest_caused() { Cause::Guest } else { Cause::Host };
            (cause, e.to_string())
        })?;
        self.active = true;
        Ok(())
    }

    /// Holds the running device's worker between two requests and returns the transport's and the
    /// queues' state; the device stays held until [`TransportState::release`].
    pub(crate) fn hold(&mut self) -> io::Result<TransportSnapshot> {
        let mut device_queues = Vec::new();
        if let (true, Some(worker)) = (self.active, self.device.worker()) {
            // Queues the device does not use keep what the driver configured.
            device_queues = self.queues.iter().map(|queue| SavedQueue::from(queue.state())).collect();
            for (index, state) in worker.hold()? {
                if let Some(saved) = device_queues.get_mut(index) {
                    *saved = state.into();
                }
            }
        }
        Ok(TransportSnapshot {
            device_type: self.device.device_type(),
            queue_select: self.queue_select,
            device_features_select: self.device_features_select,
            driver_features_select: self.driver_features_select,
            driver_features: self.driver_features,
            status: self.status,
            config_generation: self.config_generation(),
            queue_registers: self
                .queues
                .iter()
                .zip(&self.queue_registers)
                .map(|(queue, registers)| (registers.size, registers.rings, queue.ready()))
                .collect(),
            device_queues,
            device_state: self.device.snapshot_state(),
        })
    }

    /// Lets a held device go on.
    pub(crate) fn release(&mut self) {
        if let Some(worker) = self.device.worker() {
            worker.release();
        }
    }

    /// Takes a saved state into this freshly built transport, and starts the device on the saved
    /// queue positions if it was running.
    pub(crate) fn restore(&mut self, saved: &TransportSnapshot) -> Result<(), String> {
        let name = device_type::name(self.device.device_type());
        if saved.device_type != self.device.device_type() {
            return Err(format!(
                "the snapshot has {} here, the VM {name}",
                device_type::name(saved.device_type)
            ));
        }
        if saved.queue_registers.len() != self.queues.len() {
            return Err(format!(
                "{name}: the snapshot has {} queues, the device {}",
                saved.queue_registers.len(),
                self.queues.len()
            ));
        }
        self.queue_select = saved.queue_select;
        self.device_features_select = saved.device_features_select;
        self.driver_features_select = saved.driver_features_select;
        self.driver_features = saved.driver_features;
        self.status = saved.status;
        self.interrupt.config_generation.store(saved.config_generation, Ordering::SeqCst);
        self.device.restore_state(&saved.device_state).map_err(|e| format!("{name}: {e}"))?;
        for ((queue, registers), &(size, rings, ready)) in
            self.queues.iter_mut().zip(&mut self.queue_registers).zip(&saved.queue_registers)
        {
            *registers = QueueRegisters { size, rings };
            queue.set_size(size);
            let halves = |address: u64| (Some(address as u32), Some((address >> 32) as u32));
            let (low, high) = halves(rings[Ring::Descriptors as usize]);
            queue.set_desc_table_address(low, high);
            let (low, high) = halves(rings[Ring::Driver as usize]);
            queue.set_avail_ring_address(low, high);
            let (low, high) = halves(rings[Ring::Device as usize]);
            queue.set_used_ring_address(low, high);
            queue.set_ready(ready);
        }
        if saved.device_queues.is_empty() {
            return Ok(());
        }
        if saved.device_queues.len() != self.queues.len() {
            return Err(format!(
                "{name}: the snapshot's running device has {} queues",
                saved.device_queues.len()
            ));
        }
        let queues = saved
            .device_queues
            .iter()
            .zip(&self.queues)
            .enumerate()
            .map(|(index, (&state, configured))| {
                if state.max_size != configured.max_size() {
                    return Err(format!("{name}: saved queue {index} has another maximum size"));
                }
                let queue = Queue::try_from(QueueState::from(state))
                    .map_err(|e| format!("{name}: saved queue {index} is invalid: {e:?}"))?;
                if queue.ready() && !queue.is_valid(&self.memory) {
                    return Err(format!("{name}: saved queue {index} lies outside guest memory"));
                }
                Ok(queue)
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.start_device(queues, true).map_err(|(_, reason)| format!("{name}: {reason}"))?;
        // A notification the held worker had not read yet is not in the snapshot; with
        // VIRTIO_F_EVENT_IDX the driver would not send another, and the queue would stall. A
        // spurious one costs a look at an empty ring.
        for event in &self.queue_events {
            event.write(1).map_err(|e| format!("{name}: cannot notify the restored queues: {e}"))?;
        }
        Ok(())
    }

    /// The queue the device gets: built from what the driver wrote, checked against the rules
    /// (virtio 1.2, 2.7) and guest memory. Unused queues go as they are (not ready).
    fn queue_for_device(&self, index: usize) -> Result<Queue, String> {
        let configured = &self.queues[index];
        let invalid = |what: String| format!("queue {index}: {what}");
        let mut queue = Queue::new(configured.max_size()).map_err(|e| invalid(format!("{e:?}")))?;
        if !configured.ready() {
            return Ok(queue);
        }
        let registers = self.queue_registers[index];
        queue.try_set_size(registers.size).map_err(|_| {
            invalid(format!("size {} is not a power of two up to {}", registers.size, configured.max_size()))
        })?;
        let [descriptors, driver, device] = registers.rings.map(GuestAddress);
        queue
            .try_set_desc_table_address(descriptors)
            .map_err(|_| invalid(format!("descriptor table {:#x} is not 16-byte aligned", descriptors.0)))?;
        queue
            .try_set_avail_ring_address(driver)
            .map_err(|_| invalid(format!("driver ring {:#x} is not 2-byte aligned", driver.0)))?;
        queue
            .try_set_used_ring_address(device)
            .map_err(|_| invalid(format!("device ring {:#x} is not 4-byte aligned", device.0)))?;
        queue.set_ready(true);
        if !queue.is_valid(&self.memory) {
            return Err(invalid("its rings lie outside guest memory".into()));
        }
        Ok(queue)
    }

    /// Tells the driver the device cannot go on until it is reset.
    fn fail(&mut self, cause: Cause, reason: &str) {
        match cause {
            Cause::Guest => self.guest_errors.log(format_args!("cannot start: {reason}")),
            // The host's fault, but the guest can reset and restart the device in a loop.
            Cause::Host => self.guest_errors.log(format_args!("cannot start (host): {reason}")),
        }
        self.status |= STATUS_DEVICE_NEEDS_RESET;
        if let Err(e) = self.interrupt.trigger(InterruptCause::Config) {
            self.guest_errors.log(format_args!("cannot interrupt the guest: {e}"));
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        self.active = false;
        for (queue, registers) in self.queues.iter_mut().zip(&mut self.queue_registers) {
            queue.reset();
            *registers = QueueRegisters::reset(queue.max_size());
        }
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.status = 0;
    }
}

/// Who made a device fail: the guest's problems are logged at a limited rate.
#[derive(Clone, Copy)]
enum Cause {
    Guest,
    Host,
}

/// Bits 0–31 (`select` 0) or 32–63 (`select` 1) of `features`; nothing beyond.
fn feature_word(features: u64, select: u32) -> u32 {
    match select {
        0 => features as u32,
        1 => (features >> 32) as u32,
        _ => 0,
    }
}
