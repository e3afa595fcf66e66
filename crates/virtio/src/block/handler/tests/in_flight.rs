//! Requests in flight: out-of-order completion, a full engine, draining for a snapshot, several
//! queues, and event-index suppression.

use std::sync::{Condvar, Mutex};

use virtio_queue::QueueT;

use super::*;
use crate::block::device::VIRTIO_RING_F_EVENT_IDX;
use crate::block::{Block, BlockOptions, Engine};
use crate::device::VirtioDevice;

/// A backend (no direct descriptor: the engine's threads serve it) whose reads of sector 0 and
/// flushes wait until the test opens its gate. Every sector reads as its number plus one.
#[derive(Default)]
struct Gated {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    open: bool,
    /// Operations that reached the gate.
    arrived: usize,
    flushes: usize,
}

impl Gated {
    fn pass(&self) {
        let mut state = self.state.lock().unwrap();
        state.arrived += 1;
        self.changed.notify_all();
        while !state.open {
            state = self.changed.wait(state).unwrap();
        }
    }

    fn wait_for_arrivals(&self, count: usize) {
        let mut state = self.state.lock().unwrap();
        while state.arrived < count {
            state = self.changed.wait(state).unwrap();
        }
    }

    fn open(&self) {
        self.state.lock().unwrap().open = true;
        self.changed.notify_all();
    }

    fn flushes(&self) -> usize {
        self.state.lock().unwrap().flushes
    }
}

impl DiskBackend for Gated {
    fn size(&self) -> u64 {
        SECTORS * 512
    }
    fn read_vectored_at(&self, buffers: &[IoBuf], offset: u64) -> io::Result<()> {
        if offset == 0 {
            self.pass();
        }
        for buffer in buffers {
            // SAFETY: the buffers are the test's guest memory, mapped for the whole test.
            unsafe { buffer.as_mut_slice() }.fill((offset / 512) as u8 + 1);
        }
        Ok(())
    }
    fn write_vectored_at(&self, _: &[IoBuf], _: u64) -> io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        self.pass();
        self.state.lock().unwrap().flushes += 1;
        Ok(())
    }
    fn discard(&self, _: u64, _: u64) -> io::Result<()> {
        Ok(())
    }
    fn write_zeroes(&self, _: u64, _: u64, _: bool) -> io::Result<()> {
        Ok(())
    }
}

/// A read of `sector` into `data` with its status byte at `status`, its header at `at`.
pub(super) fn read_at(memory: &GuestRam, at: u64, sector: u64, data: u64, status: u64) -> Vec<Buffer> {
    let mut bytes = [0u8; 16];
    bytes[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
    bytes[8..].copy_from_slice(&sector.to_le_bytes());
    memory.write_slice(&bytes, GuestAddress(at)).unwrap();
    memory.write_obj(0xFFu8, GuestAddress(status)).unwrap();
    vec![Buffer(at, 16, false), Buffer(data, 512, true), Buffer(status, 1, true)]
}

fn handler_over<B: DiskBackend + ?Sized>(
    memory: &GuestRam,
    queues: Vec<Queue>,
    disk: Disk<B>,
    mode: Mode,
) -> (BlockHandler<B>, Arc<Recorder>) {
    let interrupts = Arc::new(Recorder::default());
    let shared = Arc::new(SharedDisk::new(disk));
    let handler = BlockHandler::new(
        memory.clone(),
        queues,
        interrupts.clone(),
        guest_errors(),
        Arc::default(),
        shared,
        unlimited(),
        mode,
    )
    .unwrap();
    (handler, interrupts)
}

#[test]
fn a_later_request_completes_before_an_earlier_slow_one() {
    let memory = memory();
    let mock = MockSplitQueue::new(&memory, 16);
    let slow = read_at(&memory, HEADER, 0, DATA, STATUS);
    let fast = read_at(&memory, HEADER + 0x100, 1, DATA + 0x1000, STATUS + 0x100);
    add_chains(&mock, &[slow, fast], 0);
    let backend = Arc::new(Gated::default());
    let (mut handler, interrupts) =
        handler_over(&memory, vec![queue_of(&mock)], shared_disk_of(backend.clone(), false), DEFERRED);

    handler.process_queue(0);
    // The fast one may have completed while the queue was served; if not, wait for it.
    if used_entries(&memory, &mock, 16).is_empty() {
        handler.step(0);
    }
    assert_eq!(used_entries(&memory, &mock, 16), [(3, 513)], "the second request (head 3) is done first");
    assert_eq!(memory.read_obj::<u8>(GuestAddress(STATUS + 0x100)).unwrap(), VIRTIO_BLK_S_OK);
    assert_eq!(memory.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0xFF, "the first is still running");
    assert!(read_guest(&memory, DATA + 0x1000, 512).iter().all(|&b| b == 2));

    backend.open();
    handler.drain();
    assert_eq!(used_entries(&memory, &mock, 16), [(3, 513), (0, 513)]);
    assert_eq!(memory.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), VIRTIO_BLK_S_OK);
    assert!(read_guest(&memory, DATA, 512).iter().all(|&b| b == 1));
    assert_eq!(*interrupts.0.lock().unwrap(), [InterruptCause::Queue(0), InterruptCause::Queue(0)]);
}

#[test]
fn many_requests_in_flight_on_a_raw_file_complete_with_their_data() {
    let (_dir, path) = patterned_disk();
    let memory = memory();
    // Eight writes of two sectors each from sector 64 on, and eight reads of sectors 0.., all in
    // flight at once.
    let mut chains = Vec::new();
    for i in 0..8u64 {
        let at = HEADER + 0x100 * i;
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
        header[8..].copy_from_slice(&(64 + 2 * i).to_le_bytes());
        memory.write_slice(&header, GuestAddress(at)).unwrap();
        memory.write_slice(&[0xA0 + i as u8; 1024], GuestAddress(DATA + 0x1000 * i)).unwrap();
        // The data in two descriptors: 512 + 512 bytes.
        chains.push(vec![
            Buffer(at, 16, false),
            Buffer(DATA + 0x1000 * i, 512, false),
            Buffer(DATA + 0x1000 * i + 512, 512, false),
            Buffer(STATUS + 0x100 * i, 1, true),
        ]);
    }
    for i in 0..8u64 {
        let (at, data, status) =
            (HEADER + 0x100 * (8 + i), DATA + 0x1000 * (8 + i), STATUS + 0x100 * (8 + i));
        chains.push(read_at(&memory, at, i, data, status));
    }
    let (used, _) = serve_chains(&memory, raw_disk(&path, false), &chains);
    assert_eq!(used[..8], [1; 8], "writes use only the status byte");
    assert_eq!(used[8..], [513; 8], "reads use their data and the status byte");
    for i in 0..16u64 {
        assert_eq!(
            memory.read_obj::<u8>(GuestAddress(STATUS + 0x100 * i)).unwrap(),
            VIRTIO_BLK_S_OK,
            "request {i}"
        );
    }
    let contents = std::fs::read(&path).unwrap();
    for i in 0..8usize {
        let byte = 0xA0 + i as u8;
        assert!(
            sector_holds(&contents, 64 + 2 * i, byte) && sector_holds(&contents, 65 + 2 * i, byte),
            "write {i}"
        );
        assert!(
            read_guest(&memory, DATA + 0x1000 * (8 + i as u64), 512).iter().all(|&b| b == i as u8),
            "read {i}"
        );
    }
}

#[test]
fn a_full_engine_leaves_requests_on_the_ring_until_some_complete() {
    let memory = memory();
    // A queue of two: the engine holds two requests. The driver names the same chain three times
    // (a driver may not, but the device must cope): the third waits on the ring.
    let mock = MockSplitQueue::new(&memory, 2);
    add_chains(&mock, &[vec![header(&memory, VIRTIO_BLK_T_FLUSH, 0), status_buffer(&memory)]], 0);
    let avail = mock.avail_addr();
    memory.write_obj::<u16>(0, avail.unchecked_add(6)).unwrap();
    memory.write_obj::<u16>(2, avail.unchecked_add(2)).unwrap();
    let backend = Arc::new(Gated::default());
    let (mut handler, _) =
        handler_over(&memory, vec![queue_of(&mock)], shared_disk_of(backend.clone(), false), DEFERRED);
    handler.process_queue(0);
    backend.wait_for_arrivals(2);
    // The third, made available now, finds the engine full.
    memory.write_obj::<u16>(0, avail.unchecked_add(4)).unwrap();
    memory.write_obj::<u16>(3, avail.unchecked_add(2)).unwrap();
    handler.process_queue(0);
    assert_eq!(used_entries(&memory, &mock, 2), []);

    backend.open();
    handler.drain();
    assert_eq!(used_entries(&memory, &mock, 2), [(0, 1), (0, 1), (0, 1)]);
    assert_eq!(backend.flushes(), 3);
}

#[test]
fn a_snapshot_hold_completes_the_requests_in_flight_then_flushes() {
    let memory = memory();
    let mock = MockSplitQueue::new(&memory, 16);
    let chains = [
        read_at(&memory, HEADER, 0, DATA, STATUS),
        read_at(&memory, HEADER + 0x100, 0, DATA + 0x1000, STATUS + 0x100),
    ];
    add_chains(&mock, &chains, 0);
    let backend = Arc::new(Gated::default());
    let (mut handler, _) =
        handler_over(&memory, vec![queue_of(&mock)], shared_disk_of(backend.clone(), false), DEFERRED);
    handler.process_queue(0);
    let opener = {
        let backend = backend.clone();
        std::thread::spawn(move || {
            backend.wait_for_arrivals(2);
            backend.open();
        })
    };
    handler.quiesce().unwrap();
    opener.join().unwrap();
    assert_eq!(used_entries(&memory, &mock, 16).len(), 2, "both requests completed before the hold");
    assert_eq!(backend.flushes(), 1, "then the disk was flushed");
    let states = handler.queue_states();
    assert_eq!((states[0].1.next_avail, states[0].1.next_used), (2, 2));
}

#[test]
fn a_replaced_disk_keeps_the_requests_that_started_on_it() {
    let memory = memory();
    let mock = MockSplitQueue::new(&memory, 16);
    add_chains(&mock, &[read_at(&memory, HEADER, 0, DATA, STATUS)], 0);
    let old = Arc::new(Gated::default());
    let disk = Disk::<dyn DiskBackend> {
        backend: old.clone(),
        sectors: SECTORS,
        read_only: false,
        id: [0; ID_BYTES],
    };
    let shared = Arc::new(SharedDisk::new(disk));
    let mut handler = BlockHandler::new(
        memory.clone(),
        vec![queue_of(&mock)],
        Arc::new(Recorder::default()),
        guest_errors(),
        Arc::default(),
        shared.clone(),
        unlimited(),
        DEFERRED,
    )
    .unwrap();
    handler.process_queue(0);
    old.wait_for_arrivals(1);
    let control = crate::block::BlockControl::new(shared, unlimited());
    // The replacement flushes the old disk, which waits at the gate too: open it from here.
    let opener = {
        let old = old.clone();
        std::thread::spawn(move || {
            old.wait_for_arrivals(2);
            old.open();
        })
    };
    control.replace(Arc::new(Failing)).unwrap();
    opener.join().unwrap();
    handler.drain();
    assert_eq!(
        memory.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
        VIRTIO_BLK_S_OK,
        "finished on the old disk"
    );
    assert!(read_guest(&memory, DATA, 512).iter().all(|&b| b == 1));
}

#[test]
fn each_queue_is_served_on_its_own_notification() {
    let memory = memory();
    let first = MockSplitQueue::create(&memory, GuestAddress(0), 16);
    let second = MockSplitQueue::create(&memory, GuestAddress(0x4000), 16);
    add_chains(&first, &[read_at(&memory, HEADER, 1, DATA, STATUS)], 0);
    add_chains(&second, &[read_at(&memory, HEADER + 0x100, 2, DATA + 0x1000, STATUS + 0x100)], 0);
    let queues = vec![queue_of(&first), queue_of(&second)];
    let (mut handler, interrupts) = handler_over(&memory, queues, disk_of(Gated::default(), false), DEFERRED);
    assert_eq!(handler.backend_fds().len(), 3, "an engine per queue and the rate limiter's timer");
    handler.process_queue(1);
    handler.drain();
    assert_eq!(used_entries(&memory, &second, 16), [(0, 513)]);
    assert_eq!(used_entries(&memory, &first, 16), [], "queue 0 was not notified");
    assert!(read_guest(&memory, DATA + 0x1000, 512).iter().all(|&b| b == 3));
    handler.process_queue(0);
    handler.drain();
    assert_eq!(used_entries(&memory, &first, 16), [(0, 513)]);
    assert_eq!(*interrupts.0.lock().unwrap(), [InterruptCause::Queue(1), InterruptCause::Queue(0)]);
}

#[test]
fn the_device_offers_several_queues_and_says_how_many() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    File::create(&path).unwrap().set_len(4096).unwrap();
    let open = |num_queues, flush| {
        let backend = Arc::new(RawFile::open(&path, false).unwrap());
        let options = BlockOptions { num_queues, engine: Engine::Async, flush, rate_limit: None, poll: None };
        Block::new(backend, false, [0; ID_BYTES], options).unwrap()
    };
    const MQ: u64 = 1 << 12;
    const FLUSH: u64 = 1 << 9;
    let block = open(4, true);
    assert_eq!(block.queue_max_sizes(), [QUEUE_SIZE; 4]);
    assert_ne!(block.features() & MQ, 0);
    assert_ne!(block.features() & VIRTIO_RING_F_EVENT_IDX, 0);
    let mut num_queues = [0u8; 2];
    block.read_config(34, &mut num_queues);
    assert_eq!(u16::from_le_bytes(num_queues), 4);

    let single = open(0, false);
    assert_eq!(single.queue_max_sizes().len(), 1, "no queues means one");
    assert_eq!(single.features() & (MQ | FLUSH), 0, "one queue: no MQ; cache=unsafe: no flush");
    assert_eq!(open(1000, true).queue_max_sizes().len(), usize::from(crate::block::device::MAX_QUEUES));
}

#[test]
fn without_the_flush_feature_a_flush_is_answered_without_touching_the_disk() {
    let memory = memory();
    let backend = Arc::new(Flushes::default());
    let chain = vec![header(&memory, VIRTIO_BLK_T_FLUSH, 0), status_buffer(&memory)];
    let unsafe_cache = Mode { defer: true, flush: false };
    let (used, _) =
        serve_in(unsafe_cache, &memory, shared_disk_of(backend.clone(), false), &[chain], Arc::default());
    assert_eq!(used, [1]);
    assert_eq!(status_byte(&memory), VIRTIO_BLK_S_OK);
    assert_eq!(backend.count.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// Serves four flushes on a queue with event indices, the driver having asked (`used_event`) to
/// be interrupted once the used index passes `used_event`; returns the interrupts and the
/// queue's `avail_event`.
fn flushes_with_event_idx(mode: Mode, used_event: u16) -> (Vec<InterruptCause>, u16) {
    let memory = memory();
    let mock = MockSplitQueue::new(&memory, 16);
    let chains: Vec<Vec<Buffer>> = (0..4u64)
        .map(|i| vec![header(&memory, VIRTIO_BLK_T_FLUSH, 0), Buffer(STATUS + 0x100 * i, 1, true)])
        .collect();
    add_chains(&mock, &chains, 0);
    // used_event follows the avail ring's 16 entries; avail_event the used ring's.
    memory.write_obj(used_event, mock.avail_addr().unchecked_add(4 + 2 * 16)).unwrap();
    let mut queue = queue_of(&mock);
    queue.set_event_idx(true);
    let (mut handler, interrupts) =
        handler_over(&memory, vec![queue], disk_of(Flushes::default(), false), mode);
    handler.process_queue(0);
    handler.drain();
    assert_eq!(used_entries(&memory, &mock, 16).len(), 4);
    let avail_event = memory.read_obj::<u16>(used_ring_of(&mock).unchecked_add(4 + 8 * 16)).unwrap();
    let raised = interrupts.0.lock().unwrap().clone();
    (raised, avail_event)
}

#[test]
fn event_indices_suppress_interrupts_the_driver_did_not_ask_for() {
    for mode in [ON_THE_SPOT, DEFERRED] {
        // The driver wants to hear once the 100th request is used: none of these four.
        let (raised, avail_event) = flushes_with_event_idx(mode, 100);
        assert_eq!(raised, [], "{mode:?}");
        assert_eq!(avail_event, 4, "{mode:?}: the driver is asked to notify for the next new request");
        // It wants to hear of the first: interrupted.
        let (raised, _) = flushes_with_event_idx(mode, 0);
        assert!(!raised.is_empty(), "{mode:?}");
    }
}

#[test]
fn the_synchronous_and_deferred_modes_give_the_same_answers() {
    let memory = memory();
    let (_dir, path) = patterned_disk();
    let chains = || {
        vec![
            read_at(&memory, HEADER, 5, DATA, STATUS),
            vec![
                header_at(&memory, 1, VIRTIO_BLK_T_IN, SECTORS),
                Buffer(DATA + 0x1000, 512, true),
                Buffer(STATUS + 0x100, 1, true),
            ],
            vec![
                header_at(&memory, 2, VIRTIO_BLK_T_GET_ID, 0),
                Buffer(DATA + 0x2000, 20, true),
                Buffer(STATUS + 0x200, 1, true),
            ],
            vec![header_at(&memory, 3, VIRTIO_BLK_T_FLUSH, 0), Buffer(STATUS + 0x300, 1, true)],
        ]
    };
    let mut answers = Vec::new();
    for mode in [ON_THE_SPOT, DEFERRED] {
        let (used, _) = serve_in(mode, &memory, raw_disk(&path, false), &chains(), Arc::default());
        let statuses: Vec<u8> =
            (0..4u64).map(|i| memory.read_obj::<u8>(GuestAddress(STATUS + 0x100 * i)).unwrap()).collect();
        answers.push((used, statuses, read_guest(&memory, DATA, 512), read_guest(&memory, DATA + 0x2000, 9)));
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].0, [513, 1, 21, 1]);
    assert_eq!(answers[0].1, [VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_OK]);
    assert!(answers[0].2.iter().all(|&b| b == 5));
    assert_eq!(answers[0].3, b"test-disk");
}

pub(super) fn header_at(memory: &GuestRam, slot: u64, request_type: u32, sector: u64) -> Buffer {
    let mut bytes = [0u8; 16];
    bytes[..4].copy_from_slice(&request_type.to_le_bytes());
    bytes[8..].copy_from_slice(&sector.to_le_bytes());
    memory.write_slice(&bytes, GuestAddress(HEADER + 0x100 * slot)).unwrap();
    Buffer(HEADER + 0x100 * slot, 16, false)
}

/// Interrupts, sent to the test as they come.
struct Signals(Mutex<std::sync::mpsc::Sender<InterruptCause>>);

impl crate::device::Interrupt for Signals {
    fn trigger(&self, cause: InterruptCause) -> io::Result<()> {
        let _ = self.0.lock().unwrap().send(cause);
        Ok(())
    }
}

#[test]
fn an_activated_device_serves_each_queue_on_its_worker_with_the_features_acked() {
    use crate::device::{ActivateContext, VIRTIO_F_VERSION_1};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    let (_dir, path) = patterned_disk();
    let memory = memory();
    let first = MockSplitQueue::create(&memory, GuestAddress(0), 16);
    let second = MockSplitQueue::create(&memory, GuestAddress(0x4000), 16);
    add_chains(&second, &[read_at(&memory, HEADER, 7, DATA, STATUS)], 0);
    // A third queue offered, left unused by the driver.
    let queues = vec![queue_of(&first), queue_of(&second), Queue::new(QUEUE_SIZE).unwrap()];
    let events: Vec<EventFd> = (0..3).map(|_| EventFd::new(EFD_NONBLOCK).unwrap()).collect();
    let notify_second = events[1].try_clone().unwrap();
    let (sender, interrupts) = std::sync::mpsc::channel();
    let options =
        BlockOptions { num_queues: 3, engine: Engine::Async, flush: true, rate_limit: None, poll: None };
    let backend = Arc::new(RawFile::open(&path, false).unwrap());
    let mut block = Block::new(backend, false, [0; ID_BYTES], options).unwrap();
    block
        .activate(ActivateContext {
            memory: memory.clone(),
            queues,
            queue_events: events,
            interrupt: Arc::new(Signals(Mutex::new(sender))),
            acked_features: VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | (1 << 12),
            guest_errors: guest_errors(),
            restored: false,
        })
        .unwrap();
    notify_second.write(1).unwrap();
    let interrupt =
        interrupts.recv_timeout(std::time::Duration::from_secs(10)).expect("no interrupt within 10 s");
    assert_eq!(interrupt, InterruptCause::Queue(1));
    assert_eq!(used_entries(&memory, &second, 16), [(0, 513)]);
    assert!(read_guest(&memory, DATA, 512).iter().all(|&b| b == 7));
    let states = block.worker().unwrap().hold().unwrap();
    assert_eq!(states.len(), 3);
    assert!(states[..2].iter().all(|(_, state)| state.event_idx_enabled), "EVENT_IDX was acked");
    assert_eq!((states[0].1.next_used, states[1].1.next_used), (0, 1));
    block.worker().unwrap().release();
}
