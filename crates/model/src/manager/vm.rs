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
}
