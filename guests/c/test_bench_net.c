/*
 * bench_net: virtio-net transmit throughput for kestrel-bench --virtio, and receive throughput for
 * the rate-limit tests (crates/kestrel/tests/net_rate_limit.rs). Parameters on the command line:
 *   net.mode=tx|rx   send (the default) or receive
 *   net.frames=<n>   frames to send or receive (default 20000; 0 sets the device up and sends none)
 *   net.len=<n>      Ethernet frame length without the virtio header, 60-1514 (default 1514)
 *   net.qd=<n>       frames kept in flight, 1-64 (default 32); receive buffers posted, in rx mode
 *
 * Every frame goes to the Ethernet broadcast address with the local experimental EtherType
 * 0x88B5, which no host protocol takes: the host kernel counts it on the tap (rx_packets) and
 * drops it, and nothing answers. Only VIRTIO_NET_F_MAC is accepted (no offloads); each frame is
 * one descriptor, the 12-byte virtio_net_hdr_v1 (all zero) followed by the frame. With net.qd
 * frames in flight, completed slots are refilled with one notification per batch. No receive
 * buffers are posted.
 *
 * Prints "bench_net: tx frames <n> bytes <frame bytes> cycles <TSC cycles>", the cycles from
 * before the first frame was added to after the device used the last one.
 *
 * In rx mode the host sends the frames: EtherType 0x88B5, then a 32-bit big-endian sequence number
 * counting from 0, then bytes (u8)(i * 7 + seq) at offset i, net.len bytes in all. The guest checks
 * every such frame is whole and the next in sequence (frames of other types, the host's IPv6
 * chatter, are skipped), and prints "bench_net: rx frames <n> bytes <frame bytes> cycles <TSC
 * cycles>", the cycles from the first frame's arrival to the last's.
 */
#include "bench.h"

#define VIRTIO_NET_F_MAC (1UL << 5)
#define HDR_LEN 12
#define MAX_QD 64
#define SPINS_WITHOUT_PROGRESS (1UL << 28)

static struct virtq rxq, txq;
static u8 *slots[MAX_QD];
static int slot_of_head[VIRTQ_MAX_SIZE];

static const char *receive_frames(u64 frames, u64 len, u64 qd, struct virtio_dev *dev);

const char *test_bench_net(struct virtio_dev *dev)
{
	u64 frames = bench_param("net.frames", 20000);
	u64 len = bench_param("net.len", 1514);
	u64 qd = bench_param("net.qd", 32);
	if (len < 60 || len > 1514)
		return "net.len must be 60-1514";
	if (qd == 0 || qd > MAX_QD)
		return "net.qd must be 1-64";
	if (bench_param_is("net.mode", "rx", 0))
		return receive_frames(frames, len, qd, dev);

	const char *failure = virtio_start(dev, VIRTIO_NET_F_MAC);
	if (!failure)
		failure = virtq_setup(dev, &rxq, 0, 16);
	if (!failure)
		failure = virtq_setup(dev, &txq, 1, 128);
	if (!failure)
		failure = virtio_driver_ok(dev);
	if (failure)
		return failure;
	if (txq.size < qd)
		return "the transmit queue is smaller than net.qd";
	u8 mac[6];
	for (u32 i = 0; i < 6; i++)
		mac[i] = (u8)virtio_config_read(dev, i, 1);

	u64 offset = 0;
	for (u64 s = 0; s < qd; s++) {
		u8 *b = slots[s] = bench_buffer(&offset, HDR_LEN + len);
		if (!b)
			return "no room for the frames";
		memset(b, 0, HDR_LEN);
		u8 *f = b + HDR_LEN;
		memset(f, 0xff, 6);
		memcpy(f + 6, mac, 6);
		f[12] = 0x88;
		f[13] = 0xB5;
		for (u64 i = 14; i < len; i++)
			f[i] = (u8)(i * 11 + s);
	}

	u64 issued = 0, done = 0;
#define ISSUE(s)                                                                                   \
	do {                                                                                       \
		struct virtq_buf buf = { .addr = slots[s], .len = (u32)(HDR_LEN + len) };          \
		int head = virtq_add(&txq, &buf, 1);                                               \
		if (head < 0)                                                                      \
			return "cannot add a frame";                                               \
		slot_of_head[head] = (int)(s);                                                     \
		issued++;                                                                          \
	} while (0)

	u64 start = bench_rdtsc();
	for (u64 s = 0; s < qd && issued < frames; s++)
		ISSUE(s);
	if (issued)
		bench_kick(&txq);
	u64 spins = 0;
	while (done < frames) {
		int refilled = 0;
		u16 head;
		u32 used;
		while (bench_poll(&txq, &head, &used, &failure)) {
			done++;
			spins = 0;
			if (issued < frames) {
				ISSUE((u64)slot_of_head[head]);
				refilled = 1;
			}
		}
		if (failure)
			return failure;
		if (refilled)
			bench_kick(&txq);
		if (++spins == SPINS_WITHOUT_PROGRESS)
			return "timeout waiting for the device to use a frame";
		cpu_relax();
	}
	u64 cycles = bench_rdtsc() - start;
#undef ISSUE

	print("bench_net: tx");
	bench_field("frames", frames);
	bench_field("bytes", frames * len);
	bench_field("cycles", cycles);
	print("\n");
	return NULL;
}

/* Whether the received frame `f` of `len` bytes (header excluded) is test frame `seq`, whole. */
static const char *check_frame(const u8 *f, u32 len, u64 want_len, u64 seq)
{
	if (len != want_len)
		return "a test frame arrived with the wrong length";
	u32 got = (u32)f[14] << 24 | (u32)f[15] << 16 | (u32)f[16] << 8 | f[17];
	if (got != (u32)seq)
		return "a test frame arrived out of order (or one was lost)";
	for (u32 i = 18; i < len; i++)
		if (f[i] != (u8)(i * 7 + seq))
			return "a test frame arrived damaged";
	return NULL;
}

static const char *receive_frames(u64 frames, u64 len, u64 qd, struct virtio_dev *dev)
{
	const char *failure = virtio_start(dev, VIRTIO_NET_F_MAC);
	if (!failure)
		failure = virtq_setup(dev, &rxq, 0, 128);
	if (!failure)
		failure = virtq_setup(dev, &txq, 1, 16);
	if (!failure)
		failure = virtio_driver_ok(dev);
	if (failure)
		return failure;
	if (rxq.size < qd)
		return "the receive queue is smaller than net.qd";

	u64 offset = 0;
#define POST(s)                                                                                    \
	do {                                                                                       \
		struct virtq_buf buf = { .addr = slots[s], .len = HDR_LEN + 1514, .device_writes = 1 }; \
		int head = virtq_add(&rxq, &buf, 1);                                               \
		if (head < 0)                                                                      \
			return "cannot add a receive buffer";                                      \
		slot_of_head[head] = (int)(s);                                                     \
	} while (0)
	for (u64 s = 0; s < qd; s++) {
		slots[s] = bench_buffer(&offset, HDR_LEN + 1514);
		if (!slots[s])
			return "no room for the receive buffers";
		POST(s);
	}
	bench_kick(&rxq);

	u64 received = 0, start = 0, spins = 0;
	while (received < frames) {
		int posted = 0;
		u16 head;
		u32 used;
		while (bench_poll(&rxq, &head, &used, &failure)) {
			spins = 0;
			int s = slot_of_head[head];
			const u8 *f = slots[s] + HDR_LEN;
			if (used < HDR_LEN + 14)
				return "a received frame is shorter than an Ethernet header";
			if (f[12] == 0x88 && f[13] == 0xB5) {
				if (received == 0)
					start = bench_rdtsc();
				failure = check_frame(f, used - HDR_LEN, len, received);
				if (failure)
					return failure;
				received++;
			}
			POST(s);
			posted = 1;
		}
		if (failure)
			return failure;
		if (posted)
			bench_kick(&rxq);
		if (++spins == SPINS_WITHOUT_PROGRESS)
			return "timeout waiting for a frame";
		cpu_relax();
	}
	u64 cycles = bench_rdtsc() - start;
#undef POST

	print("bench_net: rx");
	bench_field("frames", frames);
	bench_field("bytes", frames * len);
	bench_field("cycles", cycles);
	print("\n");
	return NULL;
}
