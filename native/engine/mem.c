/* Memory: which pages an epoch captures (per region, from PAGEMAP_SCAN) and
 * their copy with process_vm_readv into one buffer, inside the pause. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>
#include "arena.h"
#include "engine.h"
#include "kabi.h"

static bool same_region(const struct region *a, const struct region *b)
{
	return a->start == b->start && a->end == b->end && a->prot == b->prot && a->shared == b->shared && a->pgoff == b->pgoff &&
		a->inode == b->inode && !strcmp(a->name, b->name);
}

static int add_change(struct proc_capture *pc, int kind, const struct region *r)
{
	Understudy__V1__VmaChange *c = ANEW(Understudy__V1__VmaChange, understudy__v1__vma_change__init);
	if (!c)
		return -1;
	c->kind = kind;
	c->start = r->start;
	c->end = r->end;
	char d[600];
	snprintf(d, sizeof(d), "%c%c%c%c %s", r->prot & 1 ? 'r' : '-', r->prot & 2 ? 'w' : '-', r->prot & 4 ? 'x' : '-', r->shared ? 's' : 'p',
		 r->name);
	c->detail = astrdup(d);
	return APUSH(pc->meta->vma_changes, pc->meta->n_vma_changes, c);
}

/* ---- the scan of an incremental epoch, on two threads ----------------------
 * PAGEMAP_SCAN walks page tables: its cost follows the address range, not the
 * dirty pages (1 GB: ~1.3 ms of CPU). The tracked regions are cut into pieces
 * of at most SCAN_PIECE, scanned by this thread and the helper side by side
 * (pool_par_for); each region's result is its pieces' results in order. */
#define SCAN_PAR_MIN (32ULL << 20)
#define SCAN_PIECE (32ULL << 20)

struct piece {
	size_t region;
	uint64_t start, end;
	struct range_vec out;
	bool eperm;
};
struct scan_job {
	struct proc *p;
	struct piece *pcs;
};

static int scan_piece(void *ctx, size_t i)
{
	struct scan_job *j = ctx;
	struct piece *pc = &j->pcs[i];
	return scan_written(j->p, pc->start, pc->end, &pc->out, &pc->eperm);
}

static bool scannable(const struct region *r)
{
	enum region_kind k = region_kind(r);
	return k == RK_ANON || k == RK_FILE_PRIVATE;
}

/* Returns 0 with written[i]/eperm[i] set for every scannable region, or 1
 * when the ranges are too small to be worth a second thread (nothing done). */
static int prescan_split(struct proc *p, struct region *cur, size_t n, struct range_vec *written, bool *eperm)
{
	uint64_t total = 0;
	size_t npieces = 0;
	for (size_t i = 0; i < n; i++)
		if (scannable(&cur[i])) {
			total += cur[i].end - cur[i].start;
			npieces += (cur[i].end - cur[i].start + SCAN_PIECE - 1) / SCAN_PIECE;
		}
	if (total < SCAN_PAR_MIN)
		return 1;
	struct piece *pcs = calloc(npieces + 1, sizeof(*pcs));
	if (!pcs)
		return fail("E_NATIVE", ENOMEM, "calloc of %zu scan pieces", npieces + 1);
	size_t np = 0;
	for (size_t i = 0; i < n; i++) {
		if (!scannable(&cur[i]))
			continue;
		for (uint64_t s = cur[i].start; s < cur[i].end; s += SCAN_PIECE)
			pcs[np++] = (struct piece){ .region = i, .start = s, .end = cur[i].end - s > SCAN_PIECE ? s + SCAN_PIECE : cur[i].end };
	}
	struct scan_job j = { .p = p, .pcs = pcs };
	int rc = pool_par_for(np, scan_piece, &j);
	for (size_t i = 0; i < np; i++) {
		size_t r = pcs[i].region;
		eperm[r] |= pcs[i].eperm;
		for (size_t k = 0; !rc && k < pcs[i].out.n; k++)
			rc = rv_push(&written[r], pcs[i].out.v[k].start, pcs[i].out.v[k].end, pcs[i].out.v[k].cat);
		rv_free(&pcs[i].out);
	}
	free(pcs);
	return rc;
}

/* mode: full = capture every data page; track = keep/establish uffd tracking
 * (false: only look, e.g. the verification full checkpoint of a barrier). */
int mem_plan(struct proc *p, struct proc_capture *pc, bool full, bool track)
{
	struct region *cur;
	size_t n;
	if (pc->cur) {
		cur = pc->cur;
		n = pc->ncur;
		pc->cur = NULL;
	} else if (read_maps(p->pid, &cur, &n)) {
		return -1;
	}
	prof_mark("plan.maps");
	struct range_vec *pre = NULL;
	bool *pre_eperm = NULL;
	if (track && !full && p->uffd >= 0) {
		pre = calloc(n + 1, sizeof(*pre));
		pre_eperm = calloc(n + 1, sizeof(*pre_eperm));
		int r = !pre || !pre_eperm ? fail("E_NATIVE", ENOMEM, "calloc for the scan of pid %d", p->pid) :
					     prescan_split(p, cur, n, pre, pre_eperm);
		if (r) {
			for (size_t i = 0; pre && i < n; i++)
				rv_free(&pre[i]);
			free(pre);
			free(pre_eperm);
			pre = NULL;
			pre_eperm = NULL;
			if (r < 0) {
				free(cur);
				return -1;
			}
		}
	}
	prof_mark("plan.prescan");
	for (size_t i = 0; i < n; i++) {
		struct region *r = &cur[i];
		enum region_kind k = region_kind(r);
		if (k == RK_SHARED_ANON) {
			fail("E_UNSUPPORTED", 0, "pid %d: shared anonymous/shmem mapping 0x%llx-0x%llx (%s) is not supported yet", p->pid,
			     (unsigned long long)r->start, (unsigned long long)r->end, r->name[0] ? r->name : "MAP_SHARED|MAP_ANONYMOUS");
			goto bad;
		}
		if (k != RK_ANON && k != RK_FILE_PRIVATE)
			continue;
		bool eperm = true;
		struct range_vec written = { 0 };
		if (pre) {
			written = pre[i];
			memset(&pre[i], 0, sizeof(pre[i]));
			eperm = pre_eperm[i];
		} else if (track && scan_written(p, r->start, r->end, &written, &eperm)) {
			rv_free(&written);
			goto bad;
		}
		int rc = 0;
		if (eperm) {
			/* not tracked yet (new, moved or recreated region) or untrackable:
			 * all its data pages, and its earlier content is void */
			rc = scan_data(p, r->start, r->end, &pc->pages);
			if (!rc && track && p->uffd >= 0) {
				int reg = uffd_register_wp(p, r->start, r->end);
				rc = reg < 0 ? -1 : 0;
			}
			if (!rc)
				rc = rv_push(&pc->reset, r->start, r->end, 0);
			pc->new_regions++;
		} else if (full) {
			rc = scan_data(p, r->start, r->end, &pc->pages);
		} else {
			/* written and present (or really swapped): data to copy.
			 * Written but neither present nor swapped (discarded by
			 * MADV_DONTNEED/MADV_FREE), the zero page, or no page table
			 * at all: zero now, recorded without reading (a read would
			 * populate the app's page table). Not written and swapped:
			 * a uffd marker, untouched since protected. */
			for (size_t w = 0; w < written.n && !rc; w++) {
				uint64_t cat = written.v[w].cat;
				bool wr = cat & PAGE_IS_WRITTEN, present = cat & PAGE_IS_PRESENT, swapped = cat & PAGE_IS_SWAPPED;
				if (wr && (present || swapped) && !(cat & PAGE_IS_PFNZERO))
					rc = rv_push(&pc->pages, written.v[w].start, written.v[w].end, 0);
				else if (wr || (!present && !swapped))
					rc = rv_push(&pc->zeroed, written.v[w].start, written.v[w].end, 0);
			}
		}
		rv_free(&written);
		if (rc)
			goto bad;
	}
	prof_mark("plan.scan");
	/* how the map changed since the last barrier (informative) */
	if (!full && pc->meta) {
		for (size_t i = 0; i < n; i++) {
			bool found = false;
			for (size_t j = 0; j < p->nmaps && !found; j++)
				found = same_region(&cur[i], &p->maps[j]);
			if (!found && add_change(pc, UNDERSTUDY__V1__VMA_CHANGE__KIND__ADDED, &cur[i]))
				goto bad;
		}
		for (size_t j = 0; j < p->nmaps; j++) {
			bool found = false;
			for (size_t i = 0; i < n && !found; i++)
				found = same_region(&cur[i], &p->maps[j]);
			if (!found && add_change(pc, UNDERSTUDY__V1__VMA_CHANGE__KIND__REMOVED, &p->maps[j]))
				goto bad;
		}
	}
	/* The map of this barrier is what the epoch's regions are written from
	 * (fill_vmas), tracked or not; a look at the same barrier without
	 * tracking sees the same map. */
	free(p->maps);
	p->maps = cur;
	p->nmaps = n;
	free(pre);
	free(pre_eperm);
	return 0;
bad:
	for (size_t i = 0; pre && i < n; i++)
		rv_free(&pre[i]);
	free(pre);
	free(pre_eperm);
	free(cur);
	return -1;
}

int g_state_done;

/* The capture buffer is populated before the pause and kept across epochs:
 * a copy into fresh memory would pay a page fault per page inside the pause.
 * Its address range is reserved larger than what is populated (vcap, the
 * size of a full capture): a delta bigger than guessed grows in place, by
 * populating more of the range, without a copy of what it holds. */
#define BUF_ALIGN (2u << 20)
#define BUF_HUGE (128u << 20)

static size_t align_up(size_t n)
{
	return (n + BUF_ALIGN - 1) & ~(size_t)(BUF_ALIGN - 1);
}

static int populate(uint8_t *p, size_t n)
{
	if (!madvise(p, n, MADV_POPULATE_WRITE))
		return 0;
	if (errno != EINVAL)
		return fail("E_NATIVE", errno, "madvise(MADV_POPULATE_WRITE, %zu bytes) for the capture buffer", n);
	/* a kernel before 5.14: touch each page */
	for (size_t o = 0; o < n; o += PAGE_SZ)
		((volatile uint8_t *)p)[o] = 0;
	return 0;
}

int buf_reserve2(struct page_buf *buf, size_t want, size_t reserve)
{
	if (want <= buf->cap)
		return 0;
	if (want <= buf->vcap) {
		size_t nc = align_up(want);
		if (nc > buf->vcap)
			nc = buf->vcap;
		if (populate(buf->data + buf->cap, nc - buf->cap))
			return -1;
		buf->cap = nc;
		return 0;
	}
	size_t vc = align_up(reserve > want * 2 ? reserve : want * 2);
	size_t nc = align_up(want);
	uint8_t *nb = mmap(NULL, vc, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (nb == MAP_FAILED)
		return fail("E_NATIVE", errno, "mmap(%zu) for the capture buffer", vc);
	/* a big buffer (a full capture) in huge pages where the kernel gives
	 * them: populating 1 GiB took ~45 ms instead of 125-200 ms with 4 KiB
	 * pages here. Not a small one (a delta): a huge page may need direct
	 * compaction, which stalled a delta's capture by 5-30 ms while the page
	 * cache was filling with an earlier epoch's write. */
	if (nc >= BUF_HUGE)
		(void)madvise(nb, vc, MADV_HUGEPAGE); /* best effort: THP may be off */
	if (populate(nb, nc)) {
		munmap(nb, vc);
		return -1;
	}
	if (buf->data) {
		memcpy(nb, buf->data, buf->len);
		munmap(buf->data, buf->vcap);
	}
	buf->data = nb;
	buf->cap = nc;
	buf->vcap = vc;
	return 0;
}

int buf_reserve(struct page_buf *buf, size_t want)
{
	return buf_reserve2(buf, want, want);
}

static int read_via_mem(pid_t pid, uint8_t *dst, uint64_t addr, size_t len)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/mem", pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fail("E_NATIVE", errno, "open(%s)", path);
	size_t off = 0;
	while (off < len) {
		ssize_t r = pread(fd, dst + off, len - off, addr + off);
		if (r <= 0) {
			int e = r < 0 ? errno : EIO;
			close(fd);
			return fail("E_NATIVE", e, "pread(/proc/%d/mem, 0x%llx, %zu)", pid, (unsigned long long)(addr + off), len - off);
		}
		off += r;
	}
	close(fd);
	return 0;
}

/* Read remote[0..cnt) into dst back to back. A range process_vm_readv
 * cannot read (PROT_NONE, ...) is read through /proc/PID/mem (FOLL_FORCE),
 * then the copy carries on after it. */
static int copy_iov(pid_t pid, struct iovec *remote, size_t cnt, uint8_t *dst)
{
	size_t k0 = 0;
	while (k0 < cnt) {
		size_t bytes = 0;
		for (size_t k = k0; k < cnt; k++)
			bytes += remote[k].iov_len;
		struct iovec local = { dst, bytes };
		ssize_t r = process_vm_readv(pid, &local, 1, remote + k0, cnt - k0, 0);
		if (r < 0)
			r = 0;
		if ((size_t)r == bytes)
			return 0;
		size_t acc = 0, k = k0;
		while (k < cnt && acc + remote[k].iov_len <= (size_t)r)
			acc += remote[k++].iov_len;
		size_t partial = r - acc;
		if (read_via_mem(pid, dst + acc + partial, (uint64_t)remote[k].iov_base + partial, remote[k].iov_len - partial))
			return -1;
		dst += acc + remote[k].iov_len;
		k0 = k + 1;
	}
	return 0;
}

/* Copy len bytes of the ranges of rv taken back to back, starting skip bytes
 * into range i, to dst: up to IOV_MAX iovecs (64 MiB) per call. */
static int copy_span(pid_t pid, const struct range_vec *rv, size_t i, uint64_t skip, uint64_t len, uint8_t *dst)
{
	struct iovec remote[IOV_MAX];
	while (len) {
		size_t cnt = 0, bytes = 0;
		while (len && cnt < IOV_MAX && bytes < (64u << 20)) {
			uint64_t rs = rv->v[i].start + skip, rl = rv->v[i].end - rs;
			if (rl > len)
				rl = len;
			if (rl > (64u << 20) - bytes)
				rl = (64u << 20) - bytes;
			remote[cnt].iov_base = (void *)rs;
			remote[cnt].iov_len = rl;
			cnt++;
			bytes += rl;
			len -= rl;
			skip += rl;
			if (rv->v[i].start + skip == rv->v[i].end) {
				i++;
				skip = 0;
			}
		}
		if (copy_iov(pid, remote, cnt, dst))
			return -1;
		dst += bytes;
	}
	return 0;
}

/* The copy is cut into chunks of equal size (page multiples, at least
 * COPY_CHUNK_MIN), a chunk may start and end inside a range (a full
 * checkpoint's 1 GB region is shared too); each knows its place in the
 * buffer ahead, so the chunks can be copied in any order by either thread. */
#define COPY_CHUNKS 16
#define COPY_CHUNK_MIN (256u << 10)
struct copy_plan {
	pid_t pid;
	const struct range_vec *rv;
	uint8_t *dst;
	size_t n;
	struct {
		size_t range;
		uint64_t skip, pos, len;
	} c[COPY_CHUNKS];
};

static int copy_chunk(void *ctx, size_t k)
{
	struct copy_plan *cp = ctx;
	return copy_span(cp->pid, cp->rv, cp->c[k].range, cp->c[k].skip, cp->c[k].len, cp->dst + cp->c[k].pos);
}

static void plan_chunks(struct copy_plan *cp, size_t total)
{
	uint64_t want = (total / COPY_CHUNKS + PAGE_SZ - 1) & ~(PAGE_SZ - 1);
	if (want < COPY_CHUNK_MIN)
		want = COPY_CHUNK_MIN;
	cp->n = 0;
	size_t i = 0;
	uint64_t skip = 0, pos = 0;
	while (pos < total && cp->n < COPY_CHUNKS) {
		uint64_t len = cp->n == COPY_CHUNKS - 1 || total - pos < want ? total - pos : want;
		cp->c[cp->n].range = i;
		cp->c[cp->n].skip = skip;
		cp->c[cp->n].pos = pos;
		cp->c[cp->n].len = len;
		cp->n++;
		pos += len;
		/* advance (i, skip) by len */
		while (len) {
			uint64_t left = cp->rv->v[i].end - cp->rv->v[i].start - skip;
			if (len < left) {
				skip += len;
				len = 0;
			} else {
				len -= left;
				i++;
				skip = 0;
			}
		}
	}
}

int mem_copy(struct proc_capture *pc, struct page_buf *buf, uint32_t stall_ms, void (*progress)(const char *))
{
	size_t total = 0;
	for (size_t i = 0; i < pc->pages.n; i++)
		total += pc->pages.v[i].end - pc->pages.v[i].start;
	if (buf_reserve(buf, buf->len + total))
		return -1;
	uint8_t *dst = buf->data + buf->len;
	if (stall_ms) {
		/* test hook: stop half way through, inside the pause */
		size_t acc = 0, half = pc->pages.n;
		for (size_t i = 0; i < pc->pages.n; i++) {
			acc += pc->pages.v[i].end - pc->pages.v[i].start;
			if (acc >= total / 2) {
				half = i + 1;
				break;
			}
		}
		size_t off = 0;
		for (size_t i = 0; i < half; i++)
			off += pc->pages.v[i].end - pc->pages.v[i].start;
		if (copy_span(pc->p->pid, &pc->pages, 0, 0, off, dst))
			return -1;
		/* the hook stalls only once the tracer's injections are over:
		 * it tests an engine death during the copy, not during an
		 * injected syscall (see docs/engine.md, Safety) */
		while (!__atomic_load_n(&g_state_done, __ATOMIC_ACQUIRE))
			usleep(100);
		progress("capture-stall");
		usleep(stall_ms * 1000);
		if (copy_span(pc->p->pid, &pc->pages, half, 0, total - off, dst + off))
			return -1;
		buf->len += total;
		return 0;
	}
	struct copy_plan cp = { .pid = pc->p->pid, .rv = &pc->pages, .dst = dst };
	plan_chunks(&cp, total);
	int rc = cp.n ? pool_par_for(cp.n, copy_chunk, &cp) : 0;
	if (rc)
		return -1;
	buf->len += total;
	return 0;
}

int fill_vmas(struct proc *p, Understudy__V1__Process *pr)
{
	for (size_t i = 0; i < p->nmaps; i++) {
		struct region *r = &p->maps[i];
		Understudy__V1__Vma *v = ANEW(Understudy__V1__Vma, understudy__v1__vma__init);
		if (!v)
			return -1;
		v->start = r->start;
		v->end = r->end;
		v->prot = r->prot;
		v->shared = r->shared;
		v->pgoff = r->pgoff;
		v->dev_major = r->maj;
		v->dev_minor = r->min;
		v->inode = r->inode;
		v->name = astrdup(r->name);
		enum region_kind k = region_kind(r);
		static const int map[] = {
			[RK_ANON] = UNDERSTUDY__V1__VMA__KIND__ANON,
			[RK_FILE_PRIVATE] = UNDERSTUDY__V1__VMA__KIND__FILE_PRIVATE,
			[RK_FILE_SHARED] = UNDERSTUDY__V1__VMA__KIND__FILE_SHARED,
			[RK_VDSO] = UNDERSTUDY__V1__VMA__KIND__VDSO,
			[RK_VVAR] = UNDERSTUDY__V1__VMA__KIND__VVAR,
			[RK_VSYSCALL] = UNDERSTUDY__V1__VMA__KIND__VSYSCALL,
			[RK_SHARED_ANON] = UNDERSTUDY__V1__VMA__KIND__ANON,
		};
		v->kind = map[k];
		v->tracked = p->uffd >= 0 && (k == RK_ANON || k == RK_FILE_PRIVATE);
		if (r->inode && (k == RK_FILE_PRIVATE || k == RK_FILE_SHARED)) {
			char path[96];
			snprintf(path, sizeof(path), "/proc/%d/map_files/%llx-%llx", p->pid, (unsigned long long)r->start,
				 (unsigned long long)r->end);
			v->file = ANEW(Understudy__V1__FileId, understudy__v1__file_id__init);
			if (!v->file)
				return -1; /* amalloc named the failure; the capture fails and the app is released */
			v->file->path = astrdup(r->name);
			if (file_identity(path, -1, v->file)) {
				err_clear();
				if (file_identity(r->name, -1, v->file))
					return -1;
			}
		}
		if (APUSH(pr->vmas, pr->n_vmas, v))
			return -1;
	}
	return 0;
}
