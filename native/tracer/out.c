/* Buffered frame output to stdout: many small records, one write() per batch. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "tracer.h"

static unsigned char buf[1 << 20];
static size_t used;

int out_flush(void)
{
	size_t off = 0;
	while (off < used) {
		ssize_t n = write(1, buf + off, used - off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "understudy-tracer: write(stdout, %zu bytes): %s\n", used - off, strerror(errno));
			used = 0;
			return -1;
		}
		off += n;
	}
	used = 0;
	return 0;
}

int out_frame(const void *rec, uint32_t len)
{
	if (used + 4 + len > sizeof(buf) && out_flush() < 0)
		return -1;
	if (4 + (size_t)len > sizeof(buf))
		return -1;
	unsigned char *p = buf + used;
	p[0] = len & 0xff;
	p[1] = (len >> 8) & 0xff;
	p[2] = (len >> 16) & 0xff;
	p[3] = (len >> 24) & 0xff;
	memcpy(p + 4, rec, len);
	used += 4 + len;
	return 0;
}
