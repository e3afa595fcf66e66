//! The one place that assembles a VM: KVM, memory, boot image, devices, vCPUs.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use arch::BootEntry;
use devices::acpi::{Ged, Pm1, PM1_BLOCK_LEN};
use devices::ioapic::{Ioapic, IoapicPin};
use devices::legacy::{Cmos, PowerManagement, Serial, I8042};
use devices::{Bus, BusDevice};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use model::api::MemoryBackendType;
use virtio::snapshot::SnapshotTransport;
use virtio::GuestRam;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::{SerialConfig, VirtioTransport, VmConfig};
use crate::irqchip::{self, GsiRouting, KvmMsiSink};
use crate::metrics::VcpuMetrics;
use crate::pci_devices::PciBus;
use crate::snapshot::{self, restore_checks, vcpu_state, SnapshotError, SnapshotSources, VmState};
use crate::vcpu::VcpuShared;
use crate::vm::Vm;
use crate::{kernel, kvm_err, memory, virtio_devices, Error, Result};

/// The KVM device node.
const KVM_PATH: &str = "/dev/kvm";

/// Where the legacy devices live in port space, and the IOAPIC pin of each interrupt.
const COM1_PORT: u64 = 0x3f8;
const COM1_IRQ: usize = 4;
const I8042_PORT: u64 = 0x60;
const KEYBOARD_IRQ: usize = 1;
const CMOS_PORT: u64 = 0x70;
/// The ACPI sleep control register and the GED's event register, where the ACPI tables say.
const POWER_PORT: u64 = arch::layout::SLEEP_CONTROL_PORT as u64;
const GED_PORT: u64 = arch::layout::GED_PORT as u64;
/// The PM1a event block, with the control block 4 bytes after it: one device.
const PM1_PORT: u64 = arch::layout::PM1A_EVENT_PORT as u64;
const _: () = assert!(
    arch::layout::PM1A_CONTROL_PORT as u64 == PM1_PORT + arch::layout::PM1_EVENT_LEN as u64
        && PM1_BLOCK_LEN == (arch::layout::PM1_EVENT_LEN + arch::layout::PM1_CONTROL_LEN) as u64
);
const GED_IRQ: usize = arch::layout::GED_IRQ as usize;

/// Builds a VM ready to run, or says which part of the configuration cannot be honoured.
pub fn build(config: &VmConfig) -> Result<Vm> {
    build_with(config, BuildOptions::default())
}

/// What a boot may add to the configured machine: debugging devices chosen on the command line.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuildOptions {
    /// Firecracker's boot-timer device (`--boot-timer`) at [`arch::layout::BOOT_TIMER_START`],
    /// the virtio-mmio devices one window further. A VM with it cannot be snapshotted: a restore
    /// would put the devices back where the guest does not look for them.
    pub boot_timer: bool,
}

/// [`build`] with [`BuildOptions`].
pub fn build_with(config: &VmConfig, options: BuildOptions) -> Result<Vm> {
    let boot_start = devices::boot_timer::BootStart::now();
    check_vcpu_count(config.vcpus)?;
    // Everything that can be checked without KVM is checked first, so the error names the real
    // problem even on a host without KVM.
    let boot_files = kernel::BootFiles::open(config)?;
    let memory = memory::create_guest_memory(config.memory_bytes, &config.host.memory)?;
    let mmio_slots = mmio_slots(config, usize::from(options.boot_timer))?;
    let entry =
        kernel::load_boot_image(config, boot_files, &memory, &virtio_devices::mmio_cmdline(&mmio_slots))?;

    let (kvm, vm) = create_kvm_vm(config, &memory)?;
    let devices = LegacyDevices::create(config, &vm, None)?;
    if options.boot_timer {
        let timer = devices::boot_timer::BootTimer::new(boot_start);
        let (base, len) = (arch::layout::BOOT_TIMER_START, arch::layout::VIRTIO_MMIO_WINDOW);
        insert(&devices.mmio_bus, Arc::new(Mutex::new(timer)), base, len, "boot timer")?;
    }
    let mut controls = virtio_devices::VirtioControls::default();
    let (transports, _pci) = attach_virtio(config, &vm, &memory, &devices, &mmio_slots, &mut controls)?;
    let vcpus = create_vcpus(&kvm, &vm, &memory, config.vcpus, entry)?;
    let parts = VmParts { kvm, vm, memory, devices, controls, transports, vcpus };
    parts.into_vm(config, options.boot_timer)
}

/// What [`restore`] takes besides the snapshot: what belongs to the restoring process rather than
/// to the saved VM.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// Where this process sends the guest's console.
    pub serial: SerialConfig,
    /// Log the guest's writes from now on, so later diff snapshots are possible.
    pub track_dirty_pages: bool,
    /// Where guest RAM comes from: the memory file (`File`), or a page-fault handler listening on
    /// the memory path, a Unix socket (`Uffd`, Firecracker's protocol: see [`crate::uffd`]).
    pub memory_backend: MemoryBackendType,
    /// The vsock device's Unix socket, if it is to differ from the saved one.
    pub vsock_uds: Option<PathBuf>,
    /// Host files for the snapshot's disks, by drive ID, in place of the paths the state file
    /// names (which may not be this host's, and are not to be trusted blindly). Either way the
    /// file must be a regular file or a block device of the capacity the guest saw.
    pub drive_paths: BTreeMap<String, PathBuf>,
    /// Taps for the snapshot's network cards, by interface ID, in place of the saved ones
    /// (Firecracker's `network_overrides`): the restored VM may run beside its original, or on
    /// another host.
    pub tap_names: BTreeMap<String, String>,
    /// What backs the restored guest's RAM and where its threads run: this side's choice (a
    /// snapshot does not carry it). Anonymous memory maps the memory file copy-on-write; a memfd
    /// or hugetlb backend gets fresh memory with the file's contents copied in.
    pub host: crate::config::HostResources,
    /// The restoring VMM's MMDS store, for the cards that served MMDS when saved (the store is
    /// not in the snapshot); `None` gives them one empty store of their own.
    pub mmds: Option<model::mmds::MmdsStore>,
}

/// Builds a VM from a snapshot's state file and memory file: guest RAM is mapped copy-on-write
/// from the memory file, devices are built from the saved configuration and take their saved
/// state, and every vCPU takes its saved registers. Run it (or pause it first) as any VM.
pub fn restore(state_path: &Path, memory_path: &Path, options: &RestoreOptions) -> Result<Vm> {
    prepare_restore(state_path, memory_path, options)?.finish()
}

/// A restore read and checked but not yet built: no thread started, no device made. The caller
/// learns the configuration the VM will be built from (to confine the process to its files)
/// before [`PreparedRestore::finish`] builds it.
pub struct PreparedRestore {
    state: VmState,
    config: VmConfig,
    memory: GuestRam,
}

/// The first half of [`restore`]: reads and checks the state file, maps the memory file (or, with
/// the `Uffd` backend, hands fresh guest RAM to the page-fault handler at `memory_path`).
pub fn prepare_restore(
    state_path: &Path,
    memory_path: &Path,
    options: &RestoreOptions,
) -> Result<PreparedRestore> {
    let state = snapshot::read_state_file(state_path)?;
    let config = restored_config(&state, options)?;
    let memory = match (options.memory_backend, config.host.memory.backend) {
        (MemoryBackendType::Uffd, backend) => {
            if config.host.memory.mlock {
                return Err(crate::uffd::UffdError::Mlock.into());
            }
            let memory = memory::create_guest_memory(config.memory_bytes, &config.host.memory)?;
            let page_size = match backend {
                crate::config::RamBackend::HugeTlb(page) => page.bytes() as usize,
                _ => 4096,
            };
            crate::uffd::hand_to_handler(&memory, &state.memory, page_size, memory_path)?;
            memory
        }
        (MemoryBackendType::File, crate::config::RamBackend::Anonymous) => {
            let memory = snapshot::memory_file::map(memory_path, &state.memory)?;
            memory::advise(&memory, &config.host.memory)?;
            memory
        }
        (MemoryBackendType::File, _) => {
            let memory = memory::create_guest_memory(config.memory_bytes, &config.host.memory)?;
            memory::fill_from_file(&memory, memory_path, &state.memory)?;
            memory
        }
    };
    Ok(PreparedRestore { state, config, memory })
}

impl PreparedRestore {
    /// The configuration the VM is built from (the state's, with the restore's options).
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Builds the VM.
    pub fn finish(self) -> Result<Vm> {
        restore_into(&self.state, &self.config, self.memory)
    }
}

/// [`restore`] from streams (a socket, a pipe) instead of files: the state as
/// `snapshot::write_state` wrote it, then guest RAM as `snapshot::memory_stream::write_memory`
/// wrote it (a full stream: this VM's RAM starts as zeroes), read into fresh anonymous memory.
pub fn restore_from_streams(
    state: &mut impl Read,
    memory: &mut impl Read,
    options: &RestoreOptions,
) -> Result<Vm> {
    let state = snapshot::read_state(state)?;
    let config = restored_config(&state, options)?;
    let ram = memory::create_guest_memory(config.memory_bytes, &config.host.memory)?;
    snapshot::memory_stream::read_memory(&ram, memory)?;
    restore_into(&state, &config, ram)
}

/// The configuration a restore builds from: the saved one with this process's options, every
/// part of the state checked against it before anything reaches a device or KVM.
pub(crate) fn restored_config(state: &VmState, options: &RestoreOptions) -> Result<VmConfig> {
    // The state file is hostile input: its configuration passes the checks any other does.
    state.config.validate()?;
    let mut config = state.config.clone();
    config.serial = options.serial.clone();
    config.track_dirty_pages = options.track_dirty_pages;
    config.host = options.host.clone();
    give_mmds_store(&mut config, options.mmds.clone().unwrap_or_default());
    // Every check again, now with this restore's host choices: they meet the saved devices here
    // (mlock or hugetlb memory with a balloon is refused as at boot).
    config.validate()?;
    if let Some(uds) = &options.vsock_uds {
        for device in &mut config.virtio {
            if let crate::config::VirtioConfig::Vsock(vsock) = device {
                vsock.uds_path = uds.clone();
            }
        }
    }
    restore_checks::apply_tap_names(&mut config, &options.tap_names)?;
    config.validate()?;
    check_vcpu_count(config.vcpus)?;
    if state.vcpus.len() != usize::from(config.vcpus) {
        return Err(SnapshotError::Invalid("vCPU list (it does not match the vCPU count)").into());
    }
    restore_checks::check_devices(state, &config)?;
    mmio_slots(&config, 0)?;
    memory::check_size(config.memory_bytes)?;
    restore_checks::check_memory_layout(state, &config)?;
    // Last: it opens host files.
    restore_checks::apply_drive_paths(&mut config, &state.disk_sectors, &options.drive_paths)?;
    Ok(config)
}

/// Gives every restored card that serves MMDS the one `store` (the snapshot holds none).
fn give_mmds_store(config: &mut VmConfig, store: model::mmds::MmdsStore) {
    for device in &mut config.virtio {
        if let crate::config::VirtioConfig::Net(crate::config::NetConfig { mmds: Some(mmds), .. }) = device {
            mmds.store = store.clone();
        }
    }
}

#[cfg(test)]
#[test]
fn restored_cards_serving_mmds_share_the_restoring_vmms_store() {
    let mut config = crate::snapshot::testing::sample_state().config;
    let mut second = None;
    for device in &config.virtio {
        if let crate::config::VirtioConfig::Net(net) = device {
            second = Some(net.clone());
        }
    }
    config.virtio.push(crate::config::VirtioConfig::Net(second.expect("a card")));
    let store = model::mmds::MmdsStore::new(10);
    give_mmds_store(&mut config, store.clone());
    let stores: Vec<_> = config
        .virtio
        .iter()
        .filter_map(|device| match device {
            crate::config::VirtioConfig::Net(net) => net.mmds.as_ref().map(|m| m.store.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(stores.len(), 2);
    assert!(stores.iter().all(|s| s.is_same(&store)));
}

/// Builds the VM of a checked state over its guest RAM.
fn restore_into(state: &VmState, config: &VmConfig, memory: GuestRam) -> Result<Vm> {
    let mmio_slots = mmio_slots(config, 0)?;
    let (kvm, vm) = create_kvm_vm(config, &memory)?;
    let devices = LegacyDevices::create(config, &vm, Some(state))?;
    let mut controls = virtio_devices::VirtioControls::default();
    let (transports, pci) = attach_virtio(config, &vm, &memory, &devices, &mmio_slots, &mut controls)?;
    // The vCPUs first: restoring a local APIC replaces its pending interrupts, and the devices
    // below raise the interrupts they still owe (or new ones, such as vsock's transport reset).
    let vcpus = state
        .vcpus
        .iter()
        .enumerate()
        .map(|(index, saved)| {
            let vcpu = vm.create_vcpu(index as u64).map_err(kvm_err("KVM_CREATE_VCPU"))?;
            vcpu_state::restore(&vcpu, saved)?;
            Ok(vcpu)
        })
        .collect::<Result<Vec<_>>>()?;
    for (index, (transport, saved)) in transports.iter().zip(&state.virtio).enumerate() {
        let mut transport = transport.lock().map_err(|_| SnapshotError::Invalid("virtio device lock"))?;
        transport.restore(saved).map_err(|reason| SnapshotError::Restore {
            what: format!("virtio device {index}"),
            reason: reason.to_string(),
        })?;
    }
    pci.sync_all_bars();
    // Restoring the pins' routes resends what virtio-mmio devices owe (their unmask hooks).
    devices
        .ioapic
        .lock()
        .map_err(|_| SnapshotError::Invalid("IOAPIC lock"))?
        .restore(&state.ioapic)
        .map_err(|e| SnapshotError::Restore { what: "the IOAPIC".into(), reason: e.to_string() })?;
    snapshot::restore_clock(&vm, &state.clock)?;
    let parts = VmParts { kvm, vm, memory, devices, controls, transports, vcpus };
    parts.into_vm(config, false)
}

/// Where the virtio-mmio devices sit, from window `first_window` on; none on the PCI transport,
/// whose devices are found by probing the bus, not declared on the command line.
fn mmio_slots(config: &VmConfig, first_window: usize) -> Result<Vec<virtio_devices::MmioSlot>> {
    match config.transport {
        VirtioTransport::Mmio => virtio_devices::mmio_slots(config.virtio.len(), first_window),
        VirtioTransport::Pci => Ok(Vec::new()),
    }
}

/// A virtio device's transport, shared by the bus that presents it and the snapshot that holds it.
type SharedTransport = Arc<Mutex<dyn SnapshotTransport>>;

/// Creates the configured virtio devices on their transport; returns them (in the configuration's
/// order) and the PCI bus, which every VM has.
fn attach_virtio(
    config: &VmConfig,
    vm: &Arc<VmFd>,
    memory: &GuestRam,
    devices: &LegacyDevices,
    mmio_slots: &[virtio_devices::MmioSlot],
    controls: &mut virtio_devices::VirtioControls,
) -> Result<(Vec<SharedTransport>, PciBus)> {
    let mut pci = PciBus::create(&devices.pio_bus, &devices.mmio_bus)?;
    let transports: Vec<SharedTransport> = match config.transport {
        VirtioTransport::Mmio => virtio_devices::attach_all(
            vm,
            &devices.mmio_bus,
            &devices.msi_sink,
            memory,
            &config.virtio,
            mmio_slots,
            controls,
        )?
        .into_iter()
        .map(|t| t as SharedTransport)
        .collect(),
        VirtioTransport::Pci => pci
            .attach_virtio(vm, &devices.routing, memory, &config.virtio, controls)?
            .into_iter()
            .map(|t| t as SharedTransport)
            .collect(),
    };
    Ok((transports, pci))
}

/// Opens KVM and creates the VM with its interrupt controller and guest RAM.
fn create_kvm_vm(config: &VmConfig, memory: &GuestRam) -> Result<(Kvm, Arc<VmFd>)> {
    let kvm = Kvm::new().map_err(|e| Error::KvmOpen {
        path: PathBuf::from(KVM_PATH),
        source: std::io::Error::from_raw_os_error(e.errno()),
    })?;
    let max_vcpus = kvm.get_max_vcpus();
    if usize::from(config.vcpus) > max_vcpus {
        return Err(Error::VcpusExceedHost { requested: config.vcpus, max: max_vcpus });
    }
    let vm = Arc::new(kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?);
    // Intel VMX needs these two pages of guest-physical space for real-mode emulation; they sit in
    // the MMIO gap, where no RAM is.
    vm.set_identity_map_address(arch::layout::KVM_IDENTITY_MAP_ADDRESS)
        .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm.set_tss_address(arch::layout::KVM_TSS_ADDRESS as usize).map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    irqchip::create_split_irqchip(&vm)?;
    memory::register_with_kvm(&vm, memory, config.track_dirty_pages)?;
    Ok((kvm, vm))
}

/// A VM's parts once built or restored, before they become a [`Vm`].
struct VmParts {
    kvm: Kvm,
    vm: Arc<VmFd>,
    memory: GuestRam,
    devices: LegacyDevices,
    controls: virtio_devices::VirtioControls,
    transports: Vec<SharedTransport>,
    vcpus: Vec<VcpuFd>,
}

impl VmParts {
    fn into_vm(self, config: &VmConfig, boot_timer: bool) -> Result<Vm> {
        let VmParts { kvm, vm, memory, devices, controls, transports, vcpus } = self;
        let placement = crate::placement::ThreadPlacement::resolve(&config.host, config.vcpus)?;
        let (ended_sender, ended_receiver) = mpsc::channel();
        let ended_event = new_event_fd("vCPU exit notifier")?;
        let vcpu_metrics: Arc<[VcpuMetrics]> = (0..vcpus.len()).map(|_| VcpuMetrics::default()).collect();
        let shared = Arc::new(
            VcpuShared::new(
                devices.pio_bus.clone(),
                devices.mmio_bus.clone(),
                devices.ioapic.clone(),
                ended_sender,
                clone_event_fd(&ended_event, "vCPU exit notifier")?,
                vcpus.len(),
            )
            .with_metrics(vcpu_metrics)
            .with_placement(placement),
        );
        let msr_indices =
            kvm.get_msr_index_list().map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?.as_slice().to_vec();
        let sources = Arc::new(SnapshotSources {
            vm: vm.clone(),
            memory: memory.clone(),
            config: Arc::new(Mutex::new(config.clone())),
            boot_timer,
            msr_indices,
            ioapic: devices.ioapic.clone(),
            serial: devices.serial.clone(),
            cmos: devices.cmos.clone(),
            i8042: devices.i8042.clone(),
            virtio: transports,
            disks: controls.disks.clone(),
            dirty_tracking: config.track_dirty_pages,
            unsaved_dirty_pages: Mutex::new(None),
            in_progress: Mutex::new(()),
        });
        let handles = devices.into_handles(config, controls);
        Ok(Vm::new(vcpus, shared, ended_receiver, ended_event, handles, sources))
    }
}

fn check_vcpu_count(vcpus: u8) -> Result<()> {
    let max = arch::layout::MAX_VCPUS;
    if vcpus == 0 || vcpus > max {
        return Err(Error::VcpusOutOfRange { requested: vcpus, max });
    }
    Ok(())
}

/// Creates every vCPU with its CPUID, MSRs and local APIC set up; only vCPU 0 gets boot registers,
/// the others wait for the guest's INIT-SIPI-SIPI as on real hardware.
fn create_vcpus(kvm: &Kvm, vm: &VmFd, memory: &GuestRam, count: u8, entry: BootEntry) -> Result<Vec<VcpuFd>> {
    let supported =
        kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let mut tsc_khz = None;
    (0..count)
        .map(|index| {
            let vcpu = vm.create_vcpu(u64::from(index)).map_err(kvm_err("KVM_CREATE_VCPU"))?;
            if index == 0 {
                tsc_khz = guest_tsc_khz(&vcpu);
            }
            let cpuid = arch::cpuid::filter_for_vcpu(&supported, index, count, tsc_khz)?;
            vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
            arch::msrs::setup_msrs(&vcpu)?;
            arch::interrupts::set_lint(&vcpu)?;
            if index == 0 {
                arch::regs::setup_boot_vcpu(&vcpu, memory, entry)?;
            }
            Ok(vcpu)
        })
        .collect()
}

/// The guest's TSC rate, for CPUID to report; None (and the guest calibrates) when the host's TSC
/// is unstable and KVM will not say.
fn guest_tsc_khz(vcpu: &VcpuFd) -> Option<u32> {
    match vcpu.get_tsc_khz() {
        Ok(khz) if khz > 0 => Some(khz),
        Ok(_) => None,
        Err(e) => {
            tracing::info!("KVM does not report the TSC rate ({e}); the guest will calibrate it");
            None
        }
    }
}

/// The legacy PC devices every VM has, wired to the buses and the IOAPIC.
struct LegacyDevices {
    pio_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
    ioapic: Arc<Mutex<Ioapic>>,
    /// KVM's GSI routes, shared by the IOAPIC and the MSI-X vectors of PCI devices.
    routing: Arc<GsiRouting>,
    /// The IOAPIC's link to KVM, where irqfd-driven devices hook pin unmasking.
    msi_sink: Arc<KvmMsiSink>,
    serial: Arc<Mutex<Serial>>,
    cmos: Arc<Mutex<Cmos>>,
    i8042: Arc<Mutex<I8042>>,
    ged: Arc<Mutex<Ged>>,
    reset: EventFd,
    power_off: EventFd,
}

/// What the VMM's event loop keeps of the devices.
pub struct DeviceHandles {
    pub serial: Arc<Mutex<Serial>>,
    /// Whether the host's stdin feeds the guest's serial input.
    pub serial_input: bool,
    /// The keyboard controller, where the host types Ctrl+Alt+Del.
    pub i8042: Arc<Mutex<I8042>>,
    /// The ACPI generic event device, where the host presses the power button.
    pub ged: Arc<Mutex<Ged>>,
    pub reset: EventFd,
    pub power_off: EventFd,
    /// Handles on the virtio devices the VMM drives while the guest runs.
    pub virtio: virtio_devices::VirtioControls,
}

impl LegacyDevices {
    /// Creates the devices in their power-on state, or in the state `saved` has for them.
    fn create(config: &VmConfig, vm: &Arc<VmFd>, saved: Option<&VmState>) -> Result<LegacyDevices> {
        let pio_bus = Arc::new(Bus::new());
        let mmio_bus = Arc::new(Bus::new());
        let routing = Arc::new(GsiRouting::new(vm.clone()));
        let msi_sink = Arc::new(KvmMsiSink::new(vm.clone(), routing.clone()));
        let ioapic = Arc::new(Mutex::new(Ioapic::new(msi_sink.clone())));
        insert(
            &mmio_bus,
            ioapic.clone(),
            arch::layout::IOAPIC_START,
            devices::ioapic::IOAPIC_SIZE,
            "IOAPIC",
        )?;

        let serial_irq = IoapicPin::new(ioapic.clone(), COM1_IRQ)
            .map_err(|e| Error::Device { name: "serial (COM1)", reason: e.to_string() })?;
        let serial_state = saved.map(|state| state.serial.clone()).unwrap_or_default();
        let serial = Serial::restore(Arc::new(serial_irq), serial_output(&config.serial)?, &serial_state)
            .map_err(|e| Error::Device { name: "serial (COM1)", reason: e.to_string() })?;
        let serial = Arc::new(Mutex::new(serial));
        insert(&pio_bus, serial.clone(), COM1_PORT, 8, "serial (COM1)")?;

        let reset = new_event_fd("i8042 reset line")?;
        let keyboard_irq = IoapicPin::new(ioapic.clone(), KEYBOARD_IRQ)
            .map_err(|e| Error::Device { name: "i8042", reason: e.to_string() })?;
        let mut i8042 = I8042::new(clone_event_fd(&reset, "i8042 reset line")?, Arc::new(keyboard_irq));
        if let Some(state) = saved {
            i8042
                .restore(&state.i8042)
                .map_err(|e| Error::Device { name: "i8042", reason: e.to_string() })?;
        }
        let i8042 = Arc::new(Mutex::new(i8042));
        insert(&pio_bus, i8042.clone(), I8042_PORT, 5, "i8042")?;

        let (below_4g, above_4g) = split_at_gap(config.memory_bytes);
        let mut cmos = Cmos::new(below_4g, above_4g);
        if let Some(state) = saved {
            cmos.restore(&state.cmos)
                .map_err(|e| Error::Device { name: "CMOS RTC", reason: e.to_string() })?;
        }
        let cmos = Arc::new(Mutex::new(cmos));
        insert(&pio_bus, cmos.clone(), CMOS_PORT, 2, "CMOS RTC")?;

        let power_off = new_event_fd("power-off line")?;
        let power = PowerManagement::new(clone_event_fd(&power_off, "power-off line")?);
        insert(&pio_bus, Arc::new(Mutex::new(power)), POWER_PORT, 1, "power management")?;
        let pm1 = Pm1::new(clone_event_fd(&power_off, "power-off line")?);
        insert(&pio_bus, Arc::new(Mutex::new(pm1)), PM1_PORT, PM1_BLOCK_LEN, "ACPI PM1 blocks")?;

        // No saved state: an event the guest had not read when the snapshot was taken is lost,
        // and the restored guest sees no press (the client presses again).
        let ged_irq = IoapicPin::new(ioapic.clone(), GED_IRQ)
            .map_err(|e| Error::Device { name: "ACPI GED", reason: e.to_string() })?;
        let ged = Arc::new(Mutex::new(Ged::new(Arc::new(ged_irq))));
        insert(&pio_bus, ged.clone(), GED_PORT, 1, "ACPI GED")?;

        Ok(LegacyDevices {
            pio_bus,
            mmio_bus,
            ioapic,
            routing,
            msi_sink,
            serial,
            cmos,
            i8042,
            ged,
            reset,
            power_off,
        })
    }

    fn into_handles(self, config: &VmConfig, virtio: virtio_devices::VirtioControls) -> DeviceHandles {
        DeviceHandles {
            serial: self.serial,
            serial_input: config.serial == SerialConfig::Stdio,
            i8042: self.i8042,
            ged: self.ged,
            reset: self.reset,
            power_off: self.power_off,
            virtio,
        }
    }
}

fn insert(
    bus: &Bus,
    device: Arc<Mutex<dyn BusDevice>>,
    base: u64,
    len: u64,
    name: &'static str,
) -> Result<()> {
    bus.insert(device, base, len).map_err(|e| Error::Device { name, reason: e.to_string() })
}

/// Where the guest's serial output goes. A file Kestrel creates is its owner's alone (0600,
/// whatever the umask): the console shows what the guest prints, passwords and keys included.
fn serial_output(config: &SerialConfig) -> Result<Box<dyn Write + Send>> {
    Ok(match config {
        SerialConfig::Stdio => Box::new(std::io::stdout()),
        SerialConfig::None => Box::new(std::io::sink()),
        SerialConfig::File(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| Error::SerialOutput { path: path.clone(), source })?,
        ),
    })
}

/// Guest RAM below and above the 4 GiB line, as the CMOS memory registers report it.
fn split_at_gap(memory_bytes: u64) -> (u64, u64) {
    let below = memory_bytes.min(arch::layout::MMIO_GAP_START);
    (below, memory_bytes - below)
}

fn new_event_fd(name: &'static str) -> Result<EventFd> {
    EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Device { name, reason: e.to_string() })
}

fn clone_event_fd(fd: &EventFd, name: &'static str) -> Result<EventFd> {
    fd.try_clone().map_err(|e| Error::Device { name, reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_ged_event_bit_is_the_one_the_dsdt_tests() {
        assert_eq!(devices::acpi::POWER_BUTTON_EVENT, arch::acpi::GED_EVENT_POWER_BUTTON);
    }

    #[test]
    fn a_serial_output_file_is_the_owners_alone_whatever_the_umask() {
        let dir = std::env::temp_dir().join(format!("kestrel-serial-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("serial.log");
        let _ = std::fs::remove_file(&path);
        // SAFETY: umask only swaps the process's file mode mask; restored below. Under 022, the
        // usual default, a file created 0666 would be 0644: readable by everyone.
        let old = unsafe { libc::umask(0o022) };
        let output = serial_output(&SerialConfig::File(path.clone()));
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        output.unwrap().write_all(b"login: ").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
}
