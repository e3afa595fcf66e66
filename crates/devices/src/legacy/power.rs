//! The power-management port at 0x600: an ACPI hardware-reduced sleep control
//! register, of which only the S5 (soft off) request is implemented.

use vmm_sys_util::eventfd::EventFd;

use super::write_byte_registers;
use crate::{BusDevice, GuestErrorLog};

/// A power-off that cannot be signalled, once per guest write: limited.
static SIGNAL_ERRORS: GuestErrorLog = GuestErrorLog::site("power management signals");

/// SLP_TYPx field of the sleep control register (bits 2-4).
const SLEEP_TYPE_SHIFT: u8 = 2;
const SLEEP_TYPE_MASK: u8 = 0b111;
/// SLP_EN (bit 5): enter the sleep state written to SLP_TYPx.
const SLEEP_ENABLE: u8 = 1 << 5;
/// The sleep type our ACPI tables assign to S5.
const SLEEP_TYPE_SOFT_OFF: u8 = 5;

/// The sleep control register, placed on the I/O bus at 0x600 with length 1.
/// Writing SLP_TYP=5 with SLP_EN (0x34) signals `power_off`; other sleep
/// states are ignored, and the register reads as 0.
pub struct PowerManagement {
    power_off: EventFd,
}

impl PowerManagement {
    /// Creates the register; a guest S5 request signals `power_off`.
    pub fn new(power_off: EventFd) -> Self {
        PowerManagement { power_off }
    }

    fn write_sleep_control(&self, value: u8) {
        let sleep_type = (value >> SLEEP_TYPE_SHIFT) & SLEEP_TYPE_MASK;
        if value & SLEEP_ENABLE != 0 && sleep_type == SLEEP_TYPE_SOFT_OFF {
            if let Err(err) = self.power_off.write(1) {
                SIGNAL_ERRORS
                    .log(format_args!("power management: cannot signal the guest's power-off: {err}"));
            }
        }
    }
}

impl BusDevice for PowerManagement {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        write_byte_registers(offset, data, |register, value| {
            if register == 0 {
                self.write_sleep_control(value);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn power_with_event() -> (PowerManagement, EventFd) {
        let power_off = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (PowerManagement::new(power_off.try_clone().unwrap()), power_off)
    }

    #[test]
    fn s5_request_signals_power_off() {
        let (mut power, power_off) = power_with_event();
        power.write(0, &[0x34]);
        assert_eq!(power_off.read().unwrap(), 1);
    }

    #[test]
    fn other_values_are_ignored() {
        let (mut power, power_off) = power_with_event();
        // S5 without SLP_EN, SLP_EN with other sleep types, and odd offsets.
        for value in [0x00, 0x14, 0x20, 0x24, 0x2c, 0x3c, !SLEEP_ENABLE] {
            power.write(0, &[value]);
        }
        power.write(1, &[0x34]);
        power.write(u64::MAX, &[0x34, 0x34]);
        assert!(power_off.read().is_err(), "nothing was signalled");
    }

    #[test]
    fn reads_return_zero() {
        let (mut power, _) = power_with_event();
        let mut data = [0xff; 8];
        power.read(0, &mut data);
        assert_eq!(data, [0; 8]);
    }
}
