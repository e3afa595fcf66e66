//! The network device as its transport sees it: features, configuration space, activation.

use std::sync::Arc;

use super::control::{NetControl, NetLimiters};
use super::handler::{FrameBackend, NetHandler};
use super::mac::MacAddress;
use super::mmds::{MmdsBackend, MmdsStack};
use super::tap::Tap;
use crate::device::{
    device_type, read_config_bytes, ActivateContext, ActivateError, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::metrics::NetMetrics;
use crate::worker::Worker;

const QUEUE_SIZES: [u16; 2] = [256, 256];

// Feature bits (virtio 1.2 section 5.1.3).
/// The driver may hand over frames with a partial checksum (the tap completes it).
const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
/// The driver takes frames with a partial checksum.
const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// The driver takes TCP segmentation-offload frames (up to 64 KiB).
const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
/// The driver may hand over TCP segmentation-offload frames (the tap segments them).
const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
const VIRTIO_NET_F_STATUS: u64 = 1 << 16;

/// Offered features. A tap with virtio-net headers takes checksum and TSO frames from the guest
/// whatever it was told, and sends them to the guest only as `TUNSETOFFLOAD` allows, which
/// follows what the driver accepted (see [`tap_offloads`]). UFO and ECN are left out: Linux no
/// longer builds UFO frames, and a TSO-with-ECN frame would need VIRTIO_NET_F_GUEST_ECN too.
const FEATURES: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_NET_F_CSUM
    | VIRTIO_NET_F_GUEST_CSUM
    | VIRTIO_NET_F_MAC
    | VIRTIO_NET_F_GUEST_TSO4
    | VIRTIO_NET_F_GUEST_TSO6
    | VIRTIO_NET_F_HOST_TSO4
    | VIRTIO_NET_F_HOST_TSO6
    | VIRTIO_NET_F_STATUS;

/// `status` in the configuration space: the link is always up.
const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// `struct virtio_net_config` up to `status`: `mac` (6 bytes), `status` (le16). The fields after
/// it belong to features Kestrel does not offer.
const CONFIG_BYTES: usize = 8;

/// A virtio-net device over a tap.
pub struct Net {
    tap: Tap,
    config: [u8; CONFIG_BYTES],
    metrics: Arc<NetMetrics>,
    /// Shared with each worker and the host's [`NetControl`]; they outlive resets.
    limiters: NetLimiters,
    /// The metadata service this card answers for, if any (a new stack at each activation).
    mmds: Option<model::mmds::NetMmds>,
    worker: Option<Worker>,
}

impl Net {
    /// A card over `tap` with address `mac`, its frames limited by `limiters`.
    pub fn new(tap: Tap, mac: MacAddress, limiters: NetLimiters) -> Net {
        let mut config = [0u8; CONFIG_BYTES];
        config[..6].copy_from_slice(&mac.0);
        config[6..].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        Net { tap, config, metrics: Arc::default(), limiters, mmds: None, worker: None }
    }

    /// Makes the card answer the guest's frames to the metadata service itself.
    pub fn set_mmds(&mut self, mmds: model::mmds::NetMmds) {
        self.mmds = Some(mmds);
    }

    /// The host's handle on this card's rate limiters, usable while the guest runs.
    pub fn control(&self) -> NetControl {
        NetControl::new(self.limiters.clone())
    }

    /// What the card counts, for the VMM's metrics.
    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.metrics.clone()
    }
}

impl Net {
    /// Starts the worker moving frames between `queues` and `backend`.
    fn spawn<B: FrameBackend>(
        &self,
        context: &mut ActivateContext,
        queues: [virtio_queue::Queue; 2],
        backend: B,
    ) -> Result<Worker, ActivateError> {
        let handler = NetHandler::new(
            context.memory.clone(),
            queues,
            context.interrupt.clone(),
            context.guest_errors.clone(),
            self.metrics.clone(),
            backend,
            self.limiters.clone(),
        );
        context.spawn_worker("virtio-net", jail::seccomp::ThreadRole::Net, handler)
    }
}

/// The `TUN_F_*` offloads the tap may use towards a driver that accepted `acked` features: every
/// offload needs the driver to take partial checksums, and each TSO its own feature.
fn tap_offloads(acked: u64) -> libc::c_uint {
    if acked & VIRTIO_NET_F_GUEST_CSUM == 0 {
        return 0;
    }
    let mut offloads = libc::TUN_F_CSUM;
    if acked & VIRTIO_NET_F_GUEST_TSO4 != 0 {
        offloads |= libc::TUN_F_TSO4;
    }
    if acked & VIRTIO_NET_F_GUEST_TSO6 != 0 {
        offloads |= libc::TUN_F_TSO6;
    }
    offloads
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    /// The MAC is read-only under virtio 1.x (a driver changes it through a control queue, which
    /// Kestrel does not offer), and so is the status.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, mut context: ActivateContext) -> Result<(), ActivateError> {
        // RX_QUEUE and TX_QUEUE, in that order.
        let [rx, tx] = context.take_ready_queues(&self.worker)?;
        self.tap.set_offloads(tap_offloads(context.acked_features)).map_err(ActivateError::Backend)?;
        let tap = self.tap.try_clone().map_err(ActivateError::Backend)?;
        let worker = match &self.mmds {
            Some(mmds) => {
                let stack = MmdsStack::new(mmds.clone(), context.guest_errors.clone());
                self.spawn(&mut context, [rx, tx], MmdsBackend::new(tap, stack))?
            }
            None => self.spawn(&mut context, [rx, tx], tap)?,
        };
        self.worker = Some(worker);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offloads_follow_what_the_driver_accepted() {
        assert_eq!(tap_offloads(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC), 0);
        // TSO without partial checksums is no offload at all (and the tap would refuse it).
        assert_eq!(tap_offloads(VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6), 0);
        assert_eq!(tap_offloads(VIRTIO_NET_F_GUEST_CSUM), libc::TUN_F_CSUM);
        assert_eq!(tap_offloads(FEATURES), libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6);
    }
}
