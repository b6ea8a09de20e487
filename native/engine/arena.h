#ifndef UNDERSTUDY_ENGINE_ARENA_H
#define UNDERSTUDY_ENGINE_ARENA_H
#include <stddef.h>
void *amalloc(size_t n);
char *astrdup(const char *s);
void *amemdup(const void *s, size_t n);
int apush(void ***arr, size_t *n, void *item);
void arena_reset(void);
/* Hands the chunks allocated so far to the caller (an epoch in flight):
 * later allocations start a new arena; arena_free drops a handed-off one. */
void *arena_detach(void);
void arena_free(void *a);
/* Room for `need` elements of `elem` bytes in the malloc'd array *arr (a
 * pointer to the array pointer) of *cap elements: doubles it, from `first`,
 * until they fit. 0, or -1 with the error set, naming `what`. */
int grow(void *arr, size_t *cap, size_t need, size_t elem, size_t first, const char *what);
#define ANEW(type, init)                          \
	({                                        \
		type *_p = amalloc(sizeof(type)); \
		if (_p)                           \
			init(_p);                 \
		_p;                               \
	})
#define APUSH(arr, n, item) apush((void ***)&(arr), &(n), (item))
#endif
