//! What a snapshot keeps of a virtio device, whichever transport presents it, and why a restore
//! refuses it. A state file is hostile input (whoever wrote it can fix up its CRC): every value is
//! checked against what the transport and the device allow before they hold it.

use std::io;

use serde::{Deserialize, Serialize};

use crate::balloon::BalloonState;
use crate::mmio::MmioSnapshot;
use crate::pci::PciSnapshot;

/// One virtio device's saved state: its transport's registers, the device's queues with their
/// positions, and the interrupt state the driver has not seen yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VirtioSnapshot {
    Mmio(MmioSnapshot),
    Pci(PciSnapshot),
}

/// What a device keeps beyond its queues (state the host or the driver changed after the device
/// was built), one typed variant per kind of device that keeps any.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    /// The device keeps nothing beyond its queues (net, block, rng, vsock).
    #[default]
    None,
    Balloon(BalloonState),
}

/// Why a saved virtio device was refused.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("the snapshot has a {saved} device where this VM has a {expected} one")]
    Transport { saved: &'static str, expected: &'static str },
    #[error("the snapshot has {saved} here, the VM {expected}")]
    DeviceType { saved: String, expected: String },
    /// A saved value the transport or the device never holds.
    #[error("{device}: {source}")]
    Value {
        device: String,
        #[source]
        source: devices::RestoreError,
    },
    #[error("{device}: cannot start the restored device: {reason}")]
    Start { device: String, reason: String },
    #[error("{device}: cannot notify the restored queues: {source}")]
    Notify {
        device: String,
        #[source]
        source: io::Error,
    },
}

/// A transport a snapshot can hold, read and restore.
pub trait SnapshotTransport: Send {
    /// Holds the device (its worker stops between two requests) and returns its state; it stays
    /// held until [`SnapshotTransport::release`].
    fn hold(&mut self) -> io::Result<VirtioSnapshot>;
    /// Lets a held device go on.
    fn release(&mut self);
    /// Takes a saved state into this freshly built transport, once every value is checked: the
    /// device starts on its saved queue positions if it was running.
    fn restore(&mut self, saved: &VirtioSnapshot) -> Result<(), RestoreError>;
}
