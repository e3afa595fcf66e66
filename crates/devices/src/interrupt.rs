//! The interrupt line a device raises, independent of what delivers it.

/// An edge-triggered interrupt line: each call to [`trigger`](Self::trigger)
/// delivers one interrupt.
pub trait InterruptLine: Send + Sync {
    /// Raises one interrupt.
    fn trigger(&self) -> Result<(), std::io::Error>;
}
