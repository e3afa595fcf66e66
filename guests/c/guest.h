/* Freestanding support library for the Kestrel test guests. Everything runs at CPL3. */
#ifndef KESTREL_GUEST_H
#define KESTREL_GUEST_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef unsigned long size_t;

#define NULL ((void *)0)
#define NORETURN __attribute__((noreturn))

#define MAX_MEMMAP 128

struct memmap_entry {
	u64 addr;
	u64 size;
	u32 type;
};

/* Boot information, unified from Linux boot_params or PVH hvm_start_info. */
struct bootinfo {
	const char *entry;      /* "linux64", "bzimage" or "pvh" */
	const char *cmdline;    /* never NULL; "" when there is none */
	u32 nr_memmap;
	struct memmap_entry memmap[MAX_MEMMAP];
	int has_initrd;
	u64 initrd_addr;
	u64 initrd_size;
};

/* Provided by each guest program. */
void guest_main(const struct bootinfo *info);
/* Optional (weak default spins): C entry of application processors. */
void ap_main(void);

/* Port and MMIO access. */
static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port)
{
	u8 v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u32 inl(u16 port)
{
	u32 v;
	__asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}
static inline u32 mmio_read32(u64 addr) { return *(volatile u32 *)addr; }
static inline void mmio_write32(u64 addr, u32 v) { *(volatile u32 *)addr = v; }
static inline void mmio_write8(u64 addr, u8 v) { *(volatile u8 *)addr = v; }
static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }

/* String and memory helpers (the compiler may also call the mem* ones). */
void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
void *memmove(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

/* Serial console (COM1). */
void print_char(char c);
void print(const char *s);  /* no newline added */
void print_dec(u64 v);
void print_hex(u64 v, int digits);        /* lowercase, zero-padded to `digits` */
void print_dec2(u64 v);                   /* two digits, zero-padded */
/*
 * Waits for one byte on the console (its value does not matter), so a host test can act at a
 * known moment; returns NULL, or a failure once it has waited too long (tens of seconds on the
 * nested test host), so a host that never answers gets a failure, not a hang.
 */
const char *wait_for_console_byte(void);

/*
 * Command line: finds the first `key=value` word; returns the value (not NUL-terminated, ends at
 * a space or NUL) and stores its length, or returns NULL.
 */
const char *cmdline_get(const char *cmdline, const char *key, size_t *len);
int str_eq_n(const char *s, size_t len, const char *lit);
u64 parse_dec(const char *s, size_t len);

/* Machine control. */
NORETURN void reset(void);
NORETURN void poweroff(void);
NORETURN void halt_forever(void);

#endif
