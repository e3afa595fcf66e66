/*
 * net: on the network of a tap whose host side is 10.231.0.1/24 (the tier-2 test puts it in a
 * network namespace of its own), the guest, 10.231.0.2, asks for the host's MAC with a
 * hand-built ARP request, then pings it with a hand-built ICMP echo request; each reply must
 * arrive on the receive queue. Frames it did not ask for (the host's IPv6 chatter) are skipped,
 * up to MAX_FRAMES of them.
 *
 * Only VIRTIO_NET_F_MAC is accepted: no offloads, so every frame is whole and plainly checksummed.
 * Each frame starts with the 12-byte virtio_net_hdr_v1, all zero on transmit.
 */
#include "virtio.h"

#define VIRTIO_NET_F_MAC (1UL << 5)

#define HDR_LEN 12
#define ETH_LEN 14
#define FRAME_MAX 1514
#define RX_BUFFERS 8
#define MAX_FRAMES 64

#define ETHERTYPE_IPV4 0x0800
#define ETHERTYPE_ARP 0x0806
#define ARP_REQUEST 1
#define ARP_REPLY 2
#define IP_PROTO_ICMP 1
#define ICMP_ECHO_REPLY 0
#define ICMP_ECHO_REQUEST 8
#define ECHO_ID 0x4b53
#define ECHO_SEQ 1

static const u8 guest_ip[4] = { 10, 231, 0, 2 };
static const u8 host_ip[4] = { 10, 231, 0, 1 };
static const u8 broadcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
static const char payload[] = "kestrel virtio-net echo payload";

static struct virtq rxq, txq;
static u8 rx_buffers[RX_BUFFERS][HDR_LEN + FRAME_MAX];
static u8 *rx_buffer_of_head[VIRTQ_MAX_SIZE];
static u8 tx_header[HDR_LEN];
static u8 tx_frame[FRAME_MAX];
static u8 mac[6], host_mac[6];

static void put16(u8 *p, u16 v)
{
	p[0] = (u8)(v >> 8);
	p[1] = (u8)v;
}

static u16 get16(const u8 *p) { return (u16)(p[0] << 8 | p[1]); }

/* The Internet checksum (RFC 1071) of `len` bytes. */
static u16 checksum(const u8 *p, u32 len)
{
	u32 sum = 0;
	for (u32 i = 0; i + 1 < len; i += 2)
		sum += get16(p + i);
	if (len & 1)
		sum += (u32)p[len - 1] << 8;
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (u16)~sum;
}

static void print_mac(const u8 *m)
{
	for (int i = 0; i < 6; i++) {
		if (i)
			print_char(':');
		print_hex(m[i], 2);
	}
}

static const char *post_rx_buffer(u8 *buffer)
{
	struct virtq_buf buf = { .addr = buffer, .len = HDR_LEN + FRAME_MAX, .device_writes = 1 };
	int head = virtq_add(&rxq, &buf, 1);
	if (head < 0)
		return "cannot add a receive buffer";
	rx_buffer_of_head[head] = buffer;
	virtq_notify(&rxq);
	return NULL;
}

static const char *send_frame(u32 len)
{
	struct virtq_buf bufs[2] = {
		{ .addr = tx_header, .len = HDR_LEN, .device_writes = 0 },
		{ .addr = tx_frame, .len = len, .device_writes = 0 },
	};
	u32 written;
	return virtq_transfer(&txq, bufs, 2, &written);
}

/* Receives frames until `wanted` accepts one; every buffer goes back to the device. */
static const char *receive(int (*wanted)(const u8 *frame, u32 len))
{
	for (int i = 0; i < MAX_FRAMES; i++) {
		u16 head;
		u32 len;
		const char *failure = virtq_wait(&rxq, &head, &len);
		if (failure)
			return failure;
		u8 *buffer = rx_buffer_of_head[head];
		if (!buffer)
			return "the device used a receive buffer it was not given";
		if (len < HDR_LEN + ETH_LEN || len > HDR_LEN + FRAME_MAX)
			return "a received frame has an impossible length";
		if ((buffer[10] | buffer[11] << 8) != 1) /* num_buffers, little-endian like the header */
			return "num_buffers is not 1";
		int found = wanted(buffer + HDR_LEN, len - HDR_LEN);
		failure = post_rx_buffer(buffer);
		if (failure)
			return failure;
		if (found)
			return NULL;
	}
	return "no reply among the frames received";
}

static u32 build_arp_request(void)
{
	u8 *f = tx_frame;
	memcpy(f, broadcast, 6);
	memcpy(f + 6, mac, 6);
	put16(f + 12, ETHERTYPE_ARP);
	u8 *arp = f + ETH_LEN;
	put16(arp, 1);                /* Ethernet */
	put16(arp + 2, ETHERTYPE_IPV4);
	arp[4] = 6;
	arp[5] = 4;
	put16(arp + 6, ARP_REQUEST);
	memcpy(arp + 8, mac, 6);
	memcpy(arp + 14, guest_ip, 4);
	memset(arp + 18, 0, 6);
	memcpy(arp + 24, host_ip, 4);
	return 60; /* the Ethernet minimum, zero-padded */
}

static int is_arp_reply(const u8 *f, u32 len)
{
	const u8 *arp = f + ETH_LEN;
	if (len < ETH_LEN + 28 || get16(f + 12) != ETHERTYPE_ARP || get16(arp + 6) != ARP_REPLY)
		return 0;
	if (memcmp(arp + 14, host_ip, 4) != 0 || memcmp(arp + 24, guest_ip, 4) != 0)
		return 0;
	memcpy(host_mac, arp + 8, 6);
	return 1;
}

static u32 build_echo_request(void)
{
	u8 *f = tx_frame;
	u32 icmp_len = 8 + sizeof(payload);
	memcpy(f, host_mac, 6);
	memcpy(f + 6, mac, 6);
	put16(f + 12, ETHERTYPE_IPV4);
	u8 *ip = f + ETH_LEN;
	memset(ip, 0, 20);
	ip[0] = 0x45;
	put16(ip + 2, (u16)(20 + icmp_len));
	put16(ip + 6, 0x4000); /* don't fragment */
	ip[8] = 64;
	ip[9] = IP_PROTO_ICMP;
	memcpy(ip + 12, guest_ip, 4);
	memcpy(ip + 16, host_ip, 4);
	put16(ip + 10, checksum(ip, 20));
	u8 *icmp = ip + 20;
	icmp[0] = ICMP_ECHO_REQUEST;
	icmp[1] = 0;
	put16(icmp + 2, 0);
	put16(icmp + 4, ECHO_ID);
	put16(icmp + 6, ECHO_SEQ);
	memcpy(icmp + 8, payload, sizeof(payload));
	put16(icmp + 2, checksum(icmp, icmp_len));
	return ETH_LEN + 20 + icmp_len;
}

static int is_echo_reply(const u8 *f, u32 len)
{
	const u8 *ip = f + ETH_LEN;
	const u8 *icmp = ip + 20;
	if (len < ETH_LEN + 20 + 8 + sizeof(payload) || get16(f + 12) != ETHERTYPE_IPV4)
		return 0;
	if (ip[0] != 0x45 || ip[9] != IP_PROTO_ICMP || memcmp(ip + 12, host_ip, 4) != 0)
		return 0;
	return icmp[0] == ICMP_ECHO_REPLY && get16(icmp + 4) == ECHO_ID && get16(icmp + 6) == ECHO_SEQ &&
	       memcmp(icmp + 8, payload, sizeof(payload)) == 0;
}

const char *test_net(struct virtio_dev *dev)
{
	const char *failure = virtio_start(dev, VIRTIO_NET_F_MAC);
	if (!failure && !(dev->features & VIRTIO_NET_F_MAC))
		failure = "the device has no MAC address";
	if (!failure)
		failure = virtq_setup(dev, &rxq, 0, 16);
	if (!failure)
		failure = virtq_setup(dev, &txq, 1, 16);
	if (!failure)
		failure = virtio_driver_ok(dev);
	for (int i = 0; !failure && i < RX_BUFFERS; i++)
		failure = post_rx_buffer(rx_buffers[i]);
	if (failure)
		return failure;
	for (u32 i = 0; i < 6; i++)
		mac[i] = (u8)virtio_config_read(dev, i, 1);
	print("net: mac ");
	print_mac(mac);
	print("\n");

	failure = send_frame(build_arp_request());
	if (!failure)
		failure = receive(is_arp_reply);
	if (failure)
		return failure;
	print("net: arp reply from 10.231.0.1 is ");
	print_mac(host_mac);
	print("\n");

	failure = send_frame(build_echo_request());
	if (!failure)
		failure = receive(is_echo_reply);
	if (failure)
		return failure;
	print("net: echo reply from 10.231.0.1, ");
	print_dec(sizeof(payload));
	print(" bytes of payload\n");
	return NULL;
}
