//! The disk a block device serves, shared by the device (its configuration space), its worker
//! (requests) and the host's [`BlockControl`], which replaces the backing file while the guest
//! runs (Firecracker's `PATCH /drives/{id}`).

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::backend::{DiskBackend, RawFile};
use super::device::{open_raw, DiskError};
use super::handler::Disk;
use crate::device::{Interrupt, InterruptCause};

/// The current disk, and the running driver's interrupt to tell it the disk changed.
pub(super) struct SharedDisk<B> {
    disk: Mutex<Disk<B>>,
    /// None until the driver starts the device, and after a reset.
    interrupt: Mutex<Option<Arc<dyn Interrupt>>>,
}

/// A poisoned lock only means another thread panicked between plain assignments; the values are
/// whole, so carry on with them rather than spread the panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<B> SharedDisk<B> {
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

impl<B: DiskBackend> SharedDisk<B> {
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
    shared: Arc<SharedDisk<RawFile>>,
}

impl BlockControl {
    pub(super) fn new(shared: Arc<SharedDisk<RawFile>>) -> BlockControl {
        BlockControl { shared }
    }

    /// Makes the image or block device at `path` the disk, opened as the first one was (read-only
    /// or not): requests from now on go to it, the configuration space shows its capacity, and a
    /// running driver gets a configuration-change interrupt to read it. Requests being served
    /// finish on the old file. The disk's ID (GET_ID) stays. Nothing changes if `path` cannot be
    /// opened or the old file cannot be flushed ([`DiskError::Sync`]).
    pub fn replace_file(&self, path: &Path) -> Result<(), DiskError> {
        let read_only = self.shared.current().read_only;
        let (backend, sectors) = open_raw(path, read_only)?;
        self.shared.replace(Arc::new(backend), sectors)
    }

    /// The disk's capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.shared.sectors()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{DiskBackend, ID_BYTES};
    use crate::device::testing::Recorder;

    fn image(dir: &Path, name: &str, sectors: u64, byte: u8) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, vec![byte; (sectors * 512) as usize]).unwrap();
        path
    }

    fn control_over(path: &Path, read_only: bool) -> (BlockControl, Arc<SharedDisk<RawFile>>) {
        let (backend, sectors) = open_raw(path, read_only).unwrap();
        let disk = Disk { backend: Arc::new(backend), sectors, read_only, id: [7; ID_BYTES] };
        let shared = Arc::new(SharedDisk::new(disk));
        (BlockControl::new(shared.clone()), shared)
    }

    fn first_byte(disk: &Disk<RawFile>) -> u8 {
        let mut byte = [0u8];
        disk.backend.read_at(&mut byte, 0).unwrap();
        byte[0]
    }

    #[test]
    fn a_new_file_serves_later_requests_and_interrupts_a_running_driver() {
        let dir = tempfile::tempdir().unwrap();
        let (control, shared) = control_over(&image(dir.path(), "one.img", 8, 1), false);
        let before = shared.current();

        control.replace_file(&image(dir.path(), "two.img", 32, 2)).unwrap();
        assert_eq!((control.sectors(), first_byte(&shared.current())), (32, 2));
        assert_eq!(first_byte(&before), 1, "a request under way keeps its disk");
        assert_eq!(shared.current().id, [7; ID_BYTES], "the ID stays");

        let interrupt = Arc::new(Recorder::default());
        shared.set_interrupt(Some(interrupt.clone()));
        control.replace_file(&image(dir.path(), "three.img", 16, 3)).unwrap();
        assert_eq!(*interrupt.0.lock().unwrap(), [InterruptCause::Config]);
        assert_eq!(control.sectors(), 16);
    }

    #[test]
    fn a_file_that_cannot_be_opened_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (control, shared) = control_over(&image(dir.path(), "one.img", 8, 1), false);
        let interrupt = Arc::new(Recorder::default());
        shared.set_interrupt(Some(interrupt.clone()));
        assert!(matches!(control.replace_file(&dir.path().join("absent")), Err(DiskError::Open(_))));
        assert!(matches!(control.replace_file(dir.path()), Err(DiskError::Open(_))));
        assert_eq!((control.sectors(), first_byte(&shared.current())), (8, 1));
        assert!(interrupt.0.lock().unwrap().is_empty());
    }

    #[test]
    fn a_read_only_disk_is_replaced_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let (control, shared) = control_over(&image(dir.path(), "one.img", 8, 1), true);
        let two = image(dir.path(), "two.img", 8, 2);
        control.replace_file(&two).unwrap();
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
        fn read_at(&self, _: &mut [u8], _: u64) -> std::io::Result<()> {
            Ok(())
        }
        fn write_at(&self, _: &[u8], _: u64) -> std::io::Result<()> {
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

    #[test]
    fn a_fifo_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (control, _) = control_over(&image(dir.path(), "one.img", 8, 1), false);
        let fifo = dir.path().join("fifo");
        let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path, which lives across the call.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let error = control.replace_file(&fifo).unwrap_err();
        assert_eq!(error.to_string(), "not a regular file or block device (it is a FIFO)");
        assert_eq!(control.sectors(), 8);
    }
}
