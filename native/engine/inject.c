/* Syscall injection into a thread stopped at the barrier: point its registers
 * at a `syscall` instruction of the vDSO, single-step, read rax, put every
 * register back. All signals are blocked (PTRACE_SETSIGMASK) during the step
 * so none is consumed or delivered at the wrong place. If the thread was
 * inside an interrupted syscall, restoring orig_rax/rax lets the kernel
 * restart it on resume exactly as it would have. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>
#include "engine.h"

int find_syscall_insn(struct proc *p)
{
	struct region *maps;
	size_t n;
	if (read_maps(p->pid, &maps, &n))
		return -1;
	uint64_t s = 0, e = 0;
	for (size_t i = 0; i < n; i++)
		if (!strcmp(maps[i].name, "[vdso]")) {
			s = maps[i].start;
			e = maps[i].end;
		}
	free(maps);
	if (!s)
		return fail("E_UNSUPPORTED", 0, "pid %d has no [vdso] mapping to borrow a syscall instruction from", p->pid);
	size_t len = e - s;
	unsigned char *b = malloc(len);
	if (!b)
		return fail("E_NATIVE", ENOMEM, "malloc(%zu) for the vdso of pid %d", len, p->pid);
	struct iovec l = { b, len }, r = { (void *)s, len };
	if (process_vm_readv(p->pid, &l, 1, &r, 1, 0) != (ssize_t)len) {
		free(b);
		return fail("E_NATIVE", errno, "process_vm_readv(pid %d, vdso 0x%llx)", p->pid, (unsigned long long)s);
	}
	for (size_t i = 0; i + 1 < len; i++)
		if (b[i] == 0x0f && b[i + 1] == 0x05) {
			p->syscall_insn = s + i;
			free(b);
			return 0;
		}
	free(b);
	return fail("E_UNSUPPORTED", 0, "no syscall instruction in the vdso of pid %d", p->pid);
}

/* scratch memory for syscalls that write a result: below the red zone of
 * the thread's stack, where a signal frame would go */
uint64_t scratch_addr(pid_t tid)
{
	struct user_regs_struct r;
	if (ptrace(PTRACE_GETREGS, tid, 0, &r))
		return 0;
	return ((r.rsp - 128 - 1024) & ~15ULL);
}

/* The next wait status of tid: 0 with *st when it stopped; -1 with the error
 * set when waitpid failed or the thread is gone (marked dead). */
static int wait_tid(pid_t tid, int *st, const char *after, long nr)
{
	for (;;) {
		pid_t w = waitpid(tid, st, __WALL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return fail("E_NATIVE", errno, "waitpid(tid %d) %s %ld", tid, after, nr);
		}
		if (WIFEXITED(*st) || WIFSIGNALED(*st)) {
			struct task *t = task_find(tid);
			if (t)
				t->dead = true;
			return fail("E_NO_SUCH_PROCESS", 0, "tid %d exited %s %ld", tid, after, nr);
		}
		return 0;
	}
}

static int back_to_event_stop(pid_t tid, long nr)
{
	if (ptrace(PTRACE_INTERRUPT, tid, 0, 0))
		return fail("E_NATIVE", errno, "ptrace(PTRACE_INTERRUPT, tid %d) after an injected syscall", tid);
	if (ptrace(PTRACE_CONT, tid, 0, 0))
		return fail("E_NATIVE", errno, "ptrace(PTRACE_CONT, tid %d) after an injected syscall", tid);
	for (;;) {
		int st;
		if (wait_tid(tid, &st, "waiting for its interrupt stop after injected syscall", nr))
			return -1;
		if (WIFSTOPPED(st) && (st >> 16) == PTRACE_EVENT_STOP)
			return 0;
		/* a signal-delivery-stop on the way (a signal already pending):
		 * deliver it as the kernel would have; the trap stop follows */
		if (ptrace(PTRACE_CONT, tid, 0, (void *)(long)(WIFSTOPPED(st) ? WSTOPSIG(st) : 0)))
			return fail("E_NATIVE", errno, "ptrace(PTRACE_CONT, tid %d)", tid);
	}
}

int inject_begin(struct inject_session *s, struct proc *p, pid_t tid)
{
	memset(s, 0, sizeof(*s));
	s->p = p;
	s->tid = tid;
	if (!p->syscall_insn && find_syscall_insn(p))
		return -1;
	uint64_t all = ~0ULL;
	if (ptrace(PTRACE_GETREGS, tid, 0, &s->saved))
		return fail("E_NATIVE", errno, "ptrace(PTRACE_GETREGS, tid %d)", tid);
	if (ptrace(PTRACE_GETSIGMASK, tid, (void *)8, &s->mask))
		return fail("E_NATIVE", errno, "ptrace(PTRACE_GETSIGMASK, tid %d)", tid);
	if (ptrace(PTRACE_SETSIGMASK, tid, (void *)8, &all))
		return fail("E_NATIVE", errno, "ptrace(PTRACE_SETSIGMASK, tid %d)", tid);
	s->open = true;
	return 0;
}

int inject_call(struct inject_session *s, long nr, const long a[6], long *ret)
{
	if (!s->open || s->failed)
		return -1;
	pid_t tid = s->tid;
	s->last_nr = nr;
	struct user_regs_struct r = s->saved;
	r.rax = nr;
	r.orig_rax = -1; /* no syscall restart logic on this step */
	r.rip = s->p->syscall_insn;
	r.rdi = a[0];
	r.rsi = a[1];
	r.rdx = a[2];
	r.r10 = a[3];
	r.r8 = a[4];
	r.r9 = a[5];
	r.eflags &= ~0x100ULL;
	s->failed = true;
	if (ptrace(PTRACE_SETREGS, tid, 0, &r))
		return fail("E_NATIVE", errno, "ptrace(PTRACE_SETREGS, tid %d) to inject syscall %ld", tid, nr);
	/* from the interrupt stop, or from the previous call's trap stop (no
	 * signal given: the SIGTRAP of that step is dropped) */
	if (ptrace(PTRACE_SINGLESTEP, tid, 0, 0))
		return fail("E_NATIVE", errno, "ptrace(PTRACE_SINGLESTEP, tid %d) for syscall %ld", tid, nr);
	for (;;) {
		int st;
		if (wait_tid(tid, &st, "during injected syscall", nr)) {
			if (!task_find(tid))
				s->gone = true; /* else waitpid failed: the thread is there, put it back */
			return -1;
		}
		if (WIFSTOPPED(st) && WSTOPSIG(st) == SIGTRAP && (st >> 16) == 0)
			break; /* the single-step trap */
		if (WIFSTOPPED(st) && (st >> 16) == PTRACE_EVENT_STOP) {
			/* a pending interrupt reported first: step again */
			if (ptrace(PTRACE_SINGLESTEP, tid, 0, 0))
				return fail("E_NATIVE", errno, "ptrace(PTRACE_SINGLESTEP, tid %d)", tid);
			continue;
		}
		return fail("E_NATIVE", 0, "tid %d: unexpected stop 0x%x while injecting syscall %ld", tid, st, nr);
	}
	if (ptrace(PTRACE_GETREGS, tid, 0, &r))
		return fail("E_NATIVE", errno, "ptrace(PTRACE_GETREGS, tid %d) after syscall %ld", tid, nr);
	if (r.rip != s->p->syscall_insn + 2)
		return fail("E_NATIVE", 0, "tid %d: injected syscall %ld ended at rip 0x%llx, not after the syscall instruction", tid, nr,
			    (unsigned long long)r.rip);
	*ret = (long)r.rax;
	s->failed = false;
	return 0;
}

int inject_end(struct inject_session *s)
{
	if (!s->open)
		return -1;
	s->open = false;
	if (s->gone)
		return -1;
	pid_t tid = s->tid;
	int rc = s->failed ? -1 : 0;
	if (ptrace(PTRACE_SETREGS, tid, 0, &s->saved))
		rc = fail("E_NATIVE", errno, "ptrace(PTRACE_SETREGS, tid %d) restoring registers", tid);
	if (ptrace(PTRACE_SETSIGMASK, tid, (void *)8, &s->mask))
		rc = fail("E_NATIVE", errno, "ptrace(PTRACE_SETSIGMASK, tid %d) restoring the mask", tid);
	/* The step left the thread in a SIGTRAP signal-delivery-stop: if the
	 * engine died now, the kernel would deliver that SIGTRAP and kill the
	 * app. Put it back into an interrupt (PTRACE_EVENT_STOP) stop, which a
	 * dying tracer simply resumes: interrupt, continue with no signal, and
	 * the pending trap stops it again before it reaches user space. */
	if (back_to_event_stop(tid, s->last_nr))
		rc = -1;
	return rc;
}

int inject_syscall(struct proc *p, pid_t tid, long nr, const long a[6], long *ret)
{
	struct inject_session s;
	if (inject_begin(&s, p, tid))
		return -1;
	int rc = inject_call(&s, nr, a, ret);
	if (inject_end(&s))
		rc = -1;
	return rc;
}
