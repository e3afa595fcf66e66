/*
 * balloon: gives the host the memory it asks for, in a way the host can measure. The guest reads
 * the target (num_pages), touches that many pages so the host has to back them, inflates the
 * balloon with exactly those pages, and sets `actual`; then checks they read back as zero (the
 * host discarded them), deflates the balloon again and sets `actual` back to 0.
 *
 * After touching and after inflating, the guest parks: it prints its line and waits for one byte
 * on the console, so a host test can sample the VMM's memory use at exactly those moments.
 *
 * The pages are the guest-physical window from 16 MiB up (above this guest's image and data), so
 * the guest needs 16 MiB + the target of RAM; a target above 128 MiB is refused.
 */
#include "virtio.h"

/* struct virtio_balloon_config (virtio 1.2, 5.5.4). */
#define CONFIG_NUM_PAGES 0
#define CONFIG_ACTUAL 4

#define INFLATE_QUEUE 0
#define DEFLATE_QUEUE 1

/* Balloon PFNs always count 4 KiB pages. */
#define BALLOON_PAGE 4096UL
/* PFNs per buffer, as Linux sends them (VIRTIO_BALLOON_ARRAY_PFNS_MAX). */
#define PFNS_PER_BUFFER 256
#define WINDOW_START (16UL << 20)
#define WINDOW_MAX_PAGES ((128UL << 20) / BALLOON_PAGE)

static volatile u64 *page_at(u32 index) { return (volatile u64 *)(WINDOW_START + index * BALLOON_PAGE); }

static void print_pages(const char *what, u32 pages)
{
	print("balloon: ");
	print(what);
	print(" ");
	print_dec(pages);
	print(" pages\n");
}

/* Hands pages 0..pages-1 of the window to the device on `vq`, PFNS_PER_BUFFER at a time. */
static const char *send_pfns(struct virtq *vq, u32 pages)
{
	static u32 pfns[PFNS_PER_BUFFER];
	for (u32 done = 0; done < pages;) {
		u32 count = pages - done < PFNS_PER_BUFFER ? pages - done : PFNS_PER_BUFFER;
		for (u32 i = 0; i < count; i++)
			pfns[i] = (u32)(WINDOW_START / BALLOON_PAGE) + done + i;
		struct virtq_buf buf = { .addr = pfns, .len = count * (u32)sizeof(u32), .device_writes = 0 };
		u32 written;
		const char *failure = virtq_transfer(vq, &buf, 1, &written);
		if (failure)
			return failure;
		done += count;
	}
	return NULL;
}

static const char *set_actual(struct virtio_dev *dev, u32 pages)
{
	virtio_config_write(dev, CONFIG_ACTUAL, 4, pages);
	if (virtio_config_read(dev, CONFIG_ACTUAL, 4) != pages)
		return "actual does not read back as written";
	return NULL;
}

const char *test_balloon(struct virtio_dev *dev)
{
	struct virtq inflate, deflate;
	const char *failure = virtio_start(dev, 0);
	if (!failure)
		failure = virtq_setup(dev, &inflate, INFLATE_QUEUE, 16);
	if (!failure)
		failure = virtq_setup(dev, &deflate, DEFLATE_QUEUE, 16);
	if (!failure)
		failure = virtio_driver_ok(dev);
	if (failure)
		return failure;

	u32 pages = virtio_config_read(dev, CONFIG_NUM_PAGES, 4);
	print_pages("target", pages);
	if (pages == 0)
		return "the target is 0 pages";
	if (pages > WINDOW_MAX_PAGES)
		return "the target is larger than the test's 128 MiB window";

	for (u32 i = 0; i < pages; i++)
		*page_at(i) = WINDOW_START + i * BALLOON_PAGE + 1; /* never zero */
	print_pages("touched", pages);
	if ((failure = wait_for_console_byte()))
		return failure;

	if ((failure = send_pfns(&inflate, pages)) || (failure = set_actual(dev, pages)))
		return failure;
	print_pages("inflated", pages);
	if ((failure = wait_for_console_byte()))
		return failure;

	for (u32 i = 0; i < pages; i++) {
		if (*page_at(i) != 0) {
			print("balloon: page 0x");
			print_hex(WINDOW_START + i * BALLOON_PAGE, 8);
			print(" still holds data\n");
			return "an inflated page is not zero";
		}
	}
	print("balloon: inflated pages read as zero\n");

	if ((failure = send_pfns(&deflate, pages)) || (failure = set_actual(dev, 0)))
		return failure;
	/* The pages are the guest's again: usable as any other. */
	*page_at(0) = 0x5a5a;
	*page_at(pages - 1) = 0xa5a5;
	if (*page_at(0) != 0x5a5a || *page_at(pages - 1) != 0xa5a5)
		return "a deflated page does not keep what is written to it";
	print_pages("deflated", pages);
	return NULL;
}
