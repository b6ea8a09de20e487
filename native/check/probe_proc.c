/* Probes of process control: ptrace seize of a non-child, syscall injection,
 * pidfd_getfd and clone3 with set_tid. */
#include "check.h"
#include "kabi.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

/* Seizes pid and stops it with PTRACE_INTERRUPT; *status is the stop. */
static int seize_and_interrupt(struct probe_ctx *c, pid_t pid, int *status)
{
	char st[96];
	pid_t w;

	if (ptrace(PTRACE_SEIZE, pid, NULL, (void *)(long)PTRACE_O_EXITKILL) < 0)
		return probe_fail(c, errno, "ptrace(PTRACE_SEIZE, pid %d)", (int)pid);
	if (ptrace(PTRACE_INTERRUPT, pid, NULL, NULL) < 0)
		return probe_fail(c, errno, "ptrace(PTRACE_INTERRUPT, pid %d)", (int)pid);
	w = wait_pid_timeout(pid, status, CHECK_WAIT_MS);
	if (w != pid)
		return probe_fail(c, w < 0 ? errno : ETIMEDOUT,
				  "waitpid(pid %d, __WALL) for the "
				  "interrupt stop",
				  (int)pid);
	if (!WIFSTOPPED(*status) || (*status >> 16) != PTRACE_EVENT_STOP)
		return probe_failx(c, "waitpid(pid %d, __WALL): %s, expected a PTRACE_EVENT_STOP stop", (int)pid,
				   status_text(*status, st, sizeof(st)));
	return 0;
}

static int detach(struct probe_ctx *c, pid_t pid)
{
	if (ptrace(PTRACE_DETACH, pid, NULL, NULL) < 0)
		return probe_fail(c, errno, "ptrace(PTRACE_DETACH, pid %d)", (int)pid);
	return 0;
}

int probe_ptrace_seize(struct probe_ctx *c)
{
	struct target t;
	int status;
	bool seized = false;

	if (target_start(c, &t, true) < 0)
		return -1;
	if (probe_gate(c, "ptrace(PTRACE_SEIZE)") < 0 || target_wait_blocked(c, &t) < 0)
		goto out;
	seized = true;
	if (seize_and_interrupt(c, t.pid, &status) < 0)
		goto out;
	seized = false;
	if (detach(c, t.pid) < 0)
		goto out;
	if (target_ping(c, &t) < 0)
		goto out;
	probe_ok(c,
		 "seized pid %d (child of %d, not of the prober %d) blocked in read(); PTRACE_INTERRUPT gave "
		 "waitpid status 0x%x (PTRACE_EVENT_STOP, SIG%s); detached, and the target "
		 "answered a ping",
		 (int)t.pid, (int)t.direct, (int)getpid(), status, sigabbrev_np(WSTOPSIG(status)));
out:
	if (seized)
		ptrace(PTRACE_DETACH, t.pid, NULL, NULL);
	target_stop(&t);
	return c->ok ? 0 : -1;
}

/* Finds the bytes 0f 05 (syscall) in an executable mapping of pid. */
static int find_syscall_insn(struct probe_ctx *c, pid_t pid, unsigned long *addr, char *where, size_t where_size)
{
	char path[64], line[512];
	FILE *maps;
	int mem;
	size_t chunk = 65536;
	unsigned char *buf;

	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	maps = fopen(path, "re");
	if (!maps)
		return probe_fail(c, errno, "fopen(%s)", path);
	snprintf(path, sizeof(path), "/proc/%d/mem", (int)pid);
	mem = open(path, O_RDONLY | O_CLOEXEC);
	if (mem < 0) {
		int e = errno;
		fclose(maps);
		return probe_fail(c, e, "open(%s)", path);
	}
	buf = malloc(chunk + 1);
	if (!buf) {
		fclose(maps);
		close(mem);
		return probe_fail(c, ENOMEM, "malloc(%zu)", chunk);
	}
	*addr = 0;
	while (!*addr && fgets(line, sizeof(line), maps)) {
		unsigned long s, e;
		char perms[8];
		int name_at = 0;

		if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %n", &s, &e, perms, &name_at) < 3)
			continue;
		if (perms[2] != 'x' || strstr(line, "[vsyscall]"))
			continue;
		for (unsigned long a = s; a < e && !*addr; a += chunk) {
			size_t want = e - a < chunk ? e - a : chunk;
			ssize_t n = pread(mem, buf, want, (off_t)a);
			if (n < 2)
				break;
			for (ssize_t i = 0; i + 1 < n; i++) {
				if (buf[i] == 0x0f && buf[i + 1] == 0x05) {
					*addr = a + (unsigned long)i;
					line[strcspn(line, "\n")] = '\0';
					snprintf(where, where_size, "%s", name_at && line[name_at] ? line + name_at : "anonymous");
					break;
				}
			}
		}
	}
	free(buf);
	fclose(maps);
	close(mem);
	if (!*addr)
		return probe_failx(c,
				   "no syscall instruction (0f 05) in the executable mappings of "
				   "pid %d",
				   (int)pid);
	return 0;
}

int probe_syscall_inject(struct probe_ctx *c)
{
	struct user_regs_struct saved, regs;
	struct target t;
	unsigned long insn;
	char where[256], st[96];
	int status;
	bool seized = false;
	pid_t w;

	if (target_start(c, &t, true) < 0)
		return -1;
	if (probe_gate(c, "ptrace(PTRACE_SEIZE)") < 0 || target_wait_blocked(c, &t) < 0)
		goto out;
	seized = true;
	if (seize_and_interrupt(c, t.pid, &status) < 0)
		goto out;
	if (ptrace(PTRACE_GETREGS, t.pid, NULL, &saved) < 0) {
		probe_fail(c, errno, "ptrace(PTRACE_GETREGS, pid %d)", (int)t.pid);
		goto out;
	}
	if (find_syscall_insn(c, t.pid, &insn, where, sizeof(where)) < 0)
		goto out;
	regs = saved;
	regs.rip = insn;
	regs.rax = SYS_getpid;
	regs.orig_rax = (unsigned long long)-1; /* no syscall restart on resume */
	if (ptrace(PTRACE_SETREGS, t.pid, NULL, &regs) < 0) {
		probe_fail(c, errno, "ptrace(PTRACE_SETREGS, pid %d, rip=0x%lx)", (int)t.pid, insn);
		goto out;
	}
	if (ptrace(PTRACE_SINGLESTEP, t.pid, NULL, NULL) < 0) {
		probe_fail(c, errno, "ptrace(PTRACE_SINGLESTEP, pid %d)", (int)t.pid);
		goto out;
	}
	w = wait_pid_timeout(t.pid, &status, CHECK_WAIT_MS);
	if (w != t.pid) {
		probe_fail(c, w < 0 ? errno : ETIMEDOUT, "waitpid(pid %d) after PTRACE_SINGLESTEP", (int)t.pid);
		goto out;
	}
	if (!WIFSTOPPED(status) || WSTOPSIG(status) != SIGTRAP) {
		probe_failx(c, "waitpid(pid %d) after PTRACE_SINGLESTEP: %s, expected a SIGTRAP stop", (int)t.pid,
			    status_text(status, st, sizeof(st)));
		goto out;
	}
	if (ptrace(PTRACE_GETREGS, t.pid, NULL, &regs) < 0) {
		probe_fail(c, errno, "ptrace(PTRACE_GETREGS, pid %d) after the step", (int)t.pid);
		goto out;
	}
	if ((long long)regs.rax != (long long)t.pid || regs.rip != insn + 2) {
		probe_failx(c,
			    "injected getpid at 0x%lx in pid %d returned rax=%lld with rip=0x%llx, "
			    "expected %d at 0x%lx",
			    insn, (int)t.pid, (long long)regs.rax, regs.rip, (int)t.pid, insn + 2);
		goto out;
	}
	if (ptrace(PTRACE_SETREGS, t.pid, NULL, &saved) < 0) {
		probe_fail(c, errno, "ptrace(PTRACE_SETREGS, pid %d) restoring registers", (int)t.pid);
		goto out;
	}
	seized = false;
	if (detach(c, t.pid) < 0)
		goto out;
	if (target_ping(c, &t) < 0 || target_ping(c, &t) < 0)
		goto out;
	probe_ok(c,
		 "pid %d (not our child) stopped in syscall %lld (read, rax=%lld); injected getpid "
		 "at a syscall instruction 0x%lx in %s with one PTRACE_SINGLESTEP: rax=%lld; "
		 "registers restored, detached, the target's read restarted and it answered pings",
		 (int)t.pid, (long long)saved.orig_rax, (long long)saved.rax, insn, where, (long long)regs.rax);
out:
	if (seized)
		ptrace(PTRACE_DETACH, t.pid, NULL, NULL);
	target_stop(&t);
	return c->ok ? 0 : -1;
}

int probe_pidfd_getfd(struct probe_ctx *c)
{
	struct target t;
	struct stat sb;
	int pidfd = -1, fd = -1;

	if (target_start(c, &t, false) < 0)
		return -1;
	if (probe_gate(c, "pidfd_open()") < 0)
		goto out;
	pidfd = kabi_pidfd_open(t.pid, 0);
	if (pidfd < 0) {
		probe_fail(c, errno, "pidfd_open(pid %d)", (int)t.pid);
		goto out;
	}
	fd = kabi_pidfd_getfd(pidfd, t.aux_fd, 0);
	if (fd < 0) {
		probe_fail(c, errno, "pidfd_getfd(pidfd %d of pid %d, fd %d)", pidfd, (int)t.pid, t.aux_fd);
		goto out;
	}
	if (fstat(fd, &sb) < 0) {
		probe_fail(c, errno, "fstat(fd %d)", fd);
		goto out;
	}
	if (!S_ISFIFO(sb.st_mode) || sb.st_ino != t.aux_ino || sb.st_dev != t.aux_dev) {
		probe_failx(c,
			    "pidfd_getfd(pid %d, fd %d) gave inode %llu (mode 0%o), the target "
			    "holds pipe inode %llu",
			    (int)t.pid, t.aux_fd, (unsigned long long)sb.st_ino, sb.st_mode, (unsigned long long)t.aux_ino);
		goto out;
	}
	probe_ok(c,
		 "pidfd_open(pid %d) then pidfd_getfd(its fd %d) gave our fd %d: the same pipe "
		 "(inode %llu)",
		 (int)t.pid, t.aux_fd, fd, (unsigned long long)sb.st_ino);
out:
	if (fd >= 0)
		close(fd);
	if (pidfd >= 0)
		close(pidfd);
	target_stop(&t);
	return c->ok ? 0 : -1;
}

#define SET_TID 4242

/* Written by the processes inside the new PID namespace. */
struct ns_report {
	int init_pid; /* getpid() of the namespace's first process */
	int stage;    /* 0 nothing, 1 clone3 failed, 2 child ran */
	int err;
	long clone_ret; /* what clone3(set_tid) returned in pid 1 */
	int child_pid;	/* getpid() in the set_tid child */
};

int probe_clone3_set_tid(struct probe_ctx *c)
{
	struct kabi_clone_args args;
	struct ns_report *rep;
	char st[96];
	int status;
	long pid;
	pid_t w;

	rep = mmap(NULL, sizeof(*rep), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (rep == MAP_FAILED)
		return probe_fail(c, errno, "mmap(shared report page)");
	memset(rep, 0, sizeof(*rep));
	if (probe_gate(c, "clone3(CLONE_NEWPID)") < 0)
		goto out;
	memset(&args, 0, sizeof(args));
	args.flags = CLONE_NEWPID;
	args.exit_signal = SIGCHLD;
	pid = kabi_clone3(&args, sizeof(args));
	if (pid < 0) {
		probe_fail(c, errno, "clone3(CLONE_NEWPID)");
		goto out;
	}
	if (pid == 0) {
		/* pid 1 of the new namespace: raw syscalls only, then _exit. */
		pid_t tid = SET_TID;
		long r;

		if (syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
			_exit(3);
		rep->init_pid = (int)syscall(SYS_getpid);
		memset(&args, 0, sizeof(args));
		args.exit_signal = SIGCHLD;
		args.set_tid = (__u64)(unsigned long)&tid;
		args.set_tid_size = 1;
		r = kabi_clone3(&args, sizeof(args));
		if (r < 0) {
			rep->err = errno;
			rep->stage = 1;
			_exit(1);
		}
		if (r == 0) {
			rep->child_pid = (int)syscall(SYS_getpid);
			rep->stage = 2;
			_exit(0);
		}
		rep->clone_ret = r;
		while (syscall(SYS_wait4, (pid_t)r, NULL, 0, NULL) < 0 && errno == EINTR)
			;
		_exit(0);
	}
	w = wait_pid_timeout((pid_t)pid, &status, CHECK_WAIT_MS);
	if (w != (pid_t)pid) {
		probe_fail(c, w < 0 ? errno : ETIMEDOUT, "waitpid(pid %ld, pid 1 of the new PID namespace)", pid);
		kill_and_reap((pid_t)pid);
		goto out;
	}
	if (rep->stage == 1) {
		probe_fail(c, rep->err,
			   "clone3(set_tid={%d}, set_tid_size=1) in pid 1 of the new "
			   "PID namespace (outer pid %ld)",
			   SET_TID, pid);
		goto out;
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || rep->stage != 2) {
		probe_failx(c, "pid 1 of the new PID namespace (outer pid %ld) %s at stage %d", pid, status_text(status, st, sizeof(st)), rep->stage);
		goto out;
	}
	if (rep->init_pid != 1 || rep->clone_ret != SET_TID || rep->child_pid != SET_TID) {
		probe_failx(c,
			    "in the new PID namespace: first process getpid()=%d (want 1), "
			    "clone3(set_tid={%d}) returned %ld and the child's getpid() is %d",
			    rep->init_pid, SET_TID, rep->clone_ret, rep->child_pid);
		goto out;
	}
	probe_ok(c,
		 "clone3(CLONE_NEWPID) made outer pid %ld, which is pid 1 inside; its "
		 "clone3(set_tid={%d}, set_tid_size=1) returned %ld and that child's getpid() is %d",
		 pid, SET_TID, rep->clone_ret, rep->child_pid);
out:
	munmap(rep, sizeof(*rep));
	return c->ok ? 0 : -1;
}
