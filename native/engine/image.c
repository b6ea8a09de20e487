/* The epoch writer: an epoch captured in a pause is handed to a writer
 * thread with its own metadata arena and page buffer, and written through
 * the image library (native/common/image.c) to its sinks — the image
 * directory (atomic: a hidden temporary directory renamed into place) and/or
 * the epoch stream (frames on a file descriptor the agent reads). The main
 * thread captures the next epochs meanwhile: no epoch waits for an earlier
 * one's write. Epochs are written in the order they were captured; a delta
 * whose parent failed to be written is dropped, never written (its reply
 * says why) and the chain goes on with a full epoch. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include "arena.h"
#include "engine.h"

void new_image_id(char *out)
{
	img_new_id(out);
}

int image_dir_prepare(const char *dir, bool must_be_empty)
{
	return img_dir_prepare(dir, must_be_empty, &g_err);
}

/* ---- page buffers: one per epoch in flight, reused ---------------------- */
#define POOL_KEEP 4
static struct page_buf *free_bufs[POOL_KEEP];
static size_t nfree;

struct page_buf *buf_get(size_t want, size_t reserve)
{
	/* the smallest free buffer that is big enough, else the biggest */
	ssize_t pick = -1;
	for (size_t i = 0; i < nfree; i++) {
		if (free_bufs[i]->cap >= want && (pick < 0 || free_bufs[i]->cap < free_bufs[pick]->cap))
			pick = i;
	}
	for (size_t i = 0; pick < 0 && i < nfree; i++)
		if (pick < 0 || free_bufs[i]->cap > free_bufs[pick]->cap)
			pick = i;
	struct page_buf *b;
	if (pick >= 0) {
		b = free_bufs[pick];
		free_bufs[pick] = free_bufs[--nfree];
	} else {
		b = calloc(1, sizeof(*b));
		if (!b) {
			fail("E_NATIVE", ENOMEM, "calloc for a capture buffer");
			return NULL;
		}
	}
	b->len = 0;
	if (buf_reserve2(b, want, reserve)) {
		buf_put(b);
		return NULL;
	}
	return b;
}

void buf_put(struct page_buf *b)
{
	if (!b)
		return;
	b->len = 0;
	if (nfree < POOL_KEEP) {
		free_bufs[nfree++] = b;
		return;
	}
	/* keep the biggest: drop the smallest of the pool and b */
	size_t small = 0;
	for (size_t i = 1; i < nfree; i++)
		if (free_bufs[i]->cap < free_bufs[small]->cap)
			small = i;
	if (free_bufs[small]->cap < b->cap) {
		struct page_buf *t = free_bufs[small];
		free_bufs[small] = b;
		b = t;
	}
	if (b->data)
		munmap(b->data, b->vcap);
	free(b);
}

/* ---- metadata of an epoch (main thread, in the epoch's arena) ----------- */
static Understudy__V1__Range **ranges_of(const struct range_vec *rv, size_t *n)
{
	Understudy__V1__Range **a = amalloc(rv->n * sizeof(void *) + 1);
	*n = 0;
	for (size_t r = 0; a && r < rv->n; r++) {
		Understudy__V1__Range *g = ANEW(Understudy__V1__Range, understudy__v1__range__init);
		if (!g)
			break;
		g->start = rv->v[r].start;
		g->end = rv->v[r].end;
		a[(*n)++] = g;
	}
	return a;
}

static char *kernel_release(void)
{
	static char rel[128];
	if (!rel[0]) {
		char *s = NULL;
		if (read_file("/proc/sys/kernel/osrelease", &s) >= 0) {
			char *nl = strchr(s, '\n');
			if (nl)
				*nl = 0;
			snprintf(rel, sizeof(rel), "%s", s);
			free(s);
		}
		err_clear();
	}
	return rel;
}

Understudy__V1__EpochMeta *epoch_meta_build(const char *image_id, struct epoch_out *eo, uint32_t parent)
{
	Understudy__V1__EpochMeta *m = ANEW(Understudy__V1__EpochMeta, understudy__v1__epoch_meta__init);
	if (!m)
		return NULL;
	/* the page index, its crcs left for the writer */
	uint64_t off = 0;
	for (size_t i = 0; i < eo->npcs; i++) {
		struct proc_capture *pc = &eo->pcs[i];
		Understudy__V1__Process *pr = pc->meta;
		pr->pages = amalloc(pc->pages.n * sizeof(void *) + 1);
		if (!pr->pages)
			return NULL;
		pr->n_pages = 0;
		for (size_t r = 0; r < pc->pages.n; r++) {
			Understudy__V1__PageRun *run = ANEW(Understudy__V1__PageRun, understudy__v1__page_run__init);
			uint32_t np = (pc->pages.v[r].end - pc->pages.v[r].start) / PAGE_SZ;
			if (!run || !(run->crc32 = amalloc(np * sizeof(uint32_t) + 4)))
				return NULL;
			run->vaddr = pc->pages.v[r].start;
			run->npages = np;
			run->offset = off;
			run->n_crc32 = np;
			off += (uint64_t)np * PAGE_SZ;
			pr->pages[pr->n_pages++] = run;
		}
		pr->reset = ranges_of(&pc->reset, &pr->n_reset);
		pr->zeroed = ranges_of(&pc->zeroed, &pr->n_zeroed);
	}
	if (off != eo->buf->len) {
		fail("E_INTERNAL", 0, "page index covers %llu bytes but %zu were captured", (unsigned long long)off, eo->buf->len);
		return NULL;
	}
	m->version = IMAGE_VERSION;
	m->epoch = eo->epoch;
	m->full = eo->full;
	m->parent_epoch = parent;
	m->image_id = astrdup(image_id);
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	m->time_unix_ns = (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
	m->kernel_release = astrdup(kernel_release());
	m->page_size = PAGE_SZ;
	uint32_t lo, hi;
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	m->xcr0 = ((uint64_t)hi << 32) | lo;
	m->root_pid = E.root_pid;
	m->pages_bytes = eo->buf->len;
	m->pause_ns = eo->pause_ns;
	m->engine = "understudy-engine 1";
	m->processes = amalloc(eo->npcs * sizeof(void *) + 1);
	if (!m->processes)
		return NULL;
	for (size_t i = 0; i < eo->npcs; i++)
		m->processes[m->n_processes++] = eo->pcs[i].meta;
	return m;
}

/* ---- the writer thread --------------------------------------------------- */
static pthread_mutex_t wl = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wc = PTHREAD_COND_INITIALIZER;
static struct epoch_job *q_head, *q_tail; /* q_head is being written */
static struct epoch_job *d_head, *d_tail; /* written (or failed), replies to send */
static int ev_fd = -1;
static int stream_fd = -1;
static bool started;
static int64_t broken_gen = -1;
static pid_t writer_tid;

/* During a barrier the writer steps below the app: a thread of the app woken
 * by the interrupt must not wait behind the writer for a CPU (a 27 ms barrier
 * was seen with the writer at the app's priority on two busy CPUs). Between
 * pauses it runs at the engine's priority, so that a long write is not
 * starved by the rest of the machine. */
#define WRITER_NICE_IN_PAUSE 10
void writer_yield(bool on)
{
	pid_t t = __atomic_load_n(&writer_tid, __ATOMIC_ACQUIRE);
	if (t && setpriority(PRIO_PROCESS, (id_t)t, on ? WRITER_NICE_IN_PAUSE : 0)) {
		static bool said;
		if (!said)
			fprintf(stderr, "understudy-engine: setpriority(writer thread %d): %s; it competes with the app in a pause\n", t,
				strerror(errno));
		said = true;
	}
} /* writer only: jobs of this generation or older are dropped */

static void write_one(struct epoch_job *j)
{
	err_clear();
	if (j->delay_ms)
		usleep(j->delay_ms * 1000);
	uint64_t t0 = now_ns();
	j->t_start = t0;
	if ((int64_t)j->gen <= broken_gen) {
		j->rc = fail("E_IMAGE_WRITE", 0,
			     "epoch %u was captured but not written: an earlier epoch of its chain could not be written, so it has "
			     "no parent on disk; the next epoch is a full one",
			     j->epoch);
		j->err = g_err;
		return;
	}
	struct img_wstats st = { 0 };
	int rc = 0;
	bool crcs = false;
	if (j->sinks & JOB_DIR) {
		rc = img_write_dir(j->dir, j->meta, j->buf->data, j->buf->len, j->flags | IMG_W_CRC, false, j->path, &st, &g_err);
		crcs = rc == 0;
	}
	if (!rc && (j->sinks & JOB_STREAM)) {
		if (stream_fd < 0)
			rc = fail("E_USAGE", 0, "no epoch stream: the engine was started without --epoch-stream-fd");
		if (!rc && !crcs) {
			uint64_t c0 = now_ns();
			rc = img_fill_crcs(j->meta, j->buf->data, j->buf->len, &g_err);
			st.crc_ns += now_ns() - c0;
		}
		if (!rc) {
			uint64_t s0 = now_ns();
			rc = img_write_stream(stream_fd, j->req_id, j->meta, j->buf->data, j->buf->len, &g_err);
			st.write_ns += now_ns() - s0;
			j->streamed = rc == 0;
		}
	}
	j->rc = rc;
	if (rc) {
		broken_gen = j->gen;
		j->err = g_err;
	}
	/* the verification copy: another image, epoch 0, full */
	if (!rc && j->vmeta) {
		err_clear();
		if (img_write_dir(j->vdir, j->vmeta, j->vbuf->data, j->vbuf->len, j->flags | IMG_W_CRC, false, j->vpath, NULL, &g_err)) {
			j->vrc = -1;
			j->err = g_err;
		}
	}
	j->st = st;
}

static void *writer_main(void *arg)
{
	(void)arg;
	__atomic_store_n(&writer_tid, gettid(), __ATOMIC_RELEASE);
	for (;;) {
		pthread_mutex_lock(&wl);
		while (!q_head)
			pthread_cond_wait(&wc, &wl);
		struct epoch_job *j = q_head;
		pthread_mutex_unlock(&wl);
		write_one(j);
		j->t_done = now_ns();
		pthread_mutex_lock(&wl);
		q_head = j->next;
		if (!q_head)
			q_tail = NULL;
		j->next = NULL;
		if (d_tail)
			d_tail->next = j;
		else
			d_head = j;
		d_tail = j;
		pthread_mutex_unlock(&wl);
		uint64_t one = 1;
		while (write(ev_fd, &one, sizeof(one)) < 0 && errno == EINTR)
			;
	}
	return NULL;
}

int writer_init(int sfd)
{
	stream_fd = sfd;
	ev_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (ev_fd < 0)
		return fail("E_NATIVE", errno, "eventfd for the epoch writer");
	return 0;
}

int writer_event_fd(void)
{
	return ev_fd;
}

bool writer_has_stream(void)
{
	return stream_fd >= 0;
}

void writer_load(uint32_t *epochs, uint64_t *queued_bytes)
{
	uint32_t n = 0;
	uint64_t b = 0;
	pthread_mutex_lock(&wl);
	for (struct epoch_job *j = q_head; j; j = j->next) {
		if (j != q_head) /* memory held: the buffers' size */
			b += j->buf->cap + (j->vbuf ? j->vbuf->cap : 0);
		n++;
	}
	pthread_mutex_unlock(&wl);
	*epochs = n;
	*queued_bytes = b;
}

int writer_push(struct epoch_job *j)
{
	if (!started) {
		pthread_t th;
		int r = pthread_create(&th, NULL, writer_main, NULL);
		if (r)
			return fail("E_NATIVE", r, "pthread_create for the epoch writer");
		pthread_detach(th);
		started = true;
	}
	j->arena = arena_detach();
	pthread_mutex_lock(&wl);
	j->next = NULL;
	if (q_tail)
		q_tail->next = j;
	else
		q_head = j;
	q_tail = j;
	pthread_cond_signal(&wc);
	pthread_mutex_unlock(&wl);
	return 0;
}

struct epoch_job *writer_take_done(void)
{
	uint64_t v;
	while (read(ev_fd, &v, sizeof(v)) < 0 && errno == EINTR)
		;
	pthread_mutex_lock(&wl);
	struct epoch_job *j = d_head;
	d_head = d_tail = NULL;
	pthread_mutex_unlock(&wl);
	return j; /* a list in capture order */
}

void job_free(struct epoch_job *j)
{
	buf_put(j->buf);
	buf_put(j->vbuf);
	arena_free(j->arena);
	free(j);
}
