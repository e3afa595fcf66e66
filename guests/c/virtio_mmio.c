/*
 * The virtio-mmio transport (virtio 1.2, section 4.2.2: register layout version 2), and discovery
 * from the `virtio_mmio.device=<size>@<base>:<irq>[:<id>]` words the VMM adds to the command line
 * (the syntax of Linux's virtio_mmio.device= parameter). Registers take 32-bit accesses only;
 * the configuration space from 0x100 takes the width of each field.
 */
#include "virtio.h"

#define REG_MAGIC 0x000
#define REG_VERSION 0x004
#define REG_DEVICE_ID 0x008
#define REG_DEVICE_FEATURES 0x010
#define REG_DEVICE_FEATURES_SEL 0x014
#define REG_DRIVER_FEATURES 0x020
#define REG_DRIVER_FEATURES_SEL 0x024
#define REG_QUEUE_SEL 0x030
#define REG_QUEUE_NUM_MAX 0x034
#define REG_QUEUE_NUM 0x038
#define REG_QUEUE_READY 0x044
#define REG_QUEUE_NOTIFY 0x050
#define REG_STATUS 0x070
#define REG_QUEUE_DESC_LOW 0x080
#define REG_QUEUE_DESC_HIGH 0x084
#define REG_QUEUE_DRIVER_LOW 0x090
#define REG_QUEUE_DRIVER_HIGH 0x094
#define REG_QUEUE_DEVICE_LOW 0x0a0
#define REG_QUEUE_DEVICE_HIGH 0x0a4
#define REG_CONFIG_GENERATION 0x0fc
#define CONFIG_SPACE 0x100

#define MAGIC_VALUE 0x74726976 /* "virt" */
#define MODERN_VERSION 2       /* version 1 is the legacy interface, which these guests do not drive */

#define CMDLINE_KEY "virtio_mmio.device="

static u32 reg_read(const struct virtio_dev *dev, u32 reg) { return mmio_read32(dev->mmio.base + reg); }

static void reg_write(const struct virtio_dev *dev, u32 reg, u32 value)
{
	mmio_write32(dev->mmio.base + reg, value);
}

static void write_address(const struct virtio_dev *dev, u32 low_reg, u32 high_reg, const volatile void *p)
{
	reg_write(dev, low_reg, (u32)(u64)p);
	reg_write(dev, high_reg, (u32)((u64)p >> 32));
}

static void mmio_print_address(const struct virtio_dev *dev)
{
	print("0x");
	print_hex(dev->mmio.base, dev->mmio.base >> 32 ? 16 : 8);
}

static u32 mmio_get_status(struct virtio_dev *dev) { return reg_read(dev, REG_STATUS); }

static void mmio_set_status(struct virtio_dev *dev, u32 status) { reg_write(dev, REG_STATUS, status); }

static u64 mmio_device_features(struct virtio_dev *dev)
{
	reg_write(dev, REG_DEVICE_FEATURES_SEL, 0);
	u64 low = reg_read(dev, REG_DEVICE_FEATURES);
	reg_write(dev, REG_DEVICE_FEATURES_SEL, 1);
	return low | (u64)reg_read(dev, REG_DEVICE_FEATURES) << 32;
}

static void mmio_set_driver_features(struct virtio_dev *dev, u64 features)
{
	reg_write(dev, REG_DRIVER_FEATURES_SEL, 0);
	reg_write(dev, REG_DRIVER_FEATURES, (u32)features);
	reg_write(dev, REG_DRIVER_FEATURES_SEL, 1);
	reg_write(dev, REG_DRIVER_FEATURES, (u32)(features >> 32));
}

static u16 mmio_queue_max_size(struct virtio_dev *dev, u16 index)
{
	reg_write(dev, REG_QUEUE_SEL, index);
	if (reg_read(dev, REG_QUEUE_READY))
		return 0;
	u32 max = reg_read(dev, REG_QUEUE_NUM_MAX);
	return max > 0xFFFF ? 0xFFFF : (u16)max;
}

/* Queue setup as virtio 1.2, 4.2.3.2 orders it: select, size, ring addresses, ready. */
static void mmio_queue_enable(struct virtio_dev *dev, struct virtq *vq)
{
	reg_write(dev, REG_QUEUE_SEL, vq->index);
	reg_write(dev, REG_QUEUE_NUM, vq->size);
	write_address(dev, REG_QUEUE_DESC_LOW, REG_QUEUE_DESC_HIGH, vq->desc);
	write_address(dev, REG_QUEUE_DRIVER_LOW, REG_QUEUE_DRIVER_HIGH, vq->avail);
	write_address(dev, REG_QUEUE_DEVICE_LOW, REG_QUEUE_DEVICE_HIGH, vq->used);
	reg_write(dev, REG_QUEUE_READY, 1);
	vq->notify_addr = dev->mmio.base + REG_QUEUE_NOTIFY;
}

static void mmio_notify(struct virtio_dev *dev, const struct virtq *vq)
{
	(void)dev;
	/* A 32-bit write of the queue index: what the VMM's ioeventfd matches. */
	mmio_write32(vq->notify_addr, vq->index);
}

static u32 mmio_config_read(struct virtio_dev *dev, u32 offset, u32 width)
{
	u64 addr = dev->mmio.base + CONFIG_SPACE + offset;
	switch (width) {
	case 1:
		return *(volatile u8 *)addr;
	case 2:
		return *(volatile u16 *)addr;
	default:
		return mmio_read32(addr);
	}
}

static void mmio_config_write(struct virtio_dev *dev, u32 offset, u32 width, u32 value)
{
	u64 addr = dev->mmio.base + CONFIG_SPACE + offset;
	switch (width) {
	case 1:
		*(volatile u8 *)addr = (u8)value;
		break;
	case 2:
		*(volatile u16 *)addr = (u16)value;
		break;
	default:
		mmio_write32(addr, value);
	}
}

static u32 mmio_config_generation(struct virtio_dev *dev) { return reg_read(dev, REG_CONFIG_GENERATION); }

static const struct virtio_transport mmio_transport = {
	.name = "mmio",
	.print_address = mmio_print_address,
	.get_status = mmio_get_status,
	.set_status = mmio_set_status,
	.device_features = mmio_device_features,
	.set_driver_features = mmio_set_driver_features,
	.queue_max_size = mmio_queue_max_size,
	.queue_enable = mmio_queue_enable,
	.notify = mmio_notify,
	.config_read = mmio_config_read,
	.config_write = mmio_config_write,
	.config_generation = mmio_config_generation,
};

/* A number as Linux's memparse reads it: decimal, or hex after 0x; advances *p past it. */
static int parse_number(const char **p, const char *end, u64 *value)
{
	u64 base = 10;
	if (end - *p > 2 && (*p)[0] == '0' && ((*p)[1] == 'x' || (*p)[1] == 'X')) {
		base = 16;
		*p += 2;
	}
	const char *start = *p;
	*value = 0;
	for (; *p < end; (*p)++) {
		char c = **p;
		u64 digit;
		if (c >= '0' && c <= '9')
			digit = (u64)(c - '0');
		else if (base == 16 && c >= 'a' && c <= 'f')
			digit = (u64)(c - 'a' + 10);
		else if (base == 16 && c >= 'A' && c <= 'F')
			digit = (u64)(c - 'A' + 10);
		else
			break;
		*value = *value * base + digit;
	}
	return *p > start;
}

/* Parses `<size>[K|M|G]@<base>:<irq>[:<id>]`; returns 0 if the text does not have that form. */
static int parse_device(const char *p, const char *end, u64 *base, u32 *irq)
{
	u64 size, irq_value;
	if (!parse_number(&p, end, &size))
		return 0;
	if (p < end && (*p == 'K' || *p == 'k' || *p == 'M' || *p == 'm' || *p == 'G' || *p == 'g'))
		p++;
	if (p == end || *p++ != '@' || !parse_number(&p, end, base))
		return 0;
	if (p == end || *p++ != ':' || !parse_number(&p, end, &irq_value))
		return 0;
	*irq = (u32)irq_value;
	return p == end || *p == ':';
}

static void print_window_problem(u64 base, const char *what, u32 value)
{
	print("virtio: mmio 0x");
	print_hex(base, base >> 32 ? 16 : 8);
	print(": ");
	print(what);
	print(" 0x");
	print_hex(value, 8);
	print(", skipped\n");
}

/* Checks the window is a virtio 1.x device (not a legacy one, nor an empty slot). */
static int probe(struct virtio_dev *dev)
{
	u32 magic = reg_read(dev, REG_MAGIC);
	if (magic != MAGIC_VALUE) {
		print_window_problem(dev->mmio.base, "magic value", magic);
		return 0;
	}
	u32 version = reg_read(dev, REG_VERSION);
	if (version != MODERN_VERSION) {
		print_window_problem(dev->mmio.base, "version", version);
		return 0;
	}
	/* Device ID 0 marks a window with no device behind it (virtio 1.2, 4.2.3.1.1). */
	dev->device_type = reg_read(dev, REG_DEVICE_ID);
	return dev->device_type != 0;
}

int virtio_mmio_find(const char *cmdline, struct virtio_dev *devs, int max)
{
	size_t key_len = strlen(CMDLINE_KEY);
	int count = 0;
	for (const char *p = cmdline; *p && count < max;) {
		while (*p == ' ' || *p == '\t' || *p == '\n')
			p++;
		const char *word = p;
		while (*p && *p != ' ' && *p != '\t' && *p != '\n')
			p++;
		if ((size_t)(p - word) <= key_len || memcmp(word, CMDLINE_KEY, key_len) != 0)
			continue;

		struct virtio_dev *dev = &devs[count];
		*dev = (struct virtio_dev){ .transport = &mmio_transport };
		if (!parse_device(word + key_len, p, &dev->mmio.base, &dev->mmio.irq)) {
			print("virtio: cannot parse ");
			for (const char *c = word; c < p; c++)
				print_char(*c);
			print("\n");
			continue;
		}
		if (probe(dev))
			count++;
	}
	return count;
}
