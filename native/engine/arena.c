/* Per-epoch arena: the metadata of one epoch (protobuf-c messages, strings,
 * arrays) is allocated here and dropped at once when the epoch is written
 * (an epoch handed to the writer takes its chunks along: arena_detach). */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "arena.h"
#include "engine.h"

struct chunk {
	struct chunk *next;
	size_t used, cap;
	_Alignas(16) unsigned char data[];
};
static struct chunk *head;

/* the memory and state phases of a checkpoint allocate side by side */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void *amalloc_locked(size_t n);

void *amalloc(size_t n)
{
	pthread_mutex_lock(&lock);
	void *p = amalloc_locked(n);
	pthread_mutex_unlock(&lock);
	return p;
}

static void *amalloc_locked(size_t n)
{
	n = (n + 15) & ~(size_t)15;
	if (!head || head->cap - head->used < n) {
		size_t cap = n > (1 << 20) ? n : (1 << 20);
		struct chunk *c = malloc(sizeof(*c) + cap);
		if (!c) {
			fail("E_NATIVE", ENOMEM, "malloc(%zu) for epoch metadata", cap);
			return NULL;
		}
		c->next = head;
		c->used = 0;
		c->cap = cap;
		head = c;
	}
	void *p = head->data + head->used;
	head->used += n;
	memset(p, 0, n);
	return p;
}

char *astrdup(const char *s)
{
	size_t n = strlen(s) + 1;
	char *p = amalloc(n);
	if (p)
		memcpy(p, s, n);
	return p;
}

void *amemdup(const void *s, size_t n)
{
	void *p = amalloc(n ? n : 1);
	if (p && n)
		memcpy(p, s, n);
	return p;
}

/* grow an arena array of pointers (amortised doubling) */
int apush(void ***arr, size_t *n, void *item)
{
	if ((*n & (*n - 1)) == 0) { /* n is 0 or a power of two: grow */
		size_t cap = *n ? *n * 2 : 4;
		void **na = amalloc(cap * sizeof(void *));
		if (!na)
			return -1;
		if (*n)
			memcpy(na, *arr, *n * sizeof(void *));
		*arr = na;
	}
	(*arr)[(*n)++] = item;
	return 0;
}

int grow(void *arr, size_t *cap, size_t need, size_t elem, size_t first, const char *what)
{
	if (need <= *cap)
		return 0;
	size_t nc = *cap ? *cap : first;
	while (nc < need)
		nc *= 2;
	void *n = realloc(*(void **)arr, nc * elem);
	if (!n)
		return fail("E_NATIVE", ENOMEM, "realloc of %s (%zu x %zu bytes)", what, nc, elem);
	*(void **)arr = n;
	*cap = nc;
	return 0;
}

void arena_reset(void)
{
	pthread_mutex_lock(&lock);
	struct chunk *c = head;
	head = NULL;
	pthread_mutex_unlock(&lock);
	arena_free(c);
}

void *arena_detach(void)
{
	pthread_mutex_lock(&lock);
	struct chunk *c = head;
	head = NULL;
	pthread_mutex_unlock(&lock);
	return c;
}

void arena_free(void *a)
{
	struct chunk *c = a;
	while (c) {
		struct chunk *n = c->next;
		free(c);
		c = n;
	}
}
