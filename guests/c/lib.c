/* Freestanding support library for the Kestrel test guests. Everything runs at CPL3. */
#include "guest.h"

#define COM1 0x3F8

#define HVM_START_MAGIC 0x336ec578

static struct bootinfo bootinfo;

void *memcpy(void *dst, const void *src, size_t n)
{
	void *d = dst;
	__asm__ volatile("rep movsb" : "+D"(d), "+S"(src), "+c"(n) : : "memory");
	return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
	if ((u64)dst <= (u64)src || (u64)dst >= (u64)src + n)
		return memcpy(dst, src, n);
	void *d = (u8 *)dst + n - 1;
	const void *s = (const u8 *)src + n - 1;
	__asm__ volatile("std; rep movsb; cld" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
	return dst;
}

void *memset(void *dst, int c, size_t n)
{
	void *d = dst;
	__asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
	return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const u8 *x = a, *y = b;
	for (size_t i = 0; i < n; i++)
		if (x[i] != y[i])
			return x[i] < y[i] ? -1 : 1;
	return 0;
}

size_t strlen(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

void print_char(char c) { outb(COM1, (u8)c); }

/* COM1's line status register and its data-ready bit. */
#define COM1_LSR (COM1 + 5)
#define LSR_DATA_READY 0x01
/* Status reads before wait_for_console_byte gives up: each read is a VM exit. */
#define CONSOLE_WAIT_READS (1UL << 20)

const char *wait_for_console_byte(void)
{
	for (u64 reads = 0; reads < CONSOLE_WAIT_READS; reads++) {
		if (inb(COM1_LSR) & LSR_DATA_READY) {
			(void)inb(COM1);
			return NULL;
		}
		cpu_relax();
	}
	return "no byte from the host on the console";
}

void print(const char *s)
{
	while (*s)
		print_char(*s++);
}

void print_dec(u64 v)
{
	char buf[21];
	int i = sizeof(buf);
	buf[--i] = 0;
	do {
		buf[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	print(&buf[i]);
}

void print_hex(u64 v, int digits)
{
	for (int i = digits - 1; i >= 0; i--)
		print_char("0123456789abcdef"[(v >> (4 * i)) & 0xF]);
}

void print_dec2(u64 v)
{
	print_char((char)('0' + (v / 10) % 10));
	print_char((char)('0' + v % 10));
}

const char *cmdline_get(const char *cmdline, const char *key, size_t *len)
{
	size_t klen = strlen(key);
	const char *p = cmdline;
	while (*p) {
		while (*p == ' ' || *p == '\t' || *p == '\n')
			p++;
		const char *word = p;
		while (*p && *p != ' ' && *p != '\t' && *p != '\n')
			p++;
		size_t wlen = (size_t)(p - word);
		if (wlen > klen && memcmp(word, key, klen) == 0 && word[klen] == '=') {
			*len = wlen - klen - 1;
			return word + klen + 1;
		}
	}
	return NULL;
}

int str_eq_n(const char *s, size_t len, const char *lit)
{
	return strlen(lit) == len && memcmp(s, lit, len) == 0;
}

u64 parse_dec(const char *s, size_t len)
{
	u64 v = 0;
	for (size_t i = 0; i < len && s[i] >= '0' && s[i] <= '9'; i++)
		v = v * 10 + (u64)(s[i] - '0');
	return v;
}

void halt_forever(void)
{
	for (;;)
		cpu_relax();
}

void reset(void)
{
	outb(0x64, 0xFE);
	halt_forever();
}

void poweroff(void)
{
	outb(0x600, 0x34);
	halt_forever();
}

__attribute__((weak)) void ap_main(void)
{
	halt_forever();
}

/* Unaligned little-endian reads from boot structures. */
static u64 rd64(u64 addr)
{
	u64 v;
	memcpy(&v, (const void *)addr, sizeof(v));
	return v;
}

static u32 rd32(u64 addr)
{
	u32 v;
	memcpy(&v, (const void *)addr, sizeof(v));
	return v;
}

static u16 rd16(u64 addr)
{
	u16 v;
	memcpy(&v, (const void *)addr, sizeof(v));
	return v;
}

static u8 rd8(u64 addr) { return *(const volatile u8 *)addr; }

static void from_boot_params(u64 bp)
{
	u64 cmdline = rd32(bp + 0x228) | ((u64)rd32(bp + 0x0c8) << 32);
	bootinfo.cmdline = cmdline ? (const char *)cmdline : "";

	u32 n = rd8(bp + 0x1e8);
	if (n > MAX_MEMMAP)
		n = MAX_MEMMAP;
	for (u32 i = 0; i < n; i++) {
		u64 e = bp + 0x2d0 + 20 * (u64)i;
		bootinfo.memmap[i].addr = rd64(e);
		bootinfo.memmap[i].size = rd64(e + 8);
		bootinfo.memmap[i].type = rd32(e + 16);
	}
	bootinfo.nr_memmap = n;

	u64 image = rd32(bp + 0x218) | ((u64)rd32(bp + 0x0c0) << 32);
	u64 size = rd32(bp + 0x21c) | ((u64)rd32(bp + 0x0c4) << 32);
	if (image && size) {
		bootinfo.has_initrd = 1;
		bootinfo.initrd_addr = image;
		bootinfo.initrd_size = size;
	}
}

static void from_hvm_start_info(u64 si)
{
	if (rd32(si) != HVM_START_MAGIC) {
		print("boot: bad hvm_start_info magic 0x");
		print_hex(rd32(si), 8);
		print("\n");
		reset();
	}
	u32 version = rd32(si + 4);
	u32 nr_modules = rd32(si + 12);
	u64 modlist = rd64(si + 16);
	u64 cmdline = rd64(si + 24);
	bootinfo.cmdline = cmdline ? (const char *)cmdline : "";

	if (version >= 1) {
		u64 memmap = rd64(si + 40);
		u32 n = rd32(si + 48);
		if (n > MAX_MEMMAP)
			n = MAX_MEMMAP;
		for (u32 i = 0; memmap && i < n; i++) {
			u64 e = memmap + 24 * (u64)i;
			bootinfo.memmap[i].addr = rd64(e);
			bootinfo.memmap[i].size = rd64(e + 8);
			bootinfo.memmap[i].type = rd32(e + 16);
		}
		bootinfo.nr_memmap = memmap ? n : 0;
	}

	if (nr_modules > 0 && modlist) {
		bootinfo.has_initrd = 1;
		bootinfo.initrd_addr = rd64(modlist);
		bootinfo.initrd_size = rd64(modlist + 8);
	}
}

extern const u8 _start64[];

/*
 * Entered through a bzImage rather than as an ELF: the zero page carries the image's setup header
 * ("HdrS", protocol 2.00+) and the loader's code32_start, which is where the protected-mode part
 * landed, puts the 64-bit entry (code32_start + 0x200) on _start64. An ELF boot leaves
 * code32_start at 0.
 */
static int entered_as_bzimage(u64 bp)
{
	return rd32(bp + 0x202) == 0x53726448 && rd16(bp + 0x206) >= 0x0200 &&
	       (u64)rd32(bp + 0x214) + 0x200 == (u64)_start64;
}

/* Called (at CPL3, on the BSP stack, after .bss is cleared) by the entry code. */
NORETURN void guest_start(u64 info, u64 kind);

void guest_start(u64 info, u64 kind)
{
	if (kind == 1) {
		bootinfo.entry = "pvh";
		from_hvm_start_info(info);
	} else {
		bootinfo.entry = entered_as_bzimage(info) ? "bzimage" : "linux64";
		from_boot_params(info);
	}
	guest_main(&bootinfo);
	reset();
}
