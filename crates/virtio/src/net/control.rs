//! The host's handle on a network card's rate limiters (Firecracker's
//! `PATCH /network-interfaces/{id}`): the card's worker asks them before each frame, the host
//! replaces their buckets while the guest runs.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::rate_limiter::{RateLimit, RateLimitError, RateLimiter};

/// A poisoned lock only means another thread panicked between plain assignments; the limiter is
/// whole, so carry on with it rather than spread the panic.
pub(super) fn lock(limiter: &Mutex<RateLimiter>) -> MutexGuard<'_, RateLimiter> {
    limiter.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A card's two limiters: frames into the guest (receive) and out of it (transmit). They live as
/// long as the card, across resets, so that their timers stay among the worker's descriptors.
#[derive(Clone)]
pub struct NetLimiters {
    pub(super) rx: Arc<Mutex<RateLimiter>>,
    pub(super) tx: Arc<Mutex<RateLimiter>>,
}

impl NetLimiters {
    /// Limiters with full buckets; `RateLimit::default()` limits nothing.
    pub fn new(rx: RateLimit, tx: RateLimit) -> Result<NetLimiters, RateLimitError> {
        Ok(NetLimiters {
            rx: Arc::new(Mutex::new(RateLimiter::new(rx)?)),
            tx: Arc::new(Mutex::new(RateLimiter::new(tx)?)),
        })
    }

    /// The host's handle on these limiters (what [`super::Net::control`] returns).
    pub fn control(&self) -> NetControl {
        NetControl::new(self.clone())
    }
}

/// The host's handle on a network card: cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct NetControl {
    limiters: NetLimiters,
}

impl NetControl {
    pub(super) fn new(limiters: NetLimiters) -> NetControl {
        NetControl { limiters }
    }

    /// Gives the receive limiter (`rx`) and the transmit limiter (`tx`) new buckets, which start
    /// full; `None` leaves that limiter as it is (its budget too). A worker holding frames back
    /// for an old limit looks again at once. Both are checked before either changes: a refused
    /// limit ([`RateLimitError::RefillTimeTooLong`]) changes nothing.
    pub fn update_rate_limiters(
        &self,
        rx: Option<RateLimit>,
        tx: Option<RateLimit>,
    ) -> Result<(), RateLimitError> {
        // Both are checked first, so a refusal of the second cannot leave the first changed.
        for limit in [rx, tx].into_iter().flatten() {
            RateLimiter::validate(limit)?;
        }
        if let Some(limit) = rx {
            lock(&self.limiters.rx).update(limit)?;
        }
        if let Some(limit) = tx {
            lock(&self.limiters.tx).update(limit)?;
        }
        Ok(())
    }

    /// The limits in force: (receive, transmit).
    pub fn rate_limits(&self) -> (RateLimit, RateLimit) {
        (lock(&self.limiters.rx).config(), lock(&self.limiters.tx).config())
    }
}
