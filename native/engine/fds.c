/* File descriptors: regular files, directories, the common character devices
 * and terminals are recorded (path, flags, offset, identity); pipes, eventfds
 * and epoll instances with their state (fdobj.c); every fd with the id of its
 * open file description (shared by dups, in any process of the app); every
 * other kind is refused naming pid, fd and kind, before anything is written. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include "arena.h"
#include "engine.h"
#include "fdobj.h"

static const char *unsupported_kind(const char *target, const struct stat *st, char *buf, size_t blen)
{
	if (!strncmp(target, "socket:", 7))
		return "socket";
	if (!strncmp(target, "pipe:", 5))
		return "pipe";
	if (!strncmp(target, "anon_inode:", 11)) {
		const char *k = target + 11;
		snprintf(buf, blen, "%.100s", k[0] == 0x5b ? k + 1 : k);
		char *e = strchr(buf, ']');
		if (e)
			*e = 0;
		return buf;
	}
	if (S_ISFIFO(st->st_mode))
		return "fifo";
	if (S_ISSOCK(st->st_mode))
		return "socket";
	if (S_ISBLK(st->st_mode))
		return "block device";
	if (S_ISREG(st->st_mode)) {
		if (!strncmp(target, "/memfd:", 7))
			return "memfd";
		size_t n = strlen(target);
		if (n > 10 && !strcmp(target + n - 10, " (deleted)"))
			return "deleted file";
		return NULL;
	}
	if (S_ISDIR(st->st_mode))
		return NULL;
	if (S_ISCHR(st->st_mode)) {
		unsigned ma = major(st->st_rdev), mi = minor(st->st_rdev);
		if (ma == 1 && (mi == 3 || mi == 5 || mi == 7 || mi == 8 || mi == 9))
			return NULL;
		if ((ma >= 136 && ma <= 143) || ma == 4 || (ma == 5 && (mi == 0 || mi == 1)))
			return NULL;
		if (ma == 5 && mi == 2)
			return "pty master (/dev/ptmx)";
		snprintf(buf, blen, "character device %u:%u", ma, mi);
		return buf;
	}
	return "unknown file type";
}

static int walk_fds(pid_t pid, Understudy__V1__Process *pr)
{
	/* one read of /proc per fd (link, stat, fdinfo), for every process of
	 * the app: the other ends of pipes and shared descriptions are there
	 * (inside a pause, read once for all the processes' walks) */
	struct fdobj_ctx oc;
	if (fdobj_begin(&oc, pid))
		return -1;
	int rc = 0;
	for (size_t i = 0; i < oc.nsnap; i++) {
		const struct fdsnap_ent *e = &oc.snap[i];
		if (e->pid != pid)
			continue;
		int fd = e->fd;
		const char *target = e->target;
		char kb[128];
		struct stat st = e->st;
		if (e->stat_errno && strncmp(target, "socket:", 7) && strncmp(target, "pipe:", 5) && strncmp(target, "anon_inode:", 11)) {
			rc = fail("E_NATIVE", e->stat_errno, "stat(/proc/%d/fd/%d -> %s)", pid, fd, target);
			break;
		}
		Understudy__V1__Fd__Kind okind = fdobj_kind(target);
		const char *bad = okind ? NULL : unsupported_kind(target, &st, kb, sizeof(kb));
		if (bad) {
			char peer[256] = "";
			if (!strcmp(bad, "socket"))
				sock_peer_describe(st.st_ino, peer, sizeof(peer));
			rc = fail("E_UNSUPPORTED", 0, "pid %d fd %d is a %s (%s)%s: this resource kind is not supported yet, refusing to checkpoint",
				  pid, fd, bad, target, peer);
			break;
		}
		char ip[96], *info = NULL;
		{
			/* its "lock:" lines are the fd's file locks (locks.c): read
			 * for every fd, in the attach check too */
			snprintf(ip, sizeof(ip), "/proc/%d/fdinfo/%d", pid, fd);
			if (read_file(ip, &info) < 0) {
				/* its state is in there: the offset, flags and locks of
				 * every fd (the process is stopped: the fd cannot be gone);
				 * the attach check runs before the stop and tolerates it */
				if (okind || pr) {
					rc = -1;
					break;
				}
				info = NULL;
			}
			err_clear();
		}
		if (!pr) {
			rc = okind ? fdobj_fd(&oc, fd, target, &st, info, NULL) : 0;
			if (!rc)
				rc = locks_capture(pid, fd, target,
						   okind		       ? okind :
							   S_ISREG(st.st_mode) ? UNDERSTUDY__V1__FD__KIND__REGULAR :
							   S_ISDIR(st.st_mode) ? UNDERSTUDY__V1__FD__KIND__DIRECTORY :
										 UNDERSTUDY__V1__FD__KIND__CHARDEV,
						   info, NULL, NULL);
			free(info);
			if (rc)
				break;
			continue;
		}
		Understudy__V1__Fd *f = ANEW(Understudy__V1__Fd, understudy__v1__fd__init);
		if (!f) {
			free(info);
			rc = -1;
			break;
		}
		f->fd = fd;
		f->path = astrdup(target);
		if (info) {
			char *q = strstr(info, "pos:");
			if (q)
				f->pos = strtoull(q + 4, NULL, 10);
			q = strstr(info, "flags:");
			if (q) {
				f->flags = strtoul(q + 6, NULL, 8);
				f->cloexec = (f->flags & O_CLOEXEC) != 0;
			}
		}
		fdobj_ofd_id(&oc, fd, &st, &f->ofd_id);
		if (okind) {
			f->kind = okind;
			rc = fdobj_fd(&oc, fd, target, &st, info, f);
		} else if (S_ISREG(st.st_mode))
			f->kind = UNDERSTUDY__V1__FD__KIND__REGULAR;
		else if (S_ISDIR(st.st_mode))
			f->kind = UNDERSTUDY__V1__FD__KIND__DIRECTORY;
		else {
			unsigned ma = major(st.st_rdev);
			f->kind = ma == 1 ? UNDERSTUDY__V1__FD__KIND__CHARDEV : UNDERSTUDY__V1__FD__KIND__TTY;
			f->rdev_major = ma;
			f->rdev_minor = minor(st.st_rdev);
		}
		if (!rc)
			rc = locks_capture(pid, fd, target, f->kind, info, pr, f);
		free(info);
		if (rc)
			break;
		if (!okind) {
			f->file = ANEW(Understudy__V1__FileId, understudy__v1__file_id__init);
			if (!f->file) {
				rc = -1;
				break;
			}
			f->file->path = f->path;
			f->file->dev = st.st_dev;
			f->file->ino = st.st_ino;
			f->file->size = st.st_size;
			f->file->mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
			f->file->mode = st.st_mode;
		}
		if (APUSH(pr->fds, pr->n_fds, f)) {
			rc = -1;
			break;
		}
	}
	fdobj_end(&oc);
	return rc;
}

/* Injected syscalls go through the process's seccomp filter: strict mode
 * kills on anything but read/write/exit, and a filter may kill on
 * userfaultfd or prctl. Never risk the app: refused. */
static int check_seccomp(pid_t pid)
{
	char v[32];
	if (proc_status_field(pid, "Seccomp", v, sizeof(v))) {
		err_clear();
		return 0;
	}
	int mode = atoi(v);
	if (mode == 1 || mode == 2)
		return fail("E_UNSUPPORTED", 0,
			    "pid %d runs under seccomp (%s mode): the engine's injected syscalls could be killed by it, refusing to touch it", pid,
			    mode == 1 ? "strict" : "filter");
	return 0;
}

int capture_fds(pid_t pid, Understudy__V1__Process *pr)
{
	return walk_fds(pid, pr);
}

int check_fds_supported(pid_t pid)
{
	return check_seccomp(pid) || check_posix_timers(pid) || walk_fds(pid, NULL) ? -1 : 0;
}

int check_injectable(pid_t pid)
{
	return check_seccomp(pid);
}
