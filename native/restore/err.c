/* Errors: one per failed restore, a stable code and a message naming the
 * call, the object (pid, address, file, epoch) and errno. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include "restore.h"

__thread struct err_value g_err;
static uint64_t t0;
bool g_verbose;

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
	fprintf(stderr, "[restore %.3f ms] ", (now_ns() - (t0 ? t0 : (t0 = now_ns()))) / 1e6);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}
