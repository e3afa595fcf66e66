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

    /// Whether a line may be logged now, and what it should add; `None` to drop it.
    pub fn admit(&self) -> Option<Admitted> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<Admitted> {
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
        Some(Admitted {
            suppressed: std::mem::take(&mut window.suppressed),
            last: (window.emitted == self.burst).then_some(self.interval),
        })
    }
}

/// A line let through by [`LogLimiter::admit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// Lines dropped since the last one let through.
    pub suppressed: u64,
    /// This is the interval's last line: more are dropped for up to this long.
    pub last: Option<Duration>,
}

impl std::fmt::Display for Admitted {
    /// What the line should add: nothing, or how many lines it follows and whether more are
    /// held back, e.g. ` (12 similar lines suppressed; more suppressed for up to 10 s)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut notes = Vec::new();
        if self.suppressed > 0 {
            notes.push(format!("{} similar lines suppressed", self.suppressed));
        }
        if let Some(interval) = self.last {
            notes.push(format!("more suppressed for up to {} s", interval.as_secs_f64()));
        }
        if !notes.is_empty() {
            write!(f, " ({})", notes.join("; "))?;
        }
        Ok(())
    }
}

/// Logs a WARN line through `$limiter` ([`LogLimiter`]), noting what was or will be suppressed.
/// A macro so that the line keeps its caller's module as its target.
macro_rules! limited_warn {
    ($limiter:expr, $($arg:tt)+) => {
        if let Some(admitted) = $limiter.admit() {
            tracing::warn!("{}{admitted}", format_args!($($arg)+));
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
        let notes: Vec<_> = admitted[..4].iter().map(|a| a.map(|a| a.to_string())).collect();
        assert_eq!(
            notes,
            [Some(""), Some(""), Some(" (more suppressed for up to 10 s)"), None]
                .map(|n| n.map(String::from))
        );
        // Still inside the interval: nothing more.
        assert_eq!(limiter.admit_at(t0 + Duration::from_secs(9)), None);
        // The next interval's first line carries the count of everything dropped.
        let next = limiter.admit_at(t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(next.to_string(), " (998 similar lines suppressed)");
        assert_eq!(limiter.admit_at(t0 + Duration::from_secs(10)).unwrap().suppressed, 0);
    }
}
