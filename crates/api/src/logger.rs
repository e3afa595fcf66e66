//! `PUT /logger`: the request checked and its file opened, for the binary (which owns the
//! process's log subscriber) to apply.

use std::fs::File;
use std::path::Path;

use tracing::level_filters::LevelFilter;

use model::api::{LogLevel, Logger};

/// What the log output should be after a `PUT /logger`.
#[derive(Debug)]
pub struct LoggerSettings {
    /// Where the log goes from now on, opened for appending; `None` keeps its destination.
    pub file: Option<File>,
    /// The most detailed level written (the specification's default: Info).
    pub level: LevelFilter,
    /// Lines show their level.
    pub show_level: bool,
    /// Lines show the source file and line they come from.
    pub show_log_origin: bool,
    /// Only messages from this module and those below it (`vmm::vcpu`, say) are written.
    pub module: Option<String>,
}

/// Why a `PUT /logger` cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    #[error("Cannot open the log file {path:?}: {source}")]
    Open { path: String, source: std::io::Error },
}

impl LoggerSettings {
    /// The settings a request asks for, with its file opened (see [`crate::sink`]).
    pub fn open(request: Logger) -> Result<LoggerSettings, LoggerError> {
        let file = request
            .log_path
            .map(|path| {
                crate::sink::open_for_append(Path::new(&path))
                    .map_err(|source| LoggerError::Open { path, source })
            })
            .transpose()?;
        Ok(LoggerSettings {
            file,
            level: level_filter(request.level.unwrap_or(LogLevel::Info)),
            show_level: request.show_level.unwrap_or(false),
            show_log_origin: request.show_log_origin.unwrap_or(false),
            module: request.module,
        })
    }
}

fn level_filter(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warning => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
        LogLevel::Off => LevelFilter::OFF,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Logger, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn levels_are_read_in_any_case_and_default_to_info() {
        for (text, level) in [
            ("Error", LevelFilter::ERROR),
            ("WARNING", LevelFilter::WARN),
            ("warn", LevelFilter::WARN),
            ("info", LevelFilter::INFO),
            ("Debug", LevelFilter::DEBUG),
            ("tRaCe", LevelFilter::TRACE),
            ("Off", LevelFilter::OFF),
        ] {
            let settings =
                LoggerSettings::open(parse(&format!(r#"{{"level": "{text}"}}"#)).unwrap()).unwrap();
            assert_eq!(settings.level, level, "{text}");
        }
        let defaults = LoggerSettings::open(parse("{}").unwrap()).unwrap();
        assert_eq!(defaults.level, LevelFilter::INFO);
        assert!(defaults.file.is_none() && defaults.module.is_none());
        assert!(!defaults.show_level && !defaults.show_log_origin);
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        assert!(parse(r#"{"level": "verbose"}"#).unwrap_err().contains("one of Error, Warning"));
        assert!(parse(r#"{"level": 3}"#).unwrap_err().contains("invalid type"));
        assert!(parse(r#"{"log_path": "/tmp/x", "colour": true}"#)
            .unwrap_err()
            .contains("unknown field `colour`"));
        let dir = tempfile::tempdir().unwrap();
        let unwritable = format!(r#"{{"log_path": "{}/missing/log"}}"#, dir.path().display());
        let error = LoggerSettings::open(parse(&unwritable).unwrap()).unwrap_err().to_string();
        assert!(error.starts_with("Cannot open the log file") && error.contains("No such file"), "{error}");
    }

    #[test]
    fn the_file_is_opened_and_the_rest_taken_as_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kestrel.log");
        let request = format!(
            r#"{{"log_path": "{}", "level": "Debug", "show_level": true, "show_log_origin": true, "module": "vmm::vcpu"}}"#,
            path.display()
        );
        let settings = LoggerSettings::open(parse(&request).unwrap()).unwrap();
        assert!(settings.file.is_some() && path.exists());
        assert_eq!(settings.level, LevelFilter::DEBUG);
        assert!(settings.show_level && settings.show_log_origin);
        assert_eq!(settings.module.as_deref(), Some("vmm::vcpu"));
    }
}
