//! Firecracker's token-bucket rate limiter as the user gives it (`rate_limiter` on a drive,
//! `rx_rate_limiter` and `tx_rate_limiter` on a network interface): one type for every device,
//! checked the same way whatever channel it came through (flags, API, `--config` file, snapshot).
//!
//! The types here are encoded in snapshots with postcard, which is not self-describing: a change
//! of shape needs a new snapshot section version.

use serde::de::{DeserializeOwned, Error as _, Unexpected};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::ConfigError;

/// The longest refill time a token bucket may have, in milliseconds (one day): longer is surely
/// a unit mistake, and it keeps the bucket's arithmetic in nanoseconds far from overflow.
pub const MAX_REFILL_TIME_MS: u64 = 24 * 60 * 60 * 1000;

/// A token bucket, Firecracker's shape: `size` tokens (bytes, or operations) refilled over
/// `refill_time` milliseconds, plus a first burst that is not refilled. A bucket of size 0 limits
/// nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TokenBucket {
    /// The bucket's capacity.
    pub size: u64,
    /// Tokens available once, at the start, on top of `size`.
    #[serde(default)]
    pub one_time_burst: Option<u64>,
    /// Milliseconds for an empty bucket to fill up again.
    pub refill_time: u64,
}

/// A device's rate limiter (Firecracker's `RateLimiter`): a bucket of bytes, a bucket of requests,
/// or both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RateLimiterConfig {
    /// Bytes.
    #[serde(default)]
    pub bandwidth: Option<TokenBucket>,
    /// Requests.
    #[serde(default)]
    pub ops: Option<TokenBucket>,
}

// What the two types read, field for field. Their own `Deserialize` goes through these: as is
// for a compact format (a snapshot's postcard, which writes a struct as its fields in order), and
// only from an object for a human-readable one (an API body, a `--config` file), where serde's
// derived code would also take an array of the fields in order, which Firecracker refuses.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename = "TokenBucket")]
struct TokenBucketFields {
    size: u64,
    #[serde(default)]
    one_time_burst: Option<u64>,
    refill_time: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename = "RateLimiter")]
struct RateLimiterFields {
    #[serde(default)]
    bandwidth: Option<TokenBucket>,
    #[serde(default)]
    ops: Option<TokenBucket>,
}

/// `T` from a JSON-like input only if it is an object; from a compact one as `T` reads it.
fn object_or_compact<'de, D: Deserializer<'de>, T: DeserializeOwned>(deserializer: D) -> Result<T, D::Error> {
    if !deserializer.is_human_readable() {
        return T::deserialize(deserializer);
    }
    let value = serde_json::Value::deserialize(deserializer)?;
    if !value.is_object() {
        let found = match &value {
            serde_json::Value::Array(_) => Unexpected::Seq,
            serde_json::Value::Null => Unexpected::Unit,
            serde_json::Value::Bool(b) => Unexpected::Bool(*b),
            serde_json::Value::String(s) => Unexpected::Str(s),
            _ => Unexpected::Other("a number"),
        };
        return Err(D::Error::invalid_type(found, &"an object"));
    }
    serde_json::from_value(value).map_err(D::Error::custom)
}

impl<'de> Deserialize<'de> for TokenBucket {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let TokenBucketFields { size, one_time_burst, refill_time } = object_or_compact(deserializer)?;
        Ok(TokenBucket { size, one_time_burst, refill_time })
    }
}

impl<'de> Deserialize<'de> for RateLimiterConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let RateLimiterFields { bandwidth, ops } = object_or_compact(deserializer)?;
        Ok(RateLimiterConfig { bandwidth, ops })
    }
}

impl TokenBucket {
    /// A bucket of `size` tokens refilled every second, with no burst (the command line's
    /// `bw=` and `iops=`).
    pub fn per_second(size: u64) -> TokenBucket {
        TokenBucket { size, one_time_burst: None, refill_time: 1000 }
    }

    /// Whether the bucket limits anything.
    pub fn is_limiting(&self) -> bool {
        self.size > 0
    }

    fn validate(&self, field: &'static str) -> Result<(), ConfigError> {
        let invalid = |reason: &'static str| ConfigError::InvalidRateLimiter { field, reason };
        if self.size > 0 && self.refill_time == 0 {
            return Err(invalid("refill_time must not be 0 when size is not 0"));
        }
        if self.refill_time > MAX_REFILL_TIME_MS {
            return Err(invalid("refill_time is longer than a day (it is in milliseconds)"));
        }
        if self.size == 0 && self.one_time_burst.is_some_and(|b| b > 0) {
            return Err(invalid("one_time_burst needs a size (a bucket of size 0 limits nothing)"));
        }
        Ok(())
    }
}

impl RateLimiterConfig {
    /// Whether either bucket limits anything.
    pub fn is_limiting(&self) -> bool {
        self.bandwidth.is_some_and(|b| b.is_limiting()) || self.ops.is_some_and(|b| b.is_limiting())
    }

    /// Each bucket's checks, for a drive's `rate_limiter`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_named(["rate_limiter.bandwidth", "rate_limiter.ops"])
    }

    /// Each bucket's checks, an error naming the field as `fields` (bandwidth's, ops') do: a
    /// network interface has two limiters.
    pub fn validate_named(&self, fields: [&'static str; 2]) -> Result<(), ConfigError> {
        if let Some(bucket) = &self.bandwidth {
            bucket.validate(fields[0])?;
        }
        if let Some(bucket) = &self.ops {
            bucket.validate(fields[1])?;
        }
        Ok(())
    }

    /// This limiter with a PATCH's `update` applied, as Firecracker does it: a bucket the update
    /// leaves out keeps its setting (a bucket of size 0 is how a client removes one).
    pub fn merged(current: Option<RateLimiterConfig>, update: RateLimiterConfig) -> RateLimiterConfig {
        let current = current.unwrap_or_default();
        RateLimiterConfig {
            bandwidth: update.bandwidth.or(current.bandwidth),
            ops: update.ops.or(current.ops),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_takes_objects_only() {
        let limiter: RateLimiterConfig =
            serde_json::from_str(r#"{"ops": {"size": 5, "one_time_burst": 1, "refill_time": 10}}"#).unwrap();
        let ops = TokenBucket { size: 5, one_time_burst: Some(1), refill_time: 10 };
        assert_eq!(limiter, RateLimiterConfig { bandwidth: None, ops: Some(ops) });
        for (text, expected) in [
            ("[null, null]", "invalid type: sequence, expected an object"),
            (r#"{"ops": [5, 1, 10]}"#, "invalid type: sequence, expected an object"),
            ("null", "expected an object"),
            (r#"{"ops": {"size": 1}}"#, "missing field `refill_time`"),
            (r#"{"ops": {"size": -1, "refill_time": 1}}"#, "invalid value: integer `-1`"),
            (r#"{"bandwith": {}}"#, "unknown field `bandwith`"),
        ] {
            let error = serde_json::from_str::<RateLimiterConfig>(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
        // A missing limiter is still `None` where a body has one.
        let absent: Option<RateLimiterConfig> = serde_json::from_str("null").unwrap();
        assert_eq!(absent, None);

        // (The snapshot golden files in crates/vmm check the compact form.)
    }
}
