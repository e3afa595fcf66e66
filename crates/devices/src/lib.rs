//! Emulated devices of the Kestrel VMM: the I/O and MMIO bus that routes guest
//! accesses to them, the legacy PC devices (COM1, i8042, CMOS RTC, power
//! management), the ACPI generic event device (the power button), the
//! userspace IOAPIC of the split irqchip, and PCI (root bus, configuration
//! mechanisms, MSI-X).
//!
//! Every device is driven by guest input, so none of them may panic whatever
//! offset, access size or value the guest uses.
//!
//! # Lock order
//! Devices live behind `Arc<Mutex<_>>` on a [`Bus`]. A device that raises an
//! interrupt through an [`ioapic::IoapicPin`] while its own mutex is held takes
//! the IOAPIC mutex second. The IOAPIC never calls back into a device, so the
//! order is always "device, then IOAPIC" and cannot deadlock.

pub mod acpi;
pub mod boot_timer;
pub mod bus;
pub mod guest_log;
pub mod interrupt;
pub mod ioapic;
pub mod legacy;
pub mod pci;
pub mod restore;
#[cfg(test)]
mod restore_proptest;

pub use bus::{Bus, BusDevice, BusError};
pub use guest_log::GuestErrorLog;
pub use interrupt::InterruptLine;
pub use restore::RestoreError;
