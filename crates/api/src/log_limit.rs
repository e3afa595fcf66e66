//! A log-line limiter for lines a client can cause at will (refused, evicted and timed-out
//! connections): a flood of them must not flood the host's log, yet the operator should learn
//! how many were left out.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Lets through at most `burst` lines per `interval`; the rest are counted, and the count is
/// handed to the next line let through so that it can say how many were suppressed.
#[derive(Debug)]
pub struct LogLimiter {
    burst: u32,
    interval: Duration,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Option<Instant>,
    emitted: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter letting `burst` lines through per `interval`.
    pub const fn new(burst: u32, interval: Duration) -> LogLimiter {
        LogLimiter { burst, interval, window: Mutex::new(Window { start: None, emitted: 0, suppressed: 0 }) }
    }

    /// Whether a line may be logged now: `Some(n)` with the number of lines suppressed since the
    /// last one let through (to be mentioned in this one), or `None` to drop this line.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        // The counters stay consistent under any panic elsewhere: keep counting after a poison.
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        if window.start.is_none_or(|start| now.saturating_duration_since(start) >= self.interval) {
            window.start = Some(now);
            window.emitted = 0;
        }
        if window.emitted >= self.burst {
            window.suppressed += 1;
            return None;
        }
        window.emitted += 1;
        Some(std::mem::take(&mut window.suppressed))
    }
}

/// Logs a WARN line through `$limiter` ([`LogLimiter`]), adding how many were suppressed before it.
/// A macro so that the line keeps its caller's module as its target.
macro_rules! limited_warn {
    ($limiter:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $limiter.admit() {
            if suppressed == 0 {
                tracing::warn!($($arg)+);
            } else {
                tracing::warn!("{} ({suppressed} similar lines suppressed)", format_args!($($arg)+));
            }
        }
    };
}
pub(crate) use limited_warn;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_interval_then_the_count_of_what_was_left_out() {
        let limiter = LogLimiter::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let admitted: Vec<_> = (0..1000).map(|_| limiter.admit_at(t0)).collect();
        assert_eq!(admitted.iter().filter(|a| a.is_some()).count(), 3);
        assert_eq!(&admitted[..4], &[Some(0), Some(0), Some(0), None]);
        // Still inside the interval: nothing more.
        assert_eq!(limiter.admit_at(t0 + Duration::from_secs(9)), None);
        // The next interval's first line carries the count of everything dropped.
        assert_eq!(limiter.admit_at(t0 + Duration::from_secs(10)), Some(998));
        assert_eq!(limiter.admit_at(t0 + Duration::from_secs(10)), Some(0));
    }
}
