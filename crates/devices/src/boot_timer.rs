//! Firecracker's boot-timer pseudo-device (`--boot-timer`): the guest writes the byte 123 to
//! offset 0 of its MMIO window when it has booted, and the VMM logs the time since the VM was
//! started, wall-clock and the VMM's CPU time, in Firecracker's words:
//! `Guest-boot-time = <us> us <ms> ms, <cpu us> CPU us <cpu ms> CPU ms`.
//!
//! Firecracker places it at the start of the 32-bit MMIO area (0xC000_0000), where guests built
//! for it (Firecracker's own test images) write. Only the first signal is logged: a guest writing
//! the value over and over cannot fill the host's log.

use std::time::Instant;

use crate::BusDevice;

/// The value the guest writes to say it has booted.
pub const BOOT_COMPLETE: u8 = 123;

/// When the VM was started: the wall clock and the process's CPU time.
#[derive(Clone, Copy, Debug)]
pub struct BootStart {
    wall: Instant,
    cpu_us: u64,
}

impl BootStart {
    /// Now.
    pub fn now() -> BootStart {
        BootStart { wall: Instant::now(), cpu_us: process_cpu_us() }
    }
}

/// The process's CPU time so far, in µs (0 if the clock cannot be read).
fn process_cpu_us() -> u64 {
    // SAFETY: timespec is plain data; clock_gettime writes only to it.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock ID and a pointer to a timespec owned by this frame.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) } != 0 {
        return 0;
    }
    let seconds = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanoseconds = u64::try_from(now.tv_nsec).unwrap_or(0);
    seconds.saturating_mul(1_000_000).saturating_add(nanoseconds / 1000)
}

/// How long the guest took to boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootTime {
    pub wall_us: u64,
    pub cpu_us: u64,
}

impl std::fmt::Display for BootTime {
    /// Firecracker's line, for the tools that look for it in the log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Guest-boot-time = {:>6} us {} ms, {:>6} CPU us {} CPU ms",
            self.wall_us,
            self.wall_us / 1000,
            self.cpu_us,
            self.cpu_us / 1000
        )
    }
}

/// The device: one register at offset 0, write-only (reads give zeros).
pub struct BootTimer {
    start: BootStart,
    /// The guest has signalled its boot already.
    reported: bool,
}

impl BootTimer {
    pub fn new(start: BootStart) -> BootTimer {
        BootTimer { start, reported: false }
    }

    /// The boot time if this write is the guest's first boot signal (one byte, 123, at offset 0).
    fn signal(&mut self, offset: u64, data: &[u8]) -> Option<BootTime> {
        if offset != 0 || data != [BOOT_COMPLETE] || self.reported {
            return None;
        }
        self.reported = true;
        let wall_us = u64::try_from(self.start.wall.elapsed().as_micros()).unwrap_or(u64::MAX);
        Some(BootTime { wall_us, cpu_us: process_cpu_us().saturating_sub(self.start.cpu_us) })
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(time) = self.signal(offset, data) {
            tracing::info!("{time}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_boot_signal_counts() {
        let mut timer = BootTimer::new(BootStart::now());
        assert_eq!(timer.signal(0, &[122]), None);
        assert_eq!(timer.signal(1, &[BOOT_COMPLETE]), None);
        assert_eq!(timer.signal(0, &[BOOT_COMPLETE, 0]), None);
        assert_eq!(timer.signal(0, &[BOOT_COMPLETE, 0, 0, 0]), None);
        let time = timer.signal(0, &[BOOT_COMPLETE]).expect("the boot signal");
        assert!(time.wall_us < 60_000_000, "{time:?}");
        assert_eq!(timer.signal(0, &[BOOT_COMPLETE]), None, "reported once");
        let mut read = [0xff; 4];
        timer.read(0, &mut read);
        assert_eq!(read, [0; 4]);
    }

    #[test]
    fn the_line_is_firecracker_s() {
        let line = BootTime { wall_us: 1_234_567, cpu_us: 89_012 }.to_string();
        assert_eq!(line, "Guest-boot-time = 1234567 us 1234 ms,  89012 CPU us 89 CPU ms");
    }

    proptest::proptest! {
        /// Whatever the guest writes or reads, wherever, the device answers without a panic, and
        /// only the one boot signal is reported, once.
        #[test]
        fn any_access_is_harmless(
            accesses in proptest::collection::vec(
                (proptest::prelude::any::<bool>(), 0u64..8192, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..9)),
                0..32,
            )
        ) {
            let mut timer = BootTimer::new(BootStart::now());
            let mut reports = 0;
            let mut signalled = false;
            for (write, offset, mut data) in accesses {
                if write {
                    signalled |= offset == 0 && data == [BOOT_COMPLETE];
                    reports += usize::from(timer.signal(offset, &data).is_some());
                } else {
                    timer.read(offset, &mut data);
                    proptest::prop_assert!(data.iter().all(|&b| b == 0));
                }
            }
            proptest::prop_assert_eq!(reports, usize::from(signalled));
        }
    }
}
