/* How every native binary raises an error: fail(code, errno, fmt, ...)
 * records the first (most specific) error of the current request in the
 * thread's g_err (errfmt.h: code name from proto/understudy/v1/errors.proto,
 * message naming call, object and errno) and returns -1 for the caller to
 * return; the reply turns it into the enum with err_value_code. Each binary
 * defines `__thread struct err_value g_err;` once. */
#ifndef UNDERSTUDY_FAIL_H
#define UNDERSTUDY_FAIL_H

#include <stdarg.h>
#include <string.h>
#include "errfmt.h"

extern __thread struct err_value g_err;

static inline __attribute__((format(printf, 3, 4))) int fail(const char *code, int errnum, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	err_vset(&g_err, code, errnum, fmt, ap);
	va_end(ap);
	return -1;
}

static inline void err_clear(void)
{
	memset(&g_err, 0, sizeof(g_err));
}

#endif
