//! `--cgroup FILE=VALUE`: which controller's file, and the value to write.

/// One `--cgroup FILE=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The controller's file, such as `memory.max` or `cpu.cfs_quota_us`.
    pub file: String,
    /// What to write to it (a disk may be named by path, see [`super::resolve_device_paths`]).
    pub value: String,
}

/// Longest `--cgroup` argument taken (the kernel's own values are far shorter).
const MAX_LEN: usize = 4096;

/// What is wrong with a `--cgroup` argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    #[error("--cgroup '{0}' is not FILE=VALUE, like memory.limit_in_bytes=268435456")]
    Format(String),
    #[error("--cgroup file '{0}' is not CONTROLLER.NAME (letters, digits, '_' and '.')")]
    File(String),
    #[error("--cgroup value for {0} is empty or has a line break")]
    Value(String),
    #[error("--cgroup argument is longer than {MAX_LEN} bytes")]
    TooLong,
}

impl Setting {
    /// Parses `FILE=VALUE` (the value may hold more '=', as `io.max`'s does).
    pub fn parse(text: &str) -> Result<Setting, SettingError> {
        if text.len() > MAX_LEN {
            return Err(SettingError::TooLong);
        }
        let (file, value) = text.split_once('=').ok_or_else(|| SettingError::Format(text.to_owned()))?;
        let controller = file.split('.').next().unwrap_or_default();
        let file_ok = !controller.is_empty()
            && file.len() > controller.len() + 1
            && file.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
            && !file.ends_with('.');
        if !file_ok {
            return Err(SettingError::File(file.to_owned()));
        }
        if value.trim().is_empty() || value.contains(['\n', '\r', '\0']) {
            return Err(SettingError::Value(file.to_owned()));
        }
        Ok(Setting { file: file.to_owned(), value: value.to_owned() })
    }

    /// The controller the file belongs to: its prefix before the first '.'.
    pub fn controller(&self) -> &str {
        self.file.split('.').next().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn forms() {
        let s = Setting::parse("io.max=8:0 rbps=1048576").unwrap();
        assert_eq!((s.file.as_str(), s.value.as_str(), s.controller()), ("io.max", "8:0 rbps=1048576", "io"));
        assert_eq!(Setting::parse("cpuset.cpus=0-1").unwrap().controller(), "cpuset");
        assert_eq!(Setting::parse("hugetlb.2MB.max=0").unwrap().controller(), "hugetlb");
        for bad in
            ["memory", "memory=1", "=1", "memory.max=", "../x.y=1", "memory.max=1\n2", "a/b.c=1", "memory.=1"]
        {
            assert!(Setting::parse(bad).is_err(), "{bad:?} was taken");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        #[test]
        fn never_panics_and_files_stay_names(text in ".{0,80}") {
            if let Ok(s) = Setting::parse(&text) {
                prop_assert!(!s.file.contains('/'));
                prop_assert!(!s.controller().is_empty());
                prop_assert!(!s.value.contains('\n'));
            }
        }
    }
}
