/* understudy-tracer [--poll-ms N] [--stats-ms N] [--object FILE.bpf.o]
 *
 * One long-lived process per traced app. It opens, loads and attaches
 * bpf/trace.bpf.c through its skeleton (objects.c) and owns the programs,
 * maps and ring buffer for its whole life; nothing is pinned, so however this
 * process ends, the kernel drops them with it. The agent talks to it over the
 * seam of proto/understudy/v1/tracer.proto: TracerRequest frames on stdin
 * (add tgids to the filter, forget tgids' write faults, read the write-fault
 * map, status, stop), TracerOutput frames on stdout (a hello once attached,
 * replies, record batches, stats every --stats-ms). The programs submit
 * records without wake-ups, so the ring buffer is also drained every
 * --poll-ms. On stdin EOF, SIGTERM/SIGINT or a stop request: drains, writes
 * the last stats, closes stdout (the agent's end of stream), then detaches
 * every program (slow: a grace period each) and exits 0.
 *
 * --object FILE loads and attaches another object that has the stream maps
 * (events, counters) instead: the floors of bench/trace-overhead. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>
#include <bpf/libbpf.h>
#include "../../bpf/trace.h"
#include "frame.h"
#include "tracer.h"

__thread struct err_value g_err;

#define MAX_REQUEST (16u << 20)

static struct tracer T;
static int stop_requested;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int on_record(void *ctx, void *data, size_t size)
{
	struct tracer *t = ctx;
	t->delivered++;
	return out_record(t, data, (uint32_t)size) < 0 ? -1 : 0;
}

/* Everything the ring buffer holds goes out now. */
static int drain(struct tracer *t)
{
	int n = ring_buffer__consume(t->rb);
	if (n < 0 && t->output_failed)
		return -1;
	if (n < 0 && n != -EINTR)
		fprintf(stderr, "understudy-tracer: ring_buffer__consume: %s\n", err_text(-n));
	return out_flush(t);
}

static int status_fill(struct tracer *t, Understudy__V1__TracerStatus *s, int filter, int programs)
{
	s->delivered = t->delivered;
	s->batches = t->batches;
	if (counters_read(t, s))
		return -1;
	if (filter && filter_list(t, &s->filter_tgids, &s->n_filter_tgids))
		return -1;
	if (programs && tracer_programs(t, &s->programs, &s->n_programs))
		return -1;
	return 0;
}

static int send_stats(struct tracer *t)
{
	Understudy__V1__TracerStatus s = UNDERSTUDY__V1__TRACER_STATUS__INIT;
	Understudy__V1__TracerOutput o = UNDERSTUDY__V1__TRACER_OUTPUT__INIT;
	err_clear();
	int rc = status_fill(t, &s, 0, 0);
	if (rc == 0) {
		o.body_case = UNDERSTUDY__V1__TRACER_OUTPUT__BODY_STATS;
		o.stats = &s;
		rc = out_message(t, &o);
	}
	if (rc)
		fprintf(stderr, "understudy-tracer: stats: %s\n", g_err.msg);
	status_free(&s);
	return rc;
}

static void set_error(Understudy__V1__TracerError *e)
{
	if (!g_err.code[0])
		fail("E_INTERNAL", 0, "a request failed without an error message");
	e->code = (Understudy__V1__ErrorCode)err_value_code(&g_err);
	e->message = g_err.msg;
	e->errno_value = g_err.errnum;
}

static int send_hello(struct tracer *t)
{
	Understudy__V1__TracerHello h = UNDERSTUDY__V1__TRACER_HELLO__INIT;
	Understudy__V1__TracerOutput o = UNDERSTUDY__V1__TRACER_OUTPUT__INIT;
	/* the sizes as this binary was compiled: bpf/trace.h, checked there */
#define TR_SIZE_ROW(type, st, size) { PROTOBUF_C_MESSAGE_INIT(&understudy__v1__tracer_record_size__descriptor), type, sizeof(struct st), #st },
	static Understudy__V1__TracerRecordSize sizes[] = { TR_RECORDS(TR_SIZE_ROW) };
#undef TR_SIZE_ROW
	Understudy__V1__TracerRecordSize *size_ptrs[sizeof(sizes) / sizeof(sizes[0])];
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
		size_ptrs[i] = &sizes[i];
	h.pid = (uint32_t)getpid();
	h.record_version = TR_VERSION;
	h.record_sizes = size_ptrs;
	h.n_record_sizes = sizeof(sizes) / sizeof(sizes[0]);
	h.ring_buffer_bytes = t->events_bytes;
	h.possible_cpus = (uint32_t)t->n_cpus;
	if (tracer_programs(t, &h.programs, &h.n_programs))
		return -1;
	o.body_case = UNDERSTUDY__V1__TRACER_OUTPUT__BODY_HELLO;
	o.hello = &h;
	int rc = out_message(t, &o);
	tracer_free_programs(h.programs, h.n_programs);
	return rc;
}

/* A start that failed: the error as a frame (the agent's reason) and on stderr (a person's). */
static int start_failed(void)
{
	Understudy__V1__TracerError e = UNDERSTUDY__V1__TRACER_ERROR__INIT;
	Understudy__V1__TracerOutput o = UNDERSTUDY__V1__TRACER_OUTPUT__INIT;
	set_error(&e);
	fprintf(stderr, "understudy-tracer: %s\n", g_err.msg);
	o.body_case = UNDERSTUDY__V1__TRACER_OUTPUT__BODY_FAILED;
	o.failed = &e;
	o.version = TRACER_VERSION;
	frame_write(1, &o.base); /* nobody may be listening: nothing more to do if it fails */
	return 1;
}

static int handle_cmd(struct tracer *t, Understudy__V1__TracerRequest *req, Understudy__V1__TracerReply *rep, Understudy__V1__TracerStatus *status,
		      Understudy__V1__TracerForgetResult *forget, Understudy__V1__TracerWriteFaults *faults)
{
	switch (req->cmd_case) {
	case UNDERSTUDY__V1__TRACER_REQUEST__CMD_ADD_TGIDS:
		return filter_add(t, req->add_tgids->tgids, req->add_tgids->n_tgids);
	case UNDERSTUDY__V1__TRACER_REQUEST__CMD_FORGET_TGIDS:
		rep->result_case = UNDERSTUDY__V1__TRACER_REPLY__RESULT_FORGET;
		rep->forget = forget;
		return faults_forget(t, req->forget_tgids->tgids, req->forget_tgids->n_tgids, &forget->removed);
	case UNDERSTUDY__V1__TRACER_REQUEST__CMD_READ_WRITE_FAULTS:
		rep->result_case = UNDERSTUDY__V1__TRACER_REPLY__RESULT_WRITE_FAULTS;
		rep->write_faults = faults;
		return faults_read(t, req->read_write_faults->tgids, req->read_write_faults->n_tgids, faults);
	case UNDERSTUDY__V1__TRACER_REQUEST__CMD_STATUS:
		rep->result_case = UNDERSTUDY__V1__TRACER_REPLY__RESULT_STATUS;
		rep->status = status;
		return status_fill(t, status, req->status->filter, req->status->programs);
	case UNDERSTUDY__V1__TRACER_REQUEST__CMD_STOP:
		stop_requested = 1;
		rep->result_case = UNDERSTUDY__V1__TRACER_REPLY__RESULT_STATUS;
		rep->status = status;
		return status_fill(t, status, 0, 0);
	default:
		return fail("E_USAGE", 0, "unknown tracer request %d", req->cmd_case);
	}
}

/* One request, one reply. The ring buffer is drained first: the reply comes
 * after every record the kernel had submitted when the request was read. */
static int handle(struct tracer *t, const uint8_t *buf, size_t len)
{
	Understudy__V1__TracerReply rep = UNDERSTUDY__V1__TRACER_REPLY__INIT;
	Understudy__V1__TracerError e = UNDERSTUDY__V1__TRACER_ERROR__INIT;
	Understudy__V1__TracerStatus status = UNDERSTUDY__V1__TRACER_STATUS__INIT;
	Understudy__V1__TracerForgetResult forget = UNDERSTUDY__V1__TRACER_FORGET_RESULT__INIT;
	Understudy__V1__TracerWriteFaults faults = UNDERSTUDY__V1__TRACER_WRITE_FAULTS__INIT;
	Understudy__V1__TracerOutput o = UNDERSTUDY__V1__TRACER_OUTPUT__INIT;
	Understudy__V1__TracerRequest *req;
	int rc;
	err_clear();
	if (drain(t) < 0)
		return -1;
	req = understudy__v1__tracer_request__unpack(NULL, len, buf);
	if (!req) {
		rc = fail("E_FRAME", 0, "cannot decode a TracerRequest of %zu bytes", len);
	} else if (req->version != TRACER_VERSION) {
		rep.id = req->id;
		rc = fail("E_VERSION", 0, "request version %u is not supported (this tracer speaks version %d)", req->version, TRACER_VERSION);
	} else {
		rep.id = req->id;
		rc = handle_cmd(t, req, &rep, &status, &forget, &faults);
	}
	rep.ok = rc == 0;
	if (rc) {
		rep.result_case = UNDERSTUDY__V1__TRACER_REPLY__RESULT__NOT_SET;
		set_error(&e);
		rep.error = &e;
	}
	o.body_case = UNDERSTUDY__V1__TRACER_OUTPUT__BODY_REPLY;
	o.reply = &rep;
	int wrc = out_message(t, &o);
	status_free(&status);
	faults_free(&faults);
	if (req)
		understudy__v1__tracer_request__free_unpacked(req, NULL);
	return wrc;
}

static int usage(void)
{
	fprintf(stderr,
		"usage: understudy-tracer [--poll-ms N] [--stats-ms N] [--object FILE.bpf.o]\n"
		"  requests on stdin, records and replies on stdout: proto/understudy/v1/tracer.proto\n");
	return 2;
}

static int positive(const char *s, int *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || *end || end == s || v <= 0 || v > 3600 * 1000)
		return -1;
	*out = (int)v;
	return 0;
}

static int run(struct tracer *t, int sfd, int poll_ms, int stats_ms)
{
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0) {
		fprintf(stderr, "understudy-tracer: epoll_create1: %s\n", err_text(errno));
		return 1;
	}
	struct epoll_event ev = { .events = EPOLLIN };
	ev.data.u32 = 1;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, ring_buffer__epoll_fd(t->rb), &ev) < 0) {
		fprintf(stderr, "understudy-tracer: epoll_ctl(ring buffer): %s\n", err_text(errno));
		close(ep);
		return 1;
	}
	/* stdin may be a file or /dev/null (EPERM): no requests then, signals still stop it */
	ev.data.u32 = 2;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev) < 0 && errno != EPERM) {
		fprintf(stderr, "understudy-tracer: epoll_ctl(stdin): %s\n", err_text(errno));
		close(ep);
		return 1;
	}
	ev.data.u32 = 3;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev) < 0) {
		fprintf(stderr, "understudy-tracer: epoll_ctl(signalfd): %s\n", err_text(errno));
		close(ep);
		return 1;
	}
	int rc = 0, stop = 0;
	uint64_t next_stats = now_ns() + (uint64_t)stats_ms * 1000000ull;
	while (!stop) {
		struct epoll_event evs[4];
		int n = epoll_wait(ep, evs, 4, poll_ms);
		if (n < 0 && errno != EINTR) {
			fprintf(stderr, "understudy-tracer: epoll_wait: %s\n", err_text(errno));
			rc = 1;
			break;
		}
		for (int i = 0; i < n && !stop; i++) {
			if (evs[i].data.u32 == 2) {
				uint8_t *buf;
				size_t len;
				int fr = frame_read(0, &buf, &len, MAX_REQUEST);
				if (fr == 0) {
					stop = 1; /* the agent closed the pipe, or is gone */
				} else if (fr < 0) {
					fprintf(stderr, "understudy-tracer: stdin: reading a request frame (limit %u bytes): %s\n", MAX_REQUEST,
						err_text(errno));
					stop = 1;
				} else {
					if (handle(t, buf, len) < 0)
						rc = 1;
					free(buf);
					stop = rc || stop_requested;
				}
			} else if (evs[i].data.u32 == 3) {
				stop = 1;
			}
		}
		/* Records are submitted without wake-ups: drained on every tick. */
		if (drain(t) < 0) {
			rc = 1;
			break;
		}
		if (now_ns() >= next_stats) {
			if (send_stats(t) < 0 && t->output_failed) {
				rc = 1;
				break;
			}
			next_stats = now_ns() + (uint64_t)stats_ms * 1000000ull;
		}
	}
	close(ep);
	if (t->output_failed)
		fprintf(stderr, "understudy-tracer: %s\n", g_err.msg);
	return rc;
}

int main(int argc, char **argv)
{
	int poll_ms = 10, stats_ms = 1000;
	const char *object = NULL;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--poll-ms") == 0 && i + 1 < argc) {
			if (positive(argv[++i], &poll_ms))
				return usage();
		} else if (strcmp(argv[i], "--stats-ms") == 0 && i + 1 < argc) {
			if (positive(argv[++i], &stats_ms))
				return usage();
		} else if (strcmp(argv[i], "--object") == 0 && i + 1 < argc) {
			object = argv[++i];
		} else {
			return usage();
		}
	}
	signal(SIGPIPE, SIG_IGN);
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0) {
		fprintf(stderr, "understudy-tracer: sigprocmask: %s\n", err_text(errno));
		return 1;
	}
	int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
	if (sfd < 0) {
		fprintf(stderr, "understudy-tracer: signalfd: %s\n", err_text(errno));
		return 1;
	}

	struct tracer *t = &T;
	if (out_check_batch_header() || tracer_open(t, object)) {
		tracer_close(t);
		return start_failed();
	}
	t->rb = ring_buffer__new(t->events_fd, on_record, t, NULL);
	if (!t->rb) {
		fail("E_TRACER", errno, "ring_buffer__new(map events)");
		tracer_close(t);
		return start_failed();
	}
	if (send_hello(t) < 0) {
		fprintf(stderr, "understudy-tracer: hello: %s\n", g_err.msg);
		tracer_close(t);
		return 1;
	}
	int rc = run(t, sfd, poll_ms, stats_ms);
	/* The last records and stats, then the end of the stream before the
	 * detach: each program's detach waits for a grace period, and the agent
	 * need not wait for that. */
	if (!t->output_failed) {
		if (drain(t) < 0 || send_stats(t) < 0)
			rc = 1;
	}
	close(1);
	tracer_close(t);
	return rc;
}
