/*
 * virtio: lists the virtio devices it finds on every transport, and runs on them the device tests
 * the command line asks for with test=<name>[,<name>...] (the tests are listed in
 * virtio_tests.h). Then it prints "virtio: done" and resets the machine; with hold=1 it first
 * prints "virtio: holding" and waits for a byte on the console, so a host test can look at the
 * VMM (its metrics, say) while the guest is still there. devices=<index>[,<index>...] limits the
 * tests to those devices.
 */
#include "virtio.h"

struct virtio_test {
	const char *name;
	u32 device_type;
	const char *(*run)(struct virtio_dev *dev);
};

#define VIRTIO_TEST(name, type) const char *test_##name(struct virtio_dev *dev);
#include "virtio_tests.h"
#undef VIRTIO_TEST

static const struct virtio_test tests[] = {
#define VIRTIO_TEST(name, type) { #name, type, test_##name },
#include "virtio_tests.h"
#undef VIRTIO_TEST
};

#define NR_TESTS (sizeof(tests) / sizeof(tests[0]))

/* The comma-separated value of test=, walked one name at a time. */
struct name_list {
	const char *next;
	const char *end;
};

static int next_name(struct name_list *list, const char **name, size_t *len)
{
	if (!list->next || list->next >= list->end)
		return 0;
	*name = list->next;
	while (list->next < list->end && *list->next != ',')
		list->next++;
	*len = (size_t)(list->next - *name);
	list->next++; /* past the comma (or the end) */
	return 1;
}

static struct name_list requested_tests(const char *cmdline)
{
	size_t len = 0;
	const char *value = cmdline_get(cmdline, "test", &len);
	return (struct name_list){ value, value ? value + len : NULL };
}

static int is_requested(const char *cmdline, const char *test_name)
{
	struct name_list list = requested_tests(cmdline);
	const char *name;
	size_t len;
	while (next_name(&list, &name, &len))
		if (str_eq_n(name, len, test_name))
			return 1;
	return 0;
}

/*
 * Whether the tests run on device `index`: every device unless the command line says
 * devices=<index>[,<index>...] (a VMM that adds disks the test does not drive, as Kata's
 * placeholder pool does, names the ones it does).
 */
static int device_selected(const char *cmdline, u32 index)
{
	size_t len = 0;
	const char *value = cmdline_get(cmdline, "devices", &len);
	if (!value)
		return 1;
	struct name_list list = { value, value + len };
	const char *name;
	size_t name_len;
	while (next_name(&list, &name, &name_len))
		if (name_len && parse_dec(name, name_len) == index)
			return 1;
	return 0;
}

static void print_n(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		print_char(s[i]);
}

static void run_test(const struct virtio_test *test, struct virtio_dev *dev)
{
	const char *failure = test->run(dev);
	/* The device is reset whatever happened, so it stops using the test's memory. */
	const char *reset_failure = virtio_reset(dev);
	if (!failure)
		failure = reset_failure;
	print(test->name);
	if (failure) {
		print(": FAILED ");
		print(failure);
		print("\n");
	} else {
		print(": ok\n");
	}
}

/* A requested test that did not run is a failure too: a misspelt name, or a missing device. */
static void report_tests_not_run(const char *cmdline, const u32 runs[NR_TESTS])
{
	struct name_list list = requested_tests(cmdline);
	const char *name;
	size_t len;
	while (next_name(&list, &name, &len)) {
		u32 t = 0;
		while (t < NR_TESTS && !str_eq_n(name, len, tests[t].name))
			t++;
		if (t == NR_TESTS) {
			print("virtio: no test named ");
			print_n(name, len);
			print("\n");
		} else if (runs[t] == 0) {
			print(tests[t].name);
			print(": FAILED no device of type ");
			print_dec(tests[t].device_type);
			print("\n");
		}
	}
}

void guest_main(const struct bootinfo *info)
{
	static struct virtio_dev devs[VIRTIO_MAX_DEVICES];
	u32 runs[NR_TESTS] = { 0 };
	int count = virtio_find_devices(info->cmdline, devs, VIRTIO_MAX_DEVICES);

	print("virtio: ");
	print_dec((u64)count);
	print(" devices\n");
	for (int i = 0; i < count; i++) {
		struct virtio_dev *dev = &devs[i];
		print("virtio: device ");
		print_dec((u64)i);
		print(" type ");
		print_dec(dev->device_type);
		print(" at ");
		print(dev->transport->name);
		print(" ");
		dev->transport->print_address(dev);
		print("\n");
		for (u32 t = 0; t < NR_TESTS; t++) {
			if (tests[t].device_type == dev->device_type && device_selected(info->cmdline, (u32)i) &&
			    is_requested(info->cmdline, tests[t].name)) {
				run_test(&tests[t], dev);
				runs[t]++;
			}
		}
	}
	report_tests_not_run(info->cmdline, runs);
	print("virtio: done\n");
	size_t len;
	const char *hold = cmdline_get(info->cmdline, "hold", &len);
	if (hold && str_eq_n(hold, len, "1")) {
		print("virtio: holding\n");
		const char *failure = wait_for_console_byte();
		if (failure) {
			print("virtio: FAILED ");
			print(failure);
			print("\n");
		}
	}
	reset();
}
