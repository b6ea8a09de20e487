/*
 * understudy-check: tests, for real on the running kernel, each feature the
 * Understudy design relies on. One length-prefixed understudy.v1.ProbeResult
 * per probe on stdout; diagnostics on stderr. Each probe runs in its own
 * process group under a timeout, so a crash, a hang or a leaked namespace in
 * one probe cannot affect the others.
 */
#include "check.h"
#include "errfmt.h"
#include "frame.h"
#include "understudy/v1/check.pb-c.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define RESULT_FRAME_MAX (64u * 1024u)
#define DEFAULT_TIMEOUT_MS 10000
#define MAX_TIMEOUT_MS (24 * 3600 * 1000)

static const struct probe_def probes[] = {
	{ "bpf_syscall", probe_bpf_syscall },
	{ "btf", probe_btf },
	{ "tracepoint_attach", probe_tracepoint_attach },
	{ "ringbuf", probe_ringbuf },
	{ "uffd_wp_async", probe_uffd_wp_async },
	{ "pagemap_scan", probe_pagemap_scan },
	{ "ptrace_seize", probe_ptrace_seize },
	{ "syscall_inject", probe_syscall_inject },
	{ "pidfd_getfd", probe_pidfd_getfd },
	{ "clone3_set_tid", probe_clone3_set_tid },
	{ "process_vm", probe_process_vm },
	{ "tcp_repair", probe_tcp_repair },
	{ "netns_veth", probe_netns_veth },
	{ "nfqueue_hold", probe_nfqueue_hold },
	{ "vdso_mremap", probe_vdso_mremap },
};
#define NPROBES (sizeof(probes) / sizeof(probes[0]))

static void usage(void)
{
	fprintf(stderr,
		"usage: understudy-check [--only ID[,ID...]] [--timeout-ms N] [--verbose]\n"
		"  Writes one length-prefixed understudy.v1.ProbeResult per probe to stdout.\n"
		"  Exit 0 when every probe run passed, 1 when one failed, 2 on bad usage.\n"
		"  UNDERSTUDY_CHECK_DISABLE=ID[,ID...] makes the named probes fail as if\n"
		"  the kernel lacked the feature (for tests). --verbose also prints each\n"
		"  result as a line of text on stderr.\nprobes:");
	for (size_t i = 0; i < NPROBES; i++)
		fprintf(stderr, " %s", probes[i].id);
	fputc('\n', stderr);
}

static int probe_index(const char *id, size_t len)
{
	for (size_t i = 0; i < NPROBES; i++)
		if (strlen(probes[i].id) == len && strncmp(probes[i].id, id, len) == 0)
			return (int)i;
	return -1;
}

/* Marks each id of a comma-separated list in sel. Returns 0, or -1 naming the
 * first unknown id on stderr when strict. */
static int parse_id_list(const char *list, bool *sel, bool strict, const char *what)
{
	const char *p = list;

	while (*p) {
		size_t len = strcspn(p, ",");
		if (len > 0) {
			int i = probe_index(p, len);
			if (i >= 0)
				sel[i] = true;
			else {
				fprintf(stderr, "understudy-check: %s: unknown probe id '%.*s'\n", what, (int)len, p);
				if (strict)
					return -1;
			}
		}
		p += len;
		if (*p == ',')
			p++;
	}
	return 0;
}

/* ------------------------------------------------------------ probe child */

static __attribute__((noreturn)) void run_in_child(const struct probe_def *p, bool forced_off, int timeout_ms, int result_fd)
{
	struct probe_ctx c = { .id = p->id, .forced_off = forced_off, .timeout_ms = timeout_ms };
	Understudy__V1__ProbeResult r = UNDERSTUDY__V1__PROBE_RESULT__INIT;

	/* stdout belongs to the parent's frames: nothing else may reach it. */
	if (dup2(STDERR_FILENO, STDOUT_FILENO) < 0)
		_exit(124);
	p->fn(&c);
	if (!c.done)
		probe_failx(&c, "probe ended without a result (internal error)");
	r.version = CHECK_VERSION;
	r.id = (char *)p->id;
	r.ok = c.ok;
	r.detail = c.detail;
	r.errno_value = c.err;
	if (frame_write(result_fd, &r.base) < 0) {
		char msg[128];
		fprintf(stderr, "understudy-check: %s\n", err_format(msg, sizeof(msg), errno, "write(result pipe fd %d)", result_fd));
		exit(123);
	}
	close(result_fd);
	exit(0); /* exit, not _exit: lets LeakSanitizer check the probe */
}

/* ------------------------------------------------------------ parent side */

/* Kills and reaps every process the probe may have left: its process group,
 * then anything reparented to us (we are a child subreaper). Bounded. */
static void sweep(pid_t pgid)
{
	uint64_t deadline = mono_ns() + 3000000000ull;
	struct timespec nap = { 0, 1000000 };
	pid_t self = getpid();

	if (pgid > 0)
		kill(-pgid, SIGKILL);
	for (;;) {
		int st;
		pid_t w = waitpid(-1, &st, WNOHANG | __WALL);

		if (w > 0)
			continue;
		if (w < 0 && errno == ECHILD)
			return;
		if (w < 0 && errno == EINTR)
			continue;
		if (mono_ns() >= deadline) {
			fprintf(stderr,
				"understudy-check: warning: children of the probe "
				"in group %d could not be reaped\n",
				(int)pgid);
			return;
		}
		/* Kill our children by /proc scan: orphans that left the group. */
		DIR *d = opendir("/proc");
		struct dirent *de;
		while (d && (de = readdir(d)) != NULL) {
			char path[300], buf[512];
			int fd;
			ssize_t n;

			if (de->d_name[0] < '1' || de->d_name[0] > '9')
				continue;
			snprintf(path, sizeof(path), "/proc/%s/stat", de->d_name);
			fd = open(path, O_RDONLY | O_CLOEXEC);
			if (fd < 0)
				continue;
			n = read(fd, buf, sizeof(buf) - 1);
			close(fd);
			if (n <= 0)
				continue;
			buf[n] = '\0';
			char *rp = strrchr(buf, ')');
			int ppid;
			if (rp && sscanf(rp + 1, " %*c %d", &ppid) == 1 && ppid == self)
				kill(atoi(de->d_name), SIGKILL);
		}
		if (d)
			closedir(d);
		nanosleep(&nap, NULL);
	}
}

static void append(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void append(char *buf, size_t size, const char *fmt, ...)
{
	size_t off = strlen(buf);
	va_list ap;

	if (off + 1 >= size)
		return;
	va_start(ap, fmt);
	vsnprintf(buf + off, size - off, fmt, ap);
	va_end(ap);
}

/* Runs one probe in a child; fills *out (detail in detail_buf). */
static void run_probe(const struct probe_def *p, bool forced_off, int timeout_ms, Understudy__V1__ProbeResult *out, char *detail, size_t detail_size)
{
	Understudy__V1__ProbeResult *got = NULL;
	uint64_t t0 = mono_ns();
	uint64_t deadline = t0 + (uint64_t)timeout_ms * 1000000ull;
	bool exited = false, pipe_open = true, timed_out = false;
	int pipefd[2], status = 0;
	char st[128];
	pid_t pid;

	out->version = CHECK_VERSION;
	out->id = (char *)p->id;
	out->ok = false;
	out->errno_value = 0;
	out->detail = detail;
	detail[0] = '\0';

	if (pipe2(pipefd, O_CLOEXEC) < 0) {
		out->errno_value = errno;
		err_format(detail, detail_size, errno, "pipe2(result pipe)");
		goto done;
	}
	pid = fork();
	if (pid < 0) {
		out->errno_value = errno;
		err_format(detail, detail_size, errno, "fork(probe %s)", p->id);
		close(pipefd[0]);
		close(pipefd[1]);
		goto done;
	}
	if (pid == 0) {
		close(pipefd[0]);
		if (setpgid(0, 0) < 0 || prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
			_exit(122);
		run_in_child(p, forced_off, timeout_ms, pipefd[1]);
	}
	setpgid(pid, pid); /* also here, so the group exists before any kill */
	close(pipefd[1]);

	while (!exited) {
		uint64_t now = mono_ns();
		int slice;

		if (now >= deadline)
			break;
		slice = (int)((deadline - now) / 1000000ull);
		if (slice > 10)
			slice = 10;
		if (pipe_open && !got) {
			struct pollfd pf = { .fd = pipefd[0], .events = POLLIN };
			int r = poll(&pf, 1, slice);
			if (r > 0) {
				uint8_t *buf;
				size_t len;
				/* A result frame is < PIPE_BUF, written in one write: it is whole. */
				r = frame_read(pipefd[0], &buf, &len, RESULT_FRAME_MAX);
				if (r == 1) {
					got = understudy__v1__probe_result__unpack(NULL, len, buf);
					if (!got)
						fprintf(stderr, "understudy-check: %s: undecodable result\n", p->id);
					free(buf);
				} else if (r < 0) {
					char m[128];
					fprintf(stderr, "understudy-check: %s: %s\n", p->id, err_format(m, sizeof(m), errno, "read(result pipe)"));
				}
				if (r != 1 || !got)
					pipe_open = false;
			}
		} else {
			struct timespec nap = { 0, (long)(slice > 2 ? 2 : slice) * 1000000L };
			nanosleep(&nap, NULL);
		}
		pid_t w = waitpid(pid, &status, WNOHANG);
		if (w == pid)
			exited = true;
	}
	if (exited && !got && pipe_open) {
		struct pollfd pf = { .fd = pipefd[0], .events = POLLIN };
		if (poll(&pf, 1, 0) > 0) {
			uint8_t *buf;
			size_t len;
			if (frame_read(pipefd[0], &buf, &len, RESULT_FRAME_MAX) == 1) {
				got = understudy__v1__probe_result__unpack(NULL, len, buf);
				free(buf);
			}
		}
	}
	if (!exited) {
		timed_out = true;
		kill(-pid, SIGKILL);
		kill(pid, SIGKILL);
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
	}
	close(pipefd[0]);
	sweep(pid);

	if (got && got->id && strcmp(got->id, p->id) != 0) {
		fprintf(stderr, "understudy-check: %s: result carries id '%s'\n", p->id, got->id);
		understudy__v1__probe_result__free_unpacked(got, NULL);
		got = NULL;
	}
	if (got) {
		snprintf(detail, detail_size, "%s", got->detail ? got->detail : "");
		out->ok = got->ok;
		out->errno_value = got->errno_value;
		understudy__v1__probe_result__free_unpacked(got, NULL);
	}
	if (timed_out) {
		out->ok = false;
		out->errno_value = ETIMEDOUT;
		if (detail[0])
			append(detail, detail_size, "; then the probe did not exit: ");
		append(detail, detail_size, "timed out after %d ms", timeout_ms);
	} else if (WIFSIGNALED(status)) {
		out->ok = false;
		if (detail[0])
			append(detail, detail_size, "; then ");
		append(detail, detail_size, "probe process %s", status_text(status, st, sizeof(st)));
	} else if (!got) {
		out->ok = false;
		append(detail, detail_size, "probe process %s without reporting a result", status_text(status, st, sizeof(st)));
	} else if (WEXITSTATUS(status) != 0) {
		/* e.g. LeakSanitizer's exit code in an ASan build */
		out->ok = false;
		append(detail, detail_size, "; then the probe process %s", status_text(status, st, sizeof(st)));
	}
done:
	out->duration_ns = mono_ns() - t0;
}

int main(int argc, char **argv)
{
	bool only[NPROBES] = { false }, disabled[NPROBES] = { false };
	bool have_only = false, verbose = false;
	long timeout_ms = DEFAULT_TIMEOUT_MS;
	const char *env;
	int failed = 0;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *val = NULL;

		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			usage();
			return 0;
		}
		if (strcmp(a, "-v") == 0 || strcmp(a, "--verbose") == 0) {
			verbose = true;
			continue;
		}
		if (strncmp(a, "--only=", 7) == 0)
			val = a + 7;
		else if (strncmp(a, "--timeout-ms=", 13) == 0)
			val = a + 13;
		else if ((strcmp(a, "--only") == 0 || strcmp(a, "--timeout-ms") == 0)) {
			if (i + 1 >= argc) {
				fprintf(stderr, "understudy-check: %s needs a value\n", a);
				usage();
				return 2;
			}
			val = argv[++i];
		} else {
			fprintf(stderr, "understudy-check: unknown argument '%s'\n", a);
			usage();
			return 2;
		}
		if (strncmp(a, "--only", 6) == 0) {
			have_only = true;
			if (parse_id_list(val, only, true, "--only") < 0) {
				usage();
				return 2;
			}
		} else {
			char *end;
			errno = 0;
			timeout_ms = strtol(val, &end, 10);
			if (errno || end == val || *end || timeout_ms <= 0 || timeout_ms > MAX_TIMEOUT_MS) {
				fprintf(stderr,
					"understudy-check: --timeout-ms: '%s' is not a number of "
					"milliseconds in 1..%d\n",
					val, MAX_TIMEOUT_MS);
				usage();
				return 2;
			}
		}
	}
	env = getenv("UNDERSTUDY_CHECK_DISABLE");
	if (env)
		parse_id_list(env, disabled, false, "UNDERSTUDY_CHECK_DISABLE");

	signal(SIGPIPE, SIG_IGN);
	/* Orphans of a probe come back to us, so sweep() can reap them. */
	if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0) {
		char m[128];
		fprintf(stderr, "understudy-check: warning: %s\n", err_format(m, sizeof(m), errno, "prctl(PR_SET_CHILD_SUBREAPER)"));
	}

	for (size_t i = 0; i < NPROBES; i++) {
		Understudy__V1__ProbeResult r = UNDERSTUDY__V1__PROBE_RESULT__INIT;
		char detail[CHECK_DETAIL_MAX + 256];

		if (have_only && !only[i])
			continue;
		run_probe(&probes[i], disabled[i], (int)timeout_ms, &r, detail, sizeof(detail));
		if (!r.ok)
			failed = 1;
		if (verbose)
			fprintf(stderr, "understudy-check: %-18s %s  %s\n", r.id, r.ok ? "ok  " : "FAIL", r.detail);
		if (frame_write(STDOUT_FILENO, &r.base) < 0) {
			char m[128];
			fprintf(stderr, "understudy-check: %s\n", err_format(m, sizeof(m), errno, "write(stdout)"));
			return 1;
		}
	}
	return failed;
}
