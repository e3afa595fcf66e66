//! Snapshots of a paused VM: a state file (every vCPU's KVM state, the clock, the interrupt
//! controller, the legacy devices and each virtio device with its queues, and the configuration
//! the VM was built from) and a memory file (guest RAM). [`create`] writes both; `builder::restore`
//! builds a VM from them in a fresh process, its RAM mapped copy-on-write from the memory file.

mod file;
pub(crate) mod memory_file;
pub(crate) mod vcpu_state;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use devices::ioapic::{Ioapic, IoapicSnapshot};
use devices::legacy::{Cmos, CmosSnapshot, I8042Snapshot, Serial, SerialSnapshot, I8042};
use kvm_bindings::kvm_clock_data;
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};
use virtio::snapshot::{SnapshotTransport, VirtioSnapshot};
use virtio::GuestRam;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

pub use file::FORMAT_VERSION;
use memory_file::{FileIdentity, Pages, SavedRegion};
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
    #[error("{0} is the file this VM's memory is mapped from; write a full snapshot to another file (a diff snapshot may update it)")]
    MemoryFileInUse(PathBuf),
    #[error("KVM refused to restore MSR {0:#x}")]
    MsrRefused(u32),
    #[error("not a Kestrel snapshot state file")]
    NotASnapshot,
    #[error("{0} is not a regular file")]
    NotARegularFile(PathBuf),
    #[error("the VM must be paused first (PATCH /vm {{\"state\": \"Paused\"}})")]
    NotPaused,
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
    #[error("the snapshot file has format version {found}; this Kestrel reads version {supported}")]
    Version { found: u32, supported: u32 },
}

/// Everything the state file holds.
#[derive(Serialize, Deserialize)]
pub struct VmState {
    /// What the VM was built from: devices are built again from it on restore.
    pub config: VmConfig,
    pub memory: Vec<SavedRegion>,
    pub clock: kvm_clock_data,
    pub vcpus: Vec<VcpuState>,
    pub ioapic: IoapicSnapshot,
    pub serial: SerialSnapshot,
    pub cmos: CmosSnapshot,
    pub i8042: I8042Snapshot,
    /// The virtio devices' transport and queue states, in the configuration's order.
    pub virtio: Vec<VirtioSnapshot>,
}

/// Reads and checks a state file.
pub fn read_state(path: &Path) -> Result<VmState, SnapshotError> {
    file::read(path)
}

/// Refuses a path that exists and is not a regular file: a FIFO would block the open (and the API
/// with it), a device such as /dev/zero would never end.
fn check_regular_file(path: &Path, must_exist: bool) -> Result<(), SnapshotError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(SnapshotError::NotARegularFile(path.to_owned())),
        Err(e) if !must_exist && e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SnapshotError::Io { path: path.to_owned(), source }),
    }
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
    /// The MSRs to save (KVM_GET_MSR_INDEX_LIST).
    pub msr_indices: Vec<u32>,
    pub ioapic: Arc<Mutex<Ioapic>>,
    pub serial: Arc<Mutex<Serial>>,
    pub cmos: Arc<Mutex<Cmos>>,
    pub i8042: Arc<Mutex<I8042>>,
    /// The virtio devices' transports, in the configuration's order.
    pub virtio: Vec<Arc<Mutex<dyn SnapshotTransport>>>,
    /// KVM logs the vCPUs' writes (KVM_MEM_LOG_DIRTY_PAGES), so diff snapshots are possible.
    pub dirty_tracking: bool,
    /// The memory file guest RAM is mapped from, for a restored VM.
    pub backing_file: Option<FileIdentity>,
    /// One snapshot at a time.
    pub in_progress: Mutex<()>,
}

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
    let started = Instant::now();
    let _one_at_a_time = sources.in_progress.lock().unwrap_or_else(PoisonError::into_inner);
    if request.kind == SnapshotKind::Diff && !sources.dirty_tracking {
        return Err(SnapshotError::DiffWithoutTracking);
    }
    if !vcpus.is_fully_paused() {
        return Err(SnapshotError::NotPaused);
    }
    // Hold every device (its worker parked, its queues' positions handed over) before reading
    // anything else: a device interrupt would change the local APICs' state.
    let mut transports: Vec<_> =
        sources.virtio.iter().map(|t| t.lock().unwrap_or_else(PoisonError::into_inner)).collect();
    let held = transports.iter_mut().map(|t| t.hold()).collect::<Result<Vec<_>, _>>();
    let result = held
        .map_err(|e| SnapshotError::Save { what: "a virtio device".into(), reason: e.to_string() })
        .and_then(|virtio| write_snapshot(sources, vcpus, request, virtio));
    for transport in &mut transports {
        transport.release();
    }
    let (state_bytes, memory_bytes_written) = result?;
    Ok(SnapshotReport { state_bytes, memory_bytes_written, duration: started.elapsed() })
}

fn write_snapshot(
    sources: &SnapshotSources,
    vcpus: &VcpuShared,
    request: &SnapshotRequest,
    virtio: Vec<VirtioSnapshot>,
) -> Result<(u64, u64), SnapshotError> {
    let vcpu_states = vcpus.save_states(&sources.msr_indices, VCPU_SAVE_TIMEOUT)?;
    let clock =
        sources.vm.get_clock().map_err(|source| SnapshotError::Kvm { call: "KVM_GET_CLOCK", source })?;
    let lock_error =
        |what: &str| SnapshotError::Save { what: what.into(), reason: "its lock is poisoned".into() };
    let state = VmState {
        config: sources.config.lock().map_err(|_| lock_error("the configuration"))?.clone(),
        memory: memory_file::layout(&sources.memory),
        clock,
        vcpus: vcpu_states,
        ioapic: sources.ioapic.lock().map_err(|_| lock_error("the IOAPIC"))?.snapshot(),
        serial: sources.serial.lock().map_err(|_| lock_error("the serial port"))?.snapshot(),
        cmos: sources.cmos.lock().map_err(|_| lock_error("the CMOS"))?.snapshot(),
        i8042: sources.i8042.lock().map_err(|_| lock_error("the i8042"))?.snapshot(),
        virtio,
    };
    // Reading the dirty pages also clears them: the next diff starts from this snapshot.
    let dirty =
        if sources.dirty_tracking { Some(take_dirty_pages(&sources.vm, &sources.memory)?) } else { None };
    let pages = match (request.kind, &dirty) {
        (SnapshotKind::Diff, Some(bitmaps)) => Pages::Dirty(bitmaps),
        _ => Pages::All,
    };
    let memory_bytes =
        memory_file::write(&sources.memory, &request.memory_path, pages, sources.backing_file)?;
    let state_bytes = file::write(&request.state_path, &state)?;
    Ok((state_bytes, memory_bytes))
}

/// The pages written since the last call, per region: KVM's log of the vCPUs' writes merged with
/// guest RAM's own bitmap of the VMM's (device) writes. Both are cleared.
fn take_dirty_pages(vm: &VmFd, memory: &GuestRam) -> Result<Vec<Vec<u64>>, SnapshotError> {
    memory
        .iter()
        .enumerate()
        .map(|(slot, region)| {
            let size = region.len() as usize;
            let mut pages = vm
                .get_dirty_log(slot as u32, size)
                .map_err(|source| SnapshotError::Kvm { call: "KVM_GET_DIRTY_LOG", source })?;
            let by_devices = vm_memory::mmap::MmapRegion::bitmap(region).get_and_reset();
            for (word, device_word) in pages.iter_mut().zip(by_devices) {
                *word |= device_word;
            }
            Ok(pages)
        })
        .collect()
}

/// Restores the VM-wide KVM clock (kvmclock's base), so guest time continues from the snapshot.
pub(crate) fn restore_clock(vm: &VmFd, saved: &kvm_clock_data) -> Result<(), SnapshotError> {
    // Only the clock value is restored: the flags describe the saving host's TSC.
    let clock = kvm_clock_data { clock: saved.clock, ..Default::default() };
    vm.set_clock(&clock).map_err(|source| SnapshotError::Kvm { call: "KVM_SET_CLOCK", source })
}
