//! The values of the virtio device flags (`--disk`, `--net`, `--vsock`, `--balloon`): comma-separated
//! `key=value` lists, parsed into the VMM's device configurations with one clear message per mistake.

use std::path::PathBuf;
use std::time::Duration;

use model::config::{
    BalloonConfig, BlockConfig, CacheMode, ImageFormat, IoEngine, MacAddress, MacError, NetConfig,
    RateLimiterConfig, TokenBucket, VsockConfig, DISK_ID_MAX_BYTES, MAX_DISK_QUEUES, MAX_POLL_US,
    TAP_NAME_MAX_BYTES, VSOCK_MAX_CID, VSOCK_MIN_CID,
};

use crate::size::{parse_size, SizeError};

/// What is wrong with a device flag's value (clap prints it after the flag's name).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("'{item}' is not KEY=VALUE; the form is {form}")]
    NotKeyValue { item: String, form: &'static str },
    #[error("unknown key '{key}'; the form is {form}")]
    UnknownKey { key: String, form: &'static str },
    #[error("{0}= is given twice")]
    Repeated(String),
    #[error("{key}= is missing; the form is {form}")]
    Missing { key: String, form: &'static str },
    #[error("{key}={value}: the value must be on or off")]
    NotOnOff { key: String, value: String },
    #[error("{key}={value}: the value must be a whole number")]
    NotNumber { key: String, value: String },
    #[error("path= needs a file, as in path=disk.img")]
    EmptyDiskPath,
    #[error("id '{0}' is longer than {DISK_ID_MAX_BYTES} bytes")]
    DiskIdTooLong(String),
    #[error("tap name '{0}' must be 1 to {TAP_NAME_MAX_BYTES} bytes")]
    TapNameLength(String),
    #[error("'{0}' is not an interface name (no '/', ':', '%' or spaces)")]
    TapNameCharacters(String),
    #[error(transparent)]
    Mac(#[from] MacError),
    #[error("cid={0}: the CID must be {VSOCK_MIN_CID} to {VSOCK_MAX_CID}")]
    Cid(String),
    #[error("uds= needs a path, as in uds=/tmp/kestrel.vsock")]
    EmptySocketPath,
    #[error("{key}={value}: the value must be one of {choices}")]
    NotAChoice { key: String, value: String, choices: &'static str },
    #[error("queues={0}: a disk has 1 to {MAX_DISK_QUEUES} queues")]
    QueueCount(String),
    #[error("{key}={value}: {source}")]
    Bandwidth { key: &'static str, value: String, source: SizeError },
    #[error("{0}=0 limits nothing; leave it out")]
    ZeroLimit(&'static str),
    #[error("poll={0}: the window must be 0 to {MAX_POLL_US}us, as in poll=50us")]
    PollWindow(String),
}

/// A flag value of the form `key=value[,key=value...]`: every item is `key=value`, every key is one
/// of the flag's and appears at most once. Values may contain `=` (only the first splits).
struct OptionList<'a> {
    form: &'static str,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> OptionList<'a> {
    /// `form` is the flag's syntax, quoted in messages; `keys` are the keys it accepts.
    fn parse(text: &'a str, form: &'static str, keys: &[&str]) -> Result<OptionList<'a>, OptionError> {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for item in text.split(',') {
            let Some((key, value)) = item.split_once('=') else {
                return Err(OptionError::NotKeyValue { item: item.to_owned(), form });
            };
            if !keys.contains(&key) {
                return Err(OptionError::UnknownKey { key: key.to_owned(), form });
            }
            if pairs.iter().any(|&(seen, _)| seen == key) {
                return Err(OptionError::Repeated(key.to_owned()));
            }
            pairs.push((key, value));
        }
        Ok(OptionList { form, pairs })
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.pairs.iter().find(|&&(k, _)| k == key).map(|&(_, value)| value)
    }

    fn required(&self, key: &str) -> Result<&'a str, OptionError> {
        self.get(key).ok_or_else(|| OptionError::Missing { key: key.to_owned(), form: self.form })
    }

    /// An optional `on|off` value, `default` when absent.
    fn on_off(&self, key: &str, default: bool) -> Result<bool, OptionError> {
        match self.get(key) {
            None => Ok(default),
            Some("on") => Ok(true),
            Some("off") => Ok(false),
            Some(value) => Err(OptionError::NotOnOff { key: key.to_owned(), value: value.to_owned() }),
        }
    }

    /// An optional value among fixed words: `parse` maps each word it knows.
    fn choice<T>(
        &self,
        key: &str,
        choices: &'static str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, OptionError> {
        self.get(key)
            .map(|value| {
                parse(value).ok_or_else(|| OptionError::NotAChoice {
                    key: key.to_owned(),
                    value: value.to_owned(),
                    choices,
                })
            })
            .transpose()
    }

    /// A rate limiter from a bandwidth (`bw_key`, bytes per second: `100M` or `100M/s`) and an
    /// operations (`ops_key`, per second) option; `None` if neither is given. Each bucket holds
    /// one second's worth and refills over a second, with no burst.
    fn rate_limiter(
        &self,
        bw_key: &'static str,
        ops_key: &'static str,
    ) -> Result<Option<RateLimiterConfig>, OptionError> {
        let bandwidth = self
            .get(bw_key)
            .map(|value| {
                let size = value.strip_suffix("/s").unwrap_or(value);
                parse_size(size).map_err(|source| OptionError::Bandwidth {
                    key: bw_key,
                    value: value.to_owned(),
                    source,
                })
            })
            .transpose()?;
        let ops = self.number::<u64>(ops_key)?;
        for (key, limit) in [(bw_key, bandwidth), (ops_key, ops)] {
            if limit == Some(0) {
                return Err(OptionError::ZeroLimit(key));
            }
        }
        Ok((bandwidth.is_some() || ops.is_some()).then(|| RateLimiterConfig {
            bandwidth: bandwidth.map(TokenBucket::per_second),
            ops: ops.map(TokenBucket::per_second),
        }))
    }

    /// An optional whole number of any type `FromStr` parses (`u32`, `u64`: their range is
    /// checked by the parse).
    fn number<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, OptionError> {
        self.get(key)
            .map(|value| {
                value
                    .parse()
                    .map_err(|_| OptionError::NotNumber { key: key.to_owned(), value: value.to_owned() })
            })
            .transpose()
    }
}

/// The syntax of `--disk`, as messages and the help quote it.
pub const DISK_FORM: &str =
    "path=PATH[,format=raw|qcow2][,readonly=on|off][,id=ID][,cache=writeback|none|unsafe]\
[,backing=on|off][,queues=N][,engine=sync|async][,bw=BYTES][,iops=N][,poll=MICROSECONDSus]";

/// `--disk path=PATH[,format=raw|qcow2][,readonly=on|off][,id=ID][,cache=...][,backing=on|off]
/// [,queues=N][,engine=sync|async][,bw=BYTES][,iops=N]`: the format is raw unless given (never
/// guessed from the file).
pub fn parse_disk(text: &str) -> Result<BlockConfig, OptionError> {
    let options = OptionList::parse(
        text,
        DISK_FORM,
        &["path", "format", "readonly", "id", "cache", "backing", "queues", "engine", "bw", "iops", "poll"],
    )?;
    let path = options.required("path")?;
    if path.is_empty() {
        return Err(OptionError::EmptyDiskPath);
    }
    let id = options.get("id");
    if let Some(id) = id.filter(|id| id.len() > DISK_ID_MAX_BYTES) {
        return Err(OptionError::DiskIdTooLong(id.to_owned()));
    }
    let defaults = BlockConfig::new(path);
    let format = options.choice("format", "raw, qcow2", |v| match v {
        "raw" => Some(ImageFormat::Raw),
        "qcow2" => Some(ImageFormat::Qcow2),
        _ => None,
    })?;
    let cache = options.choice("cache", "writeback, none, unsafe", |v| match v {
        "writeback" => Some(CacheMode::Writeback),
        "none" => Some(CacheMode::None),
        "unsafe" => Some(CacheMode::Unsafe),
        _ => None,
    })?;
    let io_engine = options.choice("engine", "sync, async", |v| match v {
        "sync" => Some(IoEngine::Sync),
        "async" => Some(IoEngine::Async),
        _ => None,
    })?;
    let num_queues = match options.get("queues") {
        None => defaults.num_queues,
        Some(text) => text
            .parse::<u16>()
            .ok()
            .filter(|n| (1..=MAX_DISK_QUEUES).contains(n))
            .ok_or_else(|| OptionError::QueueCount(text.to_owned()))?,
    };
    // Adaptive polling's longest window: microseconds, the unit written or not ("50us", "50").
    let poll_us = options
        .get("poll")
        .map(|text| {
            text.strip_suffix("us")
                .unwrap_or(text)
                .parse::<u32>()
                .ok()
                .filter(|&us| us <= MAX_POLL_US)
                .ok_or_else(|| OptionError::PollWindow(text.to_owned()))
        })
        .transpose()?;
    let rate_limiter = options.rate_limiter("bw", "iops")?;
    Ok(BlockConfig {
        read_only: options.on_off("readonly", false)?,
        id: id.map(str::to_owned),
        format: format.unwrap_or(defaults.format),
        cache: cache.unwrap_or(defaults.cache),
        allow_backing: options.on_off("backing", defaults.allow_backing)?,
        num_queues,
        io_engine: io_engine.unwrap_or(defaults.io_engine),
        rate_limiter,
        poll_us,
        ..defaults
    })
}

/// `--balloon size=MIB[,stats=SECONDS][,reporting=on|off][,deflate_on_oom=on|off]`
pub fn parse_balloon(text: &str) -> Result<BalloonConfig, OptionError> {
    let options = OptionList::parse(
        text,
        "size=MIB[,stats=SECONDS][,reporting=on|off][,deflate_on_oom=on|off]",
        &["size", "stats", "reporting", "deflate_on_oom"],
    )?;
    options.required("size")?;
    Ok(BalloonConfig {
        target_mib: options.number("size")?.unwrap_or_default(),
        // stats=0 means no statistics, like leaving it out.
        stats_interval: options
            .number::<u32>("stats")?
            .filter(|&s| s > 0)
            .map(|s| Duration::from_secs(s.into())),
        free_page_reporting: options.on_off("reporting", false)?,
        deflate_on_oom: options.on_off("deflate_on_oom", false)?,
    })
}

/// The syntax of `--net`, as messages and the help quote it.
pub const NET_FORM: &str =
    "tap=NAME|auto[,mac=XX:XX:XX:XX:XX:XX][,rx_bw=BYTES][,tx_bw=BYTES][,rx_ops=N][,tx_ops=N]";

/// `--net tap=NAME|auto[,mac=XX:XX:XX:XX:XX:XX][,rx_bw=BYTES][,tx_bw=BYTES][,rx_ops=N][,tx_ops=N]`:
/// rx is what the guest receives, tx what it sends; bandwidths in bytes per second (frames with
/// their 12-byte virtio-net header, as Firecracker counts), ops in frames per second.
pub fn parse_net(text: &str) -> Result<NetConfig, OptionError> {
    let options = OptionList::parse(text, NET_FORM, &["tap", "mac", "rx_bw", "tx_bw", "rx_ops", "tx_ops"])?;
    Ok(NetConfig {
        mac: options.get("mac").map(str::parse::<MacAddress>).transpose()?,
        rx_rate_limiter: options.rate_limiter("rx_bw", "rx_ops")?,
        tx_rate_limiter: options.rate_limiter("tx_bw", "tx_ops")?,
        ..NetConfig::new(parse_tap_name(options.required("tap")?)?)
    })
}

/// An interface name Linux accepts, or `auto` (`None`: the kernel picks one).
fn parse_tap_name(name: &str) -> Result<Option<String>, OptionError> {
    if name == "auto" {
        return Ok(None);
    }
    if name.is_empty() || name.len() > TAP_NAME_MAX_BYTES {
        return Err(OptionError::TapNameLength(name.to_owned()));
    }
    // '%' would make the kernel number the name itself.
    let forbidden = |c: char| matches!(c, '/' | ':' | '%') || c.is_whitespace() || c.is_control();
    if name == "." || name == ".." || name.chars().any(forbidden) {
        return Err(OptionError::TapNameCharacters(name.to_owned()));
    }
    Ok(Some(name.to_owned()))
}

/// `--vsock cid=N,uds=PATH`
pub fn parse_vsock(text: &str) -> Result<VsockConfig, OptionError> {
    let options = OptionList::parse(text, "cid=N,uds=PATH", &["cid", "uds"])?;
    let cid_text = options.required("cid")?;
    let cid = cid_text
        .parse::<u64>()
        .ok()
        .filter(|n| (VSOCK_MIN_CID..=VSOCK_MAX_CID).contains(n))
        .ok_or_else(|| OptionError::Cid(cid_text.to_owned()))?;
    let uds_path = options.required("uds")?;
    if uds_path.is_empty() {
        return Err(OptionError::EmptySocketPath);
    }
    Ok(VsockConfig { cid, uds_path: PathBuf::from(uds_path) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsock_forms() {
        let vsock = |cid, path: &str| VsockConfig { cid, uds_path: path.into() };
        assert_eq!(parse_vsock("cid=3,uds=/tmp/v.sock"), Ok(vsock(3, "/tmp/v.sock")));
        assert_eq!(parse_vsock("uds=v=1.sock,cid=4294967294"), Ok(vsock(4294967294, "v=1.sock")));
        for (bad, why) in [
            ("cid=3", "uds= is missing"),
            ("uds=/tmp/v", "cid= is missing"),
            ("cid=2,uds=v", "must be 3 to 4294967294"),
            ("cid=4294967295,uds=v", "must be 3 to 4294967294"),
            ("cid=x,uds=v", "must be 3 to"),
            ("cid=3,uds=", "needs a path"),
            ("cid=3,cid=4,uds=v", "cid= is given twice"),
            ("cid=3,uds=v,port=5", "unknown key 'port'"),
            ("cid=3,uds=a,b", "'b' is not KEY=VALUE"),
        ] {
            let error = parse_vsock(bad).unwrap_err().to_string();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn balloon_forms() {
        let balloon = |target_mib, stats: Option<u64>, free_page_reporting, deflate_on_oom| BalloonConfig {
            target_mib,
            stats_interval: stats.map(Duration::from_secs),
            free_page_reporting,
            deflate_on_oom,
        };
        assert_eq!(parse_balloon("size=64"), Ok(balloon(64, None, false, false)));
        assert_eq!(parse_balloon("stats=5,size=0"), Ok(balloon(0, Some(5), false, false)));
        assert_eq!(parse_balloon("size=1,stats=0,reporting=on"), Ok(balloon(1, None, true, false)));
        assert_eq!(
            parse_balloon("size=1,deflate_on_oom=on,reporting=off"),
            Ok(balloon(1, None, false, true))
        );
        for (bad, why) in [
            ("64", "not KEY=VALUE"),
            ("stats=5", "size= is missing"),
            ("size=64M", "must be a whole number"),
            ("size=-1", "must be a whole number"),
            ("size=1,stats=1.5", "must be a whole number"),
            ("size=1,reporting=yes", "must be on or off"),
            ("size=1,size=2", "size= is given twice"),
            ("size=1,target=2", "unknown key 'target'"),
        ] {
            let error = parse_balloon(bad).unwrap_err().to_string();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn net_forms() {
        let mac = MacAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        let net = |tap: Option<&str>, mac| NetConfig { mac, ..NetConfig::new(tap.map(str::to_owned)) };
        assert_eq!(parse_net("tap=tap0"), Ok(net(Some("tap0"), None)));
        assert_eq!(parse_net("tap=auto"), Ok(net(None, None)));
        assert_eq!(
            parse_net("mac=52:54:00:12:34:56,tap=kt-0123456789ab"),
            Ok(net(Some("kt-0123456789ab"), Some(mac)))
        );
        for (bad, why) in [
            ("tap0", "not KEY=VALUE"),
            ("mac=52:54:00:12:34:56", "tap= is missing"),
            ("tap=", "must be 1 to 15 bytes"),
            ("tap=a-name-of-16-bytes", "must be 1 to 15 bytes"),
            ("tap=a/b", "not an interface name"),
            ("tap=tap%d", "not an interface name"),
            ("tap=..", "not an interface name"),
            ("tap=tap0,mac=52:54:00:12:34", "not a MAC address"),
            ("tap=tap0,mac=01:00:5e:00:00:01", "multicast"),
            ("tap=tap0,model=e1000", "unknown key 'model'"),
            ("tap=tap0,tap=tap1", "tap= is given twice"),
            ("tap=tap0,rx_bw=fast", "rx_bw=fast: 'fast' is not a size"),
            ("tap=tap0,tx_bw=0", "tx_bw=0 limits nothing"),
            ("tap=tap0,rx_ops=0", "rx_ops=0 limits nothing"),
            ("tap=tap0,tx_ops=-1", "tx_ops=-1: the value must be a whole number"),
            ("tap=tap0,bw=1M", "unknown key 'bw'"),
            ("tap=tap0,rx_bw=1M,rx_bw=2M", "rx_bw= is given twice"),
        ] {
            let error = parse_net(bad).unwrap_err().to_string();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn net_rate_limits() {
        let limited = parse_net("tap=tap0,rx_bw=10M/s,tx_bw=512K,tx_ops=1000").unwrap();
        assert_eq!(
            limited.rx_rate_limiter,
            Some(RateLimiterConfig { bandwidth: Some(TokenBucket::per_second(10 << 20)), ops: None })
        );
        assert_eq!(
            limited.tx_rate_limiter,
            Some(RateLimiterConfig {
                bandwidth: Some(TokenBucket::per_second(512 << 10)),
                ops: Some(TokenBucket::per_second(1000)),
            })
        );
        let rx_ops = parse_net("tap=auto,rx_ops=50").unwrap();
        assert_eq!(rx_ops.rx_rate_limiter.and_then(|l| l.ops), Some(TokenBucket::per_second(50)));
        assert_eq!(rx_ops.tx_rate_limiter, None);
        limited.validate().unwrap();
    }

    #[test]
    fn disk_forms() {
        let disk = |path: &str, read_only, id: Option<&str>| BlockConfig {
            read_only,
            id: id.map(str::to_owned),
            ..BlockConfig::new(path)
        };
        assert_eq!(parse_disk("path=/d/a.img"), Ok(disk("/d/a.img", false, None)));
        assert_eq!(parse_disk("readonly=on,path=a.img"), Ok(disk("a.img", true, None)));
        assert_eq!(parse_disk("path=a.img,readonly=off,id=data"), Ok(disk("a.img", false, Some("data"))));
        assert_eq!(parse_disk("path=a=b.img"), Ok(disk("a=b.img", false, None)));
        let everything =
            "path=a.qcow2,format=qcow2,cache=none,backing=off,queues=4,engine=async,bw=100M/s,iops=5000,poll=50us";
        assert_eq!(
            parse_disk(everything),
            Ok(BlockConfig {
                format: ImageFormat::Qcow2,
                cache: CacheMode::None,
                allow_backing: false,
                num_queues: 4,
                io_engine: IoEngine::Async,
                rate_limiter: Some(RateLimiterConfig {
                    bandwidth: Some(TokenBucket::per_second(100 << 20)),
                    ops: Some(TokenBucket::per_second(5000)),
                }),
                poll_us: Some(50),
                ..BlockConfig::new("a.qcow2")
            })
        );
        let parsed = |text| parse_disk(text).unwrap();
        assert_eq!(parsed("path=a,cache=unsafe,format=raw").cache, CacheMode::Unsafe);
        assert_eq!(parsed("path=a,cache=writeback,engine=sync").io_engine, IoEngine::Sync);
        assert_eq!(
            parsed("path=a,bw=4096").rate_limiter.and_then(|l| l.bandwidth).map(|b| b.size),
            Some(4096)
        );
        assert_eq!(parsed("path=a,queues=16").num_queues, 16);
        assert_eq!(parsed("path=a,poll=1000").poll_us, Some(1000));
        assert_eq!(parsed("path=a,poll=0us").poll_us, Some(0));
        // Every form parses to a configuration the VMM's checks accept.
        parsed(everything).validate().unwrap();
        for (bad, why) in [
            ("a.img", "not KEY=VALUE"),
            ("readonly=on", "path= is missing"),
            ("path=", "needs a file"),
            ("path=a.img,readonly=yes", "must be on or off"),
            ("path=a.img,path=b.img", "path= is given twice"),
            ("path=a.img,", "'' is not KEY=VALUE"),
            ("path=a.img,id=0123456789abcdefghijk", "longer than 20 bytes"),
            ("path=a.img,format=vmdk", "format=vmdk: the value must be one of raw, qcow2"),
            ("path=a.img,format=QCOW2", "must be one of raw, qcow2"),
            ("path=a.img,cache=directsync", "must be one of writeback, none, unsafe"),
            ("path=a.img,engine=io_uring", "must be one of sync, async"),
            ("path=a.img,backing=no", "backing=no: the value must be on or off"),
            ("path=a.img,queues=0", "1 to 16 queues"),
            ("path=a.img,queues=17", "1 to 16 queues"),
            ("path=a.img,queues=x", "1 to 16 queues"),
            ("path=a.img,bw=fast", "bw=fast: 'fast' is not a size"),
            ("path=a.img,bw=1X", "unknown unit"),
            ("path=a.img,bw=0", "bw=0 limits nothing"),
            ("path=a.img,iops=0", "iops=0 limits nothing"),
            ("path=a.img,iops=1.5", "must be a whole number"),
            ("path=a.img,aio=native", "unknown key 'aio'"),
            ("path=a.img,poll=1001us", "poll=1001us: the window must be 0 to 1000us"),
            ("path=a.img,poll=50ms", "poll=50ms: the window must be"),
            ("path=a.img,poll=-1", "the window must be"),
        ] {
            let error = parse_disk(bad).unwrap_err().to_string();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    proptest::proptest! {
        /// Whatever the text, the parser answers (no panic), and what it accepts passes the
        /// VMM's checks.
        #[test]
        fn any_disk_text_is_parsed_or_refused(
            items in proptest::collection::vec(
                (
                    "(path|format|readonly|id|cache|backing|queues|engine|bw|iops|x)",
                    "(raw|qcow2|on|off|none|unsafe|writeback|sync|async|[0-9]{1,22}[KMGT]?(/s)?|[a-z.=]{0,8})",
                ),
                0..8,
            )
        ) {
            let text = items.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
            if let Ok(disk) = parse_disk(&text) {
                proptest::prop_assert!(disk.validate().is_ok(), "{text}: {disk:?}");
            }
        }

        /// Likewise for `--net`; a limit it accepts is the one given.
        #[test]
        fn any_net_text_is_parsed_or_refused(
            items in proptest::collection::vec(
                (
                    "(tap|mac|rx_bw|tx_bw|rx_ops|tx_ops|bw|x)",
                    "(auto|tap0|52:54:00:12:34:56|[0-9]{1,22}[KMGT]?(/s)?|[a-z0-9.=:%/]{0,12})",
                ),
                0..8,
            )
        ) {
            let text = items.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
            if let Ok(net) = parse_net(&text) {
                proptest::prop_assert!(net.validate().is_ok(), "{text}: {net:?}");
                if let Some(ops) = items.iter().find(|(k, _)| k == "tx_ops").map(|(_, v)| v) {
                    let size = net.tx_rate_limiter.and_then(|l| l.ops).map(|b| b.size);
                    proptest::prop_assert_eq!(size, ops.parse().ok());
                }
            }
        }
    }
}
