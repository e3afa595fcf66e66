//! Moving frames between the guest's queues and the backend (the tap), with back-pressure both
//! ways: a frame the backend cannot take yet is held until it becomes writable, and the backend
//! is not read while the guest has no receive buffer for what it would yield.
//!
//! Each direction has a rate limiter (one op and the frame's bytes, virtio-net header included,
//! per frame, as Firecracker counts). A transmit request the limiter refuses stays on the ring,
//! untouched, and the queue is served again when the limiter's timer fires. A received frame the
//! limiter refuses is kept (it was already read from the tap) and the tap is no longer read
//! until the timer fires, so further frames wait in the tap's own queue: nothing is lost to the
//! limiter, and frames reach the guest whole and in order.
//!
//! A snapshot saves neither the limiters' budgets (a restored card starts with full buckets, its
//! one-time bursts again; Firecracker saves the budgets) nor a received frame the limiter was
//! holding back: the restored guest misses that one frame, as if the network had dropped it. A
//! transmit request held back is still on the ring, and is sent by the restored card.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use crate::GuestRam;
use virtio_queue::{Queue, QueueOwnedT, QueueState, QueueT, Reader};
use vmm_sys_util::epoll::EventSet;

use super::control::{lock, NetLimiters};
use super::{MAX_FRAME_BYTES, VNET_HDR_LEN};
use crate::device::{GuestErrorLog, Interrupt};
use crate::metrics::NetMetrics;
use crate::worker::{self, QueueHandler};

/// The device's name in messages.
const NAME: &str = "virtio-net";

/// Frames the tap refuses for the host's reasons (the interface gone): one line per frame the
/// guest sends, so limited like the guest's own problems.
static TAP_ERRORS: GuestErrorLog = GuestErrorLog::site("virtio-net tap errors");

/// The receive queue's index (virtio 1.2, 5.1.2).
pub const RX_QUEUE: usize = 0;
/// The transmit queue's index.
pub const TX_QUEUE: usize = 1;

/// At most this many frames are received per wake-up, so a flood from the host cannot keep the
/// worker from the transmit queue; the backend, still readable, wakes it again at once.
const RX_FRAMES_PER_WAKE: usize = 256;

/// Offset of `num_buffers` in the header: the backend leaves it alone, the device must set it.
const NUM_BUFFERS_OFFSET: usize = 10;

/// Backend descriptor indices: the tap, then the receive and transmit limiters' timers.
const TAP: usize = 0;
const RX_TIMER: usize = 1;
const TX_TIMER: usize = 2;

/// Where frames go to and come from: each read or write is one whole frame, virtio-net header
/// first, and neither ever blocks.
pub trait FrameBackend: AsRawFd + Send + 'static {
    /// Reads one frame into `buffer`; `WouldBlock` when none is waiting.
    fn receive(&mut self, buffer: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame; `WouldBlock` when the backend cannot take it yet.
    fn send(&mut self, frame: &[u8]) -> io::Result<usize>;
    /// Frames wait to be received that the backend's descriptor does not signal (the metadata
    /// service's replies): the worker receives after transmitting when so.
    fn has_pending(&self) -> bool {
        false
    }
}

/// Why a transmit request fails (it is completed without its frame being sent).
#[derive(Debug, thiserror::Error)]
enum TxError {
    #[error("malformed descriptor chain: {0:?}")]
    Chain(virtio_queue::Error),
    #[error("{0} bytes is less than the {VNET_HDR_LEN}-byte virtio-net header")]
    TooShort(usize),
    #[error("{0} bytes is more than the {MAX_FRAME_BYTES} a frame may have")]
    TooLong(usize),
    #[error("cannot read it from guest memory: {0}")]
    Read(io::Error),
}

/// A transmit request whose frame the backend could not take yet; the frame waits in `tx_frame`.
struct HeldTx {
    head: u16,
    len: usize,
}

/// The device's two queues, its backend, and the state of the flow between them.
pub struct NetHandler<B> {
    memory: GuestRam,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<dyn Interrupt>,
    guest_errors: Arc<GuestErrorLog>,
    metrics: Arc<NetMetrics>,
    backend: B,
    /// One byte longer than the largest frame, so that a longer one shows as such instead of
    /// arriving cut short.
    rx_frame: Box<[u8]>,
    tx_frame: Box<[u8]>,
    held_tx: Option<HeldTx>,
    /// The guest had no receive buffer left: the backend is not read until it gives some.
    rx_starved: bool,
    /// The backend failed for good when read: it is not read again.
    rx_broken: bool,
    limiters: NetLimiters,
    /// The length of a frame read from the backend into `rx_frame` but not yet delivered: the
    /// receive limiter refused it. It goes first once the limiter's timer fires.
    held_rx: Option<usize>,
    /// The receive limiter refused a frame: nothing more is received (the backend is not read)
    /// until its timer fires.
    rx_throttled: bool,
    /// The transmit limiter refused the request at the head of the ring: the queue is served
    /// again when its timer fires.
    tx_throttled: bool,
}

impl<B: FrameBackend> NetHandler<B> {
    /// A handler for the receive and transmit queues `[rx, tx]`.
    pub fn new(
        memory: GuestRam,
        [rx, tx]: [Queue; 2],
        interrupt: Arc<dyn Interrupt>,
        guest_errors: Arc<GuestErrorLog>,
        metrics: Arc<NetMetrics>,
        backend: B,
        limiters: NetLimiters,
    ) -> Self {
        NetHandler {
            memory,
            rx,
            tx,
            interrupt,
            guest_errors,
            metrics,
            backend,
            rx_frame: vec![0; MAX_FRAME_BYTES + 1].into_boxed_slice(),
            tx_frame: vec![0; MAX_FRAME_BYTES].into_boxed_slice(),
            held_tx: None,
            rx_starved: false,
            rx_broken: false,
            limiters,
            held_rx: None,
            rx_throttled: false,
            tx_throttled: false,
        }
    }

    /// Moves frames from the backend into the guest's receive buffers until either runs out.
    fn receive_frames(&mut self) {
        if self.rx_throttled || (self.rx_broken && self.held_rx.is_none()) {
            return;
        }
        let mut used_any = false;
        for _ in 0..RX_FRAMES_PER_WAKE {
            // The buffer is taken first, so that without one no frame is read (and none lost).
            let Some(chain) = self.rx.pop_descriptor_chain(&self.memory) else {
                self.metrics.no_rx_avail_buffer.inc();
                self.rx_starved = true;
                break;
            };
            self.rx_starved = false;
            let head = chain.head_index();
            let mut writer = match chain.writer(&self.memory) {
                Ok(writer) if writer.available_bytes() >= VNET_HDR_LEN => writer,
                Ok(writer) => {
                    self.metrics.rx_fails.inc();
                    let bytes = writer.available_bytes();
                    self.guest_errors
                        .log(format_args!("a receive buffer of {bytes} bytes cannot hold the header"));
                    used_any |= worker::complete(NAME, &mut self.rx, &self.memory, head, 0);
                    continue;
                }
                Err(e) => {
                    self.metrics.rx_fails.inc();
                    self.guest_errors.log(format_args!("malformed receive buffer: {e:?}"));
                    used_any |= worker::complete(NAME, &mut self.rx, &self.memory, head, 0);
                    continue;
                }
            };
            let received = match self.held_rx.take() {
                Some(len) => Ok(len),
                None if self.rx_broken => Err(io::ErrorKind::WouldBlock.into()),
                None => self.backend.receive(&mut self.rx_frame),
            };
            let len = match received {
                Ok(len) => len,
                Err(e) => {
                    // The buffer goes back to the queue for the next frame.
                    self.rx.go_to_previous_position();
                    match e.kind() {
                        io::ErrorKind::WouldBlock => break,
                        io::ErrorKind::Interrupted => continue,
                        _ => {
                            self.metrics.tap_read_fails.inc();
                            tracing::error!("virtio-net: cannot receive from the tap, giving up on it: {e}");
                            self.rx_broken = true;
                            break;
                        }
                    }
                }
            };
            if !(VNET_HDR_LEN..=MAX_FRAME_BYTES).contains(&len) || len > writer.available_bytes() {
                // A frame the guest has no room for is dropped, as a NIC would; the buffer waits
                // for the next frame.
                self.metrics.rx_fails.inc();
                tracing::debug!(
                    "virtio-net: dropping a {len}-byte frame for a {}-byte receive buffer",
                    writer.available_bytes()
                );
                self.rx.go_to_previous_position();
                continue;
            }
            if !admit(&self.limiters.rx, len) {
                // Kept for when the budget has refilled; the buffer goes back to the queue.
                self.held_rx = Some(len);
                self.rx.go_to_previous_position();
                self.rx_throttled = true;
                self.metrics.rx_rate_limiter_throttled.inc();
                break;
            }
            // Each frame fills one buffer chain (no VIRTIO_NET_F_MRG_RXBUF).
            self.rx_frame[NUM_BUFFERS_OFFSET..VNET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
            let written = match writer.write_all(&self.rx_frame[..len]) {
                Ok(()) => {
                    self.metrics.rx_packets_count.inc();
                    self.metrics.rx_bytes_count.add((len - VNET_HDR_LEN) as u64);
                    len as u32
                }
                Err(e) => {
                    self.metrics.rx_fails.inc();
                    self.guest_errors.log(format_args!("cannot write a frame into guest memory: {e}"));
                    0
                }
            };
            used_any |= worker::complete(NAME, &mut self.rx, &self.memory, head, written);
        }
        if used_any {
            worker::signal_used(NAME, &mut self.rx, &self.memory, self.interrupt.as_ref(), RX_QUEUE);
        }
    }

    /// Sends the held frame, then every transmit request, until the backend stops taking them.
    fn transmit_frames(&mut self) {
        if self.tx_throttled {
            return; // The limiter's timer serves the queue again.
        }
        let mut used_any = false;
        if let Some(held) = self.held_tx.take() {
            if !self.send(held.len) {
                self.held_tx = Some(held);
                return;
            }
            used_any |= worker::complete(NAME, &mut self.tx, &self.memory, held.head, 0);
        }
        while let Some(chain) = self.tx.pop_descriptor_chain(&self.memory) {
            let head = chain.head_index();
            // The size is checked before the limiter sees it: a malformed request (its declared
            // size can be GiBs) costs an op but no bandwidth, as it sends nothing; charged its
            // size, it would put the bucket in debt for ages and stall the guest's next frames.
            let reader = chain
                .reader(&self.memory)
                .map_err(TxError::Chain)
                .and_then(|reader| frame_len(reader.available_bytes()).map(|_| reader));
            let bytes = reader.as_ref().map_or(0, |r| r.available_bytes());
            if !admit(&self.limiters.tx, bytes as u64) {
                // Back on the ring, untouched, for when the budget has refilled.
                self.tx.go_to_previous_position();
                self.tx_throttled = true;
                self.metrics.tx_rate_limiter_throttled.inc();
                break;
            }
            match reader.and_then(|reader| gather(reader, &mut self.tx_frame)) {
                Ok(len) if !self.send(len) => {
                    self.held_tx = Some(HeldTx { head, len });
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    self.metrics.tx_malformed_frames.inc();
                    self.guest_errors.log(format_args!("transmit request failed: {e}"));
                }
            }
            // The device writes nothing into a transmit request.
            used_any |= worker::complete(NAME, &mut self.tx, &self.memory, head, 0);
        }
        if used_any {
            worker::signal_used(NAME, &mut self.tx, &self.memory, self.interrupt.as_ref(), TX_QUEUE);
        }
        if self.backend.has_pending() {
            // Replies from the metadata service: the tap will not wake the worker for them.
            self.receive_frames();
        }
    }

    /// Offers the first `len` bytes of `tx_frame` to the backend: false if it would block (the
    /// frame must be kept), true once it is sent or refused for good.
    fn send(&mut self, len: usize) -> bool {
        loop {
            match self.backend.send(&self.tx_frame[..len]) {
                Ok(_) => {
                    self.metrics.tx_packets_count.inc();
                    self.metrics.tx_bytes_count.add((len - VNET_HDR_LEN) as u64);
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // A frame the tap refuses (a bad header, the interface gone) is dropped. A bad
                    // header (EINVAL) is the guest's doing, and it may send many.
                    self.metrics.tap_write_fails.inc();
                    if e.kind() == io::ErrorKind::InvalidInput {
                        self.guest_errors.log(format_args!("the tap refused a {len}-byte frame: {e}"));
                    } else {
                        TAP_ERRORS.log(format_args!("virtio-net: the tap refused a {len}-byte frame: {e}"));
                    }
                    return true;
                }
            }
        }
    }
}

/// Whether `limiter` lets a frame of `bytes` through now (taking its budget if so); when not, it
/// arms its timer for when the frame would pass.
fn admit(limiter: &std::sync::Mutex<crate::rate_limiter::RateLimiter>, bytes: impl TryInto<u64>) -> bool {
    let mut limiter = lock(limiter);
    !limiter.is_limiting() || limiter.consume(bytes.try_into().unwrap_or(u64::MAX))
}

/// A transmit request's length, if it can be a frame: a header, and at most the largest frame.
fn frame_len(len: usize) -> Result<usize, TxError> {
    if len < VNET_HDR_LEN {
        return Err(TxError::TooShort(len));
    }
    if len > MAX_FRAME_BYTES {
        return Err(TxError::TooLong(len));
    }
    Ok(len)
}

/// Copies a transmit request (header and frame) into `frame`; returns its length.
fn gather<B: vm_memory::bitmap::BitmapSlice>(
    mut reader: Reader<'_, B>,
    frame: &mut [u8],
) -> Result<usize, TxError> {
    let len = frame_len(reader.available_bytes())?;
    let destination = frame.get_mut(..len).ok_or(TxError::TooLong(len))?;
    reader.read_exact(destination).map_err(TxError::Read)?;
    Ok(len)
}

impl<B: FrameBackend> QueueHandler for NetHandler<B> {
    fn queue_states(&self) -> Vec<(usize, QueueState)> {
        let mut tx = self.tx.state();
        if self.held_tx.is_some() {
            // The held frame's chain is taken but not yet sent: a restored device takes it again.
            tx.next_avail = tx.next_avail.wrapping_sub(1);
        }
        vec![(RX_QUEUE, self.rx.state()), (TX_QUEUE, tx)]
    }

    fn process_queue(&mut self, index: usize) {
        match index {
            RX_QUEUE => {
                self.metrics.rx_queue_event_count.inc();
                self.receive_frames();
            }
            TX_QUEUE => {
                self.metrics.tx_queue_event_count.inc();
                self.transmit_frames();
            }
            _ => {}
        }
    }

    /// The tap, then the receive and transmit limiters' timers ([`TAP`], [`RX_TIMER`],
    /// [`TX_TIMER`]).
    fn backend_fds(&self) -> Vec<RawFd> {
        vec![self.backend.as_raw_fd(), lock(&self.limiters.rx).fd(), lock(&self.limiters.tx).fd()]
    }

    fn process_backend(&mut self, index: usize) {
        match index {
            TAP => {
                self.metrics.rx_tap_event_count.inc();
                if self.held_tx.is_some() {
                    self.transmit_frames();
                }
                self.receive_frames();
            }
            // A spurious wake-up leaves the worker waiting for the timer still.
            RX_TIMER if timer_fired(&self.limiters.rx) => {
                self.rx_throttled = false;
                self.receive_frames();
            }
            TX_TIMER if timer_fired(&self.limiters.tx) => {
                self.tx_throttled = false;
                self.transmit_frames();
            }
            _ => {}
        }
    }

    fn backend_interest(&self, index: usize) -> EventSet {
        match index {
            TAP => {
                let mut interest = EventSet::empty();
                // Throttled, the tap is not read: its frames wait in the kernel's queue.
                if !self.rx_starved && !self.rx_broken && !self.rx_throttled {
                    interest |= EventSet::IN;
                }
                if self.held_tx.is_some() {
                    interest |= EventSet::OUT;
                }
                interest
            }
            // Always waited for: a PATCH fires it to make the worker look at new buckets.
            _ => EventSet::IN,
        }
    }
}

/// Clears a limiter's timer after it became readable: whether it had fired (a spurious wake-up
/// leaves the worker waiting for it still).
fn timer_fired(limiter: &std::sync::Mutex<crate::rate_limiter::RateLimiter>) -> bool {
    match lock(limiter).event_handler() {
        Ok(fired) => fired,
        // Cannot happen with a valid timerfd; serving again is the safe side (a frame refused
        // again re-arms the timer).
        Err(e) => {
            tracing::error!("virtio-net: cannot read the rate limiter's timer: {e}");
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;

    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    use super::*;
    use crate::device::testing::{descriptor, guest_errors, Recorder};
    use crate::device::InterruptCause;
    use crate::rate_limiter::{Bucket, RateLimit};

    fn unlimited() -> NetLimiters {
        NetLimiters::new(RateLimit::default(), RateLimit::default()).unwrap()
    }

    /// A limit of `size` (bytes, or frames without `bytes`) per `refill_ms`.
    fn limit(bytes: bool, size: u64, refill_ms: u64) -> RateLimit {
        let bucket = Some(Bucket { size, one_time_burst: 0, refill_time: refill_ms });
        if bytes {
            RateLimit { bandwidth: bucket, ops: None }
        } else {
            RateLimit { bandwidth: None, ops: bucket }
        }
    }

    /// Waits (10 s at most) for backend descriptor `index` of `handler` (a limiter's timer) to
    /// become readable, then hands the event to the handler as the worker would.
    fn timer_fires<B: FrameBackend>(handler: &mut NetHandler<B>, index: usize) {
        let mut poll = libc::pollfd { fd: handler.backend_fds()[index], events: libc::POLLIN, revents: 0 };
        // SAFETY: poll reads and writes the one pollfd, which lives across the call.
        let ready = unsafe { libc::poll(&mut poll, 1, 10_000) };
        assert_eq!(ready, 1, "the limiter's timer did not fire within 10 s");
        handler.process_backend(index);
    }

    /// Whether a datagram waits at the device's end of the pair (what the tap would still hold).
    fn waiting(socket: &UnixDatagram) -> bool {
        let mut byte = 0u8;
        // SAFETY: recv writes at most one byte into `byte`, which lives across the call; MSG_PEEK
        // leaves the datagram queued.
        let len = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        len >= 0
    }

    const WRITE: u16 = 2; // VRING_DESC_F_WRITE
    const NEXT: u16 = 1; // VRING_DESC_F_NEXT

    /// A stand-in for the tap: each datagram of a socket pair is one frame.
    impl FrameBackend for UnixDatagram {
        fn receive(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
            self.recv(buffer)
        }

        fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
            UnixDatagram::send(self, frame)
        }
    }

    /// A handler over a socket pair, with its queues in 1 MiB of guest memory (rx at 0, tx at
    /// 0x4000; buffers from 0x10000 up) and the host's end of the pair.
    struct Setup<'m> {
        memory: &'m GuestRam,
        rx: MockSplitQueue<'m, GuestRam>,
        tx: MockSplitQueue<'m, GuestRam>,
        interrupts: Arc<Recorder>,
        metrics: Arc<NetMetrics>,
        handler: NetHandler<UnixDatagram>,
        host: UnixDatagram,
    }

    fn memory() -> GuestRam {
        GuestRam::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn setup(memory: &GuestRam) -> Setup<'_> {
        limited_setup(memory, RateLimit::default(), RateLimit::default())
    }

    /// [`setup`] with the card's receive and transmit limits.
    fn limited_setup(memory: &GuestRam, rx_limit: RateLimit, tx_limit: RateLimit) -> Setup<'_> {
        let rx = MockSplitQueue::create(memory, GuestAddress(0), 16);
        let tx = MockSplitQueue::create(memory, GuestAddress(0x4000), 16);
        let (device_end, host) = UnixDatagram::pair().unwrap();
        device_end.set_nonblocking(true).unwrap();
        host.set_nonblocking(true).unwrap();
        let interrupts = Arc::new(Recorder::default());
        let metrics = Arc::new(NetMetrics::default());
        let handler = NetHandler::new(
            memory.clone(),
            [rx.create_queue().unwrap(), tx.create_queue().unwrap()],
            interrupts.clone(),
            guest_errors(),
            metrics.clone(),
            device_end,
            NetLimiters::new(rx_limit, tx_limit).unwrap(),
        );
        Setup { memory, rx, tx, interrupts, metrics, handler, host }
    }

    impl Setup<'_> {
        /// (head, length) of each used element of `queue`.
        fn used(&self, queue: &MockSplitQueue<GuestRam>) -> Vec<(u32, u32)> {
            let used = queue.used_addr();
            let count = self.memory.read_obj::<u16>(used.unchecked_add(2)).unwrap();
            (0..u64::from(count))
                .map(|i| {
                    let element = used.unchecked_add(4 + 8 * i);
                    (
                        self.memory.read_obj(element).unwrap(),
                        self.memory.read_obj(element.unchecked_add(4)).unwrap(),
                    )
                })
                .collect()
        }

        fn interrupts(&self) -> Vec<InterruptCause> {
            self.interrupts.0.lock().unwrap().clone()
        }

        /// The named counts since the last call.
        fn counts<const N: usize>(&self, names: [&str; N]) -> [u64; N] {
            let counts = self.metrics.take();
            names.map(|name| counts.get(name).unwrap())
        }

        /// The next frame the host end holds, if any.
        fn host_frame(&self) -> Option<Vec<u8>> {
            let mut buffer = vec![0u8; MAX_FRAME_BYTES + 1];
            match self.host.recv(&mut buffer) {
                Ok(len) => Some(buffer[..len].to_vec()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                Err(e) => panic!("host end: {e}"),
            }
        }

        fn read(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut bytes = vec![0u8; len];
            self.memory.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
            bytes
        }
    }

    /// A frame as the tap would carry it: a header (flags 0, no GSO) and `len` bytes of `fill`.
    fn frame(len: usize, fill: u8) -> Vec<u8> {
        let mut frame = vec![0u8; VNET_HDR_LEN];
        frame.resize(VNET_HDR_LEN + len, fill);
        frame
    }

    #[test]
    fn transmit_gathers_a_chain_into_one_frame() {
        let memory = memory();
        let mut s = setup(&memory);
        let header = [0x11u8; VNET_HDR_LEN];
        memory.write_slice(&header, GuestAddress(0x10000)).unwrap();
        memory.write_slice(&[0x22; 14], GuestAddress(0x11000)).unwrap();
        memory.write_slice(&[0x33; 50], GuestAddress(0x12000)).unwrap();
        s.tx.add_desc_chains(
            &[
                descriptor(0x10000, 12, NEXT, 1),
                descriptor(0x11000, 14, NEXT, 2),
                descriptor(0x12000, 50, 0, 0),
            ],
            0,
        )
        .unwrap();
        s.handler.process_queue(TX_QUEUE);
        let mut expected = header.to_vec();
        expected.extend([0x22; 14]);
        expected.extend([0x33; 50]);
        assert_eq!(s.host_frame(), Some(expected));
        assert_eq!(s.host_frame(), None, "one chain is one frame");
        assert_eq!(s.used(&s.tx), [(0, 0)]);
        assert_eq!(s.interrupts(), [InterruptCause::Queue(TX_QUEUE as u16)]);
        let counts = s.counts(["tx_queue_event_count", "tx_packets_count", "tx_bytes_count"]);
        assert_eq!(counts, [1, 1, 64], "the header is not counted");
    }

    #[test]
    fn malformed_transmit_requests_fail_alone() {
        let memory = memory();
        let mut s = setup(&memory);
        s.tx.add_desc_chains(
            &[
                // Shorter than the header.
                descriptor(0x10000, 8, 0, 0),
                // Outside guest memory.
                descriptor(0xFFFF_0000, 64, 0, 0),
                // Longer than any frame.
                descriptor(0x20000, MAX_FRAME_BYTES as u32 + 1, 0, 0),
                // Fine.
                descriptor(0x11000, 60, 0, 0),
            ],
            0,
        )
        .unwrap();
        s.handler.process_queue(TX_QUEUE);
        assert_eq!(s.host_frame().map(|f| f.len()), Some(60));
        assert_eq!(s.host_frame(), None);
        assert_eq!(s.used(&s.tx), [(0, 0), (1, 0), (2, 0), (3, 0)]);
        assert_eq!(s.counts(["tx_malformed_frames", "tx_packets_count", "tx_bytes_count"]), [3, 1, 48]);
    }

    #[test]
    fn receive_fills_a_buffer_with_header_and_frame() {
        let memory = memory();
        let mut s = setup(&memory);
        s.rx.add_desc_chains(
            &[descriptor(0x10000, 12, WRITE | NEXT, 1), descriptor(0x11000, 2048, WRITE, 0)],
            0,
        )
        .unwrap();
        let mut sent = frame(60, 0x5A);
        sent[NUM_BUFFERS_OFFSET..VNET_HDR_LEN].copy_from_slice(&[0xEE, 0xEE]);
        s.host.send(&sent).unwrap();
        s.handler.process_backend(0);
        assert_eq!(s.used(&s.rx), [(0, 72)]);
        let counts = s.counts(["rx_tap_event_count", "rx_packets_count", "rx_bytes_count", "rx_fails"]);
        assert_eq!(counts, [1, 1, 60, 0]);
        let header = s.read(0x10000, VNET_HDR_LEN);
        assert_eq!(&header[..NUM_BUFFERS_OFFSET], &sent[..NUM_BUFFERS_OFFSET]);
        assert_eq!(&header[NUM_BUFFERS_OFFSET..], [1, 0], "num_buffers is 1, whatever the tap left there");
        assert_eq!(s.read(0x11000, 60), [0x5A; 60]);
        assert_eq!(s.interrupts(), [InterruptCause::Queue(RX_QUEUE as u16)]);
    }

    #[test]
    fn without_receive_buffers_the_backend_is_left_alone_until_the_guest_gives_some() {
        let memory = memory();
        let mut s = setup(&memory);
        assert!(s.handler.backend_interest(0).contains(EventSet::IN));
        s.host.send(&frame(40, 1)).unwrap();
        s.host.send(&frame(41, 2)).unwrap();
        s.handler.process_backend(0);
        assert!(!s.handler.backend_interest(0).contains(EventSet::IN), "it must stop waiting for frames");
        assert!(s.used(&s.rx).is_empty());

        // One buffer: one frame in, and the reading stops again, the second frame kept.
        s.rx.add_desc_chains(&[descriptor(0x10000, 1514, WRITE, 0)], 0).unwrap();
        s.handler.process_queue(RX_QUEUE);
        assert_eq!(s.used(&s.rx), [(0, 52)]);
        assert!(!s.handler.backend_interest(0).contains(EventSet::IN));

        s.rx.add_desc_chains(&[descriptor(0x11000, 1514, WRITE, 0), descriptor(0x12000, 1514, WRITE, 0)], 1)
            .unwrap();
        s.handler.process_queue(RX_QUEUE);
        assert_eq!(s.used(&s.rx), [(0, 52), (1, 53)]);
        assert_eq!(s.read(0x11000 + VNET_HDR_LEN as u64, 41), [2; 41]);
        assert!(s.handler.backend_interest(0).contains(EventSet::IN), "a buffer is left: wait for frames");
    }

    #[test]
    fn a_frame_too_long_for_the_buffer_is_dropped_and_the_buffer_kept() {
        let memory = memory();
        let mut s = setup(&memory);
        s.rx.add_desc_chains(&[descriptor(0x10000, 100, WRITE, 0)], 0).unwrap();
        s.host.send(&frame(200, 1)).unwrap();
        s.host.send(&frame(50, 2)).unwrap();
        s.handler.process_backend(0);
        assert_eq!(s.used(&s.rx), [(0, 62)]);
        assert_eq!(s.read(0x10000 + VNET_HDR_LEN as u64, 50), [2; 50]);
    }

    #[test]
    fn malformed_receive_buffers_fail_alone_and_lose_no_frame() {
        let memory = memory();
        let mut s = setup(&memory);
        s.rx.add_desc_chains(
            &[
                // Read-only: no room at all.
                descriptor(0x10000, 1514, 0, 0),
                // Too short for the header.
                descriptor(0x11000, 8, WRITE, 0),
                // Outside guest memory.
                descriptor(0xFFFF_0000, 1514, WRITE, 0),
                descriptor(0x12000, 1514, WRITE, 0),
            ],
            0,
        )
        .unwrap();
        s.host.send(&frame(30, 7)).unwrap();
        s.handler.process_backend(0);
        assert_eq!(s.used(&s.rx), [(0, 0), (1, 0), (2, 0), (3, 42)]);
        assert_eq!(s.read(0x12000 + VNET_HDR_LEN as u64, 30), [7; 30]);
    }

    #[test]
    fn a_frame_the_backend_cannot_take_is_held_until_it_can() {
        let memory = memory();
        let mut s = setup(&memory);
        // Fill the socket pair until the device's end would block, as a congested tap would.
        let filler = frame(60 * 1024, 0);
        let mut queued = 0;
        loop {
            match FrameBackend::send(&mut s.handler.backend, &filler) {
                Ok(_) => queued += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("filling the socket: {e}"),
            }
            assert!(queued < 10_000, "the socket never filled up");
        }
        memory.write_slice(&frame(20, 9), GuestAddress(0x10000)).unwrap();
        s.tx.add_desc_chains(&[descriptor(0x10000, 32, 0, 0), descriptor(0x11000, 32, 0, 0)], 0).unwrap();
        s.handler.process_queue(TX_QUEUE);
        assert!(s.used(&s.tx).is_empty(), "the request is kept, not completed");
        assert!(s.handler.backend_interest(0).contains(EventSet::OUT));
        // Another notification while blocked changes nothing.
        s.handler.process_queue(TX_QUEUE);
        assert!(s.used(&s.tx).is_empty());

        for _ in 0..queued {
            assert_eq!(s.host_frame().map(|f| f.len()), Some(filler.len()));
        }
        s.handler.process_backend(0);
        assert_eq!(s.host_frame(), Some(frame(20, 9)), "the held frame goes first, unchanged");
        assert_eq!(s.host_frame().map(|f| f.len()), Some(32));
        assert_eq!(s.used(&s.tx), [(0, 0), (1, 0)]);
        assert!(!s.handler.backend_interest(0).contains(EventSet::OUT), "nothing left to wait for");
    }

    /// A backend whose reads fail as a tap's do once its interface is gone.
    struct Detached(UnixDatagram);
    impl AsRawFd for Detached {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_raw_fd()
        }
    }
    impl FrameBackend for Detached {
        fn receive(&mut self, _buffer: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::EBADFD))
        }
        fn send(&mut self, _frame: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::EBADFD))
        }
    }

    #[test]
    fn a_broken_backend_is_no_longer_waited_for() {
        let memory = memory();
        let rx = MockSplitQueue::create(&memory, GuestAddress(0), 16);
        let tx = MockSplitQueue::create(&memory, GuestAddress(0x4000), 16);
        rx.add_desc_chains(&[descriptor(0x10000, 1514, WRITE, 0)], 0).unwrap();
        let mut handler = NetHandler::new(
            memory.clone(),
            [rx.create_queue().unwrap(), tx.create_queue().unwrap()],
            Arc::new(Recorder::default()),
            guest_errors(),
            Arc::default(),
            Detached(UnixDatagram::pair().unwrap().0),
            unlimited(),
        );
        handler.process_backend(0);
        assert_eq!(handler.backend_interest(0), EventSet::empty());
        let used_idx = memory.read_obj::<u16>(rx.used_addr().unchecked_add(2)).unwrap();
        assert_eq!(used_idx, 0, "the buffer stays the guest's");
    }

    #[test]
    fn a_tap_that_refuses_every_frame_logs_a_few_lines_and_a_count() {
        use devices::guest_log::{capture, LINES_PER_INTERVAL};

        let memory = memory();
        let ((), lines) = capture::lines(|| {
            for _ in 0..600 {
                let rx = MockSplitQueue::create(&memory, GuestAddress(0), 16);
                let tx = MockSplitQueue::create(&memory, GuestAddress(0x4000), 16);
                for head in 0..8u16 {
                    tx.add_desc_chains(&[descriptor(0x10000, 60, 0, 0)], head).unwrap();
                }
                let mut handler = NetHandler::new(
                    memory.clone(),
                    [rx.create_queue().unwrap(), tx.create_queue().unwrap()],
                    Arc::new(Recorder::default()),
                    guest_errors(),
                    Arc::default(),
                    Detached(UnixDatagram::pair().unwrap().0),
                    unlimited(),
                );
                handler.process_queue(TX_QUEUE);
            }
            TAP_ERRORS.flush();
        });
        capture::assert_limited(
            &lines,
            "virtio-net: the tap refused",
            "virtio-net tap errors",
            4800 - u64::from(LINES_PER_INTERVAL),
        );
    }

    #[test]
    fn a_throttled_transmit_leaves_its_requests_on_the_ring_and_resumes_on_the_timer() {
        let memory = memory();
        // 100 bytes per 20 ms; each request is 72 bytes (header and 60).
        let mut s = limited_setup(&memory, RateLimit::default(), limit(true, 100, 20));
        for (i, fill) in [1u8, 2, 3].into_iter().enumerate() {
            memory.write_slice(&frame(60, fill), GuestAddress(0x10000 + 0x1000 * i as u64)).unwrap();
        }
        s.tx.add_desc_chains(
            &[descriptor(0x10000, 72, 0, 0), descriptor(0x11000, 72, 0, 0), descriptor(0x12000, 72, 0, 0)],
            0,
        )
        .unwrap();
        s.handler.process_queue(TX_QUEUE);
        assert_eq!(s.host_frame(), Some(frame(60, 1)));
        assert_eq!(s.host_frame(), None, "the second request waits for the budget");
        assert_eq!(s.used(&s.tx), [(0, 0)], "and stays on the ring, not completed");
        assert_eq!(s.counts(["tx_rate_limiter_throttled", "tx_packets_count"]), [1, 1]);
        // The guest's notifications change nothing while throttled.
        s.handler.process_queue(TX_QUEUE);
        assert_eq!(s.host_frame(), None);
        // A snapshot now shows the waiting requests as not yet taken.
        assert_eq!(s.handler.queue_states()[TX_QUEUE].1.next_avail, 1);

        let mut sent = Vec::new();
        for _ in 0..10 {
            if sent.len() == 2 {
                break;
            }
            timer_fires(&mut s.handler, TX_TIMER);
            while let Some(frame) = s.host_frame() {
                sent.push(frame);
            }
        }
        assert_eq!(sent, [frame(60, 2), frame(60, 3)], "whole and in order");
        assert_eq!(s.used(&s.tx), [(0, 0), (1, 0), (2, 0)]);
    }

    /// A request declaring 15 MiB (far beyond any frame) is dropped without its size being
    /// charged: the good frame behind it goes at once, not after 15 MiB of budget came back.
    #[test]
    fn a_malformed_huge_transmit_request_does_not_stall_the_next_frame() {
        let memory = memory();
        // 64 KiB per second: charging the malformed request would cost four minutes.
        let mut s = limited_setup(&memory, RateLimit::default(), limit(true, 65536, 1000));
        let mut chain: Vec<_> =
            (0..15u16).map(|i| descriptor(0, 0x10_0000, if i < 14 { NEXT } else { 0 }, i + 1)).collect();
        memory.write_slice(&frame(60, 4), GuestAddress(0x10000)).unwrap();
        chain.push(descriptor(0x10000, 72, 0, 0));
        s.tx.add_desc_chains(&chain, 0).unwrap();
        s.handler.process_queue(TX_QUEUE);
        assert_eq!(s.host_frame(), Some(frame(60, 4)), "the good frame is sent at once");
        assert_eq!(s.used(&s.tx), [(0, 0), (15, 0)]);
        let counts = s.counts(["tx_malformed_frames", "tx_rate_limiter_throttled", "tx_packets_count"]);
        assert_eq!(counts, [1, 0, 1]);
    }

    #[test]
    fn a_throttled_receive_keeps_its_frame_and_stops_reading_the_backend() {
        let memory = memory();
        // One frame per 20 ms.
        let mut s = limited_setup(&memory, limit(false, 1, 20), RateLimit::default());
        s.rx.add_desc_chains(
            &[
                descriptor(0x10000, 1514, WRITE, 0),
                descriptor(0x11000, 1514, WRITE, 0),
                descriptor(0x12000, 1514, WRITE, 0),
            ],
            0,
        )
        .unwrap();
        for fill in [1, 2, 3] {
            s.host.send(&frame(40 + usize::from(fill), fill)).unwrap();
        }
        s.handler.process_backend(TAP);
        assert_eq!(s.used(&s.rx), [(0, 53)]);
        assert!(!s.handler.backend_interest(TAP).contains(EventSet::IN), "throttled: the tap is not read");
        assert!(s.handler.backend_interest(RX_TIMER).contains(EventSet::IN));
        assert!(waiting(&s.handler.backend), "the third frame is still in the backend's queue");
        assert_eq!(s.counts(["rx_rate_limiter_throttled", "rx_packets_count"]), [1, 1]);
        // New buffers from the guest do not get round the limiter.
        s.handler.process_queue(RX_QUEUE);
        assert_eq!(s.used(&s.rx).len(), 1);

        for _ in 0..10 {
            if s.used(&s.rx).len() == 3 {
                break;
            }
            timer_fires(&mut s.handler, RX_TIMER);
            if s.handler.backend_interest(TAP).contains(EventSet::IN) {
                // Not throttled again: the tap is read, as the worker would.
                s.handler.process_backend(TAP);
            }
        }
        assert_eq!(s.used(&s.rx), [(0, 53), (1, 54), (2, 55)]);
        for (i, fill) in [1u8, 2, 3].into_iter().enumerate() {
            let payload = s.read(0x10000 + 0x1000 * i as u64 + VNET_HDR_LEN as u64, 40 + usize::from(fill));
            assert!(payload.iter().all(|&b| b == fill), "frame {fill} arrived whole and in its place");
        }
        assert!(!waiting(&s.handler.backend));
    }

    /// A guest's ARP request for the metadata service, sent on the transmit queue, is answered
    /// in its receive buffer at once (the tap has nothing to wake the worker for), and the tap
    /// never sees it.
    #[test]
    fn an_mmds_reply_is_received_right_after_the_transmit_that_caused_it() {
        use crate::net::mmds::{MmdsBackend, MmdsStack};
        use model::mmds::{MmdsStore, NetMmds, DEFAULT_MMDS_ADDRESS};

        let memory = memory();
        let rx = MockSplitQueue::create(&memory, GuestAddress(0), 16);
        let tx = MockSplitQueue::create(&memory, GuestAddress(0x4000), 16);
        let (tap, host) = UnixDatagram::pair().unwrap();
        tap.set_nonblocking(true).unwrap();
        host.set_nonblocking(true).unwrap();
        let mmds = NetMmds {
            address: DEFAULT_MMDS_ADDRESS,
            version: model::api::MmdsVersion::V1,
            imds_compat: false,
            store: MmdsStore::new(100),
        };
        let backend = MmdsBackend::new(tap, MmdsStack::new(mmds, guest_errors()));
        let interrupts = Arc::new(Recorder::default());
        let mut handler = NetHandler::new(
            memory.clone(),
            [rx.create_queue().unwrap(), tx.create_queue().unwrap()],
            interrupts.clone(),
            guest_errors(),
            Arc::default(),
            backend,
            unlimited(),
        );
        let guest_mac = [0x52, 0x54, 0, 0, 0, 1];
        let mut request = vec![0u8; VNET_HDR_LEN];
        request.extend_from_slice(&[0xff; 6]);
        request.extend_from_slice(&guest_mac);
        request.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        request.extend_from_slice(&guest_mac);
        request.extend_from_slice(&[169, 254, 0, 2, 0, 0, 0, 0, 0, 0]);
        request.extend_from_slice(&DEFAULT_MMDS_ADDRESS.octets());
        memory.write_slice(&request, GuestAddress(0x10000)).unwrap();
        rx.add_desc_chains(&[descriptor(0x20000, 1526, WRITE, 0)], 0).unwrap();
        tx.add_desc_chains(&[descriptor(0x10000, request.len() as u32, 0, 0)], 0).unwrap();
        handler.process_queue(TX_QUEUE);

        let used = |queue: &MockSplitQueue<GuestRam>| {
            memory.read_obj::<u16>(queue.used_addr().unchecked_add(2)).unwrap()
        };
        assert_eq!(used(&tx), 1);
        assert_eq!(used(&rx), 1, "the reply went to the guest without waiting for the tap");
        let mut reply = vec![0u8; VNET_HDR_LEN + 42];
        memory.read_slice(&mut reply, GuestAddress(0x20000)).unwrap();
        let ethernet = &reply[VNET_HDR_LEN..];
        assert_eq!(&ethernet[..6], &guest_mac, "to the guest");
        assert_eq!(&ethernet[12..14], &[0x08, 0x06], "an ARP packet");
        assert_eq!(&ethernet[20..22], &[0, 2], "a reply");
        assert_eq!(&ethernet[28..32], &DEFAULT_MMDS_ADDRESS.octets(), "for the service's address");
        assert!(interrupts.0.lock().unwrap().contains(&InterruptCause::Queue(RX_QUEUE as u16)));
        let mut buffer = [0u8; 128];
        assert!(host.recv(&mut buffer).is_err(), "the tap saw nothing");
    }

    #[test]
    fn lifting_a_limit_wakes_a_throttled_queue_at_once() {
        let memory = memory();
        // One frame an hour: only the update can release the second.
        let mut s = limited_setup(&memory, RateLimit::default(), limit(false, 1, 3_600_000));
        s.tx.add_desc_chains(&[descriptor(0x10000, 60, 0, 0), descriptor(0x11000, 60, 0, 0)], 0).unwrap();
        s.handler.process_queue(TX_QUEUE);
        assert_eq!(s.used(&s.tx), [(0, 0)]);
        let control = s.handler.limiters.control();
        control.update_rate_limiters(None, Some(RateLimit::default())).unwrap();
        assert_eq!(control.rate_limits(), (RateLimit::default(), RateLimit::default()));
        timer_fires(&mut s.handler, TX_TIMER);
        assert_eq!(s.used(&s.tx), [(0, 0), (1, 0)]);
    }
}
