/* Per-thread state at the barrier: registers (incl. fs/gs base), xstate,
 * signal mask, pending signals, rseq, robust list, clear-child-tid,
 * sigaltstack, and the syscall it sits in with its restart code. Per-process
 * signal handlers and brk, read with injected syscalls. */
#include <elf.h>
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
#include "arena.h"
#include "engine.h"
#include "kabi.h"

#ifndef NT_X86_XSTATE
#define NT_X86_XSTATE 0x202
#endif
#ifndef PR_GET_TID_ADDRESS
#define PR_GET_TID_ADDRESS 40
#endif

static int peek(pid_t pid, uint64_t addr, void *dst, size_t len)
{
	struct iovec l = { dst, len }, r = { (void *)addr, len };
	if (process_vm_readv(pid, &l, 1, &r, 1, 0) != (ssize_t)len)
		return fail("E_NATIVE", errno, "process_vm_readv(pid %d, 0x%llx, %zu)", pid, (unsigned long long)addr, len);
	return 0;
}

static int peek_siginfo(pid_t tid, bool shared, Understudy__V1__SigInfo ***arr, size_t *n)
{
	for (uint64_t off = 0; off < 4096; off++) {
		struct {
			uint64_t off;
			uint32_t flags;
			int32_t nr;
		} args = { off, shared ? 1 : 0, 1 };
		siginfo_t si;
		long r = ptrace(PTRACE_PEEKSIGINFO, tid, &args, &si);
		if (r < 0)
			return fail("E_NATIVE", errno, "ptrace(PTRACE_PEEKSIGINFO%s, tid %d)", shared ? " shared" : "", tid);
		if (r == 0)
			break;
		Understudy__V1__SigInfo *s = ANEW(Understudy__V1__SigInfo, understudy__v1__sig_info__init);
		if (!s)
			return -1;
		s->signo = si.si_signo;
		s->raw.data = amemdup(&si, sizeof(si));
		s->raw.len = sizeof(si);
		if (apush((void ***)arr, n, s))
			return -1;
	}
	return 0;
}

int capture_shared_pending(pid_t tid, Understudy__V1__Process *pr)
{
	return peek_siginfo(tid, true, &pr->shared_pending, &pr->n_shared_pending);
}

static int first_info(struct proc *p, struct task *t)
{
	uint64_t sc = scratch_addr(t->tid);
	if (!sc)
		return fail("E_NATIVE", errno, "ptrace(PTRACE_GETREGS, tid %d)", t->tid);
	struct inject_session is;
	if (inject_begin(&is, p, t->tid))
		return -1;
	long ret, a[6] = { PR_GET_TID_ADDRESS, (long)sc, 0, 0, 0, 0 };
	int rc = inject_call(&is, SYS_prctl, a, &ret);
	if (!rc && ret == 0)
		rc = peek(p->pid, sc, &t->clear_tid, 8);
	long b[6] = { 0, (long)sc, 0, 0, 0, 0 };
	if (!rc)
		rc = inject_call(&is, SYS_sigaltstack, b, &ret);
	if (!rc && ret == 0) {
		stack_t ss;
		if (!(rc = peek(p->pid, sc, &ss, sizeof(ss)))) {
			t->ss_sp = (uint64_t)ss.ss_sp;
			t->ss_size = ss.ss_size;
			t->ss_flags = ss.ss_flags;
		}
	}
	if (inject_end(&is) || rc)
		return -1;
	t->need_first_info = false;
	return 0;
}

/* what sigaltstack(NULL, &old) would report to the thread (kernel/signal.c:
 * do_sigaltstack, sas_ss_flags, on_sig_stack; the stack grows down) */
static int ss_flags_of(const struct et_rec *kt, uint64_t sp)
{
	const uint32_t autodisarm = 1U << 31; /* SS_AUTODISARM, the only SS_FLAG_BITS */
	int f;
	if (!kt->c)
		f = SS_DISABLE;
	else if (!(kt->x & autodisarm) && sp > kt->b && sp - kt->b <= kt->c)
		f = SS_ONSTACK;
	else
		f = 0;
	return f | (int)(kt->x & autodisarm);
}

static int capture_sched(pid_t tid, Understudy__V1__Thread *th);

int capture_thread(struct proc *p, struct task *t, Understudy__V1__Thread *th, const struct et_rec *kt)
{
	pid_t tid = t->tid;
	struct user_regs_struct regs;
	if (ptrace(PTRACE_GETREGS, tid, 0, &regs))
		return fail("E_NATIVE", errno, "ptrace(PTRACE_GETREGS, tid %d)", tid);
	prof_mark("th.getregs");
	th->tid = tid;
	th->ns_tid = tid;
	char path[96], v[128];
	if (!t->ns_tid) {
		t->ns_tid = tid;
		if (!proc_status_field(tid, "NSpid", v, sizeof(v))) {
			const char *q = v + strlen(v);
			while (q > v && q[-1] != '\t' && q[-1] != ' ')
				q--;
			t->ns_tid = atoi(q);
		}
		err_clear();
	}
	th->ns_tid = t->ns_tid;
	prof_mark("th.nspid");
	th->regs.data = amemdup(&regs, sizeof(regs));
	th->regs.len = sizeof(regs);
	static uint8_t xs[65536];
	struct iovec iov = { xs, sizeof(xs) };
	if (ptrace(PTRACE_GETREGSET, tid, (void *)NT_X86_XSTATE, &iov))
		return fail("E_NATIVE", errno, "ptrace(PTRACE_GETREGSET, NT_X86_XSTATE, tid %d)", tid);
	th->xstate.data = amemdup(xs, iov.iov_len);
	th->xstate.len = iov.iov_len;
	prof_mark("th.xstate");
	uint64_t mask;
	if (ptrace(PTRACE_GETSIGMASK, tid, (void *)8, &mask))
		return fail("E_NATIVE", errno, "ptrace(PTRACE_GETSIGMASK, tid %d)", tid);
	th->sigmask = mask;
	prof_mark("th.sigmask");
	if (peek_siginfo(tid, false, &th->pending, &th->n_pending))
		return -1;
	prof_mark("th.pending");
	struct __ptrace_rseq_configuration rc = { 0 };
	if (ptrace(PTRACE_GET_RSEQ_CONFIGURATION, tid, (void *)sizeof(rc), &rc) >= 0 && rc.rseq_abi_pointer) {
		th->rseq = ANEW(Understudy__V1__Rseq, understudy__v1__rseq__init);
		th->rseq->abi_pointer = rc.rseq_abi_pointer;
		th->rseq->abi_size = rc.rseq_abi_size;
		th->rseq->signature = rc.signature;
		th->rseq->flags = rc.flags;
	}
	void *head = NULL;
	size_t len = 0;
	if (syscall(SYS_get_robust_list, tid, &head, &len))
		return fail("E_NATIVE", errno, "get_robust_list(tid %d)", tid);
	th->robust_list = (uint64_t)head;
	th->robust_list_len = len;
	prof_mark("th.rseq_robust");
	/* clear_tid and sigaltstack: from the task iterator at every barrier;
	 * injected at a thread's first barrier (and compared), or always when
	 * the iterator is not there */
	bool first = t->need_first_info;
	if (kt && !t->need_first_info) {
		t->clear_tid = kt->a;
		t->ss_sp = kt->b;
		t->ss_size = kt->c;
		t->ss_flags = ss_flags_of(kt, regs.rsp);
	} else if (t->need_first_info) {
		if (first_info(p, t))
			return -1;
		if (kt && (t->clear_tid != kt->a || t->ss_sp != kt->b || t->ss_size != kt->c || t->ss_flags != ss_flags_of(kt, regs.rsp))) {
			char why[300];
			snprintf(why, sizeof(why), "tid %d: injected clear_tid 0x%llx sigaltstack 0x%llx/%llu/%d, iterator 0x%llx 0x%llx/%llu/%d",
				 tid, (unsigned long long)t->clear_tid, (unsigned long long)t->ss_sp, (unsigned long long)t->ss_size, t->ss_flags,
				 (unsigned long long)kt->a, (unsigned long long)kt->b, (unsigned long long)kt->c, ss_flags_of(kt, regs.rsp));
			taskiter_disable(why);
		}
	}
	th->clear_tid = t->clear_tid;
	th->sigaltstack = ANEW(Understudy__V1__SigAltStack, understudy__v1__sig_alt_stack__init);
	th->sigaltstack->sp = t->ss_sp;
	th->sigaltstack->size = t->ss_size;
	th->sigaltstack->flags = t->ss_flags;
	long orig = (long)regs.orig_rax, rax = (long)regs.rax;
	if (orig >= 0) {
		th->in_syscall = true;
		th->syscall_nr = orig;
		th->restart_code = (rax == -512 || rax == -513 || rax == -514 || rax == -516) ? rax : 0;
	}
	char comm[64] = "";
	if (kt && !first) {
		snprintf(comm, sizeof(comm), "%.*s", (int)sizeof(kt->comm), kt->comm);
	} else {
		snprintf(path, sizeof(path), "/proc/%d/task/%d/comm", p->pid, tid);
		char *b;
		if (read_file(path, &b) >= 0) {
			snprintf(comm, sizeof(comm), "%s", b);
			char *nl = strchr(comm, '\n');
			if (nl)
				*nl = 0;
			free(b);
		}
		err_clear();
		if (kt && strncmp(comm, kt->comm, sizeof(kt->comm))) {
			char why[200];
			snprintf(why, sizeof(why), "tid %d: /proc comm \"%s\", iterator \"%.16s\"", tid, comm, kt->comm);
			taskiter_disable(why);
		}
	}
	th->comm = astrdup(comm);
	prof_mark("th.comm");
	th->state = t->group_stopped ? 'T' : 0; /* in a job-control stop (SIGSTOP, SIGTSTP, ...) */
	if (capture_sched(tid, th))
		return -1;
	prof_mark("th.sched");
	return 0;
}

/* policy, real-time priority, nice and CPU affinity: four syscalls on the tid */
static int capture_sched(pid_t tid, Understudy__V1__Thread *th)
{
	int pol = sched_getscheduler(tid);
	if (pol < 0)
		return fail("E_NATIVE", errno, "sched_getscheduler(tid %d)", tid);
	bool reset = pol & SCHED_RESET_ON_FORK;
	pol &= ~SCHED_RESET_ON_FORK;
	if (pol != SCHED_OTHER && pol != SCHED_FIFO && pol != SCHED_RR && pol != SCHED_BATCH && pol != SCHED_IDLE)
		return fail("E_UNSUPPORTED", 0,
			    "tid %d runs under scheduling policy %d (SCHED_DEADLINE?), which this engine does not capture; refusing to checkpoint",
			    tid, pol);
	struct sched_param sp = { 0 };
	if (sched_getparam(tid, &sp))
		return fail("E_NATIVE", errno, "sched_getparam(tid %d)", tid);
	errno = 0;
	int nice = getpriority(PRIO_PROCESS, (id_t)tid);
	if (nice == -1 && errno)
		return fail("E_NATIVE", errno, "getpriority(PRIO_PROCESS, tid %d)", tid);
	static uint8_t mask[1024];
	long n = syscall(SYS_sched_getaffinity, tid, sizeof(mask), mask);
	if (n < 0)
		return fail("E_NATIVE", errno, "sched_getaffinity(tid %d)", tid);
	Understudy__V1__Sched *s = ANEW(Understudy__V1__Sched, understudy__v1__sched__init);
	s->policy = pol;
	s->reset_on_fork = reset;
	s->priority = sp.sched_priority;
	s->nice = nice;
	s->cpus.data = amemdup(mask, (size_t)n);
	s->cpus.len = (size_t)n;
	th->sched = s;
	return 0;
}

/* handlers of the caught signals (SigCgt), one injected rt_sigaction each;
 * ignored ones (SigIgn) are recorded as SIG_IGN without injection */
static int sigactions_inject(struct proc *p, pid_t tid, struct sa_val out[64])
{
	memset(out, 0, 64 * sizeof(out[0]));
	char v[64];
	uint64_t cgt = 0, ign = 0;
	if (!proc_status_field(p->pid, "SigCgt", v, sizeof(v)))
		cgt = strtoull(v, NULL, 16);
	if (!proc_status_field(p->pid, "SigIgn", v, sizeof(v)))
		ign = strtoull(v, NULL, 16);
	err_clear();
	uint64_t sc = 0;
	struct inject_session is = { 0 };
	int rc = 0;
	for (int sig = 1; sig <= 64 && !rc; sig++) {
		uint64_t bit = 1ULL << (sig - 1);
		if (!(cgt & bit) && !(ign & bit))
			continue;
		struct sa_val *sa = &out[sig - 1];
		if (!(cgt & bit)) {
			sa->handler = 1; /* SIG_IGN */
			continue;
		}
		if (!sc) {
			/* every caught signal's rt_sigaction in one injection session */
			if (!(sc = scratch_addr(tid)))
				return fail("E_NATIVE", errno, "ptrace(PTRACE_GETREGS, tid %d)", tid);
			if (inject_begin(&is, p, tid))
				return -1;
		}
		long ret, a[6] = { sig, 0, (long)sc, 8, 0, 0 };
		uint64_t k[4];
		if ((rc = inject_call(&is, SYS_rt_sigaction, a, &ret)))
			break;
		if (ret != 0)
			rc = fail("E_NATIVE", (int)-ret, "rt_sigaction(%d) injected into pid %d", sig, p->pid);
		else if (!(rc = peek(p->pid, sc, k, sizeof(k)))) {
			sa->handler = k[0];
			sa->flags = k[1];
			sa->restorer = k[2];
			sa->mask = k[3];
		}
	}
	if (is.open && inject_end(&is))
		rc = -1;
	return rc;
}

/* Signal handlers: from the task iterator (ks) when there is one, compared
 * with the injected reading at the first barrier of each mm; else injected. */
int capture_sigactions(struct proc *p, pid_t tid, Understudy__V1__Process *pr, const struct kstate *ks)
{
	struct sa_val v[64];
	if (ks) {
		kstate_sigactions(ks, v);
		if (!p->kstate_checked) {
			struct sa_val inj[64];
			if (sigactions_inject(p, tid, inj))
				return -1;
			for (int i = 0; i < 64; i++)
				if (memcmp(&v[i], &inj[i], sizeof(v[i]))) {
					char why[300];
					snprintf(why, sizeof(why),
						 "pid %d signal %d: injected handler 0x%llx flags 0x%llx, iterator 0x%llx flags 0x%llx", p->pid,
						 i + 1, (unsigned long long)inj[i].handler, (unsigned long long)inj[i].flags,
						 (unsigned long long)v[i].handler, (unsigned long long)v[i].flags);
					taskiter_disable(why);
					memcpy(v, inj, sizeof(v));
					break;
				}
		}
	} else if (sigactions_inject(p, tid, v)) {
		return -1;
	}
	for (int i = 0; i < 64; i++) {
		if (!v[i].handler)
			continue;
		Understudy__V1__SigAction *sa = ANEW(Understudy__V1__SigAction, understudy__v1__sig_action__init);
		if (!sa)
			return -1;
		sa->signo = i + 1;
		sa->handler = v[i].handler;
		sa->flags = v[i].flags;
		sa->restorer = v[i].restorer;
		sa->mask = v[i].mask;
		if (APUSH(pr->sigactions, pr->n_sigactions, sa))
			return -1;
	}
	return 0;
}

int capture_brk(struct proc *p, pid_t tid, uint64_t *brk)
{
	long ret, a[6] = { 0 };
	if (inject_syscall(p, tid, SYS_brk, a, &ret))
		return -1;
	*brk = (uint64_t)ret;
	return 0;
}
