/* A delta applied in place to a built clone (every task seized and stopped at
 * the stub, registers not yet set): the clone at epoch N becomes the clone at
 * N+1 without being built again. In order:
 *   1. the delta joins the chain (image_extend), every page of it is checked
 *      against its crc32 and every change this code does not rebuild is
 *      refused, before the clone is touched;
 *   2. processes that exited are killed and reaped by their parent in the
 *      clone (its SIGCHLD taken back);
 *   3. in every remaining process: regions no longer there are unmapped, new
 *      or re-created ones mapped, kept ones re-protected; `reset` and
 *      `zeroed` ranges discarded (zero or file content again); the delta's
 *      pages written through /proc/PID/mem (read-only and PROT_NONE regions
 *      included, no mprotect dance); the mm fields and auxv set again;
 *      threads that exited leave with an injected exit(), new ones are
 *      created by the leader with their tids; per-thread state, signal
 *      handlers, scheduling, working directory, umask, rlimits and file
 *      offsets and pending signals follow the delta;
 *   4. processes that appeared are created by their real parent in the clone
 *      (clone3, same pids), emptied, and rebuilt from the image like at build.
 * Registers, signal masks, comm, timer values and credentials are taken from
 * the newest epoch at resume, so they need nothing here. Fds closed since
 * the last epoch are closed, new files, directories, devices and terminals
 * opened, dups of a description the clone holds taken from their holder.
 * What is refused (the restorer answers E_UNSUPPORTED and kills the clone): a
 * new pipe or epoll, changed pipe/eventfd/epoll contents, a new fd with a
 * lock, POSIX timers created or deleted, sessions and process groups,
 * the root directory, [vdso]/[vvar] moves, a region on the restorer's stub,
 * a process that exited with the root, a process re-created on its old pid. */
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <limits.h>
#include <unistd.h>
#include "restore.h"
#include "service.h"

typedef Understudy__V1__EpochMeta Meta;
typedef Understudy__V1__Fd Fd;

static Proc *find_pr(const Meta *m, pid_t pid)
{
	for (size_t i = 0; i < m->n_processes; i++)
		if (m->processes[i]->pid == pid)
			return m->processes[i];
	return NULL;
}

static int proc_idx(const struct restorer *rs, pid_t image_pid)
{
	for (size_t i = 0; i < rs->nprocs; i++)
		if (rs->procs[i].pr->pid == image_pid)
			return (int)i;
	return -1;
}

/* two messages with the same bytes on the wire */
static bool msg_equal(const ProtobufCMessage *a, const ProtobufCMessage *b)
{
	if (!a || !b)
		return a == b;
	size_t la = protobuf_c_message_get_packed_size(a), lb = protobuf_c_message_get_packed_size(b);
	if (la != lb)
		return false;
	if (!la)
		return true;
	uint8_t *x = malloc(la), *y = malloc(lb);
	bool eq = x && y && protobuf_c_message_pack(a, x) == la && protobuf_c_message_pack(b, y) == lb && !memcmp(x, y, la);
	free(x);
	free(y);
	return eq;
}

#define MSG_EQ(a, b) msg_equal((const ProtobufCMessage *)(a), (const ProtobufCMessage *)(b))

/* ---- 1. what is refused, before anything is touched ---- */

static bool is_special(const Vma *v)
{
	return v->kind == UNDERSTUDY__V1__VMA__KIND__VDSO || v->kind == UNDERSTUDY__V1__VMA__KIND__VVAR ||
		v->kind == UNDERSTUDY__V1__VMA__KIND__VSYSCALL;
}

static bool is_private_data(const Vma *v)
{
	return !is_special(v) && v->kind != UNDERSTUDY__V1__VMA__KIND__FILE_SHARED && !(v->kind == UNDERSTUDY__V1__VMA__KIND__ANON && v->shared);
}

static int refuse(pid_t pid, uint32_t epoch, const char *what)
{
	return fail("E_UNSUPPORTED", 0, "epoch %u cannot be applied in place: pid %d: %s; build the clone again at epoch %u", epoch, pid, what,
		    epoch);
}

/* the same fd but for its offset (and its file's size and mtime, which
 * change as it is written: a file's identity is its path, dev and inode) */
static bool fd_same(Fd *a, Fd *b)
{
	uint64_t pa = a->pos, pb = b->pos;
	Understudy__V1__FileId *fa = a->file, *fb = b->file;
	bool same_file =
		(!fa) == (!fb) && (!fa || (!strcmp(fa->path ? fa->path : "", fb->path ? fb->path : "") && fa->dev == fb->dev && fa->ino == fb->ino));
	a->pos = b->pos = 0;
	a->file = b->file = NULL;
	bool eq = a->fd == b->fd && same_file && MSG_EQ(a, b);
	a->pos = pa;
	b->pos = pb;
	a->file = fa;
	b->file = fb;
	return eq;
}

static Fd *fd_of(const Proc *pr, int fd)
{
	for (size_t i = 0; i < pr->n_fds; i++)
		if (pr->fds[i]->fd == fd)
			return pr->fds[i];
	return NULL;
}

/* fds opened or changed since the last epoch: files, directories, devices
 * and terminals are opened again; a dup of a description the clone holds is
 * taken from its holder; what else changed is refused */
static int fds_refused(struct restorer *rs, const Proc *o, const Proc *n, uint32_t ep)
{
	char what[400];
	for (size_t i = 0; i < n->n_fds; i++) {
		Fd *b = n->fds[i], *a = fd_of(o, b->fd);
		if (a && fd_same(a, b))
			continue;
		const char *why = NULL;
		bool obj = b->kind == UNDERSTUDY__V1__FD__KIND__PIPE || b->kind == UNDERSTUDY__V1__FD__KIND__EVENTFD ||
			b->kind == UNDERSTUDY__V1__FD__KIND__EPOLL;
		if (a && a->kind == b->kind && a->ofd_id && a->ofd_id == b->ofd_id && obj)
			why = "its pipe data, eventfd count or epoll interests changed";
		else if (b->n_locks)
			why = "it is new or changed and holds a file lock";
		else if (b->kind == UNDERSTUDY__V1__FD__KIND__UNKNOWN || b->kind == UNDERSTUDY__V1__FD__KIND__EPOLL)
			why = "a new epoll or an fd of unknown kind";
		else if (b->kind == UNDERSTUDY__V1__FD__KIND__PIPE && !fdobj_known(rs, b->ofd_id))
			why = "a new pipe";
		if (why) {
			snprintf(what, sizeof(what), "fd %d (%s): %s", b->fd, b->path ? b->path : "", why);
			return refuse(n->pid, ep, what);
		}
	}
	return 0;
}

static int fds_apply(struct rproc *p, const Proc *o, const Proc *n, struct apply_stats *st)
{
	RS_OF(p);
	char what[300];
	int base = 3;
	for (size_t i = 0; i < n->n_fds; i++)
		if (n->fds[i]->fd >= base)
			base = n->fds[i]->fd + 1;
	for (size_t i = 0; i < o->n_fds; i++) {
		Fd *a = o->fds[i], *b = fd_of(n, a->fd);
		if (b && fd_same(a, b))
			continue;
		snprintf(what, sizeof(what), "close(fd %d, %s) closed or replaced since the last epoch", a->fd, a->path ? a->path : "");
		if (inj_ok(&p->tasks[0], what, SYS_close, a->fd, 0, 0, 0, 0, 0, NULL))
			return -1;
		fdobj_forget(rs, p, a->fd);
		st->fds_closed++;
	}
	for (size_t i = 0; i < n->n_fds; i++) {
		Fd *b = n->fds[i], *a = fd_of(o, b->fd);
		if (a && fd_same(a, b))
			continue;
		bool done;
		if (fdobj_place(p, b, base, &done) || (!done && files_open_one(p, b)))
			return -1;
		vlog("pid %d: fd %d (%s) opened in place", p->pid, b->fd, b->path ? b->path : "");
		st->fds_opened++;
	}
	return 0;
}

static bool timers_same(const Proc *o, const Proc *n)
{
	if (o->n_posix_timers != n->n_posix_timers)
		return false;
	for (size_t i = 0; i < n->n_posix_timers; i++) {
		const Understudy__V1__PosixTimer *a = o->posix_timers[i], *b = n->posix_timers[i];
		if (a->id != b->id || a->clock_id != b->clock_id || a->notify != b->notify || a->signo != b->signo || a->sival != b->sival ||
		    a->target_tid != b->target_tid)
			return false;
	}
	return true;
}

static int specials_refused(const Proc *o, const Proc *n, uint32_t ep)
{
	size_t a = 0, b = 0;
	for (;;) {
		while (a < o->n_vmas && !is_special(o->vmas[a]))
			a++;
		while (b < n->n_vmas && !is_special(n->vmas[b]))
			b++;
		if (a == o->n_vmas || b == n->n_vmas)
			break;
		if (o->vmas[a]->start != n->vmas[b]->start || o->vmas[a]->end != n->vmas[b]->end)
			break;
		a++;
		b++;
	}
	if (a != o->n_vmas || b != n->n_vmas)
		return refuse(n->pid, ep, "its [vdso]/[vvar] mappings moved");
	return 0;
}

static int proc_refused(struct restorer *rs, const Proc *o, const Proc *n, uint32_t ep)
{
	if (n->new_process)
		return refuse(n->pid, ep, "a new process on the pid of one that exited");
	bool root = rs->procs[0].pr->pid == n->pid; /* its parent is outside the app */
	if (o->sid != n->sid || o->pgid != n->pgid || (!root && o->ppid != n->ppid))
		return refuse(n->pid, ep, "its parent, session or process group changed");
	if (strcmp(o->root ? o->root : "", n->root ? n->root : ""))
		return refuse(n->pid, ep, "its root directory changed");
	if (!timers_same(o, n))
		return refuse(n->pid, ep, "POSIX timers were created or deleted");
	if (fds_refused(rs, o, n, ep) || specials_refused(o, n, ep))
		return -1;
	bool leader = false;
	for (size_t t = 0; t < n->n_threads; t++)
		leader |= n->threads[t]->tid == n->pid;
	if (!leader)
		return refuse(n->pid, ep, "its main thread exited");
	for (size_t k = 0; k < n->n_vmas; k++) {
		const Vma *v = n->vmas[k];
		if (v->start < rs->stub + STUB_PAGES * PAGE_SZ && v->end > rs->stub) {
			char what[200];
			snprintf(what, sizeof(what), "a region 0x%llx-0x%llx lies on the restorer's stub at 0x%llx", (unsigned long long)v->start,
				 (unsigned long long)v->end, (unsigned long long)rs->stub);
			return refuse(n->pid, ep, what);
		}
	}
	return 0;
}

/* the delta's page index is sound and every page matches its crc32 */
static int delta_verify(struct restorer *rs, const Meta *m, uint32_t ep, struct apply_stats *st)
{
	struct epoch_img *e = &rs->im.ep[ep];
	for (size_t i = 0; i < m->n_processes; i++) {
		Proc *pr = m->processes[i];
		size_t cnt = 0;
		for (size_t r = 0; r < pr->n_pages; r++) {
			Understudy__V1__PageRun *run = pr->pages[r];
			if (run->n_crc32 != run->npages)
				return fail("E_IMAGE_CORRUPT", 0, "epoch %u pid %d: page run at 0x%llx has %u pages but %zu crc32s", ep, pr->pid,
					    (unsigned long long)run->vaddr, run->npages, run->n_crc32);
			if (run->offset % PAGE_SZ || run->offset + (uint64_t)run->npages * PAGE_SZ > e->pages_len)
				return fail("E_IMAGE_CORRUPT", 0, "epoch %u pid %d: page run at 0x%llx points past the end of %s/pages.bin", ep,
					    pr->pid, (unsigned long long)run->vaddr, e->dir);
			cnt += run->npages;
		}
		if (!cnt)
			continue;
		struct page_ref *v = malloc(cnt * sizeof(*v));
		if (!v)
			return fail("E_RESTORE", ENOMEM, "malloc for %zu page refs", cnt);
		size_t c = 0;
		for (size_t r = 0; r < pr->n_pages; r++)
			for (uint32_t k = 0; k < pr->pages[r]->npages; k++)
				v[c++] = (struct page_ref){ pr->pages[r]->vaddr + k * PAGE_SZ, ep, pr->pages[r]->offset + k * PAGE_SZ,
							    pr->pages[r]->crc32[k] };
		int rc = image_verify_refs(&rs->im, pr->pid, v, c);
		free(v);
		if (rc)
			return -1;
		st->pages += cnt;
	}
	return 0;
}

/* ---- 2. processes that exited ---- */

static int wait_gone(pid_t tid)
{
	for (;;) {
		int s;
		pid_t w = waitpid(tid, &s, __WALL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == ECHILD)
				return 0;
			return fail("E_RESTORE", errno, "waitpid(tid %d) for its exit", tid);
		}
		if (WIFEXITED(s) || WIFSIGNALED(s))
			return 0;
		/* a stop on the way out (PTRACE_EVENT_EXIT is not asked for): let it go on */
		if (ptrace(PTRACE_CONT, tid, 0, 0) && errno != ESRCH)
			return fail("E_RESTORE", errno, "ptrace(PTRACE_CONT, tid %d) on its way out", tid);
	}
}

/* the clone's copy of a process that exited: killed; its parent in the clone
 * reaps it (the SIGCHLD it gets goes with the parent's pending signals) */
static int proc_remove(struct restorer *rs, struct rproc *p, const Meta *m)
{
	struct rproc *par = p->parent >= 0 ? &rs->procs[p->parent] : NULL;
	if (!par)
		return fail("E_UNSUPPORTED", 0, "epoch %u: the app's root (pid %d) exited: nothing is left to apply to", m->epoch, p->pr->pid);
	vlog("pid %d exited at epoch %u: killed in the clone", p->pid, m->epoch);
	if (kill(p->pid, SIGKILL))
		return fail("E_RESTORE", errno, "kill(pid %d, SIGKILL) of a process that exited at epoch %u", p->pid, m->epoch);
	for (size_t k = p->ntasks; k-- > 0;)
		if (wait_gone(p->tasks[k].tid))
			return -1;
	p->created = false;
	char what[128];
	snprintf(what, sizeof(what), "wait4(%d) of its exited child", p->pr->ns_pid);
	if (inj_ok(&par->tasks[0], what, SYS_wait4, p->pr->ns_pid, 0, __WALL, 0, 0, 0, NULL))
		return -1;
	return 0;
}

/* ---- 3. a process that lives on ---- */

struct seg {
	uint64_t s, e;
	const Vma *o; /* the old region the piece is kept from (NULL: none) */
};

/* can the old region o's content at an address stay for the new region n? */
static bool compatible(const Vma *o, const Vma *n)
{
	if (o->kind != n->kind || o->shared != n->shared || is_special(o) || is_special(n))
		return false;
	if (o->kind == UNDERSTUDY__V1__VMA__KIND__ANON)
		return true;
	if (o->inode != n->inode || o->dev_major != n->dev_major || o->dev_minor != n->dev_minor)
		return false;
	return (int64_t)(o->pgoff - o->start) == (int64_t)(n->pgoff - n->start);
}

static int inj_range(struct rproc *p, const char *call, long nr, uint64_t s, uint64_t e, long a2)
{
	char what[160];
	snprintf(what, sizeof(what), "%s(0x%llx-0x%llx, %ld)", call, (unsigned long long)s, (unsigned long long)e, a2);
	return inj_ok(&p->tasks[0], what, nr, s, e - s, a2, 0, 0, 0, NULL);
}

/* a piece of region v mapped afresh (zero or file content) */
static int map_piece(struct rproc *p, const Vma *v, uint64_t s, uint64_t e)
{
	struct rtask *t = &p->tasks[0];
	long flags = MAP_FIXED | (v->shared ? MAP_SHARED : MAP_PRIVATE);
	char what[700];
	snprintf(what, sizeof(what), "mmap(0x%llx-0x%llx %s)", (unsigned long long)s, (unsigned long long)e,
		 v->name && v->name[0] ? v->name : "anonymous");
	if (v->kind == UNDERSTUDY__V1__VMA__KIND__ANON) {
		if (v->name && !strcmp(v->name, "[stack]"))
			flags |= MAP_GROWSDOWN;
		if (inj_ok(t, what, SYS_mmap, s, e - s, v->prot, flags | MAP_ANONYMOUS, -1, 0, NULL))
			return -1;
		size_t nl = v->name ? strlen(v->name) : 0;
		if (nl > 7 && nl < 90 && !strncmp(v->name, "[anon:", 6) && v->name[nl - 1] == ']') {
			char nm[96];
			snprintf(nm, sizeof(nm), "%.*s", (int)(nl - 7), v->name + 6);
			uint64_t sp = scratch_str(p, nm);
			if (!sp || inj_ok(t, "prctl(PR_SET_VMA_ANON_NAME)", SYS_prctl, 0x53564d41 /* PR_SET_VMA */, 0, s, e - s, sp, 0, NULL))
				return -1;
		}
		return 0;
	}
	const char *path = v->file && v->file->path && v->file->path[0] ? v->file->path : v->name;
	bool rw = v->shared && (v->prot & PROT_WRITE);
	uint64_t sp = scratch_str(p, path);
	long fd;
	char ow[600];
	snprintf(ow, sizeof(ow), "open(%s) for its mapping at 0x%llx", path, (unsigned long long)s);
	if (!sp || inj_ok(t, ow, SYS_openat, AT_FDCWD, sp, (rw ? O_RDWR : O_RDONLY) | O_CLOEXEC, 0, 0, 0, &fd))
		return -1;
	int rc = inj_ok(t, what, SYS_mmap, s, e - s, v->prot, flags, fd, v->pgoff + (s - v->start), NULL);
	if (inj_ok(t, "close", SYS_close, fd, 0, 0, 0, 0, 0, NULL))
		rc = -1;
	return rc;
}

/* the pieces of [s, e) outside every range of `cover` (sorted by start) */
static size_t subtract(uint64_t s, uint64_t e, const struct seg *cover, size_t nc, struct seg *out, size_t cap)
{
	size_t n = 0;
	uint64_t at = s;
	for (size_t i = 0; i < nc && at < e; i++) {
		if (cover[i].e <= at || cover[i].s >= e)
			continue;
		if (cover[i].s > at && n < cap)
			out[n++] = (struct seg){ at, cover[i].s, NULL };
		if (cover[i].e > at)
			at = cover[i].e;
	}
	if (at < e && n < cap)
		out[n++] = (struct seg){ at, e, NULL };
	return n;
}

static int regions_apply(struct rproc *p, const Proc *o, const Proc *n, struct apply_stats *st)
{
	size_t cap = o->n_vmas + n->n_vmas + 4;
	struct seg *cov = malloc(cap * sizeof(*cov)), *pieces = malloc(cap * sizeof(*pieces));
	int rc = 0;
	if (!cov || !pieces) {
		rc = fail("E_RESTORE", ENOMEM, "malloc for the region lists of pid %d", p->pid);
		goto out;
	}
	/* old regions (or parts) no new compatible region keeps: unmapped */
	for (size_t i = 0; i < o->n_vmas && !rc; i++) {
		const Vma *ov = o->vmas[i];
		if (is_special(ov))
			continue;
		size_t nc = 0;
		for (size_t k = 0; k < n->n_vmas && nc < cap; k++) {
			const Vma *nv = n->vmas[k];
			if (nv->end > ov->start && nv->start < ov->end && compatible(ov, nv))
				cov[nc++] = (struct seg){ nv->start > ov->start ? nv->start : ov->start, nv->end < ov->end ? nv->end : ov->end, ov };
		}
		size_t np = subtract(ov->start, ov->end, cov, nc, pieces, cap);
		for (size_t k = 0; k < np && !rc; k++)
			rc = inj_range(p, "munmap", SYS_munmap, pieces[k].s, pieces[k].e, 0);
		st->unmapped += np ? 1 : 0;
	}
	/* new regions: kept parts re-protected, the rest mapped afresh */
	for (size_t k = 0; k < n->n_vmas && !rc; k++) {
		const Vma *nv = n->vmas[k];
		if (is_special(nv))
			continue;
		size_t nc = 0;
		for (size_t i = 0; i < o->n_vmas && nc < cap; i++) {
			const Vma *ov = o->vmas[i];
			if (ov->end > nv->start && ov->start < nv->end && compatible(ov, nv))
				cov[nc++] = (struct seg){ ov->start > nv->start ? ov->start : nv->start, ov->end < nv->end ? ov->end : nv->end, ov };
		}
		bool reprot = false;
		for (size_t i = 0; i < nc && !rc; i++)
			if (cov[i].o->prot != nv->prot) {
				rc = inj_range(p, "mprotect", SYS_mprotect, cov[i].s, cov[i].e, nv->prot);
				reprot = true;
			}
		st->reprotected += reprot;
		size_t np = subtract(nv->start, nv->end, cov, nc, pieces, cap);
		for (size_t i = 0; i < np && !rc; i++)
			rc = map_piece(p, nv, pieces[i].s, pieces[i].e);
		st->mapped += np ? 1 : 0;
	}
	/* reset and zeroed ranges: their earlier content is void */
	const Understudy__V1__Range *const *rr[2] = { (const Understudy__V1__Range *const *)n->reset,
						      (const Understudy__V1__Range *const *)n->zeroed };
	size_t rn[2] = { n->n_reset, n->n_zeroed };
	for (int w = 0; w < 2 && !rc; w++)
		for (size_t i = 0; i < rn[w] && !rc; i++)
			for (size_t k = 0; k < n->n_vmas && !rc; k++) {
				const Vma *nv = n->vmas[k];
				uint64_t s = rr[w][i]->start > nv->start ? rr[w][i]->start : nv->start;
				uint64_t e = rr[w][i]->end < nv->end ? rr[w][i]->end : nv->end;
				if (s < e && is_private_data(nv))
					rc = inj_range(p, "madvise", SYS_madvise, s, e, MADV_DONTNEED);
			}
out:
	free(cov);
	free(pieces);
	return rc;
}

/* the delta's pages of the process: batched process_vm_writev into writable
 * regions; /proc/PID/mem (which, for the tracer, writes read-only and
 * PROT_NONE private regions too) for the others and for a batch the fast
 * path could not write whole */
struct wbatch {
	pid_t pid;
	int memfd;
	const char *path;
	struct iovec loc[IOV_MAX], rem[IOV_MAX];
	int n;
	size_t bytes;
};

static int mem_pwrite(struct wbatch *w, const uint8_t *src, uint64_t at, size_t len)
{
	size_t done = 0;
	while (done < len) {
		ssize_t r = pwrite(w->memfd, src + done, len - done, (off_t)(at + done));
		if (r <= 0)
			return fail("E_RESTORE", r < 0 ? errno : EIO, "pwrite(%s, 0x%llx, %zu bytes) of a delta's pages", w->path,
				    (unsigned long long)(at + done), len - done);
		done += (size_t)r;
	}
	return 0;
}

static int batch_flush(struct wbatch *w)
{
	if (!w->n)
		return 0;
	ssize_t r = process_vm_writev(w->pid, w->loc, w->n, w->rem, w->n, 0);
	int rc = 0;
	if (r != (ssize_t)w->bytes)
		for (int i = 0; i < w->n && !rc; i++)
			rc = mem_pwrite(w, w->loc[i].iov_base, (uint64_t)(uintptr_t)w->rem[i].iov_base, w->loc[i].iov_len);
	w->n = 0;
	w->bytes = 0;
	return rc;
}

static int pages_apply(struct restorer *rs, struct rproc *p, const Proc *n, uint32_t ep, struct apply_stats *st)
{
	if (!n->n_pages)
		return 0;
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/mem", p->pid);
	struct wbatch *w = malloc(sizeof(*w));
	if (!w)
		return fail("E_RESTORE", ENOMEM, "malloc for a write batch");
	w->pid = p->pid;
	w->path = path;
	w->n = 0;
	w->bytes = 0;
	w->memfd = open(path, O_RDWR | O_CLOEXEC);
	if (w->memfd < 0) {
		free(w);
		return fail("E_RESTORE", errno, "open(%s)", path);
	}
	const struct epoch_img *e = &rs->im.ep[ep];
	int rc = 0;
	size_t k0 = 0; /* runs and regions are both in address order */
	for (size_t r = 0; r < n->n_pages && !rc; r++) {
		const Understudy__V1__PageRun *run = n->pages[r];
		uint64_t va = run->vaddr, end = run->vaddr + (uint64_t)run->npages * PAGE_SZ;
		if (r && run->vaddr < n->pages[r - 1]->vaddr)
			k0 = 0;
		while (k0 < n->n_vmas && n->vmas[k0]->end <= va)
			k0++;
		/* clipped to the private regions (a page elsewhere has nowhere to go) */
		for (size_t k = k0; k < n->n_vmas && n->vmas[k]->start < end && !rc; k++) {
			const Vma *v = n->vmas[k];
			uint64_t s = va > v->start ? va : v->start, t = end < v->end ? end : v->end;
			if (s >= t || !is_private_data(v))
				continue;
			const uint8_t *src = e->pages + run->offset + (s - va);
			if (!(v->prot & PROT_WRITE)) {
				rc = mem_pwrite(w, src, s, t - s);
			} else {
				w->loc[w->n] = (struct iovec){ (void *)src, t - s };
				w->rem[w->n] = (struct iovec){ (void *)(uintptr_t)s, t - s };
				w->n++;
				w->bytes += t - s;
				if (w->n == IOV_MAX || w->bytes >= (64u << 20))
					rc = batch_flush(w);
			}
			st->bytes += t - s;
		}
	}
	if (!rc)
		rc = batch_flush(w);
	close(w->memfd);
	free(w);
	rs->bytes_written += st->bytes;
	return rc;
}

static int misc_apply(struct rproc *p, const Proc *o, const Proc *n)
{
	RS_OF(p);
	struct rtask *t = &p->tasks[0];
	char what[600];
	if (n->cwd && n->cwd[0] && strcmp(n->cwd, o->cwd ? o->cwd : "")) {
		uint64_t sp = scratch_str(p, n->cwd);
		snprintf(what, sizeof(what), "chdir(%s)", n->cwd);
		if (!sp || inj_ok(t, what, SYS_chdir, sp, 0, 0, 0, 0, 0, NULL))
			return -1;
	}
	if (n->umask != o->umask && inj_ok(t, "umask", SYS_umask, n->umask, 0, 0, 0, 0, 0, NULL))
		return -1;
	if (n->personality != o->personality && inj_ok(t, "personality", SYS_personality, n->personality, 0, 0, 0, 0, 0, NULL))
		return -1;
	for (size_t i = 0; i < n->n_rlimits; i++) {
		Understudy__V1__Rlimit *r = n->rlimits[i];
		struct rlimit cur, want = { r->cur, r->max };
		if (prlimit(p->pid, r->resource, NULL, &cur))
			return fail("E_RESTORE", errno, "prlimit(pid %d, resource %d)", p->pid, r->resource);
		if (cur.rlim_cur == want.rlim_cur && cur.rlim_max == want.rlim_max)
			continue;
		if (want.rlim_max > cur.rlim_max)
			want.rlim_max = cur.rlim_max; /* a hard limit cannot be raised here (no CAP_SYS_RESOURCE) */
		if (want.rlim_cur > want.rlim_max)
			want.rlim_cur = want.rlim_max;
		if (prlimit(p->pid, r->resource, &want, NULL))
			return fail("E_RESTORE", errno, "prlimit(pid %d, resource %d, %llu/%llu)", p->pid, r->resource,
				    (unsigned long long)want.rlim_cur, (unsigned long long)want.rlim_max);
	}
	/* offsets of the fds that stayed */
	for (size_t i = 0; i < n->n_fds; i++) {
		Fd *b = n->fds[i], *a = fd_of(o, b->fd);
		if (!a || !fd_same(a, b) || a->pos == b->pos ||
		    (b->kind != UNDERSTUDY__V1__FD__KIND__REGULAR && b->kind != UNDERSTUDY__V1__FD__KIND__DIRECTORY))
			continue;
		snprintf(what, sizeof(what), "lseek(fd %d, %llu) (%s)", b->fd, (unsigned long long)b->pos, b->path);
		if (inj_ok(t, what, SYS_lseek, b->fd, (long)b->pos, SEEK_SET, 0, 0, 0, NULL))
			return -1;
	}
	return 0;
}

static bool sigactions_same(const Proc *o, const Proc *n)
{
	if (o->n_sigactions != n->n_sigactions)
		return false;
	for (size_t i = 0; i < n->n_sigactions; i++)
		if (!MSG_EQ(o->sigactions[i], n->sigactions[i]))
			return false;
	return true;
}

/* a thread that exited between the epochs leaves with an injected exit(),
 * its clear-child-tid and robust list dropped first: its exit must not
 * write into the app's memory (a new thread may have its stack and its
 * struct pthread at the same place already) */
static int thread_exit(struct rtask *t)
{
	RS_OF_TASK(t);
	if (inj_ok(t, "set_tid_address(NULL) before exit", SYS_set_tid_address, 0, 0, 0, 0, 0, 0, NULL) ||
	    inj_ok(t, "set_robust_list(NULL) before exit", SYS_set_robust_list, 0, 24, 0, 0, 0, 0, NULL))
		return -1;
	struct user_regs_struct r = t->base;
	r.rax = SYS_exit;
	r.orig_rax = -1;
	r.rip = rs->stub;
	r.rdi = 0;
	if (ptrace(PTRACE_SETREGS, t->tid, 0, &r))
		return fail("E_RESTORE", errno, "ptrace(PTRACE_SETREGS, tid %d) to inject exit", t->tid);
	if (ptrace(PTRACE_CONT, t->tid, 0, 0))
		return fail("E_RESTORE", errno, "ptrace(PTRACE_CONT, tid %d) to let it exit", t->tid);
	return wait_gone(t->tid);
}

/* threads that exited leave first, before any page is written (their tids
 * may come back for new ones) */
static int threads_exit(struct rproc *p, const Proc *n, struct apply_stats *st)
{
	size_t keep = 0;
	for (size_t k = 0; k < p->ntasks; k++) {
		struct rtask *t = &p->tasks[k];
		bool lives = false;
		for (size_t i = 0; i < n->n_threads && !lives; i++)
			lives = n->threads[i]->tid == t->th->tid;
		if (!lives) {
			vlog("pid %d: thread %d exited: leaves the clone", p->pid, t->tid);
			if (thread_exit(t))
				return -1;
			st->threads_removed++;
			continue;
		}
		p->tasks[keep++] = *t;
	}
	p->ntasks = keep;
	return 0;
}

static int threads_apply(struct rproc *p, const Proc *o, const Proc *n, struct apply_stats *st)
{
	RS_OF(p);
	(void)st;
	for (size_t k = 0; k < p->ntasks; k++) {
		struct rtask *t = &p->tasks[k];
		const Thr *old = t->th;
		for (size_t i = 0; i < n->n_threads; i++)
			if (n->threads[i]->tid == old->tid)
				t->th = n->threads[i];
		if (thread_state_restore(p, t, old))
			return -1;
	}
	/* new ones, created by the leader with their ids */
	size_t add = 0;
	for (size_t i = 0; i < n->n_threads; i++) {
		bool known = false;
		for (size_t k = 0; k < p->ntasks && !known; k++)
			known = p->tasks[k].th == n->threads[i];
		add += !known;
	}
	(void)o;
	if (!add)
		return 0;
	struct rtask *nt = realloc(p->tasks, (p->ntasks + add) * sizeof(*nt));
	if (!nt)
		return fail("E_RESTORE", ENOMEM, "realloc for the threads of pid %d", p->pid);
	p->tasks = nt;
	for (size_t i = 0; i < n->n_threads; i++) {
		Thr *th = n->threads[i];
		bool known = false;
		for (size_t k = 0; k < p->ntasks && !known; k++)
			known = p->tasks[k].th == th;
		if (known)
			continue;
		struct rtask *t = &p->tasks[p->ntasks];
		memset(t, 0, sizeof(*t));
		t->proc = p;
		t->th = th;
		uint64_t flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM;
		pid_t got = 0;
		if (inj_clone3(&p->tasks[0], p->pid, flags, 0, thr_ns_tid(th), rs->root_is_init ? 0 : th->tid, "CLONE_THREAD", &got)) {
			if (got > 0) {
				t->tid = got;
				p->ntasks++;
			}
			return -1;
		}
		t->tid = got;
		p->ntasks++;
		if (task_prepare(t) || thread_state_restore(p, t, NULL))
			return -1;
		st->threads_added++;
		vlog("pid %d: thread %d born: created", p->pid, t->tid);
	}
	return 0;
}

/* pending signals: every thread's queue emptied (rt_sigtimedwait on every
 * signal, no wait), then the delta's queued again by the threads that
 * receive them; this also drops what the apply itself raised (a SIGCHLD of
 * a child reaped above) */
static int pending_apply(struct rproc *p)
{
	RS_OF(p);
	uint64_t all = ~0ULL;
	int64_t zero[2] = { 0, 0 };
	if (poke(p->pid, SCR_ARGS, &all, sizeof(all)) || poke(p->pid, SCR_ARGS + 64, zero, sizeof(zero)))
		return -1;
	for (size_t k = 0; k < p->ntasks; k++) {
		struct rtask *t = &p->tasks[k];
		for (int n = 0;; n++) {
			long ret;
			if (inj(t, SYS_rt_sigtimedwait, SCR_ARGS, 0, SCR_ARGS + 64, 8, 0, 0, &ret, NULL))
				return -1;
			if (ret == -EAGAIN)
				break;
			if (ret < 0 && ret != -EINTR)
				return fail("E_RESTORE", (int)-ret, "rt_sigtimedwait to empty the pending signals of tid %d", t->tid);
			if (n > 4096)
				return fail("E_RESTORE", 0, "tid %d: more than 4096 pending signals to empty", t->tid);
		}
	}
	return signals_queue(p);
}

static int proc_apply(struct restorer *rs, struct rproc *p, Proc *n, uint32_t ep, struct apply_stats *st)
{
	Proc *o = p->pr;
	p->pr = n;
	if (threads_exit(p, n, st) || regions_apply(p, o, n, st) || pages_apply(rs, p, n, ep, st) || mem_mm_fields(p) || fds_apply(p, o, n, st) ||
	    misc_apply(p, o, n) || threads_apply(p, o, n, st))
		return -1;
	if (!sigactions_same(o, n) && (signals_reset(p) || signals_restore(p)))
		return -1;
	return pending_apply(p) || sched_restore(p) ? -1 : 0;
}

/* ---- 4. processes that appeared ---- */

/* the process array grows or shrinks: every pointer into it follows */
static int procs_resize(struct restorer *rs, size_t keep_n, const int *map, size_t new_n)
{
	struct rproc *old = rs->procs;
	struct rproc *nv = calloc(new_n ? new_n : 1, sizeof(*nv));
	if (!nv)
		return fail("E_RESTORE", ENOMEM, "calloc for %zu processes", new_n);
	for (size_t i = 0; i < keep_n; i++)
		if (map[i] >= 0)
			nv[map[i]] = old[i];
	for (size_t i = 0; i < keep_n; i++)
		if (map[i] < 0) {
			free(old[i].tasks);
			free(old[i].pages);
		}
	for (size_t i = 0; i < new_n; i++) {
		nv[i].rs = rs;
		for (size_t k = 0; k < nv[i].ntasks; k++)
			nv[i].tasks[k].proc = &nv[i];
		if (nv[i].parent >= 0 && (size_t)nv[i].parent < keep_n && nv[i].pr)
			nv[i].parent = map[nv[i].parent];
	}
	fdobj_rebase(rs, old, nv, map);
	free(old);
	rs->procs = nv;
	return 0;
}

static int proc_add(struct restorer *rs, struct rproc *p, uint32_t ep, struct apply_stats *st)
{
	Proc *pr = p->pr;
	p->tasks = calloc(pr->n_threads + 1, sizeof(struct rtask));
	if (!p->tasks)
		return fail("E_RESTORE", ENOMEM, "calloc for the threads of pid %d", pr->pid);
	p->pid = pr->pid;
	p->tasks[0].proc = p;
	p->tasks[0].tid = pr->pid;
	p->ntasks = 1;
	for (size_t t = 0; t < pr->n_threads; t++) {
		Thr *th = pr->threads[t];
		if (th->tid == pr->pid) {
			p->tasks[0].th = th;
		} else {
			p->tasks[p->ntasks].proc = p;
			p->tasks[p->ntasks].tid = th->tid;
			p->tasks[p->ntasks].th = th;
			p->ntasks++;
		}
	}
	if (!p->tasks[0].th)
		return fail("E_UNSUPPORTED", 0, "epoch %u: new pid %d has no main thread", ep, pr->pid);
	/* a fork of its parent in the clone: everything it inherited goes */
	size_t nthreads = p->ntasks;
	p->ntasks = 1;
	if (tree_create_child(rs, p))
		return -1;
	vlog("pid %d born at epoch %u: created by pid %d", p->pid, ep, rs->procs[p->parent].pid);
	/* the executable it inherited stays when it is the one in the image (a
	 * fork without exec): the kernel refuses to replace a mapped one */
	const Proc *pp = rs->procs[p->parent].pr;
	p->keep_exe = pr->exe && pp->exe && pr->exe->path && pp->exe->path && !strcmp(pr->exe->path, pp->exe->path);
	if (mem_clean(p) || signals_reset(p))
		return -1;
	if (pr->sid == pr->pid && inj_ok(&p->tasks[0], "setsid", SYS_setsid, 0, 0, 0, 0, 0, 0, NULL))
		return -1;
	if (pr->sid != pr->pid && pr->pgid == pr->pid && inj_ok(&p->tasks[0], "setpgid", SYS_setpgid, 0, 0, 0, 0, 0, 0, NULL))
		return -1;
	if (pr->sid != pr->pid && pr->pgid != pr->pid && proc_idx(rs, pr->pgid) >= 0 &&
	    inj_ok(&p->tasks[0], "setpgid", SYS_setpgid, 0, pr->ns_pgid, 0, 0, 0, 0, NULL))
		return -1;
	p->ntasks = nthreads;
	if (image_page_map(&rs->im, pr->pid, &p->pages, &p->npages) || image_verify_refs(&rs->im, pr->pid, p->pages, p->npages))
		return -1;
	uint64_t before = rs->bytes_written;
	/* threads_create makes the tasks 1.. the image lists */
	if (rebuild_proc(p))
		return -1;
	st->bytes += rs->bytes_written - before;
	free(p->pages);
	p->pages = NULL;
	p->npages = 0;
	st->procs_added++;
	st->threads_added += p->ntasks - 1;
	return 0;
}

static bool known_pid(struct restorer *rs, pid_t pid)
{
	return proc_idx(rs, pid) >= 0;
}

int svc_apply_stats(struct restorer *rs, uint32_t epoch, struct svc_result *out, struct apply_stats *st)
{
	memset(st, 0, sizeof(*st));
	uint64_t t0 = now_ns();
	int rc = 0;
	int *map = NULL;
	if (image_extend(&rs->im, epoch))
		goto failed;
	Meta *m = rs->im.last;
	/* 1. refusals: nothing of the clone is touched before all pass */
	if (delta_verify(rs, m, epoch, st) || check_meta(rs, m, known_pid))
		goto failed;
	size_t nadd = 0;
	for (size_t i = 0; i < m->n_processes; i++) {
		Proc *n = m->processes[i];
		int k = proc_idx(rs, n->pid);
		if (k < 0) {
			nadd++;
			if (proc_idx(rs, n->ppid) < 0 && !find_pr(m, n->ppid))
				rc = fail("E_UNSUPPORTED", 0, "epoch %u: new pid %d's parent %d is not part of the app", epoch, n->pid, n->ppid);
			else if (n->ns_pid == 1)
				rc = fail("E_UNSUPPORTED", 0, "epoch %u: new pid %d is pid 1 of a namespace", epoch, n->pid);
			for (size_t f = 0; !rc && f < n->n_fds; f++) {
				const Fd *fd = n->fds[f];
				bool kernel_obj = fd->kind == UNDERSTUDY__V1__FD__KIND__PIPE || fd->kind == UNDERSTUDY__V1__FD__KIND__EVENTFD ||
					fd->kind == UNDERSTUDY__V1__FD__KIND__EPOLL;
				if (kernel_obj && !fdobj_known(rs, fd->ofd_id)) {
					char what[300];
					snprintf(what, sizeof(what),
						 "new process: its fd %d (%s) is a pipe, eventfd or epoll no process of the clone holds", fd->fd,
						 fd->path ? fd->path : "");
					rc = refuse(n->pid, epoch, what);
				}
			}
		} else if (proc_refused(rs, rs->procs[k].pr, n, epoch)) {
			rc = -1;
		}
		if (rc)
			goto failed;
	}
	/* 2. processes that exited: children before their parents */
	map = malloc((rs->nprocs + nadd + 1) * sizeof(*map));
	if (!map) {
		fail("E_RESTORE", ENOMEM, "malloc");
		goto failed;
	}
	size_t keep = 0, old_n = rs->nprocs;
	for (size_t i = old_n; i-- > 0;) {
		struct rproc *p = &rs->procs[i];
		if (find_pr(m, p->pr->pid))
			continue;
		if (proc_remove(rs, p, m))
			goto failed;
		st->procs_removed++;
	}
	for (size_t i = 0; i < old_n; i++)
		map[i] = find_pr(m, rs->procs[i].pr->pid) ? (int)keep++ : -1;
	if (keep != old_n || nadd) {
		if (procs_resize(rs, old_n, map, keep + nadd))
			goto failed;
		rs->nprocs = keep;
	}
	/* 3. processes that live on */
	for (size_t i = 0; i < rs->nprocs; i++) {
		struct rproc *p = &rs->procs[i];
		if (proc_apply(rs, p, find_pr(m, p->pr->pid), epoch, st))
			goto failed;
	}
	/* 4. new processes, parents first */
	for (bool progress = true; progress && nadd;) {
		progress = false;
		for (size_t i = 0; i < m->n_processes; i++) {
			Proc *n = m->processes[i];
			if (proc_idx(rs, n->pid) >= 0)
				continue;
			int par = proc_idx(rs, n->ppid);
			if (par < 0)
				continue;
			struct rproc *p = &rs->procs[rs->nprocs++];
			memset(p, 0, sizeof(*p));
			p->rs = rs;
			p->pr = n;
			p->parent = par;
			nadd--;
			progress = true;
			if (proc_add(rs, p, epoch, st))
				goto failed;
		}
	}
	if (nadd) {
		fail("E_UNSUPPORTED", 0, "epoch %u: %zu new processes have no parent in the clone", epoch, nadd);
		goto failed;
	}
	free(map);
	image_release_before(&rs->im, epoch);
	st->ns = now_ns() - t0;
	rs->phase[PH_APPLY] += st->ns;
	vlog("epoch %u applied in place: %u pages, %u regions mapped, %u unmapped, %u re-protected, +%u/-%u processes, +%u/-%u threads", epoch,
	     st->pages, st->mapped, st->unmapped, st->reprotected, st->procs_added, st->procs_removed, st->threads_added, st->threads_removed);
	return 0;
failed:
	free(map);
	svc_abort(rs, out);
	return -1;
}
