//! The common configuration structure (`struct virtio_pci_common_cfg`, virtio 1.2, 4.1.4.3):
//! feature windows, device status, and the selected queue's setup. Each field answers accesses of
//! its own width (64-bit addresses also as two 32-bit halves, which is how Linux writes them);
//! other accesses read as zero and are ignored.

use virtio_queue::{Queue, QueueT};

use super::PciTransport;
use crate::transport::Ring;

pub(super) const DEVICE_FEATURE_SELECT: u64 = 0x00;
pub(super) const DEVICE_FEATURE: u64 = 0x04;
pub(super) const DRIVER_FEATURE_SELECT: u64 = 0x08;
pub(super) const DRIVER_FEATURE: u64 = 0x0c;
pub(super) const CONFIG_MSIX_VECTOR: u64 = 0x10;
pub(super) const NUM_QUEUES: u64 = 0x12;
pub(super) const DEVICE_STATUS: u64 = 0x14;
pub(super) const CONFIG_GENERATION: u64 = 0x15;
pub(super) const QUEUE_SELECT: u64 = 0x16;
pub(super) const QUEUE_SIZE: u64 = 0x18;
pub(super) const QUEUE_MSIX_VECTOR: u64 = 0x1a;
pub(super) const QUEUE_ENABLE: u64 = 0x1c;
pub(super) const QUEUE_NOTIFY_OFF: u64 = 0x1e;
pub(super) const QUEUE_DESC: u64 = 0x20;
pub(super) const QUEUE_DRIVER: u64 = 0x28;
pub(super) const QUEUE_DEVICE: u64 = 0x30;
const QUEUE_ADDRESSES_END: u64 = 0x38;

/// Where each ring's 64-bit address field sits.
impl Ring {
    fn at(field: u64) -> Option<Ring> {
        match field {
            QUEUE_DESC => Some(Ring::Descriptors),
            QUEUE_DRIVER => Some(Ring::Driver),
            QUEUE_DEVICE => Some(Ring::Device),
            _ => None,
        }
    }

    fn address(self, queue: &Queue) -> u64 {
        match self {
            Ring::Descriptors => queue.desc_table(),
            Ring::Driver => queue.avail_ring(),
            Ring::Device => queue.used_ring(),
        }
    }
}

/// A 64-bit ring address field and the part of it an access covers: `(ring, shift)` for the whole
/// field (shift 0, 8 bytes) or one 32-bit half (shift 0 or 32, 4 bytes).
fn ring_access(offset: u64, len: usize) -> Option<(Ring, u32)> {
    if !(QUEUE_DESC..QUEUE_ADDRESSES_END).contains(&offset) {
        return None;
    }
    let ring = Ring::at(offset & !7)?;
    match (offset & 7, len) {
        (0, 4 | 8) => Some((ring, 0)),
        (4, 4) => Some((ring, 32)),
        _ => None,
    }
}

impl PciTransport {
    pub(super) fn read_common(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let state = &self.state;
        let queue = state.selected_queue();
        let value: u64 = match (offset, data.len()) {
            (DEVICE_FEATURE_SELECT, 4) => state.device_features_select.into(),
            (DEVICE_FEATURE, 4) => state.device_features_word().into(),
            (DRIVER_FEATURE_SELECT, 4) => state.driver_features_select.into(),
            (DRIVER_FEATURE, 4) => state.driver_features_word().into(),
            (CONFIG_MSIX_VECTOR, 2) => self.interrupt.config_vector().into(),
            (NUM_QUEUES, 2) => state.queue_count() as u64,
            (DEVICE_STATUS, 1) => state.status().into(),
            // Bumped by every configuration-change interrupt (see `CountingInterrupt`); the field
            // is 8 bits wide, so it wraps.
            (CONFIG_GENERATION, 1) => u64::from(state.config_generation() as u8),
            (QUEUE_SELECT, 2) => state.queue_select.into(),
            // A queue that does not exist has size 0 (virtio 1.2, 4.1.4.3.1).
            (QUEUE_SIZE, 2) => queue.map_or(0, |q| q.size().into()),
            (QUEUE_MSIX_VECTOR, 2) => self.interrupt.queue_vector(state.queue_select as usize).into(),
            (QUEUE_ENABLE, 2) => queue.map_or(0, |q| q.ready().into()),
            // Queue n is notified at NOTIFY + n × multiplier.
            (QUEUE_NOTIFY_OFF, 2) => queue.map_or(0, |_| state.queue_select.into()),
            _ => match (ring_access(offset, data.len()), queue) {
                (Some((ring, shift)), Some(queue)) => ring.address(queue) >> shift,
                _ => return,
            },
        };
        let len = data.len();
        data.copy_from_slice(&value.to_le_bytes()[..len]);
    }

    pub(super) fn write_common(&mut self, offset: u64, data: &[u8]) {
        let mut bytes = [0u8; 8];
        let Some(prefix) = bytes.get_mut(..data.len()) else { return };
        prefix.copy_from_slice(data);
        let value = u64::from_le_bytes(bytes);
        let state = &mut self.state;
        let selected = state.queue_select as usize;
        match (offset, data.len()) {
            (DEVICE_FEATURE_SELECT, 4) => state.device_features_select = value as u32,
            (DRIVER_FEATURE_SELECT, 4) => state.driver_features_select = value as u32,
            (DRIVER_FEATURE, 4) => state.set_driver_features_word(value as u32),
            (CONFIG_MSIX_VECTOR, 2) => self.interrupt.set_config_vector(value as u16),
            (DEVICE_STATUS, 1) => {
                if state.set_status(value as u32) {
                    self.interrupt.reset();
                }
            }
            (QUEUE_SELECT, 2) => state.queue_select = value as u32,
            (QUEUE_SIZE, 2) => state.set_selected_queue_size(value as u16),
            (QUEUE_MSIX_VECTOR, 2) => self.interrupt.set_queue_vector(selected, value as u16),
            // Only enabling is allowed; a queue is disabled by resetting the device.
            (QUEUE_ENABLE, 2) if value == 1 => state.with_selected_queue(|q| q.set_ready(true)),
            _ => match ring_access(offset, data.len()) {
                Some((ring, 0)) if data.len() == 8 => {
                    state.set_selected_queue_ring(ring, Some(value as u32), Some((value >> 32) as u32))
                }
                Some((ring, 0)) => state.set_selected_queue_ring(ring, Some(value as u32), None),
                Some((ring, _)) => state.set_selected_queue_ring(ring, None, Some(value as u32)),
                None => tracing::debug!("virtio-pci: ignored common config write at {offset:#x}"),
            },
        }
    }
}
