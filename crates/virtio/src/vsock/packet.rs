//! The virtio-vsock packet header (virtio 1.2, section 5.10.6) and what a valid one looks like.

/// The host's context ID: the address guests use for the VMM side.
pub const HOST_CID: u64 = 2;
/// The lowest context ID a guest may have (0–2 are reserved: hypervisor, local, host).
pub const MIN_GUEST_CID: u64 = 3;
/// The largest context ID a guest may have: `u32::MAX` is VMADDR_CID_ANY, and Linux's socket
/// address holds a 32-bit CID even though the header carries 64 bits.
pub const MAX_GUEST_CID: u64 = u32::MAX as u64 - 1;

/// Size of the header in front of every packet.
pub const HEADER_SIZE: usize = 44;
/// The largest payload a packet may carry (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE); a longer one is
/// malformed.
pub const MAX_PAYLOAD: u32 = 64 * 1024;

/// `type`: a stream socket, the only kind this device offers (no VIRTIO_VSOCK_F_SEQPACKET).
pub const TYPE_STREAM: u16 = 1;

/// `flags` of a SHUTDOWN: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// `flags` of a SHUTDOWN: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// `op`: what a packet asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Request,
    Response,
    Rst,
    Shutdown,
    Rw,
    CreditUpdate,
    CreditRequest,
}

impl Op {
    fn from_wire(op: u16) -> Option<Op> {
        Some(match op {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }

    pub fn to_wire(self) -> u16 {
        match self {
            Op::Request => 1,
            Op::Response => 2,
            Op::Rst => 3,
            Op::Shutdown => 4,
            Op::Rw => 5,
            Op::CreditUpdate => 6,
            Op::CreditRequest => 7,
        }
    }
}

/// `struct virtio_vsock_hdr`, every field little-endian on the wire. `op` and `kind` stay raw so
/// that an RST answering a packet with an unknown op or type can still name them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    /// Payload bytes after the header.
    pub len: u32,
    pub kind: u16,
    pub op: u16,
    pub flags: u32,
    /// The sender's receive buffer for this connection, in bytes.
    pub buf_alloc: u32,
    /// Bytes the sender has taken out of that buffer (delivered to its application), ever.
    pub fwd_cnt: u32,
}

impl Header {
    pub fn from_bytes(bytes: &[u8; HEADER_SIZE]) -> Header {
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default());
        let u16_at = |at: usize| u16::from_le_bytes(bytes[at..at + 2].try_into().unwrap_or_default());
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            kind: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    pub fn to_bytes(self) -> [u8; HEADER_SIZE] {
        let mut bytes = [0u8; HEADER_SIZE];
        bytes[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        bytes[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        bytes[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        bytes[24..28].copy_from_slice(&self.len.to_le_bytes());
        bytes[28..30].copy_from_slice(&self.kind.to_le_bytes());
        bytes[30..32].copy_from_slice(&self.op.to_le_bytes());
        bytes[32..36].copy_from_slice(&self.flags.to_le_bytes());
        bytes[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        bytes[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        bytes
    }

    /// The operation, if the header names a known one.
    pub fn op(&self) -> Option<Op> {
        Op::from_wire(self.op)
    }

    /// The RST that refuses this packet: from where it was going, to where it came from.
    pub fn reset_reply(&self) -> Header {
        Header {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            kind: self.kind,
            op: Op::Rst.to_wire(),
            ..Header::default()
        }
    }
}

/// Why a packet from the guest is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("the buffer holds {0} bytes, less than a header")]
    ShortHeader(usize),
    #[error("source CID {found} is not the guest's ({expected})")]
    WrongSource { found: u64, expected: u64 },
    #[error("destination CID {0} is not the host")]
    UnknownDestination(u64),
    #[error("socket type {0} is not a stream")]
    UnsupportedType(u16),
    #[error("unknown operation {0}")]
    UnknownOp(u16),
    #[error("payload of {0} bytes is larger than {MAX_PAYLOAD}")]
    PayloadTooLarge(u32),
    #[error("header says {declared} payload bytes, the buffer holds {available}")]
    PayloadTruncated { declared: u32, available: usize },
}

impl PacketError {
    /// Whether the guest should hear an RST: not for a packet that does not come from it (its
    /// addresses mean nothing), nor for one too short to have addresses.
    pub fn deserves_reset(&self) -> bool {
        !matches!(self, PacketError::ShortHeader(_) | PacketError::WrongSource { .. })
    }
}

/// Checks a guest packet's header against what this device supports; `payload_available` is what
/// the buffer holds after the header. Returns the operation.
pub fn validate(header: &Header, guest_cid: u64, payload_available: usize) -> Result<Op, PacketError> {
    if header.src_cid != guest_cid {
        return Err(PacketError::WrongSource { found: header.src_cid, expected: guest_cid });
    }
    if header.dst_cid != HOST_CID {
        return Err(PacketError::UnknownDestination(header.dst_cid));
    }
    if header.kind != TYPE_STREAM {
        return Err(PacketError::UnsupportedType(header.kind));
    }
    let op = header.op().ok_or(PacketError::UnknownOp(header.op))?;
    if op == Op::Rw {
        if header.len > MAX_PAYLOAD {
            return Err(PacketError::PayloadTooLarge(header.len));
        }
        if header.len as usize > payload_available {
            return Err(PacketError::PayloadTruncated { declared: header.len, available: payload_available });
        }
    }
    Ok(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUEST: u64 = 3;

    fn request() -> Header {
        Header {
            src_cid: GUEST,
            dst_cid: HOST_CID,
            src_port: 1234,
            dst_port: 52,
            kind: TYPE_STREAM,
            op: Op::Request.to_wire(),
            buf_alloc: 4096,
            ..Header::default()
        }
    }

    #[test]
    fn header_round_trips_through_its_wire_layout() {
        let header = Header { len: 7, flags: 3, fwd_cnt: 0x0102_0304, ..request() };
        let bytes = header.to_bytes();
        assert_eq!(&bytes[0..8], &GUEST.to_le_bytes());
        assert_eq!(&bytes[8..16], &HOST_CID.to_le_bytes());
        assert_eq!(&bytes[16..20], &1234u32.to_le_bytes());
        assert_eq!(&bytes[20..24], &52u32.to_le_bytes());
        assert_eq!(&bytes[24..28], &7u32.to_le_bytes());
        assert_eq!(&bytes[28..30], &1u16.to_le_bytes());
        assert_eq!(&bytes[30..32], &1u16.to_le_bytes());
        assert_eq!(&bytes[32..36], &3u32.to_le_bytes());
        assert_eq!(&bytes[36..40], &4096u32.to_le_bytes());
        assert_eq!(&bytes[40..44], &0x0102_0304u32.to_le_bytes());
        assert_eq!(Header::from_bytes(&bytes), header);
    }

    #[test]
    fn a_valid_request_passes() {
        assert_eq!(validate(&request(), GUEST, 0), Ok(Op::Request));
        let rw = Header { op: Op::Rw.to_wire(), len: 10, ..request() };
        assert_eq!(validate(&rw, GUEST, 10), Ok(Op::Rw));
    }

    #[test]
    fn malformed_headers_are_refused_with_the_reason() {
        let rw = |len| Header { op: Op::Rw.to_wire(), len, ..request() };
        for (header, available, error) in [
            (Header { src_cid: 9, ..request() }, 0, PacketError::WrongSource { found: 9, expected: GUEST }),
            (Header { dst_cid: 7, ..request() }, 0, PacketError::UnknownDestination(7)),
            (Header { kind: 2, ..request() }, 0, PacketError::UnsupportedType(2)),
            (Header { op: 0, ..request() }, 0, PacketError::UnknownOp(0)),
            (Header { op: 99, ..request() }, 0, PacketError::UnknownOp(99)),
            (rw(MAX_PAYLOAD + 1), usize::MAX, PacketError::PayloadTooLarge(MAX_PAYLOAD + 1)),
            (rw(100), 99, PacketError::PayloadTruncated { declared: 100, available: 99 }),
        ] {
            assert_eq!(validate(&header, GUEST, available), Err(error));
        }
        assert!(!PacketError::WrongSource { found: 9, expected: GUEST }.deserves_reset());
        assert!(PacketError::UnknownDestination(7).deserves_reset());
    }

    #[test]
    fn a_reset_reply_swaps_the_addresses() {
        let header = Header { dst_cid: 7, ..request() };
        let reply = header.reset_reply();
        assert_eq!((reply.src_cid, reply.src_port, reply.dst_cid, reply.dst_port), (7, 52, GUEST, 1234));
        assert_eq!(reply.op(), Some(Op::Rst));
        assert_eq!((reply.len, reply.buf_alloc, reply.fwd_cnt), (0, 0, 0));
    }
}
