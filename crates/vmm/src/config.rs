//! What a user asks for: the description of one VM, independent of how it was given (flags, API, file).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where the guest's COM1 output goes (and whether the host's stdin feeds its input).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SerialConfig {
    /// Output to stdout; stdin is forwarded to the guest (raw mode when it is a terminal).
    Stdio,
    /// Output appended to a file; the guest gets no input.
    File(PathBuf),
    /// Output discarded; the guest gets no input.
    None,
}

/// The command line used when the user gives none: a serial console and a reboot that ends the VM.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// Everything needed to build and boot one VM.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmConfig {
    /// Kernel image: ELF vmlinux (64-bit or PVH entry) or bzImage.
    pub kernel: PathBuf,
    /// Optional initial ramdisk, loaded at the top of low memory.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Number of vCPUs (1..=arch::layout::MAX_VCPUS).
    pub vcpus: u8,
    /// Guest RAM in bytes.
    pub memory_bytes: u64,
    /// Serial console wiring.
    pub serial: SerialConfig,
    /// Virtio devices, in the order the guest finds them.
    pub virtio: Vec<VirtioConfig>,
    /// How the virtio devices reach the guest.
    pub transport: VirtioTransport,
    /// KVM logs the pages the guest writes, so that diff snapshots are possible (it costs a little
    /// on every first write to a page after each snapshot).
    pub track_dirty_pages: bool,
}

/// How virtio devices reach the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum VirtioTransport {
    /// virtio-mmio windows declared on the kernel command line: what microVM kernels expect, and
    /// the cheapest to set up.
    #[default]
    Mmio,
    /// virtio-pci (modern) on PCI bus 0 with MSI-X: what stock distribution kernels expect.
    Pci,
}

/// One virtio device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VirtioConfig {
    /// An entropy source fed from the host's getrandom.
    Rng,
    /// A disk (virtio-blk) over a raw image file or a host block device.
    Block(BlockConfig),
    /// A network card (virtio-net) on a host tap device.
    Net(NetConfig),
    /// A memory balloon (virtio-balloon): the host asks the guest for memory back.
    Balloon(BalloonConfig),
    /// Stream sockets between the guest and host processes (virtio-vsock).
    Vsock(VsockConfig),
}

pub use virtio::vsock::{MAX_GUEST_CID as VSOCK_MAX_CID, MIN_GUEST_CID as VSOCK_MIN_CID};

/// A virtio-vsock device; host processes reach it through Unix sockets, Firecracker-style.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockConfig {
    /// The guest's context ID, 3 to 4294967294.
    pub cid: u64,
    /// The Unix socket host processes connect to (`CONNECT <port>\n`); guest connections to
    /// host port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
}

pub use virtio::net::{MacAddress, TAP_NAME_MAX_BYTES};

/// A virtio-net card on a tap device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// The tap to create, or to attach to if it exists; `None` creates one with a free
    /// `kestrelN` name.
    pub tap: Option<String>,
    /// The card's address; by default a random locally administered one.
    pub mac: Option<MacAddress>,
    /// The card's name in the metrics (`net_<id>`; the API's interface ID); by default the tap's
    /// name.
    pub id: Option<String>,
}

/// The longest serial number a disk can have.
pub const DISK_ID_MAX_BYTES: usize = virtio::block::ID_BYTES;

/// A virtio-blk disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockConfig {
    /// Raw image file or host block device.
    pub path: PathBuf,
    /// Opened `O_RDONLY`; the guest sees a read-only disk and every write fails.
    pub read_only: bool,
    /// Serial number the guest reads (at most 20 bytes); by default the file name.
    pub id: Option<String>,
}

/// A virtio-balloon device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonConfig {
    /// The balloon size asked of the guest at boot, in MiB (at most the guest's RAM).
    pub target_mib: u32,
    /// How often the guest is asked for memory statistics; `None` offers no stats queue.
    pub stats_interval: Option<std::time::Duration>,
    /// The guest reports the pages it frees, and the host gives them back to its kernel.
    pub free_page_reporting: bool,
    /// The guest may take pages back from the balloon instead of running out of memory.
    pub deflate_on_oom: bool,
}
