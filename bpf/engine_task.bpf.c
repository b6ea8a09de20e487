// SPDX-License-Identifier: GPL-2.0
/* The engine's task iterator: per-thread and per-process kernel state that
 * has no /proc or ptrace interface (signal handlers, clear-child-tid,
 * sigaltstack, brk), read straight from the task at a barrier instead of
 * injecting rt_sigaction/prctl/sigaltstack/brk into the app. The engine
 * attaches it once per process (a link filtered to that pid) and reads it
 * with the app stopped, so everything it sees is of one instant. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "engine_task.h"

char LICENSE[] SEC("license") = "GPL";

/* the handler table already written in this read (threads share one); the
 * first object of a read (seq_num 0) starts afresh */
static struct sighand_struct *last_sh;
/* the same for the process's signal_struct (interval timers) */
static struct signal_struct *last_sig;

SEC("iter/task")
int engine_task(struct bpf_iter__task *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct *t = ctx->task;
	if (!t)
		return 0;
	if (ctx->meta->seq_num == 0)
		last_sh = 0, last_sig = 0;
	struct et_rec r = {};
	r.kind = ET_TASK;
	r.tid = BPF_CORE_READ(t, pid);
	r.tgid = BPF_CORE_READ(t, tgid);
	r.a = (__u64)BPF_CORE_READ(t, clear_child_tid);
	r.b = BPF_CORE_READ(t, sas_ss_sp);
	r.c = BPF_CORE_READ(t, sas_ss_size);
	r.x = BPF_CORE_READ(t, sas_ss_flags);
	r.d = BPF_CORE_READ(t, mm, brk);
	bpf_probe_read_kernel_str(r.comm, sizeof(r.comm), t->comm);
	bpf_seq_write(seq, &r, sizeof(r));
	__builtin_memset(r.comm, 0, sizeof(r.comm));

	/* interval timers: process-wide, in signal_struct (kernel/time/itimer.c) */
	struct signal_struct *sig = BPF_CORE_READ(t, signal);
	if (sig && sig != last_sig) {
		last_sig = sig;
		r.kind = ET_ITREAL;
		r.a = BPF_CORE_READ(sig, real_timer.node.expires);
		r.b = BPF_CORE_READ(sig, it_real_incr);
		r.d = BPF_CORE_READ(sig, real_timer.state) ? ET_RT_ENQUEUED : 0;
		struct hrtimer_clock_base *cb = BPF_CORE_READ(sig, real_timer.base);
		if (cb && BPF_CORE_READ(cb, running) == &sig->real_timer)
			r.d |= ET_RT_RUNNING;
		r.x = (BPF_CORE_READ(sig, shared_pending.signal.sig[0]) >> (14 - 1)) & 1; /* SIGALRM */
		r.c = bpf_ktime_get_ns();
		bpf_seq_write(seq, &r, sizeof(r));
		r.kind = ET_ITCPU;
		r.x = 0;
		r.a = BPF_CORE_READ(sig, it[0].expires);
		r.b = BPF_CORE_READ(sig, it[0].incr);
		r.c = BPF_CORE_READ(sig, it[1].expires);
		r.d = BPF_CORE_READ(sig, it[1].incr);
		r.cpu[0] = BPF_CORE_READ(sig, cputimer.cputime_atomic.utime.counter);
		r.cpu[1] = BPF_CORE_READ(sig, cputimer.cputime_atomic.stime.counter);
		bpf_seq_write(seq, &r, sizeof(r));
		r.cpu[0] = r.cpu[1] = 0;
	}

	struct sighand_struct *sh = BPF_CORE_READ(t, sighand);
	if (!sh || sh == last_sh)
		return 0;
	last_sh = sh;
	for (int i = 0; i < 64; i++) {
		struct k_sigaction ka;
		if (bpf_probe_read_kernel(&ka, sizeof(ka), &sh->action[i]))
			break;
		if (!ka.sa.sa_handler)
			continue; /* SIG_DFL */
		r.kind = ET_SIGACT;
		r.x = i + 1;
		r.a = (__u64)ka.sa.sa_handler;
		r.b = ka.sa.sa_flags;
		r.c = (__u64)ka.sa.sa_restorer;
		r.d = ka.sa.sa_mask.sig[0];
		bpf_seq_write(seq, &r, sizeof(r));
	}
	return 0;
}
