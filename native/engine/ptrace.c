/* ptrace: seize every thread of the app, the barrier (PTRACE_INTERRUPT of all
 * threads, wait for all stops), the release, and the handling of the stops
 * the app produces between barriers (new threads and processes auto-attached
 * by TRACECLONE/FORK/VFORK, exec, signals, job-control stops).
 * Never PTRACE_O_EXITKILL: an engine crash must leave the app running. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>
#include "arena.h"
#include "engine.h"

struct engine E;

#define SEIZE_OPTS (PTRACE_O_TRACECLONE | PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK | PTRACE_O_TRACEVFORKDONE | PTRACE_O_TRACEEXEC)

struct task *task_find(pid_t tid)
{
	for (size_t i = 0; i < E.ntasks; i++)
		if (E.tasks[i].tid == tid && !E.tasks[i].dead)
			return &E.tasks[i];
	return NULL;
}

struct task *task_add(pid_t tid, pid_t tgid, enum task_state st)
{
	struct task *t = task_find(tid);
	if (t)
		return t;
	for (size_t i = 0; i < E.ntasks; i++)
		if (E.tasks[i].dead) {
			t = &E.tasks[i];
			break;
		}
	if (!t) {
		if (grow(&E.tasks, &E.cap_tasks, E.ntasks + 1, sizeof(*E.tasks), 64, "the task table"))
			return NULL;
		t = &E.tasks[E.ntasks++];
	}
	memset(t, 0, sizeof(*t));
	t->tid = tid;
	t->tgid = tgid;
	t->state = st;
	t->need_first_info = true;
	return t;
}

struct proc *proc_find(pid_t pid)
{
	for (size_t i = 0; i < E.nprocs; i++)
		if (E.procs[i].pid == pid && !E.procs[i].dead)
			return &E.procs[i];
	return NULL;
}

struct proc *proc_add(pid_t pid)
{
	struct proc *p = proc_find(pid);
	if (p)
		return p;
	if (grow(&E.procs, &E.cap_procs, E.nprocs + 1, sizeof(*E.procs), 16, "the process table"))
		return NULL;
	p = &E.procs[E.nprocs++];
	memset(p, 0, sizeof(*p));
	p->pid = pid;
	p->uffd = -1;
	p->pagemap_fd = -1;
	p->is_new = true;
	p->need_mm_init = true;
	return p;
}

size_t live_threads(void)
{
	size_t n = 0;
	for (size_t i = 0; i < E.ntasks; i++)
		n += !E.tasks[i].dead;
	return n;
}

static pid_t tgid_of(pid_t tid)
{
	char v[64];
	if (proc_status_field(tid, "Tgid", v, sizeof(v))) {
		err_clear();
		return tid;
	}
	return atoi(v);
}

/* "Ours": a user process that is not init, not the engine or any of its
 * ancestors (the agent, the shell that started it), not a kernel thread, not
 * traced by someone else, not a zombie. */
int check_ours(pid_t pid)
{
	if (pid <= 0)
		return fail("E_USAGE", 0, "pid %d is not a process id", pid);
	if (pid == 1)
		return fail("E_NOT_OURS", 0, "pid 1 is the init process, not an app; refusing to touch it");
	if (pid == getpid())
		return fail("E_NOT_OURS", 0, "pid %d is the engine itself; refusing", pid);
	for (pid_t a = getppid(); a > 1;) {
		if (a == pid)
			return fail("E_NOT_OURS", 0, "pid %d is the agent or one of its ancestors; refusing to seize it", pid);
		char v[64];
		if (proc_status_field(a, "PPid", v, sizeof(v))) {
			err_clear();
			break;
		}
		a = atoi(v);
	}
	char path[64], *buf;
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	if (read_file(path, &buf) < 0) {
		err_clear();
		return fail("E_NO_SUCH_PROCESS", ESRCH, "no process with pid %d", pid);
	}
	char *rp = strrchr(buf, ')');
	unsigned long long flags = 0;
	char state = '?';
	if (rp) {
		state = rp[2];
		char *p = rp + 2;
		for (int i = 3; i < 9 && *p; i++) {
			p = strchr(p, ' ');
			if (!p)
				break;
			p++;
		}
		if (p)
			flags = strtoull(p, NULL, 10);
	}
	free(buf);
	if (flags & 0x00200000)
		return fail("E_NOT_OURS", 0, "pid %d is a kernel thread; refusing", pid);
	if (state == 'Z' || state == 'X')
		return fail("E_NO_SUCH_PROCESS", 0, "pid %d is a zombie (exited, not reaped)", pid);
	char v[64];
	if (!proc_status_field(pid, "Tgid", v, sizeof(v)) && atoi(v) != pid)
		return fail("E_USAGE", 0, "pid %d is a thread of process %d; give the process id", pid, atoi(v));
	if (!proc_status_field(pid, "TracerPid", v, sizeof(v)) && atoi(v) != 0)
		return fail("E_NOT_OURS", 0, "pid %d is already traced by pid %d (a debugger or another engine)", pid, atoi(v));
	err_clear();
	return 0;
}

static int seize_threads_of(pid_t pid, bool *added)
{
	pid_t *tids;
	size_t n;
	if (list_tasks(pid, &tids, &n))
		return -1;
	for (size_t i = 0; i < n; i++) {
		if (task_find(tids[i]))
			continue;
		if (ptrace(PTRACE_SEIZE, tids[i], 0, (void *)(long)SEIZE_OPTS)) {
			int e = errno;
			if (e == ESRCH)
				continue; /* exited meanwhile */
			free(tids);
			return fail(e == EPERM ? "E_NOT_OURS" : "E_NATIVE", e, "ptrace(PTRACE_SEIZE, tid %d of pid %d)", tids[i], pid);
		}
		if (!task_add(tids[i], pid, TS_RUNNING)) {
			free(tids);
			return -1;
		}
		*added = true;
	}
	free(tids);
	return 0;
}

static int seize_proc(pid_t pid)
{
	if (!proc_add(pid))
		return -1;
	/* threads may be created while we seize: list until nothing new */
	for (int round = 0; round < 100; round++) {
		bool added = false;
		if (seize_threads_of(pid, &added))
			return -1;
		if (!added)
			return 0;
	}
	return fail("E_NATIVE", 0, "pid %d keeps creating threads faster than they can be seized", pid);
}

int seize_tree(pid_t root, bool children)
{
	if (check_ours(root))
		return -1;
	E.root_pid = root;
	if (seize_proc(root))
		return -1;
	if (!children)
		return 0;
	/* breadth-first over descendants; forks by seized threads are auto-attached */
	pid_t queue[4096];
	size_t qh = 0, qt = 0;
	queue[qt++] = root;
	while (qh < qt) {
		pid_t *kids;
		size_t nk;
		pid_t p = queue[qh++];
		if (list_children(p, &kids, &nk)) {
			err_clear();
			continue;
		}
		for (size_t i = 0; i < nk; i++) {
			if (!proc_find(kids[i])) {
				char v[64];
				if (!proc_status_field(kids[i], "TracerPid", v, sizeof(v)) && atoi(v) != 0 && atoi(v) != getpid()) {
					free(kids);
					return fail("E_NOT_OURS", 0, "child pid %d of the app is traced by pid %d", kids[i], atoi(v));
				}
				err_clear();
				if (seize_proc(kids[i])) {
					free(kids);
					return -1;
				}
			}
			if (qt < 4096)
				queue[qt++] = kids[i];
		}
		free(kids);
	}
	return 0;
}

static void mark_dead(struct task *t)
{
	t->dead = true;
	if (t->tid == t->tgid) {
		struct proc *p = proc_find(t->tgid);
		if (p) {
			p->dead = true;
			uffd_close(p);
			taskiter_close(p);
			free(p->maps);
			p->maps = NULL;
			p->nmaps = 0;
		}
	}
}

/* Handle one wait status. in_barrier: keep threads that reach our interrupt
 * stop stopped; otherwise resume everything promptly. */
static void on_status(pid_t tid, int status, bool in_barrier)
{
	struct task *t = task_find(tid);
	if (!t) {
		pid_t tg = tgid_of(tid);
		if (tg == tid && !proc_add(tid))
			return;
		t = task_add(tid, tg, TS_NEWBORN);
		if (!t)
			return;
	}
	if (WIFEXITED(status) || WIFSIGNALED(status)) {
		mark_dead(t);
		return;
	}
	if (!WIFSTOPPED(status))
		return;
	int sig = WSTOPSIG(status), ev = status >> 16;
	if (ev == PTRACE_EVENT_STOP) {
		bool job = sig == SIGSTOP || sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU;
		t->group_stopped = job;
		if (in_barrier) {
			prof_mark("barrier.stopped");
			t->state = TS_STOPPED;
		} else {
			if (job)
				ptrace(PTRACE_LISTEN, tid, 0, 0);
			else
				ptrace(PTRACE_CONT, tid, 0, 0);
			t->state = TS_RUNNING;
		}
		return;
	}
	if (ev == PTRACE_EVENT_FORK || ev == PTRACE_EVENT_VFORK || ev == PTRACE_EVENT_CLONE) {
		unsigned long child = 0;
		if (!ptrace(PTRACE_GETEVENTMSG, tid, 0, &child) && child > 0 && !task_find(child)) {
			if (ev == PTRACE_EVENT_CLONE) {
				task_add(child, t->tgid, TS_NEWBORN);
			} else {
				proc_add(child);
				task_add(child, child, TS_NEWBORN);
			}
		}
		/* a vfork parent sleeps (killable only) until the child execs or
		 * exits: no interrupt reaches it meanwhile */
		if (ev == PTRACE_EVENT_VFORK)
			t->vfork_child = (pid_t)child;
		ptrace(PTRACE_CONT, tid, 0, 0);
		t->state = TS_RUNNING;
		return;
	}
	if (ev == PTRACE_EVENT_VFORK_DONE) {
		t->vfork_child = 0;
		ptrace(PTRACE_CONT, tid, 0, 0);
		t->state = TS_RUNNING;
		return;
	}
	if (ev == PTRACE_EVENT_EXEC) {
		struct proc *p = proc_find(t->tgid);
		if (p) {
			uffd_close(p);
			p->need_mm_init = true;
			p->brk_valid = false;
			p->kstate_checked = false;
			p->syscall_insn = 0;
		}
		/* the exec'ing thread took the leader's tid; other threads are gone */
		pid_t *tids;
		size_t n;
		if (!list_tasks(t->tgid, &tids, &n)) {
			for (size_t i = 0; i < E.ntasks; i++) {
				struct task *o = &E.tasks[i];
				if (o->dead || o->tgid != t->tgid)
					continue;
				bool alive = false;
				for (size_t k = 0; k < n; k++)
					alive |= tids[k] == o->tid;
				if (!alive)
					o->dead = true;
			}
			free(tids);
		}
		err_clear();
		struct task *lead = task_find(t->tgid);
		if (!lead)
			lead = task_add(t->tgid, t->tgid, TS_RUNNING);
		if (lead) {
			lead->need_first_info = true;
			lead->state = TS_RUNNING;
		}
		ptrace(PTRACE_CONT, tid, 0, 0);
		return;
	}
	/* signal-delivery-stop: deliver the signal as the kernel would have */
	ptrace(PTRACE_CONT, tid, 0, (void *)(long)sig);
	t->state = TS_RUNNING;
}

static void drain(bool in_barrier)
{
	struct signalfd_siginfo si;
	while (read(E.sigchld_fd, &si, sizeof(si)) == sizeof(si))
		;
	for (;;) {
		int st;
		pid_t r = waitpid(-1, &st, __WALL | WNOHANG);
		if (r <= 0)
			break;
		on_status(r, st, in_barrier);
	}
}

int pump_events(int timeout_ms)
{
	struct pollfd pfd = { .fd = E.sigchld_fd, .events = POLLIN };
	if (timeout_ms > 0)
		poll(&pfd, 1, timeout_ms);
	drain(false);
	return 0;
}

/* A thread that was already inside vfork() when it was seized: no
 * PTRACE_EVENT_VFORK told us, and it sleeps (state D) in kernel_clone until
 * its child execs or exits. Its child comes from the thread's children list.
 * Returns the child, -1 if the thread is in vfork but no child is listed, 0 if
 * not in vfork (or unknown). */
static pid_t vfork_child_from_proc(const struct task *t)
{
	char path[96], buf[256];
	snprintf(path, sizeof(path), "/proc/%d/task/%d/wchan", t->tgid, t->tid);
	FILE *f = fopen(path, "re");
	if (!f)
		return 0;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	if (strcmp(buf, "kernel_clone") != 0)
		return 0;
	snprintf(path, sizeof(path), "/proc/%d/task/%d/stat", t->tgid, t->tid);
	if (!(f = fopen(path, "re")))
		return 0;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	const char *rp = strrchr(buf, ')');
	if (!rp || rp[1] != ' ' || rp[2] != 'D')
		return 0;
	snprintf(path, sizeof(path), "/proc/%d/task/%d/children", t->tgid, t->tid);
	long child = -1;
	if ((f = fopen(path, "re"))) {
		long c;
		/* the newest child is the vfork child: the list is in creation order */
		while (fscanf(f, "%ld", &c) == 1)
			child = c;
		fclose(f);
	}
	return (pid_t)child;
}

int barrier(uint64_t timeout_ms)
{
	drain(false);
	/* a vfork found in /proc at the last barrier may be over: look again */
	for (size_t i = 0; i < E.ntasks; i++) {
		struct task *t = &E.tasks[i];
		if (t->vfork_seen_in_proc) {
			t->vfork_child = 0;
			t->vfork_seen_in_proc = false;
		}
	}
	for (size_t i = 0; i < E.ntasks; i++) {
		struct task *t = &E.tasks[i];
		if (t->dead || t->state == TS_STOPPED)
			continue;
		if (ptrace(PTRACE_INTERRUPT, t->tid, 0, 0) && errno == ESRCH)
			mark_dead(t);
	}
	prof_mark("barrier.interrupted");
	uint64_t start = now_ns(), deadline = start + timeout_ms * 1000000ULL, last_kick = start;
	bool looked_for_vfork = false;
	for (;;) {
		drain(true);
		size_t waiting = 0, in_vfork = 0;
		pid_t some = 0, vf = 0, vchild = 0;
		for (size_t i = 0; i < E.ntasks; i++) {
			struct task *t = &E.tasks[i];
			if (t->dead || t->state == TS_STOPPED)
				continue;
			if (t->vfork_child) {
				in_vfork++;
				vf = t->tid;
				vchild = t->vfork_child;
				continue;
			}
			waiting++;
			some = t->tid;
		}
		if (waiting && !looked_for_vfork && now_ns() - start > 20000000ULL) {
			/* still not stopped after 20 ms: one look for vforks begun before the seize */
			looked_for_vfork = true;
			bool found = false;
			for (size_t i = 0; i < E.ntasks; i++) {
				struct task *t = &E.tasks[i];
				if (t->dead || t->state == TS_STOPPED || t->vfork_child)
					continue;
				pid_t c = vfork_child_from_proc(t);
				if (c) {
					t->vfork_child = c;
					t->vfork_seen_in_proc = true;
					found = true;
				}
			}
			if (found)
				continue;
		}
		if (!waiting && in_vfork) {
			/* its child is stopped by this very barrier: it cannot exec,
			 * so the parent cannot stop. Release now, not after a timeout. */
			release_all();
			if (vchild < 0)
				return fail(
					"E_BARRIER", 0,
					"barrier: thread %d is inside vfork(), waiting for its child to exec or exit; the app was released, retry the checkpoint",
					vf);
			return fail(
				"E_BARRIER", 0,
				"barrier: thread %d is inside vfork(), waiting for child %d to exec or exit; the app was released, retry the checkpoint",
				vf, vchild);
		}
		if (!waiting)
			return 0;
		uint64_t now = now_ns();
		if (now > deadline) {
			release_all();
			return fail("E_BARRIER", 0,
				    "barrier: %zu thread(s) did not stop within %llu ms (e.g. tid %d, maybe in uninterruptible sleep); app released",
				    waiting, (unsigned long long)timeout_ms, some);
		}
		/* threads resumed by an event (fork, signal) while the barrier was
		 * up, and newborns, get a fresh interrupt now and then */
		if (now - last_kick > 2000000ULL) {
			for (size_t i = 0; i < E.ntasks; i++) {
				struct task *t = &E.tasks[i];
				if (!t->dead && t->state == TS_RUNNING)
					ptrace(PTRACE_INTERRUPT, t->tid, 0, 0);
			}
			last_kick = now;
		}
		struct pollfd pfd = { .fd = E.sigchld_fd, .events = POLLIN };
		poll(&pfd, 1, 1);
	}
}

int release_all(void)
{
	for (size_t i = 0; i < E.ntasks; i++) {
		struct task *t = &E.tasks[i];
		if (t->dead || t->state != TS_STOPPED)
			continue;
		long r = t->group_stopped ? ptrace(PTRACE_LISTEN, t->tid, 0, 0) : ptrace(PTRACE_CONT, t->tid, 0, 0);
		if (r && errno == ESRCH)
			mark_dead(t);
		t->state = TS_RUNNING;
	}
	return 0;
}

/* Leave the app running, untraced, with no tracking state of ours. */
void detach_all(void)
{
	err_clear();
	if (barrier(5000))
		err_clear();
	for (size_t i = 0; i < E.nprocs; i++)
		if (!E.procs[i].dead)
			uffd_close(&E.procs[i]);
	for (size_t i = 0; i < E.nprocs; i++)
		taskiter_close(&E.procs[i]);
	for (size_t i = 0; i < E.ntasks; i++) {
		struct task *t = &E.tasks[i];
		if (t->dead)
			continue;
		if (ptrace(PTRACE_DETACH, t->tid, 0, 0) && errno != ESRCH) {
			/* not in a stop we can detach from: interrupt, then detach */
			ptrace(PTRACE_INTERRUPT, t->tid, 0, 0);
			int st;
			if (waitpid(t->tid, &st, __WALL) == t->tid && WIFSTOPPED(st))
				ptrace(PTRACE_DETACH, t->tid, 0, 0);
		}
		t->dead = true;
	}
	for (size_t i = 0; i < E.nprocs; i++) {
		free(E.procs[i].maps);
		E.procs[i].maps = NULL;
		E.procs[i].dead = true;
	}
	E.ntasks = 0;
	E.nprocs = 0;
	E.attached = false;
}
