/* File descriptors at their numbers, with their flags and offsets (regular
 * files, directories, /dev/null|zero|full|random|urandom; a terminal becomes
 * /dev/null or, with --tty inherit, the restorer's own terminal; pipes,
 * eventfds, epoll and dups of one description through fdobj.c), and the
 * process-wide state that goes with them: cwd, root, umask, rlimits,
 * credentials, personality. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "restore.h"

static int cmp_fd(const void *a, const void *b)
{
	const Understudy__V1__Fd *x = *(Understudy__V1__Fd *const *)a, *y = *(Understudy__V1__Fd *const *)b;
	return x->fd - y->fd;
}

static const char *tty_path(struct restorer *rs, int fd, char *buf, size_t len)
{
	if (rs->tty == TTY_INHERIT) {
		for (int k = fd <= 2 ? fd : 0; k <= 2; k++) {
			if (!isatty(k))
				continue;
			if (ttyname_r(k, buf, len) == 0)
				return buf;
		}
	}
	return "/dev/null";
}

/* The app's soft RLIMIT_NOFILE before its fds exist (all rlimits are set
 * again later): fd numbers at or above the skeleton's limit, and the pipe
 * ends parked above the highest fd, need it. Never above the hard limit. */
static int nofile_early(struct rproc *p)
{
	RS_OF(p);
	for (size_t i = 0; i < p->pr->n_rlimits; i++) {
		Understudy__V1__Rlimit *r = p->pr->rlimits[i];
		struct rlimit cur;
		if (r->resource != RLIMIT_NOFILE)
			continue;
		if (prlimit(p->pid, RLIMIT_NOFILE, NULL, &cur))
			return fail("E_RESTORE", errno, "prlimit(pid %d, RLIMIT_NOFILE)", p->pid);
		if (r->cur <= cur.rlim_cur)
			continue;
		struct rlimit want = { r->cur < cur.rlim_max ? r->cur : cur.rlim_max, cur.rlim_max };
		if (prlimit(p->pid, RLIMIT_NOFILE, &want, NULL))
			return fail("E_RESTORE", errno, "prlimit(pid %d, RLIMIT_NOFILE, %llu/%llu) before its fds", p->pid,
				    (unsigned long long)want.rlim_cur, (unsigned long long)want.rlim_max);
	}
	return 0;
}

/* fd f of the image opened by path in p (a file, directory, device or
 * terminal), at its number, offset and close-on-exec flag */
int files_open_one(struct rproc *p, const Understudy__V1__Fd *f)
{
	RS_OF(p);
	struct rtask *t = &p->tasks[0];
	char tb[256];
	const char *path = f->path;
	long flags = f->flags & ~(O_CREAT | O_EXCL | O_TRUNC | O_CLOEXEC);
	if (f->kind == UNDERSTUDY__V1__FD__KIND__TTY) {
		path = tty_path(rs, f->fd, tb, sizeof(tb));
		flags = (f->flags & (O_ACCMODE | O_APPEND | O_NONBLOCK)) | O_NOCTTY;
	}
	uint64_t sp = scratch_str(p, path);
	if (!sp)
		return -1;
	char what[600];
	snprintf(what, sizeof(what), "open(%s) for fd %d", path, f->fd);
	long nfd;
	int rc;
	if ((rc = inj_ok(t, what, SYS_openat, AT_FDCWD, sp, flags, 0, 0, 0, &nfd)))
		return rc;
	if (nfd != f->fd) {
		snprintf(what, sizeof(what), "dup3(%ld, %d) for %s", nfd, f->fd, path);
		if ((rc = inj_ok(t, what, SYS_dup3, nfd, f->fd, f->cloexec ? O_CLOEXEC : 0, 0, 0, 0, NULL)))
			return rc;
		rc = inj_ok(t, "close", SYS_close, nfd, 0, 0, 0, 0, 0, NULL);
	} else if (f->cloexec) {
		rc = inj_ok(t, "fcntl(F_SETFD, FD_CLOEXEC)", SYS_fcntl, nfd, F_SETFD, FD_CLOEXEC, 0, 0, 0, NULL);
	}
	if (!rc && f->pos && f->kind == UNDERSTUDY__V1__FD__KIND__REGULAR) {
		snprintf(what, sizeof(what), "lseek(fd %d of %s, %llu)", f->fd, path, (unsigned long long)f->pos);
		rc = inj_ok(t, what, SYS_lseek, f->fd, f->pos, SEEK_SET, 0, 0, 0, NULL);
	}
	if (!rc)
		fdobj_register(p, f);
	return rc;
}

int files_restore(struct rproc *p)
{
	RS_OF(p);
	if (nofile_early(p))
		return -1;
	Proc *pr = p->pr;
	Understudy__V1__Fd **v = malloc((pr->n_fds + 1) * sizeof(*v));
	if (!v)
		return fail("E_RESTORE", ENOMEM, "malloc");
	memcpy(v, pr->fds, pr->n_fds * sizeof(*v));
	qsort(v, pr->n_fds, sizeof(*v), cmp_fd);
	/* temporary fds (pipe ends waiting for their holder) go above every fd of the image */
	int base = pr->n_fds ? v[pr->n_fds - 1]->fd + 1 : 3;
	int rc = 0;
	for (size_t i = 0; i < pr->n_fds && !rc; i++) {
		Understudy__V1__Fd *f = v[i];
		bool done;
		if ((rc = fdobj_place(p, f, base, &done)) || done)
			continue;
		rc = files_open_one(p, f);
	}
	free(v);
	return rc || fdobj_epolls(p) ? -1 : 0;
}

int proc_misc_restore(struct rproc *p)
{
	RS_OF(p);
	struct rtask *t = &p->tasks[0];
	Proc *pr = p->pr;
	char what[600];
	if (pr->cwd && pr->cwd[0]) {
		uint64_t sp = scratch_str(p, pr->cwd);
		snprintf(what, sizeof(what), "chdir(%s)", pr->cwd);
		if (!sp || inj_ok(t, what, SYS_chdir, sp, 0, 0, 0, 0, 0, NULL))
			return -1;
	}
	if (pr->root && pr->root[0] && strcmp(pr->root, "/")) {
		uint64_t sp = scratch_str(p, pr->root);
		snprintf(what, sizeof(what), "chroot(%s)", pr->root);
		if (!sp || inj_ok(t, what, SYS_chroot, sp, 0, 0, 0, 0, 0, NULL))
			return -1;
	}
	if (inj_ok(t, "umask", SYS_umask, pr->umask, 0, 0, 0, 0, 0, NULL))
		return -1;
	if (pr->personality && inj_ok(t, "personality", SYS_personality, pr->personality, 0, 0, 0, 0, 0, NULL))
		return -1;
	for (size_t i = 0; i < pr->n_rlimits; i++) {
		Understudy__V1__Rlimit *r = pr->rlimits[i];
		struct rlimit cur, want = { r->cur, r->max };
		if (prlimit(p->pid, r->resource, NULL, &cur))
			return fail("E_RESTORE", errno, "prlimit(pid %d, resource %d)", p->pid, r->resource);
		if (cur.rlim_cur == want.rlim_cur && cur.rlim_max == want.rlim_max)
			continue;
		if (prlimit(p->pid, r->resource, &want, NULL)) {
			if (errno == EPERM) {
				/* raising a hard limit needs CAP_SYS_RESOURCE: keep the highest allowed */
				struct rlimit lim = { want.rlim_cur < cur.rlim_max ? want.rlim_cur : cur.rlim_max, cur.rlim_max };
				if (prlimit(p->pid, r->resource, &lim, NULL))
					return fail("E_RESTORE", errno, "prlimit(pid %d, resource %d, %llu/%llu)", p->pid, r->resource,
						    (unsigned long long)lim.rlim_cur, (unsigned long long)lim.rlim_max);
				fprintf(stderr, "understudy-restore: warning: pid %d rlimit %d: hard limit %llu cannot be raised from %llu here\n",
					p->pid, r->resource, (unsigned long long)want.rlim_max, (unsigned long long)cur.rlim_max);
				continue;
			}
			return fail("E_RESTORE", errno, "prlimit(pid %d, resource %d, %llu/%llu)", p->pid, r->resource,
				    (unsigned long long)want.rlim_cur, (unsigned long long)want.rlim_max);
		}
	}
	return 0;
}

/* credentials are per thread: every thread sets its own, last of all (after
 * them the thread may lack the capabilities the restore needs) */
int creds_restore(struct rproc *p)
{
	RS_OF(p);
	Proc *pr = p->pr;
	for (size_t k = 0; k < p->ntasks; k++) {
		struct rtask *t = &p->tasks[k];
		Understudy__V1__Creds *c = pr->creds;
		if (c && c->n_uid >= 3 && c->n_gid >= 3) {
			bool root = !c->uid[0] && !c->uid[1] && !c->uid[2] && !c->gid[0] && !c->gid[1] && !c->gid[2];
			if (!root || c->n_groups) {
				if (c->n_groups > 1024)
					return fail("E_IMAGE_CORRUPT", 0, "pid %d has %zu supplementary groups", p->pid, c->n_groups);
				if (c->n_groups && poke(p->pid, SCR_TABLE, c->groups, c->n_groups * 4))
					return -1;
				if (inj_ok(t, "setgroups", SYS_setgroups, c->n_groups, SCR_TABLE, 0, 0, 0, 0, NULL))
					return -1;
			}
			if (!root) {
				if (inj_ok(t, "setresgid", SYS_setresgid, c->gid[0], c->gid[1], c->gid[2], 0, 0, 0, NULL) ||
				    inj_ok(t, "setresuid", SYS_setresuid, c->uid[0], c->uid[1], c->uid[2], 0, 0, 0, NULL))
					return -1;
			}
		}
	}
	return 0;
}
