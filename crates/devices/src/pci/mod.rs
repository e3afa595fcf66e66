//! PCI: one root bus (bus 0) behind a host bridge, reached by the guest through the type-1
//! configuration mechanism (ports 0xCF8/0xCFC) or ECAM, with 32-bit memory BARs on the MMIO bus
//! and MSI-X.
//!
//! # Guest interface
//! * `00:00.0` is the host bridge, vendor 0x8086 device 0x0D57 (the ID Cloud Hypervisor and
//!   Firecracker give their host bridges: Linux knows it needs no quirks); devices take slots
//!   1–31, function 0 only. Absent functions read as all ones.
//! * Configuration space is 256 bytes through 0xCF8/0xCFC and 4 KiB through ECAM (the part past
//!   256 bytes reads as zero). Type-1 addresses with reserved bits 30:24 set, or bus numbers
//!   other than 0, reach nothing.
//! * BARs are pre-assigned from an [`MmioAllocator`] as firmware would, with memory decoding off;
//!   a BAR is on the MMIO bus while the guest enables memory decoding and gives it a non-zero
//!   address, and moves when the guest writes another address.
//!
//! # Locking
//! The [`PciRoot`] is shared as `Arc<Mutex<PciRoot>>` by both configuration mechanisms. A
//! configuration access takes the root, then the device; a BAR access takes only the device. The
//! root changes the MMIO bus (when a BAR moves) while holding no device lock.

mod allocator;
mod config_access;
pub mod config_space;
mod host_bridge;
pub mod msix;
mod root;

pub use allocator::MmioAllocator;
pub use config_access::{PciConfigIo, PciConfigMmio, CONFIG_IO_PORT, CONFIG_IO_PORT_COUNT};
pub use config_space::{BarMapping, ConfigSpace, PciIds};
pub use root::PciRoot;

/// Errors of the PCI model's host-facing API.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    #[error("BAR {0} does not exist or is already implemented")]
    BarIndex(usize),
    #[error("a BAR of {0:#x} bytes is not a power of two of at least 4 KiB")]
    BarSize(u64),
    #[error("capability {id:#x} of {size} bytes does not fit in the configuration space")]
    CapabilitySpace { id: u8, size: usize },
    #[error("every slot of PCI bus 0 is taken")]
    NoFreeSlot,
}

/// A PCI function as the root bus sees it: its configuration space and its BARs.
pub trait PciDevice: Send {
    /// The function's configuration space.
    fn config(&self) -> &ConfigSpace;

    /// Reads the configuration space; devices with registers that have side effects override it.
    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        self.config().read(offset, data);
    }

    /// Writes the configuration space (BAR and command register changes are seen by the root).
    fn write_config(&mut self, offset: usize, data: &[u8]);

    /// Reads `data.len()` bytes at `offset` into BAR `bar`; the offset is within the BAR.
    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]);

    /// Writes `data` at `offset` into BAR `bar`.
    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]);

    /// BAR `bar` is now mapped at `address`, or no longer mapped (None); devices with addresses
    /// bound elsewhere (ioeventfds) move them.
    fn bar_moved(&mut self, bar: usize, address: Option<u64>) {
        let _ = (bar, address);
    }
}
