/* File locks, from the "lock:" lines of /proc/PID/fdinfo/FD (which the fd
 * walk reads anyway: no syscall of its own).
 *
 * What the kernel prints there (fs/locks.c show_fd_locks): the locks on the
 * fd's inode that were taken through this very open file description AND
 * whose owner is this process's file table (POSIX locks) or this open file
 * description (OFD and flock locks, and leases). So another process's locks
 * on the same inode never appear, but:
 *   - a POSIX lock appears on every fd of its process that refers to the
 *     description it was taken through (dups): recorded once, on the lowest
 *     such fd;
 *   - an OFD or flock lock appears on every fd, in every process, that
 *     refers to its description: recorded once, on the fd whose (pid, fd) is
 *     the description's ofd_id (its first holder).
 * Blocked requests (F_SETLKW, a blocking flock) are not locks yet: the
 * thread is inside the syscall, which the restore issues again.
 * Refused, naming pid, fd and path: leases and delegations, mandatory
 * locks, a lock the kernel shows without an inode, a POSIX lock whose pid is
 * not the process's own (a file table shared with another process through
 * clone(CLONE_FILES): its owner cannot be told), a lock on an fd kind whose
 * restore makes a new inode (pipe, eventfd, epoll) or a different file
 * (terminal, device), and a line this parser does not understand. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>
#include "arena.h"
#include "engine.h"

static const char *kind_name(Understudy__V1__Fd__Kind k)
{
	switch (k) {
	case UNDERSTUDY__V1__FD__KIND__PIPE:
		return "a pipe";
	case UNDERSTUDY__V1__FD__KIND__EVENTFD:
		return "an eventfd";
	case UNDERSTUDY__V1__FD__KIND__EPOLL:
		return "an epoll instance";
	case UNDERSTUDY__V1__FD__KIND__CHARDEV:
		return "a character device";
	case UNDERSTUDY__V1__FD__KIND__TTY:
		return "a terminal";
	default:
		return "this kind of fd";
	}
}

/* is there an fd before this one in pr (this process) on the same description? */
static bool earlier_dup(const Understudy__V1__Process *pr, uint64_t ofd_id, int fd)
{
	for (size_t i = 0; pr && ofd_id && i < pr->n_fds; i++)
		if (pr->fds[i]->ofd_id == ofd_id && pr->fds[i]->fd < fd)
			return true;
	return false;
}

int locks_capture(pid_t pid, int fd, const char *target, Understudy__V1__Fd__Kind kind, const char *info, Understudy__V1__Process *pr,
		  Understudy__V1__Fd *f)
{
	if (!info)
		return 0;
	/* "lock:" only at the start of a line (the first match may be inside another key) */
	for (const char *l = strncmp(info, "lock:", 5) ? strstr(info, "\nlock:") : info; l; l = strstr(l + 5, "\nlock:")) {
		if (*l == '\n')
			l++;
		char line[256];
		size_t n = strcspn(l, "\n");
		if (n > sizeof(line) - 1)
			n = sizeof(line) - 1;
		memcpy(line, l, n);
		line[n] = 0;
		/* for the messages: runs of blanks (the kernel aligns columns) as one space */
		char *w = line;
		for (const char *r = line; *r; r++)
			if (!((*r == ' ' || *r == '\t') && w > line && w[-1] == ' '))
				*w++ = *r == '\t' ? ' ' : *r;
		*w = 0;
		/* fields: "lock:" "N:" kind mode type pid maj:min:ino start end|EOF
		 * (split by hand: sscanf took twice as long) */
		char tb[256], *tok[10];
		int nt = 0;
		memcpy(tb, line, (size_t)(w - line) + 1);
		for (char *q = tb; *q && nt < 10;) {
			tok[nt++] = q;
			char *sp = strchr(q, ' ');
			if (!sp)
				break;
			*sp = 0;
			q = sp + 1;
		}
		const char *k = nt > 2 ? tok[2] : "", *mode = nt > 3 ? tok[3] : "", *type = nt > 4 ? tok[4] : "";
		if (!strcmp(k, "LEASE") || !strcmp(k, "DELEG"))
			return fail("E_UNSUPPORTED", 0,
				    "pid %d fd %d (%s) holds a %s (\"%s\"): file leases and delegations are not supported, refusing to checkpoint",
				    pid, fd, target, !strcmp(k, "LEASE") ? "lease (fcntl F_SETLEASE)" : "delegation", line);
		if (!strcmp(mode, "MANDATORY"))
			return fail("E_UNSUPPORTED", 0, "pid %d fd %d (%s) holds a mandatory lock (\"%s\"): not supported, refusing to checkpoint",
				    pid, fd, target, line);
		char *e1 = NULL, *e2 = NULL, *e3 = NULL, *e4 = NULL, *e5 = NULL;
		long lpid = 0;
		unsigned long ma = 0, mi = 0;
		unsigned long long ino = 0;
		long long start = 0;
		bool ok = nt == 9 && !strcmp(tok[0], "lock:");
		if (ok) {
			lpid = strtol(tok[5], &e1, 10);
			ma = strtoul(tok[6], &e2, 16);
			ok = !*e1 && *e2 == ':';
		}
		if (ok) {
			mi = strtoul(e2 + 1, &e3, 16);
			ok = *e3 == ':';
		}
		if (ok) {
			ino = strtoull(e3 + 1, &e4, 10);
			start = strtoll(tok[7], &e5, 10);
			ok = !*e4 && !*e5 && e4 != e3 + 1 && e5 != tok[7];
		}
		if (!ok)
			return fail("E_UNSUPPORTED", 0,
				    "pid %d fd %d (%s): cannot tell the owner of the lock \"%s\" in /proc/%d/fdinfo/%d, refusing to checkpoint", pid,
				    fd, target, line, pid, fd);
		const char *endtok = tok[8];
		Understudy__V1__FileLock__Kind lk;
		if (!strcmp(k, "POSIX"))
			lk = UNDERSTUDY__V1__FILE_LOCK__KIND__POSIX;
		else if (!strcmp(k, "OFDLCK"))
			lk = UNDERSTUDY__V1__FILE_LOCK__KIND__OFD;
		else if (!strcmp(k, "FLOCK"))
			lk = UNDERSTUDY__V1__FILE_LOCK__KIND__FLOCK;
		else
			return fail("E_UNSUPPORTED", 0, "pid %d fd %d (%s) holds a lock of a kind not supported (\"%s\"), refusing to checkpoint",
				    pid, fd, target, line);
		bool wr = !strcmp(type, "WRITE");
		if (!wr && strcmp(type, "READ"))
			return fail("E_UNSUPPORTED", 0, "pid %d fd %d (%s) holds a lock of type %s (\"%s\"), refusing to checkpoint", pid, fd, target,
				    type, line);
		long long end;
		if (!strcmp(endtok, "EOF"))
			end = -1;
		else {
			char *e;
			end = strtoll(endtok, &e, 10);
			if (*e || end < start)
				return fail("E_UNSUPPORTED", 0, "pid %d fd %d (%s): cannot parse the lock \"%s\", refusing to checkpoint", pid, fd,
					    target, line);
		}
		if (start < 0)
			return fail("E_UNSUPPORTED", 0, "pid %d fd %d (%s): cannot parse the lock \"%s\", refusing to checkpoint", pid, fd, target,
				    line);
		if (lk == UNDERSTUDY__V1__FILE_LOCK__KIND__POSIX && lpid != (long)pid)
			return fail("E_UNSUPPORTED", 0,
				    "pid %d fd %d (%s) shows a POSIX lock taken by pid %ld (\"%s\"): its file table is shared with another process "
				    "(clone CLONE_FILES), the lock's owner cannot be determined, refusing to checkpoint",
				    pid, fd, target, lpid, line);
		if (kind != UNDERSTUDY__V1__FD__KIND__REGULAR && kind != UNDERSTUDY__V1__FD__KIND__DIRECTORY)
			return fail("E_UNSUPPORTED", 0,
				    "pid %d fd %d (%s) holds a lock (\"%s\") on %s: locks on anything but regular files and directories are not "
				    "supported, refusing to checkpoint",
				    pid, fd, target, line, kind_name(kind));
		if (!f)
			continue; /* the attach check: refusals only */
		bool mine = lk == UNDERSTUDY__V1__FILE_LOCK__KIND__POSIX ? !earlier_dup(pr, f->ofd_id, fd) :
									   (!f->ofd_id || f->ofd_id == ((uint64_t)pid << 32 | (uint32_t)fd));
		if (!mine)
			continue; /* recorded on another fd of the same description */
		Understudy__V1__FileLock *fl = ANEW(Understudy__V1__FileLock, understudy__v1__file_lock__init);
		if (!fl || APUSH(f->locks, f->n_locks, fl))
			return -1;
		fl->kind = lk;
		fl->write = wr;
		fl->start = start;
		fl->end = end;
		fl->pid = lpid;
		fl->dev = makedev(ma, mi);
		fl->ino = ino;
	}
	return 0;
}
