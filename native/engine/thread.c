/* Per-thread state at the barrier: registers (incl. fs/gs base), xstate,
 * signal mask, pending signals, rseq, robust list, clear-child-tid,
 * sigaltstack, and the syscall it sits in with its restart code. Per-process
 * signal handlers and brk, read with injected syscalls. */
#include <elf.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
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
	long ret, a[6] = { PR_GET_TID_ADDRESS, (long)sc, 0, 0, 0, 0 };
	if (inject_syscall(p, t->tid, SYS_prctl, a, &ret))
		return -1;
	if (ret == 0 && peek(p->pid, sc, &t->clear_tid, 8))
		return -1;
	long b[6] = { 0, (long)sc, 0, 0, 0, 0 };
	if (inject_syscall(p, t->tid, SYS_sigaltstack, b, &ret))
		return -1;
	if (ret == 0) {
		stack_t ss;
		if (peek(p->pid, sc, &ss, sizeof(ss)))
			return -1;
		t->ss_sp = (uint64_t)ss.ss_sp;
		t->ss_size = ss.ss_size;
		t->ss_flags = ss.ss_flags;
	}
	t->need_first_info = false;
	return 0;
}

int capture_thread(struct proc *p, struct task *t, Understudy__V1__Thread *th)
{
	pid_t tid = t->tid;
	struct user_regs_struct regs;
	if (ptrace(PTRACE_GETREGS, tid, 0, &regs))
		return fail("E_NATIVE", errno, "ptrace(PTRACE_GETREGS, tid %d)", tid);
	th->tid = tid;
	th->ns_tid = tid;
	char path[96], v[128];
	snprintf(path, sizeof(path), "%d", tid);
	if (!proc_status_field(tid, "NSpid", v, sizeof(v))) {
		const char *q = v + strlen(v);
		while (q > v && q[-1] != '\t' && q[-1] != ' ')
			q--;
		th->ns_tid = atoi(q);
	}
	err_clear();
	th->regs.data = amemdup(&regs, sizeof(regs));
	th->regs.len = sizeof(regs);
	static uint8_t xs[65536];
	struct iovec iov = { xs, sizeof(xs) };
	if (ptrace(PTRACE_GETREGSET, tid, (void *)NT_X86_XSTATE, &iov))
		return fail("E_NATIVE", errno, "ptrace(PTRACE_GETREGSET, NT_X86_XSTATE, tid %d)", tid);
	th->xstate.data = amemdup(xs, iov.iov_len);
	th->xstate.len = iov.iov_len;
	uint64_t mask;
	if (ptrace(PTRACE_GETSIGMASK, tid, (void *)8, &mask))
		return fail("E_NATIVE", errno, "ptrace(PTRACE_GETSIGMASK, tid %d)", tid);
	th->sigmask = mask;
	if (peek_siginfo(tid, false, &th->pending, &th->n_pending))
		return -1;
	struct us_rseq_config rc = { 0 };
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
	if (t->need_first_info && first_info(p, t))
		return -1;
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
	th->comm = astrdup(comm);
	th->state = t->state_letter;
	return 0;
}

/* handlers of the caught signals (SigCgt); ignored ones (SigIgn) are
 * recorded as SIG_IGN without injection */
int capture_sigactions(struct proc *p, pid_t tid, Understudy__V1__Process *pr, size_t *injected)
{
	*injected = 0;
	char v[64];
	uint64_t cgt = 0, ign = 0;
	if (!proc_status_field(p->pid, "SigCgt", v, sizeof(v)))
		cgt = strtoull(v, NULL, 16);
	if (!proc_status_field(p->pid, "SigIgn", v, sizeof(v)))
		ign = strtoull(v, NULL, 16);
	err_clear();
	uint64_t sc = 0;
	for (int sig = 1; sig <= 64; sig++) {
		uint64_t bit = 1ULL << (sig - 1);
		if (!(cgt & bit) && !(ign & bit))
			continue;
		Understudy__V1__SigAction *sa = ANEW(Understudy__V1__SigAction, understudy__v1__sig_action__init);
		if (!sa)
			return -1;
		sa->signo = sig;
		if (cgt & bit) {
			if (!sc && !(sc = scratch_addr(tid)))
				return fail("E_NATIVE", errno, "ptrace(PTRACE_GETREGS, tid %d)", tid);
			long ret, a[6] = { sig, 0, (long)sc, 8, 0, 0 };
			if (inject_syscall(p, tid, SYS_rt_sigaction, a, &ret))
				return -1;
			(*injected)++;
			if (ret != 0)
				return fail("E_NATIVE", (int)-ret, "rt_sigaction(%d) injected into pid %d", sig, p->pid);
			uint64_t k[4];
			if (peek(p->pid, sc, k, sizeof(k)))
				return -1;
			sa->handler = k[0];
			sa->flags = k[1];
			sa->restorer = k[2];
			sa->mask = k[3];
		} else {
			sa->handler = 1;   /* SIG_IGN */
		}
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
