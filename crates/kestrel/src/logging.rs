//! Kestrel's own log: tracing's text lines on stderr at `--log-level`, until `PUT /logger` sends
//! them to a file or named pipe, at another level, with or without each line's level and origin,
//! or for one module only.
//!
//! The subscriber is a filter layer and an output layer, each behind a reload handle, so that
//! `PUT /logger` swaps them in place: log calls made meanwhile go to the old or the new output,
//! none is lost to the swap.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use api::logger::LoggerSettings;
use tracing::level_filters::LevelFilter;
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, Layer, Registry};

/// The registry under its filter, which the output layer sits on.
type Filtered = Layered<reload::Layer<Targets, Registry>, Registry>;
type Output = Box<dyn Layer<Filtered> + Send + Sync>;

/// The installed subscriber's reload handles, for `PUT /logger`.
static CONTROL: OnceLock<LogControl> = OnceLock::new();

/// The instance ID configured lines carry (`--id`), as Firecracker's do.
static INSTANCE_ID: OnceLock<String> = OnceLock::new();

/// Firecracker's ID for an instance started without `--id`.
const DEFAULT_INSTANCE_ID: &str = "anonymous-instance";

/// Sets the instance ID configured log lines carry; the first call wins.
pub fn set_instance_id(id: &str) {
    let _ = INSTANCE_ID.set(id.to_owned());
}

/// Installs the process's subscriber: stderr at `level`, unless the KESTREL_LOG environment
/// variable (a level name) says otherwise, for runs started by other programs.
pub fn init(level: LevelFilter) {
    let level = std::env::var("KESTREL_LOG").ok().and_then(|l| l.parse().ok()).unwrap_or(level);
    let (subscriber, control) = build(level);
    if subscriber.try_init().is_ok() {
        let _ = CONTROL.set(control);
    }
}

/// Why `PUT /logger` cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("the log subscriber is not installed")]
    NotInstalled,
}

/// Applies `PUT /logger` to the installed subscriber.
pub fn apply(settings: LoggerSettings) -> Result<(), LoggingError> {
    CONTROL.get().ok_or(LoggingError::NotInstalled)?.apply(settings);
    Ok(())
}

/// A subscriber writing to stderr at `level`, and its control.
fn build(level: LevelFilter) -> (impl Subscriber + Send + Sync, LogControl) {
    let (filter, filter_handle) = reload::Layer::new(Targets::new().with_default(level));
    let (output, output_handle) = reload::Layer::new(stderr_output());
    let control = LogControl {
        filter: filter_handle,
        output: output_handle,
        destination: Mutex::new(Destination::Stderr),
    };
    (tracing_subscriber::registry().with(filter).with(output), control)
}

/// Where log lines go.
#[derive(Clone)]
enum Destination {
    Stderr,
    File(Arc<std::fs::File>),
}

/// Reconfigures a subscriber made by [`build`].
struct LogControl {
    filter: reload::Handle<Targets, Registry>,
    output: reload::Handle<Output, Filtered>,
    /// Kept for a `PUT /logger` that changes the format but names no file.
    destination: Mutex<Destination>,
}

impl LogControl {
    fn apply(&self, settings: LoggerSettings) {
        let targets = match &settings.module {
            Some(module) => Targets::new().with_target(module.clone(), settings.level),
            None => Targets::new().with_default(settings.level),
        };
        let mut destination = self.destination.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(file) = settings.file {
            *destination = Destination::File(Arc::new(file));
        }
        // Loads the time zone (glibc reads /etc/localtime on the first localtime_r) here, on the
        // control thread, so that no filtered thread (a vCPU, an API connection) makes the first
        // formatted line and is stopped by seccomp for opening the file.
        let _ = LocalTime::now();
        let output = configured_output(&destination, settings.show_level, settings.show_log_origin);
        // The handles fail only when the subscriber is gone, and then nothing logs anyway.
        let _ = self.output.reload(output);
        let _ = self.filter.reload(targets);
    }
}

/// The output before any `PUT /logger`: terse lines (level and message) on stderr.
fn stderr_output() -> Output {
    fmt::layer()
        .with_writer(|| BestEffortStderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .boxed()
}

/// The output `PUT /logger` asks for, in Firecracker's format:
/// `<local time> [<instance ID>:<thread>[:<level>][:<file>:<line>]] <message>`.
fn configured_output(destination: &Destination, show_level: bool, show_log_origin: bool) -> Output {
    let layer = fmt::layer().event_format(FirecrackerFormat { show_level, show_log_origin });
    match destination {
        Destination::Stderr => {
            layer.with_writer(|| BestEffortStderr).with_ansi(std::io::stderr().is_terminal()).boxed()
        }
        // A line that cannot be written (a full pipe) is dropped, never reported on stderr.
        Destination::File(file) => {
            layer.with_writer(file.clone()).with_ansi(false).log_internal_errors(false).boxed()
        }
    }
}

/// Firecracker's log line (its `vmm::logger::logging::Logger::log`).
struct FirecrackerFormat {
    show_level: bool,
    show_log_origin: bool,
}

impl<S, N> FormatEvent<S, N> for FirecrackerFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let metadata = event.metadata();
        let id = INSTANCE_ID.get().map_or(DEFAULT_INSTANCE_ID, String::as_str);
        let thread = std::thread::current();
        write!(writer, "{} [{id}:{}", LocalTime::now(), thread.name().unwrap_or("-"))?;
        if self.show_level {
            write!(writer, ":{}", metadata.level())?;
        }
        if self.show_log_origin {
            let line = metadata.line().map_or_else(|| "?".to_owned(), |line| line.to_string());
            write!(writer, ":{}:{line}", metadata.file().unwrap_or("?"))?;
        }
        write!(writer, "] ")?;
        context.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// The local time with nanoseconds, as Firecracker writes it: `2024-05-01T12:34:56.123456789`.
struct LocalTime {
    tm: libc::tm,
    nanoseconds: i64,
}

impl LocalTime {
    fn now() -> LocalTime {
        // SAFETY: timespec and tm are plain data; clock_gettime and localtime_r only write to the
        // structures passed, which live in this frame (localtime_r is the thread-safe variant).
        unsafe {
            let mut now: libc::timespec = std::mem::zeroed();
            libc::clock_gettime(libc::CLOCK_REALTIME, &mut now);
            let mut tm: libc::tm = std::mem::zeroed();
            libc::localtime_r(&now.tv_sec, &mut tm);
            LocalTime { tm, nanoseconds: now.tv_nsec }
        }
    }
}

impl std::fmt::Display for LocalTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tm = &self.tm;
        write!(
            f,
            "{}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}",
            tm.tm_year + 1900,
            tm.tm_mon + 1,
            tm.tm_mday,
            tm.tm_hour,
            tm.tm_min,
            tm.tm_sec,
            self.nanoseconds
        )
    }
}

/// Stderr for log lines, best effort: a failed write is dropped instead of reported, because
/// tracing-subscriber reports it with `eprintln!`, which panics when stderr is a closed pipe.
struct BestEffortStderr;

impl Write for BestEffortStderr {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        Ok(std::io::stderr().write(buffer).unwrap_or(buffer.len()))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(file: &std::path::Path, level: LevelFilter, module: Option<&str>) -> LoggerSettings {
        LoggerSettings {
            file: Some(api::sink::open_for_append(file).unwrap()),
            level,
            show_level: false,
            show_log_origin: false,
            module: module.map(str::to_owned),
        }
    }

    #[test]
    fn put_logger_moves_the_log_and_changes_its_level_format_and_module() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kestrel.log");
        let (subscriber, control) = build(LevelFilter::WARN);
        tracing::subscriber::with_default(subscriber, || {
            control.apply(settings(&path, LevelFilter::DEBUG, None));
            tracing::debug!("plain debug line");
            tracing::trace!("too detailed");
            control.apply(LoggerSettings {
                show_level: true,
                show_log_origin: true,
                file: None,
                ..settings(&path, LevelFilter::INFO, None)
            });
            tracing::info!("with level and origin");
            control.apply(settings(&path, LevelFilter::TRACE, Some("kestrel::elsewhere")));
            tracing::error!("from another module");
            tracing::info!(target: "kestrel::elsewhere::inner", "from the module");
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        // Firecracker's format: `<time> [<id>:<thread>[:<level>][:<file>:<line>]] <message>`.
        let thread = std::thread::current().name().unwrap_or("-").to_owned();
        let (time, rest) = lines[0].split_once(' ').unwrap();
        assert_eq!(time.len(), "2024-05-01T12:34:56.123456789".len(), "{text}");
        assert_eq!(&time[10..11], "T", "{text}");
        assert_eq!(rest, format!("[anonymous-instance:{thread}] plain debug line"), "{text}");
        let origin = format!("[anonymous-instance:{thread}:INFO:crates/kestrel/src/logging.rs:");
        assert!(lines[1].contains(&origin) && lines[1].ends_with("] with level and origin"), "{text}");
        assert!(lines[2].ends_with("from the module"), "{text}");
    }
}
