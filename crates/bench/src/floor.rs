//! The floor: the least a VMM can do to boot the test guest on KVM.
//!
//! One process, one thread, no irqchip, no event loop. It sets up exactly what the guest needs to
//! find its command line and memory map (the same `arch` code Kestrel uses), runs the one vCPU on
//! the main thread and handles just the port I/O the hello guest does. Whatever a real VMM spends
//! above this is its own overhead; this much is KVM's and the process's.

use std::fs::File;
use std::io::Write;
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::path::Path;

use arch::{BootEntry, CmdlineLocation};
use kvm_bindings::{kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VmFd};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, KernelLoader};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::Error;

const COM1_DATA: u16 = 0x3f8;
const COM1_LSR: u16 = COM1_DATA + 5;
/// Line status: transmitter holding register and transmitter empty, so the guest may send.
const LSR_THR_EMPTY: u8 = 0x60;
const I8042_COMMAND: u16 = 0x64;
const I8042_RESET: u8 = 0xfe;
const POWER_PORT: u16 = 0x600;
const POWER_OFF: u8 = 0x34;

/// Boots `kernel` with `cmdline` in `mem_size` bytes of RAM and runs it until it resets or powers
/// off (Ok) or stops in any other way (Err).
pub fn run(kernel: &Path, cmdline: &str, mem_size: u64) -> Result<(), Error> {
    // Declared before the VM so that it is dropped after it: the memory slot points into it.
    let mem = GuestMemoryMmap::<()>::from_ranges(&arch::ram_regions(mem_size))
        .map_err(|e| Error::Floor(format!("guest memory: {e}")))?;
    let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    vm.set_identity_map_address(arch::layout::KVM_IDENTITY_MAP_ADDRESS)
        .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm.set_tss_address(arch::layout::KVM_TSS_ADDRESS as usize).map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    register_memory(&vm, &mem)?;

    let mut file = File::open(kernel).map_err(|e| Error::Io(kernel.display().to_string(), e))?;
    let himem = Some(GuestAddress(arch::layout::HIMEM_START));
    let loaded = Elf::load(&mem, None, &mut file, himem)
        .map_err(|e| Error::Floor(format!("loading {}: {e}", kernel.display())))?;

    let mut line = Cmdline::new(arch::layout::CMDLINE_MAX_SIZE)
        .map_err(|e| Error::Floor(format!("command line: {e}")))?;
    if !cmdline.is_empty() {
        line.insert_str(cmdline).map_err(|e| Error::Floor(format!("command line: {e}")))?;
    }
    let cmdline_addr = GuestAddress(arch::layout::CMDLINE_START);
    load_cmdline(&mem, cmdline_addr, &line).map_err(|e| Error::Floor(format!("command line: {e}")))?;
    let location = CmdlineLocation { addr: cmdline_addr, size_with_nul: cmdline.len() + 1 };

    let entry = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(address) => {
            arch::configure_pvh_boot(&mem, mem_size, location, None)?;
            BootEntry::Pvh(address)
        }
        _ => {
            arch::configure_linux_boot(&mem, mem_size, location, None, None)?;
            BootEntry::Linux64(loaded.kernel_load)
        }
    };

    let supported =
        kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let mut vcpu = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
    vcpu.set_cpuid2(&arch::cpuid::filter_for_vcpu(&supported, 0, 1, None)?)
        .map_err(kvm_err("KVM_SET_CPUID2"))?;
    arch::msrs::setup_msrs(&vcpu)?;
    arch::regs::setup_boot_vcpu(&vcpu, &mem, entry)?;

    // Unbuffered, one write(2) per guest byte, as a VMM's serial console does. ManuallyDrop: fd 1
    // belongs to the process, not to this File.
    // SAFETY: fd 1 is open for the whole life of the process and is never closed through this File.
    let mut stdout = ManuallyDrop::new(unsafe { File::from_raw_fd(libc::STDOUT_FILENO) });

    // On every return the vCPU, the VM and then guest memory are dropped, as a VMM tears down.
    loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => match (port, data.first().copied()) {
                (COM1_DATA, Some(byte)) => {
                    // A closed console must not stop the guest, as with a real serial port.
                    let _ = stdout.write_all(&[byte]);
                }
                (I8042_COMMAND, Some(I8042_RESET)) | (POWER_PORT, Some(POWER_OFF)) => return Ok(()),
                _ => {}
            },
            Ok(VcpuExit::IoIn(port, data)) => {
                data.fill(0);
                if port == COM1_LSR {
                    data[0] = LSR_THR_EMPTY;
                }
            }
            Ok(other) => return Err(Error::Floor(format!("guest stopped: unexpected exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR => {}
            Err(e) => return Err(Error::Floor(format!("KVM_RUN failed: {e}"))),
        }
    }
}

fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), Error> {
    for (slot, region) in mem.iter().enumerate() {
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the host range is a live mapping owned by `mem`, which the caller keeps alive
        // until after the VM fd, and with it the memory slot, is gone.
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

fn kvm_err(call: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |e| Error::Kvm(call, e)
}
