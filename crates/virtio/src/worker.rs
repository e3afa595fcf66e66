//! The thread a device's host side runs on: one epoll loop over the device's queue events, any
//! backend file descriptors (a tap, sockets), and a stop event.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A device's request processing, driven by its worker thread.
pub trait QueueHandler: Send + 'static {
    /// The driver notified queue `index`.
    fn process_queue(&mut self, index: usize);

    /// Backend descriptors the worker should also wait on (readable, or hang-up).
    fn backend_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }

    /// Backend descriptor `index` (of [`QueueHandler::backend_fds`]) is ready.
    fn process_backend(&mut self, index: usize) {
        let _ = index;
    }
}

/// A running worker thread; dropping it stops the thread and waits for it.
pub struct Worker {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts `handler` on a thread named `name`, woken by `queue_events`.
    pub fn spawn<H: QueueHandler>(name: &str, queue_events: Vec<EventFd>, handler: H) -> io::Result<Worker> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        let stop_token = queue_events.len() as u64;
        let add = |fd: RawFd, token: u64| {
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token))
        };
        for (index, event) in queue_events.iter().enumerate() {
            add(event.as_raw_fd(), index as u64)?;
        }
        add(stop.as_raw_fd(), stop_token)?;
        for (index, fd) in handler.backend_fds().into_iter().enumerate() {
            add(fd, stop_token + 1 + index as u64)?;
        }
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || run(epoll, queue_events, stop_token, handler))?;
        Ok(Worker { stop, thread: Some(thread) })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
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

fn run<H: QueueHandler>(epoll: Epoll, queue_events: Vec<EventFd>, stop_token: u64, mut handler: H) {
    let mut events = vec![EpollEvent::default(); queue_events.len() + 8];
    loop {
        let count = match epoll.wait(-1, &mut events) {
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
            if let Some(queue_event) = queue_events.get(token as usize) {
                // Clearing the count first means a notification that arrives while the queue is
                // processed wakes the loop again instead of being lost.
                let _ = queue_event.read();
                handler.process_queue(token as usize);
            } else {
                handler.process_backend((token - stop_token - 1) as usize);
            }
        }
    }
}
