/* The process tree: a new PID namespace whose pid 1 is a minimal reaper (or
 * the app's root itself when it was pid 1 of its own namespace), then every
 * process as a skeleton created by its real parent with an injected clone3
 * and set_tid = {pid in the new namespace, pid on the host} for an app adopted
 * in the host's namespace, {pid in the new namespace} alone for an app that
 * had a namespace of its own (its host pids are whatever this node gives:
 * rproc.pid and rtask.tid are set to them as each task is created). A skeleton owns
 * only the stub region (a `syscall` instruction and scratch pages) and the
 * kernel's [vvar]/[vdso]. Sessions and process groups are set while the
 * skeletons are created: session leaders first, then group leaders, then
 * group members. */
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fdio.h"
#include "restore.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

/* (the restorer -> reaper "commit" byte and its acknowledgement: the reaper
 * dies with the restorer (PR_SET_PDEATHSIG) until the restore is done) */

void restorer_init(struct restorer *rs)
{
	memset(rs, 0, sizeof(*rs));
	rs->ready_pipe[0] = rs->ready_pipe[1] = -1;
	rs->commit_pipe[0] = rs->commit_pipe[1] = -1;
	rs->ack_pipe[0] = rs->ack_pipe[1] = -1;
	rs->tty = TTY_NULL;
}

/* index of the process whose pid in the image is pid */
static int find_idx(struct restorer *rs, pid_t pid)
{
	for (size_t i = 0; i < rs->nprocs; i++)
		if (rs->procs[i].pr->pid == pid)
			return (int)i;
	return -1;
}

int tree_plan(struct restorer *rs)
{
	Understudy__V1__EpochMeta *m = rs->im.last;
	rs->procs = calloc(m->n_processes, sizeof(*rs->procs));
	if (!rs->procs)
		return fail("E_RESTORE", ENOMEM, "calloc for %zu processes", m->n_processes);
	/* breadth first from the root: a parent is always created before its children */
	Proc *root = NULL;
	for (size_t i = 0; i < m->n_processes; i++)
		if (m->processes[i]->pid == m->root_pid)
			root = m->processes[i];
	if (!root)
		return fail("E_IMAGE_CORRUPT", 0, "epoch %u: the root pid %d is not among its processes", m->epoch, m->root_pid);
	if (root->ns_pid != root->pid && root->ns_pid != 1)
		return fail("E_UNSUPPORTED", 0,
			    "the app's root (pid %d) is pid %d of a nested PID namespace without being its pid 1: this layout is not restored",
			    root->pid, root->ns_pid);
	rs->root_is_init = root->ns_pid == 1;
	rs->procs[0].rs = rs;
	rs->procs[0].pr = root;
	rs->procs[0].pid = root->pid;
	rs->procs[0].parent = -1;
	rs->nprocs = 1;
	for (size_t head = 0; head < rs->nprocs; head++) {
		for (size_t i = 0; i < m->n_processes; i++) {
			Proc *pr = m->processes[i];
			if (pr->ppid != rs->procs[head].pr->pid || pr == root)
				continue;
			struct rproc *c = &rs->procs[rs->nprocs++];
			c->rs = rs;
			c->pr = pr;
			c->pid = pr->pid;
			c->parent = head;
		}
	}
	if (rs->nprocs != m->n_processes) {
		for (size_t i = 0; i < m->n_processes; i++)
			if (find_idx(rs, m->processes[i]->pid) < 0)
				return fail("E_UNSUPPORTED", 0,
					    "pid %d's parent %d is not part of the app (an orphan re-parented outside it): it cannot be "
					    "recreated by its real parent",
					    m->processes[i]->pid, m->processes[i]->ppid);
	}
	for (size_t i = 0; i < rs->nprocs; i++) {
		struct rproc *p = &rs->procs[i];
		p->tasks = calloc(p->pr->n_threads + 1, sizeof(struct rtask));
		if (!p->tasks)
			return fail("E_RESTORE", ENOMEM, "calloc for the threads of pid %d", p->pid);
		for (size_t t = 0; t <= p->pr->n_threads; t++)
			p->tasks[t].proc = p;
		/* leader first */
		p->tasks[0].tid = p->pid;
		p->ntasks = 1;
		for (size_t t = 0; t < p->pr->n_threads; t++) {
			Thr *th = p->pr->threads[t];
			if (th->tid == p->pr->pid)
				p->tasks[0].th = th;
			else {
				p->tasks[p->ntasks].tid = th->tid;
				p->tasks[p->ntasks].th = th;
				p->ntasks++;
			}
		}
		if (!p->tasks[0].th)
			return fail("E_UNSUPPORTED", 0, "pid %d: its main thread had exited before the checkpoint (a zombie leader)", p->pid);
	}
	return 0;
}

/* ---- code that runs in the new namespace (copies of the restorer) ---- */

static __attribute__((noreturn)) void skeleton_main(struct restorer *rs)
{
	uint64_t got = 0;
	for (int i = 0; i < rs->nstub && !got; i++) {
		void *a = mmap((void *)rs->stub_cands[i], STUB_PAGES * PAGE_SZ, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
		if (a == MAP_FAILED)
			continue;
		if ((uint64_t)a != rs->stub_cands[i]) {
			munmap(a, STUB_PAGES * PAGE_SZ);
			continue;
		}
		unsigned char *c = a;
		c[0] = 0x0f; /* syscall */
		c[1] = 0x05;
		c[2] = 0xcc; /* int3: never reached */
		if (mprotect(a, PAGE_SZ, PROT_READ | PROT_EXEC))
			_exit(121);
		got = (uint64_t)a;
	}
	fd_write_all(rs->ready_pipe[1], &got, sizeof(got)); /* the restorer times out if it fails */
	if (!got)
		_exit(122);
	for (;;)
		pause();
}

static long clone3_raw(struct clone_args *a)
{
	return syscall(SYS_clone3, a, sizeof(*a));
}

/* (only for an app adopted in the host's namespace: its host pids come back too) */
static __attribute__((noreturn)) void reaper_main(struct restorer *rs, pid_t root_ns, pid_t root_host)
{
	prctl(PR_SET_NAME, "understudy-init", 0, 0, 0);
	setsid();
	pid_t tids[2] = { root_ns, root_host };
	struct clone_args a = { 0 };
	a.exit_signal = SIGCHLD;
	a.set_tid = (uint64_t)(uintptr_t)tids;
	a.set_tid_size = 2;
	long c = clone3_raw(&a);
	if (c == 0)
		skeleton_main(rs);
	if (c < 0) {
		uint64_t zero = 0;
		int e = errno;
		fd_write_all(rs->ready_pipe[1], &zero, sizeof(zero));
		fd_write_all(rs->ready_pipe[1], &e, sizeof(e));
		_exit(123);
	}
	/* pid 1 of the app's namespace: reap until the app is gone. It is a copy
	 * of the restorer: let go of the image (its pages.bin mappings would pin
	 * the files for as long as the app runs). */
	for (uint32_t k = 0; k < rs->im.nep; k++)
		if (rs->im.ep[k].pages)
			munmap((void *)rs->im.ep[k].pages, rs->im.ep[k].pages_len);
	/* every fd the restorer had (its stdout, whatever its caller passed
	 * down): the reaper must not hold anyone's pipe open. It keeps only
	 * the commit pipe (as fd 0) and the acknowledgement pipe (as fd 1). */
	int cfd = fcntl(rs->commit_pipe[0], F_DUPFD, 1000), afd = fcntl(rs->ack_pipe[1], F_DUPFD, 1000);
	if (cfd < 0 || afd < 0 || dup2(cfd, 0) < 0 || dup2(afd, 1) < 0)
		_exit(126); /* no acknowledgement: the restorer fails and kills the namespace */
	syscall(436 /* close_range */, 2, ~0U, 0);
	/* until the restorer commits: reap now and then, wait for its byte. A
	 * restorer that dies first takes this process (PDEATHSIG), and with it,
	 * as pid 1, everything in the namespace. */
	for (;;) {
		int st;
		pid_t w;
		while ((w = waitpid(-1, &st, __WALL | WNOHANG)) > 0)
			;
		if (w < 0 && errno == ECHILD)
			_exit(0);
		struct pollfd pf = { 0, POLLIN, 0 };
		if (poll(&pf, 1, 50) <= 0)
			continue;
		char c = 0;
		ssize_t r = read(0, &c, 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r != 1 || c != 'c')
			_exit(125); /* the restorer is gone without committing */
		if (prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0))
			_exit(125);
		if (write(1, "a", 1) != 1)
			_exit(125);
		close(0);
		close(1);
		break;
	}
	for (;;) {
		int st;
		pid_t w = waitpid(-1, &st, __WALL);
		if (w < 0 && errno == ECHILD)
			_exit(0);
	}
}

/* The restore is done: the reaper must outlive the restorer from now on.
 * Nothing to do when the app's root is pid 1 of its namespace (it cleared
 * its own PDEATHSIG once seized). */
int tree_commit(struct restorer *rs)
{
	if (rs->root_is_init || rs->commit_pipe[1] < 0)
		return 0;
	int rc = 0;
	char a = 0;
	if (write(rs->commit_pipe[1], "c", 1) != 1) {
		rc = fail("E_RESTORE", errno, "telling the namespace's reaper (pid %d) that the restore is done", rs->reaper);
		goto out;
	}
	struct pollfd pf = { rs->ack_pipe[0], POLLIN, 0 };
	int pr;
	while ((pr = poll(&pf, 1, 2000)) < 0 && errno == EINTR)
		;
	if (pr <= 0 || read(rs->ack_pipe[0], &a, 1) != 1 || a != 'a')
		rc = fail("E_RESTORE", pr == 0 ? ETIMEDOUT : EPIPE,
			  "the namespace's reaper (pid %d) did not confirm within 2 s that it outlives the restorer", rs->reaper);
out:
	close(rs->commit_pipe[1]);
	close(rs->ack_pipe[0]);
	rs->commit_pipe[1] = rs->ack_pipe[0] = -1;
	return rc;
}

/* ---- restorer side ---- */

static int read_ready(struct restorer *rs, uint64_t *addr, int *cerr)
{
	struct pollfd pf = { rs->ready_pipe[0], POLLIN, 0 };
	size_t got = 0;
	uint8_t buf[12];
	uint64_t until = now_ns() + 5000000000ULL;
	while (got < 8) {
		int ms = (int)((until - now_ns()) / 1000000);
		if ((int64_t)(until - now_ns()) <= 0 || poll(&pf, 1, ms) == 0)
			return fail("E_RESTORE", ETIMEDOUT, "the new namespace's first process did not report ready within 5 s");
		ssize_t r = read(rs->ready_pipe[0], buf + got, sizeof(buf) - got);
		if (r <= 0) {
			if (r < 0 && errno == EINTR)
				continue;
			return fail("E_RESTORE", r < 0 ? errno : EPIPE, "read of the ready pipe");
		}
		got += r;
	}
	memcpy(addr, buf, 8);
	*cerr = 0;
	if (*addr == 0 && got < 12) {
		ssize_t r = read(rs->ready_pipe[0], buf + got, 12 - got);
		if (r > 0)
			got += r;
	}
	if (got >= 12)
		memcpy(cerr, buf + 8, 4);
	return 0;
}

static bool is_app_id(struct restorer *rs, pid_t id)
{
	for (size_t i = 0; i < rs->nprocs; i++)
		for (size_t t = 0; t < rs->procs[i].ntasks; t++)
			if (rs->procs[i].tasks[t].tid == id)
				return true;
	return false;
}

static int start_namespace(struct restorer *rs)
{
	struct rproc *root = &rs->procs[0];
	if (pipe2(rs->ready_pipe, O_CLOEXEC))
		return fail("E_RESTORE", errno, "pipe2");
	if (!rs->root_is_init && (pipe2(rs->commit_pipe, O_CLOEXEC) || pipe2(rs->ack_pipe, O_CLOEXEC)))
		return fail("E_RESTORE", errno, "pipe2");
	/* the first process of the namespace (the app's root as pid 1, or the
	 * reaper) is this process's child: it dies with this process
	 * (PR_SET_PDEATHSIG) until the root is seized (root) or the restore is
	 * committed (reaper), and looks at this pidfd for a death before its
	 * prctl took effect */
	int self = (int)syscall(SYS_pidfd_open, getpid(), 0);
	if (self < 0)
		return fail("E_RESTORE", errno, "pidfd_open(pid %d) of the restorer", getpid());
	for (int attempt = 0; attempt < 8; attempt++) {
		struct clone_args a = { 0 };
		a.flags = CLONE_NEWPID;
		a.exit_signal = SIGCHLD;
		/* pid 1 of the new namespace is the app's root (its host pid is free) */
		pid_t tids[1] = { 1 };
		if (rs->root_is_init) {
			a.set_tid = (uint64_t)(uintptr_t)tids;
			a.set_tid_size = 1;
		}
		fflush(stdout);
		fflush(stderr);
		long c = clone3_raw(&a);
		if (c < 0) {
			int e = errno;
			close(self);
			return fail("E_RESTORE", e, "clone3(CLONE_NEWPID%s) for the app's PID namespace", rs->root_is_init ? ", set_tid {1}" : "");
		}
		if (c == 0) {
			close(rs->ready_pipe[0]);
			struct pollfd gone = { self, POLLIN, 0 };
			if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) || poll(&gone, 1, 0) != 0)
				_exit(124);
			if (rs->root_is_init) {
				/* a session of its own if it led one (`understudy run`'s
				 * apps, daemons); otherwise it stays in the restorer's
				 * session, which is outside the namespace as its old one
				 * was: getsid() gives 0 in both cases */
				if (root->pr->ns_sid == 1)
					setsid();
				skeleton_main(rs);
			}
			reaper_main(rs, root->pr->ns_pid, root->pid);
		}
		rs->reaper = c;
		if (rs->root_is_init) {
			root->pid = (pid_t)c;
			root->tasks[0].tid = (pid_t)c;
		} else if (is_app_id(rs, c)) {
			/* the kernel gave the reaper a pid the app needs: try again */
			kill(c, SIGKILL);
			waitpid(c, NULL, 0);
			rs->reaper = 0;
			continue;
		}
		break;
	}
	close(self);
	if (!rs->reaper)
		return fail("E_PID_TAKEN", 0, "could not start the namespace's reaper on a pid the app does not need");
	close(rs->ready_pipe[1]);
	rs->ready_pipe[1] = -1;
	if (!rs->root_is_init) {
		close(rs->commit_pipe[0]);
		close(rs->ack_pipe[1]);
		rs->commit_pipe[0] = rs->ack_pipe[1] = -1;
	}
	uint64_t stub = 0;
	int cerr = 0;
	if (read_ready(rs, &stub, &cerr))
		return -1;
	if (!stub) {
		if (cerr)
			return fail(cerr == EEXIST ? "E_PID_TAKEN" : "E_RESTORE", cerr,
				    "clone3(set_tid {%d, %d}) of the app's root in its new namespace", root->pr->ns_pid, root->pid);
		return fail("E_RESTORE", 0, "no free address for the stub region in the app's root");
	}
	rs->stub = stub;
	close(rs->ready_pipe[0]);
	rs->ready_pipe[0] = -1;
	vlog("namespace up: reaper %d, root %d, stub 0x%llx", rs->reaper, root->pid, (unsigned long long)stub);
	/* test hook: die before the root is seized, as a restorer killed just
	 * then would */
	const char *die = getenv("UNDERSTUDY_RESTORE_DIE_BEFORE_SEIZE");
	if (die)
		_exit(99);
	struct rtask *t = &root->tasks[0];
	if (seize_task(t->tid, true) || task_prepare(t))
		return -1;
	root->created = true;
	/* traced with PTRACE_O_EXITKILL from here on; and the app must outlive
	 * this process once restored */
	if (rs->root_is_init && inj_ok(t, "prctl(PR_SET_PDEATHSIG, 0)", SYS_prctl, PR_SET_PDEATHSIG, 0, 0, 0, 0, 0, NULL))
		return -1;
	return 0;
}

int tree_create_child(struct restorer *rs, struct rproc *p)
{
	struct rproc *par = &rs->procs[p->parent];
	struct rtask *pt = &par->tasks[0];
	pid_t got = 0;
	int rc = inj_clone3(pt, par->pid, 0, SIGCHLD, p->pr->ns_pid, rs->root_is_init ? 0 : p->pid, "a child", &got);
	if (got > 0) {
		/* from here on the cleanup kills it by this pid (never by the image's) */
		p->pid = got;
		p->tasks[0].tid = got;
		p->created = true;
	}
	return rc || task_prepare(&p->tasks[0]) ? -1 : 0;
}

int tree_create(struct restorer *rs)
{
	for (size_t i = 0; i < rs->nprocs; i++) {
		struct rproc *p = &rs->procs[i];
		if (i == 0) {
			if (start_namespace(rs))
				return -1;
			/* the root skeleton: drop what it inherited from the restorer */
			if (mem_clean(p) || signals_reset(p))
				return -1;
		} else if (tree_create_child(rs, p)) {
			return -1;
		}
		if (p->pr->sid == p->pr->pid && !(i == 0 && rs->root_is_init) && inj_ok(&p->tasks[0], "setsid", SYS_setsid, 0, 0, 0, 0, 0, 0, NULL))
			return -1;
	}
	/* process groups: leaders first, then members (same session only) */
	for (int pass = 0; pass < 2; pass++)
		for (size_t i = 0; i < rs->nprocs; i++) {
			struct rproc *p = &rs->procs[i];
			if (p->pr->sid == p->pr->pid)
				continue; /* a session leader leads its group */
			bool leader = p->pr->pgid == p->pr->pid;
			if ((pass == 0) != leader)
				continue;
			if (!leader && find_idx(rs, p->pr->pgid) < 0)
				continue; /* a group outside the app: keep the inherited one */
			if (inj_ok(&p->tasks[0], "setpgid", SYS_setpgid, 0, leader ? 0 : p->pr->ns_pgid, 0, 0, 0, 0, NULL))
				return -1;
		}
	return 0;
}

void tree_kill(struct restorer *rs)
{
	if (rs->reaper > 0)
		kill(rs->reaper, SIGKILL);
	for (size_t i = 0; i < rs->nprocs; i++)
		if (rs->procs[i].created)
			kill(rs->procs[i].pid, SIGKILL);
	uint64_t until = now_ns() + 3000000000ULL;
	while (now_ns() < until) {
		int st;
		pid_t w = waitpid(-1, &st, __WALL | WNOHANG);
		if (w < 0 && errno == ECHILD)
			break;
		if (w <= 0)
			usleep(1000);
	}
	rs->reaper = 0;
}

int tree_set_stub_candidates(struct restorer *rs, const uint64_t *c, int n)
{
	rs->nstub = n > 16 ? 16 : n;
	memcpy(rs->stub_cands, c, rs->nstub * sizeof(uint64_t));
	return 0;
}
