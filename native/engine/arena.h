#ifndef UNDERSTUDY_ENGINE_ARENA_H
#define UNDERSTUDY_ENGINE_ARENA_H
#include <stddef.h>
void *amalloc(size_t n);
char *astrdup(const char *s);
void *amemdup(const void *s, size_t n);
int apush(void ***arr, size_t *n, void *item);
void arena_reset(void);
#define ANEW(type, init) ({ type *_p = amalloc(sizeof(type)); if (_p) init(_p); _p; })
#define APUSH(arr, n, item) apush((void ***)&(arr), &(n), (item))
#endif
