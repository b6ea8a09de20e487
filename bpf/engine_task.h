/* SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause */
/* Records of the engine's task iterator (bpf/engine_task.bpf.c), read by
 * native/engine/taskiter.c: the one place their layout is written down. One
 * ET_TASK record per thread of the process, and after the first thread that
 * holds a signal handler table, one ET_SIGACT record per signal whose handler
 * is not SIG_DFL. All records have the same size. */
#ifndef UNDERSTUDY_ENGINE_TASK_H
#define UNDERSTUDY_ENGINE_TASK_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

enum et_kind {
	ET_TASK = 1,   /* a = clear_child_tid, b = sas_ss_sp, c = sas_ss_size, d = mm->brk, x = sas_ss_flags, comm */
	ET_SIGACT = 2, /* a = handler, b = flags (kernel's, unmasked), c = restorer, d = mask, x = signo */
	/* once per process (signal_struct), after its first ET_TASK:
	 * ITIMER_REAL: a = real_timer's expiry (CLOCK_MONOTONIC ns), b = it_real_incr,
	 * c = bpf_ktime_get_ns() when read, d = ET_RT_* bits, x = SIGALRM pending
	 * in shared_pending (1/0) */
	ET_ITREAL = 3,
	/* ITIMER_PROF (it[0]) and ITIMER_VIRTUAL (it[1]): a = it[0].expires,
	 * b = it[0].incr, c = it[1].expires, d = it[1].incr (expiries in
	 * process CPU ns); cpu[0] = cputimer utime, cpu[1] = cputimer stime (ns,
	 * the samples getitimer compares with) */
	ET_ITCPU = 4,
};

#define ET_RT_ENQUEUED 1 /* hrtimer state: queued */
#define ET_RT_RUNNING 2	 /* its callback runs right now (base->running == timer) */

struct et_rec {
	__u32 kind;
	__u32 tid;
	__u32 tgid;
	__u32 x;
	__u64 a, b, c, d;
	union {
		char comm[16]; /* ET_TASK: the thread's name (TASK_COMM_LEN) */
		__u64 cpu[2];  /* ET_ITCPU */
	};
};

#endif
