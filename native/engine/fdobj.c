/* Pipes, eventfds, epoll instances and shared open file descriptions.
 *
 * - Open file descriptions: fds with the same (dev, ino) in any process of
 *   the app are compared with kcmp(KCMP_FILE) (without kcmp: same offset
 *   and status flags from fdinfo, a heuristic); the id of a description is
 *   (pid << 32 | fd) of its first holder (processes in engine order, fds
 *   ascending), so every process computes the same id on its own.
 * - Pipes: both ends must be inside the app, or the missing end closed for
 *   good (poll on a copy of the fd taken with pidfd_getfd: POLLHUP on a read
 *   end without writers, POLLERR on a write end without readers). A pipe
 *   end held by a process outside the app is refused, naming that process
 *   (a scan of /proc/N/fd, once per pipe). The unread bytes are copied with
 *   tee() into a scratch pipe and read from there: the app's pipe keeps them.
 * - eventfd: the counter and EFD_SEMAPHORE from fdinfo.
 * - epoll: the interest list from fdinfo (tfd, events, data); each target
 *   must be the file open at that fd in the same process, which
 *   kcmp(KCMP_EPOLL_TFD) checks, or the interest could not be rebuilt. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/kcmp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "arena.h"
#include "engine.h"
#include "fdobj.h"

#ifndef F_GETPIPE_SZ
#define F_GETPIPE_SZ 1032
#endif
#ifndef F_SETPIPE_SZ
#define F_SETPIPE_SZ 1031
#endif

static long kcmp(pid_t a, pid_t b, int type, unsigned long x, unsigned long y)
{
	return syscall(SYS_kcmp, a, b, type, x, y);
}

Understudy__V1__Fd__Kind fdobj_kind(const char *target)
{
	if (!strncmp(target, "pipe:[", 6))
		return UNDERSTUDY__V1__FD__KIND__PIPE;
	if (!strcmp(target, "anon_inode:[eventfd]"))
		return UNDERSTUDY__V1__FD__KIND__EVENTFD;
	if (!strcmp(target, "anon_inode:[eventpoll]"))
		return UNDERSTUDY__V1__FD__KIND__EPOLL;
	return UNDERSTUDY__V1__FD__KIND__UNKNOWN;
}

static int cmp_ent(const void *a, const void *b)
{
	const struct fdsnap_ent *x = a, *y = b;
	return x->fd - y->fd;
}

/* the fds of one process, ascending, appended to the snapshot; a process
 * gone meanwhile has none, unless it is the one being captured */
static int snap_proc(struct fdobj_ctx *c, pid_t pid, size_t *cap)
{
	char dpath[64];
	snprintf(dpath, sizeof(dpath), "/proc/%d/fd", pid);
	DIR *d = opendir(dpath);
	if (!d) {
		if (errno == ENOENT && pid != c->pid)
			return 0;
		return fail(errno == ENOENT ? "E_NO_SUCH_PROCESS" : "E_NATIVE", errno, "opendir(%s)", dpath);
	}
	size_t first = c->nsnap;
	struct dirent *de;
	int rc = 0;
	while ((de = readdir(d))) {
		if (de->d_name[0] < '0' || de->d_name[0] > '9')
			continue;
		if (c->nsnap == *cap) {
			size_t nc = *cap ? *cap * 2 : 64;
			struct fdsnap_ent *n = realloc(c->snap, nc * sizeof(*n));
			if (!n) {
				rc = fail("E_NATIVE", ENOMEM, "realloc for the fd snapshot");
				break;
			}
			c->snap = n;
			*cap = nc;
		}
		struct fdsnap_ent *e = &c->snap[c->nsnap];
		memset(e, 0, sizeof(*e));
		e->pid = pid;
		e->fd = atoi(de->d_name);
		char lp[96], t[PATH_MAX + 1];
		snprintf(lp, sizeof(lp), "/proc/%d/fd/%d", pid, e->fd);
		ssize_t n = readlink(lp, t, PATH_MAX);
		if (n < 0)
			continue; /* closed meanwhile (only possible outside a barrier) */
		t[n] = 0;
		if (stat(lp, &e->st)) {
			e->stat_errno = errno;
			memset(&e->st, 0, sizeof(e->st));
		}
		if (!strncmp(t, "pipe:", 5)) {
			/* the link's mode mirrors the file's access mode */
			struct stat lst;
			if (lstat(lp, &lst))
				continue;
			bool r = lst.st_mode & S_IRUSR, w = lst.st_mode & S_IWUSR;
			e->flags = r && w ? O_RDWR : w ? O_WRONLY : O_RDONLY;
		}
		e->target = strdup(t);
		if (!e->target) {
			rc = fail("E_NATIVE", ENOMEM, "strdup for the fd snapshot");
			break;
		}
		c->nsnap++;
	}
	closedir(d);
	/* a process with no fd at all: nothing to sort (and snap may be NULL) */
	if (c->nsnap > first)
		qsort(c->snap + first, c->nsnap - first, sizeof(*c->snap), cmp_ent);
	return rc;
}

/* Inside a pause the app's fds cannot change: the snapshot of all its
 * processes is taken by the first walk and shared by the walks of the
 * others, instead of every process's walk reading every process's fds. */
static struct {
	bool on;
	struct fdsnap_ent *snap; /* NULL: not taken yet in this pause */
	size_t nsnap;
} pause_snap;

static void snap_free(struct fdsnap_ent *snap, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(snap[i].target);
	free(snap);
}

void fdobj_pause_snapshot(bool on)
{
	snap_free(pause_snap.snap, pause_snap.nsnap);
	pause_snap.snap = NULL;
	pause_snap.nsnap = 0;
	pause_snap.on = on;
}

int fdobj_begin(struct fdobj_ctx *c, pid_t pid)
{
	memset(c, 0, sizeof(*c));
	c->pid = pid;
	c->pidfd = -1;
	if (pause_snap.on && pause_snap.snap) {
		c->snap = pause_snap.snap;
		c->nsnap = pause_snap.nsnap;
		c->shared = true;
		return 0;
	}
	size_t cap = 0;
	bool own = false;
	for (size_t i = 0; i < E.nprocs; i++) {
		if (E.procs[i].dead)
			continue;
		own |= E.procs[i].pid == pid;
		if (snap_proc(c, E.procs[i].pid, &cap)) {
			fdobj_end(c);
			return -1;
		}
	}
	if (!own && snap_proc(c, pid, &cap)) {
		fdobj_end(c);
		return -1;
	}
	if (pause_snap.on && own && c->snap) {
		pause_snap.snap = c->snap;
		pause_snap.nsnap = c->nsnap;
		c->shared = true;
	}
	return 0;
}

void fdobj_end(struct fdobj_ctx *c)
{
	if (c->pidfd >= 0)
		close(c->pidfd);
	c->pidfd = -1;
	if (!c->shared)
		snap_free(c->snap, c->nsnap);
	c->snap = NULL;
	c->nsnap = 0;
	c->shared = false;
}

/* offset and status flags (close-on-exec is per fd, not per description) */
static bool fdinfo_pos_flags(pid_t pid, int fd, unsigned long long *pos, unsigned long *flags)
{
	char ip[96], *info;
	snprintf(ip, sizeof(ip), "/proc/%d/fdinfo/%d", pid, fd);
	if (read_file(ip, &info) < 0) {
		err_clear();
		return false;
	}
	char *p = strstr(info, "pos:"), *f = strstr(info, "flags:");
	bool ok = p && f;
	if (ok) {
		*pos = strtoull(p + 4, NULL, 10);
		*flags = strtoul(f + 6, NULL, 8) & ~(unsigned long)O_CLOEXEC;
	}
	free(info);
	return ok;
}

static bool same_file(struct fdobj_ctx *c, int fd, const struct fdsnap_ent *e)
{
	if (e->pid == c->pid && e->fd == fd)
		return true;
	long r = kcmp(c->pid, e->pid, KCMP_FILE, fd, e->fd);
	if (r >= 0 || errno != ENOSYS)
		return r == 0;
	/* no kcmp (CONFIG_CHECKPOINT_RESTORE off): the same inode (the caller
	 * checked), offset and status flags stand in for the same description */
	unsigned long long p1, p2;
	unsigned long f1, f2;
	return fdinfo_pos_flags(c->pid, fd, &p1, &f1) && fdinfo_pos_flags(e->pid, e->fd, &p2, &f2) && p1 == p2 && f1 == f2;
}

int fdobj_ofd_id(struct fdobj_ctx *c, int fd, const struct stat *st, uint64_t *id)
{
	*id = (uint64_t)c->pid << 32 | (uint32_t)fd;
	for (size_t i = 0; i < c->nsnap; i++) {
		const struct fdsnap_ent *e = &c->snap[i];
		if (e->st.st_dev != st->st_dev || e->st.st_ino != st->st_ino || e->stat_errno)
			continue;
		if (same_file(c, fd, e)) {
			*id = (uint64_t)e->pid << 32 | (uint32_t)e->fd;
			return 0;
		}
	}
	return 0;
}

/* a copy of the app's fd in the engine (same open file description) */
static int take_fd(struct fdobj_ctx *c, int fd)
{
	if (c->pidfd < 0) {
		c->pidfd = syscall(SYS_pidfd_open, c->pid, 0);
		if (c->pidfd < 0)
			return fail(errno == ESRCH ? "E_NO_SUCH_PROCESS" : "E_NATIVE", errno, "pidfd_open(pid %d)", c->pid);
	}
	int x = syscall(SYS_pidfd_getfd, c->pidfd, fd, 0);
	if (x < 0)
		return fail("E_NATIVE", errno, "pidfd_getfd(pid %d, fd %d)", c->pid, fd);
	return x;
}

bool is_app_pid(pid_t pid)
{
	for (size_t i = 0; i < E.nprocs; i++)
		if (!E.procs[i].dead && E.procs[i].pid == pid)
			return true;
	return false;
}

/* A process (not this engine; outside the app only if asked) with an fd
 * whose link reads `want`; 0 if none. */
pid_t fd_holder(const char *want, bool outside_only, int *hfd, char *comm, size_t clen)
{
	DIR *d = opendir("/proc");
	if (!d)
		return 0;
	pid_t self = getpid(), found = 0;
	struct dirent *de;
	while (!found && (de = readdir(d))) {
		if (de->d_name[0] < '0' || de->d_name[0] > '9')
			continue;
		pid_t p = atoi(de->d_name);
		if (p == self || (outside_only && is_app_pid(p)))
			continue;
		char dp[64];
		snprintf(dp, sizeof(dp), "/proc/%d/fd", p);
		DIR *fdd = opendir(dp);
		if (!fdd)
			continue;
		struct dirent *fe;
		while ((fe = readdir(fdd))) {
			if (fe->d_name[0] < '0' || fe->d_name[0] > '9')
				continue;
			char lp[96], t[64];
			snprintf(lp, sizeof(lp), "/proc/%d/fd/%s", p, fe->d_name);
			ssize_t n = readlink(lp, t, sizeof(t) - 1);
			if (n <= 0)
				continue;
			t[n] = 0;
			if (!strcmp(t, want)) {
				found = p;
				*hfd = atoi(fe->d_name);
				break;
			}
		}
		closedir(fdd);
	}
	closedir(d);
	comm[0] = 0;
	if (found) {
		char cp[64], *buf;
		snprintf(cp, sizeof(cp), "/proc/%d/comm", found);
		if (read_file(cp, &buf) >= 0) {
			buf[strcspn(buf, "\n")] = 0;
			snprintf(comm, clen, "%s", buf);
			free(buf);
		}
		err_clear();
	}
	return found;
}

/* pipes already seen without a holder outside the app: a pipe inode number
 * is not reused while the pipe exists, and a pipe end reaches another
 * process only by fork (part of the app when children are included: without
 * them every barrier scans again) or SCM_RIGHTS (sockets are refused) */
static uint64_t *verified;
static size_t nverified, capverified;

static bool pipe_verified(uint64_t ino)
{
	for (size_t i = 0; i < nverified; i++)
		if (verified[i] == ino)
			return true;
	return false;
}

static void pipe_mark_verified(uint64_t ino)
{
	if (nverified == capverified) {
		size_t nc = capverified ? capverified * 2 : 64;
		uint64_t *n = realloc(verified, nc * sizeof(*n));
		if (!n)
			return; /* checked again next time */
		verified = n;
		capverified = nc;
	}
	verified[nverified++] = ino;
}

static pid_t outside_holder(uint64_t ino, int *hfd, char *comm, size_t clen)
{
	char want[48];
	snprintf(want, sizeof(want), "pipe:[%llu]", (unsigned long long)ino);
	return fd_holder(want, true, hfd, comm, clen);
}

static uint32_t fdinfo_flags(const char *info)
{
	const char *q = strstr(info, "flags:");
	return q ? strtoul(q + 6, NULL, 8) : 0;
}

/* the unread bytes of the pipe whose read end is x, without consuming them */
static int pipe_peek(pid_t pid, int fd, int x, uint32_t size, Understudy__V1__Pipe *pp)
{
	int avail = 0;
	if (ioctl(x, FIONREAD, &avail))
		return fail("E_NATIVE", errno, "ioctl(FIONREAD) on pid %d fd %d (a pipe)", pid, fd);
	if (avail <= 0)
		return 0;
	int s[2];
	if (pipe2(s, O_CLOEXEC | O_NONBLOCK))
		return fail("E_NATIVE", errno, "pipe2 (scratch pipe to copy pid %d fd %d)", pid, fd);
	int rc = 0;
	uint8_t *buf = NULL;
	if (fcntl(s[1], F_SETPIPE_SZ, size) < 0) {
		rc = fail("E_NATIVE", errno, "fcntl(F_SETPIPE_SZ, %u) on the scratch pipe for pid %d fd %d", size, pid, fd);
		goto out;
	}
	/* one tee() takes every buffer of the source (the scratch pipe has as
	 * many slots); a second call would copy from the start again */
	ssize_t t = tee(x, s[1], (size_t)avail, SPLICE_F_NONBLOCK);
	if (t < 0) {
		rc = fail("E_NATIVE", errno, "tee(pid %d fd %d -> scratch pipe, %d bytes)", pid, fd, avail);
		goto out;
	}
	if (t != avail) {
		rc = fail("E_NATIVE", 0, "tee(pid %d fd %d) copied %zd of the pipe's %d unread bytes", pid, fd, t, avail);
		goto out;
	}
	buf = amalloc(avail);
	if (!buf) {
		rc = -1;
		goto out;
	}
	size_t got = 0;
	while (got < (size_t)avail) {
		ssize_t r = read(s[0], buf + got, avail - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			rc = fail("E_NATIVE", r < 0 ? errno : EIO, "read of the scratch copy of pid %d fd %d (%zu of %d bytes)", pid, fd, got, avail);
			goto out;
		}
		got += r;
	}
	pp->data.data = buf;
	pp->data.len = avail;
out:
	close(s[0]);
	close(s[1]);
	return rc;
}

static int do_pipe(struct fdobj_ctx *c, int fd, const char *target, const struct stat *st, const char *info, Understudy__V1__Fd *f)
{
	pid_t pid = c->pid;
	uint32_t flags = fdinfo_flags(info);
	uint64_t ino = st->st_ino;
	int acc = flags & O_ACCMODE;
	if (acc == O_RDWR)
		return fail("E_UNSUPPORTED", 0,
			    "pid %d fd %d is a pipe end opened read-write (%s, reopened through /proc): not supported yet, refusing to checkpoint",
			    pid, fd, target);
	if (flags & O_DIRECT)
		return fail("E_UNSUPPORTED", 0, "pid %d fd %d is a packet-mode pipe (O_DIRECT, %s): not supported yet, refusing to checkpoint", pid,
			    fd, target);
	bool write_end = acc == O_WRONLY;
	bool other_in_app = false, read_in_app = !write_end;
	for (size_t i = 0; i < c->nsnap; i++) {
		const struct fdsnap_ent *e = &c->snap[i];
		if (e->st.st_dev != st->st_dev || e->st.st_ino != st->st_ino || e->stat_errno || strncmp(e->target, "pipe:", 5) ||
		    (e->pid == pid && e->fd == fd))
			continue;
		if ((int)e->flags == acc) {
			if (!same_file(c, fd, e))
				return fail("E_UNSUPPORTED", 0,
					    "pid %d fd %d and pid %d fd %d are the same end of %s through two open file descriptions (reopened "
					    "through /proc): not supported yet, refusing to checkpoint",
					    pid, fd, e->pid, e->fd, target);
		} else {
			other_in_app = true;
			if (e->flags == O_RDONLY)
				read_in_app = true;
		}
	}
	uint64_t own = (uint64_t)pid << 32 | (uint32_t)fd, ofd;
	fdobj_ofd_id(c, fd, st, &ofd);
	bool has_state = ofd == own && (!write_end || !read_in_app);
	int x = -1;
	if (!other_in_app || (f && has_state)) {
		x = take_fd(c, fd);
		if (x < 0)
			return -1;
	}
	int rc = 0;
	if (!other_in_app) {
		struct pollfd pf = { x, write_end ? POLLOUT : POLLIN, 0 };
		if (poll(&pf, 1, 0) < 0) {
			rc = fail("E_NATIVE", errno, "poll on a copy of pid %d fd %d (%s)", pid, fd, target);
			goto out;
		}
		bool peer_closed = write_end ? (pf.revents & POLLERR) : (pf.revents & POLLHUP);
		if (!peer_closed) {
			int hfd = -1;
			char comm[64];
			pid_t h = outside_holder(ino, &hfd, comm, sizeof(comm));
			if (h)
				rc = fail("E_UNSUPPORTED", 0,
					  "pid %d fd %d is the %s end of %s whose %s end is held outside the app by pid %d (%s) fd %d: a pipe to "
					  "a process outside the app is not supported, refusing to checkpoint (redirect it to a file or /dev/null)",
					  pid, fd, write_end ? "write" : "read", target, write_end ? "read" : "write", h, comm, hfd);
			else
				rc = fail(
					"E_UNSUPPORTED", 0,
					"pid %d fd %d is the %s end of %s whose %s end is open outside the app (holder not found in /proc): a pipe to "
					"a process outside the app is not supported, refusing to checkpoint",
					pid, fd, write_end ? "write" : "read", target, write_end ? "read" : "write");
			goto out;
		}
	}
	if (!E.include_children || !pipe_verified(ino)) {
		int hfd = -1;
		char comm[64];
		pid_t h = outside_holder(ino, &hfd, comm, sizeof(comm));
		if (h) {
			rc = fail(
				"E_UNSUPPORTED", 0,
				"pid %d fd %d is %s, which pid %d (%s) outside the app also holds (fd %d): a pipe shared with a process outside the "
				"app is not supported, refusing to checkpoint",
				pid, fd, target, h, comm, hfd);
			goto out;
		}
		pipe_mark_verified(ino);
	}
	if (!f)
		goto out;
	Understudy__V1__Pipe *pp = ANEW(Understudy__V1__Pipe, understudy__v1__pipe__init);
	if (!pp) {
		rc = -1;
		goto out;
	}
	pp->id = ino;
	pp->write_end = write_end;
	pp->has_state = has_state;
	if (has_state) {
		int sz = fcntl(x, F_GETPIPE_SZ);
		if (sz < 0) {
			rc = fail("E_NATIVE", errno, "fcntl(F_GETPIPE_SZ) on pid %d fd %d (%s)", pid, fd, target);
			goto out;
		}
		pp->size = sz;
		if (!write_end && pipe_peek(pid, fd, x, sz, pp)) {
			rc = -1;
			goto out;
		}
	}
	f->pipe = pp;
out:
	if (x >= 0)
		close(x);
	return rc;
}

static int do_eventfd(struct fdobj_ctx *c, int fd, const char *info, Understudy__V1__Fd *f)
{
	int rc = 0;
	const char *cnt = strstr(info, "eventfd-count:"), *sem = strstr(info, "eventfd-semaphore:");
	if (!cnt || !sem) {
		rc = fail("E_UNSUPPORTED", 0,
			  "pid %d fd %d is an eventfd whose fdinfo lacks eventfd-count or eventfd-semaphore (kernel too old): cannot capture it",
			  c->pid, fd);
	} else if (f) {
		Understudy__V1__EventFd *ev = ANEW(Understudy__V1__EventFd, understudy__v1__event_fd__init);
		if (!ev)
			rc = -1;
		else {
			ev->count = strtoull(cnt + 14, NULL, 16);
			ev->semaphore = atoi(sem + 18) != 0;
			f->eventfd = ev;
		}
	}
	return rc;
}

static int do_epoll(struct fdobj_ctx *c, int fd, const char *info, Understudy__V1__Fd *f)
{
	int rc = 0;
	Understudy__V1__Epoll *ep = f ? ANEW(Understudy__V1__Epoll, understudy__v1__epoll__init) : NULL;
	if (f && !ep)
		rc = -1;
	for (const char *l = info; !rc && l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
		if (strncmp(l, "tfd:", 4))
			continue;
		int tfd;
		unsigned events;
		unsigned long long data;
		if (sscanf(l, "tfd: %d events: %x data: %llx", &tfd, &events, &data) != 3) {
			rc = fail("E_NATIVE", 0, "cannot parse /proc/%d/fdinfo/%d line \"%.100s\"", c->pid, fd, l);
			break;
		}
		/* the n-th interest under this tfd (the same number can name an
		 * older, since closed file that another fd keeps alive) */
		unsigned toff = 0;
		for (size_t k = 0; ep && k < ep->n_targets; k++)
			toff += ep->targets[k]->tfd == tfd;
		struct kcmp_epoll_slot slot = { (uint32_t)fd, (uint32_t)tfd, toff };
		long kr = kcmp(c->pid, c->pid, KCMP_EPOLL_TFD, tfd, (unsigned long)&slot);
		if (kr != 0 && !(kr < 0 && errno == ENOSYS)) { /* without kcmp: trusted as it is */
			rc = fail(
				"E_UNSUPPORTED", 0,
				"pid %d: epoll fd %d watches, under fd number %d, a file that is not the one open at fd %d in this process (closed or "
				"replaced after it was added, or added by another process): it cannot be rebuilt, refusing to checkpoint",
				c->pid, fd, tfd, tfd);
			break;
		}
		if (!ep)
			continue;
		Understudy__V1__EpollTarget *t = ANEW(Understudy__V1__EpollTarget, understudy__v1__epoll_target__init);
		if (!t || APUSH(ep->targets, ep->n_targets, t)) {
			rc = -1;
			break;
		}
		t->tfd = tfd;
		t->events = events;
		t->data = data;
	}
	if (!rc && f)
		f->epoll = ep;
	return rc;
}

int fdobj_fd(struct fdobj_ctx *c, int fd, const char *target, const struct stat *st, const char *fdinfo, Understudy__V1__Fd *f)
{
	if (!fdinfo)
		return fail("E_NATIVE", 0, "pid %d fd %d (%s): no fdinfo", c->pid, fd, target);
	switch (fdobj_kind(target)) {
	case UNDERSTUDY__V1__FD__KIND__PIPE:
		return do_pipe(c, fd, target, st, fdinfo, f);
	case UNDERSTUDY__V1__FD__KIND__EVENTFD:
		return do_eventfd(c, fd, fdinfo, f);
	case UNDERSTUDY__V1__FD__KIND__EPOLL:
		return do_epoll(c, fd, fdinfo, f);
	default:
		return fail("E_INTERNAL", 0, "pid %d fd %d: %s is not a pipe, eventfd or epoll", c->pid, fd, target);
	}
}
