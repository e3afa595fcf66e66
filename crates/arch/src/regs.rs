//! The CPU state the boot vCPU starts in: descriptor tables, control registers, segments,
//! general-purpose registers and FPU, for either the 64-bit Linux or the 32-bit PVH entry.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::gdt::{gdt_entry, segment_from_gdt};
use crate::guest_write::write_bytes;
use crate::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PML4_START, PVH_INFO_START, ZERO_PAGE_START,
};
use crate::paging::write_identity_page_tables;
use crate::{Error, Result};

/// How the kernel is entered, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootEntry {
    /// 64-bit Linux boot protocol: long mode, paging on, RSI = zero page.
    Linux64(GuestAddress),
    /// PVH: 32-bit protected mode, paging off, EBX = `hvm_start_info`.
    Pvh(GuestAddress),
}

const CR0_PE: u64 = 1 << 0;
/// Extension type: hard-wired to 1 on every CPU since the 486.
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Only the reserved bit 1, which always reads as 1: interrupts stay off.
const RFLAGS_RESERVED: u64 = 0x2;
/// x87 control word after FNINIT: all exceptions masked, 64-bit precision.
const FPU_CONTROL_WORD: u16 = 0x37F;
/// MXCSR reset value: all SSE exceptions masked.
const MXCSR_DEFAULT: u32 = 0x1F80;

/// GDT slots; the selector of slot `n` is `n * 8`.
const GDT_CODE: u16 = 1;
const GDT_DATA: u16 = 2;
const GDT_TSS: u16 = 3;

/// Null, flat 64-bit code, flat data, TSS.
const LONG_MODE_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xA09B, 0, 0xF_FFFF),
    gdt_entry(0xC093, 0, 0xF_FFFF),
    gdt_entry(0x008B, 0, 0x67),
];
/// Null, flat 32-bit code, flat data, TSS.
const PROTECTED_MODE_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xC09B, 0, 0xF_FFFF),
    gdt_entry(0xC093, 0, 0xF_FFFF),
    gdt_entry(0x008B, 0, 0x67),
];

/// Writes the boot GDT (and, for [`BootEntry::Linux64`], the identity page tables) into
/// guest memory, then loads the vCPU's special, general-purpose and FPU registers.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, mem: &impl GuestMemoryBackend, entry: BootEntry) -> Result<()> {
    let gdt = match entry {
        BootEntry::Linux64(_) => LONG_MODE_GDT,
        BootEntry::Pvh(_) => PROTECTED_MODE_GDT,
    };
    let gdt_bytes: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
    write_bytes(mem, "boot GDT", GuestAddress(BOOT_GDT_START), &gdt_bytes)?;
    if let BootEntry::Linux64(_) = entry {
        write_identity_page_tables(mem)?;
    }

    let mut sregs = vcpu.get_sregs().map_err(Error::GetSregs)?;
    load_segments(&mut sregs, &gdt);
    load_control_registers(&mut sregs, entry);
    vcpu.set_sregs(&sregs).map_err(Error::SetSregs)?;
    vcpu.set_regs(&boot_regs(entry)).map_err(Error::SetRegs)?;
    vcpu.set_fpu(&boot_fpu()).map_err(Error::SetFpu)
}

fn load_segments(sregs: &mut kvm_sregs, gdt: &[u64; 4]) {
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(gdt) - 1) as u16;
    // An empty IDT: any exception before the kernel installs its own triple-faults
    // (a clean shutdown) instead of jumping through garbage.
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 0;

    let code = segment_from_gdt(gdt[usize::from(GDT_CODE)], GDT_CODE);
    let data = segment_from_gdt(gdt[usize::from(GDT_DATA)], GDT_DATA);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[usize::from(GDT_TSS)], GDT_TSS);
}

fn load_control_registers(sregs: &mut kvm_sregs, entry: BootEntry) {
    // Whole registers are set, not ORed into KVM's reset values, so caching is enabled
    // (reset CR0 has CD and NW set) and no stray feature bit survives.
    match entry {
        BootEntry::Linux64(_) => {
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        BootEntry::Pvh(_) => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
}

fn boot_regs(entry: BootEntry) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        ..Default::default()
    };
    match entry {
        BootEntry::Linux64(addr) => {
            regs.rip = addr.0;
            regs.rsi = ZERO_PAGE_START;
        }
        BootEntry::Pvh(addr) => {
            regs.rip = addr.0;
            regs.rbx = PVH_INFO_START;
        }
    }
    regs
}

/// KVM_SET_FPU copies only the x87 and XMM state, not `mxcsr`: MXCSR keeps the vCPU's
/// reset value, which is the same 0x1F80. It is filled in anyway so the structure says
/// what the guest gets.
fn boot_fpu() -> kvm_fpu {
    kvm_fpu { fcw: FPU_CONTROL_WORD, mxcsr: MXCSR_DEFAULT, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
    use kvm_ioctls::VcpuExit;
    use vm_memory::Bytes;

    use super::*;
    use crate::test_support::{guest_memory, register_memory, test_vm, CODE_START};
    use crate::{cpuid, interrupts, msrs};
    use vm_memory::GuestMemoryMmap;

    const MEM_SIZE: u64 = 16 << 20;
    /// Debug port the test guests write to.
    const PORT: u16 = 0x80;

    #[test]
    fn long_mode_state_reads_back() {
        let Some(t) = test_vm() else { return };
        let mem = guest_memory(MEM_SIZE);
        let supported = t.kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        let cpuid = cpuid::filter_for_vcpu(&supported, 0, 1, None).unwrap();
        t.vcpu.set_cpuid2(&cpuid).unwrap();
        setup_boot_vcpu(&t.vcpu, &mem, BootEntry::Linux64(CODE_START)).unwrap();

        let sregs = t.vcpu.get_sregs().unwrap();
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(sregs.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_ne!(sregs.cr4 & CR4_PAE, 0);
        assert_eq!(sregs.cr3, PML4_START);
        assert_eq!((sregs.cs.selector, sregs.cs.l), (0x08, 1));
        assert_eq!((sregs.ss.selector, sregs.tr.selector), (0x10, 0x18));
        assert_eq!((sregs.gdt.base, sregs.gdt.limit), (BOOT_GDT_START, 31));
        assert_eq!((sregs.idt.base, sregs.idt.limit), (BOOT_IDT_START, 0));

        let regs = t.vcpu.get_regs().unwrap();
        assert_eq!(regs.rip, CODE_START.0);
        assert_eq!((regs.rsp, regs.rbp), (BOOT_STACK_POINTER, BOOT_STACK_POINTER));
        assert_eq!((regs.rsi, regs.rflags), (ZERO_PAGE_START, 0x2));

        assert_eq!(t.vcpu.get_fpu().unwrap().fcw, 0x37F);
        // KVM_GET_FPU does not report MXCSR; the XSAVE image has it at byte 24.
        assert_eq!(t.vcpu.get_xsave().unwrap().region[6], 0x1F80);

        let code: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(code, LONG_MODE_GDT[1]);
    }

    #[test]
    fn pvh_state_reads_back() {
        let Some(t) = test_vm() else { return };
        let mem = guest_memory(MEM_SIZE);
        setup_boot_vcpu(&t.vcpu, &mem, BootEntry::Pvh(CODE_START)).unwrap();

        let sregs = t.vcpu.get_sregs().unwrap();
        assert_eq!(sregs.cr0 & (CR0_PE | CR0_PG), CR0_PE);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), 0);
        assert_eq!((sregs.cs.db, sregs.cs.l, sregs.cs.limit), (1, 0, 0xFFFF_FFFF));
        assert_eq!((sregs.ds.base, sregs.ds.limit), (0, 0xFFFF_FFFF));

        let regs = t.vcpu.get_regs().unwrap();
        assert_eq!((regs.rip, regs.rbx), (CODE_START.0, PVH_INFO_START));
        // No page tables are needed, so none are written.
        let pml4e: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4e, 0);
    }

    #[test]
    fn tiny_memory_is_an_error() {
        let Some(t) = test_vm() else { return };
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x9000)]).unwrap();
        let err = setup_boot_vcpu(&t.vcpu, &mem, BootEntry::Linux64(CODE_START));
        assert!(matches!(err, Err(Error::GuestMemoryTooSmall { .. })));
    }

    /// Boots `code` the way the VMM does and returns the byte it writes to [`PORT`].
    fn run_guest(entry: BootEntry, code: &[u8], marker_addr: u64) -> Option<u8> {
        let t = test_vm()?;
        let mem = guest_memory(MEM_SIZE);
        register_memory(&t.vm, &mem);
        mem.write_slice(code, CODE_START).unwrap();
        mem.write_obj(0x5Au8, GuestAddress(marker_addr)).unwrap();

        let supported = t.kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        let cpuid = cpuid::filter_for_vcpu(&supported, 0, 1, None).unwrap();
        t.vcpu.set_cpuid2(&cpuid).unwrap();
        msrs::setup_msrs(&t.vcpu).unwrap();
        interrupts::set_lint(&t.vcpu).unwrap();
        setup_boot_vcpu(&t.vcpu, &mem, entry).unwrap();

        let mut vcpu = t.vcpu;
        match vcpu.run().unwrap() {
            VcpuExit::IoOut(PORT, [value]) => Some(*value),
            other => panic!("unexpected exit {other:?}"),
        }
    }

    #[test]
    fn linux64_guest_runs_with_paging_and_rsi() {
        // mov al, [rsi]; out 0x80, al
        let code = [0x8A, 0x06, 0xE6, 0x80];
        if let Some(value) = run_guest(BootEntry::Linux64(CODE_START), &code, ZERO_PAGE_START) {
            assert_eq!(value, 0x5A);
        }
    }

    #[test]
    fn pvh_guest_runs_with_ebx() {
        // mov al, [ebx]; out 0x80, al
        let code = [0x8A, 0x03, 0xE6, 0x80];
        if let Some(value) = run_guest(BootEntry::Pvh(CODE_START), &code, PVH_INFO_START) {
            assert_eq!(value, 0x5A);
        }
    }
}
