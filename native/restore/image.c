/* Image reading. An image directory holds epoch-NNNNNN/ subdirectories, each
 * with meta.pb (4-byte LE length + EpochMeta + 4-byte LE crc32 of the message)
 * and pages.bin (raw pages indexed by PageRun, a crc32 per page). Epoch N is
 * restored from the last full epoch <= N plus every delta after it; the
 * chain must be complete and carry one image_id. */
#include <dirent.h>
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include "fdio.h"
#include "restore.h"

/* opens <epoch dir>/name and fstats it; -1 (error set) if either fails.
 * A missing file is missing_code, anything else E_IMAGE_CORRUPT. */
static int open_epoch_file(const struct epoch_img *e, const char *name, const char *missing_code, char *path, size_t plen,
			   struct stat *st)
{
	snprintf(path, plen, "%s/%s", e->dir, name);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fail(errno == ENOENT ? missing_code : "E_IMAGE_CORRUPT", errno, "open(%s)", path);
	if (fstat(fd, st)) {
		int e2 = errno;
		close(fd);
		return fail("E_IMAGE_CORRUPT", e2, "fstat(%s)", path);
	}
	return fd;
}

static int read_meta(struct epoch_img *e)
{
	char path[4300];
	struct stat st;
	int fd = open_epoch_file(e, "meta.pb", "E_NOT_AN_IMAGE", path, sizeof(path), &st);
	if (fd < 0)
		return -1;
	size_t len = st.st_size;
	uint8_t *b = malloc(len ? len : 1);
	if (!b) {
		close(fd);
		return fail("E_RESTORE", ENOMEM, "malloc(%zu) for %s", len, path);
	}
	ssize_t got = fd_read_full(fd, b, len);
	int rerr = errno;
	close(fd);
	if (got != (ssize_t)len) {
		free(b);
		if (got < 0)
			return fail("E_IMAGE_CORRUPT", rerr, "read(%s)", path);
		return fail("E_IMAGE_CORRUPT", 0, "read(%s): short read at %zd of %zu bytes", path, got, len);
	}
	if (len < 8) {
		free(b);
		return fail("E_IMAGE_CORRUPT", 0, "%s is %zu bytes long, too short for a frame", path, len);
	}
	uint32_t mlen = b[0] | (b[1] << 8) | (b[2] << 16) | ((uint32_t)b[3] << 24);
	if ((uint64_t)mlen + 8 != len) {
		free(b);
		return fail("E_IMAGE_CORRUPT", 0, "%s: frame length %u does not match the file size %zu (expected %u)", path, mlen, len,
			    mlen + 8);
	}
	uint32_t want;
	memcpy(&want, b + 4 + mlen, 4);
	uint32_t got_crc = crc32(0L, b + 4, mlen);
	if (want != got_crc) {
		free(b);
		return fail("E_IMAGE_CORRUPT", 0, "%s: crc32 of the metadata is %08x, the file says %08x (corrupted metadata)", path,
			    got_crc, want);
	}
	e->meta = understudy__v1__epoch_meta__unpack(NULL, mlen, b + 4);
	free(b);
	if (!e->meta)
		return fail("E_IMAGE_CORRUPT", 0, "%s: cannot decode the EpochMeta message", path);
	if (e->meta->version != IMAGE_VERSION)
		return fail("E_VERSION", 0, "%s: image version %u is not supported (this restorer reads version %d)", path,
			    e->meta->version, IMAGE_VERSION);
	if (e->meta->page_size != PAGE_SZ)
		return fail("E_UNSUPPORTED", 0, "%s: page size %u, this machine has %lu", path, e->meta->page_size, PAGE_SZ);
	return 0;
}

static int map_pages(struct epoch_img *e)
{
	char path[4300];
	struct stat st;
	int fd = open_epoch_file(e, "pages.bin", "E_IMAGE_CHAIN", path, sizeof(path), &st);
	if (fd < 0)
		return -1;
	if ((uint64_t)st.st_size != e->meta->pages_bytes) {
		close(fd);
		return fail("E_IMAGE_CORRUPT", 0, "%s is %lld bytes, its epoch %u metadata says %llu (truncated or overwritten)", path,
			    (long long)st.st_size, e->epoch, (unsigned long long)e->meta->pages_bytes);
	}
	e->pages_len = st.st_size;
	if (e->pages_len) {
		/* faulted in by the crc threads, in parallel */
		void *m = mmap(NULL, e->pages_len, PROT_READ, MAP_PRIVATE, fd, 0);
		if (m == MAP_FAILED) {
			close(fd);
			return fail("E_RESTORE", errno, "mmap(%s, %zu bytes)", path, e->pages_len);
		}
		e->pages = m;
	}
	close(fd);
	return 0;
}

static int64_t highest_epoch(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return fail(errno == ENOENT || errno == ENOTDIR ? "E_NOT_AN_IMAGE" : "E_RESTORE", errno, "opendir(%s)", dir);
	int64_t best = -1;
	struct dirent *de;
	while ((de = readdir(d))) {
		unsigned v;
		char tail;
		if ((sscanf(de->d_name, "epoch-%u%c", &v, &tail) == 1 || sscanf(de->d_name, "base-%u%c", &v, &tail) == 1) &&
		    (int64_t)v > best)
			best = v;
	}
	closedir(d);
	if (best < 0)
		return fail("E_NOT_AN_IMAGE", 0, "%s holds no epoch-NNNNNN or base-NNNNNN directory: not an image", dir);
	return best;
}

int image_open(struct image *im, const char *dir, int64_t epoch)
{
	memset(im, 0, sizeof(*im));
	snprintf(im->dir, sizeof(im->dir), "%s", dir);
	int64_t hi = highest_epoch(dir);
	if (hi < 0)
		return -1;
	if (epoch < 0)
		epoch = hi;
	if (epoch > hi)
		return fail("E_IMAGE_CHAIN", 0, "epoch %lld was asked for, the newest epoch in %s is %lld", (long long)epoch, dir,
			    (long long)hi);
	im->target = epoch;
	im->nep = epoch + 1;
	im->ep = calloc(im->nep, sizeof(*im->ep));
	if (!im->ep)
		return fail("E_RESTORE", ENOMEM, "calloc for %u epochs", im->nep);
	/* walk back from N to the last full epoch: every one of them must be there */
	int64_t base = -1;
	for (int64_t k = epoch; k >= 0; k--) {
		struct epoch_img *e = &im->ep[k];
		e->epoch = k;
		struct stat st;
		/* a compacted base (the chain folded into a full epoch) wins */
		snprintf(e->dir, sizeof(e->dir), "%s/base-%06lld", dir, (long long)k);
		bool is_base = stat(e->dir, &st) == 0;
		if (!is_base)
			snprintf(e->dir, sizeof(e->dir), "%s/epoch-%06lld", dir, (long long)k);
		if (!is_base && stat(e->dir, &st))
			return fail("E_IMAGE_CHAIN", errno,
				    "epoch %lld is missing from the chain (%s): epoch %lld cannot be restored without every delta "
				    "since its base",
				    (long long)k, e->dir, (long long)epoch);
		if (read_meta(e))
			return -1;
		if (e->meta->epoch != k)
			return fail("E_IMAGE_CHAIN", 0, "%s/meta.pb says it is epoch %u, not %lld", e->dir, e->meta->epoch, (long long)k);
		if (k == epoch)
			im->last = e->meta;
		if (strcmp(e->meta->image_id, im->last->image_id))
			return fail("E_IMAGE_CHAIN", 0,
				    "epoch %lld (%s) belongs to image %s, epoch %lld to image %s: the chain is broken (a delta from "
				    "another image)",
				    (long long)k, e->dir, e->meta->image_id, (long long)epoch, im->last->image_id);
		if (is_base && !e->meta->full)
			return fail("E_IMAGE_CORRUPT", 0, "%s is a base but its metadata does not say full", e->dir);
		if (e->meta->full) {
			base = k;
			break;
		}
		if (k == 0)
			return fail("E_IMAGE_CHAIN", 0, "%s: epoch 0 is not a full checkpoint", e->dir);
		if (e->meta->parent_epoch != k - 1)
			return fail("E_IMAGE_CHAIN", 0, "epoch %lld (%s) is a delta over epoch %u, expected %lld", (long long)k, e->dir,
				    e->meta->parent_epoch, (long long)k - 1);
	}
	for (int64_t k = base; k <= epoch; k++)
		if (map_pages(&im->ep[k]))
			return -1;
	/* epochs below the base are not needed: mark them unused */
	for (int64_t k = 0; k < base; k++)
		im->ep[k].meta = NULL;
	return 0;
}

void image_close(struct image *im)
{
	for (uint32_t k = 0; k < im->nep; k++) {
		if (im->ep[k].pages)
			munmap((void *)im->ep[k].pages, im->ep[k].pages_len);
		if (im->ep[k].meta)
			understudy__v1__epoch_meta__free_unpacked(im->ep[k].meta, NULL);
	}
	free(im->ep);
}

/* Every page of every epoch used is checked against its crc32 before any
 * process exists. */
int image_verify_pages(struct image *im)
{
	for (uint32_t k = 0; k < im->nep; k++) {
		struct epoch_img *e = &im->ep[k];
		if (!e->meta)
			continue;
		for (size_t i = 0; i < e->meta->n_processes; i++) {
			Proc *pr = e->meta->processes[i];
			for (size_t r = 0; r < pr->n_pages; r++) {
				Understudy__V1__PageRun *run = pr->pages[r];
				if (run->n_crc32 != run->npages)
					return fail("E_IMAGE_CORRUPT", 0, "epoch %u pid %d: page run at 0x%llx has %u pages but %zu crc32s",
						    k, pr->pid, (unsigned long long)run->vaddr, run->npages, run->n_crc32);
				if (run->offset % PAGE_SZ || run->offset + (uint64_t)run->npages * PAGE_SZ > e->pages_len)
					return fail("E_IMAGE_CORRUPT", 0,
						    "epoch %u pid %d: page run at 0x%llx points at bytes %llu..%llu of %s/pages.bin, "
						    "which has %zu",
						    k, pr->pid, (unsigned long long)run->vaddr, (unsigned long long)run->offset,
						    (unsigned long long)(run->offset + (uint64_t)run->npages * PAGE_SZ), e->dir, e->pages_len);
			}
		}
	}
	return 0;
}

static Proc *find_proc(Understudy__V1__EpochMeta *m, pid_t pid)
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
	return x->ep > y->ep ? -1 : x->ep < y->ep ? 1 : 0;   /* newest first */
}

struct voids {          /* per epoch: reset and zeroed ranges, sorted and merged */
	struct { uint64_t s, e; } *v;
	size_t n;
};

static int cmp_range(const void *a, const void *b)
{
	const uint64_t *x = a, *y = b;
	return x[0] < y[0] ? -1 : x[0] > y[0];
}

static int build_voids(Proc *pr, struct voids *out)
{
	size_t n = pr ? pr->n_reset + pr->n_zeroed : 0;
	out->n = 0;
	out->v = NULL;
	if (!n)
		return 0;
	out->v = malloc(n * sizeof(*out->v));
	if (!out->v)
		return fail("E_RESTORE", ENOMEM, "malloc for %zu void ranges", n);
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
static int build_regions(Proc *pr, struct voids *out)
{
	out->n = 0;
	out->v = NULL;
	size_t n = pr ? pr->n_vmas : 0;
	if (!n)
		return 0;
	out->v = malloc(n * sizeof(*out->v));
	if (!out->v)
		return fail("E_RESTORE", ENOMEM, "malloc for %zu regions", n);
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

int image_page_map(struct image *im, pid_t pid, struct page_ref **out, size_t *n)
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
		return fail("E_RESTORE", ENOMEM, "malloc for the page map of pid %d (%zu pages)", pid, cnt);
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
	if (!vs || !rg) {
		free(v);
		free(vs);
		free(rg);
		return fail("E_RESTORE", ENOMEM, "calloc");
	}
	for (int64_t k = first + 1; k <= (int64_t)im->target; k++)
		if (build_voids(find_proc(im->ep[k].meta, pid), &vs[k]) || build_regions(find_proc(im->ep[k].meta, pid), &rg[k])) {
			free(v);
			return -1;
		}
	for (size_t i = 0; i < c; i++) {
		if (o && v[o - 1].vaddr == v[i].vaddr)
			continue;   /* an older copy of a page already taken */
		if (o == 0 || v[o - 1].vaddr != v[i].vaddr) {
			bool voided = false;
			for (uint32_t k = v[i].ep + 1; any_delta && k <= im->target && !voided; k++)
				voided = in_voids(&vs[k], v[i].vaddr) || (rg[k].n && !in_voids(&rg[k], v[i].vaddr));
			if (voided) {
				/* mark as seen so older copies are skipped too */
				v[o] = v[i];
				v[o].ep = UINT32_MAX;
				o++;
				continue;
			}
			v[o++] = v[i];
		}
	}
	for (uint32_t k = 0; k < im->nep; k++) {
		free(vs[k].v);
		free(rg[k].v);
	}
	free(vs);
	free(rg);
	size_t f = 0;
	for (size_t i = 0; i < o; i++)
		if (v[i].ep != UINT32_MAX)
			v[f++] = v[i];
	*out = v;
	*n = f;
	return 0;
}

struct vjob {
	struct image *im;
	const struct page_ref *v;
	size_t i0, i1;
	ssize_t bad;   /* index of the first bad page, -1 none */
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

/* Every page that is going to be written is checked against its crc32
 * before any process exists; pages an epoch superseded are never read. */
int image_verify_refs(struct image *im, pid_t pid, const struct page_ref *v, size_t n)
{
	enum { NJ = 2 };
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
			return fail("E_IMAGE_CORRUPT", 0,
				    "corrupted page: epoch %u, pid %d, address 0x%llx (%s/pages.bin offset %llu): crc32 %08x, expected %08x",
				    im->ep[r->ep].epoch, pid, (unsigned long long)r->vaddr, im->ep[r->ep].dir, (unsigned long long)r->off, j[k].got,
				    r->crc);
		}
	return 0;
}

/* The service's apply (apply.c): the chain grows by one epoch, target + 1,
 * which must be a delta of the same image over the current target. Its
 * metadata is read and checked like any epoch's, its pages.bin mapped; the
 * earlier epochs stay as they are. */
int image_extend(struct image *im, uint32_t epoch)
{
	if (epoch != im->target + 1)
		return fail("E_IMAGE_CHAIN", 0, "epoch %u cannot be applied to a clone at epoch %u: deltas apply one after the other", epoch,
			    im->target);
	struct epoch_img *nep = realloc(im->ep, (size_t)(epoch + 1) * sizeof(*nep));
	if (!nep)
		return fail("E_RESTORE", ENOMEM, "realloc for %u epochs", epoch + 1);
	im->ep = nep;
	struct epoch_img *e = &im->ep[epoch];
	memset(e, 0, sizeof(*e));
	e->epoch = epoch;
	snprintf(e->dir, sizeof(e->dir), "%s/epoch-%06u", im->dir, epoch);
	struct stat st;
	if (stat(e->dir, &st))
		return fail("E_IMAGE_CHAIN", errno, "epoch %u is not in the image (%s)", epoch, e->dir);
	im->nep = epoch + 1;   /* from here on image_close frees it */
	if (read_meta(e))
		return -1;
	if (e->meta->epoch != epoch)
		return fail("E_IMAGE_CHAIN", 0, "%s/meta.pb says it is epoch %u, not %u", e->dir, e->meta->epoch, epoch);
	if (strcmp(e->meta->image_id, im->last->image_id))
		return fail("E_IMAGE_CHAIN", 0, "epoch %u (%s) belongs to image %s, the clone to image %s: the chain is broken", epoch, e->dir,
			    e->meta->image_id, im->last->image_id);
	if (e->meta->full)
		return fail("E_UNSUPPORTED", 0,
			    "epoch %u (%s) is a full epoch, not a delta (the engine lost continuity): build the clone again from it", epoch,
			    e->dir);
	if (e->meta->parent_epoch != epoch - 1)
		return fail("E_IMAGE_CHAIN", 0, "epoch %u (%s) is a delta over epoch %u, expected %u", epoch, e->dir, e->meta->parent_epoch,
			    epoch - 1);
	if (map_pages(e))
		return -1;
	im->target = epoch;
	im->last = e->meta;
	return 0;
}

/* A clone at epoch `epoch` needs nothing of the epochs before it any more
 * (a process born later is read from its birth epoch on): their metadata is
 * freed and their pages.bin unmapped, so a hot clone fed deltas for hours
 * holds one epoch. */
void image_release_before(struct image *im, uint32_t epoch)
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
