/* The image library (image.h): the image format read and written in one
 * place, for the engine (writing) and the restorer (reading). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>
#include "fdio.h"
#include "image.h"

#define PAGE_SZ ((uint64_t)IMG_PAGE)

typedef Understudy__V1__Process Proc;

static uint64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

/* ======================= reading ======================= */

int img_meta_decode(const uint8_t *b, size_t len, const char *what, Understudy__V1__EpochMeta **out, struct err_value *e)
{
	*out = NULL;
	if (len < 8)
		return err_set(e, "E_IMAGE_CORRUPT", 0, "%s is %zu bytes long, too short for a frame", what, len);
	uint32_t mlen = b[0] | (b[1] << 8) | (b[2] << 16) | ((uint32_t)b[3] << 24);
	if ((uint64_t)mlen + 8 != len)
		return err_set(e, "E_IMAGE_CORRUPT", 0, "%s: frame length %u does not match the file size %zu (expected %llu)", what, mlen, len,
			       (unsigned long long)mlen + 8);
	uint32_t want;
	memcpy(&want, b + 4 + mlen, 4);
	uint32_t got = crc32(0L, b + 4, mlen);
	if (want != got)
		return err_set(e, "E_IMAGE_CORRUPT", 0, "%s: crc32 of the metadata is %08x, the file says %08x (corrupted metadata)", what, got,
			       want);
	Understudy__V1__EpochMeta *m = understudy__v1__epoch_meta__unpack(NULL, mlen, b + 4);
	if (!m)
		return err_set(e, "E_IMAGE_CORRUPT", 0, "%s: cannot decode the EpochMeta message", what);
	if (m->version != IMG_VERSION) {
		err_set(e, "E_VERSION", 0, "%s: image version %u is not supported (this build reads version %d)", what, m->version, IMG_VERSION);
		understudy__v1__epoch_meta__free_unpacked(m, NULL);
		return -1;
	}
	if (m->page_size != IMG_PAGE) {
		err_set(e, "E_UNSUPPORTED", 0, "%s: page size %u, this machine has %u", what, m->page_size, IMG_PAGE);
		understudy__v1__epoch_meta__free_unpacked(m, NULL);
		return -1;
	}
	*out = m;
	return 0;
}

/* opens <epoch dir>/name and fstats it; -1 (error set) if either fails.
 * A missing file is missing_code, anything else E_IMAGE_CORRUPT. */
static int open_epoch_file(const char *dir, const char *name, const char *missing_code, char *path, size_t plen, struct stat *st, struct err_value *e)
{
	snprintf(path, plen, "%s/%s", dir, name);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return err_set(e, errno == ENOENT ? missing_code : "E_IMAGE_CORRUPT", errno, "open(%s)", path);
	if (fstat(fd, st)) {
		int e2 = errno;
		close(fd);
		return err_set(e, "E_IMAGE_CORRUPT", e2, "fstat(%s)", path);
	}
	return fd;
}

int img_meta_read(const char *epoch_dir, const char *missing_code, Understudy__V1__EpochMeta **out, struct err_value *e)
{
	char path[IMG_PATH + 16];
	struct stat st;
	*out = NULL;
	int fd = open_epoch_file(epoch_dir, "meta.pb", missing_code, path, sizeof(path), &st, e);
	if (fd < 0)
		return -1;
	size_t len = st.st_size;
	uint8_t *b = malloc(len ? len : 1);
	if (!b) {
		close(fd);
		return err_set(e, "E_NATIVE", ENOMEM, "malloc(%zu) for %s", len, path);
	}
	ssize_t got = fd_read_full(fd, b, len);
	int rerr = errno;
	close(fd);
	if (got != (ssize_t)len) {
		free(b);
		if (got < 0)
			return err_set(e, "E_IMAGE_CORRUPT", rerr, "read(%s)", path);
		return err_set(e, "E_IMAGE_CORRUPT", 0, "read(%s): short read at %zd of %zu bytes", path, got, len);
	}
	int rc = img_meta_decode(b, len, path, out, e);
	free(b);
	return rc;
}

static int map_pages(struct epoch_img *ep, struct err_value *e)
{
	char path[IMG_PATH + 16];
	struct stat st;
	int fd = open_epoch_file(ep->dir, "pages.bin", "E_IMAGE_CHAIN", path, sizeof(path), &st, e);
	if (fd < 0)
		return -1;
	if ((uint64_t)st.st_size != ep->meta->pages_bytes) {
		close(fd);
		return err_set(e, "E_IMAGE_CORRUPT", 0, "%s is %lld bytes, its epoch %u metadata says %llu (truncated or overwritten)", path,
			       (long long)st.st_size, ep->epoch, (unsigned long long)ep->meta->pages_bytes);
	}
	ep->pages_len = st.st_size;
	if (ep->pages_len) {
		/* faulted in by the crc threads, in parallel */
		void *m = mmap(NULL, ep->pages_len, PROT_READ, MAP_PRIVATE, fd, 0);
		if (m == MAP_FAILED) {
			int e2 = errno;
			close(fd);
			return err_set(e, "E_NATIVE", e2, "mmap(%s, %zu bytes)", path, ep->pages_len);
		}
		ep->pages = m;
	}
	close(fd);
	return 0;
}

int64_t img_newest(const char *dir, struct err_value *e)
{
	DIR *d = opendir(dir);
	if (!d)
		return err_set(e, errno == ENOENT || errno == ENOTDIR ? "E_NOT_AN_IMAGE" : "E_NATIVE", errno, "opendir(%s)", dir);
	int64_t best = -1;
	struct dirent *de;
	while ((de = readdir(d))) {
		unsigned v;
		char tail;
		if ((sscanf(de->d_name, "epoch-%u%c", &v, &tail) == 1 || sscanf(de->d_name, "base-%u%c", &v, &tail) == 1) && (int64_t)v > best)
			best = v;
	}
	closedir(d);
	if (best < 0)
		return err_set(e, "E_NOT_AN_IMAGE", 0, "%s holds no epoch-NNNNNN or base-NNNNNN directory: not an image", dir);
	return best;
}

int img_open(struct image *im, const char *dir, int64_t epoch, struct err_value *e)
{
	memset(im, 0, sizeof(*im));
	snprintf(im->dir, sizeof(im->dir), "%s", dir);
	int64_t hi = img_newest(dir, e);
	if (hi < 0)
		return -1;
	if (epoch < 0)
		epoch = hi;
	if (epoch > hi)
		return err_set(e, "E_IMAGE_CHAIN", 0, "epoch %lld was asked for, the newest epoch in %s is %lld", (long long)epoch, dir,
			       (long long)hi);
	im->target = epoch;
	im->nep = epoch + 1;
	im->ep = calloc(im->nep, sizeof(*im->ep));
	if (!im->ep)
		return err_set(e, "E_NATIVE", ENOMEM, "calloc for %u epochs", im->nep);
	/* walk back from N to the last full epoch: every one of them must be there */
	int64_t base = -1;
	for (int64_t k = epoch; k >= 0; k--) {
		struct epoch_img *ep = &im->ep[k];
		ep->epoch = k;
		struct stat st;
		/* a compacted base (the chain folded into a full epoch) wins */
		snprintf(ep->dir, sizeof(ep->dir), "%s/base-%06lld", dir, (long long)k);
		bool is_base = stat(ep->dir, &st) == 0;
		if (!is_base)
			snprintf(ep->dir, sizeof(ep->dir), "%s/epoch-%06lld", dir, (long long)k);
		if (!is_base && stat(ep->dir, &st))
			return err_set(e, "E_IMAGE_CHAIN", errno,
				       "epoch %lld is missing from the chain (%s): epoch %lld cannot be restored without every delta "
				       "since its base",
				       (long long)k, ep->dir, (long long)epoch);
		if (img_meta_read(ep->dir, "E_NOT_AN_IMAGE", &ep->meta, e))
			return -1;
		if (ep->meta->epoch != k)
			return err_set(e, "E_IMAGE_CHAIN", 0, "%s/meta.pb says it is epoch %u, not %lld", ep->dir, ep->meta->epoch, (long long)k);
		if (k == epoch)
			im->last = ep->meta;
		if (strcmp(ep->meta->image_id, im->last->image_id))
			return err_set(e, "E_IMAGE_CHAIN", 0,
				       "epoch %lld (%s) belongs to image %s, epoch %lld to image %s: the chain is broken (a delta from "
				       "another image)",
				       (long long)k, ep->dir, ep->meta->image_id, (long long)epoch, im->last->image_id);
		if (is_base && !ep->meta->full)
			return err_set(e, "E_IMAGE_CORRUPT", 0, "%s is a base but its metadata does not say full", ep->dir);
		if (ep->meta->full) {
			base = k;
			break;
		}
		if (k == 0)
			return err_set(e, "E_IMAGE_CHAIN", 0, "%s: epoch 0 is not a full checkpoint", ep->dir);
		if (ep->meta->parent_epoch != k - 1)
			return err_set(e, "E_IMAGE_CHAIN", 0, "epoch %lld (%s) is a delta over epoch %u, expected %lld", (long long)k, ep->dir,
				       ep->meta->parent_epoch, (long long)k - 1);
	}
	for (int64_t k = base; k <= epoch; k++)
		if (map_pages(&im->ep[k], e))
			return -1;
	/* epochs below the base are not needed: mark them unused */
	for (int64_t k = 0; k < base; k++)
		im->ep[k].meta = NULL;
	return 0;
}

void img_close(struct image *im)
{
	for (uint32_t k = 0; im->ep && k < im->nep; k++) {
		if (im->ep[k].pages)
			munmap((void *)im->ep[k].pages, im->ep[k].pages_len);
		if (im->ep[k].meta)
			understudy__v1__epoch_meta__free_unpacked(im->ep[k].meta, NULL);
	}
	free(im->ep);
	im->ep = NULL;
	im->nep = 0;
}

int img_check_runs(const struct image *im, struct err_value *e)
{
	for (uint32_t k = 0; k < im->nep; k++) {
		const struct epoch_img *ep = &im->ep[k];
		if (!ep->meta)
			continue;
		for (size_t i = 0; i < ep->meta->n_processes; i++) {
			Proc *pr = ep->meta->processes[i];
			for (size_t r = 0; r < pr->n_pages; r++) {
				Understudy__V1__PageRun *run = pr->pages[r];
				if (run->n_crc32 != run->npages)
					return err_set(e, "E_IMAGE_CORRUPT", 0, "epoch %u pid %d: page run at 0x%llx has %u pages but %zu crc32s", k,
						       pr->pid, (unsigned long long)run->vaddr, run->npages, run->n_crc32);
				if (run->offset % PAGE_SZ || run->offset + (uint64_t)run->npages * PAGE_SZ > ep->pages_len)
					return err_set(e, "E_IMAGE_CORRUPT", 0,
						       "epoch %u pid %d: page run at 0x%llx points at bytes %llu..%llu of %s/pages.bin, "
						       "which has %zu",
						       k, pr->pid, (unsigned long long)run->vaddr, (unsigned long long)run->offset,
						       (unsigned long long)(run->offset + (uint64_t)run->npages * PAGE_SZ), ep->dir, ep->pages_len);
			}
		}
	}
	return 0;
}

static Proc *find_proc(const Understudy__V1__EpochMeta *m, pid_t pid)
{
	for (size_t i = 0; m && i < m->n_processes; i++)
		if (m->processes[i]->pid == pid)
			return m->processes[i];
	return NULL;
}

static int cmp_ref(const void *a, const void *b)
{
	const struct page_ref *x = a, *y = b;
	if (x->vaddr != y->vaddr)
		return x->vaddr < y->vaddr ? -1 : 1;
	return x->ep > y->ep ? -1 : x->ep < y->ep ? 1 : 0; /* newest first */
}

struct voids { /* per epoch: reset and zeroed ranges, sorted and merged */
	struct {
		uint64_t s, e;
	} * v;
	size_t n;
};

static int cmp_range(const void *a, const void *b)
{
	const uint64_t *x = a, *y = b;
	return x[0] < y[0] ? -1 : x[0] > y[0];
}

static int build_voids(Proc *pr, struct voids *out, struct err_value *e)
{
	size_t n = pr ? pr->n_reset + pr->n_zeroed : 0;
	out->n = 0;
	out->v = NULL;
	if (!n)
		return 0;
	out->v = malloc(n * sizeof(*out->v));
	if (!out->v)
		return err_set(e, "E_NATIVE", ENOMEM, "malloc for %zu void ranges", n);
	for (size_t i = 0; i < pr->n_reset; i++)
		out->v[out->n++] = (typeof(*out->v)){ pr->reset[i]->start, pr->reset[i]->end };
	for (size_t i = 0; i < pr->n_zeroed; i++)
		out->v[out->n++] = (typeof(*out->v)){ pr->zeroed[i]->start, pr->zeroed[i]->end };
	qsort(out->v, out->n, sizeof(*out->v), cmp_range);
	size_t m = 0;
	for (size_t i = 0; i < out->n; i++) {
		if (m && out->v[i].s <= out->v[m - 1].e) {
			if (out->v[i].e > out->v[m - 1].e)
				out->v[m - 1].e = out->v[i].e;
		} else {
			out->v[m++] = out->v[i];
		}
	}
	out->n = m;
	return 0;
}

/* regions of a process at one epoch, sorted: a page outside all of them at
 * any later epoch was unmapped then, and is gone */
static int build_regions(Proc *pr, struct voids *out, struct err_value *e)
{
	out->n = 0;
	out->v = NULL;
	size_t n = pr ? pr->n_vmas : 0;
	if (!n)
		return 0;
	out->v = malloc(n * sizeof(*out->v));
	if (!out->v)
		return err_set(e, "E_NATIVE", ENOMEM, "malloc for %zu regions", n);
	for (size_t i = 0; i < n; i++)
		out->v[out->n++] = (typeof(*out->v)){ pr->vmas[i]->start, pr->vmas[i]->end };
	qsort(out->v, out->n, sizeof(*out->v), cmp_range);
	return 0;
}

static bool in_voids(const struct voids *vs, uint64_t va)
{
	size_t lo = 0, hi = vs->n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (vs->v[mid].e <= va)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < vs->n && vs->v[lo].s <= va;
}

int img_page_map(const struct image *im, pid_t pid, struct page_ref **out, size_t *n, struct err_value *e)
{
	/* the process's history: back from N while it exists and was not born */
	int64_t first = im->target;
	while (first > 0) {
		Proc *pr = find_proc(im->ep[first].meta, pid);
		if (!pr || pr->new_process || im->ep[first].meta->full)
			break;
		if (!find_proc(im->ep[first - 1].meta, pid))
			break;
		first--;
	}
	size_t cnt = 0;
	for (int64_t k = first; k <= (int64_t)im->target; k++) {
		Proc *pr = find_proc(im->ep[k].meta, pid);
		for (size_t r = 0; pr && r < pr->n_pages; r++)
			cnt += pr->pages[r]->npages;
	}
	struct page_ref *v = malloc((cnt ? cnt : 1) * sizeof(*v));
	if (!v)
		return err_set(e, "E_NATIVE", ENOMEM, "malloc for the page map of pid %d (%zu pages)", pid, cnt);
	size_t c = 0;
	for (int64_t k = first; k <= (int64_t)im->target; k++) {
		Proc *pr = find_proc(im->ep[k].meta, pid);
		for (size_t r = 0; pr && r < pr->n_pages; r++)
			for (uint32_t p = 0; p < pr->pages[r]->npages; p++)
				v[c++] = (struct page_ref){ pr->pages[r]->vaddr + p * PAGE_SZ, (uint32_t)k, pr->pages[r]->offset + p * PAGE_SZ,
							    p < pr->pages[r]->n_crc32 ? pr->pages[r]->crc32[p] : 0 };
	}
	/* a single full epoch is written in address order: no sort needed then */
	bool sorted = true;
	for (size_t i = 1; i < c && sorted; i++)
		sorted = cmp_ref(&v[i - 1], &v[i]) <= 0;
	if (!sorted)
		qsort(v, c, sizeof(*v), cmp_ref);
	size_t o = 0;
	bool any_delta = first < (int64_t)im->target;
	struct voids *vs = calloc(im->nep, sizeof(*vs)), *rg = calloc(im->nep, sizeof(*rg));
	int rc = 0;
	if (!vs || !rg) {
		rc = err_set(e, "E_NATIVE", ENOMEM, "calloc for %u epochs' ranges", im->nep);
		goto out;
	}
	for (int64_t k = first + 1; k <= (int64_t)im->target && !rc; k++)
		if (build_voids(find_proc(im->ep[k].meta, pid), &vs[k], e) || build_regions(find_proc(im->ep[k].meta, pid), &rg[k], e))
			rc = -1;
	if (rc)
		goto out;
	for (size_t i = 0; i < c; i++) {
		if (o && v[o - 1].vaddr == v[i].vaddr)
			continue; /* an older copy of a page already taken */
		bool voided = false;
		for (uint32_t k = v[i].ep + 1; any_delta && k <= im->target && !voided; k++)
			voided = in_voids(&vs[k], v[i].vaddr) || (rg[k].n && !in_voids(&rg[k], v[i].vaddr));
		v[o] = v[i];
		if (voided)
			v[o].ep = UINT32_MAX; /* seen: older copies are skipped too */
		o++;
	}
out:
	for (uint32_t k = 0; vs && rg && k < im->nep; k++) {
		free(vs[k].v);
		free(rg[k].v);
	}
	free(vs);
	free(rg);
	if (rc) {
		free(v);
		return -1;
	}
	size_t f = 0;
	for (size_t i = 0; i < o; i++)
		if (v[i].ep != UINT32_MAX)
			v[f++] = v[i];
	*out = v;
	*n = f;
	return 0;
}

struct vjob {
	const struct image *im;
	const struct page_ref *v;
	size_t i0, i1;
	ssize_t bad; /* index of the first bad page, -1 none */
	uint32_t got;
};

static void *verify_part(void *arg)
{
	struct vjob *j = arg;
	j->bad = -1;
	for (size_t i = j->i0; i < j->i1; i++) {
		const struct page_ref *r = &j->v[i];
		uint32_t c = crc_page(j->im->ep[r->ep].pages + r->off);
		if (c != r->crc) {
			j->bad = (ssize_t)i;
			j->got = c;
			break;
		}
	}
	return NULL;
}

int img_verify_refs(const struct image *im, pid_t pid, const struct page_ref *v, size_t n, struct err_value *e)
{
	enum {
		NJ = 2
	};
	struct vjob j[NJ];
	pthread_t th[NJ];
	bool started[NJ] = { false };
	for (int k = 0; k < NJ; k++) {
		j[k] = (struct vjob){ im, v, n * k / NJ, n * (k + 1) / NJ, -1, 0 };
		if (k > 0 && n >= 4096 && !pthread_create(&th[k], NULL, verify_part, &j[k]))
			started[k] = true;
	}
	verify_part(&j[0]);
	for (int k = 1; k < NJ; k++) {
		if (started[k])
			pthread_join(th[k], NULL);
		else
			verify_part(&j[k]);
	}
	for (int k = 0; k < NJ; k++)
		if (j[k].bad >= 0) {
			const struct page_ref *r = &v[j[k].bad];
			return err_set(e, "E_IMAGE_CORRUPT", 0,
				       "corrupted page: epoch %u, pid %d, address 0x%llx (%s/pages.bin offset %llu): crc32 %08x, expected %08x",
				       im->ep[r->ep].epoch, pid, (unsigned long long)r->vaddr, im->ep[r->ep].dir, (unsigned long long)r->off,
				       j[k].got, r->crc);
		}
	return 0;
}

/* ======================= writing ======================= */

void img_new_id(char *out)
{
	unsigned char b[16];
	if (getrandom(b, sizeof(b), 0) != sizeof(b)) {
		uint64_t t = mono_ns() ^ ((uint64_t)getpid() << 32);
		memcpy(b, &t, 8);
		memcpy(b + 8, &t, 8);
	}
	for (int i = 0; i < 16; i++)
		sprintf(out + 2 * i, "%02x", b[i]);
}

int img_dir_prepare(const char *dir, bool must_be_empty, struct err_value *e)
{
	struct stat st;
	if (stat(dir, &st)) {
		if (errno != ENOENT)
			return err_set(e, "E_IMAGE_WRITE", errno, "stat(%s)", dir);
		if (mkdir(dir, 0700))
			return err_set(e, "E_IMAGE_WRITE", errno, "mkdir(%s)", dir);
		return 0;
	}
	if (!S_ISDIR(st.st_mode))
		return err_set(e, "E_IMAGE_WRITE", ENOTDIR, "image directory %s", dir);
	if (!must_be_empty)
		return 0;
	DIR *d = opendir(dir);
	if (!d)
		return err_set(e, "E_IMAGE_WRITE", errno, "opendir(%s)", dir);
	struct dirent *de;
	int rc = 0;
	while ((de = readdir(d)))
		if (!strncmp(de->d_name, "epoch-", 6) || !strncmp(de->d_name, "base-", 5)) {
			rc = err_set(e, "E_IMAGE_EXISTS", 0, "%s already holds an image (%s); give an empty or new directory", dir, de->d_name);
			break;
		}
	closedir(d);
	return rc;
}

/* crcs of the pages in [off, off+len) of pages.bin: the runs are walked in
 * order, `cur` remembers where the previous call stopped */
struct crc_cursor {
	size_t proc, run;
	uint32_t page;
	uint64_t off;
};

static int crc_span(Understudy__V1__EpochMeta *m, struct crc_cursor *c, const uint8_t *pages, uint64_t end, struct err_value *e)
{
	while (c->off < end) {
		while (c->proc < m->n_processes && c->run >= m->processes[c->proc]->n_pages) {
			c->proc++;
			c->run = 0;
		}
		if (c->proc >= m->n_processes)
			return err_set(e, "E_INTERNAL", 0, "the page index ends at byte %llu of %llu captured", (unsigned long long)c->off,
				       (unsigned long long)end);
		Understudy__V1__PageRun *run = m->processes[c->proc]->pages[c->run];
		if (run->n_crc32 != run->npages || run->offset + (uint64_t)c->page * PAGE_SZ != c->off)
			return err_set(e, "E_INTERNAL", 0, "page run at 0x%llx of pid %d: offset %llu or %zu crcs for %u pages out of order",
				       (unsigned long long)run->vaddr, m->processes[c->proc]->pid, (unsigned long long)run->offset, run->n_crc32,
				       run->npages);
		while (c->page < run->npages && c->off < end) {
			run->crc32[c->page++] = crc_page(pages + c->off);
			c->off += PAGE_SZ;
		}
		if (c->page == run->npages) {
			c->run++;
			c->page = 0;
		}
	}
	return 0;
}

static int crc_done(Understudy__V1__EpochMeta *m, struct crc_cursor *c, struct err_value *e)
{
	while (c->proc < m->n_processes) {
		if (c->run < m->processes[c->proc]->n_pages && m->processes[c->proc]->pages[c->run]->npages > c->page)
			return err_set(e, "E_INTERNAL", 0, "the page index covers more than the %llu bytes captured", (unsigned long long)c->off);
		if (c->run < m->processes[c->proc]->n_pages) {
			c->run++;
			c->page = 0;
			continue;
		}
		c->proc++;
		c->run = 0;
	}
	return 0;
}

int img_fill_crcs(Understudy__V1__EpochMeta *m, const uint8_t *pages, size_t len, struct err_value *e)
{
	struct crc_cursor c = { 0 };
	if (crc_span(m, &c, pages, len, e) || crc_done(m, &c, e))
		return -1;
	m->pages_bytes = len;
	return 0;
}

int img_meta_encode(const Understudy__V1__EpochMeta *m, uint8_t **out, size_t *len, struct err_value *e)
{
	size_t mlen = understudy__v1__epoch_meta__get_packed_size(m);
	if (mlen > UINT32_MAX)
		return err_set(e, "E_INTERNAL", EMSGSIZE, "epoch metadata of %zu bytes", mlen);
	uint8_t *mb = malloc(mlen + 8);
	if (!mb)
		return err_set(e, "E_NATIVE", ENOMEM, "malloc(%zu) for epoch metadata", mlen + 8);
	understudy__v1__epoch_meta__pack(m, mb + 4);
	mb[0] = mlen & 0xff;
	mb[1] = (mlen >> 8) & 0xff;
	mb[2] = (mlen >> 16) & 0xff;
	mb[3] = (mlen >> 24) & 0xff;
	uint32_t mc = crc32(0L, mb + 4, mlen);
	memcpy(mb + 4 + mlen, &mc, 4);
	*out = mb;
	*len = mlen + 8;
	return 0;
}

static void remove_tmp(const char *tmp)
{
	char p[IMG_PATH + 16];
	snprintf(p, sizeof(p), "%s/pages.bin", tmp);
	unlink(p);
	snprintf(p, sizeof(p), "%s/meta.pb", tmp);
	unlink(p);
	rmdir(tmp);
}

static int fsync_dir(const char *path, struct err_value *e)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return err_set(e, "E_IMAGE_WRITE", errno, "open(%s) to fsync it", path);
	int rc = 0;
	if (fsync(fd))
		rc = err_set(e, "E_IMAGE_WRITE", errno, "fsync(%s)", path);
	close(fd);
	return rc;
}

static int write_all(int fd, const uint8_t *p, size_t n, uint64_t at, const char *path, struct err_value *e)
{
	size_t off = 0;
	while (off < n) {
		ssize_t w = write(fd, p + off, n - off);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return err_set(e, "E_IMAGE_WRITE", errno, "write(%s) at byte %llu", path, (unsigned long long)(at + off));
		}
		off += w;
	}
	return 0;
}

/* Write-back of what was written is started chunk by chunk, and the writer
 * waits for the chunk WB_LAG chunks back: the disk works while the next
 * chunks are copied, the final fsync has only the tail left, and the page
 * cache never holds more than WB_LAG chunks of this epoch dirty. 8 MiB
 * writes: one write(2) of 256 MiB ran at a fifth of the speed here. */
#define WB_CHUNK (8u << 20)
#define WB_LAG 4

static int write_pages(int fd, const char *path, Understudy__V1__EpochMeta *m, const uint8_t *pages, size_t len, unsigned flags,
		       struct img_wstats *st, struct err_value *e)
{
	struct crc_cursor c = { 0 };
	for (uint64_t off = 0; off < len; off += WB_CHUNK) {
		uint64_t n = len - off < WB_CHUNK ? len - off : WB_CHUNK;
		uint64_t t0 = mono_ns();
		if ((flags & IMG_W_CRC) && crc_span(m, &c, pages, off + n, e))
			return -1;
		uint64_t t1 = mono_ns();
		if (write_all(fd, pages + off, n, off, path, e))
			return -1;
		uint64_t t2 = mono_ns();
		if (flags & IMG_W_FSYNC) {
			if (sync_file_range(fd, off, n, SYNC_FILE_RANGE_WRITE))
				return err_set(e, "E_IMAGE_WRITE", errno, "sync_file_range(%s, %llu, %llu)", path, (unsigned long long)off,
					       (unsigned long long)n);
			if (off >= (uint64_t)WB_LAG * WB_CHUNK &&
			    sync_file_range(fd, off - (uint64_t)WB_LAG * WB_CHUNK, WB_CHUNK,
					    SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER))
				return err_set(e, "E_IMAGE_WRITE", errno, "sync_file_range(%s, %llu, wait)", path,
					       (unsigned long long)(off - (uint64_t)WB_LAG * WB_CHUNK));
		}
		uint64_t t3 = mono_ns();
		if (st) {
			st->crc_ns += t1 - t0;
			st->write_ns += t2 - t1;
			st->sync_ns += t3 - t2;
		}
	}
	if ((flags & IMG_W_CRC) && crc_done(m, &c, e))
		return -1;
	m->pages_bytes = len;
	return 0;
}

int img_write_dir(const char *dir, Understudy__V1__EpochMeta *m, const uint8_t *pages, size_t len, unsigned flags, bool base, char *final,
		  struct img_wstats *st, struct err_value *e)
{
	char tmp[IMG_PATH], path[IMG_PATH + 16];
	const char *kind = base ? "base" : "epoch";
	snprintf(final, IMG_PATH, "%s/%s-%06u", dir, kind, m->epoch);
	snprintf(tmp, sizeof(tmp), "%s/.tmp-%s-%06u-%d", dir, kind, m->epoch, getpid());
	remove_tmp(tmp);
	struct stat sb;
	if (!stat(final, &sb)) {
		err_set(e, "E_IMAGE_EXISTS", 0, "%s already exists; refusing to overwrite an epoch", final);
		final[0] = 0;
		return -1;
	}
	if (mkdir(tmp, 0700)) {
		err_set(e, "E_IMAGE_WRITE", errno, "mkdir(%s)", tmp);
		final[0] = 0;
		return -1;
	}
	uint8_t *mb = NULL;
	size_t mlen = 0;
	snprintf(path, sizeof(path), "%s/pages.bin", tmp);
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		err_set(e, "E_IMAGE_WRITE", errno, "open(%s)", path);
		goto bad;
	}
	if (write_pages(fd, path, m, pages, len, flags, st, e)) {
		close(fd);
		goto bad;
	}
	uint64_t t0 = mono_ns();
	if ((flags & IMG_W_FSYNC) && fsync(fd)) {
		err_set(e, "E_IMAGE_WRITE", errno, "fsync(%s)", path);
		close(fd);
		goto bad;
	}
	if (close(fd)) {
		err_set(e, "E_IMAGE_WRITE", errno, "close(%s)", path);
		goto bad;
	}
	if (st)
		st->sync_ns += mono_ns() - t0;
	if (img_meta_encode(m, &mb, &mlen, e))
		goto bad;
	snprintf(path, sizeof(path), "%s/meta.pb", tmp);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		err_set(e, "E_IMAGE_WRITE", errno, "open(%s)", path);
		goto bad;
	}
	if (write_all(fd, mb, mlen, 0, path, e) || ((flags & IMG_W_FSYNC) && fsync(fd) && err_set(e, "E_IMAGE_WRITE", errno, "fsync(%s)", path))) {
		close(fd);
		goto bad;
	}
	if (close(fd)) {
		err_set(e, "E_IMAGE_WRITE", errno, "close(%s)", path);
		goto bad;
	}
	free(mb);
	mb = NULL;
	if ((flags & IMG_W_FSYNC) && fsync_dir(tmp, e))
		goto bad;
	if (rename(tmp, final)) {
		err_set(e, "E_IMAGE_WRITE", errno, "rename(%s, %s)", tmp, final);
		goto bad;
	}
	if (flags & IMG_W_FSYNC) {
		/* renamed and whole: a failed fsync of the directory leaves only the
		 * durability of its name unsure; the epoch stands, said unsynced */
		struct err_value de = { 0 };
		if (fsync_dir(dir, &de) && st)
			st->name_unsynced = true;
	}
	return 0;
bad:
	free(mb);
	remove_tmp(tmp);
	final[0] = 0;
	return -1;
}

/* a whole buffer to a stream fd, blocking or not (a full pipe is polled) */
static int stream_out(int fd, const void *p, size_t n, const char *what, struct err_value *e)
{
	size_t off = 0;
	while (off < n) {
		ssize_t w = write(fd, (const uint8_t *)p + off, n - off);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				struct pollfd pf = { fd, POLLOUT, 0 };
				if (poll(&pf, 1, -1) < 0 && errno != EINTR)
					return err_set(e, "E_IMAGE_WRITE", errno, "poll(epoch stream fd %d)", fd);
				continue;
			}
			return err_set(e, "E_IMAGE_WRITE", errno, "write(epoch stream fd %d, %s)", fd, what);
		}
		off += w;
	}
	return 0;
}

static void le32(uint8_t *p, uint32_t v)
{
	p[0] = v;
	p[1] = v >> 8;
	p[2] = v >> 16;
	p[3] = v >> 24;
}

int img_write_stream(int fd, uint64_t request_id, const Understudy__V1__EpochMeta *m, const uint8_t *pages, size_t len, struct err_value *e)
{
	uint8_t *mb = NULL;
	size_t mlen = 0;
	if (img_meta_encode(m, &mb, &mlen, e))
		return -1;
	/* meta.pb is length + message + crc: the message is frame 2 as it is */
	uint32_t mcrc;
	memcpy(&mcrc, mb + mlen - 4, 4);
	Understudy__V1__EpochStreamHeader h = UNDERSTUDY__V1__EPOCH_STREAM_HEADER__INIT;
	h.version = IMG_VERSION;
	h.request_id = request_id;
	h.epoch = m->epoch;
	h.image_id = m->image_id;
	h.meta_bytes = mlen - 8;
	h.meta_crc32 = mcrc;
	h.pages_bytes = len;
	h.chunk_bytes = IMG_STREAM_CHUNK;
	uint8_t hb[512];
	size_t hl = understudy__v1__epoch_stream_header__get_packed_size(&h);
	int rc = -1;
	if (hl + 4 > sizeof(hb)) {
		err_set(e, "E_INTERNAL", 0, "epoch stream header of %zu bytes", hl);
		goto out;
	}
	le32(hb, hl);
	understudy__v1__epoch_stream_header__pack(&h, hb + 4);
	if (stream_out(fd, hb, hl + 4, "header", e) || stream_out(fd, mb, mlen - 4, "metadata", e))
		goto out;
	for (size_t off = 0; off < len; off += IMG_STREAM_CHUNK) {
		size_t n = len - off < IMG_STREAM_CHUNK ? len - off : IMG_STREAM_CHUNK;
		uint8_t fh[4];
		le32(fh, n);
		if (stream_out(fd, fh, 4, "page frame", e) || stream_out(fd, pages + off, n, "pages", e))
			goto out;
	}
	rc = 0;
out:
	free(mb);
	return rc;
}

/* The service's apply (apply.c): the chain grows by one epoch, target + 1,
 * which must be a delta of the same image over the current target. Its
 * metadata is read and checked like any epoch's, its pages.bin mapped; the
 * earlier epochs stay as they are. */
int img_extend(struct image *im, uint32_t epoch, struct err_value *e)
{
	if (epoch != im->target + 1)
		return err_set(e, "E_IMAGE_CHAIN", 0, "epoch %u cannot be applied to a clone at epoch %u: deltas apply one after the other", epoch,
			       im->target);
	struct epoch_img *nep = realloc(im->ep, (size_t)(epoch + 1) * sizeof(*nep));
	if (!nep)
		return err_set(e, "E_RESTORE", ENOMEM, "realloc for %u epochs", epoch + 1);
	im->ep = nep;
	struct epoch_img *ep = &im->ep[epoch];
	memset(ep, 0, sizeof(*ep));
	ep->epoch = epoch;
	snprintf(ep->dir, sizeof(ep->dir), "%s/epoch-%06u", im->dir, epoch);
	struct stat st;
	if (stat(ep->dir, &st))
		return err_set(e, "E_IMAGE_CHAIN", errno, "epoch %u is not in the image (%s)", epoch, ep->dir);
	im->nep = epoch + 1; /* from here on image_close frees it */
	if (img_meta_read(ep->dir, "E_IMAGE_CHAIN", &ep->meta, e))
		return -1;
	if (ep->meta->epoch != epoch)
		return err_set(e, "E_IMAGE_CHAIN", 0, "%s/meta.pb says it is epoch %u, not %u", ep->dir, ep->meta->epoch, epoch);
	if (strcmp(ep->meta->image_id, im->last->image_id))
		return err_set(e, "E_IMAGE_CHAIN", 0, "epoch %u (%s) belongs to image %s, the clone to image %s: the chain is broken", epoch, ep->dir,
			       ep->meta->image_id, im->last->image_id);
	if (ep->meta->full)
		return err_set(e, "E_UNSUPPORTED", 0,
			       "epoch %u (%s) is a full epoch, not a delta (the engine lost continuity): build the clone again from it", epoch,
			       ep->dir);
	if (ep->meta->parent_epoch != epoch - 1)
		return err_set(e, "E_IMAGE_CHAIN", 0, "epoch %u (%s) is a delta over epoch %u, expected %u", epoch, ep->dir, ep->meta->parent_epoch,
			       epoch - 1);
	if (map_pages(ep, e))
		return -1;
	im->target = epoch;
	im->last = ep->meta;
	return 0;
}

/* A clone at epoch `epoch` needs nothing of the epochs before it any more
 * (a process born later is read from its birth epoch on): their metadata is
 * freed and their pages.bin unmapped, so a hot clone fed deltas for hours
 * holds one epoch. */
void img_release_before(struct image *im, uint32_t epoch)
{
	for (uint32_t k = 0; k < epoch && k < im->nep; k++) {
		if (im->ep[k].pages)
			munmap((void *)im->ep[k].pages, im->ep[k].pages_len);
		im->ep[k].pages = NULL;
		im->ep[k].pages_len = 0;
		if (im->ep[k].meta)
			understudy__v1__epoch_meta__free_unpacked(im->ep[k].meta, NULL);
		im->ep[k].meta = NULL;
	}
}
