/* Error texts in the project's one shape: "call(object): strerror". */
#ifndef UNDERSTUDY_ERRFMT_H
#define UNDERSTUDY_ERRFMT_H

#include <stdarg.h>
#include <stddef.h>

/* Writes "<what>: <strerror(err)>" into buf, where <what> is printf-formatted
 * from fmt, e.g. err_format(b, sizeof b, errno, "open(%s)", path) gives
 * "open(/x): No such file or directory". err == 0 leaves the suffix off.
 * Always NUL-terminates (truncating if needed); returns buf. */
char *err_format(char *buf, size_t size, int err, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* err_format with a va_list. */
char *err_vformat(char *buf, size_t size, int err, const char *fmt, va_list ap)
	__attribute__((format(printf, 4, 0)));

/* The text for an errno value; never NULL, safe from any thread. */
const char *err_text(int err);

/* An error as a value, for a program that reports one error per command: a
 * stable code (E_NATIVE, E_UNSUPPORTED, ...), the message naming the call,
 * the object and errno ("<what>: <strerror> (errno N)"), and errno itself. */
struct err_value {
	char code[32];
	char msg[2048];
	int errnum;
};

/* Fills *e unless it already holds an error (the first, most specific error
 * of a command is kept). Always returns -1, to be returned by the caller. */
int err_set(struct err_value *e, const char *code, int err, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
int err_vset(struct err_value *e, const char *code, int err, const char *fmt, va_list ap)
	__attribute__((format(printf, 4, 0)));

#endif
