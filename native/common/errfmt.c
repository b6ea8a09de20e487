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

	va_start(ap, fmt);
	err_vformat(buf, size, err, fmt, ap);
	va_end(ap);
	return buf;
}

char *err_vformat(char *buf, size_t size, int err, const char *fmt, va_list ap)
{
	int n;

	if (size == 0)
		return buf;
	n = vsnprintf(buf, size, fmt, ap);
	if (n < 0) {
		buf[0] = '\0';
		n = 0;
	}
	if (err != 0 && (size_t)n < size)
		snprintf(buf + n, size - (size_t)n, ": %s", err_text(err));
	return buf;
}

int err_vset(struct err_value *e, const char *code, int err, const char *fmt, va_list ap)
{
	size_t n;

	if (e->code[0])
		return -1;
	snprintf(e->code, sizeof(e->code), "%s", code);
	err_vformat(e->msg, sizeof(e->msg), err, fmt, ap);
	n = strlen(e->msg);
	if (err != 0 && n < sizeof(e->msg))
		snprintf(e->msg + n, sizeof(e->msg) - n, " (errno %d)", err);
	e->errnum = err;
	return -1;
}

int err_set(struct err_value *e, const char *code, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	err_vset(e, code, err, fmt, ap);
	va_end(ap);
	return -1;
}
