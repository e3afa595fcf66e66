/*
 * vsock: speaks the virtio-vsock packet protocol by hand, both ways, against the host side of
 * crates/kestrel/tests/virtio.rs.
 *
 * 1. Guest to host: REQUEST from guest port 1000 to host port 1234 (the host test listens on
 *    <uds>_1234 and echoes), RESPONSE, RW "ping from the guest", the same bytes back in RW
 *    packets, SHUTDOWN (both directions), RST.
 * 2. Host to guest: prints "vsock: listening on 5678", waits for the REQUEST a host process's
 *    "CONNECT 5678" produces, answers RESPONSE, echoes the RW it gets, SHUTDOWN, RST.
 *
 * Prints "vsock: guest cid <cid>", "vsock: echo from host port 1234", "vsock: echoed <n> bytes to
 * host port <port>".
 */
#include "virtio.h"
#include "vsock_wire.h"

#define GUEST_PORT 1000
#define HOST_PORT 1234
#define LISTEN_PORT 5678

#define RX_BUFFERS 4
#define PAYLOAD_MAX 256
#define BUF_ALLOC 4096

struct packet {
	struct vsock_hdr hdr;
	u8 payload[PAYLOAD_MAX];
} __attribute__((packed));

static struct virtq rx, tx, event;
static struct packet rx_packets[RX_BUFFERS];
static int rx_slot_of_head[VIRTQ_MAX_SIZE];
static struct packet out;
static u64 event_buffer;
static u64 guest_cid;
/* Bytes this guest has consumed from the host, per connection in turn (our fwd_cnt). */
static u32 fwd_cnt;

static const char *post_rx(int slot)
{
	struct virtq_buf buf = { .addr = &rx_packets[slot], .len = sizeof(struct packet), .device_writes = 1 };
	int head = virtq_add(&rx, &buf, 1);
	if (head < 0)
		return "cannot post an rx buffer";
	rx_slot_of_head[head] = slot;
	virtq_notify(&rx);
	return NULL;
}

static const char *send(u16 op, u32 src_port, u32 dst_port, u32 flags, const u8 *data, u32 len)
{
	out.hdr = (struct vsock_hdr){
		.src_cid = guest_cid, .dst_cid = HOST_CID, .src_port = src_port, .dst_port = dst_port,
		.len = len, .type = TYPE_STREAM, .op = op, .flags = flags, .buf_alloc = BUF_ALLOC,
		.fwd_cnt = fwd_cnt,
	};
	if (len)
		memcpy(out.payload, data, len);
	struct virtq_buf buf = { .addr = &out, .len = (u32)sizeof(struct vsock_hdr) + len, .device_writes = 0 };
	u32 written;
	return virtq_transfer(&tx, &buf, 1, &written);
}

/* The next packet the device put in an rx buffer (copied to `in`), its buffer posted again. */
static const char *receive(struct packet *in)
{
	u16 head;
	u32 len;
	const char *failure = virtq_wait(&rx, &head, &len);
	if (failure)
		return failure;
	int slot = rx_slot_of_head[head];
	if (len < sizeof(struct vsock_hdr) || len > sizeof(struct packet))
		return "an rx packet of a bad length";
	memcpy(in, &rx_packets[slot], len);
	if (in->hdr.len != len - sizeof(struct vsock_hdr))
		return "an rx header whose len disagrees with the used length";
	if (in->hdr.src_cid != HOST_CID || in->hdr.dst_cid != guest_cid || in->hdr.type != TYPE_STREAM)
		return "an rx packet with wrong addresses or type";
	return post_rx(slot);
}

/* The next packet that is not a credit update, which must have operation `op`. */
static const char *expect(u16 op, struct packet *in)
{
	const char *failure;
	do {
		failure = receive(in);
	} while (!failure && in->hdr.op == OP_CREDIT_UPDATE);
	if (failure)
		return failure;
	if (in->hdr.op != op) {
		print("vsock: expected op ");
		print_dec(op);
		print(", got ");
		print_dec(in->hdr.op);
		print("\n");
		return "unexpected packet";
	}
	return NULL;
}

/* Receives RW packets until `len` bytes have come, and checks they are `data`. */
static const char *expect_data(const u8 *data, u32 len)
{
	static struct packet in;
	u32 got = 0;
	while (got < len) {
		const char *failure = expect(OP_RW, &in);
		if (failure)
			return failure;
		if (in.hdr.len > len - got || memcmp(in.payload, data + got, in.hdr.len) != 0)
			return "the data differs from what was sent";
		got += in.hdr.len;
		fwd_cnt += in.hdr.len;
	}
	return NULL;
}

/* Shuts a connection down both ways; the device's RST completes it. */
static const char *close_connection(u32 local_port, u32 peer_port)
{
	static struct packet in;
	const char *failure = send(OP_SHUTDOWN, local_port, peer_port, SHUTDOWN_BOTH, NULL, 0);
	if (!failure)
		failure = expect(OP_RST, &in);
	return failure;
}

static const char *guest_to_host(void)
{
	static const u8 ping[] = "ping from the guest";
	static struct packet in;
	fwd_cnt = 0;
	const char *failure = send(OP_REQUEST, GUEST_PORT, HOST_PORT, 0, NULL, 0);
	if (!failure)
		failure = expect(OP_RESPONSE, &in);
	if (!failure && (in.hdr.src_port != HOST_PORT || in.hdr.dst_port != GUEST_PORT))
		failure = "the RESPONSE has the wrong ports";
	if (!failure)
		failure = send(OP_RW, GUEST_PORT, HOST_PORT, 0, ping, sizeof(ping) - 1);
	if (!failure)
		failure = expect_data(ping, sizeof(ping) - 1);
	if (!failure)
		failure = close_connection(GUEST_PORT, HOST_PORT);
	if (!failure)
		print("vsock: echo from host port 1234\n");
	return failure;
}

static const char *host_to_guest(void)
{
	static struct packet in;
	print("vsock: listening on 5678\n");
	fwd_cnt = 0;
	const char *failure = expect(OP_REQUEST, &in);
	if (failure)
		return failure;
	if (in.hdr.dst_port != LISTEN_PORT)
		return "a REQUEST for another port";
	u32 host_port = in.hdr.src_port;
	failure = send(OP_RESPONSE, LISTEN_PORT, host_port, 0, NULL, 0);
	if (!failure)
		failure = expect(OP_RW, &in);
	if (failure)
		return failure;
	fwd_cnt += in.hdr.len;
	u32 len = in.hdr.len;
	failure = send(OP_RW, LISTEN_PORT, host_port, 0, in.payload, len);
	if (!failure)
		failure = close_connection(LISTEN_PORT, host_port);
	if (failure)
		return failure;
	print("vsock: echoed ");
	print_dec(len);
	print(" bytes to host port ");
	print_dec(host_port);
	print("\n");
	return NULL;
}

const char *test_vsock(struct virtio_dev *dev)
{
	const char *failure = virtio_start(dev, 0);
	if (!failure)
		failure = virtq_setup(dev, &rx, 0, 8);
	if (!failure)
		failure = virtq_setup(dev, &tx, 1, 8);
	if (!failure)
		failure = virtq_setup(dev, &event, 2, 8);
	if (!failure)
		failure = virtio_driver_ok(dev);
	if (failure)
		return failure;
	guest_cid = virtio_config_read64(dev, 0);
	print("vsock: guest cid ");
	print_dec(guest_cid);
	print("\n");
	struct virtq_buf event_buf = { .addr = &event_buffer, .len = sizeof(event_buffer), .device_writes = 1 };
	if (virtq_add(&event, &event_buf, 1) < 0)
		return "cannot post an event buffer";
	virtq_notify(&event);
	for (int slot = 0; slot < RX_BUFFERS; slot++)
		if ((failure = post_rx(slot)))
			return failure;
	failure = guest_to_host();
	if (!failure)
		failure = host_to_guest();
	return failure;
}
