//! A few threads that carry out operations with the backend's own (blocking) methods: for
//! backends without a direct descriptor (qcow2 maps the guest's bytes itself) and as the fallback
//! where io_uring cannot be set up.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use super::{Completion, EventFd, Op};
use crate::{total_len, DiskBackend};

/// Threads per pool: enough to keep a few requests of one queue moving at once, few enough that
/// several disks with several queues do not crowd the host.
const THREADS: usize = 4;

pub(super) struct Pool<B: DiskBackend + ?Sized> {
    shared: Arc<Shared<B>>,
    threads: Vec<JoinHandle<()>>,
}

struct Job<B: ?Sized> {
    backend: Arc<B>,
    op: Op,
    token: u64,
}

struct Jobs<B: ?Sized> {
    queue: VecDeque<Job<B>>,
    stop: bool,
}

struct Shared<B: ?Sized> {
    jobs: Mutex<Jobs<B>>,
    wake: Condvar,
    done: Mutex<Vec<Completion>>,
    event: Arc<EventFd>,
}

/// A poisoned lock means a thread panicked between plain pushes and pops; the data are whole.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<B: DiskBackend + ?Sized> Pool<B> {
    pub fn new(event: Arc<EventFd>) -> Pool<B> {
        let shared = Arc::new(Shared {
            jobs: Mutex::new(Jobs { queue: VecDeque::new(), stop: false }),
            wake: Condvar::new(),
            done: Mutex::new(Vec::new()),
            event,
        });
        let mut threads = Vec::new();
        for index in 0..THREADS {
            let worker = shared.clone();
            let builder = std::thread::Builder::new().name(format!("disk-io-{index}"));
            match jail::seccomp::spawn(jail::seccomp::ThreadRole::Block, builder, move || run(&worker)) {
                Ok(thread) => threads.push(thread),
                // Fewer threads only means less parallelism; none at all is handled in submit.
                Err(e) => tracing::error!("cannot start a disk I/O thread: {e}"),
            }
        }
        Pool { shared, threads }
    }

    pub fn submit(&mut self, backend: Arc<B>, op: Op, token: u64) {
        if self.threads.is_empty() {
            // No thread could be started: do it here rather than never.
            let result = execute(&*backend, op);
            lock(&self.shared.done).push(Completion { token, result });
            self.shared.event.signal();
            return;
        }
        lock(&self.shared.jobs).queue.push_back(Job { backend, op, token });
        self.shared.wake.notify_one();
    }

    pub fn reap(&self, out: &mut Vec<Completion>) {
        out.append(&mut lock(&self.shared.done));
    }
}

impl<B: DiskBackend + ?Sized> Drop for Pool<B> {
    /// The engine waited for every job first; this ends the idle threads.
    fn drop(&mut self) {
        lock(&self.shared.jobs).stop = true;
        self.shared.wake.notify_all();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("a disk I/O thread panicked");
            }
        }
    }
}

fn run<B: DiskBackend + ?Sized>(shared: &Shared<B>) {
    loop {
        let job = {
            let mut jobs = lock(&shared.jobs);
            loop {
                if let Some(job) = jobs.queue.pop_front() {
                    break job;
                }
                if jobs.stop {
                    return;
                }
                jobs = shared.wake.wait(jobs).unwrap_or_else(PoisonError::into_inner);
            }
        };
        let result = execute(&*job.backend, job.op);
        // The backend is let go before the completion is seen: a replaced disk closes then.
        drop(job.backend);
        lock(&shared.done).push(Completion { token: job.token, result });
        shared.event.signal();
    }
}

fn execute<B: DiskBackend + ?Sized>(backend: &B, op: Op) -> std::io::Result<usize> {
    match op {
        Op::Read { buffers, offset } => {
            backend.read_vectored_at(&buffers, offset).map(|()| total_len(&buffers))
        }
        Op::Write { buffers, offset } => {
            backend.write_vectored_at(&buffers, offset).map(|()| total_len(&buffers))
        }
        Op::Flush => backend.flush().map(|()| 0),
    }
}
