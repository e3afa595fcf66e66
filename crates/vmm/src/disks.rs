//! Opening the VM's disks: the one place the VMM turns a configured path into a disk backend for
//! virtio-blk (which itself knows nothing of files or formats).

use std::path::Path;
use std::time::Duration;

use storage::open::{reopen_disk, DiskSpec, ImageLock, OpenedDisk};
use virtio::block::{disk_id, Block, BlockOptions, DiskError, Engine};
use virtio::rate_limiter::{Bucket, RateLimit};

use crate::config::{BlockConfig, CacheMode, IoEngine, RateLimiterConfig, TokenBucket};

/// Why a configured disk cannot be given to the guest.
#[derive(Debug, thiserror::Error)]
pub enum DiskOpenError {
    #[error("{0}")]
    Open(#[from] storage::open::OpenError),
    #[error("{0}")]
    Device(#[from] DiskError),
}

impl DiskOpenError {
    /// The message, naming the disk at `path` once: the storage crate's errors name it already.
    pub fn describe(&self, path: &Path) -> String {
        match self {
            DiskOpenError::Open(error) => error.to_string(),
            DiskOpenError::Device(error) => format!("disk {}: {error}", path.display()),
        }
    }
}

/// Opens `path` as a disk the way `spec` says (format, read-only, cache mode, backing files),
/// locked against other writers, through the storage crate's one factory. A disk that holds
/// `held` now may be given its own image again (see [`storage::open::reopen_disk`]).
pub fn open_backend(
    path: &Path,
    spec: &DiskSpec,
    held: Option<&ImageLock>,
) -> Result<OpenedDisk, DiskOpenError> {
    Ok(reopen_disk(path, spec, held)?)
}

/// The virtio-blk device for `config`, and its image's lock.
pub fn open_block(config: &BlockConfig) -> Result<(Block, ImageLock), DiskOpenError> {
    let id = disk_id(&config.path, config.id.as_deref())?;
    let opened = open_backend(&config.path, &DiskSpec::of(config), None)?;
    let block = Block::new(opened.backend, config.read_only, id, block_options(config))?;
    Ok((block, opened.lock))
}

/// How the device serves the disk: its queues, its engine, whether it offers a flush
/// (`cache=unsafe` does not: Firecracker's `Unsafe`), its rate limiter, and its poll window.
pub fn block_options(config: &BlockConfig) -> BlockOptions {
    BlockOptions {
        num_queues: config.num_queues,
        engine: match config.io_engine {
            IoEngine::Sync => Engine::Sync,
            IoEngine::Async => Engine::Async,
        },
        flush: config.cache != CacheMode::Unsafe,
        rate_limit: config.rate_limiter.as_ref().map(rate_limit),
        poll: config.poll_us.filter(|&us| us > 0).map(|us| Duration::from_micros(u64::from(us))),
    }
}

/// A configured rate limiter as the device's limiter takes it (the same buckets; a missing burst
/// is none).
pub fn rate_limit(config: &RateLimiterConfig) -> RateLimit {
    let bucket = |b: &TokenBucket| Bucket {
        size: b.size,
        one_time_burst: b.one_time_burst.unwrap_or(0),
        refill_time: b.refill_time,
    };
    RateLimit { bandwidth: config.bandwidth.as_ref().map(bucket), ops: config.ops.as_ref().map(bucket) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_rate_limiter_keeps_its_buckets() {
        let config = RateLimiterConfig {
            bandwidth: Some(TokenBucket { size: 1 << 20, one_time_burst: Some(4096), refill_time: 100 }),
            ops: Some(TokenBucket::per_second(500)),
        };
        let limit = rate_limit(&config);
        assert_eq!(limit.bandwidth, Some(Bucket { size: 1 << 20, one_time_burst: 4096, refill_time: 100 }));
        assert_eq!(limit.ops, Some(Bucket { size: 500, one_time_burst: 0, refill_time: 1000 }));
        assert_eq!(rate_limit(&RateLimiterConfig::default()), RateLimit::default());
    }

    #[test]
    fn the_device_gets_the_configured_limiter_or_none() {
        let mut config = BlockConfig::new("disk.img");
        assert_eq!(block_options(&config).rate_limit, None);
        config.rate_limiter =
            Some(RateLimiterConfig { bandwidth: None, ops: Some(TokenBucket::per_second(200)) });
        let ops = Bucket { size: 200, one_time_burst: 0, refill_time: 1000 };
        assert_eq!(block_options(&config).rate_limit, Some(RateLimit { bandwidth: None, ops: Some(ops) }));
    }

    #[test]
    fn the_device_polls_for_the_configured_window_or_never() {
        let mut config = BlockConfig::new("disk.img");
        assert_eq!(block_options(&config).poll, None, "off by default");
        config.poll_us = Some(50);
        assert_eq!(block_options(&config).poll, Some(Duration::from_micros(50)));
        config.poll_us = Some(0);
        assert_eq!(block_options(&config).poll, None, "0 is off");
    }
}
