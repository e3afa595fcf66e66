//! Kestrel's VM engine: turns `/dev/kvm` into a running guest.
//!
//! [`builder::build`] assembles a VM from a [`config::VmConfig`] (memory, kernel, devices, vCPUs) and
//! [`vm::Vm::run`] runs it until the guest powers off, resets, fails, or the user stops it; a
//! [`vm::VmHandle`] taken before pauses, resumes and snapshots it from another thread, and reaches
//! its devices ([`controls::DeviceControls`]). [`vm::Vm::metrics`] shares what the VM counts
//! ([`metrics`]) with a metrics writer. [`control`] is the VMM's control thread: the API's typed
//! requests, answered on the main thread beside the VM's event loop.

pub mod builder;
pub mod config;
pub mod console;
pub mod control;
pub mod controls;
pub mod disks;
mod irqchip;
mod kernel;
mod memory;
pub mod metrics;
pub mod outcome;
mod pci_devices;
mod placement;
pub mod snapshot;
pub mod uffd;
mod vcpu;
mod virtio_devices;
pub mod vm;

use std::path::PathBuf;

/// Why a VM could not be built or run. Each message is one line naming the problem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot set up the boot environment: {0}")]
    Arch(#[from] arch::Error),
    #[error("cannot set up the balloon: {0}")]
    Balloon(virtio::balloon::BalloonError),
    #[error("kernel command line is {len} bytes, longer than the {max} bytes the boot protocol allows")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("invalid kernel command line: {0}")]
    CmdlineInvalid(linux_loader::cmdline::Error),
    #[error("invalid configuration: {0}")]
    Config(#[from] model::config::ConfigError),
    #[error("{0}")]
    Seccomp(#[from] jail::seccomp::Error),
    #[error("cannot set up the device {name}: {reason}")]
    Device { name: &'static str, reason: String },
    #[error("{}", source.describe(path))]
    Disk { path: PathBuf, source: crate::disks::DiskOpenError },
    #[error("cannot set up tap {tap}: {source}")]
    Tap { tap: String, source: virtio::net::TapError },
    #[error("cannot set up the device virtio-net: its rate limiter: {0}")]
    NetRateLimiter(#[source] virtio::rate_limiter::RateLimitError),
    #[error("cannot set up the device virtio-net: cannot make up a MAC address: {0}")]
    RandomMac(#[source] std::io::Error),
    #[error("vsock: {0}")]
    Vsock(virtio::vsock::VsockError),
    #[error("cannot set up the event loop: {0}")]
    EventLoop(std::io::Error),
    #[error("cannot write {what} into guest memory: {reason}")]
    GuestMemory { what: &'static str, reason: String },
    #[error("initrd {path} is {size} bytes, too large for {memory} bytes of guest memory")]
    InitrdTooLarge { path: PathBuf, size: u64, memory: u64 },
    #[error("cannot read initrd {path}: {source}")]
    InitrdRead { path: PathBuf, source: std::io::Error },
    #[error("cannot load kernel {path}: {reason}")]
    KernelLoad { path: PathBuf, reason: String },
    #[error(
        "the vCPUs did not pause within {timeout:?} ({parked} of {live} parked); the VM goes on running"
    )]
    PauseTimeout { timeout: std::time::Duration, parked: usize, live: usize },
    #[error("snapshot: {0}")]
    Snapshot(#[from] snapshot::SnapshotError),
    #[error("cannot read kernel {path}: {source}")]
    KernelRead { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a kernel image (neither an ELF vmlinux nor a bzImage)")]
    KernelNotRecognised { path: PathBuf },
    #[error("cannot open {path}: {source} (is KVM available, and may this user open it?)")]
    KvmOpen { path: PathBuf, source: std::io::Error },
    #[error("KVM call {call} failed: {source}")]
    Kvm { call: &'static str, source: kvm_ioctls::Error },
    #[error("KVM lacks a capability Kestrel needs: {0}")]
    KvmCapability(&'static str),
    #[error("guest memory of {requested} bytes is more than this host's {host} bytes of RAM")]
    MemoryExceedsHost { requested: u64, host: u64 },
    #[error("guest memory must be a multiple of 4 KiB, got {0} bytes")]
    MemoryNotPageAligned(u64),
    #[error("cannot allocate {bytes} bytes of guest memory: {reason}")]
    MemoryAllocation { bytes: u64, reason: String },
    #[error("guest memory of {requested} bytes is below the minimum of {minimum} bytes")]
    MemoryTooSmall { requested: u64, minimum: u64 },
    #[error("{0}")]
    Memory(#[from] memory::MemoryError),
    #[error("{0}")]
    Placement(#[from] placement::HostPlacementError),
    #[error("{0}")]
    Uffd(#[from] uffd::UffdError),
    #[error("cannot open the serial output file {path}: {source}")]
    SerialOutput { path: PathBuf, source: std::io::Error },
    #[error("{requested} virtio-mmio devices requested but at most {max} fit (one ISA interrupt line each); use --transport pci for more")]
    TooManyDevices { requested: usize, max: usize },
    #[error("cannot start vCPU {index}: {source}")]
    VcpuSpawn { index: u8, source: std::io::Error },
    #[error("{requested} vCPUs requested but this host's KVM allows at most {max}")]
    VcpusExceedHost { requested: u8, max: usize },
    #[error("the number of vCPUs must be between 1 and {max}, got {requested}")]
    VcpusOutOfRange { requested: u8, max: u8 },
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for wrapping a failed KVM ioctl with the name of the call.
fn kvm_err(call: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { call, source }
}

/// What the crate's unit tests share.
#[cfg(test)]
mod testing {
    /// Whether /dev/kvm can be used, for the tests that need it; on CI (CI=true) its absence fails
    /// the test instead of skipping it.
    pub(crate) fn kvm_available() -> bool {
        match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
            Ok(_) => true,
            Err(e) => {
                assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "this test needs /dev/kvm on CI: {e}");
                eprintln!("skipping: /dev/kvm cannot be opened: {e}");
                false
            }
        }
    }
}
