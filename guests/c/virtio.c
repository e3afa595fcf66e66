/*
 * The transport-independent half of the guests' virtio driver: device discovery across the
 * transports, the status sequence, feature negotiation, split virtqueues polled for completion,
 * and configuration space access. See virtio.h for the API.
 */
#include "virtio.h"

/*
 * Spins before a wait for the used ring gives up: 7-15 s on the nested test host (~28 ns each),
 * far beyond the microseconds a device takes, and well inside the test harness's hang limit.
 */
#define USED_WAIT_SPINS (1UL << 28)
/*
 * Generation reads before a wait for a configuration change gives up: each read is a VM exit, 30
 * to 120 us on the nested test host depending on its load, so 4-16 s: far more than a host's
 * API request takes, and well inside the test harness's hang limit.
 */
#define CONFIG_WAIT_READS (1UL << 17)

/* Status reads before a reset counts as failed (each read is a VM exit, tens of microseconds). */
#define RESET_READS 100000

/* Device-visible memory for rings and buffers (see virtio_alloc). */
#define POOL_SIZE (256 * 1024)
#define PAGE_SIZE 4096

static u8 pool[POOL_SIZE] __attribute__((aligned(PAGE_SIZE)));
static size_t pool_used;

/*
 * Keeps the compiler from moving memory accesses across it. x86 keeps stores in order, and loads
 * in order, so this is all the ordering the rings need against a device on another host thread.
 */
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }

int virtio_find_devices(const char *cmdline, struct virtio_dev *devs, int max)
{
	int count = virtio_mmio_find(cmdline, devs, max);
	count += virtio_pci_find(devs + count, max - count);
	return count;
}

void *virtio_alloc(size_t size, size_t align)
{
	size_t start = (pool_used + align - 1) & ~(align - 1);
	if (start > POOL_SIZE || size > POOL_SIZE - start) {
		/* A test asked for more than any test should need: a bug in the guest, not the VMM. */
		print("virtio: out of device memory\n");
		reset();
	}
	pool_used = start + size;
	return &pool[start];
}

static void add_status(struct virtio_dev *dev, u32 bits)
{
	dev->status |= bits;
	dev->transport->set_status(dev, dev->status);
}

/* Tells the device the driver gave up (virtio 1.2, 3.1.1), and says why. */
static const char *give_up(struct virtio_dev *dev, const char *reason)
{
	add_status(dev, VIRTIO_STATUS_FAILED);
	return reason;
}

const char *virtio_reset(struct virtio_dev *dev)
{
	dev->status = 0;
	dev->transport->set_status(dev, 0);
	/* The reset is complete when the status reads back as 0 (virtio 1.2, 4.1.4.3.2). */
	for (u32 reads = 0; reads < RESET_READS; reads++)
		if (dev->transport->get_status(dev) == 0)
			return NULL;
	return "the device did not reset";
}

const char *virtio_start(struct virtio_dev *dev, u64 features)
{
	const char *failure = virtio_reset(dev);
	if (failure)
		return failure;
	add_status(dev, VIRTIO_STATUS_ACKNOWLEDGE);
	add_status(dev, VIRTIO_STATUS_DRIVER);
	u64 offered = dev->transport->device_features(dev);
	if (!(offered & VIRTIO_F_VERSION_1))
		return give_up(dev, "the device does not offer VIRTIO_F_VERSION_1");
	dev->features = offered & (features | VIRTIO_F_VERSION_1);
	dev->transport->set_driver_features(dev, dev->features);
	add_status(dev, VIRTIO_STATUS_FEATURES_OK);
	if (!(dev->transport->get_status(dev) & VIRTIO_STATUS_FEATURES_OK))
		return give_up(dev, "the device refused the features");
	return NULL;
}

const char *virtio_driver_ok(struct virtio_dev *dev)
{
	add_status(dev, VIRTIO_STATUS_DRIVER_OK);
	if (dev->transport->get_status(dev) & VIRTIO_STATUS_NEEDS_RESET)
		return "the device needs a reset after DRIVER_OK";
	return NULL;
}

u32 virtio_config_read(struct virtio_dev *dev, u32 offset, u32 width)
{
	return dev->transport->config_read(dev, offset, width);
}

u64 virtio_config_read64(struct virtio_dev *dev, u32 offset)
{
	/* Two 32-bit reads; retried if the device changed the configuration between them. */
	u32 generation, low, high;
	do {
		generation = dev->transport->config_generation(dev);
		low = dev->transport->config_read(dev, offset, 4);
		high = dev->transport->config_read(dev, offset + 4, 4);
	} while (generation != dev->transport->config_generation(dev));
	return low | (u64)high << 32;
}

u32 virtio_config_generation(struct virtio_dev *dev)
{
	return dev->transport->config_generation(dev);
}

const char *virtio_wait_config_change(struct virtio_dev *dev, u32 generation)
{
	for (u64 reads = 0; virtio_config_generation(dev) == generation; reads++) {
		if (reads == CONFIG_WAIT_READS)
			return "timeout waiting for the device to change its configuration";
		cpu_relax();
	}
	return NULL;
}

void virtio_config_write(struct virtio_dev *dev, u32 offset, u32 width, u32 value)
{
	dev->transport->config_write(dev, offset, width, value);
}

const char *virtq_setup(struct virtio_dev *dev, struct virtq *vq, u16 index, u16 size)
{
	if (size == 0 || size > VIRTQ_MAX_SIZE || (size & (size - 1)))
		return "virtq_setup: the size must be a power of two up to VIRTQ_MAX_SIZE";
	u16 max = dev->transport->queue_max_size(dev, index);
	if (max == 0)
		return "the queue does not exist or is already enabled";
	while (size > max) /* stays a power of two, as split queues need */
		size /= 2;

	vq->dev = dev;
	vq->index = index;
	vq->size = size;
	/* One zeroed page each (a 256-entry table is exactly a page). */
	vq->desc = virtio_alloc(sizeof(struct virtq_desc) * size, PAGE_SIZE);
	vq->avail = virtio_alloc(sizeof(struct virtq_avail) + sizeof(u16) * (size + 1u), PAGE_SIZE);
	vq->used = virtio_alloc(sizeof(struct virtq_used) + sizeof(struct virtq_used_elem) * size + sizeof(u16),
				PAGE_SIZE);
	for (u16 i = 0; i < size; i++)
		vq->desc[i].next = (u16)(i + 1);
	vq->free_head = 0;
	vq->num_free = size;
	vq->last_used = 0;
	/* The guest polls with interrupts off: the device need not interrupt it. */
	vq->avail->flags = VIRTQ_AVAIL_F_NO_INTERRUPT;
	dev->transport->queue_enable(dev, vq);
	return NULL;
}

int virtq_add(struct virtq *vq, const struct virtq_buf *bufs, u32 count)
{
	if (count == 0 || count > vq->num_free)
		return -1;
	for (u32 i = 1; i < count; i++)
		if (bufs[i - 1].device_writes && !bufs[i].device_writes)
			return -1;

	u16 head = vq->free_head;
	u16 last = head;
	for (u32 i = 0, d = head; i < count; i++, d = vq->desc[d].next) {
		vq->desc[d].addr = (u64)bufs[i].addr; /* identity mapped: virtual = physical */
		vq->desc[d].len = bufs[i].len;
		vq->desc[d].flags = (u16)((bufs[i].device_writes ? VIRTQ_DESC_F_WRITE : 0) |
					  (i + 1 < count ? VIRTQ_DESC_F_NEXT : 0));
		last = (u16)d;
	}
	/* The free list goes on where the chain ends; `next` of the last descriptor points there. */
	vq->free_head = vq->desc[last].next;
	vq->num_free = (u16)(vq->num_free - count);

	u16 avail_idx = vq->avail->idx;
	vq->avail->ring[avail_idx % vq->size] = head;
	barrier(); /* the ring entry and descriptors before the index that publishes them */
	vq->avail->idx = (u16)(avail_idx + 1);
	return head;
}

void virtq_notify(struct virtq *vq)
{
	barrier();
	vq->dev->transport->notify(vq->dev, vq);
}

/* Returns the chain starting at `head` to the free list. */
static void free_chain(struct virtq *vq, u16 head)
{
	u16 last = head;
	u16 count = 1;
	while ((vq->desc[last].flags & VIRTQ_DESC_F_NEXT) && count < vq->size) {
		last = vq->desc[last].next;
		count++;
	}
	vq->desc[last].next = vq->free_head;
	vq->free_head = head;
	vq->num_free = (u16)(vq->num_free + count);
}

const char *virtq_wait(struct virtq *vq, u16 *head, u32 *len)
{
	for (u64 spins = 0; vq->used->idx == vq->last_used; spins++) {
		if (spins == USED_WAIT_SPINS)
			return "timeout waiting for the device to use a buffer";
		cpu_relax();
	}
	barrier(); /* what the device wrote is read only after the index that published it */
	volatile struct virtq_used_elem *elem = &vq->used->ring[vq->last_used % vq->size];
	u32 id = elem->id;
	*len = elem->len;
	vq->last_used++;
	if (id >= vq->size)
		return "the device used a descriptor id out of range";
	*head = (u16)id;
	free_chain(vq, *head);
	return NULL;
}

const char *virtq_transfer(struct virtq *vq, const struct virtq_buf *bufs, u32 count, u32 *len)
{
	int head = virtq_add(vq, bufs, count);
	if (head < 0)
		return "cannot add the request (queue full, or writable segments before readable ones)";
	virtq_notify(vq);
	u16 used_head;
	const char *failure = virtq_wait(vq, &used_head, len);
	if (failure)
		return failure;
	if (used_head != head)
		return "the device completed a request it was not given";
	return NULL;
}
