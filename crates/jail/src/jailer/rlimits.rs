//! `--resource-limit fsize=N|no-file=N`, with Firecracker's defaults (2048 files, file size
//! unlimited).

/// Firecracker's default RLIMIT_NOFILE.
pub const DEFAULT_NO_FILE: u64 = 2048;

/// The rlimits the jailed VMM gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceLimits {
    /// RLIMIT_FSIZE, bytes; `None` leaves it as inherited.
    pub file_size: Option<u64>,
    /// RLIMIT_NOFILE.
    pub no_file: u64,
}

impl Default for ResourceLimits {
    fn default() -> Self {
        ResourceLimits { file_size: None, no_file: DEFAULT_NO_FILE }
    }
}

/// What is wrong with a `--resource-limit`, or why it cannot be set.
#[derive(Debug, thiserror::Error)]
pub enum RlimitError {
    #[error("--resource-limit '{0}' is not fsize=N or no-file=N")]
    Format(String),
    #[error("cannot set {resource} to {value}: {source}")]
    Install { resource: &'static str, value: u64, source: std::io::Error },
}

impl ResourceLimits {
    /// Applies one `--resource-limit NAME=N`.
    pub fn set(&mut self, text: &str) -> Result<(), RlimitError> {
        let bad = || RlimitError::Format(text.chars().take(80).collect());
        let (name, value) = text.split_once('=').ok_or_else(bad)?;
        let value: u64 = value.parse().map_err(|_| bad())?;
        match name {
            "fsize" => self.file_size = Some(value),
            "no-file" => self.no_file = value,
            _ => return Err(bad()),
        }
        Ok(())
    }

    /// Sets the limits on this process (soft and hard), inherited by the VMM across exec.
    pub fn install(&self) -> Result<(), RlimitError> {
        set(libc::RLIMIT_NOFILE, "no-file", self.no_file)?;
        if let Some(size) = self.file_size {
            set(libc::RLIMIT_FSIZE, "fsize", size)?;
        }
        Ok(())
    }
}

fn set(resource: libc::__rlimit_resource_t, name: &'static str, value: u64) -> Result<(), RlimitError> {
    let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
    // SAFETY: setrlimit reads the rlimit struct, which lives for the call.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(RlimitError::Install { resource: name, value, source: std::io::Error::last_os_error() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn forms() {
        let mut limits = ResourceLimits::default();
        limits.set("fsize=1048576").unwrap();
        limits.set("no-file=100").unwrap();
        assert_eq!(limits, ResourceLimits { file_size: Some(1048576), no_file: 100 });
        for bad in ["fsize", "fsize=-1", "nofile=1", "no-file=x", "=1"] {
            assert!(limits.set(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        #[test]
        fn never_panics(text in "(fsize|no-file|[a-z-]{0,8})=?[0-9a-z-]{0,24}") {
            let mut limits = ResourceLimits::default();
            if limits.set(&text).is_ok() {
                prop_assert!(text.starts_with("fsize=") || text.starts_with("no-file="));
            }
        }
    }
}
