//! The mapping epoch of a qcow2 disk: fast-path I/O (an engine moving bytes to a host extent
//! itself) holds a lease on it; operations that may move or free clusters (discard to zero or
//! backing, resize) take it exclusively, which waits for the leases to end.
//!
//! A lease ends when its I/O is reaped, on the thread that submitted it; that thread may be the
//! one that asks for a discard. So a lease is only ever *tried* (a pending exclusive holder makes
//! it fail, and the request takes the slow path), and the device's own discard only *tries* for
//! exclusivity (see `Qcow2Disk::write_zeroes`): no thread waits for something only it can do.

use crate::{Lease, LeaseHolder};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

#[derive(Default)]
struct State {
    leases: usize,
    /// An exclusive holder runs or waits for the leases to end; no new lease is given.
    exclusive: bool,
}

/// See the module documentation.
#[derive(Default)]
pub(super) struct Epoch {
    state: Mutex<State>,
    changed: Condvar,
}

/// Exclusive use of the mappings; dropping it lets leases be taken again.
pub(super) struct Exclusive<'a>(&'a Epoch);

impl Epoch {
    /// The counter is a plain integer and a flag, whole even if a holder panicked.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A lease, unless an exclusive holder runs or waits.
    pub fn try_lease(self: &Arc<Self>) -> Option<Lease> {
        let mut state = self.lock();
        if state.exclusive {
            return None;
        }
        state.leases += 1;
        drop(state);
        Some(Lease::new(self.clone()))
    }

    /// Waits for the other exclusive holder and then for every lease to end. Must not be called
    /// by a thread that itself holds leases, or that ends them (a device's queue thread).
    pub fn exclusive(&self) -> Exclusive<'_> {
        let mut state = self.lock();
        while state.exclusive {
            state = self.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        state.exclusive = true;
        while state.leases > 0 {
            state = self.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        Exclusive(self)
    }

    /// Exclusive use if no lease is held and no one else has it, without waiting.
    pub fn try_exclusive(&self) -> Option<Exclusive<'_>> {
        let mut state = self.lock();
        if state.exclusive || state.leases > 0 {
            return None;
        }
        state.exclusive = true;
        Some(Exclusive(self))
    }
}

impl LeaseHolder for Epoch {
    fn release(&self) {
        let mut state = self.lock();
        state.leases = state.leases.saturating_sub(1);
        if state.leases == 0 {
            self.changed.notify_all();
        }
    }
}

impl Drop for Exclusive<'_> {
    fn drop(&mut self) {
        self.0.lock().exclusive = false;
        self.0.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_and_exclusive_use_keep_each_other_out() {
        let epoch = Arc::new(Epoch::default());
        let lease = epoch.try_lease().unwrap();
        assert!(epoch.try_exclusive().is_none(), "a lease is held");
        drop(lease);
        let exclusive = epoch.try_exclusive().unwrap();
        assert!(epoch.try_lease().is_none(), "exclusive use runs");
        assert!(epoch.try_exclusive().is_none());
        drop(exclusive);
        assert!(epoch.try_lease().is_some());
    }

    #[test]
    fn exclusive_use_waits_for_the_leases_and_refuses_new_ones_meanwhile() {
        let epoch = Arc::new(Epoch::default());
        let lease = epoch.try_lease().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let epoch = epoch.clone();
            std::thread::spawn(move || {
                let _exclusive = epoch.exclusive();
                tx.send(()).unwrap();
            })
        };
        // Until the waiter marks itself, leases may still be given; once it has, none is. Poll
        // the observable state rather than sleep: the waiter flags `exclusive` before waiting.
        while !epoch.lock().exclusive {
            std::thread::yield_now();
        }
        assert!(epoch.try_lease().is_none(), "a waiting exclusive holder blocks new leases");
        assert!(rx.try_recv().is_err(), "the waiter cannot run while the lease is held");
        drop(lease);
        rx.recv().unwrap();
        waiter.join().unwrap();
        assert!(epoch.try_lease().is_some());
    }
}
