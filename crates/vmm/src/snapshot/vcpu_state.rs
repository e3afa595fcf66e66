//! One vCPU's architectural state as KVM holds it: read from a parked vCPU, written into a fresh one
//! before it first runs.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

use super::SnapshotError;

/// Everything KVM keeps for one vCPU that the guest can observe.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub msrs: Vec<kvm_msr_entry>,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debug_regs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    pub events: kvm_vcpu_events,
    /// The guest's TSC rate; a restore on a host with another rate scales the guest's TSC to it.
    pub tsc_khz: Option<u32>,
}

fn kvm_failed(call: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
    move |source| SnapshotError::Kvm { call, source }
}

/// Reads the state of a vCPU that is out of KVM_RUN with no exit pending. `msr_indices` are the
/// MSRs to save (KVM_GET_MSR_INDEX_LIST: those KVM saves and emulates).
pub fn save(vcpu: &VcpuFd, msr_indices: &[u32]) -> Result<VcpuState, SnapshotError> {
    // The MP state first: reading it makes KVM process pending INIT/SIPI events, so the rest is
    // read after them (as KVM's own documentation asks of migration).
    let mp_state = vcpu.get_mp_state().map_err(kvm_failed("KVM_GET_MP_STATE"))?;
    let cpuid = vcpu.get_cpuid2(KVM_MAX_CPUID_ENTRIES).map_err(kvm_failed("KVM_GET_CPUID2"))?;
    Ok(VcpuState {
        cpuid: cpuid.as_slice().to_vec(),
        msrs: save_msrs(vcpu, msr_indices)?,
        regs: vcpu.get_regs().map_err(kvm_failed("KVM_GET_REGS"))?,
        sregs: vcpu.get_sregs().map_err(kvm_failed("KVM_GET_SREGS"))?,
        xsave: vcpu.get_xsave().map_err(kvm_failed("KVM_GET_XSAVE"))?,
        xcrs: vcpu.get_xcrs().map_err(kvm_failed("KVM_GET_XCRS"))?,
        debug_regs: vcpu.get_debug_regs().map_err(kvm_failed("KVM_GET_DEBUGREGS"))?,
        lapic: vcpu.get_lapic().map_err(kvm_failed("KVM_GET_LAPIC"))?,
        mp_state,
        events: vcpu.get_vcpu_events().map_err(kvm_failed("KVM_GET_VCPU_EVENTS"))?,
        tsc_khz: vcpu.get_tsc_khz().ok().filter(|&khz| khz > 0),
    })
}

/// Reads every listed MSR the vCPU has. KVM_GET_MSRS stops at the first MSR it cannot read (one
/// the vCPU's CPUID does not expose, say); that one is dropped and the rest read again.
fn save_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, SnapshotError> {
    let mut wanted: Vec<kvm_msr_entry> =
        indices.iter().map(|&index| kvm_msr_entry { index, ..Default::default() }).collect();
    let mut saved = Vec::with_capacity(wanted.len());
    while !wanted.is_empty() {
        let mut msrs = Msrs::from_entries(&wanted).map_err(|_| SnapshotError::TooManyMsrs(wanted.len()))?;
        let read = vcpu.get_msrs(&mut msrs).map_err(kvm_failed("KVM_GET_MSRS"))?;
        saved.extend_from_slice(&msrs.as_slice()[..read]);
        // Skip the MSR that stopped KVM (if any) and go on after it.
        wanted.drain(..(read + 1).min(wanted.len()));
    }
    Ok(saved)
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// The saved MSRs in the order and form KVM takes them back: the TSC-deadline MSR after the TSC
/// (KVM checks a deadline against the TSC as set), and a deadline of 0 (timer disarmed, or
/// saved just as it fired) replaced by the saved TSC, so that a guest waiting for a timer
/// interrupt gets one at once instead of never (Firecracker found the same).
fn msrs_to_restore(saved: &[kvm_msr_entry]) -> Vec<kvm_msr_entry> {
    let tsc = saved.iter().find(|msr| msr.index == MSR_IA32_TSC).map(|msr| msr.data);
    let mut entries: Vec<kvm_msr_entry> =
        saved.iter().copied().filter(|msr| msr.index != MSR_IA32_TSC_DEADLINE).collect();
    if let Some(mut deadline) = saved.iter().copied().find(|msr| msr.index == MSR_IA32_TSC_DEADLINE) {
        if deadline.data == 0 {
            deadline.data = tsc.unwrap_or(0);
        }
        entries.push(deadline);
    }
    entries
}

/// Writes a saved state into a vCPU that has not run yet, in the order KVM needs: CPUID before the
/// MSRs it gates, the local APIC before the MSRs and events that refer to it (TSC deadline, a
/// pending interrupt).
pub fn restore(vcpu: &VcpuFd, state: &VcpuState) -> Result<(), SnapshotError> {
    let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| SnapshotError::Invalid("CPUID entries"))?;
    vcpu.set_cpuid2(&cpuid).map_err(kvm_failed("KVM_SET_CPUID2"))?;
    if let Some(khz) = state.tsc_khz {
        if vcpu.get_tsc_khz().ok() != Some(khz) {
            vcpu.set_tsc_khz(khz).map_err(kvm_failed("KVM_SET_TSC_KHZ"))?;
        }
    }
    vcpu.set_mp_state(state.mp_state).map_err(kvm_failed("KVM_SET_MP_STATE"))?;
    vcpu.set_regs(&state.regs).map_err(kvm_failed("KVM_SET_REGS"))?;
    vcpu.set_sregs(&state.sregs).map_err(kvm_failed("KVM_SET_SREGS"))?;
    // SAFETY: `xsave` is the plain 4 KiB KVM_GET_XSAVE area read from a vCPU; KVM_SET_XSAVE reads
    // exactly that much from it.
    unsafe { vcpu.set_xsave(&state.xsave) }.map_err(kvm_failed("KVM_SET_XSAVE"))?;
    vcpu.set_xcrs(&state.xcrs).map_err(kvm_failed("KVM_SET_XCRS"))?;
    vcpu.set_debug_regs(&state.debug_regs).map_err(kvm_failed("KVM_SET_DEBUGREGS"))?;
    vcpu.set_lapic(&state.lapic).map_err(kvm_failed("KVM_SET_LAPIC"))?;
    let entries = msrs_to_restore(&state.msrs);
    let msrs = Msrs::from_entries(&entries).map_err(|_| SnapshotError::TooManyMsrs(entries.len()))?;
    let written = vcpu.set_msrs(&msrs).map_err(kvm_failed("KVM_SET_MSRS"))?;
    if written != entries.len() {
        let refused = entries.get(written).map_or(0, |msr| msr.index);
        return Err(SnapshotError::MsrRefused(refused));
    }
    vcpu.set_vcpu_events(&state.events).map_err(kvm_failed("KVM_SET_VCPU_EVENTS"))?;
    // Tells a kvmclock guest that it was stopped, so its watchdogs do not report the time the
    // snapshot sat on disk as a soft lockup. Fails (harmlessly) for a guest without kvmclock.
    if let Err(e) = vcpu.kvmclock_ctrl() {
        tracing::debug!("KVM_KVMCLOCK_CTRL: {e} (the guest does not use kvmclock)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msr(index: u32, data: u64) -> kvm_msr_entry {
        kvm_msr_entry { index, data, ..Default::default() }
    }

    #[test]
    fn a_zero_tsc_deadline_becomes_the_tsc_and_goes_after_it() {
        let saved = [msr(MSR_IA32_TSC_DEADLINE, 0), msr(0x174, 8), msr(MSR_IA32_TSC, 12345)];
        let restored = msrs_to_restore(&saved);
        let order: Vec<(u32, u64)> = restored.iter().map(|m| (m.index, m.data)).collect();
        assert_eq!(order, [(0x174, 8), (MSR_IA32_TSC, 12345), (MSR_IA32_TSC_DEADLINE, 12345)]);
        // An armed deadline is kept as it was.
        let armed = msrs_to_restore(&[msr(MSR_IA32_TSC_DEADLINE, 999), msr(MSR_IA32_TSC, 5)]);
        assert_eq!(armed[1].data, 999);
    }
}
