/*
 * The virtio-vsock packet header and the constants the guests' vsock tests use (virtio 1.2,
 * section 5.10.6): shared by test_vsock.c and test_bench_vsock.c.
 */
#ifndef VSOCK_WIRE_H
#define VSOCK_WIRE_H

#include "guest.h"

#define HOST_CID 2

#define OP_REQUEST 1
#define OP_RESPONSE 2
#define OP_RST 3
#define OP_SHUTDOWN 4
#define OP_RW 5
#define OP_CREDIT_UPDATE 6

#define SHUTDOWN_BOTH 3
#define TYPE_STREAM 1

struct vsock_hdr {
	u64 src_cid;
	u64 dst_cid;
	u32 src_port;
	u32 dst_port;
	u32 len;
	u16 type;
	u16 op;
	u32 flags;
	u32 buf_alloc;
	u32 fwd_cnt;
} __attribute__((packed));

#endif
