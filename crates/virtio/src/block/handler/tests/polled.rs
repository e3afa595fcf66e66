//! The adaptive poll mode: requests that come during a window are served with the guest's
//! notifications off and no notification, the window ends with notifications on and a last look
//! that loses no request, the window grows from nothing, and a polling worker still stops and
//! holds for a snapshot.

use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::in_flight::read_at;
use super::*;
use crate::device::Interrupt;
use crate::worker::Worker;

/// VRING_USED_F_NO_NOTIFY: the device asks the driver not to notify.
const NO_NOTIFY: u16 = 1;
const SIZE: u16 = 16;
/// Longer than any test takes: the window never passes by itself.
const LONG: Duration = Duration::from_secs(600);

/// Whether the device has the driver's notifications off (the used ring's flags).
fn notifications_off(memory: &GuestRam, mock: &MockSplitQueue<GuestRam>) -> bool {
    memory.read_obj::<u16>(used_ring_of(mock)).unwrap() & NO_NOTIFY != 0
}

/// The used ring's `avail_event` (with EVENT_IDX: the driver notifies once its index passes it).
fn avail_event(memory: &GuestRam, mock: &MockSplitQueue<GuestRam>) -> u16 {
    memory.read_obj::<u16>(used_ring_of(mock).unchecked_add(4 + 8 * u64::from(SIZE))).unwrap()
}

/// Read request `n` (of sector `n`), each in its own buffers.
fn read_request(memory: &GuestRam, n: u64) -> Vec<Buffer> {
    read_at(memory, HEADER + 0x100 * n, n, DATA + 0x1000 * n, STATUS + 0x100 * n)
}

/// Makes read request `n` available, as the driver would (descriptors 3n..3n+3).
fn make_available(memory: &GuestRam, mock: &MockSplitQueue<GuestRam>, n: u64) {
    add_chains(mock, &[read_request(memory, n)], 3 * n as u16);
}

/// A handler of one queue over a patterned raw disk, serving on the spot, and its metrics.
fn polled_handler(
    memory: &GuestRam,
    queue: Queue,
    path: &std::path::Path,
    mode: Mode,
) -> (BlockHandler<RawFile>, Arc<BlockMetrics>) {
    let metrics = Arc::new(BlockMetrics::default());
    let handler = BlockHandler::new(
        memory.clone(),
        vec![queue],
        Arc::new(Recorder::default()),
        guest_errors(),
        metrics.clone(),
        Arc::new(SharedDisk::new(raw_disk(path, false))),
        unlimited(),
        mode,
    )
    .unwrap();
    (handler, metrics)
}

/// Whether request `n` read its sector correctly.
fn read_back(memory: &GuestRam, n: u64) -> bool {
    let status: u8 = memory.read_obj(GuestAddress(STATUS + 0x100 * n)).unwrap();
    status == VIRTIO_BLK_S_OK && sector_holds(&read_guest(memory, DATA + 0x1000 * n, 512), 0, n as u8)
}

#[test]
fn a_request_made_during_the_window_is_served_with_notifications_off_and_no_notification() {
    let (_dir, path) = patterned_disk();
    for mode in [ON_THE_SPOT, DEFERRED] {
        let memory = memory();
        let mock = MockSplitQueue::new(&memory, SIZE);
        make_available(&memory, &mock, 0);
        let (handler, metrics) = polled_handler(&memory, queue_of(&mock), &path, mode);
        let mut handler = handler.with_fixed_poll(LONG);

        handler.process_queue(0);
        handler.drain();
        assert_eq!(handler.poll_state(), (LONG, true), "in a window once out of work");
        assert!(notifications_off(&memory, &mock), "notifications stay off during the window");
        // The driver, told not to, sends no notification for the next request: polling finds it
        // (and, deferred, the engine's completion of it).
        make_available(&memory, &mock, 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while used_entries(&memory, &mock, SIZE).len() < 2 {
            assert!(handler.poll(), "still polling");
            assert!(Instant::now() < deadline, "the request made during the window was not served");
        }
        assert!(read_back(&memory, 0) && read_back(&memory, 1));
        assert!(notifications_off(&memory, &mock), "and off still, in the next window");
        assert_eq!(metrics.queue_event_count.take(), 1, "one notification for both requests");
    }
}

#[test]
fn with_event_idx_the_avail_event_stays_behind_during_the_window() {
    let (_dir, path) = patterned_disk();
    let memory = memory();
    let mock = MockSplitQueue::new(&memory, SIZE);
    make_available(&memory, &mock, 0);
    let mut queue = queue_of(&mock);
    queue.set_event_idx(true);
    let (handler, _) = polled_handler(&memory, queue, &path, ON_THE_SPOT);
    let mut handler = handler.with_fixed_poll(LONG);

    handler.process_queue(0);
    make_available(&memory, &mock, 1);
    assert!(handler.poll());
    assert_eq!(used_entries(&memory, &mock, SIZE).len(), 2);
    // The driver notifies when its index passes avail_event: left at 0, the index going from 1
    // to 2 passes nothing.
    assert_eq!(avail_event(&memory, &mock), 0, "no notification asked for during the window");
    handler.end_poll_window_now();
    assert_eq!(avail_event(&memory, &mock), 2, "the next request is to be notified");
    assert!(!handler.poll(), "asleep once the window ended");
}

#[test]
fn the_window_ends_with_notifications_on_and_a_request_that_raced_in_is_served() {
    let (_dir, path) = patterned_disk();
    let memory = memory();
    let mock = MockSplitQueue::new(&memory, SIZE);
    make_available(&memory, &mock, 0);
    let (handler, _) = polled_handler(&memory, queue_of(&mock), &path, ON_THE_SPOT);
    let mut handler = handler.with_fixed_poll(LONG);
    handler.process_queue(0);
    assert!(notifications_off(&memory, &mock));

    // Nothing came: the window ends with notifications on, and the worker sleeps.
    handler.end_poll_window_now();
    assert!(!notifications_off(&memory, &mock), "notifications back on before sleeping");
    assert!(!handler.poll());

    // A request the driver made available while it still saw notifications off (so it sent
    // none), found by the last look at the ring, and a new window after it.
    handler.process_queue(0); // a notification for nothing: back in a window
    assert!(notifications_off(&memory, &mock));
    make_available(&memory, &mock, 1);
    handler.end_poll_window_now();
    assert_eq!(used_entries(&memory, &mock, SIZE).len(), 2, "the raced request was not lost");
    assert!(read_back(&memory, 1));
    assert_eq!(handler.poll_state(), (LONG, true), "work found: polling again");
    // Served with notifications back on; the next request found by polling turns them off.
    make_available(&memory, &mock, 2);
    assert!(handler.poll());
    assert_eq!(used_entries(&memory, &mock, SIZE).len(), 3);
    assert!(notifications_off(&memory, &mock));
}

#[test]
fn a_ring_index_more_than_a_ring_ahead_neither_hangs_the_worker_nor_keeps_it_polling() {
    let (_dir, path) = patterned_disk();
    for poll in [None, Some(Duration::from_micros(1))] {
        let memory = memory();
        let mock = MockSplitQueue::new(&memory, SIZE);
        make_available(&memory, &mock, 0);
        // The driver's index claims SIZE + 1 requests: the queue refuses to take any.
        memory.write_obj(SIZE + 1, mock.avail_addr().unchecked_add(2)).unwrap();
        let (handler, _) = polled_handler(&memory, queue_of(&mock), &path, ON_THE_SPOT);
        let mut handler = match poll {
            Some(window) => handler.with_fixed_poll(window),
            None => handler,
        };
        handler.process_queue(0);
        // The 1 µs window passes, and its last look finds nothing it can take: the worker
        // sleeps instead of polling the broken ring for ever.
        let deadline = Instant::now() + Duration::from_secs(10);
        while handler.poll() {
            assert!(Instant::now() < deadline, "still polling a ring it cannot take from");
        }
        assert!(used_entries(&memory, &mock, SIZE).is_empty());
    }
}

#[test]
fn the_window_grows_from_nothing_when_notifications_come_close_together() {
    let (_dir, path) = patterned_disk();
    let memory = memory();
    let mock = MockSplitQueue::new(&memory, SIZE);
    make_available(&memory, &mock, 0);
    let (handler, _) = polled_handler(&memory, queue_of(&mock), &path, ON_THE_SPOT);
    let mut handler = handler.with_poll(Some(LONG));
    assert_eq!(handler.poll_state(), (Duration::ZERO, false), "no polling at first");

    handler.process_queue(0);
    assert!(!notifications_off(&memory, &mock), "no window yet: notifications on");
    assert!(!handler.poll());
    // The next notification within the maximum: a window would have found it.
    make_available(&memory, &mock, 1);
    handler.process_queue(0);
    assert_eq!(handler.poll_state(), (crate::block::poll::START, true));
    assert!(notifications_off(&memory, &mock));
    assert_eq!(used_entries(&memory, &mock, SIZE).len(), 2);
}

#[test]
fn without_a_poll_option_nothing_changes() {
    let (_dir, path) = patterned_disk();
    let memory = memory();
    let mock = MockSplitQueue::new(&memory, SIZE);
    make_available(&memory, &mock, 0);
    let (mut handler, _) = polled_handler(&memory, queue_of(&mock), &path, ON_THE_SPOT);
    for n in 1..4 {
        handler.process_queue(0);
        assert!(!handler.poll(), "never polls");
        assert!(!notifications_off(&memory, &mock));
        make_available(&memory, &mock, n);
    }
    assert_eq!(handler.poll_state(), (Duration::ZERO, false));
}

/// Interrupts, sent to the test as they come.
struct Signals(Mutex<mpsc::Sender<InterruptCause>>);

impl Interrupt for Signals {
    fn trigger(&self, cause: InterruptCause) -> io::Result<()> {
        let _ = self.0.lock().unwrap().send(cause);
        Ok(())
    }
}

#[test]
fn a_polling_worker_holds_with_notifications_on_serves_what_came_and_stops() {
    let (_dir, path) = patterned_disk();
    let memory = memory();
    let mock = MockSplitQueue::new(&memory, SIZE);
    make_available(&memory, &mock, 0);
    let (interrupts, interrupted) = mpsc::channel();
    let handler = BlockHandler::new(
        memory.clone(),
        vec![queue_of(&mock)],
        Arc::new(Signals(Mutex::new(interrupts))),
        guest_errors(),
        Arc::default(),
        Arc::new(SharedDisk::new(raw_disk(&path, false))),
        unlimited(),
        ON_THE_SPOT,
    )
    .unwrap()
    .with_fixed_poll(LONG);
    let event = EventFd::new(EFD_NONBLOCK).unwrap();
    event.write(1).unwrap();
    let worker =
        Worker::spawn("test-blk-poll", jail::seccomp::ThreadRole::Block, vec![event], handler).unwrap();
    let next = || interrupted.recv_timeout(Duration::from_secs(10)).expect("no interrupt within 10 s");

    next();
    // Now polling (the window outlasts the test): a hold still stops it, and the snapshot shows
    // notifications on, or the restored device would never hear of the next request.
    let held = worker.hold().unwrap();
    assert_eq!(held[0].1.next_avail, 1);
    assert!(!notifications_off(&memory, &mock), "notifications on in the held state");
    // Made available while held, with no notification: served once the worker goes on.
    make_available(&memory, &mock, 1);
    worker.release();
    next();
    assert_eq!(used_entries(&memory, &mock, SIZE).len(), 2);
    assert!(read_back(&memory, 1));
    // Polling again; stopping does not wait for the window.
    let stopping = Instant::now();
    drop(worker);
    assert!(stopping.elapsed() < LONG / 2, "the worker stopped only when its window ended");
}
