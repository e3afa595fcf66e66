//! Command-line syntax: every flag, its help and its examples.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tracing::level_filters::LevelFilter;
use vmm::config::BalloonConfig;
use vmm::config::{
    BlockConfig, SerialConfig, VirtioConfig, VirtioTransport, VmConfig, DEFAULT_CMDLINE, DISK_ID_MAX_BYTES,
};
use vmm::config::{MacAddress, NetConfig, TAP_NAME_MAX_BYTES};
use vmm::config::{VsockConfig, VSOCK_MAX_CID, VSOCK_MIN_CID};

use crate::size::parse_size;

#[derive(Parser, Debug)]
#[command(
    name = "kestrel",
    version,
    about = "Kestrel runs Linux virtual machines on KVM.",
    after_help = "Examples:\n  \
        kestrel run --kernel vmlinux --initrd initramfs.cpio --memory 512M --cpus 2\n  \
        kestrel run --kernel bzImage --cmdline \"console=ttyS0 root=/dev/vda\" --serial file:console.log\n\n\
        Exit status: 0 guest powered off, 1 error, 2 usage error, 3 guest reset, 4 triple fault,\n\
        5 vCPU failure, 6 quit with Ctrl-A X, 128+N stopped by signal N."
)]
pub struct Cli {
    /// Log level for Kestrel's own messages on stderr: off, error, warn, info, debug or trace
    /// (the KESTREL_LOG environment variable overrides it). Example: --log-level debug
    #[arg(long, global = true, default_value = "warn", value_name = "LEVEL")]
    pub log_level: LevelFilter,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Boot one VM in the foreground; Kestrel exits when the guest powers off or resets.
    ///
    /// The guest's serial console (COM1) is on the terminal, which is in raw mode while the VM runs:
    /// keys such as Ctrl-C go to the guest. Press Ctrl-A then X to quit, Ctrl-A Ctrl-A to send Ctrl-A.
    #[command(after_help = "Examples:\n  \
        kestrel run --kernel vmlinux --initrd initramfs.cpio\n  \
        kestrel run --kernel vmlinux --cpus 4 --memory 1G --cmdline \"console=ttyS0 quiet\"\n  \
        kestrel run --kernel bzImage --serial file:/tmp/console.log\n  \
        kestrel run --kernel vmlinux --disk path=rootfs.ext4 --cmdline \"console=ttyS0 root=/dev/vda rw\"")]
    Run(RunArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Kernel to boot: an ELF vmlinux (entered through its PVH note when it has one, else its 64-bit
    /// entry) or a bzImage. Example: --kernel /boot/vmlinux
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,

    /// Initial ramdisk (cpio archive, optionally compressed), placed at the top of low memory.
    /// Example: --initrd initramfs.cpio
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// Kernel command line, at most 2047 bytes (less if a bzImage says so).
    /// Example: --cmdline "console=ttyS0 reboot=k panic=1"
    #[arg(long, value_name = "TEXT", default_value = DEFAULT_CMDLINE)]
    pub cmdline: String,

    /// Number of vCPUs, 1 to 254. Example: --cpus 4
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub cpus: u8,

    /// Guest RAM, at least 16M, with a K/M/G/T suffix (binary units). Example: --memory 1G
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    pub memory: u64,

    /// Where the serial console goes: stdio (the terminal; its input feeds the guest),
    /// file:PATH (appended to PATH; no input) or none. Example: --serial file:/tmp/console.log
    #[arg(long, value_name = "WHERE", default_value = "stdio", value_parser = parse_serial)]
    pub serial: SerialConfig,

    /// How virtio devices reach the guest: mmio (virtio-mmio, declared on the kernel command line;
    /// what microVM kernels use) or pci (virtio-pci with MSI-X on PCI bus 0; what stock distribution
    /// kernels use). Example: --transport pci
    #[arg(long, value_name = "mmio|pci", default_value = "mmio", value_parser = parse_transport)]
    pub transport: VirtioTransport,

    /// Give the guest a virtio-rng device fed from the host's getrandom (Linux: /dev/hwrng).
    /// Example: --rng
    #[arg(long)]
    pub rng: bool,

    /// Give the guest a virtio-blk disk over a raw image file or a host block device; repeat for
    /// more disks (Linux names them /dev/vda, /dev/vdb, ... in order). readonly=on opens the file
    /// read-only and the guest's writes fail; id= is the serial number the guest reads (at most 20
    /// bytes, by default the file name). A path cannot contain a comma.
    /// Example: --disk path=rootfs.ext4 --disk path=data.img,readonly=on,id=data
    #[arg(long = "disk", value_name = "path=PATH[,readonly=on|off][,id=ID]", value_parser = parse_disk)]
    pub disks: Vec<BlockConfig>,

    /// Give the guest a virtio-net card on a host tap device; repeat for more cards (Linux: eth0,
    /// eth1, ...). tap=NAME creates the tap NAME, or attaches to it if it exists (creating one
    /// needs CAP_NET_ADMIN; `ip tuntap add NAME mode tap user USER` makes one a user may attach
    /// to); tap=auto creates a tap named kestrelN (--log-level info shows N). mac= is the card's
    /// address, by default a random locally administered one.
    /// Example: --net tap=tap0,mac=52:54:00:12:34:56
    #[arg(long = "net", value_name = "tap=NAME|auto[,mac=MAC]", value_parser = parse_net)]
    pub nets: Vec<NetConfig>,

    /// Give the guest a virtio-balloon device (Linux: CONFIG_VIRTIO_BALLOON) and ask it for size=
    /// MiB of its memory, which the host then frees. stats=SECONDS asks the guest for memory
    /// statistics that often (0: never, the default); reporting=on lets the guest report the
    /// pages it frees, which the host frees too; deflate_on_oom=on lets the guest take balloon
    /// pages back rather than run out of memory.
    /// Example: --balloon size=256,stats=5,reporting=on
    #[arg(
        long,
        value_name = "size=MIB[,stats=SECONDS][,reporting=on|off][,deflate_on_oom=on|off]",
        value_parser = parse_balloon
    )]
    pub balloon: Option<BalloonConfig>,

    /// Give the guest a virtio-vsock device (Linux: AF_VSOCK stream sockets) with context ID
    /// cid= (3 to 4294967294). Kestrel listens on the Unix socket uds=: a host process connects
    /// to it, sends "CONNECT <guest port>\n" and, once the guest accepts, reads
    /// "OK <host port>\n" before the connection's bytes. A guest connecting to host port P (CID
    /// 2) reaches the Unix socket uds=PATH_P. A stale socket left at PATH is replaced; a live
    /// one, or any other file, is an error. One per VM; the path cannot contain a comma.
    /// Example: --vsock cid=3,uds=/tmp/kestrel.vsock
    #[arg(long, value_name = "cid=N,uds=PATH", value_parser = parse_vsock)]
    pub vsock: Option<VsockConfig>,
}

impl RunArgs {
    pub fn into_config(self) -> VmConfig {
        VmConfig {
            kernel: self.kernel,
            initrd: self.initrd,
            cmdline: self.cmdline,
            vcpus: self.cpus,
            memory_bytes: self.memory,
            serial: self.serial,
            transport: self.transport,
            virtio: (self.rng.then_some(VirtioConfig::Rng).into_iter())
                .chain(self.disks.into_iter().map(VirtioConfig::Block))
                .chain(self.nets.into_iter().map(VirtioConfig::Net))
                .chain(self.balloon.map(VirtioConfig::Balloon))
                .chain(self.vsock.map(VirtioConfig::Vsock))
                .collect(),
        }
    }
}

fn parse_serial(text: &str) -> Result<SerialConfig, String> {
    match text {
        "stdio" => Ok(SerialConfig::Stdio),
        "none" => Ok(SerialConfig::None),
        _ => match text.strip_prefix("file:") {
            Some("") => Err("file: needs a path, like file:/tmp/console.log".into()),
            Some(path) => Ok(SerialConfig::File(PathBuf::from(path))),
            None => Err(format!("'{text}' is not stdio, none or file:PATH")),
        },
    }
}

/// `path=PATH[,readonly=on|off][,id=ID]`, keys in any order, each at most once.
fn parse_disk(text: &str) -> Result<BlockConfig, String> {
    const FORM: &str = "path=PATH[,readonly=on|off][,id=ID]";
    let mut path = None;
    let mut read_only = None;
    let mut id = None;
    for item in text.split(',') {
        let Some((key, value)) = item.split_once('=') else {
            return Err(format!("'{item}' is not KEY=VALUE; the form is {FORM}"));
        };
        let repeated = match key {
            "path" if value.is_empty() => return Err("path= needs a file, as in path=disk.img".into()),
            "path" => path.replace(PathBuf::from(value)).is_some(),
            "readonly" => read_only.replace(parse_on_off(key, value)?).is_some(),
            "id" if value.len() > DISK_ID_MAX_BYTES => {
                return Err(format!("id '{value}' is longer than {DISK_ID_MAX_BYTES} bytes"))
            }
            "id" => id.replace(value.to_owned()).is_some(),
            _ => return Err(format!("unknown key '{key}'; the form is {FORM}")),
        };
        if repeated {
            return Err(format!("{key}= is given twice"));
        }
    }
    let path = path.ok_or_else(|| format!("path= is missing; the form is {FORM}"))?;
    Ok(BlockConfig { path, read_only: read_only.unwrap_or(false), id })
}

fn parse_on_off(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{key}={value}: the value must be on or off")),
    }
}

/// `size=MIB[,stats=SECONDS][,reporting=on|off][,deflate_on_oom=on|off]`, keys in any order, each
/// at most once.
fn parse_balloon(text: &str) -> Result<BalloonConfig, String> {
    const FORM: &str = "size=MIB[,stats=SECONDS][,reporting=on|off][,deflate_on_oom=on|off]";
    let number = |key: &str, value: &str| {
        value.parse::<u32>().map_err(|_| format!("{key}={value}: the value must be a whole number"))
    };
    let mut size = None;
    let mut stats = None;
    let mut reporting = None;
    let mut deflate_on_oom = None;
    for item in text.split(',') {
        let Some((key, value)) = item.split_once('=') else {
            return Err(format!("'{item}' is not KEY=VALUE; the form is {FORM}"));
        };
        let repeated = match key {
            "size" => size.replace(number(key, value)?).is_some(),
            "stats" => stats.replace(number(key, value)?).is_some(),
            "reporting" => reporting.replace(parse_on_off(key, value)?).is_some(),
            "deflate_on_oom" => deflate_on_oom.replace(parse_on_off(key, value)?).is_some(),
            _ => return Err(format!("unknown key '{key}'; the form is {FORM}")),
        };
        if repeated {
            return Err(format!("{key}= is given twice"));
        }
    }
    Ok(BalloonConfig {
        target_mib: size.ok_or_else(|| format!("size= is missing; the form is {FORM}"))?,
        stats_interval: stats
            .filter(|&seconds| seconds > 0)
            .map(|seconds| Duration::from_secs(seconds.into())),
        free_page_reporting: reporting.unwrap_or(false),
        deflate_on_oom: deflate_on_oom.unwrap_or(false),
    })
}

/// `tap=NAME|auto[,mac=XX:XX:XX:XX:XX:XX]`, keys in any order, each at most once.
fn parse_net(text: &str) -> Result<NetConfig, String> {
    const FORM: &str = "tap=NAME|auto[,mac=XX:XX:XX:XX:XX:XX]";
    let mut tap = None;
    let mut mac = None;
    for item in text.split(',') {
        let Some((key, value)) = item.split_once('=') else {
            return Err(format!("'{item}' is not KEY=VALUE; the form is {FORM}"));
        };
        let repeated = match key {
            "tap" => tap.replace(parse_tap_name(value)?).is_some(),
            "mac" => mac.replace(value.parse::<MacAddress>()?).is_some(),
            _ => return Err(format!("unknown key '{key}'; the form is {FORM}")),
        };
        if repeated {
            return Err(format!("{key}= is given twice"));
        }
    }
    let tap = tap.ok_or_else(|| format!("tap= is missing; the form is {FORM}"))?;
    Ok(NetConfig { tap, mac })
}

/// An interface name Linux accepts, or `auto` (`None`: the kernel picks one).
fn parse_tap_name(name: &str) -> Result<Option<String>, String> {
    if name == "auto" {
        return Ok(None);
    }
    if name.is_empty() || name.len() > TAP_NAME_MAX_BYTES {
        return Err(format!("tap name '{name}' must be 1 to {TAP_NAME_MAX_BYTES} bytes"));
    }
    // '%' would make the kernel number the name itself.
    let forbidden = |c: char| matches!(c, '/' | ':' | '%') || c.is_whitespace() || c.is_control();
    if name == "." || name == ".." || name.chars().any(forbidden) {
        return Err(format!("'{name}' is not an interface name (no '/', ':', '%' or spaces)"));
    }
    Ok(Some(name.to_owned()))
}

/// `cid=N,uds=PATH`, keys in any order, each once.
fn parse_vsock(text: &str) -> Result<VsockConfig, String> {
    const FORM: &str = "cid=N,uds=PATH";
    let mut cid = None;
    let mut uds_path = None;
    for item in text.split(',') {
        let Some((key, value)) = item.split_once('=') else {
            return Err(format!("'{item}' is not KEY=VALUE; the form is {FORM}"));
        };
        let repeated = match key {
            "cid" => {
                let number = value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (VSOCK_MIN_CID..=VSOCK_MAX_CID).contains(n))
                    .ok_or_else(|| {
                        format!("cid={value}: the CID must be {VSOCK_MIN_CID} to {VSOCK_MAX_CID}")
                    })?;
                cid.replace(number).is_some()
            }
            "uds" if value.is_empty() => return Err("uds= needs a path, as in uds=/tmp/kestrel.vsock".into()),
            "uds" => uds_path.replace(PathBuf::from(value)).is_some(),
            _ => return Err(format!("unknown key '{key}'; the form is {FORM}")),
        };
        if repeated {
            return Err(format!("{key}= is given twice"));
        }
    }
    Ok(VsockConfig {
        cid: cid.ok_or_else(|| format!("cid= is missing; the form is {FORM}"))?,
        uds_path: uds_path.ok_or_else(|| format!("uds= is missing; the form is {FORM}"))?,
    })
}

fn parse_transport(text: &str) -> Result<VirtioTransport, String> {
    match text {
        "mmio" => Ok(VirtioTransport::Mmio),
        "pci" => Ok(VirtioTransport::Pci),
        _ => Err(format!("'{text}' is not mmio or pci")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

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
            let error = parse_vsock(bad).unwrap_err();
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
            let error = parse_balloon(bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn net_forms() {
        let mac = MacAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        let net = |tap: Option<&str>, mac| NetConfig { tap: tap.map(str::to_owned), mac };
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
        ] {
            let error = parse_net(bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn disk_forms() {
        let disk = |path: &str, read_only, id: Option<&str>| BlockConfig {
            path: path.into(),
            read_only,
            id: id.map(str::to_owned),
        };
        assert_eq!(parse_disk("path=/d/a.img"), Ok(disk("/d/a.img", false, None)));
        assert_eq!(parse_disk("readonly=on,path=a.img"), Ok(disk("a.img", true, None)));
        assert_eq!(parse_disk("path=a.img,readonly=off,id=data"), Ok(disk("a.img", false, Some("data"))));
        assert_eq!(parse_disk("path=a=b.img"), Ok(disk("a=b.img", false, None)));
        for (bad, why) in [
            ("a.img", "not KEY=VALUE"),
            ("readonly=on", "path= is missing"),
            ("path=", "needs a file"),
            ("path=a.img,readonly=yes", "must be on or off"),
            ("path=a.img,cache=none", "unknown key 'cache'"),
            ("path=a.img,path=b.img", "path= is given twice"),
            ("path=a.img,", "'' is not KEY=VALUE"),
            ("path=a.img,id=0123456789abcdefghijk", "longer than 20 bytes"),
        ] {
            let error = parse_disk(bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn transport_forms() {
        assert_eq!(parse_transport("mmio"), Ok(VirtioTransport::Mmio));
        assert_eq!(parse_transport("pci"), Ok(VirtioTransport::Pci));
        assert!(parse_transport("PCI").is_err());
    }

    #[test]
    fn serial_forms() {
        assert_eq!(parse_serial("stdio"), Ok(SerialConfig::Stdio));
        assert_eq!(parse_serial("none"), Ok(SerialConfig::None));
        assert_eq!(parse_serial("file:/tmp/x"), Ok(SerialConfig::File("/tmp/x".into())));
        assert!(parse_serial("file:").is_err());
        assert!(parse_serial("tcp:1234").is_err());
    }
}
