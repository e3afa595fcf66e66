//! virtio-rng (entropy device): one queue of writable buffers the host fills with random bytes.
//!
//! The template for every device: `device.rs` is what the transport sees, `handler.rs` is the
//! request processing that runs on the device's worker thread.

mod device;
mod handler;

pub use device::Rng;
