//! The one rate limiter for log lines a guest can cause.
//!
//! A guest can make a device fail on every request it sends (a bad descriptor head, overlapping
//! BARs, a request the disk refuses) thousands of times a second; logging each would fill the
//! host's disk and bury everything else. [`GuestErrorLog`] logs the first
//! [`LINES_PER_INTERVAL`] problems of each [`INTERVAL`], counts the rest, and when the next
//! interval starts (or the log is flushed or dropped) says in one line how many it left out.
//! Host-caused failures are not for it: those are logged as they happen.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How many problems a [`GuestErrorLog`] logs per [`INTERVAL`].
pub const LINES_PER_INTERVAL: u32 = 10;

/// The window [`LINES_PER_INTERVAL`] applies to.
pub const INTERVAL: Duration = Duration::from_secs(60);

/// Logs the problems a guest causes one device, or at one site, at `warn` without letting the
/// guest fill the host's log (see the module docs).
///
/// One per device (the virtio transports keep theirs across resets, else a guest could reset the
/// device for fresh lines) or one `static` per site for code that has no device at hand.
pub struct GuestErrorLog {
    /// Names the device or site in every line ("virtio-rng (virtio-mmio)").
    name: Cow<'static, str>,
    /// Whether each line starts with `name` (a device's log) or is the problem alone (a site's
    /// log, whose lines name their device themselves); the summary always names it.
    prefix: bool,
    lines: u32,
    interval: Duration,
    window: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    /// When the current window began; none before the first problem and after a flush.
    start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

/// What [`GuestErrorLog::log_at`] does with one problem.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// Log it, first saying how many problems the previous window left out (if any).
    Log { suppressed_before: u64 },
    /// Count it only.
    Suppress,
}

impl GuestErrorLog {
    /// The log of the device `device`, which starts each line.
    pub fn new(device: impl Into<String>) -> GuestErrorLog {
        GuestErrorLog::with_limit(device, LINES_PER_INTERVAL, INTERVAL)
    }

    /// A log for one site that has no device at hand, usable as a `static`: the lines are the
    /// problems alone (they name their device), the summary names `site`.
    pub const fn site(site: &'static str) -> GuestErrorLog {
        GuestErrorLog {
            name: Cow::Borrowed(site),
            prefix: false,
            lines: LINES_PER_INTERVAL,
            interval: INTERVAL,
            window: Mutex::new(Window { start: None, logged: 0, suppressed: 0 }),
        }
    }

    /// A device's log that allows `lines` per `interval` (tests, and sites that need another pace).
    pub fn with_limit(device: impl Into<String>, lines: u32, interval: Duration) -> GuestErrorLog {
        GuestErrorLog {
            name: Cow::Owned(device.into()),
            prefix: true,
            lines,
            interval,
            window: Mutex::new(Window::default()),
        }
    }

    /// Logs one problem the guest caused, unless this window's lines are used up.
    pub fn log(&self, problem: fmt::Arguments<'_>) {
        self.log_at(Instant::now(), problem);
    }

    /// Says how many problems were left out since the last line about it, if any, and starts
    /// a fresh window. Dropping the log does this too.
    pub fn flush(&self) {
        let suppressed = {
            let mut window = self.lock();
            std::mem::take(&mut *window).suppressed
        };
        self.summarize(suppressed);
    }

    fn log_at(&self, now: Instant, problem: fmt::Arguments<'_>) {
        // Decided under the lock, logged after it: a slow log writer must not serialize the
        // device threads that report problems.
        let Decision::Log { suppressed_before } = self.decide(now) else { return };
        self.summarize(suppressed_before);
        if self.prefix {
            tracing::warn!("{}: {problem}", self.name);
        } else {
            tracing::warn!("{problem}");
        }
    }

    fn decide(&self, now: Instant) -> Decision {
        let mut window = self.lock();
        let expired = window.start.is_none_or(|start| now.saturating_duration_since(start) >= self.interval);
        let mut suppressed_before = 0;
        if expired {
            suppressed_before = window.suppressed;
            *window = Window { start: Some(now), logged: 0, suppressed: 0 };
        }
        if window.logged < self.lines {
            window.logged += 1;
            Decision::Log { suppressed_before }
        } else {
            window.suppressed = window.suppressed.saturating_add(1);
            Decision::Suppress
        }
    }

    fn summarize(&self, suppressed: u64) {
        if suppressed > 0 {
            let (name, lines, seconds) = (&self.name, self.lines, self.interval.as_secs());
            tracing::warn!(
                "{name}: {suppressed} more problems caused by the guest were not logged \
                 (at most {lines} are logged per {seconds} s)"
            );
        }
    }

    /// A poisoned lock only means a thread panicked between plain assignments of counters.
    fn lock(&self) -> MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for GuestErrorLog {
    fn drop(&mut self) {
        self.flush();
    }
}

impl fmt::Debug for GuestErrorLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestErrorLog").field("name", &self.name).finish_non_exhaustive()
    }
}

/// Records the events logged on the current thread, for tests that count log lines.
#[cfg(any(test, feature = "test-support"))]
pub mod capture {
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Level, Metadata, Subscriber};

    /// One logged event: its level and message.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Line {
        /// The event's level.
        pub level: Level,
        /// Its `message` field, formatted.
        pub message: String,
    }

    /// Runs `f` with a subscriber that records every event this thread logs, and returns them.
    pub fn lines<R>(f: impl FnOnce() -> R) -> (R, Vec<Line>) {
        let recorder = Recorder::default();
        let lines = recorder.0.clone();
        let result = tracing::subscriber::with_default(recorder, f);
        let lines = std::mem::take(&mut *lines.lock().unwrap_or_else(|e| e.into_inner()));
        (result, lines)
    }

    /// The `warn` and `error` lines of `lines`: what an operator sees by default.
    pub fn warnings(lines: &[Line]) -> Vec<&str> {
        lines.iter().filter(|l| l.level <= Level::WARN).map(|l| l.message.as_str()).collect()
    }

    /// Asserts what a flood of one site's problems left in `lines`: between one and
    /// [`super::LINES_PER_INTERVAL`] warnings starting with `line_prefix`, and last the summary
    /// of the limiter named `site`, counting at least `suppressed_at_least` problems left out.
    pub fn assert_limited(lines: &[Line], line_prefix: &str, site: &str, suppressed_at_least: u64) {
        let warned = warnings(lines);
        let logged = warned.iter().filter(|l| l.starts_with(line_prefix)).count();
        assert!((1..=super::LINES_PER_INTERVAL as usize).contains(&logged), "{warned:?}");
        let summary = warned.last().unwrap_or_else(|| panic!("nothing logged"));
        let suppressed: u64 = summary
            .strip_prefix(site)
            .and_then(|rest| rest.strip_prefix(": "))
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no summary of {site}: {warned:?}"));
        assert!(suppressed >= suppressed_at_least, "{summary}");
    }

    #[derive(Default)]
    struct Recorder(Arc<Mutex<Vec<Line>>>);

    struct Message(String);

    impl Visit for Message {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }

    impl Subscriber for Recorder {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut message = Message(String::new());
            event.record(&mut message);
            let line = Line { level: *event.metadata().level(), message: message.0 };
            self.0.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }
}

#[cfg(test)]
mod tests {
    use super::capture::{lines, warnings};
    use super::*;

    #[test]
    fn a_flood_logs_a_few_lines_then_one_summary_with_the_count() {
        let log = GuestErrorLog::new("test device");
        let ((), logged) = lines(|| {
            for n in 0..10_000 {
                log.log(format_args!("problem {n}"));
            }
            log.flush();
        });
        let warned = warnings(&logged);
        assert_eq!(warned.len(), LINES_PER_INTERVAL as usize + 1, "{warned:?}");
        assert_eq!(warned[0], "test device: problem 0");
        let summary = warned.last().unwrap();
        assert!(summary.contains("9990 more problems"), "{summary}");
        // Nothing left to say: a second flush is silent.
        let ((), again) = lines(|| log.flush());
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn each_interval_logs_again_and_first_reports_what_the_last_left_out() {
        let log = GuestErrorLog::with_limit("dev", 2, Duration::from_secs(10));
        let t0 = Instant::now();
        let decisions: Vec<_> =
            [0, 1, 2, 3, 9].iter().map(|&s| log.decide(t0 + Duration::from_secs(s))).collect();
        assert_eq!(
            decisions,
            [
                Decision::Log { suppressed_before: 0 },
                Decision::Log { suppressed_before: 0 },
                Decision::Suppress,
                Decision::Suppress,
                Decision::Suppress,
            ]
        );
        assert_eq!(log.decide(t0 + Duration::from_secs(10)), Decision::Log { suppressed_before: 3 });
        assert_eq!(log.decide(t0 + Duration::from_secs(11)), Decision::Log { suppressed_before: 0 });
        // A clock that goes backwards (another thread's earlier reading) keeps the window.
        assert_eq!(log.decide(t0), Decision::Suppress);
    }

    #[test]
    fn a_site_log_leaves_lines_alone_and_names_itself_in_the_summary() {
        static SITE: GuestErrorLog = GuestErrorLog::site("test site");
        let ((), logged) = lines(|| {
            for _ in 0..100 {
                SITE.log(format_args!("virtio-x: broke"));
            }
            SITE.flush();
        });
        let warned = warnings(&logged);
        assert_eq!(warned[0], "virtio-x: broke");
        assert!(warned.last().unwrap().starts_with("test site: 90 more"), "{warned:?}");
    }

    #[test]
    fn dropping_the_log_reports_what_it_left_out() {
        let ((), logged) = lines(|| {
            let log = GuestErrorLog::with_limit("dev", 1, INTERVAL);
            log.log(format_args!("a"));
            log.log(format_args!("b"));
        });
        assert_eq!(warnings(&logged).len(), 2);
        assert!(warnings(&logged)[1].contains("1 more"), "{logged:?}");
    }
}
