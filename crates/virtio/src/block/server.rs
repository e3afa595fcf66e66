//! Serving the device's queues on its worker thread: taking requests off each queue, carrying
//! them out on the spot (the synchronous mode) or through the queue's [`IoEngine`] with many in
//! flight, and completing them on the used ring.
//!
//! Every queue is served by the device's one worker thread: its queue notifications and its
//! engine's completion eventfd (a backend descriptor of the worker) wake it. One thread keeps
//! the worker's model (a snapshot holds one thread, which drains and hands over every queue);
//! the disk work itself runs in the kernel (io_uring) or the engine's threads, so the worker only
//! parses and completes.
//!
//! With a poll window (`BlockOptions::poll`, see `poll.rs`) the worker does not turn the guest's
//! notifications back on when it has served a queue: it keeps looking at every ring (and engine)
//! for the window, serving what it finds without being woken, and only then turns them on, looks
//! once more and sleeps. The worker's loop glances at its descriptors between two looks, so stop,
//! hold, the limiter's timer and the other queues are not held up by the polling.
//!
//! The device's one [`RateLimiter`] (shared by every queue) is asked before each request is taken:
//! when it has no budget left the request stays on the ring, the queue is "throttled" and served
//! no more until the limiter's timer (another backend descriptor) fires.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use storage::engine::{Completion, EngineKind, IoEngine};
use storage::DiskBackend;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueState, QueueT};
use vm_memory::GuestAddress;

use super::control::{lock, SharedDisk};
use super::handler::{data_bytes, finish, serve, Done, Mode, Served};
use super::poll::AdaptivePoll;
use crate::device::{GuestErrorLog, Interrupt};
use crate::metrics::BlockMetrics;
use crate::rate_limiter::RateLimiter;
use crate::worker::{complete, signal_used, QueueHandler};
use crate::GuestRam;

/// What every queue's serving shares.
struct Context<B: ?Sized> {
    memory: GuestRam,
    interrupt: Arc<dyn Interrupt>,
    guest_errors: Arc<GuestErrorLog>,
    metrics: Arc<BlockMetrics>,
    disk: Arc<SharedDisk<B>>,
    /// The device's limiter: the host changes it while the worker asks it.
    limiter: Arc<Mutex<RateLimiter>>,
    mode: Mode,
}

impl<B: ?Sized> Context<B> {
    /// Whether the rate limiter lets `chain` through now (taking its budget if so).
    fn admit(&self, chain: &DescriptorChain<&GuestRam>) -> bool {
        let mut limiter = lock(&self.limiter);
        // Unlimited disks skip the parse for the request's size.
        !limiter.is_limiting() || limiter.consume(data_bytes(&self.memory, chain))
    }
}

/// A request an engine is carrying out.
struct InFlight<B: ?Sized> {
    head: u16,
    status: GuestAddress,
    done: Done,
    /// The disk it started on: it finishes there even if the disk is replaced meanwhile, and a
    /// snapshot flushes it.
    backend: Arc<B>,
}

/// One queue, its engine (None in the synchronous mode and for queues the driver left unused),
/// and its requests in flight, by the token their engine knows them by.
struct QueueServer<B: DiskBackend + ?Sized> {
    queue: Queue,
    engine: Option<IoEngine<B>>,
    in_flight: Vec<Option<InFlight<B>>>,
    free: Vec<usize>,
    /// Requests wait on the ring because the engine was full: look again when some complete
    /// (the driver is not asked to notify meanwhile).
    stalled: bool,
    /// The rate limiter refused the request at the head of the ring: the queue is served again
    /// when the limiter's timer fires (notifications stay off meanwhile).
    throttled: bool,
}

impl<B: DiskBackend + ?Sized> QueueServer<B> {
    fn insert(&mut self, request: InFlight<B>) -> usize {
        match self.free.pop() {
            Some(token) => {
                self.in_flight[token] = Some(request);
                token
            }
            None => {
                self.in_flight.push(Some(request));
                self.in_flight.len() - 1
            }
        }
    }

    fn remove(&mut self, token: u64) -> Option<InFlight<B>> {
        let request = self.in_flight.get_mut(usize::try_from(token).ok()?)?.take()?;
        self.free.push(token as usize);
        Some(request)
    }
}

/// The block device's queues and what it needs to serve them.
pub struct BlockHandler<B: DiskBackend + ?Sized> {
    // Before `context`: dropping a queue's engine waits for its operations, which use the guest
    // memory the context holds.
    queues: Vec<QueueServer<B>>,
    context: Context<B>,
    /// The queue of each backend descriptor (engine eventfd) the worker waits on.
    engine_queues: Vec<usize>,
    /// The queue served first when the limiter's timer fires, turn by turn: the first takes the
    /// budget that came back, so a fixed order would starve the last queues of a busy device.
    first_throttled: usize,
    /// How long the worker polls the rings once out of work (never unless given a maximum).
    poll: AdaptivePoll,
}

impl<B: DiskBackend + ?Sized> BlockHandler<B> {
    /// A handler for `queues` (by transport index; those not ready stay unserved). With
    /// `mode.defer`, every ready queue gets an [`IoEngine`] of its size (io_uring where the
    /// kernel allows, else a thread pool) and reads, writes and flushes run in it.
    // Each is a separate thing the device hands its worker; a struct of them would only repeat
    // this list.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        memory: GuestRam,
        queues: Vec<Queue>,
        interrupt: Arc<dyn Interrupt>,
        guest_errors: Arc<GuestErrorLog>,
        metrics: Arc<BlockMetrics>,
        disk: Arc<SharedDisk<B>>,
        limiter: Arc<Mutex<RateLimiter>>,
        mode: Mode,
    ) -> io::Result<Self> {
        let mut servers = Vec::with_capacity(queues.len());
        let mut engine_queues = Vec::new();
        for (index, queue) in queues.into_iter().enumerate() {
            let engine = match mode.defer && queue.ready() {
                true => {
                    engine_queues.push(index);
                    Some(IoEngine::new(queue.size(), EngineKind::IoUring)?)
                }
                false => None,
            };
            servers.push(QueueServer {
                queue,
                engine,
                in_flight: Vec::new(),
                free: Vec::new(),
                stalled: false,
                throttled: false,
            });
        }
        let context = Context { memory, interrupt, guest_errors, metrics, disk, limiter, mode };
        let poll = AdaptivePoll::new(None);
        Ok(BlockHandler { queues: servers, context, engine_queues, first_throttled: 0, poll })
    }

    /// Polls the rings for up to `max` once out of work, adaptively (see `poll.rs`); `None`
    /// never polls.
    pub(super) fn with_poll(mut self, max: Option<Duration>) -> Self {
        self.poll = AdaptivePoll::new(max);
        self
    }

    /// Serves queue `index`, then goes idle: into a poll window (notifications left off) if the
    /// device polls now, else to sleep on notifications.
    fn serve_queue(&mut self, index: usize) {
        let rearm = !self.poll.will_poll();
        let _ = self.process_requests(index, rearm);
        self.went_idle();
    }

    /// The worker ran out of work: a poll window starts (if the device polls at all: a device
    /// that does not skips reading the clock).
    fn went_idle(&mut self) {
        if self.poll.enabled() {
            self.poll.idle(Instant::now());
        }
    }

    /// An event woke the worker: the poll window adapts to how long it was idle.
    fn woke(&mut self) {
        if self.poll.enabled() {
            self.poll.woke(Instant::now());
        }
    }

    /// Takes every available request of queue `index` (while its engine has room), then
    /// interrupts the driver once if it wants to know. With `rearm`, the driver's notifications
    /// are turned back on once the ring is empty; without, they stay off for a poll window.
    /// Whether any request was taken.
    fn process_requests(&mut self, index: usize, rearm: bool) -> bool {
        let context = &self.context;
        let Some(server) = self.queues.get_mut(index) else { return false };
        if server.throttled {
            return false; // The limiter's timer serves it again.
        }
        let memory = &context.memory;
        let mut used_any = false;
        let mut taken_any = false;
        // The last look said the ring has more: a pass that then takes nothing means the queue
        // refuses the ring's index (a driver's index more than a ring ahead), and another look
        // would say the same forever.
        let mut more_promised = false;
        'serve: loop {
            // No notifications while the ring is being emptied: they would only wake the worker
            // for requests it is about to see anyway. (With EVENT_IDX this does nothing.)
            let _ = server.queue.disable_notification(memory);
            let mut taken = false;
            while server.engine.as_ref().is_none_or(|engine| !engine.is_full()) {
                let Some(chain) = server.queue.pop_descriptor_chain(memory) else { break };
                taken = true;
                if !context.admit(&chain) {
                    // Back on the ring, untouched, for when the budget has refilled.
                    server.queue.go_to_previous_position();
                    server.throttled = true;
                    context.metrics.rate_limiter_throttled_events.inc();
                    break;
                }
                let head = chain.head_index();
                let disk = context.disk.current();
                match serve(memory, &disk, &context.guest_errors, &context.metrics, chain, context.mode) {
                    Served::Used(used) => {
                        if !complete("virtio-blk", &mut server.queue, memory, head, used) {
                            break 'serve;
                        }
                        used_any = true;
                    }
                    Served::Pending { op, done, status } => {
                        let backend = disk.backend;
                        let token = server.insert(InFlight { head, status, done, backend: backend.clone() });
                        // Room was checked before the chain was taken, and only queues with an
                        // engine defer requests.
                        let submitted = match server.engine.as_mut() {
                            Some(engine) => engine.submit(&backend, op, token as u64).is_ok(),
                            None => false,
                        };
                        if !submitted {
                            server.remove(token as u64);
                            let error = io::Error::other("the engine is full");
                            let used = finish(
                                memory,
                                &context.guest_errors,
                                &context.metrics,
                                done,
                                status,
                                Err(error),
                            );
                            used_any |= complete("virtio-blk", &mut server.queue, memory, head, used);
                        }
                    }
                }
            }
            if let Some(engine) = &mut server.engine {
                engine.commit();
                // Reads from the page cache complete while they are submitted: answering them
                // now saves the worker a wake-up and the driver an interrupt.
                let mut done = Vec::new();
                engine.reap(&mut done);
                used_any |= complete_all(context, server, done);
                let Some(engine) = &mut server.engine else { break };
                if engine.is_full() {
                    // Picked up again when requests complete; notifications stay off meanwhile.
                    server.stalled = true;
                    break;
                }
            }
            taken_any |= taken;
            if server.throttled || (more_promised && !taken) {
                break;
            }
            // Back on, then one more look: a request made available just before would otherwise
            // wait for the next notification, which the driver need not send. In a poll window
            // they stay off, but the look is the same: a driver that keeps up is served in this
            // one pass, with one interrupt, as without polling.
            let more = match rearm {
                true => matches!(server.queue.enable_notification(memory), Ok(true)),
                false => has_available(&server.queue, memory),
            };
            if !more {
                break;
            }
            more_promised = true;
        }
        if used_any {
            signal_used("virtio-blk", &mut server.queue, memory, context.interrupt.as_ref(), index);
        }
        taken_any
    }

    /// Completes queue `index`'s requests in `done`, then interrupts the driver once.
    fn complete_requests(&mut self, index: usize, done: Vec<Completion>) {
        let context = &self.context;
        let server = &mut self.queues[index];
        if complete_all(context, server, done) {
            signal_used("virtio-blk", &mut server.queue, &context.memory, context.interrupt.as_ref(), index);
        }
    }

    /// The rate limiter's timer fired: serves again the queues it held back.
    fn limiter_fired(&mut self) {
        match lock(&self.context.limiter).event_handler() {
            Ok(true) => {}
            Ok(false) => return, // A spurious wake-up: the timer is still pending.
            // Cannot happen with a valid timerfd; serving again is the safe side (a queue
            // refused again re-arms the timer).
            Err(e) => tracing::error!("virtio-blk: cannot read the rate limiter's timer: {e}"),
        }
        let count = self.queues.len();
        let first = self.first_throttled % count.max(1);
        self.first_throttled = first + 1;
        for index in (first..count).chain(0..first) {
            if std::mem::take(&mut self.queues[index].throttled) {
                self.serve_queue(index);
            }
        }
    }

    /// One look at every queue in a poll window: completes what the engines finished and serves
    /// the requests on the rings, notifications left off. Whether there was anything.
    fn poll_queues(&mut self) -> bool {
        let mut found = false;
        for index in 0..self.queues.len() {
            if self.queues[index].engine.as_ref().is_some_and(|engine| engine.in_flight() > 0) {
                let done = self.reap(index);
                found |= !done.is_empty();
                self.complete_requests(index, done);
            }
            let server = &mut self.queues[index];
            let room = server.engine.as_ref().is_none_or(|engine| !engine.is_full());
            let work = match server.stalled {
                // Requests wait on the ring for the room completions just made.
                true => room,
                false => {
                    server.queue.ready()
                        && !server.throttled
                        && has_available(&server.queue, &self.context.memory)
                }
            };
            if work {
                server.stalled = false;
                found |= self.process_requests(index, false);
            }
        }
        found
    }

    /// The window passed with nothing: notifications back on, then one more look at each ring,
    /// as the driver may have made a request available before it saw them on (and so sent no
    /// notification). A request found so is served (notifications back on after it too) and
    /// starts a new window; a ring that only claims to have one (a bad index) does not. Stalled
    /// and throttled queues keep their notifications off: their own events serve them again.
    fn end_poll_window(&mut self) {
        self.poll.end();
        let mut raced = Vec::new();
        for (index, server) in self.queues.iter_mut().enumerate() {
            if !server.queue.ready() || server.stalled || server.throttled {
                continue;
            }
            if let Ok(true) = server.queue.enable_notification(&self.context.memory) {
                raced.push(index);
            }
        }
        let mut served = false;
        for index in raced {
            served |= self.process_requests(index, true);
        }
        if served {
            self.poll.found();
            self.went_idle();
        }
    }

    /// Collects queue `index`'s completed requests without waiting.
    fn reap(&mut self, index: usize) -> Vec<Completion> {
        let mut done = Vec::new();
        if let Some(engine) = self.queues.get_mut(index).and_then(|server| server.engine.as_mut()) {
            engine.reap(&mut done);
        }
        done
    }
}

/// Whether `queue`'s driver has made requests available that were not taken yet (a ring
/// outside guest memory has none: taking them would fail anyway).
fn has_available(queue: &Queue, memory: &GuestRam) -> bool {
    queue.avail_idx(memory, Ordering::Acquire).is_ok_and(|avail| avail.0 != queue.next_avail())
}

/// Completes `server`'s requests in `done` on its used ring; whether any was.
fn complete_all<B: DiskBackend + ?Sized>(
    context: &Context<B>,
    server: &mut QueueServer<B>,
    done: Vec<Completion>,
) -> bool {
    let memory = &context.memory;
    let mut used_any = false;
    for Completion { token, result } in done {
        let Some(request) = server.remove(token) else {
            tracing::error!("virtio-blk: the engine completed an unknown request ({token})");
            continue;
        };
        let used =
            finish(memory, &context.guest_errors, &context.metrics, request.done, request.status, result);
        used_any |= complete("virtio-blk", &mut server.queue, memory, request.head, used);
    }
    used_any
}

impl<B: DiskBackend + ?Sized> QueueHandler for BlockHandler<B> {
    fn queue_states(&self) -> Vec<(usize, QueueState)> {
        self.queues.iter().enumerate().map(|(index, server)| (index, server.queue.state())).collect()
    }

    fn process_queue(&mut self, index: usize) {
        self.context.metrics.queue_event_count.inc();
        self.woke();
        self.serve_queue(index);
    }

    /// In a poll window: serves what the rings and engines have now; ends the window when it
    /// has passed. Whether the worker should call again at once.
    fn poll(&mut self) -> bool {
        if !self.poll.polling() {
            return false;
        }
        if self.poll_queues() {
            self.poll.found();
            self.went_idle();
        } else if self.poll.expired(Instant::now()) {
            self.end_poll_window();
        } else {
            std::hint::spin_loop();
        }
        self.poll.polling()
    }

    /// Each engine's eventfd (by `engine_queues`), then the rate limiter's timer.
    fn backend_fds(&self) -> Vec<RawFd> {
        let engines = self
            .engine_queues
            .iter()
            .filter_map(|&index| self.queues[index].engine.as_ref().map(IoEngine::event_fd));
        engines.chain([lock(&self.context.limiter).fd()]).collect()
    }

    /// Queue `index`'s engine completed requests, or (after the engines) the rate limiter's timer
    /// fired.
    fn process_backend(&mut self, index: usize) {
        if index == self.engine_queues.len() {
            self.limiter_fired();
            return;
        }
        let Some(&queue) = self.engine_queues.get(index) else { return };
        self.woke();
        let mut done = Vec::new();
        if let Some(engine) = self.queues[queue].engine.as_mut() {
            engine.reap_woken(&mut done);
        }
        self.complete_requests(queue, done);
        if std::mem::take(&mut self.queues[queue].stalled) {
            self.serve_queue(queue);
        } else {
            // Out of work again: the driver's next request is likely to follow this completion.
            self.went_idle();
        }
    }

    /// A snapshot shows the completed writes as done: every request in flight is completed first
    /// (the snapshot's queues show no request half done), then the disks they ran on and the
    /// current one are flushed. Queues are not served meanwhile: requests still on the rings stay
    /// there for the restored device.
    fn quiesce(&mut self) -> io::Result<()> {
        if self.poll.polling() {
            // A snapshot must not show the driver notifications off: the restored device would
            // wait for one that never comes. Turned on here, and looked at again once the worker
            // goes on (the expired window), since a request may have come meanwhile.
            self.poll.end();
            for server in &mut self.queues {
                if server.queue.ready() && !server.stalled && !server.throttled {
                    let _ = server.queue.enable_notification(&self.context.memory);
                }
            }
            self.poll.expire_now(Instant::now());
        }
        let mut disks: Vec<Arc<B>> = vec![self.context.disk.current().backend];
        for index in 0..self.queues.len() {
            for request in self.queues[index].in_flight.iter().flatten() {
                if !disks.iter().any(|disk| Arc::ptr_eq(disk, &request.backend)) {
                    disks.push(request.backend.clone());
                }
            }
            let mut done = Vec::new();
            let stalled = self.queues[index].stalled;
            while let Some(engine) = self.queues[index].engine.as_mut() {
                if engine.in_flight() == 0 {
                    // A stalled queue is looked at again once the worker goes on.
                    if stalled {
                        engine.wake();
                    }
                    break;
                }
                engine.wait(&mut done)?;
                self.complete_requests(index, std::mem::take(&mut done));
            }
        }
        for disk in disks {
            disk.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
impl<B: DiskBackend + ?Sized> BlockHandler<B> {
    /// Polls for a fixed `window` whenever out of work (see [`AdaptivePoll::fixed`]).
    pub(super) fn with_fixed_poll(mut self, window: Duration) -> Self {
        self.poll = AdaptivePoll::fixed(window);
        self
    }

    /// The current poll window, and whether the worker is in one.
    pub(super) fn poll_state(&self) -> (Duration, bool) {
        (self.poll.window(), self.poll.polling())
    }

    /// Ends the poll window now, as when it passes: notifications on, one more look.
    pub(super) fn end_poll_window_now(&mut self) {
        self.end_poll_window();
    }

    /// Waits until at least one of queue `index`'s requests completes, and completes those done.
    pub(super) fn step(&mut self, index: usize) {
        let mut done = Vec::new();
        if let Some(engine) = self.queues[index].engine.as_mut() {
            engine.wait(&mut done).unwrap();
        }
        self.complete_requests(index, done);
    }

    /// Waits until every request taken off the queues has completed, serving the ones a full
    /// engine left on the rings meanwhile, as the worker would.
    pub(super) fn drain(&mut self) {
        for index in 0..self.queues.len() {
            while let Some(engine) = self.queues[index].engine.as_mut() {
                if engine.in_flight() == 0 {
                    break;
                }
                let mut done = Vec::new();
                engine.wait(&mut done).unwrap();
                self.complete_requests(index, done);
                if std::mem::take(&mut self.queues[index].stalled) {
                    let _ = self.process_requests(index, true);
                }
            }
        }
    }
}
