/* Kernel-held task state without injection: signal handlers, clear-child-tid,
 * sigaltstack and brk have no /proc or ptrace interface, and an injected
 * syscall per caught signal costs two wake-ups of a stopped thread (~1-4 ms
 * per barrier on a loaded 2-vCPU machine). A BPF task iterator
 * (bpf/engine_task.bpf.c) reads them from the task itself: one link per
 * process (filtered to its pid), one read per barrier, ~10 us.
 * If the iterator cannot be loaded the engine injects as before; and at the
 * first barrier of every process and thread both are done and compared, so
 * a kernel whose structures read differently is caught, not trusted. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "engine.h"
#include "engine_task.skel.h"

static struct engine_task_bpf *skel;
static int avail; /* 0 not tried, 1 usable, -1 not usable */
static char why_not[300];

static int quiet(enum libbpf_print_level l, const char *f, va_list ap)
{
	(void)l;
	(void)f;
	(void)ap;
	return 0;
}

void taskiter_init(void)
{
	if (avail)
		return;
	const char *off = getenv("UNDERSTUDY_ENGINE_NO_TASKITER");
	if (off && *off && strcmp(off, "0")) {
		snprintf(why_not, sizeof(why_not), "UNDERSTUDY_ENGINE_NO_TASKITER is set");
		avail = -1;
		return;
	}
	libbpf_set_print(quiet);
	skel = engine_task_bpf__open_and_load();
	if (!skel) {
		snprintf(why_not, sizeof(why_not), "loading bpf/engine_task: %s", strerror(errno));
		avail = -1;
		return;
	}
	avail = 1;
}

bool taskiter_ok(void)
{
	return avail == 1;
}

void taskiter_disable(const char *why)
{
	snprintf(why_not, sizeof(why_not), "%s", why);
	fprintf(stderr, "understudy-engine: task iterator disabled, injecting instead: %s\n", why);
	avail = -1;
}

void taskiter_close(struct proc *p)
{
	if (p->iter_link)
		bpf_link__destroy(p->iter_link);
	p->iter_link = NULL;
}

static char *buf; /* kept across reads */
static size_t cap;

int taskiter_read(struct proc *p, struct kstate *ks)
{
	memset(ks, 0, sizeof(*ks));
	if (avail != 1)
		return fail("E_NATIVE", 0, "task iterator not available (%s)", why_not);
	if (!p->iter_link) {
		union bpf_iter_link_info li;
		memset(&li, 0, sizeof(li));
		li.task.pid = p->pid;
		DECLARE_LIBBPF_OPTS(bpf_iter_attach_opts, o, .link_info = &li, .link_info_len = sizeof(li));
		p->iter_link = bpf_program__attach_iter(skel->progs.engine_task, &o);
		if (!p->iter_link)
			return fail("E_NATIVE", errno, "bpf_program__attach_iter(engine_task, pid %d)", p->pid);
	}
	int fd = bpf_iter_create(bpf_link__fd(p->iter_link));
	if (fd < 0)
		return fail("E_NATIVE", errno, "bpf_iter_create(engine_task, pid %d)", p->pid);
	char what[64];
	snprintf(what, sizeof(what), "the task iterator of pid %d", p->pid);
	ssize_t n = read_all(fd, &buf, &cap, what);
	close(fd);
	if (n < 0)
		return -1;
	size_t len = (size_t)n;
	if (len % sizeof(struct et_rec))
		return fail("E_NATIVE", 0, "task iterator of pid %d returned %zu bytes, not whole records", p->pid, len);
	ks->recs = (const struct et_rec *)buf;
	ks->n = len / sizeof(struct et_rec);
	return 0;
}

const struct et_rec *kstate_task(const struct kstate *ks, pid_t tid)
{
	for (size_t i = 0; i < ks->n; i++)
		if (ks->recs[i].kind == ET_TASK && (pid_t)ks->recs[i].tid == (pid_t)tid)
			return &ks->recs[i];
	return NULL;
}

/* the flags rt_sigaction reports: the kernel clears its internal bits
 * (SA_IMMUTABLE, ...) from what it returns (kernel/signal.c do_sigaction) */
#define UAPI_SA_FLAGS 0xdc000807ULL

int kstate_sigactions(const struct kstate *ks, struct sa_val out[64])
{
	memset(out, 0, 64 * sizeof(out[0]));
	for (size_t i = 0; i < ks->n; i++) {
		const struct et_rec *r = &ks->recs[i];
		if (r->kind != ET_SIGACT || r->x < 1 || r->x > 64)
			continue;
		struct sa_val *v = &out[r->x - 1];
		v->handler = r->a;
		if (r->a != 1) { /* SIG_IGN is recorded bare, as before */
			v->flags = r->b & UAPI_SA_FLAGS;
			v->restorer = r->c;
			v->mask = r->d;
		}
	}
	return 0;
}
