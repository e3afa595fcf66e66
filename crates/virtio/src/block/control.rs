//! The disk a block device serves, shared by the device (its configuration space), its worker
//! (requests) and the host's [`BlockControl`], which replaces the backing file while the guest
//! runs (Firecracker's `PATCH /drives/{id}`).

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::backend::RawFile;
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

    /// Serves `backend` of `sectors` from now on, and tells a running driver.
    fn replace(&self, backend: Arc<B>, sectors: u64) -> std::io::Result<()> {
        let mut disk = lock(&self.disk);
        disk.backend = backend;
        disk.sectors = sectors;
        // Signalled with the disk still locked, so the configuration generation changes in the
        // same step as the capacity: a driver that reads the 64-bit capacity in two halves, each
        // under this lock, either reads both on one side of the change or sees the generation
        // move and reads again. Before the driver has started the device there is no interrupt
        // (nor generation change); it reads the capacity when it starts.
        match lock(&self.interrupt).as_ref() {
            Some(interrupt) => interrupt.trigger(InterruptCause::Config),
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
    /// opened.
    pub fn replace_file(&self, path: &Path) -> Result<(), DiskError> {
        let read_only = self.shared.current().read_only;
        let (backend, sectors) = open_raw(path, read_only)?;
        self.shared.replace(Arc::new(backend), sectors).map_err(DiskError::Notify)
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
}
