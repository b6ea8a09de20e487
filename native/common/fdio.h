/* Whole-buffer reads and writes on file descriptors, retrying short transfers and EINTR. */
#ifndef UNDERSTUDY_FDIO_H
#define UNDERSTUDY_FDIO_H

#include <stddef.h>
#include <sys/types.h>

/* Writes all len bytes. Returns 0, or -1 with errno set (EAGAIN on a
 * non-blocking fd that filled up is returned as an error too). */
int fd_write_all(int fd, const void *buf, size_t len);

/* Reads until len bytes arrived or end of file. Returns the number of bytes
 * read (less than len only at end of file), or -1 with errno set. */
ssize_t fd_read_full(int fd, void *buf, size_t len);

#endif
