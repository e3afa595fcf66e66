//! Per-vCPU CPUID: what KVM supports, adjusted so every vCPU sees its own APIC id and one
//! consistent topology (one package, `num_cpus` cores, one thread per core).

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

use crate::layout::MAX_VCPUS;
use crate::{Error, Result};

const LEAF_VENDOR: u32 = 0x0;
const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMETERS: u32 = 0x4;
const LEAF_THERMAL_POWER: u32 = 0x6;
const LEAF_PERFORMANCE_MONITORING: u32 = 0xA;
const LEAF_TOPOLOGY: u32 = 0xB;
const LEAF_TOPOLOGY_V2: u32 = 0x1F;
const LEAF_TSC_CRYSTAL: u32 = 0x15;
const LEAF_PROCESSOR_FREQUENCY: u32 = 0x16;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_CACHE_TOPOLOGY: u32 = 0x8000_001D;
const LEAF_AMD_PROCESSOR_TOPOLOGY: u32 = 0x8000_001E;

/// Leaf 1 ECX: VMX (Intel hardware virtualization).
const FEATURES_ECX_VMX: u32 = 1 << 5;
/// Extended features: leaf 0x8000_0001, whose ECX bit 2 is SVM (AMD hardware virtualization).
const LEAF_EXTENDED_FEATURES: u32 = 0x8000_0001;
const EXTENDED_FEATURES_ECX_SVM: u32 = 1 << 2;
/// Leaf 1 EDX: the logical-processor count in EBX[23:16] is valid.
const FEATURES_EDX_HTT: u32 = 1 << 28;
/// Leaf 1 ECX: running under a hypervisor.
const FEATURES_ECX_HYPERVISOR: u32 = 1 << 31;

/// KVM's local APIC timer counts at 1 GHz. Linux takes the LAPIC timer rate from the crystal
/// clock of leaf 0x15, so the crystal reported must be exactly that.
const KVM_APIC_TIMER_HZ: u32 = 1_000_000_000;

/// Topology level types in ECX[15:8] of leaves 0xB and 0x1F.
const LEVEL_INVALID: u32 = 0;
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// EBX of leaf 0 for "GenuineIntel" and "AuthenticAMD"/"HygonGenuine".
const VENDOR_INTEL_EBX: u32 = u32::from_le_bytes(*b"Genu");
const VENDOR_AMD_EBX: u32 = u32::from_le_bytes(*b"Auth");
const VENDOR_HYGON_EBX: u32 = u32::from_le_bytes(*b"Hygo");

#[derive(Clone, Copy, PartialEq, Eq)]
enum Vendor {
    Intel,
    Amd,
    Other,
}

/// The topology every vCPU of the guest shares, seen from one of them.
#[derive(Clone, Copy)]
struct Topology {
    apic_id: u32,
    num_cpus: u32,
    /// Bits of the APIC id that number the cores: ceil(log2(num_cpus)).
    core_id_bits: u32,
}

/// CPUID for vCPU `vcpu_index` of `num_cpus`, from `supported` (KVM_GET_SUPPORTED_CPUID).
///
/// `tsc_khz` (KVM_GET_TSC_KHZ), when known, is reported on Intel through leaves 0x15 (TSC and
/// crystal ratio) and 0x16 (base frequency), as QEMU does: a guest then knows its TSC rate
/// without calibrating it against a PIT, which a VMM with a split irqchip does not emulate,
/// and without kvmclock (which a guest may have turned off).
///
/// Leaves not mentioned here, including KVM's own 0x4000_0000 range, stay as KVM reports
/// them. Fails if the topology leaves no longer fit a `kvm_cpuid2`.
pub fn filter_for_vcpu(
    supported: &CpuId,
    vcpu_index: u8,
    num_cpus: u8,
    tsc_khz: Option<u32>,
) -> Result<CpuId> {
    if num_cpus == 0 {
        return Err(Error::NoVcpus);
    }
    if num_cpus > MAX_VCPUS {
        return Err(Error::TooManyCpus(num_cpus));
    }
    if vcpu_index >= num_cpus {
        return Err(Error::VcpuIndex { index: vcpu_index, num_cpus });
    }
    let topology = Topology {
        apic_id: u32::from(vcpu_index),
        num_cpus: u32::from(num_cpus),
        core_id_bits: u32::BITS - (u32::from(num_cpus) - 1).leading_zeros(),
    };
    let entries = supported.as_slice();
    let vendor = vendor(entries);

    // The topology leaves are rebuilt rather than patched: KVM reports them with whatever
    // subleaves the host has (or zeroed), none of which describe this guest.
    let mut filtered: Vec<kvm_cpuid_entry2> = entries
        .iter()
        .filter(|e| !is_topology_leaf(e.function))
        .map(|&entry| adjust(entry, vendor, topology))
        .collect();
    if let (Vendor::Intel, Some(tsc_khz)) = (vendor, tsc_khz) {
        report_tsc_frequency(&mut filtered, tsc_khz);
    }
    for leaf in [LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2] {
        if entries.iter().any(|e| e.function == leaf) {
            filtered.extend(topology_leaf(leaf, topology));
        }
    }
    CpuId::from_entries(&filtered).map_err(|_| Error::CpuidTooManyEntries)
}

/// Fills leaves 0x15 and 0x16 (adding them, and raising the highest basic leaf, if KVM did not
/// list them): TSC = crystal (1 GHz) × EBX / EAX, so EBX / EAX ≈ tsc_khz / 10^6.
fn report_tsc_frequency(entries: &mut Vec<kvm_cpuid_entry2>, tsc_khz: u32) {
    // Linux computes `crystal_khz * EBX / EAX` in 32 bits, so EBX may be at most this.
    let max_numerator = u64::from(u32::MAX / (KVM_APIC_TIMER_HZ / 1000));
    let (numerator, denominator) = approximate_ratio(u64::from(tsc_khz), 1_000_000, max_numerator);
    let tsc = kvm_cpuid_entry2 {
        function: LEAF_TSC_CRYSTAL,
        eax: u32::try_from(denominator).unwrap_or(u32::MAX),
        ebx: u32::try_from(numerator).unwrap_or(0),
        ecx: KVM_APIC_TIMER_HZ,
        ..Default::default()
    };
    let tsc_mhz = tsc_khz / 1000;
    let frequency = kvm_cpuid_entry2 {
        function: LEAF_PROCESSOR_FREQUENCY,
        eax: tsc_mhz,
        ebx: tsc_mhz,
        ..Default::default()
    };
    for leaf in [tsc, frequency] {
        match entries.iter_mut().find(|e| e.function == leaf.function) {
            Some(existing) => *existing = kvm_cpuid_entry2 { flags: existing.flags, ..leaf },
            None => entries.push(leaf),
        }
    }
    if let Some(basic) = entries.iter_mut().find(|e| e.function == LEAF_VENDOR) {
        basic.eax = basic.eax.max(LEAF_PROCESSOR_FREQUENCY);
    }
}

/// The closest fraction p/q to n/d with p <= max_p: the last continued-fraction convergent that
/// fits (its error is below 1/q², a fraction of a ppm for any real TSC rate).
fn approximate_ratio(n: u64, d: u64, max_p: u64) -> (u64, u64) {
    // Convergents h/k, seeded with h(-2)/k(-2) = 0/1 and h(-1)/k(-1) = 1/0.
    let (mut previous, mut current) = ((0u64, 1u64), (1u64, 0u64));
    let (mut n, mut d) = (n, d);
    while d != 0 {
        let a = n / d;
        let next = (a * current.0 + previous.0, a * current.1 + previous.1);
        if next.0 > max_p {
            break;
        }
        (previous, current) = (current, next);
        (n, d) = (d, n % d);
    }
    current
}

fn vendor(entries: &[kvm_cpuid_entry2]) -> Vendor {
    match entries.iter().find(|e| e.function == LEAF_VENDOR) {
        Some(e) if e.ebx == VENDOR_INTEL_EBX => Vendor::Intel,
        Some(e) if e.ebx == VENDOR_AMD_EBX || e.ebx == VENDOR_HYGON_EBX => Vendor::Amd,
        _ => Vendor::Other,
    }
}

fn is_topology_leaf(function: u32) -> bool {
    function == LEAF_TOPOLOGY || function == LEAF_TOPOLOGY_V2
}

fn adjust(mut entry: kvm_cpuid_entry2, vendor: Vendor, topology: Topology) -> kvm_cpuid_entry2 {
    match (entry.function, vendor) {
        (LEAF_FEATURES, _) => adjust_features(&mut entry, topology),
        // No nested virtualization: a guest hypervisor's state (VMCS/VMCB) is not in a snapshot.
        (LEAF_EXTENDED_FEATURES, _) => entry.ecx &= !EXTENDED_FEATURES_ECX_SVM,
        (LEAF_CACHE_PARAMETERS, Vendor::Intel) if !is_end_of_caches(&entry) => {
            adjust_cache_sharing(&mut entry, topology);
            // Cores per package - 1, six bits wide.
            entry.eax = set_bits(entry.eax, 26, 6, topology.num_cpus - 1);
        }
        // No thermal/power management or PMU is emulated: advertise none.
        (LEAF_THERMAL_POWER | LEAF_PERFORMANCE_MONITORING, _) => {
            (entry.eax, entry.ebx, entry.ecx, entry.edx) = (0, 0, 0, 0);
        }
        (LEAF_AMD_SIZES, Vendor::Amd) => {
            // Cores per package - 1, and how many APIC id bits number them.
            entry.ecx = set_bits(entry.ecx, 0, 8, topology.num_cpus - 1);
            entry.ecx = set_bits(entry.ecx, 12, 4, topology.core_id_bits);
        }
        (LEAF_AMD_CACHE_TOPOLOGY, Vendor::Amd) if !is_end_of_caches(&entry) => {
            adjust_cache_sharing(&mut entry, topology);
        }
        (LEAF_AMD_PROCESSOR_TOPOLOGY, Vendor::Amd) => {
            // Extended APIC id; core id = APIC id with one thread per core; node 0 of 1.
            entry.eax = topology.apic_id;
            entry.ebx = topology.apic_id;
            entry.ecx = 0;
            entry.edx = 0;
        }
        _ => {}
    }
    entry
}

fn adjust_features(entry: &mut kvm_cpuid_entry2, topology: Topology) {
    entry.ebx = set_bits(entry.ebx, 24, 8, topology.apic_id);
    entry.ebx = set_bits(entry.ebx, 16, 8, topology.num_cpus);
    if topology.num_cpus > 1 {
        entry.edx |= FEATURES_EDX_HTT;
    } else {
        entry.edx &= !FEATURES_EDX_HTT;
    }
    // TSC-deadline (ECX bit 24) is left as KVM reports it: it is emulated by the in-kernel
    // local APIC whenever KVM says it is supported.
    entry.ecx |= FEATURES_ECX_HYPERVISOR;
    // No nested virtualization (see LEAF_EXTENDED_FEATURES in `adjust`).
    entry.ecx &= !FEATURES_ECX_VMX;
}

/// Leaf 4 (Intel) and 0x8000_001D (AMD) share the layout: cache type in EAX[4:0], level
/// in EAX[7:5], logical processors sharing the cache - 1 in EAX[25:14].
fn adjust_cache_sharing(entry: &mut kvm_cpuid_entry2, topology: Topology) {
    let level = (entry.eax >> 5) & 0x7;
    // L1 and L2 are per core (one thread each); L3 is shared by the whole package.
    let sharing = if level <= 2 { 1 } else { topology.num_cpus };
    entry.eax = set_bits(entry.eax, 14, 12, sharing - 1);
}

/// Cache type 0 ("no more caches") ends leaves 4 and 0x8000_001D; it must stay all-zero.
fn is_end_of_caches(entry: &kvm_cpuid_entry2) -> bool {
    entry.eax & 0x1F == 0
}

/// Subleaves of leaf 0xB or 0x1F: SMT level (one thread per core), core level
/// (`num_cpus` cores) and the terminating invalid level. EDX is the x2APIC id in each.
fn topology_leaf(function: u32, topology: Topology) -> [kvm_cpuid_entry2; 3] {
    let subleaf = |index: u32, shift: u32, count: u32, level: u32| kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax: shift,
        ebx: count,
        ecx: (level << 8) | index,
        edx: topology.apic_id,
        ..Default::default()
    };
    [
        subleaf(0, 0, 1, LEVEL_SMT),
        subleaf(1, topology.core_id_bits, topology.num_cpus, LEVEL_CORE),
        subleaf(2, 0, 0, LEVEL_INVALID),
    ]
}

/// `value` with the `width` bits starting at `shift` replaced by `field`, saturated to the
/// largest value the field holds (254 vCPUs overflow the six-bit core count of leaf 4).
fn set_bits(value: u32, shift: u32, width: u32, field: u32) -> u32 {
    let max = (1u32 << width) - 1;
    (value & !(max << shift)) | (field.min(max) << shift)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::kvm;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    /// A small Intel-like CPUID as KVM might report it.
    fn synthetic_intel() -> CpuId {
        let genuine_intel =
            [0x1F, u32::from_le_bytes(*b"Genu"), u32::from_le_bytes(*b"ntel"), u32::from_le_bytes(*b"ineI")];
        CpuId::from_entries(&[
            entry(0, 0, genuine_intel),
            entry(1, 0, [0x906EA, 0xFF00_0800, 1 << 24 | FEATURES_ECX_VMX, 0]),
            entry(4, 0, [0x0000_0121, 0, 0, 0]),
            entry(4, 1, [0x0000_0163, 0, 0, 0]),
            entry(4, 2, [0, 0, 0, 0]),
            entry(6, 0, [0x77, 0x2, 0x9, 0]),
            entry(0xA, 0, [0x0730_0404, 0, 0, 0x603]),
            entry(0xB, 0, [1, 2, 0x100, 7]),
            entry(0x1F, 0, [0, 0, 0, 0]),
            entry(0x4000_0000, 0, [0x4000_0001, 0x4B4D_564B, 0x564B_4D56, 0x4D]),
            entry(LEAF_EXTENDED_FEATURES, 0, [0, 0, 0x121 | EXTENDED_FEATURES_ECX_SVM, 0x2C10_0800]),
        ])
        .unwrap()
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("leaf {function:#x}.{index} missing"))
    }

    #[test]
    fn leaf_1_carries_apic_id_count_and_hypervisor_bit() {
        let cpuid = filter_for_vcpu(&synthetic_intel(), 3, 4, None).unwrap();
        let leaf = find(&cpuid, 1, 0);
        assert_eq!(leaf.ebx >> 24, 3);
        assert_eq!((leaf.ebx >> 16) & 0xFF, 4);
        assert_eq!(leaf.ebx & 0xFFFF, 0x0800, "CLFLUSH size kept");
        assert_ne!(leaf.edx & FEATURES_EDX_HTT, 0);
        assert_ne!(leaf.ecx & FEATURES_ECX_HYPERVISOR, 0);
        assert_ne!(leaf.ecx & (1 << 24), 0, "TSC deadline kept");
        assert_eq!(leaf.ecx & FEATURES_ECX_VMX, 0, "no nested virtualization");
        let extended = find(&cpuid, LEAF_EXTENDED_FEATURES, 0);
        assert_eq!(extended.ecx, 0x121, "SVM cleared, the rest kept");

        let single = filter_for_vcpu(&synthetic_intel(), 0, 1, None).unwrap();
        assert_eq!(find(&single, 1, 0).edx & FEATURES_EDX_HTT, 0);
    }

    #[test]
    fn topology_leaves_describe_the_guest() {
        let cpuid = filter_for_vcpu(&synthetic_intel(), 5, 6, None).unwrap();
        for leaf in [0xB, 0x1F] {
            let smt = find(&cpuid, leaf, 0);
            assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 5));
            let core = find(&cpuid, leaf, 1);
            assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 6, 0x201, 5));
            let end = find(&cpuid, leaf, 2);
            assert_eq!((end.eax, end.ebx, end.ecx, end.edx), (0, 0, 2, 5));
            assert_eq!(core.flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
        }
        assert_eq!(cpuid.as_slice().iter().filter(|e| e.function == 0xB).count(), 3);
    }

    #[test]
    fn cache_leaves_and_unemulated_features() {
        let cpuid = filter_for_vcpu(&synthetic_intel(), 0, 254, None).unwrap();
        let l1 = find(&cpuid, 4, 0);
        assert_eq!((l1.eax >> 14) & 0xFFF, 0);
        assert_eq!(l1.eax >> 26, 63, "core count saturates");
        assert_eq!(l1.eax & 0x3FFF, 0x121);
        let l3 = find(&cpuid, 4, 1);
        assert_eq!((l3.eax >> 14) & 0xFFF, 253);
        assert_eq!(find(&cpuid, 4, 2).eax, 0);
        for leaf in [6, 0xA] {
            let e = find(&cpuid, leaf, 0);
            assert_eq!((e.eax, e.ebx, e.ecx, e.edx), (0, 0, 0, 0));
        }
        let kvm_leaf = find(&cpuid, 0x4000_0000, 0);
        assert_eq!(kvm_leaf.ebx, 0x4B4D_564B);
    }

    #[test]
    fn tsc_frequency_is_reported_on_intel() {
        let cpuid = filter_for_vcpu(&synthetic_intel(), 0, 2, Some(2_300_000)).unwrap();
        let tsc = find(&cpuid, 0x15, 0);
        // LAPIC timer = crystal = KVM's 1 GHz; 2.3 GHz is exactly 23/10 of it.
        assert_eq!((tsc.eax, tsc.ebx, tsc.ecx), (10, 23, 1_000_000_000));
        let frequency = find(&cpuid, 0x16, 0);
        assert_eq!((frequency.eax, frequency.ebx), (2300, 2300));
        assert!(find(&cpuid, 0, 0).eax >= 0x16, "leaf 0x16 must be within the highest basic leaf");
        assert_eq!(cpuid.as_slice().iter().filter(|e| e.function == 0x15).count(), 1);
    }

    /// Linux's native_calibrate_tsc(), with its 32-bit arithmetic.
    fn linux_tsc_khz(leaf: kvm_cpuid_entry2) -> u32 {
        let crystal_khz = leaf.ecx / 1000;
        crystal_khz.checked_mul(leaf.ebx).expect("Linux's 32-bit product overflows") / leaf.eax
    }

    #[test]
    fn linux_derives_the_tsc_rate_within_a_ppm() {
        for tsc_khz in [2_192_000, 2_192_123, 2_300_000, 3_599_999, 4_999_999, 1_000_001, 800_000] {
            let cpuid = filter_for_vcpu(&synthetic_intel(), 0, 1, Some(tsc_khz)).unwrap();
            let derived = linux_tsc_khz(find(&cpuid, 0x15, 0));
            let error_ppm = (f64::from(derived) - f64::from(tsc_khz)).abs() / f64::from(tsc_khz) * 1e6;
            assert!(error_ppm < 1.0, "{tsc_khz} kHz reads as {derived} kHz ({error_ppm:.2} ppm)");
        }
    }

    #[test]
    fn tsc_frequency_is_left_alone_when_unknown() {
        let cpuid = filter_for_vcpu(&synthetic_intel(), 0, 1, None).unwrap();
        assert!(cpuid.as_slice().iter().all(|e| e.function != 0x15 && e.function != 0x16));
    }

    #[test]
    fn amd_topology() {
        let authentic_amd =
            [0x10, u32::from_le_bytes(*b"Auth"), u32::from_le_bytes(*b"cAMD"), u32::from_le_bytes(*b"enti")];
        let supported = CpuId::from_entries(&[
            entry(0, 0, authentic_amd),
            entry(1, 0, [0, 0, 0, 0]),
            entry(0x8000_0008, 0, [0x3030, 0, 0x0001_700F, 0]),
            entry(0x8000_001D, 0, [0x121, 0, 0, 0]),
            entry(0x8000_001D, 1, [0x163, 0, 0, 0]),
            entry(0x8000_001E, 0, [9, 0x100, 0x3, 0]),
        ])
        .unwrap();
        let cpuid = filter_for_vcpu(&supported, 2, 3, None).unwrap();
        let sizes = find(&cpuid, 0x8000_0008, 0);
        assert_eq!(sizes.ecx & 0xFF, 2);
        assert_eq!((sizes.ecx >> 12) & 0xF, 2);
        assert_eq!(sizes.ecx >> 16, 1, "upper bits kept");
        assert_eq!((find(&cpuid, 0x8000_001D, 1).eax >> 14) & 0xFFF, 2);
        let topo = find(&cpuid, 0x8000_001E, 0);
        assert_eq!((topo.eax, topo.ebx, topo.ecx), (2, 2, 0));
        assert!(cpuid.as_slice().iter().all(|e| e.function != 0xB));
    }

    #[test]
    fn bad_counts_are_errors() {
        let supported = synthetic_intel();
        assert!(matches!(filter_for_vcpu(&supported, 0, 0, None), Err(Error::NoVcpus)));
        assert!(matches!(filter_for_vcpu(&supported, 0, 255, None), Err(Error::TooManyCpus(255))));
        assert!(matches!(filter_for_vcpu(&supported, 2, 2, None), Err(Error::VcpuIndex { .. })));
    }

    #[test]
    fn real_supported_cpuid_is_accepted_by_kvm() {
        let Some(kvm) = kvm() else { return };
        let supported = kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES).unwrap();
        let vm = kvm.create_vm().unwrap();
        for index in 0..2u8 {
            let vcpu = vm.create_vcpu(u64::from(index)).unwrap();
            let cpuid = filter_for_vcpu(&supported, index, 2, None).unwrap();
            let leaf = find(&cpuid, 1, 0);
            assert_eq!(leaf.ebx >> 24, u32::from(index));
            assert_ne!(leaf.ecx & FEATURES_ECX_HYPERVISOR, 0);
            let kvm_leaf = find(&cpuid, 0x4000_0000, 0);
            assert_eq!(
                [kvm_leaf.ebx, kvm_leaf.ecx, kvm_leaf.edx].map(u32::to_le_bytes).concat(),
                b"KVMKVMKVM\0\0\0"
            );
            vcpu.set_cpuid2(&cpuid).unwrap();
        }
    }
}
