//! The devices behind Kestrel's ACPI tables (built by `arch::acpi`): the generic event device
//! that delivers the power button, and the PM1a event and control blocks through which the guest
//! powers off. The hardware-reduced sleep control register is [`crate::legacy::PowerManagement`].

mod ged;
mod pm1;

pub use ged::{Ged, GedError, POWER_BUTTON_EVENT};
pub use pm1::{Pm1, PM1_BLOCK_LEN};
