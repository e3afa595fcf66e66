//! The balloon's queues, served on the device's worker thread: pages the guest gives up
//! (inflate, free-page reports) are discarded from the host, pages it takes back (deflate) need
//! nothing, and its statistics are kept for the host.

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use crate::GuestRam;
use virtio_queue::{DescriptorChain, Queue, QueueState, QueueT};
use vmm_sys_util::timerfd::TimerFd;

use super::control::Shared;
use super::pages::{coalesce, discard, Discarded, GuestRange};
use super::stats::{BalloonStats, STAT_BYTES};
use crate::device::{GuestErrorLog, Interrupt};
use crate::metrics::BalloonMetrics;
use crate::worker::{self, QueueHandler};

/// The device's name in messages.
const NAME: &str = "virtio-balloon";

/// PFNs read, sorted and coalesced at a time: Linux sends at most 256 per buffer, and a guest
/// that sends more is served in bounded steps.
const PFN_BATCH: usize = 1024;

/// The most statistics read from one buffer (there are 16 tags today; later specifications add a
/// few). The rest of a larger buffer is ignored.
const MAX_STATS: usize = 64;

/// What a queue is for. The driver numbers only the queues of negotiated features, so the
/// transport index of each depends on them (see `device::queue_roles`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueRole {
    Inflate,
    Deflate,
    Stats,
    Reporting,
}

pub struct BalloonHandler {
    memory: GuestRam,
    interrupt: Arc<dyn Interrupt>,
    guest_errors: Arc<GuestErrorLog>,
    metrics: Arc<BalloonMetrics>,
    shared: Arc<Shared>,
    /// Indexed by the transport's queue index.
    queues: Vec<(QueueRole, Queue)>,
    /// The stats buffer the driver handed over, kept until the host wants fresh figures: giving it
    /// back is how the device asks for them (virtio 1.2, 5.5.6.3).
    held_stats: Option<u16>,
    /// Fires every stats interval, when the stats queue is in use.
    stats_timer: Option<TimerFd>,
}

impl BalloonHandler {
    pub fn new(
        memory: GuestRam,
        interrupt: Arc<dyn Interrupt>,
        guest_errors: Arc<GuestErrorLog>,
        metrics: Arc<BalloonMetrics>,
        shared: Arc<Shared>,
        queues: Vec<(QueueRole, Queue)>,
        stats_timer: Option<TimerFd>,
    ) -> BalloonHandler {
        BalloonHandler {
            memory,
            interrupt,
            guest_errors,
            metrics,
            shared,
            queues,
            held_stats: None,
            stats_timer,
        }
    }

    /// Serves every available buffer of queue `index`, then interrupts the driver once if it
    /// wants to know.
    fn serve(&mut self, index: usize) {
        let Some(&(role, _)) = self.queues.get(index) else {
            tracing::debug!("virtio-balloon: notification for unused queue {index}");
            return;
        };
        let mut used_any = false;
        while let Some(chain) = self.queues[index].1.pop_descriptor_chain(&self.memory) {
            let head = chain.head_index();
            let done = match role {
                QueueRole::Inflate => {
                    self.metrics.inflate_count.inc();
                    inflate(&self.memory, &self.guest_errors, chain);
                    Some(head)
                }
                QueueRole::Deflate => {
                    self.metrics.deflate_count.inc();
                    // Nothing to do: the host never took the pages away, it only stopped backing
                    // them, and the guest's next access faults in a zeroed page.
                    Some(head)
                }
                QueueRole::Reporting => {
                    self.metrics.free_page_report_count.inc();
                    discard_reported(&self.memory, &self.guest_errors, &self.metrics, chain);
                    Some(head)
                }
                QueueRole::Stats => {
                    self.metrics.stats_updates_count.inc();
                    let stats = read_stats(&self.memory, &self.guest_errors, chain).unwrap_or_else(|| {
                        self.metrics.stats_update_fails.inc();
                        BalloonStats::default()
                    });
                    self.shared.set_stats(stats);
                    // A driver that sends a second buffer before the first came back gets the
                    // older one back now, so neither is lost.
                    self.held_stats.replace(head)
                }
            };
            if let Some(done) = done {
                used_any |= self.complete(index, done);
            }
        }
        if used_any {
            self.notify(index);
        }
    }

    /// Returns the held stats buffer, which asks the driver for fresh statistics.
    fn request_stats(&mut self) {
        let Some(index) = self.queues.iter().position(|(role, _)| *role == QueueRole::Stats) else {
            return;
        };
        if let Some(head) = self.held_stats.take() {
            if self.complete(index, head) {
                self.notify(index);
            }
        }
    }

    /// Puts a buffer on the used ring; the device writes nothing into balloon buffers.
    fn complete(&mut self, index: usize, head: u16) -> bool {
        worker::complete(NAME, &mut self.queues[index].1, &self.memory, head, 0)
    }

    fn notify(&mut self, index: usize) {
        worker::signal_used(NAME, &mut self.queues[index].1, &self.memory, self.interrupt.as_ref(), index);
    }
}

/// Discards the pages whose PFNs (le32 each) fill the buffer.
fn inflate(memory: &GuestRam, guest_errors: &GuestErrorLog, chain: DescriptorChain<&GuestRam>) {
    let mut reader = match chain.reader(memory) {
        Ok(reader) => reader,
        Err(e) => return guest_errors.log(format_args!("malformed inflate buffer ignored: {e:?}")),
    };
    let trailing = reader.available_bytes() % 4;
    if trailing != 0 {
        guest_errors.log(format_args!("inflate buffer ends with {trailing} bytes that are no PFN; ignored"));
    }
    let mut pfns = Vec::with_capacity(PFN_BATCH);
    let mut outside = 0;
    while reader.available_bytes() >= 4 {
        pfns.clear();
        while pfns.len() < PFN_BATCH && reader.available_bytes() >= 4 {
            match reader.read_obj::<u32>() {
                Ok(pfn) => pfns.push(u32::from_le(pfn)),
                Err(e) => {
                    guest_errors.log(format_args!("cannot read an inflate buffer: {e}"));
                    return;
                }
            }
        }
        for range in coalesce(&mut pfns) {
            outside += discard_range(memory, guest_errors, range).map_or(0, |d| d.outside);
        }
    }
    warn_outside(guest_errors, outside, "inflated");
}

/// Discards the whole pages inside each descriptor of a free-page report.
fn discard_reported(
    memory: &GuestRam,
    guest_errors: &GuestErrorLog,
    metrics: &BalloonMetrics,
    chain: DescriptorChain<&GuestRam>,
) {
    let mut outside = 0;
    for descriptor in chain {
        if let Some(range) = GuestRange::whole_pages_within(descriptor.addr().0, u64::from(descriptor.len()))
        {
            match discard_range(memory, guest_errors, range) {
                Some(Discarded { outside: bytes_outside, freed }) => {
                    outside += bytes_outside;
                    metrics.free_page_report_freed.add(freed);
                }
                None => metrics.free_page_report_fails.inc(),
            }
        }
    }
    warn_outside(guest_errors, outside, "reported free");
}

/// Discards `range`; returns what it freed and what of it lies outside guest RAM, or `None`
/// (logged) if the host refused. The guest chooses the ranges and how often, so the line goes
/// through its limiter.
fn discard_range(memory: &GuestRam, guest_errors: &GuestErrorLog, range: GuestRange) -> Option<Discarded> {
    discard(memory, range)
        .map_err(|e| {
            guest_errors
                .log(format_args!("cannot discard guest memory {:#x}..{:#x}: {e}", range.start, range.end))
        })
        .ok()
}

fn warn_outside(guest_errors: &GuestErrorLog, bytes: u64, what: &str) {
    if bytes > 0 {
        guest_errors.log(format_args!("the guest {what} {bytes} bytes outside its RAM; ignored"));
    }
}

/// The statistics in a stats buffer, or `None` (logged) for a buffer that cannot be read.
fn read_stats(
    memory: &GuestRam,
    guest_errors: &GuestErrorLog,
    chain: DescriptorChain<&GuestRam>,
) -> Option<BalloonStats> {
    let mut bytes = Vec::new();
    let read = chain.reader(memory).map_err(|e| format!("{e:?}")).and_then(|reader| {
        reader.take((MAX_STATS * STAT_BYTES) as u64).read_to_end(&mut bytes).map_err(|e| e.to_string())
    });
    match read {
        Ok(_) => Some(BalloonStats::parse(&bytes)),
        Err(e) => {
            guest_errors.log(format_args!("malformed stats buffer: {e}"));
            None
        }
    }
}

/// Backend descriptors, when the stats queue is in use.
const BACKEND_STATS_TIMER: usize = 0;
const BACKEND_INTERVAL_CHANGED: usize = 1;

impl QueueHandler for BalloonHandler {
    fn queue_states(&self) -> Vec<(usize, QueueState)> {
        let state = |role: &QueueRole, queue: &Queue| {
            let mut state = queue.state();
            if *role == QueueRole::Stats && self.held_stats.is_some() {
                // The held stats buffer is the last one taken and is not used yet: a restored
                // device takes it again (else the driver, waiting for it, never reports again).
                state.next_avail = state.next_avail.wrapping_sub(1);
            }
            state
        };
        self.queues.iter().enumerate().map(|(index, (role, queue))| (index, state(role, queue))).collect()
    }

    fn process_queue(&mut self, index: usize) {
        self.serve(index);
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        match &self.stats_timer {
            Some(timer) => vec![timer.as_raw_fd(), self.shared.stats_interval_changed().as_raw_fd()],
            None => Vec::new(),
        }
    }

    /// The stats timer fired, or the host changed the interval: either way the guest is asked for
    /// fresh statistics now.
    fn process_backend(&mut self, index: usize) {
        let Some(timer) = &mut self.stats_timer else { return };
        let result = match index {
            // Readable, so this does not block; it clears the expiry count.
            BACKEND_STATS_TIMER => timer.wait().map(drop),
            BACKEND_INTERVAL_CHANGED => {
                let _ = self.shared.stats_interval_changed().read();
                match self.shared.stats_interval() {
                    Some(interval) => timer.reset(interval, Some(interval)),
                    None => Ok(()),
                }
            }
            _ => return,
        };
        if let Err(e) = result {
            tracing::error!("virtio-balloon: cannot run the stats timer: {e}");
        }
        self.request_stats();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    use super::*;
    use crate::balloon::pages::tests::{resident_pages, touch};
    use crate::balloon::pages::PAGE_SIZE;
    use crate::balloon::stats::tests::encode;
    use crate::device::testing::{descriptor, guest_errors, Recorder};
    use crate::device::InterruptCause;

    const WRITE: u16 = 2; // VRING_DESC_F_WRITE
    const NEXT: u16 = 1; // VRING_DESC_F_NEXT
    /// Guest RAM in the tests; rings sit in the first 64 KiB, buffers above, pages from 1 MiB.
    const RAM: u64 = 0x40_0000;
    const ROLES: [QueueRole; 4] =
        [QueueRole::Inflate, QueueRole::Deflate, QueueRole::Stats, QueueRole::Reporting];

    /// A balloon with all four queues (each a mock ring in guest memory) and the driver's side.
    struct Bench<'a> {
        memory: &'a GuestRam,
        mocks: Vec<MockSplitQueue<'a, GuestRam>>,
        /// Descriptors used so far in each queue, where the next chain goes.
        next_descriptor: Vec<u16>,
        interrupts: Arc<Recorder>,
        shared: Arc<Shared>,
        metrics: Arc<BalloonMetrics>,
        handler: BalloonHandler,
    }

    impl<'a> Bench<'a> {
        fn new(memory: &'a GuestRam) -> Bench<'a> {
            let mocks: Vec<_> =
                (0..4).map(|i| MockSplitQueue::create(memory, GuestAddress(i * 0x1000), 16)).collect();
            let queues =
                ROLES.iter().zip(&mocks).map(|(&role, mock)| (role, mock.create_queue().unwrap())).collect();
            let interrupts = Arc::new(Recorder::default());
            let shared = Arc::new(Shared::new(0, RAM, Some(Duration::from_secs(3600))).unwrap());
            let metrics = Arc::new(BalloonMetrics::default());
            let handler = BalloonHandler::new(
                memory.clone(),
                interrupts.clone(),
                guest_errors(),
                metrics.clone(),
                shared.clone(),
                queues,
                None,
            );
            Bench { memory, mocks, next_descriptor: vec![0; 4], interrupts, shared, metrics, handler }
        }

        /// The driver makes one buffer available on `queue` and notifies it.
        fn send(&mut self, queue: usize, chain: &[RawDescriptor]) {
            // Chains link by absolute index: rebase the `next` fields onto where this one goes.
            let offset = self.next_descriptor[queue];
            let chain: Vec<_> = chain
                .iter()
                .map(|d| {
                    let d = Descriptor::from(*d);
                    descriptor(d.addr().0, d.len(), d.flags(), d.next() + offset)
                })
                .collect();
            self.mocks[queue].add_desc_chains(&chain, offset).unwrap();
            self.next_descriptor[queue] += chain.len() as u16;
            self.handler.process_queue(queue);
        }

        /// Sends the PFNs as one readable buffer at `addr`.
        fn send_pfns(&mut self, queue: usize, addr: u64, pfns: &[u32]) {
            let bytes: Vec<u8> = pfns.iter().flat_map(|pfn| pfn.to_le_bytes()).collect();
            self.memory.write_slice(&bytes, GuestAddress(addr)).unwrap();
            self.send(queue, &[descriptor(addr, bytes.len() as u32, 0, 0)]);
        }

        /// How many buffers of `queue` the device has used.
        fn used(&self, queue: usize) -> u16 {
            self.memory.read_obj(self.mocks[queue].used_addr().unchecked_add(2)).unwrap()
        }

        fn interrupts(&self) -> Vec<InterruptCause> {
            std::mem::take(&mut *self.interrupts.0.lock().unwrap())
        }
    }

    fn memory() -> GuestRam {
        GuestRam::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap()
    }

    fn pages(first: u32, count: u64) -> GuestRange {
        GuestRange::from_pfns(first, count)
    }

    #[test]
    fn inflating_frees_the_host_pages_behind_the_pfns() {
        let memory = memory();
        let mut bench = Bench::new(&memory);
        let balloon = pages(0x100, 256); // 1 MiB at 1 MiB
        let kept = pages(0x200, 16);
        touch(&memory, balloon);
        touch(&memory, kept);

        // Out of order, with a repeat, as a driver may send them.
        let mut pfns: Vec<u32> = (0x100..0x200).rev().collect();
        pfns.push(0x180);
        bench.send_pfns(0, 0x1_0000, &pfns);
        assert_eq!(bench.used(0), 1);
        assert_eq!(bench.interrupts(), [InterruptCause::Queue(0)]);
        assert_eq!(resident_pages(&memory, balloon), 0, "host pages freed");
        assert_eq!(resident_pages(&memory, kept), 16, "other pages untouched");
        for page in (balloon.start..balloon.end).step_by(PAGE_SIZE as usize) {
            assert_eq!(memory.read_obj::<u8>(GuestAddress(page)).unwrap(), 0, "page {page:#x} reads as zero");
        }
        assert_eq!(memory.read_obj::<u8>(GuestAddress(kept.start)).unwrap(), 0xA5);
    }

    #[test]
    fn a_pfn_array_may_straddle_descriptors() {
        let memory = memory();
        let mut bench = Bench::new(&memory);
        touch(&memory, pages(0x100, 2));
        // PFN 0x100 whole in the first descriptor, PFN 0x101 split 2 + 2 bytes across both.
        memory.write_slice(&[0x00, 0x01, 0, 0, 0x01, 0x01], GuestAddress(0x1_0000)).unwrap();
        memory.write_slice(&[0, 0], GuestAddress(0x1_1000)).unwrap();
        bench.send(0, &[descriptor(0x1_0000, 6, NEXT, 1), descriptor(0x1_1000, 2, 0, 0)]);
        assert_eq!(bench.used(0), 1);
        assert_eq!(resident_pages(&memory, pages(0x100, 2)), 0);
    }

    #[test]
    fn pfns_outside_guest_ram_and_odd_lengths_are_ignored() {
        let memory = memory();
        let mut bench = Bench::new(&memory);
        let inside = pages(0x100, 1);
        touch(&memory, inside);
        let ram_pages = (RAM / PAGE_SIZE) as u32;
        bench.send_pfns(0, 0x1_0000, &[ram_pages - 1, ram_pages, ram_pages + 1, u32::MAX, 0x100]);
        assert_eq!(resident_pages(&memory, inside), 0, "the PFN inside RAM is still served");
        // One PFN and a stray byte; a buffer the device may only write; a buffer outside RAM.
        memory.write_slice(&[0x00, 0x01, 0, 0, 0xff], GuestAddress(0x1_0000)).unwrap();
        bench.send(0, &[descriptor(0x1_0000, 5, 0, 0)]);
        bench.send(0, &[descriptor(0x1_0000, 8, WRITE, 0)]);
        bench.send(0, &[descriptor(RAM + 0x1000, 8, 0, 0)]);
        assert_eq!(bench.used(0), 4, "every buffer comes back");
    }

    #[test]
    fn deflating_returns_the_buffer_and_leaves_memory_alone() {
        let memory = memory();
        let mut bench = Bench::new(&memory);
        let range = pages(0x100, 4);
        touch(&memory, range);
        bench.send_pfns(1, 0x1_0000, &[0x100, 0x101, 0x102, 0x103]);
        assert_eq!(bench.used(1), 1);
        assert_eq!(bench.interrupts(), [InterruptCause::Queue(1)]);
        assert_eq!(resident_pages(&memory, range), 4);
    }

    #[test]
    fn the_stats_buffer_is_kept_until_the_host_asks_for_fresh_figures() {
        let memory = memory();
        let mut bench = Bench::new(&memory);
        let first = encode(&[(4, 100 << 20), (5, 256 << 20)]);
        memory.write_slice(&first, GuestAddress(0x2_0000)).unwrap();
        bench.send(2, &[descriptor(0x2_0000, first.len() as u32, 0, 0)]);
        assert_eq!(bench.used(2), 0, "the device holds the buffer");
        assert!(bench.interrupts().is_empty());
        let stats = bench.shared_stats();
        assert_eq!((stats.free_memory, stats.total_memory), (Some(100 << 20), Some(256 << 20)));

        bench.handler.request_stats();
        assert_eq!(bench.used(2), 1, "giving the buffer back asks for new figures");
        assert_eq!(bench.interrupts(), [InterruptCause::Queue(2)]);
        bench.handler.request_stats();
        assert_eq!(bench.used(2), 1, "nothing held, nothing to give back");

        let second = encode(&[(4, 50 << 20)]);
        memory.write_slice(&second, GuestAddress(0x2_0000)).unwrap();
        bench.send(2, &[descriptor(0x2_0000, second.len() as u32, 0, 0)]);
        let stats = bench.shared_stats();
        assert_eq!((stats.free_memory, stats.total_memory), (Some(50 << 20), None));

        // A second buffer while one is held: the older one comes back.
        bench.send(2, &[descriptor(0x2_0000, second.len() as u32, 0, 0)]);
        assert_eq!(bench.used(2), 2);
    }

    #[test]
    fn a_malformed_stats_buffer_reports_nothing() {
        let memory = memory();
        let mut bench = Bench::new(&memory);
        bench.send(2, &[descriptor(RAM - 4, 20, 0, 0)]);
        assert_eq!(bench.shared_stats(), BalloonStats::default());
        let counts = bench.metrics.take();
        assert_eq!((counts.get("stats_updates_count"), counts.get("stats_update_fails")), (Some(1), Some(1)));
    }

    #[test]
    fn the_stats_timer_asks_for_fresh_figures() {
        let memory = memory();
        let mut bench = Bench::new(&memory);
        let mut timer = TimerFd::new().unwrap();
        timer.reset(Duration::from_millis(1), None).unwrap();
        bench.handler.stats_timer = Some(timer);
        let fds = bench.handler.backend_fds();
        assert_eq!(fds.len(), 2);
        bench.send(2, &[descriptor(0x2_0000, 10, 0, 0)]);

        // Wait (bounded) for the timer, as the worker's epoll does.
        let mut poll = libc::pollfd { fd: fds[0], events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, and its count.
        assert_eq!(unsafe { libc::poll(&mut poll, 1, 10_000) }, 1, "the timer fires");
        bench.handler.process_backend(0);
        assert_eq!(bench.used(2), 1);
    }

    #[test]
    fn a_new_interval_asks_for_fresh_figures_at_once_and_rearms_the_timer() {
        let memory = memory();
        let mut bench = Bench::new(&memory);
        let mut timer = TimerFd::new().unwrap();
        timer.reset(Duration::from_secs(3600), Some(Duration::from_secs(3600))).unwrap();
        bench.handler.stats_timer = Some(timer);
        let fds = bench.handler.backend_fds();
        assert_eq!(fds.len(), 2, "the timer and the interval change");
        bench.send(2, &[descriptor(0x2_0000, 10, 0, 0)]);
        assert_eq!(bench.used(2), 0);

        let control = crate::balloon::control::BalloonControl::new(bench.shared.clone());
        control.set_stats_interval(1).unwrap();
        let mut poll = libc::pollfd { fd: fds[1], events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, and its count.
        assert_eq!(unsafe { libc::poll(&mut poll, 1, 0) }, 1, "the change is signalled");
        bench.handler.process_backend(1);
        assert_eq!(bench.used(2), 1, "the held buffer went back at once");
        assert_eq!(bench.interrupts(), [InterruptCause::Queue(2)]);
        // SAFETY: itimerspec is plain data, filled in by timerfd_gettime.
        let mut setting: libc::itimerspec = unsafe { std::mem::zeroed() };
        // SAFETY: a valid timerfd and a valid itimerspec to fill.
        assert_eq!(unsafe { libc::timerfd_gettime(fds[0], &mut setting) }, 0);
        assert_eq!((setting.it_interval.tv_sec, setting.it_interval.tv_nsec), (1, 0), "the new period");
        assert!(setting.it_value.tv_sec < 1, "next expiry within the new interval");
    }

    #[test]
    fn reported_free_pages_are_discarded() {
        let memory = memory();
        let mut bench = Bench::new(&memory);
        let first = pages(0x100, 16);
        let second = pages(0x200, 16);
        let kept = pages(0x1ff, 1);
        touch(&memory, pages(0x100, 0x120));
        // Linux reports writable descriptors, one per free block; the second one here is
        // misaligned by a byte at each end, so only its 14 whole pages go.
        bench.send(
            3,
            &[
                descriptor(first.start, first.len() as u32, WRITE | NEXT, 1),
                descriptor(second.start + 1, second.len() as u32 - 2, WRITE | NEXT, 2),
                descriptor(RAM, 0x10_0000, WRITE, 0),
            ],
        );
        assert_eq!(bench.used(3), 1);
        assert_eq!(bench.interrupts(), [InterruptCause::Queue(3)]);
        assert_eq!(resident_pages(&memory, first), 0);
        assert_eq!(resident_pages(&memory, second), 2, "its partial first and last pages stay");
        assert_eq!(resident_pages(&memory, pages(0x201, 14)), 0);
        assert_eq!(resident_pages(&memory, kept), 1);
        let counts = bench.metrics.take();
        assert_eq!(counts.get("free_page_report_count"), Some(1));
        assert_eq!(counts.get("free_page_report_freed"), Some(30 * PAGE_SIZE), "whole pages inside RAM");
    }

    #[test]
    fn a_notification_for_an_unused_queue_is_ignored() {
        let memory = memory();
        let mut bench = Bench::new(&memory);
        bench.handler.process_queue(4);
        bench.handler.process_queue(usize::MAX);
        assert!(bench.interrupts().is_empty());
    }

    impl Bench<'_> {
        fn shared_stats(&self) -> BalloonStats {
            crate::balloon::control::BalloonControl::new(self.shared.clone()).stats()
        }
    }
}
