//! Interrupt controllers: local APICs in KVM, the IOAPIC in userspace (KVM's "split irqchip").
//!
//! Measured with `kestrel-bench --irqchip-costs` (docs/benchmarks.md): KVM's full in-kernel irqchip
//! adds ~15 ms to VM teardown and an in-kernel PIT another ~4 ms to creation and ~5 ms to teardown,
//! while the split irqchip costs ~0.1 ms each way. The IOAPIC is a simple register file, so keeping
//! it in userspace costs nothing at run time: it turns a pin into an MSI that KVM delivers to the
//! in-kernel LAPICs. Without a PIT, guests learn the TSC rate from CPUID (see arch::cpuid).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use devices::ioapic::{MsiMessage, MsiSink, NUM_PINS};
use devices::pci::msix::MsixDelivery;
use kvm_bindings::{
    kvm_enable_cap, kvm_irq_routing_entry, kvm_msi, KvmIrqRouting, KVM_CAP_SPLIT_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::{kvm_err, Error, Result};

/// GSIs KVM routes (KVM_MAX_IRQ_ROUTES).
const MAX_GSI_ROUTES: u32 = 4096;

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

/// KVM's GSI routing table, which KVM_SET_GSI_ROUTING replaces as a whole: the one owner of every
/// route, for the IOAPIC's pins (GSIs 0–23) and the MSI-X vectors of PCI devices (GSIs from 24).
pub struct GsiRouting {
    vm: Arc<VmFd>,
    table: Mutex<RoutingTable>,
}

struct RoutingTable {
    routes: BTreeMap<u32, MsiMessage>,
    next_free: u32,
}

impl GsiRouting {
    pub fn new(vm: Arc<VmFd>) -> Self {
        GsiRouting {
            vm,
            table: Mutex::new(RoutingTable { routes: BTreeMap::new(), next_free: NUM_PINS as u32 }),
        }
    }

    /// A GSI above the IOAPIC's, for one MSI-X vector.
    pub fn allocate(&self) -> std::io::Result<u32> {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if table.next_free >= MAX_GSI_ROUTES {
            return Err(std::io::Error::other(format!("all {MAX_GSI_ROUTES} GSIs are in use")));
        }
        table.next_free += 1;
        Ok(table.next_free - 1)
    }

    /// Makes `gsi` deliver `route`, or nothing (None), and hands the whole table to KVM. The change
    /// is kept only if KVM accepts it, so one refused route cannot poison every later update. A
    /// route that is already there is not handed over again: each KVM_SET_GSI_ROUTING waits for
    /// an RCU grace period (a restore re-sends all 24 IOAPIC pins, most of them still masked).
    pub fn set(&self, gsi: u32, route: Option<MsiMessage>) -> std::io::Result<()> {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if table.routes.get(&gsi) == route.as_ref() {
            return Ok(());
        }
        let mut routes = table.routes.clone();
        match route {
            Some(msg) => routes.insert(gsi, msg),
            None => routes.remove(&gsi),
        };
        let mut kvm_table = KvmIrqRouting::new(0).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        for (&gsi, &msg) in &routes {
            kvm_table.push(msi_route(gsi, msg)).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        }
        // Set while the lock is held, so two updates cannot reach KVM in the wrong order.
        self.vm.set_gsi_routing(&kvm_table).map_err(std::io::Error::from)?;
        table.routes = routes;
        Ok(())
    }
}

/// Delivers the IOAPIC's messages to the in-kernel local APICs, and mirrors its redirection table
/// into KVM's GSI routes (GSI n = pin n). KVM needs those routes to know which vectors are
/// level-triggered, so that the guest's EOI for them exits to userspace (KVM_EXIT_IOAPIC_EOI), and
/// they let an irqfd raise a pin without a trip through userspace.
pub struct KvmMsiSink {
    vm: Arc<VmFd>,
    routing: Arc<GsiRouting>,
    unmask_hooks: Mutex<Vec<(usize, UnmaskHook)>>,
}

/// Run when the guest unmasks a pin: KVM drops irqfd signals while a pin has no route, so a device
/// behind an irqfd must raise its line again if it still has something to report. Runs with the
/// IOAPIC locked: it may only signal, never lock a device.
pub type UnmaskHook = Box<dyn Fn() -> std::io::Result<()> + Send + Sync>;

impl KvmMsiSink {
    pub fn new(vm: Arc<VmFd>, routing: Arc<GsiRouting>) -> Self {
        KvmMsiSink { vm, routing, unmask_hooks: Mutex::new(Vec::new()) }
    }

    /// Runs `hook` each time the guest programs `pin` unmasked.
    pub fn on_unmask(&self, pin: usize, hook: UnmaskHook) {
        self.unmask_hooks.lock().unwrap_or_else(|e| e.into_inner()).push((pin, hook));
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
        if pin >= NUM_PINS {
            return Err(std::io::Error::other(format!("no IOAPIC pin {pin}")));
        }
        self.routing.set(pin as u32, route)?;
        if route.is_some() {
            let hooks = self.unmask_hooks.lock().unwrap_or_else(|e| e.into_inner());
            for (_, hook) in hooks.iter().filter(|(hooked, _)| *hooked == pin) {
                hook()?;
            }
        }
        Ok(())
    }
}

/// An MSI-X vector in KVM: its own GSI, whose route is the vector's message, and an irqfd on that
/// GSI, so triggering the vector is one eventfd write and KVM injects the interrupt.
pub struct KvmMsixVectors {
    routing: Arc<GsiRouting>,
    vectors: Vec<(u32, EventFd)>,
}

impl KvmMsixVectors {
    /// Allocates `count` GSIs and binds an irqfd to each.
    pub fn new(vm: &VmFd, routing: Arc<GsiRouting>, count: u16) -> Result<Self> {
        let vectors = (0..count)
            .map(|_| {
                let gsi =
                    routing.allocate().map_err(|e| Error::Device { name: "MSI-X", reason: e.to_string() })?;
                let event = EventFd::new(EFD_NONBLOCK)
                    .map_err(|e| Error::Device { name: "MSI-X", reason: e.to_string() })?;
                vm.register_irqfd(&event, gsi).map_err(kvm_err("KVM_IRQFD"))?;
                Ok((gsi, event))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KvmMsixVectors { routing, vectors })
    }

    fn vector(&self, vector: u16) -> std::io::Result<&(u32, EventFd)> {
        self.vectors
            .get(usize::from(vector))
            .ok_or_else(|| std::io::Error::other(format!("no MSI-X vector {vector}")))
    }
}

impl MsixDelivery for KvmMsixVectors {
    fn set_route(&self, vector: u16, message: MsiMessage) -> std::io::Result<()> {
        self.routing.set(self.vector(vector)?.0, Some(message))
    }

    fn trigger(&self, vector: u16) -> std::io::Result<()> {
        self.vector(vector)?.1.write(1)
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A VM with the split irqchip; on CI a missing /dev/kvm fails the test instead of skipping it.
    fn split_irqchip_vm() -> Option<Arc<VmFd>> {
        if !crate::testing::kvm_available() {
            return None;
        }
        let vm = Arc::new(kvm_ioctls::Kvm::new().unwrap().create_vm().unwrap());
        create_split_irqchip(&vm).unwrap();
        Some(vm)
    }

    #[test]
    fn unmasking_a_pin_runs_its_hooks_and_masking_does_not() {
        let Some(vm) = split_irqchip_vm() else { return };
        let sink = KvmMsiSink::new(vm.clone(), Arc::new(GsiRouting::new(vm)));
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        sink.on_unmask(
            5,
            Box::new(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
        );
        let msg = MsiMessage { address_lo: 0xfee0_0000, address_hi: 0, data: 0x31 };
        sink.redirection_changed(5, None).unwrap();
        sink.redirection_changed(6, Some(msg)).unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 0, "masking pin 5 or unmasking another pin");
        sink.redirection_changed(5, Some(msg)).unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
