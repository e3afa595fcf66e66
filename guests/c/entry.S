/*
 * Entry code shared by every Kestrel test guest.
 *
 * Two ways in, both ending in the same CPL0 prologue that leaves kernel mode after a handful of
 * instructions (CPL0 code is emulated, and slow, on the nested KVM the tests run on):
 *
 *   _start64   Linux 64-bit boot protocol: long mode, RSI = boot_params. Always 0x200 bytes
 *              into the image, so the flattened image works as a bzImage's protected-mode part.
 *   pvh_start  PVH (XEN_ELFNOTE_PHYS32_ENTRY): 32-bit protected mode, paging off,
 *              EBX = hvm_start_info. Only the "-pvh" builds carry the note (-DPVH_NOTE).
 *
 * The prologue loads the guest's own GDT, TSS (with an all-zero I/O permission bitmap) and
 * identity page tables (0..4 GiB, 2 MiB pages, User bit set, 3..4 GiB uncached), then iretq's to
 * CPL3 with IOPL=3 and IF=0. There is no IDT: any exception triple-faults the guest.
 *
 * Application processors come in through the real-mode trampoline (tramp_start..tramp_end),
 * which the BSP copies to 0x8000 (SIPI vector 0x08).
 */

#define SEL_KCODE64 0x08
#define SEL_KDATA   0x10
#define SEL_UDATA   0x18
#define SEL_UCODE64 0x20
#define SEL_TSS     0x28
#define SEL_KCODE32 0x38

#define TRAMP_BASE  0x8000

#define RFLAGS_USER 0x3002      /* IOPL=3, IF=0, reserved bit 1 */

#define PTE_P   0x001
#define PTE_RW  0x002
#define PTE_US  0x004
#define PTE_PWT 0x008
#define PTE_PCD 0x010
#define PTE_PS  0x080

#define TSS_SIZE 104
#define IOBITMAP_SIZE 8192

/* 32-bit protected mode (paging off) -> long mode with the guest's page tables. */
.macro ENTER_LONG_MODE target
	movl	%cr4, %eax
	orl	$0x20, %eax                     /* CR4.PAE */
	movl	%eax, %cr4
	movl	$pml4, %eax
	movl	%eax, %cr3
	movl	$0xC0000080, %ecx               /* IA32_EFER */
	movl	$0x100, %eax                    /* LME */
	xorl	%edx, %edx
	wrmsr
	movl	%cr0, %eax
	orl	$0x80000001, %eax               /* PG | PE */
	movl	%eax, %cr0
	ljmp	$SEL_KCODE64, $\target
.endm

/*
 * With -DCPL0_CPUID (the smp guest only): record, at CPL0, what CPUID reports on this CPU, in
 * cpl0_cpuid[local APIC ID]. On some nested hosts (kvm_pvm) CPUID executed at CPL3 is not
 * intercepted and returns the physical CPU's values, not the per-vCPU table the VMM gave KVM;
 * at CPL0, where a kernel reads it, KVM applies that table. Each entry, 16 bytes: max basic
 * leaf (leaf 0 EAX), leaf 1 EBX, leaf 0xB subleaf 0 EDX (read unconditionally, meaningful only
 * when the max basic leaf reaches 0xB), and 1 once recorded. Clobbers RAX, RBX, RCX, RDX, R8.
 * Every CPL0 instruction is emulated on the test host, so this is kept short.
 */
.macro RECORD_CPL0_CPUID
#ifdef CPL0_CPUID
	movl	$0xFEE00020, %r8d               /* LAPIC ID register, zero-extended */
	movl	(%r8), %r8d
	shrl	$24, %r8d                       /* APIC ID: bits 31:24 */
	shll	$4, %r8d                        /* 16-byte entries */
	xorl	%eax, %eax
	cpuid
	movl	%eax, cpl0_cpuid(%r8)
	movl	$1, %eax
	cpuid
	movl	%ebx, cpl0_cpuid + 4(%r8)
	movl	$0xB, %eax
	xorl	%ecx, %ecx
	cpuid
	movl	%edx, cpl0_cpuid + 8(%r8)
	movl	$1, cpl0_cpuid + 12(%r8)
#endif
.endm

	.section .text.entry, "ax"

/* ---- PVH entry: 32-bit protected mode, EBX = hvm_start_info ---- */
	.code32
	.globl	pvh_start
	.type	pvh_start, @function
pvh_start:
	lgdt	gdt_ptr
	ENTER_LONG_MODE pvh_start64
	.size	pvh_start, . - pvh_start

/* ---- AP entry, reached from the real-mode trampoline in 32-bit protected mode ---- */
	.globl	ap_start32
	.type	ap_start32, @function
ap_start32:
	ENTER_LONG_MODE ap_start64
	.size	ap_start32, . - ap_start32

	.code64
pvh_start64:
	movl	%ebx, %edi                      /* boot info: hvm_start_info */
	movl	$1, %esi                        /* entry kind: PVH */
	jmp	common64

/*
 * ---- Linux 64-bit entry: long mode, RSI = boot_params ----
 * In its own section, which the linker script puts exactly 0x200 bytes into the image: where the
 * Linux boot protocol has the 64-bit entry of a bzImage (code32_start + 0x200). hello.bzimage is
 * the hello image flattened behind a setup header.
 */
	.section .text.entry64, "ax"
	.globl	_start64
	.type	_start64, @function
_start64:
	movq	%rsi, %rdi                      /* boot info: boot_params */
	xorl	%esi, %esi                      /* entry kind: Linux 64-bit */
	movl	$pml4, %eax
	movq	%rax, %cr3
common64:
	RECORD_CPL0_CPUID                       /* keeps RDI, RSI */
	lgdt	gdt_ptr(%rip)
	movw	$SEL_TSS, %ax
	ltr	%ax
	leaq	bsp_iret_frame(%rip), %rsp
	iretq
	.size	_start64, . - _start64

/* ---- AP 64-bit prologue: GDT already loaded by the trampoline ---- */
ap_start64:
	movw	$SEL_KDATA, %ax
	movw	%ax, %ss
	andb	$0xFD, gdt + SEL_TSS + 5(%rip)  /* clear the TSS busy bit set by the last ltr */
	movw	$SEL_TSS, %ax
	ltr	%ax
	RECORD_CPL0_CPUID
	movq	ap_boot_rsp(%rip), %rsp         /* per-AP stack, chosen by the BSP */
	movq	%rsp, %rax
	pushq	$(SEL_UDATA | 3)
	pushq	%rax
	pushq	$RFLAGS_USER
	pushq	$(SEL_UCODE64 | 3)
	pushq	$ap_user_entry
	iretq

/* ---- CPL3 from here on ---- */
	.text
	.type	bsp_user_entry, @function
bsp_user_entry:
	movq	%rdi, %r12
	movq	%rsi, %r13
	leaq	__bss_start(%rip), %rdi
	leaq	__bss_end(%rip), %rcx
	subq	%rdi, %rcx
	xorl	%eax, %eax
	cld
	rep stosb
	movq	%r12, %rdi
	movq	%r13, %rsi
	call	guest_start
1:	pause
	jmp	1b
	.size	bsp_user_entry, . - bsp_user_entry

	.type	ap_user_entry, @function
ap_user_entry:
	call	ap_main
1:	pause
	jmp	1b
	.size	ap_user_entry, . - ap_user_entry

/*
 * Real-mode AP trampoline. Copied to TRAMP_BASE; a SIPI with vector 0x08 starts it with
 * CS = 0x0800, IP = 0. It loads the guest GDT (which has a 32-bit code segment for this),
 * enters protected mode and jumps straight into ap_start32 in the guest image.
 */
	.section .rodata.tramp, "a"
	.code16
	.globl	tramp_start, tramp_end
tramp_start:
	lgdtl	%cs:(tramp_gdt_ptr - tramp_start)
	movl	$0x11, %eax                     /* PE | ET; clears CD/NW left by INIT */
	movl	%eax, %cr0
	ljmpl	$SEL_KCODE32, $ap_start32
	.balign	4
tramp_gdt_ptr:
	.word	gdt_end - gdt - 1
	.long	gdt
tramp_end:
	.code64

/* ---- Descriptor tables, TSS, page tables, BSP iretq frame ---- */
	.section .data.boot, "aw"
	.balign	4096
	.globl	pml4
pml4:
	.quad	pdpt + (PTE_P | PTE_RW | PTE_US)
	.fill	511, 8, 0
	.balign	4096
pdpt:
	.quad	pd0 + (PTE_P | PTE_RW | PTE_US)
	.quad	pd1 + (PTE_P | PTE_RW | PTE_US)
	.quad	pd2 + (PTE_P | PTE_RW | PTE_US)
	.quad	pd3 + (PTE_P | PTE_RW | PTE_US)
	.fill	508, 8, 0
	.balign	4096
/* 0..3 GiB: RAM, write-back. */
pd0:
	.set	addr, 0
	.rept	512 * 3
	.quad	addr | (PTE_P | PTE_RW | PTE_US | PTE_PS)
	.set	addr, addr + 0x200000
	.endr
pd1 = pd0 + 4096
pd2 = pd0 + 8192
/* 3..4 GiB: MMIO gap, uncached. */
pd3:
	.rept	512
	.quad	addr | (PTE_P | PTE_RW | PTE_US | PTE_PS | PTE_PWT | PTE_PCD)
	.set	addr, addr + 0x200000
	.endr

	.balign	16
	.globl	gdt
gdt:
	.quad	0                               /* 0x00 null */
	.quad	0x00AF9A000000FFFF              /* 0x08 kernel code, 64-bit */
	.quad	0x00CF92000000FFFF              /* 0x10 kernel data */
	.quad	0x00CFF2000000FFFF              /* 0x18 user data, DPL3 */
	.quad	0x00AFFA000000FFFF              /* 0x20 user code, 64-bit, DPL3 */
	/* 0x28 64-bit TSS, available; base computed by the linker script (tss_base_*) */
	.word	TSS_SIZE + IOBITMAP_SIZE        /* limit: covers the bitmap's 0xFF terminator */
	.word	tss_base_0_15
	.byte	tss_base_16_23
	.byte	0x89                            /* present, DPL0, type 9 */
	.byte	0x00
	.byte	tss_base_24_31
	.long	tss_base_32_63
	.long	0
	.quad	0x00CF9A000000FFFF              /* 0x38 kernel code, 32-bit (AP trampoline) */
gdt_end:

	.balign	8
	.word	0, 0, 0
gdt_ptr:
	.word	gdt_end - gdt - 1
	.quad	gdt

	.balign	16
bsp_iret_frame:
	.quad	bsp_user_entry                  /* RIP */
	.quad	SEL_UCODE64 | 3                 /* CS */
	.quad	RFLAGS_USER                     /* RFLAGS */
	.quad	bsp_stack_top                   /* RSP */
	.quad	SEL_UDATA | 3                   /* SS */

	.globl	ap_boot_rsp
	.balign	8
ap_boot_rsp:
	.quad	0

	.balign	16
	.globl	tss
tss:
	.long	0                               /* reserved */
	.quad	0, 0, 0                         /* RSP0-2: never used (no privilege changes) */
	.quad	0                               /* reserved */
	.quad	0, 0, 0, 0, 0, 0, 0             /* IST1-7 */
	.quad	0                               /* reserved */
	.word	0                               /* reserved */
	.word	TSS_SIZE                        /* I/O permission bitmap offset */
	.fill	IOBITMAP_SIZE, 1, 0x00          /* every port allowed */
	.byte	0xFF                            /* terminator */

#ifdef CPL0_CPUID
/* In .data, not .bss: the BSP zeroes .bss after it has recorded its own entry. */
	.balign	16
	.globl	cpl0_cpuid
cpl0_cpuid:
	.fill	256 * 4, 4, 0
#endif

	.bss
	.balign	16
bsp_stack:
	.skip	65536
bsp_stack_top:

#ifdef PVH_NOTE
/* PVH entry point for the loader (Linux uses the same note). */
	.section .note.Xen, "a", @note
	.balign	4
	.long	4                               /* namesz */
	.long	4                               /* descsz */
	.long	18                              /* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz	"Xen"
	.long	pvh_start
	.balign	4
#endif

/*
 * kernel_info (boot protocol 2.15), found by build.rs for the bzImage setup header's
 * kernel_info_offset. Harmless in the ELF builds.
 */
	.section .rodata.kernel_info, "a"
	.balign	4
	.globl	kernel_info
kernel_info:
	.ascii	"LToP"                          /* header */
	.long	kernel_info_end - kernel_info   /* size */
	.long	kernel_info_end - kernel_info   /* size_total: no variable-length data */
	.long	0                               /* setup_type_max: no setup_data types handled */
kernel_info_end:

	.section .note.GNU-stack, "", @progbits
