/* Length-prefixed protobuf frames (proto/understudy/v1/frame.proto): each
 * message is preceded by its length as a 4-byte little-endian unsigned int. */
#ifndef UNDERSTUDY_FRAME_H
#define UNDERSTUDY_FRAME_H

#include <stddef.h>
#include <stdint.h>
#include <protobuf-c/protobuf-c.h>

#define FRAME_HEADER_SIZE 4u

/* Packs msg and writes header and payload, retrying short writes and EINTR.
 * A frame of at most PIPE_BUF bytes goes out in one write(2), so it reaches a
 * pipe reader whole. Returns 0, or -1 with errno set (EMSGSIZE when the
 * message does not fit in 32 bits). */
int frame_write(int fd, const ProtobufCMessage *msg);

/* Reads one frame. Returns 1 with *payload (malloc'd, caller frees; non-NULL
 * even for an empty message) and *len set; 0 at a clean end of stream (no
 * byte of a new frame); -1 with errno set: EMSGSIZE when the length exceeds
 * max_len, EPROTO when the stream ends inside a frame, or the read error. */
int frame_read(int fd, uint8_t **payload, size_t *len, size_t max_len);

#endif
