//! The rate limiter on the queues: requests beyond the budget stay on the ring until the
//! limiter's timer fires, flushes and GET_ID cost no bytes, one limiter covers every queue, and
//! the host changes the limit while requests wait.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::in_flight::{header_at, read_at};
use super::*;
use crate::block::BlockControl;
use crate::rate_limiter::{Bucket, RateLimit, RateLimiter};

fn limiter(limit: RateLimit) -> Arc<Mutex<RateLimiter>> {
    Arc::new(Mutex::new(RateLimiter::new(limit).unwrap()))
}

fn ops(size: u64, refill_time: u64) -> RateLimit {
    RateLimit { bandwidth: None, ops: Some(Bucket { size, one_time_burst: 0, refill_time }) }
}

fn bandwidth(size: u64, refill_time: u64) -> RateLimit {
    RateLimit { bandwidth: Some(Bucket { size, one_time_burst: 0, refill_time }), ops: None }
}

/// A handler over the patterned disk at `path`, limited by `limiter`, and its metrics.
fn limited_handler(
    memory: &GuestRam,
    queues: Vec<Queue>,
    path: &std::path::Path,
    mode: Mode,
    limiter: Arc<Mutex<RateLimiter>>,
) -> (BlockHandler<RawFile>, Arc<BlockMetrics>) {
    let metrics = Arc::new(BlockMetrics::default());
    let disk = Arc::new(SharedDisk::new(raw_disk(path, false)));
    let handler = BlockHandler::new(
        memory.clone(),
        queues,
        Arc::new(Recorder::default()),
        guest_errors(),
        metrics.clone(),
        disk,
        limiter,
        mode,
    )
    .unwrap();
    (handler, metrics)
}

/// The host's handle on `limiter` (over a disk of its own: only the limiter matters here).
fn control_of(path: &std::path::Path, limiter: Arc<Mutex<RateLimiter>>) -> BlockControl {
    let backend: Arc<dyn DiskBackend> = Arc::new(RawFile::open(path, false).unwrap());
    BlockControl::new(Arc::new(SharedDisk::new(shared_disk_of(backend, false))), limiter)
}

/// Waits (up to 10 s) for the limiter's timer, the handler's last backend descriptor, and
/// hands the event to the handler as the worker would; then completes what an engine finished.
fn timer_fires<B: DiskBackend + ?Sized>(handler: &mut BlockHandler<B>) {
    let fds = handler.backend_fds();
    let mut poll = libc::pollfd { fd: *fds.last().unwrap(), events: libc::POLLIN, revents: 0 };
    // SAFETY: poll reads and writes the one pollfd, which lives across the call.
    let ready = unsafe { libc::poll(&mut poll, 1, 10_000) };
    assert_eq!(ready, 1, "the limiter's timer did not fire within 10 s");
    handler.process_backend(fds.len() - 1);
    handler.drain();
}

/// Reads of one sector each of sectors `first..first + count`, into their own buffers.
fn reads(memory: &GuestRam, first: u64, count: u64) -> Vec<Vec<Buffer>> {
    (0..count)
        .map(|i| {
            let slot = first + i;
            read_at(memory, HEADER + 0x100 * slot, slot, DATA + 0x1000 * slot, STATUS + 0x100 * slot)
        })
        .collect()
}

#[test]
fn requests_beyond_the_ops_budget_wait_on_the_ring_for_the_timer() {
    let (_dir, path) = patterned_disk();
    let memory = memory();
    let mock = MockSplitQueue::new(&memory, 16);
    add_chains(&mock, &reads(&memory, 0, 4), 0);
    // Two requests at once, then one per 50 ms.
    let (mut handler, metrics) =
        limited_handler(&memory, vec![queue_of(&mock)], &path, ON_THE_SPOT, limiter(ops(2, 100)));
    let start = Instant::now();
    handler.process_queue(0);
    assert_eq!(used_entries(&memory, &mock, 16).len(), 2, "the bucket's two requests");
    assert_eq!(metrics.rate_limiter_throttled_events.take(), 1);
    // A notification meanwhile serves nothing: the queue waits for the timer.
    handler.process_queue(0);
    assert_eq!(used_entries(&memory, &mock, 16).len(), 2);
    assert_eq!(metrics.rate_limiter_throttled_events.take(), 0);

    let mut rounds = 0;
    while used_entries(&memory, &mock, 16).len() < 4 {
        rounds += 1;
        assert!(rounds <= 4, "the requests on the ring are not served");
        timer_fires(&mut handler);
    }
    // Two more ops take at least 100 ms to come back, whatever the host's speed.
    assert!(start.elapsed() >= Duration::from_millis(100), "{:?}", start.elapsed());
    let heads: Vec<u32> = used_entries(&memory, &mock, 16).iter().map(|e| e.0).collect();
    assert_eq!(heads, [0, 3, 6, 9], "in order, each once");
    for slot in 0..4u64 {
        assert_eq!(memory.read_obj::<u8>(GuestAddress(STATUS + 0x100 * slot)).unwrap(), VIRTIO_BLK_S_OK);
        assert!(read_guest(&memory, DATA + 0x1000 * slot, 512).iter().all(|&b| b == slot as u8));
    }
}

#[test]
fn bandwidth_is_counted_in_data_bytes_and_flushes_and_get_id_cost_none() {
    let (_dir, path) = patterned_disk();
    let memory = memory();
    let mock = MockSplitQueue::new(&memory, 16);
    let get_id = vec![
        header_at(&memory, 1, VIRTIO_BLK_T_GET_ID, 0),
        Buffer(DATA + 0x1000, ID_BYTES as u32, true),
        Buffer(STATUS + 0x100, 1, true),
    ];
    let flush = |slot: u64| {
        vec![header_at(&memory, slot, VIRTIO_BLK_T_FLUSH, 0), Buffer(STATUS + 0x100 * slot, 1, true)]
    };
    // Two sectors read: the whole bucket.
    let read = vec![
        header_at(&memory, 2, VIRTIO_BLK_T_IN, 4),
        Buffer(DATA + 0x2000, 1024, true),
        Buffer(STATUS + 0x200, 1, true),
    ];
    let mut chains = vec![flush(0), get_id, read, flush(3)];
    chains.extend(reads(&memory, 4, 1));
    add_chains(&mock, &chains, 0);
    // 1 KiB per 10 s: nothing comes back within the test.
    let limiter = limiter(bandwidth(1024, 10_000));
    let (mut handler, metrics) =
        limited_handler(&memory, vec![queue_of(&mock)], &path, DEFERRED, limiter.clone());
    handler.process_queue(0);
    handler.drain();
    assert_eq!(used_entries(&memory, &mock, 16).len(), 4, "only the last read is over the budget");
    assert_eq!(metrics.rate_limiter_throttled_events.take(), 1);

    // Removing the limit serves it at once, not in 10 s.
    let control = control_of(&path, limiter);
    control.update_rate_limiter(None).unwrap();
    assert_eq!(control.rate_limit(), RateLimit::default());
    timer_fires(&mut handler);
    assert_eq!(used_entries(&memory, &mock, 16).len(), 5);
    assert!(read_guest(&memory, DATA + 0x4000, 512).iter().all(|&b| b == 4));
}

#[test]
fn a_limit_set_while_the_guest_runs_applies_to_the_next_requests() {
    let (_dir, path) = patterned_disk();
    let memory = memory();
    let mock = MockSplitQueue::new(&memory, 16);
    add_chains(&mock, &reads(&memory, 0, 3), 0);
    let limiter = limiter(RateLimit::default());
    let control = control_of(&path, limiter.clone());
    let (mut handler, metrics) = limited_handler(&memory, vec![queue_of(&mock)], &path, ON_THE_SPOT, limiter);
    // One request per 10 s from now on.
    control.update_rate_limiter(Some(ops(1, 10_000))).unwrap();
    assert_eq!(control.rate_limit(), ops(1, 10_000));
    handler.process_queue(0);
    assert_eq!(used_entries(&memory, &mock, 16).len(), 1);
    assert_eq!(metrics.rate_limiter_throttled_events.take(), 1);
    // A new limit starts with a full bucket, and the waiting queue looks at it at once.
    control.update_rate_limiter(Some(ops(1, 10_000))).unwrap();
    timer_fires(&mut handler);
    assert_eq!(used_entries(&memory, &mock, 16).len(), 2);
    control.update_rate_limiter(None).unwrap();
    timer_fires(&mut handler);
    assert_eq!(used_entries(&memory, &mock, 16).len(), 3);
}

#[test]
fn a_request_larger_than_the_bucket_completes_and_the_next_one_waits_for_the_debt() {
    let (_dir, path) = patterned_disk();
    let memory = memory();
    let mock = MockSplitQueue::new(&memory, 16);
    // 8 KiB against a 512-byte bucket refilled every 5 ms: 75 ms of debt after it.
    let large =
        vec![header_at(&memory, 0, VIRTIO_BLK_T_IN, 0), Buffer(DATA, 8192, true), Buffer(STATUS, 1, true)];
    let mut chains = vec![large];
    chains.extend(reads(&memory, 1, 1));
    add_chains(&mock, &chains, 0);
    let (mut handler, _) =
        limited_handler(&memory, vec![queue_of(&mock)], &path, ON_THE_SPOT, limiter(bandwidth(512, 5)));
    let start = Instant::now();
    handler.process_queue(0);
    assert_eq!(used_entries(&memory, &mock, 16), [(0, 8193)], "the large request passes on a full bucket");
    while used_entries(&memory, &mock, 16).len() < 2 {
        assert!(start.elapsed() < Duration::from_secs(10));
        timer_fires(&mut handler);
    }
    assert!(start.elapsed() >= Duration::from_millis(75), "{:?}", start.elapsed());
}

#[test]
fn one_limiter_covers_every_queue() {
    let (_dir, path) = patterned_disk();
    let memory = memory();
    let first = MockSplitQueue::create(&memory, GuestAddress(0), 16);
    let second = MockSplitQueue::create(&memory, GuestAddress(0x4000), 16);
    add_chains(&first, &reads(&memory, 0, 2), 0);
    add_chains(&second, &reads(&memory, 2, 2), 0);
    let queues = vec![queue_of(&first), queue_of(&second)];
    let (mut handler, metrics) = limited_handler(&memory, queues, &path, DEFERRED, limiter(ops(2, 40)));
    assert_eq!(handler.backend_fds().len(), 3, "an engine per queue and the limiter's timer");
    handler.process_queue(0);
    handler.drain();
    assert_eq!(used_entries(&memory, &first, 16).len(), 2);
    handler.process_queue(1);
    handler.drain();
    assert_eq!(used_entries(&memory, &second, 16), [], "the first queue spent the budget");
    assert_eq!(metrics.rate_limiter_throttled_events.take(), 1);
    let start = Instant::now();
    while used_entries(&memory, &second, 16).len() < 2 {
        assert!(start.elapsed() < Duration::from_secs(10));
        timer_fires(&mut handler);
    }
    assert!(read_guest(&memory, DATA + 0x3000, 512).iter().all(|&b| b == 3));
}

#[test]
fn throttled_queues_take_turns_at_the_budget_that_comes_back() {
    let (_dir, path) = patterned_disk();
    let memory = memory();
    let first = MockSplitQueue::create(&memory, GuestAddress(0), 16);
    let second = MockSplitQueue::create(&memory, GuestAddress(0x4000), 16);
    add_chains(&first, &reads(&memory, 0, 4), 0);
    add_chains(&second, &reads(&memory, 4, 4), 0);
    let queues = vec![queue_of(&first), queue_of(&second)];
    // One request at a time, one per 20 ms: each timer lets exactly one through.
    let (mut handler, _) = limited_handler(&memory, queues, &path, ON_THE_SPOT, limiter(ops(1, 20)));
    handler.process_queue(0);
    handler.process_queue(1);
    let done = |mock| used_entries(&memory, mock, 16).len();
    assert_eq!((done(&first), done(&second)), (1, 0));
    for _ in 0..50 {
        if done(&first) + done(&second) == 8 {
            return;
        }
        timer_fires(&mut handler);
        // Served in a fixed order, the first queue would take every request before the second.
        assert!(done(&first) <= done(&second) + 2, "{} against {}", done(&first), done(&second));
    }
    panic!("not every request was served: {} and {}", done(&first), done(&second));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever chain a guest makes up, the size the limiter charges is at most the chain's data.
    #[test]
    fn a_made_up_chain_is_charged_at_most_its_buffers(
        request_type in prop_oneof![Just(VIRTIO_BLK_T_IN), Just(VIRTIO_BLK_T_OUT), any::<u32>()],
        buffers in prop::collection::vec((0u32..5000, any::<bool>()), 1..6),
    ) {
        let memory = memory();
        let mock = MockSplitQueue::new(&memory, 16);
        let mut chain = vec![header_at(&memory, 0, request_type, 0)];
        let mut at = DATA;
        for &(len, writable) in &buffers {
            chain.push(Buffer(at, len, writable));
            at += 0x2000;
        }
        add_chains(&mock, &[chain], 0);
        let mut queue = queue_of(&mock);
        let chain = queue.pop_descriptor_chain(&memory).unwrap();
        let total: u64 = buffers.iter().map(|&(len, _)| u64::from(len)).sum();
        prop_assert!(data_bytes(&memory, &chain) <= total);
    }
}
