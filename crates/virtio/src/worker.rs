//! The thread a device's host side runs on: one epoll loop over the device's queue events, any
//! backend file descriptors (a tap, sockets), and a stop event.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::GuestRam;
use virtio_queue::{DescriptorChain, Queue, QueueState, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::device::{GuestErrorLog, Interrupt, InterruptCause};

/// Used-ring writes the guest made fail (a head past the queue, a ring outside its memory), for
/// every device: one budget for the site, as any device's failures are the same guest's doing.
static COMPLETE_ERRORS: GuestErrorLog = GuestErrorLog::site("virtio used rings");

/// Interrupts that could not be delivered. The host's doing as far as is known (an eventfd or
/// KVM route failing), but it fails once per request, so it is limited like a guest's problem.
static INTERRUPT_ERRORS: GuestErrorLog = GuestErrorLog::site("virtio interrupts");

/// A device's request processing, driven by its worker thread.
pub trait QueueHandler: Send + 'static {
    /// The driver notified queue `index`.
    fn process_queue(&mut self, index: usize);

    /// The handler's queues with their positions, by the transport's queue index, for a snapshot.
    fn queue_states(&self) -> Vec<(usize, QueueState)>;

    /// Called on the worker thread when a snapshot holds it, before [`QueueHandler::queue_states`]:
    /// makes what the device has completed durable (a disk's writes), so the snapshot does not
    /// show the guest requests as done whose data a host crash could still lose. An error fails
    /// the hold.
    fn quiesce(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Backend descriptors the worker should also wait on, for what
    /// [`QueueHandler::backend_interest`] says (and hang-ups).
    fn backend_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }

    /// Backend descriptor `index` (of [`QueueHandler::backend_fds`]) is ready.
    fn process_backend(&mut self, index: usize) {
        let _ = index;
    }

    /// What the worker waits for on backend descriptor `index`. Asked again after every call into
    /// the handler, so a device can stop reading a backend it has no room for (readiness it does
    /// not consume would wake the loop forever) or wait until a backend can take more writes. An
    /// empty set stops waiting on the descriptor altogether, hang-ups and errors included (a
    /// broken backend would otherwise report them forever).
    fn backend_interest(&self, index: usize) -> EventSet {
        let _ = index;
        EventSet::IN
    }

    /// Called after every round of events. A handler that busy-polls its queues (the guest's
    /// notifications off) looks for work now and serves it, and returns true to be called again
    /// at once: the worker then only glances at its descriptors before the next call, so stop,
    /// hold and backend events are not held up by the polling. False sleeps until an event.
    fn poll(&mut self) -> bool {
        false
    }

    /// Called once before the first event, for handlers whose backend descriptors come and go
    /// while they run (vsock: a socket per connection): they keep `registry` and add and remove
    /// those descriptors through it.
    fn attach_backends(&mut self, registry: BackendRegistry) {
        let _ = registry;
    }
}

/// Adds, changes and removes backend descriptors of a running worker. Indices continue after
/// those of [`QueueHandler::backend_fds`]; an event on a descriptor added as `index` reaches
/// [`QueueHandler::process_backend`] as `index`. [`QueueHandler::backend_interest`] is not asked
/// about these: the handler keeps their registrations up to date itself. An event collected
/// before a removal can still be delivered after it, so a handler should not reuse an index.
#[derive(Clone)]
pub struct BackendRegistry {
    epoll: Arc<Epoll>,
    first_token: u64,
}

impl BackendRegistry {
    /// A registry over `epoll` whose index 0 is token `first_token` (tests that run a handler's
    /// event loop themselves make their own).
    pub fn new(epoll: Arc<Epoll>, first_token: u64) -> BackendRegistry {
        BackendRegistry { epoll, first_token }
    }

    /// Starts waiting for `interest` on `fd` (hang-ups and errors are always reported).
    pub fn add(&self, fd: RawFd, index: usize, interest: EventSet) -> io::Result<()> {
        self.epoll.ctl(ControlOperation::Add, fd, self.event(index, interest))
    }

    /// Waits for `interest` on an added `fd` instead of what it waited for.
    pub fn modify(&self, fd: RawFd, index: usize, interest: EventSet) -> io::Result<()> {
        self.epoll.ctl(ControlOperation::Modify, fd, self.event(index, interest))
    }

    /// Stops waiting on `fd` (closing it does so as well).
    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }

    fn event(&self, index: usize, interest: EventSet) -> EpollEvent {
        EpollEvent::new(interest, self.first_token + index as u64)
    }
}

/// Serves every available chain of queue `index` with `serve` (which returns the chain's used
/// length), then interrupts the driver once if it wants to know. `device` names it in messages.
pub(crate) fn serve_queue(
    device: &str,
    memory: &GuestRam,
    queue: &mut Queue,
    index: usize,
    interrupt: &dyn Interrupt,
    mut serve: impl FnMut(DescriptorChain<&GuestRam>) -> u32,
) {
    let mut used_any = false;
    while let Some(chain) = queue.pop_descriptor_chain(memory) {
        let head = chain.head_index();
        let used = serve(chain);
        if !complete(device, queue, memory, head, used) {
            break;
        }
        used_any = true;
    }
    if used_any {
        signal_used(device, queue, memory, interrupt, index);
    }
}

/// Puts a chain on the used ring; false (and logged) if the ring cannot be written.
pub(crate) fn complete(device: &str, queue: &mut Queue, memory: &GuestRam, head: u16, len: u32) -> bool {
    match queue.add_used(memory, head, len) {
        Ok(()) => true,
        Err(e) => {
            COMPLETE_ERRORS.log(format_args!("{device}: cannot complete a request: {e:?}"));
            false
        }
    }
}

/// Interrupts the driver about queue `index`'s used buffers, if it wants to know.
pub(crate) fn signal_used(
    device: &str,
    queue: &mut Queue,
    memory: &GuestRam,
    interrupt: &dyn Interrupt,
    index: usize,
) {
    if queue.needs_notification(memory).unwrap_or(true) {
        if let Err(e) = interrupt.trigger(InterruptCause::Queue(index as u16)) {
            INTERRUPT_ERRORS.log(format_args!("{device}: cannot interrupt the guest: {e}"));
        }
    }
}

/// How long [`Worker::hold`] waits for the worker to finish what it is doing.
const HOLD_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`Worker::hold`] then waits for the handler to quiesce: flushing a disk the guest
/// just wrote a lot to can take far longer than finishing a request, and is no sign of a stuck
/// worker.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(120);

/// A running worker thread; dropping it stops the thread and waits for it.
pub struct Worker {
    stop: EventFd,
    /// Wakes the thread to look at `hold`.
    hold_event: EventFd,
    hold: Arc<HoldState>,
    thread: Option<JoinHandle<()>>,
}

/// A snapshot's hold on a worker: the thread stops between events and hands over its queues.
#[derive(Default)]
struct HoldState {
    state: Mutex<Hold>,
    changed: Condvar,
}

#[derive(Default)]
struct Hold {
    requested: bool,
    /// The thread stopped and is quiescing its handler.
    quiescing: bool,
    /// The held thread's queues (or why it could not quiesce), until [`Worker::hold`] takes them.
    queues: Option<io::Result<Vec<(usize, QueueState)>>>,
    /// The worker is being dropped: a held thread must end.
    stopping: bool,
}

impl HoldState {
    fn lock(&self) -> MutexGuard<'_, Hold> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// On the worker thread: quiesce the handler and hand over the queues, then wait until
    /// released (or stopped). A handler that cannot quiesce hands over the error and goes on.
    fn serve<H: QueueHandler>(&self, handler: &mut H) {
        {
            let mut hold = self.lock();
            if !hold.requested {
                return;
            }
            hold.quiescing = true;
            self.changed.notify_all();
        }
        // Outside the lock: a flush can take long, and the holder's timeout must still work.
        let quiesced = handler.quiesce();
        let mut hold = self.lock();
        hold.quiescing = false;
        if !hold.requested {
            return; // The holder gave up meanwhile.
        }
        let failed = quiesced.is_err();
        hold.queues = Some(quiesced.map(|()| handler.queue_states()));
        self.changed.notify_all();
        if failed {
            hold.requested = false;
            return;
        }
        while hold.requested && !hold.stopping {
            hold = self.changed.wait(hold).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Worker {
    /// Starts `handler` on a thread named `name`, confined to `role`, woken by `queue_events`.
    pub fn spawn<H: QueueHandler>(
        name: &str,
        role: jail::seccomp::ThreadRole,
        queue_events: Vec<EventFd>,
        mut handler: H,
    ) -> io::Result<Worker> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let hold_event = EventFd::new(EFD_NONBLOCK)?;
        let hold = Arc::new(HoldState::default());
        let epoll = Arc::new(Epoll::new()?);
        let stop_token = queue_events.len() as u64;
        let add = |fd: RawFd, token: u64| {
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token))
        };
        for (index, event) in queue_events.iter().enumerate() {
            add(event.as_raw_fd(), index as u64)?;
        }
        add(stop.as_raw_fd(), stop_token)?;
        add(hold_event.as_raw_fd(), stop_token + 1)?;
        let first_backend = stop_token + 2;
        let backends = Backends::register(&epoll, &handler, first_backend)?;
        handler.attach_backends(BackendRegistry::new(epoll.clone(), first_backend));
        let events = WorkerEvents {
            queue_events,
            stop_token,
            hold_event: hold_event.try_clone()?,
            hold: hold.clone(),
        };
        let builder = std::thread::Builder::new().name(name.to_owned());
        let thread = jail::seccomp::spawn(role, builder, move || run(epoll, events, backends, handler))?;
        Ok(Worker { stop, hold_event, hold, thread: Some(thread) })
    }

    /// Stops the thread between two events, with nothing in progress, has the handler quiesce
    /// (see [`QueueHandler::quiesce`]) and returns its queues (by the transport's queue index) as
    /// they stand; the thread waits until [`Worker::release`].
    pub fn hold(&self) -> io::Result<Vec<(usize, QueueState)>> {
        let mut hold = self.hold.lock();
        hold.requested = true;
        hold.queues = None;
        self.hold_event.write(1)?;
        let mut deadline = Instant::now() + HOLD_TIMEOUT;
        let mut quiescing = false;
        loop {
            if let Some(queues) = hold.queues.take() {
                return queues;
            }
            let now = Instant::now();
            if hold.quiescing && !quiescing {
                // Stopped in time; the flush gets its own, longer limit.
                quiescing = true;
                deadline = now + QUIESCE_TIMEOUT;
            }
            if now >= deadline {
                hold.requested = false;
                let (what, limit) = match quiescing {
                    false => ("stop", HOLD_TIMEOUT),
                    true => ("flush its backend", QUIESCE_TIMEOUT),
                };
                return Err(io::Error::other(format!("the device worker did not {what} within {limit:?}")));
            }
            hold = self
                .hold
                .changed
                .wait_timeout(hold, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Lets a held thread go on.
    pub fn release(&self) {
        self.hold.lock().requested = false;
        self.hold.changed.notify_all();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.hold.lock().stopping = true;
        self.hold.changed.notify_all();
        if let Err(e) = self.stop.write(1) {
            tracing::error!("cannot stop a device worker: {e}");
            return;
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("a device worker panicked");
            }
        }
    }
}

/// The handler's backend descriptors and the readiness each is currently waited for.
struct Backends {
    fds: Vec<RawFd>,
    interests: Vec<EventSet>,
    first_token: u64,
}

impl Backends {
    fn register<H: QueueHandler>(epoll: &Epoll, handler: &H, first_token: u64) -> io::Result<Backends> {
        let fds = handler.backend_fds();
        let interests: Vec<EventSet> = (0..fds.len()).map(|index| handler.backend_interest(index)).collect();
        for (index, (&fd, &interest)) in fds.iter().zip(&interests).enumerate() {
            if !interest.is_empty() {
                epoll.ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(interest, first_token + index as u64),
                )?;
            }
        }
        Ok(Backends { fds, interests, first_token })
    }

    /// Brings each descriptor's registration in line with what the handler now wants.
    fn update<H: QueueHandler>(&mut self, epoll: &Epoll, handler: &H) {
        for (index, (&fd, interest)) in self.fds.iter().zip(&mut self.interests).enumerate() {
            let wanted = handler.backend_interest(index);
            if wanted == *interest {
                continue;
            }
            let operation = if wanted.is_empty() {
                ControlOperation::Delete
            } else if interest.is_empty() {
                ControlOperation::Add
            } else {
                ControlOperation::Modify
            };
            match epoll.ctl(operation, fd, EpollEvent::new(wanted, self.first_token + index as u64)) {
                Ok(()) => *interest = wanted,
                Err(e) => tracing::error!("device worker cannot change what it waits for: {e}"),
            }
        }
    }
}

/// What the worker thread waits on besides the backends.
struct WorkerEvents {
    queue_events: Vec<EventFd>,
    stop_token: u64,
    hold_event: EventFd,
    hold: Arc<HoldState>,
}

fn run<H: QueueHandler>(epoll: Arc<Epoll>, events: WorkerEvents, mut backends: Backends, mut handler: H) {
    let WorkerEvents { queue_events, stop_token, hold_event, hold } = events;
    let mut events = vec![EpollEvent::default(); queue_events.len() + 8];
    let mut polling = false;
    loop {
        let timeout = if polling { 0 } else { -1 };
        let count = match epoll.wait(timeout, &mut events) {
            Ok(count) => count,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("device worker cannot wait for events: {e}");
                return;
            }
        };
        for event in &events[..count] {
            let token = event.data();
            if token == stop_token {
                return;
            }
            if token == stop_token + 1 {
                let _ = hold_event.read();
                hold.serve(&mut handler);
                continue;
            }
            if let Some(queue_event) = queue_events.get(token as usize) {
                // Clearing the count first means a notification that arrives while the queue is
                // processed wakes the loop again instead of being lost.
                let _ = queue_event.read();
                handler.process_queue(token as usize);
            } else {
                handler.process_backend((token - backends.first_token) as usize);
            }
            backends.update(&epoll, &handler);
        }
        polling = handler.poll();
        if polling {
            backends.update(&epoll, &handler);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// Reports each call, and wants what the test script says: writability first, then nothing,
    /// then (after a queue notification) readability.
    struct Scripted {
        socket: UnixDatagram,
        wants: EventSet,
        calls: mpsc::Sender<&'static str>,
    }

    impl QueueHandler for Scripted {
        fn queue_states(&self) -> Vec<(usize, QueueState)> {
            Vec::new()
        }

        fn process_queue(&mut self, _index: usize) {
            self.wants = EventSet::IN;
            self.calls.send("queue").unwrap();
        }

        fn backend_fds(&self) -> Vec<RawFd> {
            vec![self.socket.as_raw_fd()]
        }

        fn process_backend(&mut self, _index: usize) {
            let call = if self.wants == EventSet::OUT {
                "writable"
            } else if self.wants == EventSet::IN {
                let mut byte = [0u8; 1];
                self.socket.recv(&mut byte).unwrap();
                "readable"
            } else {
                "called while waiting for nothing"
            };
            self.wants = EventSet::empty();
            self.calls.send(call).unwrap();
        }

        fn backend_interest(&self, _index: usize) -> EventSet {
            self.wants
        }
    }

    #[test]
    fn backends_are_waited_for_as_the_handler_asks_each_time() {
        let (socket, peer) = UnixDatagram::pair().unwrap();
        let (calls, called) = mpsc::channel();
        let queue_event = EventFd::new(EFD_NONBLOCK).unwrap();
        let notify = queue_event.try_clone().unwrap();
        let handler = Scripted { socket, wants: EventSet::OUT, calls };
        let _worker =
            Worker::spawn("test-worker", jail::seccomp::ThreadRole::Block, vec![queue_event], handler)
                .unwrap();
        let next = || called.recv_timeout(Duration::from_secs(10)).expect("no call within 10 s");

        assert_eq!(next(), "writable");
        // Readable now, but the handler waits for nothing: only the notification reaches it, and
        // after it the datagram.
        peer.send(b"x").unwrap();
        notify.write(1).unwrap();
        assert_eq!(next(), "queue");
        assert_eq!(next(), "readable");
    }

    /// Counts notifications; its one queue's next_avail is that count.
    struct Counting {
        notified: Arc<std::sync::atomic::AtomicU16>,
        calls: mpsc::Sender<u16>,
    }

    impl QueueHandler for Counting {
        fn queue_states(&self) -> Vec<(usize, QueueState)> {
            let next_avail = self.notified.load(std::sync::atomic::Ordering::SeqCst);
            vec![(0, QueueState { next_avail, ..QueueState::default() })]
        }

        fn process_queue(&mut self, _index: usize) {
            let count = self.notified.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            self.calls.send(count).unwrap();
        }
    }

    #[test]
    fn a_held_worker_hands_over_its_queues_and_serves_nothing_until_released() {
        let (calls, called) = mpsc::channel();
        let queue_event = EventFd::new(EFD_NONBLOCK).unwrap();
        let notify = queue_event.try_clone().unwrap();
        let handler = Counting { notified: Arc::default(), calls };
        let worker =
            Worker::spawn("test-hold", jail::seccomp::ThreadRole::Block, vec![queue_event], handler).unwrap();
        let next = || called.recv_timeout(Duration::from_secs(10)).expect("no call within 10 s");

        notify.write(1).unwrap();
        assert_eq!(next(), 1);
        let held = worker.hold().unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!((held[0].0, held[0].1.next_avail), (0, 1), "the queue as it stands");
        // Held: a notification waits for the release. (A broken hold shows as a call within the
        // wait; a working one cannot fail this, whatever the host's speed.)
        notify.write(1).unwrap();
        let early = called.recv_timeout(Duration::from_millis(200));
        assert!(early.is_err(), "a held worker served a notification: {early:?}");
        worker.release();
        assert_eq!(next(), 2, "served after the release");

        // Dropping a held worker ends its thread (the drop would hang otherwise).
        worker.hold().unwrap();
        drop(worker);
    }

    #[test]
    fn bad_heads_from_a_guest_log_a_few_lines_and_a_count() {
        use devices::guest_log::{capture, LINES_PER_INTERVAL};
        use virtio_queue::mock::MockSplitQueue;
        use vm_memory::GuestAddress;

        let memory = GuestRam::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut queue: Queue = MockSplitQueue::new(&memory, 16).create_queue().unwrap();
        let ((), lines) = capture::lines(|| {
            for head in 0..10_000u16 {
                // Heads past the queue's 16 entries, as a guest's avail ring can name.
                assert!(!complete("virtio-test", &mut queue, &memory, 16 + head % 1000, 0));
            }
            COMPLETE_ERRORS.flush();
        });
        capture::assert_limited(
            &lines,
            "virtio-test: cannot complete",
            "virtio used rings",
            10_000 - u64::from(LINES_PER_INTERVAL),
        );
    }
}
