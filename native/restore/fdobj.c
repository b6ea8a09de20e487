/* Pipes, eventfds, epoll instances, and fds that share an open file
 * description (Fd.ofd_id), rebuilt at their fd numbers.
 *
 * A description is created once, by the first process (restore order) that
 * holds it; every later holder gets the same description: a dup3 in the same
 * process, or, in another process, an injected pidfd_open(holder) +
 * pidfd_getfd(holder's fd) + dup3, so offsets and status flags stay shared.
 * A pipe is created with pipe2 in the first process holding either end; both
 * ends wait at temporary fds above the process's highest fd until an fd of
 * the image claims them; its size is set (F_SETPIPE_SZ) and its unread bytes
 * written into it before anything runs. An end that no process of the app
 * held (closed for good) is closed when every process is rebuilt
 * (fdobj_finish). An eventfd is created with eventfd2 and its counter written
 * back; an epoll instance with epoll_create1, its interest list added with
 * epoll_ctl(ADD) once every fd of its process exists. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "restore.h"

#ifndef F_SETPIPE_SZ
#define F_SETPIPE_SZ 1031
#endif
/* pipe data goes through the rest of the scratch pages (STUB_TMP is only
 * staging for the [vdso] moves and is unmapped after them) */
#define FDOBJ_BUF (STUB_SCRATCH + SCR_BUF_OFF)
#define FDOBJ_BUF_LEN (STUB_SCRATCH_LEN - SCR_BUF_OFF)

typedef Understudy__V1__Fd Fd;

struct ofd { /* a description already in place */
	uint64_t id;
	struct rproc *p;
	int fd;
};
struct rpipe {
	uint64_t id;
	const Understudy__V1__Pipe *state; /* the fd that carries size and data */
	struct rproc *creator;		   /* NULL until created */
	int tmp[2];			   /* temporary fds of the ends in the creator, -1 once claimed */
};
static struct rpipe *pipe_find(struct restorer *rs, uint64_t id)
{
	for (size_t i = 0; i < rs->npipes; i++)
		if (rs->pipes[i].id == id)
			return &rs->pipes[i];
	return NULL;
}

static bool has_fd(const Proc *pr, int fd)
{
	for (size_t i = 0; i < pr->n_fds; i++)
		if (pr->fds[i]->fd == fd)
			return true;
	return false;
}

/* Everything that can be wrong in the image is refused here, before any
 * process is created. */
int fdobj_plan(struct restorer *rs)
{
	size_t total = 0;
	for (size_t i = 0; i < rs->nprocs; i++)
		total += rs->procs[i].pr->n_fds;
	rs->pipes = calloc(total + 1, sizeof(*rs->pipes));
	rs->ofds = calloc(total + 1, sizeof(*rs->ofds));
	if (!rs->pipes || !rs->ofds)
		return fail("E_RESTORE", ENOMEM, "calloc for %zu fds", total);
	rs->capofds = total + 1;
	for (size_t i = 0; i < rs->nprocs; i++) {
		Proc *pr = rs->procs[i].pr;
		for (size_t k = 0; k < pr->n_fds; k++) {
			Fd *f = pr->fds[k];
			if (f->kind == UNDERSTUDY__V1__FD__KIND__PIPE) {
				if (!f->pipe || !f->pipe->id)
					return fail("E_IMAGE_CORRUPT", 0, "pid %d fd %d is a pipe without its pipe record", pr->pid, f->fd);
				struct rpipe *rp = pipe_find(rs, f->pipe->id);
				if (!rp) {
					rp = &rs->pipes[rs->npipes++];
					rp->id = f->pipe->id;
					rp->tmp[0] = rp->tmp[1] = -1;
				}
				if (f->pipe->has_state) {
					if (rp->state)
						return fail("E_IMAGE_CORRUPT", 0, "pipe:[%llu] has its state recorded twice (pid %d fd %d)",
							    (unsigned long long)rp->id, pr->pid, f->fd);
					if (f->pipe->data.len > f->pipe->size)
						return fail("E_IMAGE_CORRUPT", 0,
							    "pipe:[%llu] (pid %d fd %d) holds %zu unread bytes, more than its size %u",
							    (unsigned long long)rp->id, pr->pid, f->fd, f->pipe->data.len, f->pipe->size);
					rp->state = f->pipe;
				}
			} else if (f->kind == UNDERSTUDY__V1__FD__KIND__EVENTFD) {
				if (!f->eventfd)
					return fail("E_IMAGE_CORRUPT", 0, "pid %d fd %d is an eventfd without its eventfd record", pr->pid, f->fd);
				if (f->eventfd->count == ~0ULL)
					return fail("E_IMAGE_CORRUPT", 0, "pid %d fd %d: eventfd count 0x%llx is out of range", pr->pid, f->fd,
						    (unsigned long long)f->eventfd->count);
			} else if (f->kind == UNDERSTUDY__V1__FD__KIND__EPOLL) {
				if (!f->epoll)
					return fail("E_IMAGE_CORRUPT", 0, "pid %d fd %d is an epoll without its epoll record", pr->pid, f->fd);
				for (size_t t = 0; t < f->epoll->n_targets; t++)
					if (!has_fd(pr, f->epoll->targets[t]->tfd))
						return fail("E_IMAGE_CORRUPT", 0,
							    "pid %d: epoll fd %d watches fd %d, which the process does not have", pr->pid, f->fd,
							    f->epoll->targets[t]->tfd);
			}
		}
	}
	return 0;
}

static struct ofd *ofd_find(struct restorer *rs, uint64_t id)
{
	if (!id)
		return NULL;
	for (size_t i = 0; i < rs->nofds; i++)
		if (rs->ofds[i].id == id)
			return &rs->ofds[i];
	return NULL;
}

void fdobj_register(struct rproc *p, const Fd *f)
{
	RS_OF(p);
	if (!f->ofd_id || ofd_find(rs, f->ofd_id) || rs->nofds == rs->capofds)
		return;
	rs->ofds[rs->nofds++] = (struct ofd){ f->ofd_id, p, f->fd };
}

/* fd x of p becomes fd n (with close-on-exec as given); x is gone after */
static int move_fd(struct rproc *p, long x, int n, bool cloexec)
{
	RS_OF(p);
	struct rtask *t = &p->tasks[0];
	char what[96];
	if (x == n) {
		snprintf(what, sizeof(what), "fcntl(fd %d, F_SETFD)", n);
		return inj_ok(t, what, SYS_fcntl, n, F_SETFD, cloexec ? FD_CLOEXEC : 0, 0, 0, 0, NULL);
	}
	snprintf(what, sizeof(what), "dup3(%ld, %d)", x, n);
	if (inj_ok(t, what, SYS_dup3, x, n, cloexec ? O_CLOEXEC : 0, 0, 0, 0, NULL))
		return -1;
	snprintf(what, sizeof(what), "close(%ld)", x);
	return inj_ok(t, what, SYS_close, x, 0, 0, 0, 0, 0, NULL);
}

/* fd n of p becomes the description held by q at its fd qfd */
static int share_from(struct rproc *p, struct rproc *q, int qfd, int n, bool cloexec)
{
	RS_OF(p);
	struct rtask *t = &p->tasks[0];
	char what[160];
	if (p == q) {
		if (qfd == n)
			return fail("E_IMAGE_CORRUPT", 0, "pid %d fd %d is recorded twice", p->pid, n);
		snprintf(what, sizeof(what), "dup3(%d, %d) (one open file description)", qfd, n);
		return inj_ok(t, what, SYS_dup3, qfd, n, cloexec ? O_CLOEXEC : 0, 0, 0, 0, NULL);
	}
	long pidfd, x;
	snprintf(what, sizeof(what), "pidfd_open(pid %d) to share its fd %d as fd %d", q->pr->ns_pid, qfd, n);
	if (inj_ok(t, what, SYS_pidfd_open, q->pr->ns_pid, 0, 0, 0, 0, 0, &pidfd))
		return -1;
	snprintf(what, sizeof(what), "pidfd_getfd(pid %d, fd %d) for fd %d", q->pr->ns_pid, qfd, n);
	int rc = inj_ok(t, what, SYS_pidfd_getfd, pidfd, qfd, 0, 0, 0, 0, &x);
	if (inj_ok(t, "close(pidfd)", SYS_close, pidfd, 0, 0, 0, 0, 0, NULL) || rc)
		return -1;
	return move_fd(p, x, n, cloexec);
}

static int set_status_flags(struct rproc *p, const Fd *f)
{
	RS_OF(p);
	long fl = f->flags & (O_NONBLOCK | O_APPEND);
	char what[96];
	snprintf(what, sizeof(what), "fcntl(fd %d, F_SETFL, 0%lo)", f->fd, fl);
	return inj_ok(&p->tasks[0], what, SYS_fcntl, f->fd, F_SETFL, fl, 0, 0, 0, NULL);
}

static int pipe_create(struct rproc *p, struct rpipe *rp, int base)
{
	RS_OF(p);
	struct rtask *t = &p->tasks[0];
	char what[160];
	if (inj_ok(t, "pipe2", SYS_pipe2, SCR_FDOBJ, O_CLOEXEC | O_NONBLOCK, 0, 0, 0, 0, NULL))
		return -1;
	int ends[2];
	if (peek(p->pid, SCR_FDOBJ, ends, sizeof(ends)))
		return -1;
	for (int e = 0; e < 2; e++) {
		long x;
		snprintf(what, sizeof(what), "fcntl(%d, F_DUPFD_CLOEXEC, %d) for pipe:[%llu]", ends[e], base, (unsigned long long)rp->id);
		if (inj_ok(t, what, SYS_fcntl, ends[e], F_DUPFD_CLOEXEC, base, 0, 0, 0, &x) ||
		    inj_ok(t, "close", SYS_close, ends[e], 0, 0, 0, 0, 0, NULL))
			return -1;
		rp->tmp[e] = (int)x;
	}
	rp->creator = p;
	const Understudy__V1__Pipe *st = rp->state;
	if (!st)
		return 0;
	if (st->size) {
		snprintf(what, sizeof(what), "fcntl(F_SETPIPE_SZ, %u) for pipe:[%llu]", st->size, (unsigned long long)rp->id);
		if (inj_ok(t, what, SYS_fcntl, rp->tmp[0], F_SETPIPE_SZ, st->size, 0, 0, 0, NULL))
			return -1;
	}
	for (size_t off = 0; off < st->data.len;) {
		size_t n = st->data.len - off;
		if (n > FDOBJ_BUF_LEN)
			n = FDOBJ_BUF_LEN;
		if (poke(p->pid, FDOBJ_BUF, st->data.data + off, n))
			return -1;
		long w;
		snprintf(what, sizeof(what), "write of %zu unread bytes back into pipe:[%llu]", n, (unsigned long long)rp->id);
		if (inj_ok(t, what, SYS_write, rp->tmp[1], FDOBJ_BUF, n, 0, 0, 0, &w))
			return -1;
		if ((size_t)w != n)
			return fail("E_RESTORE", 0, "pid %d: pipe:[%llu] took %ld of %zu bytes of its unread data", p->pid,
				    (unsigned long long)rp->id, w, n);
		off += n;
	}
	vlog("pid %d: pipe:[%llu] created (size %u, %zu unread bytes)", p->pid, (unsigned long long)rp->id, st->size, st->data.len);
	return 0;
}

static int close_tmp(struct rpipe *rp, int e)
{
	char what[96];
	snprintf(what, sizeof(what), "close(%d) (a temporary end of pipe:[%llu])", rp->tmp[e], (unsigned long long)rp->id);
	int rc = inj_ok(&rp->creator->tasks[0], what, SYS_close, rp->tmp[e], 0, 0, 0, 0, 0, NULL);
	rp->tmp[e] = -1;
	return rc;
}

int fdobj_place(struct rproc *p, const Fd *f, int base, bool *done)
{
	RS_OF(p);
	struct rtask *t = &p->tasks[0];
	char what[160];
	*done = true;
	struct ofd *o = ofd_find(rs, f->ofd_id);
	if (o)
		return share_from(p, o->p, o->fd, f->fd, f->cloexec);
	switch (f->kind) {
	case UNDERSTUDY__V1__FD__KIND__PIPE: {
		struct rpipe *rp = pipe_find(rs, f->pipe->id);
		if (!rp->creator && pipe_create(p, rp, base))
			return -1;
		int e = f->pipe->write_end ? 1 : 0;
		if (rp->tmp[e] < 0)
			return fail("E_IMAGE_CORRUPT", 0, "pid %d fd %d: the %s end of pipe:[%llu] is held through two open file descriptions",
				    p->pid, f->fd, e ? "write" : "read", (unsigned long long)rp->id);
		if (share_from(p, rp->creator, rp->tmp[e], f->fd, f->cloexec) || close_tmp(rp, e) || set_status_flags(p, f))
			return -1;
		break;
	}
	case UNDERSTUDY__V1__FD__KIND__EVENTFD: {
		long x;
		long fl = EFD_CLOEXEC | EFD_NONBLOCK | (f->eventfd->semaphore ? EFD_SEMAPHORE : 0);
		snprintf(what, sizeof(what), "eventfd2(0, 0%lo) for fd %d", fl, f->fd);
		if (inj_ok(t, what, SYS_eventfd2, 0, fl, 0, 0, 0, 0, &x))
			return -1;
		if (f->eventfd->count) {
			uint64_t c = f->eventfd->count;
			long w;
			if (poke(p->pid, SCR_FDOBJ, &c, sizeof(c)))
				return -1;
			snprintf(what, sizeof(what), "write of count %llu into the eventfd for fd %d", (unsigned long long)c, f->fd);
			if (inj_ok(t, what, SYS_write, x, SCR_FDOBJ, 8, 0, 0, 0, &w))
				return -1;
		}
		if (move_fd(p, x, f->fd, f->cloexec) || set_status_flags(p, f))
			return -1;
		break;
	}
	case UNDERSTUDY__V1__FD__KIND__EPOLL: {
		long x;
		snprintf(what, sizeof(what), "epoll_create1 for fd %d", f->fd);
		if (inj_ok(t, what, SYS_epoll_create1, EPOLL_CLOEXEC, 0, 0, 0, 0, 0, &x) || move_fd(p, x, f->fd, f->cloexec))
			return -1;
		break;
	}
	default:
		*done = false; /* a path to open: files.c */
		return 0;
	}
	fdobj_register(p, f);
	return 0;
}

/* the interest lists of the epoll instances p created, once all its fds exist */
int fdobj_epolls(struct rproc *p)
{
	RS_OF(p);
	Proc *pr = p->pr;
	for (size_t i = 0; i < pr->n_fds; i++) {
		Fd *f = pr->fds[i];
		if (f->kind != UNDERSTUDY__V1__FD__KIND__EPOLL)
			continue;
		struct ofd *o = ofd_find(rs, f->ofd_id);
		if (o && (o->p != p || o->fd != f->fd))
			continue; /* a dup, or created by another process: filled there */
		for (size_t k = 0; k < f->epoll->n_targets; k++) {
			Understudy__V1__EpollTarget *tg = f->epoll->targets[k];
			struct __attribute__((packed)) {
				uint32_t events;
				uint64_t data;
			} ev = { tg->events, tg->data };
			if (poke(p->pid, SCR_FDOBJ, &ev, sizeof(ev)))
				return -1;
			char what[160];
			snprintf(what, sizeof(what), "epoll_ctl(epoll fd %d, ADD, fd %d, events 0x%x)", f->fd, tg->tfd, tg->events);
			if (inj_ok(&p->tasks[0], what, SYS_epoll_ctl, f->fd, EPOLL_CTL_ADD, tg->tfd, SCR_FDOBJ, 0, 0, NULL))
				return -1;
		}
	}
	return 0;
}

/* pipe ends no process of the app held: closed for good */
int fdobj_finish(struct restorer *rs)
{
	for (size_t i = 0; i < rs->npipes; i++)
		for (int e = 0; e < 2; e++)
			if (rs->pipes[i].creator && rs->pipes[i].tmp[e] >= 0 && close_tmp(&rs->pipes[i], e))
				return -1;
	return 0;
}

/* the process array moved (apply added or removed processes): the records
 * of descriptions and pipes follow their process by index; a record of a
 * removed process (map[i] < 0) is dropped */
void fdobj_rebase(struct restorer *rs, const struct rproc *old_base, struct rproc *new_base, const int *map)
{
	size_t o = 0;
	for (size_t i = 0; i < rs->nofds; i++) {
		int to = map[rs->ofds[i].p - old_base];
		if (to < 0)
			continue;
		rs->ofds[o] = rs->ofds[i];
		rs->ofds[o++].p = &new_base[to];
	}
	rs->nofds = o;
	for (size_t i = 0; i < rs->npipes; i++) {
		if (!rs->pipes[i].creator)
			continue;
		int to = map[rs->pipes[i].creator - old_base];
		rs->pipes[i].creator = to < 0 ? NULL : &new_base[to];
	}
}

/* apply: is this description already in place in a process of the clone? */
bool fdobj_known(struct restorer *rs, uint64_t ofd_id)
{
	return ofd_id && ofd_find(rs, ofd_id) != NULL;
}

void fdobj_forget(struct restorer *rs, const struct rproc *p, int fd)
{
	size_t o = 0;
	for (size_t i = 0; i < rs->nofds; i++)
		if (rs->ofds[i].p != p || rs->ofds[i].fd != fd)
			rs->ofds[o++] = rs->ofds[i];
	rs->nofds = o;
}
