/*
 * The device tests of the virtio guest, one line each: VIRTIO_TEST(name, device type).
 *
 * Test `name` lives in test_<name>.c (build.rs links every test_*.c into the virtio guest) as
 *     const char *test_<name>(struct virtio_dev *dev);
 * It runs on every device of its type when the command line says test=<name> (or a list,
 * test=rng,blk). It may print lines starting with "<name>: " and returns NULL on success or a
 * short reason; virtio_main.c then prints "<name>: ok" or "<name>: FAILED <reason>" and resets
 * the device. It drives the device only through virtio.h, so it runs on every transport.
 *
 * No include guard: virtio_main.c includes this list twice, with different VIRTIO_TEST macros.
 */
VIRTIO_TEST(rng, VIRTIO_ID_RNG)
VIRTIO_TEST(blk, VIRTIO_ID_BLOCK)
VIRTIO_TEST(blk_swap, VIRTIO_ID_BLOCK)
VIRTIO_TEST(balloon, VIRTIO_ID_BALLOON)
VIRTIO_TEST(balloon_update, VIRTIO_ID_BALLOON)
VIRTIO_TEST(net, VIRTIO_ID_NET)
VIRTIO_TEST(vsock, VIRTIO_ID_VSOCK)
VIRTIO_TEST(bench_blk, VIRTIO_ID_BLOCK)
VIRTIO_TEST(bench_vsock, VIRTIO_ID_VSOCK)
VIRTIO_TEST(bench_net, VIRTIO_ID_NET)
