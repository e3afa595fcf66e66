/*
 * hello: reports what the VMM handed over (entry path, command line, memory, initrd, RTC), then
 * leaves the way `exit=` on the command line asks (default: reset).
 */
#include "guest.h"

static u64 usable_memory(const struct bootinfo *info)
{
	u64 total = 0;
	for (u32 i = 0; i < info->nr_memmap; i++)
		if (info->memmap[i].type == 1)
			total += info->memmap[i].size;
	return total;
}

static u32 fnv1a32(const u8 *p, u64 n)
{
	u32 h = 0x811c9dc5;
	for (u64 i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x01000193;
	}
	return h;
}

static u8 cmos_read(u8 reg)
{
	outb(0x70, reg);
	return inb(0x71);
}

static u8 bcd(u8 v) { return (u8)((v >> 4) * 10 + (v & 0xF)); }

static void print_rtc(void)
{
	while (cmos_read(0x0A) & 0x80)
		cpu_relax();
	u8 sec = cmos_read(0x00), min = cmos_read(0x02), hour = cmos_read(0x04);
	u8 day = cmos_read(0x07), mon = cmos_read(0x08), year = cmos_read(0x09);
	u8 cent = cmos_read(0x32);
	u8 b = cmos_read(0x0B);
	int pm = !(b & 0x02) && (hour & 0x80);
	hour &= 0x7F;
	if (!(b & 0x04)) {
		sec = bcd(sec);
		min = bcd(min);
		hour = bcd(hour);
		day = bcd(day);
		mon = bcd(mon);
		year = bcd(year);
		cent = bcd(cent);
	}
	if (!(b & 0x02)) /* 12-hour clock */
		hour = (u8)(hour % 12 + (pm ? 12 : 0));
	if (cent == 0 || cent > 99)
		cent = 20;
	print("rtc: ");
	print_dec((u64)cent * 100 + year);
	print("-");
	print_dec2(mon);
	print("-");
	print_dec2(day);
	print(" ");
	print_dec2(hour);
	print(":");
	print_dec2(min);
	print(":");
	print_dec2(sec);
	print("\n");
}

/* Printed every this many counts: about 30 lines a second at native speed. */
#define COUNT_STEP (1UL << 25)
/* Where `touch_mib=N` starts writing: above the guest's image, below any guest's RAM top. */
#define TOUCH_BASE (32UL << 20)
#define PAGE_SIZE 4096UL

/*
 * The bytes `touch_mib=N` may write from TOUCH_BASE: N MiB, clipped to the end of the usable
 * memory map entry TOUCH_BASE lies in (0 when it lies in none).
 */
static u64 touch_bytes(const struct bootinfo *info, u64 mib)
{
	for (u32 i = 0; i < info->nr_memmap; i++) {
		const struct memmap_entry *e = &info->memmap[i];
		if (e->type == 1 && e->addr <= TOUCH_BASE && TOUCH_BASE < e->addr + e->size) {
			u64 room = (e->addr + e->size - TOUCH_BASE) & ~(PAGE_SIZE - 1);
			return mib <= room >> 20 ? mib << 20 : room;
		}
	}
	return 0;
}

/*
 * Counts in memory at user level for ever, printing the count every COUNT_STEP. Snapshot tests
 * stop the guest anywhere in here and check that the restored one goes on from the same count:
 * its first line must be the next multiple of COUNT_STEP. Before each line it writes one byte into
 * each page of `touch` bytes from TOUCH_BASE (for kestrel-bench's diff snapshots): once a restored
 * guest has printed two lines, every one of those pages was written since the restore.
 */
static NORETURN void count_forever(u64 touch)
{
	static volatile u64 count;
	print("count: start\n");
	for (;;) {
		count = count + 1;
		if ((count & (COUNT_STEP - 1)) == 0) {
			for (u64 offset = 0; offset < touch; offset += PAGE_SIZE)
				*(volatile u8 *)(TOUCH_BASE + offset) = (u8)(count >> 25);
			print("count: ");
			print_dec(count);
			print("\n");
		}
	}
}

#define LAPIC_BASE 0xFEE00000UL
#define LAPIC_ID 0x20
#define LAPIC_SVR 0xF0
#define LAPIC_IRR 0x200
#define IOAPIC_BASE 0xFEC00000UL
#define IOAPIC_WINDOW 0x10
#define IOAPIC_REDIRECTION(pin) (0x10 + 2 * (pin))
#define KEYBOARD_IRQ 1
#define KEYBOARD_VECTOR 0x31
#define I8042_DATA 0x60
#define I8042_STATUS 0x64
#define I8042_OUTPUT_FULL 0x01
/*
 * Status reads before the wait for the host's keys gives up: each read is a VM exit, 30 to 120 us
 * on the nested test host depending on its load, so 4-16 s: far more than a host's API request
 * takes, and well inside the test harness's hang limit. A host that never types gets a failure.
 */
#define KEYBOARD_WAIT_READS (1UL << 17)

static void ioapic_write(u32 reg, u32 value)
{
	mmio_write32(IOAPIC_BASE, reg);
	mmio_write32(IOAPIC_BASE + IOAPIC_WINDOW, value);
}

static int irr_has(u8 vector)
{
	return (mmio_read32(LAPIC_BASE + LAPIC_IRR + 0x10 * (vector / 32)) >> (vector % 32)) & 1;
}

/*
 * Takes the host's Ctrl+Alt+Del as an OS would: IRQ 1 routed through the IOAPIC to this CPU's
 * local APIC, scan codes read from the i8042. Interrupts stay off (there is no IDT), so the
 * interrupt is found pending in the local APIC's IRR rather than taken. The i8042 raises it as it
 * fills its buffer, before its status says there is a byte, so one look after that is enough.
 */
static void keyboard(void)
{
	mmio_write32(LAPIC_BASE + LAPIC_SVR, 0x1FF); /* software-enable the local APIC */
	u32 apic_id = mmio_read32(LAPIC_BASE + LAPIC_ID) >> 24;
	ioapic_write(IOAPIC_REDIRECTION(KEYBOARD_IRQ) + 1, apic_id << 24);
	ioapic_write(IOAPIC_REDIRECTION(KEYBOARD_IRQ), KEYBOARD_VECTOR); /* fixed, edge, unmasked */
	print("keyboard: waiting\n");

	u64 reads = 0;
	while (!(inb(I8042_STATUS) & I8042_OUTPUT_FULL)) {
		if (++reads == KEYBOARD_WAIT_READS) {
			print("keyboard: no key from the host\n");
			reset();
		}
		cpu_relax();
	}
	print(irr_has(KEYBOARD_VECTOR) ? "keyboard: irq 1 pending\n" : "keyboard: no irq 1\n");

	static const u8 ctrl_alt_del[] = { 0x14, 0x11, 0xE0, 0x71 }; /* scan code set 2 */
	u8 codes[16];
	u32 n = 0;
	print("keyboard: scan codes");
	while (n < sizeof(codes) && (inb(I8042_STATUS) & I8042_OUTPUT_FULL)) {
		codes[n] = inb(I8042_DATA);
		print(" ");
		print_hex(codes[n++], 2);
	}
	print("\n");
	if (n == sizeof(ctrl_alt_del) && memcmp(codes, ctrl_alt_del, n) == 0)
		print("keyboard: ctrl-alt-del, rebooting\n");
	else
		print("keyboard: not ctrl-alt-del, resetting\n");
	reset();
}

static void echo_line(void)
{
	char line[256];
	size_t n = 0;
	print("echo: ready\n");
	for (;;) {
		while (!(inb(0x3FD) & 0x01))
			cpu_relax();
		char c = (char)inb(0x3F8);
		if (c == '\n' || c == '\r')
			break;
		if (n < sizeof(line) - 1)
			line[n++] = c;
	}
	line[n] = 0;
	print("echo: ");
	print(line);
	print("\n");
}

void guest_main(const struct bootinfo *info)
{
	size_t len;
	const char *v;

	print("Hello from the Kestrel test guest (entry: ");
	print(info->entry);
	print(")\n");

	print("cmdline: ");
	print(info->cmdline);
	print("\n");

	print("memory: ");
	print_dec(usable_memory(info));
	print("\n");

	if (info->has_initrd) {
		print("initrd: ");
		print_dec(info->initrd_size);
		print(" ");
		print_hex(fnv1a32((const u8 *)info->initrd_addr, info->initrd_size), 8);
		print("\n");
	} else {
		print("initrd: none\n");
	}

	print_rtc();

	v = cmdline_get(info->cmdline, "loops", &len);
	if (v) {
		u64 n = parse_dec(v, len);
		for (u64 i = 0; i < n; i++)
			outb(0x3FF, (u8)i);
		print("loops: ");
		print_dec(n);
		print("\n");
	}

	v = cmdline_get(info->cmdline, "exit", &len);
	if (!v) {
		v = "reset";
		len = 5;
	}
	if (str_eq_n(v, len, "reset")) {
		print("exit: reset\n");
		reset();
	} else if (str_eq_n(v, len, "poweroff")) {
		print("exit: poweroff\n");
		poweroff();
	} else if (str_eq_n(v, len, "triple-fault")) {
		print("exit: triple-fault\n");
		__asm__ volatile("ud2");
		halt_forever();
	} else if (str_eq_n(v, len, "unhandled-mmio")) {
		u32 x = mmio_read32(0xD0000000UL);
		print("mmio read: 0x");
		print_hex(x, 8);
		print("\n");
		mmio_write32(0xD0000000UL, 0x12345678);
		print("exit: reset\n");
		reset();
	} else if (str_eq_n(v, len, "boot-timer")) {
		/* Firecracker's boot timer (--boot-timer): 123 at 0xC0000000 says "booted". */
		mmio_write8(0xC0000000UL, 123);
		print("exit: boot-timer, poweroff\n");
		poweroff();
	} else if (str_eq_n(v, len, "crash")) {
		print("exit: crash\n");
		__asm__ volatile("jmp *%0" : : "r"(0xD0001000UL));
		halt_forever();
	} else if (str_eq_n(v, len, "echo")) {
		echo_line();
		reset();
	} else if (str_eq_n(v, len, "ctrl-alt-del")) {
		keyboard();
	} else if (str_eq_n(v, len, "hang")) {
		print("exit: hang\n");
		halt_forever();
	} else if (str_eq_n(v, len, "count")) {
		u64 touch = 0;
		v = cmdline_get(info->cmdline, "touch_mib", &len);
		if (v) {
			touch = touch_bytes(info, parse_dec(v, len));
			print("count: touching ");
			print_dec(touch >> 10);
			print(" KiB from ");
			print_dec(TOUCH_BASE >> 20);
			print(" MiB\n");
		}
		count_forever(touch);
	} else {
		print("exit: unknown value, resetting\n");
		reset();
	}
}
