/* Error texts in the project's one shape: "call(object): strerror". */
#ifndef UNDERSTUDY_ERRFMT_H
#define UNDERSTUDY_ERRFMT_H

#include <stddef.h>

/* Writes "<what>: <strerror(err)>" into buf, where <what> is printf-formatted
 * from fmt, e.g. err_format(b, sizeof b, errno, "open(%s)", path) gives
 * "open(/x): No such file or directory". err == 0 leaves the suffix off.
 * Always NUL-terminates (truncating if needed); returns buf. */
char *err_format(char *buf, size_t size, int err, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* The text for an errno value; never NULL, safe from any thread. */
const char *err_text(int err);

#endif
