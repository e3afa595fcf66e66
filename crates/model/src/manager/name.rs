//! Names of VMs, networks, pools and volumes. They become file and directory names under the
//! daemon's state directory and pools, so they are checked once, here, for every kind.

/// The longest name.
pub const MAX_NAME_BYTES: usize = 64;

/// Why a name is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a name may not be empty")]
    Empty,
    #[error("the name '{0}…' is longer than 64 bytes")]
    TooLong(String),
    #[error(
        "the name '{0}' may only hold letters, digits, '.', '_' and '-', and may not start with '.' or '-'"
    )]
    Characters(String),
}

/// Checks a name: 1 to 64 bytes of ASCII letters, digits, `.`, `_` and `-`, not starting with `.`
/// or `-` (so neither `..`, a hidden file, nor an option), and never a path.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong(name.chars().take(32).collect()));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if !name.chars().all(allowed) || name.starts_with(['.', '-']) {
        return Err(NameError::Characters(name.chars().take(64).collect()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ordinary_names_pass_and_paths_do_not() {
        for good in ["web", "web-1", "db_2.prod", "A"] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in ["", ".", "..", "../x", "a/b", "-rf", ".hidden", "sp ace", "é", "a\0b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(check_name(&"x".repeat(65)), Err(NameError::TooLong(_))));
    }

    proptest! {
        #[test]
        fn an_accepted_name_is_one_plain_path_component(name in "\\PC{0,80}") {
            if check_name(&name).is_ok() {
                let path = std::path::Path::new(&name);
                let components: Vec<_> = path.components().collect();
                prop_assert_eq!(components.len(), 1);
                prop_assert!(matches!(components[0], std::path::Component::Normal(_)));
            }
        }
    }
}
