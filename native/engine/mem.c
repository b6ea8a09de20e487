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
	snprintf(d, sizeof(d), "%c%c%c%c %s", r->prot & 1 ? 'r' : '-', r->prot & 2 ? 'w' : '-', r->prot & 4 ? 'x' : '-',
		 r->shared ? 's' : 'p', r->name);
	c->detail = astrdup(d);
	return APUSH(pc->meta->vma_changes, pc->meta->n_vma_changes, c);
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
	for (size_t i = 0; i < n; i++) {
		struct region *r = &cur[i];
		enum region_kind k = region_kind(r);
		if (k == RK_SHARED_ANON) {
			fail("E_UNSUPPORTED", 0, "pid %d: shared anonymous/shmem mapping 0x%llx-0x%llx (%s) is not supported yet", p->pid,
			     (unsigned long long)r->start, (unsigned long long)r->end, r->name[0] ? r->name : "MAP_SHARED|MAP_ANONYMOUS");
			free(cur);
			return -1;
		}
		if (k != RK_ANON && k != RK_FILE_PRIVATE)
			continue;
		bool eperm = true;
		struct range_vec written = { 0 };
		if (track && scan_written(p, r->start, r->end, &written, &eperm)) {
			rv_free(&written);
			free(cur);
			return -1;
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
		if (rc) {
			free(cur);
			return -1;
		}
	}
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
	return 0;
bad:
	free(cur);
	return -1;
}

int g_state_done;

/* The capture buffer is mapped populated and kept across epochs: a copy into
 * fresh memory would pay a page fault per page inside the pause. */
int buf_reserve(struct page_buf *buf, size_t want)
{
	if (want <= buf->cap)
		return 0;
	size_t nc = want > buf->cap * 2 ? want : buf->cap * 2;
	nc = (nc + (2u << 20) - 1) & ~(size_t)((2u << 20) - 1);
	uint8_t *nb = mmap(NULL, nc, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (nb == MAP_FAILED)
		return fail("E_NATIVE", errno, "mmap(%zu) for the capture buffer", nc);
	if (buf->data) {
		memcpy(nb, buf->data, buf->len);
		munmap(buf->data, buf->cap);
	}
	buf->data = nb;
	buf->cap = nc;
	return 0;
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

/* copy ranges [i0, i1) of pc->pages to dst, in order */
struct copy_job {
	pid_t pid;
	const struct range_vec *rv;
	size_t i0, i1;
	uint8_t *dst;
	int rc;
	struct engine_error err;
};

static int copy_ranges(pid_t pid, const struct range_vec *rv, size_t i0, size_t i1, uint8_t *dst)
{
	struct iovec remote[IOV_MAX];
	size_t i = i0;
	while (i < i1) {
		size_t cnt = 0, bytes = 0;
		while (i + cnt < i1 && cnt < IOV_MAX && bytes < (64u << 20)) {
			remote[cnt].iov_base = (void *)rv->v[i + cnt].start;
			remote[cnt].iov_len = rv->v[i + cnt].end - rv->v[i + cnt].start;
			bytes += remote[cnt].iov_len;
			cnt++;
		}
		struct iovec local = { dst, bytes };
		ssize_t r = process_vm_readv(pid, &local, 1, remote, cnt, 0);
		if (r < 0)
			r = 0;
		if ((size_t)r < bytes) {
			/* a range process_vm_readv cannot read (PROT_NONE, ...):
			 * /proc/PID/mem reads with FOLL_FORCE; then carry on after it */
			size_t acc = 0, k = 0;
			while (k < cnt && acc + remote[k].iov_len <= (size_t)r)
				acc += remote[k++].iov_len;
			size_t partial = r - acc;
			if (read_via_mem(pid, dst + acc + partial, (uint64_t)remote[k].iov_base + partial, remote[k].iov_len - partial))
				return -1;
			dst += acc + remote[k].iov_len;
			i += k + 1;
			continue;
		}
		dst += bytes;
		i += cnt;
	}
	return 0;
}

static void *copy_thread(void *arg)
{
	struct copy_job *j = arg;
	j->rc = copy_ranges(j->pid, j->rv, j->i0, j->i1, j->dst);
	return NULL;
}

/* Copy the planned pages into buf. Above 4 MiB the copy is split in two
 * halves, one on a second thread: the app is stopped, both cores are ours. */
int mem_copy(struct proc_capture *pc, struct page_buf *buf, uint32_t stall_ms, void (*progress)(const char *))
{
	size_t total = 0;
	for (size_t i = 0; i < pc->pages.n; i++)
		total += pc->pages.v[i].end - pc->pages.v[i].start;
	if (buf_reserve(buf, buf->len + total))
		return -1;
	uint8_t *dst = buf->data + buf->len;
	size_t split = pc->pages.n, first_bytes = total;
	if (total > (4u << 20) && pc->pages.n > 1) {
		size_t acc = 0;
		for (size_t i = 0; i < pc->pages.n; i++) {
			acc += pc->pages.v[i].end - pc->pages.v[i].start;
			if (acc >= total / 2) {
				split = i + 1;
				first_bytes = acc;
				break;
			}
		}
	}
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
		if (copy_ranges(pc->p->pid, &pc->pages, 0, half, dst))
			return -1;
		/* the hook stalls only once the tracer's injections are over:
		 * it tests an engine death during the copy, not during an
		 * injected syscall (see docs/engine.md, Safety) */
		while (!__atomic_load_n(&g_state_done, __ATOMIC_ACQUIRE))
			usleep(100);
		progress("capture-stall");
		usleep(stall_ms * 1000);
		size_t off = 0;
		for (size_t i = 0; i < half; i++)
			off += pc->pages.v[i].end - pc->pages.v[i].start;
		if (copy_ranges(pc->p->pid, &pc->pages, half, pc->pages.n, dst + off))
			return -1;
		buf->len += total;
		return 0;
	}
	pthread_t th;
	struct copy_job job = { .pid = pc->p->pid, .rv = &pc->pages, .i0 = split, .i1 = pc->pages.n, .dst = dst + first_bytes };
	bool threaded = split < pc->pages.n && pthread_create(&th, NULL, copy_thread, &job) == 0;
	int rc = copy_ranges(pc->p->pid, &pc->pages, 0, threaded ? split : pc->pages.n, dst);
	if (threaded) {
		pthread_join(th, NULL);
		if (job.rc && !rc)
			rc = fail("E_NATIVE", 0, "copying pages of pid %d on the second thread failed", pc->p->pid);
	}
	if (rc)
		return -1;
	buf->len += total;
	return 0;
}

int fill_vmas(struct proc *p, Understudy__V1__Process *pr, bool full)
{
	(void)full;
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
