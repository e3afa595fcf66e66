//! The crate's single error type.

use vm_memory::GuestMemoryError;

/// Result of the platform setup functions.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while preparing the platform for a guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ACPI tables do not fit their room below the BIOS area.
    #[error("the ACPI tables take {len} bytes; only {room} fit below the BIOS area")]
    AcpiTablesTooLarge {
        /// Their size in bytes.
        len: usize,
        /// The room they have.
        room: u64,
    },
    /// The command line is empty or longer than the limit.
    #[error("kernel command line is {0} bytes with its NUL; it must be 1..=2048")]
    CmdlineSize(usize),
    /// The filtered CPUID does not fit a `kvm_cpuid2`.
    #[error("too many CPUID entries for KVM")]
    CpuidTooManyEntries,
    /// Reading the local APIC state failed.
    #[error("KVM_GET_LAPIC failed: {0}")]
    GetLapic(#[source] kvm_ioctls::Error),
    /// Reading the special registers failed.
    #[error("KVM_GET_SREGS failed: {0}")]
    GetSregs(#[source] kvm_ioctls::Error),
    /// A boot structure lies outside guest memory.
    #[error("guest memory has no room for the {what} at {addr:#x} ({len} bytes)")]
    GuestMemoryTooSmall {
        /// What was to be written.
        what: &'static str,
        /// Its guest-physical address.
        addr: u64,
        /// Its size in bytes.
        len: usize,
    },
    /// The initrd does not fit between the kernel and the top of low RAM.
    #[error("initrd of {size} bytes does not fit in the {room} bytes of low RAM above the kernel")]
    InitrdTooLarge {
        /// Size of the initrd in bytes.
        size: usize,
        /// Bytes free between the kernel's end and the top of low RAM.
        room: u64,
    },
    /// KVM stopped at an MSR it does not accept.
    #[error("KVM accepted only {accepted} of {expected} boot MSRs")]
    MsrsNotAccepted {
        /// How many MSRs KVM set.
        accepted: usize,
        /// How many were given.
        expected: usize,
    },
    /// The MSR list does not fit a `kvm_msrs`.
    #[error("too many MSRs for KVM")]
    MsrsTooMany,
    /// No vCPUs were asked for.
    #[error("a guest needs at least one vCPU")]
    NoVcpus,
    /// Writing the FPU state failed.
    #[error("KVM_SET_FPU failed: {0}")]
    SetFpu(#[source] kvm_ioctls::Error),
    /// Writing the local APIC state failed.
    #[error("KVM_SET_LAPIC failed: {0}")]
    SetLapic(#[source] kvm_ioctls::Error),
    /// Writing the MSRs failed.
    #[error("KVM_SET_MSRS failed: {0}")]
    SetMsrs(#[source] kvm_ioctls::Error),
    /// Writing the general-purpose registers failed.
    #[error("KVM_SET_REGS failed: {0}")]
    SetRegs(#[source] kvm_ioctls::Error),
    /// Writing the special registers failed.
    #[error("KVM_SET_SREGS failed: {0}")]
    SetSregs(#[source] kvm_ioctls::Error),
    /// More vCPUs than APIC ids allow.
    #[error("{0} vCPUs requested; at most 254 are supported")]
    TooManyCpus(u8),
    /// The vCPU index is not below the vCPU count.
    #[error("vCPU index {index} is out of range for {num_cpus} vCPUs")]
    VcpuIndex {
        /// The index given.
        index: u8,
        /// The vCPU count given.
        num_cpus: u8,
    },
    /// Guest memory rejected a write that fitted its bounds.
    #[error("writing the {what} to guest memory failed: {source}")]
    WriteGuestMemory {
        /// What was being written.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: GuestMemoryError,
    },
}
