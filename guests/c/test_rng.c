/*
 * rng: two separate 64-byte requests on the one queue; each must come back full, and the two
 * must differ and not be all zero (the buffers start zeroed, so a device that claims bytes it
 * never wrote is caught).
 */
#include "virtio.h"

#define REQUEST_BYTES 64
#define REQUESTS 2

static int all_zero(const u8 *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return 0;
	return 1;
}

const char *test_rng(struct virtio_dev *dev)
{
	static u8 buffers[REQUESTS][REQUEST_BYTES];
	struct virtq vq;
	const char *failure = virtio_start(dev, 0);
	if (!failure)
		failure = virtq_setup(dev, &vq, 0, 16);
	if (!failure)
		failure = virtio_driver_ok(dev);
	if (failure)
		return failure;

	for (u32 i = 0; i < REQUESTS; i++) {
		struct virtq_buf buf = { .addr = buffers[i], .len = REQUEST_BYTES, .device_writes = 1 };
		u32 written;
		failure = virtq_transfer(&vq, &buf, 1, &written);
		if (failure)
			return failure;
		if (written != REQUEST_BYTES) {
			print("rng: request ");
			print_dec(i);
			print(" got ");
			print_dec(written);
			print(" bytes\n");
			return "short request";
		}
		if (all_zero(buffers[i], REQUEST_BYTES))
			return "a buffer is all zero";
	}
	if (memcmp(buffers[0], buffers[1], REQUEST_BYTES) == 0)
		return "the two buffers are equal";
	print("rng: ");
	print_dec(REQUESTS);
	print(" x ");
	print_dec(REQUEST_BYTES);
	print(" bytes\n");
	return NULL;
}
