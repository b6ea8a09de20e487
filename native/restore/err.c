/* Errors: one per failed restore, a stable code and a message naming the
 * call, the object (pid, address, file, epoch) and errno. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include "restore.h"

struct rerror g_err;
bool g_verbose;

int fail(const char *code, int errnum, const char *fmt, ...)
{
	if (g_err.code[0])
		return -1;   /* keep the first (root) cause */
	snprintf(g_err.code, sizeof(g_err.code), "%s", code);
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(g_err.msg, sizeof(g_err.msg), fmt, ap);
	va_end(ap);
	if (errnum && n > 0 && (size_t)n < sizeof(g_err.msg))
		snprintf(g_err.msg + n, sizeof(g_err.msg) - n, ": %s (errno %d)", strerror(errnum), errnum);
	g_err.errnum = errnum;
	return -1;
}

uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

void vlog(const char *fmt, ...)
{
	if (!g_verbose)
		return;
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "[restore %.3f ms] ", (now_ns() - R.t_start) / 1e6);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}
