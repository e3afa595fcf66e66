//! The ACPI PM1a event and control blocks (fixed hardware), as one device on the I/O bus: the
//! event block's status and enable registers (16 bits each) followed by the control register.
//!
//! Kestrel raises no fixed event (the power button comes through the GED), so the status register
//! reads 0 and the enable register only keeps what the guest writes. The control register reads
//! SCI_EN = 1 (always in ACPI mode: the FADT has no SMI command port); writing SLP_TYP = 5 with
//! SLP_EN (the DSDT's `_S5_`) signals the power-off line.

use vmm_sys_util::eventfd::EventFd;

use crate::legacy::{read_byte_registers, write_byte_registers};
use crate::{BusDevice, GuestErrorLog};

/// A power-off that cannot be signalled, once per guest write: limited.
static SIGNAL_ERRORS: GuestErrorLog = GuestErrorLog::site("ACPI PM1 power-off signals");

/// Byte offsets of the registers from the start of the event block.
const STATUS: u8 = 0;
const ENABLE: u8 = 2;
const CONTROL: u8 = 4;
/// Bytes the device spans: PM1_STS, PM1_EN, PM1_CNT.
pub const PM1_BLOCK_LEN: u64 = 6;

/// PM1_CNT.SCI_EN: the platform is in ACPI mode.
const SCI_ENABLE: u16 = 1 << 0;
/// PM1_CNT.SLP_TYP (bits 10-12) and SLP_EN (bit 13).
const SLEEP_TYPE_SHIFT: u16 = 10;
const SLEEP_TYPE_MASK: u16 = 0b111;
const SLEEP_ENABLE: u16 = 1 << 13;
/// The sleep type the DSDT's `_S5_` package gives soft off.
const SLEEP_TYPE_SOFT_OFF: u16 = 5;

/// The PM1a event block followed by the PM1a control block; place it at the event block's port
/// with length [`PM1_BLOCK_LEN`] (the FADT puts the control block 4 bytes after it).
pub struct Pm1 {
    power_off: EventFd,
    enable: u16,
    control: u16,
}

impl Pm1 {
    /// Creates the blocks in ACPI mode; an S5 request signals `power_off`.
    pub fn new(power_off: EventFd) -> Self {
        Pm1 { power_off, enable: 0, control: SCI_ENABLE }
    }

    fn register(&self, byte: u8) -> u8 {
        let (value, shift) = match byte {
            STATUS..=1 => (0, byte - STATUS),
            ENABLE..=3 => (self.enable, byte - ENABLE),
            CONTROL..=5 => (self.control, byte - CONTROL),
            _ => return 0,
        };
        (value >> (8 * shift)) as u8
    }

    fn set_byte(register: &mut u16, shift: u8, value: u8) {
        let shift = 8 * u16::from(shift);
        *register = (*register & !(0xff << shift)) | (u16::from(value) << shift);
    }

    fn write_register(&mut self, byte: u8, value: u8) {
        match byte {
            // Write-one-to-clear bits of which none is ever set.
            STATUS..=1 => {}
            ENABLE..=3 => Self::set_byte(&mut self.enable, byte - ENABLE, value),
            CONTROL..=5 => {
                Self::set_byte(&mut self.control, byte - CONTROL, value);
                // SCI_EN stays set: there is no legacy mode to go back to.
                self.control |= SCI_ENABLE;
                // SLP_EN is in the high byte: act once it is written (a 16-bit write, or the
                // second of two byte writes).
                if byte == CONTROL + 1 {
                    self.sleep_if_asked();
                }
            }
            _ => {}
        }
    }

    fn sleep_if_asked(&mut self) {
        if self.control & SLEEP_ENABLE == 0 {
            return;
        }
        // SLP_EN is a write-only bit: it reads as 0.
        self.control &= !SLEEP_ENABLE;
        if (self.control >> SLEEP_TYPE_SHIFT) & SLEEP_TYPE_MASK == SLEEP_TYPE_SOFT_OFF {
            if let Err(err) = self.power_off.write(1) {
                SIGNAL_ERRORS.log(format_args!("ACPI PM1: cannot signal the guest's power-off: {err}"));
            }
        }
    }
}

impl BusDevice for Pm1 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_byte_registers(offset, data, |byte| self.register(byte));
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        write_byte_registers(offset, data, |byte, value| self.write_register(byte, value));
    }
}

#[cfg(test)]
mod tests {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    fn pm1() -> (Pm1, EventFd) {
        let power_off = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (Pm1::new(power_off.try_clone().unwrap()), power_off)
    }

    fn read16(pm1: &mut Pm1, offset: u64) -> u16 {
        let mut data = [0; 2];
        pm1.read(offset, &mut data);
        u16::from_le_bytes(data)
    }

    #[test]
    fn starts_in_acpi_mode_with_no_event() {
        let (mut pm1, _) = pm1();
        assert_eq!(read16(&mut pm1, 0), 0, "PM1_STS");
        assert_eq!(read16(&mut pm1, 2), 0, "PM1_EN");
        assert_eq!(read16(&mut pm1, 4), SCI_ENABLE, "PM1_CNT");
    }

    #[test]
    fn s5_as_acpica_writes_it_signals_power_off() {
        let (mut pm1, power_off) = pm1();
        // SLP_TYP first, then SLP_TYP | SLP_EN, SCI_EN kept (read-modify-write).
        pm1.write(4, &(SCI_ENABLE | 5 << 10).to_le_bytes());
        assert!(power_off.read().is_err(), "not before SLP_EN");
        pm1.write(4, &(SCI_ENABLE | 5 << 10 | SLEEP_ENABLE).to_le_bytes());
        assert_eq!(power_off.read().unwrap(), 1);
        assert_eq!(read16(&mut pm1, 4) & SLEEP_ENABLE, 0, "SLP_EN reads 0");
    }

    #[test]
    fn byte_writes_and_other_sleep_types_behave() {
        let (mut pm1, power_off) = pm1();
        for sleep_type in [0u16, 1, 3, 4, 7] {
            pm1.write(4, &(sleep_type << 10 | SLEEP_ENABLE).to_le_bytes());
        }
        assert!(power_off.read().is_err(), "only S5 powers off");
        pm1.write(4, &[0x00]);
        pm1.write(5, &[0x34]);
        assert_eq!(power_off.read().unwrap(), 1, "two byte writes, SLP_EN in the second");
        pm1.write(2, &0x0120u16.to_le_bytes());
        assert_eq!(read16(&mut pm1, 2), 0x0120, "PM1_EN keeps what is written");
        pm1.write(0, &0xffffu16.to_le_bytes());
        assert_eq!(read16(&mut pm1, 0), 0, "PM1_STS has nothing to clear");
        pm1.write(4, &0u16.to_le_bytes());
        assert_eq!(read16(&mut pm1, 4) & SCI_ENABLE, SCI_ENABLE, "SCI_EN stays set");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// Whatever the guest writes where, nothing panics and the blocks stay in ACPI mode.
        #[test]
        fn guest_accesses_never_panic(
            accesses in vec((any::<bool>(), 0u64..16, vec(any::<u8>(), 0..9)), 0..32)
        ) {
            let (mut pm1, _) = pm1();
            for (is_read, offset, mut data) in accesses {
                if is_read { pm1.read(offset, &mut data) } else { pm1.write(offset, &data) }
            }
            pm1.read(u64::MAX, &mut [0; 4]);
            prop_assert_eq!(read16(&mut pm1, 4) & SCI_ENABLE, SCI_ENABLE);
        }
    }
}
