//! The adaptive poll window of a virtio-blk worker: how long it busy-polls its rings, with the
//! guest's notifications off, before it turns them back on and sleeps.
//!
//! At queue depth 1 a request's cost is mostly the round trip of a notification: the guest's
//! exit, the worker's wake-up, the completion, the interrupt. A worker that keeps looking at the
//! available ring for a while after it served one finds the next request without the wake-up
//! (and, from a driver that honours the suppression, without the exit). Polling costs a host CPU
//! while it lasts, so the window adapts to what it finds, by QEMU's rule (`aio-posix.c`
//! `adjust_polling_time`, itself KVM's halt-polling rule), measured on the time the worker was
//! idle (from when it ran out of work to the event that ended the idleness):
//! - work found while polling: the window was right, it stays;
//! - the worker slept and was woken within the maximum: a longer window would have found the work,
//!   so it doubles (from nothing to [`START`]), up to the maximum;
//! - the worker was idle longer than the maximum: polling is wasted on this guest now, so the
//!   window halves (KVM's `halt_poll_ns_shrink`; QEMU's default drops it to 0 at once, which makes
//!   a single long pause undo everything), and below [`START`] it is 0, no polling.

use std::time::{Duration, Instant};

/// The window polling grows from (QEMU starts at 4 µs too): shorter is not worth the loop.
pub(super) const START: Duration = Duration::from_micros(4);

/// A device's poll window and where the worker stands in it.
#[derive(Debug)]
pub(super) struct AdaptivePoll {
    /// The longest window; zero when polling is off.
    max: Duration,
    /// The current window, 0 to `max`.
    window: Duration,
    /// When the worker last ran out of work; `None` while it has some.
    idle_since: Option<Instant>,
    /// Until when the worker polls (notifications off); `None` when it sleeps on them.
    deadline: Option<Instant>,
}

impl AdaptivePoll {
    /// Polling for up to `max` (`None` or zero: never). The window starts at nothing and grows
    /// only once the guest shows it sends requests close together.
    pub(super) fn new(max: Option<Duration>) -> AdaptivePoll {
        AdaptivePoll {
            max: max.unwrap_or_default(),
            window: Duration::ZERO,
            idle_since: None,
            deadline: None,
        }
    }

    /// Polling for a window of `window` always: long enough for a test to act within it
    /// (the idle time never exceeds it, nor grows it).
    #[cfg(test)]
    pub(super) fn fixed(window: Duration) -> AdaptivePoll {
        AdaptivePoll { max: window, window, idle_since: None, deadline: None }
    }

    /// The current window.
    #[cfg(test)]
    pub(super) fn window(&self) -> Duration {
        self.window
    }

    /// Whether the device polls at all (given a maximum window).
    pub(super) fn enabled(&self) -> bool {
        !self.max.is_zero()
    }

    /// Whether the worker is in a window now (its notifications are off).
    pub(super) fn polling(&self) -> bool {
        self.deadline.is_some()
    }

    /// Whether the worker, out of work now, will poll: then it leaves notifications off.
    pub(super) fn will_poll(&self) -> bool {
        !self.window.is_zero()
    }

    /// The worker ran out of work at `now`: a new window starts (if there is one).
    pub(super) fn idle(&mut self, now: Instant) {
        self.idle_since = Some(now);
        self.deadline = self.will_poll().then(|| now + self.window);
    }

    /// An event (a notification, a completion) woke the worker at `now`: adapts the window to how
    /// long it was idle. An event during a window is work polling would have found: no change.
    pub(super) fn woke(&mut self, now: Instant) {
        let Some(since) = self.idle_since.take() else { return };
        if self.polling() {
            return;
        }
        let idle = now.saturating_duration_since(since);
        if idle > self.max {
            self.shrink();
        } else if idle > self.window {
            self.grow();
        }
    }

    /// Polling found work: the window was long enough, it stays (the work is served and the
    /// worker goes [`AdaptivePoll::idle`] again).
    pub(super) fn found(&mut self) {
        self.idle_since = None;
        self.deadline = None;
    }

    /// Whether the window has passed at `now` (then the worker ends it: notifications back on,
    /// one more look at the rings, and sleep). The idle time goes on counting until the next event.
    pub(super) fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|deadline| now >= deadline)
    }

    /// The window is over: the worker sleeps on notifications.
    pub(super) fn end(&mut self) {
        self.deadline = None;
    }

    /// Ends the window at once, but not before the worker's next look: for a worker stopped
    /// in its window (a snapshot's hold).
    pub(super) fn expire_now(&mut self, now: Instant) {
        self.deadline = Some(now);
    }

    fn grow(&mut self) {
        self.window = match self.window.is_zero() {
            true => START,
            false => self.window.saturating_mul(2),
        }
        .min(self.max);
    }

    fn shrink(&mut self) {
        self.window /= 2;
        if self.window < START {
            self.window = Duration::ZERO;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(50);

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// Idle from `at`, then woken `after` later (sleeping: no window, or one that passed).
    fn sleep_then_wake(poll: &mut AdaptivePoll, at: Instant, after: Duration) {
        poll.idle(at);
        if poll.expired(at + after) || !poll.polling() {
            poll.end();
        }
        poll.woke(at + after);
    }

    #[test]
    fn off_never_polls() {
        let mut poll = AdaptivePoll::new(None);
        let now = Instant::now();
        for _ in 0..10 {
            sleep_then_wake(&mut poll, now, us(1));
            assert!(!poll.will_poll());
        }
        poll.idle(now);
        assert!(!poll.polling());
    }

    #[test]
    fn the_window_grows_while_work_comes_soon_and_shrinks_when_it_does_not() {
        let mut poll = AdaptivePoll::new(Some(MAX));
        let now = Instant::now();
        assert_eq!(poll.window(), Duration::ZERO, "off until the guest shows it is busy");
        // Woken 30 µs after running out of work, each time: polling that long would have found it.
        let mut windows = Vec::new();
        for _ in 0..6 {
            sleep_then_wake(&mut poll, now, us(30));
            windows.push(poll.window().as_micros());
        }
        assert_eq!(windows, [4, 8, 16, 32, 32, 32], "doubles until the window covers the gap");
        // The window (32 µs) covers a 30 µs gap: found while polling, no change.
        poll.idle(now);
        assert!(poll.polling() && !poll.expired(now + us(30)));
        poll.found();
        assert_eq!(poll.window(), us(32));
        // Gaps under the maximum but beyond the window grow it to the maximum, no further.
        for _ in 0..3 {
            sleep_then_wake(&mut poll, now, us(45));
        }
        assert_eq!(poll.window(), MAX);
        // Idle beyond the maximum: halves down to nothing.
        let mut windows = Vec::new();
        for _ in 0..5 {
            sleep_then_wake(&mut poll, now, us(500));
            windows.push(poll.window().as_micros());
        }
        assert_eq!(windows, [25, 12, 6, 0, 0]);
        assert!(!poll.will_poll());
    }

    #[test]
    fn a_window_ends_at_its_deadline_and_an_event_inside_it_changes_nothing() {
        let mut poll = AdaptivePoll::new(Some(MAX));
        let now = Instant::now();
        for _ in 0..4 {
            sleep_then_wake(&mut poll, now, us(20));
        }
        assert_eq!(poll.window(), us(32));
        poll.idle(now);
        assert!(!poll.expired(now + us(31)));
        assert!(poll.expired(now + us(32)));
        // A notification that still came (a driver that ignores the suppression) during the
        // window is work the window would have found.
        poll.woke(now + us(10));
        assert_eq!(poll.window(), us(32));
    }
}
