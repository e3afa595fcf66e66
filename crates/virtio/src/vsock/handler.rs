//! The vsock device's worker side: guest packets from the tx queue, host sockets, and packets for
//! the guest put into its rx buffers as it offers them.
//!
//! Backend index 0 is the listening socket; every other index names one host socket (a
//! connection, or a host process that has not sent its `CONNECT` line yet) and is never reused,
//! so an event that outlives its socket finds nothing.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;

use crate::GuestRam;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueState, QueueT};
use vmm_sys_util::epoll::EventSet;

use super::connection::{Connection, ProtocolError, State};
use super::host::{self, MAX_CONNECT_LINE};
use super::packet::{
    self, Header, Op, PacketError, HEADER_SIZE, MAX_PAYLOAD, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND,
};
use crate::device::{GuestErrorLog, Interrupt};
use crate::metrics::VsockMetrics;
use crate::worker::{self, BackendRegistry, QueueHandler};

/// The device's name in messages.
const NAME: &str = "virtio-vsock";

/// Host sockets the worker cannot wait on (epoll refusing): see `register`.
static REGISTER_ERRORS: GuestErrorLog = GuestErrorLog::site("virtio-vsock socket registrations");

/// Queue indices (virtio 1.2, 5.10.2).
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;

/// The most host sockets at once, connections and host processes yet to send `CONNECT` alike;
/// with [`super::connection::BUF_ALLOC`] this bounds what the device buffers for the host.
pub const MAX_CONNECTIONS: usize = 128;
/// The most header-only packets (RSTs, final SHUTDOWNs) waiting for rx buffers for connections
/// that are gone. Past it they are dropped: only a guest that floods the device with bad packets
/// while offering no rx buffers gets there, and it then misses some resets.
const MAX_ORPHAN_PACKETS: usize = 2 * MAX_CONNECTIONS;

const LISTENER_INDEX: usize = 0;
/// Where the device's own port numbers, for connections host processes ask for, start: far from
/// the small numbers services listen on.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// A host process that connected to the listening socket and has not finished its `CONNECT` line.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// An rx buffer taken from the guest, and how much payload fits after the header.
struct RxBuffer {
    chain: DescriptorChain<Arc<GuestRam>>,
    room: usize,
}

/// The host end of the device: the guest's CID, and the Unix sockets host processes reach the
/// guest through (see the module docs).
pub struct HostEnd {
    pub guest_cid: u64,
    pub uds_path: PathBuf,
    pub listener: UnixListener,
}

/// The rx queue: where packets for the guest go.
struct Rx {
    queue: Queue,
    guest_errors: Arc<GuestErrorLog>,
    metrics: Arc<VsockMetrics>,
    /// Shared so that a taken buffer can hold on to it while the handler goes on.
    memory: Arc<GuestRam>,
    /// Buffers were used since the guest was last interrupted.
    used_any: bool,
    /// The guest had no buffer at the last try: host sockets are not read until it notifies.
    starved: bool,
}

impl Rx {
    /// The next buffer big enough for a header; buffers too small for one are returned empty.
    fn next_buffer(&mut self) -> Option<RxBuffer> {
        loop {
            let Some(chain) = self.queue.pop_descriptor_chain(self.memory.clone()) else {
                self.starved = true;
                return None;
            };
            match chain.clone().writer(&self.memory) {
                Ok(writer) if writer.available_bytes() >= HEADER_SIZE => {
                    let room = (writer.available_bytes() - HEADER_SIZE).min(MAX_PAYLOAD as usize);
                    return Some(RxBuffer { chain, room });
                }
                Ok(_) => self.guest_errors.log(format_args!("rx buffer smaller than a packet header")),
                Err(e) => self.guest_errors.log(format_args!("malformed rx buffer: {e:?}")),
            }
            self.complete(chain.head_index(), 0);
        }
    }

    /// Puts a packet into `buffer` and hands it to the guest.
    fn fill(&mut self, buffer: RxBuffer, header: &Header, payload: &[u8]) {
        let head = buffer.chain.head_index();
        let written =
            buffer.chain.writer(&self.memory).map_err(|e| format!("{e:?}")).and_then(|mut writer| {
                writer.write_all(&header.to_bytes()).map_err(|e| e.to_string())?;
                writer.write_all(payload).map_err(|e| e.to_string())?;
                Ok(HEADER_SIZE + payload.len())
            });
        let written = written.map_or_else(
            |e| {
                self.guest_errors.log(format_args!("cannot write a packet into an rx buffer: {e}"));
                0
            },
            |written| {
                self.metrics.rx_packets_count.inc();
                self.metrics.rx_bytes_count.add(payload.len() as u64);
                written
            },
        );
        self.complete(head, written as u32);
    }

    /// Returns an unused buffer (the last one taken) to the ring, for a later packet.
    fn give_back(&mut self, _buffer: RxBuffer) {
        self.queue.go_to_previous_position();
    }

    fn complete(&mut self, head: u16, len: u32) {
        self.used_any |= worker::complete(NAME, &mut self.queue, &self.memory, head, len);
    }
}

/// The device's state on its worker thread.
pub struct VsockHandler {
    rx: Rx,
    tx: Queue,
    tx_used_any: bool,
    /// Used only to tell the driver its connections are gone (after a restore).
    event: Queue,
    interrupt: Arc<dyn Interrupt>,
    guest_errors: Arc<GuestErrorLog>,
    metrics: Arc<VsockMetrics>,
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    /// Set when accepting failed for a reason that persists (no file descriptors left): the
    /// listener is not waited on until a socket closes.
    accept_paused: bool,
    registry: Option<BackendRegistry>,
    handshakes: HashMap<usize, Handshake>,
    connections: HashMap<usize, Connection>,
    /// (host port, guest port) → backend index.
    by_ports: HashMap<(u32, u32), usize>,
    next_index: usize,
    next_local_port: u32,
    /// Header-only packets for connections that are gone (RSTs, final SHUTDOWNs).
    orphan_packets: VecDeque<Header>,
    /// Connections that owe the guest control packets, in the order they came to owe them.
    owing_control: VecDeque<usize>,
    /// A guest packet's payload, reused between packets.
    payload: Vec<u8>,
}

impl VsockHandler {
    /// `queues` are the receive, transmit and event queues, in the transport's order.
    pub fn new(
        memory: GuestRam,
        queues: [Queue; 3],
        interrupt: Arc<dyn Interrupt>,
        guest_errors: Arc<GuestErrorLog>,
        metrics: Arc<VsockMetrics>,
        host: HostEnd,
    ) -> VsockHandler {
        let HostEnd { guest_cid, uds_path, listener } = host;
        let [rx, tx, event] = queues;
        VsockHandler {
            rx: Rx {
                queue: rx,
                guest_errors: guest_errors.clone(),
                metrics: metrics.clone(),
                memory: Arc::new(memory),
                used_any: false,
                starved: false,
            },
            tx,
            tx_used_any: false,
            event,
            interrupt,
            guest_errors,
            metrics,
            guest_cid,
            uds_path,
            listener,
            accept_paused: false,
            registry: None,
            handshakes: HashMap::new(),
            connections: HashMap::new(),
            by_ports: HashMap::new(),
            next_index: LISTENER_INDEX + 1,
            next_local_port: FIRST_LOCAL_PORT,
            orphan_packets: VecDeque::new(),
            owing_control: VecDeque::new(),
            payload: Vec::new(),
        }
    }

    fn sockets(&self) -> usize {
        self.handshakes.len() + self.connections.len()
    }

    fn new_index(&mut self) -> usize {
        let index = self.next_index;
        self.next_index += 1;
        index
    }

    // ------------------------------------------------------------------ guest packets (tx)

    fn process_tx(&mut self) {
        let memory = self.rx.memory.clone();
        while let Some(chain) = self.tx.pop_descriptor_chain(&*memory) {
            let head = chain.head_index();
            match self.read_packet(chain, &memory) {
                Ok((header, op)) => {
                    self.metrics.tx_packets_count.inc();
                    self.metrics.tx_bytes_count.add(self.payload.len() as u64);
                    self.handle_packet(&header, op);
                }
                Err((error, header)) => {
                    tracing::debug!("virtio-vsock: refused a guest packet: {error}");
                    if let Some(header) = header.filter(|_| error.deserves_reset()) {
                        self.refuse(&header);
                    }
                }
            }
            if !worker::complete(NAME, &mut self.tx, &memory, head, 0) {
                break;
            }
            self.tx_used_any = true;
        }
    }

    /// Reads a packet's header and (for RW) its payload into `self.payload`.
    fn read_packet(
        &mut self,
        chain: DescriptorChain<&GuestRam>,
        memory: &GuestRam,
    ) -> Result<(Header, Op), (PacketError, Option<Header>)> {
        let mut reader = chain.reader(memory).map_err(|_| (PacketError::ShortHeader(0), None))?;
        let mut bytes = [0u8; HEADER_SIZE];
        if reader.available_bytes() < HEADER_SIZE || reader.read_exact(&mut bytes).is_err() {
            return Err((PacketError::ShortHeader(reader.available_bytes()), None));
        }
        let header = Header::from_bytes(&bytes);
        let op = packet::validate(&header, self.guest_cid, reader.available_bytes())
            .map_err(|error| (error, Some(header)))?;
        self.payload.clear();
        if op == Op::Rw {
            self.payload.resize(header.len as usize, 0);
            if let Err(e) = reader.read_exact(&mut self.payload) {
                tracing::debug!("virtio-vsock: cannot read a payload: {e}");
                let error = PacketError::PayloadTruncated { declared: header.len, available: 0 };
                return Err((error, Some(header)));
            }
        }
        Ok((header, op))
    }

    fn handle_packet(&mut self, header: &Header, op: Op) {
        let Some(&index) = self.by_ports.get(&(header.dst_port, header.src_port)) else {
            match op {
                Op::Request => self.connect_to_host(header),
                Op::Rst => {} // never answer an RST: two sides could bounce them forever
                _ => self.refuse(header),
            }
            return;
        };
        let Some(connection) = self.connections.get_mut(&index) else { return };
        connection.update_peer_credit(header);
        let outcome = match (op, connection.state) {
            (Op::Rst, _) => {
                self.close(index);
                return;
            }
            (Op::Response, State::AwaitingResponse) => {
                connection.establish(&host::ok_line(connection.host_port));
                Ok(())
            }
            (Op::Rw, State::Established) => {
                let payload = std::mem::take(&mut self.payload);
                let result = connection.accept_guest_data(&payload);
                self.payload = payload;
                result
            }
            (Op::Shutdown, State::Established) => {
                connection.guest_shutdown |= header.flags & SHUTDOWN_BOTH;
                if header.flags & SHUTDOWN_RCV != 0 {
                    // The guest reads no more: the host process's writes fail instead of piling up.
                    let _ = connection.stream.shutdown(std::net::Shutdown::Read);
                }
                Ok(())
            }
            (Op::CreditRequest, State::Established) => {
                connection.owe_credit_update();
                Ok(())
            }
            (Op::CreditUpdate, _) => Ok(()), // the credit came with the header
            (op, state) => Err(ProtocolError::UnexpectedOp(op, state)),
        };
        match outcome {
            Ok(()) => self.service(index),
            Err(error) => {
                tracing::debug!("virtio-vsock: resetting guest port {}: {error}", header.src_port);
                self.reset(index);
            }
        }
    }

    /// The guest asks for host port P: connect to `<uds>_P`, or refuse.
    fn connect_to_host(&mut self, request: &Header) {
        if self.sockets() >= MAX_CONNECTIONS {
            self.guest_errors.log(format_args!("{MAX_CONNECTIONS} connections open, refusing another"));
            return self.refuse(request);
        }
        let path = host::port_path(&self.uds_path, request.dst_port);
        match host::connect_nonblocking(&path) {
            Ok(stream) => {
                let index = self.new_index();
                self.by_ports.insert((request.dst_port, request.src_port), index);
                self.connections.insert(index, Connection::accepted(stream, request));
                self.metrics.conns_added.inc();
                self.service(index);
            }
            Err(e) => {
                tracing::debug!("virtio-vsock: guest connection to {} refused: {e}", path.display());
                self.refuse(request);
            }
        }
    }

    /// Answers a packet the device cannot take with an RST; a connection it was meant for is
    /// reset, since the guest will consider it gone.
    fn refuse(&mut self, header: &Header) {
        let index = self.by_ports.get(&(header.dst_port, header.src_port)).copied();
        match index.filter(|_| header.dst_cid == packet::HOST_CID) {
            Some(index) => self.reset(index),
            None => self.push_orphan(header.reset_reply()),
        }
    }

    fn push_orphan(&mut self, header: Header) {
        if self.orphan_packets.len() < MAX_ORPHAN_PACKETS {
            self.orphan_packets.push_back(header);
        } else {
            tracing::debug!("virtio-vsock: too many packets waiting for rx buffers, dropping one");
        }
    }

    // ------------------------------------------------------------------ host sockets

    fn accept_host_connections(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) =>
                {
                    continue
                }
                Err(e) => {
                    tracing::warn!("virtio-vsock: cannot accept a host connection: {e}");
                    self.accept_paused = true;
                    return;
                }
            };
            if self.sockets() >= MAX_CONNECTIONS {
                tracing::warn!("virtio-vsock: {MAX_CONNECTIONS} connections open, closing a new one");
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                tracing::warn!("virtio-vsock: cannot make a host connection non-blocking: {e}");
                continue;
            }
            let index = self.new_index();
            if self.register(stream.as_raw_fd(), index, None, Some(EventSet::IN)) {
                self.handshakes.insert(index, Handshake { stream, line: Vec::new() });
            }
        }
    }

    /// Reads the `CONNECT <port>` line a byte at a time, so that nothing the host process sends
    /// after it is consumed here.
    fn advance_handshake(&mut self, index: usize) {
        let Some(handshake) = self.handshakes.get_mut(&index) else { return };
        let mut byte = [0u8];
        let guest_port = loop {
            match handshake.stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break host::parse_connect_line(&handshake.line),
                Ok(1) if handshake.line.len() < MAX_CONNECT_LINE => handshake.line.push(byte[0]),
                Ok(_) => break None, // end of file, or a line too long
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break None,
            }
        };
        let Some(handshake) = self.handshakes.remove(&index) else { return };
        self.accept_paused = false;
        let Some(guest_port) = guest_port else {
            tracing::debug!("virtio-vsock: a host process did not send a CONNECT line; closed");
            return;
        };
        let host_port = self.allocate_local_port(guest_port);
        let mut connection = Connection::requested(handshake.stream, host_port, guest_port, self.guest_cid);
        connection.registered = Some(EventSet::IN);
        self.by_ports.insert((host_port, guest_port), index);
        self.connections.insert(index, connection);
        self.metrics.conns_added.inc();
        self.service(index);
    }

    /// A port for the host end of a connection to `guest_port` that no connection uses. There are
    /// at most MAX_CONNECTIONS connections, so the search is short.
    fn allocate_local_port(&mut self, guest_port: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.by_ports.contains_key(&(port, guest_port)) {
                return port;
            }
        }
    }

    /// Something happened on a connection's host socket.
    fn host_event(&mut self, index: usize) {
        let Some(connection) = self.connections.get(&index) else { return };
        if connection.state == State::AwaitingResponse {
            // Only hang-ups are waited for before the guest answers: the host process left.
            tracing::debug!("virtio-vsock: a host process left before the guest accepted");
            return self.reset(index);
        }
        self.service(index);
        self.read_host(index);
    }

    /// Moves host bytes to the guest while it has credit and rx buffers.
    fn read_host(&mut self, index: usize) {
        loop {
            let Some(connection) = self.connections.get_mut(&index) else { return };
            if !connection.may_read_host() {
                break;
            }
            let Some(buffer) = self.rx.next_buffer() else { break };
            let room = buffer.room.min(connection.peer_credit() as usize);
            if room == 0 {
                // A buffer with no room past the header: fine for control packets, useless for
                // data. Reading waits for the guest to offer more (else readiness would spin).
                self.rx.give_back(buffer);
                self.rx.starved = true;
                break;
            }
            self.payload.resize(room, 0);
            match connection.stream.read(&mut self.payload) {
                Ok(0) => {
                    self.rx.give_back(buffer);
                    connection.host_closed_sending();
                    break;
                }
                Ok(count) => {
                    let header = connection.header(Op::Rw, count as u32);
                    connection.sent_to_guest(count as u32);
                    self.rx.fill(buffer, &header, &self.payload[..count]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.rx.give_back(buffer);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.rx.give_back(buffer),
                Err(e) => {
                    self.rx.give_back(buffer);
                    self.metrics.rx_read_fails.inc();
                    tracing::debug!("virtio-vsock: host socket failed: {e}");
                    return self.reset(index);
                }
            }
        }
        self.service(index);
    }

    /// Brings a connection up to date after anything happened to it: writes what the host process
    /// can take, ends it once both sides are done, and notes the control packets it owes.
    fn service(&mut self, index: usize) {
        let Some(connection) = self.connections.get_mut(&index) else { return };
        if connection.state == State::Established {
            if let Err(e) = connection.flush_to_host() {
                self.metrics.tx_write_fails.inc();
                tracing::debug!("virtio-vsock: cannot write to a host process: {e}");
                return self.reset(index);
            }
        }
        let flushed = !connection.has_data_for_host();
        if flushed && connection.guest_shutdown == SHUTDOWN_BOTH {
            // The guest closed: the RST completes its clean shutdown (virtio 1.2, 5.10.6.6).
            return self.reset(index);
        }
        if flushed && connection.guest_shutdown & SHUTDOWN_SEND != 0 && !connection.host_write_shut {
            connection.host_write_shut = true;
            let _ = connection.stream.shutdown(std::net::Shutdown::Write);
        }
        if connection.host_write_shut && connection.host_eof {
            // Neither side sends any more: tell the guest it is over, and forget the connection
            // (the guest's RST answering this finds nothing, as it should).
            let header = Header { flags: SHUTDOWN_BOTH, ..connection.header(Op::Shutdown, 0) };
            self.push_orphan(header);
            return self.close(index);
        }
        if connection.owes_control() && !connection.queued_for_control {
            connection.queued_for_control = true;
            self.owing_control.push_back(index);
        }
    }

    /// Drops a connection and tells the guest with an RST.
    fn reset(&mut self, index: usize) {
        if let Some(connection) = self.connections.get_mut(&index) {
            let header = connection.header(Op::Rst, 0);
            self.push_orphan(header);
            self.metrics.conns_killed.inc();
        }
        self.close(index);
    }

    /// Drops a connection: its host socket closes, the host process sees end-of-file.
    fn close(&mut self, index: usize) {
        if let Some(connection) = self.connections.remove(&index) {
            self.metrics.conns_removed.inc();
            self.by_ports.remove(&(connection.host_port, connection.guest_port));
            self.register(connection.stream.as_raw_fd(), index, connection.registered, None);
            self.accept_paused = false;
        }
    }

    // ------------------------------------------------------------------ packets to the guest (rx)

    /// Sends what is owed to the guest while it has rx buffers: packets of closed connections
    /// first, then each connection's control packets.
    fn deliver(&mut self) {
        while let Some(header) = self.orphan_packets.front() {
            let Some(buffer) = self.rx.next_buffer() else { return };
            self.rx.fill(buffer, header, &[]);
            self.orphan_packets.pop_front();
        }
        while let Some(&index) = self.owing_control.front() {
            let Some(connection) = self.connections.get_mut(&index).filter(|c| c.owes_control()) else {
                if let Some(connection) = self.connections.get_mut(&index) {
                    connection.queued_for_control = false;
                }
                self.owing_control.pop_front();
                continue;
            };
            let Some(buffer) = self.rx.next_buffer() else { return };
            if let Some(header) = connection.next_control() {
                self.rx.fill(buffer, &header, &[]);
            }
        }
    }

    /// Makes the worker wait on each connection for what it can act on now.
    fn update_interests(&mut self) {
        let indices: Vec<usize> = self.connections.keys().copied().collect();
        for index in indices {
            let Some(connection) = self.connections.get(&index) else { continue };
            let wanted = connection.interest(self.rx.starved);
            if wanted != connection.registered
                && self.register(connection.stream.as_raw_fd(), index, connection.registered, wanted)
            {
                if let Some(connection) = self.connections.get_mut(&index) {
                    connection.registered = wanted;
                }
            }
        }
    }

    /// Changes what the worker waits for on `fd` from `from` to `to` (`None`: not registered).
    fn register(&self, fd: RawFd, index: usize, from: Option<EventSet>, to: Option<EventSet>) -> bool {
        let Some(registry) = &self.registry else {
            tracing::error!("virtio-vsock: the worker gave no backend registry");
            return false;
        };
        let result = match (from, to) {
            (None, Some(to)) => registry.add(fd, index, to),
            (Some(_), Some(to)) => registry.modify(fd, index, to),
            (Some(_), None) => registry.remove(fd),
            (None, None) => Ok(()),
        };
        // Once per connection the guest opens, as fast as it likes: limited.
        result
            .map_err(|e| REGISTER_ERRORS.log(format_args!("virtio-vsock: cannot wait on a host socket: {e}")))
            .is_ok()
    }

    /// Tells the driver that every connection it had is gone (virtio 1.2, 5.10.6.6: the device was
    /// restored from a snapshot, and host sockets do not survive that); it resets them and
    /// connects again.
    pub fn announce_transport_reset(&mut self) {
        const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;
        let memory = self.rx.memory.clone();
        let Some(chain) = self.event.pop_descriptor_chain(&*memory) else {
            self.guest_errors.log(format_args!("no event buffer for the transport reset after a restore"));
            return;
        };
        let head = chain.head_index();
        let written = chain.writable().next().filter(|descriptor| descriptor.len() >= 4).map(|descriptor| {
            vm_memory::Bytes::write_obj(
                &*memory,
                VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.to_le(),
                descriptor.addr(),
            )
        });
        let len = match written {
            Some(Ok(())) => 4,
            _ => {
                self.guest_errors.log(format_args!("the event buffer cannot hold a transport reset"));
                0
            }
        };
        if worker::complete(NAME, &mut self.event, &memory, head, len) {
            worker::signal_used(NAME, &mut self.event, &memory, self.interrupt.as_ref(), EVENT_QUEUE);
        }
    }

    /// Sends what is owed, re-evaluates what to wait for, and interrupts the guest once for each
    /// queue it used: the end of every event.
    fn settle(&mut self) {
        self.deliver();
        self.update_interests();
        let memory = &*self.rx.memory;
        let notify = |queue: &mut Queue, used: &mut bool, index: usize| {
            if std::mem::take(used) {
                worker::signal_used(NAME, queue, memory, self.interrupt.as_ref(), index);
            }
        };
        notify(&mut self.rx.queue, &mut self.rx.used_any, RX_QUEUE);
        notify(&mut self.tx, &mut self.tx_used_any, TX_QUEUE);
    }
}

impl QueueHandler for VsockHandler {
    fn queue_states(&self) -> Vec<(usize, QueueState)> {
        vec![
            (RX_QUEUE, self.rx.queue.state()),
            (TX_QUEUE, self.tx.state()),
            (EVENT_QUEUE, self.event.state()),
        ]
    }

    fn process_queue(&mut self, index: usize) {
        match index {
            RX_QUEUE => {
                self.metrics.rx_queue_event_count.inc();
                // New rx buffers: reading host sockets resumes (update_interests re-adds them).
                self.rx.starved = false;
            }
            TX_QUEUE => {
                self.metrics.tx_queue_event_count.inc();
                self.process_tx();
            }
            // The event queue only carries transport resets after a migration: nothing to do.
            EVENT_QUEUE => {}
            _ => self.guest_errors.log(format_args!("notification for unknown queue {index}")),
        }
        self.settle();
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        vec![self.listener.as_raw_fd()]
    }

    fn backend_interest(&self, index: usize) -> EventSet {
        if index == LISTENER_INDEX && self.accept_paused {
            EventSet::empty()
        } else {
            EventSet::IN
        }
    }

    fn process_backend(&mut self, index: usize) {
        if index == LISTENER_INDEX {
            self.accept_host_connections();
        } else if self.handshakes.contains_key(&index) {
            self.advance_handshake(index);
        } else {
            self.host_event(index);
        }
        self.settle();
    }

    fn attach_backends(&mut self, registry: BackendRegistry) {
        self.registry = Some(registry);
    }
}
