/* Threads and signals: signal handlers reset then restored (rt_sigaction,
 * SA_RESTORER kept), threads created by an injected clone3 with set_tid in
 * the leader (auto-attached), per-thread state set by each thread itself
 * (robust list, clear-child-tid, rseq, sigaltstack), pending signals queued
 * by the receiving thread itself (so any si_code is accepted), and at the
 * very end the stub unmapped, extended state, registers and signal mask set
 * and every task detached. Interrupted syscalls are restarted the way the
 * kernel would have; a restart block (nanosleep & co) lives in the old
 * kernel task, so those calls are re-issued instead, with the remaining time
 * when the app gave a place for it. */
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
#include "restore.h"

#ifndef NT_X86_XSTATE
#define NT_X86_XSTATE 0x202
#endif

int signals_reset(struct rproc *p)
{
	RS_OF(p);
	uint64_t ksa[4] = { 0, 0, 0, 0 }; /* SIG_DFL */
	if (poke(p->pid, SCR_ARGS, ksa, sizeof(ksa)))
		return -1;
	for (int sig = 1; sig <= 64; sig++) {
		if (sig == SIGKILL || sig == SIGSTOP)
			continue;
		long ret;
		if (inj(&p->tasks[0], SYS_rt_sigaction, sig, SCR_ARGS, 0, 8, 0, 0, &ret, NULL))
			return -1;
	}
	return 0;
}

int threads_create(struct rproc *p)
{
	RS_OF(p);
	struct rtask *lead = &p->tasks[0];
	for (size_t k = 1; k < p->ntasks; k++) {
		struct rtask *t = &p->tasks[k];
		uint64_t flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM;
		pid_t got;
		if (inj_clone3(lead, p->pid, flags, 0, thr_ns_tid(t->th), rs->root_is_init ? 0 : t->th->tid, "CLONE_THREAD", &got))
			return -1;
		t->tid = got;
		if (task_prepare(t))
			return -1;
	}
	return 0;
}

/* robust list, clear-child-tid, rseq and sigaltstack of one thread, set by
 * itself; with `old` (an apply: what the thread has now) rseq is registered
 * only when it changed, the old registration dropped first */
int thread_state_restore(struct rproc *p, struct rtask *t, const Thr *old)
{
	RS_OF(p);
	{
		Thr *th = t->th;
		char what[160];
		bool rseq_same = old && ((!old->rseq || !old->rseq->abi_pointer) == (!th->rseq || !th->rseq->abi_pointer)) &&
			(!th->rseq || !th->rseq->abi_pointer ||
			 (old->rseq->abi_pointer == th->rseq->abi_pointer && old->rseq->abi_size == th->rseq->abi_size &&
			  old->rseq->signature == th->rseq->signature));
		if (old && !rseq_same && old->rseq && old->rseq->abi_pointer) {
			snprintf(what, sizeof(what), "rseq unregister(0x%llx) in tid %d", (unsigned long long)old->rseq->abi_pointer, t->tid);
			if (inj_ok(t, what, 334 /* rseq */, old->rseq->abi_pointer, old->rseq->abi_size, 1 /* RSEQ_FLAG_UNREGISTER */,
				   old->rseq->signature, 0, 0, NULL))
				return -1;
		}
		if (th->robust_list) {
			snprintf(what, sizeof(what), "set_robust_list(0x%llx) in tid %d", (unsigned long long)th->robust_list, t->tid);
			if (inj_ok(t, what, SYS_set_robust_list, th->robust_list, th->robust_list_len ? th->robust_list_len : 24, 0, 0, 0, 0, NULL))
				return -1;
		}
		if (inj_ok(t, "set_tid_address", SYS_set_tid_address, th->clear_tid, 0, 0, 0, 0, 0, NULL))
			return -1;
		if (th->rseq && th->rseq->abi_pointer && !rseq_same) {
			snprintf(what, sizeof(what), "rseq(0x%llx, %u, sig 0x%x) in tid %d", (unsigned long long)th->rseq->abi_pointer,
				 th->rseq->abi_size, th->rseq->signature, t->tid);
			if (inj_ok(t, what, 334 /* rseq */, th->rseq->abi_pointer, th->rseq->abi_size, 0, th->rseq->signature, 0, 0, NULL))
				return -1;
		}
		if (th->sigaltstack && th->sigaltstack->sp && !(th->sigaltstack->flags & SS_DISABLE)) {
			struct {
				uint64_t sp;
				int32_t flags, pad;
				uint64_t size;
			} ss = { th->sigaltstack->sp, th->sigaltstack->flags & ~SS_ONSTACK, 0, th->sigaltstack->size };
			if (poke(p->pid, SCR_ALTSTACK, &ss, sizeof(ss)))
				return -1;
			snprintf(what, sizeof(what), "sigaltstack(0x%llx, %llu) in tid %d", (unsigned long long)ss.sp, (unsigned long long)ss.size,
				 t->tid);
			if (inj_ok(t, what, SYS_sigaltstack, SCR_ALTSTACK, 0, 0, 0, 0, 0, NULL))
				return -1;
		} else if (old && old->sigaltstack && old->sigaltstack->sp && !(old->sigaltstack->flags & SS_DISABLE)) {
			/* an apply: the thread dropped its alternate stack since */
			struct {
				uint64_t sp;
				int32_t flags, pad;
				uint64_t size;
			} ss = { 0, SS_DISABLE, 0, 0 };
			if (poke(p->pid, SCR_ALTSTACK, &ss, sizeof(ss)) ||
			    inj_ok(t, "sigaltstack(SS_DISABLE)", SYS_sigaltstack, SCR_ALTSTACK, 0, 0, 0, 0, 0, NULL))
				return -1;
		}
	}
	return 0;
}

int task_state_restore(struct rproc *p)
{
	for (size_t k = 0; k < p->ntasks; k++)
		if (thread_state_restore(p, &p->tasks[k], NULL))
			return -1;
	return 0;
}

int signals_restore(struct rproc *p)
{
	RS_OF(p);
	Proc *pr = p->pr;
	struct rtask *lead = &p->tasks[0];
	for (size_t i = 0; i < pr->n_sigactions; i++) {
		Understudy__V1__SigAction *sa = pr->sigactions[i];
		if (sa->signo == SIGKILL || sa->signo == SIGSTOP)
			continue;
		uint64_t k[4] = { sa->handler, sa->flags, sa->restorer, sa->mask };
		if (poke(p->pid, SCR_ARGS, k, sizeof(k)))
			return -1;
		char what[64];
		snprintf(what, sizeof(what), "rt_sigaction(%d)", sa->signo);
		if (inj_ok(lead, what, SYS_rt_sigaction, sa->signo, SCR_ARGS, 0, 8, 0, 0, NULL))
			return -1;
	}
	return 0;
}

/* one pending signal queued again by the thread that received it (a signal
 * pending for the whole process, by the leader): its own siginfo, any si_code */
static int queue_one(struct rproc *p, struct rtask *t, const Understudy__V1__SigInfo *s, bool per_thread)
{
	RS_OF(p);
	if (s->raw.len != 128)
		return fail("E_IMAGE_CORRUPT", 0, "%s %d: pending signal %d has a %zu-byte siginfo", per_thread ? "tid" : "pid",
			    per_thread ? t->tid : p->pid, s->signo, s->raw.len);
	if (poke(p->pid, SCR_ARGS, s->raw.data, 128))
		return -1;
	char what[64];
	snprintf(what, sizeof(what), "%s(signal %d)", per_thread ? "rt_tgsigqueueinfo" : "rt_sigqueueinfo", s->signo);
	if (per_thread)
		return inj_ok(t, what, SYS_rt_tgsigqueueinfo, p->pr->ns_pid, thr_ns_tid(t->th), s->signo, SCR_ARGS, 0, 0, NULL);
	return inj_ok(t, what, SYS_rt_sigqueueinfo, p->pr->ns_pid, s->signo, SCR_ARGS, 0, 0, 0, NULL);
}

int signals_queue(struct rproc *p)
{
	RS_OF(p);
	for (size_t i = 0; i < p->pr->n_shared_pending; i++)
		if (queue_one(p, &p->tasks[0], p->pr->shared_pending[i], false))
			return -1;
	for (size_t k = 0; k < p->ntasks; k++)
		for (size_t i = 0; i < p->tasks[k].th->n_pending; i++)
			if (queue_one(p, &p->tasks[k], p->tasks[k].th->pending[i], true))
				return -1;
	return 0;
}

/* A thread caught inside restart_syscall (a sleep resumed after an earlier
 * barrier) still has the original call's arguments in its registers, and
 * the instruction before the `syscall` that issued it is usually
 * `mov $nr, %eax`: read the number from there. */
static long original_nr(pid_t pid, const struct user_regs_struct *r)
{
	uint8_t b[7];
	if (peek(pid, r->rip - 7, b, sizeof(b))) {
		g_err.code[0] = 0;
		return -1;
	}
	if (b[0] == 0xb8 && b[5] == 0x0f && b[6] == 0x05)
		return (long)(b[1] | (b[2] << 8) | (b[3] << 16) | ((uint32_t)b[4] << 24));
	return -1;
}

static void fix_restart(pid_t pid, struct rtask *t, struct user_regs_struct *r)
{
	Thr *th = t->th;
	long code = th->restart_code;
	if (th->in_syscall && (code == -512 || code == -513 || code == -514)) {
		r->rax = th->syscall_nr;
		r->rip -= 2;
	} else if (th->in_syscall && code == -516) {
		/* the restart block stayed in the old kernel: re-issue the call */
		long nr = th->syscall_nr;
		if (nr == SYS_restart_syscall) {
			long o = original_nr(pid, r);
			vlog("tid %d was in restart_syscall; the call before it was %ld", t->tid, o);
			if (o < 0) {
				/* unknown original call: let it return EINTR as a lost restart would */
				r->rax = -4;
				r->orig_rax = -1;
				return;
			}
			nr = o;
		}
		if (nr == SYS_nanosleep && r->rsi)
			r->rdi = r->rsi; /* the kernel wrote the time left into *rem */
		else if (nr == SYS_clock_nanosleep && !(r->rsi & 1 /* TIMER_ABSTIME */) && r->r10)
			r->rdx = r->r10;
		r->rax = nr;
		r->rip -= 2;
	}
	r->orig_rax = -1;
}

static int set_comm(struct rproc *p, struct rtask *t, const char *comm)
{
	RS_OF(p);
	if (!comm || !comm[0])
		return 0;
	char b[16] = { 0 };
	snprintf(b, sizeof(b), "%s", comm);
	if (poke(p->pid, SCR_COMM, b, sizeof(b)))
		return -1;
	return inj_ok(t, "prctl(PR_SET_NAME)", SYS_prctl, 15 /* PR_SET_NAME */, SCR_COMM, 0, 0, 0, 0, NULL);
}

int tasks_finish(struct rproc *p)
{
	RS_OF(p);
	for (size_t k = 0; k < p->ntasks; k++)
		if (set_comm(p, &p->tasks[k], p->tasks[k].th->comm))
			return -1;
	if (timers_arm(p))
		return -1;
	char what[128];
	snprintf(what, sizeof(what), "munmap of the stub region 0x%llx", (unsigned long long)rs->stub);
	if (inj_ok(&p->tasks[0], what, SYS_munmap, rs->stub, STUB_PAGES * PAGE_SZ, 0, 0, 0, 0, NULL))
		return -1;
	for (size_t k = 0; k < p->ntasks; k++) {
		struct rtask *t = &p->tasks[k];
		Thr *th = t->th;
		if (th->regs.len != sizeof(struct user_regs_struct))
			return fail("E_IMAGE_CORRUPT", 0, "tid %d: registers of %zu bytes, expected %zu", t->tid, th->regs.len,
				    sizeof(struct user_regs_struct));
		if (th->xstate.len) {
			struct iovec iov = { th->xstate.data, th->xstate.len };
			if (ptrace(PTRACE_SETREGSET, t->tid, (void *)NT_X86_XSTATE, &iov))
				return fail("E_RESTORE", errno, "ptrace(PTRACE_SETREGSET, NT_X86_XSTATE, tid %d, %zu bytes)", t->tid, th->xstate.len);
		}
		struct user_regs_struct r;
		memcpy(&r, th->regs.data, sizeof(r));
		fix_restart(p->pid, t, &r);
		if (ptrace(PTRACE_SETREGS, t->tid, 0, &r))
			return fail("E_RESTORE", errno, "ptrace(PTRACE_SETREGS, tid %d) with its checkpointed registers", t->tid);
		uint64_t mask = th->sigmask;
		if (ptrace(PTRACE_SETSIGMASK, t->tid, (void *)8, &mask))
			return fail("E_RESTORE", errno, "ptrace(PTRACE_SETSIGMASK, tid %d)", t->tid);
	}
	return 0;
}

/* A process that was in a job-control stop at the checkpoint is stopped
 * again: its leader is detached first with SIGSTOP, which it takes before it
 * runs a single instruction, and its other threads join the group stop as
 * they are let go. */
static bool was_stopped(const struct rproc *p)
{
	RS_OF(p);
	for (size_t k = 0; k < p->ntasks; k++)
		if (p->tasks[k].th && p->tasks[k].th->state == 'T')
			return true;
	return false;
}

/* The state letter of a task in /proc, 0 when it cannot be read. */
static char task_state(pid_t pid, pid_t tid)
{
	char path[64], buf[512];
	snprintf(path, sizeof(path), "/proc/%d/task/%d/stat", pid, tid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	char *e = strrchr(buf, ')');
	return e && e[1] == ' ' ? e[2] : 0;
}

int tasks_detach(struct restorer *rs)
{
	int rc = 0;
	for (size_t i = 0; i < rs->nprocs; i++) {
		struct rproc *p = &rs->procs[i];
		bool stop = was_stopped(p);
		for (size_t k = 0; k < p->ntasks; k++) {
			struct rtask *t = &p->tasks[k];
			if (t->attached && ptrace(PTRACE_DETACH, t->tid, 0, k == 0 && stop ? SIGSTOP : 0) && !rc)
				rc = fail("E_RESTORE", errno, "ptrace(PTRACE_DETACH, tid %d%s)", t->tid, k == 0 && stop ? ", SIGSTOP" : "");
			t->attached = false;
			/* The leader takes its SIGSTOP when it next runs, not at the
			 * detach: until it has (the group stop is then pending for every
			 * thread), a thread let go now would run on. Wait for it, 1 s
			 * at most (after that, the threads go as they would have). */
			if (k == 0 && stop && p->ntasks > 1) {
				for (int w = 0; w < 2000 && task_state(t->tid, t->tid) != 'T'; w++)
					usleep(500);
			}
		}
	}
	return rc;
}
