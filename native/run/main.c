/*
 * understudy-run: starts an app in its own PID namespace, as its pid 1, so
 * that its PIDs can be recreated on any node (clone3 + set_tid) after a
 * checkpoint. Behind `understudy run -- CMD`.
 *
 *   understudy-run OUTPUT -- CMD [ARGS...]
 *
 * The app gets /dev/null as stdin and OUTPUT (appended; "/dev/null" for none)
 * as stdout and stderr, and no other fd: fds the caller leaked (a shell's
 * pipes) would otherwise tie the app to processes outside it. This process
 * stays as the app's parent on the host, in a session of its own, reaps it
 * and exits with its status. On its own stdout it writes one RunReport frame
 * (proto/understudy/v1/run.proto): `ready` with the app's host pid and its
 * pid in the namespace, or `failure` with an ErrorCode and a message; then
 * it closes stdout, so the agent reads one frame and goes. Exit 2: usage; 1:
 * could not start the app (the failure frame, and its message on stderr for
 * a person running this by hand).
 */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "errfmt.h"
#include "fdio.h"
#include "frame.h"
#include "understudy/v1/run.pb-c.h"

#define RUN_VERSION 1

/* The one report of this run, on fd 1. A failure to write it has no one to
 * tell but stderr. */
static void report(Understudy__V1__RunReport *r)
{
	r->version = RUN_VERSION;
	if (frame_write(1, &r->base) < 0) {
		char m[128];
		fprintf(stderr, "understudy-run: %s\n", err_format(m, sizeof(m), errno, "write(stdout) of the report"));
	}
}

/* Reports a failure with its code and the message "<what>: <strerror>";
 * returns the exit status, `status`. */
static int fail_run(const char *code, int status, int err, const char *what)
{
	Understudy__V1__RunReport r = UNDERSTUDY__V1__RUN_REPORT__INIT;
	Understudy__V1__RunFailure f = UNDERSTUDY__V1__RUN_FAILURE__INIT;
	char msg[4400];

	err_format(msg, sizeof(msg), err, "%s", what);
	f.code = (Understudy__V1__ErrorCode)err_code_value(code);
	f.message = msg;
	f.errno_value = err;
	r.result_case = UNDERSTUDY__V1__RUN_REPORT__RESULT_FAILURE;
	r.failure = &f;
	report(&r);
	fprintf(stderr, "understudy-run: %s\n", msg);
	return status;
}

static int die(const char *what, int err)
{
	return fail_run("E_NATIVE", 1, err, what);
}

/* The last field of NSpid: in /proc/PID/status, the pid in its own namespace. */
static int ns_pid_of(pid_t pid, int *ns_pid)
{
	char path[64], buf[4096];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = fd_read_full(fd, buf, sizeof(buf) - 1);
	int e = errno;
	close(fd);
	if (n < 0) {
		errno = e;
		return -1;
	}
	buf[n] = '\0';
	char *line = strstr(buf, "\nNSpid:");
	if (!line) {
		errno = ENOENT;
		return -1;
	}
	line += strlen("\nNSpid:");
	char *end = strchr(line, '\n');
	if (end)
		*end = '\0';
	char *last = strrchr(line, '\t');
	*ns_pid = atoi(last ? last + 1 : line);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 4 || strcmp(argv[2], "--") != 0)
		return fail_run("E_USAGE", 2, 0, "usage: understudy-run OUTPUT -- CMD [ARGS...]");
	const char *output = argv[1];
	char **cmd = argv + 3;

	/* fds 0-2 the caller left closed are held by /dev/null first: else the
	 * fds below would take their numbers, a dup2 onto the same number would
	 * keep close-on-exec (the app would start without stdin or stdout) and
	 * the report would go into the app's output */
	for (;;) {
		int z = open("/dev/null", O_RDWR);
		if (z < 0)
			return die("open(/dev/null)", errno);
		if (z > 2) {
			close(z);
			break;
		}
	}
	int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (in < 0)
		return die("open(/dev/null)", errno);
	int out = open(output, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (out < 0) {
		char what[4200];
		snprintf(what, sizeof(what), "open(%s) for the app's output", output);
		return die(what, errno);
	}
	/* a pipe that tells the parent whether exec worked */
	int ok[2];
	if (pipe2(ok, O_CLOEXEC))
		return die("pipe2", errno);
	if (setsid() < 0 && errno != EPERM)
		return die("setsid", errno);
	if (unshare(CLONE_NEWPID))
		return die("unshare(CLONE_NEWPID)", errno);

	pid_t child = fork();
	if (child < 0)
		return die("fork into the new PID namespace", errno);
	if (child == 0) {
		/* pid 1 of the new namespace: the app itself */
		int e = 0;
		if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(out, 2) < 0)
			e = errno;
		/* every other fd goes, except the exec report pipe (close-on-exec) */
		if (!e && ok[1] != 3 && dup2(ok[1], 3) < 0)
			e = errno;
		if (!e && syscall(SYS_close_range, 4, ~0U, 0) < 0)
			e = errno;
		if (!e && fcntl(3, F_SETFD, FD_CLOEXEC) < 0)
			e = errno;
		if (!e) {
			execvp(cmd[0], cmd);
			e = errno;
		}
		(void)fd_write_all(3, &e, sizeof(e));
		_exit(127);
	}
	close(ok[1]);
	int e = 0;
	ssize_t n = read(ok[0], &e, sizeof(e));
	close(ok[0]);
	if (n == (ssize_t)sizeof(e)) {
		waitpid(child, NULL, 0);
		char what[4200];
		snprintf(what, sizeof(what), "exec %s", cmd[0]);
		return die(what, e);
	}
	int ns_pid;
	if (ns_pid_of(child, &ns_pid)) {
		int e = errno;
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
		char what[128];
		snprintf(what, sizeof(what), "reading NSpid of the app (pid %d) in /proc/%d/status", (int)child, (int)child);
		return die(what, e);
	}
	Understudy__V1__RunReport r = UNDERSTUDY__V1__RUN_REPORT__INIT;
	Understudy__V1__RunReady ready = UNDERSTUDY__V1__RUN_READY__INIT;
	ready.host_pid = child;
	ready.ns_pid = ns_pid;
	r.result_case = UNDERSTUDY__V1__RUN_REPORT__RESULT_READY;
	r.ready = &ready;
	report(&r);
	/* stdout to /dev/null: the agent reading it sees the end and goes */
	dup2(in, 1);
	close(in);
	close(out);

	int status;
	while (waitpid(child, &status, 0) < 0) {
		if (errno != EINTR)
			return die("waitpid(app)", errno);
	}
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	return 128 + WTERMSIG(status);
}
