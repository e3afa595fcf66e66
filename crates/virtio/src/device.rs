//! What every virtio device provides to its transport.

use std::io;
use std::sync::Arc;

use crate::GuestRam;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use crate::snapshot::DeviceState;
use crate::worker::{QueueHandler, Worker};

/// Device IDs (virtio 1.2, section 5).
pub mod device_type {
    pub const NET: u32 = 1;
    pub const BLOCK: u32 = 2;
    pub const RNG: u32 = 4;
    pub const BALLOON: u32 = 5;
    pub const VSOCK: u32 = 19;

    /// The device's name in log messages and thread names ("virtio-rng").
    pub fn name(device_type: u32) -> String {
        match device_type {
            NET => "virtio-net".into(),
            BLOCK => "virtio-blk".into(),
            RNG => "virtio-rng".into(),
            BALLOON => "virtio-balloon".into(),
            VSOCK => "virtio-vsock".into(),
            other => format!("virtio device {other}"),
        }
    }
}

/// The device complies with virtio 1.x (transports refuse drivers that do not accept it: Kestrel
/// has no legacy interface).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Why the device is interrupting the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptCause {
    /// Buffers were used in this queue.
    Queue(u16),
    /// The configuration space changed.
    Config,
}

/// How a device interrupts its driver; the transport decides what that means (an interrupt-status
/// bit plus a pin for MMIO, an MSI-X vector for PCI).
pub trait Interrupt: Send + Sync {
    fn trigger(&self, cause: InterruptCause) -> io::Result<()>;
}

/// Everything a device needs to start serving its queues.
pub struct ActivateContext {
    pub memory: GuestRam,
    /// The queues the driver set up, in order; a queue the driver left unused is not ready.
    pub queues: Vec<Queue>,
    /// One event per queue, signalled when the driver notifies that queue.
    pub queue_events: Vec<EventFd>,
    pub interrupt: Arc<dyn Interrupt>,
    /// The features the driver accepted.
    pub acked_features: u64,
    /// Where the device reports what the guest does wrong (kept by the transport across resets).
    pub guest_errors: Arc<GuestErrorLog>,
    /// The device is being restored from a snapshot: the queues carry their saved positions, and
    /// host-side state that does not survive a snapshot (vsock connections) is gone.
    pub restored: bool,
}

impl ActivateContext {
    /// The activation preamble of a device with `N` queues: refuses to start while `worker` (the
    /// device's running worker) is there, then takes the queues, which must be `N`, all ready.
    pub fn take_ready_queues<const N: usize>(
        &mut self,
        worker: &Option<Worker>,
    ) -> Result<[Queue; N], ActivateError> {
        let queues = self.take_queues(worker, N, N)?;
        queues.try_into().map_err(|q: Vec<_>| ActivateError::QueueCount { given: q.len(), expected: N })
    }

    /// Like [`ActivateContext::take_ready_queues`] for a device whose queue count is known only
    /// at run time: `expected` queues, of which the first `ready` must be set up (the rest belong
    /// to features the driver did not accept).
    pub fn take_queues(
        &mut self,
        worker: &Option<Worker>,
        expected: usize,
        ready: usize,
    ) -> Result<Vec<Queue>, ActivateError> {
        if worker.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let given = self.queues.len();
        if given != expected {
            return Err(ActivateError::QueueCount { given, expected });
        }
        if let Some(index) = self.queues.iter().take(ready).position(|queue| !queue.ready()) {
            return Err(ActivateError::QueueNotReady(index));
        }
        Ok(std::mem::take(&mut self.queues))
    }

    /// Starts `handler` on a worker thread named `name`, woken by the queue events.
    pub fn spawn_worker<H: QueueHandler>(
        &mut self,
        name: &str,
        role: jail::seccomp::ThreadRole,
        handler: H,
    ) -> Result<Worker, ActivateError> {
        Worker::spawn(name, role, std::mem::take(&mut self.queue_events), handler)
            .map_err(ActivateError::Worker)
    }
}

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the device is already active")]
    AlreadyActive,
    #[error("queue {0} is not set up")]
    QueueNotReady(usize),
    #[error("the driver set up {given} queues, the device has {expected}")]
    QueueCount { given: usize, expected: usize },
    #[error("cannot start the device's worker thread: {0}")]
    Worker(io::Error),
    #[error("the device's backend refused its settings: {0}")]
    Backend(io::Error),
}

impl ActivateError {
    /// Whether the driver caused the failure (rather than the host).
    pub fn is_guest_caused(&self) -> bool {
        matches!(self, ActivateError::QueueNotReady(_) | ActivateError::QueueCount { .. })
    }
}

/// Logs the problems a guest causes a device (a malformed buffer or chain, a queue set up
/// wrongly), rate-limited; host-side failures (a disk or tap error) are not for it. One per
/// device: the transport keeps it across resets (else a guest could reset the device for fresh
/// lines) and hands it to the device's worker in [`ActivateContext`]. The mechanism lives in
/// `devices`, so the PCI root and the legacy devices share it.
pub use devices::guest_log::GuestErrorLog;

/// A virtio device, independent of the transport that presents it.
pub trait VirtioDevice: Send {
    /// The virtio device ID (see [`device_type`]).
    fn device_type(&self) -> u32;
    /// The largest size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The features offered to the driver, [`VIRTIO_F_VERSION_1`] included.
    fn features(&self) -> u64;
    /// Reads the device-specific configuration space; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the configuration space; read-only fields ignore writes.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts serving the queues.
    fn activate(&mut self, context: ActivateContext) -> Result<(), ActivateError>;
    /// Stops serving the queues (the driver reset the device); a later activation starts afresh.
    fn reset(&mut self);
    /// The worker serving the queues, while the device is active (snapshots hold it).
    fn worker(&self) -> Option<&Worker>;
    /// What a snapshot keeps of the device beyond its queues: state the host or the driver changed
    /// after the device was built (the balloon's target and size). [`DeviceState::None`] for most
    /// devices.
    fn save_state(&self) -> DeviceState {
        DeviceState::None
    }
    /// Takes what [`VirtioDevice::save_state`] saved, before the restored device starts; a state
    /// of another kind of device, or a value this device never holds, is refused.
    fn restore_state(&mut self, saved: &DeviceState) -> Result<(), devices::RestoreError> {
        match saved {
            DeviceState::None => Ok(()),
            DeviceState::Balloon(_) => Err(devices::RestoreError::value(
                "virtio device",
                "device state",
                self.device_type(),
                "is a balloon's, for a device that keeps none",
            )),
        }
    }
    /// The transport could not start the device (the driver set it up wrongly, or
    /// [`VirtioDevice::activate`] failed): counted in the device's `activate_fails`.
    fn activation_failed(&self);
}

/// Copies `data.len()` bytes of `config` from `offset`, zero-filling whatever lies past its end.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else { return };
    if let Some(available) = config.get(start..) {
        let count = available.len().min(data.len());
        data[..count].copy_from_slice(&available[..count]);
    }
}

/// Test doubles the devices' unit tests share.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::{Arc, Mutex};

    use virtio_queue::desc::{split::Descriptor, RawDescriptor};

    use super::{GuestErrorLog, Interrupt, InterruptCause};

    /// An interrupt that records every cause it is triggered with.
    #[derive(Default)]
    pub(crate) struct Recorder(pub(crate) Mutex<Vec<InterruptCause>>);

    impl Interrupt for Recorder {
        fn trigger(&self, cause: InterruptCause) -> std::io::Result<()> {
            self.0.lock().unwrap().push(cause);
            Ok(())
        }
    }

    /// A guest error log for a handler under test.
    pub(crate) fn guest_errors() -> Arc<GuestErrorLog> {
        Arc::new(GuestErrorLog::new("test device"))
    }

    /// A split-queue descriptor.
    pub(crate) fn descriptor(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_past_the_end_are_zero() {
        let config = [1u8, 2, 3, 4];
        let mut data = [0xffu8; 4];
        read_config_bytes(&config, 2, &mut data);
        assert_eq!(data, [3, 4, 0, 0]);
        read_config_bytes(&config, 100, &mut data);
        assert_eq!(data, [0; 4]);
        read_config_bytes(&config, u64::MAX, &mut data);
        assert_eq!(data, [0; 4]);
    }
}
