//! virtio-vsock (virtio 1.2, section 5.10): stream sockets between the guest and host processes.
//!
//! The host side follows Firecracker's convention, over Unix sockets:
//! - the device listens on one Unix socket (`uds`). A host process connects to it and sends
//!   `CONNECT <guest port>\n`; once the guest accepts, it reads `OK <host port>\n` and the socket
//!   carries the connection's bytes both ways. If the guest refuses, the socket just closes.
//! - a guest connecting to host port P (CID 2) reaches whoever listens on `<uds>_P`; if nobody
//!   does, the guest's connect is refused (RST).
//!
//! `packet.rs` is the wire header, `connection.rs` one connection's state and credit, `host.rs`
//! the Unix sockets, `handler.rs` the worker side and `device.rs` what the transport sees.

mod connection;
mod device;
mod handler;
mod host;
mod packet;
#[cfg(test)]
mod tests;

pub use device::{Vsock, VsockError};
pub use host::ListenError;
pub use packet::{MAX_GUEST_CID, MIN_GUEST_CID};
