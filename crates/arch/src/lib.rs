//! x86_64 platform setup for Kestrel guests.
//!
//! Everything here implements `docs/guest-contract.md`: where RAM lives, which boot
//! structures sit where in guest memory (zero page, PVH start info, MP table, page
//! tables, GDT) and the CPU state (registers, MSRs, CPUID, LAPIC LINTs) a vCPU starts in.

pub mod acpi;
mod boot_params;
mod cmdline;
pub mod cpuid;
pub mod e820;
mod error;
mod gdt;
mod guest_write;
pub mod interrupts;
pub mod layout;
mod memory;
mod mptable;
pub mod msrs;
mod paging;
mod pvh;
pub mod regs;
#[cfg(test)]
mod test_support;

pub use boot_params::configure_linux_boot;
pub use cmdline::CmdlineLocation;
pub use error::{Error, Result};
pub use memory::{initrd_load_address, ram_regions};
pub use mptable::setup_mptable;
pub use pvh::configure_pvh_boot;
pub use regs::BootEntry;
