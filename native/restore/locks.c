/* File locks (Fd.locks), taken again by the process that owns them.
 *
 * A POSIX lock is dropped by ANY close, by its process, of an fd on the same
 * inode, and the rebuild of fds closes temporary fds (opened files moved to
 * their numbers, descriptions passed between processes): so every lock is
 * taken after every fd of every process is in place (after fdobj_finish),
 * by an injected call in the owner:
 *   POSIX  fcntl(fd, F_SETLK, {type, SEEK_SET, start, len})  in its process
 *   OFD    fcntl(fd, F_OFD_SETLK, ...)                       in the holder of the record
 *   FLOCK  flock(fd, LOCK_SH|LOCK_EX | LOCK_NB)              in the process that took it
 *          if it holds the description, else in the holder of the record
 * Never blocking: the app's own locks held together before the checkpoint,
 * so they cannot conflict with one another; a conflict is a lock someone
 * outside the app holds on this node, and the restore fails, naming the
 * file, the range and the holder (from the "lock:" lines of the other
 * processes' fdinfo), and kills everything it created (main.c). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include "restore.h"

#ifndef F_OFD_SETLK
#define F_OFD_SETLK 37
#endif

typedef Understudy__V1__FileLock Lock;

static const char *kind_str(const Lock *l)
{
	switch (l->kind) {
	case UNDERSTUDY__V1__FILE_LOCK__KIND__POSIX:
		return "POSIX";
	case UNDERSTUDY__V1__FILE_LOCK__KIND__OFD:
		return "OFD";
	case UNDERSTUDY__V1__FILE_LOCK__KIND__FLOCK:
		return "flock";
	default:
		return "unknown";
	}
}

static void range_str(const Lock *l, char *b, size_t n)
{
	if (l->kind == UNDERSTUDY__V1__FILE_LOCK__KIND__FLOCK)
		snprintf(b, n, "the whole file");
	else if (l->end < 0)
		snprintf(b, n, "bytes %lld-EOF", (long long)l->start);
	else
		snprintf(b, n, "bytes %lld-%lld", (long long)l->start, (long long)l->end);
}

static int locks_validate(struct restorer *rs)
{
	for (size_t i = 0; i < rs->nprocs; i++) {
		Proc *pr = rs->procs[i].pr;
		for (size_t k = 0; k < pr->n_fds; k++) {
			Understudy__V1__Fd *f = pr->fds[k];
			for (size_t j = 0; j < f->n_locks; j++) {
				const Lock *l = f->locks[j];
				if (l->kind != UNDERSTUDY__V1__FILE_LOCK__KIND__POSIX && l->kind != UNDERSTUDY__V1__FILE_LOCK__KIND__OFD &&
				    l->kind != UNDERSTUDY__V1__FILE_LOCK__KIND__FLOCK)
					return fail("E_IMAGE_CORRUPT", 0, "pid %d fd %d (%s): a file lock of unknown kind %d", pr->pid, f->fd,
						    f->path, (int)l->kind);
				if (l->start < 0 || (l->end >= 0 && l->end < l->start) || l->end < -1)
					return fail("E_IMAGE_CORRUPT", 0, "pid %d fd %d (%s): a %s lock on bytes %lld-%lld", pr->pid, f->fd, f->path,
						    kind_str(l), (long long)l->start, (long long)l->end);
				if (f->kind != UNDERSTUDY__V1__FD__KIND__REGULAR && f->kind != UNDERSTUDY__V1__FD__KIND__DIRECTORY)
					return fail("E_UNSUPPORTED", 0, "pid %d fd %d (%s): a %s lock on an fd that is not a file or directory",
						    pr->pid, f->fd, f->path, kind_str(l));
			}
		}
	}
	return 0;
}

static bool restored_pid(struct restorer *rs, pid_t p)
{
	if (p == rs->reaper)
		return true;
	for (size_t i = 0; i < rs->nprocs; i++)
		if (rs->procs[i].pid == p)
			return true;
	return false;
}

/* does a "lock:" / /proc/locks line's lock conflict with l on dev:ino? */
static bool line_conflicts(const char *line, const Lock *l, dev_t dev, ino_t ino, char *desc, size_t dlen)
{
	char k[16], mode[16], type[16], endtok[32];
	int id, lpid;
	unsigned ma, mi;
	unsigned long long lino;
	long long start;
	const char *p = strstr(line, "lock:");
	p = p ? p + 5 : line;
	if (sscanf(p, " %d: %15s %15s %15s %d %x:%x:%llu %lld %31s", &id, k, mode, type, &lpid, &ma, &mi, &lino, &start, endtok) != 10)
		return false;
	if (makedev(ma, mi) != dev || lino != ino)
		return false;
	if (strcmp(k, "POSIX") && strcmp(k, "OFDLCK") && strcmp(k, "FLOCK"))
		return false; /* a lease conflicts with opens, not with locks */
	bool flock_line = !strcmp(k, "FLOCK");
	if (flock_line != (l->kind == UNDERSTUDY__V1__FILE_LOCK__KIND__FLOCK))
		return false; /* flock and byte-range locks never conflict */
	bool wr = !strcmp(type, "WRITE");
	if (!wr && !l->write)
		return false;
	long long end = strcmp(endtok, "EOF") ? strtoll(endtok, NULL, 10) : -1;
	if (!flock_line) {
		long long le = l->end < 0 ? (long long)(~0ULL >> 1) : l->end, e = end < 0 ? (long long)(~0ULL >> 1) : end;
		if (e < l->start || le < start)
			return false;
	}
	if (flock_line)
		snprintf(desc, dlen, "flock %s", wr ? "LOCK_EX" : "LOCK_SH");
	else if (end < 0)
		snprintf(desc, dlen, "%s %s lock on bytes %lld-EOF", !strcmp(k, "OFDLCK") ? "OFD" : k, type, start);
	else
		snprintf(desc, dlen, "%s %s lock on bytes %lld-%lld", !strcmp(k, "OFDLCK") ? "OFD" : k, type, start, end);
	return true;
}

/* ", held by pid N (comm) fd M outside the app (its POSIX WRITE lock on bytes a-b)";
 * the restored processes are skipped once they exist (created) */
static void find_holder(struct restorer *rs, const Lock *l, dev_t dev, ino_t ino, bool created, char *out, size_t olen)
{
	snprintf(out, olen, ", held by a process outside the app (not found in /proc)");
	DIR *d = opendir("/proc");
	if (!d)
		return;
	struct dirent *de;
	bool found = false;
	while (!found && (de = readdir(d))) {
		if (de->d_name[0] < '0' || de->d_name[0] > '9')
			continue;
		pid_t p = atoi(de->d_name);
		if (p == getpid() || (created && restored_pid(rs, p)))
			continue;
		char dp[64];
		snprintf(dp, sizeof(dp), "/proc/%d/fdinfo", p);
		DIR *fd = opendir(dp);
		if (!fd)
			continue;
		struct dirent *fe;
		while (!found && (fe = readdir(fd))) {
			if (fe->d_name[0] < '0' || fe->d_name[0] > '9')
				continue;
			char ip[96], buf[8192];
			snprintf(ip, sizeof(ip), "/proc/%d/fdinfo/%s", p, fe->d_name);
			int x = open(ip, O_RDONLY | O_CLOEXEC);
			if (x < 0)
				continue;
			ssize_t n = read(x, buf, sizeof(buf) - 1);
			close(x);
			if (n <= 0)
				continue;
			buf[n] = 0;
			for (char *s = strstr(buf, "lock:"); s && !found; s = strstr(s + 5, "lock:")) {
				char line[256], desc[160];
				snprintf(line, sizeof(line), "%.*s", (int)strcspn(s, "\n"), s);
				if (!line_conflicts(line, l, dev, ino, desc, sizeof(desc)))
					continue;
				char cp[64], comm[64] = "?";
				snprintf(cp, sizeof(cp), "/proc/%d/comm", p);
				int c = open(cp, O_RDONLY | O_CLOEXEC);
				if (c >= 0) {
					ssize_t r = read(c, comm, sizeof(comm) - 1);
					comm[r > 0 ? r : 0] = 0;
					comm[strcspn(comm, "\n")] = 0;
					close(c);
				}
				snprintf(out, olen, ", held by pid %d (%s) fd %s outside the app (its %s)", p, comm, fe->d_name, desc);
				found = true;
			}
		}
		closedir(fd);
	}
	closedir(d);
}

static int held(struct restorer *rs, const Proc *pr, int fd, const Understudy__V1__Fd *f, const Lock *l, dev_t dev, ino_t ino, bool created)
{
	char rng[64], holder[400];
	range_str(l, rng, sizeof(rng));
	find_holder(rs, l, dev, ino, created, holder, sizeof(holder));
	return fail("E_LOCK_HELD", 0, "pid %d fd %d (%s): cannot take back its %s %s lock on %s%s", pr->ns_pid, fd, f->path, kind_str(l),
		    l->write ? "write" : "read", rng, holder);
}

/* Before any process exists: a conflicting lock already on the file (held
 * outside the app, since none of it runs) refuses the restore up front.
 * POSIX and OFD ranges are asked with F_OFD_GETLK on a description of the
 * restorer's own (it holds no lock: every lock conflicts); flocks are looked
 * for in /proc/locks. A lock taken after this check still fails the restore
 * when the app's lock is taken (locks_restore). A file that cannot be opened
 * is left to the checks that name it. */
static int precheck(struct restorer *rs, const Proc *pr, const Understudy__V1__Fd *f, const Lock *l, char **proclocks)
{
	struct stat st;
	if (l->kind == UNDERSTUDY__V1__FILE_LOCK__KIND__FLOCK) {
		if (stat(f->path, &st))
			return 0;
		if (!*proclocks) {
			int x = open("/proc/locks", O_RDONLY | O_CLOEXEC);
			if (x < 0)
				return 0;
			size_t cap = 1 << 16, n = 0;
			char *b = malloc(cap);
			for (ssize_t r; b && (r = read(x, b + n, cap - n - 1)) > 0;) {
				n += r;
				if (n + 1 == cap) {
					char *nb = realloc(b, cap * 2);
					if (!nb) {
						free(b);
						b = NULL;
						break;
					}
					b = nb;
					cap *= 2;
				}
			}
			close(x);
			if (!b)
				return fail("E_RESTORE", ENOMEM, "reading /proc/locks");
			b[n] = 0;
			*proclocks = b;
		}
		char desc[160];
		for (char *s = *proclocks; s && *s; s = strchr(s, '\n') ? strchr(s, '\n') + 1 : NULL) {
			char line[256];
			snprintf(line, sizeof(line), "%.*s", (int)strcspn(s, "\n"), s);
			if (!strstr(line, "->") && line_conflicts(line, l, st.st_dev, st.st_ino, desc, sizeof(desc)))
				return held(rs, pr, f->fd, f, l, st.st_dev, st.st_ino, false);
		}
		return 0;
	}
	int x = open(f->path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (x < 0)
		return 0;
	struct flock q = {
		.l_type = l->write ? F_WRLCK : F_RDLCK, .l_whence = SEEK_SET, .l_start = l->start, .l_len = l->end < 0 ? 0 : l->end - l->start + 1
	};
	int rc = 0;
	if (fstat(x, &st) || fcntl(x, F_OFD_GETLK, &q))
		rc = fail("E_RESTORE", errno, "checking the %s lock of pid %d fd %d (%s): fcntl(F_OFD_GETLK)", kind_str(l), pr->ns_pid, f->fd,
			  f->path);
	else if (q.l_type != F_UNLCK)
		rc = held(rs, pr, f->fd, f, l, st.st_dev, st.st_ino, false);
	close(x);
	return rc;
}

static int take(struct rproc *p, int fd, const Understudy__V1__Fd *f, const Lock *l)
{
	RS_OF(p);
	struct rtask *t = &p->tasks[0];
	long ret;
	char what[256], rng[64];
	range_str(l, rng, sizeof(rng));
	if (l->kind == UNDERSTUDY__V1__FILE_LOCK__KIND__FLOCK) {
		if (inj(t, SYS_flock, fd, (l->write ? LOCK_EX : LOCK_SH) | LOCK_NB, 0, 0, 0, 0, &ret, NULL))
			return -1;
	} else {
		struct flock fl = { .l_type = l->write ? F_WRLCK : F_RDLCK,
				    .l_whence = SEEK_SET,
				    .l_start = l->start,
				    .l_len = l->end < 0 ? 0 : l->end - l->start + 1 };
		if (poke(p->pid, SCR_LOCK, &fl, sizeof(fl)))
			return -1;
		int cmd = l->kind == UNDERSTUDY__V1__FILE_LOCK__KIND__OFD ? F_OFD_SETLK : F_SETLK;
		if (inj(t, SYS_fcntl, fd, cmd, SCR_LOCK, 0, 0, 0, &ret, NULL))
			return -1;
	}
	if (ret == 0) {
		vlog("pid %d fd %d (%s): %s %s lock on %s taken", p->pid, fd, f->path, kind_str(l), l->write ? "write" : "read", rng);
		return 0;
	}
	snprintf(what, sizeof(what), "pid %d fd %d (%s): cannot take back its %s %s lock on %s", p->pr->ns_pid, fd, f->path, kind_str(l),
		 l->write ? "write" : "read", rng);
	if (ret != -EAGAIN && ret != -EACCES)
		return fail("E_RESTORE", (int)-ret, "%s: %s", what, l->kind == UNDERSTUDY__V1__FILE_LOCK__KIND__FLOCK ? "flock" : "fcntl");
	/* someone else holds a conflicting lock: name them */
	char lp[64];
	struct stat st;
	snprintf(lp, sizeof(lp), "/proc/%d/fd/%d", p->pid, fd);
	if (stat(lp, &st))
		return fail("E_LOCK_HELD", 0, "%s, held by a process outside the app (stat(%s): %s)", what, lp, strerror(errno));
	return held(rs, p->pr, fd, f, l, st.st_dev, st.st_ino, true);
}

/* the process that took a flock lock, if it holds the description too */
static struct rproc *flock_taker(struct restorer *rs, const Lock *l, uint64_t ofd_id, int *fd)
{
	for (size_t i = 0; ofd_id && l->pid > 0 && i < rs->nprocs; i++) {
		Proc *pr = rs->procs[i].pr;
		if (pr->pid != l->pid)
			continue;
		for (size_t k = 0; k < pr->n_fds; k++)
			if (pr->fds[k]->ofd_id == ofd_id) {
				*fd = pr->fds[k]->fd;
				return &rs->procs[i];
			}
	}
	return NULL;
}

int locks_restore(struct restorer *rs)
{
	for (size_t i = 0; i < rs->nprocs; i++) {
		struct rproc *p = &rs->procs[i];
		for (size_t k = 0; k < p->pr->n_fds; k++) {
			const Understudy__V1__Fd *f = p->pr->fds[k];
			for (size_t j = 0; j < f->n_locks; j++) {
				const Lock *l = f->locks[j];
				struct rproc *owner = p;
				int fd = f->fd;
				if (l->kind == UNDERSTUDY__V1__FILE_LOCK__KIND__FLOCK) {
					struct rproc *q = flock_taker(rs, l, f->ofd_id, &fd);
					if (q)
						owner = q;
					else
						fd = f->fd;
				}
				if (take(owner, fd, f, l))
					return -1;
			}
		}
	}
	return 0;
}

int locks_plan(struct restorer *rs)
{
	if (locks_validate(rs))
		return -1;
	/* test hook: leave conflicts to the moment the locks are taken */
	if (getenv("UNDERSTUDY_RESTORE_NO_LOCK_PRECHECK"))
		return 0;
	char *proclocks = NULL;
	int rc = 0;
	for (size_t i = 0; !rc && i < rs->nprocs; i++) {
		Proc *pr = rs->procs[i].pr;
		for (size_t k = 0; !rc && k < pr->n_fds; k++)
			for (size_t j = 0; !rc && j < pr->fds[k]->n_locks; j++)
				rc = precheck(rs, pr, pr->fds[k], pr->fds[k]->locks[j], &proclocks);
	}
	free(proclocks);
	return rc;
}
