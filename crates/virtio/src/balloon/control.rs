//! The balloon's host side as the VMM sees it: the target and statistics interval it sets, and
//! what the guest reports back.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use devices::RestoreError;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::pages::PAGE_SIZE;
use super::stats::BalloonStats;
use crate::device::{Interrupt, InterruptCause};

const PAGES_PER_MIB: u64 = (1 << 20) / PAGE_SIZE;

/// Why the balloon cannot do what the host asked.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    #[error("a balloon of {target_mib} MiB is larger than the guest's {ram_mib} MiB of RAM")]
    TargetTooLarge { target_mib: u32, ram_mib: u64 },
    #[error("cannot tell the guest about the new target: {0}")]
    Interrupt(io::Error),
    #[error("the balloon's statistics are not enabled (they are when it is created with an interval)")]
    StatsDisabled,
    #[error("the statistics cannot be turned on or off while the guest runs, only their interval changed (to at least 1 s)")]
    StatsStateChange,
    #[error("cannot set up the statistics interval change: {0}")]
    IntervalEvent(io::Error),
}

/// State shared by the device (on the vCPU thread that accesses its registers), its worker
/// thread, and every [`BalloonControl`].
pub(super) struct Shared {
    /// `num_pages` in the configuration space: how many pages the host wants in the balloon.
    target_pages: AtomicU32,
    /// `actual` in the configuration space: how many pages the driver says the balloon holds.
    actual_pages: AtomicU32,
    stats: Mutex<BalloonStats>,
    /// How often the guest is asked for statistics; None when the stats queue is not offered.
    stats_interval: Mutex<Option<Duration>>,
    /// Signalled when `stats_interval` changes, for the worker to re-arm its timer.
    stats_interval_changed: EventFd,
    /// The running device's interrupt, for configuration changes; None until the driver starts
    /// the device (it reads the target then) and after a reset.
    interrupt: Mutex<Option<Arc<dyn Interrupt>>>,
    /// Guest RAM, the most the balloon can take.
    ram_bytes: u64,
}

impl Shared {
    /// Shared state for a balloon of `target_mib` in a guest with `ram_bytes` of RAM, asking for
    /// statistics every `stats_interval` (None: no statistics).
    pub fn new(
        target_mib: u32,
        ram_bytes: u64,
        stats_interval: Option<Duration>,
    ) -> Result<Shared, BalloonError> {
        let shared = Shared {
            target_pages: AtomicU32::new(0),
            actual_pages: AtomicU32::new(0),
            stats: Mutex::new(BalloonStats::default()),
            stats_interval: Mutex::new(stats_interval),
            stats_interval_changed: EventFd::new(EFD_NONBLOCK).map_err(BalloonError::IntervalEvent)?,
            interrupt: Mutex::new(None),
            ram_bytes,
        };
        shared.set_target_pages(target_mib)?;
        Ok(shared)
    }

    pub fn target_pages(&self) -> u32 {
        self.target_pages.load(Ordering::SeqCst)
    }

    pub fn actual_pages(&self) -> u32 {
        self.actual_pages.load(Ordering::SeqCst)
    }

    pub fn set_actual_pages(&self, pages: u32) {
        self.actual_pages.store(pages, Ordering::SeqCst);
    }

    pub fn set_stats(&self, stats: BalloonStats) {
        *lock(&self.stats) = stats;
    }

    pub fn set_interrupt(&self, interrupt: Option<Arc<dyn Interrupt>>) {
        *lock(&self.interrupt) = interrupt;
    }

    pub fn stats_interval(&self) -> Option<Duration> {
        *lock(&self.stats_interval)
    }

    /// Readable after the statistics interval changed.
    pub fn stats_interval_changed(&self) -> &EventFd {
        &self.stats_interval_changed
    }

    /// Takes the target, size and statistics interval a snapshot saved: a target the guest's RAM
    /// holds, and an interval the API could have set (1 s to u16::MAX s) on a balloon that offers
    /// statistics too. The size is the driver's to write, any value (it is only reported).
    pub fn restore(
        &self,
        target_pages: u32,
        actual_pages: u32,
        stats_interval: Option<Duration>,
    ) -> Result<(), RestoreError> {
        const COMPONENT: &str = "virtio-balloon";
        let ram_pages = self.ram_bytes / PAGE_SIZE;
        if u64::from(target_pages) > ram_pages {
            return Err(RestoreError::value(COMPONENT, "target", target_pages, "exceeds the guest's RAM"));
        }
        if stats_interval.is_some() != self.stats_interval().is_some() {
            let offered = u64::from(stats_interval.is_some());
            return Err(RestoreError::value(
                COMPONENT,
                "statistics offered",
                offered,
                "differs from this balloon's",
            ));
        }
        if let Some(interval) = stats_interval {
            let seconds = interval.as_secs();
            if seconds == 0 || seconds > u64::from(u16::MAX) || interval.subsec_nanos() != 0 {
                return Err(RestoreError::value(
                    COMPONENT,
                    "statistics interval (s)",
                    seconds,
                    "is not a whole number of seconds from 1 to 65535",
                ));
            }
        }
        self.target_pages.store(target_pages, Ordering::SeqCst);
        self.actual_pages.store(actual_pages, Ordering::SeqCst);
        *lock(&self.stats_interval) = stats_interval;
        Ok(())
    }

    fn set_target_pages(&self, target_mib: u32) -> Result<(), BalloonError> {
        let pages = u64::from(target_mib) * PAGES_PER_MIB;
        let ram_pages = self.ram_bytes / PAGE_SIZE;
        let too_large = || BalloonError::TargetTooLarge { target_mib, ram_mib: self.ram_bytes >> 20 };
        if pages > ram_pages {
            return Err(too_large());
        }
        self.target_pages.store(u32::try_from(pages).map_err(|_| too_large())?, Ordering::SeqCst);
        Ok(())
    }
}

/// A poisoned lock only means another thread panicked mid-update of plain values; they are still
/// whole, so carry on with them rather than spread the panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The host's handle on a balloon, for the VMM to keep: cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct BalloonControl {
    shared: Arc<Shared>,
}

impl BalloonControl {
    pub(super) fn new(shared: Arc<Shared>) -> BalloonControl {
        BalloonControl { shared }
    }

    /// Asks the guest to grow or shrink the balloon to `target_mib`: updates `num_pages` and, if the
    /// driver is running, raises a configuration-change interrupt so it reads it. The guest
    /// follows at its own pace; [`BalloonControl::actual_mib`] says how far it got.
    pub fn set_target_mib(&self, target_mib: u32) -> Result<(), BalloonError> {
        self.shared.set_target_pages(target_mib)?;
        if let Some(interrupt) = lock(&self.shared.interrupt).as_ref() {
            interrupt.trigger(InterruptCause::Config).map_err(BalloonError::Interrupt)?;
        }
        Ok(())
    }

    /// The target, in MiB.
    pub fn target_mib(&self) -> u32 {
        pages_to_mib(self.shared.target_pages())
    }

    /// The balloon's size as the driver last reported it, in 4 KiB pages.
    pub fn actual_pages(&self) -> u32 {
        self.shared.actual_pages()
    }

    /// The balloon's size as the driver last reported it, in whole MiB.
    pub fn actual_mib(&self) -> u32 {
        pages_to_mib(self.shared.actual_pages())
    }

    /// The guest's latest memory statistics (all None without the stats queue, or before the
    /// driver's first report).
    pub fn stats(&self) -> BalloonStats {
        lock(&self.shared.stats).clone()
    }

    /// The sizes and the guest's latest statistics, read together; fails if the balloon has no
    /// statistics.
    pub fn report(&self) -> Result<BalloonReport, BalloonError> {
        if self.shared.stats_interval().is_none() {
            return Err(BalloonError::StatsDisabled);
        }
        let (target_pages, actual_pages) = (self.shared.target_pages(), self.shared.actual_pages());
        Ok(BalloonReport {
            target_pages,
            actual_pages,
            target_mib: pages_to_mib(target_pages),
            actual_mib: pages_to_mib(actual_pages),
            stats: self.stats(),
        })
    }

    /// How often the guest is asked for statistics; None when the balloon has none.
    pub fn stats_interval(&self) -> Option<Duration> {
        self.shared.stats_interval()
    }

    /// Asks the guest for statistics every `seconds` from now on, starting at once (its running
    /// driver gets the request right away, and the next one `seconds` later). Statistics cannot be
    /// turned on or off (0) this way: whether the driver has a stats queue was settled when it
    /// started. Setting the interval it already has does nothing.
    pub fn set_stats_interval(&self, seconds: u16) -> Result<(), BalloonError> {
        let interval = Duration::from_secs(seconds.into());
        let mut current = lock(&self.shared.stats_interval);
        match *current {
            Some(now) if now == interval => return Ok(()),
            None if seconds == 0 => return Ok(()),
            Some(_) if seconds > 0 => *current = Some(interval),
            _ => return Err(BalloonError::StatsStateChange),
        }
        self.shared.stats_interval_changed.write(1).map_err(BalloonError::IntervalEvent)
    }
}

/// A balloon's sizes and the guest's latest statistics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalloonReport {
    /// The target, in 4 KiB pages.
    pub target_pages: u32,
    /// The balloon's size as the driver last reported it, in 4 KiB pages.
    pub actual_pages: u32,
    pub target_mib: u32,
    /// `actual_pages` in whole MiB.
    pub actual_mib: u32,
    pub stats: BalloonStats,
}

fn pages_to_mib(pages: u32) -> u32 {
    // Fits: a u32 of pages divided by 256.
    (u64::from(pages) / PAGES_PER_MIB) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::testing::Recorder;

    #[test]
    fn the_target_is_bounded_by_guest_ram() {
        assert!(Shared::new(256, 256 << 20, None).is_ok());
        let error = Shared::new(257, 256 << 20, None).err().unwrap();
        assert_eq!(error.to_string(), "a balloon of 257 MiB is larger than the guest's 256 MiB of RAM");
        let control = BalloonControl::new(Arc::new(Shared::new(0, 256 << 20, None).unwrap()));
        assert!(control.set_target_mib(u32::MAX).is_err());
        assert_eq!(control.target_mib(), 0, "a refused target changes nothing");
    }

    #[test]
    fn a_new_target_interrupts_a_running_driver_only() {
        let shared = Arc::new(Shared::new(64, 1 << 30, None).unwrap());
        let control = BalloonControl::new(shared.clone());
        assert_eq!((shared.target_pages(), control.target_mib()), (64 * 256, 64));
        control.set_target_mib(32).unwrap();
        assert_eq!(shared.target_pages(), 32 * 256);

        let interrupt = Arc::new(Recorder::default());
        shared.set_interrupt(Some(interrupt.clone()));
        control.set_target_mib(128).unwrap();
        assert_eq!(*interrupt.0.lock().unwrap(), [InterruptCause::Config]);
        shared.set_interrupt(None);
        control.set_target_mib(0).unwrap();
        assert_eq!(interrupt.0.lock().unwrap().len(), 1);
        assert_eq!(control.target_mib(), 0);
    }

    #[test]
    fn actual_is_reported_in_pages_and_whole_mib() {
        let shared = Arc::new(Shared::new(0, 1 << 30, None).unwrap());
        let control = BalloonControl::new(shared.clone());
        shared.set_actual_pages(300);
        assert_eq!((control.actual_pages(), control.actual_mib()), (300, 1));
    }

    #[test]
    fn the_report_needs_statistics_and_reads_sizes_and_stats_together() {
        let without = BalloonControl::new(Arc::new(Shared::new(16, 1 << 30, None).unwrap()));
        assert!(matches!(without.report(), Err(BalloonError::StatsDisabled)));

        let shared = Arc::new(Shared::new(16, 1 << 30, Some(Duration::from_secs(5))).unwrap());
        let control = BalloonControl::new(shared.clone());
        shared.set_actual_pages(1000);
        shared.set_stats(BalloonStats { free_memory: Some(7 << 20), ..BalloonStats::default() });
        assert_eq!(
            control.report().unwrap(),
            BalloonReport {
                target_pages: 16 * 256,
                actual_pages: 1000,
                target_mib: 16,
                actual_mib: 3,
                stats: BalloonStats { free_memory: Some(7 << 20), ..BalloonStats::default() },
            }
        );
    }

    #[test]
    fn the_stats_interval_changes_but_statistics_stay_on_or_off() {
        let without = BalloonControl::new(Arc::new(Shared::new(0, 1 << 30, None).unwrap()));
        assert!(matches!(without.set_stats_interval(1), Err(BalloonError::StatsStateChange)));
        without.set_stats_interval(0).unwrap();
        assert_eq!(without.stats_interval(), None);
        assert!(without.shared.stats_interval_changed().read().is_err(), "nothing changed");

        let shared = Arc::new(Shared::new(0, 1 << 30, Some(Duration::from_secs(5))).unwrap());
        let control = BalloonControl::new(shared.clone());
        assert!(matches!(control.set_stats_interval(0), Err(BalloonError::StatsStateChange)));
        control.set_stats_interval(5).unwrap();
        assert!(shared.stats_interval_changed().read().is_err(), "the same interval changes nothing");
        control.set_stats_interval(60).unwrap();
        assert_eq!(control.stats_interval(), Some(Duration::from_secs(60)));
        assert_eq!(shared.stats_interval_changed().read().unwrap(), 1, "the worker is told");
    }
}
