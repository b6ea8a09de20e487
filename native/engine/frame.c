/* Length-prefixed frames on the agent pipe: 4-byte LE length + message. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "engine.h"

#define MAX_FRAME (64u << 20)

static int read_full(int fd, void *p, size_t n, bool *eof)
{
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(fd, (char *)p + got, n - got);
		if (r == 0) {
			*eof = true;
			return got == 0 ? 1 : fail("E_FRAME", 0, "agent pipe: ended inside a frame (%zu of %zu bytes)", got, n);
		}
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return fail("E_FRAME", errno, "read(fd %d) of a frame", fd);
		}
		got += r;
	}
	return 0;
}

int frame_read_fd(int fd, uint8_t **buf, size_t *len)
{
	uint8_t hdr[4];
	bool eof = false;
	int r = read_full(fd, hdr, 4, &eof);
	if (r)
		return r;
	uint32_t n = hdr[0] | hdr[1] << 8 | hdr[2] << 16 | (uint32_t)hdr[3] << 24;
	if (n > MAX_FRAME)
		return fail("E_FRAME", 0, "agent pipe: frame claims %u bytes, above the limit of %u", n, MAX_FRAME);
	uint8_t *b = malloc(n ? n : 1);
	if (!b)
		return fail("E_NATIVE", ENOMEM, "malloc(%u) for a frame", n);
	r = read_full(fd, b, n, &eof);
	if (r) {
		free(b);
		return r == 1 ? fail("E_FRAME", 0, "agent pipe: ended after a frame header") : -1;
	}
	*buf = b;
	*len = n;
	return 0;
}

int frame_write_fd(int fd, const uint8_t *buf, size_t len)
{
	uint8_t hdr[4] = { len & 0xff, (len >> 8) & 0xff, (len >> 16) & 0xff, (len >> 24) & 0xff };
	const uint8_t *parts[2] = { hdr, buf };
	size_t lens[2] = { 4, len };
	for (int i = 0; i < 2; i++) {
		size_t off = 0;
		while (off < lens[i]) {
			ssize_t w = write(fd, parts[i] + off, lens[i] - off);
			if (w < 0) {
				if (errno == EINTR)
					continue;
				return fail("E_FRAME", errno, "write(fd %d) of a frame", fd);
			}
			off += w;
		}
	}
	return 0;
}
