/* ptrace: seizing the skeleton tasks and injecting syscalls into them. Every
 * task of the restored app executes only the `syscall` instruction at the
 * start of the stub region until its final registers are set; its own
 * registers are throw-away, so an injection just points rip at the stub,
 * single-steps, and reads rax. A clone3 that creates a task reports a
 * PTRACE_EVENT_{FORK,CLONE} stop first: its pid is taken from the event. */
#include <errno.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include "restore.h"

#define TRACE_OPTS (PTRACE_O_TRACECLONE | PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK | PTRACE_O_EXITKILL)

int wait_stop(pid_t tid, int *status)
{
	for (;;) {
		int st;
		pid_t w = waitpid(tid, &st, __WALL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return fail("E_RESTORE", errno, "waitpid(tid %d)", tid);
		}
		if (WIFEXITED(st) || WIFSIGNALED(st))
			return fail("E_RESTORE", 0, "tid %d %s %d during the restore", tid,
				    WIFEXITED(st) ? "exited with status" : "was killed by signal", WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
		*status = st;
		return 0;
	}
}

int seize_task(pid_t tid, bool interrupt)
{
	if (ptrace(PTRACE_SEIZE, tid, 0, (void *)(long)TRACE_OPTS))
		return fail("E_RESTORE", errno, "ptrace(PTRACE_SEIZE, pid %d)", tid);
	if (interrupt && ptrace(PTRACE_INTERRUPT, tid, 0, 0))
		return fail("E_RESTORE", errno, "ptrace(PTRACE_INTERRUPT, pid %d)", tid);
	int st;
	if (wait_stop(tid, &st))
		return -1;
	return 0;
}

/* first stop of a skeleton task: block every signal, drop what the task
 * inherited from the restorer's thread (rseq registration) */
int task_prepare(struct rtask *t)
{
	RS_OF_TASK(t);
	uint64_t all = ~0ULL;
	if (ptrace(PTRACE_SETSIGMASK, t->tid, (void *)8, &all))
		return fail("E_RESTORE", errno, "ptrace(PTRACE_SETSIGMASK, tid %d)", t->tid);
	if (ptrace(PTRACE_GETREGS, t->tid, 0, &t->base))
		return fail("E_RESTORE", errno, "ptrace(PTRACE_GETREGS, tid %d)", t->tid);
	t->attached = true;
	struct {
		uint64_t ptr;
		uint32_t size, sig, flags, pad;
	} rc = { 0 };
	if (ptrace(0x420f /* PTRACE_GET_RSEQ_CONFIGURATION */, t->tid, (void *)sizeof(rc), &rc) > 0 && rc.ptr) {
		long ret;
		if (inj(t, 334 /* rseq */, rc.ptr, rc.size, 1 /* RSEQ_FLAG_UNREGISTER */, rc.sig, 0, 0, &ret, NULL))
			return -1;
		if (ret)
			return fail("E_RESTORE", (int)-ret, "rseq unregister (inherited area 0x%llx) in tid %d", (unsigned long long)rc.ptr, t->tid);
	}
	return 0;
}

int inj(struct rtask *t, long nr, long a0, long a1, long a2, long a3, long a4, long a5, long *ret, pid_t *child)
{
	RS_OF_TASK(t);
	struct user_regs_struct r = t->base;
	r.rax = nr;
	r.orig_rax = -1;
	r.rip = rs->stub;
	r.rdi = a0;
	r.rsi = a1;
	r.rdx = a2;
	r.r10 = a3;
	r.r8 = a4;
	r.r9 = a5;
	r.eflags &= ~0x100ULL;
	if (ptrace(PTRACE_SETREGS, t->tid, 0, &r))
		return fail("E_RESTORE", errno, "ptrace(PTRACE_SETREGS, tid %d) to inject syscall %ld", t->tid, nr);
	if (ptrace(PTRACE_SINGLESTEP, t->tid, 0, 0))
		return fail("E_RESTORE", errno, "ptrace(PTRACE_SINGLESTEP, tid %d) for syscall %ld", t->tid, nr);
	for (;;) {
		int st;
		if (wait_stop(t->tid, &st))
			return -1;
		int ev = st >> 16;
		if (WSTOPSIG(st) == SIGTRAP && ev == 0)
			break;
		if (ev == PTRACE_EVENT_FORK || ev == PTRACE_EVENT_CLONE || ev == PTRACE_EVENT_VFORK) {
			unsigned long msg = 0;
			if (ptrace(PTRACE_GETEVENTMSG, t->tid, 0, &msg))
				return fail("E_RESTORE", errno, "ptrace(PTRACE_GETEVENTMSG, tid %d)", t->tid);
			if (child)
				*child = (pid_t)msg;
		} else if (ev != PTRACE_EVENT_STOP && WSTOPSIG(st) != SIGSTOP) {
			vlog("tid %d: stop 0x%x while injecting syscall %ld; suppressed", t->tid, st, nr);
		}
		if (ptrace(PTRACE_SINGLESTEP, t->tid, 0, 0))
			return fail("E_RESTORE", errno, "ptrace(PTRACE_SINGLESTEP, tid %d) for syscall %ld", t->tid, nr);
	}
	if (ptrace(PTRACE_GETREGS, t->tid, 0, &r))
		return fail("E_RESTORE", errno, "ptrace(PTRACE_GETREGS, tid %d) after syscall %ld", t->tid, nr);
	if (r.rip != rs->stub + 2)
		return fail("E_RESTORE", 0, "tid %d: injected syscall %ld ended at rip 0x%llx, not after the stub's syscall instruction", t->tid, nr,
			    (unsigned long long)r.rip);
	*ret = (long)r.rax;
	return 0;
}

/* the host pid of the process task t belongs to (for error messages) */
static pid_t pid_of(const struct rtask *t)
{
	RS_OF_TASK(t);
	for (size_t i = 0; i < rs->nprocs; i++)
		if (t >= rs->procs[i].tasks && t < rs->procs[i].tasks + rs->procs[i].ntasks)
			return rs->procs[i].pid;
	return t->tid;
}

int inj_ok(struct rtask *t, const char *what, long nr, long a0, long a1, long a2, long a3, long a4, long a5, long *ret)
{
	RS_OF_TASK(t);
	long r;
	if (inj(t, nr, a0, a1, a2, a3, a4, a5, &r, NULL))
		return -1;
	if (r < 0 && r > -4096)
		return fail("E_RESTORE", (int)-r, "%s in pid %d (tid %d)", what, pid_of(t), t->tid);
	if (ret)
		*ret = r;
	return 0;
}

int poke(pid_t pid, uint64_t addr, const void *src, size_t len)
{
	struct iovec l = { (void *)src, len }, r = { (void *)addr, len };
	ssize_t w = process_vm_writev(pid, &l, 1, &r, 1, 0);
	if (w != (ssize_t)len)
		return fail("E_RESTORE", w < 0 ? errno : EIO, "process_vm_writev(pid %d, 0x%llx, %zu)", pid, (unsigned long long)addr, len);
	return 0;
}

int peek(pid_t pid, uint64_t addr, void *dst, size_t len)
{
	struct iovec l = { dst, len }, r = { (void *)addr, len };
	ssize_t w = process_vm_readv(pid, &l, 1, &r, 1, 0);
	if (w != (ssize_t)len)
		return fail("E_RESTORE", w < 0 ? errno : EIO, "process_vm_readv(pid %d, 0x%llx, %zu)", pid, (unsigned long long)addr, len);
	return 0;
}

uint64_t scratch_str(struct rproc *p, const char *s)
{
	RS_OF(p);
	pid_t pid = p->pid;
	size_t n = strlen(s) + 1;
	if (n > SCR_PATH_LEN) {
		fail("E_RESTORE", ENAMETOOLONG, "path of %zu bytes does not fit the stub scratch area", n);
		return 0;
	}
	if (poke(pid, SCR_PATH, s, n))
		return 0;
	return SCR_PATH;
}

/* clone3 injected into task t (of process holder) with set_tid
 * {ns_id, host_id}, or {ns_id} alone when host_id is 0 (the host's pid is
 * then the kernel's choice): the new process or thread is waited for until it
 * stops (auto-attached). Its host pid or tid is stored in *out as soon as it
 * exists, also when an error follows (*out untouched if none was created).
 * what names it in errors. */
int inj_clone3(struct rtask *t, pid_t holder, uint64_t flags, int exit_signal, pid_t ns_id, pid_t host_id, const char *what, pid_t *out)
{
	RS_OF_TASK(t);
	pid_t tids[2] = { ns_id, host_id };
	struct clone_args a = { 0 };
	a.flags = flags;
	a.exit_signal = (uint64_t)exit_signal;
	a.set_tid = SCR_SET_TID;
	a.set_tid_size = host_id ? 2 : 1;
	if (poke(holder, SCR_SET_TID, tids, sizeof(tids)) || poke(holder, SCR_ARGS, &a, sizeof(a)))
		return -1;
	long ret;
	pid_t child = 0;
	if (inj(t, SYS_clone3, SCR_ARGS, sizeof(a), 0, 0, 0, 0, &ret, &child))
		return -1;
	if (ret < 0) {
		if (host_id)
			return fail(ret == -EEXIST ? "E_PID_TAKEN" : "E_RESTORE", (int)-ret, "clone3(%s, set_tid {%d, %d}) injected into pid %d",
				    what, ns_id, host_id, holder);
		return fail(ret == -EEXIST ? "E_PID_TAKEN" : "E_RESTORE", (int)-ret, "clone3(%s, set_tid {%d}) injected into pid %d", what, ns_id,
			    holder);
	}
	if (child > 0)
		*out = child; /* it exists: the caller records it for the cleanup, whatever follows */
	if (ret != ns_id || child <= 0 || (host_id && child != host_id))
		return fail("E_RESTORE", 0, "clone3(%s) in pid %d created %ld (host %d), expected %d (host %d)", what, holder, ret, child, ns_id,
			    host_id);
	int st;
	return wait_stop(child, &st);
}
