//! What each interrupt-controller option costs to create and to tear down, in this process.
//!
//! Each sample is KVM_CREATE_VM, the option, KVM_CREATE_VCPU (timed together as "create"), then
//! closing the vCPU and VM fds (timed as "teardown"; KVM destroys the VM when its last fd closes).

use std::time::{Duration, Instant};

use kvm_bindings::{kvm_enable_cap, kvm_pit_config, KVM_CAP_SPLIT_IRQCHIP, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};

use crate::Error;

/// IOAPIC pins reserved for userspace with the split irqchip, as Kestrel asks for.
const SPLIT_IRQCHIP_PINS: u64 = 24;

/// The interrupt-controller setups compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    None,
    Irqchip,
    IrqchipPit,
    Split,
}

impl Variant {
    pub const ALL: [Variant; 4] = [Variant::None, Variant::Irqchip, Variant::IrqchipPit, Variant::Split];

    pub fn label(self) -> &'static str {
        match self {
            Variant::None => "no irqchip (floor)",
            Variant::Irqchip => "KVM_CREATE_IRQCHIP (full in-kernel)",
            Variant::IrqchipPit => "KVM_CREATE_IRQCHIP + KVM_CREATE_PIT2",
            Variant::Split => "KVM_ENABLE_CAP(SPLIT_IRQCHIP, 24) (Kestrel)",
        }
    }

    fn apply(self, vm: &VmFd) -> Result<(), Error> {
        let kvm = |call| move |e| Error::Kvm(call, e);
        match self {
            Variant::None => {}
            Variant::Irqchip => vm.create_irq_chip().map_err(kvm("KVM_CREATE_IRQCHIP"))?,
            Variant::IrqchipPit => {
                vm.create_irq_chip().map_err(kvm("KVM_CREATE_IRQCHIP"))?;
                let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
                vm.create_pit2(pit).map_err(kvm("KVM_CREATE_PIT2"))?;
            }
            Variant::Split => {
                let mut cap = kvm_enable_cap { cap: KVM_CAP_SPLIT_IRQCHIP, ..Default::default() };
                cap.args[0] = SPLIT_IRQCHIP_PINS;
                vm.enable_cap(&cap).map_err(kvm("KVM_ENABLE_CAP(SPLIT_IRQCHIP)"))?;
            }
        }
        Ok(())
    }
}

/// One create/teardown sample.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub create: Duration,
    pub teardown: Duration,
}

/// Times one VM with `variant`: create (VM, option, one vCPU) and teardown (close both fds).
pub fn sample(kvm: &Kvm, variant: Variant) -> Result<Sample, Error> {
    let start = Instant::now();
    let vm = kvm.create_vm().map_err(|e| Error::Kvm("KVM_CREATE_VM", e))?;
    variant.apply(&vm)?;
    let vcpu = vm.create_vcpu(0).map_err(|e| Error::Kvm("KVM_CREATE_VCPU", e))?;
    let created = Instant::now();
    drop(vcpu);
    drop(vm);
    let done = Instant::now();
    Ok(Sample { create: created - start, teardown: done - created })
}
