//! What a snapshot keeps of a virtio device, whichever transport presents it.

use std::io;

use serde::{Deserialize, Serialize};

use crate::mmio::MmioSnapshot;
use crate::pci::PciSnapshot;

/// One virtio device's saved state: its transport's registers, the device's queues with their
/// positions, and the interrupt state the driver has not seen yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VirtioSnapshot {
    Mmio(MmioSnapshot),
    Pci(PciSnapshot),
}

/// A transport a snapshot can hold, read and restore.
pub trait SnapshotTransport: Send {
    /// Holds the device (its worker stops between two requests) and returns its state; it stays
    /// held until [`SnapshotTransport::release`].
    fn hold(&mut self) -> io::Result<VirtioSnapshot>;
    /// Lets a held device go on.
    fn release(&mut self);
    /// Takes a saved state into this freshly built transport: the device starts on its saved
    /// queue positions if it was running.
    fn restore(&mut self, saved: &VirtioSnapshot) -> Result<(), String>;
}
