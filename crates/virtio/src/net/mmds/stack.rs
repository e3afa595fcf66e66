//! One card's metadata service endpoint: a smoltcp interface (the MMDS address, its own MAC) over
//! two in-memory frame queues, serving HTTP on TCP port 80 with [`super::http`].
//!
//! Everything is bounded: [`CONNECTIONS`] sockets with fixed buffers, one request of at most
//! [`super::http::MAX_REQUEST_BYTES`] per connection, [`MAX_QUEUED_FRAMES`] frames waiting for
//! the guest's receive buffers (smoltcp keeps the rest in its socket buffers and sends it when
//! there is room), idle connections dropped after [`IDLE`].
//!
//! The stack runs only when the worker calls it (a frame from the guest, or a receive while
//! smoltcp has something due): with no timer of its own, a segment smoltcp would retransmit waits
//! for the card's next frame either way. The queues lose nothing, so only a guest that drops
//! frames itself sees it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use model::mmds::NetMmds;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Checksum, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{
    ArpPacket, EthernetAddress, EthernetFrame, EthernetProtocol, HardwareAddress, IpCidr, Ipv4Address,
    Ipv4Packet,
};

use super::http::{self, Parsed, MAX_REQUEST_BYTES};
use crate::device::GuestErrorLog;

/// The service's MAC address (Firecracker's).
const MAC: [u8; 6] = [0x06, 0x01, 0x23, 0x45, 0x67, 0x01];
const PORT: u16 = 80;
/// Connections served at once; a SYN beyond them is refused (RST).
pub const CONNECTIONS: usize = 16;
const SOCKET_RX_BYTES: usize = 4096;
const SOCKET_TX_BYTES: usize = 16 * 1024;
/// Frames waiting for the guest; beyond it smoltcp is told the device is busy.
pub const MAX_QUEUED_FRAMES: usize = 64;
/// A connection with no traffic this long is dropped.
const IDLE: Duration = Duration::from_secs(60);
/// The largest Ethernet frame the service sends or takes (no VLAN, no jumbo frames).
const FRAME_BYTES: usize = 1514;

/// smoltcp's device: frames from the guest in `rx`, frames for the guest in `tx`.
#[derive(Default)]
struct Queues {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
}

struct RxToken(Vec<u8>);
struct TxToken<'q>(&'q mut VecDeque<Vec<u8>>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let result = f(&mut frame);
        // A reply to a frame may come when the queue is full (the token came with the frame):
        // it is dropped, as a busy NIC would, and TCP sends it again.
        if self.0.len() < MAX_QUEUED_FRAMES {
            self.0.push_back(frame);
        }
        result
    }
}

impl phy::Device for Queues {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(RxToken, TxToken<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((RxToken(frame), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<TxToken<'_>> {
        (self.tx.len() < MAX_QUEUED_FRAMES).then_some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = FRAME_BYTES;
        // A guest with checksum offload leaves its TCP checksums partial (the virtio-net header
        // says so): smoltcp must not check them. It still computes its own.
        caps.checksum.tcp = Checksum::Tx;
        caps.checksum.icmpv4 = Checksum::Tx;
        caps
    }
}

/// One connection's HTTP state beside its socket.
struct Connection {
    handle: SocketHandle,
    request: Vec<u8>,
    response: Vec<u8>,
    sent: usize,
    close_after: bool,
    /// When the guest last sent or took data; `None` while the socket listens, so idle time
    /// counts from the connection's first segment, not from when listening began (else the first
    /// connection after a quiet minute would be aborted as it arrives).
    last_activity: Option<Instant>,
}

/// The metadata service as one card's guest reaches it.
pub struct MmdsStack {
    mmds: NetMmds,
    address: Ipv4Address,
    iface: Interface,
    queues: Queues,
    sockets: SocketSet<'static>,
    connections: Vec<Connection>,
    epoch: Instant,
    guest_errors: Arc<GuestErrorLog>,
}

impl MmdsStack {
    pub fn new(mmds: NetMmds, guest_errors: Arc<GuestErrorLog>) -> MmdsStack {
        let mut queues = Queues::default();
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(MAC)));
        let mut seed = [0u8; 8];
        // The seed picks TCP's initial sequence numbers; a fixed one would do no harm here (the
        // guest is the only peer), so a failure is not worth refusing the card for.
        let _ = getrandom::fill(&mut seed);
        config.random_seed = u64::from_ne_bytes(seed);
        let epoch = Instant::now();
        let mut iface = Interface::new(config, &mut queues, smoltcp::time::Instant::ZERO);
        let address = mmds.address;
        // A /0 network: whatever address the guest has, it is a neighbour (learnt from its ARP
        // request, or asked for), so replies need no route.
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(address.into(), 0));
        });
        let mut sockets = SocketSet::new(Vec::with_capacity(CONNECTIONS));
        let connections = (0..CONNECTIONS)
            .map(|_| {
                let socket = tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0; SOCKET_RX_BYTES]),
                    tcp::SocketBuffer::new(vec![0; SOCKET_TX_BYTES]),
                );
                Connection {
                    handle: sockets.add(socket),
                    request: Vec::new(),
                    response: Vec::new(),
                    sent: 0,
                    close_after: false,
                    last_activity: None,
                }
            })
            .collect();
        let mut stack = MmdsStack { mmds, address, iface, queues, sockets, connections, epoch, guest_errors };
        stack.serve();
        stack
    }

    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// Whether a guest's Ethernet frame is for the service: an ARP packet asking for its address,
    /// or an IPv4 packet to it.
    pub fn wants(&self, frame: &[u8]) -> bool {
        let Ok(ethernet) = EthernetFrame::new_checked(frame) else { return false };
        match ethernet.ethertype() {
            EthernetProtocol::Arp => ArpPacket::new_checked(ethernet.payload())
                .is_ok_and(|arp| arp.target_protocol_addr() == self.address.octets()),
            EthernetProtocol::Ipv4 => {
                Ipv4Packet::new_checked(ethernet.payload()).is_ok_and(|ip| ip.dst_addr() == self.address)
            }
            _ => false,
        }
    }

    /// Takes a frame [`Self::wants`] from the guest and runs the stack on it.
    pub fn deliver(&mut self, frame: &[u8]) {
        if frame.len() > FRAME_BYTES + 64 * 1024 {
            return;
        }
        self.queues.rx.push_back(frame.to_vec());
        self.poll();
    }

    /// The next frame for the guest, running the stack first if none waits and smoltcp has
    /// something due (data held back for want of queue room, a retransmission): called for every
    /// frame the card receives, so it costs nothing while the service is idle.
    pub fn next_frame(&mut self) -> Option<Vec<u8>> {
        if self.queues.tx.is_empty() {
            let now = self.now();
            if self.iface.poll_at(now, &self.sockets).is_some_and(|at| at <= now) {
                self.poll();
            }
        }
        self.queues.tx.pop_front()
    }

    /// Whether frames wait for the guest.
    pub fn has_frames(&self) -> bool {
        !self.queues.tx.is_empty()
    }

    /// Frames waiting for the guest.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.queues.tx.len()
    }

    /// Runs smoltcp and the HTTP connections until neither has anything more to do now.
    fn poll(&mut self) {
        for _ in 0..16 {
            let now = self.now();
            let changed = self.iface.poll(now, &mut self.queues, &mut self.sockets);
            let served = self.serve();
            if changed == smoltcp::iface::PollResult::None && !served {
                break;
            }
        }
    }

    /// Reads requests, writes responses, recycles finished sockets; true if anything moved.
    fn serve(&mut self) -> bool {
        let now = Instant::now();
        let mut progress = false;
        let mut listening = 0;
        for connection in &mut self.connections {
            let socket = self.sockets.get_mut::<tcp::Socket>(connection.handle);
            if !socket.is_open() {
                connection.request.clear();
                connection.response.clear();
                connection.sent = 0;
                connection.close_after = false;
                // Cannot fail: the port is not 0 and the socket is closed.
                let _ = socket.listen(PORT);
                connection.last_activity = None;
            }
            if socket.state() == tcp::State::Listen {
                connection.last_activity = None;
                listening += 1;
                continue;
            }
            let since = *connection.last_activity.get_or_insert(now);
            if now.duration_since(since) > IDLE {
                socket.abort();
                progress = true;
                continue;
            }
            while socket.can_recv()
                && connection.request.len() <= MAX_REQUEST_BYTES
                && !connection.close_after
            {
                let room = MAX_REQUEST_BYTES + 1 - connection.request.len();
                let mut chunk = [0u8; 1024];
                let take = room.min(chunk.len());
                match socket.recv_slice(&mut chunk[..take]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        connection.request.extend_from_slice(&chunk[..n]);
                        connection.last_activity = Some(now);
                        progress = true;
                    }
                }
            }
            let mut incomplete = connection.request.is_empty();
            if connection.response.is_empty() && !connection.close_after && !connection.request.is_empty() {
                let parsed = http::handle(&connection.request, &self.mmds);
                incomplete = parsed == Parsed::Incomplete;
                if let Parsed::Complete { consumed, response, close } = parsed {
                    if response.starts_with(b"HTTP/1.1 4") && close {
                        self.guest_errors.log(format_args!("MMDS: refused a malformed or oversized request"));
                    }
                    connection.request.drain(..consumed.min(connection.request.len()));
                    connection.response = response;
                    connection.sent = 0;
                    connection.close_after = close;
                    progress = true;
                }
            }
            if connection.sent < connection.response.len() && socket.can_send() {
                if let Ok(n) = socket.send_slice(&connection.response[connection.sent..]) {
                    connection.sent += n;
                    progress |= n > 0;
                    connection.last_activity = Some(now);
                }
            }
            if !connection.response.is_empty() && connection.sent == connection.response.len() {
                connection.response.clear();
                connection.sent = 0;
                if connection.close_after {
                    socket.close();
                }
                progress = true;
            }
            // The guest closed its side and has nothing more to be answered.
            if socket.state() == tcp::State::CloseWait && connection.response.is_empty() && incomplete {
                socket.close();
                progress = true;
            }
        }
        if listening == 0 {
            // Every socket is busy: those only waiting out TIME-WAIT give way to new guests.
            for connection in &self.connections {
                let socket = self.sockets.get_mut::<tcp::Socket>(connection.handle);
                if socket.state() == tcp::State::TimeWait {
                    socket.abort();
                    progress = true;
                }
            }
        }
        progress
    }
}
