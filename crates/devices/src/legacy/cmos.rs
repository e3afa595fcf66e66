//! The CMOS RTC and NVRAM at ports 0x70 (index) and 0x71 (data).
//!
//! The clock registers always show the host's current UTC time, in the format
//! status register B selects (BCD and 24-hour by default). Guest writes to
//! the clock are ignored: the host clock stays the only source of time. The
//! rest of the 128 bytes are plain RAM, pre-filled with the memory-size
//! registers that firmware and Linux read.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{read_byte_registers, write_byte_registers};
use crate::{BusDevice, RestoreError};

const INDEX_PORT: u8 = 0;
const DATA_PORT: u8 = 1;

/// Writes to the index port carry the NMI-disable flag in bit 7; only the low
/// seven bits select one of the 128 bytes.
const INDEX_MASK: u8 = 0x7f;
const CMOS_SIZE: usize = 128;

const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const DAY_OF_WEEK: u8 = 0x06;
const DAY_OF_MONTH: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const STATUS_A: u8 = 0x0a;
const STATUS_B: u8 = 0x0b;
const STATUS_C: u8 = 0x0c;
const STATUS_D: u8 = 0x0d;
const CENTURY: u8 = 0x32;
/// RAM between 16 MiB and 4 GiB, in 64 KiB units (low byte, high byte).
const MEM_ABOVE_16M_LOW: u8 = 0x34;
const MEM_ABOVE_16M_HIGH: u8 = 0x35;
/// RAM above 4 GiB, in 64 KiB units (three bytes, least significant first).
const MEM_ABOVE_4G_LOW: u8 = 0x5b;

/// Status A: 32.768 kHz time base, 1024 Hz periodic rate.
const STATUS_A_DEFAULT: u8 = 0x26;
/// Status A bit 7, "update in progress". Never set: the clock is computed on
/// each read, so it is never mid-update, and a guest polling for the bit to
/// clear must not spin.
const STATUS_A_UPDATE_IN_PROGRESS: u8 = 0x80;
/// Status B bit 1: hours count 0-23 instead of 1-12 with a PM flag.
const STATUS_B_24_HOUR: u8 = 0x02;
/// Status B bit 2: registers hold binary values instead of BCD.
const STATUS_B_BINARY: u8 = 0x04;
/// Status D bit 7, "valid RAM and time": the CMOS battery is fine.
const STATUS_D_VALID: u8 = 0x80;
/// In 12-hour mode, bit 7 of the hours register marks PM.
const HOURS_PM: u8 = 0x80;

/// What an unimplemented, write-only port reads as on an ISA bus.
const FLOATING_BUS: u8 = 0xff;

const SECONDS_PER_DAY: u64 = 24 * 60 * 60;
const MIB: u64 = 1 << 20;
const MEM_UNIT: u64 = 64 * 1024;

/// The CMOS's index register and RAM, as a snapshot keeps them (the clock is the host's).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CmosSnapshot {
    pub(crate) index: u8,
    pub(crate) ram: Vec<u8>,
}

/// The CMOS, placed on the I/O bus at 0x70 with length 2.
pub struct Cmos {
    index: u8,
    ram: [u8; CMOS_SIZE],
    clock: fn() -> SystemTime,
}

impl Cmos {
    /// Creates the CMOS for a guest with `mem_below_4g` bytes of RAM below
    /// 4 GiB (counting from address 0) and `mem_above_4g` bytes above it.
    pub fn new(mem_below_4g: u64, mem_above_4g: u64) -> Self {
        Self::with_clock(mem_below_4g, mem_above_4g, SystemTime::now)
    }

    fn with_clock(mem_below_4g: u64, mem_above_4g: u64, clock: fn() -> SystemTime) -> Self {
        let mut ram = [0u8; CMOS_SIZE];
        ram[usize::from(STATUS_A)] = STATUS_A_DEFAULT;
        ram[usize::from(STATUS_B)] = STATUS_B_24_HOUR;

        // The registers saturate rather than wrap: a guest that is told less
        // memory than it has still boots, one told more would crash.
        let above_16m = (mem_below_4g.saturating_sub(16 * MIB) / MEM_UNIT).min(0xffff);
        let above_16m = above_16m.to_le_bytes();
        ram[usize::from(MEM_ABOVE_16M_LOW)] = above_16m[0];
        ram[usize::from(MEM_ABOVE_16M_HIGH)] = above_16m[1];

        let above_4g = (mem_above_4g / MEM_UNIT).min(0xff_ffff).to_le_bytes();
        let start = usize::from(MEM_ABOVE_4G_LOW);
        ram[start..start + 3].copy_from_slice(&above_4g[..3]);

        Cmos { index: 0, ram, clock }
    }

    /// The index register and RAM, for a snapshot.
    pub fn snapshot(&self) -> CmosSnapshot {
        CmosSnapshot { index: self.index, ram: self.ram.to_vec() }
    }

    /// Takes the index register and RAM a snapshot saved; a RAM of the wrong size is refused. The
    /// index is masked to its seven bits, as the chip does with a write to port 0x70 (bit 7 is the
    /// NMI-disable flag, not part of the index), so no saved index can reach past the 128 bytes.
    pub fn restore(&mut self, snapshot: &CmosSnapshot) -> Result<(), RestoreError> {
        self.ram = snapshot.ram.as_slice().try_into().map_err(|_| RestoreError::Length {
            component: "CMOS",
            field: "RAM",
            saved: snapshot.ram.len(),
            expected: CMOS_SIZE,
        })?;
        self.index = snapshot.index & INDEX_MASK;
        Ok(())
    }

    fn read_data(&self) -> u8 {
        match self.index {
            SECONDS | MINUTES | HOURS | DAY_OF_WEEK | DAY_OF_MONTH | MONTH | YEAR | CENTURY => {
                self.read_clock(self.index)
            }
            STATUS_A => self.ram[usize::from(STATUS_A)] & !STATUS_A_UPDATE_IN_PROGRESS,
            // No alarm, periodic or update interrupts are ever raised.
            STATUS_C => 0,
            STATUS_D => STATUS_D_VALID,
            index => self.ram[usize::from(index)],
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.index {
            SECONDS | MINUTES | HOURS | DAY_OF_WEEK | DAY_OF_MONTH | MONTH | YEAR | CENTURY => {}
            STATUS_A => self.ram[usize::from(STATUS_A)] = value & !STATUS_A_UPDATE_IN_PROGRESS,
            STATUS_C | STATUS_D => {}
            index => self.ram[usize::from(index)] = value,
        }
    }

    fn read_clock(&self, register: u8) -> u8 {
        let since_epoch = (self.clock)().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let now = UtcTime::from_unix_seconds(since_epoch.as_secs());
        match register {
            SECONDS => self.encode(now.second),
            MINUTES => self.encode(now.minute),
            HOURS => self.encode_hours(now.hour),
            DAY_OF_WEEK => self.encode(now.day_of_week),
            DAY_OF_MONTH => self.encode(now.day),
            MONTH => self.encode(now.month),
            YEAR => self.encode((now.year % 100) as u8),
            // CENTURY, the only other clock register.
            _ => self.encode((now.year / 100 % 100) as u8),
        }
    }

    fn status_b(&self) -> u8 {
        self.ram[usize::from(STATUS_B)]
    }

    /// Encodes a value below 100 the way status B asks: BCD or binary.
    fn encode(&self, value: u8) -> u8 {
        if self.status_b() & STATUS_B_BINARY != 0 {
            value
        } else {
            ((value / 10) << 4) | (value % 10)
        }
    }

    fn encode_hours(&self, hour: u8) -> u8 {
        if self.status_b() & STATUS_B_24_HOUR != 0 {
            return self.encode(hour);
        }
        let pm = if hour >= 12 { HOURS_PM } else { 0 };
        let twelve_hour = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(twelve_hour) | pm
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_byte_registers(offset, data, |port| match port {
            DATA_PORT => self.read_data(),
            _ => FLOATING_BUS,
        });
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        write_byte_registers(offset, data, |port, value| match port {
            INDEX_PORT => self.index = value & INDEX_MASK,
            DATA_PORT => self.write_data(value),
            _ => {}
        });
    }
}

/// A broken-down UTC time, as the RTC registers show it.
#[derive(Debug, PartialEq, Eq)]
struct UtcTime {
    year: u64,
    /// 1-12.
    month: u8,
    /// 1-31.
    day: u8,
    /// 1-7, Sunday = 1 (the RTC's convention).
    day_of_week: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

impl UtcTime {
    fn from_unix_seconds(seconds: u64) -> Self {
        let days = seconds / SECONDS_PER_DAY;
        let second_of_day = seconds % SECONDS_PER_DAY;
        let (year, month, day) = civil_from_days(days);
        UtcTime {
            year,
            month,
            day,
            // 1970-01-01 was a Thursday (day 5 counting Sunday as 1).
            day_of_week: ((days + 4) % 7 + 1) as u8,
            hour: (second_of_day / 3600) as u8,
            minute: (second_of_day / 60 % 60) as u8,
            second: (second_of_day % 60) as u8,
        }
    }
}

/// Converts days since 1970-01-01 to a proleptic Gregorian (year, month, day),
/// following Howard Hinnant's `civil_from_days`: count in 400-year eras that
/// start on March 1st, so the leap day is the last day of its year.
fn civil_from_days(days_since_epoch: u64) -> (u64, u8, u8) {
    const DAYS_PER_ERA: u64 = 146_097;
    // 1970-01-01 is day 719468 counting from 0000-03-01.
    let days = days_since_epoch + 719_468;
    let era = days / DAYS_PER_ERA;
    let day_of_era = days % DAYS_PER_ERA;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u8;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 } as u8;
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn read_register(cmos: &mut Cmos, index: u8) -> u8 {
        cmos.write(u64::from(INDEX_PORT), &[index]);
        let mut value = [0];
        cmos.read(u64::from(DATA_PORT), &mut value);
        value[0]
    }

    fn from_bcd(value: u8) -> u64 {
        u64::from(value >> 4) * 10 + u64::from(value & 0xf)
    }

    /// The host's own broken-down UTC time, as an independent reference.
    fn host_gmtime(seconds: u64) -> libc::tm {
        let time = libc::time_t::try_from(seconds).unwrap();
        // SAFETY: an all-zero `tm` is a valid value (integers and a null
        // pointer), and gmtime_r only writes into the `tm` it is given.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers come from live locals; gmtime_r is reentrant.
        let result = unsafe { libc::gmtime_r(&time, &mut tm) };
        assert!(!result.is_null());
        tm
    }

    fn utc_from_tm(tm: &libc::tm) -> UtcTime {
        UtcTime {
            year: (tm.tm_year + 1900) as u64,
            month: (tm.tm_mon + 1) as u8,
            day: tm.tm_mday as u8,
            day_of_week: (tm.tm_wday + 1) as u8,
            hour: tm.tm_hour as u8,
            minute: tm.tm_min as u8,
            second: tm.tm_sec as u8,
        }
    }

    fn unix_now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn clock_registers_show_host_utc_in_bcd() {
        let mut cmos = Cmos::new(GIB, 0);
        // Retry when a second boundary falls between the register reads, so
        // the registers are compared with a single host instant.
        for _ in 0..5 {
            let before = unix_now();
            let registers = UtcTime {
                second: read_register(&mut cmos, SECONDS),
                minute: read_register(&mut cmos, MINUTES),
                hour: read_register(&mut cmos, HOURS),
                day_of_week: read_register(&mut cmos, DAY_OF_WEEK),
                day: read_register(&mut cmos, DAY_OF_MONTH),
                month: read_register(&mut cmos, MONTH),
                year: from_bcd(read_register(&mut cmos, CENTURY)) * 100
                    + from_bcd(read_register(&mut cmos, YEAR)),
            };
            if unix_now() != before {
                continue;
            }
            let decoded = UtcTime {
                second: from_bcd(registers.second) as u8,
                minute: from_bcd(registers.minute) as u8,
                hour: from_bcd(registers.hour) as u8,
                day_of_week: from_bcd(registers.day_of_week) as u8,
                day: from_bcd(registers.day) as u8,
                month: from_bcd(registers.month) as u8,
                year: registers.year,
            };
            assert_eq!(decoded, utc_from_tm(&host_gmtime(before)));
            return;
        }
        panic!("the clock kept ticking between reads");
    }

    #[test]
    fn calendar_conversion_matches_the_host() {
        let interesting = [
            0,             // the epoch
            68_255_999,    // 1972-02-29 23:59:59, first leap day after the epoch
            951_782_400,   // 2000-02-29, leap day of a 400-year leap year
            978_307_199,   // 2000-12-31 23:59:59
            4_107_542_400, // 2100-03-01, 2100 is not a leap year
            4_102_444_799, // 2099-12-31 23:59:59, last year the century register says 20
            unix_now(),
        ];
        let every_37_hours = (0..20_000u64).map(|i| i * 37 * 3600 + 1234);
        for seconds in interesting.into_iter().chain(every_37_hours) {
            assert_eq!(UtcTime::from_unix_seconds(seconds), utc_from_tm(&host_gmtime(seconds)), "{seconds}");
        }
    }

    #[test]
    fn status_b_selects_binary_and_12_hour_formats() {
        // 2024-07-15 21:05:09 UTC.
        let mut cmos = Cmos::with_clock(GIB, 0, || UNIX_EPOCH + Duration::from_secs(1_721_077_509));
        assert_eq!(read_register(&mut cmos, HOURS), 0x21);
        assert_eq!(read_register(&mut cmos, YEAR), 0x24);
        assert_eq!(read_register(&mut cmos, CENTURY), 0x20);

        cmos.write(u64::from(INDEX_PORT), &[STATUS_B]);
        cmos.write(u64::from(DATA_PORT), &[STATUS_B_BINARY]);
        assert_eq!(read_register(&mut cmos, HOURS), 9 | HOURS_PM);
        assert_eq!(read_register(&mut cmos, SECONDS), 9);
        assert_eq!(read_register(&mut cmos, DAY_OF_MONTH), 15);
        assert_eq!(read_register(&mut cmos, DAY_OF_WEEK), 2, "a Monday");
    }

    #[test]
    fn midnight_and_noon_in_12_hour_mode() {
        let mut midnight = Cmos::with_clock(GIB, 0, || UNIX_EPOCH);
        let mut noon = Cmos::with_clock(GIB, 0, || UNIX_EPOCH + Duration::from_secs(12 * 3600));
        for cmos in [&mut midnight, &mut noon] {
            cmos.write(u64::from(INDEX_PORT), &[STATUS_B]);
            cmos.write(u64::from(DATA_PORT), &[0]);
        }
        assert_eq!(read_register(&mut midnight, HOURS), 0x12);
        assert_eq!(read_register(&mut noon, HOURS), 0x12 | HOURS_PM);
    }

    #[test]
    fn status_registers() {
        let mut cmos = Cmos::new(GIB, 0);
        assert_eq!(read_register(&mut cmos, STATUS_A), 0x26);
        assert_eq!(read_register(&mut cmos, STATUS_B), 0x02);
        assert_eq!(read_register(&mut cmos, STATUS_C), 0);
        assert_eq!(read_register(&mut cmos, STATUS_D), 0x80);

        cmos.write(u64::from(INDEX_PORT), &[STATUS_A]);
        cmos.write(u64::from(DATA_PORT), &[0xff]);
        assert_eq!(read_register(&mut cmos, STATUS_A), 0x7f, "update never in progress");
    }

    #[test]
    fn memory_size_registers() {
        let mut cmos = Cmos::new(3 * GIB, 5 * GIB);
        let above_16m = (3 * GIB - 16 * MIB) / MEM_UNIT;
        assert_eq!(read_register(&mut cmos, 0x34), above_16m as u8);
        assert_eq!(read_register(&mut cmos, 0x35), (above_16m >> 8) as u8);
        let above_4g = 5 * GIB / MEM_UNIT;
        assert_eq!(read_register(&mut cmos, 0x5b), above_4g as u8);
        assert_eq!(read_register(&mut cmos, 0x5c), (above_4g >> 8) as u8);
        assert_eq!(read_register(&mut cmos, 0x5d), (above_4g >> 16) as u8);

        let mut small = Cmos::new(8 * MIB, 0);
        assert_eq!(read_register(&mut small, 0x34), 0);
        assert_eq!(read_register(&mut small, 0x35), 0);
        assert_eq!(read_register(&mut small, 0x5b), 0);
    }

    #[test]
    fn index_ignores_the_nmi_mask_bit() {
        let mut cmos = Cmos::new(GIB, 0);
        cmos.write(u64::from(INDEX_PORT), &[0x80 | 0x40]);
        cmos.write(u64::from(DATA_PORT), &[0xab]);
        assert_eq!(read_register(&mut cmos, 0x40), 0xab);
        assert_eq!(read_register(&mut cmos, 0x80 | STATUS_D), STATUS_D_VALID);
    }

    #[test]
    fn ram_is_readable_and_writable_and_clock_writes_are_ignored() {
        let mut cmos = Cmos::with_clock(GIB, 0, || UNIX_EPOCH);
        // A 16-bit write to the index port sets the index and then the data.
        cmos.write(u64::from(INDEX_PORT), &[0x7f, 0x5a]);
        assert_eq!(read_register(&mut cmos, 0x7f), 0x5a);

        cmos.write(u64::from(INDEX_PORT), &[SECONDS, 0x59]);
        assert_eq!(read_register(&mut cmos, SECONDS), 0);
    }

    #[test]
    fn every_index_and_access_size_is_harmless() {
        let mut cmos = Cmos::new(GIB, GIB);
        for index in 0..=u8::MAX {
            read_register(&mut cmos, index);
            cmos.write(u64::from(DATA_PORT), &[index]);
        }
        for offset in [0, 1, 2, 255, 256, u64::MAX] {
            for len in [1, 2, 4, 8] {
                let mut data = vec![0x71; len];
                cmos.read(offset, &mut data);
                cmos.write(offset, &data);
            }
        }
        let mut index_port = [0];
        cmos.read(u64::from(INDEX_PORT), &mut index_port);
        assert_eq!(index_port, [FLOATING_BUS]);
    }

    #[test]
    fn a_saved_index_past_the_ram_is_masked_and_a_short_ram_refused() {
        let mut original = Cmos::with_clock(GIB, 0, || UNIX_EPOCH);
        original.write(u64::from(INDEX_PORT), &[0x7f, 0x5a]);
        let mut saved = original.snapshot();
        // The reproduction: an index of 0xFF used to load and then abort the VMM on the next read.
        saved.index = 0xff;
        let mut restored = Cmos::with_clock(GIB, 0, || UNIX_EPOCH);
        restored.restore(&saved).unwrap();
        let mut data = [0];
        restored.read(u64::from(DATA_PORT), &mut data);
        assert_eq!(data, [0x5a], "index 0xff selects byte 0x7f, as on the chip");

        saved.ram.pop();
        let error = restored.restore(&saved).unwrap_err();
        assert_eq!(
            error,
            RestoreError::Length {
                component: "CMOS",
                field: "RAM",
                saved: CMOS_SIZE - 1,
                expected: CMOS_SIZE
            }
        );
    }
}
