//! The vsock device as its transport sees it: three queues (rx, tx, event), no features beyond
//! virtio 1.x (stream sockets only), and the guest's CID in the configuration space.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::handler::{HostEnd, VsockHandler};
use super::host::{self, ListenError};
use super::packet::{MAX_GUEST_CID, MIN_GUEST_CID};
use crate::device::{
    device_type, read_config_bytes, ActivateContext, ActivateError, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::metrics::VsockMetrics;
use crate::worker::Worker;

const QUEUE_SIZES: [u16; 3] = [256, 256, 256];

/// Why the device cannot be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("guest CID {0} is outside {MIN_GUEST_CID}..={MAX_GUEST_CID}")]
    InvalidCid(u64),
    #[error(transparent)]
    Listen(#[from] ListenError),
}

/// A virtio-vsock device whose host side is the Unix socket `uds_path` (see the module docs).
pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    /// Bound when the device is created, so host processes can connect before the guest's driver
    /// starts (they wait in the backlog), and kept across device resets.
    listener: UnixListener,
    metrics: Arc<VsockMetrics>,
    worker: Option<Worker>,
}

impl Vsock {
    /// Checks the CID and starts listening on `uds_path` (see [`host::listen`] for what may be
    /// there already).
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Vsock, VsockError> {
        if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&guest_cid) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        let listener = host::listen(uds_path)?;
        Ok(Vsock {
            guest_cid,
            uds_path: uds_path.to_owned(),
            listener,
            metrics: Arc::default(),
            worker: None,
        })
    }

    /// What the device counts, for the VMM's metrics.
    pub fn metrics(&self) -> Arc<VsockMetrics> {
        self.metrics.clone()
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, mut context: ActivateContext) -> Result<(), ActivateError> {
        // The event queue is used only after a restore, to reset the driver's connections.
        let queues = context.take_ready_queues(&self.worker)?;
        let listener = self.listener.try_clone().map_err(ActivateError::Backend)?;
        let host = HostEnd { guest_cid: self.guest_cid, uds_path: self.uds_path.clone(), listener };
        let mut handler = VsockHandler::new(
            context.memory.clone(),
            queues,
            context.interrupt.clone(),
            context.guest_errors.clone(),
            self.metrics.clone(),
            host,
        );
        if context.restored {
            handler.announce_transport_reset();
        }
        self.worker =
            Some(context.spawn_worker("virtio-vsock", jail::seccomp::ThreadRole::Vsock, handler)?);
        Ok(())
    }

    fn reset(&mut self) {
        // Stopping the worker drops every connection: host processes see their sockets close.
        self.worker = None;
    }

    fn worker(&self) -> Option<&Worker> {
        self.worker.as_ref()
    }

    fn activation_failed(&self) {
        self.metrics.activate_fails.inc();
    }
}
