/*
 * vsock-test: the guest side of Kestrel's virtio-vsock tests (busybox has no AF_VSOCK tool).
 * Built static into the kit's initramfs as /bin/vsock-test by kit/build.sh.
 *
 *   vsock-test listen PORT       accept one connection on PORT (printing "vsock-test: listening
 *                                on PORT" first), read it to end-of-file, answer
 *                                "guest read N bytes, sum S\n" and close
 *   vsock-test connect PORT N    connect to the host (CID 2) on PORT, send N bytes of the test
 *                                pattern (byte i is i * 7 mod 256), shut down the sending side,
 *                                and print "vsock-test: host replied: <what the host sent back>"
 *
 * Exits 0 on success, 1 with a message on any failure.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static void die(const char *what)
{
	fprintf(stderr, "vsock-test: %s: %s\n", what, strerror(errno));
	exit(1);
}

static struct sockaddr_vm address(unsigned cid, unsigned port)
{
	struct sockaddr_vm sa;
	memset(&sa, 0, sizeof(sa));
	sa.svm_family = AF_VSOCK;
	sa.svm_cid = cid;
	sa.svm_port = port;
	return sa;
}

static int listen_once(unsigned port)
{
	struct sockaddr_vm sa = address(VMADDR_CID_ANY, port);
	int server = socket(AF_VSOCK, SOCK_STREAM, 0);
	if (server < 0)
		die("socket");
	if (bind(server, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		die("bind");
	if (listen(server, 1) < 0)
		die("listen");
	printf("vsock-test: listening on %u\n", port);
	fflush(stdout);
	int conn = accept(server, NULL, NULL);
	if (conn < 0)
		die("accept");
	unsigned long total = 0, sum = 0;
	unsigned char buffer[4096];
	for (;;) {
		ssize_t n = read(conn, buffer, sizeof(buffer));
		if (n < 0)
			die("read");
		if (n == 0)
			break;
		for (ssize_t i = 0; i < n; i++)
			sum += buffer[i];
		total += (unsigned long)n;
	}
	char reply[128];
	int len = snprintf(reply, sizeof(reply), "guest read %lu bytes, sum %lu\n", total, sum);
	if (write(conn, reply, (size_t)len) != len)
		die("write");
	close(conn);
	close(server);
	return 0;
}

static int connect_and_send(unsigned port, unsigned long count)
{
	struct sockaddr_vm sa = address(VMADDR_CID_HOST, port);
	int conn = socket(AF_VSOCK, SOCK_STREAM, 0);
	if (conn < 0)
		die("socket");
	if (connect(conn, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		die("connect");
	unsigned char buffer[4096];
	unsigned long sent = 0;
	while (sent < count) {
		size_t chunk = count - sent < sizeof(buffer) ? count - sent : sizeof(buffer);
		for (size_t i = 0; i < chunk; i++)
			buffer[i] = (unsigned char)((sent + i) * 7);
		ssize_t n = write(conn, buffer, chunk);
		if (n < 0)
			die("write");
		sent += (unsigned long)n;
	}
	if (shutdown(conn, SHUT_WR) < 0)
		die("shutdown");
	char reply[256];
	size_t got = 0;
	for (;;) {
		ssize_t n = read(conn, reply + got, sizeof(reply) - 1 - got);
		if (n < 0)
			die("read");
		if (n == 0 || (got += (size_t)n) == sizeof(reply) - 1)
			break;
	}
	reply[got] = 0;
	printf("vsock-test: host replied: %s", reply);
	close(conn);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "listen") == 0)
		return listen_once((unsigned)strtoul(argv[2], NULL, 10));
	if (argc == 4 && strcmp(argv[1], "connect") == 0)
		return connect_and_send((unsigned)strtoul(argv[2], NULL, 10), strtoul(argv[3], NULL, 10));
	fprintf(stderr, "usage: vsock-test listen PORT | vsock-test connect PORT BYTES\n");
	return 1;
}
