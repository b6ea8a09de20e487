#include "frame.h"
#include "fdio.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

static void put_le32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int frame_write(int fd, const ProtobufCMessage *msg)
{
	uint8_t small[PIPE_BUF];
	uint8_t *buf = small;
	size_t len = protobuf_c_message_get_packed_size(msg);
	int rc, saved;

	if (len > UINT32_MAX) {
		errno = EMSGSIZE;
		return -1;
	}
	if (len + FRAME_HEADER_SIZE > sizeof(small)) {
		buf = malloc(len + FRAME_HEADER_SIZE);
		if (!buf)
			return -1;
	}
	put_le32(buf, (uint32_t)len);
	protobuf_c_message_pack(msg, buf + FRAME_HEADER_SIZE);
	rc = fd_write_all(fd, buf, len + FRAME_HEADER_SIZE);
	saved = errno;
	if (buf != small)
		free(buf);
	errno = saved;
	return rc;
}

int frame_read(int fd, uint8_t **payload, size_t *len, size_t max_len)
{
	uint8_t hdr[FRAME_HEADER_SIZE];
	ssize_t n;
	uint32_t want;
	uint8_t *buf;

	*payload = NULL;
	*len = 0;
	n = fd_read_full(fd, hdr, sizeof(hdr));
	if (n < 0)
		return -1;
	if (n == 0)
		return 0;
	if ((size_t)n < sizeof(hdr)) {
		errno = EPROTO;
		return -1;
	}
	want = get_le32(hdr);
	if (want > max_len) {
		errno = EMSGSIZE;
		return -1;
	}
	buf = malloc(want ? want : 1);
	if (!buf)
		return -1;
	n = fd_read_full(fd, buf, want);
	if (n < 0 || (size_t)n < want) {
		int saved = n < 0 ? errno : EPROTO;
		free(buf);
		errno = saved;
		return -1;
	}
	*payload = buf;
	*len = want;
	return 1;
}
