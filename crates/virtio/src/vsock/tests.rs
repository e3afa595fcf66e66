//! The handler against hand-built queues in guest memory and real Unix sockets. The tests run the
//! worker's event loop themselves ([`Harness::pump`]), so every step is synchronous: a host
//! socket's write is visible to the device's epoll at once.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::GuestRam;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent};

use super::connection::BUF_ALLOC;
use super::handler::{HostEnd, VsockHandler, EVENT_QUEUE, MAX_CONNECTIONS, RX_QUEUE, TX_QUEUE};
use super::host;
use super::packet::{
    Header, Op, HEADER_SIZE, HOST_CID, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use crate::device::testing::{guest_errors, Recorder};
use crate::device::InterruptCause;
use crate::metrics::VsockMetrics;
use crate::worker::{BackendRegistry, QueueHandler};

const GUEST_CID: u64 = 3;
const QUEUE_SIZE: u16 = 64;
const WRITE: u16 = 2; // VRING_DESC_F_WRITE
/// Every rx buffer: a header and a page, as Linux gives them.
const RX_BUFFER: u32 = HEADER_SIZE as u32 + 4096;
/// Room per descriptor slot: a header and the largest payload.
const SLOT: u64 = 0x1_1000;
/// The first port the device gives its end of host-initiated connections.
const FIRST_HOST_PORT: u32 = 1 << 30;
/// A host socket read that takes this long means the device never wrote: fail, do not hang.
const HOST_READ_LIMIT: Duration = Duration::from_secs(10);

/// One split queue in guest memory, driver side: descriptors and buffers in fixed slots.
struct DriverQueue {
    desc_table: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    buffers: GuestAddress,
    added: u16,
    used_seen: u16,
}

impl DriverQueue {
    fn new(memory: &GuestRam, rings: u64, buffers: u64) -> (DriverQueue, Queue) {
        let mock = MockSplitQueue::create(memory, GuestAddress(rings), QUEUE_SIZE);
        let queue: Queue = mock.create_queue().unwrap();
        let driver = DriverQueue {
            desc_table: mock.desc_table_addr(),
            avail: mock.avail_addr(),
            used: mock.used_addr(),
            buffers: GuestAddress(buffers),
            added: 0,
            used_seen: 0,
        };
        (driver, queue)
    }

    fn slot(&self, head: u16) -> GuestAddress {
        self.buffers.unchecked_add(u64::from(head) * SLOT)
    }

    /// Offers one single-descriptor buffer holding `bytes` (device-readable) or `len` bytes of
    /// room (device-writable).
    fn add(&mut self, memory: &GuestRam, bytes: &[u8], len: u32, flags: u16) {
        let head = self.added % QUEUE_SIZE;
        memory.write_slice(bytes, self.slot(head)).unwrap();
        let descriptor = RawDescriptor::from(Descriptor::new(self.slot(head).0, len, flags, 0));
        memory.write_obj(descriptor, self.desc_table.unchecked_add(16 * u64::from(head))).unwrap();
        memory.write_obj(head, self.avail.unchecked_add(4 + 2 * u64::from(head))).unwrap();
        self.added = self.added.wrapping_add(1);
        memory.write_obj(self.added, self.avail.unchecked_add(2)).unwrap();
    }

    /// The buffers the device used since the last call: (head, length written).
    fn take_used(&mut self, memory: &GuestRam) -> Vec<(u16, u32)> {
        let used_idx: u16 = memory.read_obj(self.used.unchecked_add(2)).unwrap();
        let mut taken = Vec::new();
        while self.used_seen != used_idx {
            let element = self.used.unchecked_add(4 + 8 * u64::from(self.used_seen % QUEUE_SIZE));
            let id: u32 = memory.read_obj(element).unwrap();
            let len: u32 = memory.read_obj(element.unchecked_add(4)).unwrap();
            taken.push((id as u16, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        taken
    }

    fn outstanding(&self) -> u16 {
        self.added.wrapping_sub(self.used_seen)
    }
}

/// A packet the guest got, payload included.
#[derive(Debug)]
struct Received {
    header: Header,
    payload: Vec<u8>,
}

impl Received {
    fn op(&self) -> Option<Op> {
        self.header.op()
    }
}

struct Harness {
    memory: GuestRam,
    rx: DriverQueue,
    tx: DriverQueue,
    handler: VsockHandler,
    epoll: Arc<Epoll>,
    interrupts: Arc<Recorder>,
    metrics: Arc<VsockMetrics>,
    uds: PathBuf,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let memory = GuestRam::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
        let (rx, rx_queue) = DriverQueue::new(&memory, 0x0, 0x10_0000);
        let (tx, tx_queue) = DriverQueue::new(&memory, 0x1000, 0x60_0000);
        let listener = host::listen(&uds).unwrap();
        let interrupts = Arc::new(Recorder::default());
        let metrics = Arc::new(VsockMetrics::default());
        let mut handler = VsockHandler::new(
            memory.clone(),
            [rx_queue, tx_queue, <Queue as virtio_queue::QueueT>::new(256).unwrap()],
            interrupts.clone(),
            guest_errors(),
            metrics.clone(),
            HostEnd { guest_cid: GUEST_CID, uds_path: uds.clone(), listener },
        );
        // The worker's part: the listener is backend 0, connections come through the registry.
        let epoll = Arc::new(Epoll::new().unwrap());
        let fds = handler.backend_fds();
        epoll.ctl(ControlOperation::Add, fds[0], EpollEvent::new(handler.backend_interest(0), 0)).unwrap();
        handler.attach_backends(BackendRegistry::new(epoll.clone(), 0));
        Harness { memory, rx, tx, handler, epoll, interrupts, metrics, uds, _dir: dir }
    }

    /// Runs the worker's loop until nothing is ready. A handler that leaves readiness it does not
    /// consume (a spinning worker) fails here.
    fn pump(&mut self) {
        let mut events = vec![EpollEvent::default(); 16];
        for _ in 0..1000 {
            let count = self.epoll.wait(0, &mut events).unwrap();
            if count == 0 {
                return;
            }
            for event in &events[..count] {
                self.handler.process_backend(event.data() as usize);
            }
        }
        panic!("host sockets stay ready: the worker would spin");
    }

    /// Blocks until a host socket is ready (a host process at work on another thread), then
    /// runs the loop.
    fn wait_for_host(&mut self) {
        let mut events = [EpollEvent::default(); 4];
        let ready = self.epoll.wait(HOST_READ_LIMIT.as_millis() as i32, &mut events).unwrap();
        assert!(ready > 0, "no host socket became ready within {HOST_READ_LIMIT:?}");
        self.pump();
    }

    /// Offers `count` rx buffers and notifies the rx queue.
    fn give_rx(&mut self, count: usize) {
        for _ in 0..count {
            self.rx.add(&self.memory, &[], RX_BUFFER, WRITE);
        }
        self.handler.process_queue(RX_QUEUE);
        self.pump();
    }

    /// The guest sends one packet (a header and `payload`) on the tx queue.
    fn send(&mut self, header: Header, payload: &[u8]) {
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend_from_slice(payload);
        self.send_raw(&bytes);
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.tx.add(&self.memory, bytes, bytes.len() as u32, 0);
        self.handler.process_queue(TX_QUEUE);
        self.pump();
        self.tx.take_used(&self.memory);
        assert_eq!(self.tx.outstanding(), 0, "every tx buffer is completed at once");
    }

    /// The packets the guest got since the last call.
    fn received(&mut self) -> Vec<Received> {
        let used = self.rx.take_used(&self.memory);
        used.into_iter()
            .map(|(head, len)| {
                assert!(len as usize >= HEADER_SIZE, "an rx buffer came back with {len} bytes");
                let mut bytes = [0u8; HEADER_SIZE];
                self.memory.read_slice(&mut bytes, self.rx.slot(head)).unwrap();
                let header = Header::from_bytes(&bytes);
                let mut payload = vec![0u8; len as usize - HEADER_SIZE];
                self.memory
                    .read_slice(&mut payload, self.rx.slot(head).unchecked_add(HEADER_SIZE as u64))
                    .unwrap();
                assert_eq!(header.len as usize, payload.len(), "header length and used length agree");
                Received { header, payload }
            })
            .collect()
    }

    /// The one packet the guest got since the last call.
    #[track_caller]
    fn received_one(&mut self) -> Received {
        let mut packets = self.received();
        assert_eq!(packets.len(), 1, "{packets:?}");
        packets.remove(0)
    }

    /// A host process connects and asks for `guest_port`; returns its socket and the REQUEST the
    /// guest got.
    fn host_connects(&mut self, guest_port: u32) -> (UnixStream, Received) {
        let mut host = UnixStream::connect(&self.uds).unwrap();
        host.set_read_timeout(Some(HOST_READ_LIMIT)).unwrap();
        host.write_all(format!("CONNECT {guest_port}\n").as_bytes()).unwrap();
        self.pump();
        let request = self.received_one();
        (host, request)
    }

    /// A host process connects to `guest_port` and the guest accepts; returns the host socket
    /// and the device's port.
    fn established_from_host(&mut self, guest_port: u32) -> (UnixStream, u32) {
        let (mut host, request) = self.host_connects(guest_port);
        assert_eq!(request.op(), Some(Op::Request));
        let host_port = request.header.src_port;
        self.send(guest_packet(Op::Response, guest_port, host_port), &[]);
        assert_eq!(read_line(&mut host), format!("OK {host_port}"));
        (host, host_port)
    }
}

/// A packet from guest port `guest_port` to host port `host_port`, with a 64 KiB buffer.
fn guest_packet(op: Op, guest_port: u32, host_port: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: guest_port,
        dst_port: host_port,
        kind: TYPE_STREAM,
        op: op.to_wire(),
        buf_alloc: 64 * 1024,
        ..Header::default()
    }
}

fn rw(guest_port: u32, host_port: u32, data: &[u8]) -> Header {
    Header { len: data.len() as u32, ..guest_packet(Op::Rw, guest_port, host_port) }
}

/// Reads up to a newline, which is left out.
fn read_line(stream: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8];
    while stream.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

fn read_exactly(stream: &mut UnixStream, count: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; count];
    stream.read_exact(&mut bytes).unwrap();
    bytes
}

#[track_caller]
fn assert_closed(stream: &mut UnixStream) {
    stream.set_read_timeout(Some(HOST_READ_LIMIT)).unwrap();
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "unexpected bytes {rest:?}"),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
    }
}

#[track_caller]
fn assert_reset(packet: &Received, guest_port: u32, host_port: u32) {
    assert_eq!(packet.op(), Some(Op::Rst), "{packet:?}");
    assert_eq!((packet.header.src_port, packet.header.dst_port), (host_port, guest_port));
    assert_eq!((packet.header.src_cid, packet.header.dst_cid), (HOST_CID, GUEST_CID));
}

#[test]
fn a_host_connect_reaches_the_guest_as_a_request_and_its_response_as_ok() {
    let mut h = Harness::new();
    h.give_rx(4);
    let (mut host, request) = h.host_connects(52);
    let header = request.header;
    assert_eq!(request.op(), Some(Op::Request));
    assert_eq!((header.src_cid, header.dst_cid), (HOST_CID, GUEST_CID));
    assert_eq!((header.src_port, header.dst_port), (FIRST_HOST_PORT, 52));
    assert_eq!((header.kind, header.len, header.buf_alloc, header.fwd_cnt), (TYPE_STREAM, 0, BUF_ALLOC, 0));
    assert!(h.interrupts.0.lock().unwrap().contains(&InterruptCause::Queue(RX_QUEUE as u16)));

    h.send(guest_packet(Op::Response, 52, FIRST_HOST_PORT), &[]);
    assert_eq!(read_line(&mut host), format!("OK {FIRST_HOST_PORT}"));
    assert!(h.received().is_empty());
}

#[test]
fn bytes_flow_both_ways_once_established() {
    let mut h = Harness::new();
    h.give_rx(8);
    let (mut host, port) = h.established_from_host(52);
    assert_eq!(h.metrics.take().get("conns_added"), Some(1));

    h.send(rw(52, port, b"ping from the guest"), b"ping from the guest");
    assert_eq!(read_exactly(&mut host, 19), b"ping from the guest");

    host.write_all(b"pong from the host").unwrap();
    h.pump();
    let packet = h.received_one();
    assert_eq!(packet.op(), Some(Op::Rw));
    assert_eq!(packet.payload, b"pong from the host");
    assert_eq!((packet.header.src_port, packet.header.dst_port), (port, 52));
    assert_eq!(packet.header.fwd_cnt, 19, "the device says how much of the guest's data it forwarded");
    let counts = h.metrics.take();
    let count = |name| counts.get(name).unwrap();
    assert_eq!((count("tx_packets_count"), count("tx_bytes_count")), (1, 19));
    assert_eq!((count("rx_packets_count"), count("rx_bytes_count")), (1, 18));
}

#[test]
fn data_the_host_sends_early_waits_for_the_guests_response() {
    let mut h = Harness::new();
    h.give_rx(4);
    let (mut host, request) = h.host_connects(52);
    host.write_all(b"eager").unwrap();
    h.pump();
    assert!(h.received().is_empty(), "no data before the connection exists");
    h.send(guest_packet(Op::Response, 52, request.header.src_port), &[]);
    assert_eq!(h.received_one().payload, b"eager");
    assert!(read_line(&mut host).starts_with("OK "));
}

#[test]
fn a_guest_reset_refuses_a_host_connect() {
    let mut h = Harness::new();
    h.give_rx(4);
    let (mut host, request) = h.host_connects(52);
    h.send(guest_packet(Op::Rst, 52, request.header.src_port), &[]);
    assert_closed(&mut host);
    assert!(h.received().is_empty(), "an RST is never answered");
}

#[test]
fn a_host_process_that_leaves_before_the_guest_accepts_resets_the_request() {
    let mut h = Harness::new();
    h.give_rx(4);
    let (host, request) = h.host_connects(52);
    drop(host);
    h.pump();
    assert_reset(&h.received_one(), 52, request.header.src_port);
}

#[test]
fn bad_connect_lines_close_the_host_socket() {
    let mut h = Harness::new();
    h.give_rx(4);
    for line in [&b"CONNECT x\n"[..], b"HELLO 52\n", &[b'7'; 40]] {
        let mut host = UnixStream::connect(&h.uds).unwrap();
        host.write_all(line).unwrap();
        h.pump();
        assert_closed(&mut host);
    }
    // A host process that leaves halfway through its line is forgotten as well.
    let mut host = UnixStream::connect(&h.uds).unwrap();
    host.write_all(b"CONN").unwrap();
    h.pump();
    drop(host);
    h.pump();
    assert!(h.received().is_empty());
}

#[test]
fn each_host_connection_gets_its_own_port() {
    let mut h = Harness::new();
    h.give_rx(4);
    let (_a, first) = h.host_connects(52);
    let (_b, second) = h.host_connects(52);
    assert_eq!(first.header.src_port, FIRST_HOST_PORT);
    assert_eq!(second.header.src_port, FIRST_HOST_PORT + 1);
}

#[test]
fn a_guest_connect_reaches_the_host_listener_on_the_port_path() {
    let mut h = Harness::new();
    h.give_rx(8);
    let listener = UnixListener::bind(host::port_path(&h.uds, 1234)).unwrap();
    h.send(guest_packet(Op::Request, 5000, 1234), &[]);
    let response = h.received_one();
    assert_eq!(response.op(), Some(Op::Response));
    assert_eq!((response.header.src_port, response.header.dst_port), (1234, 5000));
    assert_eq!(response.header.buf_alloc, BUF_ALLOC);
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(HOST_READ_LIMIT)).unwrap();

    h.send(rw(5000, 1234, b"hello host"), b"hello host");
    assert_eq!(read_exactly(&mut host, 10), b"hello host");
    host.write_all(b"hello guest").unwrap();
    h.pump();
    assert_eq!(h.received_one().payload, b"hello guest");

    // The guest closes: the host process reads end-of-file, the guest gets its RST.
    h.send(Header { flags: SHUTDOWN_BOTH, ..guest_packet(Op::Shutdown, 5000, 1234) }, &[]);
    assert_closed(&mut host);
    assert_reset(&h.received_one(), 5000, 1234);
}

#[test]
fn a_guest_connect_to_a_port_nobody_listens_on_is_reset() {
    let mut h = Harness::new();
    h.give_rx(4);
    h.send(guest_packet(Op::Request, 5000, 99), &[]);
    assert_reset(&h.received_one(), 5000, 99);
}

#[test]
fn host_data_stays_within_the_guests_credit_and_resumes_with_an_update() {
    let mut h = Harness::new();
    h.give_rx(16);
    let listener = UnixListener::bind(host::port_path(&h.uds, 7)).unwrap();
    h.send(Header { buf_alloc: 100, ..guest_packet(Op::Request, 5000, 7) }, &[]);
    assert_eq!(h.received_one().op(), Some(Op::Response));
    let (mut host, _) = listener.accept().unwrap();

    host.write_all(&[0xAB; 300]).unwrap();
    h.pump(); // fails if the unread bytes kept the worker spinning
    let packets = h.received();
    let data: usize = packets.iter().filter(|p| p.op() == Some(Op::Rw)).map(|p| p.payload.len()).sum();
    assert_eq!(data, 100, "{packets:?}");
    assert_eq!(packets.last().unwrap().op(), Some(Op::CreditRequest), "{packets:?}");

    // The guest's application read 60 bytes.
    h.send(Header { buf_alloc: 100, fwd_cnt: 60, ..guest_packet(Op::CreditUpdate, 5000, 7) }, &[]);
    let data: usize = h.received().iter().map(|p| p.payload.len()).sum();
    assert_eq!(data, 60);
}

#[test]
fn without_rx_buffers_reading_pauses_until_the_guest_offers_some() {
    let mut h = Harness::new();
    h.give_rx(1);
    let (mut host, request) = h.host_connects(52);
    h.send(guest_packet(Op::Response, 52, request.header.src_port), &[]);
    assert!(read_line(&mut host).starts_with("OK "));

    host.write_all(b"queued").unwrap();
    h.pump(); // no rx buffer: the socket must not keep the worker awake
    assert!(h.received().is_empty());
    h.give_rx(1);
    assert_eq!(h.received_one().payload, b"queued");
}

#[test]
fn control_packets_wait_for_rx_buffers() {
    let mut h = Harness::new();
    let mut host = UnixStream::connect(&h.uds).unwrap();
    host.write_all(b"CONNECT 52\n").unwrap();
    h.pump();
    h.send(guest_packet(Op::Request, 5000, 99), &[]); // refused: an RST is owed
    assert!(h.received().is_empty());
    h.give_rx(2);
    let packets = h.received();
    assert_eq!(packets.iter().map(Received::op).collect::<Vec<_>>(), [Some(Op::Rst), Some(Op::Request)]);
}

#[test]
fn large_transfers_respect_the_devices_credit_and_get_credit_updates() {
    let mut h = Harness::new();
    h.give_rx(8);
    let (mut host, port) = h.established_from_host(52);
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        host.read_to_end(&mut all).unwrap();
        all
    });
    // The guest sends 4 x BUF_ALLOC, each chunk only once the device's credit allows it.
    let chunk = vec![0x5A; 32 * 1024];
    let total = 4 * BUF_ALLOC as usize;
    let (mut sent, mut peer_fwd_cnt, mut updates) = (0usize, 0u32, 0);
    while sent < total {
        let in_flight = sent as u32 - peer_fwd_cnt;
        if BUF_ALLOC - in_flight >= chunk.len() as u32 {
            h.send(rw(52, port, &chunk), &chunk);
            sent += chunk.len();
        } else {
            // Out of credit: wait (blocking on the device's packets, no sleeping) for an update.
            h.wait_for_host();
        }
        for packet in h.received() {
            assert_eq!(packet.op(), Some(Op::CreditUpdate), "{packet:?}");
            peer_fwd_cnt = packet.header.fwd_cnt;
            updates += 1;
            h.give_rx(1);
        }
    }
    h.send(Header { flags: SHUTDOWN_BOTH, ..guest_packet(Op::Shutdown, 52, port) }, &[]);
    // Until the host process has read everything the device holds the rest and waits for
    // writability; it then sends the RST.
    loop {
        let packets = h.received();
        if packets.iter().any(|p| p.op() == Some(Op::Rst)) {
            break;
        }
        h.give_rx(packets.len());
        h.wait_for_host();
    }
    assert_eq!(reader.join().unwrap().len(), total);
    assert!(updates >= 6, "{updates} credit updates for {total} bytes through a {BUF_ALLOC}-byte window");
}

#[test]
fn a_guest_that_ignores_the_devices_credit_is_reset() {
    let mut h = Harness::new();
    h.give_rx(8);
    let (host, port) = h.established_from_host(52);
    // The host process reads nothing: once its socket is full, the device buffers up to BUF_ALLOC
    // and then resets the connection.
    let chunk = vec![1u8; 64 * 1024];
    for _ in 0..QUEUE_SIZE {
        h.send(rw(52, port, &chunk), &chunk);
        if let Some(packet) = h.received().into_iter().find(|p| p.op() == Some(Op::Rst)) {
            assert_reset(&packet, 52, port);
            drop(host);
            return;
        }
    }
    panic!("{} bytes beyond the credit and no RST", QUEUE_SIZE as usize * chunk.len());
}

#[test]
fn the_host_closing_sends_shutdown_and_the_guests_close_completes_it() {
    let mut h = Harness::new();
    h.give_rx(8);
    let (host, port) = h.established_from_host(52);
    drop(host);
    h.pump();
    let shutdown = h.received_one();
    assert_eq!(shutdown.op(), Some(Op::Shutdown));
    assert_eq!(shutdown.header.flags, SHUTDOWN_SEND);
    h.send(Header { flags: SHUTDOWN_BOTH, ..guest_packet(Op::Shutdown, 52, port) }, &[]);
    assert_reset(&h.received_one(), 52, port);
    // The connection is gone: more data from the guest is refused.
    h.send(rw(52, port, b"late"), b"late");
    assert_reset(&h.received_one(), 52, port);
}

#[test]
fn half_closes_pass_through_in_both_directions() {
    let mut h = Harness::new();
    h.give_rx(8);
    let (mut host, port) = h.established_from_host(52);
    host.shutdown(std::net::Shutdown::Write).unwrap();
    h.pump();
    let shutdown = h.received_one();
    assert_eq!((shutdown.op(), shutdown.header.flags), (Some(Op::Shutdown), SHUTDOWN_SEND));

    // The guest can still answer; then it closes its sending side too.
    h.send(rw(52, port, b"answer"), b"answer");
    h.send(Header { flags: SHUTDOWN_SEND, ..guest_packet(Op::Shutdown, 52, port) }, &[]);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"answer");
    let last = h.received_one();
    assert_eq!((last.op(), last.header.flags), (Some(Op::Shutdown), SHUTDOWN_BOTH));
}

#[test]
fn a_guest_that_stops_receiving_makes_the_hosts_writes_fail() {
    let mut h = Harness::new();
    h.give_rx(8);
    let (mut host, port) = h.established_from_host(52);
    h.send(Header { flags: SHUTDOWN_RCV, ..guest_packet(Op::Shutdown, 52, port) }, &[]);
    assert_eq!(host.write(b"x").unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    // Its sending side still works.
    h.send(rw(52, port, b"still here"), b"still here");
    assert_eq!(read_exactly(&mut host, 10), b"still here");
}

#[test]
fn a_credit_request_gets_a_credit_update() {
    let mut h = Harness::new();
    h.give_rx(8);
    let (mut host, port) = h.established_from_host(52);
    h.send(rw(52, port, b"abc"), b"abc");
    read_exactly(&mut host, 3);
    h.send(guest_packet(Op::CreditRequest, 52, port), &[]);
    let update = h.received_one();
    assert_eq!(update.op(), Some(Op::CreditUpdate));
    assert_eq!((update.header.buf_alloc, update.header.fwd_cnt), (BUF_ALLOC, 3));
}

#[test]
fn a_guest_reset_closes_the_host_socket() {
    let mut h = Harness::new();
    h.give_rx(8);
    let (mut host, port) = h.established_from_host(52);
    h.send(guest_packet(Op::Rst, 52, port), &[]);
    assert_closed(&mut host);
    assert!(h.received().is_empty());
    let counts = h.metrics.take();
    assert_eq!((counts.get("conns_removed"), counts.get("conns_killed")), (Some(1), Some(0)));
}

#[test]
fn malformed_and_unexpected_packets_are_dropped_or_reset_never_a_panic() {
    let mut h = Harness::new();
    h.give_rx(32);
    let (mut host, port) = h.established_from_host(52);
    let request = guest_packet(Op::Request, 5000, 99);

    // Dropped without a word: too short for a header, or not from the guest's CID.
    h.send_raw(&[0u8; 10]);
    h.send_raw(&[]);
    h.send(Header { src_cid: 77, ..request }, &[]);
    h.send(Header { src_cid: 77, ..guest_packet(Op::Rw, 52, port) }, &[]);
    assert!(h.received().is_empty());

    // Answered with an RST from where they were going.
    for bad in [
        Header { dst_cid: 9, ..request },
        Header { kind: 2, ..request },
        Header { op: 0, ..request },
        Header { op: 42, ..request },
        guest_packet(Op::Response, 5000, 99),
        guest_packet(Op::Shutdown, 5000, 99),
        guest_packet(Op::CreditRequest, 5000, 99),
        Header { len: u32::MAX, ..guest_packet(Op::Rw, 5000, 99) },
    ] {
        h.send(bad, &[]);
        let reply = h.received_one();
        assert_eq!(reply.op(), Some(Op::Rst), "{bad:?}");
        assert_eq!((reply.header.src_cid, reply.header.src_port), (bad.dst_cid, 99));
        assert_eq!((reply.header.dst_cid, reply.header.dst_port), (GUEST_CID, 5000));
    }
    // An RST for nothing gets nothing.
    h.send(guest_packet(Op::Rst, 5000, 99), &[]);
    assert!(h.received().is_empty());
    // The connection survived all that.
    h.send(rw(52, port, b"fine"), b"fine");
    assert_eq!(read_exactly(&mut host, 4), b"fine");

    // A payload longer than the buffer holds, then a REQUEST for a connection that exists: both
    // reset the connection.
    h.send(rw(52, port, &[0; 100]), &[0; 10]);
    assert_reset(&h.received_one(), 52, port);
    assert_closed(&mut host);
    let (mut host, port) = h.established_from_host(53);
    h.send(guest_packet(Op::Request, 53, port), &[]);
    assert_reset(&h.received_one(), 53, port);
    assert_closed(&mut host);
}

#[test]
fn rx_buffers_too_small_for_a_header_come_back_empty() {
    let mut h = Harness::new();
    h.rx.add(&h.memory, &[], 10, WRITE);
    h.rx.add(&h.memory, &[], RX_BUFFER, WRITE);
    h.send(guest_packet(Op::Request, 5000, 99), &[]);
    let used = h.rx.take_used(&h.memory);
    assert_eq!(used.iter().map(|&(_, len)| len).collect::<Vec<_>>(), [0, HEADER_SIZE as u32]);
}

#[test]
fn connections_are_capped() {
    let mut h = Harness::new();
    let listener = UnixListener::bind(host::port_path(&h.uds, 7)).unwrap();
    let mut hosts = Vec::new();
    for guest_port in 0..=MAX_CONNECTIONS as u32 {
        h.give_rx(1);
        h.send(guest_packet(Op::Request, 10_000 + guest_port, 7), &[]);
        let reply = h.received_one();
        if (guest_port as usize) < MAX_CONNECTIONS {
            assert_eq!(reply.op(), Some(Op::Response), "connection {guest_port}");
            hosts.push(listener.accept().unwrap().0);
        } else {
            assert_reset(&reply, 10_000 + guest_port, 7);
        }
    }
    // The listening socket's connections count too: a host process is closed at once.
    let mut host = UnixStream::connect(&h.uds).unwrap();
    h.pump();
    assert_closed(&mut host);
}

#[test]
fn the_event_queue_and_unknown_queues_are_ignored() {
    let mut h = Harness::new();
    h.handler.process_queue(EVENT_QUEUE);
    h.handler.process_queue(7);
    h.handler.process_backend(12345); // an event for a socket long gone
    assert!(h.received().is_empty());
}

#[test]
fn notifications_for_unknown_queues_log_a_few_lines_and_a_count() {
    use devices::guest_log::{capture, LINES_PER_INTERVAL};

    let ((), lines) = capture::lines(|| {
        let mut harness = Harness::new();
        for _ in 0..5000 {
            harness.handler.process_queue(7);
        }
        // The device's log goes with its handler, saying what it left out.
        drop(harness);
    });
    let warned = capture::warnings(&lines);
    let unknown = warned.iter().filter(|l| l.ends_with("notification for unknown queue 7")).count();
    assert_eq!(unknown, LINES_PER_INTERVAL as usize, "{warned:?}");
    assert!(warned.last().unwrap().contains("4990 more problems"), "{warned:?}");
}
