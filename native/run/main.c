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
 * and exits with its status. It writes the app's host pid, in decimal and a
 * newline, on its own stdout, then closes it: the agent reads one line and
 * goes. Exit 2: usage; 1: could not start the app (message on stderr).
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

static int die(const char *what, int err)
{
	char buf[512];
	err_format(buf, sizeof(buf), err, "understudy-run: %s", what);
	fprintf(stderr, "%s\n", buf);
	return 1;
}

int main(int argc, char **argv)
{
	if (argc < 4 || strcmp(argv[2], "--") != 0) {
		fprintf(stderr, "usage: understudy-run OUTPUT -- CMD [ARGS...]\n");
		return 2;
	}
	const char *output = argv[1];
	char **cmd = argv + 3;

	/* fds 0-2 the caller left closed are held by /dev/null first: else the
	 * fds below would take their numbers, a dup2 onto the same number would
	 * keep close-on-exec (the app would start without stdin or stdout) and
	 * the pid line would go into the app's output */
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
	char line[32];
	int len = snprintf(line, sizeof(line), "%d\n", (int)child);
	(void)fd_write_all(1, line, (size_t)len);
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
