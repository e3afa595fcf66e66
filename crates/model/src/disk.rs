//! A disk's options beyond its file: the image format, the cache mode, backing files, queues, the
//! I/O engine and the rate limiter (its token buckets are [`crate::rate_limiter`]'s, shared with
//! the network), with the checks each channel (flags, API, `--config` file,
//! snapshot) passes them through.
//!
//! The types here are encoded in snapshots with postcard, which is not self-describing: no field
//! may be skipped when serialized, and a change of shape needs a new snapshot section version.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
pub use crate::rate_limiter::{RateLimiterConfig, TokenBucket, MAX_REFILL_TIME_MS};

/// The longest adaptive poll window a disk may have, in µs: polling busies a host CPU for that
/// long each time the guest goes quiet, and a millisecond is far past any wake-up it saves.
pub const MAX_POLL_US: u32 = 1000;

/// The most queues a disk may have (virtio-blk's `num_queues`; one per vCPU is the useful most).
pub const MAX_DISK_QUEUES: u16 = 16;
/// How a disk's image file is laid out. Always given by the user, never guessed from the file:
/// a guest that writes a qcow2 header onto its raw disk must not make the host read it as one
/// (and open a backing file of the guest's choice).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// The file (or block device) is the disk, byte for byte.
    #[default]
    Raw,
    /// A qcow2 image (version 2 or 3), possibly over a chain of backing files.
    Qcow2,
}

/// What a guest's flush means, and whether the host's page cache sits between the guest and the
/// image.
///
/// The default is `Writeback`: it is what Kestrel has always done, and a guest's flush then
/// reaches the disk, so a host crash loses nothing the guest was told was safe. (Firecracker's
/// default, `Unsafe`, drops flushes silently; a Firecracker API client still gets it by asking for
/// `cache_type: "Unsafe"`.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// Through the host's page cache; a flush is an `fdatasync` of the image.
    #[default]
    Writeback,
    /// `O_DIRECT`: around the host's page cache (no double caching of guest data); a flush is
    /// still an `fdatasync`, for the device's and the metadata's caches.
    None,
    /// Through the host's page cache, and a flush does nothing: fast, and a host crash may lose
    /// or tear anything written since the kernel last wrote back. For scratch disks.
    Unsafe,
}

/// How the device carries out requests. The names are Firecracker's (`"Sync"`, `"Async"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    /// Blocking system calls on the device's worker thread, one request at a time.
    Sync,
    /// Many requests in flight per queue: io_uring on a raw file, a thread pool for qcow2 (and
    /// where the host kernel has no io_uring). Kestrel's default, unlike Firecracker's: it is the
    /// faster, and as safe.
    #[default]
    Async,
}

/// The longest serial number a disk can have.
pub const DISK_ID_MAX_BYTES: usize = 20;

fn yes() -> bool {
    true
}

fn one_queue() -> u16 {
    1
}

/// A virtio-blk disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockConfig {
    /// The image file or host block device.
    pub path: PathBuf,
    /// Opened `O_RDONLY`; the guest sees a read-only disk and every write fails.
    pub read_only: bool,
    /// Serial number the guest reads (at most 20 bytes); by default the file name.
    pub id: Option<String>,
    /// The image's format; raw unless the user says otherwise (it is never probed).
    #[serde(default)]
    pub format: ImageFormat,
    /// The cache mode.
    #[serde(default)]
    pub cache: CacheMode,
    /// A qcow2 image may name a backing file, which is opened (read-only) too; `false` refuses
    /// such images.
    #[serde(default = "yes")]
    pub allow_backing: bool,
    /// Request queues (`VIRTIO_BLK_F_MQ` when more than 1), 1 to [`MAX_DISK_QUEUES`].
    #[serde(default = "one_queue")]
    pub num_queues: u16,
    /// How requests are carried out.
    #[serde(default)]
    pub io_engine: IoEngine,
    /// Limits on the guest's bandwidth and request rate; `None` limits nothing.
    #[serde(default)]
    pub rate_limiter: Option<RateLimiterConfig>,
    /// Adaptive polling: the longest window, in µs (at most [`MAX_POLL_US`]), for which the
    /// device's worker polls its queues for the guest's next request instead of sleeping until
    /// notified. `None` (or 0) never polls.
    #[serde(default)]
    pub poll_us: Option<u32>,
}

impl BlockConfig {
    /// A writable raw disk over `path` with every option at its default.
    pub fn new(path: impl Into<PathBuf>) -> BlockConfig {
        BlockConfig {
            path: path.into(),
            read_only: false,
            id: None,
            format: ImageFormat::Raw,
            cache: CacheMode::Writeback,
            allow_backing: true,
            num_queues: 1,
            io_engine: IoEngine::Async,
            rate_limiter: None,
            poll_us: None,
        }
    }

    /// The disk's checks (the file itself is checked when it is opened).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.path.as_os_str().is_empty() {
            return Err(ConfigError::EmptyPath { field: "disk path" });
        }
        if let Some(id) = self.id.as_ref().filter(|id| id.len() > DISK_ID_MAX_BYTES) {
            return Err(ConfigError::DiskIdTooLong(id.chars().take(64).collect()));
        }
        if self.num_queues == 0 || self.num_queues > MAX_DISK_QUEUES {
            return Err(ConfigError::InvalidQueueCount { requested: self.num_queues, max: MAX_DISK_QUEUES });
        }
        if let Some(requested) = self.poll_us.filter(|&us| us > MAX_POLL_US) {
            return Err(ConfigError::PollTooLong { requested, max: MAX_POLL_US });
        }
        if let Some(limiter) = &self.rate_limiter {
            limiter.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_with_defaults_is_valid_and_bad_options_are_named() {
        assert_eq!(BlockConfig::new("/d").validate(), Ok(()));
        let bucket = |size, one_time_burst, refill_time| TokenBucket { size, one_time_burst, refill_time };
        let limited = |bandwidth, ops| BlockConfig {
            rate_limiter: Some(RateLimiterConfig { bandwidth, ops }),
            ..BlockConfig::new("/d")
        };
        for good in [
            limited(Some(bucket(1 << 20, Some(1 << 30), 100)), None),
            limited(None, Some(TokenBucket::per_second(1000))),
            // Firecracker's "no limit": size 0, whatever the refill time.
            limited(Some(bucket(0, None, 0)), Some(bucket(0, None, 5))),
            BlockConfig { num_queues: MAX_DISK_QUEUES, ..BlockConfig::new("/d") },
            BlockConfig { poll_us: Some(MAX_POLL_US), ..BlockConfig::new("/d") },
            BlockConfig { poll_us: Some(0), ..BlockConfig::new("/d") },
        ] {
            assert_eq!(good.validate(), Ok(()), "{good:?}");
        }
        for (bad, expected) in [
            (BlockConfig { num_queues: 0, ..BlockConfig::new("/d") }, "num_queues must be 1 to 16, got 0"),
            (BlockConfig { num_queues: 17, ..BlockConfig::new("/d") }, "got 17"),
            (BlockConfig { poll_us: Some(1001), ..BlockConfig::new("/d") }, "poll_us must be at most 1000"),
            (limited(Some(bucket(1, None, 0)), None), "rate_limiter.bandwidth: refill_time must not be 0"),
            (
                limited(None, Some(bucket(1, None, MAX_REFILL_TIME_MS + 1))),
                "rate_limiter.ops: refill_time is longer",
            ),
            (limited(None, Some(bucket(0, Some(5), 100))), "one_time_burst needs a size"),
            (BlockConfig::new(""), "disk path: the path must not be empty"),
            (BlockConfig { id: Some("x".repeat(21)), ..BlockConfig::new("/d") }, "longer than 20 bytes"),
        ] {
            let message = bad.validate().unwrap_err().to_string();
            assert!(message.contains(expected), "{expected}: {message}");
        }
    }

    #[test]
    fn option_names_are_the_documented_ones() {
        let text =
            serde_json::to_string(&(ImageFormat::Qcow2, CacheMode::None, CacheMode::Unsafe, IoEngine::Async))
                .unwrap();
        assert_eq!(text, r#"["qcow2","none","unsafe","Async"]"#);
        let limiter: RateLimiterConfig =
            serde_json::from_str(r#"{"bandwidth": {"size": 100, "refill_time": 10}}"#).unwrap();
        assert_eq!(limiter.bandwidth, Some(TokenBucket { size: 100, one_time_burst: None, refill_time: 10 }));
        let typo =
            serde_json::from_str::<RateLimiterConfig>(r#"{"bandwith": {"size": 1, "refill_time": 1}}"#);
        assert!(typo.unwrap_err().to_string().contains("unknown field `bandwith`"));
        let missing = serde_json::from_str::<TokenBucket>(r#"{"size": 1}"#).unwrap_err();
        assert!(missing.to_string().contains("missing field `refill_time`"), "{missing}");
    }
}
