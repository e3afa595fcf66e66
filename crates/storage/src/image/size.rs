//! Image sizes as users write them: `10G`, `512M`, `1.5G` is not accepted, `4096`.

use super::ImageError;

/// Parses a size in bytes with an optional binary suffix K, M, G, T (or P, E; `KiB`, `k` too).
pub fn parse_size(text: &str) -> Result<u64, ImageError> {
    let bad = || {
        ImageError::Usage(format!(
            "'{text}' is not a size: expected a number with an optional K/M/G/T suffix, like 10G"
        ))
    };
    let trimmed = text.trim();
    let digits_end = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (digits, suffix) = trimmed.split_at(digits_end);
    if digits.is_empty() {
        return Err(bad());
    }
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let unit = suffix.to_ascii_uppercase();
    let shift = match unit.trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        "P" => 50,
        "E" => 60,
        _ => return Err(bad()),
    };
    number
        .checked_mul(1u64 << shift)
        .filter(|n| *n <= i64::MAX as u64)
        .ok_or_else(|| ImageError::Usage(format!("'{text}' is too large")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn suffixes_are_binary() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1K").unwrap(), 1024);
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("2MiB").unwrap(), 2 << 20);
        assert_eq!(parse_size("1t").unwrap(), 1 << 40);
        assert!(parse_size("").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("1X").is_err());
        assert!(parse_size("99999999999E").is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn never_panics(text in ".{0,24}") {
            let _ = parse_size(&text);
        }
    }
}
