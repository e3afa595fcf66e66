//! Request and response bodies, field for field as Firecracker's API defines them (Kestrel's
//! additions are marked `x-kestrel` in docs/api.yaml). Bodies that
//! Firecracker parses strictly reject unknown fields here too, so a typo is a 400, not a no-op.

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::host::{
    BackendKind, CpuPlacement, CpuSet, HostResources, HugePageSize, MemoryOptions, RamBackend,
};

pub use crate::disk::{CacheMode, ImageFormat, IoEngine};

/// The Firecracker release whose API and command line Kestrel serves: `GET /` and `GET /version`
/// report it, and `--version` prints it where Kata Containers and the SDKs look for it.
pub const FIRECRACKER_VERSION: &str = "1.16.1";
pub use crate::rate_limiter::{RateLimiterConfig, TokenBucket};

/// `PUT /boot-source`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    pub kernel_image_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

/// `PUT /machine-config`, `GET /machine-config`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfiguration {
    /// Firecracker: 1 to 32; Kestrel: 1 to 254 (an extension).
    pub vcpu_count: u8,
    pub mem_size_mib: u64,
    #[serde(default)]
    pub smt: bool,
    #[serde(default)]
    pub track_dirty_pages: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
    /// Kestrel's additions (`x-kestrel` in the API description): vCPU placement and guest
    /// memory backends.
    #[serde(rename = "x-kestrel", default, skip_serializing_if = "Option::is_none")]
    pub kestrel: Option<Box<HostExtensions>>,
}

/// `x-kestrel` of `PUT /machine-config` and of `PUT /snapshot/load`: where the VM's threads run
/// and what backs its RAM (host choices, not part of a snapshot: a restore makes its own).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HostExtensions {
    /// One CPU list for every vCPU (`[[0, 1]]`), or one per vCPU (`[[0], [1]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vcpu_affinity: Vec<CpuSet>,
    /// The CPUs the VMM's other threads are kept on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm_affinity: Option<CpuSet>,
    /// vCPU threads run SCHED_FIFO at this priority (1 to 99).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_realtime_priority: Option<u8>,
    #[serde(flatten)]
    pub memory: MemoryExtensions,
}

impl HostExtensions {
    /// The host-side choices these fields ask for, with Firecracker's `huge_pages` beside them
    /// (machine-config's; a snapshot load has none).
    pub fn host_resources(&self, huge_pages: Option<HugePages>) -> Result<HostResources, ConfigError> {
        Ok(HostResources {
            cpus: CpuPlacement {
                vcpu_affinity: self.vcpu_affinity.clone(),
                vmm_affinity: self.vmm_affinity.clone(),
                vcpu_realtime_priority: self.vcpu_realtime_priority,
            },
            memory: self.memory.options(huge_pages)?,
        })
    }
}

/// The guest memory options of `x-kestrel` (in `PUT /machine-config` and `PUT /snapshot/load`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct MemoryExtensions {
    /// `anonymous` (the default) or `memfd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_backend: Option<BackendKind>,
    /// `2M` or `1G` hugetlb pages (Firecracker's `huge_pages` takes `2M` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePageSize>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub thp: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ksm: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mlock: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa_node: Option<u32>,
}

impl MemoryExtensions {
    /// The memory options these fields ask for, with Firecracker's `huge_pages` beside them.
    pub fn options(&self, huge_pages: Option<HugePages>) -> Result<MemoryOptions, ConfigError> {
        let top = match huge_pages {
            Some(HugePages::TwoMiB) => Some(HugePageSize::TwoMiB),
            Some(HugePages::None) | None => None,
        };
        let huge = match (top, self.huge_pages) {
            (Some(a), Some(b)) if a != b => {
                return Err(ConfigError::ConflictingHugePages { top: "2M", extension: "1G" })
            }
            (a, b) => a.or(b),
        };
        Ok(MemoryOptions {
            backend: RamBackend::choose(self.memory_backend, huge)?,
            thp: self.thp,
            ksm: self.ksm,
            mlock: self.mlock,
            numa_node: self.numa_node,
        })
    }
}

impl MachineConfiguration {
    /// The host-side choices this machine configuration asks for.
    pub fn host_resources(&self) -> Result<HostResources, ConfigError> {
        match self.kestrel.as_deref() {
            Some(extensions) => extensions.host_resources(self.huge_pages),
            None => HostExtensions::default().host_resources(self.huge_pages),
        }
    }
}

impl Default for MachineConfiguration {
    /// Firecracker's defaults: 1 vCPU, 128 MiB, no SMT.
    fn default() -> Self {
        MachineConfiguration {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
            cpu_template: None,
            huge_pages: Some(HugePages::None),
            kestrel: None,
        }
    }
}

/// Which huge pages back guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum HugePages {
    None,
    #[serde(rename = "2M")]
    TwoMiB,
}

/// `PUT /drives/{drive_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    pub drive_id: String,
    pub is_root_device: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// Kestrel's additions (`x-kestrel` in the API description): the image format, the `none`
    /// cache mode, backing files, queues.
    #[serde(rename = "x-kestrel", default, skip_serializing_if = "Option::is_none")]
    pub kestrel: Option<KestrelDrive>,
}

/// A drive's options that Firecracker's body has no field for. Each one left out takes its
/// default: a raw image, the cache mode `cache_type` says, backing files allowed, one queue.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KestrelDrive {
    /// The image's format (`"raw"` or `"qcow2"`); never guessed from the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ImageFormat>,
    /// `"writeback"`, `"none"` (`O_DIRECT`) or `"unsafe"`; if `cache_type` is given too, the two
    /// must agree (`none` goes with `Writeback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheMode>,
    /// Whether a qcow2 image may open the backing file its header names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_backing: Option<bool>,
    /// Request queues, 1 to 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_queues: Option<u16>,
    /// Adaptive polling's longest window in µs, at most 1000 (0 or absent: no polling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_us: Option<u32>,
}

/// `PATCH /drives/{drive_id}`, after `InstanceStart`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PartialDrive {
    pub drive_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// A drive's caching strategy, Firecracker's: `Unsafe` advertises no flush to the guest,
/// `Writeback` makes a guest's flush an `fdatasync`. (Kestrel's `none` is in `x-kestrel`.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum CacheType {
    Unsafe,
    Writeback,
}

/// `PUT /network-interfaces/{iface_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    pub iface_id: String,
    pub host_dev_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Limits on the frames the guest receives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Limits on the frames the guest sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// `PATCH /network-interfaces/{iface_id}`, after `InstanceStart`: new rate limiters. A limiter
/// left out keeps its setting, and so does a bucket a limiter leaves out (Firecracker's
/// partial update).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PartialNetworkInterface {
    pub iface_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// `PUT /vsock`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    pub guest_cid: u32,
    pub uds_path: String,
    /// Deprecated by Firecracker; accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

/// `PUT /balloon`, `GET /balloon`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Balloon {
    pub amount_mib: u32,
    pub deflate_on_oom: bool,
    #[serde(default)]
    pub stats_polling_interval_s: u16,
    #[serde(default)]
    pub free_page_hinting: bool,
    #[serde(default)]
    pub free_page_reporting: bool,
}

/// `PATCH /balloon`: a new target, after `InstanceStart`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdate {
    pub amount_mib: u32,
}

/// `PATCH /balloon/statistics`: a new statistics interval, after `InstanceStart`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStatsUpdate {
    pub stats_polling_interval_s: u16,
}

/// `GET /balloon/statistics`: the balloon's sizes, then the guest's latest statistics (bytes for
/// amounts of memory, counts for the rest; a statistic the guest has not reported is left out).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct BalloonStats {
    pub target_pages: u32,
    pub actual_pages: u32,
    pub target_mib: u32,
    pub actual_mib: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_out: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major_faults: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor_faults: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_caches: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugetlb_allocations: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugetlb_failures: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kill: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alloc_stall: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_scan: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_scan: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_reclaim: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_reclaim: Option<u64>,
}

/// `PUT /entropy`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyDevice {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<serde_json::Value>,
}

/// `PUT /actions`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceActionInfo {
    pub action_type: ActionType,
}

/// What `PUT /actions` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum ActionType {
    FlushMetrics,
    InstanceStart,
    SendCtrlAltDel,
    /// x-kestrel: presses the ACPI power button (the guest powers off if it listens to it).
    SendPowerButton,
}

/// `PUT /metrics`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    pub metrics_path: String,
}

/// `PUT /logger`. Each field left out takes the specification's default, except `log_path`:
/// without it the log stays where it goes now.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// The logger's level. Firecracker reads it in any case (`"debug"`, `"Debug"`, `"DEBUG"`), and
/// Kestrel takes `Warn` for `Warning` too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum LogLevel {
    Error,
    Warning,
    Info,
    Debug,
    Trace,
    Off,
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(match text.to_ascii_lowercase().as_str() {
            "error" => LogLevel::Error,
            "warning" | "warn" => LogLevel::Warning,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            "off" => LogLevel::Off,
            _ => {
                return Err(serde::de::Error::invalid_value(
                    serde::de::Unexpected::Str(&text),
                    &"one of Error, Warning, Info, Debug, Trace, Off (in any case)",
                ))
            }
        })
    }
}

/// `PATCH /vm`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VmState {
    pub state: VmStateValue,
}

/// The state `PATCH /vm` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum VmStateValue {
    Paused,
    Resumed,
}

/// `GET /`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct InstanceInfo {
    pub app_name: String,
    pub id: String,
    pub state: InstanceState,
    pub vmm_version: String,
    /// Kestrel's additions (`x-kestrel` in the API description).
    #[serde(rename = "x-kestrel", default)]
    pub kestrel: KestrelInstanceInfo,
}

/// What `GET /` tells besides Firecracker's fields.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct KestrelInstanceInfo {
    /// Kestrel's own version (`vmm_version` is the Firecracker release it serves).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kestrel_version: String,
    /// A long operation the VMM is carrying out (other requests are answered meanwhile; those that
    /// would conflict with it are refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_in_progress: Option<Operation>,
}

/// A long operation the VMM carries out off its event loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum Operation {
    /// `PUT /snapshot/create`.
    SnapshotCreate,
    /// `PATCH /drives/{id}`: the old file is synced to disk before the new one takes over, which
    /// takes as long as the guest's unsynced writes.
    DriveUpdate,
}

impl Operation {
    /// The operation as a client asked for it.
    pub fn request(self) -> &'static str {
        match self {
            Operation::SnapshotCreate => "PUT /snapshot/create",
            Operation::DriveUpdate => "PATCH /drives",
        }
    }
}

/// The instance's state as `GET /` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum InstanceState {
    #[serde(rename = "Not started")]
    NotStarted,
    Running,
    Paused,
}

/// The body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Error {
    pub fault_message: String,
}

/// `PUT /mmds/config`: which network interfaces answer for the metadata service, at which address,
/// and in which version of its protocol (Firecracker's `MmdsConfig`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MmdsConfig {
    /// `V1` (plain GETs) or `V2` (a session token from `PUT /latest/api/token` first).
    #[serde(default)]
    pub version: MmdsVersion,
    /// The IDs of the interfaces (`PUT /network-interfaces/{id}`) whose frames to the MMDS
    /// address the VMM answers itself; at least one.
    pub network_interfaces: Vec<String>,
    /// The address guests reach MMDS at; Firecracker's default is 169.254.169.254.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<std::net::Ipv4Addr>,
    /// Answer in the EC2 IMDS format (plain text) whatever the `Accept` header says.
    #[serde(default)]
    pub imds_compat: bool,
}

/// The MMDS protocol version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum MmdsVersion {
    #[default]
    V1,
    V2,
}

/// `GET /vm/config`, and the `--config` file (Firecracker's `--config-file`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FullVmConfiguration {
    #[serde(rename = "boot-source", default, skip_serializing_if = "Option::is_none")]
    pub boot_source: Option<BootSource>,
    #[serde(rename = "machine-config", default, skip_serializing_if = "Option::is_none")]
    pub machine_config: Option<MachineConfiguration>,
    #[serde(default)]
    pub drives: Vec<Drive>,
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Vsock>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<Balloon>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<EntropyDevice>,
    /// Sections Firecracker's file may hold that Kestrel does not serve yet: present means a clear
    /// error rather than "unknown field".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<serde_json::Value>,
    #[serde(rename = "mmds-config", default, skip_serializing_if = "Option::is_none")]
    pub mmds_config: Option<MmdsConfig>,
    #[serde(rename = "cpu-config", default, skip_serializing_if = "Option::is_none")]
    pub cpu_config: Option<serde_json::Value>,
}

/// `PUT /snapshot/create`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    pub mem_file_path: String,
    pub snapshot_path: String,
    #[serde(default)]
    pub snapshot_type: SnapshotType,
}

/// Full (all of guest memory) or diff (the pages written since the last snapshot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum SnapshotType {
    #[default]
    Full,
    Diff,
}

/// `PUT /snapshot/load`. Exactly one of `mem_file_path` (deprecated) and `mem_backend`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    pub snapshot_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_file_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_backend: Option<MemoryBackend>,
    /// Deprecated name of `track_dirty_pages`.
    #[serde(default)]
    pub enable_diff_snapshots: bool,
    #[serde(default)]
    pub track_dirty_pages: bool,
    #[serde(default)]
    pub resume_vm: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_overrides: Vec<NetworkOverride>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
    /// Kestrel's extension: the host file each of the snapshot's drives is to use, so that the
    /// paths a state file names are not opened on its word.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drive_overrides: Vec<DriveOverride>,
    /// Kestrel's additions (`x-kestrel`): what backs the restored guest's RAM and where its
    /// threads run (host choices a snapshot does not carry; by default anonymous memory,
    /// unpinned).
    #[serde(rename = "x-kestrel", default, skip_serializing_if = "Option::is_none")]
    pub kestrel: Option<Box<HostExtensions>>,
}

/// A drive's host file, named by the client on restore.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DriveOverride {
    pub drive_id: String,
    pub path_on_host: String,
}

/// Where a loaded snapshot's guest memory comes from.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryBackend {
    pub backend_type: MemoryBackendType,
    pub backend_path: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum MemoryBackendType {
    File,
    Uffd,
}

/// A network interface's tap, changed on restore.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    pub iface_id: String,
    pub host_dev_name: String,
}

/// The vsock device's Unix socket, changed on restore.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    pub uds_path: String,
}
