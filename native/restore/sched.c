/* Scheduling of each restored thread: policy (with SCHED_RESET_ON_FORK),
 * real-time priority, nice and CPU affinity, set from here on the new tids
 * (no injection: the restorer is privileged). An affinity naming none of this
 * node's CPUs is not applied (the thread keeps every CPU) and said on stderr:
 * an app moved to a smaller node must still run. */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "restore.h"

#define MASK_MAX 1024

int sched_check(const Proc *pr)
{
	for (size_t t = 0; t < pr->n_threads; t++) {
		const Understudy__V1__Sched *s = pr->threads[t]->sched;
		if (!s)
			continue;
		pid_t tid = pr->threads[t]->tid;
		bool rt = s->policy == SCHED_FIFO || s->policy == SCHED_RR;
		if ((s->policy != SCHED_OTHER && !rt && s->policy != SCHED_BATCH && s->policy != SCHED_IDLE) ||
		    (rt ? s->priority < 1 || s->priority > 99 : s->priority != 0) || s->nice < -20 || s->nice > 19 || s->cpus.len > MASK_MAX)
			return fail("E_IMAGE_CORRUPT", 0,
				    "pid %d tid %d: scheduling policy %d priority %d nice %d affinity %zu bytes is not a valid one", pr->pid, tid,
				    s->policy, s->priority, s->nice, s->cpus.len);
	}
	return 0;
}

int sched_restore(struct rproc *p)
{
	RS_OF(p);
	static uint8_t online[MASK_MAX];
	static long online_len = -1;
	if (online_len < 0) {
		online_len = syscall(SYS_sched_getaffinity, 0, sizeof(online), online);
		if (online_len < 0)
			return fail("E_RESTORE", errno, "sched_getaffinity of the restorer");
	}
	for (size_t k = 0; k < p->ntasks; k++) {
		struct rtask *t = &p->tasks[k];
		const Understudy__V1__Sched *s = t->th->sched;
		if (!s)
			continue;
		if (s->cpus.len) {
			uint8_t want[MASK_MAX] = { 0 };
			bool any = false;
			for (size_t i = 0; i < s->cpus.len && i < (size_t)online_len; i++)
				any |= (want[i] = s->cpus.data[i] & online[i]) != 0;
			if (!any)
				fprintf(stderr,
					"understudy-restore: pid %d tid %d: its CPU affinity names none of this node's CPUs; it runs on all of them\n",
					p->pid, t->tid);
			else if (syscall(SYS_sched_setaffinity, t->tid, sizeof(want), want))
				return fail("E_RESTORE", errno, "sched_setaffinity(tid %d)", t->tid);
		}
		struct sched_param sp = { .sched_priority = s->priority };
		if (sched_setscheduler(t->tid, s->policy | (s->reset_on_fork ? SCHED_RESET_ON_FORK : 0), &sp)) {
			if (errno == EPERM && s->priority > 0)
				return fail(
					"E_RESTORE", errno,
					"tid %d ran under real-time policy %d priority %d, which this node refuses (is the restorer in a cpu cgroup "
					"without real-time budget, cpu.rt_runtime_us 0?); restore from a cgroup that has one",
					t->tid, s->policy, s->priority);
			return fail("E_RESTORE", errno, "sched_setscheduler(tid %d, policy %d%s, priority %d)", t->tid, s->policy,
				    s->reset_on_fork ? " | SCHED_RESET_ON_FORK" : "", s->priority);
		}
		if (setpriority(PRIO_PROCESS, (id_t)t->tid, s->nice))
			return fail("E_RESTORE", errno, "setpriority(tid %d, nice %d)", t->tid, s->nice);
	}
	return 0;
}
