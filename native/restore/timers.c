/* Timers: POSIX timers (timer_create) re-created with their own ids, and
 * interval timers (setitimer) re-armed with the time they had left.
 *
 * Ids: with prctl(PR_TIMER_CREATE_RESTORE_IDS, ON) (Linux 6.17+) the kernel
 * takes the id timer_create should give from *timerid; it is switched on in
 * the process being rebuilt, every timer created with its id, and switched
 * off again. That prctl needs CAP_CHECKPOINT_RESTORE, so the timers are
 * created before the credentials are set back (timers_create), disarmed,
 * and only armed at the very end, just before the registers are set and
 * the app is let go (timers_arm): the time the restore takes does not count,
 * as the time the app was stopped does not (the values are the time left at
 * the checkpoint). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include "restore.h"

#ifndef PR_TIMER_CREATE_RESTORE_IDS
#define PR_TIMER_CREATE_RESTORE_IDS 77
#define PR_TIMER_CREATE_RESTORE_IDS_OFF 0
#define PR_TIMER_CREATE_RESTORE_IDS_ON 1
#define PR_TIMER_CREATE_RESTORE_IDS_GET 2
#endif

#define NS 1000000000ULL

static bool has_thread(const Proc *pr, int ns_tid)
{
	for (size_t k = 0; k < pr->n_threads; k++)
		if (thr_ns_tid(pr->threads[k]) == ns_tid)
			return true;
	return false;
}

/* before any process exists: the image's timers hold together, and this
 * kernel can give timers their ids back */
int timers_check(struct restorer *rs)
{
	bool any = false;
	for (size_t i = 0; i < rs->nprocs; i++) {
		Proc *pr = rs->procs[i].pr;
		for (size_t k = 0; k < pr->n_itimers; k++) {
			Understudy__V1__ITimer *it = pr->itimers[k];
			if (it->which > 2)
				return fail("E_IMAGE_CORRUPT", 0, "pid %d: interval timer of unknown kind %d", pr->pid, it->which);
		}
		for (size_t k = 0; k < pr->n_posix_timers; k++) {
			Understudy__V1__PosixTimer *t = pr->posix_timers[k];
			any = true;
			if (t->id < 0)
				return fail("E_IMAGE_CORRUPT", 0, "pid %d: POSIX timer with id %d", pr->pid, t->id);
			if ((t->notify & SIGEV_THREAD_ID) && !has_thread(pr, t->ns_target_tid))
				return fail("E_IMAGE_CORRUPT", 0, "pid %d: POSIX timer %d is aimed at thread %d, which the image does not have",
					    pr->pid, t->id, t->ns_target_tid);
			for (size_t j = 0; j < k; j++)
				if (pr->posix_timers[j]->id == t->id)
					return fail("E_IMAGE_CORRUPT", 0, "pid %d: POSIX timer %d is recorded twice", pr->pid, t->id);
		}
	}
	if (any && prctl(PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_GET, 0, 0, 0) < 0)
		return fail("E_KERNEL_MISMATCH", errno,
			    "the image has POSIX timers, and this kernel cannot create a timer with a given id (prctl(PR_TIMER_CREATE_RESTORE_IDS), "
			    "Linux 6.17+)");
	return 0;
}

int timers_create(struct rproc *p)
{
	RS_OF(p);
	Proc *pr = p->pr;
	if (!pr->n_posix_timers)
		return 0;
	struct rtask *lead = &p->tasks[0];
	char what[200];
	snprintf(what, sizeof(what), "prctl(PR_TIMER_CREATE_RESTORE_IDS, ON)");
	if (inj_ok(lead, what, SYS_prctl, PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_ON, 0, 0, 0, 0, NULL))
		return -1;
	for (size_t k = 0; k < pr->n_posix_timers; k++) {
		Understudy__V1__PosixTimer *t = pr->posix_timers[k];
		/* the kernel's struct sigevent: value, signo, notify, then the
		 * union whose first int is the target tid (64 bytes) */
		struct {
			uint64_t value;
			int32_t signo, notify;
			int32_t tid, pad[11];
		} sev;
		memset(&sev, 0, sizeof(sev));
		sev.value = t->sival;
		sev.signo = t->signo;
		sev.notify = t->notify;
		if (t->notify & SIGEV_THREAD_ID)
			sev.tid = t->ns_target_tid;
		int32_t id = t->id;
		if (poke(p->pid, SCR_TIMER, &sev, sizeof(sev)) || poke(p->pid, SCR_TIMER + sizeof(sev), &id, sizeof(id)))
			return -1;
		snprintf(what, sizeof(what), "timer_create(clock %d, signal %d, notify %d, id %d)", t->clock_id, t->signo, t->notify, t->id);
		if (inj_ok(lead, what, SYS_timer_create, t->clock_id, SCR_TIMER, SCR_TIMER + sizeof(sev), 0, 0, 0, NULL))
			return -1;
		int32_t got = -1;
		if (peek(p->pid, SCR_TIMER + sizeof(sev), &got, sizeof(got)))
			return -1;
		if (got != t->id)
			return fail("E_RESTORE", 0, "%s in pid %d gave timer id %d", what, p->pid, got);
	}
	snprintf(what, sizeof(what), "prctl(PR_TIMER_CREATE_RESTORE_IDS, OFF)");
	return inj_ok(lead, what, SYS_prctl, PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_OFF, 0, 0, 0, 0, NULL);
}

static struct timeval to_tv(uint64_t ns)
{
	uint64_t us = (ns + 999) / 1000; /* rounded up: never earlier */
	struct timeval tv = { (time_t)(us / 1000000), (suseconds_t)(us % 1000000) };
	return tv;
}

int timers_arm(struct rproc *p)
{
	RS_OF(p);
	Proc *pr = p->pr;
	struct rtask *lead = &p->tasks[0];
	char what[200];
	for (size_t k = 0; k < pr->n_posix_timers; k++) {
		Understudy__V1__PosixTimer *t = pr->posix_timers[k];
		if (!t->value_ns)
			continue; /* created disarmed */
		struct itimerspec its = { { (time_t)(t->interval_ns / NS), (long)(t->interval_ns % NS) },
					  { (time_t)(t->value_ns / NS), (long)(t->value_ns % NS) } };
		if (poke(p->pid, SCR_TIMER, &its, sizeof(its)))
			return -1;
		snprintf(what, sizeof(what), "timer_settime(%d, %llu ns, interval %llu ns)", t->id, (unsigned long long)t->value_ns,
			 (unsigned long long)t->interval_ns);
		if (inj_ok(lead, what, SYS_timer_settime, t->id, 0, SCR_TIMER, 0, 0, 0, NULL))
			return -1;
	}
	for (size_t k = 0; k < pr->n_itimers; k++) {
		Understudy__V1__ITimer *it = pr->itimers[k];
		/* ITIMER_REAL that expired with SIGALRM still pending (queued again
		 * by signals_queue): armed for 1 us, it fires at once, its SIGALRM
		 * is dropped (one is pending already) and, like the original, it
		 * is re-armed by the kernel when the app takes the signal */
		bool fired = it->which == UNDERSTUDY__V1__ITIMER__WHICH__REAL && !it->value_ns;
		struct timeval v[2] = { to_tv(it->interval_ns), to_tv(fired ? 1000 : it->value_ns) }; /* it_interval, it_value */
		if (poke(p->pid, SCR_TIMER, v, sizeof(v)))
			return -1;
		snprintf(what, sizeof(what), "setitimer(%d, %llu ns, interval %llu ns)", it->which, (unsigned long long)it->value_ns,
			 (unsigned long long)it->interval_ns);
		if (inj_ok(lead, what, SYS_setitimer, it->which, SCR_TIMER, 0, 0, 0, 0, NULL))
			return -1;
		for (int n = 0; fired; n++) {
			if (n == 1000)
				return fail("E_RESTORE", 0, "pid %d: the 1 us ITIMER_REAL armed to stand for an expired one did not fire in 1 s",
					    p->pid);
			if (inj_ok(lead, "getitimer(ITIMER_REAL)", SYS_getitimer, ITIMER_REAL, SCR_TIMER, 0, 0, 0, 0, NULL) ||
			    peek(p->pid, SCR_TIMER, v, sizeof(v)))
				return -1;
			if (!v[1].tv_sec && !v[1].tv_usec)
				break;
			usleep(1000);
		}
	}
	return 0;
}
