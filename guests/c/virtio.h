/*
 * A small virtio 1.x driver library for the test guests (CPL3, interrupts off, identity mapped so
 * a pointer is also the guest-physical address a device sees).
 *
 * A device test sees a `struct virtio_dev` and these functions only, never transport registers,
 * so the same test runs on every transport:
 *
 *   virtio_start(dev, features)      reset, ACKNOWLEDGE, DRIVER, negotiate, FEATURES_OK (checked)
 *   virtq_setup(dev, &vq, index, n)  one split virtqueue of n (a power of two) entries
 *   virtio_driver_ok(dev)            DRIVER_OK, and check the device did not give up
 *   virtq_transfer(&vq, bufs, n, &len)  one request: add a chain, notify, poll for completion
 *   virtio_config_read(dev, off, width), virtio_config_read64, virtio_config_write
 *   virtio_config_generation(dev), virtio_wait_config_change(dev, generation)
 *
 * Completion is found by polling the used ring with a bounded spin; nothing here uses interrupts.
 * Every step that can fail returns NULL on success or a short reason for `<test>: FAILED <reason>`.
 */
#ifndef KESTREL_VIRTIO_H
#define KESTREL_VIRTIO_H

#include "guest.h"

/* Device IDs (virtio 1.2, section 5). */
#define VIRTIO_ID_NET 1
#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_RNG 4
#define VIRTIO_ID_BALLOON 5
#define VIRTIO_ID_VSOCK 19

/* Offered by every virtio 1.x device; virtio_start always accepts it (there is no legacy mode). */
#define VIRTIO_F_VERSION_1 (1UL << 32)

/* Device status bits (virtio 1.2, section 2.1). */
#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 0x40
#define VIRTIO_STATUS_FAILED 0x80

/* The most devices a guest looks at. */
#define VIRTIO_MAX_DEVICES 32

struct virtio_dev;
struct virtq;

/*
 * What a transport provides: virtio_mmio.c over the virtio-mmio registers, virtio_pci.c over the
 * modern virtio-pci capabilities: common config (status, features, queue_select/size/enable/desc/
 * driver/device, queue_notify_off), notify (notify_off_multiplier), ISR and device config.
 */
struct virtio_transport {
	const char *name;                               /* printed before the address: "mmio" */
	void (*print_address)(const struct virtio_dev *dev);
	u32 (*get_status)(struct virtio_dev *dev);
	void (*set_status)(struct virtio_dev *dev, u32 status); /* 0 resets the device */
	u64 (*device_features)(struct virtio_dev *dev);
	void (*set_driver_features)(struct virtio_dev *dev, u64 features);
	/* Selects queue `index`: its largest size, or 0 if it does not exist or is already enabled. */
	u16 (*queue_max_size)(struct virtio_dev *dev, u16 index);
	/* Gives the device vq's size and ring addresses, enables it, and sets vq->notify_addr. */
	void (*queue_enable)(struct virtio_dev *dev, struct virtq *vq);
	void (*notify)(struct virtio_dev *dev, const struct virtq *vq);
	/* Device-specific configuration, accessed with the width of the field (1, 2 or 4 bytes). */
	u32 (*config_read)(struct virtio_dev *dev, u32 offset, u32 width);
	void (*config_write)(struct virtio_dev *dev, u32 offset, u32 width, u32 value);
	u32 (*config_generation)(struct virtio_dev *dev);
};

/* One device, as discovery found it. */
struct virtio_dev {
	const struct virtio_transport *transport;
	u32 device_type;  /* VIRTIO_ID_* */
	u32 status;       /* the status bits the driver has set */
	u64 features;     /* negotiated by virtio_start, VIRTIO_F_VERSION_1 included */
	union {
		struct {
			u64 base; /* 4 KiB register window */
			u32 irq;
		} mmio;
		struct {
			u8 device;             /* on bus 0, function 0 */
			u64 common;            /* guest-physical addresses of the structures */
			u64 notify;
			u64 isr;
			u64 device_cfg;
			u32 notify_multiplier; /* queue n is notified at notify + queue_notify_off(n) x this */
		} pci;
	};
};

/* Split virtqueue layout (virtio 1.2, section 2.7). */
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1

struct virtq_desc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};

struct virtq_avail {
	u16 flags;
	u16 idx;
	u16 ring[];
};

struct virtq_used_elem {
	u32 id;
	u32 len;
};

struct virtq_used {
	u16 flags;
	u16 idx;
	struct virtq_used_elem ring[];
};

/* The largest queue virtq_setup builds (the split-ring maximum is 32768; tests need few entries). */
#define VIRTQ_MAX_SIZE 256

/* One split virtqueue, driver side. */
struct virtq {
	struct virtio_dev *dev;
	u16 index;
	u16 size;
	struct virtq_desc *desc;
	volatile struct virtq_avail *avail;
	volatile struct virtq_used *used;
	u64 notify_addr;     /* set by the transport's queue_enable */
	u16 free_head;       /* free descriptors, chained through `next` */
	u16 num_free;
	u16 last_used;       /* used->idx value up to which completions have been taken */
};

/* One segment of a request: the device reads it, or (device_writes) writes into it. */
struct virtq_buf {
	void *addr;
	u32 len;
	int device_writes;
};

/* Finds the devices of every transport, MMIO ones first; returns how many it stored in `devs`. */
int virtio_find_devices(const char *cmdline, struct virtio_dev *devs, int max);

/*
 * Discovery, one function per transport. virtio_mmio.c: the devices declared by
 * `virtio_mmio.device=<size>@<base>:<irq>` words of the command line. virtio_pci.c: the virtio
 * functions on PCI bus 0, found through configuration cycles on ports 0xCF8/0xCFC.
 */
int virtio_mmio_find(const char *cmdline, struct virtio_dev *devs, int max);
int virtio_pci_find(struct virtio_dev *devs, int max);

/* Resets the device and negotiates `features` (VIRTIO_F_VERSION_1 is added) up to FEATURES_OK. */
const char *virtio_start(struct virtio_dev *dev, u64 features);
/* Sets DRIVER_OK once the queues are set up; fails if the device then asks for a reset. */
const char *virtio_driver_ok(struct virtio_dev *dev);
/* Writes status 0 and waits (bounded) until it reads back: the device has let go of its queues. */
const char *virtio_reset(struct virtio_dev *dev);

/* Configuration space: width 1, 2 or 4; 64-bit fields are read consistently (generation). */
u32 virtio_config_read(struct virtio_dev *dev, u32 offset, u32 width);
u64 virtio_config_read64(struct virtio_dev *dev, u32 offset);
void virtio_config_write(struct virtio_dev *dev, u32 offset, u32 width, u32 value);
/* The configuration generation: it changes each time the device signals a configuration change. */
u32 virtio_config_generation(struct virtio_dev *dev);
/* Polls (bounded) until the generation is no longer `generation`: the device changed something. */
const char *virtio_wait_config_change(struct virtio_dev *dev, u32 generation);

/*
 * Memory the device may access: static, zeroed, never freed (each guest run is short). For
 * request buffers a test may equally use its own static arrays.
 */
void *virtio_alloc(size_t size, size_t align);

/*
 * Sets up queue `index` with `size` entries (a power of two, at most VIRTQ_MAX_SIZE; halved until
 * the device's maximum allows it: vq->size says what it got). Before virtio_driver_ok.
 */
const char *virtq_setup(struct virtio_dev *dev, struct virtq *vq, u16 index, u16 size);
/*
 * Puts one request on the available ring: readable segments first, then writable ones (virtio
 * 1.2, 2.7.4.2). Returns its head descriptor, or -1 if the queue is full or the order is wrong.
 * virtq_notify then tells the device.
 */
int virtq_add(struct virtq *vq, const struct virtq_buf *bufs, u32 count);
void virtq_notify(struct virtq *vq);
/* Polls (bounded) for the next used element; frees its descriptors. */
const char *virtq_wait(struct virtq *vq, u16 *head, u32 *len);
/* virtq_add + virtq_notify + virtq_wait for one request; `len` is what the device wrote. */
const char *virtq_transfer(struct virtq *vq, const struct virtq_buf *bufs, u32 count, u32 *len);

#endif
