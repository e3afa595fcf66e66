//! The generic event device (GED, `ACPI0013`): one event register on the I/O bus and one
//! interrupt line. The host latches an event in the register and raises the interrupt; the
//! guest's `_EVT` method (in the DSDT) reads the register, which clears it, and acts on each bit
//! (the power button bit: `Notify(\_SB.PWRB, 0x80)`).
//!
//! The register is a latch, not a queue: presses made before the guest reads it are one press.

use std::sync::Arc;

use crate::{BusDevice, InterruptLine};

/// The event register's bit for a power button press; must match the DSDT's `_EVT`
/// (`arch::acpi::GED_EVENT_POWER_BUTTON`).
pub const POWER_BUTTON_EVENT: u8 = 1 << 0;

/// Why an event could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum GedError {
    /// The interrupt line refused.
    #[error("cannot raise the generic event device's interrupt: {0}")]
    Interrupt(#[source] std::io::Error),
}

/// The generic event device: placed on the I/O bus (one byte) at the port the DSDT's `GDST`
/// region names, its interrupt at the GSI the DSDT's `_CRS` names.
pub struct Ged {
    irq: Arc<dyn InterruptLine>,
    /// Events raised and not yet read by the guest.
    pending: u8,
}

impl Ged {
    /// Creates the device with no event pending; events raise `irq`.
    pub fn new(irq: Arc<dyn InterruptLine>) -> Self {
        Ged { irq, pending: 0 }
    }

    /// Presses the power button: latches the event and interrupts the guest. The event stays
    /// latched if the guest is paused (it runs `_EVT` when it resumes) or ignores it.
    pub fn press_power_button(&mut self) -> Result<(), GedError> {
        self.pending |= POWER_BUTTON_EVENT;
        self.irq.trigger().map_err(GedError::Interrupt)
    }

    /// Events raised and not yet read.
    pub fn pending(&self) -> u8 {
        self.pending
    }
}

impl BusDevice for Ged {
    /// The register at offset 0 returns the pending events and clears them; any other byte
    /// (a wider or misplaced access) reads as 0.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 {
            if let Some(first) = data.first_mut() {
                *first = std::mem::take(&mut self.pending);
            }
        }
    }

    /// The register is read-only: writes are ignored.
    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    #[derive(Default)]
    struct CountingLine(AtomicUsize);

    impl InterruptLine for CountingLine {
        fn trigger(&self) -> io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    struct BrokenLine;

    impl InterruptLine for BrokenLine {
        fn trigger(&self) -> io::Result<()> {
            Err(io::Error::other("no route"))
        }
    }

    fn ged() -> (Ged, Arc<CountingLine>) {
        let line = Arc::new(CountingLine::default());
        (Ged::new(line.clone()), line)
    }

    fn read_register(ged: &mut Ged) -> u8 {
        let mut data = [0xff];
        ged.read(0, &mut data);
        data[0]
    }

    #[test]
    fn a_press_latches_the_event_and_raises_the_interrupt_once() {
        let (mut ged, line) = ged();
        assert_eq!(read_register(&mut ged), 0, "nothing pending at power-on");
        ged.press_power_button().unwrap();
        assert_eq!(line.0.load(Ordering::SeqCst), 1);
        assert_eq!(ged.pending(), POWER_BUTTON_EVENT);
        assert_eq!(read_register(&mut ged), POWER_BUTTON_EVENT);
        assert_eq!(read_register(&mut ged), 0, "reading clears the register");
    }

    #[test]
    fn presses_before_the_guest_reads_are_one_event() {
        let (mut ged, line) = ged();
        ged.press_power_button().unwrap();
        ged.press_power_button().unwrap();
        assert_eq!(line.0.load(Ordering::SeqCst), 2);
        assert_eq!(read_register(&mut ged), POWER_BUTTON_EVENT);
        assert_eq!(read_register(&mut ged), 0);
    }

    #[test]
    fn a_refused_interrupt_is_an_error_but_the_event_stays_latched() {
        let mut ged = Ged::new(Arc::new(BrokenLine));
        let error = ged.press_power_button().unwrap_err();
        assert!(error.to_string().contains("no route"), "{error}");
        assert_eq!(read_register(&mut ged), POWER_BUTTON_EVENT);
    }

    #[test]
    fn writes_are_ignored_and_other_bytes_read_as_zero() {
        let (mut ged, _) = ged();
        ged.press_power_button().unwrap();
        ged.write(0, &[0xff]);
        let mut wide = [0xff; 4];
        ged.read(1, &mut wide);
        assert_eq!(wide, [0; 4]);
        let mut wide = [0xff; 4];
        ged.read(0, &mut wide);
        assert_eq!(wide, [POWER_BUTTON_EVENT, 0, 0, 0], "a wide read at 0 takes the register");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// Whatever the guest does to the register, nothing panics and a press is seen once.
        #[test]
        fn guest_accesses_never_panic(
            accesses in vec((any::<bool>(), any::<u64>(), vec(any::<u8>(), 0..9)), 0..32)
        ) {
            let (mut ged, _) = ged();
            for (is_read, offset, mut data) in accesses {
                if is_read { ged.read(offset, &mut data) } else { ged.write(offset, &data) }
            }
            ged.press_power_button().unwrap();
            prop_assert_eq!(read_register(&mut ged), POWER_BUTTON_EVENT);
            prop_assert_eq!(read_register(&mut ged), 0);
        }
    }
}
