//! The one place that assembles a VM: KVM, memory, boot image, devices, vCPUs.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};

use arch::BootEntry;
use devices::ioapic::{Ioapic, IoapicPin};
use devices::legacy::{Cmos, PowerManagement, Serial, I8042};
use devices::{Bus, BusDevice};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::{SerialConfig, VirtioTransport, VmConfig};
use crate::irqchip::{self, GsiRouting, KvmMsiSink};
use crate::metrics::VcpuMetrics;
use crate::pci_devices::PciBus;
use crate::vcpu::VcpuShared;
use crate::vm::Vm;
use crate::{kernel, kvm_err, memory, virtio_devices, Error, Result};

/// The KVM device node.
const KVM_PATH: &str = "/dev/kvm";

/// Where the legacy devices live in port space, and the IOAPIC pin of each interrupt.
const COM1_PORT: u64 = 0x3f8;
const COM1_IRQ: usize = 4;
const I8042_PORT: u64 = 0x60;
const CMOS_PORT: u64 = 0x70;
const POWER_PORT: u64 = 0x600;

/// Builds a VM ready to run, or says which part of the configuration cannot be honoured.
pub fn build(config: &VmConfig) -> Result<Vm> {
    check_vcpu_count(config.vcpus)?;
    // Everything that can be checked without KVM is checked first, so the error names the real
    // problem even on a host without KVM.
    let boot_files = kernel::BootFiles::open(config)?;
    let memory = memory::create_guest_memory(config.memory_bytes)?;
    let mmio_slots = match config.transport {
        VirtioTransport::Mmio => virtio_devices::mmio_slots(config.virtio.len())?,
        // PCI devices are found by probing the bus, not declared on the command line.
        VirtioTransport::Pci => Vec::new(),
    };
    let entry =
        kernel::load_boot_image(config, boot_files, &memory, &virtio_devices::mmio_cmdline(&mmio_slots))?;

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

    memory::register_with_kvm(&vm, &memory)?;

    let devices = LegacyDevices::create(config, &vm)?;
    let mut pci = PciBus::create(&devices.pio_bus, &devices.mmio_bus)?;
    let mut controls = virtio_devices::VirtioControls::default();
    match config.transport {
        VirtioTransport::Mmio => {
            virtio_devices::attach_all(
                &vm,
                &devices.mmio_bus,
                &devices.msi_sink,
                &memory,
                &config.virtio,
                &mmio_slots,
                &mut controls,
            )?;
        }
        VirtioTransport::Pci => {
            pci.attach_virtio(&vm, &devices.routing, &memory, &config.virtio, &mut controls)?
        }
    }
    let (ended_sender, ended_receiver) = mpsc::channel();
    let ended_event = new_event_fd("vCPU exit notifier")?;
    let vcpu_metrics: Arc<[VcpuMetrics]> = (0..config.vcpus).map(|_| VcpuMetrics::default()).collect();
    let shared = Arc::new(
        VcpuShared::new(
            devices.pio_bus.clone(),
            devices.mmio_bus.clone(),
            devices.ioapic.clone(),
            ended_sender,
            clone_event_fd(&ended_event, "vCPU exit notifier")?,
        )
        .with_metrics(vcpu_metrics),
    );
    let vcpus = create_vcpus(&kvm, &vm, &memory, config.vcpus, entry)?;
    let handles = devices.into_handles(config, controls);
    Ok(Vm::new(vm, memory, vcpus, shared, ended_receiver, ended_event, handles))
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
fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    memory: &GuestMemoryMmap,
    count: u8,
    entry: BootEntry,
) -> Result<Vec<VcpuFd>> {
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
    reset: EventFd,
    power_off: EventFd,
}

/// What the VMM's event loop keeps of the devices.
pub struct DeviceHandles {
    pub serial: Arc<Mutex<Serial>>,
    /// Whether the host's stdin feeds the guest's serial input.
    pub serial_input: bool,
    pub reset: EventFd,
    pub power_off: EventFd,
    /// Handles on the virtio devices the VMM drives while the guest runs.
    pub virtio: virtio_devices::VirtioControls,
}

impl LegacyDevices {
    fn create(config: &VmConfig, vm: &Arc<VmFd>) -> Result<LegacyDevices> {
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
        let serial = Serial::new(Arc::new(serial_irq), serial_output(&config.serial)?)
            .map_err(|e| Error::Device { name: "serial (COM1)", reason: e.to_string() })?;
        let serial = Arc::new(Mutex::new(serial));
        insert(&pio_bus, serial.clone(), COM1_PORT, 8, "serial (COM1)")?;

        let reset = new_event_fd("i8042 reset line")?;
        let i8042 = Arc::new(Mutex::new(I8042::new(clone_event_fd(&reset, "i8042 reset line")?)));
        insert(&pio_bus, i8042, I8042_PORT, 5, "i8042")?;

        let (below_4g, above_4g) = split_at_gap(config.memory_bytes);
        insert(&pio_bus, Arc::new(Mutex::new(Cmos::new(below_4g, above_4g))), CMOS_PORT, 2, "CMOS RTC")?;

        let power_off = new_event_fd("power-off line")?;
        let power = PowerManagement::new(clone_event_fd(&power_off, "power-off line")?);
        insert(&pio_bus, Arc::new(Mutex::new(power)), POWER_PORT, 1, "power management")?;

        Ok(LegacyDevices { pio_bus, mmio_bus, ioapic, routing, msi_sink, serial, reset, power_off })
    }

    fn into_handles(self, config: &VmConfig, virtio: virtio_devices::VirtioControls) -> DeviceHandles {
        DeviceHandles {
            serial: self.serial,
            serial_input: config.serial == SerialConfig::Stdio,
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

fn serial_output(config: &SerialConfig) -> Result<Box<dyn Write + Send>> {
    Ok(match config {
        SerialConfig::Stdio => Box::new(std::io::stdout()),
        SerialConfig::None => Box::new(std::io::sink()),
        SerialConfig::File(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
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
