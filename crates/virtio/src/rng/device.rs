//! The rng device as its transport sees it: one queue, no features beyond virtio 1.x, no config.

use crate::device::{
    device_type, read_config_bytes, ActivateContext, ActivateError, VirtioDevice, VIRTIO_F_VERSION_1,
};
use std::sync::Arc;

use crate::metrics::EntropyMetrics;
use crate::rng::handler::{HostEntropy, RngHandler};
use crate::worker::Worker;

const QUEUE_SIZES: [u16; 1] = [256];

/// A virtio-rng device fed from the host's `getrandom`.
#[derive(Default)]
pub struct Rng {
    metrics: Arc<EntropyMetrics>,
    worker: Option<Worker>,
}

impl Rng {
    pub fn new() -> Rng {
        Rng::default()
    }

    /// What the device counts, for the VMM's metrics.
    pub fn metrics(&self) -> Arc<EntropyMetrics> {
        self.metrics.clone()
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

    fn activate(&mut self, mut context: ActivateContext) -> Result<(), ActivateError> {
        let [queue] = context.take_ready_queues(&self.worker)?;
        let handler = RngHandler::new(
            context.memory.clone(),
            queue,
            context.interrupt.clone(),
            context.guest_errors.clone(),
            self.metrics.clone(),
            HostEntropy,
        );
        self.worker = Some(context.spawn_worker("virtio-rng", jail::seccomp::ThreadRole::Rng, handler)?);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
    }

    fn worker(&self) -> Option<&Worker> {
        self.worker.as_ref()
    }

    fn activation_failed(&self) {
        self.metrics.activate_fails.inc();
    }
}
