/* Error reporting: every failure becomes one code + message naming the call,
 * the object (pid, fd, address) and errno; the command loop sends it back. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include "engine.h"

__thread struct engine_error g_err;   /* per thread: the epoch writer runs beside the event loop */

int fail(const char *code, int errnum, const char *fmt, ...)
{
	/* keep the first, most specific error of a command */
	if (g_err.code[0])
		return -1;
	va_list ap;
	va_start(ap, fmt);
	snprintf(g_err.code, sizeof(g_err.code), "%s", code);
	int n = vsnprintf(g_err.msg, sizeof(g_err.msg), fmt, ap);
	va_end(ap);
	if (errnum && n >= 0 && (size_t)n < sizeof(g_err.msg))
		snprintf(g_err.msg + n, sizeof(g_err.msg) - n, ": %s (errno %d)", strerror(errnum), errnum);
	g_err.errnum = errnum;
	return -1;
}

void err_clear(void)
{
	memset(&g_err, 0, sizeof(g_err));
}

uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}
