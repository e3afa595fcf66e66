//! Guest RAM: anonymous host memory, laid out around the MMIO gap and registered with KVM.

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::VmFd;
use virtio::GuestRam;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::{kvm_err, Error, Result};

const PAGE_SIZE: u64 = 4096;

/// Checks the requested size against the boot layout and the host, then maps guest RAM.
///
/// The host check is against physical RAM rather than what `mmap` would accept: anonymous mappings
/// are lazily backed, so an oversized guest would otherwise start and be OOM-killed later, mid-run.
pub fn create_guest_memory(bytes: u64) -> Result<GuestRam> {
    check_size(bytes)?;
    GuestRam::from_ranges(&arch::ram_regions(bytes))
        .map_err(|e| Error::MemoryAllocation { bytes, reason: e.to_string() })
}

/// Checks a guest RAM size against the boot layout and the host (see [`create_guest_memory`]).
pub fn check_size(bytes: u64) -> Result<()> {
    if bytes < arch::layout::MIN_MEMORY {
        return Err(Error::MemoryTooSmall { requested: bytes, minimum: arch::layout::MIN_MEMORY });
    }
    if !bytes.is_multiple_of(PAGE_SIZE) {
        return Err(Error::MemoryNotPageAligned(bytes));
    }
    if let Some(host) = host_total_memory() {
        if bytes > host {
            return Err(Error::MemoryExceedsHost { requested: bytes, host });
        }
    }
    Ok(())
}

/// Makes every region of guest RAM visible to the guest through KVM memory slots (slot N is
/// region N), with KVM logging the guest's writes when `log_dirty_pages` is set.
pub fn register_with_kvm(vm: &VmFd, memory: &GuestRam, log_dirty_pages: bool) -> Result<()> {
    let flags = if log_dirty_pages { KVM_MEM_LOG_DIRTY_PAGES } else { 0 };
    for (slot, region) in memory.iter().enumerate() {
        let kvm_region = kvm_userspace_memory_region {
            slot: u32::try_from(slot).map_err(|_| Error::KvmCapability("memory slots"))?,
            flags,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the host range [userspace_addr, userspace_addr + memory_size) is a live mapping owned
        // by `memory`, which the VM keeps alive for as long as the VM fd (and so the slot) exists.
        unsafe { vm.set_user_memory_region(kvm_region) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// End of the guest RAM that lies below the MMIO gap (where the kernel and initrd must go).
pub fn low_memory_end(memory: &GuestRam) -> GuestAddress {
    memory
        .iter()
        .filter(|r| r.start_addr().0 < arch::layout::MMIO_GAP_START)
        .map(|r| GuestAddress(r.start_addr().0 + r.len()))
        .max()
        .unwrap_or(GuestAddress(0))
}

/// The host's physical RAM in bytes (`MemTotal` in /proc/meminfo), if it can be read.
fn host_total_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_total(&meminfo)
}

fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_is_parsed_in_bytes() {
        let meminfo = "MemTotal:       24569600 kB\nMemFree:         1000 kB\n";
        assert_eq!(parse_mem_total(meminfo), Some(24_569_600 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn sizes_below_minimum_or_unaligned_are_refused() {
        assert!(matches!(create_guest_memory(1 << 20), Err(Error::MemoryTooSmall { .. })));
        let unaligned = arch::layout::MIN_MEMORY + 1;
        assert!(matches!(create_guest_memory(unaligned), Err(Error::MemoryNotPageAligned(_))));
        assert!(matches!(create_guest_memory(!0xfff), Err(Error::MemoryExceedsHost { .. })));
    }

    #[test]
    fn low_memory_ends_at_the_gap_for_large_guests() {
        let memory = create_guest_memory(64 << 20).unwrap();
        assert_eq!(low_memory_end(&memory), GuestAddress(64 << 20));
    }
}
