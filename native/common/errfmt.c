#include "errfmt.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *err_text(int err)
{
	const char *s = strerrordesc_np(err);
	return s ? s : "Unknown error";
}

char *err_format(char *buf, size_t size, int err, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (size == 0)
		return buf;
	va_start(ap, fmt);
	n = vsnprintf(buf, size, fmt, ap);
	va_end(ap);
	if (n < 0) {
		buf[0] = '\0';
		n = 0;
	}
	if (err != 0 && (size_t)n < size)
		snprintf(buf + n, size - (size_t)n, ": %s", err_text(err));
	return buf;
}
