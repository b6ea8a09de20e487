/* Result recording and small helpers shared by the probes. */
#include "check.h"
#include "errfmt.h"
#include "fdio.h"

#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------- results */

static void record(struct probe_ctx *c, bool ok, int err, const char *fmt, va_list ap)
{
	int n;

	if (c->done)
		return;
	c->done = true;
	c->ok = ok;
	c->err = err;
	n = vsnprintf(c->detail, sizeof(c->detail), fmt, ap);
	if (n < 0) {
		c->detail[0] = '\0';
		n = 0;
	}
	if (err != 0 && (size_t)n < sizeof(c->detail))
		snprintf(c->detail + n, sizeof(c->detail) - (size_t)n, ": %s", err_text(err));
}

int probe_ok(struct probe_ctx *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	record(c, true, 0, fmt, ap);
	va_end(ap);
	return 0;
}

int probe_fail(struct probe_ctx *c, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	record(c, false, err, fmt, ap);
	va_end(ap);
	return -1;
}

int probe_failx(struct probe_ctx *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	record(c, false, 0, fmt, ap);
	va_end(ap);
	return -1;
}

void probe_append(struct probe_ctx *c, const char *fmt, ...)
{
	size_t off = strlen(c->detail);
	va_list ap;

	if (off + 1 >= sizeof(c->detail))
		return;
	va_start(ap, fmt);
	vsnprintf(c->detail + off, sizeof(c->detail) - off, fmt, ap);
	va_end(ap);
}

int probe_gate(struct probe_ctx *c, const char *call)
{
	if (!c->forced_off)
		return 0;
	probe_fail(c, ENOSYS, "%s", call);
	probe_append(c, " (forced unavailable by UNDERSTUDY_CHECK_DISABLE)");
	errno = ENOSYS;
	return -1;
}

/* ---------------------------------------------------------------- helpers */

uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int ms_left(uint64_t deadline)
{
	uint64_t now = mono_ns();

	if (now >= deadline)
		return 0;
	return (int)((deadline - now + 999999) / 1000000);
}

int wait_fd(int fd, short events, int ms)
{
	uint64_t deadline = mono_ns() + (uint64_t)ms * 1000000ull;

	for (;;) {
		struct pollfd p = { .fd = fd, .events = events };
		int r = poll(&p, 1, ms_left(deadline));

		if (r < 0 && errno == EINTR)
			continue;
		return r < 0 ? -1 : r > 0;
	}
}

int read_exact_timeout(int fd, void *buf, size_t len, int ms)
{
	uint64_t deadline = mono_ns() + (uint64_t)ms * 1000000ull;
	char *p = buf;
	size_t got = 0;

	while (got < len) {
		int r = wait_fd(fd, POLLIN, ms_left(deadline));
		ssize_t n;

		if (r < 0)
			return -1;
		if (r == 0) {
			errno = ETIMEDOUT;
			return -1;
		}
		n = read(fd, p + got, len - got);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return -1;
		}
		if (n == 0) {
			errno = EPROTO;
			return -1;
		}
		got += (size_t)n;
	}
	return 0;
}

pid_t wait_pid_timeout(pid_t pid, int *status, int ms)
{
	uint64_t deadline = mono_ns() + (uint64_t)ms * 1000000ull;
	struct timespec nap = { 0, 2000000 };

	for (;;) {
		pid_t r = waitpid(pid, status, WNOHANG | __WALL);

		if (r != 0) {
			if (r < 0 && errno == EINTR)
				continue;
			return r;
		}
		if (mono_ns() >= deadline)
			return 0;
		nanosleep(&nap, NULL);
	}
}

const char *status_text(int status, char *buf, size_t size)
{
	if (WIFEXITED(status))
		snprintf(buf, size, "exited with status %d", WEXITSTATUS(status));
	else if (WIFSIGNALED(status)) {
		const char *abbrev = sigabbrev_np(WTERMSIG(status));
		snprintf(buf, size, "killed by signal %d (SIG%s: %s)", WTERMSIG(status), abbrev ? abbrev : "?", strsignal(WTERMSIG(status)));
	} else if (WIFSTOPPED(status))
		snprintf(buf, size, "stopped by signal %d (event %d)", WSTOPSIG(status), status >> 16);
	else
		snprintf(buf, size, "wait status 0x%x", status);
	return buf;
}

void kill_and_reap(pid_t pid)
{
	int st;

	if (pid <= 0)
		return;
	kill(pid, SIGKILL);
	while (waitpid(pid, &st, __WALL) < 0 && errno == EINTR)
		;
}

pid_t fork_helper(void)
{
	pid_t parent = getpid();
	pid_t pid = fork();

	if (pid == 0) {
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
			_exit(125);
		dup2(STDERR_FILENO, STDOUT_FILENO);
	}
	return pid;
}

void close_fds_except(int keep_a, int keep_b)
{
	int lo = keep_a < keep_b ? keep_a : keep_b;
	int hi = keep_a < keep_b ? keep_b : keep_a;
	int from = 3;

	if (lo >= from) {
		if (lo > from)
			close_range((unsigned)from, (unsigned)lo - 1, 0);
		from = lo + 1;
	}
	if (hi >= from) {
		if (hi > from)
			close_range((unsigned)from, (unsigned)hi - 1, 0);
		from = hi + 1;
	}
	close_range((unsigned)from, ~0u, 0);
}

int netns_lo_up(struct probe_ctx *c)
{
	struct ifreq ifr;
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return probe_fail(c, errno, "socket(AF_INET, SOCK_DGRAM)");
	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, "lo");
	if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0) {
		int e = errno;
		close(fd);
		return probe_fail(c, e, "ioctl(SIOCGIFFLAGS, lo)");
	}
	ifr.ifr_flags |= IFF_UP;
	if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0) {
		int e = errno;
		close(fd);
		return probe_fail(c, e, "ioctl(SIOCSIFFLAGS, lo, IFF_UP)");
	}
	close(fd);
	return 0;
}

static void join_argv(const char *const argv[], char *buf, size_t size)
{
	size_t off = 0;

	buf[0] = '\0';
	for (int i = 0; argv[i] && off + 1 < size; i++) {
		int n = snprintf(buf + off, size - off, "%s%s", i ? " " : "", argv[i]);
		if (n < 0)
			break;
		off += (size_t)n;
	}
}

int run_cmd(struct probe_ctx *c, const char *const argv[], pid_t netns_pid)
{
	char cmdline[256], out[512], st[96];
	int pipefd[2], status;
	size_t got = 0;
	pid_t pid, w;
	uint64_t deadline;

	join_argv(argv, cmdline, sizeof(cmdline));
	if (pipe2(pipefd, O_CLOEXEC) < 0)
		return probe_fail(c, errno, "pipe2() for `%s`", cmdline);
	pid = fork_helper();
	if (pid < 0) {
		int e = errno;
		close(pipefd[0]);
		close(pipefd[1]);
		return probe_fail(c, e, "fork() for `%s`", cmdline);
	}
	if (pid == 0) {
		char msg[160];

		if (dup2(pipefd[1], STDOUT_FILENO) < 0 || dup2(pipefd[1], STDERR_FILENO) < 0)
			_exit(126);
		if (netns_pid > 0) {
			char path[64];
			int nsfd;

			snprintf(path, sizeof(path), "/proc/%d/ns/net", (int)netns_pid);
			nsfd = open(path, O_RDONLY | O_CLOEXEC);
			if (nsfd < 0 || setns(nsfd, CLONE_NEWNET) < 0) {
				err_format(msg, sizeof(msg), errno, "%s(%s)", nsfd < 0 ? "open" : "setns", path);
				fd_write_all(STDERR_FILENO, msg, strlen(msg));
				_exit(126);
			}
			close(nsfd);
		}
		execvp(argv[0], (char *const *)argv);
		err_format(msg, sizeof(msg), errno, "execvp(%s)", argv[0]);
		fd_write_all(STDERR_FILENO, msg, strlen(msg));
		_exit(127);
	}
	close(pipefd[1]);
	deadline = mono_ns() + (uint64_t)CHECK_WAIT_MS * 1000000ull;
	for (;;) {
		int r = wait_fd(pipefd[0], POLLIN, ms_left(deadline));
		ssize_t n;

		if (r <= 0)
			break;
		n = read(pipefd[0], out + got, sizeof(out) - 1 - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
		if (got == sizeof(out) - 1) {
			char sink[256]; /* keep draining so the command never blocks */
			while (wait_fd(pipefd[0], POLLIN, ms_left(deadline)) > 0 && read(pipefd[0], sink, sizeof(sink)) > 0)
				;
			break;
		}
	}
	out[got] = '\0';
	close(pipefd[0]);
	w = wait_pid_timeout(pid, &status, ms_left(deadline) + 100);
	if (w != pid) {
		int e = w < 0 ? errno : ETIMEDOUT;
		kill_and_reap(pid);
		return probe_fail(c, e, "waitpid(%d) for `%s`", (int)pid, cmdline);
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return 0;
	out[strcspn(out, "\n")] = '\0';
	return probe_failx(c, "`%s`%s: %s%s%s", cmdline, netns_pid > 0 ? " (in the probe's netns)" : "", status_text(status, st, sizeof(st)),
			   got ? ": " : "", out);
}

/* ---------------------------------------------------------------- target */

char target_buf[TARGET_BUF_SIZE] = TARGET_BUF_BEFORE;

struct target_hello {
	int32_t pid; /* > 0, or -errno when the setup failed */
	int32_t aux_fd;
	uint64_t aux_ino;
	uint64_t aux_dev;
};

static __attribute__((noreturn)) void target_main(int cmd_fd, int resp_fd)
{
	struct target_hello h = { .pid = (int32_t)getpid() };
	int aux[2];
	struct stat sb;
	char cmd, ans;

	close_fds_except(cmd_fd, resp_fd);
	if (pipe(aux) < 0 || fstat(aux[0], &sb) < 0) {
		h.pid = -errno;
	} else {
		h.aux_fd = aux[0];
		h.aux_ino = sb.st_ino;
		h.aux_dev = sb.st_dev;
	}
	if (fd_write_all(resp_fd, &h, sizeof(h)) < 0 || h.pid < 0)
		_exit(1);
	for (;;) {
		ssize_t n = read(cmd_fd, &cmd, 1);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			_exit(0);
		switch (cmd) {
		case 'p':
			ans = 'p';
			break;
		case 'v':
			ans = strcmp(target_buf, TARGET_BUF_AFTER) == 0 ? 'Y' : 'N';
			break;
		default:
			ans = '?';
		}
		if (fd_write_all(resp_fd, &ans, 1) < 0)
			_exit(1);
	}
}

int target_start(struct probe_ctx *c, struct target *t, bool grandchild)
{
	int cmd[2], resp[2];
	struct target_hello h;
	pid_t pid;

	memset(t, 0, sizeof(*t));
	t->cmd_fd = t->resp_fd = -1;
	if (pipe2(cmd, O_CLOEXEC) < 0)
		return probe_fail(c, errno, "pipe2(target command)");
	if (pipe2(resp, O_CLOEXEC) < 0) {
		int e = errno;
		close(cmd[0]);
		close(cmd[1]);
		return probe_fail(c, e, "pipe2(target answers)");
	}
	pid = fork_helper();
	if (pid < 0) {
		int e = errno;
		close(cmd[0]);
		close(cmd[1]);
		close(resp[0]);
		close(resp[1]);
		return probe_fail(c, e, "fork(target%s)", grandchild ? " parent" : "");
	}
	if (pid == 0) {
		close(cmd[1]);
		close(resp[0]);
		if (grandchild) {
			pid_t b = fork_helper();
			int st;

			if (b < 0) {
				h.pid = -errno;
				fd_write_all(resp[1], &h, sizeof(h));
				_exit(1);
			}
			if (b == 0)
				target_main(cmd[0], resp[1]);
			/* The intermediate parent only waits, holding no pipe end. */
			close(cmd[0]);
			close(resp[1]);
			while (waitpid(b, &st, 0) < 0 && errno == EINTR)
				;
			_exit(0);
		}
		target_main(cmd[0], resp[1]);
	}
	close(cmd[0]);
	close(resp[1]);
	t->direct = pid;
	t->cmd_fd = cmd[1];
	t->resp_fd = resp[0];
	if (read_exact_timeout(t->resp_fd, &h, sizeof(h), CHECK_WAIT_MS) < 0) {
		int e = errno;
		target_stop(t);
		return probe_fail(c, e, "read(target hello, pid %d)", (int)pid);
	}
	if (h.pid <= 0) {
		target_stop(t);
		return probe_fail(c, -h.pid, "target setup (pid %d)", (int)pid);
	}
	t->pid = h.pid;
	t->aux_fd = h.aux_fd;
	t->aux_ino = h.aux_ino;
	t->aux_dev = h.aux_dev;
	return 0;
}

static int target_ask(struct probe_ctx *c, struct target *t, char cmd, char *answer)
{
	if (fd_write_all(t->cmd_fd, &cmd, 1) < 0)
		return probe_fail(c, errno, "write(target %d command pipe, '%c')", (int)t->pid, cmd);
	if (read_exact_timeout(t->resp_fd, answer, 1, CHECK_WAIT_MS) < 0)
		return probe_fail(c, errno, "read(target %d answer to '%c')", (int)t->pid, cmd);
	return 0;
}

int target_ping(struct probe_ctx *c, struct target *t)
{
	char a;

	if (target_ask(c, t, 'p', &a) < 0)
		return -1;
	if (a != 'p')
		return probe_failx(c, "target %d answered '%c' to a ping", (int)t->pid, a);
	return 0;
}

int target_query_buf(struct probe_ctx *c, struct target *t, char *answer)
{
	return target_ask(c, t, 'v', answer);
}

int target_wait_blocked(struct probe_ctx *c, struct target *t)
{
	uint64_t deadline = mono_ns() + (uint64_t)CHECK_WAIT_MS * 1000000ull;
	struct timespec nap = { 0, 1000000 };
	char path[64], buf[128];
	long nr = -2;

	snprintf(path, sizeof(path), "/proc/%d/syscall", (int)t->pid);
	for (;;) {
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		ssize_t n;

		if (fd < 0)
			return probe_fail(c, errno, "open(%s)", path);
		n = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		if (n < 0)
			return probe_fail(c, errno, "read(%s)", path);
		buf[n] = '\0';
		/* "running" while on a CPU, else the syscall number and arguments */
		if (sscanf(buf, "%ld", &nr) == 1 && nr == SYS_read)
			return 0;
		if (mono_ns() >= deadline)
			return probe_failx(c,
					   "target pid %d did not block in read() within %d ms "
					   "(%s: %.40s)",
					   (int)t->pid, CHECK_WAIT_MS, path, buf);
		nanosleep(&nap, NULL);
	}
}

void target_stop(struct target *t)
{
	int st;

	if (t->cmd_fd >= 0)
		close(t->cmd_fd);
	if (t->resp_fd >= 0)
		close(t->resp_fd);
	t->cmd_fd = t->resp_fd = -1;
	if (t->direct <= 0)
		return;
	if (wait_pid_timeout(t->direct, &st, 1000) == t->direct) {
		t->direct = 0;
		return;
	}
	/* Still there (e.g. stopped under ptrace): kill target and parent. */
	if (t->pid > 0 && t->pid != t->direct) {
		kill(t->pid, SIGKILL);
		wait_pid_timeout(t->pid, &st, 500); /* as its tracer, if we are */
	}
	kill_and_reap(t->direct);
	t->direct = 0;
}
