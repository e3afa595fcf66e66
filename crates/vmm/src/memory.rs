//! Guest RAM: laid out around the MMIO gap, made of the memory the host side asked for
//! (anonymous, a memfd, or hugetlb pages), advised (THP, KSM, mlock, NUMA binding) before the
//! first touch, and registered with KVM.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::VmFd;
use model::host::{HugePageSize, MemoryOptions, RamBackend};
use virtio::GuestRam;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

use crate::snapshot::memory_file::SavedRegion;
use crate::{kvm_err, Error, Result};

const PAGE_SIZE: u64 = 4096;
/// The memfd's name, as /proc/PID/maps shows it (`/memfd:kestrel-guest-ram`).
const MEMFD_NAME: &std::ffi::CStr = c"kestrel-guest-ram";

/// Why guest RAM of the asked-for kind could not be made or advised.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot create the guest RAM memfd: {0}")]
    Memfd(io::Error),
    #[error(
        "not enough free {page} huge pages for {bytes} bytes of guest memory: {needed} needed, {free} free \
         (raise /proc/sys/vm/nr_hugepages or /sys/kernel/mm/hugepages/*/nr_hugepages)"
    )]
    NotEnoughHugePages { page: HugePageSize, bytes: u64, needed: u64, free: u64 },
    #[error(
        "not enough free {page} huge pages on NUMA node {node} for guest memory bound to it: {needed} \
         needed, {free} free (raise /sys/devices/system/node/node{node}/hugepages/*/nr_hugepages)"
    )]
    NotEnoughHugePagesOnNode { page: HugePageSize, node: u32, needed: u64, free: u64 },
    #[error("guest RAM region of {size} bytes is not a multiple of the {page} huge page size")]
    RegionNotHugeAligned { size: u64, page: HugePageSize },
    #[error("cannot map guest RAM: {0}")]
    Map(#[source] vm_memory::mmap::MmapRegionError),
    #[error("a guest RAM region at {0:#x} does not fit the guest's address space")]
    RegionAddress(u64),
    #[error("the guest RAM regions do not form one guest memory: {0}")]
    Regions(#[source] vm_memory::GuestRegionCollectionError),
    #[error("cannot apply {advice} to guest RAM: {source}")]
    Advice { advice: &'static str, source: io::Error },
    #[error("NUMA node {0} does not exist on this host (see /sys/devices/system/node)")]
    NoSuchNumaNode(u32),
    #[error("cannot read the snapshot memory file {path}: {source}")]
    ReadFile { path: PathBuf, source: io::Error },
    #[error("the snapshot memory layout does not match the guest RAM")]
    LayoutMismatch,
}

/// Checks the requested size against the boot layout and the host, then maps guest RAM of the
/// kind `options` asks for, advised as they ask, nothing touched yet.
///
/// The host check is against physical RAM rather than what `mmap` would accept: anonymous mappings
/// are lazily backed, so an oversized guest would otherwise start and be OOM-killed later, mid-run.
/// Hugetlb pages are reserved by the mapping itself (a shared hugetlb mapping without
/// MAP_NORESERVE takes its pages from the pool at `mmap`), so too few is an error here.
pub fn create_guest_memory(bytes: u64, options: &MemoryOptions) -> Result<GuestRam> {
    check_size(bytes)?;
    options.validate(bytes).map_err(model::config::ConfigError::from)?;
    check_numa_node(options)?;
    let ranges = arch::ram_regions(bytes);
    let memory = match options.backend {
        RamBackend::Anonymous => GuestRam::from_ranges(&ranges)
            .map_err(|e| Error::MemoryAllocation { bytes, reason: e.to_string() })?,
        RamBackend::Memfd => shared_memory(&ranges, None)?,
        RamBackend::HugeTlb(page) => match options.numa_node {
            None => shared_memory(&ranges, Some(page))?,
            Some(node) => {
                // The mapping reserves its huge pages, counting the free pages of every node
                // unless this thread is bound; bound to the node afterwards (`advise`), the
                // guest would then fault on a short node (SIGBUS) mid-run. So the node's own
                // pool is checked, and the reservation is made with the thread bound to it.
                let needed = bytes / page.bytes();
                let free = node_free_huge_pages(node, page).unwrap_or(0);
                if free < needed {
                    return Err(MemoryError::NotEnoughHugePagesOnNode { page, node, needed, free }.into());
                }
                let _bound = ThreadMemoryPolicy::bind_to(node)?;
                shared_memory(&ranges, Some(page))?
            }
        },
    };
    advise(&memory, options)?;
    Ok(memory)
}

/// Guest RAM over one memfd (hugetlb pages of `huge` size if given), region after region in the
/// file, each mapped shared.
fn shared_memory(ranges: &[(GuestAddress, usize)], huge: Option<HugePageSize>) -> Result<GuestRam> {
    let total: u64 = ranges.iter().map(|&(_, size)| size as u64).sum();
    let mut flags = libc::MFD_CLOEXEC;
    if let Some(page) = huge {
        flags |= libc::MFD_HUGETLB
            | match page {
                HugePageSize::TwoMiB => libc::MFD_HUGE_2MB,
                HugePageSize::OneGiB => libc::MFD_HUGE_1GB,
            };
        if let Some(&(_, size)) =
            ranges.iter().find(|&&(_, size)| !(size as u64).is_multiple_of(page.bytes()))
        {
            return Err(MemoryError::RegionNotHugeAligned { size: size as u64, page }.into());
        }
    }
    // SAFETY: a valid NUL-terminated name; memfd_create only creates a descriptor.
    let fd = unsafe { libc::memfd_create(MEMFD_NAME.as_ptr(), flags) };
    if fd < 0 {
        return Err(MemoryError::Memfd(io::Error::last_os_error()).into());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let file = Arc::new(unsafe { File::from_raw_fd(fd) });
    file.set_len(total).map_err(MemoryError::Memfd)?;
    let mut offset = 0;
    let mut regions = Vec::with_capacity(ranges.len());
    for &(address, size) in ranges {
        let mapping = MmapRegionBuilder::new_with_bitmap(
            size,
            <AtomicBitmap as vm_memory::bitmap::NewBitmap>::with_len(size),
        )
        .with_file_offset(FileOffset::from_arc(file.clone(), offset))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        // Shared, and without MAP_NORESERVE: hugetlb pages are reserved here, not at first touch.
        .with_mmap_flags(libc::MAP_SHARED)
        .with_hugetlbfs(huge.is_some())
        .build()
        .map_err(|e| match (huge, &e) {
            (Some(page), vm_memory::mmap::MmapRegionError::Mmap(source))
                if source.raw_os_error() == Some(libc::ENOMEM) =>
            {
                Error::from(MemoryError::NotEnoughHugePages {
                    page,
                    bytes: total,
                    needed: total / page.bytes(),
                    free: free_huge_pages(page).unwrap_or(0),
                })
            }
            _ => MemoryError::Map(e).into(),
        })?;
        regions.push(GuestRegionMmap::new(mapping, address).ok_or(MemoryError::RegionAddress(address.0))?);
        offset += size as u64;
    }
    GuestRam::from_regions(regions).map_err(|e| MemoryError::Regions(e).into())
}

/// The free huge pages of `page` size in the host's pool.
pub fn free_huge_pages(page: HugePageSize) -> Option<u64> {
    let kib = page.bytes() >> 10;
    let path = format!("/sys/kernel/mm/hugepages/hugepages-{kib}kB/free_hugepages");
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The free huge pages of `page` size on NUMA node `node`.
fn node_free_huge_pages(node: u32, page: HugePageSize) -> Option<u64> {
    let kib = page.bytes() >> 10;
    let path = format!("/sys/devices/system/node/node{node}/hugepages/hugepages-{kib}kB/free_hugepages");
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Room for the kernel's largest node number on x86_64 (1024 nodes), in the form the memory
/// policy calls take.
type NodeMask = [libc::c_ulong; 16];
/// `maxnode` for a [`NodeMask`]: the kernel reads `maxnode - 1` bits.
const NODE_MASK_BITS: libc::c_ulong = (std::mem::size_of::<NodeMask>() * 8 + 1) as libc::c_ulong;
const MPOL_BIND: libc::c_int = 2;

/// The mask of the one node `node`.
fn node_mask(node: u32) -> Result<NodeMask> {
    let mut mask: NodeMask = [0; 16];
    let (word, bit) = (node as usize / 64, node % 64);
    *mask.get_mut(word).ok_or(MemoryError::NoSuchNumaNode(node))? |= 1 << bit;
    Ok(mask)
}

/// The calling thread's memory policy bound to one node for as long as this lives; the policy
/// it had before is put back when dropped (threads it starts later would inherit it).
struct ThreadMemoryPolicy {
    mode: libc::c_int,
    mask: NodeMask,
}

impl ThreadMemoryPolicy {
    fn bind_to(node: u32) -> Result<ThreadMemoryPolicy> {
        let error = |source| MemoryError::Advice { advice: "set_mempolicy (numa)", source };
        let mut saved = ThreadMemoryPolicy { mode: 0, mask: [0; 16] };
        // SAFETY: `mode` and `mask` are live, writable and as large as `maxnode` says; with no
        // address and no flags, get_mempolicy reads the calling thread's policy and nothing else.
        let result = unsafe {
            libc::syscall(
                libc::SYS_get_mempolicy,
                &mut saved.mode,
                saved.mask.as_mut_ptr(),
                NODE_MASK_BITS,
                std::ptr::null_mut::<libc::c_void>(),
                0,
            )
        };
        if result != 0 {
            return Err(error(io::Error::last_os_error()).into());
        }
        set_thread_policy(MPOL_BIND, &node_mask(node)?).map_err(error)?;
        Ok(saved)
    }
}

impl Drop for ThreadMemoryPolicy {
    fn drop(&mut self) {
        if let Err(e) = set_thread_policy(self.mode, &self.mask) {
            tracing::warn!("cannot restore this thread's memory policy after binding guest RAM: {e}");
        }
    }
}

/// `set_mempolicy(mode, mask)` for the calling thread.
fn set_thread_policy(mode: libc::c_int, mask: &NodeMask) -> io::Result<()> {
    // SAFETY: `mask` is live and as large as `maxnode` says; set_mempolicy only changes the calling
    // thread's policy for its future allocations.
    let result = unsafe { libc::syscall(libc::SYS_set_mempolicy, mode, mask.as_ptr(), NODE_MASK_BITS) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn check_numa_node(options: &MemoryOptions) -> Result<()> {
    match options.numa_node {
        Some(node) if !Path::new(&format!("/sys/devices/system/node/node{node}")).exists() => {
            Err(MemoryError::NoSuchNumaNode(node).into())
        }
        _ => Ok(()),
    }
}

/// Applies the options' advice to every region of guest RAM: NUMA binding first (it must come
/// before any page is touched), then THP, KSM and mlock.
pub fn advise(memory: &GuestRam, options: &MemoryOptions) -> Result<()> {
    for region in memory.iter() {
        let (address, len) = (region.as_ptr(), region.len() as usize);
        if let Some(node) = options.numa_node {
            bind_to_node(address, len, node)?;
        }
        if options.thp {
            madvise(address, len, libc::MADV_HUGEPAGE, "MADV_HUGEPAGE (thp)")?;
        }
        if options.ksm {
            madvise(address, len, libc::MADV_MERGEABLE, "MADV_MERGEABLE (ksm)")?;
        }
        if options.mlock {
            // SAFETY: the range is a live mapping owned by `memory`; locking changes no contents.
            // MLOCK_ONFAULT locks pages as the guest faults them in instead of populating the
            // whole guest now (which would take seconds for a large guest).
            if unsafe { libc::mlock2(address.cast(), len, libc::MLOCK_ONFAULT) } != 0 {
                let source = io::Error::last_os_error();
                return Err(MemoryError::Advice {
                    advice: "mlock (needs CAP_IPC_LOCK or RLIMIT_MEMLOCK)",
                    source,
                }
                .into());
            }
        }
    }
    Ok(())
}

fn madvise(address: *mut u8, len: usize, advice: libc::c_int, name: &'static str) -> Result<()> {
    // SAFETY: the range is a live mapping owned by guest RAM; these advices change how the kernel
    // backs it, never its contents.
    if unsafe { libc::madvise(address.cast(), len, advice) } != 0 {
        return Err(MemoryError::Advice { advice: name, source: io::Error::last_os_error() }.into());
    }
    Ok(())
}

/// `mbind(MPOL_BIND)` of one range to one node.
fn bind_to_node(address: *mut u8, len: usize, node: u32) -> Result<()> {
    let mask = node_mask(node)?;
    // SAFETY: the range is a live mapping owned by guest RAM, `mask` holds as many bits as
    // maxnode says; mbind sets a policy and moves nothing (no MPOL_MF_MOVE), as nothing has been
    // touched yet.
    let result = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            address,
            len,
            MPOL_BIND as libc::c_long,
            mask.as_ptr(),
            NODE_MASK_BITS,
            0,
        )
    };
    if result != 0 {
        return Err(MemoryError::Advice { advice: "mbind (numa)", source: io::Error::last_os_error() }.into());
    }
    Ok(())
}

/// Copies a snapshot memory file into fresh guest RAM (a restore onto a memfd or hugetlb
/// backend, which cannot map the file copy-on-write): only the file's data extents are read, so
/// the holes a full snapshot leaves for zero pages cost nothing.
pub fn fill_from_file(memory: &GuestRam, path: &Path, layout: &[SavedRegion]) -> Result<()> {
    let read_error = |source| MemoryError::ReadFile { path: path.to_owned(), source };
    let file = crate::snapshot::open_regular(path, std::fs::OpenOptions::new().read(true))?;
    let file_len = file.metadata().map_err(read_error)?.len();
    if memory.num_regions() != layout.len() {
        return Err(MemoryError::LayoutMismatch.into());
    }
    for (region, saved) in memory.iter().zip(layout) {
        if region.start_addr().0 != saved.guest_address || region.len() != saved.size {
            return Err(MemoryError::LayoutMismatch.into());
        }
        let end = saved.file_offset.checked_add(saved.size).ok_or(MemoryError::LayoutMismatch)?;
        if end > file_len {
            return Err(crate::snapshot::SnapshotError::MemoryFileTooShort {
                path: path.to_owned(),
                found: file_len,
                expected: end,
            }
            .into());
        }
        // SAFETY: the region is a live mapping of `region.len()` bytes owned by `memory`; the
        // guest does not run yet, so nothing else reads or writes it meanwhile.
        let bytes = unsafe { std::slice::from_raw_parts_mut(region.as_ptr(), region.len() as usize) };
        let mut position = saved.file_offset;
        while position < end {
            let Some(data) = seek(&file, position, libc::SEEK_DATA).map_err(read_error)? else { break };
            if data >= end {
                break;
            }
            let hole = seek(&file, data, libc::SEEK_HOLE).map_err(read_error)?.unwrap_or(end).min(end);
            let from = (data - saved.file_offset) as usize;
            let to = (hole - saved.file_offset) as usize;
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut bytes[from..to], data)
                .map_err(read_error)?;
            position = hole;
        }
    }
    Ok(())
}

/// `lseek` with SEEK_DATA or SEEK_HOLE; None where there is no more data (ENXIO).
pub(crate) fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let offset = libc::off_t::try_from(offset).map_err(io::Error::other)?;
    // SAFETY: lseek on an open descriptor only moves its offset.
    let result = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if result < 0 {
        let error = io::Error::last_os_error();
        return if error.raw_os_error() == Some(libc::ENXIO) { Ok(None) } else { Err(error) };
    }
    Ok(Some(result as u64))
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
        let anon = MemoryOptions::default();
        assert!(matches!(create_guest_memory(1 << 20, &anon), Err(Error::MemoryTooSmall { .. })));
        let unaligned = arch::layout::MIN_MEMORY + 1;
        assert!(matches!(create_guest_memory(unaligned, &anon), Err(Error::MemoryNotPageAligned(_))));
        assert!(matches!(create_guest_memory(!0xfff, &anon), Err(Error::MemoryExceedsHost { .. })));
    }

    #[test]
    fn low_memory_ends_at_the_gap_for_large_guests() {
        let memory = create_guest_memory(64 << 20, &MemoryOptions::default()).unwrap();
        assert_eq!(low_memory_end(&memory), GuestAddress(64 << 20));
    }

    #[test]
    fn a_memfd_backend_is_shared_and_takes_a_memory_files_data() {
        use std::os::unix::fs::FileExt;
        use vm_memory::Bytes;

        let options = MemoryOptions { backend: RamBackend::Memfd, ..Default::default() };
        let memory = create_guest_memory(64 << 20, &options).unwrap();
        let region = memory.iter().next().unwrap();
        assert!(region.flags() & libc::MAP_SHARED != 0 && region.file_offset().is_some());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(64 << 20).unwrap();
        file.write_all_at(&[7u8; 4096], 5 << 20).unwrap();
        file.write_all_at(&[9u8; 10], (64 << 20) - 10).unwrap();
        let layout = crate::snapshot::memory_file::layout(&memory);
        fill_from_file(&memory, &path, &layout).unwrap();
        assert_eq!(memory.read_obj::<u8>(GuestAddress(5 << 20)).unwrap(), 7);
        assert_eq!(memory.read_obj::<u8>(GuestAddress((64 << 20) - 1)).unwrap(), 9);
        assert_eq!(memory.read_obj::<u8>(GuestAddress(1 << 20)).unwrap(), 0);

        file.set_len(1 << 20).unwrap();
        let short = fill_from_file(&memory, &path, &layout).unwrap_err().to_string();
        assert!(short.contains("too short") || short.contains("bytes"), "{short}");
        let other = crate::snapshot::memory_file::layout_of([(0, 32 << 20)]);
        assert!(matches!(
            fill_from_file(&memory, &path, &other),
            Err(Error::Memory(MemoryError::LayoutMismatch))
        ));
    }

    /// The thread's memory policy while guest RAM is reserved, then the one it had.
    fn thread_policy() -> (libc::c_int, libc::c_ulong) {
        let (mut mode, mut mask): (libc::c_int, NodeMask) = (-1, [0; 16]);
        // SAFETY: as in `ThreadMemoryPolicy::bind_to`.
        let result = unsafe {
            libc::syscall(
                libc::SYS_get_mempolicy,
                &mut mode,
                mask.as_mut_ptr(),
                NODE_MASK_BITS,
                std::ptr::null_mut::<libc::c_void>(),
                0,
            )
        };
        assert_eq!(result, 0, "get_mempolicy: {}", io::Error::last_os_error());
        (mode, mask[0])
    }

    #[test]
    fn a_bound_thread_gets_its_old_memory_policy_back() {
        std::thread::spawn(|| {
            const MPOL_DEFAULT: libc::c_int = 0;
            assert_eq!(thread_policy().0, MPOL_DEFAULT);
            let bound = ThreadMemoryPolicy::bind_to(0).unwrap();
            assert_eq!(thread_policy(), (MPOL_BIND, 1), "bound to node 0");
            drop(bound);
            assert_eq!(thread_policy().0, MPOL_DEFAULT);
        })
        .join()
        .unwrap();
    }

    /// Hugetlb memory bound to a node takes its pages from that node's pool: a pool too short
    /// there is an error naming the node (not a SIGBUS once the guest runs).
    #[test]
    fn hugetlb_memory_bound_to_a_node_needs_that_nodes_pool() {
        let options = MemoryOptions {
            backend: RamBackend::HugeTlb(HugePageSize::TwoMiB),
            numa_node: Some(0),
            ..Default::default()
        };
        // 512 huge pages: more than any test here keeps in the pool.
        let free = node_free_huge_pages(0, HugePageSize::TwoMiB).expect("node 0's 2M pool");
        assert!(free < 512, "node 0 has {free} free 2M pages; this test needs fewer than 512");
        let message = create_guest_memory(1 << 30, &options).unwrap_err().to_string();
        assert!(message.contains("free 2M huge pages on NUMA node 0"), "{message}");
        let (mode, _) = thread_policy();
        assert_ne!(mode, MPOL_BIND, "the thread is not left bound");
    }

    #[test]
    fn hugetlb_memory_needs_whole_pages_and_a_pool() {
        let options =
            MemoryOptions { backend: RamBackend::HugeTlb(HugePageSize::OneGiB), ..Default::default() };
        let message = create_guest_memory(64 << 20, &options).unwrap_err().to_string();
        assert!(message.contains("not a multiple of the 1G huge page size"), "{message}");
        let missing = MemoryOptions { numa_node: Some(1000), ..Default::default() };
        assert!(matches!(
            create_guest_memory(64 << 20, &missing),
            Err(Error::Memory(MemoryError::NoSuchNumaNode(1000)))
        ));
    }
}
