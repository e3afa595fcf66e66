//! Snapshots of a paused VM: a state (every vCPU's KVM state, the clock, the interrupt
//! controller, the legacy devices and each virtio device with its queues, and the configuration
//! the VM was built from) and guest RAM. [`create`] writes both, to files or to streams;
//! `builder::restore` builds a VM from the files in a fresh process, its RAM mapped copy-on-write
//! from the memory file, and `builder::restore_from_streams` from streams.
//!
//! The state is a container (`container.rs`: header, CRC, sections) of per-component sections,
//! each with its own version (`components.rs`); `testdata/` holds the golden state its tests
//! compare the encoder with. A state is hostile input: `restore_checks.rs` and each device's own
//! restore check what it holds before it reaches a device or KVM.

mod components;
mod container;
mod file;
mod legacy_config;
pub(crate) mod memory_file;
pub mod memory_stream;
pub(crate) mod restore_checks;
pub(crate) mod vcpu_state;

#[cfg(test)]
mod golden_tests;
#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
pub(crate) mod testing;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use devices::ioapic::{Ioapic, IoapicSnapshot};
use devices::legacy::{Cmos, CmosSnapshot, I8042Snapshot, Serial, SerialSnapshot, I8042};
use kvm_bindings::kvm_clock_data;
use kvm_ioctls::VmFd;
use virtio::block::BlockControl;
use virtio::snapshot::{SnapshotTransport, VirtioSnapshot};
use virtio::GuestRam;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

pub use components::{read_state, write_state};
pub use container::FORMAT_VERSION;
use memory_file::{Pages, SavedRegion};
use vcpu_state::VcpuState;

use crate::config::VmConfig;
use crate::vcpu::VcpuShared;

/// Why a snapshot could not be written or loaded. One line each, naming the file where there is one.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("the snapshot file is corrupt: {0}")]
    Corrupt(String),
    #[error("cannot encode the VM state: {0}")]
    Encode(String),
    #[error("diff snapshots need dirty-page tracking (machine-config track_dirty_pages, or enable_diff_snapshots on load)")]
    DiffWithoutTracking,
    #[error("a VM started with --boot-timer cannot be snapshotted (the boot timer is for measuring boots)")]
    BootTimer,
    #[error("the saved state is invalid: bad {0}")]
    Invalid(&'static str),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("KVM call {call} failed: {source}")]
    Kvm { call: &'static str, source: kvm_ioctls::Error },
    #[error("cannot map guest memory from the memory file: {0}")]
    Map(String),
    #[error("the memory file {path} is {found} bytes, the snapshot needs {expected}")]
    MemoryFileTooShort { path: PathBuf, found: u64, expected: u64 },
    #[error("KVM refused to restore MSR {0:#x}")]
    MsrRefused(u32),
    #[error("not a Kestrel snapshot state file")]
    NotASnapshot,
    #[error("{0} is not a regular file")]
    NotARegularFile(PathBuf),
    #[error("the VM must be paused first (PATCH /vm {{\"state\": \"Paused\"}})")]
    NotPaused,
    #[error("the vCPUs did not all park within {0:?}")]
    NotParked(Duration),
    #[error("cannot restore {what}: {reason}")]
    Restore { what: String, reason: String },
    #[error("cannot save {what}: {reason}")]
    Save { what: String, reason: String },
    #[error("{0} MSRs are more than KVM takes in one call")]
    TooManyMsrs(usize),
    #[error("the snapshot file is truncated: {found} bytes, {expected} expected")]
    Truncated { expected: u64, found: u64 },
    #[error("vCPU {0} did not save its state within {1:?}")]
    VcpuTimeout(u8, Duration),
    #[error("this host's XSAVE state is {0} bytes (AMX?), more than the 4096 Kestrel saves; snapshots are not supported here yet")]
    XsaveTooLarge(i32),
    #[error("the snapshot file has format version {found}; this Kestrel reads version {supported}")]
    Version { found: u32, supported: u32 },
    #[error("the state's {component} section has version {found}; this Kestrel reads {component} versions 1 to {supported}")]
    ComponentVersion { component: String, found: u32, supported: u32 },
    #[error("the state has a section {0:?} this Kestrel does not know (written by a newer Kestrel?)")]
    UnknownComponent(String),
    #[error("the state has no {0} section")]
    MissingComponent(&'static str),
    #[error("cannot read or write the state stream: {0}")]
    Stream(std::io::Error),
    #[error("drive {drive:?}: {}", problem.describe(path))]
    Disk { drive: String, path: PathBuf, problem: restore_checks::DiskProblem },
    #[error("the snapshot has no drive {0:?} to override")]
    UnknownDrive(String),
    /// Firecracker's words come first: clients match on them.
    #[error("Unknown Network Device: the snapshot has no network interface {0:?} to override")]
    UnknownNetworkDevice(String),
    #[error("the memory stream has a run of {bytes} bytes at {address:#x}, outside the saved memory layout")]
    MemoryRun { address: u64, bytes: u64 },
}

/// Everything the state file holds; each field is one component (or a list of them) with its own
/// versioned section (see `components.rs`).
pub struct VmState {
    /// What the VM was built from: devices are built again from it on restore.
    pub config: VmConfig,
    /// Each disk's capacity (512-byte sectors) as the guest saw it, in the order of the
    /// configuration's disks: a restore refuses a file of another size. Empty in a state from
    /// before it was recorded.
    pub disk_sectors: Vec<u64>,
    /// Where each region of guest RAM lies in the memory file.
    pub memory: Vec<SavedRegion>,
    /// The KVM clock.
    pub clock: kvm_clock_data,
    /// Each vCPU's KVM state, by index.
    pub vcpus: Vec<VcpuState>,
    /// The IOAPIC and the legacy devices.
    pub ioapic: IoapicSnapshot,
    pub serial: SerialSnapshot,
    pub cmos: CmosSnapshot,
    pub i8042: I8042Snapshot,
    /// The virtio devices' transport and queue states, in the configuration's order.
    pub virtio: Vec<VirtioSnapshot>,
}

/// Reads and checks a state file.
pub fn read_state_file(path: &Path) -> Result<VmState, SnapshotError> {
    file::read(path)
}

/// Writes a state file (atomically, mode 0600) and returns its size.
pub fn write_state_file(path: &Path, state: &VmState) -> Result<u64, SnapshotError> {
    file::write(path, state)
}

/// Opens a snapshot file with `options`, refusing anything but a regular file: the open is
/// non-blocking, so a FIFO cannot stall it (and the API with it), and the type is checked on the
/// open file, so the path cannot be swapped in between; a device such as /dev/zero never ends.
pub(crate) fn open_regular(
    path: &Path,
    options: &mut std::fs::OpenOptions,
) -> Result<std::fs::File, SnapshotError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io_error = |source| SnapshotError::Io { path: path.to_owned(), source };
    let file = options.custom_flags(libc::O_NONBLOCK).open(path).map_err(io_error)?;
    if !file.metadata().map_err(io_error)?.is_file() {
        return Err(SnapshotError::NotARegularFile(path.to_owned()));
    }
    Ok(file)
}

/// Writes a new snapshot file at `path` atomically: into a temporary file beside it, synced, then
/// renamed over `path`. Whatever was at `path` stays whole for whoever has it open or mapped (a
/// VM restored from an earlier memory file there keeps its memory), and a failed write leaves it
/// as it was. `path` may not be something other than a regular file (a FIFO, a device).
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&std::fs::File) -> std::io::Result<u64>,
) -> Result<u64, SnapshotError> {
    let io_error = |source| SnapshotError::Io { path: path.to_owned(), source };
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => return Err(SnapshotError::NotARegularFile(path.to_owned())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(io_error(source)),
    }
    let name = path.file_name().ok_or_else(|| SnapshotError::NotARegularFile(path.to_owned()))?;
    let mut temporary_name = std::ffi::OsString::from(".");
    temporary_name.push(name);
    temporary_name.push(format!(".kestrel-{}.tmp", std::process::id()));
    let temporary = path.with_file_name(temporary_name);
    let result = create_private(&temporary).and_then(|file| {
        let written = write(&file)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        Ok(written)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result.map_err(io_error)
}

/// Creates a new file that only its owner may read or write (0600, whatever the umask): snapshot
/// files hold the guest's memory and registers. The mode is set on the open file too, since the
/// umask could only have taken bits away.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(file)
}

/// Full (every page) or diff (the pages written since the last snapshot, or since boot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotKind {
    Full,
    Diff,
}

/// What a snapshot is asked to write.
#[derive(Clone, Debug)]
pub struct SnapshotRequest {
    pub state_path: PathBuf,
    pub memory_path: PathBuf,
    pub kind: SnapshotKind,
}

/// Where a snapshot goes: the files a [`SnapshotRequest`] names, or two streams (a socket to
/// another host, a pipe) that take the state, then guest RAM as [`memory_stream`] frames it.
/// They may go over one socket (two `&UnixStream` handles on it): the state is written first,
/// and `builder::restore_from_streams` reads it first.
pub enum SnapshotTarget<'a> {
    Files { state: &'a Path, memory: &'a Path },
    Streams { state: &'a mut dyn std::io::Write, memory: &'a mut dyn std::io::Write },
}

/// What a snapshot wrote, for the caller to report.
#[derive(Clone, Debug)]
pub struct SnapshotReport {
    pub state_bytes: u64,
    pub memory_bytes_written: u64,
    pub duration: Duration,
}

/// The parts of a running VM a snapshot reads, shared by the VM and its handles.
pub(crate) struct SnapshotSources {
    pub vm: Arc<VmFd>,
    pub memory: GuestRam,
    /// What the VM was built from, as the API has changed it since (a disk's new file).
    pub config: Arc<Mutex<VmConfig>>,
    /// The VM has the boot-timer device, which moves the virtio-mmio devices: not snapshotted.
    pub boot_timer: bool,
    /// The MSRs to save (KVM_GET_MSR_INDEX_LIST).
    pub msr_indices: Vec<u32>,
    pub ioapic: Arc<Mutex<Ioapic>>,
    pub serial: Arc<Mutex<Serial>>,
    pub cmos: Arc<Mutex<Cmos>>,
    pub i8042: Arc<Mutex<I8042>>,
    /// The virtio devices' transports, in the configuration's order.
    pub virtio: Vec<Arc<Mutex<dyn SnapshotTransport>>>,
    /// The disks, in the configuration's order: their capacities go into the state.
    pub disks: Vec<BlockControl>,
    /// KVM logs the vCPUs' writes (KVM_MEM_LOG_DIRTY_PAGES), so diff snapshots are possible.
    pub dirty_tracking: bool,
    /// Dirty pages a failed snapshot took from the logs, for the next snapshot.
    pub unsaved_dirty_pages: Mutex<Option<Vec<Vec<u64>>>>,
    /// One snapshot at a time.
    pub in_progress: Mutex<()>,
}

/// The size of KVM_GET_XSAVE's area.
const XSAVE_LEGACY_SIZE: i32 = 4096;

/// How long a snapshot waits for the parked vCPUs to hand over their state.
const VCPU_SAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Writes a snapshot of a paused VM. Device workers are held for the duration, so neither the
/// vCPUs nor the devices change guest RAM or device state while it is written; the VM stays
/// paused afterwards.
pub(crate) fn create(
    sources: &SnapshotSources,
    vcpus: &VcpuShared,
    request: &SnapshotRequest,
) -> Result<SnapshotReport, SnapshotError> {
    let target = SnapshotTarget::Files { state: &request.state_path, memory: &request.memory_path };
    create_into(sources, vcpus, request.kind, target)
}

/// [`create`] into files or streams.
pub(crate) fn create_into(
    sources: &SnapshotSources,
    vcpus: &VcpuShared,
    kind: SnapshotKind,
    target: SnapshotTarget<'_>,
) -> Result<SnapshotReport, SnapshotError> {
    let started = Instant::now();
    let _one_at_a_time = sources.in_progress.lock().unwrap_or_else(PoisonError::into_inner);
    if kind == SnapshotKind::Diff && !sources.dirty_tracking {
        return Err(SnapshotError::DiffWithoutTracking);
    }
    if sources.boot_timer {
        return Err(SnapshotError::BootTimer);
    }
    // KVM_GET_XSAVE returns the legacy 4 KiB area; on hosts whose XSAVE state is larger (AMX
    // tiles), the rest would be lost without a word.
    let xsave_size = sources.vm.check_extension_int(kvm_ioctls::Cap::Xsave2);
    if xsave_size > XSAVE_LEGACY_SIZE {
        return Err(SnapshotError::XsaveTooLarge(xsave_size));
    }
    // A VM paused before it ran (a snapshot loaded without resume_vm) parks its vCPU threads as
    // they start: wait for them.
    vcpus.wait_fully_paused(VCPU_SAVE_TIMEOUT)?;
    // Hold every device (its worker parked, its queues' positions handed over) before reading
    // anything else: a device interrupt would change the local APICs' state.
    let mut transports: Vec<_> =
        sources.virtio.iter().map(|t| t.lock().unwrap_or_else(PoisonError::into_inner)).collect();
    let held = transports.iter_mut().map(|t| t.hold()).collect::<Result<Vec<_>, _>>();
    let result = held
        .map_err(|e| SnapshotError::Save { what: "a virtio device".into(), reason: e.to_string() })
        .and_then(|virtio| write_snapshot(sources, vcpus, kind, target, virtio));
    for transport in &mut transports {
        transport.release();
    }
    let (state_bytes, memory_bytes_written) = result?;
    Ok(SnapshotReport { state_bytes, memory_bytes_written, duration: started.elapsed() })
}

fn write_snapshot(
    sources: &SnapshotSources,
    vcpus: &VcpuShared,
    kind: SnapshotKind,
    target: SnapshotTarget<'_>,
    virtio: Vec<VirtioSnapshot>,
) -> Result<(u64, u64), SnapshotError> {
    // The legacy devices are locked from before the local APICs are read until they are saved:
    // console input or a key arriving in between would raise an interrupt that neither the saved
    // APICs nor the saved devices show. Devices first, the IOAPIC second, as everywhere.
    let lock = |what: &str| SnapshotError::Save { what: what.into(), reason: "its lock is poisoned".into() };
    let serial = sources.serial.lock().map_err(|_| lock("the serial port"))?;
    let i8042 = sources.i8042.lock().map_err(|_| lock("the i8042"))?;
    let cmos = sources.cmos.lock().map_err(|_| lock("the CMOS"))?;
    let ioapic = sources.ioapic.lock().map_err(|_| lock("the IOAPIC"))?;
    let vcpu_states = vcpus.save_states(&sources.msr_indices, VCPU_SAVE_TIMEOUT)?;
    let clock =
        sources.vm.get_clock().map_err(|source| SnapshotError::Kvm { call: "KVM_GET_CLOCK", source })?;
    let state = VmState {
        config: sources.config.lock().map_err(|_| lock("the configuration"))?.clone(),
        disk_sectors: sources.disks.iter().map(BlockControl::sectors).collect(),
        memory: memory_file::layout(&sources.memory),
        clock,
        vcpus: vcpu_states,
        ioapic: ioapic.snapshot(),
        serial: serial.snapshot(),
        cmos: cmos.snapshot(),
        i8042: i8042.snapshot(),
        virtio,
    };
    drop((serial, i8042, cmos, ioapic));
    // Reading the dirty pages also clears them, so the next diff starts from this snapshot; if
    // this one fails they go back, or the next diff would silently miss them.
    let dirty = if sources.dirty_tracking { Some(sources.take_dirty_pages()?) } else { None };
    let pages = match (kind, &dirty) {
        (SnapshotKind::Diff, Some(bitmaps)) => Pages::Dirty(bitmaps),
        _ => Pages::All,
    };
    let written = match target {
        // The memory file first: the state file names a complete snapshot only once it is there.
        SnapshotTarget::Files { state: state_path, memory: memory_path } => {
            memory_file::write(&sources.memory, memory_path, pages)
                .and_then(|memory_bytes| Ok((file::write(state_path, &state)?, memory_bytes)))
        }
        // The state first: the reader needs it to size guest RAM before the pages come.
        SnapshotTarget::Streams { state: state_output, memory: memory_output } => {
            write_state(&state, state_output).and_then(|state_bytes| {
                Ok((state_bytes, memory_stream::write_memory(&sources.memory, memory_output, pages)?))
            })
        }
    };
    if let (Err(_), Some(bitmaps)) = (&written, dirty) {
        sources.keep_dirty_pages(bitmaps);
    }
    written
}

impl SnapshotSources {
    /// The pages written since the last snapshot, per region: KVM's log of the vCPUs' writes,
    /// guest RAM's own bitmap of the VMM's (device) writes, and what a failed snapshot gave back.
    /// All three are cleared.
    fn take_dirty_pages(&self) -> Result<Vec<Vec<u64>>, SnapshotError> {
        let kept = self.unsaved_dirty_pages.lock().unwrap_or_else(PoisonError::into_inner).take();
        self.memory
            .iter()
            .enumerate()
            .map(|(slot, region)| {
                let size = region.len() as usize;
                let mut pages = self
                    .vm
                    .get_dirty_log(slot as u32, size)
                    .map_err(|source| SnapshotError::Kvm { call: "KVM_GET_DIRTY_LOG", source })?;
                let by_devices = vm_memory::mmap::MmapRegion::bitmap(region).get_and_reset();
                let unsaved = kept.as_ref().and_then(|k| k.get(slot));
                for (index, word) in pages.iter_mut().enumerate() {
                    let earlier = unsaved.and_then(|words| words.get(index)).copied().unwrap_or(0);
                    *word |= by_devices.get(index).copied().unwrap_or(0) | earlier;
                }
                Ok(pages)
            })
            .collect()
    }

    /// Gives back dirty pages a failed snapshot took, for the next one.
    fn keep_dirty_pages(&self, bitmaps: Vec<Vec<u64>>) {
        let mut kept = self.unsaved_dirty_pages.lock().unwrap_or_else(PoisonError::into_inner);
        match kept.as_mut() {
            Some(old) => {
                for (old_region, region) in old.iter_mut().zip(bitmaps) {
                    for (old_word, word) in old_region.iter_mut().zip(region) {
                        *old_word |= word;
                    }
                }
            }
            None => *kept = Some(bitmaps),
        }
    }
}

/// Restores the VM-wide KVM clock (kvmclock's base), so guest time continues from the snapshot.
pub(crate) fn restore_clock(vm: &VmFd, saved: &kvm_clock_data) -> Result<(), SnapshotError> {
    // Only the clock value is restored: the flags describe the saving host's TSC.
    let clock = kvm_clock_data { clock: saved.clock, ..Default::default() };
    vm.set_clock(&clock).map_err(|source| SnapshotError::Kvm { call: "KVM_SET_CLOCK", source })
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use crate::config::{SerialConfig, VirtioTransport, VmConfig};

    /// The hello guest powering off at once, 64 MiB, no devices.
    fn hello_config(track_dirty_pages: bool) -> VmConfig {
        VmConfig {
            kernel: guests::HELLO.into(),
            initrd: None,
            cmdline: "exit=poweroff".into(),
            vcpus: 1,
            memory_bytes: 64 << 20,
            serial: SerialConfig::None,
            virtio: Vec::new(),
            transport: VirtioTransport::Mmio,
            track_dirty_pages,
            host: Default::default(),
        }
    }

    fn page_bit(bitmaps: &[Vec<u64>], page: usize) -> bool {
        bitmaps[0][page / 64] >> (page % 64) & 1 == 1
    }

    /// The dirty set a diff writes includes what the VMM's devices wrote into guest RAM (which
    /// KVM's log never sees), is cleared by being taken, and gets back what a failed snapshot
    /// took.
    #[test]
    fn device_writes_are_dirty_and_a_failed_snapshot_gives_its_pages_back() {
        if !crate::testing::kvm_available() {
            return;
        }
        let config = hello_config(true);
        let vm = crate::builder::build(&config).unwrap();
        let handle = vm.handle();
        let sources = &handle.sources;
        // Loading the kernel wrote guest RAM through the same bitmap: start from a clean slate.
        sources.take_dirty_pages().unwrap();
        const PAGE: usize = 1000;
        sources.memory.write_obj(0xabu8, GuestAddress((PAGE * 4096) as u64)).unwrap();
        let taken = sources.take_dirty_pages().unwrap();
        assert!(page_bit(&taken, PAGE), "a device's write is in the dirty set");
        assert!(!page_bit(&taken, PAGE + 1));
        assert!(!page_bit(&sources.take_dirty_pages().unwrap(), PAGE), "taking clears it");
        sources.keep_dirty_pages(taken);
        assert!(page_bit(&sources.take_dirty_pages().unwrap(), PAGE), "given back after a failure");
        assert!(!page_bit(&sources.take_dirty_pages().unwrap(), PAGE), "and only once");
    }

    /// A VM snapshotted into streams (paused before its first instruction) and restored from
    /// them into a fresh VM runs its guest from the start to the end: the state and every page
    /// the guest needs went through the streams, zero pages as markers.
    #[test]
    fn a_vm_snapshotted_into_streams_restores_from_them() {
        if !crate::testing::kvm_available() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let config = hello_config(false);
        let vm = crate::builder::build(&config).unwrap();
        let handle = vm.handle();
        handle.pause().unwrap();
        let snapshotter = std::thread::spawn(move || {
            let (mut state, mut memory) = (Vec::new(), Vec::new());
            let report = handle.snapshot_to_streams(super::SnapshotKind::Full, &mut state, &mut memory);
            handle.resume();
            (state, memory, report.unwrap())
        });
        assert_eq!(vm.run().unwrap(), crate::outcome::VmOutcome::PowerOff);
        let (state, memory, report) = snapshotter.join().unwrap();
        assert_eq!(report.state_bytes, state.len() as u64);
        assert_eq!(report.memory_bytes_written, memory.len() as u64);
        assert!(memory.len() < 4 << 20, "{} bytes: zero pages are markers", memory.len());

        let log = dir.path().join("serial.log");
        let options = crate::builder::RestoreOptions {
            serial: SerialConfig::File(log.clone()),
            track_dirty_pages: false,
            vsock_uds: None,
            drive_paths: Default::default(),
            tap_names: Default::default(),
            memory_backend: model::api::MemoryBackendType::File,
            host: Default::default(),
            mmds: None,
        };
        let restored =
            crate::builder::restore_from_streams(&mut state.as_slice(), &mut memory.as_slice(), &options)
                .unwrap();
        assert_eq!(restored.run().unwrap(), crate::outcome::VmOutcome::PowerOff);
        let output = std::fs::read_to_string(&log).unwrap();
        assert!(
            output.starts_with("Hello from the Kestrel test guest") && output.contains("exit: poweroff"),
            "{output}"
        );
    }
}
