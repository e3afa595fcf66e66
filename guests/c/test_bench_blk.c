/*
 * bench_blk: virtio-blk throughput for kestrel-bench --virtio. Parameters on the command line:
 *   blk.mode=seqread|seqwrite|randread|randwrite|getid   (default seqread)
 *   blk.bs=<bytes>     request size, a multiple of 512 up to 1 MiB (default 131072)
 *   blk.qd=<n>         requests kept in flight, 1-64 (default 1)
 *   blk.count=<n>      requests (default 1024; 0 sets the device up and does no I/O)
 * Sequential requests walk the disk from sector 0 and wrap at its end; random ones go to
 * bs-aligned offsets drawn from a fixed xorshift sequence. With qd > 1 the guest adds qd requests,
 * notifies once, then polls the used ring and refills every completed slot, notifying once per
 * refill batch. Every request must complete with status OK and the full used length.
 * getid sends GET_ID requests (the device writes its 20-byte serial, touching no disk; blk.bs is
 * ignored): the notify → device → used-ring round trip with no I/O, the floor of a request.
 *
 * Prints "bench_blk: <mode> bs <bs> qd <qd> requests <n> bytes <n> cycles <TSC cycles>", the
 * cycles from before the first request was added to after the last one completed.
 */
#include "bench.h"

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_GET_ID 8
#define ID_BYTES 20
#define SECTOR 512
#define MAX_QD 64
#define MAX_BS (1UL << 20)
#define SPINS_WITHOUT_PROGRESS (1UL << 28)

struct blk_header {
	u32 type;
	u32 reserved;
	u64 sector;
};

struct slot {
	struct blk_header header;
	u8 status;
	u8 *data;
	int head;
};

static struct slot slots[MAX_QD];
static int slot_of_head[VIRTQ_MAX_SIZE];

static u64 xorshift_state = 0x9E3779B97F4A7C15UL;
static u64 xorshift(void)
{
	u64 x = xorshift_state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return xorshift_state = x;
}

const char *test_bench_blk(struct virtio_dev *dev)
{
	int write = bench_param_is("blk.mode", "seqwrite", 0) || bench_param_is("blk.mode", "randwrite", 0);
	int random = bench_param_is("blk.mode", "randread", 0) || bench_param_is("blk.mode", "randwrite", 0);
	int getid = bench_param_is("blk.mode", "getid", 0);
	const char *mode = random ? (write ? "randwrite" : "randread") : (write ? "seqwrite" : "seqread");
	if (getid)
		mode = "getid";
	else if (!random && !write && !bench_param_is("blk.mode", "seqread", 1))
		return "blk.mode must be seqread, seqwrite, randread, randwrite or getid";
	u64 bs = getid ? ID_BYTES : bench_param("blk.bs", 131072);
	u64 qd = bench_param("blk.qd", 1);
	u64 count = bench_param("blk.count", 1024);
	if (!getid && (bs == 0 || bs % SECTOR || bs > MAX_BS))
		return "blk.bs must be a multiple of 512 up to 1 MiB";
	if (qd == 0 || qd > MAX_QD)
		return "blk.qd must be 1-64";

	struct virtq vq;
	const char *failure = virtio_start(dev, 0);
	if (!failure)
		failure = virtq_setup(dev, &vq, 0, 256);
	if (!failure)
		failure = virtio_driver_ok(dev);
	if (failure)
		return failure;
	if (vq.size < 3 * qd)
		return "the queue is too small for blk.qd";
	u64 blocks = getid ? 1 : virtio_config_read64(dev, 0) * SECTOR / bs;
	if (blocks == 0)
		return "the disk is smaller than blk.bs";

	u64 offset = 0;
	for (u64 i = 0; i < qd; i++) {
		slots[i].data = bench_buffer(&offset, bs);
		if (!slots[i].data)
			return "blk.bs x blk.qd is larger than the buffer area";
		/* Touched before the clock starts, so no first-touch fault is timed. */
		for (u64 b = 0; b < bs; b++)
			slots[i].data[b] = (u8)(b * 7 + i);
	}

	u64 next_block = 0;
	u64 issued = 0, done = 0;
	/* Puts request number `issued` into slot `s`; returns NULL or a failure. */
#define ISSUE(s)                                                                                   \
	do {                                                                                       \
		u64 block = random ? xorshift() % blocks : next_block++ % blocks;                  \
		u32 type = getid ? VIRTIO_BLK_T_GET_ID : write ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN;    \
		slots[s].header = (struct blk_header){ .type = type,                               \
						       .sector = getid ? 0 : block * (bs / SECTOR) }; \
		slots[s].status = 0xFF;                                                            \
		struct virtq_buf bufs[3] = {                                                       \
			{ .addr = &slots[s].header, .len = sizeof(struct blk_header) },            \
			{ .addr = slots[s].data, .len = (u32)bs, .device_writes = !write },        \
			{ .addr = &slots[s].status, .len = 1, .device_writes = 1 },                \
		};                                                                                 \
		slots[s].head = virtq_add(&vq, bufs, 3);                                           \
		if (slots[s].head < 0)                                                             \
			return "cannot add a request";                                             \
		slot_of_head[slots[s].head] = (int)(s);                                            \
		issued++;                                                                          \
	} while (0)

	u64 start = bench_rdtsc();
	for (u64 s = 0; s < qd && issued < count; s++)
		ISSUE(s);
	if (issued)
		virtq_notify(&vq);
	u64 spins = 0;
	while (done < count) {
		int refilled = 0;
		u16 head;
		u32 len;
		while (bench_poll(&vq, &head, &len, &failure)) {
			int s = slot_of_head[head];
			if (slots[s].head != head)
				return "the device completed a request it was not given";
			if (slots[s].status != 0 || len != 1 + (write ? 0 : bs))
				return "a request failed or used a wrong length";
			done++;
			spins = 0;
			if (issued < count) {
				ISSUE(s);
				refilled = 1;
			}
		}
		if (failure)
			return failure;
		if (refilled)
			virtq_notify(&vq);
		if (++spins == SPINS_WITHOUT_PROGRESS)
			return "timeout waiting for the device to use a buffer";
		cpu_relax();
	}
	u64 cycles = bench_rdtsc() - start;
#undef ISSUE

	print("bench_blk: ");
	print(mode);
	bench_field("bs", bs);
	bench_field("qd", qd);
	bench_field("requests", count);
	bench_field("bytes", count * bs);
	bench_field("cycles", cycles);
	print("\n");
	return NULL;
}
