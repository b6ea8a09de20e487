/* Error texts in the project's one shape: "call(object): strerror". */
#ifndef UNDERSTUDY_ERRFMT_H
#define UNDERSTUDY_ERRFMT_H

#include <stdarg.h>
#include <stddef.h>

/* Writes "<what>: <strerror(err)>" into buf, where <what> is printf-formatted
 * from fmt, e.g. err_format(b, sizeof b, errno, "open(%s)", path) gives
 * "open(/x): No such file or directory". err == 0 leaves the suffix off.
 * Always NUL-terminates (truncating if needed); returns buf. */
char *err_format(char *buf, size_t size, int err, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* err_format with a va_list. */
char *err_vformat(char *buf, size_t size, int err, const char *fmt, va_list ap) __attribute__((format(printf, 4, 0)));

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
int err_set(struct err_value *e, const char *code, int err, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
int err_vset(struct err_value *e, const char *code, int err, const char *fmt, va_list ap) __attribute__((format(printf, 4, 0)));

/* The boundary between a binary and its reader: codes are raised by name
 * (err_set(&e, "E_NATIVE", ...)) and sent as the value of the ErrorCode enum
 * of proto/understudy/v1/errors.proto (UNDERSTUDY__V1__ERROR_CODE__E_*). The
 * build refuses a "E_..." literal under native/ that the enum does not list
 * (scripts/check-error-codes), so a name missing here can only come from a
 * string built at run time: it is sent as E_INTERNAL, never as E_UNSPECIFIED.
 * Returns the enum value (an int, to keep protobuf-c out of this header). */
int err_code_value(const char *name);

/* The code of *e as the enum value, for a reply; an empty code (a command
 * that failed without setting one) is E_INTERNAL. When the name is not in
 * the enum, the message is prefixed with it so that nothing is lost. */
int err_value_code(struct err_value *e);

#endif
