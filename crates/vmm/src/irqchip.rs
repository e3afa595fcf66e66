//! Interrupt controllers: local APICs in KVM, the IOAPIC in userspace (KVM's "split irqchip").
//!
//! Measured with `kestrel-bench --irqchip-costs` (docs/benchmarks.md): KVM's full in-kernel irqchip
//! adds ~15 ms to VM teardown and an in-kernel PIT another ~4 ms to creation and ~5 ms to teardown,
//! while the split irqchip costs ~0.1 ms each way. The IOAPIC is a simple register file, so keeping
//! it in userspace costs nothing at run time: it turns a pin into an MSI that KVM delivers to the
//! in-kernel LAPICs. Without a PIT, guests learn the TSC rate from CPUID (see arch::cpuid).

use std::sync::{Arc, Mutex};

use devices::ioapic::{MsiMessage, MsiSink, NUM_PINS};
use kvm_bindings::{
    kvm_enable_cap, kvm_irq_routing_entry, kvm_msi, KvmIrqRouting, KVM_CAP_SPLIT_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;

use crate::{kvm_err, Error, Result};

/// Puts the local APICs in KVM and leaves the IOAPIC (and no PIC or PIT) to userspace.
/// Must be called before any vCPU is created.
pub fn create_split_irqchip(vm: &VmFd) -> Result<()> {
    if !vm.check_extension(kvm_ioctls::Cap::SplitIrqchip) {
        return Err(Error::KvmCapability("KVM_CAP_SPLIT_IRQCHIP"));
    }
    let mut cap = kvm_enable_cap { cap: KVM_CAP_SPLIT_IRQCHIP, ..Default::default() };
    cap.args[0] = NUM_PINS as u64;
    vm.enable_cap(&cap).map_err(kvm_err("KVM_ENABLE_CAP(SPLIT_IRQCHIP)"))
}

/// Delivers the IOAPIC's messages to the in-kernel local APICs, and mirrors its redirection table
/// into KVM's GSI routes (GSI n = pin n). KVM needs those routes to know which vectors are
/// level-triggered, so that the guest's EOI for them exits to userspace (KVM_EXIT_IOAPIC_EOI), and
/// they let an irqfd raise a pin without a trip through userspace.
pub struct KvmMsiSink {
    vm: Arc<VmFd>,
    routes: Mutex<[Option<MsiMessage>; NUM_PINS]>,
}

impl KvmMsiSink {
    pub fn new(vm: Arc<VmFd>) -> Self {
        KvmMsiSink { vm, routes: Mutex::new([None; NUM_PINS]) }
    }
}

impl MsiSink for KvmMsiSink {
    fn send_msi(&self, msg: MsiMessage) -> std::io::Result<()> {
        let msi = kvm_msi {
            address_lo: msg.address_lo,
            address_hi: msg.address_hi,
            data: msg.data,
            ..Default::default()
        };
        self.vm.signal_msi(msi).map(|_| ()).map_err(std::io::Error::from)
    }

    fn redirection_changed(&self, pin: usize, route: Option<MsiMessage>) -> std::io::Result<()> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let slot =
            routes.get_mut(pin).ok_or_else(|| std::io::Error::other(format!("no IOAPIC pin {pin}")))?;
        *slot = route;
        let entries: Vec<kvm_irq_routing_entry> = routes
            .iter()
            .enumerate()
            .filter_map(|(gsi, msg)| msg.map(|msg| msi_route(gsi as u32, msg)))
            .collect();
        let mut table = KvmIrqRouting::new(0).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        for entry in entries {
            table.push(entry).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        }
        self.vm.set_gsi_routing(&table).map_err(std::io::Error::from)
    }
}

fn msi_route(gsi: u32, msg: MsiMessage) -> kvm_irq_routing_entry {
    let mut entry = kvm_irq_routing_entry { gsi, type_: KVM_IRQ_ROUTING_MSI, ..Default::default() };
    // `msi` is the union member KVM reads for KVM_IRQ_ROUTING_MSI entries.
    entry.u.msi.address_lo = msg.address_lo;
    entry.u.msi.address_hi = msg.address_hi;
    entry.u.msi.data = msg.data;
    entry
}
