//! Memory sizes as users write them: `256M`, `1G`, `512MiB`, `1048576`.

/// Why a text is not a size.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("'{0}' is not a size: expected a number with an optional K/M/G/T suffix, like 256M")]
    NotASize(String),
    #[error("'{0}' is too large")]
    TooLarge(String),
    #[error("'{text}' has an unknown unit '{unit}': use K, M, G or T, like 256M")]
    UnknownUnit { text: String, unit: String },
}

/// Parses a size with an optional binary suffix (K, M, G, T, optionally followed by `iB` or `B`).
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let text = text.trim();
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, suffix) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(SizeError::NotASize(text.to_owned()));
    }
    let too_large = || SizeError::TooLarge(text.to_owned());
    let number: u64 = digits.parse().map_err(|_| too_large())?;
    let shift = match suffix.to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(SizeError::UnknownUnit { text: text.to_owned(), unit: suffix.to_owned() }),
    };
    number.checked_mul(1u64 << shift).ok_or_else(too_large)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_binary() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2GB"), Ok(2 << 30));
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert!(parse_size("99999999999999999999999").is_err());
    }
}
