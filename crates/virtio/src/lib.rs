//! Virtio devices and the transports that present them to the guest.
//!
//! A device implements [`VirtioDevice`]: it describes itself (type, queues, features, config space)
//! and, once the guest driver has set it up, [`VirtioDevice::activate`] hands it the queues, their
//! notification events and an [`Interrupt`]. Its host side then runs on a [`worker::Worker`] thread,
//! never on a vCPU thread, so a slow backend (a disk, a socket) stalls only its own device.
//!
//! Each device lives in a folder with the same files: `mod.rs` (its public face), `device.rs`
//! (features, config space, activation) and `handler.rs` (request processing, unit-tested against
//! hand-built queues in guest memory). The rng device is the template.
//!
//! Two transports present the same devices: [`mmio`] and [`pci`] (modern virtio-pci with MSI-X).
//! What they share (feature negotiation, queue setup, device status, activation, reset) lives in
//! `transport.rs`; each adds only its register layout and its way of interrupting.
//!
//! Each device counts what it does in its group of [`metrics`] (Firecracker's names), which it
//! shares with the VMM's metrics writer.

pub mod balloon;
pub mod block;
pub mod device;
pub mod metrics;
pub mod mmio;
pub mod net;
pub mod pci;
pub mod rate_limiter;
pub mod rng;
pub mod snapshot;
mod transport;
pub mod vsock;
pub mod worker;

/// Guest RAM as Kestrel maps it. Every write through it (a device filling a buffer, updating a used
/// ring) marks its page in a dirty bitmap: KVM's dirty log sees only the vCPUs' writes, and a diff
/// snapshot needs both.
pub type GuestRam = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;

pub use device::{ActivateContext, ActivateError, GuestErrorLog, Interrupt, InterruptCause, VirtioDevice};
pub use snapshot::{DeviceState, RestoreError};
