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
use crate::snapshot::{DeviceState, RestoreError};
use devices::RestoreError as ValueError;

// Device status bits.
const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
pub(crate) const STATUS_FEATURES_OK: u32 = 8;
pub(crate) const STATUS_DEVICE_NEEDS_RESET: u32 = 0x40;
const STATUS_FAILED: u32 = 0x80;
/// Every status bit virtio 1.2 (2.1) defines; a saved status with others is refused.
const STATUS_KNOWN: u32 = STATUS_ACKNOWLEDGE
    | STATUS_DRIVER
    | STATUS_DRIVER_OK
    | STATUS_FEATURES_OK
    | STATUS_DEVICE_NEEDS_RESET
    | STATUS_FAILED;
/// VIRTIO_F_EVENT_IDX: the only feature that lets a queue use event indices.
const VIRTIO_F_EVENT_IDX: u64 = 1 << 29;
/// What restore errors name the transport's own registers as.
const COMPONENT: &str = "virtio transport";

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
    pub(crate) max_size: u16,
    pub(crate) next_avail: u16,
    pub(crate) next_used: u16,
    pub(crate) event_idx_enabled: bool,
    pub(crate) size: u16,
    pub(crate) ready: bool,
    pub(crate) desc_table: u64,
    pub(crate) avail_ring: u64,
    pub(crate) used_ring: u64,
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
    pub(crate) device_type: u32,
    pub(crate) queue_select: u32,
    pub(crate) device_features_select: u32,
    pub(crate) driver_features_select: u32,
    pub(crate) driver_features: u64,
    pub(crate) status: u32,
    pub(crate) config_generation: u32,
    /// What the driver wrote into each queue's registers: size, ring addresses, ready.
    pub(crate) queue_registers: Vec<(u16, [u64; 3], bool)>,
    /// The running device's queues with their positions; empty when the device is not running.
    pub(crate) device_queues: Vec<SavedQueue>,
    /// The device's own state ([`VirtioDevice::save_state`]).
    pub(crate) device_state: DeviceState,
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
            device_state: self.device.save_state(),
        })
    }

    /// Lets a held device go on.
    pub(crate) fn release(&mut self) {
        if let Some(worker) = self.device.worker() {
            worker.release();
        }
    }

    /// Takes a saved state into this freshly built transport, and starts the device on the saved
    /// queue positions if it was running. Every value is checked first (see
    /// [`TransportState::check_registers`] and [`TransportState::check_device_queues`]).
    pub(crate) fn restore(&mut self, saved: &TransportSnapshot) -> Result<(), RestoreError> {
        let device = device_type::name(self.device.device_type());
        if saved.device_type != self.device.device_type() {
            return Err(RestoreError::DeviceType {
                saved: device_type::name(saved.device_type),
                expected: device,
            });
        }
        let invalid = |source| RestoreError::Value { device: device.clone(), source };
        self.check_registers(saved).map_err(invalid)?;
        let device_queues = self.check_device_queues(saved).map_err(invalid)?;
        self.device.restore_state(&saved.device_state).map_err(invalid)?;

        self.queue_select = saved.queue_select;
        self.device_features_select = saved.device_features_select;
        self.driver_features_select = saved.driver_features_select;
        self.driver_features = saved.driver_features;
        self.status = saved.status;
        self.interrupt.config_generation.store(saved.config_generation, Ordering::SeqCst);
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
        if device_queues.is_empty() {
            return Ok(());
        }
        self.start_device(device_queues, true)
            .map_err(|(_, reason)| RestoreError::Start { device: device.clone(), reason })?;
        // A notification the held worker had not read yet is not in the snapshot; with
        // VIRTIO_F_EVENT_IDX the driver would not send another, and the queue would stall. A
        // spurious one costs a look at an empty ring.
        for event in &self.queue_events {
            event.write(1).map_err(|source| RestoreError::Notify { device: device.clone(), source })?;
        }
        Ok(())
    }

    /// Checks the saved registers against what a driver can leave in them: a selected queue that
    /// exists, features the device offers (VERSION_1 among them once FEATURES_OK is set), status
    /// bits virtio defines, and per queue a size that is a power of two up to its maximum; a ready
    /// queue's rings are aligned and inside guest memory (unless the device waits for a reset, when
    /// they are what the transport refused to start). The feature select registers may hold
    /// anything: words past the second read as zero and take no writes.
    fn check_registers(&self, saved: &TransportSnapshot) -> Result<(), ValueError> {
        if saved.queue_registers.len() != self.queues.len() {
            return Err(ValueError::Length {
                component: COMPONENT,
                field: "queues",
                saved: saved.queue_registers.len(),
                expected: self.queues.len(),
            });
        }
        if saved.queue_select as usize >= self.queues.len().max(1) {
            return Err(ValueError::value(COMPONENT, "queue select", saved.queue_select, "names no queue"));
        }
        if saved.driver_features & !self.features() != 0 {
            return Err(ValueError::value(
                COMPONENT,
                "driver features",
                saved.driver_features,
                "include features the device does not offer",
            ));
        }
        if saved.status & !STATUS_KNOWN != 0 {
            return Err(ValueError::value(COMPONENT, "device status", saved.status, "has undefined bits"));
        }
        if saved.status & STATUS_FEATURES_OK != 0 && saved.driver_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(ValueError::value(
                COMPONENT,
                "device status",
                saved.status,
                "has FEATURES_OK without VIRTIO_F_VERSION_1 accepted",
            ));
        }
        let running = STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        if !saved.device_queues.is_empty() && saved.status & running != running {
            return Err(ValueError::value(
                COMPONENT,
                "device status",
                saved.status,
                "lacks FEATURES_OK or DRIVER_OK for a running device",
            ));
        }
        if saved.status & STATUS_DEVICE_NEEDS_RESET != 0 {
            // The transport refused these registers already (or the device failed); they reach no
            // device before the driver resets them and sets them up again, checked then.
            return Ok(());
        }
        for (index, (configured, &(size, rings, ready))) in
            self.queues.iter().zip(&saved.queue_registers).enumerate()
        {
            let max_size = configured.max_size();
            if !size.is_power_of_two() || size > max_size {
                return Err(ValueError::value(
                    COMPONENT,
                    format!("queue {index} size"),
                    size,
                    "is not a power of two up to the queue's maximum",
                ));
            }
            if ready {
                ready_queue(max_size, QueueRegisters { size, rings }, &self.memory)
                    .map_err(|problem| problem.restore_error(index))?;
            }
        }
        Ok(())
    }

    /// Checks the running device's saved queues (none if it was not running) and builds them: the
    /// same maximum sizes as this device's, sizes and rings as [`Self::check_registers`] wants, at
    /// most a queue's worth of buffers between the next available and next used entries (the
    /// driver never has more outstanding), and event indices only with VIRTIO_F_EVENT_IDX.
    fn check_device_queues(&self, saved: &TransportSnapshot) -> Result<Vec<Queue>, ValueError> {
        if saved.device_queues.is_empty() {
            return Ok(Vec::new());
        }
        if saved.device_queues.len() != self.queues.len() {
            return Err(ValueError::Length {
                component: COMPONENT,
                field: "running device's queues",
                saved: saved.device_queues.len(),
                expected: self.queues.len(),
            });
        }
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, (saved_queue, configured)) in saved.device_queues.iter().zip(&self.queues).enumerate() {
            let max_size = configured.max_size();
            let field = |name: &str| format!("running queue {index} {name}");
            if saved_queue.max_size != max_size {
                return Err(ValueError::value(
                    COMPONENT,
                    field("maximum size"),
                    saved_queue.max_size,
                    "is not this device's",
                ));
            }
            let registers = QueueRegisters {
                size: saved_queue.size,
                rings: [saved_queue.desc_table, saved_queue.avail_ring, saved_queue.used_ring],
            };
            let checked = if saved_queue.ready {
                ready_queue(max_size, registers, &self.memory)
            } else {
                unready_queue(max_size, registers)
            };
            checked.map_err(|problem| problem.restore_error(index))?;
            if saved_queue.next_avail.wrapping_sub(saved_queue.next_used) > saved_queue.size {
                return Err(ValueError::value(
                    COMPONENT,
                    field("next available entry"),
                    saved_queue.next_avail,
                    "is more than the queue's size ahead of the next used entry",
                ));
            }
            if saved_queue.event_idx_enabled && saved.driver_features & VIRTIO_F_EVENT_IDX == 0 {
                return Err(ValueError::value(
                    COMPONENT,
                    field("event index"),
                    1u8,
                    "is enabled without VIRTIO_F_EVENT_IDX",
                ));
            }
            let queue = Queue::try_from(QueueState::from(*saved_queue)).map_err(|_| {
                ValueError::value(COMPONENT, field("state"), saved_queue.size, "is refused by virtio-queue")
            })?;
            queues.push(queue);
        }
        Ok(queues)
    }

    /// The queue the device gets: built from what the driver wrote, checked against the rules
    /// (virtio 1.2, 2.7) and guest memory. Unused queues go as they are (not ready).
    fn queue_for_device(&self, index: usize) -> Result<Queue, String> {
        let configured = &self.queues[index];
        let max_size = configured.max_size();
        if !configured.ready() {
            return Queue::new(max_size).map_err(|e| format!("queue {index}: {e:?}"));
        }
        ready_queue(max_size, self.queue_registers[index], &self.memory)
            .map_err(|problem| format!("queue {index}: {}", problem.describe(max_size)))
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

/// What is wrong with a queue's size or rings.
#[derive(Clone, Copy, Debug)]
enum QueueProblem {
    Size(u16),
    Ring(Ring, u64),
    OutsideMemory(u64),
}

impl QueueProblem {
    /// For the guest error log.
    fn describe(self, max_size: u16) -> String {
        match self {
            QueueProblem::Size(size) => format!("size {size} is not a power of two up to {max_size}"),
            QueueProblem::Ring(ring, address) => {
                format!("{} {address:#x} is not {}", ring.name(), ring.alignment())
            }
            QueueProblem::OutsideMemory(_) => "its rings lie outside guest memory".into(),
        }
    }

    /// For a refused restore of queue `index`.
    fn restore_error(self, index: usize) -> ValueError {
        match self {
            QueueProblem::Size(size) => ValueError::value(
                COMPONENT,
                format!("queue {index} size"),
                size,
                "is not a power of two up to the queue's maximum",
            ),
            QueueProblem::Ring(ring, address) => ValueError::value(
                COMPONENT,
                format!("queue {index} {}", ring.name()),
                address,
                ring.alignment(),
            ),
            QueueProblem::OutsideMemory(address) => ValueError::value(
                COMPONENT,
                format!("queue {index} descriptor table"),
                address,
                "or another of its rings lies outside guest memory",
            ),
        }
    }
}

impl Ring {
    fn name(self) -> &'static str {
        match self {
            Ring::Descriptors => "descriptor table",
            Ring::Driver => "driver ring",
            Ring::Device => "device ring",
        }
    }

    fn alignment(self) -> &'static str {
        match self {
            Ring::Descriptors => "16-byte aligned",
            Ring::Driver => "2-byte aligned",
            Ring::Device => "4-byte aligned",
        }
    }
}

/// A queue built from registers that must hold a valid size and aligned rings (a queue that is
/// not ready yet need not be in guest memory).
fn unready_queue(max_size: u16, registers: QueueRegisters) -> Result<Queue, QueueProblem> {
    let mut queue = Queue::new(max_size).map_err(|_| QueueProblem::Size(max_size))?;
    queue.try_set_size(registers.size).map_err(|_| QueueProblem::Size(registers.size))?;
    let [descriptors, driver, device] = registers.rings.map(GuestAddress);
    queue
        .try_set_desc_table_address(descriptors)
        .map_err(|_| QueueProblem::Ring(Ring::Descriptors, descriptors.0))?;
    queue.try_set_avail_ring_address(driver).map_err(|_| QueueProblem::Ring(Ring::Driver, driver.0))?;
    queue.try_set_used_ring_address(device).map_err(|_| QueueProblem::Ring(Ring::Device, device.0))?;
    Ok(queue)
}

/// A ready queue built from registers: as [`unready_queue`], and every ring, at its full size,
/// inside guest memory.
fn ready_queue(max_size: u16, registers: QueueRegisters, memory: &GuestRam) -> Result<Queue, QueueProblem> {
    let mut queue = unready_queue(max_size, registers)?;
    queue.set_ready(true);
    if !queue.is_valid(memory) {
        return Err(QueueProblem::OutsideMemory(registers.rings[Ring::Descriptors as usize]));
    }
    Ok(queue)
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
