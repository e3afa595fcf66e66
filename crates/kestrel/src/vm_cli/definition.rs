//! VM definitions on the command line: `kestrel vm define`'s flags (the same as `kestrel run`'s,
//! through the same parsers, plus `volume=` disks and `network=` cards) and definition files
//! (TOML or JSON), into [`VmDefinition`]; and a definition back to TOML (`dump`, `edit`).

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::Args;
use model::config::{MacAddress, VSOCK_MAX_CID, VSOCK_MIN_CID};
use model::manager::vm::{
    BalloonDefinition, CrashPolicy, DiskDefinition, NicDefinition, Transport, VmDefinition, VsockDefinition,
};

use crate::device_options::{parse_balloon, parse_disk, parse_net, OptionError};
use crate::placement_options::{parse_cpus, parse_memory, PlacementOptionError};

/// The largest definition file read (a definition is a few hundred bytes).
pub const MAX_DEFINITION_BYTES: u64 = 1 << 20;

/// Why a definition could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is larger than {MAX_DEFINITION_BYTES} bytes; a definition is far smaller")]
    TooLarge { path: String },
    #[error("{path}: {message}")]
    Toml { path: String, message: String },
    #[error("{path}: {source}")]
    Json { path: String, source: serde_json::Error },
    #[error("{path}: name the file .toml or .json (or give - for JSON on stdin)")]
    UnknownExtension { path: String },
    #[error("give the VM's name, as in `kestrel vm define web --kernel vmlinux`, or a --file")]
    NoName,
    #[error("the definition names the VM '{file}' but the command line says '{given}'")]
    NameMismatch { file: String, given: String },
    #[error("--kernel is needed (or a --file)")]
    NoKernel,
    #[error("{path}: {source}")]
    Path { path: String, source: std::io::Error },
    #[error("the definition cannot be written as TOML: {0}")]
    ToToml(String),
}

/// Why a device flag of `kestrel vm define` is refused (clap prints it after the flag).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DefineFlagError {
    #[error(transparent)]
    Option(#[from] OptionError),
    #[error(transparent)]
    Placement(#[from] PlacementOptionError),
    #[error("give exactly one of path= and volume=")]
    DiskSource,
    #[error("volume={0}: the form is POOL/VOLUME")]
    Volume(String),
    #[error("format= goes with path=; a volume's format is the pool's record of it")]
    VolumeFormat,
    #[error("{0}= is not kept in a VM definition (use `kestrel run` for it)")]
    NotInDefinition(&'static str),
    #[error("give exactly one of network=NAME and tap=NAME (the daemon makes the taps of a network)")]
    NicSource,
    #[error("ip={0}: not an IPv4 address")]
    Ip(String),
    #[error("ip= is for cards on a network (a DHCP reservation)")]
    IpWithoutNetwork,
    #[error("'{0}' is not cid=N; the daemon makes the vsock socket itself")]
    Vsock(String),
    #[error("cid={0}: the CID must be {VSOCK_MIN_CID} to {VSOCK_MAX_CID}")]
    Cid(String),
    #[error("the memory must be a whole number of MiB, at most 4096 GiB")]
    MemoryMib,
    #[error("'{0}' is not stop or restart")]
    CrashPolicy(String),
}

/// `kestrel vm define`'s definition flags: `kestrel run`'s, or a file.
#[derive(Args, Debug, Default)]
pub struct DefinitionFlags {
    /// Read the whole definition from a file: TOML (.toml) or JSON (.json), or `-` for JSON on
    /// stdin. NAME, when given, must match the file's. `kestrel vm dump NAME` prints one.
    /// Example: --file web.toml
    #[arg(
        long,
        value_name = "DEF.toml|DEF.json|-",
        conflicts_with_all = ["kernel", "initrd", "cmdline", "cpus", "memory", "transport", "disks", "nics", "vsock", "rng", "balloon", "autostart", "on_crash"]
    )]
    pub file: Option<PathBuf>,

    /// Kernel to boot (ELF vmlinux or bzImage); a relative path is made absolute here.
    /// Example: --kernel /var/lib/kestrel/kernels/vmlinux
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,

    /// Initial ramdisk. Example: --initrd initramfs.cpio
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// Kernel command line (Kestrel's default when absent). Example: --cmdline "console=ttyS0 root=/dev/vda"
    #[arg(long, value_name = "TEXT")]
    pub cmdline: Option<String>,

    /// Number of vCPUs, 1 to 254 (placement options are `kestrel run`'s alone). Example: --cpus 2
    #[arg(long, value_name = "N", value_parser = parse_cpu_count)]
    pub cpus: Option<u8>,

    /// Guest RAM with a K/M/G/T suffix, a whole number of MiB. Example: --memory 1G
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_mib)]
    pub memory: Option<u32>,

    /// How virtio devices reach the guest: mmio or pci. Example: --transport pci
    #[arg(long, value_name = "mmio|pci", value_parser = parse_transport)]
    pub transport: Option<Transport>,

    /// A disk: path=PATH[,format=raw|qcow2] (an image outside any pool) or volume=POOL/VOLUME
    /// (a pool's volume), then [,readonly=on][,id=SERIAL][,cache=writeback|none|unsafe]
    /// [,queues=N][,bw=BYTES][,iops=N]. Repeat for more disks.
    /// Example: --disk volume=default/web.qcow2 --disk path=/srv/data.img,readonly=on
    #[arg(long = "disk", value_name = "path=PATH|volume=POOL/VOL[,...]", value_parser = parse_disk_definition)]
    pub disks: Vec<DiskDefinition>,

    /// A network card: network=NAME[,mac=MAC][,ip=IPV4] (on a `kestrel net` network; ip= is a
    /// DHCP reservation) or tap=NAME[,mac=MAC] (an existing host tap), then [,rx_bw=BYTES]
    /// [,tx_bw=BYTES]. Repeat for more cards.
    /// Example: --net network=default,ip=10.77.0.10 --net tap=tap0,mac=52:54:00:12:34:56
    #[arg(long = "net", value_name = "network=NAME|tap=NAME[,...]", value_parser = parse_nic_definition)]
    pub nics: Vec<NicDefinition>,

    /// A virtio-vsock device with this guest CID (3 to 4294967294); the daemon makes its host
    /// socket in the VM's directory. Example: --vsock cid=3
    #[arg(long, value_name = "cid=N", value_parser = parse_vsock_definition)]
    pub vsock: Option<VsockDefinition>,

    /// A virtio-rng entropy device. Example: --rng
    #[arg(long)]
    pub rng: bool,

    /// A memory balloon, as for `kestrel run`. Example: --balloon size=256,stats=5,reporting=on
    #[arg(
        long,
        value_name = "size=MIB[,stats=SECONDS][,reporting=on|off][,deflate_on_oom=on|off]",
        value_parser = parse_balloon_definition
    )]
    pub balloon: Option<BalloonDefinition>,

    /// Start the VM whenever the daemon starts. Example: --autostart
    #[arg(long)]
    pub autostart: bool,

    /// What the daemon does when the VM crashes: stop (keep it crashed, the default) or restart.
    /// Example: --on-crash restart
    #[arg(long, value_name = "stop|restart", value_parser = parse_crash_policy)]
    pub on_crash: Option<CrashPolicy>,
}

impl DefinitionFlags {
    /// The definition the flags (or the file) describe, for the VM `name` (optional with a file).
    pub fn into_definition(self, name: Option<String>) -> Result<VmDefinition, DefinitionError> {
        if let Some(file) = &self.file {
            let mut definition = load_file(file)?;
            if let Some(given) = name {
                if given != definition.name {
                    return Err(DefinitionError::NameMismatch { file: definition.name, given });
                }
            }
            definition.kernel = absolute(&definition.kernel)?;
            definition.initrd = definition.initrd.as_deref().map(absolute).transpose()?;
            return Ok(definition);
        }
        let name = name.ok_or(DefinitionError::NoName)?;
        let kernel = absolute(self.kernel.as_deref().ok_or(DefinitionError::NoKernel)?)?;
        let mut disks = self.disks;
        for disk in &mut disks {
            disk.path = disk.path.as_deref().map(absolute).transpose()?;
        }
        Ok(VmDefinition {
            name,
            kernel,
            initrd: self.initrd.as_deref().map(absolute).transpose()?,
            cmdline: self.cmdline,
            cpus: self.cpus.unwrap_or(1),
            memory_mib: self.memory.unwrap_or(256),
            transport: self.transport.unwrap_or_default(),
            disks,
            nics: self.nics,
            vsock: self.vsock,
            rng: self.rng,
            balloon: self.balloon,
            autostart: self.autostart,
            on_crash: self.on_crash.unwrap_or_default(),
        })
    }
}

/// The daemon resolves no relative paths (its working directory is not the user's).
fn absolute(path: &Path) -> Result<PathBuf, DefinitionError> {
    std::path::absolute(path)
        .map_err(|source| DefinitionError::Path { path: path.display().to_string(), source })
}

/// Reads a definition file: `.toml` as TOML, `.json` as JSON, `-` as JSON on stdin.
pub fn load_file(path: &Path) -> Result<VmDefinition, DefinitionError> {
    let shown = path.display().to_string();
    if path == Path::new("-") {
        let text = read_bounded(std::io::stdin().lock(), "stdin")?;
        return parse_json(&text, "stdin");
    }
    let file =
        std::fs::File::open(path).map_err(|source| DefinitionError::Read { path: shown.clone(), source })?;
    let text = read_bounded(file, &shown)?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => parse_toml(&text, &shown),
        Some("json") => parse_json(&text, &shown),
        _ => Err(DefinitionError::UnknownExtension { path: shown }),
    }
}

/// Reads at most [`MAX_DEFINITION_BYTES`] (a larger input is an error, not a large allocation).
fn read_bounded(reader: impl Read, shown: &str) -> Result<String, DefinitionError> {
    let mut text = String::new();
    reader
        .take(MAX_DEFINITION_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|source| DefinitionError::Read { path: shown.to_owned(), source })?;
    if text.len() as u64 > MAX_DEFINITION_BYTES {
        return Err(DefinitionError::TooLarge { path: shown.to_owned() });
    }
    Ok(text)
}

/// A TOML definition.
pub fn parse_toml(text: &str, shown: &str) -> Result<VmDefinition, DefinitionError> {
    toml::from_str(text).map_err(|e| DefinitionError::Toml {
        path: shown.to_owned(),
        // toml's message spans lines (a caret under the spot); errors here are one line.
        message: one_line(&e.to_string()),
    })
}

/// A JSON definition.
pub fn parse_json(text: &str, shown: &str) -> Result<VmDefinition, DefinitionError> {
    serde_json::from_str(text).map_err(|source| DefinitionError::Json { path: shown.to_owned(), source })
}

/// A definition as TOML (what `dump` prints and `edit` opens).
pub fn to_toml(definition: &VmDefinition) -> Result<String, DefinitionError> {
    toml::to_string(definition).map_err(|e| DefinitionError::ToToml(e.to_string()))
}

/// Joins a multi-line message into one line.
pub fn one_line(text: &str) -> String {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

/// `key=value` items of a flag, without parsing their values (the flag's own parser does).
fn items(text: &str) -> Vec<(&str, &str)> {
    text.split(',').filter_map(|item| item.split_once('=')).collect()
}

/// The flag's text without the items whose key is in `keys`.
fn without(text: &str, keys: &[&str]) -> String {
    text.split(',')
        .filter(|item| !keys.iter().any(|k| item.split_once('=').is_some_and(|(key, _)| key == *k)))
        .collect::<Vec<_>>()
        .join(",")
}

/// `--disk`: `kestrel run`'s parser checks every key it knows; `volume=` is the definition's own.
fn parse_disk_definition(text: &str) -> Result<DiskDefinition, DefineFlagError> {
    let given = items(text);
    let has = |key: &str| given.iter().any(|(k, _)| *k == key);
    for key in ["backing", "engine", "poll"] {
        if has(key) {
            return Err(DefineFlagError::NotInDefinition(match key {
                "backing" => "backing",
                "engine" => "engine",
                _ => "poll",
            }));
        }
    }
    let volume = given.iter().find(|(k, _)| *k == "volume").map(|(_, v)| *v);
    if volume.is_some() == has("path") {
        return Err(DefineFlagError::DiskSource);
    }
    if let Some(volume) = volume {
        if has("format") {
            return Err(DefineFlagError::VolumeFormat);
        }
        let valid = volume.split_once('/').is_some_and(|(pool, vol)| {
            model::manager::name::check_name(pool).is_ok() && model::manager::name::check_name(vol).is_ok()
        });
        if !valid {
            return Err(DefineFlagError::Volume(volume.chars().take(80).collect()));
        }
    }
    // The volume's place is taken by a path the parser accepts, so it checks the other keys.
    let rest = without(text, &["volume"]);
    let checked = if volume.is_some() {
        if rest.is_empty() {
            "path=volume".to_owned()
        } else {
            format!("path=volume,{rest}")
        }
    } else {
        rest
    };
    let block = parse_disk(&checked)?;
    let limiter = block.rate_limiter.unwrap_or_default();
    Ok(DiskDefinition {
        volume: volume.map(str::to_owned),
        path: volume.is_none().then_some(block.path),
        format: has("format").then_some(block.format),
        readonly: block.read_only,
        id: block.id,
        cache: has("cache").then_some(block.cache),
        queues: has("queues").then_some(block.num_queues),
        bw: limiter.bandwidth.map(|b| b.size),
        iops: limiter.ops.map(|b| b.size),
    })
}

/// `--net`: `tap=` cards through `kestrel run`'s parser; `network=` and `ip=` are the
/// definition's own.
fn parse_nic_definition(text: &str) -> Result<NicDefinition, DefineFlagError> {
    let given = items(text);
    let get = |key: &str| given.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    if given.iter().any(|(k, _)| *k == "rx_ops" || *k == "tx_ops") {
        return Err(DefineFlagError::NotInDefinition("rx_ops/tx_ops"));
    }
    let network = get("network");
    let tap = get("tap").filter(|t| *t != "auto");
    if network.is_some() == tap.is_some() {
        return Err(DefineFlagError::NicSource);
    }
    let ip = get("ip")
        .map(|ip| ip.parse().map_err(|_| DefineFlagError::Ip(ip.chars().take(40).collect())))
        .transpose()?;
    if ip.is_some() && network.is_none() {
        return Err(DefineFlagError::IpWithoutNetwork);
    }
    if let Some(network) = network {
        model::manager::name::check_name(network).map_err(|_| DefineFlagError::NicSource)?;
    }
    let rest = without(text, &["network", "ip"]);
    let checked = if network.is_some() {
        if rest.is_empty() {
            "tap=network".to_owned()
        } else {
            format!("tap=network,{rest}")
        }
    } else {
        rest
    };
    let net = parse_net(&checked)?;
    let rate =
        |limiter: Option<model::config::RateLimiterConfig>| limiter.and_then(|l| l.bandwidth).map(|b| b.size);
    Ok(NicDefinition {
        network: network.map(str::to_owned),
        tap: tap.map(str::to_owned),
        mac: net.mac.map(|mac: MacAddress| mac.to_string()),
        ip,
        rx_bw: rate(net.rx_rate_limiter),
        tx_bw: rate(net.tx_rate_limiter),
    })
}

/// `--vsock cid=N`.
fn parse_vsock_definition(text: &str) -> Result<VsockDefinition, DefineFlagError> {
    let cid =
        text.strip_prefix("cid=").ok_or_else(|| DefineFlagError::Vsock(text.chars().take(40).collect()))?;
    let number = cid
        .parse::<u64>()
        .ok()
        .filter(|n| (VSOCK_MIN_CID..=VSOCK_MAX_CID).contains(n))
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| DefineFlagError::Cid(cid.chars().take(40).collect()))?;
    Ok(VsockDefinition { cid: number })
}

/// `--balloon`, through `kestrel run`'s parser.
fn parse_balloon_definition(text: &str) -> Result<BalloonDefinition, DefineFlagError> {
    let balloon = parse_balloon(text)?;
    Ok(BalloonDefinition {
        size_mib: balloon.target_mib,
        stats_secs: balloon.stats_interval.map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
        deflate_on_oom: balloon.deflate_on_oom,
        free_page_reporting: balloon.free_page_reporting,
    })
}

/// `--cpus N`, through `kestrel run`'s parser; placement is not part of a definition.
fn parse_cpu_count(text: &str) -> Result<u8, DefineFlagError> {
    if text.contains(',') {
        return Err(DefineFlagError::NotInDefinition("pin/others/rt"));
    }
    Ok(parse_cpus(text)?.count)
}

/// `--memory SIZE`, through `kestrel run`'s parser, in MiB.
fn parse_memory_mib(text: &str) -> Result<u32, DefineFlagError> {
    if text.contains(',') {
        return Err(DefineFlagError::NotInDefinition("backend/hugepages/thp/ksm/mlock/numa"));
    }
    let bytes = parse_memory(text)?.bytes;
    if bytes % (1 << 20) != 0 {
        return Err(DefineFlagError::MemoryMib);
    }
    u32::try_from(bytes >> 20).map_err(|_| DefineFlagError::MemoryMib)
}

fn parse_transport(text: &str) -> Result<Transport, DefineFlagError> {
    match text {
        "mmio" => Ok(Transport::Mmio),
        "pci" => Ok(Transport::Pci),
        _ => Err(DefineFlagError::Option(OptionError::NotAChoice {
            key: "transport".into(),
            value: text.chars().take(40).collect(),
            choices: "mmio, pci",
        })),
    }
}

fn parse_crash_policy(text: &str) -> Result<CrashPolicy, DefineFlagError> {
    match text {
        "stop" => Ok(CrashPolicy::Stop),
        "restart" => Ok(CrashPolicy::Restart),
        _ => Err(DefineFlagError::CrashPolicy(text.chars().take(40).collect())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn volume_and_path_disks() {
        let disk = parse_disk_definition("volume=default/web.qcow2,readonly=on,queues=2,bw=10M").unwrap();
        assert_eq!(disk.volume.as_deref(), Some("default/web.qcow2"));
        assert_eq!(disk.path, None);
        assert!(disk.readonly);
        assert_eq!(disk.queues, Some(2));
        assert_eq!(disk.bw, Some(10 << 20));
        assert_eq!(disk.format, None);

        let disk =
            parse_disk_definition("path=/srv/a.qcow2,format=qcow2,cache=none,id=data,iops=100").unwrap();
        assert_eq!(disk.path.as_deref(), Some(Path::new("/srv/a.qcow2")));
        assert_eq!(disk.format, Some(model::disk::ImageFormat::Qcow2));
        assert_eq!(disk.cache, Some(model::disk::CacheMode::None));
        assert_eq!(disk.id.as_deref(), Some("data"));
        assert_eq!(disk.iops, Some(100));
        assert_eq!(disk.queues, None);

        for (bad, why) in [
            ("volume=a/b,path=/x", "exactly one of path= and volume="),
            ("readonly=on", "exactly one of path= and volume="),
            ("volume=ab", "the form is POOL/VOLUME"),
            ("volume=../x/y", "the form is POOL/VOLUME"),
            ("volume=p/v,format=raw", "a volume's format"),
            ("path=/x,engine=sync", "engine= is not kept"),
            ("path=/x,queues=99", "queues=99"),
            ("volume=p/v,colour=blue", "unknown key 'colour'"),
        ] {
            let error = parse_disk_definition(bad).unwrap_err().to_string();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn network_and_tap_cards() {
        let nic =
            parse_nic_definition("network=default,mac=52:54:00:12:34:56,ip=10.77.0.10,rx_bw=1M").unwrap();
        assert_eq!(nic.network.as_deref(), Some("default"));
        assert_eq!(nic.tap, None);
        assert_eq!(nic.mac.as_deref(), Some("52:54:00:12:34:56"));
        assert_eq!(nic.ip, Some("10.77.0.10".parse().unwrap()));
        assert_eq!(nic.rx_bw, Some(1 << 20));

        let nic = parse_nic_definition("tap=tap0").unwrap();
        assert_eq!(nic.tap.as_deref(), Some("tap0"));
        for (bad, why) in [
            ("network=a,tap=b", "exactly one of network=NAME and tap=NAME"),
            ("tap=auto", "exactly one of"),
            ("tap=t0,ip=10.0.0.1", "ip= is for cards on a network"),
            ("network=n,ip=300.1.1.1", "not an IPv4 address"),
            ("network=n,mac=01:00:00:00:00:00", "multicast"),
            ("network=n,rx_ops=5", "not kept"),
        ] {
            let error = parse_nic_definition(bad).unwrap_err().to_string();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn sizes_counts_and_choices() {
        assert_eq!(parse_memory_mib("1G"), Ok(1024));
        assert_eq!(parse_memory_mib("512M"), Ok(512));
        assert_eq!(parse_memory_mib("1000K"), Err(DefineFlagError::MemoryMib));
        assert!(parse_memory_mib("1G,thp=on").is_err());
        assert_eq!(parse_cpu_count("4"), Ok(4));
        assert!(parse_cpu_count("0").is_err());
        assert!(parse_cpu_count("2,pin=0").is_err());
        assert_eq!(parse_vsock_definition("cid=3"), Ok(VsockDefinition { cid: 3 }));
        assert!(parse_vsock_definition("cid=2").is_err());
        assert!(parse_vsock_definition("cid=3,uds=/x").is_err());
        let balloon = parse_balloon_definition("size=64,stats=5,reporting=on").unwrap();
        assert_eq!(balloon.size_mib, 64);
        assert_eq!(balloon.stats_secs, 5);
        assert!(balloon.free_page_reporting);
        assert_eq!(parse_crash_policy("restart"), Ok(CrashPolicy::Restart));
        assert!(parse_crash_policy("reboot").is_err());
    }

    #[test]
    fn flags_make_a_definition_with_absolute_paths() {
        let flags = DefinitionFlags {
            kernel: Some("vmlinux".into()),
            cpus: Some(2),
            memory: Some(512),
            disks: vec![parse_disk_definition("path=disk.img").unwrap()],
            autostart: true,
            ..Default::default()
        };
        let definition = flags.into_definition(Some("web".into())).unwrap();
        assert_eq!(definition.name, "web");
        assert!(definition.kernel.is_absolute() && definition.kernel.ends_with("vmlinux"));
        assert!(definition.disks[0].path.as_ref().unwrap().is_absolute());
        assert_eq!((definition.cpus, definition.memory_mib, definition.autostart), (2, 512, true));
        assert!(matches!(
            DefinitionFlags::default().into_definition(Some("x".into())),
            Err(DefinitionError::NoKernel)
        ));
        assert!(matches!(DefinitionFlags::default().into_definition(None), Err(DefinitionError::NoName)));
    }

    #[test]
    fn the_documented_toml_reads_and_a_dump_reads_back_the_same() {
        let text = r#"
            name = "web"
            kernel = "/var/lib/kestrel/kernels/vmlinux"
            cmdline = "console=ttyS0 root=/dev/vda"
            cpus = 2
            memory_mib = 512
            autostart = true
            on_crash = "restart"
            [[disk]]
            volume = "default/web.qcow2"
            [[nic]]
            network = "default"
            ip = "10.77.0.10"
            [balloon]
            size_mib = 64
        "#;
        let definition = parse_toml(text, "web.toml").unwrap();
        assert_eq!(definition.disks[0].volume.as_deref(), Some("default/web.qcow2"));
        assert_eq!(definition.on_crash, CrashPolicy::Restart);
        let dumped = to_toml(&definition).unwrap();
        assert_eq!(parse_toml(&dumped, "dump").unwrap(), definition);
        let json = serde_json::to_string(&definition).unwrap();
        assert_eq!(parse_json(&json, "dump").unwrap(), definition);
    }

    #[test]
    fn bad_files_say_where_in_one_line() {
        let error =
            parse_toml("name = \"web\"\nkernel = \"/k\"\ncolour = \"blue\"\n", "web.toml").unwrap_err();
        let text = error.to_string();
        assert!(text.starts_with("web.toml: ") && text.contains("colour"), "{text}");
        assert!(!text.contains('\n'), "{text}");
        assert!(parse_json("{\"name\": \"web\"}", "x.json").unwrap_err().to_string().contains("kernel"));
        let dir = tempfile::tempdir().unwrap();
        let yaml = dir.path().join("web.yaml");
        std::fs::write(&yaml, "name: web").unwrap();
        assert!(matches!(load_file(&yaml), Err(DefinitionError::UnknownExtension { .. })));
        let big = dir.path().join("big.json");
        std::fs::write(&big, vec![b' '; (MAX_DEFINITION_BYTES + 10) as usize]).unwrap();
        assert!(matches!(load_file(&big), Err(DefinitionError::TooLarge { .. })));
    }

    proptest! {
        #[test]
        fn definition_parsers_never_panic(text in "\\PC{0,200}") {
            let _ = parse_toml(&text, "p.toml");
            let _ = parse_json(&text, "p.json");
        }

        #[test]
        fn device_flags_never_panic(text in "[a-z_=/,.:0-9]{0,80}") {
            let _ = parse_disk_definition(&text);
            let _ = parse_nic_definition(&text);
            let _ = parse_vsock_definition(&text);
            let _ = parse_balloon_definition(&text);
        }

        #[test]
        fn an_accepted_disk_names_one_source(text in "(volume=[a-z]{1,4}/[a-z]{1,4}|path=/[a-z]{1,8})(,readonly=(on|off)|,queues=[0-9]{1,2}|,bw=[0-9]{1,3}M)*") {
            if let Ok(disk) = parse_disk_definition(&text) {
                prop_assert!(disk.volume.is_some() != disk.path.is_some());
            }
        }
    }
}
