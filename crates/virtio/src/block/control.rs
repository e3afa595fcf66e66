//! The disk a block device serves, shared by the device (its configuration space), its worker
//! (requests) and the host's [`BlockControl`], which replaces the disk or changes its rate
//! limiter while the guest runs (Firecracker's `PATCH /drives/{id}`).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use storage::DiskBackend;

use super::device::{sectors_of, DiskError};
use super::handler::Disk;
use crate::device::{Interrupt, InterruptCause};
use crate::rate_limiter::{RateLimit, RateLimitError, RateLimiter};

/// The current disk, and the running driver's interrupt to tell it the disk changed.
pub(super) struct SharedDisk<B: ?Sized> {
    disk: Mutex<Disk<B>>,
    /// None until the driver starts the device, and after a reset.
    interrupt: Mutex<Option<Arc<dyn Interrupt>>>,
}

/// A poisoned lock only means another thread panicked between plain assignments; the values are
/// whole, so carry on with them rather than spread the panic.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<B: ?Sized> SharedDisk<B> {
    pub fn new(disk: Disk<B>) -> SharedDisk<B> {
        SharedDisk { disk: Mutex::new(disk), interrupt: Mutex::new(None) }
    }

    /// The disk a request starts on; it keeps that disk to its end, even if it is replaced
    /// meanwhile (the old file stays open until then).
    pub fn current(&self) -> Disk<B> {
        lock(&self.disk).clone()
    }

    /// The capacity the configuration space shows, in sectors.
    pub fn sectors(&self) -> u64 {
        lock(&self.disk).sectors
    }

    pub fn set_interrupt(&self, interrupt: Option<Arc<dyn Interrupt>>) {
        *lock(&self.interrupt) = interrupt;
    }
}

impl<B: DiskBackend + ?Sized> SharedDisk<B> {
    /// Serves `backend` of `sectors` from now on, and tells a running driver. The old disk is
    /// flushed first: what the guest wrote to it and was told is done must be durable before
    /// the host takes the file away (Firecracker's PATCH /drives is often followed by copying
    /// or deleting the old image). If it cannot be flushed nothing changes.
    fn replace(&self, backend: Arc<B>, sectors: u64) -> Result<(), DiskError> {
        // The long flush first, without the lock, so the device's requests and the guest's
        // capacity reads go on meanwhile; then a second one under the lock, so no request starts
        // on the old disk after the last flush (one already running keeps its own reference and
        // is the guest's to flush, like on real hardware). Little is left for the second.
        let old = lock(&self.disk).backend.clone();
        old.flush().map_err(DiskError::Sync)?;
        let mut disk = lock(&self.disk);
        disk.backend.flush().map_err(DiskError::Sync)?;
        disk.backend = backend;
        disk.sectors = sectors;
        // Signalled with the disk still locked, so the configuration generation changes in the
        // same step as the capacity: a driver that reads the 64-bit capacity in two halves, each
        // under this lock, either reads both on one side of the change or sees the generation
        // move and reads again. Before the driver has started the device there is no interrupt
        // (nor generation change); it reads the capacity when it starts.
        match lock(&self.interrupt).as_ref() {
            Some(interrupt) => interrupt.trigger(InterruptCause::Config).map_err(DiskError::Notify),
            None => Ok(()),
        }
    }
}

/// The host's handle on a block device: cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct BlockControl {
    shared: Arc<SharedDisk<dyn DiskBackend>>,
    /// The device's one limiter, which its worker asks before each request.
    limiter: Arc<Mutex<RateLimiter>>,
}

impl BlockControl {
    pub(super) fn new(
        shared: Arc<SharedDisk<dyn DiskBackend>>,
        limiter: Arc<Mutex<RateLimiter>>,
    ) -> BlockControl {
        BlockControl { shared, limiter }
    }

    /// Limits the guest's requests to `limit` from now on (`None`: no limit), on every queue;
    /// the buckets start full. A worker holding requests back for the old limit looks again at
    /// once. Nothing changes if the limit is refused ([`RateLimitError::RefillTimeTooLong`]).
    pub fn update_rate_limiter(&self, limit: Option<RateLimit>) -> Result<(), RateLimitError> {
        lock(&self.limiter).update(limit.unwrap_or_default())
    }

    /// The rate limit in force (no buckets when there is none).
    pub fn rate_limit(&self) -> RateLimit {
        lock(&self.limiter).config()
    }

    /// Whether the disk is read-only: a replacement must be opened the same way.
    pub fn read_only(&self) -> bool {
        self.shared.current().read_only
    }

    /// Makes `backend` (opened as [`BlockControl::read_only`] says) the disk: requests from now on
    /// go to it, the configuration space shows its capacity, and a running driver gets a
    /// configuration-change interrupt to read it. Requests being served finish on the old disk.
    /// The disk's ID (GET_ID) stays. Nothing changes if the old disk cannot be flushed
    /// ([`DiskError::Sync`]).
    pub fn replace(&self, backend: Arc<dyn DiskBackend>) -> Result<(), DiskError> {
        let sectors = sectors_of(backend.size(), &self.shared.current().id);
        self.shared.replace(backend, sectors)
    }

    /// The disk's capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.shared.sectors()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::block::ID_BYTES;
    use crate::device::testing::Recorder;
    use crate::device::InterruptCause;
    use storage::{DiskBackendExt, IoBuf, RawFile};

    fn image(dir: &Path, name: &str, sectors: u64, byte: u8) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, vec![byte; (sectors * 512) as usize]).unwrap();
        path
    }

    fn raw(path: &Path, read_only: bool) -> Arc<dyn DiskBackend> {
        Arc::new(RawFile::open(path, read_only).unwrap())
    }

    fn control_over(path: &Path, read_only: bool) -> (BlockControl, Arc<SharedDisk<dyn DiskBackend>>) {
        let backend = raw(path, read_only);
        let sectors = backend.size() / 512;
        let disk = Disk { backend, sectors, read_only, id: [7; ID_BYTES] };
        let shared: Arc<SharedDisk<dyn DiskBackend>> = Arc::new(SharedDisk::new(disk));
        let limiter = Arc::new(Mutex::new(RateLimiter::new(RateLimit::default()).unwrap()));
        (BlockControl::new(shared.clone(), limiter), shared)
    }

    fn first_byte(disk: &Disk<dyn DiskBackend>) -> u8 {
        let mut byte = [0u8];
        disk.backend.read_at(&mut byte, 0).unwrap();
        byte[0]
    }

    #[test]
    fn a_new_file_serves_later_requests_and_interrupts_a_running_driver() {
        let dir = tempfile::tempdir().unwrap();
        let (control, shared) = control_over(&image(dir.path(), "one.img", 8, 1), false);
        let before = shared.current();

        control.replace(raw(&image(dir.path(), "two.img", 32, 2), false)).unwrap();
        assert_eq!((control.sectors(), first_byte(&shared.current())), (32, 2));
        assert_eq!(first_byte(&before), 1, "a request under way keeps its disk");
        assert_eq!(shared.current().id, [7; ID_BYTES], "the ID stays");

        let interrupt = Arc::new(Recorder::default());
        shared.set_interrupt(Some(interrupt.clone()));
        control.replace(raw(&image(dir.path(), "three.img", 16, 3), false)).unwrap();
        assert_eq!(*interrupt.0.lock().unwrap(), [InterruptCause::Config]);
        assert_eq!(control.sectors(), 16);
    }

    #[test]
    fn a_read_only_disk_is_replaced_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let (control, shared) = control_over(&image(dir.path(), "one.img", 8, 1), true);
        assert!(control.read_only(), "a replacement is opened as the disk was");
        let two = image(dir.path(), "two.img", 8, 2);
        control.replace(raw(&two, true)).unwrap();
        let disk = shared.current();
        assert!(disk.read_only);
        assert!(disk.backend.write_at(&[9], 0).is_err(), "opened O_RDONLY");
    }

    /// A backend that counts its flushes, or fails them.
    #[derive(Default)]
    struct Flushes {
        count: std::sync::atomic::AtomicUsize,
        fail: bool,
    }

    impl DiskBackend for Flushes {
        fn size(&self) -> u64 {
            8 * 512
        }
        fn read_vectored_at(&self, _: &[IoBuf], _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn write_vectored_at(&self, _: &[IoBuf], _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match self.fail {
                true => Err(std::io::Error::from_raw_os_error(libc::EIO)),
                false => Ok(()),
            }
        }
        fn discard(&self, _: u64, _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn write_zeroes(&self, _: u64, _: u64, _: bool) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn shared_over(backend: Flushes) -> (Arc<Flushes>, SharedDisk<Flushes>) {
        let backend = Arc::new(backend);
        let disk = Disk { backend: backend.clone(), sectors: 8, read_only: false, id: [0; ID_BYTES] };
        (backend, SharedDisk::new(disk))
    }

    #[test]
    fn the_old_disk_is_flushed_before_the_swap() {
        let (old, shared) = shared_over(Flushes::default());
        let new = Arc::new(Flushes::default());
        shared.replace(new.clone(), 16).unwrap();
        // Once without the disk's lock (the long one), once under it (what came in meanwhile).
        assert_eq!(old.count.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(new.count.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert_eq!(shared.sectors(), 16);
    }

    #[test]
    fn an_old_disk_that_cannot_be_flushed_is_kept_and_the_failure_reported() {
        let (old, shared) = shared_over(Flushes { fail: true, ..Flushes::default() });
        let interrupt = Arc::new(Recorder::default());
        shared.set_interrupt(Some(interrupt.clone()));
        let result = shared.replace(Arc::new(Flushes::default()), 16);
        assert!(
            matches!(result, Err(DiskError::Sync(ref e)) if e.raw_os_error() == Some(libc::EIO)),
            "{result:?}"
        );
        assert_eq!(shared.sectors(), 8);
        assert!(Arc::ptr_eq(&shared.current().backend, &old), "the old disk stays");
        assert!(interrupt.0.lock().unwrap().is_empty());
    }
}
