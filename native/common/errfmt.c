#include "errfmt.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "understudy/v1/errors.pb-c.h"

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

int err_code_value(const char *name)
{
	const ProtobufCEnumValue *v;

	if (!name || !name[0])
		return UNDERSTUDY__V1__ERROR_CODE__E_INTERNAL;
	v = protobuf_c_enum_descriptor_get_value_by_name(&understudy__v1__error_code__descriptor, name);
	if (!v || v->value == UNDERSTUDY__V1__ERROR_CODE__E_UNSPECIFIED)
		return UNDERSTUDY__V1__ERROR_CODE__E_INTERNAL;
	return v->value;
}

int err_value_code(struct err_value *e)
{
	int v = err_code_value(e->code);
	char pre[64];
	size_t np, nm;

	if (v == UNDERSTUDY__V1__ERROR_CODE__E_INTERNAL && e->code[0] && strcmp(e->code, "E_INTERNAL") != 0) {
		/* the name goes in front of the message (truncating its end) */
		np = (size_t)snprintf(pre, sizeof(pre), "unknown error code %.31s: ", e->code);
		nm = strnlen(e->msg, sizeof(e->msg) - 1);
		if (np + nm > sizeof(e->msg) - 1)
			nm = sizeof(e->msg) - 1 - np;
		memmove(e->msg + np, e->msg, nm);
		memcpy(e->msg, pre, np);
		e->msg[np + nm] = '\0';
	}
	return v;
}
