//! Why a device refused a saved state. A state file is hostile input (whoever wrote it can fix up
//! its CRC), so every value a restore takes is checked against what the device model allows before
//! the model holds it: no decoded value may panic, hang or index out of bounds later.

/// A saved device state that the device model cannot take; names the component and the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestoreError {
    /// A saved table, buffer or register file has another length than the model's.
    #[error("{component}: the saved {field} has {saved} entries, this one {expected}")]
    Length { component: &'static str, field: &'static str, saved: usize, expected: usize },
    /// A saved buffer holds more than the model ever does.
    #[error("{component}: the saved {field} holds {saved} entries, at most {max} fit")]
    TooLong { component: &'static str, field: &'static str, saved: usize, max: usize },
    /// A saved value the model never holds.
    #[error("{component}: the saved {field} ({value:#x}) {reason}")]
    Value { component: &'static str, field: String, value: u64, reason: &'static str },
    /// A saved configuration space differs from this function's in bits the guest cannot write.
    #[error("{component}: the saved configuration space differs in read-only byte {offset:#x}")]
    ReadOnly { component: &'static str, offset: usize },
}

impl RestoreError {
    /// A saved value (of field `field`) that the model never holds, and why.
    pub fn value(
        component: &'static str,
        field: impl Into<String>,
        value: impl Into<u64>,
        reason: &'static str,
    ) -> RestoreError {
        RestoreError::Value { component, field: field.into(), value: value.into(), reason }
    }
}
