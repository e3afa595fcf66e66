//! A VM as the manager keeps it: its definition (what the user wrote, TOML or JSON), its state,
//! and the bodies of the lifecycle requests.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::disk::{CacheMode, ImageFormat};

fn one() -> u8 {
    1
}

fn default_memory_mib() -> u32 {
    256
}

/// A VM definition: what `kestrel vm define --file DEF.toml` reads (or the CLI builds from
/// `kestrel run`'s flags) and the daemon stores. Host resources are named, not opened: a disk is
/// a pool volume (`pool/volume`) or a path, a card is on a network or a tap.
///
/// ```toml
/// name = "web"
/// kernel = "/var/lib/kestrel/kernels/vmlinux"
/// cmdline = "console=ttyS0 root=/dev/vda"
/// cpus = 2
/// memory_mib = 512
/// autostart = true
/// [[disk]]
/// volume = "default/web.qcow2"
/// [[nic]]
/// network = "default"
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmDefinition {
    /// The VM's name (see [`super::name::check_name`]).
    pub name: String,
    /// Kernel image (ELF vmlinux or bzImage), an absolute host path.
    pub kernel: PathBuf,
    /// Initial ramdisk, an absolute host path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line; Kestrel's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// vCPUs, 1 to 254.
    #[serde(default = "one")]
    pub cpus: u8,
    /// Guest RAM in MiB (at least 16).
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    /// How virtio devices reach the guest.
    #[serde(default)]
    pub transport: Transport,
    /// Disks, in the order the guest sees them (`/dev/vda`, `/dev/vdb`, …).
    #[serde(default, alias = "disk", skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskDefinition>,
    /// Network cards (`eth0`, …).
    #[serde(default, alias = "nic", skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<NicDefinition>,
    /// A virtio-vsock device; its host socket is made by the daemon in the VM's run directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockDefinition>,
    /// A virtio-rng entropy device.
    #[serde(default)]
    pub rng: bool,
    /// A memory balloon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<BalloonDefinition>,
    /// Start the VM when the daemon starts.
    #[serde(default)]
    pub autostart: bool,
    /// What the daemon does when the VM crashes (exits other than by powering off or rebooting).
    #[serde(default)]
    pub on_crash: CrashPolicy,
}

/// How virtio devices reach the guest (as `kestrel run --transport`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    #[default]
    Mmio,
    Pci,
}

/// What happens after a crash.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrashPolicy {
    /// Leave it crashed (its exit status and last console lines are kept).
    #[default]
    Stop,
    /// Start it again (with a back-off when it keeps crashing).
    Restart,
}

/// One disk: exactly one of `volume` and `path`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskDefinition {
    /// A volume of a storage pool, `POOL/VOLUME`; its format is the pool's record of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// An image file or block device outside any pool, an absolute path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// The format of a `path` disk (raw unless given; never probed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ImageFormat>,
    /// The guest sees a read-only disk.
    #[serde(default)]
    pub readonly: bool,
    /// The serial number the guest reads (at most 20 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Cache mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheMode>,
    /// Request queues, 1 to 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<u16>,
    /// Bandwidth limit, bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bw: Option<u64>,
    /// Request rate limit, operations per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops: Option<u64>,
}

/// One network card: on a managed network, or on a host tap the user made (exactly one).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicDefinition {
    /// A network defined with `kestrel net define`; the daemon makes the tap and plugs it in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// An existing host tap device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// The card's MAC address; assigned (and kept) by the daemon when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// A fixed IPv4 address handed out by the network's DHCP server (a reservation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// Receive bandwidth limit, bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_bw: Option<u64>,
    /// Transmit bandwidth limit, bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_bw: Option<u64>,
}

/// A vsock device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockDefinition {
    /// The guest's context ID, 3 to 4294967294.
    pub cid: u32,
}

/// A memory balloon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonDefinition {
    /// The balloon's size at boot, MiB.
    #[serde(default)]
    pub size_mib: u32,
    /// Statistics interval in seconds (0: none).
    #[serde(default)]
    pub stats_secs: u32,
    #[serde(default)]
    pub deflate_on_oom: bool,
    #[serde(default)]
    pub free_page_reporting: bool,
}

/// A VM's state, in the words libvirt's users know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Defined, not running ("shut off").
    Stopped,
    /// Its VMM is being started and configured.
    Starting,
    /// The guest runs.
    Running,
    /// The guest's vCPUs are parked (`suspend`).
    Paused,
    /// A graceful shutdown was asked for and the guest has not yet powered off.
    ShuttingDown,
    /// It ended other than by powering off or rebooting; see `last_exit`.
    Crashed,
    /// Stopped with its memory and device state saved (`save`); `start` resumes it.
    Saved,
}

impl VmState {
    /// Whether a VMM process exists for the VM in this state.
    pub fn is_active(self) -> bool {
        matches!(self, VmState::Starting | VmState::Running | VmState::Paused | VmState::ShuttingDown)
    }
}

/// A line of `kestrel vm list` (`GET /v1/vms`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSummary {
    pub name: String,
    pub uuid: String,
    pub state: VmState,
    /// The VMM's process ID while it is active.
    pub pid: Option<u32>,
    pub cpus: u8,
    pub memory_mib: u32,
    pub autostart: bool,
}

/// `GET /v1/vms/{vm}`: everything about one VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    #[serde(flatten)]
    pub summary: VmSummary,
    pub definition: VmDefinition,
    /// When the VMM was last started, Unix seconds.
    pub started_at: Option<u64>,
    /// How the VM last ended.
    pub last_exit: Option<ExitRecord>,
    /// The serial console's log file on the host.
    pub console_log: PathBuf,
    /// The taps the daemon made for the VM's cards, in order (while it runs).
    #[serde(default)]
    pub taps: Vec<String>,
}

/// How a VMM process ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Unix seconds.
    pub at: u64,
    /// The exit status (`kestrel vmm`'s: 0 power-off, 3 reset, …), when it exited.
    pub status: Option<i32>,
    /// The signal that killed it, when one did.
    pub signal: Option<i32>,
    /// In words: `power-off`, `reset`, `crash`, `destroyed`, …
    pub outcome: String,
    /// The last lines of the serial console before the end.
    pub console_tail: Vec<String>,
}

/// `POST /v1/vms/{vm}/shutdown`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownRequest {
    /// How long to wait for the guest to power off after the ACPI power button (default 60 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Destroy the VM if it has not powered off by then.
    #[serde(default)]
    pub force: bool,
}

/// `GET /v1/vms/{vm}/stats`: totals since the VMM started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStats {
    pub name: String,
    pub state: Option<VmState>,
    pub uptime_secs: Option<u64>,
    /// Counters by group and name, summed over the VMM's metrics lines (Firecracker's groups:
    /// `vcpu`, `block`, `net`, `balloon`, …).
    pub counters: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
    /// CPU time the VMM process has used (user + system, all its threads), µs; `None` when
    /// the VM does not run or `/proc` could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time_us: Option<u64>,
    /// The VMM process's resident memory (guest memory it touched included), bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_rss_bytes: Option<u64>,
}

// --- validation ---

/// The most vCPUs a definition may ask for.
pub const MAX_CPUS: u8 = 254;
/// The least guest RAM, MiB.
pub const MIN_MEMORY_MIB: u32 = 16;
/// The longest disk ID (virtio-blk's serial number field).
pub const MAX_DISK_ID_BYTES: usize = 20;
/// The longest host tap name (the kernel's IFNAMSIZ less its terminating NUL).
pub const MAX_TAP_NAME_BYTES: usize = 15;
/// The most disks and the most cards a definition may hold.
pub const MAX_DEVICES: usize = 64;
/// The highest request queue count of a disk.
pub const MAX_DISK_QUEUES: u16 = 16;

/// Why a definition is refused. Each message names the field and the value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    #[error(transparent)]
    Name(#[from] super::name::NameError),
    #[error("{field} must be an absolute path, not '{path}'")]
    RelativePath { field: &'static str, path: String },
    #[error("cpus must be 1 to {MAX_CPUS}, not {0}")]
    Cpus(u8),
    #[error("memory_mib must be at least {MIN_MEMORY_MIB}, not {0}")]
    Memory(u32),
    #[error("the kernel command line is {0} bytes, longer than the 2047 bytes allowed")]
    CmdlineTooLong(usize),
    #[error("the kernel command line may not hold control characters (byte {0:#04x})")]
    CmdlineControl(u8),
    #[error("at most {MAX_DEVICES} {0} may be defined")]
    TooMany(&'static str),
    #[error("disk {index}: give exactly one of `volume` (POOL/VOLUME) and `path`")]
    DiskSource { index: usize },
    #[error("disk {index}: the volume '{reference}' is not of the form POOL/VOLUME: {reason}")]
    VolumeReference { index: usize, reference: String, reason: super::name::NameError },
    #[error("disk {index}: `format` is for `path` disks; a volume's format is its pool's record")]
    VolumeFormat { index: usize },
    #[error("disk {index}: the id '{id}' must be 1 to {MAX_DISK_ID_BYTES} bytes of printable ASCII")]
    DiskId { index: usize, id: String },
    #[error("two disks have the id '{0}'")]
    DuplicateDiskId(String),
    #[error("disk {index}: queues must be 1 to {MAX_DISK_QUEUES}, not {queues}")]
    DiskQueues { index: usize, queues: u16 },
    #[error("disk {index}: a rate limit of 0 would stop the disk; leave it out for no limit")]
    ZeroLimit { index: usize },
    #[error("nic {index}: give exactly one of `network` and `tap`")]
    NicSource { index: usize },
    #[error("nic {index}: {reason}")]
    NicNetwork { index: usize, reason: super::name::NameError },
    #[error("nic {index}: the tap name '{tap}' must be 1 to {MAX_TAP_NAME_BYTES} bytes of letters, digits, '_', '-' and '.'")]
    TapName { index: usize, tap: String },
    #[error("nic {index}: {reason}")]
    Mac { index: usize, reason: crate::config::MacError },
    #[error("two cards have the MAC address {0}")]
    DuplicateMac(String),
    #[error("nic {index}: a fixed `ip` needs a `network` (its DHCP server hands it out)")]
    IpWithoutNetwork { index: usize },
    #[error("the vsock cid must be 3 to 4294967294, not {0}")]
    VsockCid(u32),
    #[error("the balloon ({balloon} MiB) may not be larger than the memory ({memory} MiB)")]
    BalloonTooLarge { balloon: u32, memory: u32 },
    #[error("the balloon's stats_secs must be at most 65535, not {0}")]
    BalloonStats(u32),
}

impl VmDefinition {
    /// Checks everything that can be checked without the host: names, paths being absolute,
    /// sizes and counts in range, disk and card sources, MACs. Hostile input never panics; the
    /// first problem found is the answer.
    pub fn validate(&self) -> Result<(), DefinitionError> {
        super::name::check_name(&self.name)?;
        check_absolute("kernel", &self.kernel)?;
        if let Some(initrd) = &self.initrd {
            check_absolute("initrd", initrd)?;
        }
        if self.cpus == 0 || self.cpus > MAX_CPUS {
            return Err(DefinitionError::Cpus(self.cpus));
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(DefinitionError::Memory(self.memory_mib));
        }
        if let Some(cmdline) = &self.cmdline {
            if cmdline.len() > crate::config::MAX_CMDLINE_BYTES {
                return Err(DefinitionError::CmdlineTooLong(cmdline.len()));
            }
            if let Some(byte) = cmdline.bytes().find(|b| b.is_ascii_control()) {
                return Err(DefinitionError::CmdlineControl(byte));
            }
        }
        self.validate_disks()?;
        self.validate_nics()?;
        if let Some(vsock) = &self.vsock {
            if vsock.cid < 3 || vsock.cid == u32::MAX {
                return Err(DefinitionError::VsockCid(vsock.cid));
            }
        }
        if let Some(balloon) = &self.balloon {
            if balloon.size_mib > self.memory_mib {
                return Err(DefinitionError::BalloonTooLarge {
                    balloon: balloon.size_mib,
                    memory: self.memory_mib,
                });
            }
            if balloon.stats_secs > u32::from(u16::MAX) {
                return Err(DefinitionError::BalloonStats(balloon.stats_secs));
            }
        }
        Ok(())
    }

    fn validate_disks(&self) -> Result<(), DefinitionError> {
        if self.disks.len() > MAX_DEVICES {
            return Err(DefinitionError::TooMany("disks"));
        }
        let mut ids = std::collections::HashSet::new();
        for (index, disk) in self.disks.iter().enumerate() {
            match (&disk.volume, &disk.path) {
                (Some(reference), None) => {
                    split_volume(reference).map_err(|reason| DefinitionError::VolumeReference {
                        index,
                        reference: reference.chars().take(140).collect(),
                        reason,
                    })?;
                    if disk.format.is_some() {
                        return Err(DefinitionError::VolumeFormat { index });
                    }
                }
                (None, Some(path)) => check_absolute("disk path", path)?,
                _ => return Err(DefinitionError::DiskSource { index }),
            }
            if let Some(id) = &disk.id {
                let printable = id.bytes().all(|b| b.is_ascii_graphic());
                if id.is_empty() || id.len() > MAX_DISK_ID_BYTES || !printable {
                    return Err(DefinitionError::DiskId { index, id: id.chars().take(40).collect() });
                }
                if !ids.insert(id.as_str()) {
                    return Err(DefinitionError::DuplicateDiskId(id.clone()));
                }
            }
            if let Some(queues) = disk.queues {
                if queues == 0 || queues > MAX_DISK_QUEUES {
                    return Err(DefinitionError::DiskQueues { index, queues });
                }
            }
            if disk.bw == Some(0) || disk.iops == Some(0) {
                return Err(DefinitionError::ZeroLimit { index });
            }
        }
        Ok(())
    }

    fn validate_nics(&self) -> Result<(), DefinitionError> {
        if self.nics.len() > MAX_DEVICES {
            return Err(DefinitionError::TooMany("cards"));
        }
        let mut macs = std::collections::HashSet::new();
        for (index, nic) in self.nics.iter().enumerate() {
            match (&nic.network, &nic.tap) {
                (Some(network), None) => super::name::check_name(network)
                    .map_err(|reason| DefinitionError::NicNetwork { index, reason })?,
                (None, Some(tap)) => {
                    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
                    if tap.is_empty()
                        || tap.len() > MAX_TAP_NAME_BYTES
                        || !tap.chars().all(allowed)
                        || tap.starts_with(['.', '-'])
                    {
                        return Err(DefinitionError::TapName { index, tap: tap.chars().take(40).collect() });
                    }
                    if nic.ip.is_some() {
                        return Err(DefinitionError::IpWithoutNetwork { index });
                    }
                }
                _ => return Err(DefinitionError::NicSource { index }),
            }
            if let Some(mac) = &nic.mac {
                let parsed: crate::config::MacAddress =
                    mac.parse().map_err(|reason| DefinitionError::Mac { index, reason })?;
                if !macs.insert(parsed.0) {
                    return Err(DefinitionError::DuplicateMac(parsed.to_string()));
                }
            }
        }
        Ok(())
    }
}

/// Splits a volume reference `POOL/VOLUME` into its two names, each checked as a name.
pub fn split_volume(reference: &str) -> Result<(&str, &str), super::name::NameError> {
    let (pool, volume) = reference.split_once('/').unwrap_or((reference, ""));
    super::name::check_name(pool)?;
    super::name::check_name(volume)?;
    Ok((pool, volume))
}

fn check_absolute(field: &'static str, path: &std::path::Path) -> Result<(), DefinitionError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(DefinitionError::RelativePath {
            field,
            path: path.display().to_string().chars().take(200).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn minimal() -> VmDefinition {
        serde_json::from_str(r#"{"name": "web", "kernel": "/boot/vmlinux"}"#).unwrap()
    }

    #[test]
    fn a_minimal_definition_takes_the_defaults_and_passes() {
        let definition = minimal();
        assert_eq!((definition.cpus, definition.memory_mib), (1, 256));
        assert_eq!(definition.validate(), Ok(()));
    }

    #[test]
    fn each_rule_refuses_what_it_names() {
        type Change = Box<dyn Fn(&mut VmDefinition)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|d| d.name = "../etc".into()), "may only hold"),
            (Box::new(|d| d.kernel = "vmlinux".into()), "kernel must be an absolute path"),
            (Box::new(|d| d.initrd = Some("x.cpio".into())), "initrd must be an absolute path"),
            (Box::new(|d| d.cpus = 0), "cpus must be 1 to 254"),
            (Box::new(|d| d.cpus = 255), "cpus must be 1 to 254"),
            (Box::new(|d| d.memory_mib = 15), "at least 16"),
            (Box::new(|d| d.cmdline = Some("x".repeat(2048))), "2048 bytes"),
            (Box::new(|d| d.cmdline = Some("a\nb".into())), "control characters"),
            (Box::new(|d| d.disks = vec![DiskDefinition::default()]), "exactly one of `volume`"),
            (
                Box::new(|d| {
                    d.disks = vec![DiskDefinition {
                        volume: Some("p/v".into()),
                        path: Some("/x".into()),
                        ..Default::default()
                    }]
                }),
                "exactly one of `volume`",
            ),
            (
                Box::new(|d| {
                    d.disks = vec![DiskDefinition { volume: Some("../v".into()), ..Default::default() }]
                }),
                "POOL/VOLUME",
            ),
            (
                Box::new(|d| {
                    d.disks = vec![DiskDefinition { volume: Some("pool".into()), ..Default::default() }]
                }),
                "POOL/VOLUME",
            ),
            (
                Box::new(|d| {
                    d.disks = vec![DiskDefinition { path: Some("rel.img".into()), ..Default::default() }]
                }),
                "disk path must be an absolute path",
            ),
            (
                Box::new(|d| {
                    let disk = DiskDefinition {
                        path: Some("/a".into()),
                        id: Some("x".into()),
                        ..Default::default()
                    };
                    d.disks = vec![disk.clone(), disk];
                }),
                "two disks have the id 'x'",
            ),
            (
                Box::new(|d| {
                    d.disks = vec![DiskDefinition {
                        path: Some("/a".into()),
                        id: Some("x".repeat(21)),
                        ..Default::default()
                    }]
                }),
                "1 to 20 bytes",
            ),
            (Box::new(|d| d.nics = vec![NicDefinition::default()]), "exactly one of `network` and `tap`"),
            (
                Box::new(|d| {
                    d.nics = vec![NicDefinition { tap: Some("tap0; rm".into()), ..Default::default() }]
                }),
                "tap name",
            ),
            (
                Box::new(|d| {
                    d.nics = vec![NicDefinition {
                        tap: Some("tap0".into()),
                        mac: Some("01:00:00:00:00:01".into()),
                        ..Default::default()
                    }]
                }),
                "multicast",
            ),
            (
                Box::new(|d| {
                    d.nics = vec![NicDefinition {
                        tap: Some("tap0".into()),
                        mac: Some("52:54:00:zz:00:01".into()),
                        ..Default::default()
                    }]
                }),
                "not a MAC address",
            ),
            (Box::new(|d| d.vsock = Some(VsockDefinition { cid: 2 })), "vsock cid"),
            (Box::new(|d| d.vsock = Some(VsockDefinition { cid: u32::MAX })), "vsock cid"),
            (
                Box::new(|d| {
                    d.balloon = Some(BalloonDefinition {
                        size_mib: 257,
                        stats_secs: 0,
                        deflate_on_oom: false,
                        free_page_reporting: false,
                    })
                }),
                "may not be larger than the memory",
            ),
        ];
        for (change, expected) in cases {
            let mut definition = minimal();
            change(&mut definition);
            let error = definition.validate().expect_err(expected).to_string();
            assert!(error.contains(expected), "{error:?} does not contain {expected:?}");
        }
    }

    #[test]
    fn volume_references_split_into_two_names() {
        assert_eq!(split_volume("default/web.qcow2"), Ok(("default", "web.qcow2")));
        for bad in ["", "/", "a/", "/b", "a/b/c", "../b", "a/..", "a/.b"] {
            assert!(split_volume(bad).is_err(), "{bad:?}");
        }
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u32>().prop_map(serde_json::Value::from),
            "\\PC{0,24}".prop_map(serde_json::Value::from),
            prop::sample::select(vec!["/a", "p/v", "tap0", "52:54:00:00:00:01", "web", "../x", ""])
                .prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(
                    prop::sample::select(vec![
                        "volume",
                        "path",
                        "format",
                        "id",
                        "readonly",
                        "queues",
                        "bw",
                        "iops",
                        "network",
                        "tap",
                        "mac",
                        "ip",
                        "cid",
                        "size_mib",
                        "stats_secs",
                    ])
                    .prop_map(str::to_owned),
                    inner,
                    0..5
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        /// Arbitrary JSON-ish definitions: parsing and validating never panic, and what passes
        /// holds a safe name and absolute paths.
        #[test]
        fn hostile_definitions_never_panic(
            name in prop_oneof![Just("web".to_owned()), "\\PC{0,70}"],
            kernel in prop_oneof![Just("/k".to_owned()), "\\PC{0,20}"],
            cpus in any::<i64>(),
            memory in any::<i64>(),
            cmdline in proptest::option::of("\\PC{0,40}"),
            disks in prop::collection::vec(json_value(), 0..4),
            nics in prop::collection::vec(json_value(), 0..4),
            vsock in proptest::option::of(json_value()),
            balloon in proptest::option::of(json_value()),
        ) {
            let mut object = serde_json::json!({
                "name": name, "kernel": kernel, "cpus": cpus, "memory_mib": memory,
                "disks": disks, "nics": nics,
            });
            if let Some(cmdline) = cmdline { object["cmdline"] = cmdline.into(); }
            if let Some(vsock) = vsock { object["vsock"] = vsock; }
            if let Some(balloon) = balloon { object["balloon"] = balloon; }
            if let Ok(definition) = serde_json::from_value::<VmDefinition>(object) {
                if definition.validate().is_ok() {
                    prop_assert!(crate::manager::name::check_name(&definition.name).is_ok());
                    prop_assert!(definition.kernel.is_absolute());
                    prop_assert!(definition.cpus >= 1 && definition.memory_mib >= MIN_MEMORY_MIB);
                }
            }
        }
    }
}
