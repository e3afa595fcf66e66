//! Model-specific registers every vCPU starts with.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

use crate::{Error, Result};

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1A0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2FF;
const MSR_STAR: u32 = 0xC000_0081;
const MSR_LSTAR: u32 = 0xC000_0082;
const MSR_CSTAR: u32 = 0xC000_0083;
const MSR_SYSCALL_MASK: u32 = 0xC000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xC000_0102;

/// Fast-string operations (REP MOVS/STOS) enabled, as firmware leaves it.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled with write-back as the default type, so guest RAM is cacheable.
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_TYPE_WRITE_BACK: u64 = 6;

/// Sets the boot MSRs: system-call entry points cleared (the kernel sets its own), TSC at
/// zero, fast strings on, MTRRs defaulting to write-back.
///
/// Call after `set_cpuid2`: KVM checks some MSR writes against the vCPU's CPUID.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<()> {
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(|_| Error::MsrsTooMany)?;
    let accepted = vcpu.set_msrs(&msrs).map_err(Error::SetMsrs)?;
    // KVM_SET_MSRS stops at the first MSR it rejects and reports how many it set.
    if accepted == entries.len() {
        Ok(())
    } else {
        Err(Error::MsrsNotAccepted { accepted, expected: entries.len() })
    }
}

fn boot_msr_entries() -> [kvm_msr_entry; 11] {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WRITE_BACK),
    ]
    .map(|(index, data)| kvm_msr_entry { index, data, ..Default::default() })
}

#[cfg(test)]
mod tests {
    use kvm_bindings::KVM_MAX_CPUID_ENTRIES;

    use super::*;
    use crate::cpuid::filter_for_vcpu;
    use crate::test_support::test_vm;

    #[test]
    fn kvm_accepts_and_keeps_every_boot_msr() {
        let Some(t) = test_vm() else { return };
        let supported = t.kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        t.vcpu.set_cpuid2(&filter_for_vcpu(&supported, 0, 1, None).unwrap()).unwrap();
        setup_msrs(&t.vcpu).unwrap();

        let expected = boot_msr_entries();
        let mut msrs = Msrs::from_entries(&expected.map(|e| kvm_msr_entry { data: u64::MAX, ..e })).unwrap();
        assert_eq!(t.vcpu.get_msrs(&mut msrs).unwrap(), expected.len());
        for (read, written) in msrs.as_slice().iter().zip(&expected) {
            if read.index == MSR_IA32_TSC {
                // The TSC has been counting since it was set.
                continue;
            }
            assert_eq!(read.data, written.data, "MSR {:#x}", read.index);
        }
    }
}
