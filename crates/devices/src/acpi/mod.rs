//! The devices behind Kestrel's ACPI tables (built by `arch::acpi`): the generic event device
//! that delivers the power button. The sleep control register the FADT names is
//! [`crate::legacy::PowerManagement`].

mod ged;

pub use ged::{Ged, GedError, POWER_BUTTON_EVENT};
