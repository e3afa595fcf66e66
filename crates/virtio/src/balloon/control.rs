//! The balloon's host side as the VMM sees it: the target it sets, and what the guest reports back.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

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
}

/// State shared by the device (on the vCPU thread that accesses its registers), its worker
/// thread, and every [`BalloonControl`].
pub(super) struct Shared {
    /// `num_pages` in the configuration space: how many pages the host wants in the balloon.
    target_pages: AtomicU32,
    /// `actual` in the configuration space: how many pages the driver says the balloon holds.
    actual_pages: AtomicU32,
    stats: Mutex<BalloonStats>,
    /// The running device's interrupt, for configuration changes; None until the driver starts
    /// the device (it reads the target then) and after a reset.
    interrupt: Mutex<Option<Arc<dyn Interrupt>>>,
    /// Guest RAM, the most the balloon can take.
    ram_bytes: u64,
}

impl Shared {
    /// Shared state for a balloon of `target_mib` in a guest with `ram_bytes` of RAM.
    pub fn new(target_mib: u32, ram_bytes: u64) -> Result<Shared, BalloonError> {
        let shared = Shared {
            target_pages: AtomicU32::new(0),
            actual_pages: AtomicU32::new(0),
            stats: Mutex::new(BalloonStats::default()),
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
        assert!(Shared::new(256, 256 << 20).is_ok());
        let error = Shared::new(257, 256 << 20).err().unwrap();
        assert_eq!(error.to_string(), "a balloon of 257 MiB is larger than the guest's 256 MiB of RAM");
        let control = BalloonControl::new(Arc::new(Shared::new(0, 256 << 20).unwrap()));
        assert!(control.set_target_mib(u32::MAX).is_err());
        assert_eq!(control.target_mib(), 0, "a refused target changes nothing");
    }

    #[test]
    fn a_new_target_interrupts_a_running_driver_only() {
        let shared = Arc::new(Shared::new(64, 1 << 30).unwrap());
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
        let shared = Arc::new(Shared::new(0, 1 << 30).unwrap());
        let control = BalloonControl::new(shared.clone());
        shared.set_actual_pages(300);
        assert_eq!((control.actual_pages(), control.actual_mib()), (300, 1));
    }
}
