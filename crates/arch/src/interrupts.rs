//! Local APIC wiring: LINT0 receives 8259-style external interrupts, LINT1 NMIs.

use std::ffi::c_char;

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

use crate::{Error, Result};

/// Register offsets in the APIC page.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
/// Delivery mode, bits 8–10 of an LVT entry.
const DELIVERY_MODE_MASK: u32 = 0x700;
const DELIVERY_MODE_NMI: u32 = 0x4 << 8;
const DELIVERY_MODE_EXTINT: u32 = 0x7 << 8;

/// Programs LINT0 as ExtINT and LINT1 as NMI, leaving their mask bits as KVM set them
/// (the guest unmasks what it uses).
///
/// The vCPU's local APIC must be in the kernel: create the VM's irqchip (full, or split
/// with `KVM_CAP_SPLIT_IRQCHIP`) before creating vCPUs.
pub fn set_lint(vcpu: &VcpuFd) -> Result<()> {
    let mut lapic = vcpu.get_lapic().map_err(Error::GetLapic)?;
    set_delivery_mode(&mut lapic, APIC_LVT0, DELIVERY_MODE_EXTINT);
    set_delivery_mode(&mut lapic, APIC_LVT1, DELIVERY_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(Error::SetLapic)
}

fn set_delivery_mode(lapic: &mut kvm_lapic_state, register: usize, mode: u32) {
    let value = (read_register(lapic, register) & !DELIVERY_MODE_MASK) | mode;
    write_register(lapic, register, value);
}

fn read_register(lapic: &kvm_lapic_state, register: usize) -> u32 {
    let mut bytes = [0u8; 4];
    for (byte, reg) in bytes.iter_mut().zip(&lapic.regs[register..]) {
        // The APIC page is exposed as C chars; reinterpret each as the raw byte it is.
        *byte = *reg as u8;
    }
    u32::from_le_bytes(bytes)
}

fn write_register(lapic: &mut kvm_lapic_state, register: usize, value: u32) {
    for (reg, byte) in lapic.regs[register..].iter_mut().zip(value.to_le_bytes()) {
        *reg = byte as c_char;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{kvm, test_vm};

    #[test]
    fn delivery_mode_replaces_only_bits_8_to_10() {
        let mut lapic = kvm_lapic_state::default();
        write_register(&mut lapic, APIC_LVT0, 0x0001_0700 | 0xFF);
        set_delivery_mode(&mut lapic, APIC_LVT0, DELIVERY_MODE_NMI);
        assert_eq!(read_register(&lapic, APIC_LVT0), 0x0001_04FF);
        assert_eq!(read_register(&lapic, APIC_LVT1), 0);
    }

    #[test]
    fn lints_are_programmed_in_kvm() {
        let Some(t) = test_vm() else { return };
        set_lint(&t.vcpu).unwrap();
        let lapic = t.vcpu.get_lapic().unwrap();
        assert_eq!(read_register(&lapic, APIC_LVT0) & DELIVERY_MODE_MASK, DELIVERY_MODE_EXTINT);
        assert_eq!(read_register(&lapic, APIC_LVT1) & DELIVERY_MODE_MASK, DELIVERY_MODE_NMI);
    }

    #[test]
    fn without_an_in_kernel_lapic_it_is_an_error() {
        let Some(kvm) = kvm() else { return };
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        assert!(matches!(set_lint(&vcpu), Err(Error::GetLapic(_))));
    }
}
