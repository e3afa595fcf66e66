/*
 * balloon_update: follows a host that changes the running balloon (the API's PATCH /balloon and
 * PATCH /balloon/statistics) and reads its statistics (GET /balloon/statistics), step by step,
 * each step printed so the host can take the next:
 *
 * 1. negotiates the stats queue and prints `balloon_update: target <N> pages`;
 * 2. hands the device a stats buffer for round 1 (swap_in = 1, free memory = 1 MiB), which the
 *    device keeps until the host wants fresh figures: `balloon_update: statistics round 1 sent`;
 * 3. waits for the buffer to come back (the host asked: a new interval does so at once), then
 *    sends round 2 (swap_in = 2, free memory = 2 MiB): `balloon_update: statistics round 2 sent`;
 * 4. waits for a configuration change (a new target), reads the target and reports it as the
 *    balloon's size in `actual`, without inflating: `balloon_update: target <N> pages, actual set`;
 * 5. waits for another change, the host's signal that it is done:
 *    `balloon_update: target <N> pages, done`.
 */
#include "virtio.h"

#define VIRTIO_BALLOON_F_STATS_VQ (1UL << 1)

/* struct virtio_balloon_config (virtio 1.2, 5.5.4). */
#define CONFIG_NUM_PAGES 0
#define CONFIG_ACTUAL 4

#define STATS_QUEUE 2

/* Statistic tags (virtio 1.2, 5.5.6.3). */
#define TAG_SWAP_IN 0
#define TAG_FREE_MEMORY 4

struct __attribute__((packed)) balloon_stat {
	u16 tag;
	u64 value;
};

static struct balloon_stat stats[2];

static void print_target(u32 pages, const char *then)
{
	print("balloon_update: target ");
	print_dec(pages);
	print(" pages");
	print(then);
	print("\n");
}

/* Makes the round's statistics available on the stats queue; the device answers when asked. */
static const char *send_stats(struct virtq *vq, u64 round)
{
	stats[0] = (struct balloon_stat){ .tag = TAG_SWAP_IN, .value = round };
	stats[1] = (struct balloon_stat){ .tag = TAG_FREE_MEMORY, .value = round << 20 };
	struct virtq_buf buf = { .addr = stats, .len = sizeof(stats), .device_writes = 0 };
	if (virtq_add(vq, &buf, 1) < 0)
		return "cannot add the stats buffer";
	virtq_notify(vq);
	print("balloon_update: statistics round ");
	print_dec(round);
	print(" sent\n");
	return NULL;
}

const char *test_balloon_update(struct virtio_dev *dev)
{
	struct virtq inflate, deflate, stats_vq;
	const char *failure = virtio_start(dev, VIRTIO_BALLOON_F_STATS_VQ);
	if (!failure && !(dev->features & VIRTIO_BALLOON_F_STATS_VQ))
		failure = "the device does not offer the stats queue";
	if (!failure)
		failure = virtq_setup(dev, &inflate, 0, 16);
	if (!failure)
		failure = virtq_setup(dev, &deflate, 1, 16);
	if (!failure)
		failure = virtq_setup(dev, &stats_vq, STATS_QUEUE, 16);
	if (!failure)
		failure = virtio_driver_ok(dev);
	if (failure)
		return failure;
	print_target(virtio_config_read(dev, CONFIG_NUM_PAGES, 4), "");

	if ((failure = send_stats(&stats_vq, 1)))
		return failure;
	u16 head;
	u32 len;
	if ((failure = virtq_wait(&stats_vq, &head, &len)))
		return failure;
	/* Each generation is taken before the line that lets the host make the next change. */
	u32 generation = virtio_config_generation(dev);
	if ((failure = send_stats(&stats_vq, 2)))
		return failure;
	if ((failure = virtio_wait_config_change(dev, generation)))
		return failure;
	u32 pages = virtio_config_read(dev, CONFIG_NUM_PAGES, 4);
	virtio_config_write(dev, CONFIG_ACTUAL, 4, pages);
	generation = virtio_config_generation(dev);
	print_target(pages, ", actual set");
	if ((failure = virtio_wait_config_change(dev, generation)))
		return failure;
	print_target(virtio_config_read(dev, CONFIG_NUM_PAGES, 4), ", done");
	return NULL;
}
