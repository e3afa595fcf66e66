//! The threads Kestrel starts ([`crate::seccomp::spawn`] registers each while it runs), by kernel
//! thread id: for what must reach every thread of the VMM where `/proc/self/task` cannot list
//! them — a jail (`kestrel jailer`) has no `/proc`.

use std::sync::Mutex;

static RUNNING: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());

/// The calling thread's registration; dropping it (as the thread ends) removes it.
pub(crate) struct Registered(libc::pid_t);

/// Registers the calling thread until the returned value is dropped.
pub(crate) fn register() -> Registered {
    // SAFETY: gettid has no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    RUNNING.lock().unwrap_or_else(|e| e.into_inner()).push(tid);
    Registered(tid)
}

impl Drop for Registered {
    fn drop(&mut self) {
        RUNNING.lock().unwrap_or_else(|e| e.into_inner()).retain(|&tid| tid != self.0);
    }
}

/// The ids of the threads started through [`crate::seccomp::spawn`] that are running now (the
/// main thread, which nothing starts, is not among them).
pub fn started() -> Vec<libc::pid_t> {
    RUNNING.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_is_listed_while_it_runs() {
        let (tid_sender, tid) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let registered = register();
            tid_sender.send(registered.0).unwrap();
            released.recv().unwrap();
        });
        let tid = tid.recv().unwrap();
        assert!(started().contains(&tid));
        release.send(()).unwrap();
        thread.join().unwrap();
        assert!(!started().contains(&tid));
    }
}
