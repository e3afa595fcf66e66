//! Why a configuration is refused: by an API request, a `--config` file, the command line's flags,
//! or a snapshot's saved configuration. Each message is the API's `fault_message` as it is.

use crate::config::{TAP_NAME_MAX_BYTES, VSOCK_MAX_CID, VSOCK_MIN_CID};
use crate::mac::MacError;
use crate::resources::{MAX_VCPUS, MIN_MEMORY_MIB};

/// Why a configuration (or one request's part of it) was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("The id from the path [{path}] does not match the id from the body [{body}]!")]
    IdMismatch { path: String, body: String },
    #[error("Invalid id '{0}': an id is 1 to 64 characters from A-Z, a-z, 0-9 and _")]
    InvalidId(String),
    #[error("{field}: the path must not be empty")]
    EmptyPath { field: &'static str },
    #[error("The {what} file cannot be opened: {path}: {reason}")]
    FileOpen { what: &'static str, path: String, reason: String },
    #[error("The kernel command line is {0} bytes, longer than the 2047 bytes allowed")]
    CmdlineTooLong(usize),
    #[error("The kernel command line must not contain NUL or newline characters")]
    CmdlineInvalid,
    #[error("The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled. (Kestrel allows 1 to {MAX_VCPUS} vCPUs; got {0}.)")]
    InvalidVcpuCount(u8),
    #[error("The memory size (MiB) is invalid: {0}; Kestrel needs at least {MIN_MEMORY_MIB} MiB")]
    InvalidMemorySize(u64),
    #[error("{0} is not supported by Kestrel yet")]
    Unsupported(String),
    #[error("The list of network interface IDs that allow forwarding MMDS requests is empty.")]
    MmdsNoInterfaces,
    #[error("The MMDS IPv4 address is not link local.")]
    MmdsAddress,
    #[error("The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface.")]
    MmdsUnknownInterface,
    #[error("A root block device already exists!")]
    RootBlockDeviceAlreadyAdded,
    #[error("is_read_only and path_on_host are required for a virtio-block drive (vhost-user drives are not supported)")]
    MissingDriveField,
    #[error("The host device name {0} is already in use by another interface")]
    HostDeviceNameInUse(String),
    #[error("The guest MAC address {0} is already in use by another interface")]
    GuestMacInUse(String),
    #[error("Invalid host_dev_name '{0}': a tap name is 1 to {TAP_NAME_MAX_BYTES} bytes without '/', ':', '%' or spaces")]
    InvalidTapName(String),
    #[error("Invalid guest_mac: {0}")]
    InvalidMac(#[from] MacError),
    #[error("Invalid guest_cid {0}: the CID must be {VSOCK_MIN_CID} to {VSOCK_MAX_CID}")]
    InvalidCid(u64),
    #[error("The balloon's amount_mib ({amount}) is more than the guest's memory ({memory} MiB)")]
    BalloonTooLarge { amount: u32, memory: u64 },
    #[error("Cannot start microvm without kernel configuration.")]
    MissingKernel,
    #[error("Invalid drive_id: no drive {0} is configured")]
    UnknownDrive(String),
    #[error("Invalid iface_id: no network interface {0} is configured")]
    UnknownInterface(String),
    #[error("path_on_host or rate_limiter is required: they are what a drive update can change")]
    MissingPath,
    /// [`crate::config::VmConfig::validate`]: a whole configuration's checks.
    #[error("the number of vCPUs must be between 1 and {max}, got {requested}")]
    VcpusOutOfRange { requested: u8, max: u8 },
    #[error("guest memory of {requested} bytes is below the minimum of {minimum} bytes")]
    MemoryTooSmall { requested: u64, minimum: u64 },
    #[error("guest memory must be a multiple of 4 KiB, got {0} bytes")]
    MemoryNotPageAligned(u64),
    #[error("kernel command line is {len} bytes, longer than the {max} bytes the boot protocol allows")]
    CommandLineTooLong { len: usize, max: usize },
    #[error("invalid kernel command line: it contains a control character")]
    CommandLineControlCharacter,
    #[error("the kernel path is empty")]
    EmptyKernelPath,
    #[error("disk id '{0}' is longer than {max} bytes", max = crate::config::DISK_ID_MAX_BYTES)]
    DiskIdTooLong(String),
    #[error("num_queues must be 1 to {max}, got {requested}")]
    InvalidQueueCount { requested: u16, max: u16 },
    #[error("poll_us must be at most {max} (µs), got {requested}")]
    PollTooLong { requested: u32, max: u32 },
    #[error("Invalid {field}: {reason}")]
    InvalidRateLimiter { field: &'static str, reason: &'static str },
    #[error("cache_type {cache_type} and x-kestrel cache {cache} disagree (cache none is Writeback with O_DIRECT)")]
    ConflictingCache { cache_type: &'static str, cache: &'static str },
    #[error("a balloon of {target_mib} MiB is larger than the guest's {memory_mib} MiB of RAM")]
    BalloonTargetTooLarge { target_mib: u32, memory_mib: u64 },
    /// vCPU placement or guest memory options that contradict themselves or the VM.
    #[error("{0}")]
    Placement(#[from] crate::host::PlacementError),
    #[error("mlock keeps guest RAM resident, so a balloon could not give any back: use one or the other")]
    MlockWithBalloon,
    #[error(
        "a balloon cannot be used with huge pages: the guest gives back 4 KiB pages, and hugetlb memory \
         is freed only in whole huge pages, so almost nothing would return to the host (as in Firecracker)"
    )]
    BalloonWithHugePages,
    #[error("huge_pages {top} and x-kestrel huge_pages {extension} disagree")]
    ConflictingHugePages { top: &'static str, extension: &'static str },
}
