//! What a user asks for: the description of one VM, independent of how it was given (flags, API, file).

use std::path::PathBuf;

/// Where the guest's COM1 output goes (and whether the host's stdin feeds its input).
#[derive(Clone, Debug, PartialEq, Eq)]
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
#[derive(Clone, Debug)]
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
}

/// One virtio device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VirtioConfig {
    /// An entropy source fed from the host's getrandom.
    Rng,
}
