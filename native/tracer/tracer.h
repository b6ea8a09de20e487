/* understudy-tracer: one long-lived process per traced app that owns the eBPF
 * objects of bpf/trace.bpf.c (through the generated skeleton) for their whole
 * life, takes requests on stdin and streams the ring buffer on stdout, in the
 * frames of proto/understudy/v1/tracer.proto. */
#ifndef UNDERSTUDY_TRACER_H
#define UNDERSTUDY_TRACER_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "errfmt.h"
#include "understudy/v1/tracer.pb-c.h"

#define TRACER_VERSION 1
#define TRACER_MAX_PROGS 64
/* The filter: one bit per tgid (2^22 = the kernel's PID_MAX_LIMIT), as in bpf/trace.bpf.c. */
#define TRACER_TGID_BITS (1u << 22)

struct bpf_object;
struct bpf_program;
struct bpf_link;
struct ring_buffer;
struct trace_bpf;

/* The objects one tracer process owns. */
struct tracer {
	struct trace_bpf *skel;			  /* bpf/trace.bpf.c through its skeleton; NULL with --object */
	struct bpf_object *obj;			  /* skel->obj, or the --object file */
	struct bpf_link *links[TRACER_MAX_PROGS]; /* --object only: the skeleton keeps its own */
	int n_links;
	/* map fds, -1 where the object has no such map (an --object floor has
	 * only events and counters) */
	int events_fd, counters_fd, bits_fd, tgids_fd, faults_fd;
	uint32_t events_bytes, faults_max, tgids_max;
	uint64_t *bits; /* app_bits, mmapped (NULL without it) */
	int n_cpus;
	uint64_t *cpu_vals; /* one u64 per possible CPU: what a per-CPU lookup writes */
	struct ring_buffer *rb;
	uint64_t delivered; /* records read from the ring buffer */
	uint64_t batches;   /* record batches written */
	int output_failed;  /* stdout is gone: stop */
};

/* ---- errors (native/common/errfmt): one per failing request, raised by the
 * code's name (proto/understudy/v1/errors.proto), sent as the enum's value
 * (err_value_code); functions return -1 after setting it. */
#include "fail.h"

/* objects.c: open, load and attach bpf/trace.bpf.c through its skeleton, or
 * with obj_path any object with the stream maps (the bench's floors). */
int tracer_open(struct tracer *t, const char *obj_path);
/* Fills progs (malloc'd array of n, each malloc'd) with every program's name,
 * id, type, section and run statistics. */
int tracer_programs(struct tracer *t, Understudy__V1__TracerProgram ***progs, size_t *n);
void tracer_free_programs(Understudy__V1__TracerProgram **progs, size_t n);
/* Detaches every program and frees everything (slow: a grace period a program). */
void tracer_close(struct tracer *t);

/* maps.c: the filter, the write-fault map, the counters. */
int filter_add(struct tracer *t, const uint32_t *tgids, size_t n);
int filter_list(struct tracer *t, uint32_t **tgids, size_t *n);
int faults_read(struct tracer *t, const uint32_t *tgids, size_t n_tgids, Understudy__V1__TracerWriteFaults *out);
void faults_free(Understudy__V1__TracerWriteFaults *wf);
int faults_forget(struct tracer *t, const uint32_t *tgids, size_t n, uint32_t *removed);
/* Fills s->counters (summed) and s->per_cpu; malloc'd, freed by status_free. */
int counters_read(struct tracer *t, Understudy__V1__TracerStatus *s);
void status_free(Understudy__V1__TracerStatus *s);

/* out.c: frames on stdout. Records are batched; any other frame flushes the
 * batch first, so the order on stdout is the order things happened. */
int out_check_batch_header(void);
int out_record(struct tracer *t, const void *rec, uint32_t len);
int out_flush(struct tracer *t);
int out_message(struct tracer *t, Understudy__V1__TracerOutput *o);

#endif
