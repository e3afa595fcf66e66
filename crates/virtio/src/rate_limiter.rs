//! Token-bucket rate limiting for a device's requests, shaped after Firecracker's `RateLimiter`
//! (the API's `rate_limiter: {bandwidth, ops}` with buckets `{size, one_time_burst, refill_time}`).
//!
//! A [`RateLimiter`] has up to two buckets: bandwidth (one token per byte) and ops (one token per
//! request). A request passes only if both buckets let it ([`RateLimiter::consume`]); when one does
//! not, nothing is taken from either, and a timerfd is armed for the moment the bucket will hold
//! enough again, so the device's worker can stop taking requests and wait on [`RateLimiter::fd`].
//!
//! Tokens come back continuously (`size` of them per `refill_time`), counted exactly: the budget is
//! kept in units of token × nanosecond, so no rounding accumulates however often it is refilled.
//!
//! A request larger than a bucket (a 1 MiB write against a 64 KiB bandwidth bucket) could never
//! fit, and refusing it would wedge the queue. Firecracker lets such a request through at once,
//! empties the bucket, and blocks the whole limiter for the excess (`ratio × refill_time`, cut to
//! whole milliseconds, so an excess below a millisecond arms a zero timer, which disarms it). Here
//! it waits until its bucket is full, then passes and leaves the bucket in debt (a negative
//! budget) that the refill repays before anything else passes. The long-run rate is the same, the
//! burst never exceeds the bucket, and there is no separate "blocked" state to get stuck in.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

/// The longest `refill_time` accepted, in milliseconds (about 49 days): it keeps every budget
/// computation (tokens × nanoseconds) well inside 128 bits, whatever the size.
pub const MAX_REFILL_TIME_MS: u64 = u32::MAX as u64;

const NANOS_PER_MILLI: u128 = 1_000_000;

/// One token bucket's configuration, as Firecracker's API spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bucket {
    /// Tokens the bucket holds when full, and how many come back per `refill_time`.
    pub size: u64,
    /// Extra tokens spent before the bucket's own, once; they do not come back.
    pub one_time_burst: u64,
    /// Milliseconds for an empty bucket to fill again.
    pub refill_time: u64,
}

/// A device's rate limits. A missing bucket, or one of size 0 or `refill_time` 0 (Firecracker's
/// way of saying "no limit"), does not limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimit {
    /// Bytes moved.
    pub bandwidth: Option<Bucket>,
    /// Requests.
    pub ops: Option<Bucket>,
}

/// Why a rate limiter cannot be made or changed.
#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    #[error("a {which} refill_time of {refill_time} ms is longer than the longest allowed ({MAX_REFILL_TIME_MS} ms)")]
    RefillTimeTooLong { which: &'static str, refill_time: u64 },
    #[error("cannot make the rate limiter's timer: {0}")]
    Timer(#[source] io::Error),
}

/// A bucket that limits, with its state.
#[derive(Debug)]
struct TokenBucket {
    config: Bucket,
    /// Nanoseconds to refill `size` tokens.
    refill_ns: u128,
    /// Tokens left, times `refill_ns`; negative while a request larger than the bucket is repaid.
    budget: i128,
    /// What `budget` is when the bucket is full: `size × refill_ns`.
    full: i128,
    one_time_burst: u64,
    /// When `budget` was last brought up to date.
    last_update: Instant,
}

impl TokenBucket {
    /// The bucket for `config`, full, or `None` when it does not limit.
    fn new(config: Bucket, which: &'static str, now: Instant) -> Result<Option<TokenBucket>, RateLimitError> {
        if config.size == 0 || config.refill_time == 0 {
            return Ok(None);
        }
        if config.refill_time > MAX_REFILL_TIME_MS {
            return Err(RateLimitError::RefillTimeTooLong { which, refill_time: config.refill_time });
        }
        let refill_ns = u128::from(config.refill_time) * NANOS_PER_MILLI;
        // At most 2^64 × 2^52 = 2^116: far from overflowing.
        let full = (u128::from(config.size) * refill_ns) as i128;
        Ok(Some(TokenBucket {
            config,
            refill_ns,
            budget: full,
            full,
            one_time_burst: config.one_time_burst,
            last_update: now,
        }))
    }

    /// Adds what came back since the last update, up to a full bucket.
    fn refill(&mut self, now: Instant) {
        // A clock read before the last update (callers passing their own times) adds nothing.
        let elapsed = now.saturating_duration_since(self.last_update).as_nanos();
        self.last_update = self.last_update.max(now);
        let size = u128::from(self.config.size);
        let missing = (self.full - self.budget) as u128;
        // Compare before multiplying: a long idle time times a large size could overflow.
        if elapsed >= missing.div_ceil(size) {
            self.budget = self.full;
        } else {
            // elapsed × size < missing + size, which fits.
            self.budget += (elapsed * size) as i128;
        }
    }

    /// How many of `tokens` the one-time burst does not cover.
    fn beyond_burst(&self, tokens: u64) -> u64 {
        tokens.saturating_sub(self.one_time_burst)
    }

    /// `Ok` if `tokens` may pass now, else how long until they may. Takes nothing.
    fn check(&mut self, tokens: u64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let rest = self.beyond_burst(tokens);
        if rest == 0 {
            return Ok(());
        }
        // A request larger than the bucket waits for a full bucket (see the module's note).
        let needed = (u128::from(rest.min(self.config.size)) * self.refill_ns) as i128;
        if self.budget >= needed {
            return Ok(());
        }
        let missing = (needed - self.budget) as u128;
        let nanos = missing.div_ceil(u128::from(self.config.size));
        Err(Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)))
    }

    /// Takes `tokens`, after a [`TokenBucket::check`] at the same time said they may pass.
    fn take(&mut self, tokens: u64) {
        let from_burst = tokens.min(self.one_time_burst);
        self.one_time_burst -= from_burst;
        let rest = tokens - from_burst;
        // At most 2^64 × 2^52: the budget stays far above i128's lowest value.
        self.budget -= (u128::from(rest) * self.refill_ns) as i128;
    }
}

/// Bandwidth and ops buckets for one device, and the timer that says when to try again.
#[derive(Debug)]
pub struct RateLimiter {
    config: RateLimit,
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
}

impl RateLimiter {
    /// A limiter with full buckets (and their one-time bursts).
    pub fn new(config: RateLimit) -> Result<RateLimiter, RateLimitError> {
        RateLimiter::new_at(config, Instant::now())
    }

    /// [`RateLimiter::new`] with the clock read by the caller (tests run on simulated time).
    fn new_at(config: RateLimit, now: Instant) -> Result<RateLimiter, RateLimitError> {
        let timer = TimerFd::new().map_err(|e| RateLimitError::Timer(e.into()))?;
        set_nonblocking(timer.as_raw_fd()).map_err(RateLimitError::Timer)?;
        Ok(RateLimiter {
            config,
            bandwidth: bucket(config.bandwidth, "bandwidth", now)?,
            ops: bucket(config.ops, "ops", now)?,
            timer,
        })
    }

    /// Whether `config` would be taken by [`RateLimiter::new`] or [`RateLimiter::update`],
    /// without making a timer: a device with several limiters checks every new limit before
    /// changing any.
    pub fn validate(config: RateLimit) -> Result<(), RateLimitError> {
        let now = Instant::now();
        bucket(config.bandwidth, "bandwidth", now)?;
        bucket(config.ops, "ops", now)?;
        Ok(())
    }

    /// The configuration in force, for a PATCH that changes one bucket and keeps the other.
    pub fn config(&self) -> RateLimit {
        self.config
    }

    /// Whether any bucket limits at all (a worker can skip the limiter when not).
    pub fn is_limiting(&self) -> bool {
        self.bandwidth.is_some() || self.ops.is_some()
    }

    /// Replaces both buckets (a PATCH): each starts full, with its one-time burst, as a new
    /// limiter's would. The timer is armed to fire at once: a worker waiting for the old buckets
    /// (perhaps for a long time, or for a limit now removed) looks again now.
    pub fn update(&mut self, config: RateLimit) -> Result<(), RateLimitError> {
        self.update_at(config, Instant::now())
    }

    fn update_at(&mut self, config: RateLimit, now: Instant) -> Result<(), RateLimitError> {
        let bandwidth = bucket(config.bandwidth, "bandwidth", now)?;
        let ops = bucket(config.ops, "ops", now)?;
        (self.config, self.bandwidth, self.ops) = (config, bandwidth, ops);
        // A zero duration would disarm it; if arming fails (it cannot with a valid timerfd), the
        // worker still looks again at its next queue notification or pending timer.
        if let Err(e) = self.timer.reset(Duration::from_nanos(1), None) {
            tracing::error!("cannot arm the rate limiter's timer: {e}");
        }
        Ok(())
    }

    /// Asks to pass one request of `bytes`: `true` takes one op and `bytes` of bandwidth; `false`
    /// takes nothing and arms the timer for when this request would pass, so the worker should
    /// stop processing the queue until [`RateLimiter::fd`] is readable.
    pub fn consume(&mut self, bytes: u64) -> bool {
        self.consume_at(bytes, Instant::now()).is_ok()
    }

    /// The timerfd to wait on after a refused [`RateLimiter::consume`]; readable when the
    /// request should pass.
    pub fn fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// Clears the timer after [`RateLimiter::fd`] became readable. Returns whether it had
    /// fired (`false` for a spurious wake-up; the timerfd is non-blocking, so this never waits).
    pub fn event_handler(&mut self) -> io::Result<bool> {
        match self.timer.wait() {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == libc::EAGAIN => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// [`RateLimiter::consume`] at `now`; a refusal says how long until the request would pass
    /// (what the timer was armed for).
    fn consume_at(&mut self, bytes: u64, now: Instant) -> Result<(), Duration> {
        match self.check(bytes, now) {
            Ok(()) => {
                if let Some(bucket) = &mut self.bandwidth {
                    bucket.take(bytes);
                }
                if let Some(bucket) = &mut self.ops {
                    bucket.take(1);
                }
                Ok(())
            }
            Err(wait) => {
                // A zero duration would disarm the timer: wait at least a nanosecond. Failing to
                // arm it cannot happen with a valid timerfd and duration; if it did, the worker
                // would retry at its next queue notification.
                if let Err(e) = self.timer.reset(wait.max(Duration::from_nanos(1)), None) {
                    tracing::error!("cannot arm the rate limiter's timer: {e}");
                }
                Err(wait)
            }
        }
    }

    /// `Ok` if a request of `bytes` may pass now in both buckets, else the longer of the waits.
    fn check(&mut self, bytes: u64, now: Instant) -> Result<(), Duration> {
        let bandwidth = self.bandwidth.as_mut().map_or(Ok(()), |b| b.check(bytes, now));
        let ops = self.ops.as_mut().map_or(Ok(()), |b| b.check(1, now));
        match (bandwidth, ops) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(a), Err(b)) => Err(a.max(b)),
            (Err(wait), Ok(())) | (Ok(()), Err(wait)) => Err(wait),
        }
    }
}

fn bucket(
    config: Option<Bucket>,
    which: &'static str,
    now: Instant,
) -> Result<Option<TokenBucket>, RateLimitError> {
    config.map_or(Ok(None), |config| TokenBucket::new(config, which, now))
}

/// A worker only reads the timer when poll says it is readable, but a non-blocking read makes a
/// spurious wake-up harmless instead of a hang.
fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL only reads the flags of the timerfd, which the limiter owns and keeps open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL only changes the status flags of the same descriptor.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn bucket(size: u64, one_time_burst: u64, refill_time: u64) -> Option<Bucket> {
        Some(Bucket { size, one_time_burst, refill_time })
    }

    fn new_limiter(config: RateLimit) -> (RateLimiter, Instant) {
        let start = Instant::now();
        (RateLimiter::new_at(config, start).unwrap(), start)
    }

    fn bandwidth(size: u64, one_time_burst: u64, refill_time: u64) -> RateLimit {
        RateLimit { bandwidth: bucket(size, one_time_burst, refill_time), ops: None }
    }

    #[test]
    fn the_rate_holds_over_a_simulated_window() {
        // 1 MiB per 100 ms = 10 MiB/s; 4 KiB requests for 10 simulated seconds, each refusal
        // waiting exactly as long as the timer would.
        let (mut limiter, start) = new_limiter(bandwidth(1 << 20, 0, 100));
        let (mut now, end) = (start, start + Duration::from_secs(10));
        let mut passed = 0u64;
        while now < end {
            match limiter.consume_at(4096, now) {
                Ok(()) => passed += 4096,
                Err(wait) => now += wait,
            }
        }
        // The full bucket at the start comes on top of the rate.
        let rate = (passed - (1 << 20)) as f64 / 10.0;
        let expected = (10u64 << 20) as f64;
        assert!((rate / expected - 1.0).abs() < 0.05, "{rate} bytes/s against {expected}");
    }

    #[test]
    fn ops_are_limited_too_and_a_refusal_takes_nothing_from_the_other_bucket() {
        let config = RateLimit { bandwidth: bucket(1000, 0, 1000), ops: bucket(10, 0, 1000) };
        let (mut limiter, start) = new_limiter(config);
        for _ in 0..10 {
            assert_eq!(limiter.consume_at(10, start), Ok(()));
        }
        // Out of ops: one comes back every 100 ms, and the 900 bytes left stay.
        assert_eq!(limiter.consume_at(10, start), Err(100 * MS));
        let later = start + 100 * MS;
        assert_eq!(limiter.consume_at(900, later), Ok(()), "the refused request took no bandwidth");
    }

    #[test]
    fn the_one_time_burst_is_spent_first_and_only_once() {
        let (mut limiter, start) = new_limiter(bandwidth(1000, 5000, 1000));
        // 5000 from the burst and 1000 from the bucket.
        assert_eq!(limiter.consume_at(6000, start), Ok(()));
        assert!(limiter.consume_at(1, start).is_err());
        // A full refill later only the bucket's own tokens are back.
        let later = start + Duration::from_secs(1);
        assert_eq!(limiter.consume_at(1000, later), Ok(()));
        assert_eq!(limiter.consume_at(1, later), Err(MS));
    }

    #[test]
    fn tokens_come_back_continuously_and_exactly() {
        // One token per millisecond.
        let (mut limiter, start) = new_limiter(bandwidth(1000, 0, 1000));
        assert_eq!(limiter.consume_at(1000, start), Ok(()));
        assert_eq!(limiter.consume_at(1, start + MS / 2), Err(MS / 2));
        assert_eq!(limiter.consume_at(1, start + MS), Ok(()));
        assert_eq!(limiter.consume_at(1, start + MS), Err(MS));
        // Many small refills add up to what one large one would: no rounding lost on the way.
        let mut now = start + MS;
        for _ in 0..499 {
            now += Duration::from_micros(1);
            assert!(limiter.consume_at(1, now).is_err());
        }
        assert_eq!(limiter.consume_at(1, start + 2 * MS), Ok(()));
        // The bucket never holds more than its size, however long it idles.
        let idle = start + Duration::from_secs(3600);
        assert_eq!(limiter.consume_at(1000, idle), Ok(()));
        assert!(limiter.consume_at(1, idle).is_err());
    }

    #[test]
    fn the_timer_is_armed_for_when_the_request_would_pass() {
        let (mut limiter, start) = new_limiter(bandwidth(1000, 0, 1000));
        assert_eq!(limiter.consume_at(800, start), Ok(()));
        // 200 left: 250 more needs 50 ms.
        assert_eq!(limiter.consume_at(250, start), Err(50 * MS));
        assert!(limiter.timer.is_armed().unwrap());
        // The timer is not due yet: clearing it now is a spurious wake-up, not a wait.
        assert!(!limiter.event_handler().unwrap());
        assert_eq!(limiter.consume_at(250, start + 50 * MS), Ok(()));
    }

    #[test]
    fn the_timerfd_becomes_readable_when_tokens_are_back() {
        // A 1 ms refill, so the real clock's wait is short.
        let mut limiter = RateLimiter::new(bandwidth(1000, 0, 1)).unwrap();
        assert!(limiter.consume(1000));
        assert!(!limiter.consume(1000));
        let mut poll = libc::pollfd { fd: limiter.fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll reads and writes the one pollfd, which lives across the call.
        let ready = unsafe { libc::poll(&mut poll, 1, 10_000) };
        assert_eq!(ready, 1, "the timer did not fire within 10 s");
        assert!(limiter.event_handler().unwrap());
        assert!(!limiter.event_handler().unwrap(), "the timer was cleared");
        assert!(limiter.consume(1000));
    }

    #[test]
    fn a_request_larger_than_the_bucket_passes_when_it_is_full_and_the_debt_is_repaid() {
        let (mut limiter, start) = new_limiter(bandwidth(1000, 0, 1000));
        assert_eq!(limiter.consume_at(100, start), Ok(()));
        // Not full: the large request waits until it is (100 ms).
        assert_eq!(limiter.consume_at(3000, start), Err(100 * MS));
        let full = start + 100 * MS;
        assert_eq!(limiter.consume_at(3000, full), Ok(()));
        // 2000 tokens of debt, then one more token: 2001 ms.
        assert_eq!(limiter.consume_at(1, full), Err(2001 * MS));
        assert_eq!(limiter.consume_at(1, full + 2001 * MS), Ok(()));
    }

    #[test]
    fn a_bucket_of_size_or_refill_time_zero_does_not_limit() {
        let config = RateLimit { bandwidth: bucket(0, 0, 100), ops: bucket(10, 0, 0) };
        let (mut limiter, start) = new_limiter(config);
        assert!(!limiter.is_limiting());
        for _ in 0..1000 {
            assert_eq!(limiter.consume_at(u64::MAX, start), Ok(()));
        }
    }

    #[test]
    fn update_replaces_the_buckets_full_and_refuses_absurd_refill_times() {
        let (mut limiter, start) = new_limiter(bandwidth(1000, 0, 1000));
        assert_eq!(limiter.consume_at(1000, start), Ok(()));
        let ops_only = RateLimit { bandwidth: None, ops: bucket(1, 0, 1000) };
        limiter.update_at(ops_only, start).unwrap();
        assert_eq!(limiter.config(), ops_only);
        assert_eq!(limiter.consume_at(1 << 30, start), Ok(()));
        assert_eq!(limiter.consume_at(1, start), Err(Duration::from_secs(1)));

        // The worker is woken to look at the new buckets.
        let mut poll = libc::pollfd { fd: limiter.fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll reads and writes the one pollfd, which lives across the call.
        assert_eq!(unsafe { libc::poll(&mut poll, 1, 10_000) }, 1, "the update did not wake the worker");
        assert!(limiter.event_handler().unwrap());

        let absurd = bandwidth(1, 0, u64::MAX);
        let error = limiter.update_at(absurd, start).unwrap_err();
        assert!(matches!(error, RateLimitError::RefillTimeTooLong { which: "bandwidth", .. }), "{error}");
        assert_eq!(limiter.config(), ops_only, "a refused update changes nothing");
        assert!(RateLimiter::new(absurd).is_err());
    }

    #[test]
    fn extreme_sizes_and_times_do_not_overflow() {
        let (mut limiter, start) = new_limiter(bandwidth(u64::MAX, u64::MAX, MAX_REFILL_TIME_MS));
        assert_eq!(limiter.consume_at(u64::MAX, start), Ok(()));
        assert_eq!(limiter.consume_at(u64::MAX, start), Ok(()));
        assert!(limiter.consume_at(u64::MAX, start).is_err());
        assert_eq!(limiter.consume_at(u64::MAX, start + Duration::from_secs(1 << 40)), Ok(()));
        let (mut tiny, start) = new_limiter(bandwidth(1, 0, MAX_REFILL_TIME_MS));
        assert_eq!(tiny.consume_at(u64::MAX, start), Ok(()));
        let wait = tiny.consume_at(1, start).unwrap_err();
        assert_eq!(wait, Duration::from_nanos(u64::MAX), "a wait beyond u64 nanoseconds saturates");
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 64, ..Default::default() })]

        /// Whatever the requests and the times they come at, no more passes than the burst, the
        /// bucket (or the one largest request) and the refill since the start.
        #[test]
        fn never_more_than_the_bucket_the_burst_and_the_refill(
            size in 1u64..100_000,
            burst in 0u64..100_000,
            refill_ms in 1u64..1000,
            requests in proptest::collection::vec((0u64..300_000, 0u64..5_000_000), 1..200),
        ) {
            let (mut limiter, start) = new_limiter(bandwidth(size, burst, refill_ms));
            let (mut now, mut passed, mut largest) = (start, 0u128, 0u64);
            for (bytes, gap_ns) in requests {
                now += Duration::from_nanos(gap_ns);
                if limiter.consume_at(bytes, now).is_ok() {
                    passed += u128::from(bytes);
                    largest = largest.max(bytes);
                }
            }
            let elapsed = now.duration_since(start).as_nanos();
            let refilled = elapsed * u128::from(size) / (u128::from(refill_ms) * NANOS_PER_MILLI);
            let bound = u128::from(burst) + u128::from(size.max(largest)) + refilled;
            proptest::prop_assert!(passed <= bound, "{} passed, at most {}", passed, bound);
        }
    }
}
