//! Firecracker's token-bucket rate limiter as the user gives it (`rate_limiter` on a drive,
//! `rx_rate_limiter` and `tx_rate_limiter` on a network interface): one type for every device,
//! checked the same way whatever channel it came through (flags, API, `--config` file, snapshot).
//!
//! The types here are encoded in snapshots with postcard, which is not self-describing: a change
//! of shape needs a new snapshot section version.

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// The longest refill time a token bucket may have, in milliseconds (one day): longer is surely
/// a unit mistake, and it keeps the bucket's arithmetic in nanoseconds far from overflow.
pub const MAX_REFILL_TIME_MS: u64 = 24 * 60 * 60 * 1000;

/// A token bucket, Firecracker's shape: `size` tokens (bytes, or operations) refilled over
/// `refill_time` milliseconds, plus a first burst that is not refilled. A bucket of size 0 limits
/// nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    /// Bytes.
    #[serde(default)]
    pub bandwidth: Option<TokenBucket>,
    /// Requests.
    #[serde(default)]
    pub ops: Option<TokenBucket>,
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
