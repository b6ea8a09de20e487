/* understudy-tracer: attaches the tracer's pinned eBPF programs to their
 * tracepoints and streams the pinned ring buffer to stdout as frames. */
#ifndef UNDERSTUDY_TRACER_H
#define UNDERSTUDY_TRACER_H

#include <stddef.h>
#include <stdint.h>

#define TRACER_MAX_LINKS 256

struct links {
	int fds[TRACER_MAX_LINKS]; /* perf event / raw tracepoint fds: closing one detaches */
	int n;
};

/* attach.c: every program pinned in progs_dir, named tp__<category>__<event>
 * (a tracefs tracepoint) or btf__<event> (a BTF tracepoint). 0 or -1 with a
 * message on stderr naming the program and errno. */
int attach_all(const char *progs_dir, struct links *out);
void detach_all(struct links *l);

/* filter.c: adds tgids to the in-kernel filter (app_bits with atomic ors
 * through mmap, and the app_tgids listing). 0, or -1 with messages. */
int filter_add(const char *pins, const uint32_t *tgids, int n);

/* filter.c: removes the write_faults entries of these (exited) tgids; counts
 * what it removed. 0, or -1 with messages. */
int faults_forget(const char *pins, const uint32_t *tgids, int n, unsigned *removed);

/* out.c: buffered frame output (4-byte little-endian length, then the record). */
int out_frame(const void *rec, uint32_t len);
int out_flush(void);

#endif
