/*
 * bench_vsock: virtio-vsock stream throughput for kestrel-bench --virtio, one direction per run.
 * Parameters on the command line:
 *   vsock.dir=rx|tx     rx: a host process sends to the guest; tx: the guest sends to the host
 *                       (default rx)
 *   vsock.bytes=<n>     bytes to move (default 64 MiB)
 *   vsock.chunk=<n>     the guest's RW payload size for tx, 1-65536 (default 65536)
 *
 * rx: prints "bench_vsock: listening on 5679", accepts the REQUEST a host process's
 * "CONNECT 5679" produces, answers RESPONSE with a 4 MiB receive buffer, then counts RW payload
 * bytes (not copied) until it has them all, handing used rx buffers back and notifying once per
 * batch, and sending a CREDIT_UPDATE after each MiB it consumed. tx: connects from guest port 1001
 * to host port 1235 (the host listens on <uds>_1235), then sends RW packets of vsock.chunk bytes,
 * as many in flight as the device's credit and 8 tx slots allow, one notification per batch,
 * taking the device's CREDIT_UPDATEs from the rx queue. Both end with SHUTDOWN and the device's
 * RST.
 *
 * Prints "bench_vsock: <host-to-guest|guest-to-host> bytes <n> packets <RW packets> cycles <c>",
 * the cycles from the RESPONSE sent (rx) or received (tx) to the last byte received (rx) or the
 * last RW packet used by the device (tx).
 */
#include "bench.h"
#include "vsock_wire.h"

#define LISTEN_PORT 5679
#define GUEST_PORT 1001
#define HOST_PORT 1235

#define RX_BUFFERS 16
#define TX_SLOTS 8
#define MAX_PAYLOAD 65536
#define GUEST_BUF_ALLOC (4U << 20)
#define CREDIT_EVERY (1U << 20)
#define SPINS_WITHOUT_PROGRESS (1UL << 28)

#define HDR ((u32)sizeof(struct vsock_hdr))

static struct virtq rx, tx, event;
static u8 *rx_buffers[RX_BUFFERS];
static u8 *tx_slots[TX_SLOTS];
static int rx_slot_of_head[VIRTQ_MAX_SIZE];
static int tx_slot_of_head[VIRTQ_MAX_SIZE];
static int tx_slot_busy[TX_SLOTS];
static struct vsock_hdr control;
static u64 event_buffer;
static u64 guest_cid;
static u32 local_port, peer_port;
static u32 fwd_cnt;               /* payload bytes the guest consumed */
static u32 peer_buf_alloc, peer_fwd_cnt;

static const char *post_rx(int slot)
{
	struct virtq_buf buf = { .addr = rx_buffers[slot], .len = HDR + MAX_PAYLOAD, .device_writes = 1 };
	int head = virtq_add(&rx, &buf, 1);
	if (head < 0)
		return "cannot post an rx buffer";
	rx_slot_of_head[head] = slot;
	return NULL;
}

static struct vsock_hdr header(u16 op, u32 len, u32 flags)
{
	return (struct vsock_hdr){
		.src_cid = guest_cid, .dst_cid = HOST_CID, .src_port = local_port, .dst_port = peer_port,
		.len = len, .type = TYPE_STREAM, .op = op, .flags = flags, .buf_alloc = GUEST_BUF_ALLOC,
		.fwd_cnt = fwd_cnt,
	};
}

/* A header-only packet, sent and waited for (only when no RW packet is in flight). */
static const char *send_control(u16 op, u32 flags)
{
	control = header(op, 0, flags);
	struct virtq_buf buf = { .addr = &control, .len = HDR, .device_writes = 0 };
	u32 written;
	return virtq_transfer(&tx, &buf, 1, &written);
}

/*
 * Takes every rx packet ready now, hands the buffers back (one notification), and calls `seen`
 * on each header. Returns NULL or a failure; *any says whether there was a packet.
 */
static const char *drain_rx(const char *(*seen)(const struct vsock_hdr *h), int *any)
{
	const char *failure = NULL;
	u16 head;
	u32 len;
	*any = 0;
	while (bench_poll(&rx, &head, &len, &failure)) {
		int slot = rx_slot_of_head[head];
		const struct vsock_hdr *h = (const struct vsock_hdr *)rx_buffers[slot];
		if (len < HDR || h->len != len - HDR)
			return "an rx packet of a bad length";
		peer_buf_alloc = h->buf_alloc;
		peer_fwd_cnt = h->fwd_cnt;
		if ((failure = seen(h)))
			return failure;
		if ((failure = post_rx(slot)))
			return failure;
		*any = 1;
	}
	if (failure)
		return failure;
	if (*any)
		bench_kick(&rx);
	return NULL;
}

static u16 wanted_op;
static int wanted_seen;
static struct vsock_hdr wanted;
static const char *look_for_op(const struct vsock_hdr *h)
{
	if (h->op == wanted_op && !wanted_seen) {
		wanted = *h;
		wanted_seen = 1;
	}
	return NULL;
}

/* Waits for a packet with operation `op` (others are ignored), copied to `wanted`. */
static const char *expect(u16 op)
{
	wanted_op = op;
	wanted_seen = 0;
	for (u64 spins = 0; !wanted_seen; spins++) {
		int any;
		const char *failure = drain_rx(look_for_op, &any);
		if (failure)
			return failure;
		if (spins == SPINS_WITHOUT_PROGRESS)
			return "timeout waiting for a packet";
		cpu_relax();
	}
	return NULL;
}

static u64 total, received, packets;
static const char *count_rw(const struct vsock_hdr *h)
{
	if (h->op == OP_RW) {
		received += h->len;
		fwd_cnt += h->len;
		packets++;
	} else if (h->op == OP_RST || h->op == OP_SHUTDOWN) {
		return "the host closed the connection early";
	}
	return NULL;
}

static const char *host_to_guest(u64 *cycles)
{
	print("bench_vsock: listening on 5679\n");
	const char *failure = expect(OP_REQUEST);
	if (failure)
		return failure;
	if (wanted.dst_port != LISTEN_PORT)
		return "a REQUEST for another port";
	local_port = LISTEN_PORT;
	peer_port = wanted.src_port;
	u64 start = bench_rdtsc();
	if ((failure = send_control(OP_RESPONSE, 0)))
		return failure;
	u32 credit_sent = 0;
	for (u64 spins = 0; received < total; spins++) {
		int any;
		if ((failure = drain_rx(count_rw, &any)))
			return failure;
		if (any)
			spins = 0;
		if (fwd_cnt - credit_sent >= CREDIT_EVERY) {
			credit_sent = fwd_cnt;
			if ((failure = send_control(OP_CREDIT_UPDATE, 0)))
				return failure;
		}
		if (spins == SPINS_WITHOUT_PROGRESS)
			return "timeout waiting for host data";
		cpu_relax();
	}
	*cycles = bench_rdtsc() - start;
	if (received != total)
		return "the host sent more than vsock.bytes";
	return NULL;
}

static const char *no_rw(const struct vsock_hdr *h)
{
	if (h->op == OP_RST || h->op == OP_SHUTDOWN)
		return "the host closed the connection early";
	return NULL;
}

static const char *guest_to_host(u64 chunk, u64 *cycles)
{
	local_port = GUEST_PORT;
	peer_port = HOST_PORT;
	const char *failure = send_control(OP_REQUEST, 0);
	if (!failure)
		failure = expect(OP_RESPONSE);
	if (failure)
		return failure;
	if (wanted.src_port != HOST_PORT || wanted.dst_port != GUEST_PORT)
		return "the RESPONSE has the wrong ports";
	u64 start = bench_rdtsc();
	u32 tx_cnt = 0;
	u64 sent = 0;
	int in_flight = 0;
	for (u64 spins = 0; sent < total || in_flight; spins++) {
		u16 head;
		u32 len;
		while (bench_poll(&tx, &head, &len, &failure)) {
			tx_slot_busy[tx_slot_of_head[head]] = 0;
			in_flight--;
			spins = 0;
		}
		if (failure)
			return failure;
		int any;
		if ((failure = drain_rx(no_rw, &any)))
			return failure;
		int added = 0;
		for (int s = 0; s < TX_SLOTS && sent < total; s++) {
			u32 credit = peer_buf_alloc - (tx_cnt - peer_fwd_cnt);
			if (tx_slot_busy[s])
				continue;
			if (credit == 0 || credit > peer_buf_alloc)
				break;
			u32 n = (u32)(total - sent < chunk ? total - sent : chunk);
			if (n > credit)
				n = credit;
			*(struct vsock_hdr *)tx_slots[s] = header(OP_RW, n, 0);
			struct virtq_buf buf = { .addr = tx_slots[s], .len = HDR + n, .device_writes = 0 };
			int h = virtq_add(&tx, &buf, 1);
			if (h < 0)
				return "cannot add a tx packet";
			tx_slot_of_head[h] = s;
			tx_slot_busy[s] = 1;
			in_flight++;
			tx_cnt += n;
			sent += n;
			packets++;
			added = 1;
		}
		if (added) {
			bench_kick(&tx);
			spins = 0;
		}
		if (spins == SPINS_WITHOUT_PROGRESS)
			return "timeout waiting for the device (tx or credit)";
		cpu_relax();
	}
	*cycles = bench_rdtsc() - start;
	return NULL;
}

const char *test_bench_vsock(struct virtio_dev *dev)
{
	int to_host = bench_param_is("vsock.dir", "tx", 0);
	if (!to_host && !bench_param_is("vsock.dir", "rx", 1))
		return "vsock.dir must be rx or tx";
	total = bench_param("vsock.bytes", 64UL << 20);
	u64 chunk = bench_param("vsock.chunk", MAX_PAYLOAD);
	if (chunk == 0 || chunk > MAX_PAYLOAD)
		return "vsock.chunk must be 1-65536";

	const char *failure = virtio_start(dev, 0);
	if (!failure)
		failure = virtq_setup(dev, &rx, 0, 32);
	if (!failure)
		failure = virtq_setup(dev, &tx, 1, 32);
	if (!failure)
		failure = virtq_setup(dev, &event, 2, 8);
	if (!failure)
		failure = virtio_driver_ok(dev);
	if (failure)
		return failure;
	guest_cid = virtio_config_read64(dev, 0);

	u64 offset = 0;
	for (int i = 0; i < RX_BUFFERS; i++)
		if (!(rx_buffers[i] = bench_buffer(&offset, HDR + MAX_PAYLOAD)))
			return "no room for the rx buffers";
	for (int i = 0; i < TX_SLOTS; i++) {
		if (!(tx_slots[i] = bench_buffer(&offset, HDR + MAX_PAYLOAD)))
			return "no room for the tx buffers";
		for (u32 b = 0; b < HDR + MAX_PAYLOAD; b++)
			tx_slots[i][b] = (u8)(b * 13 + i);
	}
	/* Touched before the clock starts, so no first-touch fault is timed. */
	for (int i = 0; i < RX_BUFFERS; i++)
		memset(rx_buffers[i], 0, HDR + MAX_PAYLOAD);

	struct virtq_buf event_buf = { .addr = &event_buffer, .len = sizeof(event_buffer), .device_writes = 1 };
	if (virtq_add(&event, &event_buf, 1) < 0)
		return "cannot post an event buffer";
	virtq_notify(&event);
	for (int slot = 0; slot < RX_BUFFERS; slot++)
		if ((failure = post_rx(slot)))
			return failure;
	virtq_notify(&rx);

	u64 cycles = 0;
	failure = to_host ? guest_to_host(chunk, &cycles) : host_to_guest(&cycles);
	if (!failure)
		failure = send_control(OP_SHUTDOWN, SHUTDOWN_BOTH);
	if (!failure)
		failure = expect(OP_RST);
	if (failure)
		return failure;
	print("bench_vsock: ");
	print(to_host ? "guest-to-host" : "host-to-guest");
	bench_field("bytes", to_host ? total : received);
	bench_field("packets", packets);
	bench_field("cycles", cycles);
	print("\n");
	return NULL;
}
