//! The guest's side of the metadata service, end to end over the frame path: a smoltcp client
//! stands in for the guest's kernel (ARP, TCP handshake, HTTP request), its frames go through
//! [`MmdsBackend::send`] as the transmit queue hands them over, and what
//! [`MmdsBackend::receive`] yields goes back to it; frames for anyone else reach the tap.

use std::collections::VecDeque;
use std::os::unix::net::UnixDatagram;

use model::api::MmdsVersion;
use model::mmds::{MmdsStore, NetMmds, DEFAULT_MMDS_ADDRESS};
use proptest::prelude::*;
use serde_json::json;
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};

use super::{MmdsBackend, MmdsStack};
use crate::device::testing::guest_errors;
use crate::net::handler::FrameBackend;
use crate::net::{MAX_FRAME_BYTES, VNET_HDR_LEN};

/// The client's device: what it sends waits in `out`, what it is given in `inbox`.
#[derive(Default)]
struct Wire {
    inbox: VecDeque<Vec<u8>>,
    out: VecDeque<Vec<u8>>,
}
struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);
impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}
impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let r = f(&mut frame);
        self.0.push_back(frame);
        r
    }
}
impl phy::Device for Wire {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let frame = self.inbox.pop_front()?;
        Some((Rx(frame), Tx(&mut self.out)))
    }
    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.out))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

/// The guest: a smoltcp interface at 169.254.0.2/16 with one TCP socket.
struct Guest {
    iface: Interface,
    wire: Wire,
    sockets: SocketSet<'static>,
    socket: smoltcp::iface::SocketHandle,
    clock: i64,
}

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 9];

impl Guest {
    fn new() -> Guest {
        let mut wire = Wire::default();
        let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC)));
        let mut iface = Interface::new(config, &mut wire, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|a| a.push(IpCidr::new(IpAddress::v4(169, 254, 0, 2), 16)).unwrap());
        let mut sockets = SocketSet::new(Vec::new());
        let socket = sockets.add(tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 64 * 1024]),
            tcp::SocketBuffer::new(vec![0; 4096]),
        ));
        Guest { iface, wire, sockets, socket, clock: 0 }
    }

    fn tcp(&mut self) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut(self.socket)
    }

    fn connect(&mut self, port: u16) {
        let remote = (IpAddress::Ipv4(DEFAULT_MMDS_ADDRESS), 80);
        let socket = self.sockets.get_mut::<tcp::Socket>(self.socket);
        socket.connect(self.iface.context(), remote, port).unwrap();
    }

    /// Runs the guest and the card until nothing moves (or 200 rounds): frames from the guest
    /// go through `send`, frames for it come from `receive`.
    fn exchange<B: FrameBackend>(&mut self, card: &mut B) {
        for _ in 0..200 {
            self.clock += 10;
            let now = smoltcp::time::Instant::from_millis(self.clock);
            self.iface.poll(now, &mut self.wire, &mut self.sockets);
            let mut moved = false;
            while let Some(frame) = self.wire.out.pop_front() {
                let mut with_header = vec![0u8; VNET_HDR_LEN];
                with_header.extend_from_slice(&frame);
                card.send(&with_header).unwrap();
                moved = true;
            }
            let mut buffer = vec![0u8; MAX_FRAME_BYTES + 1];
            while card.has_pending() {
                let len = card.receive(&mut buffer).unwrap();
                assert_eq!(&buffer[..VNET_HDR_LEN], &[0; VNET_HDR_LEN], "no offloads in MMDS frames");
                self.wire.inbox.push_back(buffer[VNET_HDR_LEN..len].to_vec());
                moved = true;
            }
            if !moved
                && self.iface.poll(now, &mut self.wire, &mut self.sockets) == smoltcp::iface::PollResult::None
            {
                return;
            }
        }
    }

    /// Sends `request` on a new connection from `port` and returns all the service answered
    /// until it closed the connection.
    fn ask<B: FrameBackend>(&mut self, card: &mut B, port: u16, request: &str) -> String {
        self.connect(port);
        self.exchange(card);
        assert!(self.tcp().may_send(), "the handshake completed: {:?}", self.tcp().state());
        self.tcp().send_slice(request.as_bytes()).unwrap();
        self.exchange(card);
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = self.tcp().recv_slice(&mut chunk) {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&chunk[..n]);
        }
        self.tcp().close();
        self.exchange(card);
        String::from_utf8(answer).unwrap()
    }
}

fn mmds(version: MmdsVersion) -> NetMmds {
    let store = MmdsStore::new(10_000);
    store.put(json!({"latest": {"meta-data": {"instance-id": "i-123", "local": {"a": 1}}}})).unwrap();
    NetMmds { address: DEFAULT_MMDS_ADDRESS, version, imds_compat: false, store }
}

/// A card over one end of a socket pair (the tap), and the pair's other end (the host).
fn card(version: MmdsVersion) -> (MmdsBackend<UnixDatagram>, UnixDatagram) {
    let (tap, host) = UnixDatagram::pair().unwrap();
    tap.set_nonblocking(true).unwrap();
    host.set_nonblocking(true).unwrap();
    (MmdsBackend::new(tap, MmdsStack::new(mmds(version), guest_errors())), host)
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

#[test]
fn a_guest_reads_its_metadata_over_arp_tcp_and_http_and_nothing_reaches_the_tap() {
    let (mut card, host) = card(MmdsVersion::V1);
    let mut guest = Guest::new();
    let response = guest.ask(
        &mut card,
        40000,
        "GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n",
    );
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert_eq!(body(&response), "instance-id\nlocal/");
    let mut buffer = [0u8; 2048];
    assert!(host.recv(&mut buffer).is_err(), "no MMDS frame reaches the tap");
}

#[test]
fn v2_session_token_then_get_on_one_kept_alive_connection() {
    let (mut card, _host) = card(MmdsVersion::V2);
    let mut guest = Guest::new();
    let denied = guest.ask(
        &mut card,
        40001,
        "GET /latest/meta-data/instance-id HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");

    guest.connect(40002);
    guest.exchange(&mut card);
    guest
        .tcp()
        .send_slice(b"PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n")
        .unwrap();
    guest.exchange(&mut card);
    let mut chunk = [0u8; 4096];
    let n = guest.tcp().recv_slice(&mut chunk).unwrap();
    let response = std::str::from_utf8(&chunk[..n]).unwrap().to_owned();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let token = body(&response).to_owned();
    let get = format!("GET /latest/meta-data/instance-id HTTP/1.1\r\nX-metadata-token: {token}\r\nConnection: close\r\n\r\n");
    guest.tcp().send_slice(get.as_bytes()).unwrap();
    guest.exchange(&mut card);
    let n = guest.tcp().recv_slice(&mut chunk).unwrap();
    let response = std::str::from_utf8(&chunk[..n]).unwrap();
    assert_eq!(body(response), "i-123", "{response}");
}

#[test]
fn frames_for_anyone_else_go_to_the_tap_unchanged() {
    let (mut card, host) = card(MmdsVersion::V1);
    // An ARP request for another address, and an IPv4 packet to another host, as the guest's
    // smoltcp builds them.
    let mut guest = Guest::new();
    let socket = guest.sockets.get_mut::<tcp::Socket>(guest.socket);
    socket.connect(guest.iface.context(), (IpAddress::v4(169, 254, 0, 1), 80), 40003).unwrap();
    guest.iface.poll(smoltcp::time::Instant::from_millis(1), &mut guest.wire, &mut guest.sockets);
    let arp = guest.wire.out.pop_front().expect("an ARP request");
    let mut frame = vec![0u8; VNET_HDR_LEN];
    frame.extend_from_slice(&arp);
    card.send(&frame).unwrap();
    let mut buffer = [0u8; 2048];
    let len = host.recv(&mut buffer).unwrap();
    assert_eq!(&buffer[..len], &frame[..], "the tap gets the frame as the guest sent it");
    assert!(!card.has_pending());
    // A frame too short to be Ethernet goes to the tap too (it is not the service's to judge).
    card.send(&[0u8; VNET_HDR_LEN + 3]).unwrap();
    assert_eq!(host.recv(&mut buffer).unwrap(), VNET_HDR_LEN + 3);
    // The tap's frames reach the guest when the service has none.
    host.send(&[7u8; 60]).unwrap();
    let mut big = vec![0u8; MAX_FRAME_BYTES + 1];
    assert_eq!(card.receive(&mut big).unwrap(), 60);
}

#[test]
fn connections_beyond_the_limit_are_refused_and_served_again_once_closed() {
    let (mut card, _host) = card(MmdsVersion::V1);
    let mut guests: Vec<Guest> = (0..super::stack::CONNECTIONS + 1).map(|_| Guest::new()).collect();
    for (i, guest) in guests.iter_mut().enumerate() {
        guest.connect(41000 + i as u16);
        guest.exchange(&mut card);
    }
    let open = guests.iter_mut().map(|g| g.tcp().may_send()).filter(|&open| open).count();
    assert_eq!(open, super::stack::CONNECTIONS, "one connection too many is refused");
    for guest in guests.iter_mut().take(2) {
        guest.tcp().send_slice(b"GET /latest HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        guest.exchange(&mut card);
        guest.tcp().close();
        guest.exchange(&mut card);
    }
    let mut late = Guest::new();
    let response =
        late.ask(&mut card, 42000, "GET /latest/meta-data/instance-id HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(body(&response), "i-123");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any bytes after an Ethernet and IPv4 header to the service (and any ARP bytes): the
    /// stack takes them without panicking, and what it queues for the guest stays bounded.
    #[test]
    fn hostile_frames_to_the_service_never_panic(
        frames in prop::collection::vec((any::<bool>(), prop::collection::vec(any::<u8>(), 0..200)), 1..40),
    ) {
        let mut stack = MmdsStack::new(mmds(MmdsVersion::V2), guest_errors());
        for (arp, tail) in frames {
            let mut frame = vec![0x06, 0x01, 0x23, 0x45, 0x67, 0x01];
            frame.extend_from_slice(&GUEST_MAC);
            if arp {
                frame.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
                frame.extend_from_slice(&GUEST_MAC);
                frame.extend_from_slice(&[169, 254, 0, 2, 0, 0, 0, 0, 0, 0]);
                frame.extend_from_slice(&DEFAULT_MMDS_ADDRESS.octets());
            } else {
                let total = (20 + tail.len()) as u16;
                frame.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
                frame.extend_from_slice(&total.to_be_bytes());
                frame.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0, 169, 254, 0, 2]);
                frame.extend_from_slice(&DEFAULT_MMDS_ADDRESS.octets());
            }
            frame.extend_from_slice(&tail);
            if stack.wants(&frame) {
                stack.deliver(&frame);
            }
            prop_assert!(stack.queued() <= super::stack::MAX_QUEUED_FRAMES);
        }
        while stack.next_frame().is_some() {}
    }
}

#[test]
fn the_service_answers_arp_only_for_its_address() {
    let stack = MmdsStack::new(mmds(MmdsVersion::V1), guest_errors());
    let arp = |target: Ipv4Address| {
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(&GUEST_MAC);
        frame.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        frame.extend_from_slice(&GUEST_MAC);
        frame.extend_from_slice(&[169, 254, 0, 2, 0, 0, 0, 0, 0, 0]);
        frame.extend_from_slice(&target.octets());
        frame
    };
    assert!(stack.wants(&arp(DEFAULT_MMDS_ADDRESS)));
    assert!(!stack.wants(&arp(Ipv4Address::new(169, 254, 0, 1))));
}

/// A value larger than a socket's send buffer goes out whole, as the guest acknowledges it.
#[test]
fn a_large_value_is_sent_whole() {
    let (tap, _host) = UnixDatagram::pair().unwrap();
    tap.set_nonblocking(true).unwrap();
    let big = "m".repeat(45_000);
    let store = MmdsStore::new(50_000);
    store.put(json!({ "big": big })).unwrap();
    let mmds = NetMmds { address: DEFAULT_MMDS_ADDRESS, version: MmdsVersion::V1, imds_compat: false, store };
    let mut card = MmdsBackend::new(tap, MmdsStack::new(mmds, guest_errors()));
    let mut guest = Guest::new();
    let response = guest.ask(&mut card, 43000, "GET /big HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(response.starts_with("HTTP/1.1 200"), "{}", &response[..response.len().min(200)]);
    assert_eq!(body(&response), big);
}
