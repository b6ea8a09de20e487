/* Timers held by the kernel for a process: interval timers (setitimer,
 * alarm) and POSIX timers (timer_create).
 *
 * Interval timers change at every epoch (their time left), so they are read
 * at every barrier without injecting anything: the task iterator
 * (bpf/engine_task.bpf.c) reports signal->real_timer (hrtimer expiry,
 * CLOCK_MONOTONIC, against bpf_ktime_get_ns() read beside it),
 * signal->it_real_incr, signal->it[PROF, VIRT] and the thread-group CPU
 * samples (signal->cputimer) that the kernel's own getitimer compares them
 * with (kernel/time/itimer.c get_cpu_itimer). Without the iterator, three
 * injected getitimer calls per process and barrier, like every other
 * fallback of the iterator.
 *
 * POSIX timers: /proc/PID/timers (read at every barrier anyway) lists id,
 * signal, sival, notification and clock. Only a process that has some gets
 * injected timer_gettime + timer_getoverrun per timer.
 *
 * Refused (E_UNSUPPORTED, nothing written) rather than restored wrongly: a
 * POSIX timer of glibc's SIGEV_THREAD (its helper thread and internal
 * signal 32), a timer on the CPU clock of "the calling thread" in a process
 * of several threads (which thread created it is not visible), a
 * SIGEV_THREAD_ID target that is not a thread of the process,
 * a timer whose last signal carried overruns (no call can set that count),
 * and an ITIMER_REAL with an interval that expired while SIGALRM was
 * ignored (the kernel dropped the signal and never re-arms it: setitimer
 * cannot rebuild that state). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include "arena.h"
#include "engine.h"

#define NS 1000000000ULL

static int peek_mem(pid_t pid, uint64_t addr, void *dst, size_t len)
{
	struct iovec l = { dst, len }, r = { (void *)addr, len };
	if (process_vm_readv(pid, &l, 1, &r, 1, 0) != (ssize_t)len)
		return fail("E_NATIVE", errno, "process_vm_readv(pid %d, 0x%llx, %zu bytes)", pid, (unsigned long long)addr, len);
	return 0;
}

static int push_itimer(Understudy__V1__Process *pr, int which, uint64_t value, uint64_t interval)
{
	if (!value && !interval)
		return 0;
	Understudy__V1__ITimer *it = ANEW(Understudy__V1__ITimer, understudy__v1__itimer__init);
	if (!it)
		return -1;
	it->which = which;
	it->value_ns = value;
	it->interval_ns = interval;
	return APUSH(pr->itimers, pr->n_itimers, it);
}

static bool alrm_pending(const Understudy__V1__Process *pr)
{
	for (size_t i = 0; i < pr->n_shared_pending; i++)
		if (pr->shared_pending[i]->signo == SIGALRM)
			return true;
	return false;
}

/* ITIMER_REAL expired with an interval and not re-armed: the kernel re-arms
 * it when SIGALRM is dequeued, so SIGALRM must be pending */
static int check_real_fired(pid_t pid, const Understudy__V1__Process *pr, uint64_t incr)
{
	if (alrm_pending(pr))
		return 0;
	return fail("E_UNSUPPORTED", 0,
		    "pid %d: its ITIMER_REAL (interval %llu ns) expired while SIGALRM was ignored and is no longer armed; setitimer cannot "
		    "rebuild that state, refusing to checkpoint",
		    pid, (unsigned long long)incr);
}

static int itimers_from_iter(pid_t pid, const struct et_rec *rt, const struct et_rec *cpu, Understudy__V1__Process *pr)
{
	/* ITIMER_REAL: what getitimer reports (itimer_get_remtime): expiry - now
	 * while queued, at least 1 us */
	if (rt->d & ET_RT_ENQUEUED) {
		int64_t rem = (int64_t)(rt->a - rt->c);
		if (rem < 1000)
			rem = 1000;
		if (push_itimer(pr, UNDERSTUDY__V1__ITIMER__WHICH__REAL, (uint64_t)rem, rt->b))
			return -1;
	} else if (rt->b) {
		if (check_real_fired(pid, pr, rt->b) || push_itimer(pr, UNDERSTUDY__V1__ITIMER__WHICH__REAL, 0, rt->b))
			return -1;
	}
	/* PROF (it[0]) against utime+stime, VIRTUAL (it[1]) against utime
	 * (get_cpu_itimer); past its expiry but not yet fired (the tick that
	 * fires it has not come): 1 us, it fires at the next tick */
	uint64_t samples[2] = { cpu->cpu[0] + cpu->cpu[1], cpu->cpu[0] };
	uint64_t exp[2] = { cpu->a, cpu->c }, incr[2] = { cpu->b, cpu->d };
	int which[2] = { UNDERSTUDY__V1__ITIMER__WHICH__PROF, UNDERSTUDY__V1__ITIMER__WHICH__VIRTUAL };
	for (int k = 0; k < 2; k++) {
		uint64_t v = exp[k];
		if (v)
			v = v > samples[k] + 1000 ? v - samples[k] : 1000;
		if (push_itimer(pr, which[k], v, incr[k]))
			return -1;
	}
	return 0;
}

static int itimers_injected(struct proc *p, pid_t tid, Understudy__V1__Process *pr)
{
	uint64_t sc = scratch_addr(tid);
	if (!sc)
		return fail("E_NATIVE", errno, "ptrace(PTRACE_GETREGS, tid %d)", tid);
	static const int order[3] = { ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF };
	struct inject_session is;
	if (inject_begin(&is, p, tid))
		return -1;
	int rc = 0;
	for (int k = 0; k < 3 && !rc; k++) {
		long ret, a[6] = { order[k], (long)sc, 0, 0, 0, 0 };
		if ((rc = inject_call(&is, SYS_getitimer, a, &ret)))
			break;
		if (ret < 0) {
			rc = fail("E_NATIVE", (int)-ret, "getitimer(%d) injected into pid %d", order[k], p->pid);
			break;
		}
		struct timeval tv[2]; /* it_interval, it_value */
		if ((rc = peek_mem(p->pid, sc, tv, sizeof(tv))))
			break;
		uint64_t iv = (uint64_t)tv[0].tv_sec * NS + (uint64_t)tv[0].tv_usec * 1000;
		uint64_t val = (uint64_t)tv[1].tv_sec * NS + (uint64_t)tv[1].tv_usec * 1000;
		if (order[k] == ITIMER_REAL && !val && iv && (rc = check_real_fired(p->pid, pr, iv)))
			break;
		rc = push_itimer(pr, order[k], val, iv);
	}
	if (inject_end(&is))
		rc = -1;
	return rc;
}

/* Test hook (UNDERSTUDY_ENGINE_ITIMER_RACE set): every read of ITIMER_REAL
 * is taken as raced by a firing, so the capture gives up with E_BUSY as it
 * does under a timer that keeps firing while it is read. */
static bool itimer_race_forced(void)
{
	static int forced = -1;
	if (forced < 0)
		forced = getenv("UNDERSTUDY_ENGINE_ITIMER_RACE") != NULL;
	return forced;
}

int capture_itimers(struct proc *p, pid_t lead_tid, Understudy__V1__Process *pr, const struct kstate *ks)
{
	if (!ks)
		return itimers_injected(p, lead_tid, pr);
	struct et_rec rt = { 0 }, cpu = { 0 };
	bool have_rt = false, have_cpu = false;
	struct kstate again;
	for (int attempt = 0;; attempt++) {
		for (size_t i = 0; i < ks->n; i++) {
			if (ks->recs[i].kind == ET_ITREAL)
				rt = ks->recs[i], have_rt = true;
			else if (ks->recs[i].kind == ET_ITCPU)
				cpu = ks->recs[i], have_cpu = true;
		}
		if (!have_rt || !have_cpu)
			return fail("E_NATIVE", 0, "the task iterator of pid %d reported no interval timers", p->pid);
		/* The timer and the SIGALRM bit are read together in the kernel;
		 * the pending list was read (PEEKSIGINFO) a little later. If the
		 * timer fired in between (or was firing at the read), both are
		 * read again, so that a firing is neither lost nor doubled. */
		bool consistent = !(rt.d & ET_RT_RUNNING) && (rt.x != 0) == alrm_pending(pr) && !itimer_race_forced();
		if (consistent)
			break;
		if (attempt == 4)
			return fail("E_BUSY", 0, "pid %d: ITIMER_REAL kept firing while it was read; try the checkpoint again", p->pid);
		if (taskiter_read(p, &again))
			return -1;
		ks = &again;
		pr->n_shared_pending = 0;
		if (capture_shared_pending(lead_tid, pr))
			return -1;
		have_rt = have_cpu = false;
	}
	return itimers_from_iter(p->pid, &rt, &cpu, pr);
}

/* ---- POSIX timers ------------------------------------------------------ */

struct ptimer_line {
	int id, signo, clock, notify, tid;
	uint64_t sival;
};

static int parse_timers(pid_t pid, const char *buf, struct ptimer_line **out, size_t *n)
{
	*out = NULL;
	*n = 0;
	size_t cap = 0;
	const char *s = buf;
	struct ptimer_line cur = { 0 };
	int have = 0;
	while (*s) {
		const char *eol = strchr(s, '\n');
		size_t len = eol ? (size_t)(eol - s) : strlen(s);
		char line[256];
		snprintf(line, sizeof(line), "%.*s", (int)(len < 255 ? len : 255), s);
		s += len + (eol ? 1 : 0);
		char kind[32], who[8];
		unsigned long long sv;
		if (sscanf(line, "ID: %d", &cur.id) == 1) {
			have = 1;
		} else if (sscanf(line, "signal: %d/%llx", &cur.signo, &sv) == 2) {
			cur.sival = sv;
			have |= 2;
		} else if (sscanf(line, "notify: %31[a-z]/%7[a-z].%d", kind, who, &cur.tid) == 3) {
			if (!strcmp(kind, "signal"))
				cur.notify = SIGEV_SIGNAL;
			else if (!strcmp(kind, "none"))
				cur.notify = SIGEV_NONE;
			else if (!strcmp(kind, "thread"))
				cur.notify = SIGEV_THREAD;
			else
				return fail("E_UNSUPPORTED", 0, "pid %d: POSIX timer %d has a notification /proc shows as \"%s\"", pid, cur.id, kind);
			if (!strcmp(who, "tid"))
				cur.notify |= SIGEV_THREAD_ID;
			have |= 4;
		} else if (sscanf(line, "ClockID: %d", &cur.clock) == 1) {
			if (have != 7)
				return fail("E_NATIVE", 0, "pid %d: /proc/%d/timers: timer %d is missing a line", pid, pid, cur.id);
			if (*n == cap) {
				cap = cap ? cap * 2 : 4;
				struct ptimer_line *g = realloc(*out, cap * sizeof(**out));
				if (!g)
					return fail("E_NATIVE", ENOMEM, "realloc for the POSIX timers of pid %d", pid);
				*out = g;
			}
			(*out)[(*n)++] = cur;
			memset(&cur, 0, sizeof(cur));
			have = 0;
		}
	}
	if (have)
		return fail("E_NATIVE", 0, "pid %d: /proc/%d/timers ends inside timer %d", pid, pid, cur.id);
	return 0;
}

/* SIGTIMER: the signal glibc reserves for its SIGEV_THREAD helper thread */
#define GLIBC_SIGTIMER 32

/* what cannot be restored exactly, from /proc alone (attach and barriers) */
static int check_line(pid_t pid, const struct ptimer_line *t, size_t nthreads)
{
	/* a CPU-time clock of "the calling thread" (CLOCK_THREAD_CPUTIME_ID,
	 * encoded with pid 0 and the per-thread bit): it measures the thread
	 * that created the timer, which /proc does not say */
	bool thread_clock = t->clock == CLOCK_THREAD_CPUTIME_ID || (t->clock < 0 && (t->clock & 4) && ~(t->clock >> 3) == 0);
	if (thread_clock && nthreads > 1)
		return fail("E_UNSUPPORTED", 0,
			    "pid %d has POSIX timer %d on the CPU-time clock of the thread that created it (CLOCK_THREAD_CPUTIME_ID), and "
			    "%zu threads: which one is not visible, refusing to checkpoint",
			    pid, t->id, nthreads);
	if ((t->notify & SIGEV_THREAD_ID) && t->signo == GLIBC_SIGTIMER)
		return fail("E_UNSUPPORTED", 0,
			    "pid %d has POSIX timer %d with SIGEV_THREAD notification (glibc runs it on a helper thread woken by its internal "
			    "signal 32 through SIGEV_THREAD_ID): restoring it is not supported, refusing to checkpoint",
			    pid, t->id);
	if (t->notify & SIGEV_THREAD_ID) {
		char path[64];
		snprintf(path, sizeof(path), "/proc/%d/task/%d", pid, t->tid);
		if (access(path, F_OK))
			return fail("E_UNSUPPORTED", 0,
				    "pid %d has POSIX timer %d aimed at thread %d (SIGEV_THREAD_ID), which is not a thread of it: refusing to "
				    "checkpoint",
				    pid, t->id, t->tid);
	}
	return 0;
}

/* The POSIX timers /proc lists for pid; none when the file does not exist
 * (a kernel without CONFIG_CHECKPOINT_RESTORE cannot list them). Any other
 * failure to read it fails: timers that exist must not be dropped silently. */
static int read_timers(pid_t pid, struct ptimer_line **v, size_t *n)
{
	char path[64], *buf;
	*v = NULL;
	*n = 0;
	snprintf(path, sizeof(path), "/proc/%d/timers", pid);
	ssize_t len = read_file(path, &buf);
	if (len < 0) {
		if (g_err.errnum == ENOENT) {
			err_clear();
			return 0;
		}
		return fail("E_NATIVE", g_err.errnum, "pid %d: cannot read %s to capture its POSIX timers", pid, path);
	}
	int rc = len > 0 ? parse_timers(pid, buf, v, n) : 0;
	free(buf);
	return rc;
}

int check_posix_timers(pid_t pid)
{
	struct ptimer_line *v;
	size_t n;
	if (read_timers(pid, &v, &n))
		return -1;
	int rc = 0;
	size_t nthreads = 1;
	char th[32];
	if (n && !proc_status_field(pid, "Threads", th, sizeof(th)))
		nthreads = (size_t)atoi(th);
	err_clear();
	for (size_t i = 0; i < n && !rc; i++)
		rc = check_line(pid, &v[i], nthreads);
	free(v);
	return rc;
}

int capture_posix_timers(struct proc *p, pid_t lead_tid, Understudy__V1__Process *pr)
{
	struct ptimer_line *v;
	size_t n;
	if (read_timers(p->pid, &v, &n))
		return -1;
	if (!n)
		return 0;
	int rc = 0;
	/* what /proc alone refuses, before anything is injected */
	for (size_t i = 0; i < n && !rc; i++)
		rc = check_line(p->pid, &v[i], pr->n_threads);
	/* every timer's two calls in one injection session: one return to the
	 * interrupt stop per barrier, not one per call */
	uint64_t sc = rc ? 0 : scratch_addr(lead_tid);
	if (!rc && !sc)
		rc = fail("E_NATIVE", errno, "ptrace(PTRACE_GETREGS, tid %d)", lead_tid);
	struct inject_session is;
	if (!rc && inject_begin(&is, p, lead_tid)) {
		free(v);
		return -1;
	}
	for (size_t i = 0; i < n && !rc; i++) {
		const struct ptimer_line *t = &v[i];
		long ret, a[6] = { t->id, (long)sc, 0, 0, 0, 0 };
		if ((rc = inject_call(&is, SYS_timer_gettime, a, &ret)))
			break;
		if (ret < 0) {
			rc = fail("E_NATIVE", (int)-ret, "timer_gettime(%d) injected into pid %d", t->id, p->pid);
			break;
		}
		struct itimerspec its;
		if ((rc = peek_mem(p->pid, sc, &its, sizeof(its))))
			break;
		long b[6] = { t->id, 0, 0, 0, 0, 0 };
		if ((rc = inject_call(&is, SYS_timer_getoverrun, b, &ret)))
			break;
		if (ret < 0) {
			rc = fail("E_NATIVE", (int)-ret, "timer_getoverrun(%d) injected into pid %d", t->id, p->pid);
			break;
		}
		if (ret > 0) {
			rc = fail("E_UNSUPPORTED", 0,
				  "pid %d: POSIX timer %d's last signal carried %ld overruns (timer_getoverrun); no call can set that count on a "
				  "restored timer, refusing to checkpoint",
				  p->pid, t->id, ret);
			break;
		}
		Understudy__V1__PosixTimer *pt = ANEW(Understudy__V1__PosixTimer, understudy__v1__posix_timer__init);
		if (!pt) {
			rc = -1;
			break;
		}
		pt->id = t->id;
		pt->clock_id = t->clock;
		pt->notify = t->notify;
		pt->signo = t->signo;
		pt->sival = t->sival;
		if (t->notify & SIGEV_THREAD_ID) {
			pt->target_tid = t->tid;
			struct task *tk = task_find(t->tid);
			pt->ns_target_tid = tk && tk->ns_tid ? tk->ns_tid : t->tid;
		}
		pt->value_ns = (uint64_t)its.it_value.tv_sec * NS + (uint64_t)its.it_value.tv_nsec;
		pt->interval_ns = (uint64_t)its.it_interval.tv_sec * NS + (uint64_t)its.it_interval.tv_nsec;
		pt->overrun = (int32_t)ret;
		rc = APUSH(pr->posix_timers, pr->n_posix_timers, pt);
	}
	/* the thread back as it was, whatever happened above (a failure to put
	 * it back is the error reported) */
	if (sc && inject_end(&is))
		rc = -1;
	free(v);
	return rc;
}
