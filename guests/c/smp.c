/*
 * smp: reads the MP table, starts every application processor with INIT-SIPI-SIPI through the
 * xAPIC (one at a time), lets each report itself (and check the APIC IDs CPUID gave it at CPL0),
 * then resets.
 */
#include "guest.h"

#define LAPIC_BASE 0xFEE00000UL
#define LAPIC_ID (LAPIC_BASE + 0x20)
#define LAPIC_SVR (LAPIC_BASE + 0xF0)
#define LAPIC_ICR_LO (LAPIC_BASE + 0x300)
#define LAPIC_ICR_HI (LAPIC_BASE + 0x310)
#define ICR_BUSY (1u << 12)

#define TRAMP_BASE 0x8000UL
#define SIPI_VECTOR (TRAMP_BASE >> 12)

#define MAX_APS 254 /* kestrel run --cpus allows 1..254 */
#define AP_STACK_SIZE 4096
/* Spin iterations before giving up on an AP: 7-15 s on the nested test host (~28 ns each). */
#define START_TIMEOUT (1UL << 28)

extern const u8 tramp_start[], tramp_end[];
extern volatile u64 ap_boot_rsp;

static u8 ap_stacks[MAX_APS][AP_STACK_SIZE] __attribute__((aligned(16)));
static volatile u32 cpus_online;

static u8 checksum(const u8 *p, size_t n)
{
	u8 s = 0;
	for (size_t i = 0; i < n; i++)
		s = (u8)(s + p[i]);
	return s;
}

static const u8 *find_mpfp_in(u64 start, u64 end)
{
	for (u64 a = start; a + 16 <= end; a += 16) {
		const u8 *p = (const u8 *)a;
		if (p[0] == '_' && p[1] == 'M' && p[2] == 'P' && p[3] == '_')
			return p;
	}
	return NULL;
}

static NORETURN void fail(const char *msg)
{
	print(msg);
	print("\n");
	reset();
}

static u32 lapic_id(void) { return mmio_read32(LAPIC_ID) >> 24; }

static void send_ipi(u32 apic_id, u32 icr_lo)
{
	mmio_write32(LAPIC_ICR_HI, apic_id << 24);
	mmio_write32(LAPIC_ICR_LO, icr_lo);
	while (mmio_read32(LAPIC_ICR_LO) & ICR_BUSY)
		cpu_relax();
}

/*
 * What CPUID reported on each CPU at CPL0, indexed by local APIC ID: recorded by entry.S (built
 * with -DCPL0_CPUID) before the CPU drops to CPL3. The check cannot execute CPUID here: on some
 * nested hosts (kvm_pvm) CPUID at CPL3 is not intercepted and returns the physical host CPU's
 * values, not the per-vCPU table Kestrel gave KVM; at CPL0, where Linux reads it, KVM applies it.
 */
struct cpl0_cpuid {
	u32 max_leaf;  /* leaf 0 EAX */
	u32 leaf1_ebx; /* leaf 1 EBX: initial APIC ID in bits 31:24 */
	u32 leafb_edx; /* leaf 0xB subleaf 0 EDX: x2APIC ID (if max_leaf >= 0xB) */
	u32 recorded;  /* 1 once entry.S has filled the entry */
};
extern const volatile struct cpl0_cpuid cpl0_cpuid[256];

/*
 * Prints " cpuid ok" when the APIC IDs CPUID reported (at CPL0) for this CPU (leaf 1
 * EBX[31:24], and leaf 0xB subleaf 0 EDX when the maximum basic leaf reaches 0xB) equal its
 * local APIC ID, else " cpuid mismatch <leaf 1 id> <leaf 0xB id>" ("none" for a missing leaf
 * 0xB; "none none" if nothing was recorded for this APIC ID). No newline.
 */
static void print_cpuid_check(u32 apic_id)
{
	const volatile struct cpl0_cpuid *c = &cpl0_cpuid[apic_id & 0xFF];
	if (!c->recorded) {
		print(" cpuid mismatch none none");
		return;
	}
	u32 leaf1_id = c->leaf1_ebx >> 24;
	int has_leafb = c->max_leaf >= 0xB;
	u32 leafb_edx = c->leafb_edx;
	if (leaf1_id == apic_id && (!has_leafb || leafb_edx == apic_id)) {
		print(" cpuid ok");
		return;
	}
	print(" cpuid mismatch ");
	print_dec(leaf1_id);
	print(" ");
	if (has_leafb)
		print_dec(leafb_edx);
	else
		print("none");
}

void ap_main(void)
{
	u32 id = lapic_id();
	print("cpu ");
	print_dec(id);
	print(" online");
	print_cpuid_check(id);
	print("\n");
	__atomic_fetch_add(&cpus_online, 1, __ATOMIC_SEQ_CST);
	halt_forever();
}

void guest_main(const struct bootinfo *info)
{
	(void)info;

	const u8 *fp = find_mpfp_in(0x9FC00, 0xA0000);
	if (!fp)
		fp = find_mpfp_in(0xF0000, 0x100000);
	if (!fp)
		fail("mptable: not found");
	u32 fp_len = fp[8] ? fp[8] * 16u : 16u;
	if (checksum(fp, fp_len) != 0)
		fail("mptable: bad floating pointer checksum");
	u32 cfg_addr;
	memcpy(&cfg_addr, fp + 4, 4);
	const u8 *cfg = (const u8 *)(u64)cfg_addr;
	if (!cfg || memcmp(cfg, "PCMP", 4) != 0)
		fail("mptable: bad configuration table signature");
	u16 base_len, entry_count;
	memcpy(&base_len, cfg + 4, 2);
	memcpy(&entry_count, cfg + 34, 2);
	if (checksum(cfg, base_len) != 0)
		fail("mptable: bad configuration table checksum");

	u8 apic_ids[256];
	u32 ncpus = 0;
	const u8 *e = cfg + 44, *end = cfg + base_len;
	for (u32 i = 0; i < entry_count && e < end; i++) {
		switch (e[0]) {
		case 0: /* processor */
			if (ncpus < sizeof(apic_ids))
				apic_ids[ncpus] = e[1];
			ncpus++;
			e += 20;
			break;
		case 1: /* bus */
		case 2: /* I/O APIC */
		case 3: /* I/O interrupt assignment */
		case 4: /* local interrupt assignment */
			e += 8;
			break;
		default:
			print("mptable: unknown entry type ");
			print_dec(e[0]);
			print("\n");
			reset();
		}
	}
	print("mptable: ");
	print_dec(ncpus);
	print(" cpus\n");
	if (ncpus > MAX_APS + 1 || ncpus > sizeof(apic_ids))
		fail("smp: too many cpus for this guest");

	memcpy((void *)TRAMP_BASE, tramp_start, (size_t)(tramp_end - tramp_start));

	/*
	 * Software-enable the local APIC (spurious vector 0xFF; IF stays 0) as an OS would. With it
	 * left disabled, KVM on this host never delivers the physical-destination INIT/SIPI when the
	 * VM has exactly two vCPUs (broadcasts and larger VMs work).
	 */
	mmio_write32(LAPIC_SVR, 0x1FF);
	u32 self = lapic_id();
	print("cpu ");
	print_dec(self);
	print_cpuid_check(self);
	print("\n");
	u32 online = 1;
	cpus_online = 1;
	for (u32 i = 0; i < ncpus; i++) {
		u32 id = apic_ids[i];
		if (id == self)
			continue;
		ap_boot_rsp = (u64)&ap_stacks[online - 1][AP_STACK_SIZE];
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
		send_ipi(id, 0x00004500);               /* INIT, level assert */
		send_ipi(id, 0x00004600 | SIPI_VECTOR); /* STARTUP */
		send_ipi(id, 0x00004600 | SIPI_VECTOR); /* STARTUP again, as the MP spec says */
		u64 spins = 0;
		while (cpus_online == online) {
			if (++spins == START_TIMEOUT) {
				print("smp: cpu ");
				print_dec(id);
				print(" did not start\n");
				reset();
			}
			cpu_relax();
		}
		online = cpus_online;
	}
	print("smp: ");
	print_dec(online);
	print(" cpus online\n");
	reset();
}
