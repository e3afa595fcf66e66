//! The thread that starts every confined thread.
//!
//! Filters stack: a thread keeps its parent's filter and can only add to it. Kestrel's threads are
//! started by threads of other roles (a device worker by the vCPU whose register write activated
//! the device, a vCPU by the main thread after it is confined), so started directly each would be
//! held to its parent's list as well as its own. Instead they are all started here, by a thread
//! whose filter is the union of every role's list: each child then gets exactly its own.

use std::io;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::OnceLock;
use std::thread::JoinHandle;

use super::{Error, ThreadRole};

type Job = Box<dyn FnOnce() + Send>;

static JOBS: OnceLock<Sender<Job>> = OnceLock::new();

/// Starts the spawner thread (once; later calls do nothing). It does not wait for the thread to
/// confine itself — installing its long filter takes a few hundred microseconds the caller can
/// spend building the VM: jobs sent meanwhile queue, and the spawner serves them only once
/// confined. A spawner that cannot confine itself ends the process (status 1), as any thread does.
pub(crate) fn start() -> Result<(), Error> {
    if JOBS.get().is_some() {
        return Ok(());
    }
    let (jobs, receiver) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("kestrel-spawner".into())
        .spawn(move || {
            block_termination_signals();
            super::enter_or_exit(ThreadRole::Spawner);
            let _registered = crate::threads::register();
            serve(receiver);
        })
        .map_err(Error::Spawner)?;
    let _ = JOBS.set(jobs);
    Ok(())
}

fn serve(jobs: Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        job();
    }
}

/// How every thread [`super::spawn`] starts begins, before `f`: the debug build's Landlock probe,
/// its role's filter (nothing with [`super::Mode::Off`]), its place in [`crate::threads`].
pub(super) fn begin<F, T>(role: ThreadRole, f: F) -> T
where
    F: FnOnce() -> T,
{
    #[cfg(debug_assertions)]
    crate::landlock::test_probe_as("KESTREL_LANDLOCK_TEST_PROBE_THREADS", role.name());
    super::enter_or_exit(role);
    let _registered = crate::threads::register();
    f()
}

/// Starts `f` on a thread made by `builder`, confined to `role`, from the spawner thread.
pub(crate) fn spawn<F, T>(role: ThreadRole, builder: std::thread::Builder, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    run_here(move || builder.spawn(move || begin(role, f)))?
}

/// Starts `f` on a thread made by `builder` from the calling thread, which has no filter yet, so
/// the child holds its role's filter alone; its signal mask is the spawner's children's.
pub(crate) fn spawn_from_here<F, T>(
    role: ThreadRole,
    builder: std::thread::Builder,
    f: F,
) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    builder.spawn(move || {
        block_termination_signals();
        begin(role, f)
    })
}

/// Runs `f` on the spawner thread and returns what it returns: what the spawner does to itself
/// (Landlock's `landlock_restrict_self`, say) every thread it starts from then on inherits.
pub(crate) fn run_here<R, F>(f: F) -> io::Result<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let jobs = JOBS.get().ok_or_else(|| io::Error::other("the seccomp spawner thread is not running"))?;
    let (sender, receiver) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = sender.send(f());
    });
    jobs.send(job).map_err(|_| io::Error::other("the seccomp spawner thread ended"))?;
    receiver.recv().map_err(|_| io::Error::other("the seccomp spawner thread ended"))
}

/// The spawner's children must not take SIGINT/SIGTERM/SIGHUP, which the VM's event loop waits
/// for on the main thread; they inherit this mask.
fn block_termination_signals() {
    // SAFETY: sigset_t is plain data that sigemptyset initialises before use; only this thread's
    // mask changes.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}
