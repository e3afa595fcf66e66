/*
 * The virtio-pci transport, modern interface (virtio 1.2, section 4.1), and discovery on PCI bus 0
 * through the type-1 configuration mechanism: CONFIG_ADDRESS at port 0xCF8, CONFIG_DATA at 0xCFC
 * (the guests run with IOPL=3, so CPL3 may use the ports). A device is a function with vendor
 * 0x1AF4 and device 0x1040 + its type; its structures are found through the vendor-specific
 * capabilities and reached in its memory BARs, whose addresses the VMM assigned (as firmware does).
 * Interrupts stay unused (the rings are polled), so MSI-X is left disabled.
 */
#include "virtio.h"

#define CONFIG_ADDRESS 0xCF8
#define CONFIG_DATA 0xCFC
#define CONFIG_ENABLE 0x80000000u

/* Type-0 header. */
#define PCI_VENDOR_ID 0x00
#define PCI_COMMAND 0x04
#define PCI_COMMAND_MEMORY 0x2
#define PCI_STATUS_CAP_LIST (1u << 20) /* in the dword at PCI_COMMAND */
#define PCI_BAR0 0x10
#define PCI_BAR_IO 0x1
#define PCI_BAR_TYPE_64 0x4
#define PCI_CAPABILITIES 0x34
#define PCI_CAP_ID_VENDOR 0x09

#define VIRTIO_VENDOR 0x1AF4
#define MODERN_DEVICE_BASE 0x1040
#define MODERN_DEVICE_LAST 0x107F

/* cfg_type of the virtio structure capabilities. */
#define CFG_COMMON 1
#define CFG_NOTIFY 2
#define CFG_ISR 3
#define CFG_DEVICE 4

/* Common configuration (struct virtio_pci_common_cfg). */
#define COMMON_DEVICE_FEATURE_SELECT 0x00
#define COMMON_DEVICE_FEATURE 0x04
#define COMMON_DRIVER_FEATURE_SELECT 0x08
#define COMMON_DRIVER_FEATURE 0x0C
#define COMMON_DEVICE_STATUS 0x14
#define COMMON_CONFIG_GENERATION 0x15
#define COMMON_QUEUE_SELECT 0x16
#define COMMON_QUEUE_SIZE 0x18
#define COMMON_QUEUE_ENABLE 0x1C
#define COMMON_QUEUE_NOTIFY_OFF 0x1E
#define COMMON_QUEUE_DESC 0x20
#define COMMON_QUEUE_DRIVER 0x28
#define COMMON_QUEUE_DEVICE 0x30

/* Capability lists are short; a longer walk means a loop in a broken list. */
#define MAX_CAPABILITIES 48

static u32 config_read32(const struct virtio_dev *dev, u32 reg)
{
	outl(CONFIG_ADDRESS, CONFIG_ENABLE | (u32)dev->pci.device << 11 | (reg & 0xFC));
	return inl(CONFIG_DATA);
}

static void config_write32(const struct virtio_dev *dev, u32 reg, u32 value)
{
	outl(CONFIG_ADDRESS, CONFIG_ENABLE | (u32)dev->pci.device << 11 | (reg & 0xFC));
	outl(CONFIG_DATA, value);
}

static u8 config_read8(const struct virtio_dev *dev, u32 reg)
{
	return (u8)(config_read32(dev, reg) >> (8 * (reg & 3)));
}

static u8 read8(u64 addr) { return *(volatile u8 *)addr; }
static u16 read16(u64 addr) { return *(volatile u16 *)addr; }
static void write8(u64 addr, u8 value) { *(volatile u8 *)addr = value; }
static void write16(u64 addr, u16 value) { *(volatile u16 *)addr = value; }

static u64 common(const struct virtio_dev *dev, u32 field) { return dev->pci.common + field; }

/* A 64-bit field as two 32-bit halves, low first (virtio 1.2, 4.1.3.1). */
static void write_address(const struct virtio_dev *dev, u32 field, const volatile void *p)
{
	mmio_write32(common(dev, field), (u32)(u64)p);
	mmio_write32(common(dev, field) + 4, (u32)((u64)p >> 32));
}

static void pci_print_address(const struct virtio_dev *dev)
{
	print("00:");
	print_hex(dev->pci.device, 2);
	print(".0");
}

static u32 pci_get_status(struct virtio_dev *dev) { return read8(common(dev, COMMON_DEVICE_STATUS)); }

static void pci_set_status(struct virtio_dev *dev, u32 status) { write8(common(dev, COMMON_DEVICE_STATUS), (u8)status); }

static u64 pci_device_features(struct virtio_dev *dev)
{
	mmio_write32(common(dev, COMMON_DEVICE_FEATURE_SELECT), 0);
	u64 low = mmio_read32(common(dev, COMMON_DEVICE_FEATURE));
	mmio_write32(common(dev, COMMON_DEVICE_FEATURE_SELECT), 1);
	return low | (u64)mmio_read32(common(dev, COMMON_DEVICE_FEATURE)) << 32;
}

static void pci_set_driver_features(struct virtio_dev *dev, u64 features)
{
	mmio_write32(common(dev, COMMON_DRIVER_FEATURE_SELECT), 0);
	mmio_write32(common(dev, COMMON_DRIVER_FEATURE), (u32)features);
	mmio_write32(common(dev, COMMON_DRIVER_FEATURE_SELECT), 1);
	mmio_write32(common(dev, COMMON_DRIVER_FEATURE), (u32)(features >> 32));
}

/* Before the driver changes it, queue_size holds the queue's largest size; 0: no such queue. */
static u16 pci_queue_max_size(struct virtio_dev *dev, u16 index)
{
	write16(common(dev, COMMON_QUEUE_SELECT), index);
	if (read16(common(dev, COMMON_QUEUE_ENABLE)))
		return 0;
	return read16(common(dev, COMMON_QUEUE_SIZE));
}

/* Queue setup as virtio 1.2, 4.1.5.1.3 orders it: select, size, ring addresses, enable. */
static void pci_queue_enable(struct virtio_dev *dev, struct virtq *vq)
{
	write16(common(dev, COMMON_QUEUE_SELECT), vq->index);
	write16(common(dev, COMMON_QUEUE_SIZE), vq->size);
	write_address(dev, COMMON_QUEUE_DESC, vq->desc);
	write_address(dev, COMMON_QUEUE_DRIVER, vq->avail);
	write_address(dev, COMMON_QUEUE_DEVICE, vq->used);
	u16 notify_off = read16(common(dev, COMMON_QUEUE_NOTIFY_OFF));
	vq->notify_addr = dev->pci.notify + (u64)notify_off * dev->pci.notify_multiplier;
	write16(common(dev, COMMON_QUEUE_ENABLE), 1);
}

static void pci_notify(struct virtio_dev *dev, const struct virtq *vq)
{
	(void)dev;
	/* The queue index, 16 bits, as Linux writes it; Kestrel's ioeventfd takes any write there. */
	write16(vq->notify_addr, vq->index);
}

static u32 pci_config_read(struct virtio_dev *dev, u32 offset, u32 width)
{
	u64 addr = dev->pci.device_cfg + offset;
	switch (width) {
	case 1:
		return read8(addr);
	case 2:
		return read16(addr);
	default:
		return mmio_read32(addr);
	}
}

static void pci_config_write(struct virtio_dev *dev, u32 offset, u32 width, u32 value)
{
	u64 addr = dev->pci.device_cfg + offset;
	switch (width) {
	case 1:
		write8(addr, (u8)value);
		break;
	case 2:
		write16(addr, (u16)value);
		break;
	default:
		mmio_write32(addr, value);
	}
}

static u32 pci_config_generation(struct virtio_dev *dev) { return read8(common(dev, COMMON_CONFIG_GENERATION)); }

static const struct virtio_transport pci_transport = {
	.name = "pci",
	.print_address = pci_print_address,
	.get_status = pci_get_status,
	.set_status = pci_set_status,
	.device_features = pci_device_features,
	.set_driver_features = pci_set_driver_features,
	.queue_max_size = pci_queue_max_size,
	.queue_enable = pci_queue_enable,
	.notify = pci_notify,
	.config_read = pci_config_read,
	.config_write = pci_config_write,
	.config_generation = pci_config_generation,
};

/* The guest-physical address memory BAR `bar` decodes, or 0 if it is not an assigned memory BAR. */
static u64 bar_address(const struct virtio_dev *dev, u32 bar)
{
	if (bar > 5)
		return 0;
	u32 low = config_read32(dev, PCI_BAR0 + 4 * bar);
	if (low & PCI_BAR_IO)
		return 0;
	u64 address = low & ~0xFu;
	if ((low & 0x6) == PCI_BAR_TYPE_64 && bar < 5)
		address |= (u64)config_read32(dev, PCI_BAR0 + 4 * (bar + 1)) << 32;
	return address;
}

static void print_function_problem(const struct virtio_dev *dev, const char *what)
{
	print("virtio: pci ");
	pci_print_address(dev);
	print(": ");
	print(what);
	print(", skipped\n");
}

/*
 * Walks the capability list for the virtio structures and records where each one is mapped;
 * 0 if a structure the driver needs is missing.
 */
static int find_structures(struct virtio_dev *dev)
{
	if (!(config_read32(dev, PCI_COMMAND) & PCI_STATUS_CAP_LIST))
		return 0;
	u32 at = config_read8(dev, PCI_CAPABILITIES) & 0xFC;
	for (int walked = 0; at && walked < MAX_CAPABILITIES; walked++) {
		u32 header = config_read32(dev, at);
		if ((header & 0xFF) == PCI_CAP_ID_VENDOR) {
			u8 type = (u8)(header >> 24);
			u64 base = bar_address(dev, config_read8(dev, at + 4));
			u64 addr = base + config_read32(dev, at + 8);
			if (base && type == CFG_COMMON && !dev->pci.common)
				dev->pci.common = addr;
			else if (base && type == CFG_NOTIFY && !dev->pci.notify) {
				dev->pci.notify = addr;
				dev->pci.notify_multiplier = config_read32(dev, at + 16);
			} else if (base && type == CFG_ISR && !dev->pci.isr)
				dev->pci.isr = addr;
			else if (base && type == CFG_DEVICE && !dev->pci.device_cfg)
				dev->pci.device_cfg = addr;
		}
		at = (header >> 8) & 0xFC;
	}
	return dev->pci.common && dev->pci.notify;
}

int virtio_pci_find(struct virtio_dev *devs, int max)
{
	int count = 0;
	for (u8 slot = 0; slot < 32 && count < max; slot++) {
		struct virtio_dev *dev = &devs[count];
		*dev = (struct virtio_dev){ .transport = &pci_transport };
		dev->pci.device = slot;
		u32 id = config_read32(dev, PCI_VENDOR_ID);
		u32 device_id = id >> 16;
		if ((id & 0xFFFF) != VIRTIO_VENDOR)
			continue;
		if (device_id < MODERN_DEVICE_BASE || device_id > MODERN_DEVICE_LAST) {
			print_function_problem(dev, "not a modern virtio device");
			continue;
		}
		dev->device_type = device_id - MODERN_DEVICE_BASE;
		if (!find_structures(dev)) {
			print_function_problem(dev, "no common or notify structure");
			continue;
		}
		/* Let the function answer at its BARs (the status half of the dword is left alone). */
		config_write32(dev, PCI_COMMAND, (config_read32(dev, PCI_COMMAND) & 0xFFFF) | PCI_COMMAND_MEMORY);
		count++;
	}
	return count;
}
