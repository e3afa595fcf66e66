//! Applies a custom CPU template (`PUT /cpu-config`, [`model::cpu_template`]) to a vCPU at
//! boot, as Firecracker does: each CPUID modifier changes an entry KVM gives the guest (one
//! KVM does not give is an error, not a new leaf), each MSR modifier reads the vCPU's MSR,
//! puts its bits in and writes it back (an MSR KVM does not have, or a value it refuses, is an
//! error), and each capability to add must be one the host's KVM has.

use kvm_bindings::CpuId;
use kvm_ioctls::{Kvm, VcpuFd};
use model::cpu_template::{CpuTemplate, CpuidRegister, KvmCapability};

/// Why a template cannot be applied on this host.
#[derive(Debug, thiserror::Error)]
pub enum CpuTemplateError {
    #[error("The CPU template changes CPUID leaf {leaf:#x} subleaf {subleaf:#x}, which KVM does not give the guest on this host")]
    CpuidNotSupported { leaf: u32, subleaf: u32 },
    #[error("The CPU template changes MSR {0:#x}, which KVM does not have on this host")]
    MsrNotSupported(u32),
    #[error("The CPU template's value for MSR {addr:#x} ({value:#x}) is refused by KVM")]
    MsrRefused { addr: u32, value: u64 },
    #[error("The CPU template requires KVM capability {0}, which this host's KVM does not have")]
    MissingCapability(u32),
    #[error("cannot read or write the vCPU's MSRs: {0}")]
    Msrs(kvm_ioctls::Error),
}

/// Checks the capabilities the template adds. A removed one needs nothing: Kestrel requires no
/// fixed list of capabilities beyond what it uses, which it checks where it uses them.
pub fn check_capabilities(kvm: &Kvm, template: &CpuTemplate) -> Result<(), CpuTemplateError> {
    for capability in &template.kvm_capabilities {
        if let KvmCapability::Add(number) = *capability {
            // KVM_CHECK_EXTENSION answers 0 for an unknown number, too.
            if kvm.check_extension_raw(libc::c_ulong::from(number)) <= 0 {
                return Err(CpuTemplateError::MissingCapability(number));
            }
        }
    }
    Ok(())
}

/// The template's CPUID modifiers applied to a vCPU's CPUID (before `KVM_SET_CPUID2`).
pub fn apply_to_cpuid(cpuid: &mut CpuId, template: &CpuTemplate) -> Result<(), CpuTemplateError> {
    for leaf in &template.cpuid_modifiers {
        let entry = cpuid
            .as_mut_slice()
            .iter_mut()
            .find(|e| e.function == leaf.leaf && e.index == leaf.subleaf)
            .ok_or(CpuTemplateError::CpuidNotSupported { leaf: leaf.leaf, subleaf: leaf.subleaf })?;
        entry.flags = leaf.flags;
        for modifier in &leaf.modifiers {
            let register = match modifier.register {
                CpuidRegister::Eax => &mut entry.eax,
                CpuidRegister::Ebx => &mut entry.ebx,
                CpuidRegister::Ecx => &mut entry.ecx,
                CpuidRegister::Edx => &mut entry.edx,
            };
            // The map has no bits above 32 (its parser stops at 32).
            *register = modifier.bitmap.apply(u64::from(*register)) as u32;
        }
    }
    Ok(())
}

/// The template's MSR modifiers applied to a vCPU (after its boot MSRs are set).
pub fn apply_to_msrs(vcpu: &VcpuFd, template: &CpuTemplate) -> Result<(), CpuTemplateError> {
    for modifier in &template.msr_modifiers {
        let entry = kvm_bindings::kvm_msr_entry { index: modifier.addr, ..Default::default() };
        let mut msrs = kvm_bindings::Msrs::from_entries(&[entry])
            .map_err(|_| CpuTemplateError::MsrNotSupported(modifier.addr))?;
        // KVM_GET_MSRS stops at the first MSR it does not have: 0 read means this one.
        if vcpu.get_msrs(&mut msrs).map_err(CpuTemplateError::Msrs)? != 1 {
            return Err(CpuTemplateError::MsrNotSupported(modifier.addr));
        }
        let value = modifier.bitmap.apply(msrs.as_slice()[0].data);
        msrs.as_mut_slice()[0].data = value;
        if vcpu.set_msrs(&msrs).map_err(CpuTemplateError::Msrs)? != 1 {
            return Err(CpuTemplateError::MsrRefused { addr: modifier.addr, value });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(json: &str) -> CpuTemplate {
        serde_json::from_str(json).unwrap()
    }

    /// On a real vCPU: a CPUID leaf's bits and an MSR's bits are put in as the maps say and the
    /// others kept; a leaf, an MSR or a capability the host lacks is refused by name.
    #[test]
    fn a_template_changes_only_the_bits_it_names() {
        if !crate::testing::kvm_available() {
            return;
        }
        let kvm = Kvm::new().unwrap();
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let supported = kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES).unwrap();
        let leaf1 = |cpuid: &CpuId| *cpuid.as_slice().iter().find(|e| e.function == 1).unwrap();
        let before = leaf1(&supported);

        // Leaf 1: ECX bit 31 (hypervisor) cleared, EDX bit 0 set, EAX's low byte 0x42.
        let cpu = template(
            r#"{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0, "modifiers": [
                {"register": "ecx", "bitmap": "0b0xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"},
                {"register": "edx", "bitmap": "0b1"},
                {"register": "eax", "bitmap": "0b01000010"}]}],
                "msr_modifiers": [{"addr": "0x1a0", "bitmap": "0b1x"}],
                "kvm_capabilities": ["!9999", "1"]}"#,
        );
        check_capabilities(&kvm, &cpu).unwrap();
        let mut cpuid = supported.clone();
        apply_to_cpuid(&mut cpuid, &cpu).unwrap();
        let after = leaf1(&cpuid);
        assert_eq!(after.ecx, before.ecx & !(1 << 31));
        assert_eq!(after.edx, before.edx | 1);
        assert_eq!(after.eax, (before.eax & !0xFF) | 0x42);
        assert_eq!(after.ebx, before.ebx);

        vcpu.set_cpuid2(&cpuid).unwrap();
        arch::msrs::setup_msrs(&vcpu).unwrap();
        apply_to_msrs(&vcpu, &cpu).unwrap();
        let mut msrs = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
            index: 0x1a0,
            ..Default::default()
        }])
        .unwrap();
        assert_eq!(vcpu.get_msrs(&mut msrs).unwrap(), 1);
        // MISC_ENABLE: fast strings (bit 0, set at boot) kept, bit 1 set.
        assert_eq!(msrs.as_slice()[0].data & 0b11, 0b11);

        let missing_leaf = template(
            r#"{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x7", "flags": 0, "modifiers": []}]}"#,
        );
        let error = apply_to_cpuid(&mut supported.clone(), &missing_leaf).unwrap_err();
        assert!(matches!(error, CpuTemplateError::CpuidNotSupported { leaf: 1, subleaf: 7 }), "{error}");
        let missing_msr = template(r#"{"msr_modifiers": [{"addr": "0xdead0000", "bitmap": "0b1"}]}"#);
        let error = apply_to_msrs(&vcpu, &missing_msr).unwrap_err();
        assert!(matches!(error, CpuTemplateError::MsrNotSupported(0xdead_0000)), "{error}");
        let error = check_capabilities(&kvm, &template(r#"{"kvm_capabilities": ["99999"]}"#)).unwrap_err();
        assert!(matches!(error, CpuTemplateError::MissingCapability(99999)), "{error}");
    }
}
