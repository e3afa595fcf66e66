/*
 * blk: drives a virtio-blk disk with single requests (header, data, status byte). On a writable
 * disk it writes a pattern to sectors 2-5 and reads it back; on a read-only one (VIRTIO_BLK_F_RO)
 * it checks that the same write fails with IOERR. Then, on both: a flush (when offered), GET_ID,
 * a read past the end (IOERR) and an unknown request type (UNSUPP).
 *
 * The pattern lets the host check where the bytes landed: the byte at disk offset o is
 * ((o / 512) * 31 + (o % 512) * 7 + 3) mod 256, so data one sector off reads back wrong.
 */
#include "virtio.h"

#define VIRTIO_BLK_F_RO (1UL << 5)
#define VIRTIO_BLK_F_FLUSH (1UL << 9)

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_T_UNKNOWN 99 /* no such request type */

#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2

#define SECTOR 512
#define FIRST_SECTOR 2
#define SECTORS 4
#define ID_BYTES 20

struct blk_header {
	u32 type;
	u32 reserved;
	u64 sector;
};

static struct blk_header header;
static u8 written[SECTORS * SECTOR];
static u8 readback[SECTORS * SECTOR];
static u8 id[ID_BYTES + 1];
static u8 status;

static u8 pattern_byte(u64 offset)
{
	return (u8)((offset / SECTOR) * 31 + (offset % SECTOR) * 7 + 3);
}

/*
 * One request: the header, then `len` bytes of data at `data` (none if len is 0) that the device
 * reads or (device_writes) writes, then the status byte. Returns NULL and sets *result to the
 * status byte, or a failure. The used length counts the status byte and, for a successful
 * request whose data the device writes, all of the data (a failed one may have written less).
 */
static const char *request(struct virtq *vq, u32 type, u64 sector, void *data, u32 len, int device_writes,
			   u8 *result)
{
	header = (struct blk_header){ .type = type, .sector = sector };
	status = 0xFF;
	struct virtq_buf bufs[3];
	u32 count = 0;
	bufs[count++] = (struct virtq_buf){ .addr = &header, .len = sizeof(header) };
	if (len)
		bufs[count++] = (struct virtq_buf){ .addr = data, .len = len, .device_writes = device_writes };
	bufs[count++] = (struct virtq_buf){ .addr = &status, .len = 1, .device_writes = 1 };
	u32 used;
	const char *failure = virtq_transfer(vq, bufs, count, &used);
	if (failure)
		return failure;
	u32 expected = 1 + (device_writes ? len : 0);
	int complete = status == VIRTIO_BLK_S_OK ? used == expected : used >= 1 && used <= expected;
	if (!complete) {
		print("blk: request type ");
		print_dec(type);
		print(" used ");
		print_dec(used);
		print(" bytes, expected ");
		print_dec(expected);
		print("\n");
		return "wrong used length";
	}
	*result = status;
	return NULL;
}

/* A request that must complete with status `want`. */
static const char *expect(struct virtq *vq, u32 type, u64 sector, void *data, u32 len, int device_writes,
			  u8 want, const char *wrong_status)
{
	u8 result;
	const char *failure = request(vq, type, sector, data, len, device_writes, &result);
	if (failure)
		return failure;
	if (result != want) {
		print("blk: request type ");
		print_dec(type);
		print(" status ");
		print_dec(result);
		print("\n");
		return wrong_status;
	}
	return NULL;
}

static const char *write_and_read_back(struct virtq *vq)
{
	for (u32 i = 0; i < sizeof(written); i++)
		written[i] = pattern_byte((u64)FIRST_SECTOR * SECTOR + i);
	const char *failure = expect(vq, VIRTIO_BLK_T_OUT, FIRST_SECTOR, written, sizeof(written), 0,
				     VIRTIO_BLK_S_OK, "the write failed");
	if (!failure)
		failure = expect(vq, VIRTIO_BLK_T_IN, FIRST_SECTOR, readback, sizeof(readback), 1,
				 VIRTIO_BLK_S_OK, "the read failed");
	if (failure)
		return failure;
	if (memcmp(written, readback, sizeof(written)) != 0)
		return "the sectors read back differ from those written";
	print("blk: wrote and read back sectors 2-5\n");
	return NULL;
}

static const char *write_refused(struct virtq *vq)
{
	memset(written, 0xAA, sizeof(written));
	const char *failure = expect(vq, VIRTIO_BLK_T_OUT, FIRST_SECTOR, written, sizeof(written), 0,
				     VIRTIO_BLK_S_IOERR, "a write to a read-only disk did not fail with IOERR");
	if (failure)
		return failure;
	print("blk: read-only, a write fails with IOERR\n");
	return NULL;
}

const char *test_blk(struct virtio_dev *dev)
{
	struct virtq vq;
	const char *failure = virtio_start(dev, VIRTIO_BLK_F_RO | VIRTIO_BLK_F_FLUSH);
	if (!failure)
		failure = virtq_setup(dev, &vq, 0, 16);
	if (!failure)
		failure = virtio_driver_ok(dev);
	if (failure)
		return failure;

	u64 capacity = virtio_config_read64(dev, 0);
	print("blk: capacity ");
	print_dec(capacity);
	print(" sectors\n");
	if (capacity < FIRST_SECTOR + SECTORS)
		return "the disk is too small for the test";

	failure = (dev->features & VIRTIO_BLK_F_RO) ? write_refused(&vq) : write_and_read_back(&vq);
	if (failure)
		return failure;

	if (dev->features & VIRTIO_BLK_F_FLUSH) {
		failure = expect(&vq, VIRTIO_BLK_T_FLUSH, 0, NULL, 0, 0, VIRTIO_BLK_S_OK, "the flush failed");
		if (failure)
			return failure;
		print("blk: flush ok\n");
	}

	failure = expect(&vq, VIRTIO_BLK_T_GET_ID, 0, id, ID_BYTES, 1, VIRTIO_BLK_S_OK, "GET_ID failed");
	if (failure)
		return failure;
	id[ID_BYTES] = 0; /* a 20-byte id has no NUL of its own */
	print("blk: id ");
	print((const char *)id);
	print("\n");

	failure = expect(&vq, VIRTIO_BLK_T_IN, capacity, readback, SECTOR, 1, VIRTIO_BLK_S_IOERR,
			 "a read past the end did not fail with IOERR");
	if (!failure)
		failure = expect(&vq, VIRTIO_BLK_T_UNKNOWN, 0, NULL, 0, 0, VIRTIO_BLK_S_UNSUPP,
				 "an unknown request type did not fail with UNSUPP");
	if (failure)
		return failure;
	print("blk: past the end IOERR, unknown type UNSUPP\n");
	return NULL;
}
