//! virtio-net (network device, virtio 1.2 section 5.1) over a host tap device: one receive and one
//! transmit queue, no control queue, no multiqueue.
//!
//! `tap.rs` opens the tap, `mac.rs` is the device's address, `device.rs` is what the transport
//! sees (features, configuration space), `handler.rs` moves frames between the queues and the
//! tap on the device's worker thread, and `control.rs` is the host's handle on the card's rate
//! limiters (one for each direction, Firecracker's `rx_rate_limiter` and `tx_rate_limiter`).
//! A card named by `PUT /mmds/config` puts `mmds/` (the metadata service) in front of its tap.
//!
//! Every frame, in both directions and on the tap too, starts with the 12-byte
//! `virtio_net_hdr_v1` (the tap is told to use that size), so the header passes through unchanged
//! and checksum and segmentation offloads are the tap's to honour. Without
//! `VIRTIO_NET_F_MRG_RXBUF`, each received frame goes into one buffer chain: a driver that accepts
//! the guest TSO features must give chains that hold a whole 64 KiB frame (Linux then does).

mod control;
mod device;
mod handler;
mod mac;
pub mod mmds;
mod tap;

pub use control::{NetControl, NetLimiters};
pub use device::Net;
pub use handler::FrameBackend;
pub use mac::{random_local_mac, MacAddress};
pub use tap::{Tap, TapError, TAP_NAME_MAX_BYTES};

/// Size of `struct virtio_net_hdr_v1` (flags, gso_type, hdr_len, gso_size, csum_start,
/// csum_offset, num_buffers), the header every frame starts with under virtio 1.x.
const VNET_HDR_LEN: usize = 12;

/// The largest frame, header included, either way: a 64 KiB segmentation-offload packet (the
/// most Linux builds for a tap or a virtio-net device), or a 65535-byte MTU frame with its
/// Ethernet and VLAN headers, whichever is larger.
const MAX_FRAME_BYTES: usize = VNET_HDR_LEN + 64 * 1024 + 18;
