//! Fixtures for the tests that need `/dev/kvm`.

use kvm_bindings::{kvm_enable_cap, kvm_userspace_memory_region, KVM_CAP_SPLIT_IRQCHIP};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};

/// IOAPIC pins KVM routes when the IOAPIC lives in userspace.
const IOAPIC_PINS: u64 = 24;

/// Opens `/dev/kvm`. Without it, a test is skipped (`None`) unless `CI=true`, where the
/// missing device is a failure: CI must not pass by testing nothing.
pub(crate) fn kvm() -> Option<Kvm> {
    match Kvm::new() {
        Ok(kvm) => Some(kvm),
        Err(err) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true but /dev/kvm cannot be opened: {err}")
        }
        Err(err) => {
            eprintln!("skipping: /dev/kvm cannot be opened: {err}");
            None
        }
    }
}

/// A VM set up like Kestrel's (split irqchip: local APICs in KVM) with one vCPU.
pub(crate) struct TestVm {
    pub(crate) kvm: Kvm,
    pub(crate) vm: VmFd,
    pub(crate) vcpu: VcpuFd,
}

pub(crate) fn test_vm() -> Option<TestVm> {
    let kvm = kvm()?;
    let vm = kvm.create_vm().unwrap();
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS).unwrap();
    vm.set_tss_address(KVM_TSS_ADDRESS as usize).unwrap();
    let mut split_irqchip = kvm_enable_cap { cap: KVM_CAP_SPLIT_IRQCHIP, ..Default::default() };
    split_irqchip.args[0] = IOAPIC_PINS;
    vm.enable_cap(&split_irqchip).unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    Some(TestVm { kvm, vm, vcpu })
}

/// Registers every region of `mem` with the VM so the vCPU can run in it.
pub(crate) fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) {
    for (slot, region) in mem.iter().enumerate() {
        let host = region.get_host_address(Default::default()).unwrap();
        let region_info = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the mapping belongs to `mem`, which the callers keep alive for as long
        // as the VM exists (both live until the end of the test).
        unsafe { vm.set_user_memory_region(region_info) }.unwrap();
    }
}

/// Guest memory of `size` bytes laid out like Kestrel's.
pub(crate) fn guest_memory(size: u64) -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&crate::ram_regions(size)).unwrap()
}

/// Unused address in the fixtures' memory, for code under test.
pub(crate) const CODE_START: GuestAddress = GuestAddress(0x10_0000);
