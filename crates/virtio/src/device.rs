//! What every virtio device provides to its transport.

use std::io;
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Device IDs (virtio 1.2, section 5).
pub mod device_type {
    pub const NET: u32 = 1;
    pub const BLOCK: u32 = 2;
    pub const RNG: u32 = 4;
    pub const BALLOON: u32 = 5;
    pub const VSOCK: u32 = 19;
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
    pub memory: GuestMemoryMmap,
    /// The queues the driver set up, in order; a queue the driver left unused is not ready.
    pub queues: Vec<Queue>,
    /// One event per queue, signalled when the driver notifies that queue.
    pub queue_events: Vec<EventFd>,
    pub interrupt: Arc<dyn Interrupt>,
    /// The features the driver accepted.
    pub acked_features: u64,
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
