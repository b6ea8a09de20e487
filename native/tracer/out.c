/* Frames on stdout (TracerOutput of proto/understudy/v1/tracer.proto).
 * Records are copied from the ring buffer into a batch, each as [u32 LE
 * length][record], and leave as ONE frame whose `records` bytes field is the
 * batch: no per-record protobuf. The few bytes of protobuf in front of the
 * batch (version, the field's tag and length) are written here, into room
 * kept before the batch, so a batch goes out in one write() without a copy;
 * out_check_batch_header() proves at start that they are exactly what
 * protobuf-c packs for the same message. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include "fdio.h"
#include "frame.h"
#include "tracer.h"

#define BATCH_MAX (64u * 1024) /* record bytes a frame: about one pipe read of the agent */
#define BATCH_ROOM 16u	       /* frame length + version + tag + length of the bytes field */
#define FIELD_VERSION 1	       /* TracerOutput.version */
#define FIELD_RECORDS 12       /* TracerOutput.records */

static unsigned char batch[BATCH_ROOM + BATCH_MAX];
static size_t used; /* record bytes after BATCH_ROOM */

static size_t put_varint(uint8_t *p, uint64_t v)
{
	size_t k = 0;
	while (v >= 0x80) {
		p[k++] = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	p[k++] = (uint8_t)v;
	return k;
}

/* The protobuf bytes of a TracerOutput before n bytes of `records`. */
static size_t batch_header(uint8_t *h, size_t n)
{
	size_t k = 0;
	k += put_varint(h + k, FIELD_VERSION << 3 | 0); /* varint */
	k += put_varint(h + k, TRACER_VERSION);
	k += put_varint(h + k, FIELD_RECORDS << 3 | 2); /* length-delimited */
	k += put_varint(h + k, n);
	return k;
}

int out_check_batch_header(void)
{
	static const size_t sizes[] = { 1, 127, 128, BATCH_MAX };
	static uint8_t data[BATCH_MAX], packed[BATCH_ROOM + BATCH_MAX];
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		Understudy__V1__TracerOutput o = UNDERSTUDY__V1__TRACER_OUTPUT__INIT;
		o.version = TRACER_VERSION;
		o.body_case = UNDERSTUDY__V1__TRACER_OUTPUT__BODY_RECORDS;
		o.records.data = data;
		o.records.len = sizes[i];
		uint8_t h[BATCH_ROOM];
		size_t k = batch_header(h, sizes[i]);
		size_t n = protobuf_c_message_get_packed_size(&o.base);
		if (n != k + sizes[i] || protobuf_c_message_pack(&o.base, packed) != n || memcmp(packed, h, k) != 0)
			return fail("E_INTERNAL", 0, "the record batch header for %zu bytes differs from protobuf-c's packing of TracerOutput",
				    sizes[i]);
	}
	return 0;
}

int out_flush(struct tracer *t)
{
	if (used == 0)
		return 0;
	uint8_t h[BATCH_ROOM];
	size_t k = batch_header(h, used);
	uint8_t *start = batch + BATCH_ROOM - k - FRAME_HEADER_SIZE;
	uint32_t len = (uint32_t)(k + used);
	start[0] = (uint8_t)len;
	start[1] = (uint8_t)(len >> 8);
	start[2] = (uint8_t)(len >> 16);
	start[3] = (uint8_t)(len >> 24);
	memcpy(start + FRAME_HEADER_SIZE, h, k);
	size_t total = FRAME_HEADER_SIZE + k + used;
	used = 0;
	if (fd_write_all(1, start, total) < 0) {
		t->output_failed = 1;
		return fail("E_NATIVE", errno, "write(stdout, a record batch of %zu bytes)", total);
	}
	t->batches++;
	return 0;
}

int out_record(struct tracer *t, const void *rec, uint32_t len)
{
	if (FRAME_HEADER_SIZE + (size_t)len > BATCH_MAX)
		return fail("E_INTERNAL", 0, "a ring buffer record of %u bytes does not fit a batch", len);
	if (used + FRAME_HEADER_SIZE + len > BATCH_MAX && out_flush(t) < 0)
		return -1;
	uint8_t *p = batch + BATCH_ROOM + used;
	p[0] = (uint8_t)len;
	p[1] = (uint8_t)(len >> 8);
	p[2] = (uint8_t)(len >> 16);
	p[3] = (uint8_t)(len >> 24);
	memcpy(p + FRAME_HEADER_SIZE, rec, len);
	used += FRAME_HEADER_SIZE + len;
	return 0;
}

int out_message(struct tracer *t, Understudy__V1__TracerOutput *o)
{
	if (out_flush(t) < 0)
		return -1;
	o->version = TRACER_VERSION;
	if (frame_write(1, &o->base) < 0) {
		t->output_failed = 1;
		return fail("E_NATIVE", errno, "write(stdout, a frame of %zu bytes)", protobuf_c_message_get_packed_size(&o->base));
	}
	return 0;
}
