//! One stream connection between a guest socket and a host Unix socket: its state, the credit
//! accounting in both directions (virtio 1.2, 5.10.6.3), the bytes waiting for the host process,
//! and the control packets waiting for a guest rx buffer.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;

use vmm_sys_util::epoll::EventSet;

use super::packet::{Header, Op, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};

/// Our receive buffer per connection (`buf_alloc`): the most guest bytes the device holds for a
/// host process that does not read. The guest may not send more than this ahead of `fwd_cnt`.
pub const BUF_ALLOC: u32 = 128 * 1024;

/// Once this many guest bytes have reached the host process without the guest hearing of it, a
/// CREDIT_UPDATE tells it: a guest that used up its credit then always learns of the room (it
/// waits with `BUF_ALLOC` unacknowledged bytes, at least this many once they are written).
const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// A host process asked for this connection; the guest has not accepted it yet.
    AwaitingResponse,
    /// Data may flow.
    Established,
}

/// Control packets owed to the guest, sent in this order as rx buffers allow. Flags, not a queue:
/// a connection never owes more than one of each, so a guest that offers no rx buffers cannot
/// make them pile up.
#[derive(Default)]
struct Pending {
    request: bool,
    response: bool,
    credit_update: bool,
    credit_request: bool,
    shutdown: u32,
}

pub struct Connection {
    pub stream: UnixStream,
    pub host_port: u32,
    pub guest_port: u32,
    guest_cid: u64,
    pub state: State,
    /// Bytes for the host process that it has not taken yet: the `OK` line, then guest data.
    to_host: VecDeque<u8>,
    /// How many bytes at the front of `to_host` are the device's own (the `OK` line), not guest
    /// data: they do not count against the guest's credit.
    own_bytes_to_host: usize,
    /// Guest bytes written to the host process, ever (wrapping, like the wire field).
    fwd_cnt: u32,
    /// The `fwd_cnt` the guest last heard.
    fwd_cnt_sent: u32,
    /// Host bytes sent to the guest, ever.
    rx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// SHUTDOWN flags the guest has sent.
    pub guest_shutdown: u32,
    /// The host process will send no more: its socket read end-of-file.
    pub host_eof: bool,
    /// The host socket's write side is shut (the guest sends no more and all it sent was written).
    pub host_write_shut: bool,
    pending: Pending,
    /// Whether the handler's list of connections owing control packets holds this one.
    pub queued_for_control: bool,
    /// What the worker waits for on `stream`; `None` when it is not registered at all.
    pub registered: Option<EventSet>,
}

/// The guest broke the protocol on this connection; it is reset.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("the guest sent {sent} bytes with {credit} bytes of credit left")]
    CreditExceeded { sent: u32, credit: u32 },
    #[error("the guest sent data after shutting down its sending side")]
    DataAfterShutdown,
    #[error("{0:?} is not valid in state {1:?}")]
    UnexpectedOp(Op, State),
}

impl Connection {
    /// A connection the guest asked for with `request`, to a host socket that accepted it; it owes
    /// the guest a RESPONSE.
    pub fn accepted(stream: UnixStream, request: &Header) -> Connection {
        let mut connection =
            Connection::new(stream, request.dst_port, request.src_port, request.src_cid, State::Established);
        connection.update_peer_credit(request);
        connection.pending.response = true;
        connection
    }

    /// A connection a host process asked for; it owes the guest a REQUEST.
    pub fn requested(stream: UnixStream, host_port: u32, guest_port: u32, guest_cid: u64) -> Connection {
        let mut connection =
            Connection::new(stream, host_port, guest_port, guest_cid, State::AwaitingResponse);
        connection.pending.request = true;
        connection
    }

    fn new(stream: UnixStream, host_port: u32, guest_port: u32, guest_cid: u64, state: State) -> Connection {
        Connection {
            stream,
            host_port,
            guest_port,
            guest_cid,
            state,
            to_host: VecDeque::new(),
            own_bytes_to_host: 0,
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            guest_shutdown: 0,
            host_eof: false,
            host_write_shut: false,
            pending: Pending::default(),
            queued_for_control: false,
            registered: None,
        }
    }

    /// Every guest packet carries its receive buffer and how much of it was consumed.
    pub fn update_peer_credit(&mut self, header: &Header) {
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = header.fwd_cnt;
    }

    /// How many more bytes the guest can take. A guest that claims to have consumed more than it
    /// was sent gets nothing until it says something sensible (never a wrapped-around huge credit).
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// The guest accepted a host process's connection: the process hears `line` first.
    pub fn establish(&mut self, line: &[u8]) {
        self.state = State::Established;
        self.to_host.extend(line);
        self.own_bytes_to_host += line.len();
    }

    /// Takes `data` from the guest for the host process, within the credit the device gave.
    pub fn accept_guest_data(&mut self, data: &[u8]) -> Result<(), ProtocolError> {
        if self.guest_shutdown & SHUTDOWN_SEND != 0 {
            return Err(ProtocolError::DataAfterShutdown);
        }
        let buffered = (self.to_host.len() - self.own_bytes_to_host) as u32;
        let credit = BUF_ALLOC - buffered;
        if data.len() as u32 > credit {
            return Err(ProtocolError::CreditExceeded { sent: data.len() as u32, credit });
        }
        self.to_host.extend(data);
        Ok(())
    }

    /// Writes what the host process can take now; an error means its socket is broken.
    pub fn flush_to_host(&mut self) -> io::Result<()> {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            let written = match self.stream.write(front) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => written,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.to_host.drain(..written);
            let own = written.min(self.own_bytes_to_host);
            self.own_bytes_to_host -= own;
            self.fwd_cnt = self.fwd_cnt.wrapping_add((written - own) as u32);
        }
        if self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD {
            self.pending.credit_update = true;
        }
        Ok(())
    }

    pub fn has_data_for_host(&self) -> bool {
        !self.to_host.is_empty()
    }

    /// Whether host data may go to the guest now: after the RESPONSE, before either side ended
    /// that direction, and within the guest's credit.
    pub fn may_read_host(&self) -> bool {
        self.state == State::Established
            && !self.pending.response
            && !self.host_eof
            && self.guest_shutdown & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    /// `count` host bytes went to the guest; asks for credit when the guest has none left.
    pub fn sent_to_guest(&mut self, count: u32) {
        self.rx_cnt = self.rx_cnt.wrapping_add(count);
        if self.peer_credit() == 0 {
            self.pending.credit_request = true;
        }
    }

    /// The host process sent end-of-file: the guest hears it will get no more.
    pub fn host_closed_sending(&mut self) {
        self.host_eof = true;
        self.pending.shutdown |= SHUTDOWN_SEND;
    }

    pub fn owe_credit_update(&mut self) {
        self.pending.credit_update = true;
    }

    pub fn owes_control(&self) -> bool {
        let p = &self.pending;
        p.request || p.response || p.credit_update || p.credit_request || p.shutdown != 0
    }

    /// The next control packet owed to the guest, now counted as sent.
    pub fn next_control(&mut self) -> Option<Header> {
        let p = &mut self.pending;
        let (op, flags) = if std::mem::take(&mut p.request) {
            (Op::Request, 0)
        } else if std::mem::take(&mut p.response) {
            (Op::Response, 0)
        } else if std::mem::take(&mut p.credit_update) {
            (Op::CreditUpdate, 0)
        } else if std::mem::take(&mut p.credit_request) {
            (Op::CreditRequest, 0)
        } else if p.shutdown != 0 {
            (Op::Shutdown, std::mem::take(&mut p.shutdown))
        } else {
            return None;
        };
        Some(Header { flags, ..self.header(op, 0) })
    }

    /// A header from this connection's host end, carrying the device's current credit.
    pub fn header(&mut self, op: Op, len: u32) -> Header {
        self.fwd_cnt_sent = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.host_port,
            dst_port: self.guest_port,
            len,
            kind: TYPE_STREAM,
            op: op.to_wire(),
            flags: 0,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// What the worker should wait for on the host socket. `None`: nothing, not even hang-ups
    /// (level-triggered, an unread end-of-file would wake it forever). A connection waiting for
    /// the guest's RESPONSE waits for hang-ups only: the host process may give up.
    pub fn interest(&self, rx_starved: bool) -> Option<EventSet> {
        if self.state == State::AwaitingResponse {
            return Some(EventSet::empty());
        }
        let mut interest = EventSet::empty();
        if self.has_data_for_host() {
            interest |= EventSet::OUT;
        }
        if self.may_read_host() && !rx_starved {
            interest |= EventSet::IN;
        }
        (!interest.is_empty()).then_some(interest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Connection, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let request = Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 52,
            kind: TYPE_STREAM,
            op: Op::Request.to_wire(),
            buf_alloc: 100,
            ..Header::default()
        };
        (Connection::accepted(ours, &request), theirs)
    }

    #[test]
    fn credit_towards_the_guest_follows_its_buffer_and_what_it_consumed() {
        let (mut connection, _host) = pair();
        assert_eq!(connection.peer_credit(), 100);
        connection.sent_to_guest(60);
        assert_eq!(connection.peer_credit(), 40);
        connection.sent_to_guest(40);
        assert_eq!(connection.peer_credit(), 0);
        assert!(!connection.may_read_host());
        connection.update_peer_credit(&Header { buf_alloc: 100, fwd_cnt: 70, ..Header::default() });
        assert_eq!(connection.peer_credit(), 70);
        // A guest claiming to have consumed more than it got gets no credit, not 4 GiB.
        connection.update_peer_credit(&Header { buf_alloc: 100, fwd_cnt: 500, ..Header::default() });
        assert_eq!(connection.peer_credit(), 0);
    }

    #[test]
    fn credit_survives_counter_wrap_around() {
        let (mut connection, _host) = pair();
        connection.rx_cnt = u32::MAX - 9;
        connection.update_peer_credit(&Header { buf_alloc: 100, fwd_cnt: u32::MAX - 9, ..Header::default() });
        connection.sent_to_guest(30); // rx_cnt wraps to 20
        assert_eq!(connection.peer_credit(), 70);
    }

    #[test]
    fn the_guest_cannot_send_beyond_the_buffer_the_device_offers() {
        let (mut connection, _host) = pair();
        let chunk = vec![7u8; (BUF_ALLOC / 2) as usize];
        connection.accept_guest_data(&chunk).unwrap();
        connection.accept_guest_data(&chunk).unwrap();
        assert_eq!(
            connection.accept_guest_data(&[1]),
            Err(ProtocolError::CreditExceeded { sent: 1, credit: 0 })
        );
    }

    #[test]
    fn flushing_counts_only_guest_bytes_and_owes_a_credit_update_past_the_threshold() {
        let (mut connection, mut host) = pair();
        connection.establish(b"OK 5\n");
        connection.accept_guest_data(b"hello").unwrap();
        connection.flush_to_host().unwrap();
        let mut received = [0u8; 10];
        io::Read::read_exact(&mut host, &mut received).unwrap();
        assert_eq!(&received, b"OK 5\nhello");
        assert_eq!(connection.fwd_cnt, 5);
        assert_eq!(connection.next_control().map(|h| h.op()), Some(Some(Op::Response)));
        assert_eq!(connection.next_control(), None, "5 bytes are below the update threshold");

        let big = vec![0u8; CREDIT_UPDATE_THRESHOLD as usize];
        connection.accept_guest_data(&big).unwrap();
        let reader = std::thread::spawn(move || io::Read::read_to_end(&mut host, &mut Vec::new()).unwrap());
        while connection.has_data_for_host() {
            connection.flush_to_host().unwrap();
        }
        let update = connection.next_control().unwrap();
        assert_eq!(update.op(), Some(Op::CreditUpdate));
        assert_eq!((update.buf_alloc, update.fwd_cnt), (BUF_ALLOC, 5 + CREDIT_UPDATE_THRESHOLD));
        drop(connection);
        assert_eq!(reader.join().unwrap(), CREDIT_UPDATE_THRESHOLD as usize);
    }

    #[test]
    fn data_after_the_guest_shut_its_sending_side_is_refused() {
        let (mut connection, _host) = pair();
        connection.guest_shutdown = SHUTDOWN_SEND;
        assert_eq!(connection.accept_guest_data(b"x"), Err(ProtocolError::DataAfterShutdown));
    }

    #[test]
    fn what_the_worker_waits_for() {
        let (mut connection, _host) = pair();
        assert_eq!(connection.interest(false), None, "the RESPONSE goes first");
        connection.next_control();
        assert_eq!(connection.interest(false), Some(EventSet::IN));
        assert_eq!(connection.interest(true), None, "no rx buffers: reading pauses");
        connection.to_host.push_back(1);
        assert_eq!(connection.interest(true), Some(EventSet::OUT));
        connection.host_closed_sending();
        assert_eq!(connection.interest(false), Some(EventSet::OUT));
    }
}
