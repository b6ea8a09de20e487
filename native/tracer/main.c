/* understudy-tracer --pins DIR [--poll-ms N] [--stats-ms N]
 * understudy-tracer --pins DIR --add-tgid PID [--add-tgid PID]...
 * understudy-tracer --pins DIR --forget-tgid PID [--forget-tgid PID]...
 *
 * With --add-tgid: puts the tgids in the in-kernel filter (filter.c) and exits.
 * With --forget-tgid: removes the write-fault counts of these exited tgids,
 * prints "removed N" and exits.
 * Attaches every program pinned in DIR/progs, then streams DIR/maps/events (the
 * ring buffer) to stdout as length-prefixed frames, each one record of
 * bpf/trace.h. The programs submit without wake-ups, so the buffer is also
 * drained every --poll-ms. A struct tr_stats record (counters incl. losses) is
 * written once attached (the "ready" signal), every --stats-ms, and at exit.
 * On EOF of stdin or SIGTERM/SIGINT: drains, writes the last stats, closes
 * stdout (the reader's end of stream), detaches every program, exits 0. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "../../bpf/trace.h"
#include "tracer.h"

static uint64_t delivered;
static int failed_output;

static int on_record(void *ctx, void *data, size_t size)
{
	(void)ctx;
	delivered++;
	if (out_frame(data, (uint32_t)size) < 0) {
		failed_output = 1;
		return -1;
	}
	return 0;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

/* One u64 per possible CPU: what a lookup in the per-CPU counters writes. */
static uint64_t *cpu_vals;
static int n_cpus;

static int emit_stats(int counters_fd)
{
	struct tr_stats s;
	memset(&s, 0, sizeof(s));
	s.hdr.version = TR_VERSION;
	s.hdr.type = TR_STATS;
	s.hdr.size = sizeof(s);
	s.hdr.ts_ns = now_ns();
	s.hdr.tgid = getpid();
	s.hdr.tid = getpid();
	s.delivered = delivered;
	/* A per-CPU array: one value per possible CPU, summed. */
	for (uint32_t i = 0; i < TR_CTR_MAX; i++) {
		if (bpf_map_lookup_elem(counters_fd, &i, cpu_vals) != 0)
			continue;
		for (int c = 0; c < n_cpus; c++)
			s.counters[i] += cpu_vals[c];
	}
	if (out_frame(&s, sizeof(s)) < 0)
		return -1;
	return out_flush();
}

static int usage(void)
{
	fprintf(stderr, "usage: understudy-tracer --pins DIR [--poll-ms N] [--stats-ms N]\n"
			"       understudy-tracer --pins DIR --add-tgid PID [--add-tgid PID]...\n"
			"       understudy-tracer --pins DIR --forget-tgid PID [--forget-tgid PID]...\n");
	return 2;
}

#define MAX_TGID_ARGS 4096

/* Appends a decimal tgid (1..UINT32_MAX) to a list of MAX_TGID_ARGS; -1 if it is not one or the list is full. */
static int push_tgid(const char *arg, uint32_t *list, int *n)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(arg, &end, 10);
	if (errno || *end || end == arg || arg[0] == '-' || v == 0 || v > UINT32_MAX || *n >= MAX_TGID_ARGS)
		return -1;
	list[(*n)++] = (uint32_t)v;
	return 0;
}

int main(int argc, char **argv)
{
	const char *pins = NULL;
	int poll_ms = 10, stats_ms = 1000;
	static uint32_t add[MAX_TGID_ARGS], forget[MAX_TGID_ARGS];
	int n_add = 0, n_forget = 0;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--pins") == 0 && i + 1 < argc)
			pins = argv[++i];
		else if (strcmp(argv[i], "--add-tgid") == 0 && i + 1 < argc) {
			if (push_tgid(argv[++i], add, &n_add) < 0)
				return usage();
		}
		else if (strcmp(argv[i], "--forget-tgid") == 0 && i + 1 < argc) {
			if (push_tgid(argv[++i], forget, &n_forget) < 0)
				return usage();
		}
		else if (strcmp(argv[i], "--poll-ms") == 0 && i + 1 < argc)
			poll_ms = atoi(argv[++i]);
		else if (strcmp(argv[i], "--stats-ms") == 0 && i + 1 < argc)
			stats_ms = atoi(argv[++i]);
		else
			return usage();
	}
	if (!pins || poll_ms <= 0 || stats_ms <= 0)
		return usage();
	if (n_add > 0 && n_forget > 0)
		return usage();
	if (n_add > 0)
		return filter_add(pins, add, n_add) < 0 ? 1 : 0;
	if (n_forget > 0) {
		unsigned removed = 0;
		int rc = faults_forget(pins, forget, n_forget, &removed);
		printf("removed %u\n", removed);
		return rc < 0 ? 1 : 0;
	}
	signal(SIGPIPE, SIG_IGN);

	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0) {
		fprintf(stderr, "understudy-tracer: sigprocmask: %s\n", strerror(errno));
		return 1;
	}
	int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
	if (sfd < 0) {
		fprintf(stderr, "understudy-tracer: signalfd: %s\n", strerror(errno));
		return 1;
	}

	char path[1024];
	snprintf(path, sizeof(path), "%s/maps/events", pins);
	int rb_fd = bpf_obj_get(path);
	if (rb_fd < 0) {
		fprintf(stderr, "understudy-tracer: bpf_obj_get(%s): %s\n", path, strerror(errno));
		return 1;
	}
	snprintf(path, sizeof(path), "%s/maps/counters", pins);
	int ctr_fd = bpf_obj_get(path);
	if (ctr_fd < 0) {
		fprintf(stderr, "understudy-tracer: bpf_obj_get(%s): %s\n", path, strerror(errno));
		return 1;
	}
	/* Sized by the kernel's count, not a fixed array: a per-CPU lookup writes
	 * one value for every possible CPU, however many there are. */
	n_cpus = libbpf_num_possible_cpus();
	if (n_cpus <= 0) {
		fprintf(stderr, "understudy-tracer: libbpf_num_possible_cpus: %s\n", strerror(-n_cpus));
		return 1;
	}
	cpu_vals = calloc((size_t)n_cpus, sizeof(*cpu_vals));
	if (!cpu_vals) {
		fprintf(stderr, "understudy-tracer: calloc(%d per-CPU counter values): %s\n", n_cpus, strerror(errno));
		return 1;
	}
	struct ring_buffer *rb = ring_buffer__new(rb_fd, on_record, NULL, NULL);
	if (!rb) {
		fprintf(stderr, "understudy-tracer: ring_buffer__new(%s/maps/events): %s\n", pins, strerror(errno));
		return 1;
	}

	static struct links links;
	snprintf(path, sizeof(path), "%s/progs", pins);
	if (attach_all(path, &links) < 0) {
		ring_buffer__free(rb);
		return 1;
	}

	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0) {
		fprintf(stderr, "understudy-tracer: epoll_create1: %s\n", strerror(errno));
		detach_all(&links);
		return 1;
	}
	struct epoll_event ev = {.events = EPOLLIN};
	ev.data.u32 = 1;
	int rc = 0;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, ring_buffer__epoll_fd(rb), &ev) < 0) {
		fprintf(stderr, "understudy-tracer: epoll_ctl(ring buffer): %s\n", strerror(errno));
		rc = 1;
	}
	ev.data.u32 = 2;
	if (rc == 0 && epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev) < 0 && errno != EPERM) {
		fprintf(stderr, "understudy-tracer: epoll_ctl(stdin): %s\n", strerror(errno));
		rc = 1;
	}
	ev.data.u32 = 3;
	if (rc == 0 && epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev) < 0) {
		fprintf(stderr, "understudy-tracer: epoll_ctl(signalfd): %s\n", strerror(errno));
		rc = 1;
	}
	if (rc == 0 && emit_stats(ctr_fd) < 0)
		rc = 1;

	uint64_t next_stats = now_ns() + (uint64_t)stats_ms * 1000000ull;
	int stop = 0;
	while (rc == 0 && !stop) {
		struct epoll_event evs[4];
		int n = epoll_wait(ep, evs, 4, poll_ms);
		if (n < 0 && errno != EINTR) {
			fprintf(stderr, "understudy-tracer: epoll_wait: %s\n", strerror(errno));
			rc = 1;
			break;
		}
		for (int i = 0; i < n; i++) {
			if (evs[i].data.u32 == 2) {
				char b[256];
				ssize_t r = read(0, b, sizeof(b));
				if (r == 0 || (r < 0 && errno != EINTR && errno != EAGAIN))
					stop = 1;
			} else if (evs[i].data.u32 == 3) {
				stop = 1;
			}
		}
		/* Records are submitted without wake-ups: drain on every tick. */
		if (ring_buffer__consume(rb) < 0 && failed_output) {
			rc = 1;
			break;
		}
		if (out_flush() < 0) {
			rc = 1;
			break;
		}
		if (now_ns() >= next_stats) {
			if (emit_stats(ctr_fd) < 0)
				rc = 1;
			next_stats = now_ns() + (uint64_t)stats_ms * 1000000ull;
		}
	}
	/* Final drain and stats, then end the stream before detaching: each
	 * detach waits for a tracepoint grace period (tens of ms, ~100
	 * programs), and the reader need not wait for that. */
	if (rc == 0) {
		ring_buffer__consume(rb);
		if (emit_stats(ctr_fd) < 0)
			rc = 1;
	}
	close(1);
	detach_all(&links);
	ring_buffer__free(rb);
	free(cpu_vals);
	return rc;
}
