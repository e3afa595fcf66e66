/*
 * blk_swap: follows a host that gives the running disk a new backing file (the API's
 * PATCH /drives/{id}). Prints the disk's capacity and the text its sector 0 starts with,
 * `blk_swap: capacity <N> sectors, sector 0 says <text>`, then `blk_swap: waiting for a new disk`,
 * and waits (bounded) for a configuration change. Then the same line for the new disk, and reads
 * its last sector (which must succeed) and the one after (which must fail with IOERR):
 * `blk_swap: last sector <M - 1> read, the one after IOERR`. An empty disk (a 0-byte placeholder)
 * is described as `blk_swap: capacity 0 sectors, empty`.
 */
#include "virtio.h"

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1

#define CONFIG_CAPACITY 0
#define SECTOR 512
/* The most characters of sector 0 printed. */
#define TEXT_MAX 32

struct blk_header {
	u32 type;
	u32 reserved;
	u64 sector;
};

static struct blk_header header;
static u8 data[SECTOR];
static u8 status;

/* Reads `sector` into `data`; returns NULL and the status byte in *result, or a failure. */
static const char *read_sector(struct virtq *vq, u64 sector, u8 *result)
{
	header = (struct blk_header){ .type = VIRTIO_BLK_T_IN, .sector = sector };
	status = 0xFF;
	struct virtq_buf bufs[] = {
		{ .addr = &header, .len = sizeof(header) },
		{ .addr = data, .len = SECTOR, .device_writes = 1 },
		{ .addr = &status, .len = 1, .device_writes = 1 },
	};
	u32 used;
	const char *failure = virtq_transfer(vq, bufs, 3, &used);
	if (failure)
		return failure;
	*result = status;
	return NULL;
}

/* Prints the capacity and the printable text at the start of sector 0. */
static const char *describe(struct virtio_dev *dev, struct virtq *vq, u64 *capacity)
{
	*capacity = virtio_config_read64(dev, CONFIG_CAPACITY);
	if (*capacity == 0) {
		/* An empty placeholder (Kata's pool): there is no sector 0 to read. */
		print("blk_swap: capacity 0 sectors, empty\n");
		return NULL;
	}
	u8 result;
	const char *failure = read_sector(vq, 0, &result);
	if (failure)
		return failure;
	if (result != VIRTIO_BLK_S_OK)
		return "reading sector 0 failed";
	print("blk_swap: capacity ");
	print_dec(*capacity);
	print(" sectors, sector 0 says ");
	for (u32 i = 0; i < TEXT_MAX && data[i] >= 0x20 && data[i] < 0x7F; i++)
		print_char((char)data[i]);
	print("\n");
	return NULL;
}

const char *test_blk_swap(struct virtio_dev *dev)
{
	struct virtq vq;
	const char *failure = virtio_start(dev, 0);
	if (!failure)
		failure = virtq_setup(dev, &vq, 0, 16);
	if (!failure)
		failure = virtio_driver_ok(dev);
	if (failure)
		return failure;

	/* Taken before the host hears the guest is waiting, so no change can slip in unseen. */
	u32 generation = virtio_config_generation(dev);
	u64 capacity;
	if ((failure = describe(dev, &vq, &capacity)))
		return failure;
	print("blk_swap: waiting for a new disk\n");
	if ((failure = virtio_wait_config_change(dev, generation)))
		return failure;
	if ((failure = describe(dev, &vq, &capacity)))
		return failure;
	if (capacity == 0)
		return "the new disk is empty";

	u8 result;
	if ((failure = read_sector(&vq, capacity - 1, &result)))
		return failure;
	if (result != VIRTIO_BLK_S_OK)
		return "reading the new last sector failed";
	if ((failure = read_sector(&vq, capacity, &result)))
		return failure;
	if (result != VIRTIO_BLK_S_IOERR)
		return "reading past the new end did not fail with IOERR";
	print("blk_swap: last sector ");
	print_dec(capacity - 1);
	print(" read, the one after IOERR\n");
	return NULL;
}
