//! The rng device as its transport sees it: one queue, no features beyond virtio 1.x, no config.

use virtio_queue::QueueT;

use crate::device::{
    device_type, read_config_bytes, ActivateContext, ActivateError, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::rng::handler::{HostEntropy, RngHandler};
use crate::worker::Worker;

const QUEUE_SIZES: [u16; 1] = [256];

/// A virtio-rng device fed from the host's `getrandom`.
#[derive(Default)]
pub struct Rng {
    worker: Option<Worker>,
}

impl Rng {
    pub fn new() -> Rng {
        Rng::default()
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&[], offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, context: ActivateContext) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let ActivateContext { memory, queues, queue_events, interrupt, .. } = context;
        let [queue]: [_; 1] = queues
            .try_into()
            .map_err(|q: Vec<_>| ActivateError::QueueCount { given: q.len(), expected: 1 })?;
        if !queue.ready() {
            return Err(ActivateError::QueueNotReady(0));
        }
        let handler = RngHandler::new(memory, queue, interrupt, HostEntropy);
        self.worker =
            Some(Worker::spawn("virtio-rng", queue_events, handler).map_err(ActivateError::Worker)?);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
    }
}
