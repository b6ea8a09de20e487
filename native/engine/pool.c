/* The pause's helper threads: two persistent workers (the memory phase, and
 * a second scanner/copier), so a checkpoint pays no pthread_create. Hand-off
 * is a futex word per worker. Workers run SCHED_FIFO priority 1 where allowed
 * and the tracer thread priority 2 from barrier to release (pause_sched): on
 * a loaded machine an ordinary thread can wait a whole scheduler slice for a
 * CPU while the app stands stopped. Workers only run inside a pause.
 * pool_par_for() shares a list of items between the calling thread and the
 * helper, pulled one at a time: if the helper is late to a CPU (the tracer
 * holds it, or the host took the vCPU) the caller simply does more items,
 * and a helper that never got to start is called off rather than waited for. */
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "engine.h"

enum {
	W_IDLE = 0,
	W_POSTED = 1,
	W_RUNNING = 2,
	W_DONE = 3
};

struct worker {
	pthread_t th;
	bool started;
	int state;
	void (*fn)(void *);
	void *arg;
};
static struct worker workers[POOL_WORKERS];

static void futex_wait(int *w, int val)
{
	syscall(SYS_futex, w, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake(int *w)
{
	syscall(SYS_futex, w, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

static void set_fifo(bool on, int prio)
{
	struct sched_param sp = { .sched_priority = on ? prio : 0 };
	/* EPERM (no CAP_SYS_NICE, no RT budget in this cgroup): run as we are */
	sched_setscheduler(0, on ? SCHED_FIFO : SCHED_OTHER, &sp);
}

static void *worker_main(void *a)
{
	struct worker *w = a;
	set_fifo(true, 1);
	for (;;) {
		int s = W_POSTED;
		if (!__atomic_compare_exchange_n(&w->state, &s, W_RUNNING, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
			futex_wait(&w->state, s);
			continue;
		}
		prof_mark("worker.start");
		w->fn(w->arg);
		__atomic_store_n(&w->state, W_DONE, __ATOMIC_RELEASE);
		futex_wake(&w->state);
	}
	return NULL;
}

int pool_post(int i, void (*fn)(void *), void *arg)
{
	struct worker *w = &workers[i];
	if (!w->started) {
		if (pthread_create(&w->th, NULL, worker_main, w))
			return -1;
		w->started = true;
	}
	w->fn = fn;
	w->arg = arg;
	__atomic_store_n(&w->state, W_POSTED, __ATOMIC_RELEASE);
	futex_wake(&w->state);
	return 0;
}

void pool_wait(int i)
{
	struct worker *w = &workers[i];
	int s;
	while ((s = __atomic_load_n(&w->state, __ATOMIC_ACQUIRE)) == W_POSTED || s == W_RUNNING)
		futex_wait(&w->state, s);
	__atomic_store_n(&w->state, W_IDLE, __ATOMIC_RELAXED);
}

/* Take back a job the worker has not started: true if it never will. */
static bool pool_cancel(int i)
{
	int s = W_POSTED;
	return __atomic_compare_exchange_n(&workers[i].state, &s, W_IDLE, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

struct par {
	size_t n, next;
	int (*fn)(void *ctx, size_t i);
	void *ctx;
	int failed;
	struct err_value err;
};

static void par_run(struct par *p)
{
	while (!__atomic_load_n(&p->failed, __ATOMIC_ACQUIRE)) {
		size_t i = __atomic_fetch_add(&p->next, 1, __ATOMIC_ACQ_REL);
		if (i >= p->n)
			break;
		if (p->fn(p->ctx, i)) {
			if (!__atomic_exchange_n(&p->failed, 1, __ATOMIC_ACQ_REL))
				p->err = g_err;
			break;
		}
	}
}

static void par_helper(void *a)
{
	err_clear();
	par_run(a);
}

/* the parallel loop running now, for the tracer to join (pool_assist) */
static struct par *cur_par;
static int cur_users;

int pool_par_for(size_t n, int (*fn)(void *ctx, size_t i), void *ctx)
{
	struct par p = { .n = n, .fn = fn, .ctx = ctx };
	__atomic_store_n(&cur_par, &p, __ATOMIC_SEQ_CST);
	bool posted = n > 1 && pool_post(POOL_HELPER, par_helper, &p) == 0;
	par_run(&p);
	__atomic_store_n(&cur_par, NULL, __ATOMIC_SEQ_CST);
	/* the tracer may be inside an item of p: p lives on this stack */
	while (__atomic_load_n(&cur_users, __ATOMIC_SEQ_CST))
		__builtin_ia32_pause();
	if (posted && !pool_cancel(POOL_HELPER))
		pool_wait(POOL_HELPER);
	if (p.failed) {
		g_err = p.err;
		return -1;
	}
	return 0;
}

/* The tracer, its own work done, takes items of the memory thread's
 * parallel loops until the memory phase is over: it is on a CPU already (no
 * wake-up to wait for, and none at the end, where a woken thread can sit
 * behind a kernel path that does not yield on this PREEMPT_NONE kernel).
 * It spins only briefly between loops (SPIN_IDLE_NS), then leaves the rest
 * to pool_wait(). Returns with g_err cleared: an item's error is the loop's. */
#define SPIN_IDLE_NS 300000ULL
void pool_assist(int worker)
{
	struct worker *w = &workers[worker];
	uint64_t idle_since = now_ns();
	for (;;) {
		int s = __atomic_load_n(&w->state, __ATOMIC_ACQUIRE);
		if (s != W_POSTED && s != W_RUNNING)
			break;
		__atomic_fetch_add(&cur_users, 1, __ATOMIC_SEQ_CST);
		struct par *p = __atomic_load_n(&cur_par, __ATOMIC_SEQ_CST);
		bool worked = false;
		if (p && __atomic_load_n(&p->next, __ATOMIC_ACQUIRE) < p->n) {
			par_run(p);
			worked = true;
		}
		__atomic_fetch_sub(&cur_users, 1, __ATOMIC_SEQ_CST);
		if (worked) {
			idle_since = now_ns();
			continue;
		}
		if (now_ns() - idle_since > SPIN_IDLE_NS)
			break;
		__builtin_ia32_pause();
	}
	err_clear();
}

/* the tracer above the workers: it must never wait behind one */
void pause_sched(bool on)
{
	set_fifo(on, 2);
}
