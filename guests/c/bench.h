/*
 * Helpers shared by the benchmark tests of the virtio guest (test_bench_*.c), for kestrel-bench's
 * `--virtio` part (crates/bench/src/virtio.rs):
 *
 * - their parameters come from the kernel command line, which a test function is not handed: it is
 *   found through the zero page, which the guest contract puts at 0x7000 (cmd_line_ptr at 0x228,
 *   ext_cmd_line_ptr at 0x0C8);
 * - time is the TSC (rdtsc works at CPL3: the guest never sets CR4.TSD); the host converts cycles
 *   to seconds with the rate KVM gives the vCPU (KVM_GET_TSC_KHZ);
 * - bulk buffers live in guest RAM from BENCH_BUFFERS up (not in .bss, which every run of the
 *   guest clears), so the guest needs --memory of at least BENCH_BUFFERS + BENCH_BUFFER_BYTES.
 *
 * Only static functions: each test file includes this header on its own.
 */
#ifndef KESTREL_BENCH_H
#define KESTREL_BENCH_H

#include "virtio.h"

#define BENCH_ZERO_PAGE 0x7000UL
#define BENCH_BUFFERS (64UL << 20)
#define BENCH_BUFFER_BYTES (32UL << 20)

static inline u64 bench_rdtsc(void)
{
	u32 lo, hi;
	/* lfence: earlier instructions (the last poll of the used ring) finish before the read. */
	__asm__ volatile("lfence; rdtsc" : "=a"(lo), "=d"(hi) : : "memory");
	return (u64)hi << 32 | lo;
}

static inline const char *bench_cmdline(void)
{
	const volatile u8 *bp = (const volatile u8 *)BENCH_ZERO_PAGE;
	u64 low = *(const volatile u32 *)(bp + 0x228);
	u64 high = *(const volatile u32 *)(bp + 0x0c8);
	u64 cmdline = low | high << 32;
	return cmdline ? (const char *)cmdline : "";
}

/* The decimal value of `key=` on the command line, or `otherwise`. */
static inline u64 bench_param(const char *key, u64 otherwise)
{
	size_t len = 0;
	const char *value = cmdline_get(bench_cmdline(), key, &len);
	return value && len ? parse_dec(value, len) : otherwise;
}

/* Whether `key=` on the command line is `word` (`otherwise` when the key is absent). */
static inline int bench_param_is(const char *key, const char *word, int otherwise)
{
	size_t len = 0;
	const char *value = cmdline_get(bench_cmdline(), key, &len);
	return value ? str_eq_n(value, len, word) : otherwise;
}

/* `size` bytes of the bulk area, from `*offset` (advanced), aligned to 4 KiB. */
static inline u8 *bench_buffer(u64 *offset, u64 size)
{
	u64 at = (*offset + 4095) & ~4095UL;
	if (at + size > BENCH_BUFFER_BYTES)
		return NULL;
	*offset = at + size;
	return (u8 *)(BENCH_BUFFERS + at);
}

/* Notifies unless the device said it needs no notification (VIRTQ_USED_F_NO_NOTIFY). */
static inline void bench_kick(struct virtq *vq)
{
	if (!(vq->used->flags & 1))
		virtq_notify(vq);
}

/* Takes the next used element if there is one: 1 and *head, *len set; 0 when none is ready. */
static inline int bench_poll(struct virtq *vq, u16 *head, u32 *len, const char **failure)
{
	if (vq->used->idx == vq->last_used)
		return 0;
	*failure = virtq_wait(vq, head, len);
	return *failure == NULL;
}

/* "<name>: <what> <n>" pieces of the result line. */
static inline void bench_field(const char *what, u64 value)
{
	print(" ");
	print(what);
	print(" ");
	print_dec(value);
}

#endif
